//! Table-driven decisions through the engine: one case (at least) per denial reason, plus
//! the allow paths, the cache and the modes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use jwt_simple::prelude::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokenbind_core::metrics::Counter;
use tokenbind_core::{CacheUse, Engine, MockHost, Mode, Outcome, Peer, Reason};

fn decide(engine: &Engine, auth: &[&str], peer: &Peer, now: u64) -> tokenbind_core::Decision {
    let mut host = MockHost::new()
        .with_header(":path", "/api/orders")
        .with_peer(peer.clone());
    for a in auth {
        host = host.with_header("authorization", a);
    }
    engine.decide(&host, now)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn reason_of(engine: &Engine, token: &str, peer: &Peer) -> Option<Reason> {
    let auth = bearer(token);
    decide(engine, &[&auth], peer, now())
        .denial()
        .map(|d| d.reason)
}

struct Case {
    name: &'static str,
    config: Value,
    token: String,
    peer: Peer,
    want: Option<Reason>,
}

#[test]
fn every_reason_and_the_allow_paths() {
    let keys = Keys::new();
    let n = now();
    let spiffe_on = json!({});
    let spiffe_off = json!({"spiffe": null});
    let alg_none = raw_token(
        json!({"alg": "none", "typ": "JWT"}),
        &claims(json!({})),
        b"",
    );
    let hs256 = HS256Key::generate()
        .authenticate(
            Claims::create(Duration::from_hours(1))
                .with_issuer(ISSUER)
                .with_audience(AUDIENCE),
        )
        .unwrap();
    let mut tampered = token(&keys, Signer::ES256, json!({}));
    // Flip a bit in the middle of the signature (the last character also holds padding bits).
    let mid = tampered.len() - 20;
    let flipped = if &tampered[mid..=mid] == "A" {
        "B"
    } else {
        "A"
    };
    tampered.replace_range(mid..=mid, flipped);
    let cases = vec![
        Case {
            name: "ES256 SPIFFE-bound, right peer",
            config: spiffe_on.clone(),
            token: token(&keys, Signer::ES256, json!({})),
            peer: client_peer(),
            want: None,
        },
        Case {
            name: "EdDSA SPIFFE-bound, right peer",
            config: spiffe_on.clone(),
            token: token(&keys, Signer::EdDSA, json!({})),
            peer: client_peer(),
            want: None,
        },
        Case {
            name: "RS256 SPIFFE-bound, right peer",
            config: spiffe_on.clone(),
            token: token(&keys, Signer::RS256, json!({})),
            peer: client_peer(),
            want: None,
        },
        Case {
            name: "aud as an array",
            config: spiffe_on.clone(),
            token: token(&keys, Signer::ES256, json!({"aud": ["other", AUDIENCE]})),
            peer: client_peer(),
            want: None,
        },
        Case {
            name: "expired but within clock skew",
            config: spiffe_on.clone(),
            token: token(&keys, Signer::ES256, json!({"exp": n - 30})),
            peer: client_peer(),
            want: None,
        },
        Case {
            name: "x5t#S256-bound, right certificate",
            config: spiffe_off.clone(),
            token: token(
                &keys,
                Signer::ES256,
                json!({"cnf": {"x5t#S256": CLIENT_CERT_X5T_S256}}),
            ),
            peer: client_peer(),
            want: None,
        },
        Case {
            name: "x5t#S256 and SPIFFE both bound and both right",
            config: spiffe_on.clone(),
            token: token(
                &keys,
                Signer::ES256,
                json!({"cnf": {"x5t#S256": CLIENT_CERT_X5T_S256}}),
            ),
            peer: client_peer(),
            want: None,
        },
        Case {
            name: "require_binding false lets an unbound token through",
            config: json!({"spiffe": null, "require_binding": false}),
            token: token(&keys, Signer::ES256, json!({})),
            peer: client_peer(),
            want: None,
        },
        Case {
            name: "dotted claim path",
            config: json!({"spiffe": {"claim": "act.sub"}}),
            token: token(
                &keys,
                Signer::ES256,
                json!({"sub": "user-42", "act": {"sub": CLIENT}}),
            ),
            peer: client_peer(),
            want: None,
        },
        Case {
            name: "malformed: not a JWS",
            config: spiffe_on.clone(),
            token: "abc.def".into(),
            peer: client_peer(),
            want: Some(Reason::MalformedToken),
        },
        Case {
            name: "malformed: header not JSON",
            config: spiffe_on.clone(),
            token: "bm90anNvbg.e30.c2ln".into(),
            peer: client_peer(),
            want: Some(Reason::MalformedToken),
        },
        Case {
            name: "malformed: JWE (five parts)",
            config: spiffe_on.clone(),
            token: "a.b.c.d.e".into(),
            peer: client_peer(),
            want: Some(Reason::MalformedToken),
        },
        Case {
            name: "malformed: no exp",
            config: spiffe_on.clone(),
            token: token(&keys, Signer::ES256, json!({"exp": null})),
            peer: client_peer(),
            want: Some(Reason::MalformedToken),
        },
        Case {
            name: "malformed: exp not a number",
            config: spiffe_on.clone(),
            token: token(&keys, Signer::ES256, json!({"exp": "tomorrow"})),
            peer: client_peer(),
            want: Some(Reason::MalformedToken),
        },
        Case {
            name: "alg none",
            config: spiffe_on.clone(),
            token: alg_none,
            peer: client_peer(),
            want: Some(Reason::UnsupportedAlgorithm),
        },
        Case {
            name: "HS256",
            config: spiffe_on.clone(),
            token: hs256,
            peer: client_peer(),
            want: Some(Reason::UnsupportedAlgorithm),
        },
        Case {
            name: "alg not on the provider allow-list",
            config: json!({"providers": [{
                "name": "mesh", "issuer": ISSUER, "audiences": [AUDIENCE], "jwks": keys.jwks(), "algorithms": ["ES256"]}]}),
            token: token(&keys, Signer::EdDSA, json!({})),
            peer: client_peer(),
            want: Some(Reason::UnsupportedAlgorithm),
        },
        Case {
            name: "unknown issuer",
            config: spiffe_on.clone(),
            token: token(&keys, Signer::ES256, json!({"iss": "https://evil.example"})),
            peer: client_peer(),
            want: Some(Reason::UnknownIssuer),
        },
        Case {
            name: "no issuer",
            config: spiffe_on.clone(),
            token: token(&keys, Signer::ES256, json!({"iss": null})),
            peer: client_peer(),
            want: Some(Reason::UnknownIssuer),
        },
        Case {
            name: "unknown kid",
            config: spiffe_on.clone(),
            token: {
                let k = ES256KeyPair::generate().with_key_id("es-9");
                // jwt-simple's own iat/nbf/exp would duplicate ours (a malformed_token now).
                let mut c = Claims::with_custom_claims(claims(json!({})), Duration::from_hours(1));
                c.issued_at = None;
                c.expires_at = None;
                c.invalid_before = None;
                k.sign(c).unwrap()
            },
            peer: client_peer(),
            want: Some(Reason::UnknownKey),
        },
        Case {
            name: "signed by a stranger under a published kid",
            config: spiffe_on.clone(),
            token: token(&keys, Signer::Stranger, json!({})),
            peer: client_peer(),
            want: Some(Reason::BadSignature),
        },
        Case {
            name: "tampered signature",
            config: spiffe_on.clone(),
            token: tampered,
            peer: client_peer(),
            want: Some(Reason::BadSignature),
        },
        Case {
            name: "expired beyond skew",
            config: spiffe_on.clone(),
            token: token(&keys, Signer::ES256, json!({"exp": n - 61})),
            peer: client_peer(),
            want: Some(Reason::Expired),
        },
        Case {
            name: "nbf in the future",
            config: spiffe_on.clone(),
            token: token(&keys, Signer::ES256, json!({"nbf": n + 120})),
            peer: client_peer(),
            want: Some(Reason::NotYetValid),
        },
        Case {
            name: "iat in the future",
            config: spiffe_on.clone(),
            token: token(&keys, Signer::ES256, json!({"iat": n + 120})),
            peer: client_peer(),
            want: Some(Reason::NotYetValid),
        },
        Case {
            name: "wrong audience",
            config: spiffe_on.clone(),
            token: token(
                &keys,
                Signer::ES256,
                json!({"aud": "spiffe://cluster.local/ns/default/sa/other"}),
            ),
            peer: client_peer(),
            want: Some(Reason::AudienceMismatch),
        },
        Case {
            name: "no audience",
            config: spiffe_on.clone(),
            token: token(&keys, Signer::ES256, json!({"aud": null})),
            peer: client_peer(),
            want: Some(Reason::AudienceMismatch),
        },
        Case {
            name: "SPIFFE-bound but no client certificate",
            config: spiffe_on.clone(),
            token: token(&keys, Signer::ES256, json!({})),
            peer: Peer::default(),
            want: Some(Reason::NoPeerCertificate),
        },
        Case {
            name: "x5t-bound but no client certificate",
            config: spiffe_off.clone(),
            token: token(
                &keys,
                Signer::ES256,
                json!({"cnf": {"x5t#S256": CLIENT_CERT_X5T_S256}}),
            ),
            peer: Peer::default(),
            want: Some(Reason::NoPeerCertificate),
        },
        Case {
            name: "sub is not a SPIFFE ID",
            config: spiffe_on.clone(),
            token: token(&keys, Signer::ES256, json!({"sub": "client"})),
            peer: client_peer(),
            want: Some(Reason::InvalidSpiffeId),
        },
        Case {
            name: "SPIFFE claim missing",
            config: spiffe_on.clone(),
            token: token(&keys, Signer::ES256, json!({"sub": null})),
            peer: client_peer(),
            want: Some(Reason::InvalidSpiffeId),
        },
        Case {
            name: "stolen token replayed by another workload",
            config: spiffe_on.clone(),
            token: token(&keys, Signer::ES256, json!({})),
            peer: attacker_peer(),
            want: Some(Reason::SpiffeMismatch),
        },
        Case {
            name: "peer certificate without URI SAN",
            config: spiffe_on.clone(),
            token: token(&keys, Signer::ES256, json!({})),
            peer: peer_with_cert("no-uri-san", None),
            want: Some(Reason::InvalidPeerSvid),
        },
        Case {
            name: "peer certificate with two URI SANs, the first one the token's",
            config: spiffe_on.clone(),
            token: token(&keys, Signer::ES256, json!({})),
            peer: peer_with_cert("two-uri-sans", Some(CLIENT)),
            want: Some(Reason::InvalidPeerSvid),
        },
        Case {
            name: "peer certificate with cA true",
            config: spiffe_on.clone(),
            token: token(&keys, Signer::ES256, json!({})),
            peer: peer_with_cert("ca-flag", Some(CLIENT)),
            want: Some(Reason::InvalidPeerSvid),
        },
        Case {
            name: "trust domain not allowed",
            config: spiffe_on.clone(),
            token: token(
                &keys,
                Signer::ES256,
                json!({"sub": "spiffe://evil.example/ns/default/sa/client"}),
            ),
            peer: peer(
                "spiffe://evil.example/ns/default/sa/client",
                CLIENT_CERT_SHA256_HEX,
            ),
            want: Some(Reason::TrustDomainNotAllowed),
        },
        Case {
            name: "x5t#S256 of another certificate",
            config: spiffe_off.clone(),
            token: token(
                &keys,
                Signer::ES256,
                json!({"cnf": {"x5t#S256": CLIENT_CERT_X5T_S256}}),
            ),
            peer: attacker_peer(),
            want: Some(Reason::ThumbprintMismatch),
        },
        Case {
            name: "x5t#S256 not a SHA-256",
            config: spiffe_off.clone(),
            token: token(
                &keys,
                Signer::ES256,
                json!({"cnf": {"x5t#S256": "c2hvcnQ"}}),
            ),
            peer: client_peer(),
            want: Some(Reason::ThumbprintMismatch),
        },
        Case {
            name: "x5t#S256 checked before SPIFFE",
            config: spiffe_on.clone(),
            token: token(
                &keys,
                Signer::ES256,
                json!({"cnf": {"x5t#S256": CLIENT_CERT_X5T_S256}}),
            ),
            peer: peer(CLIENT, ATTACKER_CERT_SHA256_HEX),
            want: Some(Reason::ThumbprintMismatch),
        },
        Case {
            name: "unbound token with require_binding",
            config: spiffe_off.clone(),
            token: token(&keys, Signer::ES256, json!({})),
            peer: client_peer(),
            want: Some(Reason::UnboundToken),
        },
        Case {
            name: "unknown cnf member",
            config: spiffe_on.clone(),
            token: token(&keys, Signer::ES256, json!({"cnf": {"kid": "abc"}})),
            peer: client_peer(),
            want: Some(Reason::UnsupportedBinding),
        },
        Case {
            name: "DPoP-bound token sent as a bearer token",
            config: spiffe_on.clone(),
            token: token(
                &keys,
                Signer::ES256,
                json!({"cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}}),
            ),
            peer: client_peer(),
            want: Some(Reason::DpopDowngrade),
        },
    ];
    let mut failures = Vec::new();
    for case in cases {
        let engine = engine(&keys, case.config);
        let got = reason_of(&engine, &case.token, &case.peer);
        if got != case.want {
            failures.push(format!(
                "{}: want {:?}, got {:?}",
                case.name, case.want, got
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn header_level_reasons() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({}));
    let t = token(&keys, Signer::ES256, json!({}));
    let r = |auth: &[&str]| {
        decide(&engine, auth, &client_peer(), now())
            .denial()
            .map(|d| d.reason)
    };
    assert_eq!(r(&[]), Some(Reason::MissingToken));
    assert_eq!(r(&["Basic dXNlcjpwYXNz"]), Some(Reason::MissingToken));
    assert_eq!(r(&["Bearer "]), Some(Reason::MalformedToken));
    assert_eq!(r(&[&bearer(&t), &bearer(&t)]), Some(Reason::MalformedToken));
    assert_eq!(
        r(&[&format!("Bearer {t},Bearer {t}")]),
        Some(Reason::MalformedToken)
    );
    let huge = format!("Bearer {}", "a".repeat(8 * 1024 + 1));
    assert_eq!(r(&[&huge]), Some(Reason::TokenTooLarge));
    assert_eq!(r(&[&format!("bearer {t}")]), None);
    assert_eq!(r(&[&format!("BEARER {t}")]), None);
}

#[test]
fn rfc8705_thumbprint_matches_an_independently_computed_digest() {
    // The certificate's SHA-256 as computed here from its DER, by openssl at fixture
    // creation time, and as Envoy reports it (hex) must all be the same value, and the
    // base64url form must be what a token's cnf.x5t#S256 carries.
    let der = pem_to_der(CLIENT_CERT_PEM);
    let digest: [u8; 32] = Sha256::digest(&der).into();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, CLIENT_CERT_SHA256_HEX);
    assert_eq!(b64(&digest), CLIENT_CERT_X5T_S256);
    let peer = Peer::from_attributes(
        Some(&[1]),
        Some(CLIENT.as_bytes()),
        Some(hex.to_uppercase().as_bytes()),
    );
    assert_eq!(peer.cert_sha256, Some(digest));

    let keys = Keys::new();
    let engine = engine(&keys, json!({"spiffe": null}));
    let t = token(
        &keys,
        Signer::ES256,
        json!({"cnf": {"x5t#S256": b64(&digest)}}),
    );
    assert_eq!(reason_of(&engine, &t, &peer), None);
    let mut other = digest;
    other[31] ^= 1;
    let t = token(
        &keys,
        Signer::ES256,
        json!({"cnf": {"x5t#S256": b64(&other)}}),
    );
    assert_eq!(
        reason_of(&engine, &t, &peer),
        Some(Reason::ThumbprintMismatch)
    );
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

#[test]
fn exempt_paths_skip_everything() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({}));
    for path in ["/healthz", "/healthz/ready", "/healthz?verbose=1"] {
        let host = MockHost::new().with_header(":path", path);
        let d = engine.decide(&host, now());
        assert_eq!(d.outcome, Outcome::Exempt, "{path}");
        assert_eq!(
            d.counters(Mode::Enforce),
            [None, Some(Counter::Exempt), None]
        );
        assert_eq!(host.peer_reads(), 0);
    }
    let d = engine.decide(&MockHost::new().with_header(":path", "/health"), now());
    assert_eq!(d.denial().map(|d| d.reason), Some(Reason::MissingToken));
}

#[test]
fn cache_hit_still_checks_the_binding_every_time() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({}));
    let auth = bearer(&token(&keys, Signer::ES256, json!({})));
    let n = now();
    let first = decide(&engine, &[&auth], &client_peer(), n);
    assert_eq!(
        (first.outcome.clone(), first.cache),
        (Outcome::Allow, CacheUse::Miss)
    );
    let second = decide(&engine, &[&auth], &client_peer(), n);
    assert_eq!(
        (second.outcome.clone(), second.cache),
        (Outcome::Allow, CacheUse::Hit)
    );
    assert_eq!(second.bindings.kind(), "spiffe");
    let stolen = decide(&engine, &[&auth], &attacker_peer(), n);
    assert_eq!(stolen.cache, CacheUse::Hit);
    assert_eq!(
        stolen.denial().map(|d| d.reason),
        Some(Reason::SpiffeMismatch)
    );
    assert_eq!(engine.cache_len(), 1);
}

#[test]
fn cached_token_expires_with_a_precise_reason() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({}));
    let n = now();
    let auth = bearer(&token(&keys, Signer::ES256, json!({"exp": n + 10})));
    assert_eq!(
        decide(&engine, &[&auth], &client_peer(), n).outcome,
        Outcome::Allow
    );
    // skew is 60 s: valid until exp + 60.
    let later = decide(&engine, &[&auth], &client_peer(), n + 70);
    assert_eq!(later.cache, CacheUse::Miss);
    assert_eq!(later.denial().map(|d| d.reason), Some(Reason::Expired));
    assert_eq!(engine.cache_len(), 0);
}

#[test]
fn failures_are_not_cached() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({}));
    let auth = bearer(&token(&keys, Signer::Stranger, json!({})));
    for _ in 0..2 {
        let d = decide(&engine, &[&auth], &client_peer(), now());
        assert_eq!(d.cache, CacheUse::Miss);
        assert_eq!(d.denial().map(|d| d.reason), Some(Reason::BadSignature));
    }
    assert_eq!(engine.cache_len(), 0);
}

#[test]
fn cache_cap_holds_with_real_tokens() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({"cache": {"max_entries": 5}}));
    for i in 0..20 {
        let auth = bearer(&token(
            &keys,
            Signer::EdDSA,
            json!({"jti": format!("t{i}")}),
        ));
        assert_eq!(
            decide(&engine, &[&auth], &client_peer(), now()).outcome,
            Outcome::Allow
        );
        assert!(engine.cache_len() <= 5);
    }
    assert_eq!(engine.cache_len(), 5);
}

#[test]
fn modes_pick_the_counter_and_the_reply() {
    let keys = Keys::new();
    let auth = bearer(&token(&keys, Signer::ES256, json!({})));
    let enforce = engine(&keys, json!({}));
    let d = decide(&enforce, &[&auth], &attacker_peer(), now());
    assert_eq!(
        d.counters(Mode::Enforce),
        [
            Some(Counter::CacheMiss),
            Some(Counter::Denied(Reason::SpiffeMismatch)),
            None
        ]
    );
    let reply = d.reply(enforce.config()).unwrap();
    assert_eq!(reply.status, 401);
    assert!(!reply.body.contains(auth.trim_start_matches("Bearer ")));

    let monitor = engine(&keys, json!({"mode": "monitor"}));
    let d = decide(&monitor, &[&auth], &attacker_peer(), now());
    assert_eq!(
        d.counters(Mode::Monitor),
        [
            Some(Counter::CacheMiss),
            Some(Counter::WouldDeny(Reason::SpiffeMismatch)),
            None
        ]
    );
    assert!(d.reply(monitor.config()).is_none());
    let ok = decide(&monitor, &[&auth], &client_peer(), now());
    assert_eq!(
        ok.counters(Mode::Monitor),
        [Some(Counter::CacheHit), Some(Counter::Allowed), None]
    );
}

#[test]
fn token_tag_is_a_short_hash_not_the_token() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({}));
    let t = token(&keys, Signer::ES256, json!({}));
    let auth = bearer(&t);
    let d = decide(&engine, &[&auth], &attacker_peer(), now());
    let tag = d.token_tag().unwrap();
    assert_eq!(tag.len(), 12);
    assert!(!t.contains(&tag));
}

const GATEWAY: &str = "spiffe://cluster.local/ns/istio-system/sa/ingressgateway";

fn via_gateway(
    engine: &Engine,
    token: &str,
    xfcc: Option<&str>,
    from: Peer,
) -> tokenbind_core::Decision {
    let mut host = MockHost::new()
        .with_header(":path", "/api/orders")
        .with_header("authorization", &bearer(token))
        .with_peer(from);
    if let Some(x) = xfcc {
        host = host.with_header("x-forwarded-client-cert", x);
    }
    engine.decide(&host, now())
}

#[test]
fn xfcc_from_a_trusted_forwarder_stands_in_for_the_peer() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({"trusted_forwarders": [GATEWAY]}));
    let t = token(
        &keys,
        Signer::ES256,
        json!({"cnf": {"x5t#S256": CLIENT_CERT_X5T_S256}}),
    );
    let gateway = peer_with_cert("gateway", Some(GATEWAY));
    let client_xfcc = format!("By={GATEWAY};Hash={CLIENT_CERT_SHA256_HEX};URI={CLIENT}");
    // Through the gateway, the client's own identity and certificate are what is checked.
    let d = via_gateway(&engine, &t, Some(&client_xfcc), gateway.clone());
    assert_eq!(d.outcome, Outcome::Allow, "{:?}", d.denial());
    assert_eq!(d.xfcc, tokenbind_core::Xfcc::Used);
    assert_eq!(d.forwarded_by.as_deref(), Some(GATEWAY));
    assert_eq!(d.counters(Mode::Enforce)[2], Some(Counter::XfccUsed));
    // The gateway forwarding the attacker's connection: the attacker's identity is checked.
    let attacker_xfcc = format!("By={GATEWAY};Hash={ATTACKER_CERT_SHA256_HEX};URI={ATTACKER}");
    let d = via_gateway(&engine, &t, Some(&attacker_xfcc), gateway.clone());
    assert_eq!(
        d.denial().map(|d| d.reason),
        Some(Reason::ThumbprintMismatch)
    );
    // Malformed XFCC from the trusted gateway: no client certificate (fail closed).
    let d = via_gateway(&engine, &t, Some("garbage"), gateway);
    assert_eq!(
        d.denial().map(|d| d.reason),
        Some(Reason::NoPeerCertificate)
    );
    assert_eq!(d.xfcc, tokenbind_core::Xfcc::Invalid);
}

#[test]
fn xfcc_from_anyone_else_is_ignored_and_counted() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({"trusted_forwarders": [GATEWAY]}));
    let t = token(&keys, Signer::ES256, json!({}));
    // The attacker claims, via XFCC, to be forwarding the client. Ignored: it is the peer.
    let forged = format!("By={GATEWAY};Hash={CLIENT_CERT_SHA256_HEX};URI={CLIENT}");
    let d = via_gateway(&engine, &t, Some(&forged), attacker_peer());
    assert_eq!(d.denial().map(|d| d.reason), Some(Reason::SpiffeMismatch));
    assert_eq!(d.xfcc, tokenbind_core::Xfcc::Untrusted);
    assert_eq!(d.counters(Mode::Enforce)[2], Some(Counter::XfccUntrusted));
    // The real client with a stray XFCC is still itself.
    let d = via_gateway(&engine, &t, Some(&forged), client_peer());
    assert_eq!(d.outcome, Outcome::Allow);
}

#[test]
fn withdrawing_a_key_withdraws_the_cached_tokens_it_verified() {
    use tokenbind_core::jwk::KeySet;
    use tokenbind_core::CacheUse;
    let keys = Keys::new();
    let engine = engine(&keys, json!({}));
    let es = token(&keys, Signer::ES256, json!({}));
    let ed = token(&keys, Signer::EdDSA, json!({}));
    let request = |t: &str| {
        MockHost::new()
            .with_header("authorization", &format!("Bearer {t}"))
            .with_peer(client_peer())
    };
    for t in [&es, &ed] {
        assert_eq!(engine.decide(&request(t), now()).outcome, Outcome::Allow);
        assert_eq!(engine.decide(&request(t), now()).cache, CacheUse::Hit);
    }
    // The same keys, parsed again (a refetch that changed nothing): nothing is dropped.
    let same = KeySet::from_value(&keys.jwks()).unwrap();
    assert_eq!(engine.install_keys(0, same), 0);
    assert_eq!(engine.decide(&request(&es), now()).cache, CacheUse::Hit);
    // A rotation that withdraws the ES256 key: its token is dropped from the cache at once and
    // refused on its next request; the EdDSA token, whose key stayed, is still a cache hit.
    let mut jwks = keys.jwks();
    jwks["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|k| k["kid"] != "es-1");
    let rotated = KeySet::from_value(&jwks).unwrap();
    assert_eq!(engine.install_keys(0, rotated), 1);
    let d = engine.decide(&request(&es), now());
    assert_eq!(d.cache, CacheUse::Miss);
    assert_eq!(d.denial().map(|d| d.reason), Some(Reason::UnknownKey));
    assert_eq!(engine.decide(&request(&ed), now()).cache, CacheUse::Hit);
}
