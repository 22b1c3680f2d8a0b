//! tokenbind demo: a stolen bearer token is useless to another workload.
//!
//! Runs a real Envoy with the tokenbind Wasm filter and walks through:
//!   1. `client` calls with its own token             -> 200 (allowed)
//!   2. `attacker` replays the stolen token over its
//!      own, perfectly valid mesh mTLS identity       -> 401 spiffe_mismatch
//!   3. the same replay against Envoy in monitor mode -> 200, but counted as
//!      tokenbind.monitor.would_deny.spiffe_mismatch
//!
//! Exits non-zero if any step's outcome is not the expected one.
//!
//! Run: `cargo run -p tokenbind-integration --bin demo`
//! (needs the Envoy binary and the filter module; see scripts/test.sh).

use std::process::ExitCode;
use tokenbind_integration::story::{self, heading, reason_of, show, Story};

use serde_json::json;
use tokenbind_integration::client::Response;
use tokenbind_integration::envoy::{Bootstrap, Envoy};
use tokenbind_integration::pki::Pki;
use tokenbind_integration::tokens::{short_hash, Alg, TokenIssuer};
use tokenbind_integration::{
    envoy_bin, plugin_config, require_envoy, require_wasm, AUDIENCE, CLIENT_ID, ISSUER, LISTENER,
    UPSTREAM_BODY,
};

fn start(pki: &Pki, issuer: &TokenIssuer, mode: &str) -> Result<Envoy, String> {
    let mut cfg = plugin_config(issuer);
    cfg["mode"] = json!(mode);
    let bootstrap = Bootstrap::new(pki)
        .wasm_filter(&require_wasm(), &cfg)
        .build();
    let envoy = Envoy::start(&bootstrap).map_err(|e| e.to_string())?;
    println!(
        "   Envoy pid {} is LIVE; mTLS listener on 127.0.0.1:{} (client certificate required), mode = {mode}",
        envoy.pid(),
        envoy.port(LISTENER)
    );
    Ok(envoy)
}

fn call(
    pki: &Pki,
    envoy: &Envoy,
    who: &tokenbind_integration::pki::Leaf,
    token: &str,
) -> Result<Response, String> {
    println!(
        "   -> GET /api as {} (TLS client cert URI SAN {}), Authorization: Bearer <token {}>",
        who.name,
        who.id(),
        short_hash(token)
    );
    let client = tokenbind_integration::client::Client::new(pki.ca_pem(), Some(who));
    let auth = format!("Bearer {token}");
    client
        .get(envoy.port(LISTENER), "/api", &[("authorization", &auth)])
        .map_err(|e| format!("request failed: {e}"))
}

fn run(demo: &mut Story) -> Result<(), String> {
    println!("tokenbind demo: bearer tokens bound to the caller's mTLS identity");
    println!("Envoy: {}", envoy_bin().display());
    require_envoy();
    println!("Filter: {}", require_wasm().display());

    heading("Setup");
    let pki = Pki::new();
    println!("   Generated a mesh CA and SPIFFE workload certificates:");
    for leaf in [&pki.server, &pki.client, &pki.attacker] {
        println!(
            "     {:<8} {}  (x5t#S256 {}...)",
            leaf.name,
            leaf.id(),
            &leaf.x5t_s256()[..12]
        );
    }
    let issuer = TokenIssuer::new(ISSUER);
    println!(
        "   Token issuer {ISSUER} with keys {} (ES256) and {} (EdDSA)",
        issuer.kid(Alg::Es256),
        issuer.kid(Alg::EdDsa)
    );
    let token = issuer.sign(Alg::Es256, &issuer.claims(CLIENT_ID, AUDIENCE));
    println!(
        "   Issued token {} to client: iss={ISSUER}, sub={CLIENT_ID}, aud={AUDIENCE}, valid 5 min",
        short_hash(&token)
    );
    println!("   (token contents are never printed; only a short SHA-256 label)");

    heading("Starting Envoy with tokenbind in ENFORCE mode");
    let envoy = start(&pki, &issuer, "enforce")?;

    heading("Step 1: client calls with its own token");
    let r = call(&pki, &envoy, &pki.client, &token)?;
    show(&r, &["www-authenticate", "content-type"]);
    demo.check(
        r.status == 200 && r.body_str() == UPSTREAM_BODY,
        "client's own token over client's mTLS identity is allowed (200, reached upstream)",
    );

    heading("Step 2: the token is stolen and replayed by attacker");
    println!("   attacker is a legitimate mesh workload: its certificate is valid and trusted,");
    println!("   so mTLS alone lets it in. Only the token binding stops the replay.");
    let before = envoy.snapshot();
    let r = call(&pki, &envoy, &pki.attacker, &token)?;
    show(&r, &["www-authenticate", "content-type"]);
    demo.check(r.status == 401, "replay is rejected with 401");
    demo.check(
        reason_of(&r).as_deref() == Some("spiffe_mismatch"),
        "reason is spiffe_mismatch (token sub != caller's SPIFFE ID)",
    );
    let challenge = r.header("www-authenticate").unwrap_or_default();
    demo.check(
        challenge.starts_with(r#"Bearer realm="tokenbind", error="invalid_token""#),
        "WWW-Authenticate carries a Bearer invalid_token challenge",
    );
    let d = envoy.snapshot().since(&before);
    println!(
        "   /stats: tokenbind.denied.spiffe_mismatch +{}",
        d.get("tokenbind.denied.spiffe_mismatch")
    );
    demo.check(
        d.get("tokenbind.denied.spiffe_mismatch") == 1,
        "the denial is counted",
    );
    let leaked = r.to_string().contains(&token) || envoy.log().contains(&token);
    demo.check(
        !leaked,
        "the token appears neither in the response nor in Envoy's log",
    );
    drop(envoy);

    heading("Step 3: restart Envoy in MONITOR mode and replay again");
    let envoy = start(&pki, &issuer, "monitor")?;
    let before = envoy.snapshot();
    let r = call(&pki, &envoy, &pki.attacker, &token)?;
    show(&r, &["www-authenticate", "content-type"]);
    demo.check(
        r.status == 200 && r.body_str() == UPSTREAM_BODY,
        "monitor mode does not block (200)",
    );
    let d = envoy.snapshot().since(&before);
    let would = envoy.counter("tokenbind.monitor.would_deny.spiffe_mismatch");
    println!(
        "   /stats: {} = {would}",
        tokenbind_integration::envoy::wasm_stat_name(
            "tokenbind.monitor.would_deny.spiffe_mismatch"
        )
    );
    demo.check(
        d.get("tokenbind.monitor.would_deny.spiffe_mismatch") == 1,
        "the would-be denial is counted as tokenbind.monitor.would_deny.spiffe_mismatch",
    );
    demo.check(
        d.get("tokenbind.denied.spiffe_mismatch") == 0,
        "nothing is counted as an actual denial",
    );
    Ok(())
}

fn main() -> ExitCode {
    story::main(run)
}
