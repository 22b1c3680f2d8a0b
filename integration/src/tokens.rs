//! JWT minting with jwt-simple, an implementation independent of the filter's
//! verifier, plus helpers that craft every kind of bad token.
//!
//! Claims are built as a plain JSON object ([`Claims`]) so a test controls
//! exactly what is in the payload (including omitting `exp` or adding `cnf`);
//! jwt-simple writes the header (`alg`, `kid`, `typ`) and the signature.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::{
    ECDSAP256KeyPairLike, ECDSAP256PublicKeyLike, ES256KeyPair, Ed25519KeyPair, EdDSAKeyPairLike,
    JWTClaims,
};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Signature algorithms the harness can mint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl Alg {
    /// The JOSE `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// Both algorithms, for tests that cover each.
    pub const ALL: [Alg; 2] = [Alg::Es256, Alg::EdDsa];
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// base64url without padding.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A short, non-reversible label for a token (first 12 hex chars of its
/// SHA-256), for printing without revealing the token.
pub fn short_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// A JWT payload under construction: an ordered JSON object.
#[derive(Clone, Debug, Default)]
pub struct Claims(pub Map<String, Value>);

impl Claims {
    /// An empty payload.
    pub fn empty() -> Claims {
        Claims(Map::new())
    }

    /// iss/sub/aud plus iat = nbf = now and exp = now + 300 s.
    pub fn standard(issuer: &str, subject: &str, audience: &str) -> Claims {
        let t = now();
        Claims::empty()
            .with("iss", issuer)
            .with("sub", subject)
            .with("aud", audience)
            .with("iat", t)
            .with("nbf", t)
            .with("exp", t + 300)
    }

    /// Sets (or replaces) a claim.
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Claims {
        self.0.insert(name.to_string(), value.into());
        self
    }

    /// Removes a claim.
    pub fn without(mut self, name: &str) -> Claims {
        self.0.remove(name);
        self
    }

    /// `cnf: {"x5t#S256": thumbprint}` (RFC 8705 certificate binding).
    pub fn cnf_x5t(self, thumbprint: &str) -> Claims {
        self.with("cnf", json!({ "x5t#S256": thumbprint }))
    }

    /// `cnf: {"jkt": thumbprint}` (RFC 9449 DPoP binding).
    pub fn cnf_jkt(self, jwk_thumbprint: &str) -> Claims {
        self.with("cnf", json!({ "jkt": jwk_thumbprint }))
    }

    /// Expired an hour ago (well outside any clock skew).
    pub fn expired(self) -> Claims {
        let t = now();
        self.with("iat", t - 7200)
            .with("nbf", t - 7200)
            .with("exp", t - 3600)
    }

    /// `nbf` an hour in the future (iat stays now, exp later still).
    pub fn not_yet_valid(self) -> Claims {
        let t = now();
        self.with("iat", t)
            .with("nbf", t + 3600)
            .with("exp", t + 7200)
    }

    /// Adds a filler claim so that the signed token is larger than `bytes`.
    pub fn padded_beyond(self, bytes: usize) -> Claims {
        // base64url grows the payload by 4/3, so `bytes` of filler suffices.
        self.with("padding", "x".repeat(bytes))
    }

    /// The payload as JSON.
    pub fn to_value(&self) -> Value {
        Value::Object(self.0.clone())
    }
}

/// A token issuer with one ES256 and one Ed25519 signing key.
pub struct TokenIssuer {
    issuer: String,
    es256: ES256KeyPair,
    eddsa: Ed25519KeyPair,
}

impl TokenIssuer {
    /// New random keys with kids `es256-1` and `eddsa-1`.
    pub fn new(issuer: &str) -> TokenIssuer {
        Self::with_kids(issuer, "es256-1", "eddsa-1")
    }

    /// New random keys with the given kids.
    pub fn with_kids(issuer: &str, es256_kid: &str, eddsa_kid: &str) -> TokenIssuer {
        TokenIssuer {
            issuer: issuer.to_string(),
            es256: ES256KeyPair::generate().with_key_id(es256_kid),
            eddsa: Ed25519KeyPair::generate().with_key_id(eddsa_kid),
        }
    }

    /// The `iss` value.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The kid used for `alg`.
    pub fn kid(&self, alg: Alg) -> &str {
        let kid = match alg {
            Alg::Es256 => ECDSAP256KeyPairLike::key_id(&self.es256),
            Alg::EdDsa => EdDSAKeyPairLike::key_id(&self.eddsa),
        };
        kid.as_deref().unwrap_or("")
    }

    /// Standard claims from this issuer for `subject` and `audience`.
    pub fn claims(&self, subject: &str, audience: &str) -> Claims {
        Claims::standard(&self.issuer, subject, audience)
    }

    /// Signs `claims` with this issuer's key for `alg` (header: alg, kid, typ).
    pub fn sign(&self, alg: Alg, claims: &Claims) -> String {
        match alg {
            Alg::Es256 => self.es256.sign(jwt_claims(claims)),
            Alg::EdDsa => self.eddsa.sign(jwt_claims(claims)),
        }
        .unwrap_or_else(|e| panic!("jwt-simple failed to sign an {} token: {e}", alg.name()))
    }

    /// Signs with this issuer's key but puts `kid` in the header (e.g. a kid
    /// the JWKS does not contain).
    pub fn sign_with_kid(&self, alg: Alg, kid: &str, claims: &Claims) -> String {
        match alg {
            Alg::Es256 => ES256KeyPair::from_bytes(&self.es256.to_bytes())
                .unwrap_or_else(|e| panic!("re-importing the ES256 key failed: {e}"))
                .with_key_id(kid)
                .sign(jwt_claims(claims)),
            Alg::EdDsa => self.eddsa.clone().with_key_id(kid).sign(jwt_claims(claims)),
        }
        .unwrap_or_else(|e| panic!("jwt-simple failed to sign an {} token: {e}", alg.name()))
    }

    /// Signs with a fresh key that is NOT in the JWKS, under this issuer's
    /// kid for `alg` (so lookup succeeds and the signature check must fail).
    pub fn sign_with_foreign_key(&self, alg: Alg, claims: &Claims) -> String {
        let kid = self.kid(alg).to_string();
        match alg {
            Alg::Es256 => ES256KeyPair::generate()
                .with_key_id(&kid)
                .sign(jwt_claims(claims)),
            Alg::EdDsa => Ed25519KeyPair::generate()
                .with_key_id(&kid)
                .sign(jwt_claims(claims)),
        }
        .unwrap_or_else(|e| panic!("jwt-simple failed to sign an {} token: {e}", alg.name()))
    }

    /// Signs exactly `header` and `claims`, JSON text taken byte for byte, with this issuer's
    /// key for `alg`: for tokens no JSON library writes, such as one with a duplicate member
    /// (see [`with_members`]). The signature is valid, so only the text can be wrong.
    pub fn sign_raw(&self, alg: Alg, header: &str, claims: &str) -> String {
        let input = format!(
            "{}.{}",
            b64url(header.as_bytes()),
            b64url(claims.as_bytes())
        );
        let sig = match alg {
            Alg::Es256 => {
                use p256::ecdsa::signature::Signer as _;
                let key = p256::ecdsa::SigningKey::from_slice(&self.es256.to_bytes())
                    .unwrap_or_else(|e| panic!("re-importing the ES256 key failed: {e}"));
                let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
                sig.to_bytes().to_vec()
            }
            Alg::EdDsa => {
                let key = ed25519_compact::KeyPair::from_slice(&self.eddsa.to_bytes())
                    .unwrap_or_else(|e| panic!("re-importing the Ed25519 key failed: {e}"));
                key.sk.sign(input.as_bytes(), None).to_vec()
            }
        };
        format!("{input}.{}", b64url(&sig))
    }

    /// The header jwt-simple writes for `alg` (`alg`, `kid`, `typ`), as JSON text.
    pub fn header_text(&self, alg: Alg) -> String {
        json!({"alg": alg.name(), "kid": self.kid(alg), "typ": "JWT"}).to_string()
    }

    /// The public JWKS, built here from the raw public keys:
    /// EC: kty/crv/x/y, OKP: kty/crv=Ed25519/x; each with kid, alg and use.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk(Alg::Es256), self.jwk(Alg::EdDsa)] })
    }

    /// The public JWK for `alg`'s key.
    pub fn jwk(&self, alg: Alg) -> Value {
        match alg {
            Alg::Es256 => {
                let pk = self.es256.public_key();
                let point = pk.public_key().to_bytes_uncompressed();
                // SEC1 uncompressed: 0x04 || X (32) || Y (32).
                assert_eq!(point.len(), 65, "unexpected P-256 point length");
                json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "kid": self.kid(alg),
                    "alg": "ES256",
                    "use": "sig",
                    "x": b64url(&point[1..33]),
                    "y": b64url(&point[33..65]),
                })
            }
            Alg::EdDsa => {
                let raw = self.eddsa.public_key().to_bytes();
                assert_eq!(raw.len(), 32, "unexpected Ed25519 key length");
                json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "kid": self.kid(alg),
                    "alg": "EdDSA",
                    "use": "sig",
                    "x": b64url(&raw),
                })
            }
        }
    }
}

/// The kinds of invalid token the harness can craft, each with the denial
/// reason the filter must give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadToken {
    /// `alg: none`, empty signature.
    AlgNone,
    /// One bit of the signature flipped.
    CorruptedSignature,
    /// Signed by a key that is not in the JWKS, under a kid that is.
    ForeignKey,
    /// A kid the JWKS does not contain.
    UnknownKid,
    /// `exp` an hour ago.
    Expired,
    /// `nbf` an hour ahead.
    NotYetValid,
    /// `iss` of an issuer nobody configured.
    UnknownIssuer,
    /// `aud` of another service.
    WrongAudience,
    /// Larger than 8 KiB.
    Oversized,
}

impl BadToken {
    pub const ALL: [BadToken; 9] = [
        BadToken::AlgNone,
        BadToken::CorruptedSignature,
        BadToken::ForeignKey,
        BadToken::UnknownKid,
        BadToken::Expired,
        BadToken::NotYetValid,
        BadToken::UnknownIssuer,
        BadToken::WrongAudience,
        BadToken::Oversized,
    ];

    /// The denial reason the filter's contract assigns.
    pub fn reason(self) -> &'static str {
        match self {
            BadToken::AlgNone => "unsupported_algorithm",
            BadToken::CorruptedSignature | BadToken::ForeignKey => "bad_signature",
            BadToken::UnknownKid => "unknown_key",
            BadToken::Expired => "expired",
            BadToken::NotYetValid => "not_yet_valid",
            BadToken::UnknownIssuer => "unknown_issuer",
            BadToken::WrongAudience => "audience_mismatch",
            BadToken::Oversized => "token_too_large",
        }
    }
}

impl TokenIssuer {
    /// A token of kind `bad` that is otherwise `claims` signed with `alg`.
    pub fn craft(&self, bad: BadToken, alg: Alg, claims: &Claims) -> String {
        match bad {
            BadToken::AlgNone => alg_none(claims, Some(self.kid(alg))),
            BadToken::CorruptedSignature => corrupt_signature(&self.sign(alg, claims)),
            BadToken::ForeignKey => self.sign_with_foreign_key(alg, claims),
            BadToken::UnknownKid => self.sign_with_kid(alg, "no-such-kid", claims),
            BadToken::Expired => self.sign(alg, &claims.clone().expired()),
            BadToken::NotYetValid => self.sign(alg, &claims.clone().not_yet_valid()),
            BadToken::UnknownIssuer => {
                let other = TokenIssuer::new("https://unknown-issuer.example");
                other.sign(
                    alg,
                    &claims.clone().with("iss", "https://unknown-issuer.example"),
                )
            }
            BadToken::WrongAudience => self.sign(
                alg,
                &claims
                    .clone()
                    .with("aud", "spiffe://cluster.local/ns/default/sa/not-me"),
            ),
            BadToken::Oversized => self.sign(alg, &claims.clone().padded_beyond(8192)),
        }
    }
}

fn jwt_claims(claims: &Claims) -> JWTClaims<Map<String, Value>> {
    // All registered fields left None (they are skipped when serialising);
    // the whole payload comes from the flattened custom map.
    let mut c = JWTClaims::<Map<String, Value>>::new();
    c.custom = claims.0.clone();
    c
}

/// An unsigned token: header `{"alg":"none","typ":"JWT"}` (plus `kid` if
/// given), the payload, and an empty signature segment.
pub fn alg_none(claims: &Claims, kid: Option<&str>) -> String {
    let mut header = json!({"alg": "none", "typ": "JWT"});
    if let Some(k) = kid {
        header["kid"] = json!(k);
    }
    format!(
        "{}.{}.",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_value().to_string().as_bytes())
    )
}

/// `object` (JSON text of an object, as `Value::to_string` writes it) with `members` (JSON
/// text such as `"sub":"x"`) added before its closing brace: the way to write a duplicate
/// member, which no JSON map can hold.
pub fn with_members(object: &str, members: &str) -> String {
    let body = object
        .strip_suffix('}')
        .unwrap_or_else(|| panic!("test bug: not a JSON object: {object}"));
    if body.trim_end().ends_with('{') {
        format!("{body}{members}}}")
    } else {
        format!("{body},{members}}}")
    }
}

/// A token whose header and payload are base64url of arbitrary bytes, with a
/// copied signature (for malformed-JSON cases).
pub fn raw_token(header: &[u8], payload: &[u8], signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64url(header),
        b64url(payload),
        b64url(signature)
    )
}

/// The same token with one bit of the signature flipped. The signature
/// segment stays valid base64url of the right length.
pub fn corrupt_signature(token: &str) -> String {
    let (signed, sig) = token
        .rsplit_once('.')
        .unwrap_or_else(|| panic!("not a JWS compact token"));
    let mut raw = URL_SAFE_NO_PAD
        .decode(sig)
        .unwrap_or_else(|e| panic!("signature is not base64url: {e}"));
    let mid = raw.len() / 2;
    raw[mid] ^= 0x01;
    format!("{signed}.{}", b64url(&raw))
}

/// The same token with the payload replaced (signature kept): a forged claim.
pub fn tamper_payload(token: &str, claims: &Claims) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWS compact token");
    format!(
        "{}.{}.{}",
        parts[0],
        b64url(claims.to_value().to_string().as_bytes()),
        parts[2]
    )
}

/// Decodes a token's header and payload (for assertions about what we minted).
pub fn decode_unverified(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert!(parts.len() >= 2, "not a JWS compact token");
    let dec = |s: &str| -> Value {
        let bytes = URL_SAFE_NO_PAD
            .decode(s)
            .unwrap_or_else(|e| panic!("segment is not base64url: {e}"));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("segment is not JSON: {e}"))
    };
    (dec(parts[0]), dec(parts[1]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwt_simple::prelude::{ECDSAP256PublicKeyLike, EdDSAPublicKeyLike, NoCustomClaims};

    #[test]
    fn minted_tokens_verify_with_jwt_simple_and_carry_our_claims() {
        let iss = TokenIssuer::new("https://issuer.example");
        let claims = iss.claims("spiffe://td/ns/a/sa/b", "aud-1").cnf_x5t("abc");
        for alg in Alg::ALL {
            let token = iss.sign(alg, &claims);
            let (header, payload) = decode_unverified(&token);
            assert_eq!(header["alg"], alg.name());
            assert_eq!(header["kid"], iss.kid(alg));
            assert_eq!(payload, claims.to_value());
            match alg {
                Alg::Es256 => {
                    iss.es256
                        .public_key()
                        .verify_token::<NoCustomClaims>(&token, None)
                        .expect("ES256 verifies");
                }
                Alg::EdDsa => {
                    iss.eddsa
                        .public_key()
                        .verify_token::<NoCustomClaims>(&token, None)
                        .expect("EdDSA verifies");
                }
            }
            assert!(iss
                .eddsa
                .public_key()
                .verify_token::<NoCustomClaims>(&corrupt_signature(&token), None)
                .is_err());
        }
    }

    #[test]
    fn raw_signed_tokens_verify_and_members_are_appended() {
        let iss = TokenIssuer::new("https://issuer.example");
        let claims = iss.claims("s", "a").to_value().to_string();
        for alg in Alg::ALL {
            let token = iss.sign_raw(alg, &iss.header_text(alg), &claims);
            let ok = match alg {
                Alg::Es256 => iss
                    .es256
                    .public_key()
                    .verify_token::<NoCustomClaims>(&token, None)
                    .is_ok(),
                Alg::EdDsa => iss
                    .eddsa
                    .public_key()
                    .verify_token::<NoCustomClaims>(&token, None)
                    .is_ok(),
            };
            assert!(ok, "{alg:?}");
        }
        assert_eq!(with_members("{}", r#""a":1"#), r#"{"a":1}"#);
        assert_eq!(with_members(r#"{"a":1}"#, r#""a":2"#), r#"{"a":1,"a":2}"#);
    }

    #[test]
    fn jwks_round_trips_through_jwt_simple() {
        let iss = TokenIssuer::new("i");
        let es = jwt_simple::prelude::ES256PublicKey::from_jwk(&iss.jwk(Alg::Es256).to_string())
            .expect("EC JWK parses");
        assert_eq!(
            es.public_key().to_bytes_uncompressed(),
            iss.es256.public_key().public_key().to_bytes_uncompressed()
        );
        let ed = jwt_simple::prelude::Ed25519PublicKey::from_jwk(&iss.jwk(Alg::EdDsa).to_string())
            .expect("OKP JWK parses");
        assert_eq!(ed.to_bytes(), iss.eddsa.public_key().to_bytes());
    }

    #[test]
    fn crafted_tokens_have_the_intended_shape() {
        let iss = TokenIssuer::new("i");
        let c = iss.claims("s", "a");
        assert!(alg_none(&c, None).ends_with('.'));
        assert_eq!(decode_unverified(&alg_none(&c, None)).0["alg"], "none");
        let big = iss.sign(Alg::Es256, &c.clone().padded_beyond(8192));
        assert!(big.len() > 8192);
        let exp = decode_unverified(&iss.sign(Alg::Es256, &c.clone().expired())).1;
        assert!(exp["exp"].as_i64().unwrap() < now() - 3000);
        let nbf = decode_unverified(&iss.sign(Alg::Es256, &c.not_yet_valid())).1;
        assert!(nbf["nbf"].as_i64().unwrap() > now() + 3000);
        assert_eq!(short_hash("x").len(), 12);
    }

    #[test]
    fn every_bad_token_kind_is_distinct_from_the_good_token() {
        let iss = TokenIssuer::new("i");
        let c = iss.claims("s", "a");
        for bad in BadToken::ALL {
            for alg in Alg::ALL {
                let t = iss.craft(bad, alg, &c);
                assert_eq!(t.split('.').count(), 3, "{bad:?}");
                let (h, p) = decode_unverified(&t);
                match bad {
                    BadToken::AlgNone => assert_eq!(h["alg"], "none"),
                    BadToken::UnknownKid => assert_eq!(h["kid"], "no-such-kid"),
                    BadToken::UnknownIssuer => {
                        assert_eq!(p["iss"], "https://unknown-issuer.example")
                    }
                    BadToken::WrongAudience => assert_ne!(p["aud"], "a"),
                    BadToken::Oversized => assert!(t.len() > 8192),
                    _ => {}
                }
                assert!(!bad.reason().is_empty());
            }
        }
    }
}
