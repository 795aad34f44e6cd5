//! Known-bad RSA moduli, refused like a short key: a modulus with a small
//! prime factor (a broken generator; Boulder's goodkey checks the same
//! primes), and the ROCA fingerprint (CVE-2017-15361: Infineon's library
//! made primes of a shape that lets the modulus be factored).
//!
//! The ROCA test is the published "moduli detector": a vulnerable modulus
//! lies, modulo each prime from 3 to 167, in the subgroup 65537 generates;
//! a random modulus does so for all 38 primes with probability about
//! 2^-154. Each subgroup is computed here, not copied as constants.

/// Why a modulus is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weakness {
    /// Divisible by a prime below 1,000.
    SmallFactor(u32),
    /// Has the ROCA fingerprint.
    Roca,
}

/// Primes below this are tried as factors.
const SMALL_PRIME_LIMIT: u32 = 1000;

/// The ROCA detector's primes.
const ROCA_PRIMES: [u32; 38] = [
    3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97,
    101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
];

/// `n mod p` for a big-endian `n`.
fn rem(n: &[u8], p: u32) -> u32 {
    n.iter()
        .fold(0u64, |r, b| ((r << 8) | u64::from(*b)) % u64::from(p)) as u32
}

fn is_prime(n: u32) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

/// Whether `r` is in the subgroup of (Z/pZ)* that 65537 generates.
fn in_subgroup_of_65537(r: u32, p: u32) -> bool {
    let g = 65537 % p;
    let mut x = 1;
    loop {
        if x == r {
            return true;
        }
        x = x * g % p;
        if x == 1 {
            return false;
        }
    }
}

/// The first weakness of the big-endian RSA modulus `n`, if any.
pub fn rsa_modulus(n: &[u8]) -> Option<Weakness> {
    if let Some(p) = (2..SMALL_PRIME_LIMIT).find(|p| is_prime(*p) && rem(n, *p) == 0) {
        return Some(Weakness::SmallFactor(p));
    }
    ROCA_PRIMES
        .iter()
        .all(|p| in_subgroup_of_65537(rem(n, *p), *p))
        .then_some(Weakness::Roca)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `v` as big-endian bytes of a 2048-bit number (leading zeros).
    fn be(v: u128) -> Vec<u8> {
        let mut n = vec![0u8; 240];
        n.extend_from_slice(&v.to_be_bytes());
        n
    }

    #[test]
    fn the_subgroups_match_the_published_markers() {
        // The first markers of the published detector, as bit masks of
        // residues: 6 (p = 3), 30 (5), 126 (7), 1026 (11), 5658 (13).
        for (p, marker) in [(3u32, 6u64), (5, 30), (7, 126), (11, 1026), (13, 5658)] {
            let mask = (0..p)
                .filter(|r| in_subgroup_of_65537(*r, p))
                .fold(0u64, |m, r| m | 1 << r);
            assert_eq!(mask, marker, "p = {p}");
        }
    }

    #[test]
    fn small_factors_and_the_roca_shape_are_found() {
        // 65537^k, reduced, satisfies every marker: the shape ROCA primes
        // multiply to. (No small factor: 65537 is prime.)
        let mut roca = 1u128;
        for _ in 0..7 {
            roca = roca.wrapping_mul(65537);
        }
        assert_eq!(rsa_modulus(&be(roca)), Some(Weakness::Roca));
        assert_eq!(
            rsa_modulus(&be(991 * 1_000_003)),
            Some(Weakness::SmallFactor(991))
        );
        assert_eq!(rsa_modulus(&be(1_000_003 * 1_000_033)), None);
    }

    #[test]
    fn a_generated_rsa_key_is_not_weak() {
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        assert_eq!(rsa_modulus(&key.n().to_bytes_be()), None);
    }
}
