//! Registered claims of the wrong JSON type (RFC 7519 §4.1, RFC 7800 §3.1, RFC 8705 §3.1,
//! RFC 9449 §6.1): every one is a `malformed_token` whose detail names the claim (never its
//! value), never "absent" and never matched on the parts that happen to be of the right type.
//! Each claim the filter reads × each wrong type. Tokens are signed properly over the exact
//! claims, so the wrong type is the only thing wrong with them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use p256::ecdsa::signature::Signer as _;
use serde_json::{json, Map, Value};
use tokenbind_core::{Denial, Engine, MockHost, Reason};

const HEADER: &str = r#"{"alg":"ES256","typ":"JWT","kid":"es-1"}"#;

/// The standard claims with `name` set to exactly `value` (`null` stays a JSON null).
fn claims_with(name: &str, value: Value) -> Map<String, Value> {
    let mut c = claims(json!({}));
    c.insert(name.to_owned(), value);
    c
}

/// Signs the claims as they are with the issuer's ES256 key (`kid` es-1).
fn signed_with(key: &p256::ecdsa::SigningKey, claims: &Map<String, Value>) -> String {
    let body = Value::Object(claims.clone()).to_string();
    let input = format!("{}.{}", b64(HEADER.as_bytes()), b64(body.as_bytes()));
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    format!("{input}.{}", b64(&sig.to_bytes()))
}

fn signed(keys: &Keys, claims: &Map<String, Value>) -> String {
    let key = p256::ecdsa::SigningKey::from_slice(&keys.es256.to_bytes()).unwrap();
    signed_with(&key, claims)
}

fn decide(engine: &Engine, token: &str) -> Option<Denial> {
    let host = MockHost::new()
        .with_header(":path", "/api/orders")
        .with_header("authorization", &format!("Bearer {token}"))
        .with_peer(client_peer());
    engine.decide(&host, now()).denial()
}

fn malformed(detail: &'static str) -> Option<Denial> {
    Some(Denial::new(Reason::MalformedToken, detail))
}

/// JSON values of every type but string.
fn not_strings() -> Vec<Value> {
    vec![
        json!(42),
        json!(4.2),
        json!(-1),
        json!(true),
        json!(false),
        Value::Null,
        json!({}),
        json!({"value": CLIENT}),
        json!([]),
        json!([CLIENT]),
    ]
}

#[test]
fn the_fixture_is_a_good_token() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({}));
    assert_eq!(decide(&engine, &signed(&keys, &claims(json!({})))), None);
}

#[test]
fn iss_and_sub_must_be_strings() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({}));
    for (claim, detail) in [
        ("iss", "iss claim is not a string"),
        ("sub", "sub claim is not a string"),
    ] {
        for value in not_strings() {
            let t = signed(&keys, &claims_with(claim, value.clone()));
            assert_eq!(decide(&engine, &t), malformed(detail), "{claim}: {value}");
        }
    }
    // With SPIFFE binding off, `sub` is still read (the subject in logs and metadata).
    let off = common::engine(&keys, json!({"spiffe": null}));
    let t = signed(&keys, &claims_with("sub", json!(42)));
    assert_eq!(decide(&off, &t), malformed("sub claim is not a string"));
}

#[test]
fn aud_must_be_a_string_or_an_array_of_strings() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({}));
    for value in [
        json!(42),
        json!(4.2),
        json!(true),
        Value::Null,
        json!({}),
        json!({"aud": AUDIENCE}),
    ] {
        let t = signed(&keys, &claims_with("aud", value.clone()));
        assert_eq!(
            decide(&engine, &t),
            malformed("aud claim is not a string or an array of strings"),
            "aud: {value}"
        );
    }
    // An accepted audience next to a member of another type: the array is refused whole, in
    // any position, not matched on its string members.
    for bad in not_strings() {
        for value in [
            json!([AUDIENCE, bad.clone()]),
            json!([bad.clone(), AUDIENCE]),
        ] {
            let t = signed(&keys, &claims_with("aud", value.clone()));
            assert_eq!(
                decide(&engine, &t),
                malformed("aud array has a member that is not a string"),
                "aud: {value}"
            );
        }
    }
}

#[test]
fn time_claims_must_be_numeric_dates() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({}));
    let n = now();
    let wrong = [
        json!("soon"),
        json!(n.to_string()),
        json!(-1),
        json!(-0.5),
        json!(true),
        Value::Null,
        json!({}),
        json!([n]),
    ];
    for (claim, detail) in [
        ("exp", "exp claim is not a NumericDate"),
        ("nbf", "nbf claim is not a NumericDate"),
        ("iat", "iat claim is not a NumericDate"),
    ] {
        for value in &wrong {
            let t = signed(&keys, &claims_with(claim, value.clone()));
            assert_eq!(decide(&engine, &t), malformed(detail), "{claim}: {value}");
        }
    }
}

#[test]
fn cnf_and_its_members_must_have_their_types() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({}));
    for value in [
        json!(42),
        json!("x5t#S256"),
        json!(true),
        Value::Null,
        json!([]),
        json!([{"jkt": "a"}]),
    ] {
        let t = signed(&keys, &claims_with("cnf", value.clone()));
        assert_eq!(
            decide(&engine, &t),
            malformed("cnf claim is not a JSON object"),
            "cnf: {value}"
        );
    }
    for (member, detail) in [
        ("jkt", "cnf.jkt is not a string"),
        ("x5t#S256", "cnf.x5t#S256 is not a string"),
    ] {
        for value in not_strings() {
            let mut cnf = Map::new();
            cnf.insert(member.to_owned(), value.clone());
            let t = signed(&keys, &claims_with("cnf", Value::Object(cnf)));
            assert_eq!(
                decide(&engine, &t),
                malformed(detail),
                "cnf.{member}: {value}"
            );
        }
    }
}

#[test]
fn a_nested_spiffe_claim_must_be_a_string_under_objects() {
    let keys = Keys::new();
    let engine = engine(
        &keys,
        json!({"spiffe": {"claim": "act.sub", "trust_domains": ["cluster.local"]}}),
    );
    let with_act = |act: Value| signed(&keys, &claims_with("act", act));
    assert_eq!(decide(&engine, &with_act(json!({"sub": CLIENT}))), None);
    for value in not_strings() {
        let t = with_act(json!({ "sub": value.clone() }));
        assert_eq!(
            decide(&engine, &t),
            malformed("the SPIFFE claim (spiffe.claim) is not a string"),
            "act.sub: {value}"
        );
    }
    for act in [
        json!(CLIENT),
        json!(42),
        json!(true),
        Value::Null,
        json!([{"sub": CLIENT}]),
    ] {
        assert_eq!(
            decide(&engine, &with_act(act.clone())),
            malformed("a claim on the spiffe.claim path is not a JSON object"),
            "act: {act}"
        );
    }
}

/// What was already right stays so: absent claims keep their reasons, values of the right type
/// keep theirs.
#[test]
fn absent_claims_and_right_types_keep_their_reasons() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({}));
    let without = |name: &str| {
        let mut c = claims(json!({}));
        c.remove(name);
        signed(&keys, &c)
    };
    let reason = |t: &str| decide(&engine, t).map(|d| (d.reason, d.detail));
    assert_eq!(
        reason(&without("iss")),
        Some((Reason::UnknownIssuer, "token has no iss claim"))
    );
    assert_eq!(
        reason(&without("sub")),
        Some((Reason::InvalidSpiffeId, "the SPIFFE claim is missing"))
    );
    assert_eq!(
        reason(&without("aud")),
        Some((
            Reason::AudienceMismatch,
            "no aud value is accepted by the provider"
        ))
    );
    assert_eq!(
        reason(&without("exp")),
        Some((Reason::MalformedToken, "token has no exp claim"))
    );
    assert_eq!(decide(&engine, &without("nbf")), None);
    assert_eq!(decide(&engine, &without("iat")), None);
    assert_eq!(
        reason(&signed(&keys, &claims_with("aud", json!([])))),
        Some((
            Reason::AudienceMismatch,
            "no aud value is accepted by the provider"
        ))
    );
    assert_eq!(
        decide(
            &engine,
            &signed(&keys, &claims_with("aud", json!(["other", AUDIENCE])))
        ),
        None
    );
    // RFC 7519 §2: a NumericDate may be fractional.
    let exp = json!(now() as f64 + 3600.5);
    assert_eq!(
        decide(&engine, &signed(&keys, &claims_with("exp", exp))),
        None
    );
    // A string that is not a SPIFFE ID is an invalid SPIFFE ID, not a malformed token.
    assert_eq!(
        reason(&signed(&keys, &claims_with("sub", json!("client")))).map(|r| r.0),
        Some(Reason::InvalidSpiffeId)
    );
    // A cnf.x5t#S256 string that is no SHA-256 digest is a thumbprint mismatch (RFC 8705 §3.1).
    let t = signed(&keys, &claims_with("cnf", json!({"x5t#S256": "AAAA"})));
    assert_eq!(
        reason(&t),
        Some((
            Reason::ThumbprintMismatch,
            "cnf.x5t#S256 is not a base64url SHA-256 digest"
        ))
    );
    // A cnf member the filter does not know is unsupported, whatever its type.
    let t = signed(&keys, &claims_with("cnf", json!({"kid": 42})));
    assert_eq!(reason(&t).map(|r| r.0), Some(Reason::UnsupportedBinding));
    // jti is not read for access tokens: any type passes.
    assert_eq!(
        decide(&engine, &signed(&keys, &claims_with("jti", json!(42)))),
        None
    );
}

/// Where the type check sits in the order: after the signature (a forged token is a bad
/// signature, whatever its claims), before the values are judged (an expired token with a
/// wrong-typed claim is malformed), and never cached.
#[test]
fn the_type_check_runs_after_the_signature_and_before_the_values() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({}));
    let stranger = p256::ecdsa::SigningKey::from_slice(&keys.stranger.to_bytes()).unwrap();
    let forged = signed_with(&stranger, &claims_with("sub", json!(42)));
    assert_eq!(
        decide(&engine, &forged).map(|d| d.reason),
        Some(Reason::BadSignature)
    );
    let mut c = claims_with("aud", json!([AUDIENCE, 7]));
    c.insert("exp".to_owned(), json!(now() - 3600));
    assert_eq!(
        decide(&engine, &signed(&keys, &c)),
        malformed("aud array has a member that is not a string")
    );
    let t = signed(&keys, &claims_with("sub", json!(42)));
    assert_eq!(decide(&engine, &t), malformed("sub claim is not a string"));
    assert_eq!(decide(&engine, &t), malformed("sub claim is not a string"));
    assert_eq!(engine.cache_len(), 0);
}
