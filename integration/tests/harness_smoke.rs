//! Smoke tests of the harness itself against a real Envoy WITHOUT the
//! tokenbind filter: PKI, mTLS listener, client, admin API, start-up errors,
//! process clean-up.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};
use tokenbind_integration::client::{Client, ClientError};
use tokenbind_integration::envoy::{Envoy, StartError};
use tokenbind_integration::pki::{x5t_s256, Pki};
use tokenbind_integration::{require_envoy, Shared, Stack, CLIENT_ID, UPSTREAM_BODY};

static PLAIN: Shared<Stack> = Shared::new();

fn plain() -> Arc<Stack> {
    require_envoy();
    PLAIN.get_or_init(Stack::without_filter)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn pki_leaves_carry_spiffe_ids_and_thumbprints() {
    let pki = Pki::new();
    for leaf in [&pki.client, &pki.attacker, &pki.server] {
        // The URI SAN is an IA5String inside the DER.
        assert!(
            contains(&leaf.cert_der, leaf.id().as_bytes()),
            "{}",
            leaf.name
        );
        // x5t#S256 = base64url-no-pad(SHA-256(DER)): 32 bytes -> 43 chars.
        let t = leaf.x5t_s256();
        assert_eq!(t.len(), 43);
        assert!(!t.contains('=') && !t.contains('+') && !t.contains('/'));
        assert_eq!(t, x5t_s256(&leaf.cert_der));
        assert_eq!(
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &t).unwrap(),
            Sha256::digest(&leaf.cert_der).to_vec()
        );
        assert!(leaf.cert_path.is_file() && leaf.key_path.is_file());
    }
    assert_ne!(pki.client.x5t_s256(), pki.attacker.x5t_s256());
    assert!(contains(&pki.server.cert_der, b"localhost"));
    assert_eq!(pki.client.id(), CLIENT_ID);
    let evil = pki.workload("evil", "spiffe://evil.example/ns/x/sa/y");
    assert!(contains(&evil.cert_der, b"spiffe://evil.example/ns/x/sa/y"));
    assert!(pki.ca_path().is_file());
}

#[test]
fn mtls_listener_answers_a_client_certificate() {
    let s = plain();
    for leaf in [&s.pki.client, &s.pki.attacker] {
        let r = s.get(leaf, "/anything", None);
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.body_str(), UPSTREAM_BODY);
    }
    let stats = s.envoy.stats();
    assert!(stats.contains("listener.127.0.0.1_"), "stats: {stats}");
}

#[test]
fn mtls_listener_rejects_a_connection_without_a_certificate() {
    let s = plain();
    let err = s
        .anonymous_client()
        .get(s.port(), "/", &[])
        .expect_err("a client without a certificate must not get a response");
    // TLS 1.3: the server's "certificate required" alert arrives after the
    // client's handshake finished, on the first read.
    assert!(
        matches!(&err, ClientError::Tls(m) if m.contains("CertificateRequired")),
        "{err}"
    );
}

#[test]
fn mtls_listener_rejects_a_certificate_from_another_ca() {
    let s = plain();
    let other = Pki::new();
    let c = Client::new(s.pki.ca_pem(), Some(&other.client));
    let err = c
        .get(s.port(), "/", &[])
        .expect_err("a certificate from an untrusted CA must be rejected");
    assert!(
        matches!(&err, ClientError::Tls(m) if m.contains("UnknownCA")),
        "{err}"
    );
}

#[test]
fn client_sends_duplicate_headers_and_parses_response() {
    let s = plain();
    let r = s
        .client(&s.pki.client)
        .get(
            s.port(),
            "/dup",
            &[("x-a", "1"), ("x-a", "2"), ("Authorization", "Bearer a")],
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("CONTENT-LENGTH"), Some("11"));
    assert_eq!(r.header_all("server"), vec!["envoy"]);
}

#[test]
fn envoy_start_failure_carries_the_log() {
    require_envoy();
    let bad = json!({"static_resources": {"listeners": [{"name": "x", "bogus_field_here": 1}]}});
    let t = Instant::now();
    match Envoy::start(&bad) {
        Ok(_) => panic!("Envoy accepted an invalid bootstrap"),
        Err(e @ StartError::Exited { .. }) => {
            let log = e.log().unwrap_or_default();
            assert!(log.contains("bogus_field_here"), "log: {log}");
        }
        Err(e) => panic!("expected Exited, got {e}"),
    }
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[test]
fn parallel_envoys_get_distinct_ports_and_die_on_drop() {
    let pki = Pki::new();
    let cfg = tokenbind_integration::envoy::Bootstrap::new(&pki).build();
    let a = Envoy::start(&cfg).unwrap();
    let b = Envoy::start(&cfg).unwrap();
    assert_ne!(a.port("main"), b.port("main"));
    assert_ne!(a.admin_address(), b.admin_address());
    let c = Client::new(pki.ca_pem(), Some(&pki.client));
    assert_eq!(c.get(b.port("main"), "/", &[]).unwrap().status, 200);
    let (pid, dir) = (a.pid(), a.dir().to_path_buf());
    drop(a);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "envoy {pid} still exists after drop"
    );
    assert!(!dir.exists(), "temp dir {} not removed", dir.display());
    assert_eq!(c.get(b.port("main"), "/", &[]).unwrap().status, 200);
}
