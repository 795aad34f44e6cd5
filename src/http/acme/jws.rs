//! JWS as ACME uses it (RFC 8555 §6.2, RFC 7515): flattened JSON
//! serialisation only, one signature, protected header with `alg`,
//! `nonce`, `url` and exactly one of `jwk` / `kid`. Signatures are checked
//! with ring: ES256, ES384, RS256 and EdDSA (Ed25519).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Why a JWS was refused, with the ACME error type it maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    /// Not a well-formed flattened JWS (`malformed`).
    #[error("{0}")]
    Malformed(String),
    /// An algorithm hallmark does not accept (`badSignatureAlgorithm`).
    #[error("the JWS algorithm {0:?} is not accepted; use ES256, ES384, RS256 or EdDSA")]
    BadAlgorithm(String),
    /// The signature does not verify (`malformed`, RFC 8555 §6.2).
    #[error("the JWS signature does not verify with the key")]
    BadSignature,
}

impl JwsError {
    /// The ACME error type.
    pub fn acme_code(&self) -> crate::acme_error::AcmeError {
        use crate::acme_error::AcmeError;
        match self {
            JwsError::BadAlgorithm(_) => AcmeError::BadSignatureAlgorithm,
            _ => AcmeError::Malformed,
        }
    }
}

/// The flattened JSON serialisation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Flattened {
    protected: String,
    payload: String,
    signature: String,
}

/// The protected header fields ACME uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Protected {
    /// Signature algorithm.
    pub alg: String,
    /// Replay nonce.
    pub nonce: Option<String>,
    /// The URL the request was sent to.
    pub url: String,
    /// The account URL (all requests but newAccount and revokeCert by key).
    pub kid: Option<String>,
    /// The public key (newAccount, revokeCert by key, keyChange inner JWS).
    pub jwk: Option<Value>,
}

/// A parsed, not yet verified JWS.
#[derive(Debug, Clone)]
pub struct Jws {
    /// The protected header.
    pub protected: Protected,
    /// The decoded payload (empty for POST-as-GET).
    pub payload: Vec<u8>,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
}

fn b64(field: &str, s: &str) -> Result<Vec<u8>, JwsError> {
    URL_SAFE_NO_PAD.decode(s).map_err(|_| {
        JwsError::Malformed(format!("the JWS {field} is not base64url without padding"))
    })
}

impl Jws {
    /// Parses a flattened JWS request body.
    pub fn parse(body: &[u8]) -> Result<Jws, JwsError> {
        let f: Flattened = serde_json::from_slice(body).map_err(|e| {
            JwsError::Malformed(format!(
                "the request body is not a flattened JWS (protected, payload, signature): {e}"
            ))
        })?;
        let header: Value = serde_json::from_slice(&b64("protected header", &f.protected)?)
            .map_err(|_| JwsError::Malformed("the JWS protected header is not JSON".into()))?;
        let obj = header.as_object().ok_or_else(|| {
            JwsError::Malformed("the JWS protected header is not an object".into())
        })?;
        let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
        let alg = text("alg")
            .ok_or_else(|| JwsError::Malformed("the JWS header has no \"alg\"".into()))?;
        if alg == "none" || alg.starts_with("HS") {
            return Err(JwsError::BadAlgorithm(alg));
        }
        let url = text("url")
            .ok_or_else(|| JwsError::Malformed("the JWS header has no \"url\"".into()))?;
        let kid = text("kid");
        let jwk = obj.get("jwk").cloned();
        if kid.is_some() == jwk.is_some() {
            return Err(JwsError::Malformed(
                "the JWS header must have exactly one of \"jwk\" and \"kid\"".into(),
            ));
        }
        let mut signing_input = Vec::with_capacity(f.protected.len() + f.payload.len() + 1);
        signing_input.extend_from_slice(f.protected.as_bytes());
        signing_input.push(b'.');
        signing_input.extend_from_slice(f.payload.as_bytes());
        Ok(Jws {
            protected: Protected {
                alg,
                nonce: text("nonce"),
                url,
                kid,
                jwk,
            },
            payload: b64("payload", &f.payload)?,
            signing_input,
            signature: b64("signature", &f.signature)?,
        })
    }

    /// Verifies the signature with `jwk` (the header's own for `jwk`
    /// requests, the account's for `kid` ones).
    pub fn verify(&self, jwk: &Value) -> Result<(), JwsError> {
        let key = PublicJwk::from_jwk(jwk)?;
        key.verify(&self.protected.alg, &self.signing_input, &self.signature)
    }

    /// The payload as JSON (`{}` when empty is not allowed: POST-as-GET
    /// has an empty payload and is told apart by the caller).
    pub fn json(&self) -> Result<Value, JwsError> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| JwsError::Malformed(format!("the JWS payload is not JSON: {e}")))
    }
}

/// An external account binding (RFC 8555 §7.3.4): a flattened JWS inside
/// the newAccount payload, MACed (HS256/384/512) with the key an
/// administrator issued, over the new account's JWK.
#[derive(Debug, Clone)]
pub struct ExternalBinding {
    /// The EAB key id.
    pub kid: String,
    /// Must equal the newAccount URL.
    pub url: String,
    /// The decoded payload: the account's JWK.
    pub payload: Vec<u8>,
    alg: String,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
}

impl ExternalBinding {
    /// Parses the `externalAccountBinding` member of a newAccount payload.
    pub fn parse(value: &Value) -> Result<ExternalBinding, JwsError> {
        let f: Flattened = serde_json::from_value(value.clone()).map_err(|_| {
            JwsError::Malformed(
                "\"externalAccountBinding\" must be a flattened JWS (protected, payload, signature)"
                    .into(),
            )
        })?;
        let header: Value = serde_json::from_slice(&b64("EAB protected header", &f.protected)?)
            .map_err(|_| JwsError::Malformed("the EAB protected header is not JSON".into()))?;
        let text = |k: &str| header.get(k).and_then(Value::as_str).map(str::to_owned);
        let alg = text("alg").unwrap_or_default();
        if !matches!(alg.as_str(), "HS256" | "HS384" | "HS512") {
            return Err(JwsError::BadAlgorithm(alg));
        }
        if header.get("nonce").is_some() {
            return Err(JwsError::Malformed(
                "the EAB protected header must not have a \"nonce\"".into(),
            ));
        }
        let kid = text("kid")
            .ok_or_else(|| JwsError::Malformed("the EAB protected header has no \"kid\"".into()))?;
        let url = text("url")
            .ok_or_else(|| JwsError::Malformed("the EAB protected header has no \"url\"".into()))?;
        let mut signing_input = Vec::with_capacity(f.protected.len() + f.payload.len() + 1);
        signing_input.extend_from_slice(f.protected.as_bytes());
        signing_input.push(b'.');
        signing_input.extend_from_slice(f.payload.as_bytes());
        Ok(ExternalBinding {
            kid,
            url,
            payload: b64("EAB payload", &f.payload)?,
            alg,
            signing_input,
            signature: b64("EAB signature", &f.signature)?,
        })
    }

    /// Checks the MAC with `key`, in constant time (ring).
    pub fn verify(&self, key: &[u8]) -> Result<(), JwsError> {
        use ring::hmac;
        let algorithm = match self.alg.as_str() {
            "HS256" => hmac::HMAC_SHA256,
            "HS384" => hmac::HMAC_SHA384,
            _ => hmac::HMAC_SHA512,
        };
        hmac::verify(
            &hmac::Key::new(algorithm, key),
            &self.signing_input,
            &self.signature,
        )
        .map_err(|_| JwsError::BadSignature)
    }
}

/// A public key from a JWK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicJwk {
    /// P-256: uncompressed point.
    P256(Vec<u8>),
    /// P-384: uncompressed point.
    P384(Vec<u8>),
    /// RSA modulus and exponent.
    Rsa {
        /// n.
        n: Vec<u8>,
        /// e.
        e: Vec<u8>,
    },
    /// Ed25519 public key.
    Ed25519(Vec<u8>),
}

impl PublicJwk {
    /// Reads a JWK (kty EC with crv P-256/P-384, RSA ≥ 2048 bits, OKP
    /// Ed25519).
    pub fn from_jwk(jwk: &Value) -> Result<PublicJwk, JwsError> {
        let field = |k: &str| {
            jwk.get(k)
                .and_then(Value::as_str)
                .ok_or_else(|| JwsError::Malformed(format!("the JWK has no \"{k}\"")))
        };
        let bytes = |k: &str| b64(&format!("JWK {k}"), field(k)?);
        match field("kty")? {
            "EC" => {
                let (x, y) = (bytes("x")?, bytes("y")?);
                let size = match field("crv")? {
                    "P-256" => 32,
                    "P-384" => 48,
                    other => {
                        return Err(JwsError::Malformed(format!(
                            "the JWK curve {other:?} is not accepted; use P-256 or P-384"
                        )))
                    }
                };
                if x.len() != size || y.len() != size {
                    return Err(JwsError::Malformed(
                        "the JWK point has the wrong size for its curve".into(),
                    ));
                }
                let mut point = Vec::with_capacity(1 + 2 * size);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Ok(if size == 32 {
                    PublicJwk::P256(point)
                } else {
                    PublicJwk::P384(point)
                })
            }
            "RSA" => {
                let (n, e) = (bytes("n")?, bytes("e")?);
                let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
                if bits < 2048 {
                    return Err(JwsError::Malformed(
                        "RSA account keys must have at least 2048 bits".into(),
                    ));
                }
                Ok(PublicJwk::Rsa { n, e })
            }
            "OKP" => {
                if field("crv")? != "Ed25519" {
                    return Err(JwsError::Malformed(
                        "only Ed25519 OKP keys are accepted".into(),
                    ));
                }
                let x = bytes("x")?;
                if x.len() != 32 {
                    return Err(JwsError::Malformed("an Ed25519 key has 32 bytes".into()));
                }
                Ok(PublicJwk::Ed25519(x))
            }
            other => Err(JwsError::Malformed(format!(
                "the JWK type {other:?} is not accepted; use EC, RSA or OKP"
            ))),
        }
    }

    /// Checks `signature` over `input` with `alg`, which must suit the key.
    pub fn verify(&self, alg: &str, input: &[u8], signature: &[u8]) -> Result<(), JwsError> {
        use ring::signature as s;
        let ok = match (self, alg) {
            (PublicJwk::P256(p), "ES256") => {
                s::UnparsedPublicKey::new(&s::ECDSA_P256_SHA256_FIXED, p)
                    .verify(input, signature)
                    .is_ok()
            }
            (PublicJwk::P384(p), "ES384") => {
                s::UnparsedPublicKey::new(&s::ECDSA_P384_SHA384_FIXED, p)
                    .verify(input, signature)
                    .is_ok()
            }
            (PublicJwk::Rsa { n, e }, "RS256") => s::RsaPublicKeyComponents { n, e }
                .verify(&s::RSA_PKCS1_2048_8192_SHA256, input, signature)
                .is_ok(),
            (PublicJwk::Ed25519(k), "EdDSA") => s::UnparsedPublicKey::new(&s::ED25519, k)
                .verify(input, signature)
                .is_ok(),
            (_, "ES256" | "ES384" | "RS256" | "EdDSA") => {
                return Err(JwsError::BadAlgorithm(format!(
                    "{alg} (it does not match the key)"
                )))
            }
            _ => return Err(JwsError::BadAlgorithm(alg.to_owned())),
        };
        if ok {
            Ok(())
        } else {
            Err(JwsError::BadSignature)
        }
    }
}

/// The RFC 7638 thumbprint (base64url SHA-256 of the required members in
/// lexicographic order, no whitespace).
pub fn thumbprint(jwk: &Value) -> Result<String, JwsError> {
    let key = PublicJwk::from_jwk(jwk)?;
    let s = |k: &str| {
        jwk.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let canonical = match key {
        PublicJwk::P256(_) | PublicJwk::P384(_) => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            s("crv"),
            s("x"),
            s("y")
        ),
        PublicJwk::Rsa { .. } => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, s("e"), s("n")),
        PublicJwk::Ed25519(_) => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, s("x")),
    };
    Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use serde_json::json;

    fn sign_es256(header: Value, payload: &[u8]) -> (Vec<u8>, Value) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = kp.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])});
        let mut header = header;
        header["jwk"] = jwk.clone();
        let p = URL_SAFE_NO_PAD.encode(header.to_string());
        let b = URL_SAFE_NO_PAD.encode(payload);
        let sig = kp.sign(&rng, format!("{p}.{b}").as_bytes()).unwrap();
        let body = json!({"protected": p, "payload": b, "signature": URL_SAFE_NO_PAD.encode(sig.as_ref())});
        (body.to_string().into_bytes(), jwk)
    }

    #[test]
    fn es256_verifies_and_tampering_fails() {
        let (body, jwk) = sign_es256(
            json!({"alg": "ES256", "nonce": "n1", "url": "https://ca/acme/new-account"}),
            b"{}",
        );
        let jws = Jws::parse(&body).unwrap();
        assert_eq!(jws.protected.url, "https://ca/acme/new-account");
        jws.verify(&jwk).unwrap();
        let mut v: Value = serde_json::from_slice(&body).unwrap();
        v["payload"] = json!(URL_SAFE_NO_PAD.encode(b"{\"a\":1}"));
        let tampered = Jws::parse(v.to_string().as_bytes()).unwrap();
        assert_eq!(tampered.verify(&jwk), Err(JwsError::BadSignature));
    }

    #[test]
    fn eddsa_verifies() {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(kp.public_key().as_ref())});
        let p = URL_SAFE_NO_PAD.encode(json!({"alg": "EdDSA", "url": "u", "jwk": jwk}).to_string());
        let sig = kp.sign(format!("{p}.").as_bytes());
        let body = json!({"protected": p, "payload": "", "signature": URL_SAFE_NO_PAD.encode(sig.as_ref())});
        let jws = Jws::parse(body.to_string().as_bytes()).unwrap();
        assert!(jws.payload.is_empty());
        jws.verify(&jwk).unwrap();
    }

    #[test]
    fn wrong_algorithms_and_headers_are_refused() {
        let (body, jwk) = sign_es256(json!({"alg": "ES384", "url": "u"}), b"{}");
        let jws = Jws::parse(&body).unwrap();
        assert!(matches!(jws.verify(&jwk), Err(JwsError::BadAlgorithm(_))));
        let (body, _) = sign_es256(json!({"alg": "HS256", "url": "u"}), b"{}");
        assert!(matches!(Jws::parse(&body), Err(JwsError::BadAlgorithm(_))));
        let (body, _) = sign_es256(json!({"alg": "ES256", "url": "u", "kid": "k"}), b"{}");
        assert!(
            matches!(Jws::parse(&body), Err(JwsError::Malformed(_))),
            "jwk and kid together"
        );
        assert!(Jws::parse(b"not json").is_err());
        assert_eq!(
            JwsError::BadAlgorithm("x".into()).acme_code().code(),
            "badSignatureAlgorithm"
        );
    }

    #[test]
    fn external_bindings_verify_with_their_key_only() {
        use ring::hmac;
        let key = b"0123456789abcdef0123456789abcdef";
        let protected = URL_SAFE_NO_PAD.encode(
            json!({"alg": "HS256", "kid": "eab_1", "url": "https://ca/acme/new-account"})
                .to_string(),
        );
        let payload = URL_SAFE_NO_PAD.encode(br#"{"kty":"EC"}"#);
        let mac = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, key),
            format!("{protected}.{payload}").as_bytes(),
        );
        let eab = json!({"protected": protected, "payload": payload,
            "signature": URL_SAFE_NO_PAD.encode(mac.as_ref())});
        let parsed = ExternalBinding::parse(&eab).unwrap();
        assert_eq!(parsed.kid, "eab_1");
        assert_eq!(parsed.url, "https://ca/acme/new-account");
        assert_eq!(parsed.payload, br#"{"kty":"EC"}"#);
        parsed.verify(key).unwrap();
        assert_eq!(
            parsed.verify(b"another key, same length........"),
            Err(JwsError::BadSignature)
        );
        let none =
            URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": "k", "url": "u"}).to_string());
        let bad = json!({"protected": none, "payload": payload, "signature": ""});
        assert!(matches!(
            ExternalBinding::parse(&bad),
            Err(JwsError::BadAlgorithm(_))
        ));
    }

    #[test]
    fn thumbprints_match_rfc7638() {
        // RFC 7638 §3.1.
        let jwk = json!({"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"});
        assert_eq!(
            thumbprint(&jwk).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }
}
