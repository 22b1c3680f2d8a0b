//! Shared fixtures for the core's tests: keys and tokens minted with jwt-simple, an
//! independent JWT implementation, so the verifier is never only checked against itself.
#![allow(dead_code)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::*;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};
use tokenbind_core::{Config, Engine, Peer};

pub const ISSUER: &str = "https://issuer.example";
pub const AUDIENCE: &str = "spiffe://cluster.local/ns/default/sa/server";
pub const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";
pub const ATTACKER: &str = "spiffe://cluster.local/ns/default/sa/attacker";

/// The client certificate in tests/data and its SHA-256, computed independently with
/// `openssl x509 -fingerprint -sha256` and `openssl dgst -sha256 -binary | basenc --base64url`.
pub const CLIENT_CERT_PEM: &str = include_str!("../data/client-cert.pem");
pub const CLIENT_CERT_SHA256_HEX: &str =
    "c1dd4102be3a7dec5cfce0f4e5bc1d3c2fa54421df96c84ae842343e74b7c80f";
pub const CLIENT_CERT_X5T_S256: &str = "wd1BAr46fexc_OD05bwdPC-lRCHflshK6EI0PnS3yA8";
pub const ATTACKER_CERT_SHA256_HEX: &str =
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn peer(id: &str, sha256_hex: &str) -> Peer {
    Peer::from_attributes(Some(&[1]), Some(id.as_bytes()), Some(sha256_hex.as_bytes()))
}

pub fn client_peer() -> Peer {
    peer(CLIENT, CLIENT_CERT_SHA256_HEX)
}

pub fn attacker_peer() -> Peer {
    peer(ATTACKER, ATTACKER_CERT_SHA256_HEX)
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub struct Keys {
    pub es256: ES256KeyPair,
    pub eddsa: Ed25519KeyPair,
    pub rs256: RS256KeyPair,
    /// A key the issuer never published.
    pub stranger: ES256KeyPair,
}

impl Keys {
    pub fn new() -> Keys {
        Keys {
            es256: ES256KeyPair::generate().with_key_id("es-1"),
            eddsa: Ed25519KeyPair::generate().with_key_id("ed-1"),
            rs256: RS256KeyPair::from_pem(include_str!("../data/rsa2048.pem"))
                .unwrap()
                .with_key_id("rs-1"),
            stranger: ES256KeyPair::generate().with_key_id("es-1"),
        }
    }

    pub fn jwks(&self) -> Value {
        let p = self.es256.public_key().public_key().to_bytes_uncompressed();
        let ed = self.eddsa.public_key().to_bytes();
        let rsa = self.rs256.public_key().to_components();
        json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "es-1", "alg": "ES256", "use": "sig",
             "x": b64(&p[1..33]), "y": b64(&p[33..65])},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "x": b64(&ed)},
            {"kty": "RSA", "kid": "rs-1", "alg": "RS256", "n": b64(&rsa.n), "e": b64(&rsa.e)},
        ]})
    }
}

/// A configuration with one provider for `keys`, with top-level members of `overrides`
/// replacing the defaults (a `null` removes the member).
pub fn config_json(keys: &Keys, overrides: Value) -> Value {
    let mut cfg = json!({
        "mode": "enforce",
        "providers": [{
            "name": "mesh",
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "jwks": keys.jwks(),
            "clock_skew_seconds": 60
        }],
        "spiffe": {"claim": "sub", "trust_domains": ["cluster.local"]},
        "exempt_paths": ["/healthz"]
    });
    merge(&mut cfg, overrides);
    cfg
}

pub fn merge(target: &mut Value, overrides: Value) {
    if let (Some(t), Value::Object(o)) = (target.as_object_mut(), overrides) {
        for (k, v) in o {
            if v.is_null() {
                t.remove(&k);
            } else {
                t.insert(k, v);
            }
        }
    }
}

pub fn engine(keys: &Keys, overrides: Value) -> Engine {
    let cfg = config_json(keys, overrides);
    let config = Config::from_json(cfg.to_string().as_bytes(), &|_| Err("no files".into()))
        .unwrap_or_else(|e| panic!("{e}"));
    Engine::new(config)
}

/// Standard claims for the client, valid now, with `overrides` applied (`null` removes).
pub fn claims(overrides: Value) -> Map<String, Value> {
    let n = now();
    let mut c = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": CLIENT,
        "iat": n - 10,
        "nbf": n - 10,
        "exp": n + 3600,
    });
    merge(&mut c, overrides);
    c.as_object().unwrap().clone()
}

fn jwt_claims(c: Map<String, Value>) -> JWTClaims<HashMap<String, Value>> {
    let mut claims = Claims::with_custom_claims(c.into_iter().collect(), Duration::from_secs(1));
    claims.issued_at = None;
    claims.expires_at = None;
    claims.invalid_before = None;
    claims
}

#[derive(Clone, Copy)]
pub enum Signer {
    ES256,
    EdDSA,
    RS256,
    Stranger,
}

pub fn token(keys: &Keys, signer: Signer, overrides: Value) -> String {
    let c = jwt_claims(claims(overrides));
    match signer {
        Signer::ES256 => keys.es256.sign(c),
        Signer::EdDSA => keys.eddsa.sign(c),
        Signer::RS256 => keys.rs256.sign(c),
        Signer::Stranger => keys.stranger.sign(c),
    }
    .unwrap()
}

/// A token with an arbitrary header and no valid signature.
pub fn raw_token(header: Value, claims: &Map<String, Value>, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(Value::Object(claims.clone()).to_string().as_bytes()),
        b64(signature)
    )
}
