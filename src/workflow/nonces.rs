//! ACME replay nonces (RFC 8555 §6.5): made without a database write,
//! checked by their MAC and expiry first, and each good for one request.
//!
//! A nonce is 32 bytes, base64url: its expiry (8), an id (8) and the first
//! 16 bytes of an HMAC-SHA256 of those under the nonce key. Where its one
//! use is recorded depends on how many servers the database has:
//!
//! - **Shared** (PostgreSQL, several instances behind a balancer): the key
//!   is the database's, the id random, and each use a row every instance
//!   sees (`Store::use_nonce`, group-committed without a flush).
//! - **Local** (SQLite, whose one `serve` is its database's only server):
//!   the key is this process's own, made at start, so a nonce from before
//!   a restart fails its MAC and the client retries with the fresh one in
//!   that answer, as RFC 8555 §6.5 has it; the id counts the nonces this
//!   process made, and a use sets the id's bit in a sliding window of the
//!   last [`WINDOW`] made — no database write, and a fixed 128 KiB however
//!   fast nonces are used. A nonce older than the window is refused like
//!   a used one (at 8,000 nonces/s the window is two minutes; an ACME
//!   client uses its nonce within the second). Making nonces faster than
//!   clients use them (every answer makes one; newNonce is limited per
//!   address) only pushes unused ones out: their clients get `badNonce`
//!   and retry, and no nonce is ever good twice.

use std::sync::{Arc, Mutex};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use subtle::ConstantTimeEq;

use crate::store::{Store, StoreError};

/// How long a nonce may wait for its request, in seconds.
pub const LIFETIME_SECS: i64 = 3600;

/// How many of the latest nonces a local record remembers.
pub const WINDOW: u64 = 1 << 20;

/// The nonce key and the record of used nonces.
pub struct Nonces {
    key: ring::hmac::Key,
    record: Record,
}

enum Record {
    Shared(Arc<dyn Store>),
    Local(Mutex<Window>),
}

/// The ids of the last [`WINDOW`] nonces made, one bit each: set once used.
struct Window {
    /// The id the next nonce gets.
    next: u64,
    used: Vec<u64>,
}

impl Window {
    fn new() -> Self {
        Window {
            next: 0,
            used: vec![0; (WINDOW / 64) as usize],
        }
    }

    fn slot(id: u64) -> (usize, u64) {
        let bit = id % WINDOW;
        ((bit / 64) as usize, 1 << (bit % 64))
    }

    /// A new id; its slot is the one of the id [`WINDOW`] before it,
    /// which leaves the window now.
    fn make(&mut self) -> u64 {
        let id = self.next;
        self.next += 1;
        let (word, bit) = Self::slot(id);
        self.used[word] &= !bit;
        id
    }

    /// Uses `id`: false if it was used before, left the window, or was
    /// never made.
    fn take(&mut self, id: u64) -> bool {
        if id >= self.next || self.next - id > WINDOW {
            return false;
        }
        let (word, bit) = Self::slot(id);
        let fresh = self.used[word] & bit == 0;
        self.used[word] |= bit;
        fresh
    }
}

/// A nonce that passed its MAC and expiry check, before its use.
pub struct Checked {
    nonce: String,
    id: u64,
    expires: i64,
}

impl Nonces {
    /// Nonces for a store: local where `serve` is its database's only
    /// server, else under the database's shared key.
    pub async fn for_store(store: &Arc<dyn Store>) -> Result<Self, StoreError> {
        let candidate: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(rand::random());
        if store.one_server() {
            return Ok(Nonces::local(candidate.as_slice()));
        }
        let shared = zeroize::Zeroizing::new(store.acme_nonce_key(candidate.as_slice()).await?);
        Ok(Nonces {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &shared),
            record: Record::Shared(store.clone()),
        })
    }

    /// A record of this process's own, under `key`.
    pub fn local(key: &[u8]) -> Self {
        Nonces {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
            record: Record::Local(Mutex::new(Window::new())),
        }
    }

    /// A new nonce, good until `now` + [`LIFETIME_SECS`].
    pub fn fresh(&self, now: i64) -> String {
        let id = match &self.record {
            Record::Shared(_) => rand::random(),
            Record::Local(window) => window.lock().unwrap_or_else(|p| p.into_inner()).make(),
        };
        let mut raw = [0u8; 32];
        raw[..8].copy_from_slice(&(now + LIFETIME_SECS).to_be_bytes());
        raw[8..16].copy_from_slice(&id.to_be_bytes());
        let tag = ring::hmac::sign(&self.key, &raw[..16]);
        raw[16..].copy_from_slice(&tag.as_ref()[..16]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// `nonce` if it is one of ours and unexpired at `now`: checked by its
    /// MAC alone. Whether it was used before is [`Nonces::take`]'s
    /// question, asked once the request's signature has verified.
    pub fn check(&self, nonce: &str, now: i64) -> Option<Checked> {
        let raw = match URL_SAFE_NO_PAD.decode(nonce) {
            Ok(r) if r.len() == 32 => r,
            _ => return None,
        };
        let tag = ring::hmac::sign(&self.key, &raw[..16]);
        if !bool::from(tag.as_ref()[..16].ct_eq(&raw[16..])) {
            return None;
        }
        let expires = i64::from_be_bytes(raw[..8].try_into().ok()?);
        let id = u64::from_be_bytes(raw[8..16].try_into().ok()?);
        (expires >= now).then(|| Checked {
            nonce: nonce.to_owned(),
            id,
            expires,
        })
    }

    /// Uses a checked nonce: false if it was used before.
    pub async fn take(&self, checked: Checked) -> Result<bool, StoreError> {
        match &self.record {
            Record::Shared(store) => store.use_nonce(&checked.nonce, checked.expires).await,
            Record::Local(window) => Ok(window
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(checked.id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_nonce_is_good_once_and_until_it_leaves_the_window() {
        let mut w = Window::new();
        assert!(!w.take(0), "an id never made");
        for _ in 0..WINDOW {
            w.make();
        }
        assert!(w.take(0), "a fresh id");
        assert!(!w.take(0), "a replay");
        // The next id takes the first one's slot: the first leaves.
        assert_eq!(w.make(), WINDOW);
        assert!(!w.take(0), "it left the window");
        assert!(w.take(1), "the oldest in the window, unused");
        w.make();
        w.make();
        assert!(!w.take(2), "it left the window unused");
        assert!(w.take(WINDOW), "the newest, in the first one's slot");
        assert!(w.take(WINDOW + 2), "the last made");
        assert!(!w.take(WINDOW + 3), "an id not made yet");
    }

    #[test]
    fn a_nonce_is_checked_by_its_mac_and_expiry() {
        let nonces = Nonces::local(b"a key of this process");
        let nonce = nonces.fresh(1_000);
        assert!(nonces.check(&nonce, 1_000 + LIFETIME_SECS).is_some());
        assert!(
            nonces.check(&nonce, 1_001 + LIFETIME_SECS).is_none(),
            "expired"
        );
        // Another process's key (a restart) refuses it.
        let restarted = Nonces::local(b"the key after a restart");
        assert!(restarted.check(&nonce, 1_000).is_none());
        // A changed byte fails the MAC.
        let mut raw = URL_SAFE_NO_PAD.decode(&nonce).unwrap();
        raw[9] ^= 1;
        assert!(nonces.check(&URL_SAFE_NO_PAD.encode(raw), 1_000).is_none());
        assert!(nonces.check("not a nonce", 1_000).is_none());
    }
}
