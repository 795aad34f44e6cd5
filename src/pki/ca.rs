//! CA certificates: creating the root and the issuing intermediate, and the
//! [`Issuer`] that signs leaf certificates after checking them against their
//! profile.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CrlDistributionPoint, DistinguishedName, DnType, IsCa,
    KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

use super::key::{KeySigner, RcgenKey};
use super::profile::{self, Expected, IssuerUrls, LeafRequest, ProfileError};
use super::{pem_encode, Identifier, NameConstraints, Serial};

/// The root's lifetime.
pub const ROOT_VALIDITY: Duration = Duration::days(20 * 365 + 5);
/// The issuing intermediate's lifetime.
pub const INTERMEDIATE_VALIDITY: Duration = Duration::days(5 * 365 + 1);

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The certificate bytes are not an X.509 certificate.
    #[error("the CA certificate could not be parsed: {0}")]
    BadCertificate(String),
    /// The key does not belong to the certificate.
    #[error("the private key does not match the CA certificate {0}")]
    KeyMismatch(String),
    /// The requested certificate would outlive its issuer.
    #[error("the certificate would expire on {not_after}, after its issuing CA does ({issuer_not_after})")]
    OutlivesIssuer {
        /// Requested end of validity.
        not_after: OffsetDateTime,
        /// The issuer's end of validity.
        issuer_not_after: OffsetDateTime,
    },
    /// The issuing CA is not yet or no longer valid.
    #[error("the issuing CA {id} is not valid at {now}")]
    IssuerNotValid {
        /// Issuer id.
        id: String,
        /// The time of issuance.
        now: OffsetDateTime,
    },
    /// Building or checking the certificate against its profile failed.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// rcgen refused the parameters or the signer failed.
    #[error("signing failed: {0}")]
    Sign(String),
    /// An intermediate's CSR that cannot be signed.
    #[error("the intermediate's CSR {0}")]
    BadRequest(String),
}

/// A CA certificate with the facts hallmark needs from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCertificate {
    id: String,
    der: Vec<u8>,
    subject: String,
    subject_raw: Vec<u8>,
    key_id: Vec<u8>,
    spki: Vec<u8>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    constraints: Option<NameConstraints>,
}

impl CaCertificate {
    /// Parses a CA certificate; `id` is its name in URLs (`root`, `int-…`).
    pub fn from_der(id: impl Into<String>, der: Vec<u8>) -> Result<Self, CaError> {
        let (subject, subject_raw, key_id, spki, not_before, not_after, constraints) = {
            let (_, cert) = X509Certificate::from_der(&der)
                .map_err(|e| CaError::BadCertificate(e.to_string()))?;
            let tbs = &cert.tbs_certificate;
            let key_id = tbs
                .extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                    _ => None,
                })
                // A CA made elsewhere may have none: then the SHA-1 of its
                // public key bits (RFC 5280 §4.2.1.2, method 1), which is
                // what most CAs put there.
                .unwrap_or_else(|| {
                    ring::digest::digest(
                        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                        &tbs.subject_pki.subject_public_key.data,
                    )
                    .as_ref()
                    .to_vec()
                });
            let constraints = NameConstraints::of(&cert)
                .map_err(|e| CaError::BadCertificate(format!("its name constraints hold {e}")))?;
            (
                tbs.subject.to_string(),
                tbs.subject.as_raw().to_vec(),
                key_id,
                tbs.subject_pki.raw.to_vec(),
                tbs.validity.not_before.to_datetime(),
                tbs.validity.not_after.to_datetime(),
                constraints,
            )
        };
        Ok(CaCertificate {
            id: id.into(),
            der,
            subject,
            subject_raw,
            key_id,
            spki,
            not_before,
            not_after,
            constraints,
        })
    }

    /// The names this CA may certify (its nameConstraints), if it is
    /// constrained.
    pub fn name_constraints(&self) -> Option<&NameConstraints> {
        self.constraints.as_ref()
    }

    /// The id used in URLs and the database.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }
    /// PEM text.
    pub fn pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.der)
    }
    /// Whether it is self-signed (subject and issuer alike: a root).
    pub fn is_self_signed(&self) -> bool {
        x509_parser::parse_x509_certificate(&self.der)
            .map(|(_, c)| c.issuer().as_raw() == c.subject().as_raw())
            .unwrap_or(false)
    }
    /// The subject as text.
    pub fn subject(&self) -> &str {
        &self.subject
    }
    /// SHA-256 fingerprint, upper-case hex pairs joined by colons (as
    /// `openssl x509 -fingerprint -sha256` prints it).
    pub fn fingerprint_sha256(&self) -> String {
        super::sha256_fingerprint(&self.der)
    }

    /// The subject Name, DER-encoded (the issuer field of what it signs).
    pub fn subject_raw(&self) -> &[u8] {
        &self.subject_raw
    }
    /// The DER SubjectPublicKeyInfo.
    pub fn spki(&self) -> &[u8] {
        &self.spki
    }
    /// The subjectKeyIdentifier.
    pub fn key_id(&self) -> &[u8] {
        &self.key_id
    }
    /// Start of validity.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }
    /// End of validity.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }
}

/// The id an intermediate gets in URLs: `int-` and the first four bytes of
/// its key identifier, so a rotated intermediate gets a new URL.
pub fn intermediate_id(key_id: &[u8]) -> String {
    format!("int-{}", hex::encode(&key_id[..key_id.len().min(4)]))
}

/// A certificate just signed.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// DER bytes.
    pub der: Vec<u8>,
    /// Its serial.
    pub serial: Serial,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Subject as text.
    pub subject: String,
    /// The names it certifies.
    pub identifiers: Vec<Identifier>,
}

impl IssuedCertificate {
    /// PEM text.
    pub fn pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.der)
    }
}

/// A CA certificate together with its signing key: signs certificates.
pub struct Issuer {
    cert: CaCertificate,
    key: Arc<dyn KeySigner>,
    signer: rcgen::Issuer<'static, RcgenKey>,
    lint_signer: rcgen::Issuer<'static, LintKey>,
    urls: IssuerUrls,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("id", &self.cert.id)
            .field("subject", &self.cert.subject)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// Pairs a CA certificate with its key; fails if they do not match.
    /// `urls` are put into every certificate this issuer signs.
    pub fn new(
        cert: CaCertificate,
        key: Arc<dyn KeySigner>,
        urls: IssuerUrls,
    ) -> Result<Self, CaError> {
        if key.public_key_spki() != cert.spki.as_slice() {
            return Err(CaError::KeyMismatch(cert.id.clone()));
        }
        let der = CertificateDer::from(cert.der.clone());
        let signer = rcgen::Issuer::from_ca_cert_der(&der, RcgenKey(key.clone()))
            .map_err(|e| CaError::BadCertificate(e.to_string()))?;
        let lint_signer = rcgen::Issuer::from_ca_cert_der(&der, LintKey(key.clone()))
            .map_err(|e| CaError::BadCertificate(e.to_string()))?;
        Ok(Issuer {
            cert,
            key,
            signer,
            lint_signer,
            urls,
        })
    }

    /// The CA certificate.
    pub fn certificate(&self) -> &CaCertificate {
        &self.cert
    }

    /// The signing key.
    pub fn key(&self) -> &Arc<dyn KeySigner> {
        &self.key
    }

    /// The URLs placed in issued certificates.
    pub fn urls(&self) -> &IssuerUrls {
        &self.urls
    }

    /// Builds the leaf certificate from the profile, checks the to-be-signed
    /// copy (signed by a throwaway signer) against the profile, then signs
    /// that checked to-be-signed part with the real key ([`sign_draft`]).
    pub fn issue_leaf(
        &self,
        req: &LeafRequest<'_>,
        max_validity_days: u32,
    ) -> Result<IssuedCertificate, CaError> {
        if req.now < self.cert.not_before || req.now > self.cert.not_after {
            return Err(CaError::IssuerNotValid {
                id: self.cert.id.clone(),
                now: req.now,
            });
        }
        if req.not_after() > self.cert.not_after {
            return Err(CaError::OutlivesIssuer {
                not_after: req.not_after(),
                issuer_not_after: self.cert.not_after,
            });
        }
        let params = profile::leaf_params(req, &self.urls)?;
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(req.spki_der)
            .map_err(|e| CaError::Sign(e.to_string()))?;

        let draft = params
            .signed_by(&public_key, &self.lint_signer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let subject = {
            let (_, parsed) = X509Certificate::from_der(draft.der())
                .map_err(|e| CaError::BadCertificate(e.to_string()))?;
            profile::check_leaf(
                &parsed,
                &Expected {
                    req,
                    issuer_subject_raw: &self.cert.subject_raw,
                    issuer_key_id: &self.cert.key_id,
                    urls: &self.urls,
                    max_validity_days,
                },
            )?;
            parsed.tbs_certificate.subject.to_string()
        };

        let der = sign_draft(draft.der(), self.key.as_ref())?;
        Ok(IssuedCertificate {
            der,
            serial: req.serial,
            not_before: req.not_before(),
            not_after: req.not_after(),
            subject,
            identifiers: req.identifiers.to_vec(),
        })
    }

    /// Signs a subordinate CA certificate (the issuing intermediate),
    /// constrained to `constraints` when given (a critical nameConstraints
    /// extension).
    pub fn issue_intermediate(
        &self,
        spki_der: &[u8],
        names: &CaNames,
        constraints: Option<&NameConstraints>,
        now: OffsetDateTime,
        serial: Serial,
    ) -> Result<CaCertificate, CaError> {
        let mut params = ca_params(
            spki_der,
            &names.organization,
            &names.intermediate_common_name,
            now,
            serial,
        )?;
        params.not_after = (now + INTERMEDIATE_VALIDITY).min(self.cert.not_after);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params
            .key_usages
            .insert(0, KeyUsagePurpose::DigitalSignature);
        params.use_authority_key_identifier_extension = true;
        params.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![self.urls.crl.clone()],
        }];
        params
            .custom_extensions
            .push(profile::authority_info_access(None, &self.urls.ca_issuers));
        params.name_constraints = constraints.map(NameConstraints::to_rcgen);
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let cert = params
            .signed_by(&public_key, &self.signer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let der = cert.der().to_vec();
        let parsed = CaCertificate::from_der("", der)?;
        let id = intermediate_id(parsed.key_id());
        Ok(CaCertificate { id, ..parsed })
    }
}

impl Issuer {
    /// Signs a delegated OCSP responder certificate (RFC 6960 §4.2.2.2):
    /// id-kp-OCSPSigning, digitalSignature, and id-pkix-ocsp-nocheck so
    /// clients do not ask about the responder itself; it should live days,
    /// not years, since nobody can check whether it was revoked.
    pub fn issue_ocsp_responder(
        &self,
        key: &Arc<dyn KeySigner>,
        now: OffsetDateTime,
        validity: Duration,
        serial: Serial,
    ) -> Result<IssuedCertificate, CaError> {
        let mut params = CertificateParams::default();
        params.key_identifier_method = profile::key_identifier(key.public_key_spki())?;
        let mut dn = DistinguishedName::new();
        if let Some(org) = self.organization() {
            dn.push(DnType::OrganizationName, org);
        }
        dn.push(
            DnType::CommonName,
            format!("OCSP responder for {}", self.cert.id),
        );
        params.distinguished_name = dn;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(serial.as_bytes()));
        params.not_before = (now - profile::BACKDATE)
            .replace_nanosecond(0)
            .unwrap_or(now);
        params.not_after = (params.not_before + validity).min(self.cert.not_after);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::OcspSigning];
        params.use_authority_key_identifier_extension = true;
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 5, 5, 7, 48, 1, 5],
                vec![0x05, 0x00],
            ));
        let cert = params
            .signed_by(&RcgenKey(key.clone()), &self.signer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let der = cert.der().to_vec();
        let subject = CaCertificate::from_der("", der.clone())?.subject;
        Ok(IssuedCertificate {
            der,
            serial,
            not_before: params.not_before,
            not_after: params.not_after,
            subject,
            identifiers: Vec::new(),
        })
    }

    /// The O of the issuer's subject, if any.
    fn organization(&self) -> Option<String> {
        let (_, cert) = X509Certificate::from_der(&self.cert.der).ok()?;
        let org = cert
            .subject()
            .iter_organization()
            .next()
            .and_then(|o| o.as_str().ok())
            .map(str::to_owned);
        org
    }
}

/// Names for a new CA.
#[derive(Debug, Clone)]
pub struct CaNames {
    /// O in both CA subjects.
    pub organization: String,
    /// CN of the root.
    pub root_common_name: String,
    /// CN of the issuing intermediate.
    pub intermediate_common_name: String,
}

fn ca_params(
    spki_der: &[u8],
    organization: &str,
    common_name: &str,
    now: OffsetDateTime,
    serial: Serial,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.key_identifier_method = profile::key_identifier(spki_der)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organization);
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(serial.as_bytes()));
    params.not_before = (now - profile::BACKDATE)
        .replace_nanosecond(0)
        .unwrap_or(now);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// Creates the self-signed root: CA:TRUE with pathLen 1, keyCertSign and
/// cRLSign, 20 years.
pub fn create_root(
    key: &Arc<dyn KeySigner>,
    names: &CaNames,
    now: OffsetDateTime,
    serial: Serial,
) -> Result<CaCertificate, CaError> {
    let mut params = ca_params(
        key.public_key_spki(),
        &names.organization,
        &names.root_common_name,
        now,
        serial,
    )?;
    params.not_after = now + ROOT_VALIDITY;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    let cert = params
        .self_signed(&RcgenKey(key.clone()))
        .map_err(|e| CaError::Sign(e.to_string()))?;
    CaCertificate::from_der("root", cert.der().to_vec())
}

/// A signer for the throwaway pre-signing copy: the issuer's public key and
/// algorithm, but a fixed fake signature and no use of the private key.
/// The certificate `draft` (signed by [`LintKey`]) signed with `key`: the
/// draft's to-be-signed part and signature algorithm exactly as they were
/// checked, and `key`'s signature over that part — what rcgen would build
/// again for the real signer, without building and encoding the
/// certificate a second time.
fn sign_draft(draft: &[u8], key: &dyn KeySigner) -> Result<Vec<u8>, CaError> {
    use super::der::{self, tag};
    let malformed = |e: der::DerError| CaError::BadCertificate(format!("the draft: {}", e.0));
    let mut outer = der::Reader::new(draft);
    let mut parts = der::Reader::new(outer.expect(tag::SEQUENCE).map_err(malformed)?.content);
    let tbs = parts.expect(tag::SEQUENCE).map_err(malformed)?.raw;
    let algorithm = parts.expect(tag::SEQUENCE).map_err(malformed)?.raw;
    let signature = key.sign(tbs).map_err(|e| CaError::Sign(e.to_string()))?;
    // Written in place: the BIT STRING is a zero (no unused bits) and the
    // signature.
    let bits = 1 + signature.len();
    let content = tbs.len() + algorithm.len() + der::header_len(bits) + bits;
    let mut out = Vec::with_capacity(der::header_len(content) + content);
    der::header(&mut out, tag::SEQUENCE, content);
    out.extend_from_slice(tbs);
    out.extend_from_slice(algorithm);
    der::header(&mut out, tag::BIT_STRING, bits);
    out.push(0);
    out.extend_from_slice(&signature);
    Ok(out)
}

struct LintKey(Arc<dyn KeySigner>);

impl rcgen::PublicKeyData for LintKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key_raw()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.scheme().rcgen()
    }
}

impl rcgen::SigningKey for LintKey {
    fn sign(&self, _msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(vec![0u8; 8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Identifier, KeyType, PrivateKey, Profile, Subject};

    /// The leaf [`Issuer::issue_leaf`] returns against the one rcgen
    /// builds and signs itself from the same parameters: the same bytes
    /// with a deterministic signature (RSA PKCS#1 v1.5); with ECDSA the
    /// same to-be-signed part and algorithm, and a signature that
    /// verifies under the issuer's key.
    #[test]
    fn a_leaf_is_the_checked_draft_signed_as_rcgen_would_sign_it() {
        let names = CaNames {
            organization: "test".into(),
            root_common_name: "Test Root".into(),
            intermediate_common_name: "Test Issuing".into(),
        };
        let now = OffsetDateTime::now_utc();
        let mut rng = rand::thread_rng();
        let leaf_key = PrivateKey::generate(KeyType::P256).unwrap();
        let ids = [Identifier::Dns("a.internal".into())];
        for key_type in [KeyType::Rsa2048, KeyType::P256] {
            let key = PrivateKey::generate(key_type).unwrap().into_signer();
            let root_cert = create_root(&key, &names, now, Serial::random(&mut rng)).unwrap();
            let urls = crate::datadir::issuer_urls("http://ca.test", "root", false);
            let issuer = Issuer::new(root_cert, key.clone(), urls.clone()).unwrap();
            let req = LeafRequest {
                spki_der: leaf_key.public_key_spki(),
                key_is_rsa: false,
                identifiers: &ids,
                subject: &Subject::default(),
                shape: Profile::Server.shape(),
                serial: Serial::random(&mut rng),
                now,
                validity_days: 90,
                not_after: None,
                crl_partition: 0,
            };
            let leaf = issuer.issue_leaf(&req, 397).unwrap();
            let public_key = rcgen::SubjectPublicKeyInfo::from_der(req.spki_der).unwrap();
            let by_rcgen = profile::leaf_params(&req, &urls)
                .unwrap()
                .signed_by(&public_key, &issuer.signer)
                .unwrap();
            let (_, ours) = X509Certificate::from_der(&leaf.der).unwrap();
            let (_, theirs) = X509Certificate::from_der(by_rcgen.der()).unwrap();
            assert_eq!(
                ours.tbs_certificate.as_ref(),
                theirs.tbs_certificate.as_ref()
            );
            assert_eq!(ours.signature_algorithm, theirs.signature_algorithm);
            if key_type == KeyType::Rsa2048 {
                assert_eq!(
                    leaf.der,
                    by_rcgen.der().to_vec(),
                    "RSA signs deterministically"
                );
            }
            let (_, root) = X509Certificate::from_der(issuer.certificate().der()).unwrap();
            ours.verify_signature(Some(root.public_key()))
                .unwrap_or_else(|e| panic!("{key_type:?}: the leaf's signature: {e}"));
        }
    }
}
