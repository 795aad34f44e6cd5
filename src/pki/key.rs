//! Private keys: generation, PKCS#8 PEM files (the root key encrypted with
//! PBES2), and signing through the [`KeySigner`] trait.
//!
//! Everything that signs on behalf of the CA goes through [`KeySigner`], so an
//! HSM or a cloud KMS can later stand behind an issuer without the profile or
//! signing code changing.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use pkcs8::der::pem::LineEnding;
use pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::Zeroizing;

/// PBKDF2-HMAC-SHA256 iterations for the encrypted root key (OWASP 2023).
const PBKDF2_ITERATIONS: u32 = 600_000;

/// The key algorithms hallmark can generate and issue from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// ECDSA on NIST P-256 with SHA-256 (the default).
    P256,
    /// ECDSA on NIST P-384 with SHA-384.
    P384,
    /// RSA 2048-bit, PKCS#1 v1.5 with SHA-256.
    Rsa2048,
    /// RSA 3072-bit.
    Rsa3072,
    /// RSA 4096-bit.
    Rsa4096,
}

impl KeyType {
    /// Every generatable key type, in the order they are documented.
    pub const ALL: [KeyType; 5] = [
        KeyType::P256,
        KeyType::P384,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
    ];

    /// The configuration name (`p256`, `rsa2048`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::P256 => "p256",
            KeyType::P384 => "p384",
            KeyType::Rsa2048 => "rsa2048",
            KeyType::Rsa3072 => "rsa3072",
            KeyType::Rsa4096 => "rsa4096",
        }
    }

    /// The RSA modulus size, or `None` for an EC key.
    pub fn rsa_bits(self) -> Option<usize> {
        match self {
            KeyType::Rsa2048 => Some(2048),
            KeyType::Rsa3072 => Some(3072),
            KeyType::Rsa4096 => Some(4096),
            KeyType::P256 | KeyType::P384 => None,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyType::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| KeyError::UnknownKeyType(s.to_owned()))
    }
}

/// Why a key could not be generated, read or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The configured key type name is not one hallmark knows.
    #[error("unknown key type {0:?}; expected one of p256, p384, rsa2048, rsa3072, rsa4096")]
    UnknownKeyType(String),
    /// RSA key generation failed (should not happen with a working RNG).
    #[error("RSA key generation failed: {0}")]
    Generate(String),
    /// The PEM text is not a PKCS#8 private key.
    #[error("the file is not a PKCS#8 PEM private key ({0})")]
    NotPkcs8(String),
    /// The key is PKCS#8 but not of a supported algorithm.
    #[error("the private key is not a P-256, P-384 or RSA key")]
    UnsupportedAlgorithm,
    /// The encrypted key could not be decrypted with the passphrase given.
    #[error("the passphrase is wrong or the encrypted key is damaged")]
    WrongPassphrase,
    /// The key is encrypted but no passphrase was supplied.
    #[error("the private key is encrypted; a passphrase is required")]
    Encrypted,
    /// Encoding failed.
    #[error("could not encode the private key: {0}")]
    Encode(String),
    /// The signing operation failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// The signature algorithm a [`KeySigner`] produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureScheme {
    /// ecdsa-with-SHA256 over P-256.
    EcdsaP256Sha256,
    /// ecdsa-with-SHA384 over P-384.
    EcdsaP384Sha384,
    /// sha256WithRSAEncryption (PKCS#1 v1.5).
    RsaPkcs1Sha256,
}

impl SignatureScheme {
    pub(crate) fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            SignatureScheme::EcdsaP256Sha256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            SignatureScheme::EcdsaP384Sha384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            SignatureScheme::RsaPkcs1Sha256 => &rcgen::PKCS_RSA_SHA256,
        }
    }

    /// A key type that signs with this scheme (RSA: 2048 bits).
    pub fn key_type(self) -> KeyType {
        match self {
            SignatureScheme::EcdsaP256Sha256 => KeyType::P256,
            SignatureScheme::EcdsaP384Sha384 => KeyType::P384,
            SignatureScheme::RsaPkcs1Sha256 => KeyType::Rsa2048,
        }
    }

    /// The DER AlgorithmIdentifier of this signature algorithm.
    pub fn algorithm_identifier(self) -> &'static [u8] {
        match self {
            // ecdsa-with-SHA256 (1.2.840.10045.4.3.2), no parameters
            SignatureScheme::EcdsaP256Sha256 => &[
                0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
            ],
            // ecdsa-with-SHA384 (1.2.840.10045.4.3.3)
            SignatureScheme::EcdsaP384Sha384 => &[
                0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
            ],
            // sha256WithRSAEncryption (1.2.840.113549.1.1.11), NULL parameters
            SignatureScheme::RsaPkcs1Sha256 => &[
                0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05,
                0x00,
            ],
        }
    }
}

/// Anything that can sign for an issuer: a key in memory today, an HSM later.
pub trait KeySigner: Send + Sync {
    /// The algorithm of the signatures [`KeySigner::sign`] returns.
    fn scheme(&self) -> SignatureScheme;
    /// The raw subjectPublicKey bits (EC point or PKCS#1 RSAPublicKey).
    fn public_key_raw(&self) -> &[u8];
    /// The DER SubjectPublicKeyInfo.
    fn public_key_spki(&self) -> &[u8];
    /// Signs `message`, returning the signature as it goes into X.509
    /// (DER ECDSA-Sig-Value or the RSA signature bytes).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError>;
}

/// The key as the RustCrypto crates hold it: generation and PKCS#8.
enum Secret {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    Rsa(Box<rsa::RsaPrivateKey>),
}

/// The same key loaded into ring, which signs several times faster than the
/// pure-Rust arithmetic (assembly field and bignum code, RSA blinding built
/// in); see docs/BENCHMARKS.md.
enum RingKey {
    Ecdsa(ring::signature::EcdsaKeyPair),
    Rsa(ring::signature::RsaKeyPair),
}

/// A private key held in memory.
pub struct PrivateKey {
    key_type: KeyType,
    secret: Secret,
    ring: RingKey,
    public_raw: Vec<u8>,
    public_spki: Vec<u8>,
}

impl PrivateKey {
    /// Generates a fresh key of `key_type` from the operating system's RNG.
    pub fn generate(key_type: KeyType) -> Result<Self, KeyError> {
        let secret = match key_type {
            KeyType::P256 => Secret::P256(p256::ecdsa::SigningKey::random(&mut OsRng)),
            KeyType::P384 => Secret::P384(p384::ecdsa::SigningKey::random(&mut OsRng)),
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                let bits = key_type.rsa_bits().expect("an RSA key type has a size");
                let key = rsa::RsaPrivateKey::new(&mut OsRng, bits)
                    .map_err(|e| KeyError::Generate(e.to_string()))?;
                rsa_secret(key)
            }
        };
        Self::from_secret(secret)
    }

    fn from_secret(secret: Secret) -> Result<Self, KeyError> {
        let enc = |e: pkcs8::spki::Error| KeyError::Encode(e.to_string());
        let (key_type, public_spki) = match &secret {
            Secret::P256(k) => (
                KeyType::P256,
                k.verifying_key().to_public_key_der().map_err(enc)?,
            ),
            Secret::P384(k) => (
                KeyType::P384,
                k.verifying_key().to_public_key_der().map_err(enc)?,
            ),
            Secret::Rsa(k) => {
                let bits = rsa::traits::PublicKeyParts::size(k.as_ref()) * 8;
                let key_type = match bits {
                    2048 => KeyType::Rsa2048,
                    3072 => KeyType::Rsa3072,
                    4096 => KeyType::Rsa4096,
                    _ => return Err(KeyError::UnsupportedAlgorithm),
                };
                (
                    key_type,
                    k.to_public_key().to_public_key_der().map_err(enc)?,
                )
            }
        };
        let public_spki = public_spki.as_bytes().to_vec();
        let public_raw = spki_raw_key(&public_spki)?;
        let pkcs8 = pkcs8_der(&secret)?;
        let rng = ring::rand::SystemRandom::new();
        let rejected =
            |e: ring::error::KeyRejected| KeyError::Encode(format!("ring refused the key: {e}"));
        let ring = match key_type {
            KeyType::P256 => RingKey::Ecdsa(
                ring::signature::EcdsaKeyPair::from_pkcs8(
                    &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                    pkcs8.as_bytes(),
                    &rng,
                )
                .map_err(rejected)?,
            ),
            KeyType::P384 => RingKey::Ecdsa(
                ring::signature::EcdsaKeyPair::from_pkcs8(
                    &ring::signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                    pkcs8.as_bytes(),
                    &rng,
                )
                .map_err(rejected)?,
            ),
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => RingKey::Rsa(
                ring::signature::RsaKeyPair::from_pkcs8(pkcs8.as_bytes()).map_err(rejected)?,
            ),
        };
        Ok(PrivateKey {
            key_type,
            secret,
            ring,
            public_raw,
            public_spki,
        })
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    fn pkcs8_der(&self) -> Result<pkcs8::SecretDocument, KeyError> {
        pkcs8_der(&self.secret)
    }

    /// Unencrypted PKCS#8 PEM (`PRIVATE KEY`).
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        self.pkcs8_der()?
            .to_pem("PRIVATE KEY", LineEnding::LF)
            .map_err(|e| KeyError::Encode(e.to_string()))
    }

    /// Encrypted PKCS#8 PEM (`ENCRYPTED PRIVATE KEY`): PBES2 with
    /// PBKDF2-HMAC-SHA256 and AES-256-CBC, which OpenSSL and every other
    /// PKCS#8 reader understand.
    pub fn to_encrypted_pkcs8_pem(&self, passphrase: &[u8]) -> Result<Zeroizing<String>, KeyError> {
        let mut salt = [0u8; 16];
        let mut iv = [0u8; 16];
        OsRng.fill_bytes(&mut salt);
        OsRng.fill_bytes(&mut iv);
        let params =
            pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(PBKDF2_ITERATIONS, &salt, &iv)
                .map_err(|e| KeyError::Encode(e.to_string()))?;
        let der = self.pkcs8_der()?;
        let info = pkcs8::PrivateKeyInfo::try_from(der.as_bytes())
            .map_err(|e| KeyError::Encode(e.to_string()))?;
        info.encrypt_with_params(params, passphrase)
            .map_err(|e| KeyError::Encode(e.to_string()))?
            .to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF)
            .map_err(|e| KeyError::Encode(e.to_string()))
    }

    /// Reads a PKCS#8 PEM key; `passphrase` is needed when it is encrypted.
    pub fn from_pkcs8_pem(pem: &str, passphrase: Option<&[u8]>) -> Result<Self, KeyError> {
        let (label, doc) =
            pkcs8::SecretDocument::from_pem(pem).map_err(|e| KeyError::NotPkcs8(e.to_string()))?;
        match label {
            "PRIVATE KEY" => Self::from_pkcs8_der(doc.as_bytes()),
            "ENCRYPTED PRIVATE KEY" => {
                let passphrase = passphrase.ok_or(KeyError::Encrypted)?;
                let info = pkcs8::EncryptedPrivateKeyInfo::try_from(doc.as_bytes())
                    .map_err(|e| KeyError::NotPkcs8(e.to_string()))?;
                let plain = info
                    .decrypt(passphrase)
                    .map_err(|_| KeyError::WrongPassphrase)?;
                Self::from_pkcs8_der(plain.as_bytes())
            }
            other => Err(KeyError::NotPkcs8(format!("PEM label is {other:?}"))),
        }
    }

    /// Reads unencrypted PKCS#8 DER.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        let secret = if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_der(der) {
            Secret::P256(k)
        } else if let Ok(k) = p384::ecdsa::SigningKey::from_pkcs8_der(der) {
            Secret::P384(k)
        } else if let Ok(k) = rsa::RsaPrivateKey::from_pkcs8_der(der) {
            rsa_secret(k)
        } else {
            return Err(KeyError::UnsupportedAlgorithm);
        };
        Self::from_secret(secret)
    }

    /// Wraps the key for sharing between tasks.
    pub fn into_signer(self) -> Arc<dyn KeySigner> {
        Arc::new(self)
    }
}

fn rsa_secret(key: rsa::RsaPrivateKey) -> Secret {
    Secret::Rsa(Box::new(key))
}

/// PKCS#8 DER (secret; zeroised on drop).
fn pkcs8_der(secret: &Secret) -> Result<pkcs8::SecretDocument, KeyError> {
    let doc = match secret {
        Secret::P256(k) => k.to_pkcs8_der(),
        Secret::P384(k) => k.to_pkcs8_der(),
        Secret::Rsa(k) => k.to_pkcs8_der(),
    };
    doc.map_err(|e| KeyError::Encode(e.to_string()))
}

/// Extracts the subjectPublicKey bits of a DER SubjectPublicKeyInfo.
fn spki_raw_key(spki: &[u8]) -> Result<Vec<u8>, KeyError> {
    use x509_parser::prelude::FromDer;
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki)
        .map_err(|e| KeyError::Encode(e.to_string()))?;
    Ok(info.subject_public_key.data.to_vec())
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("PrivateKey")
            .field("key_type", &self.key_type)
            .finish_non_exhaustive()
    }
}

impl KeySigner for PrivateKey {
    fn scheme(&self) -> SignatureScheme {
        match self.key_type {
            KeyType::P256 => SignatureScheme::EcdsaP256Sha256,
            KeyType::P384 => SignatureScheme::EcdsaP384Sha384,
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                SignatureScheme::RsaPkcs1Sha256
            }
        }
    }

    fn public_key_raw(&self) -> &[u8] {
        &self.public_raw
    }

    fn public_key_spki(&self) -> &[u8] {
        &self.public_spki
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        match &self.ring {
            RingKey::Ecdsa(k) => k
                .sign(&rng, message)
                .map(|sig| sig.as_ref().to_vec())
                .map_err(|_| KeyError::Sign("ECDSA signing failed".into())),
            RingKey::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(&ring::signature::RSA_PKCS1_SHA256, &rng, message, &mut sig)
                    .map_err(|_| KeyError::Sign("RSA signing failed".into()))?;
                Ok(sig)
            }
        }
    }
}

/// Adapts a [`KeySigner`] to rcgen's signing trait; rcgen stays inside `pki/`.
pub(crate) struct RcgenKey(pub(crate) Arc<dyn KeySigner>);

impl rcgen::PublicKeyData for RcgenKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key_raw()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.scheme().rcgen()
    }
}

impl rcgen::SigningKey for RcgenKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg).map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_type_round_trips_through_pkcs8_pem() {
        for key_type in [KeyType::P256, KeyType::P384, KeyType::Rsa2048] {
            let key = PrivateKey::generate(key_type).unwrap();
            let pem = key.to_pkcs8_pem().unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
            let back = PrivateKey::from_pkcs8_pem(&pem, None).unwrap();
            assert_eq!(back.key_type(), key_type);
            assert_eq!(back.public_key_spki(), key.public_key_spki());
        }
    }

    #[test]
    fn encrypted_key_loads_with_right_passphrase_only() {
        let key = PrivateKey::generate(KeyType::P256).unwrap();
        let pem = key.to_encrypted_pkcs8_pem(b"correct horse").unwrap();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        let back = PrivateKey::from_pkcs8_pem(&pem, Some(b"correct horse")).unwrap();
        assert_eq!(back.public_key_spki(), key.public_key_spki());
        assert!(matches!(
            PrivateKey::from_pkcs8_pem(&pem, Some(b"wrong")),
            Err(KeyError::WrongPassphrase)
        ));
        assert!(matches!(
            PrivateKey::from_pkcs8_pem(&pem, None),
            Err(KeyError::Encrypted)
        ));
    }

    #[test]
    fn key_type_names_parse() {
        for k in KeyType::ALL {
            assert_eq!(k.as_str().parse::<KeyType>().unwrap(), k);
        }
        assert!("ed448".parse::<KeyType>().is_err());
    }
}
