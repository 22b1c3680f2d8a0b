//! Live configuration changes through Extension Config Discovery (ECDS), the
//! way Istio delivers a `WasmPlugin`: the HTTP filter in the listener has no
//! inline configuration, only `config_discovery` pointing at a file-based
//! config source that the test rewrites (temp file + atomic rename into the
//! watched directory).
//!
//! What Envoy 1.40 does, as these tests pin down:
//! * A good update is applied without touching the listener: new requests
//!   use the new plugin configuration, in-flight and new connections are not
//!   disturbed (`update_success`, `version_text` = the pushed version).
//! * An update whose plugin configuration fails `on_configure` (the filter
//!   logs `tokenbind: invalid configuration: <field>`) is rejected as a
//!   whole: `update_rejected` and `config_fail` rise, `version_text` stays,
//!   and the previous configuration keeps serving (no fail-closed 5xx, no
//!   listener drain). Envoy logs `Filesystem config update rejected: Unable
//!   to create Wasm plugin tokenbind`.
//!
//! Each test has its own Envoy, so counter deltas are exact.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokenbind_integration::assertions::{assert_allowed, assert_denied};
use tokenbind_integration::client::{Client, Response};
use tokenbind_integration::envoy::{parse_stat, Bootstrap, EcdsSource, EcdsStatus, Envoy};
use tokenbind_integration::pki::Pki;
use tokenbind_integration::tokens::{Alg, TokenIssuer};
use tokenbind_integration::{
    plugin_config, poll, require_wasm, AUDIENCE, CLIENT_ID, ISSUER, LISTENER, UPSTREAM_BODY,
};

/// How long an ECDS update may take to be applied or rejected.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after an applied update the new mode must be in effect.
const EFFECT_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const MARKER: &str = "tokenbind: invalid configuration";

/// A PKI, an issuer, a watched ECDS directory and an Envoy whose tokenbind
/// filter is configured only through it.
struct EcdsStack {
    pki: Pki,
    issuer: TokenIssuer,
    ecds: EcdsSource,
    wasm: PathBuf,
    envoy: Envoy,
    /// The client's token (sub = client, aud = server).
    token: String,
}

impl EcdsStack {
    /// Publishes version "1" with `mode` before Envoy starts (the listener
    /// warms on the first ECDS resource), then starts Envoy.
    fn start(mode: &str) -> EcdsStack {
        let wasm = require_wasm();
        let pki = Pki::new();
        let issuer = TokenIssuer::new(ISSUER);
        let ecds = EcdsSource::new("tokenbind")
            .unwrap_or_else(|e| panic!("creating the ECDS directory: {e}"));
        let mut cfg = plugin_config(&issuer);
        cfg["mode"] = json!(mode);
        ecds.push_wasm("1", &wasm, &cfg.to_string())
            .unwrap_or_else(|e| panic!("writing the first ECDS resource: {e}"));
        let bootstrap = Bootstrap::new(&pki).ecds_filter(&ecds).build();
        let envoy = Envoy::start(&bootstrap)
            .unwrap_or_else(|e| panic!("Envoy failed to start with the ECDS filter: {e}"));
        let status = ecds.status(&envoy);
        assert_eq!(
            (status.version_text.as_str(), status.update_success),
            ("1", 1),
            "the first ECDS resource was not applied at start-up: {status:?}. Log:\n{}",
            envoy.log()
        );
        let token = issuer.sign(Alg::Es256, &issuer.claims(CLIENT_ID, AUDIENCE));
        EcdsStack {
            pki,
            issuer,
            ecds,
            wasm,
            envoy,
            token,
        }
    }

    /// The standard configuration with `mode`.
    fn config(&self, mode: &str) -> Value {
        let mut cfg = plugin_config(&self.issuer);
        cfg["mode"] = json!(mode);
        cfg
    }

    fn status(&self) -> EcdsStatus {
        self.ecds.status(&self.envoy)
    }

    /// Pushes `configuration` as `version` and waits until Envoy applied it.
    fn apply(&self, version: &str, configuration: &str) -> EcdsStatus {
        let before = self.status();
        self.ecds
            .push_wasm(version, &self.wasm, configuration)
            .unwrap_or_else(|e| panic!("writing ECDS version {version}: {e}"));
        self.ecds
            .wait_applied(&self.envoy, &before, version, APPLY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}. Log:\n{}", self.envoy.log()))
    }

    /// Pushes `configuration` as `version` and waits until Envoy rejected it.
    fn reject(&self, version: &str, configuration: &str) -> (EcdsStatus, EcdsStatus) {
        let before = self.status();
        self.ecds
            .push_wasm(version, &self.wasm, configuration)
            .unwrap_or_else(|e| panic!("writing ECDS version {version}: {e}"));
        let after = self
            .ecds
            .wait_rejected(&self.envoy, &before, APPLY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}. Log:\n{}", self.envoy.log()));
        (before, after)
    }

    fn call(&self, client: &Client, token: &str) -> Response {
        let auth = format!("Bearer {token}");
        client
            .get(
                self.envoy.port(LISTENER),
                "/api",
                &[("authorization", &auth)],
            )
            .unwrap_or_else(|e| {
                panic!(
                    "GET /api as {} failed: {e}. Log:\n{}",
                    client.identity,
                    self.envoy.log()
                )
            })
    }

    /// The attacker replays the client's token.
    fn replay(&self) -> Response {
        self.call(
            &Client::new(self.pki.ca_pem(), Some(&self.pki.attacker)),
            &self.token,
        )
    }

    /// The client calls with its own token.
    fn legit(&self) -> Response {
        self.call(
            &Client::new(self.pki.ca_pem(), Some(&self.pki.client)),
            &self.token,
        )
    }

    /// Polls the attacker's replay until it gets `want` (200 or 401
    /// spiffe_mismatch). Any other answer on the way fails at once: during
    /// a switch the only acceptable answers are the old mode's and the new
    /// mode's.
    fn replay_until(&self, want: u16, context: &str) -> Response {
        let started = Instant::now();
        let got = poll(EFFECT_TIMEOUT, POLL_INTERVAL, || {
            let r = self.replay();
            let is_mismatch = r.status == 401
                && r.json()
                    .and_then(|b| b["reason"].as_str().map(str::to_string))
                    == Some("spiffe_mismatch".to_string());
            let is_allowed = r.status == 200 && r.body_str() == UPSTREAM_BODY;
            assert!(
                is_mismatch || is_allowed,
                "{context}: replay got neither the monitor answer (200) nor the \
                 enforce answer (401 spiffe_mismatch):\n{r}"
            );
            if r.status == want {
                Ok(r)
            } else {
                Err(format!("HTTP {}", r.status))
            }
        });
        let r = got.unwrap_or_else(|e| {
            panic!(
                "{context}: the replay never got {want}: {e}. Log:\n{}",
                self.envoy.log()
            )
        });
        eprintln!(
            "{context}: replay got {want} {:?} after the update was applied",
            started.elapsed()
        );
        r
    }
}

/// Legitimate traffic in the background: `threads` threads, each making
/// sequential requests as `client` with its own token, every request on a
/// new mTLS connection. Bounded by `MAX_PER_THREAD` requests and `MAX_TIME`
/// per thread. The test moves `phase` forward; results are kept per phase.
struct Load {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicUsize>,
    ok: Arc<Mutex<Vec<u64>>>,
    handles: Vec<JoinHandle<Vec<String>>>,
}

const PHASES: usize = 4;
const MAX_PER_THREAD: u64 = 20_000;
const MAX_TIME: Duration = Duration::from_secs(120);
/// Failures kept per thread for the message (all are counted).
const KEEP_FAILURES: usize = 10;

impl Load {
    fn start(s: &EcdsStack, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicUsize::new(0));
        let ok = Arc::new(Mutex::new(vec![0u64; PHASES]));
        let port = s.envoy.port(LISTENER);
        let auth = format!("Bearer {}", s.token);
        let handles = (0..threads)
            .map(|i| {
                let client = Client::new(s.pki.ca_pem(), Some(&s.pki.client));
                let (stop, phase, ok, auth) =
                    (stop.clone(), phase.clone(), ok.clone(), auth.clone());
                thread::Builder::new()
                    .name(format!("load-{i}"))
                    .spawn(move || {
                        let started = Instant::now();
                        let mut failures = Vec::new();
                        let mut failed = 0u64;
                        for n in 0..MAX_PER_THREAD {
                            if stop.load(Ordering::SeqCst) || started.elapsed() > MAX_TIME {
                                break;
                            }
                            let result = client.get(port, "/api", &[("authorization", &auth)]);
                            let p = phase.load(Ordering::SeqCst).min(PHASES - 1);
                            match result {
                                Ok(r) if r.status == 200 && r.body_str() == UPSTREAM_BODY => {
                                    if let Ok(mut ok) = ok.lock() {
                                        ok[p] += 1;
                                    }
                                }
                                other => {
                                    failed += 1;
                                    if failures.len() < KEEP_FAILURES {
                                        let what = match other {
                                            Ok(r) => format!("HTTP {} {}", r.status, r.body_str()),
                                            Err(e) => e.to_string(),
                                        };
                                        failures.push(format!(
                                            "load-{i} request {n} (phase {p}): {what}"
                                        ));
                                    }
                                }
                            }
                        }
                        if failed > failures.len() as u64 {
                            failures.push(format!("load-{i}: {failed} failures in all"));
                        }
                        failures
                    })
                    .unwrap_or_else(|e| panic!("spawning a load thread: {e}"))
            })
            .collect();
        Load {
            stop,
            phase,
            ok,
            handles,
        }
    }

    fn ok(&self) -> Vec<u64> {
        self.ok.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Waits (bounded) until the current phase has at least `n` successes,
    /// so every switch happens while traffic is flowing.
    fn wait_for_traffic(&self, n: u64) {
        let p = self.phase.load(Ordering::SeqCst);
        poll(Duration::from_secs(30), Duration::from_millis(20), || {
            let ok = self.ok();
            if ok[p] >= n {
                Ok(())
            } else {
                Err(format!("{} successes in phase {p}: {ok:?}", ok[p]))
            }
        })
        .unwrap_or_else(|e| panic!("background load is not flowing: {e}"));
    }

    fn next_phase(&self) {
        self.phase.fetch_add(1, Ordering::SeqCst);
    }

    /// Stops the threads and returns (successes per phase, failures).
    fn finish(self) -> (Vec<u64>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let mut failures = Vec::new();
        for h in self.handles {
            match h.join() {
                Ok(f) => failures.extend(f),
                Err(_) => failures.push("a load thread panicked".to_string()),
            }
        }
        let ok = self.ok.lock().map(|v| v.clone()).unwrap_or_default();
        (ok, failures)
    }
}

/// ECDS updates must not touch the listener: no listener update, no filter
/// chain drained.
#[track_caller]
fn assert_listener_untouched(s: &EcdsStack) {
    let stats = s.envoy.stats();
    for stat in [
        "listener_manager.listener_modified",
        "listener_manager.listener_in_place_updated",
        "listener_manager.listener_removed",
        "listener_manager.total_filter_chains_draining",
    ] {
        assert_eq!(
            parse_stat(&stats, stat),
            Some(0),
            "{stat} (absent = None): {}",
            s.envoy.stats_matching("listener_manager.")
        );
    }
}

#[track_caller]
fn assert_no_5xx(s: &EcdsStack) {
    for stat in [
        "http.ingress.downstream_rq_5xx",
        "http.ingress.downstream_rq_rx_reset",
        "http.ingress.downstream_rq_tx_reset",
        "http.ingress.downstream_cx_protocol_error",
    ] {
        assert_eq!(
            s.envoy.stat(stat),
            0,
            "{stat} is not 0: {}",
            s.envoy.stats_matching("http.ingress.downstream_rq")
        );
    }
}

#[test]
fn mode_switches_monitor_enforce_monitor_under_load_without_errors() {
    let s = EcdsStack::start("monitor");
    let load = Load::start(&s, 3);

    // Phase 0: monitor. The replay passes and is counted as a would-deny.
    load.wait_for_traffic(100);
    let before = s.envoy.snapshot();
    assert_allowed(&s.replay(), "monitor (v1): replay");
    assert_allowed(&s.legit(), "monitor (v1): client");
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.monitor.would_deny.spiffe_mismatch"),
        1,
        "{d}"
    );
    assert_eq!(d.get("tokenbind.denied.spiffe_mismatch"), 0, "{d}");

    // Switch to enforce while the load runs.
    let status = s.apply("2", &s.config("enforce").to_string());
    load.next_phase();
    eprintln!("enforce applied: {status:?}");
    let r = s.replay_until(401, "enforce (v2)");
    assert_denied(&r, "spiffe_mismatch", "enforce (v2): replay");
    assert_allowed(&s.legit(), "enforce (v2): client");
    load.wait_for_traffic(100);
    let before = s.envoy.snapshot();
    assert_denied(&s.replay(), "spiffe_mismatch", "enforce (v2): replay again");
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(d.get("tokenbind.denied.spiffe_mismatch"), 1, "{d}");
    assert_eq!(
        d.get("tokenbind.monitor.would_deny.spiffe_mismatch"),
        0,
        "{d}"
    );

    // Back to monitor.
    let status = s.apply("3", &s.config("monitor").to_string());
    load.next_phase();
    eprintln!("monitor applied: {status:?}");
    s.replay_until(200, "monitor (v3)");
    assert_allowed(&s.legit(), "monitor (v3): client");
    load.wait_for_traffic(100);
    let before = s.envoy.snapshot();
    assert_allowed(&s.replay(), "monitor (v3): replay again");
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.monitor.would_deny.spiffe_mismatch"),
        1,
        "{d}"
    );

    let (ok, failures) = load.finish();
    eprintln!("legitimate requests under load, per phase (monitor, enforce, monitor): {ok:?}");
    assert!(
        failures.is_empty(),
        "legitimate requests failed during the switches:\n{}\nLog:\n{}",
        failures.join("\n"),
        s.envoy.log()
    );
    assert!(
        ok[..3].iter().all(|&n| n >= 100),
        "every phase must carry traffic: {ok:?}"
    );
    assert_no_5xx(&s);
    assert_listener_untouched(&s);
    let status = s.status();
    assert_eq!(
        (
            status.version_text.as_str(),
            status.update_success,
            status.update_rejected,
            status.config_fail
        ),
        ("3", 3, 0, 0),
        "{status:?}"
    );
    // The legitimate client was never counted as a denial or would-deny:
    // the only reason counted at all is the replay's.
    let unexpected: Vec<String> = s
        .envoy
        .stats()
        .lines()
        .filter(|l| {
            (l.starts_with("wasmcustom.tokenbind.denied.")
                || l.starts_with("wasmcustom.tokenbind.monitor.would_deny."))
                && !l.ends_with(": 0")
                && !l.contains(".spiffe_mismatch: ")
        })
        .map(str::to_string)
        .collect();
    assert!(unexpected.is_empty(), "unexpected denials: {unexpected:?}");
}

#[test]
fn rejected_ecds_update_keeps_the_previous_config_serving() {
    let s = EcdsStack::start("enforce");
    let load = Load::start(&s, 1);
    load.wait_for_traffic(20);
    assert_denied(&s.replay(), "spiffe_mismatch", "enforce (v1): replay");

    // v2: monitor mode, but with an unknown field. If Envoy applied it, the
    // replay would get 200; if it broke the filter, 5xx.
    let mut bad = s.config("monitor");
    bad["bogus_field"] = json!(true);
    let (before, after) = s.reject("2", &bad.to_string());
    eprintln!("rejected v2: {before:?} -> {after:?}");
    assert_still_serving_v1(
        &s,
        &after,
        "bogus_field",
        "after rejected v2 (unknown field)",
    );

    // v3: a bad value, "mode": "enforcing".
    let mut bad = s.config("enforce");
    bad["mode"] = json!("enforcing");
    let (before, after) = s.reject("3", &bad.to_string());
    eprintln!("rejected v3: {before:?} -> {after:?}");
    assert_still_serving_v1(&s, &after, "mode", "after rejected v3 (mode enforcing)");

    // v4: a good config (monitor) applies again.
    load.wait_for_traffic(20);
    let status = s.apply("4", &s.config("monitor").to_string());
    load.next_phase();
    eprintln!("good v4 applied: {status:?}");
    s.replay_until(200, "monitor (v4)");
    assert_allowed(&s.legit(), "monitor (v4): client");
    load.wait_for_traffic(20);

    let (ok, failures) = load.finish();
    eprintln!("legitimate requests under load, per phase: {ok:?}");
    assert!(
        failures.is_empty(),
        "legitimate requests failed around rejected updates:\n{}\nLog:\n{}",
        failures.join("\n"),
        s.envoy.log()
    );
    assert_no_5xx(&s);
    assert_listener_untouched(&s);
    let status = s.status();
    assert_eq!(
        (
            status.version_text.as_str(),
            status.update_success,
            status.update_rejected,
            status.config_fail
        ),
        ("4", 2, 2, 2),
        "{status:?}"
    );
}

/// After a rejected update: the applied version is still "1", the filter
/// logged the field, Envoy logged the rejection, and v1 (enforce) answers.
#[track_caller]
fn assert_still_serving_v1(s: &EcdsStack, status: &EcdsStatus, field: &str, context: &str) {
    assert_eq!(status.version_text, "1", "{context}: {status:?}");
    let log = s.envoy.log();
    let marker = format!("{MARKER}: {field}");
    assert!(
        log.lines().any(|l| l.contains(&marker)),
        "{context}: the log has no {marker:?} line. Log:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("config update rejected") && l.contains("tokenbind")),
        "{context}: Envoy did not log the rejection. Log:\n{log}"
    );
    // Several requests, spread over a second: the old config keeps
    // answering, not monitor mode and not a fail-closed error.
    for i in 0..5 {
        assert_denied(
            &s.replay(),
            "spiffe_mismatch",
            &format!("{context}: replay {i}"),
        );
        assert_allowed(&s.legit(), &format!("{context}: client {i}"));
        thread::sleep(Duration::from_millis(200));
    }
}

/// A key withdrawn by an ECDS update takes its cached tokens with it: the token verified (and
/// cached) under the old inline JWKS is refused on the very next request once the new
/// configuration is installed, with the precise reason (`unknown_key`: its kid left the set);
/// a token under the key that stayed is still accepted. (The remote-rotation case is
/// `remote_jwks.rs`, `a_cached_token_is_withdrawn_with_its_key_at_rotation`.)
#[test]
fn a_cached_token_is_withdrawn_with_its_key_by_an_ecds_update() {
    let s = EcdsStack::start("enforce");
    let client = Client::new(s.pki.ca_pem(), Some(&s.pki.client));
    let eddsa_token = s
        .issuer
        .sign(Alg::EdDsa, &s.issuer.claims(CLIENT_ID, AUDIENCE));

    // The ES256 token is verified once, then served from the cache.
    let before = s.envoy.snapshot();
    assert_allowed(&s.legit(), "v1: ES256 token");
    assert_allowed(&s.legit(), "v1: ES256 token again");
    assert_allowed(&s.call(&client, &eddsa_token), "v1: EdDSA token");
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        (d.get("tokenbind.cache.hit"), d.get("tokenbind.allowed")),
        (1, 3),
        "v1 counters: {d}"
    );

    // v2: the inline JWKS keeps only the EdDSA key. It also exempts a probe path, so the test
    // can tell when v2 is installed without sending the token under test.
    const PROBE: &str = "/probe-v2";
    let mut v2 = s.config("enforce");
    v2["providers"][0]["jwks"] = json!({"keys": [s.issuer.jwk(Alg::EdDsa)]});
    v2["exempt_paths"] = json!(["/healthz", PROBE]);
    let status = s.apply("2", &v2.to_string());
    eprintln!("v2 applied: {status:?}");
    let port = s.envoy.port(LISTENER);
    poll(EFFECT_TIMEOUT, POLL_INTERVAL, || {
        let r = client
            .get(port, PROBE, &[])
            .map_err(|e| format!("probe failed: {e}"))?;
        match r.status {
            200 => Ok(()),
            401 => Err("v1 still answers (401 on the probe)".to_string()),
            other => panic!("probe got {other} during the update:\n{r}"),
        }
    })
    .unwrap_or_else(|e| panic!("v2 never took effect: {e}. Log:\n{}", s.envoy.log()));

    // The very next request with the cached token.
    let before = s.envoy.snapshot();
    let r = s.legit();
    assert_denied(
        &r,
        "unknown_key",
        "v2: the ES256 token whose key was withdrawn",
    );
    assert_ne!(r.body_str(), UPSTREAM_BODY);
    assert_allowed(&s.call(&client, &eddsa_token), "v2: EdDSA token (key kept)");
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        (
            d.get("tokenbind.denied.unknown_key"),
            d.get("tokenbind.allowed"),
            d.get("tokenbind.cache.hit")
        ),
        (1, 1, 0),
        "v2 counters: {d}"
    );
    assert_no_5xx(&s);
}
