//! The peer as an X.509-SVID leaf (spiffe/spiffe standards/X509-SVID.md §2, §4, §5.2): the
//! leaf checks on real certificates (tests/data/svid, made with openssl), strict PEM, the
//! per-VM verdict cache, and what the engine decides for each.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use serde_json::json;
use tokenbind_core::metrics::Counter;
use tokenbind_core::spiffe::SpiffeIdError;
use tokenbind_core::svid::{check_leaf_der, check_leaf_pem, SvidError};
use tokenbind_core::{Config, Engine, MockHost, Mode, Outcome, Peer, Reason};

fn pem(name: &str) -> Vec<u8> {
    cert_pem(name).as_bytes().to_vec()
}

#[test]
fn leaf_rules_on_real_certificates() {
    let ok = [
        ("client", CLIENT),
        ("attacker", ATTACKER),
        (
            "gateway",
            "spiffe://cluster.local/ns/istio-system/sa/ingressgateway",
        ),
        ("evil-domain", "spiffe://evil.example/ns/default/sa/client"),
        // §5.2 does not require basic constraints (absent: cA false) or key usage.
        ("no-basic-constraints", CLIENT),
        ("no-key-usage", CLIENT),
    ];
    for (name, id) in ok {
        let svid = check_leaf_pem(&pem(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(svid.id.as_str(), id, "{name}");
        // 100-year test certificates.
        assert!(svid.not_after > now() + 50 * 365 * 86_400, "{name}");
    }
    let refused = [
        ("two-uri-sans", SvidError::SeveralUriSans),
        ("ca-flag", SvidError::CaFlag),
        ("key-cert-sign", SvidError::KeyCertSign),
        ("crl-sign", SvidError::CrlSign),
        ("no-uri-san", SvidError::NoUriSan),
        ("no-san", SvidError::NoUriSan),
        (
            "https-uri-san",
            SvidError::InvalidSpiffeId(SpiffeIdError::WrongScheme),
        ),
        ("root-spiffe-id", SvidError::RootSpiffeId),
        (
            "bad-spiffe-id",
            SvidError::InvalidSpiffeId(SpiffeIdError::BadTrustDomainChar),
        ),
    ];
    for (name, want) in refused {
        assert_eq!(check_leaf_pem(&pem(name)), Err(want), "{name}");
        assert!(!want.message().is_empty());
    }
}

#[test]
fn the_digest_is_the_sha256_of_the_der() {
    let svid = check_leaf_pem(CLIENT_CERT_PEM.as_bytes()).unwrap();
    let hex: String = svid.sha256.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, CLIENT_CERT_SHA256_HEX);
    let der = pem_body_der(CLIENT_CERT_PEM);
    assert_eq!(check_leaf_der(&der).unwrap(), svid);
}

#[test]
fn pem_decoding_is_strict_one_certificate() {
    let one = CLIENT_CERT_PEM;
    // Surrounding whitespace (and a trailing NUL, as a C string) is fine.
    assert!(check_leaf_pem(format!("\n{one}\n\n").as_bytes()).is_ok());
    assert!(check_leaf_pem(format!("{one}\0").as_bytes()).is_ok());
    // Two certificates (a chain), or anything appended or prepended, is not one certificate.
    let two = format!("{one}{}", ATTACKER_CERT_PEM);
    assert_eq!(check_leaf_pem(two.as_bytes()), Err(SvidError::NotPem));
    assert_eq!(
        check_leaf_pem(format!("{one}trailing").as_bytes()),
        Err(SvidError::NotPem)
    );
    assert_eq!(
        check_leaf_pem(format!("junk\n{one}").as_bytes()),
        Err(SvidError::NotPem)
    );
    // Another label.
    let key = one.replace("CERTIFICATE", "PRIVATE KEY");
    assert_eq!(check_leaf_pem(key.as_bytes()), Err(SvidError::NotPem));
    // Broken base64 inside.
    let lines: Vec<&str> = one.lines().collect();
    let mut broken = lines.clone();
    broken[2] = "!!!!";
    assert_eq!(
        check_leaf_pem(broken.join("\n").as_bytes()),
        Err(SvidError::NotPem)
    );
    // Trailing bytes after the DER.
    let mut der = pem_body_der(one);
    der.push(0);
    assert_eq!(check_leaf_der(&der), Err(SvidError::NotCertificate));
    // Truncated DER, every length: never a panic, never a verdict of valid.
    let der = pem_body_der(one);
    for n in 0..der.len() {
        assert!(check_leaf_der(&der[..n]).is_err(), "prefix {n}");
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A small deterministic mutation run over a real leaf (the fuzz target calls the same
    // function).
    let der = pem_body_der(CLIENT_CERT_PEM);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..5_000 {
        let mut d = der.clone();
        for _ in 0..(next() % 4 + 1) {
            let i = (next() as usize) % d.len();
            d[i] = next() as u8;
        }
        let _ = check_leaf_der(&d);
    }
}

fn request(token: &str, peer: Peer) -> MockHost {
    MockHost::new()
        .with_header(":path", "/api")
        .with_header("authorization", &format!("Bearer {token}"))
        .with_peer(peer)
}

fn reason(d: &tokenbind_core::Decision) -> Option<Reason> {
    d.denial().map(|d| d.reason)
}

#[test]
fn the_engine_refuses_a_peer_that_is_not_an_svid() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({}));
    let t = token(&keys, Signer::ES256, json!({}));
    for name in ["two-uri-sans", "ca-flag", "key-cert-sign", "crl-sign"] {
        let d = engine.decide(&request(&t, peer_with_cert(name, Some(CLIENT))), now());
        assert_eq!(reason(&d), Some(Reason::InvalidPeerSvid), "{name}");
        assert_eq!(
            d.counters(Mode::Enforce)[1],
            Some(Counter::Denied(Reason::InvalidPeerSvid))
        );
        let reply = d.reply(engine.config()).unwrap();
        assert_eq!(reply.status, 401);
        assert!(reply.body.contains("invalid_peer_svid"), "{}", reply.body);
    }
    // The good SVID passes.
    let d = engine.decide(&request(&t, client_peer()), now());
    assert_eq!(d.outcome, Outcome::Allow, "{:?}", d.denial());
}

#[test]
fn the_verdict_is_cached_by_digest_and_the_pem_read_only_on_a_miss() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({}));
    let t = token(&keys, Signer::ES256, json!({}));
    let first = request(&t, client_peer());
    assert_eq!(engine.decide(&first, now()).outcome, Outcome::Allow);
    // Attributes, then the PEM.
    assert_eq!(first.peer_reads(), 2);
    assert_eq!(engine.svid_cache_len(), 1);
    let second = request(&t, client_peer());
    assert_eq!(engine.decide(&second, now()).outcome, Outcome::Allow);
    assert_eq!(second.peer_reads(), 1, "a cache hit reads no PEM");
    // A refused leaf is cached too.
    let bad = || request(&t, peer_with_cert("ca-flag", Some(CLIENT)));
    let h = bad();
    assert_eq!(
        reason(&engine.decide(&h, now())),
        Some(Reason::InvalidPeerSvid)
    );
    assert_eq!(h.peer_reads(), 2);
    let h = bad();
    assert_eq!(
        reason(&engine.decide(&h, now())),
        Some(Reason::InvalidPeerSvid)
    );
    assert_eq!(h.peer_reads(), 1);
    assert_eq!(engine.svid_cache_len(), 2);
}

#[test]
fn a_full_cache_never_gives_a_wrong_verdict() {
    let keys = Keys::new();
    let t = token(&keys, Signer::ES256, json!({}));
    for max in [0, 1, 2] {
        let engine = engine(&keys, json!({"cache": {"svid_max_entries": max}}));
        for round in 0..3 {
            for (name, allowed) in [
                ("client", true),
                ("two-uri-sans", false),
                ("ca-flag", false),
                ("no-key-usage", true),
            ] {
                let d = engine.decide(&request(&t, peer_with_cert(name, Some(CLIENT))), now());
                assert_eq!(
                    d.outcome == Outcome::Allow,
                    allowed,
                    "{name} max={max} round={round}: {:?}",
                    d.denial()
                );
                assert!(engine.svid_cache_len() <= max);
            }
        }
    }
}

#[test]
fn envoy_and_the_certificate_must_agree() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({}));
    let t = token(&keys, Signer::ES256, json!({}));
    // The PEM is not the certificate whose digest Envoy reported.
    let wrong_digest = peer(CLIENT, ATTACKER_CERT_SHA256_HEX);
    let d = engine.decide(&request(&t, wrong_digest), now());
    assert_eq!(reason(&d), Some(Reason::InvalidPeerSvid));
    assert_eq!(
        d.denial().unwrap().detail,
        SvidError::DigestMismatch.message()
    );
    // No PEM from the proxy: refused, never assumed valid.
    let no_pem = peer(CLIENT, CLIENT_CERT_SHA256_HEX).with_certificate_pem(None);
    let d = engine.decide(&request(&t, no_pem), now());
    assert_eq!(d.denial().unwrap().detail, SvidError::Unavailable.message());
    // Neither was cached.
    assert_eq!(engine.svid_cache_len(), 0);
    // Envoy's URI SAN is not the certificate's.
    let wrong_uri = peer_with_cert("client", Some(ATTACKER));
    let d = engine.decide(&request(&t, wrong_uri), now());
    assert_eq!(
        d.denial().unwrap().detail,
        SvidError::UriSanMismatch.message()
    );
    // The leaf verdict itself is cached (it is about the bytes); the comparison is not.
    assert_eq!(engine.svid_cache_len(), 1);
    let d = engine.decide(&request(&t, client_peer()), now());
    assert_eq!(d.outcome, Outcome::Allow);
}

#[test]
fn no_spiffe_binding_no_certificate_read() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({"spiffe": null, "require_binding": false}));
    let t = token(&keys, Signer::ES256, json!({}));
    let h = request(&t, peer_with_cert("two-uri-sans", Some(CLIENT)));
    assert_eq!(engine.decide(&h, now()).outcome, Outcome::Allow);
    assert_eq!(h.peer_reads(), 1);
    assert_eq!(engine.svid_cache_len(), 0);
}

#[test]
fn monitor_mode_lets_it_through_and_counts_it() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({"mode": "monitor"}));
    let t = token(&keys, Signer::ES256, json!({}));
    let d = engine.decide(
        &request(&t, peer_with_cert("two-uri-sans", Some(CLIENT))),
        now(),
    );
    assert_eq!(reason(&d), Some(Reason::InvalidPeerSvid));
    assert!(d.reply(engine.config()).is_none());
    assert_eq!(
        d.counters(Mode::Monitor)[1],
        Some(Counter::WouldDeny(Reason::InvalidPeerSvid))
    );
}

const GATEWAY: &str = "spiffe://cluster.local/ns/istio-system/sa/ingressgateway";

#[test]
fn xfcc_client_follows_the_same_rule() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({"trusted_forwarders": [GATEWAY]}));
    let t = token(&keys, Signer::ES256, json!({}));
    let via = |xfcc: &str, gateway: Peer| {
        engine.decide(
            &request(&t, gateway).with_header("x-forwarded-client-cert", xfcc),
            now(),
        )
    };
    let gw = || peer_with_cert("gateway", Some(GATEWAY));
    let one = format!("By={GATEWAY};Hash={CLIENT_CERT_SHA256_HEX};URI={CLIENT}");
    let d = via(&one, gw());
    assert_eq!(d.outcome, Outcome::Allow, "{:?}", d.denial());
    let two = format!("By={GATEWAY};Hash={CLIENT_CERT_SHA256_HEX};URI={CLIENT};URI={ATTACKER}");
    let d = via(&two, gw());
    assert_eq!(reason(&d), Some(Reason::InvalidPeerSvid));
    assert_eq!(
        d.denial().unwrap().detail,
        SvidError::SeveralUriSans.message()
    );
    let not_spiffe = format!("By={GATEWAY};Hash={CLIENT_CERT_SHA256_HEX};URI=https://x/y");
    assert_eq!(
        reason(&via(&not_spiffe, gw())),
        Some(Reason::InvalidPeerSvid)
    );
    let none = format!("By={GATEWAY};Hash={CLIENT_CERT_SHA256_HEX}");
    assert_eq!(reason(&via(&none, gw())), Some(Reason::InvalidPeerSvid));
    // A "gateway" whose own leaf is not an SVID is not trusted, whatever its first URI SAN.
    let fake_gateway = peer_with_cert("ca-flag", Some(GATEWAY));
    let d = via(&one, fake_gateway);
    assert_eq!(d.xfcc, tokenbind_core::Xfcc::Untrusted);
    assert_eq!(reason(&d), Some(Reason::InvalidPeerSvid));
}

#[test]
fn svid_cache_config_is_validated() {
    let keys = Keys::new();
    for (cache, field) in [
        (
            json!({"svid_max_entries": 65_537}),
            "cache.svid_max_entries",
        ),
        (json!({"svid_ttl_seconds": 0}), "cache.svid_ttl_seconds"),
        (
            json!({"svid_ttl_seconds": 86_401}),
            "cache.svid_ttl_seconds",
        ),
    ] {
        let cfg = config_json(&keys, json!({ "cache": cache }));
        let err =
            Config::from_json(cfg.to_string().as_bytes(), &|_| Err("no files".into())).unwrap_err();
        assert_eq!(err.field, field);
    }
    let cfg = config_json(&keys, json!({}));
    let config =
        Config::from_json(cfg.to_string().as_bytes(), &|_| Err("no files".into())).unwrap();
    assert_eq!(config.svid_cache_max_entries, 1024);
    assert_eq!(config.svid_cache_ttl_seconds, 3600);
    let _ = Engine::new(config);
}
