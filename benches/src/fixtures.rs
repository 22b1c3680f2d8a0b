//! Keys, tokens, DPoP proofs and filter configurations for the benchmarks.
//!
//! Tokens and proofs are signed here with `p256`, `ed25519-compact` and `rsa` directly (the
//! signing halves; the filter only verifies), so a benchmark that passes is also a small
//! interop check. Keys are derived from fixed seeds (the RSA key is a fixed PEM) so that every
//! run, native or in V8, verifies the same bytes.
//!
//! jwt-simple is deliberately not used here: it enables `rsa`'s `u64_digit` feature, and Cargo
//! would switch it on for the filter's own `rsa` in the same build, so the micro-benchmarks
//! would time a different RSA than the one in `tokenbind.wasm` (64-bit digits, which wasm32
//! multiplies through `__multi3`). The end-to-end harness mints with jwt-simple (feature `e2e`).
//! Nothing here needs the integration harness, so it also builds for wasm32-wasip1.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// `iss` of the benchmark provider (the integration harness uses the same).
pub const ISSUER: &str = "https://issuer.example";
/// The provider's audience: the server's SPIFFE ID.
pub const AUDIENCE: &str = "spiffe://cluster.local/ns/default/sa/server";
/// The legitimate caller.
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";

/// X.509-SVIDs for the client and the attacker (the SPIFFE binding checks the peer's leaf),
/// shared with the core's tests, and the SHA-256 of each certificate's DER.
pub const CLIENT_CERT_PEM: &str = include_str!("../../filter/core/tests/data/svid/client.pem");
pub const CLIENT_CERT_SHA256_HEX: &str =
    "5b89f15ef8917dc07457d7e0ff7b503b5db5fff675e10bb38883159cb3c5e82b";
pub const ATTACKER_CERT_PEM: &str = include_str!("../../filter/core/tests/data/svid/attacker.pem");
pub const ATTACKER_CERT_SHA256_HEX: &str =
    "1109d97d26971756f7a53501ac901c255f88756297a34491c8fcbb1bf978b309";

/// The peer Envoy reports for the client's or the attacker's SVID (URI SAN, digest, PEM); any
/// other ID gets a URI SAN only.
pub fn svid_peer(id: &str) -> tokenbind_core::Peer {
    let cert = match id {
        CLIENT_ID => Some((CLIENT_CERT_PEM, CLIENT_CERT_SHA256_HEX)),
        ATTACKER_ID => Some((ATTACKER_CERT_PEM, ATTACKER_CERT_SHA256_HEX)),
        _ => None,
    };
    let peer = tokenbind_core::Peer::from_attributes(
        Some(&[1]),
        Some(id.as_bytes()),
        cert.map(|(_, hex)| hex.as_bytes()),
    );
    peer.with_certificate_pem(cert.map(|(pem, _)| pem.as_bytes().to_vec()))
}
/// Another mesh workload (for the "must be denied" sanity checks).
pub const ATTACKER_ID: &str = "spiffe://cluster.local/ns/default/sa/attacker";
pub const TRUST_DOMAIN: &str = "cluster.local";

/// A fixed RSA-2048 key (PKCS#8), generated once with `openssl genpkey` for these benchmarks.
pub const RSA2048_PEM: &str = include_str!("../data/rsa2048.pem");
pub const RS256_KID: &str = "rs256-1";

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// base64url without padding.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `ath` (RFC 9449 §4.2): base64url(SHA-256(access token)), computed here.
pub fn ath(access_token: &str) -> String {
    b64url(&Sha256::digest(access_token.as_bytes()))
}

/// 32 bytes derived from a label.
pub fn seed(label: &str) -> [u8; 32] {
    Sha256::digest(label.as_bytes()).into()
}

/// The signature algorithms the benchmarks mint tokens with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenAlg {
    Es256,
    EdDsa,
    Rs256,
}

impl TokenAlg {
    pub const ALL: [TokenAlg; 3] = [TokenAlg::Es256, TokenAlg::EdDsa, TokenAlg::Rs256];

    pub fn name(self) -> &'static str {
        match self {
            TokenAlg::Es256 => "ES256",
            TokenAlg::EdDsa => "EdDSA",
            TokenAlg::Rs256 => "RS256",
        }
    }
}

/// A compact JWS: `{"alg","kid","typ":"JWT"}`, `claims`, and `sign`'s signature.
fn jws(
    alg: &str,
    kid: &str,
    claims: &Map<String, Value>,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<String, String> {
    let header = json!({"alg": alg, "kid": kid, "typ": "JWT"});
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(Value::Object(claims.clone()).to_string().as_bytes())
    );
    let signature = sign(input.as_bytes())?;
    Ok(format!("{input}.{}", b64url(&signature)))
}

/// An issuer with one key per algorithm, all deterministic.
pub struct Issuer {
    es256: p256::ecdsa::SigningKey,
    eddsa: ed25519_compact::KeyPair,
    rs256: rsa::RsaPrivateKey,
}

impl Issuer {
    pub fn deterministic() -> Result<Issuer, String> {
        Ok(Issuer {
            es256: p256::ecdsa::SigningKey::from_slice(&seed("tokenbind-bench-es256"))
                .map_err(|e| format!("ES256 key: {e}"))?,
            eddsa: ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(seed(
                "tokenbind-bench-eddsa",
            ))),
            rs256: rsa::RsaPrivateKey::from_pkcs8_pem(RSA2048_PEM)
                .map_err(|e| format!("RSA-2048 bench key: {e}"))?,
        })
    }

    /// The public JWKS with all three keys.
    pub fn jwks(&self) -> Result<Value, String> {
        let point = self.es256.verifying_key().to_sec1_point(false);
        let p = point.as_bytes();
        let (x, y) = (
            p.get(1..33).ok_or("short P-256 point")?,
            p.get(33..65).ok_or("short P-256 point")?,
        );
        let rsa = self.rs256.to_public_key();
        Ok(json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "es256-1", "alg": "ES256", "use": "sig",
             "x": b64url(x), "y": b64url(y)},
            {"kty": "OKP", "crv": "Ed25519", "kid": "eddsa-1", "alg": "EdDSA", "use": "sig",
             "x": b64url(self.eddsa.pk.as_ref())},
            {"kty": "RSA", "kid": RS256_KID, "alg": "RS256", "use": "sig",
             "n": b64url(&rsa.n().to_bytes_be()), "e": b64url(&rsa.e().to_bytes_be())},
        ]}))
    }

    pub fn sign(&self, alg: TokenAlg, claims: &Map<String, Value>) -> Result<String, String> {
        match alg {
            TokenAlg::Es256 => jws("ES256", "es256-1", claims, |input| {
                let sig: p256::ecdsa::Signature = self.es256.sign(input);
                Ok(sig.to_bytes().to_vec())
            }),
            TokenAlg::EdDsa => jws("EdDSA", "eddsa-1", claims, |input| {
                Ok(self.eddsa.sk.sign(input, None).to_vec())
            }),
            TokenAlg::Rs256 => jws("RS256", RS256_KID, claims, |input| {
                use rsa::sha2::{Digest as _, Sha256};
                self.rs256
                    .sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(input))
                    .map_err(|e| format!("RS256 sign: {e}"))
            }),
        }
    }
}

/// The standard payload: the client's SPIFFE ID as `sub`, valid from `now - 10` for
/// `lifetime` seconds.
pub fn claims(subject: &str, now: u64, lifetime: u64) -> Map<String, Value> {
    let mut c = Map::new();
    c.insert("iss".into(), json!(ISSUER));
    c.insert("sub".into(), json!(subject));
    c.insert("aud".into(), json!(AUDIENCE));
    c.insert("iat".into(), json!(now.saturating_sub(10)));
    c.insert("nbf".into(), json!(now.saturating_sub(10)));
    c.insert("exp".into(), json!(now + lifetime));
    c
}

/// The filter configuration used by every benchmark: enforce mode, one provider trusting
/// `jwks` for ES256, EdDSA and RS256, SPIFFE binding on `sub`, binding required, the
/// verified-token cache at `cache_entries`, and a DPoP replay store large enough that a
/// benchmark run never fills it (see README.md).
pub fn plugin_config(jwks: &Value, cache_entries: usize) -> Value {
    json!({
        "mode": "enforce",
        "providers": [{
            "name": "mesh",
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "jwks": jwks,
            "algorithms": ["ES256", "EdDSA", "RS256"],
            "clock_skew_seconds": 60
        }],
        "spiffe": {"claim": "sub", "trust_domains": [TRUST_DOMAIN]},
        "require_binding": true,
        "cache": {"max_entries": cache_entries},
        "dpop": {"replay_cache": {"max_entries": REPLAY_ENTRIES}}
    })
}

/// `dpop.replay_cache.max_entries` for the benchmarks: 512 per bucket. Entries live
/// `iat_window_seconds + 1` = 61 s, so a run of up to ~8,000 proofs/s for 61 s fits. The
/// store's per-request cost depends on the live entries in one bucket, not on this capacity.
pub const REPLAY_ENTRIES: usize = 524_288;

/// The JOSE algorithms a DPoP proof key can use here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProofAlg {
    Es256,
    EdDsa,
}

impl ProofAlg {
    pub fn name(self) -> &'static str {
        match self {
            ProofAlg::Es256 => "ES256",
            ProofAlg::EdDsa => "EdDSA",
        }
    }
}

/// A client's DPoP key.
pub enum ProofKey {
    Es256(Box<p256::ecdsa::SigningKey>),
    Ed25519(ed25519_compact::KeyPair),
}

impl ProofKey {
    /// A key derived from `label`.
    pub fn from_seed(alg: ProofAlg, label: &str) -> Result<ProofKey, String> {
        let s = seed(label);
        Ok(match alg {
            ProofAlg::Es256 => ProofKey::Es256(Box::new(
                p256::ecdsa::SigningKey::from_slice(&s).map_err(|e| format!("P-256 key: {e}"))?,
            )),
            ProofAlg::EdDsa => ProofKey::Ed25519(ed25519_compact::KeyPair::from_seed(
                ed25519_compact::Seed::new(s),
            )),
        })
    }

    pub fn alg(&self) -> ProofAlg {
        match self {
            ProofKey::Es256(_) => ProofAlg::Es256,
            ProofKey::Ed25519(_) => ProofAlg::EdDsa,
        }
    }

    /// The public JWK.
    pub fn jwk(&self) -> Value {
        match self {
            ProofKey::Es256(k) => {
                let point = k.verifying_key().to_sec1_point(false);
                let p = point.as_bytes();
                let x = p.get(1..33).unwrap_or_default();
                let y = p.get(33..65).unwrap_or_default();
                json!({"kty": "EC", "crv": "P-256", "x": b64url(x), "y": b64url(y)})
            }
            ProofKey::Ed25519(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(k.pk.as_ref())})
            }
        }
    }

    /// RFC 7638 thumbprint of [`ProofKey::jwk`], computed here (not with the filter's code).
    pub fn jkt(&self) -> String {
        let jwk = self.jwk();
        let s = |m: &str| Value::String(jwk[m].as_str().unwrap_or_default().to_owned());
        let canonical = match self {
            ProofKey::Es256(_) => format!(
                "{{\"crv\":{},\"kty\":{},\"x\":{},\"y\":{}}}",
                s("crv"),
                s("kty"),
                s("x"),
                s("y")
            ),
            ProofKey::Ed25519(_) => {
                format!(
                    "{{\"crv\":{},\"kty\":{},\"x\":{}}}",
                    s("crv"),
                    s("kty"),
                    s("x")
                )
            }
        };
        b64url(&Sha256::digest(canonical.as_bytes()))
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        match self {
            ProofKey::Es256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(input);
                sig.to_bytes().to_vec()
            }
            ProofKey::Ed25519(k) => k.sk.sign(input, None).to_vec(),
        }
    }
}

/// Mints DPoP proofs for one key, one request and one access token; only `jti` (and `iat`)
/// change between proofs. The header, `ath` and the fixed claims are encoded once.
pub struct ProofMinter<'a> {
    key: &'a ProofKey,
    header_b64: String,
    htm: String,
    htu: String,
    ath: String,
    prefix: String,
}

impl<'a> ProofMinter<'a> {
    pub fn new(key: &'a ProofKey, htm: &str, htu: &str, access_token: &str) -> ProofMinter<'a> {
        let header = json!({"typ": "dpop+jwt", "alg": key.alg().name(), "jwk": key.jwk()});
        ProofMinter {
            key,
            header_b64: b64url(header.to_string().as_bytes()),
            htm: htm.to_owned(),
            htu: htu.to_owned(),
            ath: ath(access_token),
            prefix: unique_prefix(),
        }
    }

    /// Proof number `n`: `jti` = a per-minter random prefix + `n`, `iat` as given.
    pub fn proof(&self, n: u64, iat: u64) -> String {
        let claims = json!({
            "jti": format!("{}-{n}", self.prefix),
            "htm": self.htm,
            "htu": self.htu,
            "iat": iat,
            "ath": self.ath,
        });
        let input = format!(
            "{}.{}",
            self.header_b64,
            b64url(claims.to_string().as_bytes())
        );
        let sig = self.key.sign(input.as_bytes());
        format!("{input}.{}", b64url(&sig))
    }
}

/// A prefix unique to this process and call, so that `jti`s never repeat across runs.
fn unique_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let digest = Sha256::digest(format!("{nanos}-{n}").as_bytes());
    b64url(digest.get(..12).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenbind_core::config::DpopSettings;
    use tokenbind_core::dpop::{self, ProofKeyCache, ProofRequest};
    use tokenbind_core::{Config, Engine, MockHost, Outcome};

    fn engine(cache: usize) -> Result<Engine, String> {
        let jwks = Issuer::deterministic()?.jwks()?;
        let text = plugin_config(&jwks, cache).to_string();
        Config::from_json(text.as_bytes(), &|_| Err("no files".into()))
            .map(Engine::new)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn minted_tokens_are_allowed_for_the_client_and_bound_to_it() -> Result<(), String> {
        let issuer = Issuer::deterministic()?;
        let engine = engine(0)?;
        let now = now();
        let peer = svid_peer;
        // RS256 signing is slow in debug builds; ES256 and EdDSA cover the minting paths.
        for alg in [TokenAlg::Es256, TokenAlg::EdDsa] {
            let token = issuer.sign(alg, &claims(CLIENT_ID, now, 600))?;
            let host = |id: &str| {
                MockHost::new()
                    .with_header("authorization", &format!("Bearer {token}"))
                    .with_peer(peer(id))
            };
            let ok = engine.decide(&host(CLIENT_ID), now);
            assert_eq!(ok.outcome, Outcome::Allow, "{alg:?}: {:?}", ok.denial());
            let stolen = engine.decide(&host(ATTACKER_ID), now);
            assert_ne!(stolen.outcome, Outcome::Allow, "{alg:?}");
        }
        Ok(())
    }

    #[test]
    fn proofs_verify_and_the_independent_thumbprint_matches_the_filters() -> Result<(), String> {
        for alg in [ProofAlg::Es256, ProofAlg::EdDsa] {
            let key = ProofKey::from_seed(alg, "test")?;
            let jwk = key.jwk();
            let map = jwk.as_object().ok_or("jwk is not an object")?;
            assert_eq!(
                tokenbind_core::jwk::thumbprint(map).as_deref(),
                Ok(key.jkt().as_str())
            );
            let minter = ProofMinter::new(&key, "GET", "https://a.example/x", "tok");
            let (p1, p2) = (minter.proof(1, 1_000), minter.proof(2, 1_000));
            assert_ne!(p1, p2);
            let jkt = key.jkt();
            let req = ProofRequest {
                method: "GET",
                uri: Some("https://a.example/x"),
                access_token: "tok",
                jkt: &jkt,
                now: 1_000,
                nonce_key: None,
            };
            let mut keys = ProofKeyCache::new(4);
            dpop::verify(
                &p1,
                &req,
                &DpopSettings::default(),
                &mut keys,
                &tokenbind_core::Crypto::wasm(),
            )
            .map_err(|d| format!("{alg:?}: {d:?}"))?;
        }
        Ok(())
    }
}
