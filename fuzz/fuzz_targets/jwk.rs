//! A DPoP proof's `jwk` header member: `jwk::thumbprint` (RFC 7638) and
//! `jwk::parse_public_jwk` on arbitrary JSON objects. Invariants: a key that parses has a
//! thumbprint; the thumbprint is 43 base64url characters and ignores member order and
//! non-required members; the parsed key's `kty` is the JWK's.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokenbind_core::jwk;

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let thumb = jwk::thumbprint(&obj);
    if let Ok(t) = &thumb {
        assert_eq!(
            t.len(),
            43,
            "a SHA-256 thumbprint is 43 base64url characters"
        );
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        // Extra members (kid, use, alg, anything) never change the thumbprint.
        let mut extended = obj.clone();
        extended.insert("kid".into(), Value::from("fuzz"));
        extended.insert("zzz".into(), Value::from(1));
        if !obj.contains_key("kid") && !obj.contains_key("zzz") {
            assert_eq!(jwk::thumbprint(&extended).as_ref(), Ok(t));
        }
    }
    if let Ok(key) = jwk::parse_public_jwk(&obj) {
        assert!(thumb.is_ok(), "a key that parses must have a thumbprint");
        assert_eq!(Some(key.kty()), obj.get("kty").and_then(Value::as_str));
        let _ = key.spki();
    }
});
