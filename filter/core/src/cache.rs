//! The verified-token cache: SHA-256(token) → verified facts, per Wasm VM.
//!
//! Bounded two ways: a hard cap on entries, and expiry at the token's own `exp` (plus skew).
//! When full, expired entries go first, then the entry closest to expiry. Both lookups and
//! evictions are O(log n), so a flood of unique tokens costs the same per request as a trickle.
//! The bounding and eviction are [`ExpiringMap`]'s.

use crate::expiring::ExpiringMap;
use crate::jwt::TokenFacts;
use sha2::{Digest, Sha256};
use std::rc::Rc;

/// The cache key: SHA-256 of the token's bytes. The token itself is never stored.
pub type TokenHash = [u8; 32];

pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Verified facts by token hash, each until its `valid_until`.
#[derive(Debug)]
pub struct TokenCache {
    map: ExpiringMap<TokenHash, Rc<TokenFacts>>,
}

impl TokenCache {
    pub fn new(max_entries: usize) -> Self {
        TokenCache {
            map: ExpiringMap::new(max_entries),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.map.capacity()
    }

    /// Returns the facts for a token that is still valid at `now`; an expired entry is
    /// removed and reported as a miss, so the caller re-verifies and gets a precise reason.
    pub fn get(&mut self, key: &TokenHash, now: u64) -> Option<Rc<TokenFacts>> {
        self.map.get(key, now)
    }

    /// Inserts verified facts, evicting to stay within the cap.
    pub fn insert(&mut self, key: TokenHash, facts: Rc<TokenFacts>, now: u64) {
        let valid_until = facts.valid_until;
        self.map.insert(key, facts, valid_until, now);
    }

    /// Drops every entry for which `keep` is false (for example tokens verified by a key that
    /// was withdrawn). Returns how many were dropped. O(n): runs only when keys change.
    pub fn retain(&mut self, keep: impl Fn(&TokenFacts) -> bool) -> usize {
        self.map.retain(|_, facts| keep(facts))
    }

    /// Drops every entry whose token has expired at `now`.
    pub fn purge_expired(&mut self, now: u64) {
        self.map.purge_expired(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::{Confirmation, SpiffeClaim};

    fn facts(valid_until: u64) -> Rc<TokenFacts> {
        Rc::new(TokenFacts {
            provider: 0,
            issuer: "iss".into(),
            subject: None,
            valid_until,
            key: [0; 32],
            spiffe: SpiffeClaim::Off,
            cnf: Confirmation::default(),
        })
    }

    fn key(i: u32) -> TokenHash {
        token_hash(&format!("token-{i}"))
    }

    #[test]
    fn hit_until_expiry_then_miss() {
        let mut c = TokenCache::new(10);
        c.insert(key(1), facts(100), 50);
        assert!(c.get(&key(1), 99).is_some());
        assert!(c.get(&key(1), 100).is_none());
        assert_eq!(c.len(), 0);
        assert_eq!(c.map.index_len(), 0);
    }

    #[test]
    fn cap_holds_under_a_flood_of_unique_tokens() {
        let mut c = TokenCache::new(1000);
        for i in 0..50_000 {
            c.insert(key(i), facts(1_000 + u64::from(i % 7)), 10);
            assert!(c.len() <= 1000);
            assert_eq!(c.len(), c.map.index_len());
        }
        assert_eq!(c.len(), 1000);
    }

    #[test]
    fn full_cache_drops_expired_first_then_soonest_expiry() {
        let mut c = TokenCache::new(3);
        c.insert(key(1), facts(20), 0);
        c.insert(key(2), facts(300), 0);
        c.insert(key(3), facts(200), 0);
        // At t=25 key 1 is expired: it goes, and nothing valid is evicted.
        c.insert(key(4), facts(400), 25);
        assert!(c.get(&key(2), 25).is_some());
        assert!(c.get(&key(3), 25).is_some());
        assert!(c.get(&key(4), 25).is_some());
        // Full with nothing expired: the one closest to expiry (key 3) goes.
        c.insert(key(5), facts(500), 30);
        assert!(c.get(&key(3), 30).is_none());
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn zero_capacity_disables_the_cache() {
        let mut c = TokenCache::new(0);
        c.insert(key(1), facts(100), 0);
        assert!(c.get(&key(1), 1).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn reinsert_replaces_without_leaking_index_entries() {
        let mut c = TokenCache::new(10);
        c.insert(key(1), facts(100), 0);
        c.insert(key(1), facts(200), 0);
        assert_eq!(c.len(), 1);
        assert_eq!(c.map.index_len(), 1);
        assert!(c.get(&key(1), 150).is_some());
    }

    #[test]
    fn already_expired_facts_are_not_cached() {
        let mut c = TokenCache::new(10);
        c.insert(key(1), facts(100), 100);
        assert!(c.is_empty());
    }
}
