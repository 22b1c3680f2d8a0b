//! DPoP replay protection shared across Envoy worker threads (RFC 9449 §11.1).
//!
//! Each worker runs its own Wasm VM, so a per-VM map would let a proof be replayed on another
//! worker. The store lives in proxy-wasm shared data, which all VMs of a sidecar see, and is
//! updated with compare-and-swap. Shared data has no delete, so the store is a fixed set of
//! bucket keys: memory is bounded by construction (`BUCKETS` × per-bucket cap × 24 bytes), and
//! expired entries are dropped whenever their bucket is written.

use crate::host::{SharedData, SharedError};

/// Number of bucket keys. Fixed (not derived from config) so that a configuration change never
/// re-distributes entries and opens a replay window. Many small buckets keep the per-request
/// cost (one bucket read, scanned and written back) small at any capacity, and spread a flood
/// evenly: at the default capacity a bucket holds at most 128 entries (3 KiB).
pub const BUCKETS: usize = 4096;
/// Bytes per entry: 16 bytes of the key hash, 8 bytes of expiry.
const ENTRY: usize = 24;
/// CAS attempts before giving up (fail closed).
const MAX_ATTEMPTS: usize = 16;

/// Why a proof could not be recorded as first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// Seen before, within its window.
    Replayed,
    /// The bucket is full of live entries: size `dpop.replay_cache.max_entries` up.
    Full,
    /// Shared data kept changing or could not be written.
    Unavailable,
}

pub fn bucket_key(index: usize) -> String {
    format!("tokenbind.dpop.replay.{index}")
}

/// The replay store's sizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayStore {
    per_bucket: usize,
}

impl ReplayStore {
    pub fn new(max_entries: usize) -> Self {
        ReplayStore {
            per_bucket: max_entries.div_ceil(BUCKETS).max(1),
        }
    }

    pub fn capacity(&self) -> usize {
        self.per_bucket * BUCKETS
    }

    /// Creates the bucket keys that do not exist yet. Shared data cannot create a key
    /// conditionally, so this runs at VM start, before traffic, and only fills gaps.
    pub fn prepare(shared: &dyn SharedData) {
        for i in 0..BUCKETS {
            let key = bucket_key(i);
            if shared.get(&key).is_none() {
                let _ = shared.set(&key, &[], None);
            }
        }
    }

    /// Records `id` (a SHA-256 over the proof key thumbprint and `jti`) as used until
    /// `expires_at`, or reports that it was already used.
    pub fn first_use(
        &self,
        shared: &dyn SharedData,
        id: &[u8; 32],
        expires_at: u64,
        now: u64,
    ) -> Result<(), ReplayError> {
        let index = usize::from(u16::from_be_bytes([id[0], id[1]])) % BUCKETS;
        let key = bucket_key(index);
        let tag = id.get(16..).unwrap_or(&[]);
        for _ in 0..MAX_ATTEMPTS {
            let (current, cas) = match shared.get(&key) {
                Some((bytes, cas)) => (bytes, Some(cas)),
                None => (Vec::new(), None),
            };
            let mut next = Vec::with_capacity(current.len() + ENTRY);
            for entry in current.chunks_exact(ENTRY) {
                let (entry_tag, expiry) = entry.split_at(16);
                let expiry = u64::from_be_bytes(expiry.try_into().unwrap_or([0; 8]));
                if expiry <= now {
                    continue;
                }
                if entry_tag == tag {
                    return Err(ReplayError::Replayed);
                }
                next.extend_from_slice(entry);
            }
            if next.len() / ENTRY >= self.per_bucket {
                return Err(ReplayError::Full);
            }
            next.extend_from_slice(tag);
            next.extend_from_slice(&expires_at.to_be_bytes());
            match shared.set(&key, &next, cas) {
                Ok(()) => return Ok(()),
                Err(SharedError::CasMismatch) => continue,
                Err(SharedError::Other) => return Err(ReplayError::Unavailable),
            }
        }
        Err(ReplayError::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::MemorySharedData;
    use sha2::{Digest, Sha256};

    fn id(i: u64) -> [u8; 32] {
        Sha256::digest(i.to_be_bytes()).into()
    }

    #[test]
    fn second_use_is_a_replay_until_expiry() {
        let shared = MemorySharedData::default();
        let store = ReplayStore::new(1000);
        assert_eq!(store.first_use(&shared, &id(1), 160, 100), Ok(()));
        assert_eq!(
            store.first_use(&shared, &id(1), 160, 120),
            Err(ReplayError::Replayed)
        );
        assert_eq!(store.first_use(&shared, &id(2), 160, 120), Ok(()));
        // After expiry the entry is gone (and the slot is reused).
        assert_eq!(store.first_use(&shared, &id(1), 260, 161), Ok(()));
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_unique_proofs() {
        let shared = MemorySharedData::default();
        let store = ReplayStore::new(4096);
        let mut now = 1_000;
        let mut full = 0;
        for i in 0..200_000u64 {
            if i % 1000 == 0 {
                now += 1;
            }
            match store.first_use(&shared, &id(i), now + 60, now) {
                Ok(()) => {}
                Err(ReplayError::Full) => full += 1,
                Err(e) => panic!("{e:?}"),
            }
            if i % 997 == 0 {
                assert!(shared.total_bytes() <= store.capacity() * ENTRY);
            }
        }
        assert!(shared.total_bytes() <= store.capacity() * ENTRY);
        // Keys are fixed: never more than BUCKETS of them.
        assert_eq!(shared.len(), BUCKETS);
        // 1000 proofs/s for 60 s is ~60k live entries against 4096 slots: the store refuses
        // (fails closed) rather than growing.
        assert!(full > 0);
    }

    #[test]
    fn expiry_frees_capacity() {
        let shared = MemorySharedData::default();
        let store = ReplayStore::new(BUCKETS); // one entry per bucket
        let mut refused = 0;
        for i in 0..5_000u64 {
            // Each proof lives 1 s; time advances 1 s per 100 proofs.
            let now = 10 + i / 100;
            if store.first_use(&shared, &id(i), now + 1, now) == Err(ReplayError::Full) {
                refused += 1;
            }
        }
        assert!(refused < 2_500, "refused {refused}");
        assert!(shared.total_bytes() <= store.capacity() * ENTRY);
    }

    #[test]
    fn cas_conflicts_are_retried() {
        let shared = MemorySharedData::default();
        ReplayStore::prepare(&shared);
        shared.conflicts_before_success(3);
        let store = ReplayStore::new(1000);
        assert_eq!(store.first_use(&shared, &id(7), 100, 10), Ok(()));
        assert_eq!(
            store.first_use(&shared, &id(7), 100, 10),
            Err(ReplayError::Replayed)
        );
        shared.conflicts_before_success(1000);
        assert_eq!(
            store.first_use(&shared, &id(8), 100, 10),
            Err(ReplayError::Unavailable)
        );
    }
}
