//! Differential: tokenbind's compact-JWS parse-and-verify against jwt-simple (an independent
//! JWT implementation: its own base64url decoder, typed JOSE header and claims, and for Ed25519
//! its own signature code), compared on accept/reject.
//!
//! What is compared: the final verdict of verifying one token at the fixed clock, with the same
//! fixed key set (ES256 `es-1`, RS256 `rs-1`, EdDSA `ed-1`) and the claim checks jwt-simple also
//! does aligned: issuer (exact, must be present), audience (one accepted value), `exp`, `nbf`
//! and `iat` with 60 s of leeway. Key selection is aligned too: jwt-simple tries every key, and
//! when the header has a `kid` it must be that key's (tokenbind's `kid` match). tokenbind's
//! checks that jwt-simple does not do (binding, SPIFFE, DPoP, `cnf`) are outside `jwt::verify`'s
//! verdict here or listed below. Size limits are off on jwt-simple's side (tokenbind's
//! `max_token_bytes` is enforced before `jwt::verify`).
//!
//! Every known, intended difference in policy is filtered in `policy_difference` below, each
//! with the RFC that allows it; anything else that one side accepts and the other rejects is a
//! crash, with a message saying which side accepted and why the other refused.
#![no_main]
use jwt_simple::prelude::*;
use jwt_simple::JWTError;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use std::rc::Rc;
use tokenbind_core::jwk::KeySet;
use tokenbind_core::{jwt, Crypto, Denial};
use tokenbind_fuzz::differential::{js_keys, jwt_simple, options};
use tokenbind_fuzz::{config, token_from_input, NOW};

fn jwt_simple_error_is(token: &str, what: JWTError) -> bool {
    let k = js_keys();
    let opts = || Some(options(None));
    let probe = [
        k.es256
            .verify_token::<Map<String, Value>>(token, opts())
            .err(),
        k.rs256
            .verify_token::<Map<String, Value>>(token, opts())
            .err(),
        k.eddsa
            .verify_token::<Map<String, Value>>(token, opts())
            .err(),
    ];
    probe.iter().flatten().any(|e| {
        e.downcast_ref::<JWTError>()
            .is_some_and(|j| std::mem::discriminant(j) == std::mem::discriminant(&what))
    })
}

fn decode_part(token: &str, i: usize) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let part = token.split('.').nth(i)?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()
}

fn json_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// Whether a JSON text has an object with a repeated member name, at any depth.
fn has_duplicate_members(bytes: &[u8]) -> bool {
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
    struct Dup(bool);
    impl<'de> Visitor<'de> for &mut Dup {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key) {
                    self.0 = true;
                }
                map.next_value_seed(Seed(&mut *self))?;
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Seed(&mut *self))?.is_some() {}
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }
    struct Seed<'a>(&'a mut Dup);
    impl<'de> serde::de::DeserializeSeed<'de> for Seed<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self.0)
        }
    }
    let mut dup = Dup(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let _ = de.deserialize_any(&mut dup);
    dup.0
}

const STRING_HEADER_MEMBERS: [&str; 9] = [
    "cty", "typ", "jku", "jwk", "x5u", "x5t", "x5t#S256", "salt", "kid",
];

/// A known, intended difference between the two verdicts, or `None`.
fn policy_difference(
    token: &str,
    tb: &Result<(), Denial>,
    js_accepted: bool,
) -> Option<&'static str> {
    let header = decode_part(token, 0);
    let claims = decode_part(token, 1);
    // RFC 7515 §4 and RFC 7519 §4: a parser must either reject duplicate member names or keep
    // the lexically last one. tokenbind refuses every duplicate, at any depth (json.rs);
    // jwt-simple's typed structs reject a repeated known field but skip repeated unknown ones.
    if header.as_deref().is_some_and(has_duplicate_members)
        || claims.as_deref().is_some_and(has_duplicate_members)
    {
        return Some(
            "duplicate member names (RFC 7515 §4: reject or last-wins; tokenbind rejects)",
        );
    }
    // RFC 7515 §4 and §7.2 step 2 (and RFC 8259 §8.1): the JOSE header and the claims are
    // UTF-8 JSON. tokenbind refuses invalid UTF-8 anywhere in them; jwt-simple's typed
    // structs skip the values of members they do not know without validating them, so a
    // header like {"alg":"ES256","x":"\xff"} verifies there. Found by this target; pinned by
    // filter/core/tests/fuzz_regressions.rs.
    let not_utf8 = |part: &Option<Vec<u8>>| {
        part.as_deref()
            .is_some_and(|b| std::str::from_utf8(b).is_err())
    };
    if js_accepted && (not_utf8(&header) || not_utf8(&claims)) {
        return Some("invalid UTF-8 in the header or claims (RFC 7515 §4, RFC 8259 §8.1)");
    }
    let header = header.as_deref().and_then(json_object);
    let claims = claims.as_deref().and_then(json_object);
    if js_accepted {
        let Err(d) = tb else { return None };
        return match d.detail {
            // RFC 7519 §4.1.4 makes exp optional; tokenbind requires it (README, decision table).
            "token has no exp claim" => Some("exp required by tokenbind"),
            // RFC 7515 §4.1.11: "crit" must not be the empty list; tokenbind refuses any crit,
            // jwt-simple only a non-empty one.
            "JOSE header has crit extensions" => Some("crit: [] refused (RFC 7515 §4.1.11)"),
            // RFC 9449 §4.2 / RFC 8725 §3.11 explicit typing: a dpop+jwt is never an access token.
            "a DPoP proof is not an access token" => Some("typ dpop+jwt refused (RFC 8725 §3.11)"),
            // RFC 7800 §3.1: cnf is a JSON object; RFC 9449 §6.1: jkt is a string. jwt-simple
            // does not look at cnf.
            "cnf claim is not a JSON object"
            | "cnf.jkt is not a string"
            | "cnf.x5t#S256 is not a string" => Some("cnf malformed (RFC 7800 §3.1)"),
            // RFC 7519 §4.1.2: sub is a StringOrURI. jwt-simple reads `"sub": null` as no sub
            // (an `Option`); tokenbind refuses a null like any other non-string. Every other
            // non-string sub both refuse.
            "sub claim is not a string" => claims
                .as_ref()
                .and_then(|c| c.get("sub"))
                .filter(|v| v.is_null())
                .map(|_| "sub: null refused (RFC 7519 §4.1.2: a StringOrURI)"),
            // RFC 7519 §4.1.4: the current time MUST be before exp (plus leeway): tokenbind
            // refuses at exp + leeway exactly, jwt-simple still accepts that second.
            "exp is in the past" => claims
                .as_ref()
                .and_then(|c| c.get("exp"))
                .and_then(Value::as_u64)
                .filter(|exp| exp + 60 == NOW)
                .map(|_| "exp boundary (RFC 7519 §4.1.4: now must be before exp)"),
            // RFC 9864 registers the fully-specified "Ed25519"; tokenbind's allow-list has
            // RFC 8037's "EdDSA" only, jwt-simple takes both names.
            "unknown alg" => header
                .as_ref()
                .and_then(|h| h.get("alg"))
                .filter(|a| *a == "Ed25519")
                .map(|_| "alg Ed25519 is not on tokenbind's list"),
            _ => None,
        };
    }
    // tokenbind accepted, jwt-simple refused.
    // RFC 7515 §4.1.9 / RFC 7519 §5.1: typ is for the application; a JWS verifier need not
    // check it. jwt-simple insists on JWT or */*+JWT.
    if jwt_simple_error_is(token, JWTError::NotJWT) {
        return Some("typ not JWT (RFC 7519 §5.1: typ is optional and advisory)");
    }
    if let Some(h) = &header {
        // jwt-simple types header members tokenbind never reads: cty, typ, jku, jwk, x5u, x5t,
        // x5t#S256, salt as strings (RFC 7515 §4.1.3 even makes jwk an object, which its struct
        // cannot hold) and x5c, crit as string arrays. tokenbind reads alg, kid (strings,
        // enforced), typ (only to refuse dpop+jwt) and the presence of crit.
        let odd_string = STRING_HEADER_MEMBERS
            .iter()
            .any(|m| h.get(*m).is_some_and(|v| !v.is_string()));
        let odd_array = ["x5c", "crit"].iter().any(|m| {
            h.get(*m)
                .is_some_and(|v| !v.as_array().is_some_and(|a| a.iter().all(Value::is_string)))
        });
        if odd_string || odd_array {
            return Some("a header member tokenbind ignores has a type jwt-simple refuses");
        }
        // jwt-simple decodes `salt` (an HMAC-only member of its own) as base64url.
        if h.contains_key("salt") {
            return Some("salt header member (jwt-simple-specific)");
        }
    }
    if let Some(c) = &claims {
        // RFC 7519 §2: a NumericDate may be non-integer; jwt-simple takes integers only.
        let odd_date = ["exp", "nbf", "iat"].iter().any(|m| {
            c.get(*m)
                .is_some_and(|v| v.is_number() && v.as_u64().is_none())
        });
        if odd_date {
            return Some("non-integer NumericDate (RFC 7519 §2 allows it)");
        }
        // Claims jwt-simple types and tokenbind does not read for access tokens: a non-string
        // jti or nonce. (A non-string sub or aud member both refuse: tokenbind types every
        // registered claim it reads, see filter/core/tests/claim_types.rs.)
        if ["jti", "nonce"]
            .iter()
            .any(|m| c.get(*m).is_some_and(|v| !v.is_string() && !v.is_null()))
        {
            return Some("a claim of a type jwt-simple refuses and tokenbind does not read");
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let Some(token) = token_from_input(data) else {
        return;
    };
    let config = config();
    let key_sets: Vec<Option<Rc<KeySet>>> = config
        .providers
        .iter()
        .map(|p| p.keys.static_keys().cloned().map(Rc::new))
        .collect();
    let tb = jwt::verify(&token, &config, &key_sets, &Crypto::wasm(), NOW)
        .map(|_| ())
        .map_err(|e| e.denial);
    let js = jwt_simple(&token);
    if tb.is_ok() == js.is_ok() {
        return;
    }
    if policy_difference(&token, &tb, js.is_ok()).is_some() {
        return;
    }
    match (&tb, &js) {
        (Ok(()), Err(errors)) => panic!(
            "DISAGREEMENT: tokenbind accepted, jwt-simple rejected: {errors:?}\ntoken: {token}"
        ),
        (Err(d), Ok(kid)) => panic!(
            "DISAGREEMENT: jwt-simple accepted (key {kid}), tokenbind rejected: {} ({})\ntoken: {token}",
            d.reason.as_str(),
            d.detail
        ),
        _ => unreachable!(),
    }
});
