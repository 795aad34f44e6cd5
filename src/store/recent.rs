//! Answers to the reads every request makes — the account behind an API
//! key, an ACME account by id, the last proof of a name, the blocklist of
//! compromised keys — kept in memory
//! for [`FRESH_FOR`], so the hot paths make no database round trip for
//! them.
//!
//! The bound on staleness: a change made through this instance (a key
//! revoked or rotated, an account disabled, an ACME account deactivated or
//! its key rolled over) is seen at once, because every such write bumps
//! [`Recent::changed`] after it commits and an answer read before the
//! bump is never served after it (a key blocked by a keyCompromise
//! revocation here is refused at once). A change made through another instance
//! is seen within [`FRESH_FOR`], the same bound the OCSP cache keeps for
//! revocations (README, "PostgreSQL and several instances").
//!
//! Only answers that let a request through are kept (a known key, an
//! existing account, a proof): an unknown key is asked of the database
//! every time, so a new key works at once and nobody can fill the cache
//! with misses.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an answer is served without asking the database again.
pub const FRESH_FOR: Duration = Duration::from_secs(2);

/// Most blocked keys held in memory as one set: beyond, each CSR's key is
/// looked up in the database instead.
pub const MAX_BLOCKED_IN_MEMORY: usize = 65_536;

/// Most answers kept per kind; a full map is emptied (the next requests
/// refill it), so memory stays bounded whatever the traffic.
const MAX_ENTRIES: usize = 16_384;

/// Counts the writes that may make a kept answer wrong.
#[derive(Default)]
pub struct Changes(AtomicU64);

impl Changes {
    /// The count now: take it before reading what will be kept.
    pub fn now(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Called after such a write commits.
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// Answers of one kind of read.
pub struct Recent<K, V> {
    entries: Mutex<HashMap<K, Entry<V>>>,
}

struct Entry<V> {
    read_at: Instant,
    changes: u64,
    value: V,
}

impl<K: Eq + Hash, V: Clone> Recent<K, V> {
    pub fn new() -> Self {
        Recent {
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The kept answer for `key`, if read less than [`FRESH_FOR`] ago and
    /// no write since (`changes` is [`Changes::now`]).
    pub fn get(&self, key: &K, changes: u64) -> Option<V> {
        let entries = self.entries.lock().ok()?;
        let entry = entries.get(key)?;
        (entry.changes == changes && entry.read_at.elapsed() < FRESH_FOR)
            .then(|| entry.value.clone())
    }

    /// Keeps `value`, read after [`Changes::now`] gave `changes`.
    pub fn keep(&self, key: K, changes: u64, value: V) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(
                key,
                Entry {
                    read_at: Instant::now(),
                    changes,
                    value,
                },
            );
        }
    }
}

impl<K: Eq + Hash, V: Clone> Default for Recent<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_served_until_a_change_or_its_age() {
        let changes = Changes::default();
        let recent: Recent<&str, i64> = Recent::new();
        let before = changes.now();
        recent.keep("a", before, 1);
        assert_eq!(recent.get(&"a", changes.now()), Some(1));
        assert_eq!(recent.get(&"b", changes.now()), None);
        changes.bump();
        assert_eq!(recent.get(&"a", changes.now()), None, "a write hides it");
        recent.keep("a", changes.now(), 2);
        assert_eq!(recent.get(&"a", changes.now()), Some(2));
        // An answer read before a write is never served after it.
        let stale = changes.now();
        changes.bump();
        recent.keep("c", stale, 3);
        assert_eq!(recent.get(&"c", changes.now()), None);
    }

    #[test]
    fn the_map_stays_bounded() {
        let recent: Recent<usize, usize> = Recent::new();
        for i in 0..MAX_ENTRIES * 2 + 1 {
            recent.keep(i, 0, i);
        }
        assert!(recent.entries.lock().unwrap().len() <= MAX_ENTRIES);
        assert_eq!(recent.get(&(MAX_ENTRIES * 2), 0), Some(MAX_ENTRIES * 2));
    }
}
