//! Inputs found by the fuzz targets (`fuzz/`, README "Fuzzing"), each pinned here with the
//! answer tokenbind must give. The tokens are signed with the fuzz crate's fixed keys, derived
//! here the same way (`fuzz/src/lib.rs`), at its fixed clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::rc::Rc;
use tokenbind_core::{jwt, Config, Crypto, Reason};

const NOW: u64 = 1_750_000_000;
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "spiffe://cluster.local/ns/default/sa/server";

fn key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&Sha256::digest(b"tokenbind fuzz P-256")).unwrap()
}

fn config() -> Config {
    let point = key().verifying_key().to_sec1_point(false);
    let sec1 = point.as_bytes();
    let cfg = json!({
        "providers": [{
            "name": "mesh", "issuer": ISSUER, "audiences": [AUDIENCE],
            "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "kid": "es-1", "alg": "ES256",
                "x": URL_SAFE_NO_PAD.encode(&sec1[1..33]), "y": URL_SAFE_NO_PAD.encode(&sec1[33..65])}]}
        }],
        "crypto": "wasm"
    });
    Config::from_json(cfg.to_string().as_bytes(), &|_| Err("no files".into())).unwrap()
}

fn sign(header: &[u8], claims: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig: p256::ecdsa::Signature = key().sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

fn verify(token: &str) -> Result<(), (Reason, &'static str)> {
    let config = config();
    let keys = vec![config.providers[0].keys.static_keys().cloned().map(Rc::new)];
    jwt::verify(token, &config, &keys, &Crypto::wasm(), NOW)
        .map(|_| ())
        .map_err(|e| (e.denial.reason, e.denial.detail))
}

const CLAIMS: &str = r#"{"aud":"spiffe://cluster.local/ns/default/sa/server","exp":1750003600,"iat":1749999990,"iss":"https://issuer.example","nbf":1749999990,"sub":"spiffe://cluster.local/ns/deeault/sa/client"}"#;

/// jws_differential, crash-6770244285252e6cc27f4f7c95b31e4842609729: a validly signed token
/// whose JOSE header has invalid UTF-8 (0xff 0xff 0xff) in the value of a member nobody knows.
/// jwt-simple accepts it (its typed header skips unknown members unvalidated); the header is
/// not UTF-8 JSON (RFC 7515 §4, RFC 8259 §8.1), so tokenbind refuses it as malformed.
#[test]
fn header_with_invalid_utf8_in_an_unknown_member_is_malformed() {
    let token = "eyJhbGciOiJFUzI1NiIsImprdGtpZCI6Iv___2MiLCJ0eXAiOiJKV1QifQ.eyJhdWQiOiJzcGlmZmU6Ly9jbHVzdGVyLmxvY2FsL25zL2RlZmF1bHQvc2Evc2VydmVyIiwiZXhwIjoxNzUwMDAzNjAwLCJpYXQiOjE3NDk5OTk5OTAsImlzcyI6Imh0dHBzOi8vaXNzdWVyLmV4YW1wbGUiLCJuYmYiOjE3NDk5OTk5OTAsInN1YiI6InNwaWZmZTovL2NsdXN0ZXIubG9jYWwvbnMvZGVlYXVsdC9zYS9jbGllbnQifQ.zCC1T3clNsTFCTFPBXo96wjWJwXV1yo9gFIBPbtS_iQVgvBhuEGRS0362PnOc4EqEUSfDG0XzZ5q78WvQ8K0Mg";
    let header = b"{\"alg\":\"ES256\",\"jktkid\":\"\xff\xff\xffc\",\"typ\":\"JWT\"}";
    // The fuzzer's token is exactly this header and these claims, signed by the fuzz key:
    // so the refusal is about the bytes, not the signature.
    assert_eq!(sign(header, CLAIMS.as_bytes()), token);
    assert_eq!(
        verify(token),
        Err((
            Reason::MalformedToken,
            "JOSE header is not base64url JSON object"
        ))
    );
    // The same member with valid UTF-8 (U+00FF, escaped or not) verifies.
    let fixed = "{\"alg\":\"ES256\",\"jktkid\":\"\u{ff}\u{ff}\u{ff}c\",\"typ\":\"JWT\"}";
    assert_eq!(verify(&sign(fixed.as_bytes(), CLAIMS.as_bytes())), Ok(()));
    let escaped = br#"{"alg":"ES256","jktkid":"\u00ff\u00ff\u00ffc","typ":"JWT"}"#;
    assert_eq!(verify(&sign(escaped, CLAIMS.as_bytes())), Ok(()));
}

/// The same in the claims: invalid UTF-8 in a claim nobody reads is still a malformed token.
#[test]
fn claims_with_invalid_utf8_are_malformed() {
    let claims = CLAIMS
        .replace("\"sub\"", "\"x\":\"\u{1}\",\"sub\"")
        .into_bytes();
    // A byte 0xff where the fuzzer would put it, and U+00FF (valid UTF-8) for comparison.
    let bad: Vec<u8> = claims
        .iter()
        .map(|b| if *b == 1 { 0xff } else { *b })
        .collect();
    let claims = String::from_utf8(claims)
        .unwrap()
        .replace('\u{1}', "\u{ff}");
    let claims = claims.as_bytes();
    assert_eq!(verify(&sign(br#"{"alg":"ES256"}"#, claims)), Ok(()));
    assert_eq!(
        verify(&sign(br#"{"alg":"ES256"}"#, &bad)),
        Err((
            Reason::MalformedToken,
            "claims are not a base64url JSON object"
        ))
    );
}

/// `jwks`, crash-db6a9556…: a JWKS whose fourth key has `use` twice. The target read the
/// document last-wins and expected the filter's answer for that reading; the filter refuses
/// the whole document instead (one meaning per document, README), and names the member.
#[test]
fn a_jwks_with_a_duplicate_member_is_refused_whole() {
    let text = include_str!("../../../fuzz/seeds/jwks/duplicate-use");
    let err = tokenbind_core::jwk::KeySet::from_json(text).unwrap_err();
    assert!(err.message.contains("duplicate member"), "{err:?}");
    assert!(err.message.contains("/keys/3/use"), "{err:?}");
}
