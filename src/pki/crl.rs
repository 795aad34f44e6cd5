//! CRL encoding (RFC 5280 §5), streamed: entries are appended one at a time
//! into one buffer, with room reserved in front for the headers that depend
//! on the total length, so a CRL of a million entries costs its own size in
//! memory and nothing per entry besides. The CRL number is given only at
//! [`CrlBuilder::finish`], after every entry, because it comes from the
//! database at publication time.

use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;

use super::der::{self, oid, tag};
use super::key::{KeyError, KeySigner};
use super::CaCertificate;

/// RFC 5280 CRLReason codes hallmark offers (certificateHold is not: a
/// revocation here is final).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationReason {
    /// unspecified (0): no reasonCode extension is written.
    Unspecified,
    /// keyCompromise (1).
    KeyCompromise,
    /// cACompromise (2).
    CaCompromise,
    /// affiliationChanged (3).
    AffiliationChanged,
    /// superseded (4).
    Superseded,
    /// cessationOfOperation (5).
    CessationOfOperation,
    /// privilegeWithdrawn (9).
    PrivilegeWithdrawn,
}

impl RevocationReason {
    /// Every offered reason.
    pub const ALL: [RevocationReason; 7] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::PrivilegeWithdrawn,
    ];

    /// The CRLReason code.
    pub fn code(self) -> u8 {
        match self {
            RevocationReason::Unspecified => 0,
            RevocationReason::KeyCompromise => 1,
            RevocationReason::CaCompromise => 2,
            RevocationReason::AffiliationChanged => 3,
            RevocationReason::Superseded => 4,
            RevocationReason::CessationOfOperation => 5,
            RevocationReason::PrivilegeWithdrawn => 9,
        }
    }

    /// The reason with this code, if offered.
    pub fn from_code(code: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|r| i64::from(r.code()) == code)
    }

    /// The RFC 5280 name in camelCase (`keyCompromise`).
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "keyCompromise",
            RevocationReason::CaCompromise => "cACompromise",
            RevocationReason::AffiliationChanged => "affiliationChanged",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessationOfOperation",
            RevocationReason::PrivilegeWithdrawn => "privilegeWithdrawn",
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason name hallmark does not offer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown revocation reason {0:?}; expected one of unspecified, keyCompromise, cACompromise, affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn (certificateHold is not offered)")]
pub struct UnknownReason(pub String);

impl FromStr for RevocationReason {
    type Err = UnknownReason;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s || (s == "caCompromise" && *r == Self::CaCompromise))
            .ok_or_else(|| UnknownReason(s.to_owned()))
    }
}

/// One revoked certificate in a CRL.
#[derive(Debug, Clone, Copy)]
pub struct CrlEntry<'a> {
    /// Serial magnitude, big-endian.
    pub serial: &'a [u8],
    /// When it was revoked.
    pub revoked_at: OffsetDateTime,
    /// Why.
    pub reason: RevocationReason,
    /// When the key is known or suspected to have been compromised.
    pub invalidity_date: Option<OffsetDateTime>,
}

/// Which certificates a CRL covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrlScope {
    /// Every certificate of the issuer (no issuingDistributionPoint);
    /// `delta_url` is announced in freshestCRL when delta CRLs are on.
    Complete {
        /// The delta CRL's URL.
        delta_url: Option<String>,
    },
    /// One partition: a critical issuingDistributionPoint names `url`
    /// (the CDP of the certificates in it), only end-entity certificates.
    Partition {
        /// The partition's URL.
        url: String,
    },
    /// A delta to the complete CRL numbered `base` (RFC 5280 §5.2.4).
    Delta {
        /// The base CRL's number.
        base: u64,
    },
}

/// The fixed parts of a CRL.
#[derive(Debug, Clone)]
pub struct CrlSpec<'a> {
    /// The issuing CA.
    pub issuer: &'a CaCertificate,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate.
    pub next_update: OffsetDateTime,
    /// What the CRL covers.
    pub scope: CrlScope,
}

/// Builds one CRL, entry by entry.
pub struct CrlBuilder {
    buf: Vec<u8>,
    reserve: usize,
    prefix: Vec<u8>,
    extensions_template: (Vec<u8>, CrlScope),
    count: u64,
}

impl fmt::Debug for CrlBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrlBuilder")
            .field("entries", &self.count)
            .finish_non_exhaustive()
    }
}

/// Most bytes one DER header takes (tag + 5 length octets).
const MAX_HEADER: usize = 6;

impl CrlBuilder {
    /// Starts a CRL signed with `scheme`'s algorithm (the signer given to
    /// [`CrlBuilder::finish`] must use the same).
    pub fn new(spec: &CrlSpec<'_>, signer: &dyn KeySigner) -> Self {
        let mut prefix = Vec::with_capacity(256);
        der::tlv(&mut prefix, tag::INTEGER, &[1]); // v2
        prefix.extend_from_slice(signer.scheme().algorithm_identifier());
        prefix.extend_from_slice(spec.issuer.subject_raw());
        der::time(&mut prefix, spec.this_update);
        der::time(&mut prefix, spec.next_update);
        // Headers go in front of the entries later: revokedCertificates,
        // tbsCertList and CertificateList, each at most MAX_HEADER bytes.
        let reserve = prefix.len() + 3 * MAX_HEADER;
        let mut buf = Vec::with_capacity(reserve + 4096);
        buf.resize(reserve, 0);
        CrlBuilder {
            buf,
            reserve,
            prefix,
            extensions_template: (spec.issuer.key_id().to_vec(), spec.scope.clone()),
            count: 0,
        }
    }

    /// Reserves room for `bytes` more bytes of entries (e.g. the size of
    /// the previous CRL of this scope and a margin), so the buffer does
    /// not grow by doubling — which would briefly hold two copies.
    pub fn reserve_bytes(&mut self, bytes: usize) {
        self.buf.reserve_exact(bytes);
    }

    /// Appends one revoked certificate.
    pub fn push(&mut self, entry: &CrlEntry<'_>) {
        let mut exts: [u8; 48] = [0; 48];
        let mut ext_len = 0;
        {
            let mut e = Vec::with_capacity(48);
            if entry.reason != RevocationReason::Unspecified {
                der::extension(
                    &mut e,
                    oid::CRL_REASON,
                    false,
                    &[tag::ENUMERATED, 1, entry.reason.code()],
                );
            }
            if let Some(t) = entry.invalidity_date {
                let mut v = Vec::with_capacity(17);
                der::generalized_time(&mut v, t);
                der::extension(&mut e, oid::INVALIDITY_DATE, false, &v);
            }
            if !e.is_empty() {
                let mut wrapped = Vec::with_capacity(e.len() + 2);
                der::tlv(&mut wrapped, tag::SEQUENCE, &e);
                exts[..wrapped.len()].copy_from_slice(&wrapped);
                ext_len = wrapped.len();
            }
        }
        let mut serial = Vec::with_capacity(20);
        der::unsigned_integer(&mut serial, entry.serial);
        let mut date = Vec::with_capacity(17);
        der::time(&mut date, entry.revoked_at);
        der::header(
            &mut self.buf,
            tag::SEQUENCE,
            serial.len() + date.len() + ext_len,
        );
        self.buf.extend_from_slice(&serial);
        self.buf.extend_from_slice(&date);
        self.buf.extend_from_slice(&exts[..ext_len]);
        self.count += 1;
    }

    /// How many entries were appended.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether no entry was appended.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds the CRL extensions with `number`, signs, and returns the DER.
    pub fn finish(mut self, number: u64, signer: &dyn KeySigner) -> Result<Vec<u8>, KeyError> {
        let entries_len = self.buf.len() - self.reserve;
        let (key_id, scope) = &self.extensions_template;
        let mut exts = Vec::with_capacity(256);
        // authorityKeyIdentifier { [0] keyIdentifier }
        let mut aki = Vec::new();
        der::nested(&mut aki, tag::SEQUENCE, |s| {
            der::tlv(s, tag::context_primitive(0), key_id)
        });
        der::extension(&mut exts, oid::AUTHORITY_KEY_IDENTIFIER, false, &aki);
        let mut n = Vec::new();
        der::u64_integer(&mut n, number);
        der::extension(&mut exts, oid::CRL_NUMBER, false, &n);
        match scope {
            CrlScope::Complete { delta_url: None } => {}
            CrlScope::Complete {
                delta_url: Some(url),
            } => {
                // CRLDistributionPoints syntax: { { [0] { [0] { [6] url } } } }
                let mut v = Vec::new();
                der::nested(&mut v, tag::SEQUENCE, |points| {
                    der::nested(points, tag::SEQUENCE, |dp| {
                        distribution_point_name(dp, url);
                    })
                });
                der::extension(&mut exts, oid::FRESHEST_CRL, false, &v);
            }
            CrlScope::Partition { url } => {
                let mut v = Vec::new();
                der::nested(&mut v, tag::SEQUENCE, |idp| {
                    distribution_point_name(idp, url);
                    // onlyContainsUserCerts [1] IMPLICIT BOOLEAN TRUE
                    der::tlv(idp, tag::context_primitive(1), &[0xff]);
                });
                der::extension(&mut exts, oid::ISSUING_DISTRIBUTION_POINT, true, &v);
            }
            CrlScope::Delta { base } => {
                let mut v = Vec::new();
                der::u64_integer(&mut v, *base);
                der::extension(&mut exts, oid::DELTA_CRL_INDICATOR, true, &v);
            }
        }
        let mut wrapped = Vec::with_capacity(exts.len() + 8);
        der::nested(&mut wrapped, tag::context(0), |c| {
            der::tlv(c, tag::SEQUENCE, &exts)
        });
        self.buf.extend_from_slice(&wrapped);

        // Headers, written backwards into the reserved space.
        let mut pos = self.reserve;
        if self.count > 0 {
            // An empty revokedCertificates is left out (RFC 5280 §5.1.2.6).
            pos = der::header_before(&mut self.buf, pos, tag::SEQUENCE, entries_len);
        }
        pos -= self.prefix.len();
        self.buf[pos..pos + self.prefix.len()].copy_from_slice(&self.prefix);
        let tbs_len = self.buf.len() - pos;
        pos = der::header_before(&mut self.buf, pos, tag::SEQUENCE, tbs_len);
        let signature = signer.sign(&self.buf[pos..])?;
        self.buf
            .extend_from_slice(signer.scheme().algorithm_identifier());
        der::header(&mut self.buf, tag::BIT_STRING, signature.len() + 1);
        self.buf.push(0);
        self.buf.extend_from_slice(&signature);
        let total = self.buf.len() - pos;
        pos = der::header_before(&mut self.buf, pos, tag::SEQUENCE, total);
        // Shifts the CRL to the front in place (no second buffer; the spare
        // capacity stays, which is cheaper than a copy of a large CRL).
        self.buf.drain(..pos);
        Ok(self.buf)
    }
}

/// `distributionPoint [0] { fullName [0] { uniformResourceIdentifier [6] url } }`
fn distribution_point_name(out: &mut Vec<u8>, url: &str) {
    der::nested(out, tag::context(0), |dpn| {
        der::nested(dpn, tag::context(0), |names| {
            der::tlv(names, tag::context_primitive(6), url.as_bytes())
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{KeyType, PrivateKey};
    use std::sync::Arc;
    use x509_parser::prelude::FromDer;
    use x509_parser::revocation_list::CertificateRevocationList;

    fn ca() -> (CaCertificate, Arc<dyn KeySigner>) {
        let key = PrivateKey::generate(KeyType::P256).unwrap().into_signer();
        let names = crate::pki::ca::CaNames {
            organization: "Test".into(),
            root_common_name: "Test Root".into(),
            intermediate_common_name: "Test Int".into(),
        };
        let cert = crate::pki::ca::create_root(
            &key,
            &names,
            OffsetDateTime::now_utc(),
            crate::pki::Serial::random(&mut rand::thread_rng()),
        )
        .unwrap();
        (cert, key)
    }

    #[test]
    fn a_crl_parses_and_verifies_with_its_entries() {
        let (cert, key) = ca();
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let spec = CrlSpec {
            issuer: &cert,
            this_update: now,
            next_update: now + time::Duration::days(7),
            scope: CrlScope::Complete {
                delta_url: Some("http://127.0.0.1/crl/x-delta.crl".into()),
            },
        };
        let mut b = CrlBuilder::new(&spec, key.as_ref());
        let serials: Vec<[u8; 16]> = (0..300u32)
            .map(|i| {
                let mut s = [0x41u8; 16];
                s[12..].copy_from_slice(&i.to_be_bytes());
                s
            })
            .collect();
        for (i, s) in serials.iter().enumerate() {
            b.push(&CrlEntry {
                serial: s,
                revoked_at: now,
                reason: RevocationReason::ALL[i % 7],
                invalidity_date: (i % 2 == 0).then_some(now - time::Duration::hours(1)),
            });
        }
        let der = b.finish(42, key.as_ref()).unwrap();
        let (rest, crl) = CertificateRevocationList::from_der(&der).unwrap();
        assert!(rest.is_empty());
        assert_eq!(crl.crl_number().map(|n| n.to_string()), Some("42".into()));
        assert_eq!(crl.iter_revoked_certificates().count(), 300);
        let first = crl.iter_revoked_certificates().nth(1).unwrap();
        assert_eq!(first.raw_serial(), &serials[1]);
        assert_eq!(
            first.reason_code().map(|(_, r)| r.0),
            Some(RevocationReason::KeyCompromise.code())
        );
        let (_, issuer) = x509_parser::certificate::X509Certificate::from_der(cert.der()).unwrap();
        crl.verify_signature(issuer.public_key()).unwrap();
    }

    #[test]
    fn an_empty_crl_has_no_revoked_list() {
        let (cert, key) = ca();
        let now = OffsetDateTime::now_utc();
        let spec = CrlSpec {
            issuer: &cert,
            this_update: now,
            next_update: now + time::Duration::days(1),
            scope: CrlScope::Delta { base: 3 },
        };
        let der = CrlBuilder::new(&spec, key.as_ref())
            .finish(4, key.as_ref())
            .unwrap();
        let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
        assert_eq!(crl.iter_revoked_certificates().count(), 0);
        assert!(crl
            .extensions()
            .iter()
            .any(|e| e.critical && e.oid.to_id_string() == "2.5.29.27"));
    }

    #[test]
    fn reasons_parse_by_name() {
        assert_eq!(
            "keyCompromise".parse::<RevocationReason>().unwrap(),
            RevocationReason::KeyCompromise
        );
        assert!("certificateHold".parse::<RevocationReason>().is_err());
        assert_eq!(
            RevocationReason::from_code(9),
            Some(RevocationReason::PrivilegeWithdrawn)
        );
        assert_eq!(RevocationReason::from_code(6), None);
    }
}
