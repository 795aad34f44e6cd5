//! The issuing key in a PKCS#11 token (an HSM; SoftHSM2 in the tests): made
//! there, non-extractable, and used through the same [`KeySigner`] trait as
//! a key file, so certificates, CRLs, OCSP answers (with `ocsp.signer =
//! "issuer"`, or the delegated responder's certificate) and the service's
//! own certificate are all signed inside the token.
//!
//! A module is loaded and initialised once per process; sessions are
//! pooled (PKCS#11 forbids using one session from two threads at once, and
//! opening one per signature would cost more than the signature), and the
//! first session's login holds for all of them.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use crate::pki::der;
use crate::pki::key::{KeyError, SignatureScheme};
use crate::pki::{KeySigner, KeyType};

/// Sessions kept open for reuse; more may be open at a burst's peak.
const POOLED_SESSIONS: usize = 16;

/// Where the key is: the `[ca]` PKCS#11 settings, with the PIN read.
pub struct TokenSettings {
    /// The PKCS#11 module (`/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token's label.
    pub token: String,
    /// The user PIN.
    pub pin: Zeroizing<String>,
    /// The key's label (CKA_LABEL of its private and public objects).
    pub key_label: String,
}

impl fmt::Debug for TokenSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSettings")
            .field("module", &self.module)
            .field("token", &self.token)
            .field("key_label", &self.key_label)
            .finish_non_exhaustive()
    }
}

/// Why the token could not be used. Each is one sentence for the operator.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The module did not load or initialise.
    #[error("the PKCS#11 module {path} could not be loaded: {reason}")]
    Module {
        /// The module.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No slot holds a token with this label.
    #[error("no PKCS#11 token labelled {0:?} is present (ca.pkcs11_token)")]
    NoToken(String),
    /// The PIN was refused.
    #[error("the PKCS#11 token {token:?} refused the PIN: {reason}; check ca.pkcs11_pin_file")]
    Pin {
        /// The token.
        token: String,
        /// The token's answer.
        reason: String,
    },
    /// No key with this label.
    #[error(
        "the PKCS#11 token {token:?} holds no private key labelled {label:?} (ca.pkcs11_key_label)"
    )]
    NoKey {
        /// The token.
        token: String,
        /// The label.
        label: String,
    },
    /// A key of a kind hallmark does not sign with.
    #[error("the key {0:?} in the token is not a P-256, P-384 or RSA key")]
    UnsupportedKey(String),
    /// Anything else the token answered.
    #[error("the PKCS#11 token failed to {action}: {reason}")]
    Token {
        /// What was being done.
        action: &'static str,
        /// The token's answer.
        reason: String,
    },
}

fn token_err(action: &'static str) -> impl FnOnce(CkError) -> TokenError {
    move |e| TokenError::Token {
        action,
        reason: e.to_string(),
    }
}

/// The module at `path`, loaded and initialised once per process.
fn module(path: &Path) -> Result<Pkcs11, TokenError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(m) = modules.get(path) {
        return Ok(m.clone());
    }
    let failed = |reason: String| TokenError::Module {
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_file() {
        return Err(failed("there is no such file".into()));
    }
    let ctx = Pkcs11::new(path).map_err(|e| failed(e.to_string()))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(failed(e.to_string())),
    }
    modules.insert(path.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// The slot holding the token labelled `label`.
fn find_slot(ctx: &Pkcs11, label: &str) -> Result<Slot, TokenError> {
    for slot in ctx
        .get_slots_with_initialized_token()
        .map_err(token_err("list its slots"))?
    {
        let info = ctx
            .get_token_info(slot)
            .map_err(token_err("describe a token"))?;
        if info.label() == label {
            return Ok(slot);
        }
    }
    Err(TokenError::NoToken(label.to_owned()))
}

/// A private key in a token, with a pool of logged-in sessions.
pub struct TokenKey {
    ctx: Pkcs11,
    slot: Slot,
    token: String,
    pin: Zeroizing<String>,
    key: ObjectHandle,
    scheme: SignatureScheme,
    public_raw: Vec<u8>,
    public_spki: Vec<u8>,
    pool: Mutex<Vec<Session>>,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey")
            .field("token", &self.token)
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl TokenKey {
    /// Opens the key labelled `settings.key_label`.
    pub fn open(settings: &TokenSettings) -> Result<TokenKey, TokenError> {
        Self::open_or_generate(settings, None).map(|(k, _)| k)
    }

    /// Opens the key labelled `settings.key_label`, or, when there is none
    /// and `generate` names a type, makes one of that type in the token
    /// (sensitive, never extractable). Returns whether it was made.
    pub fn open_or_generate(
        settings: &TokenSettings,
        generate: Option<KeyType>,
    ) -> Result<(TokenKey, bool), TokenError> {
        let ctx = module(&settings.module)?;
        let slot = find_slot(&ctx, &settings.token)?;
        let session = open_session(&ctx, slot, &settings.token, &settings.pin)?;
        let label = settings.key_label.as_str();
        let find = |class: ObjectClass| {
            session
                .find_objects(&[Attribute::Class(class), Attribute::Label(label.into())])
                .map_err(token_err("search for the key"))
        };
        let mut made = false;
        let (private, public) = match (find(ObjectClass::PRIVATE_KEY)?.first(), generate) {
            (Some(private), _) => {
                let public = find(ObjectClass::PUBLIC_KEY)?
                    .first()
                    .copied()
                    .ok_or_else(|| TokenError::Token {
                        action: "find the key's public half",
                        reason: format!("no public key object is labelled {label:?}"),
                    })?;
                (*private, public)
            }
            (None, Some(key_type)) => {
                made = true;
                let pair = generate_pair(&session, label, key_type)?;
                (pair.1, pair.0)
            }
            (None, None) => {
                return Err(TokenError::NoKey {
                    token: settings.token.clone(),
                    label: label.to_owned(),
                })
            }
        };
        let (scheme, public_raw, public_spki) = public_key(&session, public, label)?;
        Ok((
            TokenKey {
                ctx,
                slot,
                token: settings.token.clone(),
                pin: settings.pin.clone(),
                key: private,
                scheme,
                public_raw,
                public_spki,
                pool: Mutex::new(vec![session]),
            },
            made,
        ))
    }

    /// Wraps the key for sharing between tasks.
    pub fn into_signer(self) -> Arc<dyn KeySigner> {
        Arc::new(self)
    }

    fn session(&self) -> Result<Session, TokenError> {
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match pooled {
            Some(s) => Ok(s),
            None => open_session(&self.ctx, self.slot, &self.token, &self.pin),
        }
    }

    fn give_back(&self, session: Session) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOLED_SESSIONS {
            pool.push(session);
        }
    }
}

/// Opens a session on `slot` and logs in (a login holds for every session
/// of this process on the token, so "already logged in" is fine).
fn open_session(
    ctx: &Pkcs11,
    slot: Slot,
    token: &str,
    pin: &Zeroizing<String>,
) -> Result<Session, TokenError> {
    let session = ctx
        .open_rw_session(slot)
        .map_err(token_err("open a session"))?;
    match session.login(UserType::User, Some(&AuthPin::new(pin.as_str().into()))) {
        Ok(()) => Ok(session),
        Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(e) => Err(TokenError::Pin {
            token: token.to_owned(),
            reason: match e {
                CkError::Pkcs11(RvError::PinIncorrect, _) => "it is incorrect".into(),
                CkError::Pkcs11(RvError::PinLocked, _) => "it is locked".into(),
                CkError::Pkcs11(RvError::PinExpired, _) => "it has expired".into(),
                CkError::Pkcs11(RvError::UserPinNotInitialized, _) => {
                    "the token has no user PIN yet".into()
                }
                other => other.to_string(),
            },
        }),
    }
}

const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_OID: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const RSA_ENCRYPTION: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

/// Makes a key pair in the token: (public, private).
fn generate_pair(
    session: &Session,
    label: &str,
    key_type: KeyType,
) -> Result<(ObjectHandle, ObjectHandle), TokenError> {
    let id = rand::random::<[u8; 8]>().to_vec();
    let common = |extra: Vec<Attribute>| {
        let mut t = vec![
            Attribute::Token(true),
            Attribute::Label(label.into()),
            Attribute::Id(id.clone()),
        ];
        t.extend(extra);
        t
    };
    let private = common(vec![
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
    ]);
    let (mechanism, public) = match key_type {
        KeyType::P256 | KeyType::P384 => {
            let curve = if key_type == KeyType::P256 {
                P256_OID
            } else {
                P384_OID
            };
            (
                Mechanism::EccKeyPairGen,
                common(vec![
                    Attribute::Verify(true),
                    Attribute::EcParams(curve.to_vec()),
                ]),
            )
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            let bits: u64 = match key_type {
                KeyType::Rsa2048 => 2048,
                KeyType::Rsa3072 => 3072,
                _ => 4096,
            };
            (
                Mechanism::RsaPkcsKeyPairGen,
                common(vec![
                    Attribute::Verify(true),
                    Attribute::ModulusBits(bits.into()),
                    Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                ]),
            )
        }
    };
    session
        .generate_key_pair(&mechanism, &public, &private)
        .map_err(token_err("generate the key"))
}

/// The scheme, the raw subjectPublicKey and the SubjectPublicKeyInfo of
/// the public key object.
fn public_key(
    session: &Session,
    public: ObjectHandle,
    label: &str,
) -> Result<(SignatureScheme, Vec<u8>, Vec<u8>), TokenError> {
    let attrs = session
        .get_attributes(
            public,
            &[
                AttributeType::KeyType,
                AttributeType::EcParams,
                AttributeType::EcPoint,
                AttributeType::Modulus,
                AttributeType::PublicExponent,
            ],
        )
        .map_err(token_err("read the public key"))?;
    let mut kind = None;
    let (mut params, mut point, mut modulus, mut exponent) = (None, None, None, None);
    for a in attrs {
        match a {
            Attribute::KeyType(k) => kind = Some(k),
            Attribute::EcParams(p) => params = Some(p),
            Attribute::EcPoint(p) => point = Some(p),
            Attribute::Modulus(m) => modulus = Some(m),
            Attribute::PublicExponent(e) => exponent = Some(e),
            _ => {}
        }
    }
    let unsupported = || TokenError::UnsupportedKey(label.to_owned());
    match kind {
        Some(CkKeyType::EC) => {
            let params = params.ok_or_else(unsupported)?;
            let (scheme, len) = if params == P256_OID {
                (SignatureScheme::EcdsaP256Sha256, 65)
            } else if params == P384_OID {
                (SignatureScheme::EcdsaP384Sha384, 97)
            } else {
                return Err(unsupported());
            };
            let point = point.ok_or_else(unsupported)?;
            // CKA_EC_POINT is a DER OCTET STRING (some tokens give the bare
            // point).
            let raw = if point.len() == len {
                point
            } else if point.len() == len + 2 && point[0] == 0x04 && point[1] as usize == len {
                point[2..].to_vec()
            } else {
                return Err(unsupported());
            };
            let mut spki = Vec::new();
            der::nested(&mut spki, 0x30, |out| {
                der::nested(out, 0x30, |out| {
                    out.extend_from_slice(EC_PUBLIC_KEY);
                    out.extend_from_slice(&params);
                });
                bit_string(out, &raw);
            });
            Ok((scheme, raw, spki))
        }
        Some(CkKeyType::RSA) => {
            let (n, e) = (
                modulus.ok_or_else(unsupported)?,
                exponent.ok_or_else(unsupported)?,
            );
            let mut raw = Vec::new();
            der::nested(&mut raw, 0x30, |out| {
                der::unsigned_integer(out, &n);
                der::unsigned_integer(out, &e);
            });
            let mut spki = Vec::new();
            der::nested(&mut spki, 0x30, |out| {
                der::tlv(out, 0x30, RSA_ENCRYPTION);
                bit_string(out, &raw);
            });
            Ok((SignatureScheme::RsaPkcs1Sha256, raw, spki))
        }
        _ => Err(unsupported()),
    }
}

fn bit_string(out: &mut Vec<u8>, bytes: &[u8]) {
    der::nested(out, 0x03, |out| {
        out.push(0);
        out.extend_from_slice(bytes);
    });
}

/// A raw ECDSA signature (r ‖ s, as PKCS#11 returns it) as the DER
/// ECDSA-Sig-Value X.509 carries.
fn ecdsa_der(raw: &[u8]) -> Result<Vec<u8>, KeyError> {
    if raw.is_empty() || raw.len() % 2 != 0 {
        return Err(KeyError::Sign(format!(
            "the token returned an ECDSA signature of {} bytes",
            raw.len()
        )));
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut out = Vec::with_capacity(raw.len() + 8);
    der::nested(&mut out, 0x30, |out| {
        der::unsigned_integer(out, r);
        der::unsigned_integer(out, s);
    });
    Ok(out)
}

impl KeySigner for TokenKey {
    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }

    fn public_key_raw(&self) -> &[u8] {
        &self.public_raw
    }

    fn public_key_spki(&self) -> &[u8] {
        &self.public_spki
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let session = self.session().map_err(|e| KeyError::Sign(e.to_string()))?;
        let result = match self.scheme {
            SignatureScheme::EcdsaP256Sha256 | SignatureScheme::EcdsaP384Sha384 => {
                let algorithm = if self.scheme == SignatureScheme::EcdsaP256Sha256 {
                    &ring::digest::SHA256
                } else {
                    &ring::digest::SHA384
                };
                let digest = ring::digest::digest(algorithm, message);
                session
                    .sign(&Mechanism::Ecdsa, self.key, digest.as_ref())
                    .map_err(|e| KeyError::Sign(format!("the PKCS#11 token: {e}")))
                    .and_then(|raw| ecdsa_der(&raw))
            }
            SignatureScheme::RsaPkcs1Sha256 => session
                .sign(&Mechanism::Sha256RsaPkcs, self.key, message)
                .map_err(|e| KeyError::Sign(format!("the PKCS#11 token: {e}"))),
        };
        // A session the token broke is dropped (closed), not pooled.
        if result.is_ok() {
            self.give_back(session);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_ecdsa_signatures_become_der() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r needs a leading zero
        raw[63] = 1;
        let der = ecdsa_der(&raw).unwrap();
        assert_eq!(&der[..5], &[0x30, 0x26, 0x02, 0x21, 0x00]);
        assert!(ecdsa_der(&[1, 2, 3]).is_err());
    }
}
