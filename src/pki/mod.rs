//! Pure X.509 work: keys, CSR intake, certificate profiles, CA creation and
//! signing. No I/O here: time and randomness come in as arguments.

pub mod ca;
pub mod constraints;
pub mod crl;
pub mod csr;
pub mod der;
pub mod intermediate;
pub mod key;
pub mod net;
pub mod ocsp;
pub mod pkcs7;
pub mod profile;
pub mod serial;
pub mod weak;

use std::fmt;
use std::net::IpAddr;

pub use ca::{CaCertificate, IssuedCertificate, Issuer};
pub use constraints::NameConstraints;
pub use csr::{Csr, CsrError, PublicKeyKind, UnverifiedCsr};
pub use key::{KeySigner, KeyType, PrivateKey};
pub use profile::{Profile, Shape, Subject};
pub use serial::Serial;

/// A name a certificate can be issued for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum Identifier {
    /// A DNS name, possibly a wildcard (`*.a.internal`).
    Dns(String),
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
}

impl Identifier {
    /// The identifier as text (`a.internal`, `10.0.0.1`).
    pub fn value(&self) -> String {
        match self {
            Identifier::Dns(name) => name.clone(),
            Identifier::Ip(ip) => ip.to_string(),
        }
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identifier::Dns(name) => f.write_str(name),
            Identifier::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// SHA-256 of `der`, upper-case hex pairs joined by colons (as `openssl
/// x509 -fingerprint -sha256` prints it).
pub fn sha256_fingerprint(der: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A DER certificate's key (`ECDSA P-256`, `RSA 2048-bit`) and signature
/// algorithm (`ecdsa-with-SHA256`), as the dashboard shows them; `None`
/// if it does not parse.
pub fn describe_certificate(der: &[u8]) -> Option<(String, String)> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some((
        csr::classify_key(cert.public_key()).describe(),
        csr::signature_algorithm_name(&cert.signature_algorithm.algorithm),
    ))
}

/// Encodes PEM with LF line endings.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Decodes every PEM block with `label` from `text`, in order.
pub fn pem_decode_all(text: &str, label: &str) -> Vec<Vec<u8>> {
    use base64::Engine;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let after = &rest[start + begin.len()..];
        let Some(stop) = after.find(&end) else { break };
        let body: String = after[..stop].split_whitespace().collect();
        if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(body) {
            out.push(der);
        }
        rest = &after[stop + end.len()..];
    }
    out
}
