//! tokenbind east-west demo: the mesh shape the filter exists for.
//!
//! Three workloads on loopback, each behind its own sidecar Envoy with its
//! own SPIFFE identity (all certificates from one mesh CA):
//!
//! ```text
//!  frontend ──plaintext──▶ frontend sidecar ──mTLS as frontend──┐
//!                          (outbound)                           ▼
//!                                                   orders sidecar (inbound,  ──▶ orders
//!                                                   tokenbind, enforce mode)      (app)
//!                                                               ▲
//!  batch ─────plaintext──▶ batch sidecar ─────mTLS as batch─────┘
//!                          (outbound)
//! ```
//!
//! 1. `frontend` calls `orders` with its own token          -> 200
//! 2. `batch`, compromised, replays frontend's stolen token  -> 401 spiffe_mismatch,
//!    and the orders application never sees the request
//! 3. `batch` with a token issued to batch                   -> 200 (binding holds;
//!    whether batch may read orders is an authorization policy's business)
//! 4. `batch` skips its sidecar and connects to orders' sidecar without a
//!    mesh certificate                                       -> TLS handshake refused
//!
//! Exits non-zero if any outcome is not the expected one. Token contents are
//! never printed, only a 12-hex-digit SHA-256 tag.
//!
//! Run: `cargo run -p tokenbind-integration --bin east-west`
//! (needs the Envoy binary and the filter module; see scripts/test.sh).

mod orders;

use std::process::ExitCode;
use tokenbind_integration::story::{self, heading, reason_of, show, Story};

use serde_json::json;
use tokenbind_integration::client::{plain_get, Client, ClientError, Response};
use tokenbind_integration::envoy::{
    mtls_cluster, static_cluster, wasm_stat_name, Bootstrap, Envoy,
};
use tokenbind_integration::pki::{Leaf, Pki};
use tokenbind_integration::tokens::{short_hash, Alg, TokenIssuer};
use tokenbind_integration::{
    envoy_bin, plugin_config, require_envoy, require_wasm, ISSUER, TRUST_DOMAIN,
};

use orders::OrdersServer;

/// orders' SPIFFE ID: its inbound sidecar serves orders' own X.509-SVID.
const ORDERS_ID: &str = "spiffe://cluster.local/ns/shop/sa/orders";
const FRONTEND_ID: &str = "spiffe://cluster.local/ns/default/sa/frontend";
const BATCH_ID: &str = "spiffe://cluster.local/ns/default/sa/batch";
const INBOUND: &str = "inbound";
const OUTBOUND: &str = "outbound";
const PATH: &str = "/orders";

/// One workload's outbound sidecar: a plaintext loopback listener the
/// workload calls, routing to orders' inbound sidecar over mTLS that
/// presents the workload's own certificate and accepts only orders' SPIFFE
/// ID on the other end.
struct Outbound {
    workload: Leaf,
    envoy: Envoy,
}

fn start_outbound(
    pki: &Pki,
    workload: &Leaf,
    orders_sidecar_port: u16,
) -> Result<Outbound, String> {
    let bootstrap = Bootstrap::new(pki)
        .listener_name(OUTBOUND)
        .plaintext()
        .route_to_cluster("orders")
        .cluster(mtls_cluster(
            "orders",
            orders_sidecar_port,
            workload,
            pki.ca_pem(),
            ORDERS_ID,
        ))
        .build();
    let envoy = Envoy::start(&bootstrap)
        .map_err(|e| format!("{}'s sidecar did not start: {e}", workload.name))?;
    println!(
        "   {:<8} sidecar  pid {:<7} outbound 127.0.0.1:{:<5} (plaintext, loopback) -> orders sidecar over mTLS as {}",
        workload.name,
        envoy.pid(),
        envoy.port(OUTBOUND),
        workload.id()
    );
    Ok(Outbound {
        workload: workload.clone(),
        envoy,
    })
}

/// `via`'s workload calls orders through its own outbound sidecar with
/// `token` (issued to `whose`).
fn call(via: &Outbound, token: &str, whose: &str) -> Result<Response, String> {
    println!(
        "   {} -> {} sidecar (127.0.0.1:{}) -> [mTLS, client cert {}] -> orders sidecar -> orders",
        via.workload.name,
        via.workload.name,
        via.envoy.port(OUTBOUND),
        via.workload.id(),
    );
    println!(
        "   GET {PATH}   Authorization: Bearer <token {} issued to {whose}>",
        short_hash(token)
    );
    let auth = format!("Bearer {token}");
    plain_get(
        via.envoy.port(OUTBOUND),
        PATH,
        &[("authorization", auth.as_str())],
    )
    .map_err(|e| {
        format!(
            "request through {}'s sidecar failed: {e}",
            via.workload.name
        )
    })
}

fn counter_line(envoy: &Envoy, metric: &str) -> u64 {
    let v = envoy.counter(metric);
    println!("   orders sidecar /stats: {} = {v}", wasm_stat_name(metric));
    v
}

fn run(demo: &mut Story) -> Result<(), String> {
    println!("tokenbind east-west demo: a stolen token is useless to another workload in the mesh");
    println!("Envoy: {}", envoy_bin().display());
    require_envoy();
    let wasm = require_wasm();
    println!("Filter: {}", wasm.display());

    heading("Identities");
    let pki = Pki::new();
    let orders_leaf = pki.workload("orders", ORDERS_ID);
    let frontend = pki.workload("frontend", FRONTEND_ID);
    let batch = pki.workload("batch", BATCH_ID);
    println!("   One mesh CA issued an X.509-SVID (SPIFFE ID in the URI SAN) to each workload:");
    for (name, leaf) in [
        ("orders", &orders_leaf),
        ("frontend", &frontend),
        ("batch", &batch),
    ] {
        println!(
            "     {name:<8} {:<46} (cert x5t#S256 {}...)",
            leaf.id(),
            &leaf.x5t_s256()[..12]
        );
    }
    let issuer = TokenIssuer::new(ISSUER);
    let frontend_token = issuer.sign(Alg::Es256, &issuer.claims(FRONTEND_ID, ORDERS_ID));
    let batch_token = issuer.sign(Alg::Es256, &issuer.claims(BATCH_ID, ORDERS_ID));
    println!("   Token issuer {ISSUER} issued two access tokens for orders (aud={ORDERS_ID}):");
    println!(
        "     token {}  sub={FRONTEND_ID}  (frontend's)",
        short_hash(&frontend_token)
    );
    println!(
        "     token {}  sub={BATCH_ID}  (batch's)",
        short_hash(&batch_token)
    );
    println!("   (token contents are never printed; only a short SHA-256 tag)");

    heading("Workloads and sidecars (all on 127.0.0.1, kernel-chosen ports)");
    let app = OrdersServer::start().map_err(|e| format!("orders app: {e}"))?;
    println!(
        "   orders   app      127.0.0.1:{:<5} answers `orders: 3 items for <caller>`",
        app.port()
    );
    let mut cfg = plugin_config(&issuer);
    cfg["mode"] = json!("enforce");
    cfg["providers"][0]["audiences"] = json!([ORDERS_ID]);
    cfg["spiffe"] = json!({"claim": "sub", "trust_domains": [TRUST_DOMAIN]});
    let inbound = Envoy::start(
        &Bootstrap::new(&pki)
            .listener_name(INBOUND)
            .serving_identity(&orders_leaf)
            .wasm_filter(&wasm, &cfg)
            .route_to_cluster("orders_app")
            .cluster(static_cluster("orders_app", app.port()))
            .forward_client_cert_uri()
            .build(),
    )
    .map_err(|e| format!("orders' sidecar did not start: {e}"))?;
    println!(
        "   orders   sidecar  pid {:<7} inbound 127.0.0.1:{:<5} mTLS as {ORDERS_ID}, client certificate required;",
        inbound.pid(),
        inbound.port(INBOUND)
    );
    println!("                     tokenbind in ENFORCE mode: the token's sub must equal the caller's SPIFFE ID");
    let front_sidecar = start_outbound(&pki, &frontend, inbound.port(INBOUND))?;
    let batch_sidecar = start_outbound(&pki, &batch, inbound.port(INBOUND))?;

    heading("Step 1: frontend calls orders with its own token");
    let before = inbound.snapshot();
    let seen_before = app.seen().len();
    let r = call(&front_sidecar, &frontend_token, "frontend")?;
    show(&r, &["www-authenticate"]);
    demo.check(
        r.status == 200,
        "frontend's token over frontend's mTLS identity is allowed (200)",
    );
    let seen = app.seen();
    let caller = seen.get(seen_before).and_then(|s| s.caller.clone());
    println!(
        "   orders app saw: {}",
        seen.get(seen_before)
            .map(|s| format!(
                "{} {} from {}",
                s.method,
                s.path,
                s.caller.as_deref().unwrap_or("?")
            ))
            .unwrap_or_else(|| "nothing".to_string())
    );
    demo.check(
        seen.len() == seen_before + 1 && caller.as_deref() == Some(FRONTEND_ID),
        "the request reached orders, and orders' sidecar vouched for the caller frontend",
    );
    let d = inbound.snapshot().since(&before);
    counter_line(&inbound, "tokenbind.allowed");
    demo.check(d.get("tokenbind.allowed") == 1, "counted as allowed");

    heading("Step 2: batch is compromised and replays frontend's stolen token");
    println!("   batch is a genuine mesh workload: its sidecar presents a valid certificate from");
    println!(
        "   the mesh CA, so mTLS alone lets it reach orders. Only the token binding stops it."
    );
    let before = inbound.snapshot();
    let seen_before = app.seen().len();
    let r = call(&batch_sidecar, &frontend_token, "frontend")?;
    show(&r, &["www-authenticate"]);
    demo.check(r.status == 401, "the replay is rejected with 401");
    demo.check(
        reason_of(&r).as_deref() == Some("spiffe_mismatch"),
        "reason spiffe_mismatch: token sub (frontend) != caller's SPIFFE ID (batch)",
    );
    let challenge = r.header("www-authenticate").unwrap_or_default();
    demo.check(
        challenge.starts_with(r#"Bearer realm="tokenbind", error="invalid_token""#),
        "WWW-Authenticate carries a Bearer invalid_token challenge",
    );
    demo.check(
        app.seen().len() == seen_before,
        "the orders application never saw the request",
    );
    let d = inbound.snapshot().since(&before);
    counter_line(&inbound, "tokenbind.denied.spiffe_mismatch");
    demo.check(
        d.get("tokenbind.denied.spiffe_mismatch") == 1 && d.get("tokenbind.allowed") == 0,
        "counted as denied.spiffe_mismatch, not allowed",
    );
    let denial_logged = inbound.log().lines().any(|l| {
        l.contains("reason=spiffe_mismatch")
            && l.contains(BATCH_ID)
            && l.contains(&short_hash(&frontend_token))
    });
    demo.check(
        denial_logged,
        "orders' sidecar logged the denial with the peer (batch) and the token's tag",
    );

    heading("Step 3: batch calls with a token issued to batch");
    println!(
        "   Binding is not authorization: a token bound to batch is fine when batch presents it."
    );
    println!("   Whether batch may read orders at all is an authorization policy's decision.");
    let before = inbound.snapshot();
    let seen_before = app.seen().len();
    let r = call(&batch_sidecar, &batch_token, "batch")?;
    show(&r, &["www-authenticate"]);
    let caller = app.seen().get(seen_before).and_then(|s| s.caller.clone());
    demo.check(
        r.status == 200 && caller.as_deref() == Some(BATCH_ID),
        "batch's own token over batch's identity is allowed (200), orders saw caller batch",
    );
    let d = inbound.snapshot().since(&before);
    demo.check(d.get("tokenbind.allowed") == 1, "counted as allowed");

    heading(
        "Step 4: batch skips its sidecar and calls orders' sidecar directly, without a certificate",
    );
    println!(
        "   batch -> orders sidecar 127.0.0.1:{} directly, TLS without a client certificate",
        inbound.port(INBOUND)
    );
    let seen_before = app.seen().len();
    let auth = format!("Bearer {frontend_token}");
    let result = Client::new(pki.ca_pem(), None).get(
        inbound.port(INBOUND),
        PATH,
        &[("authorization", auth.as_str())],
    );
    match &result {
        Ok(r) => show(r, &["www-authenticate"]),
        Err(e) => println!("   <- no HTTP response: {e}"),
    }
    // TLS 1.3: the server's "certificate required" alert arrives on the
    // client's first read.
    demo.check(
        matches!(&result, Err(ClientError::Tls(m)) if m.contains("CertificateRequired"))
            && app.seen().len() == seen_before,
        "no mesh certificate, no connection: orders' sidecar refuses the handshake (certificate required)",
    );

    heading("Counters on orders' sidecar (GET /stats)");
    for metric in [
        "tokenbind.allowed",
        "tokenbind.denied.spiffe_mismatch",
        "tokenbind.monitor.would_deny.spiffe_mismatch",
    ] {
        println!(
            "   {:<56} {}",
            wasm_stat_name(metric),
            inbound.counter(metric)
        );
    }
    demo.check(
        inbound.counter("tokenbind.allowed") == 2
            && inbound.counter("tokenbind.denied.spiffe_mismatch") == 1,
        "2 allowed (frontend, batch with its own token), 1 denied (the replay)",
    );

    heading("No token leaks");
    let logs = [
        ("orders sidecar", inbound.log()),
        ("frontend sidecar", front_sidecar.envoy.log()),
        ("batch sidecar", batch_sidecar.envoy.log()),
    ];
    for (name, log) in &logs {
        let leaked = [&frontend_token, &batch_token].iter().any(|t| {
            log.contains(t.as_str()) || t.split('.').nth(2).is_some_and(|sig| log.contains(sig))
        });
        demo.check(
            !leaked,
            &format!("no token (or signature) in the {name}'s log"),
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    story::main(run)
}
