//! Remote JWKS (issue 4) against a real Envoy: the standard provider takes
//! its keys from `remote_jwks`, fetched through an Envoy cluster `issuer`
//! (plain HTTP, STATIC) pointing at [`JwksServer`], a real HTTP/1.1 server on
//! loopback whose request log shows what Envoy fetched and when.
//!
//! Every test has its own server and Envoy (their behaviour is the subject),
//! so counters are checked as absolute values or deltas of that Envoy only.
//! Timing: requests are timed, but only loose upper bounds are asserted
//! (`timeout_ms` + [`SLACK`]); waits for background fetches are bounded polls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokenbind_integration::assertions::{assert_allowed, assert_challenge_shape, assert_denied};
use tokenbind_integration::client::{Client, Response};
use tokenbind_integration::envoy::{static_cluster, Bootstrap, Envoy, EnvoyOptions};
use tokenbind_integration::jwks_server::{
    discovery_document, merge_jwks, Behaviour, JwksServer, DISCOVERY_PATH, JWKS_PATH,
};
use tokenbind_integration::pki::Pki;
use tokenbind_integration::tokens::{Alg, Claims, TokenIssuer};
use tokenbind_integration::{
    plugin_config, poll, require_envoy, require_wasm, AUDIENCE, CLIENT_ID, ISSUER, LISTENER,
};

/// The Envoy cluster the filter fetches through.
const CLUSTER: &str = "issuer";
/// Authority of the configured JWKS URI (the cluster ignores it for routing).
const JWKS_AUTHORITY: &str = "jwks.local";
/// The provider name in the standard plugin configuration.
const PROVIDER: &str = "mesh";
/// Scheduling slack allowed on top of `timeout_ms` for a held request (the
/// filter's timer ticks every 100 ms; the machine is shared and noisy).
const SLACK: Duration = Duration::from_secs(3);
/// Upper bound for background events (a fetch, a retry after back-off).
const BACKGROUND: Duration = Duration::from_secs(20);
/// A 10 MB body, far over `max_body_bytes`.
const TEN_MB: usize = 10 * 1024 * 1024;

/// `remote_jwks` for the standard provider: the JWKS at
/// `http://jwks.local/.well-known/jwks.json` through cluster `issuer`, no
/// jitter (deterministic refresh times), with `overrides` merged in.
fn remote_jwks(overrides: Value) -> Value {
    let mut r = json!({
        "cluster": CLUSTER,
        "uri": format!("http://{JWKS_AUTHORITY}{JWKS_PATH}"),
        "cache_duration_seconds": 600,
        "timeout_ms": 2000,
        "discovery": false,
        "jitter_percent": 0,
        "refetch_unknown_kid_min_interval_seconds": 30,
        "max_body_bytes": 262144
    });
    if let (Some(r), Some(o)) = (r.as_object_mut(), overrides.as_object()) {
        for (k, v) in o {
            if v.is_null() {
                r.remove(k);
            } else {
                r.insert(k.clone(), v.clone());
            }
        }
    }
    r
}

/// PKI, issuer, JWKS server and Envoy. Envoy is declared first so it is
/// dropped (killed) before the server stops.
struct Remote {
    envoy: Envoy,
    server: JwksServer,
    pki: Pki,
    issuer: TokenIssuer,
}

/// How to start a [`Remote`].
struct Setup {
    remote: Value,
    mode: &'static str,
    options: EnvoyOptions,
}

impl Setup {
    fn new(remote_overrides: Value) -> Setup {
        Setup {
            remote: remote_jwks(remote_overrides),
            mode: "enforce",
            options: EnvoyOptions::default(),
        }
    }

    fn monitor(mut self) -> Setup {
        self.mode = "monitor";
        self
    }

    fn concurrency(mut self, workers: u32) -> Setup {
        self.options.concurrency = workers;
        self
    }

    /// Starts Envoy with the standard plugin configuration, except that the
    /// provider's keys come from `remote_jwks` through cluster `issuer` =
    /// `server`. Panics with Envoy's log if it does not start.
    fn start(self, issuer: TokenIssuer, server: JwksServer) -> Remote {
        require_envoy();
        let wasm = require_wasm();
        let pki = Pki::new();
        let mut cfg = plugin_config(&issuer);
        cfg["mode"] = json!(self.mode);
        let provider = &mut cfg["providers"][0];
        if let Some(p) = provider.as_object_mut() {
            p.remove("jwks");
        }
        provider["remote_jwks"] = self.remote;
        let bootstrap = Bootstrap::new(&pki)
            .wasm_filter(&wasm, &cfg)
            .cluster(static_cluster(CLUSTER, server.port()))
            .build();
        let envoy = Envoy::start_with(&bootstrap, self.options).unwrap_or_else(|e| {
            panic!(
                "Envoy failed to start with remote_jwks: {e}\nJWKS server log:\n{}",
                server.describe_log()
            )
        });
        Remote {
            envoy,
            server,
            pki,
            issuer,
        }
    }
}

/// Makes every minted token unique, so none is served from the verified-token
/// cache (each must be verified with the keys the filter holds now).
static JTI: AtomicU64 = AtomicU64::new(0);

fn fresh_claims(issuer: &TokenIssuer) -> Claims {
    issuer
        .claims(CLIENT_ID, AUDIENCE)
        .with("jti", format!("t{}", JTI.fetch_add(1, Ordering::SeqCst)))
}

impl Remote {
    fn client(&self) -> Client {
        Client::new(self.pki.ca_pem(), Some(&self.pki.client))
    }

    /// `GET path` as the legitimate client, with the token if any; returns
    /// the response and the wall time it took.
    fn get(&self, path: &str, token: Option<&str>) -> (Response, Duration) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = match &auth {
            Some(a) => vec![("authorization", a.as_str())],
            None => vec![],
        };
        let started = Instant::now();
        let resp = self
            .client()
            .get(self.envoy.port(LISTENER), path, &headers)
            .unwrap_or_else(|e| panic!("GET {path} failed: {e}\n{}", self.diagnostics()));
        (resp, started.elapsed())
    }

    /// A fresh token from `issuer` (standard client claims) sent as the client.
    fn call(&self, issuer: &TokenIssuer, alg: Alg) -> (Response, Duration) {
        let token = issuer.sign(alg, &fresh_claims(issuer));
        self.get("/api", Some(&token))
    }

    /// Like [`Remote::call`] but the token carries `kid` in its header.
    fn call_with_kid(&self, issuer: &TokenIssuer, alg: Alg, kid: &str) -> (Response, Duration) {
        let token = issuer.sign_with_kid(alg, kid, &fresh_claims(issuer));
        self.get("/api", Some(&token))
    }

    fn counter(&self, name: &str) -> u64 {
        self.envoy.counter(name)
    }

    /// The `tokenbind.jwks.keys.<provider>` gauge as Envoy prints it.
    fn keys_gauge(&self) -> Option<u64> {
        let name = format!("wasmcustom.tokenbind.jwks.keys.{PROVIDER}");
        self.envoy
            .stats()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Waits (bounded) until the wasm counter `name` is at least `at_least`.
    fn wait_counter(&self, name: &str, at_least: u64, timeout: Duration) -> u64 {
        poll(timeout, Duration::from_millis(100), || {
            let v = self.counter(name);
            if v >= at_least {
                Ok(v)
            } else {
                Err(format!("{name} = {v}"))
            }
        })
        .unwrap_or_else(|e| {
            panic!(
                "waiting for {name} >= {at_least}: {e}\n{}",
                self.diagnostics()
            )
        })
    }

    /// Waits for the first successful fetch, then makes one allowed request,
    /// which proves the worker VM installed the keys (a worker syncs the
    /// shared key set on its timer, shortly after the fetching VM stored it).
    fn wait_keys_installed(&self) {
        self.wait_counter("tokenbind.jwks.fetch_success", 1, BACKGROUND);
        let (r, took) = self.call(&self.issuer, Alg::Es256);
        assert_allowed(
            &r,
            &format!("first request with the fetched keys (took {took:?})"),
        );
    }

    /// Envoy is up: the process runs, `/ready` is LIVE, requests that need
    /// no keys are answered normally.
    #[track_caller]
    fn assert_healthy(&mut self, context: &str) {
        assert!(
            self.envoy.is_running(),
            "{context}: Envoy exited\n{}",
            self.diagnostics()
        );
        let ready = self.envoy.admin_get("/ready");
        assert!(
            matches!(&ready, Ok((200, body)) if body.trim() == "LIVE"),
            "{context}: /ready = {ready:?}\n{}",
            self.diagnostics()
        );
        let (r, _) = self.get("/healthz", None);
        assert_allowed(&r, &format!("{context}: exempt path"));
        let (r, _) = self.get("/api", None);
        assert_denied(&r, "missing_token", &format!("{context}: no token"));
        let log = self.envoy.log();
        for bad in ["panicked", "Uncaught", "wasm trap", "Wasm VM failed"] {
            if let Some(line) = log.lines().find(|l| l.contains(bad)) {
                panic!(
                    "{context}: the Wasm VM failed: {line}\n{}",
                    self.diagnostics()
                );
            }
        }
    }

    /// Prints (for `--nocapture`) how the fetches failed, as the filter
    /// logged it, and how Envoy counted the calls on the cluster.
    fn report(&self, what: &str) {
        for line in self
            .envoy
            .log()
            .lines()
            .filter(|l| l.contains("tokenbind: provider") && l.contains("failed:"))
        {
            let msg = line.split("tokenbind: provider").nth(1).unwrap_or(line);
            eprintln!("{what}: provider{msg}");
        }
        let cluster: Vec<String> = self
            .envoy
            .stats_matching(&format!("cluster.{CLUSTER}.upstream_"))
            .lines()
            .filter(|l| !l.ends_with(": 0") && !l.contains("No recorded values"))
            .map(|l| {
                l.trim_start_matches(&format!("cluster.{CLUSTER}."))
                    .to_string()
            })
            .collect();
        eprintln!("{what}: cluster {CLUSTER}: {}", cluster.join(", "));
    }

    /// Counters, gauge, cluster stats, the server's request log and the
    /// filter's log lines, for failure messages.
    fn diagnostics(&self) -> String {
        let tokenbind: Vec<String> = self
            .envoy
            .log()
            .lines()
            .filter(|l| l.contains("tokenbind"))
            .map(str::to_string)
            .collect();
        let tail = tokenbind.len().saturating_sub(40);
        format!(
            "tokenbind stats (non-zero):\n{}\ncluster {CLUSTER} stats:\n{}\nJWKS server log:\n{}\nEnvoy log (tokenbind lines):\n{}",
            self.envoy
                .stats_matching("wasmcustom.tokenbind")
                .lines()
                .filter(|l| !l.ends_with(": 0"))
                .collect::<Vec<_>>()
                .join("\n"),
            self.envoy
                .stats_matching(&format!("cluster.{CLUSTER}.upstream_"))
                .lines()
                .filter(|l| !l.ends_with(": 0"))
                .collect::<Vec<_>>()
                .join("\n"),
            self.server.describe_log(),
            tokenbind[tail..].join("\n")
        )
    }
}

/// 401 `jwks_unavailable`: the same contract as every token denial (see
/// `assertions::assert_denied`, whose list of reasons predates remote JWKS).
#[track_caller]
fn assert_jwks_unavailable(resp: &Response, context: &str) {
    assert_eq!(
        resp.status, 401,
        "{context}: expected 401 jwks_unavailable, got:\n{resp}"
    );
    assert_eq!(
        resp.json(),
        Some(json!({"error": "invalid_token", "reason": "jwks_unavailable"})),
        "{context}: body:\n{resp}"
    );
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(
        ct == "application/json" || ct.starts_with("application/json;"),
        "{context}: content-type {ct:?}:\n{resp}"
    );
    let challenges = resp.header_all("www-authenticate");
    assert_eq!(challenges.len(), 1, "{context}: challenges:\n{resp}");
    assert_challenge_shape(challenges[0], context);
}

#[test]
fn tokens_verify_with_remotely_fetched_keys() {
    let issuer = TokenIssuer::new(ISSUER);
    let server = JwksServer::serving(issuer.jwks());
    let s = Setup::new(json!({})).start(issuer, server);
    s.wait_counter("tokenbind.jwks.fetch_success", 1, BACKGROUND);
    for alg in Alg::ALL {
        let (r, took) = s.call(&s.issuer, alg);
        assert_allowed(
            &r,
            &format!("{} token, remote keys (took {took:?})", alg.name()),
        );
    }
    // A token from a different key under the same kid is still refused.
    let impostor = TokenIssuer::new(ISSUER);
    let (r, _) = s.call(&impostor, Alg::Es256);
    assert_denied(&r, "bad_signature", "impostor key under a known kid");

    assert_eq!(
        s.counter("tokenbind.jwks.fetch_success"),
        1,
        "{}",
        s.diagnostics()
    );
    assert_eq!(
        s.counter("tokenbind.jwks.fetch_failed"),
        0,
        "{}",
        s.diagnostics()
    );
    assert_eq!(s.counter("tokenbind.allowed"), 2, "{}", s.diagnostics());
    assert_eq!(s.keys_gauge(), Some(2), "{}", s.diagnostics());
    // One GET of exactly the configured URI: authority as `host`.
    let requests = s.server.requests();
    assert_eq!(requests.len(), 1, "{}", s.diagnostics());
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].path, JWKS_PATH);
    assert_eq!(requests[0].host.as_deref(), Some(JWKS_AUTHORITY));
}

#[test]
fn a_request_before_the_first_keys_waits_for_them() {
    // The issuer holds its answer until the test releases it, so the first
    // fetch is in flight when the request arrives: the request is held
    // (timeout_ms 10 s), then allowed as soon as the keys land.
    let issuer = TokenIssuer::new(ISSUER);
    let server = JwksServer::serving(issuer.jwks());
    server.pause();
    let s = Setup::new(json!({"timeout_ms": 10000})).start(issuer, server);
    s.server
        .wait_for(JWKS_PATH, 1, BACKGROUND)
        .unwrap_or_else(|e| panic!("no fetch: {e}\n{}", s.diagnostics()));
    let token = s.issuer.sign(Alg::EdDsa, &fresh_claims(&s.issuer));
    let outcome = std::thread::scope(|scope| {
        let request = scope.spawn(|| s.get("/api", Some(&token)));
        // The request reached the filter (Envoy decoded its headers) and
        // is waiting: no keys, no answer.
        let held = poll(BACKGROUND, Duration::from_millis(50), || {
            let active = s.envoy.stat("http.ingress.downstream_rq_active");
            if active >= 1 && !request.is_finished() {
                Ok(active)
            } else {
                Err(format!(
                    "downstream_rq_active = {active}, answered: {}",
                    request.is_finished()
                ))
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let still_held = !request.is_finished();
        let keys_before = s.counter("tokenbind.jwks.fetch_success");
        let released = Instant::now();
        s.server.unpause();
        let (resp, took) = request
            .join()
            .unwrap_or_else(|_| panic!("request thread panicked"));
        (
            held,
            still_held,
            keys_before,
            resp,
            took,
            released.elapsed(),
        )
    });
    let (held, still_held, keys_before, resp, took, after_release) = outcome;
    held.unwrap_or_else(|e| panic!("the request was not held: {e}\n{}", s.diagnostics()));
    assert!(still_held, "answered before the keys\n{}", s.diagnostics());
    assert_eq!(keys_before, 0, "{}", s.diagnostics());
    assert_allowed(
        &resp,
        &format!("held until the keys arrived (took {took:?}, {after_release:?} after release)"),
    );
    assert!(
        after_release < SLACK,
        "answered {after_release:?} after the keys were served\n{}",
        s.diagnostics()
    );
    assert_eq!(
        s.counter("tokenbind.jwks.fetch_success"),
        1,
        "{}",
        s.diagnostics()
    );
    assert_eq!(s.counter("tokenbind.allowed"), 1);
    assert_eq!(s.counter("tokenbind.denied.jwks_unavailable"), 0);
    assert_eq!(s.server.count(JWKS_PATH), 1, "{}", s.diagnostics());
}

#[test]
fn rotation_is_picked_up_by_one_unknown_kid_refetch() {
    let old = TokenIssuer::new(ISSUER);
    let server = JwksServer::serving(old.jwks());
    let s = Setup::new(json!({"refetch_unknown_kid_min_interval_seconds": 30})).start(old, server);
    s.wait_counter("tokenbind.jwks.fetch_success", 1, BACKGROUND);
    let (r, _) = s.call(&s.issuer, Alg::Es256);
    assert_allowed(&r, "token under the original keys");
    assert_eq!(s.server.count(JWKS_PATH), 1);

    // The issuer rotates: a new key set, new kids, old keys gone.
    let rotated = TokenIssuer::with_kids(ISSUER, "es256-2", "eddsa-2");
    s.server.set_jwks(rotated.jwks());
    let (r, took) = s.call(&rotated, Alg::Es256);
    assert_allowed(
        &r,
        &format!("token under the rotated kid es256-2 (took {took:?})"),
    );
    assert!(
        took < Duration::from_millis(2000) + SLACK,
        "the refetch took {took:?}\n{}",
        s.diagnostics()
    );
    assert_eq!(
        s.counter("tokenbind.jwks.refetch_unknown_kid"),
        1,
        "{}",
        s.diagnostics()
    );
    assert_eq!(
        s.counter("tokenbind.jwks.fetch_success"),
        2,
        "{}",
        s.diagnostics()
    );
    assert_eq!(s.server.count(JWKS_PATH), 2, "{}", s.diagnostics());
    assert_eq!(s.keys_gauge(), Some(2), "{}", s.diagnostics());
    // The other rotated key works too, without another fetch.
    let (r, _) = s.call(&rotated, Alg::EdDsa);
    assert_allowed(&r, "token under the rotated kid eddsa-2");

    // A third key appears at the issuer, but within the refetch interval
    // the filter does not look: its kid is unknown, no fetch happens.
    let third = TokenIssuer::with_kids(ISSUER, "es256-3", "eddsa-3");
    s.server
        .set_jwks(merge_jwks(&[&rotated.jwks(), &third.jwks()]));
    let fetches = s.server.total();
    let (r, took) = s.call(&third, Alg::Es256);
    assert_denied(
        &r,
        "unknown_key",
        &format!("second unknown kid within the interval (took {took:?})"),
    );
    // The removed original keys are unknown now, and do not refetch either.
    let (r, _) = s.call_with_kid(&s.issuer, Alg::EdDsa, "eddsa-1");
    assert_denied(&r, "unknown_key", "kid of the rotated-out key");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        s.server.total(),
        fetches,
        "no fetch may follow a rate-limited unknown kid\n{}",
        s.diagnostics()
    );
    assert_eq!(
        s.counter("tokenbind.jwks.refetch_unknown_kid"),
        1,
        "{}",
        s.diagnostics()
    );
    assert_eq!(s.counter("tokenbind.denied.unknown_key"), 2);
    assert_eq!(s.counter("tokenbind.jwks.fetch_success"), 2);
}

#[test]
fn a_cached_token_is_withdrawn_with_its_key_at_rotation() {
    let old = TokenIssuer::new(ISSUER);
    let server = JwksServer::serving(old.jwks());
    let s = Setup::new(json!({})).start(old, server);
    s.wait_keys_installed();
    // One token, verified once and then served from the cache.
    let token = s.issuer.sign(Alg::Es256, &fresh_claims(&s.issuer));
    let (r, _) = s.get("/api", Some(&token));
    assert_allowed(&r, "token under the original key");
    let hits = s.counter("tokenbind.cache.hit");
    let (r, _) = s.get("/api", Some(&token));
    assert_allowed(&r, "the same token again");
    assert_eq!(
        s.counter("tokenbind.cache.hit"),
        hits + 1,
        "{}",
        s.diagnostics()
    );

    // The issuer withdraws the key (as after a compromise) and publishes a new one; a token
    // under the new kid makes the filter refetch and install the new set.
    let rotated = TokenIssuer::with_kids(ISSUER, "es256-2", "eddsa-2");
    s.server.set_jwks(rotated.jwks());
    let (r, _) = s.call(&rotated, Alg::Es256);
    assert_allowed(&r, "token under the new kid (refetch)");
    assert!(
        s.envoy
            .log()
            .contains("cached tokens were verified by keys no longer in the key set"),
        "the withdrawal is logged\n{}",
        s.diagnostics()
    );
    // The cached token is gone with its key: verified again, and refused.
    let misses = s.counter("tokenbind.cache.miss");
    let (r, _) = s.get("/api", Some(&token));
    assert_denied(&r, "unknown_key", "cached token whose key was withdrawn");
    assert_eq!(
        s.counter("tokenbind.cache.miss"),
        misses + 1,
        "{}",
        s.diagnostics()
    );
}

/// A fetched JWKS with a duplicate member is a failed fetch like any malformed one: the last
/// good keys stay, `fetch_failed` counts it, and the warning names the member (never a key).
/// Here the rotated key's `kid` is written twice, the second time as the old key's kid, so a
/// first-wins and a last-wins reader would file the new key under different kids.
#[test]
fn a_jwks_with_a_duplicate_member_is_a_failed_fetch_and_the_last_good_keys_stay() {
    let issuer = TokenIssuer::new(ISSUER);
    let server = JwksServer::serving(issuer.jwks());
    let s = Setup::new(json!({})).start(issuer, server);
    s.wait_keys_installed();
    let (r, _) = s.call(&s.issuer, Alg::Es256);
    assert_allowed(&r, "token under the original keys");

    let rotated = TokenIssuer::with_kids(ISSUER, "es256-2", "eddsa-2");
    let text = merge_jwks(&[&s.issuer.jwks(), &rotated.jwks()]).to_string();
    let dup = text.replacen(
        r#""kid":"es256-2""#,
        r#""kid":"es256-2","kid":"es256-1""#,
        1,
    );
    assert_ne!(dup, text);
    s.server.set_behaviour(Behaviour::Raw(dup));
    let failed = s.counter("tokenbind.jwks.fetch_failed");
    // The new kid makes the filter refetch; the fetched set is refused, so the kid stays
    // unknown.
    let (r, _) = s.call(&rotated, Alg::Es256);
    assert_denied(&r, "unknown_key", "token under the kid of the refused set");
    s.wait_counter("tokenbind.jwks.fetch_failed", failed + 1, BACKGROUND);
    assert!(
        s.envoy
            .log()
            .contains("JWKS is malformed: duplicate member /keys/2/kid"),
        "the warning names the member\n{}",
        s.diagnostics()
    );
    // The last good keys still serve.
    let (r, _) = s.call(&s.issuer, Alg::Es256);
    assert_allowed(&r, "token under the original keys after the refused fetch");
    let (r, _) = s.call(&s.issuer, Alg::EdDsa);
    assert_allowed(
        &r,
        "EdDSA token under the original keys after the refused fetch",
    );
    assert_eq!(s.keys_gauge(), Some(2), "{}", s.diagnostics());
}

#[test]
fn rotation_with_two_workers_refetches_once() {
    let old = TokenIssuer::new(ISSUER);
    let server = JwksServer::serving(old.jwks());
    let s = Setup::new(json!({})).concurrency(2).start(old, server);
    s.wait_counter("tokenbind.jwks.fetch_success", 1, BACKGROUND);
    let rotated = TokenIssuer::with_kids(ISSUER, "es256-2", "eddsa-2");
    s.server
        .set_jwks(merge_jwks(&[&s.issuer.jwks(), &rotated.jwks()]));
    // Eight concurrent requests under the new kid, spread over both workers:
    // one refetch serves them all.
    let results: Vec<(Response, Duration)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let rotated = &rotated;
                let s = &s;
                scope.spawn(move || s.call(rotated, Alg::ALL[i % 2]))
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
    for (i, (r, took)) in results.iter().enumerate() {
        assert_allowed(
            r,
            &format!("concurrent request {i} under the new kid (took {took:?})"),
        );
        assert!(
            *took < Duration::from_millis(2000) + SLACK,
            "request {i} held {took:?}\n{}",
            s.diagnostics()
        );
    }
    assert_eq!(
        s.counter("tokenbind.jwks.refetch_unknown_kid"),
        1,
        "{}",
        s.diagnostics()
    );
    assert_eq!(s.server.count(JWKS_PATH), 2, "{}", s.diagnostics());
    assert_eq!(s.keys_gauge(), Some(4), "{}", s.diagnostics());
    // The old keys are still published, so old tokens still verify.
    let (r, _) = s.call(&s.issuer, Alg::Es256);
    assert_allowed(&r, "old kid after the rotation");
}

#[test]
fn unknown_kid_refetch_against_a_hanging_issuer_is_bounded() {
    const TIMEOUT_MS: u64 = 500;
    let issuer = TokenIssuer::new(ISSUER);
    let server = JwksServer::serving(issuer.jwks());
    let s = Setup::new(json!({"timeout_ms": TIMEOUT_MS})).start(issuer, server);
    s.wait_keys_installed();
    s.server.set_behaviour(Behaviour::Hang);
    let rotated = TokenIssuer::with_kids(ISSUER, "es256-2", "eddsa-2");
    let token = rotated.sign(Alg::Es256, &fresh_claims(&rotated));
    std::thread::scope(|scope| {
        let unknown = scope.spawn(|| s.get("/api", Some(&token)));
        // While that refetch hangs, tokens under known kids are decided at once.
        s.server
            .wait_for(JWKS_PATH, 2, BACKGROUND)
            .unwrap_or_else(|e| panic!("no refetch: {e}\n{}", s.diagnostics()));
        let (r, took) = s.call(&s.issuer, Alg::EdDsa);
        assert_allowed(
            &r,
            &format!("known kid during a hanging refetch (took {took:?})"),
        );
        let (r, took) = unknown
            .join()
            .unwrap_or_else(|_| panic!("request thread panicked"));
        assert_denied(
            &r,
            "unknown_key",
            &format!("unknown kid, refetch hanging (took {took:?})"),
        );
        assert!(
            took < Duration::from_millis(TIMEOUT_MS) + SLACK,
            "held {took:?}\n{}",
            s.diagnostics()
        );
    });
    assert_eq!(s.counter("tokenbind.jwks.refetch_unknown_kid"), 1);
    s.wait_counter("tokenbind.jwks.fetch_failed", 1, BACKGROUND);
    // The failed refetch kept the keys.
    let (r, _) = s.call(&s.issuer, Alg::Es256);
    assert_allowed(&r, "known kid after the failed refetch");
    assert_eq!(s.keys_gauge(), Some(2), "{}", s.diagnostics());
}

/// Sends `GET path` with `token` over a new mTLS connection as the client,
/// and returns the open connection without reading the answer: the caller
/// drops it to abandon the request.
fn send_and_keep_open(
    s: &Remote,
    path: &str,
    token: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use std::io::{BufReader, Write as _};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut BufReader::new(s.pki.ca_pem().as_bytes())) {
        roots.add(cert.expect("CA PEM")).expect("CA accepted");
    }
    let chain = rustls_pemfile::certs(&mut BufReader::new(s.pki.client.cert_pem.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .expect("client cert PEM");
    let key = rustls_pemfile::private_key(&mut BufReader::new(s.pki.client.key_pem.as_bytes()))
        .expect("client key PEM")
        .expect("a client key");
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("client auth");
    let tcp = std::net::TcpStream::connect(("127.0.0.1", s.envoy.port(LISTENER))).expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost")
        .expect("server name")
        .to_owned();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("TLS");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\r\n");
    tls.write_all(request.as_bytes()).expect("send request");
    tls.flush().expect("flush request");
    tls
}

#[test]
fn a_refetch_outlives_the_request_that_triggered_it() {
    // The unknown-kid refetch is triggered by a request whose client goes
    // away while the issuer is still answering. The fetch belongs to the
    // sidecar, not to that request: its keys must still be installed.
    let issuer = TokenIssuer::new(ISSUER);
    let server = JwksServer::serving(issuer.jwks());
    let s = Setup::new(json!({"timeout_ms": 5000})).start(issuer, server);
    s.wait_keys_installed();
    let rotated = TokenIssuer::with_kids(ISSUER, "es256-2", "eddsa-2");
    s.server
        .set_jwks(merge_jwks(&[&s.issuer.jwks(), &rotated.jwks()]));
    s.server.pause();
    let token = rotated.sign(Alg::Es256, &fresh_claims(&rotated));
    let abandoned = send_and_keep_open(&s, "/api", &token);
    s.server
        .wait_for(JWKS_PATH, 2, BACKGROUND)
        .unwrap_or_else(|e| panic!("no refetch: {e}\n{}", s.diagnostics()));
    drop(abandoned);
    poll(BACKGROUND, Duration::from_millis(50), || {
        match s.envoy.stat("http.ingress.downstream_rq_active") {
            0 => Ok(()),
            n => Err(format!("downstream_rq_active = {n}")),
        }
    })
    .unwrap_or_else(|e| panic!("the abandoned request is still active: {e}"));
    s.server.unpause();
    s.wait_counter("tokenbind.jwks.fetch_success", 2, Duration::from_secs(10));
    assert_eq!(s.keys_gauge(), Some(4), "{}", s.diagnostics());
    let (r, took) = s.call(&rotated, Alg::EdDsa);
    assert_allowed(&r, &format!("new kid after the refetch (took {took:?})"));
    assert_eq!(s.counter("tokenbind.jwks.refetch_unknown_kid"), 1);
    assert_eq!(s.server.count(JWKS_PATH), 2, "{}", s.diagnostics());
}

#[test]
fn unknown_kid_refetches_are_rate_limited_per_interval() {
    let issuer = TokenIssuer::new(ISSUER);
    let server = JwksServer::serving(issuer.jwks());
    // 4 s: the first two unknown kids below are well within it even on a
    // slow machine (the limit compares whole seconds).
    let s =
        Setup::new(json!({"refetch_unknown_kid_min_interval_seconds": 4})).start(issuer, server);
    s.wait_keys_installed();
    assert_eq!(s.server.count(JWKS_PATH), 1);

    // A kid the issuer does not have either: one refetch, then unknown_key.
    let (r, took) = s.call_with_kid(&s.issuer, Alg::Es256, "never-published-1");
    assert_denied(
        &r,
        "unknown_key",
        &format!("kid unknown after the refetch (took {took:?})"),
    );
    assert_eq!(s.server.count(JWKS_PATH), 2, "{}", s.diagnostics());
    assert_eq!(s.counter("tokenbind.jwks.refetch_unknown_kid"), 1);
    // Within the interval: decided at once, no fetch.
    let (r, _) = s.call_with_kid(&s.issuer, Alg::EdDsa, "never-published-2");
    assert_denied(&r, "unknown_key", "second unknown kid within the interval");
    assert_eq!(s.server.count(JWKS_PATH), 2, "{}", s.diagnostics());
    assert_eq!(s.counter("tokenbind.jwks.refetch_unknown_kid"), 1);

    // After the interval the next unknown kid may refetch again.
    std::thread::sleep(Duration::from_millis(5100));
    let (r, _) = s.call_with_kid(&s.issuer, Alg::Es256, "never-published-3");
    assert_denied(&r, "unknown_key", "unknown kid after the interval");
    assert_eq!(s.server.count(JWKS_PATH), 3, "{}", s.diagnostics());
    assert_eq!(s.counter("tokenbind.jwks.refetch_unknown_kid"), 2);
    assert_eq!(s.counter("tokenbind.jwks.fetch_success"), 3);
    assert_eq!(s.counter("tokenbind.denied.unknown_key"), 3);
    // Known kids were never affected.
    let (r, _) = s.call(&s.issuer, Alg::EdDsa);
    assert_allowed(&r, "known kid");
}

#[test]
fn a_stopped_issuer_keeps_the_last_good_keys() {
    // cache_duration 2 s, no jitter: a refresh every 1 s (90 %, rounded down).
    let issuer = TokenIssuer::new(ISSUER);
    let server = JwksServer::serving(issuer.jwks());
    let s =
        Setup::new(json!({"cache_duration_seconds": 2, "timeout_ms": 1000})).start(issuer, server);
    s.wait_counter("tokenbind.jwks.fetch_success", 1, BACKGROUND);
    let (r, _) = s.call(&s.issuer, Alg::Es256);
    assert_allowed(&r, "before the issuer stops");
    // Refreshes happen on schedule while the issuer is up.
    s.server
        .wait_for(JWKS_PATH, 2, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("no refresh: {e}\n{}", s.diagnostics()));

    s.server.stop();
    let failed_before = s.counter("tokenbind.jwks.fetch_failed");
    let failed = s.wait_counter("tokenbind.jwks.fetch_failed", failed_before + 2, BACKGROUND);
    for alg in Alg::ALL {
        let (r, took) = s.call(&s.issuer, alg);
        assert_allowed(
            &r,
            &format!(
                "{} token with the last good keys, issuer down, {failed} failed fetches (took {took:?})",
                alg.name()
            ),
        );
    }
    assert_eq!(s.keys_gauge(), Some(2), "{}", s.diagnostics());
    s.report("stopped issuer");

    // The issuer comes back: the next retry (back-off 1, 2, 4 s ...) succeeds.
    s.server
        .resume()
        .unwrap_or_else(|e| panic!("JWKS server cannot listen again: {e}"));
    let ok_before = s.counter("tokenbind.jwks.fetch_success");
    s.wait_counter("tokenbind.jwks.fetch_success", ok_before + 1, BACKGROUND);
    let (r, _) = s.call(&s.issuer, Alg::EdDsa);
    assert_allowed(&r, "after the issuer is back");
}

#[test]
fn cache_control_max_age_shortens_the_refresh() {
    // cache_duration 600 s, but the issuer says max-age=2: refresh after 1 s.
    let issuer = TokenIssuer::new(ISSUER);
    let server = JwksServer::serving(issuer.jwks());
    server.set_cache_control(Some("public, max-age=2"));
    let s = Setup::new(json!({"cache_duration_seconds": 600})).start(issuer, server);
    s.server
        .wait_for(JWKS_PATH, 3, BACKGROUND)
        .unwrap_or_else(|e| {
            panic!(
                "max-age did not shorten the refresh: {e}\n{}",
                s.diagnostics()
            )
        });
    let (r, _) = s.call(&s.issuer, Alg::Es256);
    assert_allowed(&r, "after max-age refreshes");
    assert_eq!(
        s.counter("tokenbind.jwks.fetch_failed"),
        0,
        "{}",
        s.diagnostics()
    );
}

/// An issuer that misbehaves from the start: Envoy stays up, a request with
/// no keys available is answered `jwks_unavailable` within about
/// `timeout_ms`, every attempt counts as `fetch_failed`, and once the issuer
/// behaves the keys arrive on a retry.
fn misbehaving_issuer(behaviour: Behaviour, what: &str) {
    misbehaving_issuer_then(behaviour, Behaviour::Serve, what);
}

/// [`misbehaving_issuer`], recovering to `recovery` (which must serve the keys).
fn misbehaving_issuer_then(behaviour: Behaviour, recovery: Behaviour, what: &str) {
    const TIMEOUT_MS: u64 = 500;
    let issuer = TokenIssuer::new(ISSUER);
    // The keys are there: only the behaviour keeps them from the filter.
    let server = JwksServer::serving(issuer.jwks());
    server.set_behaviour(behaviour);
    let mut s = Setup::new(json!({"timeout_ms": TIMEOUT_MS})).start(issuer, server);
    s.server
        .wait_for(JWKS_PATH, 1, BACKGROUND)
        .unwrap_or_else(|e| panic!("{what}: no fetch attempt: {e}\n{}", s.diagnostics()));
    s.wait_counter("tokenbind.jwks.fetch_failed", 1, BACKGROUND);

    let bound = Duration::from_millis(TIMEOUT_MS) + SLACK;
    let mut times = Vec::new();
    for alg in [Alg::Es256, Alg::EdDsa, Alg::Es256] {
        let (r, took) = s.call(&s.issuer, alg);
        assert_jwks_unavailable(&r, &format!("{what}: request without keys (took {took:?})"));
        assert!(
            took < bound,
            "{what}: a request was held {took:?} (> {bound:?})\n{}",
            s.diagnostics()
        );
        times.push(took);
    }
    eprintln!("{what}: jwks_unavailable after {times:?}");
    s.report(what);
    assert_eq!(s.counter("tokenbind.denied.jwks_unavailable"), 3);
    assert_eq!(
        s.counter("tokenbind.jwks.fetch_success"),
        0,
        "{}",
        s.diagnostics()
    );
    assert_eq!(s.keys_gauge().unwrap_or(0), 0, "{}", s.diagnostics());
    s.assert_healthy(what);

    // The issuer recovers: a retry fetches the keys.
    s.server.set_behaviour(recovery);
    s.wait_counter("tokenbind.jwks.fetch_success", 1, Duration::from_secs(40));
    let (r, _) = s.call(&s.issuer, Alg::EdDsa);
    assert_allowed(&r, &format!("{what}: after the issuer recovered"));
    assert_eq!(s.keys_gauge(), Some(2), "{}", s.diagnostics());
    s.assert_healthy(&format!("{what}, recovered"));
}

#[test]
fn issuer_answering_500() {
    misbehaving_issuer(Behaviour::Status(500), "500");
}

#[test]
fn issuer_answering_garbage() {
    misbehaving_issuer(Behaviour::Garbage, "garbage body");
}

#[test]
fn issuer_answering_10_mb() {
    // Recovery with a (padded, valid) JWKS of 200 KB: under max_body_bytes
    // (256 KiB), so the limit, not the padding, is what refused 10 MB.
    misbehaving_issuer_then(
        Behaviour::Oversized(TEN_MB),
        Behaviour::Oversized(200 * 1024),
        "10 MB body",
    );
}

#[test]
fn issuer_hanging_past_timeout() {
    misbehaving_issuer(Behaviour::Hang, "hanging issuer");
}

#[test]
fn two_workers_fetch_once() {
    let issuer = TokenIssuer::new(ISSUER);
    let server = JwksServer::serving(issuer.jwks());
    let s = Setup::new(json!({})).concurrency(2).start(issuer, server);
    s.server
        .wait_for(JWKS_PATH, 1, BACKGROUND)
        .unwrap_or_else(|e| panic!("no fetch: {e}\n{}", s.diagnostics()));
    s.wait_counter("tokenbind.jwks.fetch_success", 1, BACKGROUND);
    // Give the second worker every chance to fetch too.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        s.server.count(JWKS_PATH),
        1,
        "one fetch per sidecar, not per worker\n{}",
        s.diagnostics()
    );
    // Every worker installed the shared keys: connections land on either.
    for i in 0..8 {
        let alg = Alg::ALL[i % 2];
        let (r, _) = s.call(&s.issuer, alg);
        assert_allowed(&r, &format!("request {i} on some worker"));
    }
    assert_eq!(s.server.count(JWKS_PATH), 1, "{}", s.diagnostics());
    assert_eq!(s.counter("tokenbind.jwks.fetch_success"), 1);
    assert_eq!(s.counter("tokenbind.allowed"), 8);
    assert_eq!(s.keys_gauge(), Some(2), "{}", s.diagnostics());
}

#[test]
fn discovery_finds_the_jwks_uri() {
    const KEYS_PATH: &str = "/oauth2/v1/keys";
    let issuer = TokenIssuer::new(ISSUER);
    let server = JwksServer::start();
    server.set_discovery(discovery_document(
        ISSUER,
        &format!("https://keys.issuer.example{KEYS_PATH}"),
    ));
    server.set_document(KEYS_PATH, issuer.jwks());
    // No uri: it defaults to the provider issuer, https://issuer.example.
    let s = Setup::new(json!({"discovery": true, "uri": null})).start(issuer, server);
    s.wait_counter("tokenbind.jwks.fetch_success", 1, BACKGROUND);
    for alg in Alg::ALL {
        let (r, _) = s.call(&s.issuer, alg);
        assert_allowed(&r, &format!("{} token, keys via discovery", alg.name()));
    }
    let requests = s.server.requests();
    let seen: Vec<(&str, Option<&str>)> = requests
        .iter()
        .map(|r| (r.path.as_str(), r.host.as_deref()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (DISCOVERY_PATH, Some("issuer.example")),
            (KEYS_PATH, Some("keys.issuer.example")),
        ],
        "discovery first, then jwks_uri (its own authority)\n{}",
        s.diagnostics()
    );
    assert_eq!(s.server.count(JWKS_PATH), 0);
    assert_eq!(s.counter("tokenbind.jwks.fetch_success"), 1);
    assert_eq!(s.keys_gauge(), Some(2), "{}", s.diagnostics());
}

#[test]
fn discovery_document_of_another_issuer_is_refused() {
    let issuer = TokenIssuer::new(ISSUER);
    let server = JwksServer::serving(issuer.jwks());
    server.set_discovery(discovery_document(
        "https://evil.example",
        &format!("https://issuer.example{JWKS_PATH}"),
    ));
    let s = Setup::new(json!({"discovery": true, "uri": null, "timeout_ms": 500}))
        .start(issuer, server);
    s.wait_counter("tokenbind.jwks.fetch_failed", 1, BACKGROUND);
    let (r, took) = s.call(&s.issuer, Alg::Es256);
    assert_jwks_unavailable(&r, &format!("discovery issuer mismatch (took {took:?})"));
    assert_eq!(
        s.server.count(JWKS_PATH),
        0,
        "the jwks_uri of a foreign issuer's document must not be fetched\n{}",
        s.diagnostics()
    );
    assert_eq!(s.counter("tokenbind.jwks.fetch_success"), 0);
}

#[test]
fn monitor_mode_without_keys_lets_requests_through() {
    const TIMEOUT_MS: u64 = 500;
    let issuer = TokenIssuer::new(ISSUER);
    let server = JwksServer::serving(issuer.jwks());
    server.set_behaviour(Behaviour::Hang);
    let s = Setup::new(json!({"timeout_ms": TIMEOUT_MS}))
        .monitor()
        .start(issuer, server);
    s.server
        .wait_for(JWKS_PATH, 1, BACKGROUND)
        .unwrap_or_else(|e| panic!("no fetch attempt: {e}\n{}", s.diagnostics()));
    for alg in Alg::ALL {
        let (r, took) = s.call(&s.issuer, alg);
        assert_allowed(
            &r,
            &format!(
                "{} token, no keys, monitor mode (took {took:?})",
                alg.name()
            ),
        );
        assert!(
            took < Duration::from_millis(TIMEOUT_MS) + SLACK,
            "held {took:?}\n{}",
            s.diagnostics()
        );
    }
    assert_eq!(
        s.counter("tokenbind.monitor.would_deny.jwks_unavailable"),
        2,
        "{}",
        s.diagnostics()
    );
    assert_eq!(s.counter("tokenbind.denied.jwks_unavailable"), 0);
    assert_eq!(s.counter("tokenbind.allowed"), 0);
}
