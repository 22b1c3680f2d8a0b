//! Configuration errors name the offending field; good configurations compile.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use serde_json::{json, Value};
use tokenbind_core::{Config, Mode};

fn parse(cfg: &Value) -> Result<Config, tokenbind_core::ConfigError> {
    Config::from_json(cfg.to_string().as_bytes(), &|path| {
        if path == "/etc/tokenbind/jwks.json" {
            Ok(Keys::new().jwks().to_string())
        } else {
            Err("No such file or directory".into())
        }
    })
}

fn field_of(cfg: Value) -> String {
    match parse(&cfg) {
        Ok(_) => panic!("accepted: {cfg}"),
        Err(e) => {
            // The full message always carries the field path.
            assert!(e.to_string().contains(&e.field), "{e}");
            e.field
        }
    }
}

fn with_provider(keys: &Keys, provider: Value) -> Value {
    let mut p =
        json!({"name": "mesh", "issuer": ISSUER, "audiences": [AUDIENCE], "jwks": keys.jwks()});
    merge(&mut p, provider);
    config_json(keys, json!({"providers": [p]}))
}

#[test]
fn defaults() {
    let keys = Keys::new();
    let cfg = json!({"providers": [{"name": "mesh", "issuer": ISSUER, "audiences": [AUDIENCE], "jwks": keys.jwks()}]});
    let c = parse(&cfg).unwrap();
    assert_eq!(c.mode, Mode::Enforce);
    assert!(c.require_binding);
    assert!(c.spiffe.is_none());
    assert_eq!(c.cache_max_entries, 10_000);
    assert_eq!(c.max_token_bytes, 8192);
    assert_eq!(c.realm, "tokenbind");
    assert_eq!(c.providers[0].algorithms.len(), 9);
    assert_eq!(c.providers[0].clock_skew_seconds, 60);
    assert_eq!(c.providers[0].keys.static_keys().unwrap().len(), 3);
}

#[test]
fn the_documented_example_parses() {
    let keys = Keys::new();
    let cfg = config_json(
        &keys,
        json!({"require_binding": true, "cache": {"max_entries": 10000}}),
    );
    let c = parse(&cfg).unwrap();
    assert_eq!(c.spiffe.unwrap().claim, vec!["sub".to_owned()]);
}

#[test]
fn jwks_as_a_json_string_and_from_a_file() {
    let keys = Keys::new();
    let c = parse(&with_provider(
        &keys,
        json!({"jwks": keys.jwks().to_string()}),
    ))
    .unwrap();
    assert_eq!(c.providers[0].keys.static_keys().unwrap().len(), 3);
    let c = parse(&with_provider(
        &keys,
        json!({"jwks": null, "jwks_file": "/etc/tokenbind/jwks.json"}),
    ))
    .unwrap();
    assert_eq!(c.providers[0].keys.static_keys().unwrap().len(), 3);
}

#[test]
fn errors_name_the_field() {
    let keys = Keys::new();
    let cases: Vec<(Value, &str)> = vec![
        (config_json(&keys, json!({"bogus_field": 1})), "bogus_field"),
        (
            with_provider(&keys, json!({"bogus_field": 1})),
            "providers[0].bogus_field",
        ),
        (
            config_json(
                &keys,
                json!({"spiffe": {"claim": "sub", "trust_domain": ["x"]}}),
            ),
            "spiffe.trust_domain",
        ),
        (config_json(&keys, json!({"mode": "enforcing"})), "mode"),
        (config_json(&keys, json!({"providers": []})), "providers"),
        (config_json(&keys, json!({"providers": null})), ""),
        (
            with_provider(&keys, json!({"issuer": ""})),
            "providers[0].issuer",
        ),
        (
            with_provider(&keys, json!({"audiences": []})),
            "providers[0].audiences",
        ),
        (
            with_provider(&keys, json!({"audiences": "x"})),
            "providers[0].audiences",
        ),
        (
            with_provider(&keys, json!({"algorithms": ["ES256", "HS256"]})),
            "providers[0].algorithms[1]",
        ),
        (
            with_provider(&keys, json!({"algorithms": ["none"]})),
            "providers[0].algorithms[0]",
        ),
        (
            with_provider(&keys, json!({"algorithms": ["ES257"]})),
            "providers[0].algorithms[0]",
        ),
        (
            with_provider(&keys, json!({"clock_skew_seconds": -1})),
            "providers[0].clock_skew_seconds",
        ),
        (
            with_provider(&keys, json!({"clock_skew_seconds": 100000})),
            "providers[0].clock_skew_seconds",
        ),
        (
            with_provider(&keys, json!({"jwks": null})),
            "providers[0].jwks",
        ),
        (
            with_provider(&keys, json!({"jwks_file": "/etc/tokenbind/jwks.json"})),
            "providers[0].jwks",
        ),
        (
            with_provider(&keys, json!({"jwks": null, "jwks_file": "/nope.json"})),
            "providers[0].jwks_file",
        ),
        (
            with_provider(&keys, json!({"jwks": "{not json"})),
            "providers[0].jwks",
        ),
        (
            with_provider(&keys, json!({"jwks": {"nokeys": []}})),
            "providers[0].jwks.keys",
        ),
        (
            with_provider(&keys, json!({"jwks": {"keys": {}}})),
            "providers[0].jwks.keys",
        ),
        (
            with_provider(&keys, json!({"jwks": {"keys": []}})),
            "providers[0].jwks",
        ),
        (
            with_provider(
                &keys,
                json!({"jwks": {"keys": [{"kty": "EC", "crv": "P-256", "x": "!!", "y": "AA"}]}}),
            ),
            "providers[0].jwks.keys[0].x",
        ),
        (
            with_provider(
                &keys,
                json!({"jwks": {"keys": [{"kty": "EC", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[2; 32])}]}}),
            ),
            "providers[0].jwks.keys[0].x",
        ),
        (
            with_provider(
                &keys,
                json!({"jwks": {"keys": [{"kty": "EC", "crv": "P-256", "x": b64(&[1; 31]), "y": b64(&[2; 32])}]}}),
            ),
            "providers[0].jwks.keys[0].x",
        ),
        (
            with_provider(
                &keys,
                json!({"jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519"}]}}),
            ),
            "providers[0].jwks.keys[0].x",
        ),
        (
            with_provider(
                &keys,
                json!({"jwks": {"keys": [{"kty": "RSA", "n": b64(&[0xff; 128]), "e": "AQAB"}]}}),
            ),
            "providers[0].jwks.keys[0].n",
        ),
        (
            with_provider(&keys, json!({"jwks": {"keys": [{"crv": "P-256"}]}})),
            "providers[0].jwks.keys[0].kty",
        ),
        (
            with_provider(
                &keys,
                json!({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}),
            ),
            "providers[0].jwks",
        ),
        (
            with_provider(&keys, json!({"algorithms": ["PS512"]})),
            "providers[0].jwks",
        ),
        (
            config_json(&keys, json!({"spiffe": {"claim": "act..sub"}})),
            "spiffe.claim",
        ),
        (
            config_json(&keys, json!({"spiffe": {"trust_domains": []}})),
            "spiffe.trust_domains",
        ),
        (
            config_json(
                &keys,
                json!({"spiffe": {"trust_domains": ["Cluster.Local"]}}),
            ),
            "spiffe.trust_domains[0]",
        ),
        (
            config_json(&keys, json!({"exempt_paths": ["healthz"]})),
            "exempt_paths[0]",
        ),
        (
            config_json(&keys, json!({"cache": {"max_entries": 5_000_000}})),
            "cache.max_entries",
        ),
        (
            config_json(&keys, json!({"cache": {"max_size": 5}})),
            "cache.max_size",
        ),
        (
            config_json(&keys, json!({"max_token_bytes": 10})),
            "max_token_bytes",
        ),
        (config_json(&keys, json!({"realm": "a\"b"})), "realm"),
        (
            config_json(&keys, json!({"require_binding": "yes"})),
            "require_binding",
        ),
    ];
    let mut failures = Vec::new();
    for (cfg, want) in cases {
        let got = field_of(cfg.clone());
        if got != want {
            failures.push(format!(
                "want field {want:?}, got {got:?} for {}",
                cfg.to_string().chars().take(160).collect::<String>()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn duplicate_names_and_issuers_are_refused() {
    let keys = Keys::new();
    let p = json!({"name": "mesh", "issuer": ISSUER, "audiences": [AUDIENCE], "jwks": keys.jwks()});
    let mut q = p.clone();
    q["issuer"] = json!("https://other.example");
    assert_eq!(
        field_of(config_json(&keys, json!({"providers": [p, q]}))),
        "providers[1].name"
    );
    let mut q = p.clone();
    q["name"] = json!("other");
    assert_eq!(
        field_of(config_json(&keys, json!({"providers": [p, q]}))),
        "providers[1].issuer"
    );
}

#[test]
fn unknown_field_message_says_which_field() {
    let keys = Keys::new();
    let err = parse(&with_provider(&keys, json!({"bogus_field": 1}))).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "invalid configuration: providers[0].bogus_field: unknown field `bogus_field`"
        ),
        "{msg}"
    );
}

#[test]
fn not_json_at_all() {
    let err = Config::from_json(b"mode: enforce", &|_| Err(String::new())).unwrap_err();
    assert!(
        err.to_string().starts_with("invalid configuration"),
        "{err}"
    );
}

#[test]
fn skipped_keys_are_reported_not_fatal() {
    let keys = Keys::new();
    let mut jwks = keys.jwks();
    let list = jwks["keys"].as_array_mut().unwrap();
    list.push(json!({"kty": "EC", "crv": "P-256", "use": "enc", "x": "AA", "y": "AA"}));
    list.push(json!({"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA"}));
    list.push(json!({"kty": "EC", "crv": "P-256", "d": "AA", "x": "AA", "y": "AA"}));
    list.push(json!({"kty": "XYZ"}));
    let c = parse(&with_provider(&keys, json!({"jwks": jwks}))).unwrap();
    assert_eq!(c.providers[0].keys.static_keys().unwrap().len(), 3);
    let whys: Vec<usize> = c.providers[0]
        .keys
        .static_keys()
        .unwrap()
        .skipped
        .iter()
        .map(|s| s.index)
        .collect();
    assert_eq!(whys, vec![3, 4, 5, 6]);
}

#[test]
fn remote_jwks() {
    let keys = Keys::new();
    let c = parse(&with_provider(
        &keys,
        json!({"jwks": null, "remote_jwks": {"cluster": "issuer", "uri": "https://issuer.example/.well-known/jwks.json"}}),
    ))
    .unwrap();
    let tokenbind_core::config::KeySource::Remote(r) = &c.providers[0].keys else {
        panic!("not remote");
    };
    assert_eq!(
        (r.authority.as_str(), r.path.as_str()),
        ("issuer.example", "/.well-known/jwks.json")
    );
    assert_eq!(
        (
            r.cache_duration_seconds,
            r.timeout_ms,
            r.jitter_percent,
            r.refetch_min_interval_seconds
        ),
        (600, 2000, 10, 30)
    );
    // Discovery defaults the URI to the issuer.
    let c = parse(&with_provider(
        &keys,
        json!({"jwks": null, "remote_jwks": {"cluster": "issuer", "discovery": true}}),
    ))
    .unwrap();
    let tokenbind_core::config::KeySource::Remote(r) = &c.providers[0].keys else {
        panic!("not remote");
    };
    assert!(r.discovery);
    assert_eq!(r.authority, "issuer.example");

    let bad: Vec<(Value, &str)> = vec![
        (
            json!({"remote_jwks": {"cluster": "issuer", "uri": "https://i/j"}}),
            "providers[0].jwks",
        ),
        (
            json!({"jwks": null, "remote_jwks": {"uri": "https://i/j"}}),
            "providers[0].remote_jwks",
        ),
        (
            json!({"jwks": null, "remote_jwks": {"cluster": "", "uri": "https://i/j"}}),
            "providers[0].remote_jwks.cluster",
        ),
        (
            json!({"jwks": null, "remote_jwks": {"cluster": "c"}}),
            "providers[0].remote_jwks.uri",
        ),
        (
            json!({"jwks": null, "remote_jwks": {"cluster": "c", "uri": "/jwks"}}),
            "providers[0].remote_jwks.uri",
        ),
        (
            json!({"jwks": null, "remote_jwks": {"cluster": "c", "uri": "https://i/j", "timeout_ms": 5}}),
            "providers[0].remote_jwks.timeout_ms",
        ),
        (
            json!({"jwks": null, "remote_jwks": {"cluster": "c", "uri": "https://i/j", "jitter_percent": 90}}),
            "providers[0].remote_jwks.jitter_percent",
        ),
        (
            json!({"jwks": null, "remote_jwks": {"cluster": "c", "uri": "https://i/j", "cache_duration_seconds": 0}}),
            "providers[0].remote_jwks.cache_duration_seconds",
        ),
        (
            json!({"jwks": null, "remote_jwks": {"cluster": "c", "uri": "https://i/j", "max_body_bytes": 10}}),
            "providers[0].remote_jwks.max_body_bytes",
        ),
        (
            json!({"jwks": null, "remote_jwks": {"cluster": "c", "uri": "https://i/j", "refresh": 1}}),
            "providers[0].remote_jwks.refresh",
        ),
    ];
    for (provider, want) in bad {
        assert_eq!(
            field_of(with_provider(&keys, provider.clone())),
            want,
            "{provider}"
        );
    }
}
