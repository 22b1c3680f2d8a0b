//! The peer must be an X.509-SVID leaf (spiffe/spiffe standards/X509-SVID.md §2, §4.1, §4.3,
//! §5.2) whenever the SPIFFE binding applies: a real Envoy, real mTLS with certificates from
//! the test PKI, each flawed in one way, and a token bound (by `sub`) to the SPIFFE ID Envoy
//! reports as the peer's first URI SAN. Without the leaf check each of these would be allowed.
//!
//! The enforce-mode tests share one Envoy: only `flawed_leaves_are_denied_invalid_peer_svid`
//! produces `invalid_peer_svid` there and only `a_valid_svid_passes_and_its_verdict_is_cached`
//! is allowed, so those counter deltas are exact.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::json;
use std::sync::Arc;
use tokenbind_integration::assertions::{assert_allowed, assert_denied};
use tokenbind_integration::client::{Client, Response};
use tokenbind_integration::envoy::{mtls_cluster, Bootstrap, Envoy};
use tokenbind_integration::pki::{Flaw, Leaf, Pki};
use tokenbind_integration::tokens::{Alg, TokenIssuer};
use tokenbind_integration::{
    plugin_config, require_wasm, Shared, Stack, ATTACKER_ID, AUDIENCE, CLIENT_ID, ISSUER, LISTENER,
    UPSTREAM_BODY,
};

static STANDARD: Shared<Stack> = Shared::new();

fn stack() -> Arc<Stack> {
    STANDARD.get_or_init(|| Stack::with_filter(|_| {}))
}

/// A token whose `sub` is the client's SPIFFE ID: the first URI SAN of every flawed leaf below.
fn client_token(s: &Stack) -> String {
    s.issuer
        .sign(Alg::Es256, &s.issuer.claims(CLIENT_ID, AUDIENCE))
}

fn flawed(pki: &Pki) -> Vec<(&'static str, Leaf)> {
    vec![
        (
            "two URI SANs, the first the token's",
            pki.flawed_workload(
                "two-uris",
                CLIENT_ID,
                Flaw::SecondUriSan(ATTACKER_ID.into()),
            ),
        ),
        (
            "cA: TRUE leaf",
            pki.flawed_workload("ca-flag", CLIENT_ID, Flaw::CaFlag),
        ),
        (
            "keyCertSign leaf",
            pki.flawed_workload("key-cert-sign", CLIENT_ID, Flaw::KeyCertSign),
        ),
    ]
}

#[track_caller]
fn assert_not_upstream(r: &Response, context: &str) {
    assert_ne!(
        r.body_str(),
        UPSTREAM_BODY,
        "{context}: reached the upstream"
    );
}

#[test]
fn flawed_leaves_are_denied_invalid_peer_svid() {
    let s = stack();
    let token = client_token(&s);
    let before = s.envoy.snapshot();
    let leaves = flawed(&s.pki);
    for (what, leaf) in &leaves {
        // Twice: the first request parses the certificate, the second hits the verdict cache.
        for attempt in ["first", "cached"] {
            let r = s.get(leaf, "/api", Some(&token));
            let context = format!("{what} ({attempt})");
            assert_denied(&r, "invalid_peer_svid", &context);
            assert_not_upstream(&r, &context);
            let challenge = r.header("www-authenticate").unwrap_or_default();
            assert!(
                challenge.contains("not a valid X.509-SVID"),
                "{context}: {challenge}"
            );
        }
    }
    // A URI SAN that is not a SPIFFE ID: token bound to that very string is refused as an
    // invalid SPIFFE ID claim first; bound to the client, the leaf is refused.
    let https = s.pki.flawed_workload(
        "https-uri",
        CLIENT_ID,
        Flaw::NonSpiffeUri("https://cluster.local/ns/default/sa/client".into()),
    );
    let r = s.get(&https, "/api", Some(&token));
    assert_denied(&r, "invalid_peer_svid", "non-SPIFFE URI SAN");
    assert_not_upstream(&r, "non-SPIFFE URI SAN");

    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.denied.invalid_peer_svid"),
        2 * leaves.len() as u64 + 1,
        "counter deltas: {d}"
    );
    assert_eq!(d.get("tokenbind.denied.spiffe_mismatch"), 0, "{d}");
    // The denial detail names the rule; the certificate itself is never logged.
    let log = s.envoy.log();
    assert!(
        log.contains("reason=invalid_peer_svid")
            && log.contains("more than one URI SAN (X509-SVID 2, 5.2)")
            && log.contains("cA true (X509-SVID 4.1, 5.2)")
            && log.contains("keyCertSign (X509-SVID 4.3, 5.2)"),
        "deny lines missing from the Envoy log"
    );
    for (_, leaf) in &leaves {
        let body: String = leaf
            .cert_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(!log.contains(&body[..40]), "certificate in the log");
    }
}

#[test]
fn a_valid_svid_passes_and_its_verdict_is_cached() {
    let s = stack();
    let token = client_token(&s);
    let before = s.envoy.snapshot();
    for i in 0..3 {
        let r = s.get(&s.pki.client, "/api", Some(&token));
        assert_allowed(&r, &format!("client SVID, request {i}"));
    }
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(d.get("tokenbind.allowed"), 3, "{d}");
}

#[test]
fn monitor_mode_lets_a_flawed_leaf_through_but_counts_it() {
    let s = Stack::with_filter(|cfg| cfg["mode"] = "monitor".into());
    let token = client_token(&s);
    let leaves = flawed(&s.pki);
    let before = s.envoy.snapshot();
    for (what, leaf) in &leaves {
        let r = s.get(leaf, "/api", Some(&token));
        assert_allowed(&r, &format!("monitor mode, {what}"));
    }
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.monitor.would_deny.invalid_peer_svid"),
        leaves.len() as u64,
        "{d}"
    );
    assert_eq!(d.get("tokenbind.denied.invalid_peer_svid"), 0, "{d}");
}

const GATEWAY_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/ingressgateway";

/// caller --mTLS--> gateway Envoy (XFCC: Hash and URI of the caller) --mTLS--> sidecar with
/// tokenbind trusting the gateway. The client's two URI SANs reach the sidecar as two `URI=`
/// entries of the gateway's XFCC element.
#[test]
fn through_a_trusted_gateway_the_forwarded_client_must_be_an_svid_too() {
    let wasm = require_wasm();
    let pki = Pki::new();
    let issuer = TokenIssuer::new(ISSUER);
    let gateway_leaf = pki.workload("gateway", GATEWAY_ID);
    let mut cfg = plugin_config(&issuer);
    cfg["trusted_forwarders"] = json!([GATEWAY_ID]);
    // Like an Istio sidecar: keep the forwarded XFCC and append what it knows about its peer.
    let mut sidecar_bootstrap = Bootstrap::new(&pki).wasm_filter(&wasm, &cfg).build();
    let hcm = &mut sidecar_bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]
        ["filters"][0]["typed_config"];
    hcm["forward_client_cert_details"] = json!("APPEND_FORWARD");
    hcm["set_current_client_cert_details"] = json!({"uri": true});
    let sidecar = Envoy::start(&sidecar_bootstrap).unwrap_or_else(|e| panic!("sidecar: {e}"));
    let gateway = Envoy::start(
        &Bootstrap::new(&pki)
            .forward_client_cert_uri()
            .route_to_cluster("sidecar")
            .cluster(mtls_cluster(
                "sidecar",
                sidecar.port(LISTENER),
                &gateway_leaf,
                pki.ca_pem(),
                AUDIENCE,
            ))
            .build(),
    )
    .unwrap_or_else(|e| panic!("gateway: {e}"));
    let token = issuer.sign(Alg::Es256, &issuer.claims(CLIENT_ID, AUDIENCE));
    let via_gateway = |caller: &Leaf| {
        let auth = format!("Bearer {token}");
        Client::new(pki.ca_pem(), Some(caller))
            .get(gateway.port(LISTENER), "/api", &[("authorization", &auth)])
            .unwrap_or_else(|e| panic!("GET via gateway as {}: {e}", caller.name))
    };
    let before = sidecar.snapshot();
    assert_allowed(&via_gateway(&pki.client), "client SVID via the gateway");
    let two = pki.flawed_workload(
        "two-uris",
        CLIENT_ID,
        Flaw::SecondUriSan(ATTACKER_ID.into()),
    );
    let r = via_gateway(&two);
    assert_denied(&r, "invalid_peer_svid", "two URI SANs via the gateway");
    assert_not_upstream(&r, "two URI SANs via the gateway");
    let d = sidecar.snapshot().since(&before);
    assert_eq!(d.get("tokenbind.xfcc.used"), 2, "{d}");
    assert_eq!(d.get("tokenbind.allowed"), 1, "{d}");
    assert_eq!(d.get("tokenbind.denied.invalid_peer_svid"), 1, "{d}");
    assert!(
        sidecar
            .log()
            .contains("more than one URI SAN (X509-SVID 2, 5.2)"),
        "deny line missing from the sidecar log"
    );
}
