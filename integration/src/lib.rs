//! Integration-test harness for tokenbind.
//!
//! Everything here is independent of the filter under test:
//!
//! * [`pki`] makes a throw-away CA and SPIFFE workload certificates with rcgen
//!   and computes RFC 8705 `x5t#S256` thumbprints itself (sha2 over the DER).
//! * [`tokens`] mints JWTs with jwt-simple (not our verifier) and crafts the
//!   broken ones (alg none, bad signature, expired, ...).
//! * [`envoy`] runs a real Envoy process with a generated bootstrap, on
//!   loopback with kernel-assigned ports, and reads its admin API.
//! * [`client`] is a raw HTTP/1.1 client over rustls that presents a chosen
//!   workload certificate and can send any header bytes (duplicates included).
//!
//! [`Stack`] ties them together: one PKI, one token issuer, one Envoy.

pub mod assertions;
pub mod client;
pub mod dpop;
pub mod envoy;
pub mod jwks_server;
pub mod pki;
pub mod story;
pub mod tokens;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::{Client, Response};
use crate::envoy::{Bootstrap, Envoy, EnvoyOptions, StartError};
use crate::pki::{Leaf, Pki};
use crate::tokens::TokenIssuer;

/// Issuer (`iss`) of the standard test provider.
pub const ISSUER: &str = "https://issuer.example";
/// Audience the standard provider accepts: the server's SPIFFE ID.
pub const AUDIENCE: &str = "spiffe://cluster.local/ns/default/sa/server";
/// Trust domain of the test mesh.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// SPIFFE ID of Envoy's own serving certificate.
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";
/// SPIFFE ID of the legitimate caller.
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
/// SPIFFE ID of a valid mesh workload that steals the client's token.
pub const ATTACKER_ID: &str = "spiffe://cluster.local/ns/default/sa/attacker";
/// SPIFFE ID in a trust domain the filter does not allow.
pub const FOREIGN_DOMAIN_ID: &str = "spiffe://evil.example/ns/x/sa/y";
/// Listener name used by the standard bootstrap.
pub const LISTENER: &str = "main";
/// Body of the `direct_response` route standing in for the upstream.
pub const UPSTREAM_BODY: &str = "upstream ok";

/// The Cargo workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Path to the Envoy binary: `$ENVOY_BIN`, else `<workspace>/.venv/bin/envoy`.
pub fn envoy_bin() -> PathBuf {
    match std::env::var_os("ENVOY_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join(".venv/bin/envoy"),
    }
}

/// The workspace version (`[workspace.package] version`), which is the image tag.
pub fn workspace_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Path to the filter module: `$TOKENBIND_WASM`, else the release build in the
/// workspace target directory.
pub fn wasm_path() -> PathBuf {
    match std::env::var_os("TOKENBIND_WASM") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target/wasm32-wasip1/release/tokenbind.wasm"),
    }
}

/// The Envoy binary, or a panic that says how to get it. Tests never skip.
pub fn require_envoy() -> PathBuf {
    let bin = envoy_bin();
    if !bin.is_file() {
        panic!(
            "Envoy binary not found at {} (override with ENVOY_BIN). \
             Install it and build everything with: run scripts/test.sh",
            bin.display()
        );
    }
    bin
}

/// The filter module, or a panic that says how to build it. Tests never skip.
pub fn require_wasm() -> PathBuf {
    let wasm = wasm_path();
    if !wasm.is_file() {
        panic!(
            "tokenbind filter module not found at {} (override with TOKENBIND_WASM). \
             Build it with `cargo build --release --target wasm32-wasip1 -p tokenbind-filter`, \
             or run scripts/test.sh",
            wasm.display()
        );
    }
    wasm
}

/// The standard plugin configuration: enforce mode, one provider (`mesh`)
/// trusting `issuer`'s JWKS for ES256 and EdDSA, SPIFFE binding on `sub`
/// restricted to `cluster.local`, binding required, `/healthz` exempt.
///
/// Tests derive variants by editing the returned JSON.
pub fn plugin_config(issuer: &TokenIssuer) -> Value {
    json!({
        "mode": "enforce",
        "providers": [{
            "name": "mesh",
            "issuer": issuer.issuer(),
            "audiences": [AUDIENCE],
            "jwks": issuer.jwks(),
            "algorithms": ["ES256", "EdDSA"],
            "clock_skew_seconds": 60
        }],
        "spiffe": {"claim": "sub", "trust_domains": [TRUST_DOMAIN]},
        "require_binding": true,
        "exempt_paths": ["/healthz"],
        "cache": {"max_entries": 10000},
        "max_token_bytes": 8192
    })
}

/// Calls `check` every `interval` until it returns `Ok`, for at most
/// `timeout` (and at most `timeout / interval + 1` calls). `Err` means "not
/// yet" and carries a description of what was seen; the last one is
/// returned if time runs out.
pub fn poll<T>(
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let started = Instant::now();
    let max_calls = timeout.as_millis() / interval.as_millis().max(1) + 1;
    let mut last = String::from("never checked");
    for _ in 0..max_calls {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) => last = e,
        }
        if started.elapsed() >= timeout {
            break;
        }
        std::thread::sleep(interval);
    }
    Err(format!("not reached within {timeout:?}; last: {last}"))
}

/// One PKI, one token issuer and one running Envoy built from them.
pub struct Stack {
    pub pki: Pki,
    pub issuer: TokenIssuer,
    pub envoy: Envoy,
}

impl Stack {
    /// A fresh PKI and issuer, and Envoy running the standard bootstrap with
    /// the wasm filter configured by `configure(plugin_config(&issuer))`.
    ///
    /// Panics (with Envoy's log) if Envoy does not start: callers are tests.
    pub fn with_filter(configure: impl FnOnce(&mut Value)) -> Stack {
        Self::try_with_filter(configure, EnvoyOptions::default())
            .unwrap_or_else(|e| panic!("Envoy failed to start with the tokenbind filter: {e}"))
    }

    /// Like [`Stack::with_filter`] but returns the start error (config tests).
    pub fn try_with_filter(
        configure: impl FnOnce(&mut Value),
        options: EnvoyOptions,
    ) -> Result<Stack, StartError> {
        let wasm = require_wasm();
        let pki = Pki::new();
        let issuer = TokenIssuer::new(ISSUER);
        let mut cfg = plugin_config(&issuer);
        configure(&mut cfg);
        let bootstrap = Bootstrap::new(&pki).wasm_filter(&wasm, &cfg).build();
        let envoy = Envoy::start_with(&bootstrap, options)?;
        Ok(Stack { pki, issuer, envoy })
    }

    /// Envoy with the mTLS listener but no wasm filter (harness smoke tests).
    pub fn without_filter() -> Stack {
        let pki = Pki::new();
        let issuer = TokenIssuer::new(ISSUER);
        let bootstrap = Bootstrap::new(&pki).build();
        let envoy = Envoy::start(&bootstrap)
            .unwrap_or_else(|e| panic!("Envoy failed to start without a filter: {e}"));
        Stack { pki, issuer, envoy }
    }

    /// Port of the standard listener.
    pub fn port(&self) -> u16 {
        self.envoy.port(LISTENER)
    }

    /// An mTLS client presenting `leaf`.
    pub fn client(&self, leaf: &Leaf) -> Client {
        Client::new(self.pki.ca_pem(), Some(leaf))
    }

    /// A TLS client that presents no certificate.
    pub fn anonymous_client(&self) -> Client {
        Client::new(self.pki.ca_pem(), None)
    }

    /// `GET path` from `leaf` with `Authorization: Bearer <token>` if given.
    /// Panics on transport errors.
    pub fn get(&self, leaf: &Leaf, path: &str, token: Option<&str>) -> Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = match &auth {
            Some(a) => vec![("authorization", a.as_str())],
            None => vec![],
        };
        self.client(leaf)
            .get(self.port(), path, &headers)
            .unwrap_or_else(|e| panic!("GET {path} as {} failed: {e}", leaf.name))
    }
}

/// A value shared by the tests of one test binary while at least one of them
/// holds it, e.g. an Envoy whose configuration several tests use.
///
/// Unlike a plain `static OnceLock`, the value is dropped (Envoy killed, temp
/// dirs removed) when the last test using it finishes, and a panicking test
/// releases it while unwinding. If no test holds it, the next one starts a new
/// one, so correctness never depends on test scheduling.
pub struct Shared<T> {
    slot: Mutex<Weak<T>>,
}

impl<T> Shared<T> {
    pub const fn new() -> Self {
        Shared {
            slot: Mutex::new(Weak::new()),
        }
    }

    /// The current value, or a new one from `init`. Concurrent callers wait
    /// for a single `init`.
    pub fn get_or_init(&self, init: impl FnOnce() -> T) -> Arc<T> {
        // A panic inside `init` poisons the lock; the slot is still a valid
        // Weak, so recover it rather than failing every later test.
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = slot.upgrade() {
            return v;
        }
        let v = Arc::new(init());
        *slot = Arc::downgrade(&v);
        v
    }
}

impl<T> Default for Shared<T> {
    fn default() -> Self {
        Self::new()
    }
}
