//! DPoP proofs (RFC 9449 §4.2) minted for tests, independently of the filter:
//! ES256 with the `p256` crate and EdDSA (Ed25519) with `ed25519-compact`,
//! the header and claims built here as plain JSON, and the RFC 7638 JWK
//! thumbprint and the `ath` hash computed here.
//!
//! [`ProofKey::proof`] makes a valid proof; [`ProofKey::proof_with`] applies
//! header and claim overrides (a JSON `null` removes a member), so every
//! kind of bad proof can be built.

use std::fs::File;
use std::io::Read as _;
use std::sync::atomic::{AtomicU64, Ordering};

use p256::ecdsa::signature::Signer as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::tokens::{b64url, now};

/// The DPoP proof algorithms the minter can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProofAlg {
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// Ed25519, under the JOSE name `EdDSA` (RFC 8037).
    EdDsa,
}

impl ProofAlg {
    /// The JOSE `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            ProofAlg::Es256 => "ES256",
            ProofAlg::EdDsa => "EdDSA",
        }
    }

    /// Both algorithms.
    pub const ALL: [ProofAlg; 2] = [ProofAlg::Es256, ProofAlg::EdDsa];
}

/// A DPoP key pair held by the "client".
pub enum ProofKey {
    Es256(p256::ecdsa::SigningKey),
    Ed25519(ed25519_compact::KeyPair),
}

/// 32 bytes from the OS (Linux; the harness is Linux-only anyway).
fn random_32() -> [u8; 32] {
    let mut out = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut out))
        .unwrap_or_else(|e| panic!("reading /dev/urandom: {e}"));
    out
}

impl ProofKey {
    /// A fresh random key for `alg`.
    pub fn generate(alg: ProofAlg) -> ProofKey {
        match alg {
            ProofAlg::Es256 => loop {
                // from_slice refuses 0 and values >= n (probability ~2^-32).
                if let Ok(k) = p256::ecdsa::SigningKey::from_slice(&random_32()) {
                    break ProofKey::Es256(k);
                }
            },
            ProofAlg::EdDsa => ProofKey::Ed25519(ed25519_compact::KeyPair::from_seed(
                ed25519_compact::Seed::new(random_32()),
            )),
        }
    }

    /// The algorithm this key signs with.
    pub fn alg(&self) -> ProofAlg {
        match self {
            ProofKey::Es256(_) => ProofAlg::Es256,
            ProofKey::Ed25519(_) => ProofAlg::EdDsa,
        }
    }

    /// The public JWK: EC `kty/crv/x/y` or OKP `kty/crv/x`.
    pub fn jwk(&self) -> Value {
        match self {
            ProofKey::Es256(k) => {
                let point = k.verifying_key().to_sec1_point(false);
                let p = point.as_bytes();
                // SEC1 uncompressed: 0x04 || X (32) || Y (32).
                assert_eq!(p.len(), 65, "unexpected P-256 point length");
                json!({"kty": "EC", "crv": "P-256", "x": b64url(&p[1..33]), "y": b64url(&p[33..65])})
            }
            ProofKey::Ed25519(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(k.pk.as_ref())})
            }
        }
    }

    /// The RFC 7638 thumbprint of [`ProofKey::jwk`]: the value for `cnf.jkt`.
    pub fn jkt(&self) -> String {
        jwk_thumbprint(&self.jwk())
    }

    /// Signs `input` (a JWS signing input) with this key.
    pub fn sign(&self, input: &[u8]) -> Vec<u8> {
        match self {
            ProofKey::Es256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(input);
                sig.to_bytes().to_vec()
            }
            ProofKey::Ed25519(k) => k.sk.sign(input, None).to_vec(),
        }
    }

    /// A valid proof for a request `htm htu` carrying `access_token`: header
    /// `typ: dpop+jwt`, `alg`, `jwk`; claims `jti` (unique), `htm`, `htu`,
    /// `iat` = now, `ath`.
    pub fn proof(&self, htm: &str, htu: &str, access_token: &str) -> String {
        self.proof_with(htm, htu, access_token, json!({}), json!({}))
    }

    /// Like [`ProofKey::proof`], with `header` and `claims` merged over the
    /// defaults (a `null` value removes the member). The signature is always
    /// made over exactly the resulting header and claims.
    pub fn proof_with(
        &self,
        htm: &str,
        htu: &str,
        access_token: &str,
        header: Value,
        claims: Value,
    ) -> String {
        let mut h = json!({"typ": "dpop+jwt", "alg": self.alg().name(), "jwk": self.jwk()});
        merge(&mut h, header);
        let mut c = json!({
            "jti": unique_jti(),
            "htm": htm,
            "htu": htu,
            "iat": now(),
            "ath": access_token_hash(access_token),
        });
        merge(&mut c, claims);
        self.sign_parts(&h, &c)
    }

    /// A valid proof (as [`ProofKey::proof`]) with `header_members` and `claim_members` (JSON
    /// member text, e.g. `"htm":"POST"`) added to the header and claims text: the way to write
    /// a duplicate member. The signature covers exactly the resulting text.
    pub fn proof_with_members(
        &self,
        htm: &str,
        htu: &str,
        access_token: &str,
        header_members: &str,
        claim_members: &str,
    ) -> String {
        let h = json!({"typ": "dpop+jwt", "alg": self.alg().name(), "jwk": self.jwk()}).to_string();
        let c = json!({
            "jti": unique_jti(),
            "htm": htm,
            "htu": htu,
            "iat": now(),
            "ath": access_token_hash(access_token),
        })
        .to_string();
        let add = |text: String, members: &str| {
            if members.is_empty() {
                text
            } else {
                crate::tokens::with_members(&text, members)
            }
        };
        self.sign_text(&add(h, header_members), &add(c, claim_members))
    }

    /// A compact JWS of exactly the JSON text `header` and `claims`, signed with this key.
    pub fn sign_text(&self, header: &str, claims: &str) -> String {
        let input = format!(
            "{}.{}",
            b64url(header.as_bytes()),
            b64url(claims.as_bytes())
        );
        let sig = self.sign(input.as_bytes());
        format!("{input}.{}", b64url(&sig))
    }

    /// A compact JWS of exactly `header` and `claims`, signed with this key.
    pub fn sign_parts(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = self.sign(input.as_bytes());
        format!("{input}.{}", b64url(&sig))
    }
}

/// Shallow merge of `over` into `base` (both objects); `null` deletes.
fn merge(base: &mut Value, over: Value) {
    let (Some(base), Value::Object(over)) = (base.as_object_mut(), over) else {
        panic!("test bug: merge needs two JSON objects");
    };
    for (k, v) in over {
        if v.is_null() {
            base.remove(&k);
        } else {
            base.insert(k, v);
        }
    }
}

/// A `jti` unique within this process and across runs: 128 random bits
/// plus a counter, base64url.
pub fn unique_jti() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut raw = random_32()[..16].to_vec();
    raw.extend_from_slice(&n.to_be_bytes());
    b64url(&raw)
}

/// `ath` (RFC 9449 §4.2): base64url(SHA-256(ASCII access token)).
pub fn access_token_hash(access_token: &str) -> String {
    b64url(&Sha256::digest(access_token.as_bytes()))
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url) of an EC, OKP or RSA public
/// JWK: the required members only, in lexicographic order, no whitespace.
/// Panics on any other key type or a missing member (test code).
pub fn jwk_thumbprint(jwk: &Value) -> String {
    let member = |name: &str| -> &str {
        jwk[name]
            .as_str()
            .unwrap_or_else(|| panic!("JWK has no string member {name:?}"))
    };
    let kty = member("kty");
    let required: &[&str] = match kty {
        "EC" => &["crv", "kty", "x", "y"],
        "OKP" => &["crv", "kty", "x"],
        "RSA" => &["e", "kty", "n"],
        other => panic!("unsupported JWK kty {other:?}"),
    };
    // serde_json's Map keeps keys sorted (no preserve_order feature here),
    // but build the string by hand so the order does not depend on that.
    let body: Vec<String> = required
        .iter()
        .map(|name| {
            format!(
                "{}:{}",
                Value::String((*name).to_string()),
                Value::String(member(name).to_string())
            )
        })
        .collect();
    let canonical = format!("{{{}}}", body.join(","));
    b64url(&Sha256::digest(canonical.as_bytes()))
}

/// Decodes a proof's header and claims (no verification), for assertions.
pub fn decode_proof(proof: &str) -> (Map<String, Value>, Map<String, Value>) {
    let (h, p) = crate::tokens::decode_unverified(proof);
    match (h, p) {
        (Value::Object(h), Value::Object(p)) => (h, p),
        _ => panic!("proof header or claims are not JSON objects"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use p256::ecdsa::signature::Verifier as _;

    /// RFC 9449 §6.1 / Figure 7: the example key's thumbprint.
    #[test]
    fn thumbprint_matches_rfc9449_example() {
        let jwk = json!({"kty": "EC", "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
                         "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA", "crv": "P-256"});
        assert_eq!(
            jwk_thumbprint(&jwk),
            "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
        );
    }

    /// RFC 7638 §3.1: the RSA example key's thumbprint.
    #[test]
    fn thumbprint_matches_rfc7638_example() {
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            jwk_thumbprint(&jwk),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    /// RFC 9449 §7.1 Figure 12/13: `ath` of the example access token.
    #[test]
    fn ath_matches_rfc9449_example() {
        assert_eq!(
            access_token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
        );
    }

    #[test]
    fn proofs_have_the_rfc_shape_and_verify_with_their_jwk() {
        for alg in ProofAlg::ALL {
            let key = ProofKey::generate(alg);
            let proof = key.proof("GET", "https://rs.example/api", "tok");
            let (h, c) = decode_proof(&proof);
            assert_eq!(h["typ"], "dpop+jwt");
            assert_eq!(h["alg"], alg.name());
            assert_eq!(
                Value::Object(h["jwk"].as_object().unwrap().clone()),
                key.jwk()
            );
            assert_eq!(c["htm"], "GET");
            assert_eq!(c["htu"], "https://rs.example/api");
            assert_eq!(c["ath"], access_token_hash("tok"));
            assert!((c["iat"].as_i64().unwrap() - now()).abs() <= 1);
            assert!(c["jti"].as_str().unwrap().len() >= 22);

            let (input, sig) = proof.rsplit_once('.').unwrap();
            let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
            match &key {
                ProofKey::Es256(k) => {
                    let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
                    k.verifying_key().verify(input.as_bytes(), &sig).unwrap();
                    assert!(k.verifying_key().verify(b"other", &sig).is_err());
                }
                ProofKey::Ed25519(k) => {
                    let sig = ed25519_compact::Signature::from_slice(&sig).unwrap();
                    k.pk.verify(input.as_bytes(), &sig).unwrap();
                    assert!(k.pk.verify(b"other", &sig).is_err());
                }
            }
        }
    }

    #[test]
    fn overrides_replace_and_remove_members_and_keys_differ() {
        let key = ProofKey::generate(ProofAlg::EdDsa);
        let proof = key.proof_with(
            "GET",
            "https://rs.example/api",
            "tok",
            json!({"typ": "JWT"}),
            json!({"ath": null, "jti": "fixed", "nonce": "n"}),
        );
        let (h, c) = decode_proof(&proof);
        assert_eq!(h["typ"], "JWT");
        assert!(!c.contains_key("ath"));
        assert_eq!(c["jti"], "fixed");
        assert_eq!(c["nonce"], "n");
        assert_ne!(unique_jti(), unique_jti());
        assert_ne!(key.jkt(), ProofKey::generate(ProofAlg::EdDsa).jkt());
        assert_ne!(
            ProofKey::generate(ProofAlg::Es256).jkt(),
            ProofKey::generate(ProofAlg::Es256).jkt()
        );
    }
}
