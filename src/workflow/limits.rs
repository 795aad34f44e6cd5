//! Token buckets in this instance's memory: per account for new orders,
//! per client address for the unauthenticated doors (sign-in, ACME
//! newAccount and newNonce, revocation signed by a certificate key).
//!
//! Each bucket holds `per_minute` tokens and refills at `per_minute` a
//! minute, so a client may burst up to a minute's worth at once. With
//! several instances behind a balancer each has its own buckets (the limit
//! is per instance, as the README says).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Buckets are forgotten, once full again, beyond this many keys.
const FORGET_BEYOND: usize = 10_000;

/// Token buckets keyed by `K`.
pub struct TokenBuckets<K> {
    per_minute: u32,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Eq + Hash> TokenBuckets<K> {
    /// Buckets of `per_minute` tokens (0: no limit).
    pub fn new(per_minute: u32) -> TokenBuckets<K> {
        TokenBuckets {
            per_minute,
            buckets: Mutex::default(),
        }
    }

    /// Takes a token for `key`, or says how many seconds until one is free.
    pub fn take(&self, key: K) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > FORGET_BEYOND {
            // Forget keys whose bucket has refilled: they lose nothing.
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_second < capacity
            });
        }
        let (tokens, at) = buckets.entry(key).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_second).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / per_second).ceil().max(1.0) as u64)
        }
    }
}

/// The key of a client address: IPv4 addresses as they are, IPv6 by their
/// /64 (one host usually holds a whole /64).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

/// The per-address limits of the unauthenticated doors (`[limits]`).
pub struct AddressLimits {
    /// Dashboard sign-in attempts.
    pub sign_in: TokenBuckets<IpAddr>,
    /// ACME newAccount requests.
    pub new_account: TokenBuckets<IpAddr>,
    /// ACME newNonce requests.
    pub new_nonce: TokenBuckets<IpAddr>,
    /// ACME revokeCert requests signed by a certificate's key.
    pub key_revocation: TokenBuckets<IpAddr>,
}

impl AddressLimits {
    /// The limits of `[limits]`.
    pub fn new(section: &crate::config::LimitsSection) -> AddressLimits {
        AddressLimits {
            sign_in: TokenBuckets::new(section.sign_in_per_minute),
            new_account: TokenBuckets::new(section.new_accounts_per_minute),
            new_nonce: TokenBuckets::new(section.new_nonces_per_minute),
            key_revocation: TokenBuckets::new(section.key_revocations_per_minute),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_a_minutes_burst_then_refuses_with_a_wait() {
        let buckets = TokenBuckets::new(3);
        for _ in 0..3 {
            buckets.take("a").unwrap();
        }
        let wait = buckets.take("a").unwrap_err();
        assert!((1..=20).contains(&wait), "{wait}");
        buckets.take("b").unwrap();
        let off = TokenBuckets::new(0);
        for _ in 0..100 {
            off.take("a").unwrap();
        }
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let a = address_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = address_key("2001:db8:1:2:bbbb::9".parse().unwrap());
        let c = address_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            address_key("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
