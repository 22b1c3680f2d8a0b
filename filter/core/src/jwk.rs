//! JWS algorithms and JSON Web Keys: parse a JWKS once into ready-to-verify public keys,
//! then verify signatures without re-parsing anything per request.
//!
//! Parsing is strict about what it uses and tolerant of what it ignores: keys for
//! encryption, unsupported key types or curves, and keys carrying private members are
//! skipped (and reported), while a malformed key we would use is an error naming the field.

use crate::crypto;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};
use std::fmt;
use std::sync::Arc;

/// Asymmetric JWS algorithms (RFC 7518 §3, RFC 8037). Symmetric (`HS*`) and `none` are
/// deliberately not representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    ES256,
    ES384,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    EdDSA,
}

/// Why an `alg` string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlgError {
    /// `none` or an HMAC algorithm: never acceptable for a bearer token at a resource server.
    Forbidden,
    Unknown,
}

impl Alg {
    pub const ALL: [Alg; 9] = [
        Alg::ES256,
        Alg::ES384,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::EdDSA,
    ];

    pub fn parse(s: &str) -> Result<Alg, AlgError> {
        Ok(match s {
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "PS256" => Alg::PS256,
            "PS384" => Alg::PS384,
            "PS512" => Alg::PS512,
            // RFC 9864's fully-specified name for EdDSA with Ed25519 (used by e.g. panva/dpop).
            "EdDSA" | "Ed25519" => Alg::EdDSA,
            _ if s.eq_ignore_ascii_case("none") || s.starts_with("HS") => {
                return Err(AlgError::Forbidden)
            }
            _ => return Err(AlgError::Unknown),
        })
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::EdDSA => "EdDSA",
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Minimum RSA modulus accepted (RFC 7518 §3.3: 2048 bits or larger MUST be used).
const MIN_RSA_BITS: usize = 2048;
/// Upper bound on RSA modulus, to keep verification cost bounded.
const MAX_RSA_BITS: usize = 8192;

/// A parsed public key in pure-Rust form.
#[derive(Clone)]
pub enum KeyMaterial {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
    Rsa(Box<rsa::RsaPublicKey>),
}

/// A public key, ready for either signature backend ([`crate::crypto`]): the pure-Rust key,
/// and for EC and RSA keys the DER SubjectPublicKeyInfo the host verifies with, encoded once
/// when the key is parsed (key set installed, proof key first seen), never per request.
#[derive(Clone)]
pub struct PublicKey {
    material: KeyMaterial,
    spki: Option<Arc<[u8]>>,
    fingerprint: KeyFingerprint,
}

/// SHA-256 over a key's type and public bytes: the same key parsed twice (a refetched key set)
/// has the same fingerprint. The verified-token cache remembers which key verified a token, so
/// withdrawing the key withdraws the token.
pub type KeyFingerprint = [u8; 32];

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.kty())
    }
}

impl PublicKey {
    fn new(material: KeyMaterial, spki: Option<Vec<u8>>) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        match (&material, &spki) {
            (KeyMaterial::Ed25519(k), _) => {
                h.update(b"OKP:Ed25519:");
                h.update(k.as_bytes());
            }
            (_, Some(der)) => {
                h.update(b"SPKI:");
                h.update(der);
            }
            // Every EC and RSA key carries its SPKI; nothing else is constructed.
            (_, None) => h.update(b"none"),
        }
        PublicKey {
            material,
            spki: spki.map(Arc::from),
            fingerprint: h.finalize().into(),
        }
    }

    pub fn fingerprint(&self) -> &KeyFingerprint {
        &self.fingerprint
    }

    pub fn material(&self) -> &KeyMaterial {
        &self.material
    }

    /// The DER SubjectPublicKeyInfo, for keys the host can verify with.
    pub fn spki(&self) -> Option<&[u8]> {
        self.spki.as_deref()
    }

    /// Whether this key can verify signatures made with `alg`: the key type and, for EC, the
    /// curve must be the algorithm's.
    pub fn supports(&self, alg: Alg) -> bool {
        matches!(
            (&self.material, alg),
            (KeyMaterial::P256(_), Alg::ES256)
                | (KeyMaterial::P384(_), Alg::ES384)
                | (KeyMaterial::Ed25519(_), Alg::EdDSA)
                | (
                    KeyMaterial::Rsa(_),
                    Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512
                )
        )
    }

    /// Verifies a JWS signature over `signing_input` in pure Rust. Returns false on any
    /// mismatch, including a signature of the wrong length or a key that does not fit `alg`.
    /// The request path goes through [`crate::crypto::Crypto::verify`], which picks the backend.
    pub fn verify_in_wasm(&self, alg: Alg, signing_input: &[u8], signature: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier;
        match (&self.material, alg) {
            (KeyMaterial::P256(key), Alg::ES256) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify(signing_input, &sig).is_ok()),
            (KeyMaterial::P384(key), Alg::ES384) => p384::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify(signing_input, &sig).is_ok()),
            // Strict verification: rejects small-order keys and non-canonical signatures.
            (KeyMaterial::Ed25519(key), Alg::EdDSA) => {
                ed25519_dalek::Signature::from_slice(signature)
                    .is_ok_and(|sig| key.verify_strict(signing_input, &sig).is_ok())
            }
            (KeyMaterial::Rsa(key), alg) => verify_rsa(key, alg, signing_input, signature),
            _ => false,
        }
    }

    pub const fn kty(&self) -> &'static str {
        match self.material {
            KeyMaterial::P256(_) | KeyMaterial::P384(_) => "EC",
            KeyMaterial::Ed25519(_) => "OKP",
            KeyMaterial::Rsa(_) => "RSA",
        }
    }
}

fn verify_rsa(key: &rsa::RsaPublicKey, alg: Alg, input: &[u8], signature: &[u8]) -> bool {
    use rsa::sha2::{Digest, Sha256, Sha384, Sha512};
    use rsa::traits::PublicKeyParts;
    use rsa::{Pkcs1v15Sign, Pss};
    // RFC 8017 §5.2.2 (RSAVP1 step 1) and §8.1.2/§8.2.2: the signature is exactly k octets and
    // its integer is below n. The rsa crate checks this for PKCS#1 v1.5 but not for PSS, where
    // s + n (same value mod n) would otherwise verify: a second valid encoding of one signature.
    if signature.len() != key.size() || rsa::BigUint::from_bytes_be(signature) >= *key.n() {
        return false;
    }
    let result = match alg {
        Alg::RS256 => key.verify(
            Pkcs1v15Sign::new::<Sha256>(),
            &Sha256::digest(input),
            signature,
        ),
        Alg::RS384 => key.verify(
            Pkcs1v15Sign::new::<Sha384>(),
            &Sha384::digest(input),
            signature,
        ),
        Alg::RS512 => key.verify(
            Pkcs1v15Sign::new::<Sha512>(),
            &Sha512::digest(input),
            signature,
        ),
        Alg::PS256 => key.verify(Pss::new::<Sha256>(), &Sha256::digest(input), signature),
        Alg::PS384 => key.verify(Pss::new::<Sha384>(), &Sha384::digest(input), signature),
        Alg::PS512 => key.verify(Pss::new::<Sha512>(), &Sha512::digest(input), signature),
        _ => return false,
    };
    result.is_ok()
}

/// One usable key from a JWKS.
#[derive(Clone)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The key's own `alg`, if it declares one; a token must then use exactly that.
    pub alg: Option<Alg>,
    pub key: PublicKey,
}

impl Jwk {
    pub fn accepts(&self, alg: Alg) -> bool {
        self.alg.is_none_or(|a| a == alg) && self.key.supports(alg)
    }
}

impl fmt::Debug for Jwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Public keys are not secret, but there is no reason to dump them into logs either.
        f.debug_struct("Jwk")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kty", &self.key.kty())
            .finish()
    }
}

/// A key the parser chose not to use, and why (for a debug or warn log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    pub index: usize,
    pub kid: Option<String>,
    pub why: &'static str,
}

/// A parsed key set.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Jwk>,
    pub skipped: Vec<SkippedKey>,
}

/// A JWKS problem, with the JSON path of the offending member relative to the JWKS root
/// (for example `keys[2].x`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

fn err(path: impl Into<String>, message: impl Into<String>) -> JwksError {
    JwksError {
        path: path.into(),
        message: message.into(),
    }
}

/// Upper bound on the number of keys considered from one JWKS.
pub const MAX_KEYS: usize = 64;

/// Members that only a private (or symmetric) JWK carries (RFC 7518 §6.2.2, §6.3.2, §6.4;
/// RFC 8037 §2).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

impl KeySet {
    /// Parses a JWKS JSON value (`{"keys":[...]}`).
    pub fn from_value(jwks: &Value) -> Result<KeySet, JwksError> {
        let obj = jwks
            .as_object()
            .ok_or_else(|| err("", "a JWKS must be a JSON object with a \"keys\" array"))?;
        let keys = obj
            .get("keys")
            .ok_or_else(|| err("keys", "missing; a JWKS must have a \"keys\" array"))?
            .as_array()
            .ok_or_else(|| err("keys", "must be an array"))?;
        if keys.len() > MAX_KEYS {
            return Err(err(
                "keys",
                format!("holds {} keys; at most {MAX_KEYS} are accepted", keys.len()),
            ));
        }
        let mut set = KeySet::default();
        for (index, key) in keys.iter().enumerate() {
            let path = format!("keys[{index}]");
            let obj = key
                .as_object()
                .ok_or_else(|| err(path.as_str(), "must be a JSON object"))?;
            let kid = match obj.get("kid") {
                None => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(err(format!("{path}.kid"), "must be a string")),
            };
            match parse_key(obj, &path)? {
                Parsed::Use(key, alg) => set.keys.push(Jwk { kid, alg, key }),
                Parsed::Skip(why) => set.skipped.push(SkippedKey { index, kid, why }),
            }
        }
        Ok(set)
    }

    /// Parses a JWKS from JSON text.
    pub fn from_json(text: &str) -> Result<KeySet, JwksError> {
        // Strict: a member name twice in one object (`/keys/0/kid`) is refused, not resolved.
        let value = crate::json::from_str(text).map_err(|e| err("", e.to_string()))?;
        KeySet::from_value(&value)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }

    /// Whether a key with this fingerprint is in the set.
    pub fn contains(&self, fingerprint: &KeyFingerprint) -> bool {
        self.keys.iter().any(|k| k.key.fingerprint() == fingerprint)
    }

    /// Keys that may verify a token with this `kid` and `alg`. With a `kid`, only keys
    /// carrying that exact `kid` qualify; without one, every key that fits `alg` does.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Alg,
    ) -> impl Iterator<Item = &'a Jwk> + 'a {
        self.keys.iter().filter(move |k| {
            k.accepts(alg)
                && match kid {
                    Some(kid) => k.kid.as_deref() == Some(kid),
                    None => true,
                }
        })
    }
}

#[allow(clippy::large_enum_variant)] // transient: one per parsed key
enum Parsed {
    Use(PublicKey, Option<Alg>),
    Skip(&'static str),
}

fn member<'a>(obj: &'a Map<String, Value>, path: &str, name: &str) -> Result<&'a str, JwksError> {
    match obj.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(err(format!("{path}.{name}"), "must be a string")),
        None => Err(err(format!("{path}.{name}"), "missing")),
    }
}

fn b64_member(obj: &Map<String, Value>, path: &str, name: &str) -> Result<Vec<u8>, JwksError> {
    let text = member(obj, path, name)?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| err(format!("{path}.{name}"), "is not unpadded base64url"))
}

fn fixed<const N: usize>(bytes: Vec<u8>, path: &str, name: &str) -> Result<[u8; N], JwksError> {
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| {
        err(
            format!("{path}.{name}"),
            format!("must be exactly {N} bytes, got {}", bytes.len()),
        )
    })
}

fn parse_key(obj: &Map<String, Value>, path: &str) -> Result<Parsed, JwksError> {
    if let Some(u) = obj.get("use") {
        match u.as_str() {
            Some("sig") => {}
            Some(_) => return Ok(Parsed::Skip("\"use\" is not \"sig\"")),
            None => return Err(err(format!("{path}.use"), "must be a string")),
        }
    }
    if let Some(ops) = obj.get("key_ops") {
        let ops = ops
            .as_array()
            .ok_or_else(|| err(format!("{path}.key_ops"), "must be an array"))?;
        if !ops.iter().any(|o| o.as_str() == Some("verify")) {
            return Ok(Parsed::Skip("\"key_ops\" does not include \"verify\""));
        }
    }
    if PRIVATE_MEMBERS.iter().any(|m| obj.contains_key(*m)) {
        return Ok(Parsed::Skip(
            "carries private key material; publish only public keys",
        ));
    }
    let alg = match obj.get("alg") {
        None => None,
        Some(Value::String(s)) => match Alg::parse(s) {
            Ok(a) => Some(a),
            Err(_) => {
                return Ok(Parsed::Skip(
                    "\"alg\" is not a supported signature algorithm",
                ))
            }
        },
        Some(_) => return Err(err(format!("{path}.alg"), "must be a string")),
    };
    let kty = member(obj, path, "kty")?;
    let key = match kty {
        "EC" => {
            let crv = member(obj, path, "crv")?;
            match crv {
                "P-256" => {
                    let x: [u8; 32] = fixed(b64_member(obj, path, "x")?, path, "x")?;
                    let y: [u8; 32] = fixed(b64_member(obj, path, "y")?, path, "y")?;
                    let mut sec1 = [0u8; 65];
                    sec1[0] = 4;
                    sec1[1..33].copy_from_slice(&x);
                    sec1[33..].copy_from_slice(&y);
                    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| {
                        err(format!("{path}.x"), "x/y is not a point on the P-256 curve")
                    })?;
                    PublicKey::new(
                        KeyMaterial::P256(key),
                        Some(crypto::ec_spki(&crypto::P256_OID, &sec1)),
                    )
                }
                "P-384" => {
                    let x: [u8; 48] = fixed(b64_member(obj, path, "x")?, path, "x")?;
                    let y: [u8; 48] = fixed(b64_member(obj, path, "y")?, path, "y")?;
                    let mut sec1 = [0u8; 97];
                    sec1[0] = 4;
                    sec1[1..49].copy_from_slice(&x);
                    sec1[49..].copy_from_slice(&y);
                    let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| {
                        err(format!("{path}.x"), "x/y is not a point on the P-384 curve")
                    })?;
                    PublicKey::new(
                        KeyMaterial::P384(key),
                        Some(crypto::ec_spki(&crypto::P384_OID, &sec1)),
                    )
                }
                _ => return Ok(Parsed::Skip("unsupported EC curve")),
            }
        }
        "OKP" => {
            let crv = member(obj, path, "crv")?;
            if crv != "Ed25519" {
                return Ok(Parsed::Skip("unsupported OKP curve"));
            }
            let x: [u8; 32] = fixed(b64_member(obj, path, "x")?, path, "x")?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&x)
                .map_err(|_| err(format!("{path}.x"), "is not an Ed25519 public key"))?;
            PublicKey::new(KeyMaterial::Ed25519(key), None)
        }
        "RSA" => {
            let n_bytes = b64_member(obj, path, "n")?;
            let e_bytes = b64_member(obj, path, "e")?;
            let n = rsa::BigUint::from_bytes_be(&n_bytes);
            let bits = n.bits();
            if bits < MIN_RSA_BITS {
                return Err(err(
                    format!("{path}.n"),
                    format!("RSA modulus is {bits} bits; at least {MIN_RSA_BITS} are required"),
                ));
            }
            if bits > MAX_RSA_BITS {
                return Err(err(
                    format!("{path}.n"),
                    format!("RSA modulus is {bits} bits; at most {MAX_RSA_BITS} are accepted"),
                ));
            }
            let e = rsa::BigUint::from_bytes_be(&e_bytes);
            let key = rsa::RsaPublicKey::new_with_max_size(n, e, MAX_RSA_BITS)
                .map_err(|_| err(format!("{path}.e"), "is not a valid RSA public exponent"))?;
            PublicKey::new(
                KeyMaterial::Rsa(Box::new(key)),
                Some(crypto::rsa_spki(&n_bytes, &e_bytes)),
            )
        }
        "oct" => return Ok(Parsed::Skip("symmetric keys are never accepted")),
        _ => return Ok(Parsed::Skip("unsupported key type")),
    };
    if let Some(alg) = alg {
        if !key.supports(alg) {
            return Err(err(
                format!("{path}.alg"),
                format!("{alg} does not fit a {} key", key.kty()),
            ));
        }
    }
    Ok(Parsed::Use(key, alg))
}

/// RFC 7638 JWK thumbprint: base64url(SHA-256(the required members, in lexicographic order,
/// as compact JSON)). Only the key types this filter verifies are supported.
pub fn thumbprint(jwk: &Map<String, Value>) -> Result<String, &'static str> {
    use sha2::{Digest, Sha256};
    let members: &[&str] = match jwk.get("kty").and_then(Value::as_str) {
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("OKP") => &["crv", "kty", "x"],
        Some("RSA") => &["e", "kty", "n"],
        Some(_) => return Err("jwk kty is not supported"),
        None => return Err("jwk has no kty"),
    };
    let mut canonical = String::with_capacity(256);
    canonical.push('{');
    for (i, name) in members.iter().enumerate() {
        let Some(Value::String(value)) = jwk.get(*name) else {
            return Err("jwk is missing a required member");
        };
        if i > 0 {
            canonical.push(',');
        }
        // Member names are plain ASCII; values are escaped as JSON strings.
        canonical.push('"');
        canonical.push_str(name);
        canonical.push_str("\":");
        canonical
            .push_str(&serde_json::to_string(value).map_err(|_| "jwk member is not a string")?);
    }
    canonical.push('}');
    Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

/// Parses a single public JWK (a DPoP proof's `jwk` header). Private members, symmetric keys
/// and unsupported key types are errors here, not skips.
pub fn parse_public_jwk(jwk: &Map<String, Value>) -> Result<PublicKey, &'static str> {
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err("jwk carries private key members");
    }
    match parse_key(jwk, "jwk") {
        Ok(Parsed::Use(key, _)) => Ok(key),
        Ok(Parsed::Skip(why)) => Err(why),
        Err(_) => Err("jwk is not a valid public key"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7638_section_3_1_example_thumbprint() {
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            thumbprint(jwk.as_object().unwrap()).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn thumbprint_ignores_member_order_and_optional_members() {
        let a = json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "BB"});
        let b =
            json!({"y": "BB", "use": "sig", "x": "AA", "crv": "P-256", "kty": "EC", "kid": "k"});
        assert_eq!(
            thumbprint(a.as_object().unwrap()),
            thumbprint(b.as_object().unwrap())
        );
        let c = json!({"kty": "EC", "crv": "P-256", "x": "AA"});
        assert!(thumbprint(c.as_object().unwrap()).is_err());
    }
}
