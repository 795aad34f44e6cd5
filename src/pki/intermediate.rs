//! An issuing intermediate whose root is kept elsewhere: the CSR the online
//! side writes (asking for its name constraints), and the root side's
//! reading of it before signing.

use std::sync::Arc;

use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

use super::ca::{CaError, CaNames};
use super::csr::classify_key;
use super::key::{KeySigner, RcgenKey};
use super::{pem_decode_all, pem_encode, NameConstraints, PublicKeyKind};

/// id-ce-nameConstraints.
const NAME_CONSTRAINTS: &[u64] = &[2, 5, 29, 30];
/// The largest intermediate CSR read.
const MAX_CSR_BYTES: usize = 64 * 1024;

/// A PEM CSR for the issuing key: subject O and CN from `names`, and, when
/// given, a critical nameConstraints extension in its extensionRequest,
/// which `hallmark root sign-intermediate` copies into the certificate.
pub fn intermediate_csr(
    key: &Arc<dyn KeySigner>,
    names: &CaNames,
    constraints: Option<&NameConstraints>,
) -> Result<String, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, names.organization.as_str());
    dn.push(DnType::CommonName, names.intermediate_common_name.as_str());
    params.distinguished_name = dn;
    if let Some(c) = constraints {
        let mut ext = CustomExtension::from_oid_content(NAME_CONSTRAINTS, c.to_der_value());
        ext.set_criticality(true);
        params.custom_extensions.push(ext);
    }
    let csr = params
        .serialize_request(&RcgenKey(key.clone()))
        .map_err(|e| CaError::Sign(e.to_string()))?;
    Ok(pem_encode("CERTIFICATE REQUEST", csr.der()))
}

/// What the root side reads from an intermediate's CSR, its signature
/// checked.
#[derive(Debug, Clone)]
pub struct IntermediateRequest {
    /// The key to certify.
    pub spki_der: Vec<u8>,
    /// Its kind.
    pub key: PublicKeyKind,
    /// Subject O, if any.
    pub organization: Option<String>,
    /// Subject CN, if any.
    pub common_name: Option<String>,
    /// The name constraints asked for, if any.
    pub constraints: Option<NameConstraints>,
}

impl IntermediateRequest {
    /// Parses a CSR (PEM or DER), verifies its signature and checks that
    /// its key may be a CA key (P-256, P-384, or RSA of 2048 bits or more
    /// with a sound exponent and modulus).
    pub fn parse(input: &[u8]) -> Result<IntermediateRequest, CaError> {
        let bad = |why: &str| CaError::BadRequest(why.to_owned());
        if input.len() > MAX_CSR_BYTES {
            return Err(bad("is larger than 64 KiB"));
        }
        let der = if input.first() == Some(&0x30) {
            input.to_vec()
        } else {
            let text = std::str::from_utf8(input).map_err(|_| bad("is neither PEM nor DER"))?;
            let mut blocks = pem_decode_all(text, "CERTIFICATE REQUEST");
            if blocks.len() != 1 {
                return Err(bad("holds no single PEM CERTIFICATE REQUEST block"));
            }
            blocks.remove(0)
        };
        let (rest, req) = X509CertificationRequest::from_der(&der)
            .map_err(|e| CaError::BadRequest(format!("could not be parsed: {e}")))?;
        if !rest.is_empty() {
            return Err(bad("has trailing bytes"));
        }
        req.verify_signature()
            .map_err(|_| bad("has a signature that does not verify with its own key"))?;
        let info = &req.certification_request_info;
        let key = classify_key(&info.subject_pki);
        let ca_key = match &key {
            PublicKeyKind::EcP256 | PublicKeyKind::EcP384 => true,
            PublicKeyKind::Rsa {
                bits,
                exponent_ok,
                weak,
            } => *bits >= 2048 && *exponent_ok && weak.is_none(),
            _ => false,
        };
        if !ca_key {
            return Err(CaError::BadRequest(format!(
                "has a {} key; a CA key must be P-256, P-384 or RSA of at least 2048 bits",
                key.describe()
            )));
        }
        let first = |it: &mut dyn Iterator<
            Item = &x509_parser::x509::AttributeTypeAndValue<'_>,
        >| { it.next().and_then(|a| a.as_str().ok()).map(str::to_owned) };
        let organization = first(&mut info.subject.iter_organization());
        let common_name = first(&mut info.subject.iter_common_name());
        let mut constraints = None;
        for ext in req.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::NameConstraints(nc) = ext {
                constraints = Some(NameConstraints::from_parsed(nc).map_err(|e| {
                    CaError::BadRequest(format!("asks for name constraints holding {e}"))
                })?);
            }
        }
        Ok(IntermediateRequest {
            spki_der: info.subject_pki.raw.to_vec(),
            key,
            organization,
            common_name,
            constraints,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{KeyType, PrivateKey};

    fn names() -> CaNames {
        CaNames {
            organization: "Example Org".into(),
            root_common_name: "unused".into(),
            intermediate_common_name: "Example Issuing".into(),
        }
    }

    #[test]
    fn the_csr_carries_the_subject_and_the_constraints_asked_for() {
        let key = PrivateKey::generate(KeyType::P256).unwrap().into_signer();
        let c = NameConstraints {
            dns: vec!["corp.internal".into(), "localhost".into()],
            ip: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            ..NameConstraints::default()
        };
        let pem = intermediate_csr(&key, &names(), Some(&c)).unwrap();
        let req = IntermediateRequest::parse(pem.as_bytes()).unwrap();
        assert_eq!(req.spki_der, key.public_key_spki());
        assert_eq!(req.organization.as_deref(), Some("Example Org"));
        assert_eq!(req.common_name.as_deref(), Some("Example Issuing"));
        assert_eq!(req.constraints, Some(c));
        assert_eq!(req.key, PublicKeyKind::EcP256);

        let plain = intermediate_csr(&key, &names(), None).unwrap();
        assert!(IntermediateRequest::parse(plain.as_bytes())
            .unwrap()
            .constraints
            .is_none());
    }

    #[test]
    fn a_tampered_csr_is_refused() {
        let key = PrivateKey::generate(KeyType::P256).unwrap().into_signer();
        let pem = intermediate_csr(&key, &names(), None).unwrap();
        let mut der = pem_decode_all(&pem, "CERTIFICATE REQUEST").remove(0);
        // Change a byte of the subject's CN ("Example Issuing").
        let at = der.windows(7).position(|w| w == b"Example").unwrap();
        der[at] = b'X';
        let err = IntermediateRequest::parse(&der).unwrap_err().to_string();
        assert!(err.contains("does not verify"), "{err}");
        assert!(IntermediateRequest::parse(b"junk").is_err());
    }
}
