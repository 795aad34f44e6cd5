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

/// How long [`Written`] keeps what this process wrote.
pub const WRITTEN_FOR: Duration = Duration::from_secs(60);

/// Rows that never change once written (an issued certificate's DER,
/// issuer and owner), kept for [`WRITTEN_FOR`] after this process wrote
/// them, for the read that follows the write: an ACME client downloads
/// its certificate right after its finalize. Nothing can make a kept
/// value wrong, so there is no version; the bound is memory
/// ([`MAX_ENTRIES`]).
pub struct Written<K, V> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> Written<K, V> {
    pub fn new() -> Self {
        Written {
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The value written under `key` less than [`WRITTEN_FOR`] ago.
    pub fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().ok()?;
        let (at, value) = entries.get(key)?;
        (at.elapsed() < WRITTEN_FOR).then(|| value.clone())
    }

    /// Keeps `value`, just written under `key`.
    pub fn keep(&self, key: K, value: V) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_ENTRIES {
                entries.retain(|_, (at, _)| at.elapsed() < WRITTEN_FOR);
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
            }
            entries.insert(key, (Instant::now(), value));
        }
    }
}

impl<K: Eq + Hash, V: Clone> Default for Written<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

/// Views this process wrote or read, kept per key with a version: what
/// the hot paths ask of an order between its writes (RFC 8555 clients
/// poll it) is answered from memory, and each write through this process
/// drops its key's view before it is submitted and may leave the view it
/// wrote once it commits.
///
/// Unlike [`Recent`], one write hides only its own key's view, so a busy
/// instance keeps the views of every order it is not writing. A read that
/// began before a write to its key, or while one was in flight, is never
/// kept: [`Tracked::before_read`] gives the version to keep it under, and
/// any write to the key (or [`Tracked::forget_all`]) changes the version.
/// Versions come from one counter, so a key dropped and made again never
/// matches a version handed out before. A write through another process
/// is seen within [`FRESH_FOR`], when the view ages out.
pub struct Tracked<K, V> {
    slots: Mutex<Slots<K, V>>,
}

struct Slots<K, V> {
    next: u64,
    map: HashMap<K, Slot<V>>,
}

struct Slot<V> {
    version: u64,
    /// Writes submitted and not yet finished.
    writing: u32,
    view: Option<(Instant, V)>,
}

impl<K, V> Slots<K, V> {
    fn version(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Tracked<K, V> {
    pub fn new() -> Self {
        Tracked {
            slots: Mutex::new(Slots {
                next: 0,
                map: HashMap::new(),
            }),
        }
    }

    /// The kept view of `key`, if no write to it is in flight and it was
    /// read or written less than [`FRESH_FOR`] ago.
    pub fn get(&self, key: &K) -> Option<V> {
        let slots = self.slots.lock().ok()?;
        let slot = slots.map.get(key)?;
        match &slot.view {
            Some((at, view)) if slot.writing == 0 && at.elapsed() < FRESH_FOR => Some(view.clone()),
            _ => None,
        }
    }

    /// Called before reading `key` from the database: the version to keep
    /// the answer under, or `None` (not to be kept) while a write to it is
    /// in flight.
    pub fn before_read(&self, key: &K) -> Option<u64> {
        let mut slots = self.slots.lock().ok()?;
        if let Some(slot) = slots.map.get(key) {
            return (slot.writing == 0).then_some(slot.version);
        }
        if slots.map.len() >= MAX_ENTRIES {
            slots.map.retain(|_, s| s.writing > 0);
        }
        let version = slots.version();
        slots.map.insert(
            key.clone(),
            Slot {
                version,
                writing: 0,
                view: None,
            },
        );
        Some(version)
    }

    /// Keeps `view`, read after [`Tracked::before_read`] gave `version`,
    /// unless a write to `key` began since.
    pub fn keep(&self, key: &K, version: Option<u64>, view: V) {
        let (Some(version), Ok(mut slots)) = (version, self.slots.lock()) else {
            return;
        };
        if let Some(slot) = slots.map.get_mut(key) {
            if slot.writing == 0 && slot.version == version {
                slot.view = Some((Instant::now(), view));
            }
        }
    }

    /// Called before a write to `key` is submitted: its view is dropped,
    /// and no read is kept until the returned guard is finished or
    /// dropped (a write whose outcome is unknown leaves no view). The
    /// guard holds the view dropped, if it was fresh, for a write that
    /// changes it in known ways ([`WriteGuard::committed_change`]).
    pub fn writing(&self, key: &K) -> WriteGuard<'_, K, V> {
        let mut guard = WriteGuard {
            tracked: self,
            key: key.clone(),
            began: 0,
            before: None,
            done: false,
        };
        if let Ok(mut slots) = self.slots.lock() {
            let version = slots.version();
            let slot = slots.map.entry(key.clone()).or_insert(Slot {
                version,
                writing: 0,
                view: None,
            });
            guard.before = slot
                .view
                .take()
                .filter(|(at, _)| slot.writing == 0 && at.elapsed() < FRESH_FOR);
            slot.version = version;
            slot.writing += 1;
            guard.began = version;
        }
        guard
    }

    /// Drops every view: after a write that may change many keys.
    pub fn forget_all(&self) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.map.retain(|_, s| s.writing > 0);
            let version = slots.version();
            for slot in slots.map.values_mut() {
                slot.version = version;
                slot.view = None;
            }
        }
    }

    fn finish(&self, key: &K, began: u64, view: Option<(Instant, V)>) {
        let Ok(mut slots) = self.slots.lock() else {
            return;
        };
        let version = slots.version();
        if let Some(slot) = slots.map.get_mut(key) {
            // Another write to the key in flight now or finished since
            // this one began may have committed after it: then the view
            // this one left may already be behind.
            let alone = slot.writing == 1 && slot.version == began;
            slot.writing = slot.writing.saturating_sub(1);
            slot.version = version;
            slot.view = view.filter(|_| alone);
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Default for Tracked<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

/// A write to one key of a [`Tracked`] in flight.
pub struct WriteGuard<'a, K: Eq + Hash + Clone, V: Clone> {
    tracked: &'a Tracked<K, V>,
    key: K,
    /// The version this write set as it began.
    began: u64,
    /// The view it dropped, with when that was read.
    before: Option<(Instant, V)>,
    done: bool,
}

impl<K: Eq + Hash + Clone, V: Clone> WriteGuard<'_, K, V> {
    /// The write committed and left `view` (`None`: a view this process
    /// does not know whole; the next read fetches it).
    pub fn committed(mut self, view: Option<V>) {
        self.done = true;
        let view = view.map(|v| (Instant::now(), v));
        self.tracked.finish(&self.key, self.began, view);
    }

    /// The write committed and made `change` to the view it dropped: the
    /// view changed is kept (if there was one), as old as the view it
    /// came from, so a change made elsewhere before it is still seen
    /// within [`FRESH_FOR`] of that read.
    pub fn committed_change(self, change: impl FnOnce(&mut V)) {
        self.committed_change_if(|v| {
            change(v);
            true
        });
    }

    /// As [`WriteGuard::committed_change`], but `change` may turn down
    /// the view it is given (false: it cannot tell what the write made of
    /// that view); then none is kept.
    pub fn committed_change_if(mut self, change: impl FnOnce(&mut V) -> bool) {
        self.done = true;
        let view = self
            .before
            .take()
            .and_then(|(at, mut v)| change(&mut v).then_some((at, v)));
        self.tracked.finish(&self.key, self.began, view);
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Drop for WriteGuard<'_, K, V> {
    fn drop(&mut self) {
        if !self.done {
            self.tracked.finish(&self.key, self.began, None);
        }
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

    #[test]
    fn a_tracked_view_is_kept_only_if_no_write_to_its_key_began_since_its_read() {
        let t: Tracked<&str, i64> = Tracked::new();
        // A read kept, then served.
        let v = t.before_read(&"a");
        t.keep(&"a", v, 1);
        assert_eq!(t.get(&"a"), Some(1));
        // A write drops it at once and leaves what it wrote.
        let w = t.writing(&"a");
        assert_eq!(t.get(&"a"), None, "no view while a write is in flight");
        assert_eq!(
            t.before_read(&"a"),
            None,
            "a read during a write is not kept"
        );
        w.committed(Some(2));
        assert_eq!(t.get(&"a"), Some(2));
        // A read that began before a write is not kept after it.
        let v = t.before_read(&"b");
        t.writing(&"b").committed(None);
        t.keep(&"b", v, 3);
        assert_eq!(t.get(&"b"), None);
        // Two writes to a key in flight together leave no view, whichever
        // finishes first (their commits may have been in either order).
        let w1 = t.writing(&"c");
        let w2 = t.writing(&"c");
        w1.committed(Some(4));
        assert_eq!(t.get(&"c"), None);
        w2.committed(Some(5));
        assert_eq!(t.get(&"c"), None);
        let w1 = t.writing(&"c");
        let w2 = t.writing(&"c");
        w2.committed(Some(5));
        w1.committed(Some(4));
        assert_eq!(t.get(&"c"), None);
        t.writing(&"c").committed(Some(6));
        assert_eq!(t.get(&"c"), Some(6));
        // A write abandoned (its outcome unknown) leaves none.
        drop(t.writing(&"c"));
        assert_eq!(t.get(&"c"), None);
        // A write that changes the view in known ways leaves it changed,
        // as old as the view it changed.
        let v = t.before_read(&"f");
        t.keep(&"f", v, 10);
        t.writing(&"f").committed_change(|v| *v += 1);
        assert_eq!(t.get(&"f"), Some(11));
        t.writing(&"g").committed_change(|v| *v += 1);
        assert_eq!(t.get(&"g"), None, "no view before, none after");
        // Writes to other keys leave a view alone.
        t.writing(&"d").committed(None);
        assert_eq!(t.get(&"a"), Some(2));
        // forget_all drops views and refuses reads begun before it.
        let v = t.before_read(&"e");
        t.forget_all();
        assert_eq!(t.get(&"a"), None);
        t.keep(&"e", v, 6);
        assert_eq!(t.get(&"e"), None);
    }

    #[test]
    fn tracked_views_stay_bounded_and_a_key_made_again_refuses_old_reads() {
        let t: Tracked<usize, usize> = Tracked::new();
        let first = t.before_read(&0);
        let w = t.writing(&1);
        for i in 2..MAX_ENTRIES * 2 {
            let v = t.before_read(&i);
            t.keep(&i, v, i);
        }
        assert!(t.slots.lock().unwrap().map.len() <= MAX_ENTRIES);
        // Key 0 was dropped and made again: the read from before is refused.
        let _ = t.before_read(&0);
        t.keep(&0, first, 7);
        assert_eq!(t.get(&0), None);
        // The write in flight kept its slot through the clearing.
        w.committed(Some(1));
        assert_eq!(t.get(&1), Some(1));
    }
}
