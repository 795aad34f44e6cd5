//! The degenerate PKCS#7 / CMS SignedData ("certs-only", RFC 5652 §5 with
//! no signers) that EST (RFC 7030 §4.1.3, §4.2.3) answers with: a bag of
//! certificates.

use super::der;

/// id-signedData (1.2.840.113549.1.7.2).
const SIGNED_DATA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02,
];
/// id-data (1.2.840.113549.1.7.1).
const DATA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01,
];

/// ContentInfo { signedData, SignedData { version 1, no digest
/// algorithms, data content absent, certificates, no signers } }, DER.
pub fn certs_only(certificates: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    der::nested(&mut out, 0x30, |out| {
        out.extend_from_slice(SIGNED_DATA);
        der::nested(out, 0xa0, |out| {
            der::nested(out, 0x30, |out| {
                der::tlv(out, 0x02, &[0x01]);
                der::tlv(out, 0x31, &[]);
                der::nested(out, 0x30, |out| out.extend_from_slice(DATA));
                der::nested(out, 0xa0, |out| {
                    for c in certificates {
                        out.extend_from_slice(c);
                    }
                });
                der::tlv(out, 0x31, &[]);
            });
        });
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_bag_has_the_fixed_shape() {
        let bag = certs_only(&[]);
        assert_eq!(bag[0], 0x30);
        assert!(bag.windows(SIGNED_DATA.len()).any(|w| w == SIGNED_DATA));
        let one = certs_only(&[&[0x30, 0x00]]);
        assert_eq!(one.len(), bag.len() + 2);
    }
}
