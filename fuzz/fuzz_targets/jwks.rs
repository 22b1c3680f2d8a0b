//! JWKS documents: `KeySet::from_json`, and every key object through `jwk::thumbprint` and
//! `jwk::parse_public_jwk`. Invariants: a duplicate member refuses the document; the cap on
//! keys holds, parsing text and parsing the
//! same JSON value agree, and a key that parses has a thumbprint that is stable.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokenbind_core::jwk::{self, Alg, KeySet, MAX_KEYS};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = KeySet::from_json(text);
    // A document with a member name twice in one object is refused as a whole (the strict
    // parse, `json.rs`), whatever a last-wins reading of it would give.
    if let Err(tokenbind_core::json::JsonError::Duplicate(_)) = tokenbind_core::json::from_str(text)
    {
        assert!(
            parsed.is_err(),
            "a JWKS with a duplicate member was accepted"
        );
        return;
    }
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
        let from_value = KeySet::from_value(&value);
        assert_eq!(
            parsed.as_ref().map(KeySet::len).map_err(|e| e.path.clone()),
            from_value
                .as_ref()
                .map(KeySet::len)
                .map_err(|e| e.path.clone()),
            "from_json and from_value disagree"
        );
        if let Some(list) = value.get("keys").and_then(|k| k.as_array()) {
            for jwk in list.iter().filter_map(|k| k.as_object()) {
                let thumb = jwk::thumbprint(jwk);
                if let Ok(key) = jwk::parse_public_jwk(jwk) {
                    let t = thumb.as_ref().expect("a key that parses has a thumbprint");
                    assert_eq!(Ok(t), jwk::thumbprint(jwk).as_ref());
                    assert_eq!(
                        key.kty(),
                        jwk.get("kty").and_then(|v| v.as_str()).unwrap_or("")
                    );
                }
            }
        }
    }
    match parsed {
        Ok(keys) => {
            assert!(keys.len() <= MAX_KEYS, "more than MAX_KEYS keys");
            assert_eq!(keys.is_empty(), keys.len() == 0);
            for k in keys.keys() {
                assert!(keys.contains(k.key.fingerprint()));
            }
            for alg in Alg::ALL {
                for c in keys.candidates(None, alg) {
                    assert!(c.accepts(alg));
                }
                let _ = keys.candidates(Some("es-1"), alg).count();
            }
        }
        Err(e) => assert!(!e.message.is_empty()),
    }
});
