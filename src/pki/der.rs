//! A small DER writer and reader for the structures hallmark encodes by
//! hand (CRLs, which are streamed, and OCSP, which rcgen does not cover).
//! Only definite lengths; the reader refuses anything else.

use time::OffsetDateTime;

/// Universal tags used here.
pub mod tag {
    /// BOOLEAN.
    pub const BOOLEAN: u8 = 0x01;
    /// INTEGER.
    pub const INTEGER: u8 = 0x02;
    /// BIT STRING.
    pub const BIT_STRING: u8 = 0x03;
    /// OCTET STRING.
    pub const OCTET_STRING: u8 = 0x04;
    /// NULL.
    pub const NULL: u8 = 0x05;
    /// OBJECT IDENTIFIER.
    pub const OID: u8 = 0x06;
    /// ENUMERATED.
    pub const ENUMERATED: u8 = 0x0a;
    /// UTCTime.
    pub const UTC_TIME: u8 = 0x17;
    /// GeneralizedTime.
    pub const GENERALIZED_TIME: u8 = 0x18;
    /// SEQUENCE (constructed).
    pub const SEQUENCE: u8 = 0x30;
    /// `[n]` constructed, context-specific.
    pub const fn context(n: u8) -> u8 {
        0xa0 | n
    }
    /// `[n]` primitive, context-specific.
    pub const fn context_primitive(n: u8) -> u8 {
        0x80 | n
    }
}

/// Object identifiers, as their DER content bytes.
pub mod oid {
    /// id-ce-cRLNumber 2.5.29.20.
    pub const CRL_NUMBER: &[u8] = &[0x55, 0x1d, 0x14];
    /// id-ce-deltaCRLIndicator 2.5.29.27.
    pub const DELTA_CRL_INDICATOR: &[u8] = &[0x55, 0x1d, 0x1b];
    /// id-ce-issuingDistributionPoint 2.5.29.28.
    pub const ISSUING_DISTRIBUTION_POINT: &[u8] = &[0x55, 0x1d, 0x1c];
    /// id-ce-freshestCRL 2.5.29.46.
    pub const FRESHEST_CRL: &[u8] = &[0x55, 0x1d, 0x2e];
    /// id-ce-authorityKeyIdentifier 2.5.29.35.
    pub const AUTHORITY_KEY_IDENTIFIER: &[u8] = &[0x55, 0x1d, 0x23];
    /// id-ce-cRLReasons 2.5.29.21.
    pub const CRL_REASON: &[u8] = &[0x55, 0x1d, 0x15];
    /// id-ce-invalidityDate 2.5.29.24.
    pub const INVALIDITY_DATE: &[u8] = &[0x55, 0x1d, 0x18];
    /// id-pkix-ocsp-basic 1.3.6.1.5.5.7.48.1.1.
    pub const OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
    /// id-pkix-ocsp-nonce 1.3.6.1.5.5.7.48.1.2.
    pub const OCSP_NONCE: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x02];
    /// id-pkix-ocsp-nocheck 1.3.6.1.5.5.7.48.1.5.
    pub const OCSP_NOCHECK: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x05];
    /// id-sha1 1.3.14.3.2.26.
    pub const SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
    /// id-sha256 2.16.840.1.101.3.4.2.1.
    pub const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
    /// id-sha384 2.16.840.1.101.3.4.2.2.
    pub const SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
    /// id-sha512 2.16.840.1.101.3.4.2.3.
    pub const SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];
}

/// Bytes a DER header takes for a value of `len` bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        0..=0x7f => 2,
        0x80..=0xff => 3,
        0x100..=0xffff => 4,
        0x1_0000..=0xff_ffff => 5,
        _ => 6,
    }
}

/// Appends a tag and a definite length.
pub fn header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = (len as u64).to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    out.push(0x80 | (8 - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

/// Writes a header into the `header_len(len)` bytes ending at `end`
/// (used to prepend headers into space reserved in front of a body).
pub fn header_before(buf: &mut [u8], end: usize, tag: u8, len: usize) -> usize {
    let mut h = Vec::with_capacity(6);
    header(&mut h, tag, len);
    let start = end - h.len();
    buf[start..end].copy_from_slice(&h);
    start
}

/// Appends a complete TLV.
pub fn tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    header(out, tag, content.len());
    out.extend_from_slice(content);
}

/// Builds a TLV whose content is written by `f`.
pub fn nested(out: &mut Vec<u8>, tag: u8, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    f(&mut inner);
    tlv(out, tag, &inner);
}

/// Appends a non-negative INTEGER from big-endian magnitude bytes.
pub fn unsigned_integer(out: &mut Vec<u8>, magnitude: &[u8]) {
    let trimmed = {
        let skip = magnitude.iter().take_while(|b| **b == 0).count();
        &magnitude[skip.min(magnitude.len().saturating_sub(1))..]
    };
    if trimmed.is_empty() {
        tlv(out, tag::INTEGER, &[0]);
    } else if trimmed[0] & 0x80 != 0 {
        header(out, tag::INTEGER, trimmed.len() + 1);
        out.push(0);
        out.extend_from_slice(trimmed);
    } else {
        tlv(out, tag::INTEGER, trimmed);
    }
}

/// Appends a non-negative INTEGER.
pub fn u64_integer(out: &mut Vec<u8>, value: u64) {
    unsigned_integer(out, &value.to_be_bytes());
}

/// Appends an OBJECT IDENTIFIER from its content bytes.
pub fn oid(out: &mut Vec<u8>, content: &[u8]) {
    tlv(out, tag::OID, content);
}

/// GeneralizedTime text, `YYYYMMDDHHMMSSZ`.
fn generalized_text(t: OffsetDateTime) -> String {
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The text of an RFC 5280 Time (§4.1.2.5): UTCTime `YYMMDDHHMMSSZ` for
/// 1950 through 2049, GeneralizedTime otherwise — also what `openssl ca`
/// writes in its index.txt. The flag says whether it is UTCTime.
pub fn time_text(t: OffsetDateTime) -> (String, bool) {
    let full = generalized_text(t);
    if (1950..2050).contains(&t.year()) {
        (full[2..].to_owned(), true)
    } else {
        (full, false)
    }
}

/// Appends GeneralizedTime `YYYYMMDDHHMMSSZ`.
pub fn generalized_time(out: &mut Vec<u8>, t: OffsetDateTime) {
    tlv(out, tag::GENERALIZED_TIME, generalized_text(t).as_bytes());
}

/// Appends an RFC 5280 Time: UTCTime through 2049, GeneralizedTime after.
pub fn time(out: &mut Vec<u8>, t: OffsetDateTime) {
    let (text, utc) = time_text(t);
    let tag = if utc {
        tag::UTC_TIME
    } else {
        tag::GENERALIZED_TIME
    };
    tlv(out, tag, text.as_bytes());
}

/// Appends one Extension: `SEQUENCE { extnID, critical DEFAULT FALSE, extnValue }`.
pub fn extension(out: &mut Vec<u8>, id: &[u8], critical: bool, value: &[u8]) {
    nested(out, tag::SEQUENCE, |e| {
        oid(e, id);
        if critical {
            tlv(e, tag::BOOLEAN, &[0xff]);
        }
        tlv(e, tag::OCTET_STRING, value);
    });
}

/// Why DER input could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed DER: {0}")]
pub struct DerError(pub &'static str);

/// One element read: its tag, its content and the whole encoding.
#[derive(Debug, Clone, Copy)]
pub struct Element<'a> {
    /// The identifier octet.
    pub tag: u8,
    /// The content octets.
    pub content: &'a [u8],
    /// Header and content.
    pub raw: &'a [u8],
}

/// Reads a sequence of DER elements.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next element's tag, if any.
    pub fn peek_tag(&self) -> Option<u8> {
        self.data.first().copied()
    }

    /// Reads the next element.
    pub fn read(&mut self) -> Result<Element<'a>, DerError> {
        let d = self.data;
        let tag = *d.first().ok_or(DerError("unexpected end of data"))?;
        if tag & 0x1f == 0x1f {
            return Err(DerError("multi-byte tags are not supported"));
        }
        let first = *d.get(1).ok_or(DerError("unexpected end of data"))?;
        let (len, hlen) = if first < 0x80 {
            (first as usize, 2)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 {
                return Err(DerError("indefinite lengths are not DER"));
            }
            if n > 4 {
                return Err(DerError("length too large"));
            }
            let bytes = d.get(2..2 + n).ok_or(DerError("unexpected end of data"))?;
            let len = bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (len, 2 + n)
        };
        let end = hlen.checked_add(len).ok_or(DerError("length too large"))?;
        if end > d.len() {
            return Err(DerError("element longer than its container"));
        }
        self.data = &d[end..];
        Ok(Element {
            tag,
            content: &d[hlen..end],
            raw: &d[..end],
        })
    }

    /// Reads the next element, which must have `tag`.
    pub fn expect(&mut self, tag: u8) -> Result<Element<'a>, DerError> {
        let e = self.read()?;
        if e.tag != tag {
            return Err(DerError("unexpected element"));
        }
        Ok(e)
    }

    /// Reads the next element if it has `tag`.
    pub fn optional(&mut self, tag: u8) -> Result<Option<Element<'a>>, DerError> {
        if self.peek_tag() == Some(tag) {
            self.read().map(Some)
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 65_535, 65_536, 20_000_000] {
            let mut out = Vec::new();
            header(&mut out, tag::OCTET_STRING, len);
            assert_eq!(out.len(), header_len(len), "{len}");
            out.resize(out.len() + len, 7);
            let mut r = Reader::new(&out);
            let e = r.read().unwrap();
            assert_eq!(e.content.len(), len);
            assert!(r.is_empty());
        }
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        let mut out = Vec::new();
        unsigned_integer(&mut out, &[0x00, 0x00, 0x80]);
        assert_eq!(out, [0x02, 0x02, 0x00, 0x80]);
        out.clear();
        u64_integer(&mut out, 0);
        assert_eq!(out, [0x02, 0x01, 0x00]);
        out.clear();
        u64_integer(&mut out, 0x1234);
        assert_eq!(out, [0x02, 0x02, 0x12, 0x34]);
    }

    #[test]
    fn reader_refuses_bad_lengths() {
        assert!(Reader::new(&[0x30, 0x80, 0, 0]).read().is_err());
        assert!(Reader::new(&[0x30, 0x05, 1]).read().is_err());
        assert!(Reader::new(&[0x30]).read().is_err());
        assert!(Reader::new(&[0x30, 0x85, 1, 1, 1, 1, 1]).read().is_err());
    }

    #[test]
    fn times_switch_at_2050() {
        let mut out = Vec::new();
        time(&mut out, time::macros::datetime!(2049-12-31 23:59:59 UTC));
        assert_eq!(out[0], tag::UTC_TIME);
        assert_eq!(&out[2..], b"491231235959Z");
        out.clear();
        time(&mut out, time::macros::datetime!(2050-01-01 00:00:00 UTC));
        assert_eq!(out[0], tag::GENERALIZED_TIME);
        assert_eq!(&out[2..], b"20500101000000Z");
    }
}
