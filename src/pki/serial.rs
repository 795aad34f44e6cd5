//! Certificate serial numbers: 128 random bits, positive (RFC 5280 §4.1.2.2).

use std::fmt;
use std::str::FromStr;

use rand::RngCore;

/// A certificate serial number: 16 random bytes with the top bit cleared so
/// the DER INTEGER is positive, and the low bit of the first byte set so it
/// is always exactly 16 bytes long (126 bits of entropy, well above the 64
/// the CA/Browser Forum asks for).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial([u8; 16]);

impl Serial {
    /// Draws a new serial from `rng`.
    pub fn random(rng: &mut impl RngCore) -> Self {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        bytes[0] = (bytes[0] & 0x7f) | 0x01;
        Serial(bytes)
    }

    /// The big-endian bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Lower-case hex, the form used in URLs and the database.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({self})")
    }
}

/// A serial number string that is not 32 lower-case hex digits.
#[derive(Debug, thiserror::Error)]
#[error("a serial number is 32 lower-case hexadecimal digits")]
pub struct SerialParseError;

impl FromStr for Serial {
    type Err = SerialParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(SerialParseError);
        }
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| SerialParseError)?;
        Ok(Serial(bytes))
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
            assert!(s.as_bytes()[0] & 0x80 == 0 && s.as_bytes()[0] != 0);
            assert_eq!(s.to_hex().parse::<Serial>().unwrap(), s);
        }
        assert!("ABCDEF00000000000000000000000000"
            .parse::<Serial>()
            .is_err());
        assert!("abc".parse::<Serial>().is_err());
    }
}
