//! One meaning per token: a JSON member name that occurs twice in one object is refused in
//! every JSON the filter reads (token header and claims, DPoP proof header, claims and `jwk`,
//! JWKS, plugin config). Tokens and proofs here are signed properly over the exact bytes, so
//! the duplicate is the only thing wrong with them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use p256::ecdsa::signature::Signer as _;
use serde_json::{json, Value};
use tokenbind_core::config::DpopSettings;
use tokenbind_core::dpop::{self, access_token_hash, ProofKeyCache};
use tokenbind_core::jwk::{thumbprint, KeySet};
use tokenbind_core::{Config, Crypto, Denial, MockHost, Outcome, Reason};

/// Signs the exact header and claims text with the issuer's ES256 key (`kid` es-1).
fn signed(keys: &Keys, header: &str, claims: &str) -> String {
    let key = p256::ecdsa::SigningKey::from_slice(&keys.es256.to_bytes()).unwrap();
    let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    format!("{input}.{}", b64(&sig.to_bytes()))
}

const HEADER: &str = r#"{"alg":"ES256","typ":"JWT","kid":"es-1"}"#;

/// The standard claims as JSON text with `extra` (members, no braces) appended: a duplicate
/// when `extra` repeats a name.
fn claims_text(overrides: Value, extra: &str) -> String {
    let text = Value::Object(claims(overrides)).to_string();
    if extra.is_empty() {
        return text;
    }
    format!("{},{extra}}}", &text[..text.len() - 1])
}

fn decide(keys: &Keys, token: &str) -> Option<Denial> {
    let engine = engine(keys, json!({}));
    let host = MockHost::new()
        .with_header(":path", "/api/orders")
        .with_header("authorization", &format!("Bearer {token}"))
        .with_peer(client_peer());
    engine.decide(&host, now()).denial()
}

fn malformed(detail: &'static str) -> Option<Denial> {
    Some(Denial::new(Reason::MalformedToken, detail))
}

#[test]
fn the_fixture_is_a_good_token_without_the_duplicate() {
    let keys = Keys::new();
    assert_eq!(
        decide(&keys, &signed(&keys, HEADER, &claims_text(json!({}), ""))),
        None
    );
}

#[test]
fn a_duplicate_sub_is_malformed_whichever_comes_first() {
    let keys = Keys::new();
    let attacker = format!(r#""sub":"{ATTACKER}""#);
    // Last-wins would bind the token to the attacker, first-wins to the client.
    let t = signed(&keys, HEADER, &claims_text(json!({}), &attacker));
    assert_eq!(
        decide(&keys, &t),
        malformed("claims has a duplicate member /sub")
    );
    let t = signed(
        &keys,
        HEADER,
        &claims_text(json!({"sub": ATTACKER}), &format!(r#""sub":"{CLIENT}""#)),
    );
    assert_eq!(
        decide(&keys, &t),
        malformed("claims has a duplicate member /sub")
    );
}

#[test]
fn a_duplicate_alg_is_malformed_even_when_the_signature_fits_the_last_one() {
    let keys = Keys::new();
    let claims = claims_text(json!({}), "");
    for header in [
        r#"{"alg":"none","typ":"JWT","kid":"es-1","alg":"ES256"}"#,
        r#"{"alg":"ES256","typ":"JWT","kid":"es-1","alg":"none"}"#,
        r#"{"alg":"ES256","typ":"JWT","kid":"es-1","alg":"ES256"}"#,
    ] {
        let t = signed(&keys, header, &claims);
        assert_eq!(
            decide(&keys, &t),
            malformed("JOSE header has a duplicate member /alg"),
            "{header}"
        );
    }
    let t = signed(
        &keys,
        r#"{"alg":"ES256","kid":"es-1","kid":"es-1"}"#,
        &claims,
    );
    assert_eq!(
        decide(&keys, &t),
        malformed("JOSE header has a duplicate member /kid")
    );
}

#[test]
fn a_duplicate_nested_member_is_malformed() {
    let keys = Keys::new();
    let t = signed(
        &keys,
        HEADER,
        &claims_text(
            json!({"sub": null}),
            &format!(
                r#""sub":"{CLIENT}","cnf":{{"x5t#S256":"{CLIENT_CERT_X5T_S256}","x5t#S256":"AAAA"}}"#
            ),
        ),
    );
    assert_eq!(
        decide(&keys, &t),
        malformed("claims has a duplicate member /cnf/x5t#S256")
    );
    let t = signed(
        &keys,
        HEADER,
        &claims_text(json!({}), r#""cnf":{"jkt":"a","jkt":"b"}"#),
    );
    assert_eq!(
        decide(&keys, &t),
        malformed("claims has a duplicate member /cnf/jkt")
    );
    // An unregistered name is refused too, and not echoed into the log detail.
    let t = signed(
        &keys,
        HEADER,
        &claims_text(json!({}), r#""ext":{"role":"user","role":"admin"}"#),
    );
    let d = decide(&keys, &t).unwrap();
    assert_eq!(d.reason, Reason::MalformedToken);
    assert!(!d.detail.contains("role"), "{}", d.detail);
}

#[test]
fn the_same_name_in_different_objects_is_fine() {
    let keys = Keys::new();
    let t = signed(
        &keys,
        r#"{"alg":"ES256","typ":"JWT","kid":"es-1","ext":{"alg":"x","kid":"y"}}"#,
        &claims_text(
            json!({}),
            r#""act":{"sub":"spiffe://cluster.local/ns/default/sa/gw","act":{"sub":"x"}},"list":[{"sub":1},{"sub":2}]"#,
        ),
    );
    assert_eq!(decide(&keys, &t), None);
}

#[test]
fn escaped_names_are_the_same_name() {
    let keys = Keys::new();
    let attacker = format!(r#""s\u0075b":"{ATTACKER}""#);
    let t = signed(&keys, HEADER, &claims_text(json!({}), &attacker));
    assert_eq!(
        decide(&keys, &t),
        malformed("claims has a duplicate member /sub")
    );
    let t = signed(
        &keys,
        r#"{"\u0061lg":"none","typ":"JWT","kid":"es-1","alg":"ES256"}"#,
        &claims_text(json!({}), ""),
    );
    assert_eq!(
        decide(&keys, &t),
        malformed("JOSE header has a duplicate member /alg")
    );
}

// ---- DPoP --------------------------------------------------------------------------------

const URL: &str = "https://orders.mesh.local/api/orders";

fn proof_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap()
}

fn proof_jwk_members(key: &p256::ecdsa::SigningKey) -> String {
    let point = key.verifying_key().to_sec1_point(false);
    let p = point.as_bytes();
    format!(
        r#""kty":"EC","crv":"P-256","x":"{}","y":"{}""#,
        b64(&p[1..33]),
        b64(&p[33..65])
    )
}

fn proof(header: &str, claims: &str) -> String {
    let key = proof_key();
    let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    format!("{input}.{}", b64(&sig.to_bytes()))
}

fn proof_claims(extra: &str) -> String {
    format!(
        r#"{{"jti":"j-1","htm":"GET","htu":"{URL}","iat":{},"ath":"{}"{extra}}}"#,
        now(),
        access_token_hash("token")
    )
}

fn check_proof(p: &str) -> Result<(), Denial> {
    dpop::verify_signature(
        p,
        &DpopSettings::default(),
        &mut ProofKeyCache::new(4),
        &Crypto::wasm(),
    )
    .map(|_| ())
}

fn invalid(detail: &'static str) -> Result<(), Denial> {
    Err(Denial::new(Reason::DpopInvalid, detail))
}

#[test]
fn dpop_proofs_with_a_duplicate_member_are_invalid() {
    let jwk = proof_jwk_members(&proof_key());
    let header = format!(r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{{{jwk}}}}}"#);
    // The fixture without a duplicate verifies.
    assert_eq!(check_proof(&proof(&header, &proof_claims(""))), Ok(()));

    let dup_typ = format!(r#"{{"typ":"JWT","typ":"dpop+jwt","alg":"ES256","jwk":{{{jwk}}}}}"#);
    assert_eq!(
        check_proof(&proof(&dup_typ, &proof_claims(""))),
        invalid("DPoP proof header has a duplicate member /typ")
    );
    // Inside the jwk: a second x would give first-wins and last-wins consumers different keys
    // (and different thumbprints).
    let other_x = b64(&[1; 32]);
    let dup_x = format!(r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{{"x":"{other_x}",{jwk}}}}}"#);
    assert_eq!(
        check_proof(&proof(&dup_x, &proof_claims(""))),
        invalid("DPoP proof header has a duplicate member /jwk/x")
    );
    let dup_jwk = format!(r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{{{jwk}}},"jwk":{{{jwk}}}}}"#);
    assert_eq!(
        check_proof(&proof(&dup_jwk, &proof_claims(""))),
        invalid("DPoP proof header has a duplicate member /jwk")
    );
    for (name, extra) in [
        ("/htu", r#","htu":"https://evil.example/""#.to_owned()),
        ("/htm", r#","htm":"POST""#.to_owned()),
        ("/jti", r#","jti":"j-2""#.to_owned()),
        ("/ath", r#","\u0061th":"x""#.to_owned()),
    ] {
        let got = check_proof(&proof(&header, &proof_claims(&extra)));
        let want = format!("DPoP proof claims has a duplicate member {name}");
        assert_eq!(
            got.map_err(|d| (d.reason, d.detail.to_owned())),
            Err((Reason::DpopInvalid, want))
        );
    }
}

#[test]
fn the_engine_answers_a_duplicate_in_a_proof_with_dpop_invalid() {
    let keys = Keys::new();
    let key = proof_key();
    let jwk: Value = serde_json::from_str(&format!("{{{}}}", proof_jwk_members(&key))).unwrap();
    let jkt = thumbprint(jwk.as_object().unwrap()).unwrap();
    let token = token(&keys, Signer::ES256, json!({"cnf": {"jkt": jkt}}));
    let header = format!(
        r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{{{}}}}}"#,
        proof_jwk_members(&key)
    );
    let claims = |extra: &str| {
        format!(
            r#"{{"jti":"{}","htm":"GET","htu":"{URL}","iat":{},"ath":"{}"{extra}}}"#,
            now(),
            now(),
            access_token_hash(&token)
        )
    };
    let engine = engine(&keys, json!({}));
    let shared = tokenbind_core::host::MemorySharedData::default();
    tokenbind_core::replay::ReplayStore::prepare(&shared);
    let decide = |p: &str| {
        let host = MockHost::new()
            .with_header(":authority", "orders.mesh.local")
            .with_header(":path", "/api/orders")
            .with_header("authorization", &format!("DPoP {token}"))
            .with_header("dpop", p)
            .with_peer(client_peer());
        engine.decide(&WithShared(host, &shared), now())
    };
    let good = decide(&proof(&header, &claims("")));
    assert_eq!(good.outcome, Outcome::Allow, "{:?}", good.denial());
    let bad = decide(&proof(&header, &claims(r#","htm":"GET""#)));
    assert_eq!(
        bad.denial(),
        Some(Denial::new(
            Reason::DpopInvalid,
            "DPoP proof claims has a duplicate member /htm"
        ))
    );
}

/// A mock host with shared data (the replay store).
struct WithShared<'a>(MockHost, &'a tokenbind_core::host::MemorySharedData);

impl tokenbind_core::SharedData for WithShared<'_> {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.1.get(key)
    }
    fn set(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), tokenbind_core::SharedError> {
        self.1.set(key, value, cas)
    }
}

impl tokenbind_core::Host for WithShared<'_> {
    fn request_header(&self, name: &str) -> Option<String> {
        self.0.request_header(name)
    }
    fn request_header_values(&self, name: &str) -> Vec<String> {
        self.0.request_header_values(name)
    }
    fn peer(&self, want: tokenbind_core::peer::PeerWant) -> tokenbind_core::Peer {
        self.0.peer(want)
    }
    fn downstream_tls(&self) -> Option<bool> {
        self.0.downstream_tls()
    }
}

// ---- JWKS and configuration --------------------------------------------------------------

fn config(text: &str) -> Result<Config, String> {
    Config::from_json(text.as_bytes(), &|_| Err("no files".into())).map_err(|e| e.to_string())
}

fn jwks_with_duplicate_kid(keys: &Keys) -> String {
    let text = keys.jwks().to_string();
    let dup = text.replacen(r#""kid":"es-1""#, r#""kid":"es-1","kid":"es-2""#, 1);
    assert_ne!(dup, text);
    dup
}

#[test]
fn a_jwks_with_a_duplicate_member_is_refused_with_its_pointer() {
    let keys = Keys::new();
    assert!(KeySet::from_json(&keys.jwks().to_string()).is_ok());
    let e = KeySet::from_json(&jwks_with_duplicate_kid(&keys)).unwrap_err();
    assert_eq!(e.to_string(), "duplicate member /keys/0/kid");
    let e = KeySet::from_json(r#"{"keys":[],"keys":[]}"#).unwrap_err();
    assert_eq!(e.to_string(), "duplicate member /keys");
}

#[test]
fn an_inline_jwks_with_a_duplicate_member_is_a_config_error_naming_it() {
    let keys = Keys::new();
    // jwks as a JSON string (as Istio/Envoy configs often carry it).
    let mut cfg = config_json(&keys, json!({}));
    cfg["providers"][0]["jwks"] = Value::String(jwks_with_duplicate_kid(&keys));
    assert_eq!(
        config(&cfg.to_string()).unwrap_err(),
        "invalid configuration: providers[0].jwks: duplicate member /keys/0/kid"
    );
    // jwks as an inline object: the duplicate is in the config document itself.
    let cfg = config_json(&keys, json!({})).to_string();
    let cfg = cfg.replacen(r#""kid":"es-1""#, r#""kid":"es-1","kid":"es-2""#, 1);
    assert_eq!(
        config(&cfg).unwrap_err(),
        "invalid configuration: providers[0].jwks.keys[0].kid: duplicate member /providers/0/jwks/keys/0/kid"
    );
    // And a jwks_file.
    let text = jwks_with_duplicate_kid(&keys);
    let mut cfg = config_json(&keys, json!({}));
    cfg["providers"][0]["jwks"] = Value::Null;
    cfg["providers"][0].as_object_mut().unwrap().remove("jwks");
    cfg["providers"][0]["jwks_file"] = json!("/etc/jwks.json");
    let e = Config::from_json(cfg.to_string().as_bytes(), &|_| Ok(text.clone())).unwrap_err();
    assert_eq!(e.field, "providers[0].jwks_file");
    assert_eq!(e.message, "duplicate member /keys/0/kid");
}

#[test]
fn a_plugin_config_with_a_duplicate_member_is_an_error_naming_it() {
    let keys = Keys::new();
    let good = config_json(&keys, json!({})).to_string();
    assert!(config(&good).is_ok());
    let top = format!(r#"{{"mode":"monitor",{}"#, &good[1..]);
    assert_eq!(
        config(&top).unwrap_err(),
        "invalid configuration: mode: duplicate member /mode"
    );
    let issuer = good.replacen(
        r#""issuer":"https://issuer.example""#,
        r#""issuer":"https://issuer.example","issuer":"https://evil.example""#,
        1,
    );
    assert_ne!(issuer, good);
    assert_eq!(
        config(&issuer).unwrap_err(),
        "invalid configuration: providers[0].issuer: duplicate member /providers/0/issuer"
    );
    let nested = good.replacen(
        r#""trust_domains":["cluster.local"]"#,
        r#""trust_domains":["cluster.local"],"claim":"sub""#,
        1,
    );
    assert_ne!(nested, good);
    assert_eq!(
        config(&nested).unwrap_err(),
        "invalid configuration: spiffe.claim: duplicate member /spiffe/claim"
    );
    // A syntax error still gets the typed parser's message, not a duplicate one.
    let e = config(&good[..good.len() - 1]).unwrap_err();
    assert!(!e.contains("duplicate"), "{e}");
}
