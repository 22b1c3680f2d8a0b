//! JWKS parsing over a corpus of key sets shaped like the ones real issuers publish: strict about
//! the keys it uses, tolerant of the ones it skips.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use tokenbind_core::jwk::{Alg, KeyMaterial, KeySet};

fn load(name: &str) -> KeySet {
    let path = format!("{}/tests/data/jwks/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = match name {
        "rfc7517-a1.json" => include_str!("data/jwks/rfc7517-a1.json"),
        "oidc-provider-x5c.json" => include_str!("data/jwks/oidc-provider-x5c.json"),
        "mixed.json" => include_str!("data/jwks/mixed.json"),
        "duplicate-kids.json" => include_str!("data/jwks/duplicate-kids.json"),
        _ => panic!("unknown corpus file {path}"),
    };
    KeySet::from_json(text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn kids(set: &KeySet) -> Vec<Option<&str>> {
    set.keys().iter().map(|k| k.kid.as_deref()).collect()
}

#[test]
fn rfc7517_appendix_a1_uses_the_rsa_signing_key_and_skips_the_encryption_key() {
    let set = load("rfc7517-a1.json");
    assert_eq!(kids(&set), vec![Some("2011-04-29")]);
    assert!(matches!(set.keys()[0].key.material(), KeyMaterial::Rsa(_)));
    assert_eq!(set.keys()[0].alg, Some(Alg::RS256));
    assert_eq!(set.skipped.len(), 1);
    assert_eq!(set.skipped[0].kid.as_deref(), Some("1"));
}

#[test]
fn provider_keys_with_x5c_and_extra_members_are_used() {
    let set = load("oidc-provider-x5c.json");
    assert_eq!(set.len(), 2);
    assert!(set.skipped.is_empty());
    // No alg on the key: any RSA algorithm may use it, selected by kid.
    let first = &set.keys()[0];
    assert_eq!(first.alg, None);
    assert!(first.accepts(Alg::RS256) && first.accepts(Alg::PS512));
    assert!(!first.accepts(Alg::ES256));
    assert_eq!(
        set.candidates(Some("6UV1qAdvBUefhtQ3efXx8NR4DfE"), Alg::RS256)
            .count(),
        1
    );
}

#[test]
fn p384_and_ed25519_are_used_everything_unsupported_or_private_is_skipped() {
    let set = load("mixed.json");
    assert_eq!(kids(&set), vec![Some("p384"), Some("ed")]);
    assert!(matches!(set.keys()[0].key.material(), KeyMaterial::P384(_)));
    assert!(matches!(
        set.keys()[1].key.material(),
        KeyMaterial::Ed25519(_)
    ));
    let skipped: Vec<(&str, &str)> = set
        .skipped
        .iter()
        .map(|s| (s.kid.as_deref().unwrap_or("-"), s.why))
        .collect();
    assert_eq!(
        skipped,
        vec![
            ("x25519", "unsupported OKP curve"),
            ("k1", "unsupported EC curve"),
            (
                "hmac",
                "carries private key material; publish only public keys"
            ),
            (
                "leaked",
                "carries private key material; publish only public keys"
            ),
            ("wrap", "\"key_ops\" does not include \"verify\""),
            ("future", "\"alg\" is not a supported signature algorithm"),
        ]
    );
}

#[test]
fn duplicate_kids_are_told_apart_by_alg() {
    let set = load("duplicate-kids.json");
    assert_eq!(set.len(), 3);
    let es: Vec<_> = set.candidates(Some("current"), Alg::ES256).collect();
    assert_eq!(es.len(), 1);
    assert!(matches!(es[0].key.material(), KeyMaterial::P256(_)));
    let rs: Vec<_> = set.candidates(Some("current"), Alg::RS256).collect();
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].alg, Some(Alg::RS256));
    let ps: Vec<_> = set.candidates(Some("current"), Alg::PS256).collect();
    assert_eq!(ps.len(), 1);
    assert_eq!(set.candidates(Some("current"), Alg::EdDSA).count(), 0);
    assert_eq!(set.candidates(Some("other"), Alg::ES256).count(), 0);
}

#[test]
fn a_used_key_that_is_malformed_names_its_member() {
    for (doc, path) in [
        (
            r#"{"keys":[{"kty":"EC","crv":"P-384","x":"AAAA","y":"AAAA"}]}"#,
            "keys[0].x",
        ),
        (
            r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#,
            "keys[0].n",
        ),
        (r#"{"keys":[{"kty":"RSA","e":"AQAB"}]}"#, "keys[0].n"),
        (
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AA=="}]}"#,
            "keys[0].x",
        ),
        (
            r#"{"keys":[{"kty":"EC","crv":"P-256","alg":"RS256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}"#,
            "keys[0].alg",
        ),
        (r#"{"keys":[{"kid":7,"kty":"EC"}]}"#, "keys[0].kid"),
        // RFC 7517 A.1's x with a corrupted y: not a point on P-256 (invalid-curve keys refused).
        (
            r#"{"keys":[{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YilurN5XMWJQ8dUQHO3wQ1mTbnQBbmxNZo"}]}"#,
            "keys[0].x",
        ),
        (r#"{"keys":"none"}"#, "keys"),
        (r#"[]"#, ""),
    ] {
        let err = KeySet::from_json(doc).unwrap_err();
        assert_eq!(err.path, path, "{doc}: {err}");
    }
}

#[test]
fn oversized_key_sets_are_refused() {
    let key = r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
    let doc = format!("{{\"keys\":[{}]}}", vec![key; 65].join(","));
    assert_eq!(KeySet::from_json(&doc).unwrap_err().path, "keys");
    let doc = format!("{{\"keys\":[{}]}}", vec![key; 64].join(","));
    assert_eq!(KeySet::from_json(&doc).unwrap().len(), 64);
}
