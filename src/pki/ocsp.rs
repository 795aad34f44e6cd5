//! OCSP (RFC 6960): reading requests and encoding signed responses. The
//! answers themselves (good, revoked, unknown) come from the workflow.

use time::OffsetDateTime;

use super::der::{self, oid, tag, DerError, Reader};
use super::key::{KeyError, KeySigner};
use super::CaCertificate;

/// Most CertIDs answered in one request (each one is a database lookup).
pub const MAX_REQUESTS: usize = 20;

/// The hash a CertID was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertIdHash {
    /// SHA-1 (what most clients send, RFC 5019).
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl CertIdHash {
    /// Hashes `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        let alg = match self {
            CertIdHash::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            CertIdHash::Sha256 => &ring::digest::SHA256,
            CertIdHash::Sha384 => &ring::digest::SHA384,
            CertIdHash::Sha512 => &ring::digest::SHA512,
        };
        ring::digest::digest(alg, data).as_ref().to_vec()
    }
}

/// One CertID of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertId {
    /// Its DER encoding, echoed in the response.
    pub raw: Vec<u8>,
    /// The hash algorithm.
    pub hash: CertIdHash,
    /// Hash of the issuer's Name.
    pub issuer_name_hash: Vec<u8>,
    /// Hash of the issuer's public key bits.
    pub issuer_key_hash: Vec<u8>,
    /// The serial's magnitude, big-endian, without leading zeros.
    pub serial: Vec<u8>,
}

/// A parsed OCSP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcspRequest {
    /// What is asked about.
    pub cert_ids: Vec<CertId>,
    /// The nonce extension's extnValue, echoed verbatim (RFC 8954).
    pub nonce: Option<Vec<u8>>,
}

/// Why a request is refused before any lookup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not a DER OCSPRequest.
    #[error("the OCSP request is malformed: {0}")]
    Malformed(String),
}

impl From<DerError> for RequestError {
    fn from(e: DerError) -> Self {
        RequestError::Malformed(e.to_string())
    }
}

impl OcspRequest {
    /// Parses a DER OCSPRequest. Signed requests are accepted and their
    /// signature ignored (nothing here depends on who asks).
    pub fn parse(data: &[u8]) -> Result<Self, RequestError> {
        let mut top = Reader::new(data);
        let request = top.expect(tag::SEQUENCE)?;
        if !top.is_empty() {
            return Err(RequestError::Malformed("trailing data".into()));
        }
        let mut request = Reader::new(request.content);
        let tbs = request.expect(tag::SEQUENCE)?;
        request.optional(tag::context(0))?; // optionalSignature
        if !request.is_empty() {
            return Err(RequestError::Malformed(
                "unexpected element after tbsRequest".into(),
            ));
        }
        let mut tbs = Reader::new(tbs.content);
        if let Some(v) = tbs.optional(tag::context(0))? {
            if v.content != [tag::INTEGER, 1, 0] {
                return Err(RequestError::Malformed(
                    "only version 1 requests exist".into(),
                ));
            }
        }
        tbs.optional(tag::context(1))?; // requestorName
        let list = tbs.expect(tag::SEQUENCE)?;
        let mut nonce = None;
        if let Some(exts) = tbs.optional(tag::context(2))? {
            let mut outer = Reader::new(exts.content);
            let seq = outer.expect(tag::SEQUENCE)?;
            let mut exts = Reader::new(seq.content);
            while !exts.is_empty() {
                let ext = exts.expect(tag::SEQUENCE)?;
                let mut e = Reader::new(ext.content);
                let id = e.expect(tag::OID)?;
                e.optional(tag::BOOLEAN)?;
                let value = e.expect(tag::OCTET_STRING)?;
                if id.content == oid::OCSP_NONCE {
                    if value.content.is_empty() || value.content.len() > 128 {
                        return Err(RequestError::Malformed(
                            "the nonce must be 1 to 128 bytes".into(),
                        ));
                    }
                    nonce = Some(value.content.to_vec());
                }
            }
        }
        if !tbs.is_empty() {
            return Err(RequestError::Malformed(
                "unexpected element in tbsRequest".into(),
            ));
        }
        let mut list = Reader::new(list.content);
        let mut cert_ids = Vec::new();
        while !list.is_empty() {
            if cert_ids.len() == MAX_REQUESTS {
                return Err(RequestError::Malformed(format!(
                    "at most {MAX_REQUESTS} certificates may be asked about at once"
                )));
            }
            let single = list.expect(tag::SEQUENCE)?;
            let mut single = Reader::new(single.content);
            let cert_id = single.expect(tag::SEQUENCE)?;
            cert_ids.push(parse_cert_id(cert_id.raw, cert_id.content)?);
        }
        if cert_ids.is_empty() {
            return Err(RequestError::Malformed(
                "the request asks about no certificate".into(),
            ));
        }
        Ok(OcspRequest { cert_ids, nonce })
    }
}

fn parse_cert_id(raw: &[u8], content: &[u8]) -> Result<CertId, RequestError> {
    let mut r = Reader::new(content);
    let alg = r.expect(tag::SEQUENCE)?;
    let mut alg = Reader::new(alg.content);
    let alg_oid = alg.expect(tag::OID)?;
    let hash = match alg_oid.content {
        oid::SHA1 => CertIdHash::Sha1,
        oid::SHA256 => CertIdHash::Sha256,
        oid::SHA384 => CertIdHash::Sha384,
        oid::SHA512 => CertIdHash::Sha512,
        _ => {
            return Err(RequestError::Malformed(
                "the CertID hash must be SHA-1, SHA-256, SHA-384 or SHA-512".into(),
            ))
        }
    };
    let name_hash = r.expect(tag::OCTET_STRING)?;
    let key_hash = r.expect(tag::OCTET_STRING)?;
    let serial = r.expect(tag::INTEGER)?;
    if !r.is_empty() {
        return Err(RequestError::Malformed(
            "unexpected element in CertID".into(),
        ));
    }
    if serial.content.is_empty() || serial.content[0] & 0x80 != 0 || serial.content.len() > 21 {
        return Err(RequestError::Malformed(
            "the serial number must be a positive integer of at most 20 octets".into(),
        ));
    }
    let skip = serial.content.iter().take_while(|b| **b == 0).count();
    Ok(CertId {
        raw: raw.to_vec(),
        hash,
        issuer_name_hash: name_hash.content.to_vec(),
        issuer_key_hash: key_hash.content.to_vec(),
        serial: serial.content[skip..].to_vec(),
    })
}

/// The subjectPublicKey bits of a SubjectPublicKeyInfo (what issuerKeyHash
/// and the responder's KeyHash cover).
pub fn public_key_bits(spki: &[u8]) -> Result<&[u8], DerError> {
    let mut r = Reader::new(spki);
    let seq = r.expect(tag::SEQUENCE)?;
    let mut seq = Reader::new(seq.content);
    seq.expect(tag::SEQUENCE)?;
    let bits = seq.expect(tag::BIT_STRING)?;
    bits.content.get(1..).ok_or(DerError("empty BIT STRING"))
}

/// The hashes by which requests name an issuer, for each CertID hash.
#[derive(Debug, Clone)]
pub struct IssuerHashes {
    entries: Vec<(CertIdHash, Vec<u8>, Vec<u8>)>,
}

impl IssuerHashes {
    /// Computes the name and key hashes of `issuer`.
    pub fn new(issuer: &CaCertificate) -> Result<Self, DerError> {
        let key = public_key_bits(issuer.spki())?;
        let entries = [
            CertIdHash::Sha1,
            CertIdHash::Sha256,
            CertIdHash::Sha384,
            CertIdHash::Sha512,
        ]
        .into_iter()
        .map(|h| (h, h.digest(issuer.subject_raw()), h.digest(key)))
        .collect();
        Ok(IssuerHashes { entries })
    }

    /// Whether `id` names this issuer.
    pub fn matches(&self, id: &CertId) -> bool {
        self.entries.iter().any(|(h, name, key)| {
            *h == id.hash && *name == id.issuer_name_hash && *key == id.issuer_key_hash
        })
    }
}

/// The status of one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    /// Issued here and not revoked.
    Good,
    /// Revoked, with when and (unless unspecified) why.
    Revoked {
        /// When.
        at: OffsetDateTime,
        /// CRLReason code, none for unspecified.
        reason: Option<u8>,
    },
    /// Not a certificate this issuer issued.
    Unknown,
}

/// One answer to include.
#[derive(Debug, Clone)]
pub struct SingleResponse<'a> {
    /// The CertID as asked.
    pub cert_id: &'a CertId,
    /// The answer.
    pub status: CertStatus,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate.
    pub next_update: OffsetDateTime,
}

/// The responseStatus values of a response without a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStatus {
    /// malformedRequest (1).
    MalformedRequest = 1,
    /// internalError (2).
    InternalError = 2,
    /// tryLater (3).
    TryLater = 3,
    /// unauthorized (6): not an issuer this responder answers for.
    Unauthorized = 6,
}

/// An unsigned OCSPResponse carrying only an error status.
pub fn error_response(status: ErrorStatus) -> Vec<u8> {
    vec![tag::SEQUENCE, 3, tag::ENUMERATED, 1, status as u8]
}

/// The responder: the key that signs and the certificates to include (the
/// delegated responder certificate, or none when the CA key signs).
pub struct ResponderSigner<'a> {
    /// Signs the responses.
    pub key: &'a dyn KeySigner,
    /// Certificates in `certs` (DER).
    pub certs: &'a [Vec<u8>],
}

/// Encodes and signs a successful BasicOCSPResponse.
pub fn signed_response(
    signer: &ResponderSigner<'_>,
    produced_at: OffsetDateTime,
    responses: &[SingleResponse<'_>],
    nonce: Option<&[u8]>,
) -> Result<Vec<u8>, KeyError> {
    let key_hash = CertIdHash::Sha1.digest(signer.key.public_key_raw());
    let mut data = Vec::with_capacity(256 + responses.len() * 128);
    // ResponderID byKey [2] EXPLICIT KeyHash
    der::nested(&mut data, tag::context(2), |r| {
        der::tlv(r, tag::OCTET_STRING, &key_hash)
    });
    der::generalized_time(&mut data, produced_at);
    der::nested(&mut data, tag::SEQUENCE, |list| {
        for s in responses {
            der::nested(list, tag::SEQUENCE, |one| {
                one.extend_from_slice(&s.cert_id.raw);
                match s.status {
                    CertStatus::Good => der::tlv(one, tag::context_primitive(0), &[]),
                    CertStatus::Unknown => der::tlv(one, tag::context_primitive(2), &[]),
                    CertStatus::Revoked { at, reason } => {
                        der::nested(one, tag::context(1), |info| {
                            der::generalized_time(info, at);
                            if let Some(code) = reason {
                                der::nested(info, tag::context(0), |r| {
                                    der::tlv(r, tag::ENUMERATED, &[code])
                                });
                            }
                        })
                    }
                }
                der::generalized_time(one, s.this_update);
                der::nested(one, tag::context(0), |n| {
                    der::generalized_time(n, s.next_update)
                });
            });
        }
    });
    if let Some(nonce) = nonce {
        der::nested(&mut data, tag::context(1), |e| {
            der::nested(e, tag::SEQUENCE, |exts| {
                der::extension(exts, oid::OCSP_NONCE, false, nonce)
            })
        });
    }
    let mut tbs = Vec::with_capacity(data.len() + 4);
    der::tlv(&mut tbs, tag::SEQUENCE, &data);
    let signature = signer.key.sign(&tbs)?;
    let mut basic = Vec::with_capacity(tbs.len() + signature.len() + 64);
    der::nested(&mut basic, tag::SEQUENCE, |b| {
        b.extend_from_slice(&tbs);
        b.extend_from_slice(signer.key.scheme().algorithm_identifier());
        der::header(b, tag::BIT_STRING, signature.len() + 1);
        b.push(0);
        b.extend_from_slice(&signature);
        if !signer.certs.is_empty() {
            der::nested(b, tag::context(0), |c| {
                der::nested(c, tag::SEQUENCE, |list| {
                    for cert in signer.certs {
                        list.extend_from_slice(cert);
                    }
                })
            });
        }
    });
    let mut out = Vec::with_capacity(basic.len() + 32);
    der::nested(&mut out, tag::SEQUENCE, |r| {
        der::tlv(r, tag::ENUMERATED, &[0]); // successful
        der::nested(r, tag::context(0), |rb| {
            der::nested(rb, tag::SEQUENCE, |bytes| {
                der::oid(bytes, oid::OCSP_BASIC);
                der::tlv(bytes, tag::OCTET_STRING, &basic);
            })
        });
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl ocsp -issuer ca.pem -serial 0x0102 -reqout -` with a nonce.
    fn request(hash_oid: &[u8], serial: &[u8], nonce: Option<&[u8]>) -> Vec<u8> {
        let mut cert_id = Vec::new();
        der::nested(&mut cert_id, tag::SEQUENCE, |c| {
            der::nested(c, tag::SEQUENCE, |a| {
                der::oid(a, hash_oid);
                der::tlv(a, tag::NULL, &[]);
            });
            der::tlv(c, tag::OCTET_STRING, &[1; 20]);
            der::tlv(c, tag::OCTET_STRING, &[2; 20]);
            der::unsigned_integer(c, serial);
        });
        let mut out = Vec::new();
        der::nested(&mut out, tag::SEQUENCE, |req| {
            der::nested(req, tag::SEQUENCE, |tbs| {
                der::nested(tbs, tag::SEQUENCE, |list| {
                    der::nested(list, tag::SEQUENCE, |one| one.extend_from_slice(&cert_id))
                });
                if let Some(n) = nonce {
                    der::nested(tbs, tag::context(2), |e| {
                        der::nested(e, tag::SEQUENCE, |exts| {
                            let mut v = Vec::new();
                            der::tlv(&mut v, tag::OCTET_STRING, n);
                            der::extension(exts, oid::OCSP_NONCE, false, &v);
                        })
                    });
                }
            })
        });
        out
    }

    #[test]
    fn requests_parse_with_sha1_and_sha256() {
        let r =
            OcspRequest::parse(&request(oid::SHA1, &[0x81, 2], Some(b"0123456789abcdef"))).unwrap();
        assert_eq!(r.cert_ids.len(), 1);
        assert_eq!(r.cert_ids[0].hash, CertIdHash::Sha1);
        assert_eq!(r.cert_ids[0].serial, [0x81, 2]);
        assert_eq!(r.nonce.as_deref().map(|n| n.len()), Some(18));
        let r = OcspRequest::parse(&request(oid::SHA256, &[7], None)).unwrap();
        assert_eq!(r.cert_ids[0].hash, CertIdHash::Sha256);
        assert_eq!(r.nonce, None);
    }

    #[test]
    fn garbage_is_malformed() {
        for bad in [&b""[..], b"hello", &[0x30, 0x00], &[0x30, 0x02, 0x30, 0x00]] {
            assert!(OcspRequest::parse(bad).is_err(), "{bad:?}");
        }
        let mut trailing = request(oid::SHA1, &[1], None);
        trailing.push(0);
        assert!(OcspRequest::parse(&trailing).is_err());
        assert!(OcspRequest::parse(&request(&[0x2a, 0x03], &[1], None)).is_err());
    }

    #[test]
    fn error_responses_are_minimal() {
        assert_eq!(
            error_response(ErrorStatus::MalformedRequest),
            [0x30, 0x03, 0x0a, 0x01, 0x01]
        );
    }
}
