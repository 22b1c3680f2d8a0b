//! The narrow interface to the proxy: request headers, the mTLS peer and shared data.
//! The Wasm adapter implements it with proxy-wasm host calls; tests use [`MockHost`].

use crate::peer::{Peer, PeerWant};
use crate::remote::FetchRequest;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// Why a shared-data write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedError {
    /// Someone else wrote the key since it was read (compare-and-swap).
    CasMismatch,
    Other,
}

/// Key-value data shared by every Wasm VM of the sidecar (all worker threads), with
/// compare-and-swap, as proxy-wasm shared data provides it.
pub trait SharedData {
    /// The value and its CAS token, or `None` if the key does not exist.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes `value`; with `cas`, only if the key was not written since that token was read.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError>;
}

/// What the decision engine asks of the proxy, lazily: nothing is read that a decision does
/// not need.
pub trait Host: SharedData {
    /// A request header (lower-case name; pseudo-headers such as `:path` included). If the
    /// header is repeated, the proxy's combined value.
    fn request_header(&self, name: &str) -> Option<String>;
    /// Every occurrence of a request header, for headers that must appear exactly once.
    fn request_header_values(&self, name: &str) -> Vec<String>;
    /// The downstream TLS peer: only the `want`ed attributes are read (see [`crate::peer::read`]).
    fn peer(&self, want: PeerWant) -> Peer;
    /// Whether the downstream connection is TLS, if the proxy can tell. DPoP rebuilds `htu`
    /// with the scheme the client really used: Envoy derives `:scheme` for HTTP/1 from a
    /// client-supplied `x-forwarded-proto` unless `use_remote_address` is set.
    fn downstream_tls(&self) -> Option<bool>;
}

/// What remote key fetches need of the proxy: shared data and an HTTP GET through a cluster.
pub trait FetchHost: SharedData {
    /// Dispatches `request`; the call token its response will carry, or the host's status.
    fn http_get(&self, request: &FetchRequest) -> Result<u32, u32>;
}

/// An in-memory [`SharedData`] with Envoy's CAS semantics, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct MemorySharedData {
    map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
    conflicts: Cell<u32>,
}

impl MemorySharedData {
    /// Makes the next `n` conditional writes fail with a CAS mismatch (simulating other workers).
    pub fn conflicts_before_success(&self, n: u32) {
        self.conflicts.set(n);
    }

    pub fn len(&self) -> usize {
        self.map.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.borrow().is_empty()
    }

    /// Total bytes of all values.
    pub fn total_bytes(&self) -> usize {
        self.map.borrow().values().map(|(v, _)| v.len()).sum()
    }
}

impl SharedData for MemorySharedData {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.map.borrow().get(key).cloned()
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        if cas.is_some() && self.conflicts.get() > 0 {
            self.conflicts.set(self.conflicts.get() - 1);
            return Err(SharedError::CasMismatch);
        }
        let mut map = self.map.borrow_mut();
        if let (Some(cas), Some((_, current))) = (cas, map.get(key)) {
            if cas != *current {
                return Err(SharedError::CasMismatch);
            }
        }
        let next = self.next_cas.get().wrapping_add(1).max(1);
        self.next_cas.set(next);
        map.insert(key.to_owned(), (value.to_vec(), next));
        Ok(())
    }
}

/// A builder-style fake host for tests and benchmarks.
#[derive(Debug, Default)]
pub struct MockHost {
    headers: Vec<(String, String)>,
    peer: Peer,
    pub shared: MemorySharedData,
    peer_reads: Cell<u32>,
    tls: Option<bool>,
    /// Fetches dispatched through [`FetchHost::http_get`], with their call tokens.
    pub dispatched: RefCell<Vec<(u32, FetchRequest)>>,
    /// When set, [`FetchHost::http_get`] refuses with this status.
    pub refuse_http: Cell<Option<u32>>,
}

impl MockHost {
    pub fn new() -> Self {
        MockHost::default()
            .with_header(":method", "GET")
            .with_header(":scheme", "https")
            .with_header(":authority", "server.example")
            .with_header(":path", "/")
    }

    /// Adds a header (or replaces a pseudo-header).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        if name.starts_with(':') {
            self.headers.retain(|(n, _)| n != name);
        }
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    pub fn without_header(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| n != name);
        self
    }

    pub fn with_peer(mut self, peer: Peer) -> Self {
        self.peer = peer;
        self
    }

    /// Whether the downstream connection is TLS (default: unknown).
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn set_peer(&mut self, peer: Peer) {
        self.peer = peer;
    }

    /// How many times the engine read the peer.
    pub fn peer_reads(&self) -> u32 {
        self.peer_reads.get()
    }
}

impl SharedData for MockHost {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shared.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        self.shared.set(key, value, cas)
    }
}

impl FetchHost for MockHost {
    fn http_get(&self, request: &FetchRequest) -> Result<u32, u32> {
        if let Some(status) = self.refuse_http.get() {
            return Err(status);
        }
        let mut dispatched = self.dispatched.borrow_mut();
        let token = u32::try_from(dispatched.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        dispatched.push((token, request.clone()));
        Ok(token)
    }
}

impl Host for MockHost {
    fn request_header(&self, name: &str) -> Option<String> {
        // Like Envoy for Authorization: repeated headers come back comma-joined.
        let values = self.request_header_values(name);
        if values.is_empty() {
            None
        } else {
            Some(values.join(","))
        }
    }

    fn request_header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn peer(&self, want: PeerWant) -> Peer {
        self.peer_reads.set(self.peer_reads.get() + 1);
        self.peer.masked(want)
    }

    fn downstream_tls(&self) -> Option<bool> {
        self.tls
    }
}
