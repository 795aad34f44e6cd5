//! Certificate serial numbers: 16 positive bytes (RFC 5280 §4.1.2.2) for
//! what hallmark signs — random for CA certificates, the issuing
//! millisecond then 72 random bits for leaves — and any positive serial of up to 20
//! octets for certificates of an imported CA.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;

/// The longest serial RFC 5280 lets a certificate user rely on handling.
pub const MAX_SERIAL_BYTES: usize = 20;

/// A certificate serial number, as its magnitude without leading zero
/// bytes. hallmark's own are 16 bytes with the top bit cleared so the DER
/// INTEGER is positive, and the low bit of the first byte set so it is
/// always exactly 16 bytes long: 126 random bits for a CA certificate, a
/// leaf's signing millisecond then 72 random bits (both above the 64 the
/// CA/Browser Forum asks for). A certificate imported from another CA
/// keeps its serial, which may be as short as one byte.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial {
    len: u8,
    bytes: [u8; MAX_SERIAL_BYTES],
}

impl Serial {
    /// Draws a new serial from `rng`.
    pub fn random(rng: &mut impl RngCore) -> Self {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        Self::sixteen_bytes(bytes)
    }

    /// A leaf certificate's serial, signed at `unix_millis`: the byte
    /// `01` (so the serial is positive and always 16 bytes, as in
    /// [`Serial::random`]), the millisecond as 48 big-endian bits (enough
    /// until the year 10889), then 72 bits from `rng` — above the 64 bits
    /// of CSPRNG output the CA/Browser Forum asks for. Serials made in
    /// order land at the end of the indexes keyed by serial (the
    /// certificates' and the audit log's subject) instead of on a random
    /// page of each; to the millisecond, not the second, so the issuances
    /// of one group commit share a page there too (docs/BENCHMARKS.md).
    /// The CRL partition is taken from the last bytes, which stay random.
    pub fn time_ordered(unix_millis: i64, rng: &mut impl RngCore) -> Self {
        let mut bytes = [0u8; 16];
        bytes[1..7].copy_from_slice(&unix_millis.max(0).to_be_bytes()[2..]);
        rng.fill_bytes(&mut bytes[7..]);
        Self::sixteen_bytes(bytes)
    }

    /// `bytes` as a positive serial of exactly 16 bytes: the top bit
    /// cleared, the low bit of the first byte set.
    fn sixteen_bytes(mut bytes: [u8; 16]) -> Self {
        bytes[0] = (bytes[0] & 0x7f) | 0x01;
        Self::from_magnitude(&bytes).unwrap_or_else(|| unreachable!("16 bytes fit"))
    }

    /// The serial whose magnitude is `bytes` (big-endian; leading zero
    /// bytes, as a DER INTEGER's sign octet, are dropped). `None` if it is
    /// longer than 20 bytes.
    pub fn from_magnitude(bytes: &[u8]) -> Option<Self> {
        let start = bytes
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(bytes.len().saturating_sub(1));
        let significant = &bytes[start.min(bytes.len())..];
        let significant = if significant.is_empty() {
            &[0u8][..]
        } else {
            significant
        };
        if significant.len() > MAX_SERIAL_BYTES {
            return None;
        }
        let mut out = [0u8; MAX_SERIAL_BYTES];
        out[..significant.len()].copy_from_slice(significant);
        Some(Serial {
            len: significant.len() as u8,
            bytes: out,
        })
    }

    /// The big-endian magnitude, without leading zero bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Lower-case hex, the form used in URLs and the database.
    pub fn to_hex(self) -> String {
        hex::encode(self.as_bytes())
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({self})")
    }
}

/// A serial number string that is not in hallmark's form.
#[derive(Debug, thiserror::Error)]
#[error("a serial number is lower-case hexadecimal, two digits a byte, at most 20 bytes, without a leading 00 byte (hallmark's own are 32 digits)")]
pub struct SerialParseError;

impl FromStr for Serial {
    type Err = SerialParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty()
            || s.len() % 2 != 0
            || s.len() > 2 * MAX_SERIAL_BYTES
            || s.bytes().any(|b| b.is_ascii_uppercase())
            || (s.len() > 2 && s.starts_with("00"))
        {
            return Err(SerialParseError);
        }
        let mut bytes = [0u8; MAX_SERIAL_BYTES];
        let len = s.len() / 2;
        hex::decode_to_slice(s, &mut bytes[..len]).map_err(|_| SerialParseError)?;
        Ok(Serial {
            len: len as u8,
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_positive_sixteen_bytes_and_round_trip() {
        let mut rng = rand::thread_rng();
        for _ in 0..1000 {
            let s = Serial::random(&mut rng);
            assert_eq!(s.as_bytes().len(), 16);
            assert!(s.as_bytes()[0] & 0x80 == 0 && s.as_bytes()[0] != 0);
            assert_eq!(s.to_hex().parse::<Serial>().unwrap(), s);
        }
        assert!("ABCDEF00000000000000000000000000"
            .parse::<Serial>()
            .is_err());
        assert!("abc".parse::<Serial>().is_err());
    }

    #[test]
    fn leaf_serials_sort_by_millisecond_and_stay_random_after_it() {
        let mut rng = rand::thread_rng();
        let now = 1_796_000_000_123; // 2026-11, in milliseconds
        let a = Serial::time_ordered(now, &mut rng);
        let b = Serial::time_ordered(now + 1, &mut rng);
        for s in [a, b] {
            assert_eq!(s.as_bytes().len(), 16);
            assert_eq!(s.as_bytes()[0], 0x01);
            assert_eq!(s.to_hex().parse::<Serial>().unwrap(), s);
        }
        assert!(a.to_hex() < b.to_hex(), "{a} sorts before {b}");
        assert_eq!(&a.as_bytes()[1..7], &now.to_be_bytes()[2..]);
        // 72 random bits: a thousand serials in one millisecond all differ.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let s = Serial::time_ordered(now, &mut rng);
            assert_eq!(&s.as_bytes()[..7], &a.as_bytes()[..7]);
            assert!(seen.insert(s));
        }
        // Far in the future the serial is still positive, 16 bytes and in
        // order.
        let later = Serial::time_ordered((1 << 48) - 1, &mut rng);
        assert_eq!(later.as_bytes().len(), 16);
        assert_eq!(later.as_bytes()[0], 0x01);
        assert!(b.to_hex() < later.to_hex());
    }

    #[test]
    fn imported_serials_keep_their_length_in_one_canonical_form() {
        let one = "01".parse::<Serial>().unwrap();
        assert_eq!(one.as_bytes(), &[1]);
        assert_eq!(Serial::from_magnitude(&[0, 0, 1]), Some(one));
        let twenty = "8f".repeat(20);
        let s = twenty.parse::<Serial>().unwrap();
        assert_eq!(s.as_bytes().len(), 20);
        // A DER INTEGER's sign octet is not part of the magnitude.
        let mut der = vec![0u8];
        der.extend_from_slice(s.as_bytes());
        assert_eq!(Serial::from_magnitude(&der), Some(s));
        assert_eq!(s.to_hex(), twenty);
        assert!("0001".parse::<Serial>().is_err(), "leading zero byte");
        assert!("8f".repeat(21).parse::<Serial>().is_err(), "21 bytes");
        assert!(Serial::from_magnitude(&[1; 21]).is_none());
        assert!("1".parse::<Serial>().is_err(), "odd digits");
        assert!("".parse::<Serial>().is_err());
    }
}
