//! DPoP (RFC 9449) against a real Envoy: DPoP-bound tokens (`cnf.jkt`) with
//! proofs minted by the harness (`tokenbind_integration::dpop`: p256 and
//! ed25519-compact, independent of the filter), and with proofs from an
//! independent client implementation (panva's `dpop` npm package, see
//! `integration/interop/`).
//!
//! Envoys in this file:
//! * `MAIN`: the standard bootstrap and configuration (SPIFFE binding on
//!   `sub`, default `dpop` settings), one worker. Tests on it hold its
//!   `serial` lock, so counter deltas are exact whatever else runs.
//! * `WORKERS`: the same configuration on two workers with exact connection
//!   balancing: replay across workers, a concurrent race, a flood.
//! * dedicated ones: nonces (`require_nonce`, two workers), forwarded proto
//!   (`trust_forwarded_proto`, and an edge Envoy with `use_remote_address`),
//!   monitor mode.
//!
//! Requests go from the harness client: TLS to 127.0.0.1 with
//! `Host: localhost`, so Envoy's `:authority` is `localhost` and `:scheme` is
//! `https`, and the URI a client must put in `htu` is
//! `https://localhost<path>`.
//!
//! Tokens and proofs are never printed; messages use `short_hash`.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Barrier, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokenbind_integration::assertions::{
    assert_allowed, assert_denied, assert_dpop_challenge_shape, assert_no_token_in_log,
    assert_no_token_in_response,
};
use tokenbind_integration::client::Response;
use tokenbind_integration::dpop::{
    access_token_hash, decode_proof, jwk_thumbprint, ProofAlg, ProofKey,
};
use tokenbind_integration::envoy::{Bootstrap, Delta, Envoy, EnvoyOptions};
use tokenbind_integration::pki::{Leaf, Pki};
use tokenbind_integration::tokens::{now, short_hash, Alg, Claims, TokenIssuer};
use tokenbind_integration::{
    plugin_config, require_wasm, workspace_root, Shared, Stack, ATTACKER_ID, AUDIENCE, CLIENT_ID,
    ISSUER,
};

/// The request path used throughout.
const PATH: &str = "/api/orders";
/// The `algs` of the filter's DPoP challenge with the default `dpop` settings.
const DEFAULT_ALGS: &str = "ES256 ES384 EdDSA RS256 PS256";
/// Upper bound for every poll of Envoy's admin API and for the Node helper.
const WAIT: Duration = Duration::from_secs(20);

/// `htu` for `path` as the harness client requests it.
fn htu(path: &str) -> String {
    format!("https://localhost{path}")
}

// ---- Envoys --------------------------------------------------------------------------------

/// A running stack plus a lock that tests on it hold for their whole body,
/// so that counter deltas are exactly their own.
struct Fixture {
    stack: Stack,
    serial: Mutex<()>,
}

impl Fixture {
    fn serial(&self) -> MutexGuard<'_, ()> {
        self.serial.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Envoy with the standard bootstrap and `configure(plugin_config)`, then
/// `edit(bootstrap)`, on `concurrency` workers.
fn start(
    concurrency: u32,
    configure: impl FnOnce(&mut Value),
    edit: impl FnOnce(&mut Value),
) -> Stack {
    let wasm = require_wasm();
    let pki = Pki::new();
    let issuer = TokenIssuer::new(ISSUER);
    let mut cfg = plugin_config(&issuer);
    configure(&mut cfg);
    let mut bootstrap = Bootstrap::new(&pki).wasm_filter(&wasm, &cfg).build();
    edit(&mut bootstrap);
    let options = EnvoyOptions {
        concurrency,
        ..EnvoyOptions::default()
    };
    let envoy = Envoy::start_with(&bootstrap, options)
        .unwrap_or_else(|e| panic!("Envoy failed to start with the tokenbind filter: {e}"));
    Stack { pki, issuer, envoy }
}

/// Two workers, and the listener hands each new connection to the worker
/// with the fewest open connections (so tests can steer connections).
fn start_two_workers(configure: impl FnOnce(&mut Value)) -> Stack {
    start(2, configure, |b| {
        b["static_resources"]["listeners"][0]["connection_balance_config"] =
            json!({"exact_balance": {}});
    })
}

fn hcm(bootstrap: &mut Value) -> &mut Value {
    &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]
}

static MAIN: Shared<Fixture> = Shared::new();
static WORKERS: Shared<Fixture> = Shared::new();

fn main_envoy() -> Arc<Fixture> {
    MAIN.get_or_init(|| Fixture {
        stack: start(1, |_| {}, |_| {}),
        serial: Mutex::new(()),
    })
}

fn workers_envoy() -> Arc<Fixture> {
    WORKERS.get_or_init(|| Fixture {
        stack: start_two_workers(|_| {}),
        serial: Mutex::new(()),
    })
}

// ---- Requests ------------------------------------------------------------------------------

/// A token for the legitimate client (`sub` = its SPIFFE ID), bound to `key`.
fn bound_token(s: &Stack, key: &ProofKey) -> String {
    bound_token_alg(s, key, Alg::Es256)
}

fn bound_token_alg(s: &Stack, key: &ProofKey, alg: Alg) -> String {
    s.issuer.sign(alg, &client_claims(s).cnf_jkt(&key.jkt()))
}

fn client_claims(s: &Stack) -> Claims {
    s.issuer.claims(CLIENT_ID, AUDIENCE)
}

/// One request from `leaf`: `authorization` if given, one `dpop` header per
/// proof, then `extra`.
fn call(
    s: &Stack,
    leaf: &Leaf,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    proofs: &[&str],
    extra: &[(&str, &str)],
) -> Response {
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = authorization {
        headers.push(("authorization", a));
    }
    headers.extend(proofs.iter().map(|p| ("dpop", *p)));
    headers.extend_from_slice(extra);
    s.client(leaf)
        .request(s.port(), method, path, &headers, b"")
        .unwrap_or_else(|e| panic!("{method} {path} as {} failed: {e}", leaf.name))
}

/// `GET PATH` from the client with `Authorization: DPoP <token>` and `proofs`.
fn dpop_get(s: &Stack, token: &str, proofs: &[&str]) -> Response {
    let auth = format!("DPoP {token}");
    call(s, &s.pki.client, "GET", PATH, Some(&auth), proofs, &[])
}

/// A GET written byte for byte (for a chosen request target and `Host`),
/// from the client, with `extra` header lines.
fn raw_get(
    s: &Stack,
    target: &str,
    host: &str,
    token: &str,
    proof: &str,
    extra: &[(&str, &str)],
) -> Response {
    let mut raw = format!(
        "GET {target} HTTP/1.1\r\nhost: {host}\r\nauthorization: DPoP {token}\r\n\
         dpop: {proof}\r\n"
    );
    for (k, v) in extra {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("connection: close\r\n\r\n");
    s.client(&s.pki.client)
        .send_raw(s.port(), raw.as_bytes())
        .unwrap_or_else(|e| panic!("GET {target} with host {host} failed: {e}"))
}

// ---- Assertions ----------------------------------------------------------------------------

/// Denied with `reason`, and a DPoP challenge (all but the nonce one) that
/// advertises the default algorithms.
#[track_caller]
fn assert_dpop_denied(resp: &Response, reason: &str, context: &str) {
    assert_denied(resp, reason, context);
    if reason != "dpop_nonce_required" {
        let challenge = resp.header("www-authenticate").unwrap_or_default();
        let want = format!(r#"DPoP algs="{DEFAULT_ALGS}", "#);
        assert!(
            challenge.starts_with(&want),
            "{context}: challenge should start with {want:?}:\n{resp}"
        );
        assert!(
            resp.header("dpop-nonce").is_none(),
            "{context}: no DPoP-Nonce unless one is required:\n{resp}"
        );
    }
}

/// Denied with a token-level `reason` (not a proof problem) on a request
/// that used the DPoP scheme: RFC 9449 §7.1 says to challenge with the DPoP
/// scheme, so the body is the usual `invalid_token` one and the challenge is
/// `DPoP algs="..", error="invalid_token", error_description=".."`.
#[track_caller]
fn assert_denied_under_dpop_scheme(resp: &Response, reason: &str, context: &str) {
    assert_eq!(
        resp.status, 401,
        "{context}: expected 401 {reason}, got:\n{resp}"
    );
    assert_eq!(
        resp.json(),
        Some(json!({"error": "invalid_token", "reason": reason})),
        "{context}: body:\n{resp}"
    );
    let challenges = resp.header_all("www-authenticate");
    assert_eq!(challenges.len(), 1, "{context}: one challenge:\n{resp}");
    assert_dpop_challenge_shape(challenges[0], "invalid_token", context);
    let want = format!(r#"DPoP algs="{DEFAULT_ALGS}", "#);
    assert!(
        challenges[0].starts_with(&want),
        "{context}: challenge should start with {want:?}:\n{resp}"
    );
}

/// The filter's last `denied` log line (it carries the reason's detail and a
/// token hash, never a token or proof), for failure messages.
fn last_denial_log(envoy: &Envoy) -> String {
    envoy
        .log()
        .lines()
        .rev()
        .find(|l| l.contains("tokenbind: denied:"))
        .and_then(|l| l.split_once("tokenbind: denied:"))
        .map_or_else(|| "-".to_string(), |(_, rest)| format!("denied:{rest}"))
}

/// The verdict counters (`allowed`, `denied.*`, `monitor.would_deny.*`) that
/// moved are exactly `expected`.
#[track_caller]
fn assert_verdicts(d: &Delta, expected: &[(&str, u64)], context: &str) {
    let is_verdict = |k: &str| {
        k == "tokenbind.allowed"
            || k.starts_with("tokenbind.denied.")
            || k.starts_with("tokenbind.monitor.would_deny.")
    };
    let got: BTreeMap<String, u64> = d
        .changed()
        .into_iter()
        .filter(|(k, _)| is_verdict(k))
        .collect();
    let want: BTreeMap<String, u64> = expected
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| (k.to_string(), *n))
        .collect();
    assert_eq!(
        got, want,
        "{context}: verdict counter deltas; all deltas: {d}"
    );
}

// ---- Workers -------------------------------------------------------------------------------

/// Per-worker `(downstream_cx_total, downstream_cx_active)` of the test
/// listener, from Envoy's per-handler listener stats
/// (`listener.127.0.0.1_0.worker_<n>.downstream_cx_*`).
fn worker_cx(envoy: &Envoy) -> BTreeMap<usize, (u64, u64)> {
    let mut out: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    for line in envoy.stats().lines() {
        let Some((name, value)) = line.split_once(": ") else {
            continue;
        };
        let Some(rest) = name.strip_prefix("listener.127.0.0.1_") else {
            continue;
        };
        let Some((_, rest)) = rest.split_once(".worker_") else {
            continue;
        };
        let Some((id, stat)) = rest.split_once('.') else {
            continue;
        };
        let (Ok(id), Ok(value)) = (id.parse::<usize>(), value.trim().parse::<u64>()) else {
            continue;
        };
        let entry = out.entry(id).or_default();
        match stat {
            "downstream_cx_total" => entry.0 = value,
            "downstream_cx_active" => entry.1 = value,
            _ => {}
        }
    }
    out
}

/// Polls until the listener has exactly `active` open connections in all.
fn wait_active(envoy: &Envoy, active: u64) -> BTreeMap<usize, (u64, u64)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let cx = worker_cx(envoy);
        if cx.values().map(|c| c.1).sum::<u64>() == active {
            return cx;
        }
        assert!(
            Instant::now() < deadline,
            "listener never settled at {active} open connections: {cx:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// The worker whose `downstream_cx_total` grew from `before` to `after`,
/// which must be exactly one connection on one worker.
#[track_caller]
fn landed(
    before: &BTreeMap<usize, (u64, u64)>,
    after: &BTreeMap<usize, (u64, u64)>,
    what: &str,
) -> usize {
    let grew: Vec<(usize, u64)> = after
        .iter()
        .map(|(w, c)| (*w, c.0.saturating_sub(before.get(w).map_or(0, |b| b.0))))
        .filter(|(_, n)| *n > 0)
        .collect();
    match grew.as_slice() {
        [(w, 1)] => *w,
        _ => panic!("{what}: expected one new connection on one worker, got {grew:?}"),
    }
}

/// Runs `send` (which must open exactly one connection) so that its
/// connection lands on worker `target`, and checks that it did.
///
/// With exact balancing a new connection goes to the worker with the fewest
/// open connections, ties always to the same one. Idle TCP connections
/// (no TLS handshake yet: Envoy just holds them) tilt the balance: one idle
/// connection on the other worker, or one on each when the tie goes to
/// `target` anyway.
fn on_worker<T>(envoy: &Envoy, port: u16, target: usize, send: impl FnOnce() -> T) -> T {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let pin = || {
        TcpStream::connect_timeout(&addr, WAIT)
            .unwrap_or_else(|e| panic!("idle connection to the listener: {e}"))
    };
    let idle0 = wait_active(envoy, 0);
    let mut pins = vec![pin()];
    let idle1 = wait_active(envoy, 1);
    if landed(&idle0, &idle1, "first idle connection") == target {
        pins.push(pin());
        let idle2 = wait_active(envoy, 2);
        assert_ne!(
            landed(&idle1, &idle2, "second idle connection"),
            target,
            "exact balancing put two idle connections on worker {target}"
        );
    }
    let before = worker_cx(envoy);
    let out = send();
    let after = worker_cx(envoy);
    let got = landed(&before, &after, "request connection");
    assert_eq!(
        got, target,
        "request connection landed on worker {got}, not {target}"
    );
    drop(pins);
    out
}

// ---- Allowed -------------------------------------------------------------------------------

#[test]
fn bound_token_with_a_fresh_proof_is_allowed_es256_and_eddsa() {
    let f = main_envoy();
    let _serial = f.serial();
    let s = &f.stack;
    let before = s.envoy.snapshot();
    let mut allowed = 0;
    for proof_alg in ProofAlg::ALL {
        for token_alg in Alg::ALL {
            let key = ProofKey::generate(proof_alg);
            let token = bound_token_alg(s, &key, token_alg);
            let proof = key.proof("GET", &htu(PATH), &token);
            let r = dpop_get(s, &token, &[&proof]);
            let what = format!(
                "{} proof, {} token {}",
                proof_alg.name(),
                token_alg.name(),
                short_hash(&token)
            );
            assert_allowed(&r, &what);
            assert_no_token_in_response(&r, &token, &what);
            allowed += 1;
        }
    }
    // The scheme name is case-insensitive, like Bearer.
    let key = ProofKey::generate(ProofAlg::Es256);
    let token = bound_token(s, &key);
    for scheme in ["dpop", "DPOP"] {
        let auth = format!("{scheme} {token}");
        let proof = key.proof("GET", &htu(PATH), &token);
        let r = call(s, &s.pki.client, "GET", PATH, Some(&auth), &[&proof], &[]);
        assert_allowed(&r, &format!("scheme {scheme:?}"));
        allowed += 1;
    }
    // iat inside the 60 s window, either side.
    for offset in [-45, 45] {
        let proof = key.proof_with(
            "GET",
            &htu(PATH),
            &token,
            json!({}),
            json!({"iat": now() + offset}),
        );
        let r = dpop_get(s, &token, &[&proof]);
        assert_allowed(&r, &format!("iat now{offset:+}"));
        allowed += 1;
    }
    // jti is scoped to the proof key: two keys may use the same jti.
    let other = ProofKey::generate(ProofAlg::EdDsa);
    let other_token = bound_token(s, &other);
    for (k, t) in [(&key, &token), (&other, &other_token)] {
        let proof = k.proof_with(
            "GET",
            &htu(PATH),
            t,
            json!({}),
            json!({"jti": "shared-jti"}),
        );
        let r = dpop_get(s, t, &[&proof]);
        assert_allowed(&r, "jti shared by two keys");
        allowed += 1;
    }
    // POST with a body: htm follows the method.
    let proof = key.proof("POST", &htu(PATH), &token);
    let auth = format!("DPoP {token}");
    let r = s
        .client(&s.pki.client)
        .request(
            s.port(),
            "POST",
            PATH,
            &[("authorization", &auth), ("dpop", &proof)],
            b"{}",
        )
        .unwrap_or_else(|e| panic!("POST failed: {e}"));
    assert_allowed(&r, "POST with htm POST");
    allowed += 1;

    let d = s.envoy.snapshot().since(&before);
    assert_verdicts(&d, &[("tokenbind.allowed", allowed)], "fresh proofs");
}

#[test]
fn htu_matches_the_uri_the_client_used() {
    let f = main_envoy();
    let _serial = f.serial();
    let s = &f.stack;
    let port = s.port();
    let key = ProofKey::generate(ProofAlg::Es256);
    let token = bound_token(s, &key);
    let before = s.envoy.snapshot();

    // Host: localhost (the harness client), with and without a query; the
    // query and fragment are ignored on both sides.
    let cases: Vec<(String, &str)> = vec![
        (htu(PATH), PATH),
        (htu(PATH), "/api/orders?page=2&sort=asc"),
        (format!("{}?page=2#frag", htu(PATH)), "/api/orders?page=2"),
        // Normalised: case of scheme and host, default port.
        ("HTTPS://LocalHost:443/api/orders".to_string(), PATH),
    ];
    for (u, path) in &cases {
        let proof = key.proof("GET", u, &token);
        let auth = format!("DPoP {token}");
        let r = call(s, &s.pki.client, "GET", path, Some(&auth), &[&proof], &[]);
        assert_allowed(&r, &format!("htu {u} for GET {path} (Host: localhost)"));
    }
    // Host with the listener's real port: htu must carry it too.
    let with_port = format!("https://localhost:{port}{PATH}");
    let host = format!("localhost:{port}");
    let proof = key.proof("GET", &with_port, &token);
    let r = raw_get(s, PATH, &host, &token, &proof, &[]);
    assert_allowed(&r, &format!("htu {with_port} for Host: {host}"));
    // Host with the default port: same as no port.
    let proof = key.proof("GET", &htu(PATH), &token);
    let r = raw_get(s, PATH, "localhost:443", &token, &proof, &[]);
    assert_allowed(&r, "htu without port for Host: localhost:443");

    let d = s.envoy.snapshot().since(&before);
    assert_verdicts(
        &d,
        &[("tokenbind.allowed", cases.len() as u64 + 2)],
        "htu variants",
    );
}

#[test]
fn dpop_binding_and_spiffe_binding_must_both_pass() {
    let f = main_envoy();
    let _serial = f.serial();
    let s = &f.stack;
    let key = ProofKey::generate(ProofAlg::EdDsa);
    let token = bound_token(s, &key);
    let before = s.envoy.snapshot();
    // The attacker stole the token AND a fresh proof (or the key): its mTLS
    // identity still differs from sub.
    let proof = key.proof("GET", &htu(PATH), &token);
    let auth = format!("DPoP {token}");
    let r = call(s, &s.pki.attacker, "GET", PATH, Some(&auth), &[&proof], &[]);
    assert_denied_under_dpop_scheme(
        &r,
        "spiffe_mismatch",
        "stolen token and proof from the attacker",
    );
    // The proof was not consumed by the denied request: the client can use it.
    let r = dpop_get(s, &token, &[&proof]);
    assert_allowed(&r, "client with the same proof");
    // A token for the attacker, bound to the attacker's key, from the attacker: fine.
    let attacker_key = ProofKey::generate(ProofAlg::Es256);
    let attacker_token = s.issuer.sign(
        Alg::EdDsa,
        &s.issuer
            .claims(ATTACKER_ID, AUDIENCE)
            .cnf_jkt(&attacker_key.jkt()),
    );
    let proof = attacker_key.proof("GET", &htu(PATH), &attacker_token);
    let auth = format!("DPoP {attacker_token}");
    let r = call(s, &s.pki.attacker, "GET", PATH, Some(&auth), &[&proof], &[]);
    assert_allowed(&r, "attacker's own bound token");
    let d = s.envoy.snapshot().since(&before);
    assert_verdicts(
        &d,
        &[
            ("tokenbind.denied.spiffe_mismatch", 1),
            ("tokenbind.allowed", 2),
        ],
        "spiffe + dpop",
    );
}

// ---- Replay --------------------------------------------------------------------------------

#[test]
fn the_same_proof_twice_is_replayed() {
    let f = main_envoy();
    let _serial = f.serial();
    let s = &f.stack;
    let key = ProofKey::generate(ProofAlg::Es256);
    let token = bound_token(s, &key);
    let other_token = bound_token(s, &key);
    let before = s.envoy.snapshot();

    let proof = key.proof("GET", &htu(PATH), &token);
    // Rejected for another reason first (ath of another token): this must not
    // record the jti.
    let r = dpop_get(s, &other_token, &[&proof]);
    assert_dpop_denied(&r, "dpop_ath_mismatch", "proof with another token");
    let r = dpop_get(s, &token, &[&proof]);
    assert_allowed(&r, "first use");
    for i in 1..=2 {
        let r = dpop_get(s, &token, &[&proof]);
        assert_dpop_denied(&r, "dpop_replayed", &format!("replay #{i}"));
        assert_no_token_in_response(&r, &proof, "replay denial");
    }
    // Same jti, new signature over new claims: still the same key + jti.
    let (_, claims) = decode_proof(&proof);
    let jti = claims["jti"].as_str().unwrap_or_default().to_string();
    let again = key.proof_with("GET", &htu(PATH), &token, json!({}), json!({"jti": jti}));
    let r = dpop_get(s, &token, &[&again]);
    assert_dpop_denied(&r, "dpop_replayed", "new proof reusing the jti");

    let d = s.envoy.snapshot().since(&before);
    assert_verdicts(
        &d,
        &[
            ("tokenbind.allowed", 1),
            ("tokenbind.denied.dpop_replayed", 3),
            ("tokenbind.denied.dpop_ath_mismatch", 1),
        ],
        "replay",
    );
    assert_no_token_in_log(&s.envoy.log(), &proof, "Envoy log after replays");
    assert_no_token_in_log(&s.envoy.log(), &token, "Envoy log after replays");
}

#[test]
fn a_proof_replayed_on_the_other_worker_is_refused() {
    let f = workers_envoy();
    let _serial = f.serial();
    let s = &f.stack;
    let port = s.port();
    let key = ProofKey::generate(ProofAlg::EdDsa);
    let token = bound_token(s, &key);
    let proof = key.proof("GET", &htu(PATH), &token);
    let workers: Vec<usize> = worker_cx(&s.envoy).keys().copied().collect();
    assert_eq!(workers.len(), 2, "expected two workers: {workers:?}");
    let (a, b) = (workers[0], workers[1]);
    let before = s.envoy.snapshot();

    let r = on_worker(&s.envoy, port, a, || dpop_get(s, &token, &[&proof]));
    assert_allowed(&r, &format!("first use on worker {a}"));
    // Replays on new connections, alternating workers, starting with the other one.
    let order = [b, a, b, b, a, b];
    for (i, w) in order.iter().enumerate() {
        let r = on_worker(&s.envoy, port, *w, || dpop_get(s, &token, &[&proof]));
        assert_dpop_denied(
            &r,
            "dpop_replayed",
            &format!("replay #{} on worker {w}", i + 1),
        );
    }

    let d = s.envoy.snapshot().since(&before);
    let n = order.len() as u64;
    assert_verdicts(
        &d,
        &[
            ("tokenbind.allowed", 1),
            ("tokenbind.denied.dpop_replayed", n),
        ],
        "cross-worker replay",
    );
    // The token cache is per worker VM: one miss on each worker proves that
    // both verified the token, i.e. both saw the proof.
    assert_eq!(
        (d.get("tokenbind.cache.miss"), d.get("tokenbind.cache.hit")),
        (2, n + 1 - 2),
        "(cache.miss, cache.hit): {d}"
    );
}

#[test]
fn concurrent_uses_of_one_proof_admit_exactly_one() {
    let f = workers_envoy();
    let _serial = f.serial();
    let s = &f.stack;
    let key = ProofKey::generate(ProofAlg::Es256);
    let token = bound_token(s, &key);
    let proof = key.proof("GET", &htu(PATH), &token);
    let before_cx = worker_cx(&s.envoy);
    let before = s.envoy.snapshot();
    const N: usize = 8;
    let barrier = Barrier::new(N);
    let statuses: Vec<Response> = thread::scope(|scope| {
        let handles: Vec<_> = (0..N)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    dpop_get(s, &token, &[&proof])
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| panic!("request thread panicked"))
            })
            .collect()
    });
    let ok = statuses.iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 1, "exactly one of {N} concurrent uses may pass");
    for r in statuses.iter().filter(|r| r.status != 200) {
        assert_dpop_denied(r, "dpop_replayed", "concurrent reuse");
    }
    let d = s.envoy.snapshot().since(&before);
    assert_verdicts(
        &d,
        &[
            ("tokenbind.allowed", 1),
            ("tokenbind.denied.dpop_replayed", N as u64 - 1),
        ],
        "concurrent reuse",
    );
    let after_cx = worker_cx(&s.envoy);
    let spread: Vec<(usize, u64)> = after_cx
        .iter()
        .map(|(w, c)| (*w, c.0.saturating_sub(before_cx.get(w).map_or(0, |b| b.0))))
        .collect();
    eprintln!("concurrent reuse: connections per worker {spread:?}");
}

#[test]
fn a_flood_of_unique_proofs_is_all_allowed() {
    let f = workers_envoy();
    let _serial = f.serial();
    let s = &f.stack;
    let key = ProofKey::generate(ProofAlg::Es256);
    let token = bound_token(s, &key);
    const THREADS: usize = 4;
    const EACH: usize = 60;
    let before = s.envoy.snapshot();
    let before_cx = worker_cx(&s.envoy);
    thread::scope(|scope| {
        for t in 0..THREADS {
            let (key, token) = (&key, &token);
            scope.spawn(move || {
                for i in 0..EACH {
                    let proof = key.proof("GET", &htu(PATH), token);
                    let r = dpop_get(s, token, &[&proof]);
                    assert_allowed(&r, &format!("unique proof {t}/{i}"));
                }
            });
        }
    });
    let d = s.envoy.snapshot().since(&before);
    assert_verdicts(
        &d,
        &[("tokenbind.allowed", (THREADS * EACH) as u64)],
        "flood of unique proofs",
    );
    let after_cx = worker_cx(&s.envoy);
    let spread: Vec<(usize, u64)> = after_cx
        .iter()
        .map(|(w, c)| (*w, c.0.saturating_sub(before_cx.get(w).map_or(0, |b| b.0))))
        .collect();
    eprintln!("flood: connections per worker {spread:?}");
}

// ---- One reason each -----------------------------------------------------------------------

#[test]
fn proof_signed_by_another_key_is_key_mismatch() {
    let f = main_envoy();
    let _serial = f.serial();
    let s = &f.stack;
    let key = ProofKey::generate(ProofAlg::Es256);
    let token = bound_token(s, &key);
    let before = s.envoy.snapshot();
    for alg in ProofAlg::ALL {
        let thief = ProofKey::generate(alg);
        let proof = thief.proof("GET", &htu(PATH), &token);
        let r = dpop_get(s, &token, &[&proof]);
        assert_dpop_denied(
            &r,
            "dpop_key_mismatch",
            &format!("{} thief key", alg.name()),
        );
    }
    let d = s.envoy.snapshot().since(&before);
    assert_verdicts(
        &d,
        &[("tokenbind.denied.dpop_key_mismatch", 2)],
        "key mismatch",
    );
}

#[test]
fn wrong_method_is_htm_mismatch() {
    let f = main_envoy();
    let _serial = f.serial();
    let s = &f.stack;
    let key = ProofKey::generate(ProofAlg::EdDsa);
    let token = bound_token(s, &key);
    let auth = format!("DPoP {token}");
    let before = s.envoy.snapshot();
    let proof = key.proof("POST", &htu(PATH), &token);
    let r = dpop_get(s, &token, &[&proof]);
    assert_dpop_denied(&r, "dpop_htm_mismatch", "htm POST, GET request");
    let proof = key.proof("GET", &htu(PATH), &token);
    let r = call(
        s,
        &s.pki.client,
        "DELETE",
        PATH,
        Some(&auth),
        &[&proof],
        &[],
    );
    assert_dpop_denied(&r, "dpop_htm_mismatch", "htm GET, DELETE request");
    let d = s.envoy.snapshot().since(&before);
    assert_verdicts(
        &d,
        &[("tokenbind.denied.dpop_htm_mismatch", 2)],
        "htm mismatch",
    );
}

#[test]
fn wrong_uri_is_htu_mismatch() {
    let f = main_envoy();
    let _serial = f.serial();
    let s = &f.stack;
    let port = s.port();
    let key = ProofKey::generate(ProofAlg::Es256);
    let token = bound_token(s, &key);
    let before = s.envoy.snapshot();
    let wrong = [
        htu("/api/other"),
        htu("/api/orders/"),
        "https://other.example/api/orders".to_string(),
        // The request went to https; a proof for http does not fit.
        format!("http://localhost{PATH}"),
        // The client's Host has no port, so a proof naming the port does not fit.
        format!("https://localhost:{port}{PATH}"),
        "not a uri".to_string(),
    ];
    for u in &wrong {
        let proof = key.proof("GET", u, &token);
        let r = dpop_get(s, &token, &[&proof]);
        assert_dpop_denied(
            &r,
            "dpop_htu_mismatch",
            &format!("htu {u} for {}", htu(PATH)),
        );
    }
    let d = s.envoy.snapshot().since(&before);
    assert_verdicts(
        &d,
        &[("tokenbind.denied.dpop_htu_mismatch", wrong.len() as u64)],
        "htu mismatch",
    );
}

#[test]
fn iat_outside_the_window_is_refused() {
    let f = main_envoy();
    let _serial = f.serial();
    let s = &f.stack;
    let key = ProofKey::generate(ProofAlg::EdDsa);
    let token = bound_token(s, &key);
    let before = s.envoy.snapshot();
    for offset in [-120i64, -3600, 120] {
        let proof = key.proof_with(
            "GET",
            &htu(PATH),
            &token,
            json!({}),
            json!({"iat": now() + offset}),
        );
        let r = dpop_get(s, &token, &[&proof]);
        assert_dpop_denied(
            &r,
            "dpop_iat_out_of_window",
            &format!("iat now{offset:+}, window 60 s"),
        );
    }
    let d = s.envoy.snapshot().since(&before);
    assert_verdicts(
        &d,
        &[("tokenbind.denied.dpop_iat_out_of_window", 3)],
        "iat window",
    );
}

#[test]
fn bound_token_under_bearer_is_a_downgrade() {
    let f = main_envoy();
    let _serial = f.serial();
    let s = &f.stack;
    let key = ProofKey::generate(ProofAlg::Es256);
    let token = bound_token(s, &key);
    let before = s.envoy.snapshot();
    let auth = format!("Bearer {token}");
    let r = call(s, &s.pki.client, "GET", PATH, Some(&auth), &[], &[]);
    assert_dpop_denied(&r, "dpop_downgrade", "Bearer, no proof");
    assert_eq!(
        r.json().and_then(|b| b["error"].as_str().map(String::from)),
        Some("invalid_token".to_string()),
        "downgrade is an invalid_token error:\n{r}"
    );
    // A valid proof alongside does not make Bearer acceptable.
    let proof = key.proof("GET", &htu(PATH), &token);
    let r = call(s, &s.pki.client, "GET", PATH, Some(&auth), &[&proof], &[]);
    assert_dpop_denied(&r, "dpop_downgrade", "Bearer with a valid proof");
    assert_no_token_in_response(&r, &token, "downgrade denial");
    let d = s.envoy.snapshot().since(&before);
    assert_verdicts(&d, &[("tokenbind.denied.dpop_downgrade", 2)], "downgrade");
}

#[test]
fn dpop_scheme_without_a_proof_is_dpop_required() {
    let f = main_envoy();
    let _serial = f.serial();
    let s = &f.stack;
    let key = ProofKey::generate(ProofAlg::EdDsa);
    let token = bound_token(s, &key);
    let before = s.envoy.snapshot();
    let r = dpop_get(s, &token, &[]);
    assert_dpop_denied(&r, "dpop_required", "DPoP scheme, no DPoP header");
    let d = s.envoy.snapshot().since(&before);
    assert_verdicts(
        &d,
        &[("tokenbind.denied.dpop_required", 1)],
        "dpop_required",
    );
}

#[test]
fn two_proof_headers_and_malformed_proofs_are_invalid() {
    let f = main_envoy();
    let _serial = f.serial();
    let s = &f.stack;
    let key = ProofKey::generate(ProofAlg::Es256);
    let token = bound_token(s, &key);
    let u = htu(PATH);
    let before = s.envoy.snapshot();

    // Two headers, each valid on its own.
    let p1 = key.proof("GET", &u, &token);
    let p2 = key.proof("GET", &u, &token);
    let r = dpop_get(s, &token, &[&p1, &p2]);
    assert_dpop_denied(&r, "dpop_invalid", "two DPoP headers");
    // Neither was recorded: each still works alone.
    assert_allowed(&dpop_get(s, &token, &[&p1]), "first proof alone afterwards");

    let other = ProofKey::generate(ProofAlg::Es256);
    let mut private_jwk = key.jwk();
    private_jwk["d"] = json!("AAAA");
    let hdr = |h: Value| key.proof_with("GET", &u, &token, h, json!({}));
    let clm = |c: Value| key.proof_with("GET", &u, &token, json!({}), c);
    let bad_sig = {
        let p = key.proof("GET", &u, &token);
        let (input, _) = p.rsplit_once('.').unwrap_or_default();
        format!(
            "{input}.{}",
            tokenbind_integration::tokens::b64url(&[7u8; 64])
        )
    };
    let cases: Vec<(&str, String)> = vec![
        ("not a JWS", "garbage".to_string()),
        ("two segments", "eyJhbGciOiJFUzI1NiJ9.e30".to_string()),
        ("typ JWT", hdr(json!({"typ": "JWT"}))),
        ("no typ", hdr(json!({"typ": null}))),
        ("alg none", hdr(json!({"alg": "none"}))),
        ("alg HS256", hdr(json!({"alg": "HS256"}))),
        ("alg ES512 (not allowed)", hdr(json!({"alg": "ES512"}))),
        ("alg EdDSA on a P-256 key", hdr(json!({"alg": "EdDSA"}))),
        ("no jwk", hdr(json!({"jwk": null}))),
        (
            "jwk with private member d",
            hdr(json!({"jwk": private_jwk})),
        ),
        ("jwk of another key", hdr(json!({"jwk": other.jwk()}))),
        ("signature bytes replaced", bad_sig),
        ("no jti", clm(json!({"jti": null}))),
        ("empty jti", clm(json!({"jti": ""}))),
        ("no htm", clm(json!({"htm": null}))),
        ("no htu", clm(json!({"htu": null}))),
        ("no iat", clm(json!({"iat": null}))),
        ("iat a string", clm(json!({"iat": now().to_string()}))),
    ];
    for (what, proof) in &cases {
        let r = dpop_get(s, &token, &[proof]);
        assert_dpop_denied(&r, "dpop_invalid", what);
    }
    let d = s.envoy.snapshot().since(&before);
    assert_verdicts(
        &d,
        &[
            ("tokenbind.denied.dpop_invalid", 1 + cases.len() as u64),
            ("tokenbind.allowed", 1),
        ],
        "invalid proofs",
    );
}

#[test]
fn ath_of_another_token_is_ath_mismatch() {
    let f = main_envoy();
    let _serial = f.serial();
    let s = &f.stack;
    let key = ProofKey::generate(ProofAlg::EdDsa);
    let token = bound_token(s, &key);
    let other = bound_token(s, &key);
    let before = s.envoy.snapshot();
    let u = htu(PATH);
    let cases = [
        ("ath of another token", key.proof("GET", &u, &other)),
        (
            "no ath",
            key.proof_with("GET", &u, &token, json!({}), json!({"ath": null})),
        ),
        (
            "ath of the token hex-encoded",
            key.proof_with(
                "GET",
                &u,
                &token,
                json!({}),
                json!({"ath": format!("{:x?}", access_token_hash(&token).as_bytes())}),
            ),
        ),
    ];
    for (what, proof) in &cases {
        let r = dpop_get(s, &token, &[proof]);
        assert_dpop_denied(&r, "dpop_ath_mismatch", what);
    }
    let d = s.envoy.snapshot().since(&before);
    assert_verdicts(
        &d,
        &[("tokenbind.denied.dpop_ath_mismatch", cases.len() as u64)],
        "ath mismatch",
    );
}

// ---- x-forwarded-proto ---------------------------------------------------------------------

/// With `trust_forwarded_proto`, the scheme of the request URI comes from
/// `x-forwarded-proto` (a TLS terminator in front said the client used
/// http). Without it, a client's `x-forwarded-proto` must not change the
/// scheme: shown here with Envoy as an edge proxy (`use_remote_address`),
/// which overwrites the header with the real (TLS) scheme.
#[test]
fn x_forwarded_proto_is_used_only_when_trusted() {
    let trusted = start(
        1,
        |cfg| cfg["dpop"] = json!({"trust_forwarded_proto": true}),
        |_| {},
    );
    let edge = start(1, |_| {}, |b| hcm(b)["use_remote_address"] = json!(true));
    let http_htu = format!("http://localhost{PATH}");
    let xfp = [("x-forwarded-proto", "http")];

    let s = &trusted;
    let key = ProofKey::generate(ProofAlg::Es256);
    let token = bound_token(s, &key);
    let auth = format!("DPoP {token}");
    let before = s.envoy.snapshot();
    let proof = key.proof("GET", &http_htu, &token);
    let r = call(s, &s.pki.client, "GET", PATH, Some(&auth), &[&proof], &xfp);
    assert_allowed(&r, "trusted x-forwarded-proto: http, htu http://");
    let proof = key.proof("GET", &htu(PATH), &token);
    let r = call(s, &s.pki.client, "GET", PATH, Some(&auth), &[&proof], &xfp);
    assert_dpop_denied(
        &r,
        "dpop_htu_mismatch",
        "trusted x-forwarded-proto: http, htu https://",
    );
    let proof = key.proof("GET", &htu(PATH), &token);
    let r = call(s, &s.pki.client, "GET", PATH, Some(&auth), &[&proof], &[]);
    assert_allowed(&r, "trust_forwarded_proto, no header: :scheme https");
    // An absolute-form https target makes Envoy's :scheme https; the trusted
    // header still decides.
    let proof = key.proof("GET", &http_htu, &token);
    let r = raw_get(s, &htu(PATH), "localhost", &token, &proof, &xfp);
    assert_allowed(
        &r,
        "trusted x-forwarded-proto: http over :scheme https, htu http://",
    );
    let d = s.envoy.snapshot().since(&before);
    assert_verdicts(
        &d,
        &[
            ("tokenbind.allowed", 3),
            ("tokenbind.denied.dpop_htu_mismatch", 1),
        ],
        "trusted x-forwarded-proto",
    );

    let s = &edge;
    let token = bound_token(s, &key);
    let auth = format!("DPoP {token}");
    let before = s.envoy.snapshot();
    let proof = key.proof("GET", &http_htu, &token);
    let r = call(s, &s.pki.client, "GET", PATH, Some(&auth), &[&proof], &xfp);
    assert_dpop_denied(
        &r,
        "dpop_htu_mismatch",
        "default config, edge Envoy, client x-forwarded-proto: http, htu http://",
    );
    let proof = key.proof("GET", &htu(PATH), &token);
    let r = call(s, &s.pki.client, "GET", PATH, Some(&auth), &[&proof], &xfp);
    assert_allowed(
        &r,
        "default config, edge Envoy, client x-forwarded-proto: http, htu https://",
    );
    let d = s.envoy.snapshot().since(&before);
    assert_verdicts(
        &d,
        &[
            ("tokenbind.allowed", 1),
            ("tokenbind.denied.dpop_htu_mismatch", 1),
        ],
        "untrusted x-forwarded-proto",
    );
}

/// The default settings take the scheme from `:scheme`, not from
/// `x-forwarded-proto`. Isolated with an absolute-form request target:
/// Envoy then takes `:scheme` (https) from the URL, while the client's
/// `x-forwarded-proto` says http.
#[test]
fn default_settings_read_scheme_not_x_forwarded_proto() {
    let f = main_envoy();
    let _serial = f.serial();
    let s = &f.stack;
    let key = ProofKey::generate(ProofAlg::Es256);
    let token = bound_token(s, &key);
    let target = htu(PATH);
    let xfp = [("x-forwarded-proto", "http")];
    let before = s.envoy.snapshot();
    let proof = key.proof("GET", &htu(PATH), &token);
    let r = raw_get(s, &target, "localhost", &token, &proof, &xfp);
    assert_allowed(
        &r,
        "absolute-form https target, x-forwarded-proto: http, htu https://",
    );
    let proof = key.proof("GET", &format!("http://localhost{PATH}"), &token);
    let r = raw_get(s, &target, "localhost", &token, &proof, &xfp);
    assert_dpop_denied(
        &r,
        "dpop_htu_mismatch",
        "absolute-form https target, x-forwarded-proto: http, htu http://",
    );
    let d = s.envoy.snapshot().since(&before);
    assert_verdicts(
        &d,
        &[
            ("tokenbind.allowed", 1),
            ("tokenbind.denied.dpop_htu_mismatch", 1),
        ],
        "absolute-form requests",
    );
}

/// The same expectation on the standard bootstrap (the one every other test
/// uses, `use_remote_address` unset): with the default `dpop` settings a
/// client's `x-forwarded-proto` must not decide the scheme.
///
/// Fails with Envoy 1.40: for HTTP/1 Envoy sets `:scheme` from
/// `x-forwarded-proto` when it trusts the downstream, which it does unless
/// `use_remote_address` is set, so a client on TLS that sends
/// `x-forwarded-proto: http` gets `:scheme` http, and the filter, which
/// (correctly, see `default_settings_read_scheme_not_x_forwarded_proto`)
/// reads `:scheme`, accepts an `http://` htu. Closing it needs either the
/// filter to take the default scheme from the connection (TLS or not), or
/// deployments that face clients to set `use_remote_address` (as
/// `x_forwarded_proto_is_used_only_when_trusted` does for its edge Envoy).
#[test]
fn client_x_forwarded_proto_does_not_change_the_scheme_on_the_standard_bootstrap() {
    let f = main_envoy();
    let _serial = f.serial();
    let s = &f.stack;
    let key = ProofKey::generate(ProofAlg::Es256);
    let token = bound_token(s, &key);
    let auth = format!("DPoP {token}");
    let before = s.envoy.snapshot();
    let proof = key.proof("GET", &format!("http://localhost{PATH}"), &token);
    let r = call(
        s,
        &s.pki.client,
        "GET",
        PATH,
        Some(&auth),
        &[&proof],
        &[("x-forwarded-proto", "http")],
    );
    assert_dpop_denied(
        &r,
        "dpop_htu_mismatch",
        "default dpop settings, standard bootstrap, TLS request with client-sent \
         x-forwarded-proto: http and htu http:// (Envoy derives HTTP/1 :scheme from \
         x-forwarded-proto unless use_remote_address is set)",
    );
    let d = s.envoy.snapshot().since(&before);
    assert_verdicts(
        &d,
        &[("tokenbind.denied.dpop_htu_mismatch", 1)],
        "client x-forwarded-proto",
    );
}

// ---- Nonces --------------------------------------------------------------------------------

#[track_caller]
fn nonce_of(r: &Response, context: &str) -> String {
    let nonces = r.header_all("dpop-nonce");
    assert_eq!(nonces.len(), 1, "{context}: one DPoP-Nonce header:\n{r}");
    let n = nonces[0].to_string();
    assert!(
        n.len() >= 16
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{context}: DPoP-Nonce should be a base64url value:\n{r}"
    );
    n
}

#[test]
fn nonce_round_trip_and_nonces_work_across_workers() {
    let s = start_two_workers(|cfg| cfg["dpop"] = json!({"require_nonce": true}));
    let port = s.port();
    let workers: Vec<usize> = worker_cx(&s.envoy).keys().copied().collect();
    assert_eq!(workers.len(), 2, "expected two workers: {workers:?}");
    let (a, b) = (workers[0], workers[1]);
    let key = ProofKey::generate(ProofAlg::Es256);
    let token = bound_token(&s, &key);
    let u = htu(PATH);
    let with_nonce = |n: &str| key.proof_with("GET", &u, &token, json!({}), json!({"nonce": n}));
    let before = s.envoy.snapshot();

    // 1. No nonce: 401 use_dpop_nonce with a fresh nonce.
    let r = on_worker(&s.envoy, port, a, || {
        dpop_get(&s, &token, &[&key.proof("GET", &u, &token)])
    });
    assert_dpop_denied(&r, "dpop_nonce_required", "proof without nonce");
    let nonce_a = nonce_of(&r, "challenge from worker a");
    // 2. Retry with it on the same worker: allowed; the same proof again: replayed.
    let retry = with_nonce(&nonce_a);
    let r = on_worker(&s.envoy, port, a, || dpop_get(&s, &token, &[&retry]));
    assert_allowed(&r, "retry with the nonce on the same worker");
    let r = on_worker(&s.envoy, port, b, || dpop_get(&s, &token, &[&retry]));
    assert_dpop_denied(&r, "dpop_replayed", "the nonce proof again, other worker");
    // 3. A nonce from worker a, used on worker b (and vice versa).
    let r = on_worker(&s.envoy, port, b, || {
        dpop_get(&s, &token, &[&with_nonce(&nonce_a)])
    });
    assert_allowed(&r, "nonce from worker a on worker b");
    let r = on_worker(&s.envoy, port, b, || {
        dpop_get(&s, &token, &[&key.proof("GET", &u, &token)])
    });
    assert_dpop_denied(&r, "dpop_nonce_required", "no nonce, worker b");
    let nonce_b = nonce_of(&r, "challenge from worker b");
    let r = on_worker(&s.envoy, port, a, || {
        dpop_get(&s, &token, &[&with_nonce(&nonce_b)])
    });
    assert_allowed(&r, "nonce from worker b on worker a");
    // 4. Made-up nonces: refused, with a fresh nonce to retry with.
    let forged = [
        "made-up-nonce".to_string(),
        // The real nonce with its last character changed.
        {
            let (head, last) = nonce_a.split_at(nonce_a.len() - 1);
            format!("{head}{}", if last == "A" { "B" } else { "A" })
        },
        String::new(),
    ];
    for n in &forged {
        let r = dpop_get(&s, &token, &[&with_nonce(n)]);
        assert_dpop_denied(&r, "dpop_nonce_required", &format!("nonce {n:?}"));
        nonce_of(&r, "challenge after a made-up nonce");
    }

    let d = s.envoy.snapshot().since(&before);
    assert_verdicts(
        &d,
        &[
            ("tokenbind.allowed", 3),
            ("tokenbind.denied.dpop_replayed", 1),
            (
                "tokenbind.denied.dpop_nonce_required",
                2 + forged.len() as u64,
            ),
        ],
        "nonces",
    );
    assert_eq!(
        d.get("tokenbind.cache.miss"),
        2,
        "one token, verified once per worker: {d}"
    );
}

// ---- Monitor mode --------------------------------------------------------------------------

#[test]
fn monitor_mode_lets_every_dpop_failure_through_and_counts_it() {
    let s = start(1, |cfg| cfg["mode"] = json!("monitor"), |_| {});
    let key = ProofKey::generate(ProofAlg::Es256);
    let token = bound_token(&s, &key);
    let u = htu(PATH);
    let auth = format!("DPoP {token}");
    let before = s.envoy.snapshot();

    let valid = key.proof("GET", &u, &token);
    let cases: Vec<(&str, Vec<String>, &str, &str)> = vec![
        // (what, proofs, method, reason)
        ("valid", vec![valid.clone()], "GET", ""),
        ("replay", vec![valid.clone()], "GET", "dpop_replayed"),
        (
            "another key",
            vec![ProofKey::generate(ProofAlg::EdDsa).proof("GET", &u, &token)],
            "GET",
            "dpop_key_mismatch",
        ),
        (
            "wrong method",
            vec![key.proof("POST", &u, &token)],
            "GET",
            "dpop_htm_mismatch",
        ),
        (
            "wrong uri",
            vec![key.proof("GET", &htu("/other"), &token)],
            "GET",
            "dpop_htu_mismatch",
        ),
        (
            "stale iat",
            vec![key.proof_with("GET", &u, &token, json!({}), json!({"iat": now() - 300}))],
            "GET",
            "dpop_iat_out_of_window",
        ),
        ("no proof", vec![], "GET", "dpop_required"),
        (
            "two proofs",
            vec![key.proof("GET", &u, &token), key.proof("GET", &u, &token)],
            "GET",
            "dpop_invalid",
        ),
        (
            "ath of another token",
            vec![key.proof("GET", &u, "another.access.token")],
            "GET",
            "dpop_ath_mismatch",
        ),
    ];
    for (what, proofs, method, _) in &cases {
        let refs: Vec<&str> = proofs.iter().map(String::as_str).collect();
        let r = call(&s, &s.pki.client, method, PATH, Some(&auth), &refs, &[]);
        assert_allowed(&r, &format!("monitor: {what}"));
        assert!(
            r.header("www-authenticate").is_none(),
            "monitor mode must not challenge ({what}):\n{r}"
        );
    }
    // Downgrade: the bound token under Bearer.
    let bearer = format!("Bearer {token}");
    let r = call(&s, &s.pki.client, "GET", PATH, Some(&bearer), &[], &[]);
    assert_allowed(&r, "monitor: downgrade");

    let d = s.envoy.snapshot().since(&before);
    let mut expected: Vec<(String, u64)> = vec![
        ("tokenbind.allowed".to_string(), 1),
        ("tokenbind.monitor.would_deny.dpop_downgrade".to_string(), 1),
    ];
    for (_, _, _, reason) in &cases {
        if !reason.is_empty() {
            expected.push((format!("tokenbind.monitor.would_deny.{reason}"), 1));
        }
    }
    let expected: Vec<(&str, u64)> = expected.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    assert_verdicts(&d, &expected, "monitor mode");
}

// ---- Interop: panva/dpop -------------------------------------------------------------------

/// What `integration/interop/proof.mjs` produced.
struct Interop {
    jwk: Value,
    /// The thumbprint computed by the npm package.
    jkt: String,
    proofs: Vec<String>,
}

fn interop_dir() -> PathBuf {
    workspace_root().join("integration/interop")
}

/// `node`, or `$NODE_BIN`.
fn node_bin() -> PathBuf {
    match std::env::var_os("NODE_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("node"),
    }
}

/// Node and the installed `dpop` package, or a panic that says how to get
/// them. Never skips.
fn require_interop() {
    let node = node_bin();
    let version = Command::new(&node)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): the DPoP interop test needs Node.js 20 or later; \
                 install it, then run scripts/setup.sh",
                node.display()
            )
        });
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 20,
        "Node.js {version:?} is too old for the DPoP interop test (needs 20+); \
         install a newer one, then run scripts/setup.sh"
    );
    let pkg = interop_dir().join("node_modules/dpop/package.json");
    let text = std::fs::read_to_string(&pkg).unwrap_or_else(|e| {
        panic!(
            "{} is missing ({e}): the npm dependencies of integration/interop are not \
             installed; run scripts/setup.sh (it runs `npm ci` there)",
            pkg.display()
        )
    });
    let installed: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}); run scripts/setup.sh", pkg.display()));
    let v = installed["version"].as_str().unwrap_or_default();
    assert!(
        v.starts_with("2."),
        "integration/interop has dpop {v:?} installed, expected 2.x; run scripts/setup.sh"
    );
}

/// Runs proof.mjs: a new key pair in Node, then `count` proofs for
/// `htm htu` and the token that `mint(jkt)` returns, handed over on stdin.
fn interop_proofs(
    alg: &str,
    htm: &str,
    htu: &str,
    count: usize,
    mint: impl FnOnce(&str) -> String,
) -> (Interop, String) {
    let mut child = Command::new(node_bin())
        .arg("proof.mjs")
        .args([alg, htm, htu, &count.to_string()])
        .current_dir(interop_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start node proof.mjs: {e}; run scripts/setup.sh"));
    let stdout = child
        .stdout
        .take()
        .unwrap_or_else(|| panic!("no stdout pipe"));
    let mut stderr = child
        .stderr
        .take()
        .unwrap_or_else(|| panic!("no stderr pipe"));
    let (tx, rx) = mpsc::channel::<String>();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let deadline = Instant::now() + WAIT;
    let next_line = |child: &mut std::process::Child, what: &str| -> Value {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("proof.mjs printed non-JSON for {what}: {e}")),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("proof.mjs gave no {what} within {WAIT:?}");
            }
        }
    };

    let first = next_line(&mut child, "key");
    let jwk = first["jwk"].clone();
    let jkt = first["jkt"].as_str().unwrap_or_default().to_string();
    let token = mint(&jkt);
    {
        let mut stdin = child
            .stdin
            .take()
            .unwrap_or_else(|| panic!("no stdin pipe"));
        stdin
            .write_all(format!("{token}\n").as_bytes())
            .unwrap_or_else(|e| panic!("writing the token to proof.mjs: {e}"));
    }
    let second = next_line(&mut child, "proofs");
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("proof.mjs did not exit within {WAIT:?}");
            }
        }
    };
    let errors = err_reader.join().unwrap_or_default();
    assert!(status.success(), "proof.mjs failed ({status}): {errors}");
    let proofs: Vec<String> = second["proofs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(String::from))
        .collect();
    assert_eq!(proofs.len(), count, "proof.mjs proofs");
    (Interop { jwk, jkt, proofs }, token)
}

/// Proofs from panva/dpop for a token minted by the harness: the first uses
/// pass, a replay does not.
fn interop_round_trip(node_alg: &str, header_alg: &str) {
    require_interop();
    let f = main_envoy();
    let _serial = f.serial();
    let s = &f.stack;
    let u = htu(PATH);
    let mut jkt_used = String::new();
    let (interop, token) = interop_proofs(node_alg, "GET", &u, 3, |jkt| {
        jkt_used = jkt.to_string();
        s.issuer.sign(Alg::Es256, &client_claims(s).cnf_jkt(jkt))
    });
    // The package's thumbprint is the RFC 7638 thumbprint we compute.
    assert_eq!(
        jwk_thumbprint(&interop.jwk),
        interop.jkt,
        "thumbprint from dpop vs ours"
    );
    assert_eq!(jkt_used, interop.jkt);
    for p in &interop.proofs {
        let (h, c) = decode_proof(p);
        assert_eq!(h["typ"], "dpop+jwt", "proof typ from panva/dpop");
        assert_eq!(h["alg"], header_alg, "proof alg from panva/dpop");
        assert_eq!(c["htu"], u.as_str());
        assert_eq!(c["htm"], "GET");
        assert_eq!(c["ath"], access_token_hash(&token).as_str());
        assert_eq!(jwk_thumbprint(&h["jwk"]), interop.jkt);
    }

    let before = s.envoy.snapshot();
    for (i, p) in interop.proofs.iter().enumerate() {
        let r = dpop_get(s, &token, &[p]);
        assert_allowed(
            &r,
            &format!(
                "panva/dpop {node_alg} proof #{} (header alg {header_alg:?}, proof {}); \
                 filter log: {}",
                i + 1,
                short_hash(p),
                last_denial_log(&s.envoy)
            ),
        );
    }
    let r = dpop_get(s, &token, &[&interop.proofs[0]]);
    assert_dpop_denied(
        &r,
        "dpop_replayed",
        &format!("panva/dpop {node_alg} proof replayed"),
    );
    let d = s.envoy.snapshot().since(&before);
    assert_verdicts(
        &d,
        &[
            ("tokenbind.allowed", interop.proofs.len() as u64),
            ("tokenbind.denied.dpop_replayed", 1),
        ],
        "interop",
    );
}

#[test]
fn interop_panva_dpop_es256_proofs_are_accepted() {
    interop_round_trip("ES256", "ES256");
}

/// panva/dpop 2.x signs Ed25519 proofs with the fully-specified JOSE
/// algorithm name `Ed25519` (RFC 9864), not the polymorphic `EdDSA`. Fails
/// while the filter's `dpop.algorithms` knows only `EdDSA` (the proof is
/// `dpop_invalid`, "DPoP proof alg is not accepted").
#[test]
fn interop_panva_dpop_ed25519_proofs_are_accepted() {
    interop_round_trip("Ed25519", "Ed25519");
}
