//! Shared fixtures of the fuzz targets: fixed keys (so the seed corpus stays valid across runs),
//! the configuration every token target uses, a fixed clock, and the input convention that
//! lets the fuzzer reach past the signature check.
//!
//! Token inputs (`jws`, `dpop`, `jws_differential`): if the first byte is 0x01 (ES256) or
//! 0x03 (EdDSA), the rest is `header JSON 0x00 claims JSON`, which the harness base64url-encodes
//! and signs with that fixed key, so every mutation of the header or the claims still carries a
//! valid signature. Any other input is the compact token itself. (RS256 tokens are in the seed
//! corpus as compact tokens only: an instrumented RSA-2048 signature costs tens of milliseconds
//! per input, which would cut the fuzzer's speed tenfold; what sign mode reaches, header and
//! claims handling, does not depend on the algorithm.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;
use tokenbind_core::Config;

pub const ISSUER: &str = "https://issuer.example";
pub const AUDIENCE: &str = "spiffe://cluster.local/ns/default/sa/server";
pub const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";
pub const GATEWAY: &str = "spiffe://cluster.local/ns/istio-system/sa/ingressgateway";
/// The client's and the gateway's X.509-SVID leaves (the core's test certificates), what
/// Envoy's `connection.peer_certificate` returns for them, and their SHA-256 (hex).
pub const CLIENT_PEM: &str = include_str!("../../filter/core/tests/data/svid/client.pem");
pub const GATEWAY_PEM: &str = include_str!("../../filter/core/tests/data/svid/gateway.pem");
pub const CLIENT_SHA256: &str = "5b89f15ef8917dc07457d7e0ff7b503b5db5fff675e10bb38883159cb3c5e82b";
pub const GATEWAY_SHA256: &str = "356faca3570df7d2408a422ad04064a88acb267afcf783849ad3e03a96366436";
pub const ATTACKER_PEM: &str = include_str!("../../filter/core/tests/data/svid/attacker.pem");
pub const ATTACKER_SHA256: &str =
    "1109d97d26971756f7a53501ac901c255f88756297a34491c8fcbb1bf978b309";
/// Not an X.509-SVID: URI SANs for the client and then the attacker.
pub const TWO_URI_SANS_PEM: &str =
    include_str!("../../filter/core/tests/data/svid/two-uri-sans.pem");
pub const TWO_URI_SANS_SHA256: &str =
    "798546220447159b268e9e985e61a75b5fd59d87e4b2522fccda0b72f99aa060";
/// base64url(SHA-256) of the client's leaf: its RFC 8705 `x5t#S256`.
pub const CLIENT_X5T: &str = "W4nxXviRfcB0V9fg_3tQO121__Z14QuziIMVnLPF6Cs";
/// The fuzzers' clock: every seed token is valid at this instant.
pub const NOW: u64 = 1_750_000_000;
pub const KID_ES256: &str = "es-1";
pub const KID_RS256: &str = "rs-1";
pub const KID_EDDSA: &str = "ed-1";
pub const AUTHORITY: &str = "server.example";
pub const PATH: &str = "/api/items";

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    Es256,
    Rs256,
    EdDsa,
}

impl Signer {
    pub const ALL: [Signer; 3] = [Signer::Es256, Signer::Rs256, Signer::EdDsa];

    /// The signer of a sign-mode input (RS256 is not one: see the module documentation).
    pub fn from_byte(b: u8) -> Option<Signer> {
        match b {
            1 => Some(Signer::Es256),
            3 => Some(Signer::EdDsa),
            _ => None,
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            Signer::Es256 => 1,
            Signer::Rs256 => 2,
            Signer::EdDsa => 3,
        }
    }

    pub fn alg(self) -> &'static str {
        match self {
            Signer::Es256 => "ES256",
            Signer::Rs256 => "RS256",
            Signer::EdDsa => "EdDSA",
        }
    }

    pub fn kid(self) -> &'static str {
        match self {
            Signer::Es256 => KID_ES256,
            Signer::Rs256 => KID_RS256,
            Signer::EdDsa => KID_EDDSA,
        }
    }
}

/// The fixed signing keys: P-256 and Ed25519 from hashed seeds, RSA-2048 from the core's test
/// fixture.
pub struct Keys {
    pub es256: p256::ecdsa::SigningKey,
    pub eddsa: ed25519_dalek::SigningKey,
    pub rs256: rsa::RsaPrivateKey,
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let es256 =
            p256::ecdsa::SigningKey::from_slice(&Sha256::digest(b"tokenbind fuzz P-256")).unwrap();
        let seed: [u8; 32] = Sha256::digest(b"tokenbind fuzz Ed25519").into();
        let eddsa = ed25519_dalek::SigningKey::from_bytes(&seed);
        let jwk: Value = serde_json::from_str(include_str!(
            "../../filter/core/tests/data/corpus-rsa2048.private.jwk.json"
        ))
        .unwrap();
        let big = |m: &str| {
            rsa::BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(jwk[m].as_str().unwrap()).unwrap())
        };
        let rs256 = rsa::RsaPrivateKey::from_components(
            big("n"),
            big("e"),
            big("d"),
            vec![big("p"), big("q")],
        )
        .unwrap();
        Keys {
            es256,
            eddsa,
            rs256,
        }
    })
}

impl Keys {
    /// The bare public JWK of a signer (no `kid`, `alg`, `use`): a DPoP proof's `jwk`.
    pub fn public_jwk(&self, signer: Signer) -> Value {
        use rsa::traits::PublicKeyParts as _;
        match signer {
            Signer::Es256 => {
                let point = self.es256.verifying_key().to_sec1_point(false);
                let sec1 = point.as_bytes();
                json!({"kty": "EC", "crv": "P-256", "x": b64(&sec1[1..33]), "y": b64(&sec1[33..65])})
            }
            Signer::Rs256 => {
                let n = self.rs256.n().to_bytes_be();
                let e = self.rs256.e().to_bytes_be();
                json!({"kty": "RSA", "n": b64(&n), "e": b64(&e)})
            }
            Signer::EdDsa => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(self.eddsa.verifying_key().as_bytes())})
            }
        }
    }

    /// The issuer's published JWKS: each key with its `kid` and `alg`.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = Signer::ALL
            .iter()
            .map(|s| {
                let mut jwk = self.public_jwk(*s);
                jwk["kid"] = json!(s.kid());
                jwk["alg"] = json!(s.alg());
                jwk["use"] = json!("sig");
                jwk
            })
            .collect();
        json!({ "keys": keys })
    }

    pub fn sign(&self, signer: Signer, input: &[u8]) -> Vec<u8> {
        match signer {
            Signer::Es256 => {
                use p256::ecdsa::signature::Signer as _;
                let sig: p256::ecdsa::Signature = self.es256.sign(input);
                sig.to_bytes().to_vec()
            }
            Signer::Rs256 => {
                use rsa::signature::{SignatureEncoding as _, Signer as _};
                let key = rsa::pkcs1v15::SigningKey::<rsa::sha2::Sha256>::new(self.rs256.clone());
                key.sign(input).to_vec()
            }
            Signer::EdDsa => {
                use ed25519_dalek::Signer as _;
                self.eddsa.sign(input).to_bytes().to_vec()
            }
        }
    }

    /// Whether `signature` is a valid signature of `input` by `signer`'s key, checked here
    /// directly (not through tokenbind's key parsing or algorithm selection).
    pub fn verifies(&self, signer: Signer, input: &[u8], signature: &[u8]) -> bool {
        match signer {
            Signer::Es256 => {
                use p256::ecdsa::signature::Verifier as _;
                p256::ecdsa::Signature::from_slice(signature)
                    .is_ok_and(|s| self.es256.verifying_key().verify(input, &s).is_ok())
            }
            Signer::Rs256 => {
                use rsa::signature::Verifier as _;
                let key = rsa::pkcs1v15::VerifyingKey::<rsa::sha2::Sha256>::new(
                    self.rs256.to_public_key(),
                );
                rsa::pkcs1v15::Signature::try_from(signature)
                    .is_ok_and(|s| key.verify(input, &s).is_ok())
            }
            Signer::EdDsa => <[u8; 64]>::try_from(signature).is_ok_and(|s| {
                self.eddsa
                    .verifying_key()
                    .verify_strict(input, &ed25519_dalek::Signature::from_bytes(&s))
                    .is_ok()
                    || {
                        use ed25519_dalek::Verifier as _;
                        self.eddsa
                            .verifying_key()
                            .verify(input, &ed25519_dalek::Signature::from_bytes(&s))
                            .is_ok()
                    }
            }),
        }
    }

    /// Whether some fixed key signed this compact token (its first two parts, as sent).
    pub fn signed_by_any(&self, token: &str) -> bool {
        let Some((input, sig)) = token.rsplit_once('.') else {
            return false;
        };
        let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else {
            return false;
        };
        Signer::ALL
            .iter()
            .any(|s| self.verifies(*s, input.as_bytes(), &sig))
    }

    /// A compact JWS of exactly these header and claims bytes, signed by `signer`.
    pub fn token(&self, signer: Signer, header: &[u8], claims: &[u8]) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let sig = self.sign(signer, input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }
}

/// The compact token an input stands for (see the module documentation).
pub fn token_from_input(data: &[u8]) -> Option<String> {
    match data.split_first() {
        Some((first, rest)) if Signer::from_byte(*first).is_some() => {
            let signer = Signer::from_byte(*first)?;
            let (header, claims) = match rest.iter().position(|b| *b == 0) {
                Some(i) => (rest.get(..i)?, rest.get(i + 1..)?),
                None => (rest, &b"{}"[..]),
            };
            Some(keys().token(signer, header, claims))
        }
        _ => std::str::from_utf8(data).ok().map(str::to_owned),
    }
}

/// The input that makes [`token_from_input`] sign `header` and `claims` with `signer`.
pub fn sign_input(signer: Signer, header: &Value, claims: &Value) -> Vec<u8> {
    let mut out = vec![signer.byte()];
    out.extend_from_slice(header.to_string().as_bytes());
    out.push(0);
    out.extend_from_slice(claims.to_string().as_bytes());
    out
}

/// The plugin configuration of the token targets: one provider with the fixed JWKS, every
/// algorithm, SPIFFE binding on `sub`, a trusted forwarder, DPoP with defaults, and the pure-Rust
/// crypto backend (no proxy here).
pub fn config_json() -> Value {
    json!({
        "mode": "enforce",
        "providers": [{
            "name": "mesh",
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "jwks": keys().jwks(),
            "clock_skew_seconds": 60
        }],
        "spiffe": {"claim": "sub", "trust_domains": ["cluster.local"]},
        "trusted_forwarders": [GATEWAY],
        "exempt_paths": ["/healthz", {"exact": "/ready", "methods": ["GET", "HEAD"]}],
        "cache": {"svid_max_entries": 64, "svid_ttl_seconds": 600},
        "dpop": {},
        "crypto": "wasm"
    })
}

pub fn config() -> Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            Config::from_json(config_json().to_string().as_bytes(), &|_| {
                Err("no files".into())
            })
            .unwrap_or_else(|e| panic!("fuzz config: {e}"))
        })
        .clone()
}

/// The standard claims of a token valid at [`NOW`].
pub fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": CLIENT,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "exp": NOW + 3600,
    })
}

pub fn header(signer: Signer) -> Value {
    json!({"alg": signer.alg(), "typ": "JWT", "kid": signer.kid()})
}

/// `https://server.example/api/items`: the URI DPoP seeds are made for.
pub fn htu() -> String {
    format!("https://{AUTHORITY}{PATH}")
}

/// A DPoP proof for `access_token`, signed by `signer` with its `jwk` in the header.
pub fn dpop_proof(signer: Signer, access_token: &str, jti: &str, extra: Value) -> String {
    let keys = keys();
    let header = json!({"typ": "dpop+jwt", "alg": signer.alg(), "jwk": keys.public_jwk(signer)});
    let mut claims = json!({
        "jti": jti,
        "htm": "GET",
        "htu": htu(),
        "iat": NOW,
        "ath": tokenbind_core::dpop::access_token_hash(access_token),
    });
    if let (Some(c), Value::Object(extra)) = (claims.as_object_mut(), extra) {
        c.extend(extra);
    }
    keys.token(
        signer,
        header.to_string().as_bytes(),
        claims.to_string().as_bytes(),
    )
}

/// The RFC 7638 thumbprint of a signer's public JWK (for `cnf.jkt`).
pub fn jkt(signer: Signer) -> String {
    let jwk = keys().public_jwk(signer);
    tokenbind_core::jwk::thumbprint(jwk.as_object().unwrap()).unwrap()
}

/// Replaces the top-level members of `target` with those of `overrides` (`null` removes).
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

/// The engine target's configurations: 0 enforces with SPIFFE binding, a trusted forwarder and
/// DPoP; 1 is monitor mode with no binding required, DPoP nonces required and
/// `x-forwarded-proto` trusted; 2 enforces without SPIFFE binding.
pub fn engine_config(n: u8) -> Config {
    static CONFIGS: OnceLock<Vec<Config>> = OnceLock::new();
    CONFIGS.get_or_init(|| (0..3).map(build_engine_config).collect())[usize::from(n % 3)].clone()
}

fn build_engine_config(n: u8) -> Config {
    let mut cfg = config_json();
    match n {
        1 => merge(
            &mut cfg,
            json!({"mode": "monitor", "require_binding": false, "spiffe": null,
                   "dpop": {"require_nonce": true, "trust_forwarded_proto": true}}),
        ),
        2 => merge(&mut cfg, json!({"spiffe": null})),
        _ => {}
    }
    Config::from_json(cfg.to_string().as_bytes(), &|_| Err("no files".into())).unwrap()
}

/// The engine target's fake host, configuration number and clock from its input (see
/// `fuzz_targets/engine.rs` for the format).
pub fn engine_input(data: &[u8]) -> (tokenbind_core::MockHost, u8, u64) {
    use tokenbind_core::{MockHost, Peer};
    let text = String::from_utf8_lossy(data);
    let mut host = MockHost::new();
    let (mut mtls, mut uri, mut sha) = (None::<Vec<u8>>, None::<String>, None::<String>);
    let mut pem: Option<Vec<u8>> = None;
    let (mut config_n, mut now, mut nonce_key) = (0u8, NOW, false);
    for line in text.split('\n') {
        if let Some(control) = line.strip_prefix('@') {
            let (k, v) = control.split_once('=').unwrap_or((control, ""));
            match k {
                "config" => config_n = v.trim().parse().unwrap_or(0),
                "now" => {
                    let off: i64 = v.trim().parse().unwrap_or(0);
                    now = NOW.saturating_add_signed(off);
                }
                "mtls" => mtls = Some(vec![u8::from(v.trim() == "1")]),
                "uri" => uri = Some(v.to_owned()),
                "sha256" => sha = Some(v.to_owned()),
                // The peer's leaf: `client`, `gateway`, `attacker` (valid SVIDs), `two-uri-sans`
                // (not one), anything else as PEM
                // text with `\n` for line breaks.
                "pem" => {
                    pem = Some(match v.trim() {
                        "client" => CLIENT_PEM.as_bytes().to_vec(),
                        "gateway" => GATEWAY_PEM.as_bytes().to_vec(),
                        "attacker" => ATTACKER_PEM.as_bytes().to_vec(),
                        "two-uri-sans" => TWO_URI_SANS_PEM.as_bytes().to_vec(),
                        other => other.replace("\\n", "\n").into_bytes(),
                    })
                }
                "tls" => host = host.with_tls(v.trim() == "1"),
                "nonce-key" => nonce_key = true,
                _ => {}
            }
        } else if let Some(i) = line.get(1..).and_then(|l| l.find(':')) {
            let (name, value) = line.split_at(i + 1);
            let value = value.get(1..).unwrap_or("").trim_start_matches(' ');
            host = host.with_header(name, value);
        }
    }
    host.set_peer(
        Peer::from_attributes(
            mtls.as_deref(),
            uri.as_deref().map(str::as_bytes),
            sha.as_deref().map(str::as_bytes),
        )
        .with_certificate_pem(pem),
    );
    if nonce_key {
        tokenbind_core::nonce::ensure_key(&host.shared, &[42u8; 32]);
    }
    (host, config_n, now)
}

/// jwt-simple's side of the `jws_differential` target (here so the seed generator can check
/// that the valid seeds are accepted by both sides, which keeps the comparison from being
/// vacuous).
pub mod differential {
    use crate::{AUDIENCE, ISSUER, KID_EDDSA, KID_ES256, KID_RS256, NOW};
    use jwt_simple::prelude::*;
    use serde_json::{Map, Value};
    use std::sync::OnceLock;

    pub struct JsKeys {
        pub es256: ES256PublicKey,
        pub rs256: RS256PublicKey,
        pub eddsa: Ed25519PublicKey,
    }

    pub fn js_keys() -> &'static JsKeys {
        static K: OnceLock<JsKeys> = OnceLock::new();
        K.get_or_init(|| {
            use rsa::traits::PublicKeyParts as _;
            let k = crate::keys();
            let point = k.es256.verifying_key().to_sec1_point(false);
            JsKeys {
                es256: ES256PublicKey::from_bytes(point.as_bytes()).unwrap(),
                rs256: RS256PublicKey::from_components(
                    &k.rs256.n().to_bytes_be(),
                    &k.rs256.e().to_bytes_be(),
                )
                .unwrap(),
                eddsa: Ed25519PublicKey::from_bytes(k.eddsa.verifying_key().as_bytes()).unwrap(),
            }
        })
    }

    pub fn options(kid: Option<&str>) -> VerificationOptions {
        VerificationOptions {
            allowed_issuers: Some(HashSet::from_strings(&[ISSUER])),
            allowed_audiences: Some(HashSet::from_strings(&[AUDIENCE])),
            time_tolerance: Some(Duration::from_secs(60)),
            artificial_time: Some(UnixTimeStamp::from_secs(NOW)),
            max_token_length: None,
            max_header_length: Some(usize::MAX),
            required_key_id: kid.map(str::to_owned),
            ..Default::default()
        }
    }

    /// jwt-simple's verdict: `Ok` if some key accepts, else every key's error.
    pub fn jwt_simple(token: &str) -> Result<&'static str, Vec<String>> {
        let header_kid = Token::decode_metadata(token)
            .ok()
            .and_then(|m| m.key_id().map(str::to_owned));
        let kid = |k: &'static str| header_kid.as_ref().map(|_| k);
        let k = js_keys();
        let mut errors = Vec::new();
        type C = Map<String, Value>;
        match k
            .es256
            .verify_token::<C>(token, Some(options(kid(KID_ES256))))
        {
            Ok(_) => return Ok(KID_ES256),
            Err(e) => errors.push(format!("es-1: {e}")),
        }
        match k
            .rs256
            .verify_token::<C>(token, Some(options(kid(KID_RS256))))
        {
            Ok(_) => return Ok(KID_RS256),
            Err(e) => errors.push(format!("rs-1: {e}")),
        }
        match k
            .eddsa
            .verify_token::<C>(token, Some(options(kid(KID_EDDSA))))
        {
            Ok(_) => return Ok(KID_EDDSA),
            Err(e) => errors.push(format!("ed-1: {e}")),
        }
        Err(errors)
    }
}
