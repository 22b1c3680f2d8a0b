//! The corpora through the native engine (`tokenbind_core::Engine::decide`, pure Rust), shared by
//! `filter/core/tests/signature_differential.rs` and `integration/tests/crypto_differential.rs`
//! so that "what the native engine decides" is computed the same way in both.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use tokenbind_core::host::MemorySharedData;
use tokenbind_core::{Config, Engine, MockHost, Outcome, Peer};

/// One decision, as the corpora express it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The denial reason's stable name; `None` when allowed.
    pub reason: Option<String>,
}

impl Verdict {
    pub fn allow() -> Verdict {
        Verdict {
            allowed: true,
            reason: None,
        }
    }

    pub fn deny(reason: &str) -> Verdict {
        Verdict {
            allowed: false,
            reason: Some(reason.to_owned()),
        }
    }

    /// What a case expects.
    pub fn expected(reason: Option<&str>) -> Verdict {
        reason.map_or_else(Verdict::allow, Verdict::deny)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reason {
            None => f.write_str("allowed"),
            Some(r) => write!(f, "denied {r}"),
        }
    }
}

/// An engine for a plugin configuration (JSON text); panics with the configuration error.
pub fn engine(config_json: &str) -> Engine {
    let config = Config::from_json(config_json.as_bytes(), &|_| Err("no files".to_owned()))
        .unwrap_or_else(|e| panic!("the corpus configuration is refused: {e}"));
    Engine::new(config)
}

/// A peer with an mTLS client certificate whose URI SAN is `spiffe_id`. For the client's ID it
/// is the X.509-SVID in tests/data/svid/client.pem, with the PEM and digest Envoy reports for it
/// (the SPIFFE binding checks the leaf); any other ID has no certificate to read.
pub fn peer(spiffe_id: &str) -> Peer {
    const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
    const CLIENT_PEM: &str = include_str!("../data/svid/client.pem");
    const CLIENT_SHA256_HEX: &str =
        "5b89f15ef8917dc07457d7e0ff7b503b5db5fff675e10bb38883159cb3c5e82b";
    if spiffe_id == CLIENT_ID {
        return Peer::from_attributes(
            Some(&[1]),
            Some(spiffe_id.as_bytes()),
            Some(CLIENT_SHA256_HEX.as_bytes()),
        )
        .with_certificate_pem(Some(CLIENT_PEM.as_bytes().to_vec()));
    }
    Peer::from_attributes(
        Some(&[1]),
        Some(spiffe_id.as_bytes()),
        Some(b"00".as_slice()),
    )
}

/// One sidecar: shared data (the DPoP replay store) that outlives single requests, as in
/// Envoy, where every request of a VM sees the same store. Each request is a fresh
/// [`MockHost`] that borrows the sidecar's shared data for the decision.
pub struct Sidecar {
    shared: MemorySharedData,
}

impl Sidecar {
    pub fn new() -> Sidecar {
        let shared = MemorySharedData::default();
        tokenbind_core::replay::ReplayStore::prepare(&shared);
        tokenbind_core::nonce::ensure_key(&shared, &[7; 32]);
        Sidecar { shared }
    }

    /// `method https://authority path` from `peer` with `authorization`, and `dpop` if given.
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        &mut self,
        engine: &Engine,
        method: &str,
        authority: &str,
        path: &str,
        authorization: &str,
        dpop: Option<&str>,
        peer: &Peer,
        now: u64,
    ) -> Verdict {
        let mut host = MockHost::new()
            .with_header(":method", method)
            .with_header(":scheme", "https")
            .with_header(":authority", authority)
            .with_header(":path", path)
            .with_header("authorization", authorization)
            .with_peer(peer.clone())
            .with_tls(true);
        if let Some(proof) = dpop {
            host = host.with_header("dpop", proof);
        }
        host.shared = std::mem::take(&mut self.shared);
        let d = engine.decide(&host, now);
        self.shared = std::mem::take(&mut host.shared);
        match d.denial() {
            None => {
                assert_eq!(d.outcome, Outcome::Allow, "no denial but not allowed");
                Verdict::allow()
            }
            Some(denial) => Verdict::deny(denial.reason.as_str()),
        }
    }
}

impl Default for Sidecar {
    fn default() -> Self {
        Sidecar::new()
    }
}
