//! Certificate profiles: how a leaf certificate is built (DESIGN §3), and the
//! check of a to-be-signed certificate against its profile before the real
//! key signs it.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use rcgen::{
    CertificateParams, CrlDistributionPoint, CustomExtension, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry as oids;

use super::{Identifier, Serial};

/// How long `not_before` is backdated to absorb clock skew (DESIGN §3).
pub const BACKDATE: Duration = Duration::seconds(60);

/// The upper bound on a common name (RFC 5280 ub-common-name).
const MAX_COMMON_NAME_LEN: usize = 64;

/// The certificate profiles hallmark issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// TLS server: EKU serverAuth.
    #[default]
    Server,
    /// TLS server and client: EKU serverAuth and clientAuth.
    ServerClient,
    /// A short-lived TLS server certificate (RFC 9608): at most
    /// [`SHORT_LIVED_DAYS`] days, noRevAvail, no CRL or OCSP pointer.
    ShortLived,
}

/// The longest validity of the `shortlived` profile.
pub const SHORT_LIVED_DAYS: u32 = 7;

/// id-ce-noRevAvail (RFC 9608).
const NO_REV_AVAIL: &[u64] = &[2, 5, 29, 56];

impl Profile {
    /// Every profile, in the order they are announced.
    pub const ALL: [Profile; 3] = [Profile::Server, Profile::ServerClient, Profile::ShortLived];

    /// The profile's name as used in the API and CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Server => "server",
            Profile::ServerClient => "server-client",
            Profile::ShortLived => "shortlived",
        }
    }

    /// What the profile is, in a sentence (the ACME directory's
    /// `meta.profiles` value).
    pub fn description(self) -> &'static str {
        match self {
            Profile::Server => "TLS server certificate (serverAuth), with CRL and OCSP pointers",
            Profile::ServerClient => "TLS server and client certificate (serverAuth, clientAuth)",
            Profile::ShortLived => {
                "short-lived TLS server certificate: at most 7 days, no revocation information (RFC 9608 noRevAvail)"
            }
        }
    }

    /// The certificate this profile makes.
    pub fn shape(self) -> Shape {
        let server = Shape {
            server_auth: true,
            client_auth: false,
            key_encipherment: true,
            key_agreement: false,
            revocation_info: true,
        };
        match self {
            Profile::Server => server,
            Profile::ServerClient => Shape {
                client_auth: true,
                ..server
            },
            Profile::ShortLived => Shape {
                revocation_info: false,
                ..server
            },
        }
    }
}

/// What a leaf certificate carries beyond its names and key: its extended
/// key usages, the key usages added to digitalSignature, and whether it
/// points to revocation data. The built-in profiles are three shapes; a
/// configured `[profiles.NAME]` may choose its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// EKU id-kp-serverAuth.
    pub server_auth: bool,
    /// EKU id-kp-clientAuth.
    pub client_auth: bool,
    /// keyUsage keyEncipherment, for RSA subject keys only (TLS 1.2 RSA
    /// key transport; RFC 8813 forbids it for EC keys).
    pub key_encipherment: bool,
    /// keyUsage keyAgreement, for EC subject keys only (static ECDH).
    pub key_agreement: bool,
    /// CRL distribution point and OCSP URL; without them the certificate
    /// carries noRevAvail (RFC 9608) and lives at most
    /// [`SHORT_LIVED_DAYS`] days.
    pub revocation_info: bool,
}

impl Shape {
    /// The longest validity this shape allows, below the policy's.
    pub fn max_validity_days(self) -> Option<u32> {
        (!self.revocation_info).then_some(SHORT_LIVED_DAYS)
    }

    /// Whether certificates of this shape point to CRLs and OCSP.
    pub fn revocation_info(self) -> bool {
        self.revocation_info
    }

    /// What the shape makes, in words: "serverAuth, clientAuth; with CRL
    /// and OCSP pointers".
    pub fn summary(self) -> String {
        let mut parts: Vec<&str> = Vec::new();
        if self.server_auth {
            parts.push("serverAuth");
        }
        if self.client_auth {
            parts.push("clientAuth");
        }
        let mut out = parts.join(", ");
        if self.key_encipherment {
            out.push_str("; keyEncipherment for RSA keys");
        }
        if self.key_agreement {
            out.push_str("; keyAgreement for EC keys");
        }
        out.push_str(if self.revocation_info {
            "; with CRL and OCSP pointers"
        } else {
            "; no revocation information (RFC 9608 noRevAvail), at most 7 days"
        });
        out
    }

    fn extended_key_usages(self) -> Vec<ExtendedKeyUsagePurpose> {
        let mut ekus = Vec::with_capacity(2);
        if self.server_auth {
            ekus.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if self.client_auth {
            ekus.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        ekus
    }

    /// digitalSignature, and keyEncipherment (RSA) or keyAgreement (EC)
    /// where the shape asks for it.
    fn key_usages(self, key_is_rsa: bool) -> Vec<KeyUsagePurpose> {
        let mut usages = vec![KeyUsagePurpose::DigitalSignature];
        if key_is_rsa && self.key_encipherment {
            usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        if !key_is_rsa && self.key_agreement {
            usages.push(KeyUsagePurpose::KeyAgreement);
        }
        usages
    }
}

/// The extended key usages a profile may name: hallmark certifies
/// validated DNS names and IP addresses, for TLS.
pub const EXTENDED_KEY_USAGES: [&str; 2] = ["serverAuth", "clientAuth"];

/// The key usages a profile may name (digitalSignature is always set).
pub const KEY_USAGES: [&str; 3] = ["digitalSignature", "keyEncipherment", "keyAgreement"];

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown profile name.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "unknown certificate profile {0:?}; expected \"server\", \"server-client\" or \"shortlived\""
)]
pub struct UnknownProfile(pub String);

impl FromStr for Profile {
    type Err = UnknownProfile;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "server" => Ok(Profile::Server),
            "server-client" => Ok(Profile::ServerClient),
            "shortlived" => Ok(Profile::ShortLived),
            other => Err(UnknownProfile(other.to_owned())),
        }
    }
}

/// Vetted organisation details for an OV certificate's subject.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Organization {
    /// O
    pub name: String,
    /// L
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// ST
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// C, two letters (ISO 3166-1 alpha-2)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

/// The subject of a certificate to issue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    /// Vetted organisation (OV) or none (DV).
    pub organization: Option<Organization>,
}

/// Where relying parties find the issuer's certificate, CRL and OCSP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerUrls {
    /// CRL distribution point (`<public_http_url>/crl/<issuer>.crl`).
    pub crl: String,
    /// OCSP responder (`<public_http_url>/ocsp`); `None` for CA certificates.
    pub ocsp: Option<String>,
    /// caIssuers (`<public_http_url>/ca/<issuer>.crt`).
    pub ca_issuers: String,
}

impl IssuerUrls {
    /// The CRL URL of a partition: the complete CRL's for 0, else
    /// `<issuer>-p<N>.crl` beside it.
    pub fn crl_partition(&self, partition: u32) -> String {
        match partition {
            0 => self.crl.clone(),
            p => format!("{}-p{p}.crl", self.crl.trim_end_matches(".crl")),
        }
    }

    /// The delta CRL's URL, `<issuer>-delta.crl` beside the complete CRL.
    pub fn crl_delta(&self) -> String {
        format!("{}-delta.crl", self.crl.trim_end_matches(".crl"))
    }
}

/// Everything the profile needs to build one leaf certificate.
#[derive(Debug, Clone)]
pub struct LeafRequest<'a> {
    /// The subject's DER SubjectPublicKeyInfo (from the checked CSR).
    pub spki_der: &'a [u8],
    /// RSA subject keys also get keyEncipherment.
    pub key_is_rsa: bool,
    /// The validated identifiers, in order; the first DNS name becomes CN.
    pub identifiers: &'a [Identifier],
    /// Subject details.
    pub subject: &'a Subject,
    /// The certificate's shape (from its profile).
    pub shape: Shape,
    /// A fresh serial.
    pub serial: Serial,
    /// Issuance time.
    pub now: OffsetDateTime,
    /// Validity in days (already checked against policy).
    pub validity_days: u32,
    /// An exact end of validity asked for (ACME `notAfter`), earlier than
    /// `validity_days` would give; `None`: from `validity_days`.
    pub not_after: Option<OffsetDateTime>,
    /// The CRL partition its CRL distribution point names (0: the
    /// complete CRL).
    pub crl_partition: u32,
}

impl LeafRequest<'_> {
    /// `not_before`: now minus [`BACKDATE`].
    pub fn not_before(&self) -> OffsetDateTime {
        (self.now - BACKDATE)
            .replace_nanosecond(0)
            .unwrap_or(self.now - BACKDATE)
    }

    /// `not_after`: the validity period is inclusive of both ends
    /// (RFC 5280 §4.1.2.5), so it ends one second before `days` have passed.
    pub fn not_after(&self) -> OffsetDateTime {
        let by_days = self.not_before() + Duration::days(i64::from(self.validity_days))
            - Duration::seconds(1);
        match self.not_after {
            Some(t) => t.replace_nanosecond(0).unwrap_or(t).min(by_days),
            None => by_days,
        }
    }

    /// The CN: the first DNS name that fits in ub-common-name, else none
    /// (the subject is then empty and SAN is marked critical). Never an
    /// IP address: with no DNS name in SAN, OpenSSL checks a CN that looks
    /// like a host name against the issuer's DNS name constraints, so a
    /// CN of `127.0.0.1` failed `openssl verify` under a constrained
    /// intermediate ("permitted subtree violation").
    pub fn common_name(&self) -> Option<String> {
        self.identifiers.iter().find_map(|i| match i {
            Identifier::Dns(name) if name.len() <= MAX_COMMON_NAME_LEN => Some(name.clone()),
            _ => None,
        })
    }
}

/// Why a certificate could not be built or failed its pre-signing check.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// A value could not be encoded (e.g. a country that is not two letters).
    #[error("cannot encode {field}: {reason}")]
    Encode {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The to-be-signed certificate does not match its profile.
    #[error("the to-be-signed certificate breaks its profile: {0}")]
    Violation(String),
}

/// Builds rcgen parameters for a leaf certificate. Nothing comes from the
/// CSR except the public key (passed separately) and the validated names.
pub(crate) fn leaf_params(
    req: &LeafRequest<'_>,
    urls: &IssuerUrls,
) -> Result<CertificateParams, ProfileError> {
    let mut params = CertificateParams::default();
    params.key_identifier_method = key_identifier(req.spki_der)?;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(req.serial.as_bytes()));
    params.not_before = req.not_before();
    params.not_after = req.not_after();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = req.shape.key_usages(req.key_is_rsa);
    params.extended_key_usages = req.shape.extended_key_usages();
    params.use_authority_key_identifier_extension = true;
    params.subject_alt_names = req
        .identifiers
        .iter()
        .map(|id| match id {
            Identifier::Dns(name) => rcgen::string::Ia5String::try_from(name.as_str())
                .map(SanType::DnsName)
                .map_err(|e| ProfileError::Encode {
                    field: "subjectAltName",
                    reason: e.to_string(),
                }),
            Identifier::Ip(ip) => Ok(SanType::IpAddress(*ip)),
        })
        .collect::<Result<_, _>>()?;

    let mut dn = DistinguishedName::new();
    if let Some(org) = &req.subject.organization {
        if let Some(country) = &org.country {
            let c = rcgen::string::PrintableString::try_from(country.as_str()).map_err(|e| {
                ProfileError::Encode {
                    field: "country",
                    reason: e.to_string(),
                }
            })?;
            dn.push(DnType::CountryName, DnValue::PrintableString(c));
        }
        if let Some(state) = &org.state {
            dn.push(DnType::StateOrProvinceName, state.as_str());
        }
        if let Some(locality) = &org.locality {
            dn.push(DnType::LocalityName, locality.as_str());
        }
        dn.push(DnType::OrganizationName, org.name.as_str());
    }
    if let Some(cn) = req.common_name() {
        dn.push(DnType::CommonName, cn);
    }
    params.distinguished_name = dn;
    if req.shape.revocation_info() {
        params.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![urls.crl_partition(req.crl_partition)],
        }];
        params.custom_extensions.push(authority_info_access(
            urls.ocsp.as_deref(),
            &urls.ca_issuers,
        ));
    } else {
        // RFC 9608: noRevAvail (not critical in an end-entity
        // certificate), and nothing that points to revocation data.
        params
            .custom_extensions
            .push(authority_info_access(None, &urls.ca_issuers));
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                NO_REV_AVAIL,
                vec![0x05, 0x00],
            ));
    }
    Ok(params)
}

/// The subjectKeyIdentifier by RFC 7093 §2 method 1: the leftmost 160 bits
/// of the SHA-256 of the subjectPublicKey BIT STRING value (what linters
/// recognise; rcgen's default hashes the whole SubjectPublicKeyInfo).
pub(crate) fn key_identifier(spki_der: &[u8]) -> Result<rcgen::KeyIdMethod, ProfileError> {
    use sha2::{Digest, Sha256};
    use x509_parser::prelude::FromDer;
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der).map_err(|e| {
        ProfileError::Encode {
            field: "subjectPublicKeyInfo",
            reason: e.to_string(),
        }
    })?;
    let digest = Sha256::digest(&spki.subject_public_key.data);
    Ok(rcgen::KeyIdMethod::PreSpecified(digest[..20].to_vec()))
}

/// authorityInfoAccess (RFC 5280 §4.2.2.1) with OCSP and caIssuers entries.
pub(crate) fn authority_info_access(ocsp: Option<&str>, ca_issuers: &str) -> CustomExtension {
    let mut body = Vec::new();
    if let Some(url) = ocsp {
        body.extend(access_description(&[1, 3, 6, 1, 5, 5, 7, 48, 1], url));
    }
    body.extend(access_description(
        &[1, 3, 6, 1, 5, 5, 7, 48, 2],
        ca_issuers,
    ));
    let content = der_tlv(0x30, &body);
    CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], content)
}

fn access_description(method: &[u64], uri: &str) -> Vec<u8> {
    let mut inner = der_oid(method);
    // GeneralName uniformResourceIdentifier [6] IMPLICIT IA5String
    inner.extend(der_tlv(0x86, uri.as_bytes()));
    der_tlv(0x30, &inner)
}

/// DER tag-length-value with a definite length.
pub(crate) fn der_tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend(&bytes[skip..]);
    }
    out.extend(value);
    out
}

fn der_oid(arcs: &[u64]) -> Vec<u8> {
    let mut body = vec![(arcs[0] * 40 + arcs[1]) as u8];
    for &arc in &arcs[2..] {
        let mut chunk = vec![(arc & 0x7f) as u8];
        let mut rest = arc >> 7;
        while rest > 0 {
            chunk.push(((rest & 0x7f) as u8) | 0x80);
            rest >>= 7;
        }
        chunk.reverse();
        body.extend(chunk);
    }
    der_tlv(0x06, &body)
}

/// Whether a certificate says it has no revocation information (RFC 9608
/// noRevAvail): what its renewal window is decided by, whatever profile
/// made it.
pub fn without_revocation_info(der: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    X509Certificate::from_der(der).is_ok_and(|(_, cert)| {
        cert.extensions()
            .iter()
            .any(|e| e.oid.to_id_string() == "2.5.29.56")
    })
}

/// What the pre-signing check compares the to-be-signed certificate with.
pub(crate) struct Expected<'a> {
    pub req: &'a LeafRequest<'a>,
    pub issuer_subject_raw: &'a [u8],
    pub issuer_key_id: &'a [u8],
    pub urls: &'a IssuerUrls,
    pub max_validity_days: u32,
}

/// Checks a to-be-signed leaf certificate (signed by a throwaway key) against
/// the profile: exactly DESIGN §3's extensions, the validated names and
/// nothing else. Like boulder's lint-before-sign, a certificate that fails
/// here is never signed by the real key.
pub(crate) fn check_leaf(
    cert: &X509Certificate<'_>,
    exp: &Expected<'_>,
) -> Result<(), ProfileError> {
    let bad = |msg: String| Err(ProfileError::Violation(msg));
    let tbs = &cert.tbs_certificate;
    if tbs.version != x509_parser::x509::X509Version::V3 {
        return bad("not a version 3 certificate".into());
    }
    if tbs.raw_serial() != exp.req.serial.as_bytes() {
        return bad("serial number differs from the one drawn".into());
    }
    if tbs.issuer.as_raw() != exp.issuer_subject_raw {
        return bad("issuer name differs from the issuing CA's subject".into());
    }
    if tbs.subject_pki.raw != exp.req.spki_der {
        return bad("public key differs from the CSR's".into());
    }
    let not_before = tbs.validity.not_before.to_datetime();
    let not_after = tbs.validity.not_after.to_datetime();
    // notBefore is whole seconds, so it may lie up to BACKDATE + 1 s back.
    if not_before > exp.req.now || exp.req.now - not_before > BACKDATE + Duration::seconds(1) {
        return bad(format!(
            "notBefore {not_before} is not within one minute before now"
        ));
    }
    if not_after <= not_before
        || not_after - not_before >= Duration::days(i64::from(exp.max_validity_days))
    {
        return bad(format!(
            "validity {not_before} to {not_after} exceeds the policy maximum of {} days",
            exp.max_validity_days
        ));
    }

    let mut seen = BTreeSet::new();
    for ext in tbs.extensions() {
        if !seen.insert(ext.oid.to_id_string()) {
            return bad(format!("extension {} appears twice", ext.oid));
        }
        match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) => {
                if !ext.critical || bc.ca || bc.path_len_constraint.is_some() {
                    return bad("basicConstraints must be critical with CA:FALSE".into());
                }
            }
            ParsedExtension::KeyUsage(ku) => {
                let rsa = exp.req.key_is_rsa;
                let shape = exp.req.shape;
                if !ext.critical
                    || !ku.digital_signature()
                    || ku.key_encipherment() != (rsa && shape.key_encipherment)
                    || ku.key_agreement() != (!rsa && shape.key_agreement)
                    || ku.key_cert_sign()
                    || ku.crl_sign()
                    || ku.non_repudiation()
                    || ku.data_encipherment()
                    || ku.encipher_only()
                    || ku.decipher_only()
                {
                    return bad(format!("keyUsage {ku} is not the profile's"));
                }
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                let shape = exp.req.shape;
                if ext.critical
                    || eku.server_auth != shape.server_auth
                    || eku.client_auth != shape.client_auth
                    || eku.any
                    || eku.code_signing
                    || eku.email_protection
                    || eku.time_stamping
                    || eku.ocsp_signing
                    || !eku.other.is_empty()
                {
                    return bad("extendedKeyUsage is not the profile's".into());
                }
            }
            ParsedExtension::SubjectAlternativeName(san) => {
                let mut names = Vec::new();
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(d) => names.push(Identifier::Dns((*d).to_owned())),
                        GeneralName::IPAddress(b) => {
                            let ip = match b.len() {
                                4 => <[u8; 4]>::try_from(*b).map(std::net::IpAddr::from).ok(),
                                16 => <[u8; 16]>::try_from(*b).map(std::net::IpAddr::from).ok(),
                                _ => None,
                            };
                            match ip {
                                Some(ip) => names.push(Identifier::Ip(ip)),
                                None => return bad("malformed IP subjectAltName".into()),
                            }
                        }
                        _ => return bad("subjectAltName holds a name type not validated".into()),
                    }
                }
                if names != exp.req.identifiers {
                    return bad("subjectAltName differs from the validated identifiers".into());
                }
                if tbs.subject.iter().next().is_none() && !ext.critical {
                    return bad("subjectAltName must be critical when the subject is empty".into());
                }
            }
            ParsedExtension::SubjectKeyIdentifier(_) => {}
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                if aki.key_identifier.as_ref().map(|k| k.0) != Some(exp.issuer_key_id) {
                    return bad("authorityKeyIdentifier differs from the issuer's key id".into());
                }
            }
            ParsedExtension::CRLDistributionPoints(_) if !exp.req.shape.revocation_info() => {
                return bad("a certificate without revocation information names a CRL".into());
            }
            ParsedExtension::CRLDistributionPoints(cdp) => {
                let ok = cdp.points.len() == 1
                    && matches!(
                        &cdp.points[0].distribution_point,
                        Some(x509_parser::extensions::DistributionPointName::FullName(names))
                            if matches!(names.as_slice(), [GeneralName::URI(u)] if *u == exp.urls.crl_partition(exp.req.crl_partition))
                    );
                if !ok {
                    return bad("cRLDistributionPoints is not the issuer's CRL URL".into());
                }
            }
            ParsedExtension::AuthorityInfoAccess(aia) => {
                let mut ocsp = None;
                let mut issuers = None;
                for ad in &aia.accessdescs {
                    let uri = match &ad.access_location {
                        GeneralName::URI(u) => *u,
                        _ => return bad("authorityInfoAccess holds a non-URI location".into()),
                    };
                    if ad.access_method == oids::OID_PKIX_ACCESS_DESCRIPTOR_OCSP {
                        ocsp = Some(uri);
                    } else if ad.access_method == oids::OID_PKIX_ACCESS_DESCRIPTOR_CA_ISSUERS {
                        issuers = Some(uri);
                    }
                }
                let want_ocsp = exp
                    .urls
                    .ocsp
                    .as_deref()
                    .filter(|_| exp.req.shape.revocation_info());
                if ocsp != want_ocsp || issuers != Some(exp.urls.ca_issuers.as_str()) {
                    return bad(
                        "authorityInfoAccess is not the issuer's OCSP and caIssuers URLs".into(),
                    );
                }
            }
            _ if ext.oid.to_id_string() == "2.5.29.56" && !exp.req.shape.revocation_info() => {
                if ext.critical || ext.value != [0x05, 0x00] {
                    return bad("noRevAvail must be a non-critical NULL".into());
                }
            }
            _ => return bad(format!("unexpected extension {}", ext.oid)),
        }
    }
    if !exp.req.shape.revocation_info() && !seen.contains("2.5.29.56") {
        return bad("noRevAvail is missing".into());
    }
    for (oid, name) in [
        ("2.5.29.19", "basicConstraints"),
        ("2.5.29.15", "keyUsage"),
        ("2.5.29.37", "extendedKeyUsage"),
        ("2.5.29.17", "subjectAltName"),
        ("2.5.29.14", "subjectKeyIdentifier"),
        ("2.5.29.35", "authorityKeyIdentifier"),
        ("2.5.29.31", "cRLDistributionPoints"),
        ("1.3.6.1.5.5.7.1.1", "authorityInfoAccess"),
    ] {
        if oid == "2.5.29.31" && !exp.req.shape.revocation_info() {
            continue;
        }
        if !seen.contains(oid) {
            return bad(format!("{name} is missing"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_use_long_form_above_127() {
        assert_eq!(der_tlv(0x04, &[0; 3]), vec![0x04, 3, 0, 0, 0]);
        let long = der_tlv(0x04, &[0; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }

    #[test]
    fn oid_encoding_matches_known_bytes() {
        // id-ad-ocsp 1.3.6.1.5.5.7.48.1
        assert_eq!(
            der_oid(&[1, 3, 6, 1, 5, 5, 7, 48, 1]),
            vec![0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01]
        );
        assert_eq!(
            der_oid(&[1, 2, 840, 113549]),
            vec![0x06, 0x06, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]
        );
    }

    /// A leaf of `made` shape, checked as if its profile were `expected`.
    fn check_shapes(made: Shape, expected: Shape, key_is_rsa: bool) -> Result<(), ProfileError> {
        use x509_parser::prelude::FromDer;
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        let ca_der = ca.self_signed(&ca_key).unwrap().der().to_vec();
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        let ca_key_id = ca_cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            })
            .unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(&ca_der.clone().into(), ca_key).unwrap();
        // The usages follow `key_is_rsa`; the key itself is not looked at.
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&leaf_key);
        let identifiers = [Identifier::Dns("web.internal".into())];
        let urls = IssuerUrls {
            crl: "http://ca.internal/crl/i.crl".into(),
            ocsp: Some("http://ca.internal/ocsp".into()),
            ca_issuers: "http://ca.internal/ca/i.crt".into(),
        };
        let mut req = LeafRequest {
            spki_der: &spki,
            key_is_rsa,
            identifiers: &identifiers,
            subject: &Subject::default(),
            shape: made,
            serial: Serial::random(&mut rand::thread_rng()),
            now: OffsetDateTime::now_utc(),
            validity_days: 7,
            not_after: None,
            crl_partition: 0,
        };
        let params = leaf_params(&req, &urls).unwrap();
        let der = params.signed_by(&leaf_key, &issuer).unwrap().der().to_vec();
        let (_, leaf) = X509Certificate::from_der(&der).unwrap();
        req.shape = expected;
        check_leaf(
            &leaf,
            &Expected {
                req: &req,
                issuer_subject_raw: ca_cert.subject().as_raw(),
                issuer_key_id: &ca_key_id,
                urls: &urls,
                max_validity_days: 90,
            },
        )
    }

    #[test]
    fn the_pre_signing_check_holds_a_leaf_to_its_shape_exactly() {
        let server = Profile::Server.shape();
        let shapes = [
            server,
            Profile::ServerClient.shape(),
            Profile::ShortLived.shape(),
            Shape {
                server_auth: false,
                client_auth: true,
                ..server
            },
            Shape {
                key_agreement: true,
                ..server
            },
            Shape {
                key_encipherment: false,
                ..server
            },
        ];
        for (i, made) in shapes.iter().enumerate() {
            for (j, expected) in shapes.iter().enumerate() {
                // keyAgreement shows on EC keys, keyEncipherment on RSA ones.
                for rsa in [false, true] {
                    let result = check_shapes(*made, *expected, rsa);
                    let same_on_this_key = i == j
                        || (rsa && i.max(j) == 4 && i.min(j) == 0)
                        || (!rsa && i.max(j) == 5 && i.min(j) == 0);
                    assert_eq!(
                        result.is_ok(),
                        same_on_this_key,
                        "made {made:?}, expected {expected:?}, rsa {rsa}: {result:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn profiles_parse_by_name() {
        assert_eq!("server".parse::<Profile>().unwrap(), Profile::Server);
        assert_eq!(
            "server-client".parse::<Profile>().unwrap(),
            Profile::ServerClient
        );
        assert!("client".parse::<Profile>().is_err());
    }
}
