//! One meaning per token, against a real Envoy: a token or DPoP proof whose JSON repeats a
//! member name is refused, even though it is signed properly over exactly those bytes. A
//! last-wins parser would bind `{"sub":"client",…,"sub":"attacker"}` to the attacker, and
//! accept `{"alg":"none",…,"alg":"ES256"}`; a first-wins one would read them the other way.
//!
//! Each case is sent from the legitimate client's own mTLS identity, so only the duplicate can
//! be wrong; each gets its 401, its challenge, exactly its own denial counter, and never the
//! upstream route.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::json;
use tokenbind_integration::assertions::{assert_allowed, assert_denied, assert_no_token_in_log};
use tokenbind_integration::client::Response;
use tokenbind_integration::dpop::{access_token_hash, unique_jti, ProofAlg, ProofKey};
use tokenbind_integration::envoy::Delta;
use tokenbind_integration::tokens::{now, with_members, Alg};
use tokenbind_integration::{Stack, ATTACKER_ID, AUDIENCE, CLIENT_ID, UPSTREAM_BODY};

const PATH: &str = "/api/orders";

/// Exactly `expected` among the verdict counters moved.
#[track_caller]
fn assert_only(d: &Delta, expected: &str, context: &str) {
    let moved: Vec<_> = d
        .changed()
        .into_iter()
        .filter(|(k, _)| {
            k.starts_with("tokenbind.denied.")
                || k.starts_with("tokenbind.monitor.")
                || *k == "tokenbind.allowed"
        })
        .collect();
    assert_eq!(d.get(expected), 1, "{context}: {expected} in {d}");
    assert_eq!(moved.len(), 1, "{context}: other verdicts moved: {d}");
}

#[track_caller]
fn assert_refused(s: &Stack, r: &Response, reason: &str, detail: &str, context: &str) {
    assert_denied(r, reason, context);
    assert_ne!(
        r.body_str(),
        UPSTREAM_BODY,
        "{context}: reached the upstream"
    );
    let log = s.envoy.log();
    assert!(
        log.lines()
            .any(|l| l.contains("tokenbind: denied:") && l.contains(detail)),
        "{context}: no denial log naming the member ({detail:?}):\n{log}"
    );
}

fn dpop_get(s: &Stack, token: &str, proof: &str) -> Response {
    let auth = format!("DPoP {token}");
    s.client(&s.pki.client)
        .request(
            s.port(),
            "GET",
            PATH,
            &[("authorization", &auth), ("dpop", proof)],
            b"",
        )
        .unwrap_or_else(|e| panic!("GET {PATH} failed: {e}"))
}

#[test]
fn duplicate_members_in_tokens_and_proofs_are_refused_by_a_real_envoy() {
    let s = Stack::with_filter(|_| {});
    let claims = s.issuer.claims(CLIENT_ID, AUDIENCE).to_value().to_string();
    let header = s.issuer.header_text(Alg::Es256);

    // The fixture without duplicates: the same raw signing path is accepted.
    let good = s.issuer.sign_raw(Alg::Es256, &header, &claims);
    assert_allowed(&s.get(&s.pki.client, PATH, Some(&good)), "raw-signed token");

    // A second sub naming the attacker, and the same the other way round.
    for (what, text) in [
        (
            "duplicate sub (attacker last)",
            with_members(&claims, &format!(r#""sub":"{ATTACKER_ID}""#)),
        ),
        (
            "duplicate sub (attacker first, escaped name)",
            with_members(
                &s.issuer
                    .claims(ATTACKER_ID, AUDIENCE)
                    .to_value()
                    .to_string(),
                &format!(r#""s\u0075b":"{CLIENT_ID}""#),
            ),
        ),
    ] {
        let token = s.issuer.sign_raw(Alg::Es256, &header, &text);
        let before = s.envoy.snapshot();
        let r = s.get(&s.pki.client, PATH, Some(&token));
        assert_refused(
            &s,
            &r,
            "malformed_token",
            "claims has a duplicate member /sub",
            what,
        );
        assert_only(
            &s.envoy.snapshot().since(&before),
            "tokenbind.denied.malformed_token",
            what,
        );
        assert_no_token_in_log(&s.envoy.log(), &token, what);
    }

    // alg none first, ES256 last, and the signature is a valid ES256 one: only the duplicate
    // is wrong. And a nested duplicate (cnf.x5t#S256).
    for (what, h, c, detail) in [
        (
            "duplicate alg",
            format!(
                r#"{{"alg":"none","typ":"JWT","kid":"{}","alg":"ES256"}}"#,
                s.issuer.kid(Alg::Es256)
            ),
            claims.clone(),
            "JOSE header has a duplicate member /alg",
        ),
        (
            "duplicate cnf member",
            header.clone(),
            with_members(&claims, r#""cnf":{"x5t#S256":"AAAA","x5t#S256":"BBBB"}"#),
            "claims has a duplicate member /cnf/x5t#S256",
        ),
    ] {
        let token = s.issuer.sign_raw(Alg::Es256, &h, &c);
        let before = s.envoy.snapshot();
        let r = s.get(&s.pki.client, PATH, Some(&token));
        assert_refused(&s, &r, "malformed_token", detail, what);
        assert_only(
            &s.envoy.snapshot().since(&before),
            "tokenbind.denied.malformed_token",
            what,
        );
    }

    // DPoP: a token bound to the key, with a proof that is valid but for one duplicate.
    let key = ProofKey::generate(ProofAlg::Es256);
    let token = s.issuer.sign(
        Alg::Es256,
        &s.issuer.claims(CLIENT_ID, AUDIENCE).cnf_jkt(&key.jkt()),
    );
    let htu = "https://localhost/api/orders";
    let r = dpop_get(
        &s,
        &token,
        &key.proof_with_members("GET", htu, &token, "", ""),
    );
    assert_allowed(&r, "DPoP proof without duplicates");
    for (what, proof, detail) in [
        (
            "proof with two htm",
            String::new(),
            r#""htm":"POST""#.to_owned(),
            "DPoP proof claims has a duplicate member /htm",
        ),
        (
            "proof with two typ",
            r#""typ":"JWT""#.to_owned(),
            String::new(),
            "DPoP proof header has a duplicate member /typ",
        ),
        (
            "proof with two jwk",
            format!(r#""jwk":{}"#, key.jwk()),
            String::new(),
            "DPoP proof header has a duplicate member /jwk",
        ),
    ]
    .into_iter()
    .map(|(what, h, c, detail)| {
        (
            what,
            key.proof_with_members("GET", htu, &token, &h, &c),
            detail,
        )
    })
    .chain([(
        // Inside the jwk: first-wins and last-wins readers would see different keys.
        "proof jwk with two x",
        {
            let jwk = with_members(&key.jwk().to_string(), r#""x":"AAAA""#);
            let h = format!(r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{jwk}}}"#);
            let c = json!({
                "jti": unique_jti(),
                "htm": "GET",
                "htu": htu,
                "iat": now(),
                "ath": access_token_hash(&token),
            });
            key.sign_text(&h, &c.to_string())
        },
        "DPoP proof header has a duplicate member /jwk/x",
    )]) {
        let before = s.envoy.snapshot();
        let r = dpop_get(&s, &token, &proof);
        assert_refused(&s, &r, "dpop_invalid", detail, what);
        assert_only(
            &s.envoy.snapshot().since(&before),
            "tokenbind.denied.dpop_invalid",
            what,
        );
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("DPoP ") && challenge.contains(r#"error="invalid_dpop_proof""#),
            "{what}: challenge {challenge:?}"
        );
        assert_no_token_in_log(&s.envoy.log(), &proof, what);
    }
}
