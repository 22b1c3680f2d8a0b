//! A bounded, expiring map: what every per-VM cache of verdicts is built on (the
//! verified-token cache, [`crate::cache`], and the peer-certificate verdicts, [`crate::svid`]).
//!
//! Bounded two ways: a hard cap on entries (0 = store nothing), and an expiry instant per
//! entry. An entry is live while `now < expires_at`. When full, expired entries go first,
//! then the entry closest to expiry. Lookups, inserts and evictions are O(log n), so a flood
//! of unique keys costs the same per request as a trickle; a lookup allocates nothing.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

#[derive(Debug)]
pub struct ExpiringMap<K, V> {
    max_entries: usize,
    /// key → (expires_at, value).
    entries: HashMap<K, (u64, V)>,
    /// (expires_at, key), ordered by expiry: the eviction queue. Always the same keys as
    /// `entries`.
    by_expiry: BTreeSet<(u64, K)>,
}

impl<K: Copy + Ord + Hash, V> ExpiringMap<K, V> {
    pub fn new(max_entries: usize) -> Self {
        ExpiringMap {
            max_entries,
            entries: HashMap::with_capacity(max_entries.min(1024)),
            by_expiry: BTreeSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cap on entries.
    pub fn capacity(&self) -> usize {
        self.max_entries
    }

    /// Stores `value` under `key` until `expires_at`, replacing any entry for `key`, and
    /// evicting to stay within the cap: expired entries first, then the soonest to expire.
    /// Nothing is stored when the cap is 0 or `expires_at <= now`.
    pub fn insert(&mut self, key: K, value: V, expires_at: u64, now: u64) {
        if self.max_entries == 0 || expires_at <= now {
            return;
        }
        if let Some((old, _)) = self.entries.remove(&key) {
            self.by_expiry.remove(&(old, key));
        }
        self.purge_expired(now);
        while self.entries.len() >= self.max_entries {
            let Some((_, first)) = self.by_expiry.pop_first() else {
                break;
            };
            self.entries.remove(&first);
        }
        self.by_expiry.insert((expires_at, key));
        self.entries.insert(key, (expires_at, value));
    }

    /// Drops every entry for which `keep` is false. Returns how many were dropped. O(n).
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) -> usize {
        let before = self.entries.len();
        let by_expiry = &mut self.by_expiry;
        self.entries.retain(|key, (expires_at, value)| {
            let kept = keep(key, value);
            if !kept {
                by_expiry.remove(&(*expires_at, *key));
            }
            kept
        });
        before - self.entries.len()
    }

    /// Drops every entry that has expired at `now`.
    pub fn purge_expired(&mut self, now: u64) {
        while let Some(&(expires_at, key)) = self.by_expiry.first() {
            if expires_at > now {
                break;
            }
            self.by_expiry.pop_first();
            self.entries.remove(&key);
        }
    }

    /// The size of the eviction queue, which must always equal [`Self::len`].
    #[cfg(test)]
    pub(crate) fn index_len(&self) -> usize {
        self.by_expiry.len()
    }
}

impl<K: Copy + Ord + Hash, V: Clone> ExpiringMap<K, V> {
    /// A copy of the value for `key` if it is live at `now`; an expired entry is removed and
    /// reported as a miss.
    pub fn get(&mut self, key: &K, now: u64) -> Option<V> {
        let (expires_at, value) = self.entries.get(key)?;
        if now < *expires_at {
            return Some(value.clone());
        }
        let expires_at = *expires_at;
        self.entries.remove(key);
        self.by_expiry.remove(&(expires_at, *key));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consistent(m: &ExpiringMap<u32, u32>) {
        assert_eq!(m.len(), m.index_len());
        assert!(m.len() <= m.capacity());
    }

    #[test]
    fn live_until_expires_at_then_removed_on_get() {
        let mut m = ExpiringMap::new(4);
        m.insert(1, 10, 100, 0);
        assert_eq!(m.get(&1, 99), Some(10));
        assert_eq!(m.get(&1, 100), None);
        assert!(m.is_empty());
        consistent(&m);
    }

    #[test]
    fn cap_holds_under_a_flood_of_unique_keys() {
        let mut m = ExpiringMap::new(500);
        for i in 0..20_000u32 {
            m.insert(i, i, 1_000 + u64::from(i % 13), 10);
            consistent(&m);
        }
        assert_eq!(m.len(), 500);
        // The newest is always kept.
        assert_eq!(m.get(&19_999, 11), Some(19_999));
    }

    #[test]
    fn full_map_evicts_expired_entries_first() {
        let mut m = ExpiringMap::new(3);
        m.insert(1, 1, 20, 0);
        m.insert(2, 2, 10, 0);
        m.insert(3, 3, 300, 0);
        // At t=25 keys 1 and 2 are expired: both go, the live one stays.
        m.insert(4, 4, 30, 25);
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(&3, 25), Some(3));
        assert_eq!(m.get(&4, 25), Some(4));
        consistent(&m);
    }

    #[test]
    fn full_map_with_nothing_expired_evicts_the_soonest_to_expire() {
        let mut m = ExpiringMap::new(3);
        m.insert(1, 1, 300, 0);
        m.insert(2, 2, 200, 0);
        m.insert(3, 3, 400, 0);
        m.insert(4, 4, 500, 10);
        assert_eq!(m.get(&2, 10), None);
        assert_eq!(m.get(&1, 10), Some(1));
        assert_eq!(m.get(&3, 10), Some(3));
        assert_eq!(m.get(&4, 10), Some(4));
        // The new entry is stored even when it expires before everything else.
        m.insert(5, 5, 50, 10);
        assert_eq!(m.get(&1, 10), None);
        assert_eq!(m.get(&5, 10), Some(5));
        assert_eq!(m.len(), 3);
        consistent(&m);
    }

    #[test]
    fn retain_drops_what_is_not_kept_from_both_indexes() {
        let mut m = ExpiringMap::new(10);
        for i in 0..6u32 {
            m.insert(i, i * 10, 100 + u64::from(i), 0);
        }
        assert_eq!(m.retain(|k, v| k % 2 == 0 && *v != 40), 4);
        assert_eq!(m.len(), 2);
        consistent(&m);
        assert_eq!(m.get(&0, 1), Some(0));
        assert_eq!(m.get(&2, 1), Some(20));
        assert_eq!(m.get(&4, 1), None);
        // A retained-away entry does not occupy the cap or the eviction queue.
        for i in 10..18u32 {
            m.insert(i, i, 1_000, 1);
        }
        assert_eq!(m.len(), 10);
        assert_eq!(m.get(&0, 1), Some(0));
        assert_eq!(m.get(&2, 1), Some(20));
        consistent(&m);
    }

    #[test]
    fn zero_capacity_stores_nothing() {
        let mut m = ExpiringMap::new(0);
        m.insert(1, 1, 100, 0);
        assert_eq!(m.get(&1, 1), None);
        assert!(m.is_empty());
        consistent(&m);
    }

    #[test]
    fn already_expired_is_not_stored_and_reinsert_replaces() {
        let mut m = ExpiringMap::new(10);
        m.insert(1, 1, 100, 100);
        assert!(m.is_empty());
        m.insert(1, 1, 100, 0);
        m.insert(1, 2, 200, 0);
        assert_eq!(m.len(), 1);
        consistent(&m);
        assert_eq!(m.get(&1, 150), Some(2));
        // An already-expired reinsert leaves the live entry as it was.
        m.insert(1, 3, 150, 150);
        assert_eq!(m.get(&1, 150), Some(2));
    }

    #[test]
    fn purge_expired_removes_exactly_the_expired() {
        let mut m = ExpiringMap::new(10);
        m.insert(1, 1, 10, 0);
        m.insert(2, 2, 20, 0);
        m.insert(3, 3, 30, 0);
        m.purge_expired(20);
        assert_eq!(m.len(), 1);
        assert_eq!(m.get(&3, 20), Some(3));
        consistent(&m);
    }
}
