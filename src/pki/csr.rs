//! CSR intake: parse PEM or DER PKCS#10, verify proof of possession, and
//! extract the public key and the requested names.
//!
//! Only the public key and the names are taken from a CSR. Extensions the
//! requester asked for are never copied into a certificate (DESIGN §3).

use std::net::IpAddr;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::der_parser::oid;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use super::Identifier;

/// Largest CSR accepted, in bytes of DER. A 4096-bit RSA CSR with 100 names
/// is about 5 KiB.
pub const MAX_CSR_BYTES: usize = 32 * 1024;

/// The kind and size of a public key, as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKeyKind {
    /// ECDSA on NIST P-256.
    EcP256,
    /// ECDSA on NIST P-384.
    EcP384,
    /// An EC key on a curve hallmark does not issue for (the OID).
    EcOther(String),
    /// RSA with the modulus size in bits and the public exponent.
    Rsa {
        /// Modulus size in bits.
        bits: usize,
        /// Whether the public exponent is odd and at least 3.
        exponent_ok: bool,
        /// A known-bad modulus (small factor, ROCA).
        weak: Option<super::weak::Weakness>,
    },
    /// Ed25519.
    Ed25519,
    /// Any other algorithm (the OID).
    Other(String),
}

impl PublicKeyKind {
    /// A short human description (`P-256`, `RSA 2048-bit`).
    pub fn describe(&self) -> String {
        match self {
            PublicKeyKind::EcP256 => "ECDSA P-256".into(),
            PublicKeyKind::EcP384 => "ECDSA P-384".into(),
            PublicKeyKind::EcOther(oid) => format!("EC on curve {oid}"),
            PublicKeyKind::Rsa { bits, .. } => format!("RSA {bits}-bit"),
            PublicKeyKind::Ed25519 => "Ed25519".into(),
            PublicKeyKind::Other(oid) => format!("algorithm {oid}"),
        }
    }

    /// Whether this is an RSA key (which gets keyEncipherment too).
    pub fn is_rsa(&self) -> bool {
        matches!(self, PublicKeyKind::Rsa { .. })
    }
}

/// Why a CSR could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Neither a `CERTIFICATE REQUEST` PEM block nor DER.
    #[error("the CSR is not a PEM \"CERTIFICATE REQUEST\" or DER PKCS#10 request")]
    NotACsr,
    /// Larger than [`MAX_CSR_BYTES`].
    #[error("the CSR is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// Size given.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// DER that does not parse as PKCS#10.
    #[error("the CSR could not be parsed: {0}")]
    Malformed(String),
    /// Proof of possession failed.
    #[error("the CSR signature does not verify with its own public key, so it does not prove possession of the private key")]
    BadSignature,
    /// A SAN of a type hallmark does not issue (email, URI, …).
    #[error("the CSR asks for a {kind} subject alternative name; only DNS names and IP addresses can be certified")]
    UnsupportedName {
        /// The GeneralName kind.
        kind: &'static str,
    },
    /// An IP SAN that is not 4 or 16 bytes.
    #[error("the CSR contains an IP address subject alternative name that is not 4 or 16 bytes")]
    BadIpAddress,
    /// No names at all.
    #[error("the CSR names nothing: it needs a subjectAltName extension or a common name")]
    NoNames,
    /// The CN is not among the SANs.
    #[error("the CSR common name {0:?} is not one of its subject alternative names")]
    CommonNameNotInSans(String),
}

impl CsrError {
    /// The ACME error type (RFC 8555 §6.7) this refusal is reported as.
    pub fn acme_code(&self) -> crate::acme_error::AcmeError {
        use crate::acme_error::AcmeError;
        match self {
            CsrError::UnsupportedName { .. } | CsrError::BadIpAddress => {
                AcmeError::RejectedIdentifier
            }
            _ => AcmeError::BadCsr,
        }
    }
}

/// A parsed CSR whose signature has been verified.
#[derive(Debug, Clone)]
pub struct Csr {
    der: Vec<u8>,
    spki_der: Vec<u8>,
    key: PublicKeyKind,
    common_name: Option<String>,
    subject: String,
    identifiers: Vec<Identifier>,
    signature_algorithm: String,
}

impl Csr {
    /// Parses a CSR from PEM text or DER bytes and verifies its signature.
    pub fn parse(input: &[u8]) -> Result<Csr, CsrError> {
        UnverifiedCsr::parse(input)?.verify()
    }
}

/// A CSR that parsed but whose signature is not yet checked: look at its key
/// (and refuse a weak one) before spending a signature verification on it,
/// as boulder's VerifyCSR does. Only [`UnverifiedCsr::verify`] makes a [`Csr`].
#[derive(Debug, Clone)]
pub struct UnverifiedCsr(Csr);

impl UnverifiedCsr {
    /// Parses a CSR from PEM text or DER bytes.
    pub fn parse(input: &[u8]) -> Result<UnverifiedCsr, CsrError> {
        let der = if input.first() == Some(&0x30) {
            input.to_vec()
        } else {
            let text = std::str::from_utf8(input).map_err(|_| CsrError::NotACsr)?;
            let mut blocks = super::pem_decode_all(text, "CERTIFICATE REQUEST");
            if blocks.is_empty() {
                blocks = super::pem_decode_all(text, "NEW CERTIFICATE REQUEST");
            }
            if blocks.len() != 1 {
                return Err(CsrError::NotACsr);
            }
            blocks.remove(0)
        };
        if der.len() > MAX_CSR_BYTES {
            return Err(CsrError::TooLarge {
                size: der.len(),
                limit: MAX_CSR_BYTES,
            });
        }
        Self::parse_der(der).map(UnverifiedCsr)
    }

    /// The requester's key, not yet proven.
    pub fn key(&self) -> &PublicKeyKind {
        &self.0.key
    }

    /// Verifies the signature with the CSR's own key (proof of possession).
    pub fn verify(self) -> Result<Csr, CsrError> {
        let (_, req) = X509CertificationRequest::from_der(&self.0.der)
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        req.verify_signature().map_err(|_| CsrError::BadSignature)?;
        Ok(self.0)
    }

    fn parse_der(der: Vec<u8>) -> Result<Csr, CsrError> {
        let (rest, req) = X509CertificationRequest::from_der(&der)
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed("trailing bytes after the CSR".into()));
        }

        let info = &req.certification_request_info;
        let key = classify_key(&info.subject_pki);
        let common_name = info
            .subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);

        let mut identifiers = Vec::new();
        if let Some(extensions) = req.requested_extensions() {
            for ext in extensions {
                if let ParsedExtension::SubjectAlternativeName(san) = ext {
                    for name in &san.general_names {
                        identifiers.push(general_name_identifier(name)?);
                    }
                }
            }
        }
        match &common_name {
            Some(cn) if identifiers.is_empty() => identifiers.push(cn_identifier(cn)),
            Some(cn) if !identifiers.contains(&cn_identifier(cn)) => {
                return Err(CsrError::CommonNameNotInSans(cn.clone()))
            }
            _ => {}
        }
        if identifiers.is_empty() {
            return Err(CsrError::NoNames);
        }

        let signature_algorithm = signature_algorithm_name(&req.signature_algorithm.algorithm);
        Ok(Csr {
            spki_der: info.subject_pki.raw.to_vec(),
            key,
            common_name,
            subject: info.subject.to_string(),
            identifiers,
            signature_algorithm,
            der,
        })
    }
}

impl Csr {
    /// The CSR as DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The requester's DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The key's algorithm and size.
    pub fn key(&self) -> &PublicKeyKind {
        &self.key
    }

    /// The subject common name, if any.
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// The subject as text (for display only).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The names requested, in CSR order, as given (not yet checked against
    /// policy).
    pub fn identifiers(&self) -> &[Identifier] {
        &self.identifiers
    }

    /// The signature algorithm's name.
    pub fn signature_algorithm(&self) -> &str {
        &self.signature_algorithm
    }
}

fn cn_identifier(cn: &str) -> Identifier {
    match cn.parse::<IpAddr>() {
        Ok(ip) => Identifier::Ip(ip),
        Err(_) => Identifier::Dns(cn.to_owned()),
    }
}

fn general_name_identifier(name: &GeneralName<'_>) -> Result<Identifier, CsrError> {
    match name {
        GeneralName::DNSName(dns) => Ok(Identifier::Dns((*dns).to_owned())),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => {
                let b: [u8; 4] = (*bytes).try_into().map_err(|_| CsrError::BadIpAddress)?;
                Ok(Identifier::Ip(IpAddr::from(b)))
            }
            16 => {
                let b: [u8; 16] = (*bytes).try_into().map_err(|_| CsrError::BadIpAddress)?;
                Ok(Identifier::Ip(IpAddr::from(b)))
            }
            _ => Err(CsrError::BadIpAddress),
        },
        GeneralName::RFC822Name(_) => Err(CsrError::UnsupportedName { kind: "email" }),
        GeneralName::URI(_) => Err(CsrError::UnsupportedName { kind: "URI" }),
        GeneralName::DirectoryName(_) => Err(CsrError::UnsupportedName {
            kind: "directory name",
        }),
        GeneralName::RegisteredID(_) => Err(CsrError::UnsupportedName {
            kind: "registered ID",
        }),
        _ => Err(CsrError::UnsupportedName { kind: "other" }),
    }
}

/// What kind of key a SubjectPublicKeyInfo holds.
pub(crate) fn classify_key(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> PublicKeyKind {
    let alg = &spki.algorithm.algorithm;
    if *alg == oid!(1.3.101 .112) {
        return PublicKeyKind::Ed25519;
    }
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let exponent = rsa.exponent;
            let last = exponent.last().copied().unwrap_or(0);
            let significant = exponent.iter().skip_while(|b| **b == 0).count();
            let exponent_ok = last & 1 == 1 && (significant > 1 || last >= 3);
            PublicKeyKind::Rsa {
                bits: rsa.key_size(),
                exponent_ok,
                weak: super::weak::rsa_modulus(rsa.modulus),
            }
        }
        Ok(PublicKey::EC(point)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            match curve {
                Some(c) if c == oid!(1.2.840 .10045 .3 .1 .7) && point.data().len() == 65 => {
                    PublicKeyKind::EcP256
                }
                Some(c) if c == oid!(1.3.132 .0 .34) && point.data().len() == 97 => {
                    PublicKeyKind::EcP384
                }
                Some(c) => PublicKeyKind::EcOther(c.to_id_string()),
                None => PublicKeyKind::EcOther("(none)".into()),
            }
        }
        _ => PublicKeyKind::Other(alg.to_id_string()),
    }
}

/// The short name of a signature algorithm (`ecdsa-with-SHA256`), else
/// its dotted OID.
pub(crate) fn signature_algorithm_name(oid: &x509_parser::der_parser::Oid<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    registry
        .get(oid)
        .map(|entry| entry.sn().to_owned())
        .unwrap_or_else(|| oid.to_id_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_a_csr() {
        assert_eq!(Csr::parse(b"hello").unwrap_err(), CsrError::NotACsr);
        assert!(matches!(
            Csr::parse(&[0x30, 0x03, 0x01, 0x01, 0x00]).unwrap_err(),
            CsrError::Malformed(_)
        ));
    }
}
