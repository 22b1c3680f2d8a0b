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

/// The client's X.509-SVID in tests/data/svid (one URI SAN, CLIENT; cA false; digitalSignature)
/// and its SHA-256, computed independently with `openssl x509 -outform der | sha256sum` and
/// `openssl dgst -sha256 -binary | basenc --base64url`.
pub const CLIENT_CERT_PEM: &str = include_str!("../data/svid/client.pem");
pub const CLIENT_CERT_SHA256_HEX: &str =
    "5b89f15ef8917dc07457d7e0ff7b503b5db5fff675e10bb38883159cb3c5e82b";
pub const CLIENT_CERT_X5T_S256: &str = "W4nxXviRfcB0V9fg_3tQO121__Z14QuziIMVnLPF6Cs";
/// The attacker's X.509-SVID (ATTACKER) and its SHA-256.
pub const ATTACKER_CERT_PEM: &str = include_str!("../data/svid/attacker.pem");
pub const ATTACKER_CERT_SHA256_HEX: &str =
    "1109d97d26971756f7a53501ac901c255f88756297a34491c8fcbb1bf978b309";
/// A valid X.509-SVID for `spiffe://evil.example/ns/default/sa/client`.
pub const EVIL_DOMAIN_CERT_PEM: &str = include_str!("../data/svid/evil-domain.pem");

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A peer as Envoy reports it: URI SAN `id`, digest `sha256_hex`, and, for the IDs that have a
/// certificate in tests/data/svid, that certificate's PEM (`connection.peer_certificate`).
pub fn peer(id: &str, sha256_hex: &str) -> Peer {
    let pem = match id {
        CLIENT => Some(CLIENT_CERT_PEM),
        ATTACKER => Some(ATTACKER_CERT_PEM),
        "spiffe://evil.example/ns/default/sa/client" => Some(EVIL_DOMAIN_CERT_PEM),
        _ => None,
    };
    Peer::from_attributes(Some(&[1]), Some(id.as_bytes()), Some(sha256_hex.as_bytes()))
        .with_certificate_pem(pem.map(|p| p.as_bytes().to_vec()))
}

/// A peer presenting the certificate tests/data/svid/`name`.pem, with the URI SAN (first) and
/// digest Envoy would report for it.
pub fn peer_with_cert(name: &str, first_uri_san: Option<&str>) -> Peer {
    let pem = cert_pem(name);
    let der = pem_body_der(pem);
    let hex: String = sha2_hex(&der);
    Peer::from_attributes(
        Some(&[1]),
        first_uri_san.map(str::as_bytes),
        Some(hex.as_bytes()),
    )
    .with_certificate_pem(Some(pem.as_bytes().to_vec()))
}

/// tests/data/svid/`name`.pem, compiled in (the core tests also run inside V8, without files).
pub fn cert_pem(name: &str) -> &'static str {
    macro_rules! certs {
        ($($n:literal),*) => {
            match name {
                $($n => include_str!(concat!("../data/svid/", $n, ".pem")),)*
                _ => panic!("no test certificate {name}"),
            }
        };
    }
    certs!(
        "client",
        "attacker",
        "gateway",
        "evil-domain",
        "no-basic-constraints",
        "no-key-usage",
        "two-uri-sans",
        "ca-flag",
        "key-cert-sign",
        "crl-sign",
        "no-uri-san",
        "no-san",
        "https-uri-san",
        "root-spiffe-id",
        "bad-spiffe-id"
    )
}

fn sha2_hex(der: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The DER inside a PEM (test helper; the filter's own decoder is not used).
pub fn pem_body_der(pem: &str) -> Vec<u8> {
    use base64::engine::general_purpose::STANDARD;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
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
