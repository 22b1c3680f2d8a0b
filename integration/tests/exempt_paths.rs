//! `exempt_paths` cannot be tricked (issue 10): a real Envoy in enforce mode with
//! `exempt_paths: ["/healthz", {"exact": "/ready"}, {"prefix": "/livez", "methods": ["GET"]}]`,
//! a real upstream that logs every request it receives, and no token.
//!
//! Every bypass attempt from the security review (and its variants) is sent twice:
//! - to an Envoy WITHOUT path normalisation, so the filter sees `:path` exactly as the client
//!   sent it: the filter alone must answer 401 (defence in depth);
//! - to an Envoy with the recommended HTTP connection manager settings (`normalize_path`,
//!   `merge_slashes`, `path_with_escaped_slashes_action: REJECT_REQUEST`): Envoy refuses escaped
//!   slashes with 400 before any filter runs, and normalises the rest, which the filter then
//!   refuses with 401.
//!
//! In both, the upstream never receives any of them, while the legitimate exempt requests
//! pass without a token, reach the upstream and are counted as `tokenbind.exempt`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::json;
use std::sync::{Mutex, MutexGuard};
use tokenbind_integration::assertions::assert_denied;
use tokenbind_integration::client::{Client, Response};
use tokenbind_integration::envoy::{static_cluster, Bootstrap, Envoy};
use tokenbind_integration::jwks_server::{Behaviour, JwksServer};
use tokenbind_integration::pki::Pki;
use tokenbind_integration::tokens::TokenIssuer;
use tokenbind_integration::{plugin_config, require_wasm, Shared, ISSUER, LISTENER};

/// Status the upstream answers every request with, and a body only it sends.
const UPSTREAM_STATUS: u16 = 200;
const UPSTREAM_BODY: &str = "status 200 from the JWKS test server";

struct Stack {
    pki: Pki,
    upstream: JwksServer,
    envoy: Envoy,
    /// Tests sharing a stack take turns: they assert on counter and upstream-log deltas.
    turn: Mutex<()>,
}

impl Stack {
    fn start(normalize: bool) -> Stack {
        let wasm = require_wasm();
        let pki = Pki::new();
        let issuer = TokenIssuer::new(ISSUER);
        let upstream = JwksServer::start();
        upstream.set_behaviour(Behaviour::Status(UPSTREAM_STATUS));
        let mut cfg = plugin_config(&issuer);
        cfg["exempt_paths"] = json!([
            "/healthz",
            {"exact": "/ready"},
            {"prefix": "/livez", "methods": ["GET"]}
        ]);
        let mut bootstrap = Bootstrap::new(&pki)
            .route_to_cluster("backend")
            .cluster(static_cluster("backend", upstream.port()))
            .wasm_filter(&wasm, &cfg);
        if !normalize {
            bootstrap = bootstrap.without_path_normalization();
        }
        let envoy = Envoy::start(&bootstrap.build())
            .unwrap_or_else(|e| panic!("Envoy failed to start: {e}"));
        Stack {
            pki,
            upstream,
            envoy,
            turn: Mutex::new(()),
        }
    }

    fn turn(&self) -> MutexGuard<'_, ()> {
        self.turn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `method target` without a token; the request line carries `target` byte for byte.
    fn send(&self, method: &str, target: &str) -> Response {
        Client::new(self.pki.ca_pem(), Some(&self.pki.client))
            .request(self.envoy.port(LISTENER), method, target, &[], b"")
            .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
    }
}

static RAW: Shared<Stack> = Shared::new();
static NORMALIZED: Shared<Stack> = Shared::new();

fn raw() -> std::sync::Arc<Stack> {
    RAW.get_or_init(|| Stack::start(false))
}

fn normalized() -> std::sync::Arc<Stack> {
    NORMALIZED.get_or_init(|| Stack::start(true))
}

/// The security review's bypasses and their variants. Without normalisation in Envoy, each of
/// these reaches the filter verbatim.
const BYPASSES: &[&str] = &[
    "/healthzfoo",
    "/healthz-admin/secrets",
    "/healthz/../api/admin",
    "/healthz%2F..%2Fapi",
    "/healthz%2f..%2fapi",
    "/healthz%5C..%5Capi",
    "/healthz\\..\\api",
    "//healthz/../api",
    "/%68ealthz/../api",
    "/healthz/%2e%2e/api",
    "/healthz/./../api",
    "/healthz/..;/api",
    "/healthz//../api",
    "/healthz%252F..%252Fapi",
    "/healthz/..?x=/healthz",
    "/ready/../api",
    "/ready/x",
    "/api?/healthz",
];

/// A bypass attempt was refused with `status` and the upstream saw nothing.
#[track_caller]
fn assert_refused(s: &Stack, method: &str, target: &str, status: u16) {
    let before = s.upstream.total();
    let r = s.send(method, target);
    if status == 401 {
        assert_denied(&r, "missing_token", &format!("{method} {target}"));
    } else {
        assert_eq!(r.status, status, "{method} {target}:\n{r}");
    }
    assert_ne!(r.body_str(), UPSTREAM_BODY, "{method} {target}:\n{r}");
    assert_eq!(
        s.upstream.total(),
        before,
        "{method} {target} reached the upstream: {}",
        s.upstream.describe_log()
    );
}

/// An exempt request passed without a token and the upstream received `forwarded`.
#[track_caller]
fn assert_exempt(s: &Stack, method: &str, target: &str, forwarded: &str) {
    let before = s.upstream.total();
    let r = s.send(method, target);
    assert_eq!(r.status, UPSTREAM_STATUS, "{method} {target}:\n{r}");
    assert_eq!(r.body_str(), UPSTREAM_BODY, "{method} {target}:\n{r}");
    let log = s.upstream.requests();
    assert_eq!(log.len(), before + 1, "{}", s.upstream.describe_log());
    let got = log.last().unwrap();
    assert_eq!(
        (got.method.as_str(), got.path.as_str()),
        (method, forwarded),
        "{method} {target}"
    );
}

#[test]
fn without_envoy_normalisation_the_filter_alone_refuses_every_bypass() {
    let s = raw();
    let _turn = s.turn();
    let before = s.envoy.snapshot();
    for target in BYPASSES {
        assert_refused(&s, "GET", target, 401);
    }
    // Method scoping: the GET-only prefix does not exempt other methods.
    assert_refused(&s, "POST", "/livez", 401);
    assert_refused(&s, "DELETE", "/livez/x", 401);
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.denied.missing_token"),
        BYPASSES.len() as u64 + 2,
        "counter deltas: {d}"
    );
    assert_eq!(d.get("tokenbind.exempt"), 0, "counter deltas: {d}");
}

#[test]
fn without_envoy_normalisation_legitimate_exempt_paths_pass() {
    let s = raw();
    let _turn = s.turn();
    let before = s.envoy.snapshot();
    // Envoy forwards the path as sent; the filter matched its normal form.
    let cases = [
        ("GET", "/healthz", "/healthz"),
        ("GET", "/healthz/live", "/healthz/live"),
        ("GET", "/healthz?x=1", "/healthz?x=1"),
        ("GET", "/%68ealthz", "/%68ealthz"),
        ("POST", "/healthz/", "/healthz/"),
        ("GET", "/ready", "/ready"),
        ("GET", "/livez", "/livez"),
        ("GET", "/livez/deep", "/livez/deep"),
    ];
    for (method, target, forwarded) in cases {
        assert_exempt(&s, method, target, forwarded);
    }
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.exempt"),
        cases.len() as u64,
        "counter deltas: {d}"
    );
    assert_eq!(
        d.get("tokenbind.denied.missing_token"),
        0,
        "counter deltas: {d}"
    );
}

#[test]
fn with_envoy_normalisation_bypasses_are_refused_before_or_by_the_filter() {
    let s = normalized();
    let _turn = s.turn();
    let before = s.envoy.snapshot();
    // Envoy refuses an escaped '/' or '\' itself (REJECT_REQUEST): the filter never runs.
    let rejected_by_envoy = [
        "/healthz%2F..%2Fapi",
        "/healthz%2f..%2fapi",
        "/healthz%5C..%5Capi",
    ];
    for target in rejected_by_envoy {
        assert_refused(&s, "GET", target, 400);
    }
    // Envoy normalises `/healthz//../api` to `/healthz/api` (dot segments first, then merged
    // slashes) and forwards that, so it is exempt, consistently: see the next test.
    let normal_and_exempt = ["/healthz//../api"];
    // Everything else reaches the filter normalised (or with what Envoy leaves alone: `..;`,
    // `%25`), and the filter refuses it.
    let mut to_filter = 0u64;
    for target in BYPASSES
        .iter()
        .filter(|t| !rejected_by_envoy.contains(t) && !normal_and_exempt.contains(t))
    {
        assert_refused(&s, "GET", target, 401);
        to_filter += 1;
    }
    assert_refused(&s, "POST", "/livez", 401);
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.denied.missing_token"),
        to_filter + 1,
        "counter deltas: {d}"
    );
    assert_eq!(d.get("tokenbind.exempt"), 0, "counter deltas: {d}");
}

#[test]
fn with_envoy_normalisation_legitimate_exempt_paths_pass_normalised() {
    let s = normalized();
    let _turn = s.turn();
    let before = s.envoy.snapshot();
    // The upstream receives the normalised path: what the filter and the routes matched.
    let cases = [
        ("GET", "/healthz", "/healthz"),
        ("GET", "/healthz/live", "/healthz/live"),
        ("GET", "/healthz?x=1", "/healthz?x=1"),
        ("GET", "/%68ealthz", "/healthz"),
        ("GET", "//healthz//live", "/healthz/live"),
        ("GET", "/api/../healthz", "/healthz"),
        // Ambiguous to the filter alone (`/healthz/api` or `/api`), but Envoy decided: the
        // upstream receives `/healthz/api`, which is under the exempt prefix.
        ("GET", "/healthz//../api", "/healthz/api"),
        // normalize_path turns '\' into '/'.
        ("GET", "/healthz\\live", "/healthz/live"),
        ("GET", "/ready", "/ready"),
        ("GET", "/livez", "/livez"),
    ];
    for (method, target, forwarded) in cases {
        assert_exempt(&s, method, target, forwarded);
    }
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.exempt"),
        cases.len() as u64,
        "counter deltas: {d}"
    );
    assert_eq!(
        d.get("tokenbind.denied.missing_token"),
        0,
        "counter deltas: {d}"
    );
}
