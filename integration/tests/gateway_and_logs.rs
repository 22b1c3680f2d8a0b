//! Traffic through an ingress gateway (trusted `x-forwarded-client-cert`), and the decision in
//! filter state, read back through a real Envoy access log.
//!
//! Topology for the gateway tests, all real Envoys on loopback:
//!
//! ```text
//! caller --mTLS(caller cert)--> gateway Envoy (SANITIZE_SET XFCC: Hash + URI of the caller)
//!        --mTLS(gateway cert)--> sidecar Envoy with tokenbind (trusted_forwarders = [gateway])
//! ```

use serde_json::{json, Value};
use std::time::Duration;
use tokenbind_integration::assertions::{assert_allowed, assert_denied};
use tokenbind_integration::envoy::{mtls_cluster, Bootstrap, Envoy};
use tokenbind_integration::pki::{Leaf, Pki};
use tokenbind_integration::tokens::{Alg, TokenIssuer};
use tokenbind_integration::{plugin_config, poll, require_wasm, AUDIENCE, ISSUER, LISTENER};

const GATEWAY_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/ingressgateway";

struct Mesh {
    pki: Pki,
    issuer: TokenIssuer,
    gateway_leaf: Leaf,
    sidecar: Envoy,
    gateway: Envoy,
}

/// The sidecar (with tokenbind, configured by `configure`) and a gateway in front of it.
fn mesh(configure: impl FnOnce(&mut Value)) -> Mesh {
    let wasm = require_wasm();
    let pki = Pki::new();
    let issuer = TokenIssuer::new(ISSUER);
    let gateway_leaf = pki.workload("gateway", GATEWAY_ID);
    let mut cfg = plugin_config(&issuer);
    configure(&mut cfg);
    // Like an Istio sidecar: append what it knows about its peer to any forwarded XFCC.
    let mut sidecar_bootstrap = Bootstrap::new(&pki).wasm_filter(&wasm, &cfg).build();
    let hcm = &mut sidecar_bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]
        ["filters"][0]["typed_config"];
    hcm["forward_client_cert_details"] = json!("APPEND_FORWARD");
    hcm["set_current_client_cert_details"] = json!({"uri": true});
    let sidecar = Envoy::start(&sidecar_bootstrap).unwrap_or_else(|e| panic!("sidecar: {e}"));
    // The gateway replaces whatever XFCC the caller sent with what it verified itself.
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
    Mesh {
        pki,
        issuer,
        gateway_leaf,
        sidecar,
        gateway,
    }
}

impl Mesh {
    fn token_for(&self, leaf: &Leaf) -> String {
        self.issuer
            .sign(Alg::Es256, &self.issuer.claims(leaf.id(), AUDIENCE))
    }

    fn via_gateway(&self, caller: &Leaf, token: &str) -> tokenbind_integration::client::Response {
        let auth = format!("Bearer {token}");
        tokenbind_integration::client::Client::new(self.pki.ca_pem(), Some(caller))
            .get(
                self.gateway.port(LISTENER),
                "/api",
                &[("authorization", &auth)],
            )
            .unwrap_or_else(|e| panic!("GET via gateway as {}: {e}", caller.name))
    }

    fn direct(
        &self,
        caller: &Leaf,
        token: &str,
        xfcc: Option<&str>,
    ) -> tokenbind_integration::client::Response {
        let auth = format!("Bearer {token}");
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(x) = xfcc {
            headers.push(("x-forwarded-client-cert", x));
        }
        tokenbind_integration::client::Client::new(self.pki.ca_pem(), Some(caller))
            .get(self.sidecar.port(LISTENER), "/api", &headers)
            .unwrap_or_else(|e| panic!("GET direct as {}: {e}", caller.name))
    }
}

#[test]
fn through_a_trusted_gateway_the_original_caller_is_checked() {
    let m = mesh(|cfg| cfg["trusted_forwarders"] = json!([GATEWAY_ID]));
    let token = m.token_for(&m.pki.client);
    let before = m.sidecar.snapshot();

    // The client's own token through the gateway: XFCC names the client, so it is allowed.
    let r = m.via_gateway(&m.pki.client, &token);
    assert_allowed(&r, "client via trusted gateway");
    // The stolen token through the same gateway from the attacker: XFCC names the attacker.
    let r = m.via_gateway(&m.pki.attacker, &token);
    assert_denied(&r, "spiffe_mismatch", "attacker via trusted gateway");

    let d = m.sidecar.snapshot().since(&before);
    assert_eq!(d.get("tokenbind.xfcc.used"), 2, "{d}");
    assert_eq!(d.get("tokenbind.allowed"), 1, "{d}");
    assert_eq!(d.get("tokenbind.denied.spiffe_mismatch"), 1, "{d}");

    // A certificate-thumbprint-bound token travels through the gateway too: XFCC's Hash is
    // the client's certificate digest.
    let x5t = m.issuer.sign(
        Alg::Es256,
        &m.issuer
            .claims(m.pki.client.id(), AUDIENCE)
            .with("cnf", json!({"x5t#S256": m.pki.client.x5t_s256()})),
    );
    assert_allowed(&m.via_gateway(&m.pki.client, &x5t), "x5t-bound via gateway");
    assert_denied(
        &m.via_gateway(&m.pki.attacker, &x5t),
        "thumbprint_mismatch",
        "x5t-bound, attacker via gateway",
    );
}

#[test]
fn xfcc_from_an_untrusted_peer_is_ignored_and_counted() {
    let m = mesh(|cfg| cfg["trusted_forwarders"] = json!([GATEWAY_ID]));
    let token = m.token_for(&m.pki.client);
    let before = m.sidecar.snapshot();
    // The attacker connects directly and forges XFCC claiming to forward the client.
    let forged = format!(
        "By={GATEWAY_ID};Hash={};URI={}",
        hex(&m.pki.client.cert_der),
        m.pki.client.id()
    );
    let r = m.direct(&m.pki.attacker, &token, Some(&forged));
    assert_denied(&r, "spiffe_mismatch", "forged XFCC from a workload");
    let d = m.sidecar.snapshot().since(&before);
    assert_eq!(d.get("tokenbind.xfcc.untrusted"), 1, "{d}");
    assert_eq!(d.get("tokenbind.xfcc.used"), 0, "{d}");
}

#[test]
fn a_gateway_that_is_not_trusted_is_just_a_peer() {
    // Some other gateway is trusted; this one is not.
    let m = mesh(|cfg| {
        cfg["trusted_forwarders"] =
            json!(["spiffe://cluster.local/ns/istio-system/sa/other-gateway"])
    });
    let token = m.token_for(&m.pki.client);
    let before = m.sidecar.snapshot();
    // The sidecar's peer is the untrusted gateway: the client's token does not match it, and
    // the gateway's XFCC is ignored and counted.
    let r = m.via_gateway(&m.pki.client, &token);
    assert_denied(&r, "spiffe_mismatch", "client via an untrusted gateway");
    let d = m.sidecar.snapshot().since(&before);
    assert_eq!(d.get("tokenbind.xfcc.untrusted"), 1, "{d}");
    // The gateway's own token, from the gateway, is fine.
    let own = m.token_for(&m.gateway_leaf);
    assert_allowed(
        &m.direct(&m.gateway_leaf, &own, None),
        "gateway's own token",
    );
}

fn hex(der: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn the_decision_reaches_the_access_log_through_filter_state() {
    let wasm = require_wasm();
    let pki = Pki::new();
    let issuer = TokenIssuer::new(ISSUER);
    let mut cfg = plugin_config(&issuer);
    cfg["mode"] = json!("monitor");
    let mut bootstrap = Bootstrap::new(&pki).wasm_filter(&wasm, &cfg).build();
    let log_dir = tempfile::tempdir().expect("temp dir");
    let log_path = log_dir.path().join("access.log");
    // The format from envoy/access-log.yaml.
    let format = include_str!("../../envoy/access-log-format.txt").trim_end();
    // The documented snippet carries the same format (YAML-escaped), so it cannot drift.
    let snippet = include_str!("../../envoy/access-log.yaml");
    assert!(
        snippet.contains(&format.replace('"', "\\\"")),
        "envoy/access-log.yaml and envoy/access-log-format.txt disagree"
    );
    bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["access_log"] = json!([{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": log_path,
            "log_format": {"text_format_source": {"inline_string": format!("{format}\n")}}
        }
    }]);
    let envoy = Envoy::start(&bootstrap).unwrap_or_else(|e| panic!("{e}"));
    let token = issuer.sign(Alg::EdDsa, &issuer.claims(pki.client.id(), AUDIENCE));
    let client = |leaf: &Leaf, path: &str| {
        let auth = format!("Bearer {token}");
        tokenbind_integration::client::Client::new(pki.ca_pem(), Some(leaf))
            .get(envoy.port(LISTENER), path, &[("authorization", &auth)])
            .unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(client(&pki.client, "/api/allowed").status, 200);
    assert_eq!(client(&pki.attacker, "/api/replayed").status, 200);
    assert_eq!(client(&pki.client, "/healthz").status, 200);

    let log = poll(Duration::from_secs(15), Duration::from_millis(200), || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.lines().count() >= 3 {
            Ok(text)
        } else {
            Err(format!("{} lines so far", text.lines().count()))
        }
    })
    .unwrap_or_else(|e| panic!("access log: {e}"));
    let line = |path: &str| {
        log.lines()
            .find(|l| l.contains(path))
            .unwrap_or_else(|| panic!("no access log line for {path}:\n{log}"))
            .to_owned()
    };
    let allowed = line("/api/allowed");
    for field in [
        "tokenbind.decision=allow",
        "tokenbind.reason=-",
        &format!("tokenbind.peer={}", pki.client.id()),
        &format!("tokenbind.iss={ISSUER}"),
        &format!("tokenbind.sub={}", pki.client.id()),
        "tokenbind.binding=spiffe",
    ] {
        assert!(allowed.contains(field), "missing {field:?} in: {allowed}");
    }
    let replayed = line("/api/replayed");
    for field in [
        "tokenbind.decision=would_deny",
        "tokenbind.reason=spiffe_mismatch",
        &format!("tokenbind.peer={}", pki.attacker.id()),
        &format!("tokenbind.sub={}", pki.client.id()),
    ] {
        assert!(replayed.contains(field), "missing {field:?} in: {replayed}");
    }
    assert!(
        line("/healthz").contains("tokenbind.decision=exempt"),
        "{log}"
    );
    assert!(
        !log.contains(&token),
        "the access log must not contain the token"
    );
}
