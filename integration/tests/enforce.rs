//! The standard configuration in enforce mode (SPIFFE binding on `sub`,
//! trust domain `cluster.local`, binding required, `/healthz` exempt), all
//! against one shared Envoy.
//!
//! Tests run in parallel on that Envoy, so each denial reason is produced by
//! exactly one test here (and only one test makes allowed requests), so
//! counter assertions are before/after deltas of counters only that test
//! moves.

use std::sync::Arc;

use tokenbind_integration::assertions::{
    assert_allowed, assert_denied, assert_no_token_in_log, assert_no_token_in_response,
};
use tokenbind_integration::envoy::EnvoyOptions;
use tokenbind_integration::tokens::{
    alg_none, corrupt_signature, now, raw_token, tamper_payload, Alg, Claims, TokenIssuer,
};
use tokenbind_integration::{
    Shared, Stack, ATTACKER_ID, AUDIENCE, CLIENT_ID, FOREIGN_DOMAIN_ID, ISSUER,
};

static STANDARD: Shared<Stack> = Shared::new();

fn stack() -> Arc<Stack> {
    STANDARD.get_or_init(|| Stack::with_filter(|_| {}))
}

/// Claims for the legitimate client: sub = its SPIFFE ID.
fn client_claims(s: &Stack) -> Claims {
    s.issuer.claims(CLIENT_ID, AUDIENCE)
}

#[test]
fn client_token_from_client_is_allowed_es256_and_eddsa() {
    let s = stack();
    let before = s.envoy.snapshot();
    for alg in Alg::ALL {
        let token = s.issuer.sign(alg, &client_claims(&s));
        let r = s.get(&s.pki.client, "/api", Some(&token));
        assert_allowed(&r, &format!("{} token from its own workload", alg.name()));
    }
    // The auth scheme is case-insensitive.
    let token = s.issuer.sign(Alg::Es256, &client_claims(&s));
    for scheme in ["bearer", "BEARER"] {
        let value = format!("{scheme} {token}");
        let r = s
            .client(&s.pki.client)
            .get(s.port(), "/api", &[("Authorization", &value)])
            .unwrap();
        assert_allowed(&r, &format!("scheme {scheme:?}"));
    }
    // Within clock_skew_seconds (60): expired 30 s ago, or valid from 30 s
    // in the future. And an audience array that contains our audience.
    let t = now();
    let edge_cases = [
        ("exp 30 s ago", client_claims(&s).with("exp", t - 30)),
        ("nbf in 30 s", client_claims(&s).with("nbf", t + 30)),
        (
            "aud array containing ours",
            client_claims(&s).with("aud", serde_json::json!(["spiffe://other", AUDIENCE])),
        ),
    ];
    for (what, claims) in &edge_cases {
        let token = s.issuer.sign(Alg::EdDsa, claims);
        let r = s.get(&s.pki.client, "/api", Some(&token));
        assert_allowed(&r, what);
    }
    // This is the only test on the shared Envoy whose requests are allowed.
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.allowed"),
        4 + edge_cases.len() as u64,
        "counter deltas: {d}"
    );
}

#[test]
fn stolen_token_replayed_by_attacker_is_denied_spiffe_mismatch() {
    let s = stack();
    let before = s.envoy.snapshot();
    for alg in Alg::ALL {
        let token = s.issuer.sign(alg, &client_claims(&s));
        let r = s.get(&s.pki.attacker, "/api", Some(&token));
        assert_denied(
            &r,
            "spiffe_mismatch",
            &format!("{} client token replayed by attacker", alg.name()),
        );
        assert_no_token_in_response(&r, &token, "spiffe_mismatch denial");
    }
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.denied.spiffe_mismatch"),
        2,
        "counter deltas: {d}"
    );
}

#[test]
fn attacker_cannot_forge_its_own_sub_into_the_clients_token() {
    // Re-signing is impossible without the issuer key; swapping the payload
    // to sub=attacker keeps the old signature, which must then fail.
    let s = stack();
    let token = s.issuer.sign(Alg::Es256, &client_claims(&s));
    let forged = tamper_payload(&token, &s.issuer.claims(ATTACKER_ID, AUDIENCE));
    let before = s.envoy.snapshot();
    let r = s.get(&s.pki.attacker, "/api", Some(&forged));
    assert_denied(&r, "bad_signature", "payload swapped to sub=attacker");
    // A token for the attacker signed by another issuer using the same iss
    // name and kid: also a bad signature.
    let impostor = TokenIssuer::new(ISSUER);
    let t = impostor.sign(Alg::EdDsa, &impostor.claims(ATTACKER_ID, AUDIENCE));
    let r = s.get(&s.pki.attacker, "/api", Some(&t));
    assert_denied(&r, "bad_signature", "token from an impostor issuer key");
    // Corrupted signature bytes on an otherwise valid token.
    for alg in Alg::ALL {
        let t = corrupt_signature(&s.issuer.sign(alg, &client_claims(&s)));
        let r = s.get(&s.pki.client, "/api", Some(&t));
        assert_denied(
            &r,
            "bad_signature",
            &format!("{} corrupted signature", alg.name()),
        );
    }
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.denied.bad_signature"),
        4,
        "counter deltas: {d}"
    );
}

#[test]
fn workload_in_a_foreign_trust_domain_is_denied() {
    let s = stack();
    let evil = s.pki.workload("evil", FOREIGN_DOMAIN_ID);
    let token = s
        .issuer
        .sign(Alg::Es256, &s.issuer.claims(FOREIGN_DOMAIN_ID, AUDIENCE));
    let before = s.envoy.snapshot();
    let r = s.get(&evil, "/api", Some(&token));
    assert_denied(
        &r,
        "trust_domain_not_allowed",
        "sub and peer in spiffe://evil.example",
    );
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.denied.trust_domain_not_allowed"),
        1,
        "counter deltas: {d}"
    );
}

#[test]
fn sub_that_is_not_a_spiffe_id_is_denied() {
    let s = stack();
    let before = s.envoy.snapshot();
    for sub in [
        "client",
        "https://cluster.local/ns/default/sa/client",
        "spiffe://",
    ] {
        let token = s.issuer.sign(Alg::Es256, &s.issuer.claims(sub, AUDIENCE));
        let r = s.get(&s.pki.client, "/api", Some(&token));
        assert_denied(&r, "invalid_spiffe_id", &format!("sub = {sub:?}"));
    }
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.denied.invalid_spiffe_id"),
        3,
        "counter deltas: {d}"
    );
}

#[test]
fn expired_token_is_denied() {
    let s = stack();
    let before = s.envoy.snapshot();
    for alg in Alg::ALL {
        let token = s.issuer.sign(alg, &client_claims(&s).expired());
        let r = s.get(&s.pki.client, "/api", Some(&token));
        assert_denied(&r, "expired", &format!("{} exp an hour ago", alg.name()));
    }
    // Just beyond the 60 s clock skew.
    let token = s
        .issuer
        .sign(Alg::Es256, &client_claims(&s).with("exp", now() - 120));
    let r = s.get(&s.pki.client, "/api", Some(&token));
    assert_denied(&r, "expired", "exp 120 s ago, skew 60 s");
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(d.get("tokenbind.denied.expired"), 3, "counter deltas: {d}");
}

#[test]
fn not_yet_valid_token_is_denied() {
    let s = stack();
    let before = s.envoy.snapshot();
    let token = s
        .issuer
        .sign(Alg::EdDsa, &client_claims(&s).not_yet_valid());
    let r = s.get(&s.pki.client, "/api", Some(&token));
    assert_denied(&r, "not_yet_valid", "nbf in an hour");
    // Just beyond the 60 s clock skew.
    let token = s
        .issuer
        .sign(Alg::Es256, &client_claims(&s).with("nbf", now() + 120));
    let r = s.get(&s.pki.client, "/api", Some(&token));
    assert_denied(&r, "not_yet_valid", "nbf in 120 s, skew 60 s");
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.denied.not_yet_valid"),
        2,
        "counter deltas: {d}"
    );
}

#[test]
fn wrong_audience_is_denied() {
    let s = stack();
    let before = s.envoy.snapshot();
    let claims = client_claims(&s).with("aud", "spiffe://cluster.local/ns/default/sa/other");
    let token = s.issuer.sign(Alg::Es256, &claims);
    let r = s.get(&s.pki.client, "/api", Some(&token));
    assert_denied(&r, "audience_mismatch", "aud = another service");
    let claims = client_claims(&s).with("aud", serde_json::json!(["a", "b"]));
    let token = s.issuer.sign(Alg::EdDsa, &claims);
    let r = s.get(&s.pki.client, "/api", Some(&token));
    assert_denied(&r, "audience_mismatch", "aud = [a, b]");
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.denied.audience_mismatch"),
        2,
        "counter deltas: {d}"
    );
}

#[test]
fn unknown_issuer_is_denied() {
    let s = stack();
    let before = s.envoy.snapshot();
    let other = TokenIssuer::new("https://other-issuer.example");
    let token = other.sign(Alg::Es256, &other.claims(CLIENT_ID, AUDIENCE));
    let r = s.get(&s.pki.client, "/api", Some(&token));
    assert_denied(&r, "unknown_issuer", "iss = https://other-issuer.example");
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.denied.unknown_issuer"),
        1,
        "counter deltas: {d}"
    );
}

#[test]
fn unknown_kid_is_denied() {
    let s = stack();
    let before = s.envoy.snapshot();
    for alg in Alg::ALL {
        let token = s
            .issuer
            .sign_with_kid(alg, "no-such-kid", &client_claims(&s));
        let r = s.get(&s.pki.client, "/api", Some(&token));
        assert_denied(
            &r,
            "unknown_key",
            &format!("{} kid not in JWKS", alg.name()),
        );
    }
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.denied.unknown_key"),
        2,
        "counter deltas: {d}"
    );
}

#[test]
fn alg_none_is_denied() {
    let s = stack();
    let before = s.envoy.snapshot();
    for kid in [None, Some(s.issuer.kid(Alg::Es256))] {
        let token = alg_none(&client_claims(&s), kid);
        let r = s.get(&s.pki.client, "/api", Some(&token));
        assert_denied(
            &r,
            "unsupported_algorithm",
            &format!("alg none, kid {kid:?}"),
        );
    }
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.denied.unsupported_algorithm"),
        2,
        "counter deltas: {d}"
    );
}

#[test]
fn oversized_token_is_denied() {
    let s = stack();
    let before = s.envoy.snapshot();
    let token = s
        .issuer
        .sign(Alg::Es256, &client_claims(&s).padded_beyond(8192));
    assert!(
        token.len() > 8192,
        "test bug: token is {} bytes",
        token.len()
    );
    let r = s.get(&s.pki.client, "/api", Some(&token));
    assert_denied(
        &r,
        "token_too_large",
        &format!("{}-byte token", token.len()),
    );
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.denied.token_too_large"),
        1,
        "counter deltas: {d}"
    );
}

#[test]
fn request_without_token_is_denied_missing_token() {
    let s = stack();
    let before = s.envoy.snapshot();
    let r = s.get(&s.pki.client, "/api", None);
    assert_denied(&r, "missing_token", "no authorization header");
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="tokenbind""#)
    );
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.denied.missing_token"),
        1,
        "counter deltas: {d}"
    );
}

#[test]
fn duplicate_or_garbage_authorization_is_malformed() {
    let s = stack();
    let good = s.issuer.sign(Alg::Es256, &client_claims(&s));
    let good_auth = format!("Bearer {good}");
    let before = s.envoy.snapshot();

    // Two Authorization headers, even if both carry the same valid token.
    let r = s
        .client(&s.pki.client)
        .get(
            s.port(),
            "/api",
            &[("Authorization", &good_auth), ("authorization", &good_auth)],
        )
        .unwrap();
    assert_denied(&r, "malformed_token", "two Authorization headers");

    let garbage = [
        "not-a-jwt".to_string(),
        "a.b.c".to_string(),
        // Header segment is base64url of something that is not JSON.
        raw_token(b"\xff\xfe not json", b"{}", b"sig"),
        // Four segments.
        format!("{good}.extra"),
    ];
    for token in &garbage {
        let r = s.get(&s.pki.client, "/api", Some(token));
        assert_denied(&r, "malformed_token", &format!("token {token:?}"));
    }
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.denied.malformed_token"),
        1 + garbage.len() as u64,
        "counter deltas: {d}"
    );
}

#[test]
fn exempt_path_passes_without_a_token() {
    let s = stack();
    let before = s.envoy.snapshot();
    for path in ["/healthz", "/healthz/live", "/healthz?probe=1"] {
        let r = s.get(&s.pki.client, path, None);
        assert_allowed(&r, &format!("exempt path {path}"));
    }
    // The attacker can use the exempt path too: it is exempt for everyone.
    let r = s.get(&s.pki.attacker, "/healthz", None);
    assert_allowed(&r, "exempt path from attacker");
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(d.get("tokenbind.exempt"), 4, "counter deltas: {d}");
    assert_eq!(
        d.get("tokenbind.denied.missing_token"),
        0,
        "counter deltas: {d}"
    );
}

#[test]
fn token_never_appears_in_response_or_log() {
    // A dedicated Envoy with the Wasm log at trace, so that even the
    // filter's most verbose logging is captured. (Envoy's own http/conn
    // loggers stay at info: at debug they dump request headers themselves.)
    let s = Stack::try_with_filter(
        |_| {},
        EnvoyOptions {
            component_log_level: Some("wasm:trace".to_string()),
            ..EnvoyOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let allowed = s.issuer.sign(Alg::Es256, &client_claims(&s));
    let stolen = s.issuer.sign(Alg::EdDsa, &client_claims(&s));
    let expired = s.issuer.sign(Alg::Es256, &client_claims(&s).expired());
    let r = s.get(&s.pki.client, "/api", Some(&allowed));
    assert_allowed(&r, "allowed request");
    let r = s.get(&s.pki.attacker, "/api", Some(&stolen));
    assert_denied(&r, "spiffe_mismatch", "replay");
    assert_no_token_in_response(&r, &stolen, "spiffe_mismatch response");
    let r = s.get(&s.pki.client, "/api", Some(&expired));
    assert_denied(&r, "expired", "expired");
    assert_no_token_in_response(&r, &expired, "expired response");

    let log = s.envoy.log();
    assert!(
        log.contains("wasm"),
        "expected Wasm log lines at trace level; log:\n{log}"
    );
    for (t, what) in [
        (&allowed, "allowed"),
        (&stolen, "stolen"),
        (&expired, "expired"),
    ] {
        assert_no_token_in_log(&log, t, what);
    }
}
