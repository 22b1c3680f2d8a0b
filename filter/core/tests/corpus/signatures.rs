//! A differential corpus of JWS signatures: one fixed key set and a list of access tokens, each
//! with the verdict a correct verifier must give. Every verdict is reasoned from the
//! specifications (RFC 7515, RFC 7518, RFC 8017, SEC 1, RFC 8032) and from the filter's
//! documented check order, never obtained by running a verifier.
//!
//! This one file is shared, as source, by the core's native test
//! (`filter/core/tests/signature_differential.rs`, the pure-Rust backend) and by the integration
//! test (`integration/tests/crypto_differential.rs`: a real Envoy with `crypto: "host"` and with
//! `crypto: "wasm"`), so every backend answers exactly the same questions. The DPoP corpus
//! (`dpop_proofs.rs`, next to this file) builds on the keys and helpers here.
//!
//! Determinism: the EC and Ed25519 keys come from fixed seeds, the RSA keys (2048 bits, the
//! smallest the filter accepts, and 8192 bits, the largest) are fixtures made once with
//! `openssl genpkey` (`../data/corpus-rsa*.private.jwk.json`), ECDSA signs with RFC 6979
//! nonces, Ed25519 and RSA are deterministic, and PSS salts are fixed. Given the same
//! [`Params`] the corpus is the same, byte for byte.
//!
//! Independence from the verifiers under test: RSA signatures are made here by hand
//! (EMSA-PKCS1-v1_5 and EMSA-PSS encodings, RSASP1 with the CRT, on `rsa::BigUint`), not with
//! the `rsa` crate's padding code that the pure-Rust backend uses; Ed25519 signs with
//! ed25519-compact while the filter verifies with ed25519-dalek. ECDSA signs with p256 and p384,
//! the crates of the pure-Rust backend, which is why Envoy's BoringSSL (the host backend) is the
//! other half of the comparison. Every malformed signature (r = 0, r >= n, high S, truncation,
//! ...) is built from bytes here, with the group orders written out from SEC 2 and RFC 8032.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::signature::hazmat::PrehashSigner as _;
use p256::ecdsa::signature::Signer as _;
use rsa::BigUint;
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// What the tokens must be valid for.
#[derive(Debug, Clone, Copy)]
pub struct Params<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    /// `sub`: the caller's SPIFFE ID, which the peer certificate must carry.
    pub subject: &'a str,
    /// Unix seconds: tokens are issued 10 s before and expire an hour after.
    pub now: u64,
}

/// One token and its expected verdict.
#[derive(Debug, Clone)]
pub struct Case {
    /// Unique within the corpus, `<alg>: <what>`.
    pub name: String,
    pub token: String,
    pub expect_valid: bool,
    /// The denial reason (`tokenbind.denied.<reason>`); `None` exactly when `expect_valid`.
    pub reason: Option<&'static str>,
    /// Why this is the right verdict.
    pub why: &'static str,
}

/// The key set and the cases.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// The public JWKS to configure (no `alg` members: only key type and curve tie a key to an
    /// algorithm, which is the check under test).
    pub jwks: Value,
    pub cases: Vec<Case>,
}

impl Corpus {
    pub fn valid(&self) -> usize {
        self.cases.iter().filter(|c| c.expect_valid).count()
    }

    /// How many cases expect each denial reason.
    pub fn denied_by_reason(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut out = std::collections::BTreeMap::new();
        for reason in self.cases.iter().filter_map(|c| c.reason) {
            *out.entry(reason).or_insert(0) += 1;
        }
        out
    }
}

/// Every algorithm the provider must allow for this corpus.
pub const ALGORITHMS: [&str; 9] = [
    "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA",
];

pub const BAD_SIGNATURE: &str = "bad_signature";
pub const UNKNOWN_KEY: &str = "unknown_key";
pub const UNSUPPORTED_ALGORITHM: &str = "unsupported_algorithm";
pub const MALFORMED_TOKEN: &str = "malformed_token";
pub const UNKNOWN_ISSUER: &str = "unknown_issuer";

// ---- Numbers --------------------------------------------------------------------------------

/// The order n of the P-256 base point (SEC 2 §2.4.2, FIPS 186-4 D.1.2.3).
pub const P256_N: &str = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";
/// The order n of the P-384 base point (SEC 2 §2.5.1, FIPS 186-4 D.1.2.4).
pub const P384_N: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf\
                          581a0db248b0a77aecec196accc52973";
/// The order L of the Ed25519 base point, 2^252 + 27742317777372353535851937790883648493
/// (RFC 8032 §5.1), big-endian.
pub const ED25519_L: &str = "1000000000000000000000000000000014def9dea2f79cd65812631a5cf5d3ed";

pub fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .map(|b| match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => panic!("not a lower-case hex digit: {b}"),
        })
        .collect();
    let pairs = digits.chunks_exact(2);
    assert!(pairs.remainder().is_empty(), "odd number of hex digits");
    pairs.map(|p| p[0] << 4 | p[1]).collect()
}

/// a + b on equal-length big-endian numbers; `None` if the sum needs another byte.
pub fn be_add(a: &[u8], b: &[u8]) -> Option<Vec<u8>> {
    assert_eq!(a.len(), b.len());
    let mut out = vec![0u8; a.len()];
    let mut carry = 0u16;
    for i in (0..a.len()).rev() {
        let sum = u16::from(a[i]) + u16::from(b[i]) + carry;
        out[i] = sum as u8;
        carry = sum >> 8;
    }
    (carry == 0).then_some(out)
}

/// a - b on equal-length big-endian numbers, a >= b.
pub fn be_sub(a: &[u8], b: &[u8]) -> Vec<u8> {
    assert_eq!(a.len(), b.len());
    assert!(a >= b, "be_sub underflow");
    let mut out = vec![0u8; a.len()];
    let mut borrow = 0i16;
    for i in (0..a.len()).rev() {
        let mut d = i16::from(a[i]) - i16::from(b[i]) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        out[i] = d as u8;
    }
    out
}

/// The number 1 as `len` big-endian bytes.
fn be_one(len: usize) -> Vec<u8> {
    let mut one = vec![0u8; len];
    one[len - 1] = 1;
    one
}

/// Whether s > (n - 1) / 2, i.e. s is the "high" one of s and n - s.
pub fn is_high(s: &[u8], n: &[u8]) -> bool {
    // 2s > n - 1  <=>  2s >= n  <=>  s >= n - s (for 0 < s < n).
    s >= be_sub(n, s).as_slice()
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

// ---- Hashes ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => Sha256::digest(data).to_vec(),
            Hash::Sha384 => Sha384::digest(data).to_vec(),
            Hash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    pub fn len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    /// The DER DigestInfo prefix of EMSA-PKCS1-v1_5 (RFC 8017 §9.2, note 1).
    pub fn digest_info(self) -> Vec<u8> {
        hex(match self {
            Hash::Sha256 => "3031300d060960864801650304020105000420",
            Hash::Sha384 => "3041300d060960864801650304020205000430",
            Hash::Sha512 => "3051300d060960864801650304020305000440",
        })
    }
}

// ---- RSA, by hand ---------------------------------------------------------------------------

/// An RSA private key from a JWK fixture, signing with RSASP1 (RFC 8017 §5.2.1) and the CRT.
#[derive(Debug, Clone)]
pub struct RsaKey {
    pub kid: &'static str,
    pub bits: usize,
    /// Modulus length in bytes (k in RFC 8017).
    pub k: usize,
    pub n: BigUint,
    e: BigUint,
    p: BigUint,
    q: BigUint,
    dp: BigUint,
    dq: BigUint,
    qi: BigUint,
    jwk_n: String,
    jwk_e: String,
}

impl RsaKey {
    fn from_jwk(kid: &'static str, text: &str) -> RsaKey {
        let jwk: Value = serde_json::from_str(text).expect("RSA fixture is JSON");
        let member = |name: &str| -> (String, BigUint) {
            let s = jwk[name].as_str().expect("RSA fixture member").to_owned();
            let bytes = URL_SAFE_NO_PAD.decode(&s).expect("RSA fixture base64url");
            (s, BigUint::from_bytes_be(&bytes))
        };
        let (jwk_n, n) = member("n");
        let (jwk_e, e) = member("e");
        let bits = n.bits();
        RsaKey {
            kid,
            bits,
            k: bits.div_ceil(8),
            n,
            e,
            p: member("p").1,
            q: member("q").1,
            dp: member("dp").1,
            dq: member("dq").1,
            qi: member("qi").1,
            jwk_n,
            jwk_e,
        }
    }

    pub fn public_jwk(&self) -> Value {
        json!({"kty": "RSA", "kid": self.kid, "use": "sig", "n": self.jwk_n, "e": self.jwk_e})
    }

    /// The public JWK without `kid` and `use` (a DPoP proof's `jwk`).
    pub fn bare_jwk(&self) -> Value {
        json!({"kty": "RSA", "n": self.jwk_n, "e": self.jwk_e})
    }

    /// `n` as k big-endian bytes.
    pub fn n_bytes(&self) -> Vec<u8> {
        self.pad(&self.n)
    }

    fn pad(&self, x: &BigUint) -> Vec<u8> {
        let bytes = x.to_bytes_be();
        assert!(bytes.len() <= self.k);
        let mut out = vec![0u8; self.k - bytes.len()];
        out.extend_from_slice(&bytes);
        out
    }

    /// RSASP1 on the encoded message `em` (k bytes or fewer): m^d mod n via the CRT, as k
    /// bytes. Checks s^e = m, so a broken fixture cannot go unnoticed.
    pub fn sign_raw(&self, em: &[u8]) -> Vec<u8> {
        let m = BigUint::from_bytes_be(em);
        assert!(m < self.n, "message representative out of range");
        let m1 = m.modpow(&self.dp, &self.p);
        let m2 = m.modpow(&self.dq, &self.q);
        let h = (&self.qi * ((&m1 + &self.p) - (&m2 % &self.p))) % &self.p;
        let s = &m2 + &h * &self.q;
        assert!(
            s.modpow(&self.e, &self.n) == m,
            "RSA fixture is inconsistent"
        );
        self.pad(&s)
    }

    /// EMSA-PKCS1-v1_5 (RFC 8017 §9.2) with an explicit DigestInfo prefix.
    pub fn pkcs1_em(&self, prefix: &[u8], digest: &[u8]) -> Vec<u8> {
        let t_len = prefix.len() + digest.len();
        assert!(self.k >= t_len + 11);
        let mut em = vec![0x00, 0x01];
        em.extend(std::iter::repeat_n(0xff, self.k - t_len - 3));
        em.push(0x00);
        em.extend_from_slice(prefix);
        em.extend_from_slice(digest);
        em
    }

    /// RSASSA-PKCS1-v1_5 (RS256/384/512).
    pub fn pkcs1(&self, hash: Hash, input: &[u8]) -> Vec<u8> {
        self.sign_raw(&self.pkcs1_em(&hash.digest_info(), &hash.digest(input)))
    }

    /// EMSA-PSS-ENCODE (RFC 8017 §9.1.1) with MGF1 over the same hash, emBits = modBits - 1,
    /// and then `trailer` as the last byte (0xbc is the right one).
    pub fn pss_em(&self, hash: Hash, input: &[u8], salt: &[u8], trailer: u8) -> Vec<u8> {
        let em_bits = self.bits - 1;
        let em_len = em_bits.div_ceil(8);
        let h_len = hash.len();
        assert!(em_len >= h_len + salt.len() + 2);
        let mut m_prime = vec![0u8; 8];
        m_prime.extend(hash.digest(input));
        m_prime.extend_from_slice(salt);
        let h = hash.digest(&m_prime);
        let mut db = vec![0u8; em_len - salt.len() - h_len - 2];
        db.push(0x01);
        db.extend_from_slice(salt);
        let mask = mgf1(hash, &h, em_len - h_len - 1);
        for (d, m) in db.iter_mut().zip(mask) {
            *d ^= m;
        }
        db[0] &= 0xff >> (8 * em_len - em_bits);
        let mut em = db;
        em.extend_from_slice(&h);
        em.push(trailer);
        em
    }

    /// RSASSA-PSS (PS256/384/512) with a salt as long as the hash (RFC 7518 §3.5) unless a
    /// test asks for another length. The salt is fixed: derived from the input.
    pub fn pss_with_salt_len(&self, hash: Hash, input: &[u8], salt_len: usize) -> Vec<u8> {
        let mut salt = Vec::new();
        let mut counter = 0u32;
        while salt.len() < salt_len {
            let mut seed = b"tokenbind corpus PSS salt".to_vec();
            seed.extend_from_slice(&counter.to_be_bytes());
            seed.extend_from_slice(input);
            salt.extend(Sha512::digest(&seed));
            counter += 1;
        }
        salt.truncate(salt_len);
        self.sign_raw(&self.pss_em(hash, input, &salt, 0xbc))
    }

    pub fn pss(&self, hash: Hash, input: &[u8]) -> Vec<u8> {
        self.pss_with_salt_len(hash, input, hash.len())
    }
}

/// MGF1 (RFC 8017 B.2.1).
fn mgf1(hash: Hash, seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut counter = 0u32;
    while out.len() < len {
        let mut block = seed.to_vec();
        block.extend_from_slice(&counter.to_be_bytes());
        out.extend(hash.digest(&block));
        counter += 1;
    }
    out.truncate(len);
    out
}

// ---- Keys -----------------------------------------------------------------------------------

pub fn p256_key(seed: &str) -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&Sha256::digest(seed.as_bytes())).expect("P-256 scalar")
}

pub fn p384_key(seed: &str) -> p384::ecdsa::SigningKey {
    p384::ecdsa::SigningKey::from_slice(&Sha384::digest(seed.as_bytes())).expect("P-384 scalar")
}

pub fn ed25519_key(seed: &str) -> ed25519_compact::KeyPair {
    let bytes: [u8; 32] = Sha256::digest(seed.as_bytes()).into();
    ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(bytes))
}

/// `{"kty":"EC","crv":...,"x":...,"y":...}` from an uncompressed SEC1 point.
fn ec_jwk(crv: &str, sec1: &[u8]) -> Value {
    assert_eq!(sec1[0], 4, "uncompressed SEC1 point");
    let c = (sec1.len() - 1) / 2;
    json!({"kty": "EC", "crv": crv, "x": b64(&sec1[1..=c]), "y": b64(&sec1[1 + c..])})
}

pub fn p256_jwk(key: &p256::ecdsa::SigningKey) -> Value {
    ec_jwk("P-256", key.verifying_key().to_sec1_point(false).as_bytes())
}

pub fn p384_jwk(key: &p384::ecdsa::SigningKey) -> Value {
    ec_jwk("P-384", key.verifying_key().to_sec1_point(false).as_bytes())
}

pub fn ed25519_jwk(key: &ed25519_compact::KeyPair) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "x": b64(key.pk.as_ref())})
}

/// Adds `kid` and `use: sig` to a bare public JWK.
fn published(mut jwk: Value, kid: &str) -> Value {
    jwk["kid"] = json!(kid);
    jwk["use"] = json!("sig");
    jwk
}

/// The issuer's keys (all published) and one P-256 key the issuer never published.
pub struct Keys {
    pub p256: p256::ecdsa::SigningKey,
    pub p384: p384::ecdsa::SigningKey,
    pub ed25519: ed25519_compact::KeyPair,
    pub rsa2048: RsaKey,
    pub rsa8192: RsaKey,
    pub stranger: p256::ecdsa::SigningKey,
}

pub const KID_P256: &str = "p256";
pub const KID_P384: &str = "p384";
pub const KID_ED25519: &str = "ed25519";
pub const KID_RSA2048: &str = "rsa2048";
pub const KID_RSA8192: &str = "rsa8192";

impl Keys {
    pub fn new() -> Keys {
        Keys {
            p256: p256_key("tokenbind corpus P-256"),
            p384: p384_key("tokenbind corpus P-384"),
            ed25519: ed25519_key("tokenbind corpus Ed25519"),
            rsa2048: RsaKey::from_jwk(
                KID_RSA2048,
                include_str!("../data/corpus-rsa2048.private.jwk.json"),
            ),
            rsa8192: RsaKey::from_jwk(
                KID_RSA8192,
                include_str!("../data/corpus-rsa8192.private.jwk.json"),
            ),
            stranger: p256_key("tokenbind corpus P-256, never published"),
        }
    }

    /// The public JWKS: distinct kids, no `alg` members.
    pub fn jwks(&self) -> Value {
        json!({"keys": [
            published(p256_jwk(&self.p256), KID_P256),
            published(p384_jwk(&self.p384), KID_P384),
            published(ed25519_jwk(&self.ed25519), KID_ED25519),
            self.rsa2048.public_jwk(),
            self.rsa8192.public_jwk(),
        ]})
    }
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new()
    }
}

/// ECDSA over P-256 with RFC 6979 nonces: `hash` of the input, truncated to 256 bits as
/// SEC 1 §4.1.3 step 5 prescribes (so SHA-256 is ES256, anything else is a wrong-hash
/// signature). Returns r || s.
pub fn p256_sign(key: &p256::ecdsa::SigningKey, hash: Hash, input: &[u8]) -> Vec<u8> {
    let sig: p256::ecdsa::Signature = if hash == Hash::Sha256 {
        key.sign(input)
    } else {
        key.sign_prehash(&hash.digest(input))
            .expect("P-256 prehash")
    };
    sig.to_bytes().to_vec()
}

/// ECDSA over P-384, as [`p256_sign`] (SHA-384 is ES384).
pub fn p384_sign(key: &p384::ecdsa::SigningKey, hash: Hash, input: &[u8]) -> Vec<u8> {
    let sig: p384::ecdsa::Signature = if hash == Hash::Sha384 {
        key.sign(input)
    } else {
        key.sign_prehash(&hash.digest(input))
            .expect("P-384 prehash")
    };
    sig.to_bytes().to_vec()
}

pub fn ed25519_sign(key: &ed25519_compact::KeyPair, input: &[u8]) -> Vec<u8> {
    key.sk.sign(input, None).to_vec()
}

/// The DER `ECDSA-Sig-Value` (SEC 1 C.5) of r || s: what X.509 and TLS use, and not what
/// JWS uses (RFC 7518 §3.4).
pub fn ecdsa_der(rs: &[u8]) -> Vec<u8> {
    fn integer(out: &mut Vec<u8>, be: &[u8]) {
        let skip = be.iter().take_while(|b| **b == 0).count();
        let mut digits = be[skip..].to_vec();
        if digits.first().is_none_or(|b| b & 0x80 != 0) {
            digits.insert(0, 0);
        }
        out.push(0x02);
        out.push(digits.len() as u8);
        out.extend(digits);
    }
    let (r, s) = rs.split_at(rs.len() / 2);
    let mut body = Vec::new();
    integer(&mut body, r);
    integer(&mut body, s);
    let mut out = vec![0x30];
    if body.len() >= 0x80 {
        out.push(0x81);
    }
    out.push(body.len() as u8);
    out.extend(body);
    out
}

// ---- Tokens ---------------------------------------------------------------------------------

/// A compact JWS as its three decoded parts.
#[derive(Debug, Clone)]
pub struct Jws {
    pub header: Vec<u8>,
    pub claims: Vec<u8>,
    pub signature: Vec<u8>,
}

impl Jws {
    /// The parts, with the signature still to be made over [`Jws::signing_input`].
    pub fn unsigned(header: &Value, claims: &Value) -> Jws {
        Jws {
            header: header.to_string().into_bytes(),
            claims: claims.to_string().into_bytes(),
            signature: Vec::new(),
        }
    }

    pub fn signing_input(&self) -> String {
        format!("{}.{}", b64(&self.header), b64(&self.claims))
    }

    pub fn compact(&self) -> String {
        format!("{}.{}", self.signing_input(), b64(&self.signature))
    }

    pub fn with_signature(&self, signature: Vec<u8>) -> Jws {
        Jws {
            signature,
            ..self.clone()
        }
    }

    /// Flips bit `bit` of header byte `index`, keeping the signature.
    pub fn flip_header(&self, index: usize, bit: u8) -> Jws {
        let mut out = self.clone();
        out.header[index] ^= 1 << bit;
        out
    }

    pub fn flip_claims(&self, index: usize, bit: u8) -> Jws {
        let mut out = self.clone();
        out.claims[index] ^= 1 << bit;
        out
    }

    pub fn flip_signature(&self, index: usize, bit: u8) -> Jws {
        let mut out = self.clone();
        out.signature[index] ^= 1 << bit;
        out
    }
}

/// Index of the last character of the JSON string value of member `name` in `json`.
pub fn string_value_end(json: &[u8], name: &str) -> usize {
    let text = std::str::from_utf8(json).expect("JSON text");
    let key = format!("\"{name}\":\"");
    let start = text
        .find(&key)
        .unwrap_or_else(|| panic!("no member {name}"))
        + key.len();
    let len = text[start..].find('"').expect("closing quote");
    assert!(len > 0, "member {name} is empty");
    start + len - 1
}

/// Index of the first character of the JSON string value of member `name`.
pub fn string_value_start(json: &[u8], name: &str) -> usize {
    let text = std::str::from_utf8(json).expect("JSON text");
    let key = format!("\"{name}\":\"");
    text.find(&key)
        .unwrap_or_else(|| panic!("no member {name}"))
        + key.len()
}

/// Index of the last digit of the JSON number value of member `name`.
pub fn number_value_end(json: &[u8], name: &str) -> usize {
    let text = std::str::from_utf8(json).expect("JSON text");
    let key = format!("\"{name}\":");
    let start = text
        .find(&key)
        .unwrap_or_else(|| panic!("no member {name}"))
        + key.len();
    let len = text[start..]
        .find(|c: char| !c.is_ascii_digit())
        .expect("number end");
    assert!(len > 0, "member {name} is not a number");
    start + len - 1
}

/// Index of the first character of member name `name` (after its opening quote).
pub fn member_name_start(json: &[u8], name: &str) -> usize {
    let text = std::str::from_utf8(json).expect("JSON text");
    text.find(&format!("\"{name}\":"))
        .unwrap_or_else(|| panic!("no member {name}"))
        + 1
}

/// The same signature bytes, base64url-encoded with the unused low bits of the last character
/// set: RFC 4648 §3.5 canonical encoding requires them to be zero. `None` when the length
/// leaves no unused bits.
pub fn noncanonical_b64(bytes: &[u8]) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let leftover = bytes.len() % 3;
    if leftover == 0 {
        return None;
    }
    let mut text = b64(bytes).into_bytes();
    let last = text.pop().expect("non-empty");
    let value = ALPHABET.iter().position(|c| *c == last).expect("alphabet");
    // 1 leftover byte: 2 data bits and 4 unused bits; 2 leftover bytes: 4 data bits, 2 unused.
    text.push(ALPHABET[value | 1]);
    Some(String::from_utf8(text).expect("ASCII"))
}

/// Builds the cases, checking that names are unique.
pub struct Builder {
    pub cases: Vec<Case>,
}

impl Builder {
    pub fn new() -> Builder {
        Builder { cases: Vec::new() }
    }

    fn push(
        &mut self,
        name: String,
        token: String,
        reason: Option<&'static str>,
        why: &'static str,
    ) {
        assert!(
            self.cases.iter().all(|c| c.name != name),
            "duplicate case name {name}"
        );
        self.cases.push(Case {
            name,
            token,
            expect_valid: reason.is_none(),
            reason,
            why,
        });
    }

    pub fn valid(&mut self, name: impl Into<String>, token: String, why: &'static str) {
        self.push(name.into(), token, None, why);
    }

    pub fn denied(
        &mut self,
        name: impl Into<String>,
        token: String,
        reason: &'static str,
        why: &'static str,
    ) {
        self.push(name.into(), token, Some(reason), why);
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

pub fn header(alg: &str, kid: Option<&str>) -> Value {
    match kid {
        Some(kid) => json!({"alg": alg, "kid": kid, "typ": "JWT"}),
        None => json!({"alg": alg, "typ": "JWT"}),
    }
}

/// Claims valid for `p`; `jti` tells the tokens apart (the filter does not look at it).
pub fn claims(p: &Params<'_>, jti: &str) -> Value {
    json!({
        "iss": p.issuer,
        "aud": p.audience,
        "sub": p.subject,
        "iat": p.now - 10,
        "nbf": p.now - 10,
        "exp": p.now + 3600,
        "jti": jti,
    })
}

/// A token whose signature is `sign(signing input)`.
pub fn signed(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> Jws {
    let jws = Jws::unsigned(header, claims);
    let signature = sign(jws.signing_input().as_bytes());
    jws.with_signature(signature)
}

/// A property of a signature that a search looks for.
pub type Want<'a> = &'a dyn Fn(&[u8]) -> bool;

/// Signs an input hashed with the given hash.
pub type HashSigner<'k> = Box<dyn Fn(Hash, &[u8]) -> Vec<u8> + 'k>;

/// The first token, over jti = `<jti>/0`, `<jti>/1`, ..., whose signature satisfies `want`
/// (deterministic: the same inputs give the same search).
pub fn signed_where(
    header: &Value,
    p: &Params<'_>,
    jti: &str,
    sign: impl Fn(&[u8]) -> Vec<u8>,
    want: impl Fn(&[u8]) -> bool,
) -> Jws {
    let want: [Want<'_>; 1] = [&want];
    signed_each(header, p, jti, sign, &want).remove(0)
}

/// One search for several properties: for each of `wants`, a token (over jti = `<jti>/0`,
/// `<jti>/1`, ...) whose signature satisfies it, no token used twice.
pub fn signed_each(
    header: &Value,
    p: &Params<'_>,
    jti: &str,
    sign: impl Fn(&[u8]) -> Vec<u8>,
    wants: &[Want<'_>],
) -> Vec<Jws> {
    let mut found: Vec<Option<Jws>> = vec![None; wants.len()];
    for i in 0..100_000 {
        if found.iter().all(Option::is_some) {
            break;
        }
        let jws = signed(header, &claims(p, &format!("{jti}/{i}")), &sign);
        if let Some(slot) = wants
            .iter()
            .zip(found.iter_mut())
            .find(|(want, slot)| slot.is_none() && want(&jws.signature))
            .map(|(_, slot)| slot)
        {
            *slot = Some(jws);
        }
    }
    found
        .into_iter()
        .map(|f| f.unwrap_or_else(|| panic!("no signature for {jti} satisfied the search")))
        .collect()
}

// ---- Cases shared by every algorithm --------------------------------------------------------

const WHY_VALID: &str = "a correct signature by the published key, claims valid";
const WHY_SIG_FLIP: &str = "one bit of the signature changed: it no longer verifies";
const WHY_SIGNED_PART: &str =
    "one bit of the signed part changed, after provider, algorithm and key are chosen: the \
     signature covers it (RFC 7515 §5.2)";
const WHY_KID: &str = "one bit of the kid changed: no published key has that kid";
const WHY_ALG_UNKNOWN: &str = "one bit of alg changed: the result is not an algorithm";
const WHY_NOT_JSON: &str = "one bit changed so the part is no longer a JSON object";
const WHY_ISS: &str =
    "one bit of iss changed: no provider has that issuer, which is checked before keys";
const WHY_NO_EXP: &str =
    "one bit turns the member name exp into dxp: the signature check comes before the \
     required-exp check in the filter, so the reason is the signature";

/// Single-bit flips at the first, middle and last byte of the signature of the valid `jws`.
fn signature_flips(b: &mut Builder, label: &str, jws: &Jws) {
    let n = jws.signature.len();
    for (index, bit) in [(0, 7), (n / 2, 0), (n - 1, 0)] {
        b.denied(
            format!("{label}: signature byte {index} bit {bit} flipped"),
            jws.flip_signature(index, bit).compact(),
            BAD_SIGNATURE,
            WHY_SIG_FLIP,
        );
    }
}

/// Single-bit flips in the header and claims of the valid `jws`, and its signature in
/// non-canonical base64url.
fn part_flips(b: &mut Builder, label: &str, jws: &Jws) {
    if let Some(text) = noncanonical_b64(&jws.signature) {
        b.denied(
            format!("{label}: signature in non-canonical base64url (unused bits set)"),
            format!("{}.{text}", jws.signing_input()),
            MALFORMED_TOKEN,
            "the same signature bytes, but the encoding's unused low bits are not zero: the \
             filter decodes base64url strictly (RFC 4648 §3.5), so the token is malformed",
        );
    }
    let h = &jws.header;
    b.denied(
        format!("{label}: header typ bit 0 flipped"),
        jws.flip_header(string_value_start(h, "typ"), 0).compact(),
        BAD_SIGNATURE,
        WHY_SIGNED_PART,
    );
    b.denied(
        format!("{label}: header kid bit 0 flipped"),
        jws.flip_header(string_value_start(h, "kid"), 0).compact(),
        UNKNOWN_KEY,
        WHY_KID,
    );
    b.denied(
        format!("{label}: header alg last character bit 0 flipped"),
        jws.flip_header(string_value_end(h, "alg"), 0).compact(),
        UNSUPPORTED_ALGORITHM,
        WHY_ALG_UNKNOWN,
    );
    b.denied(
        format!("{label}: header '{{' bit 0 flipped"),
        jws.flip_header(0, 0).compact(),
        MALFORMED_TOKEN,
        WHY_NOT_JSON,
    );
    b.denied(
        format!("{label}: header typ bit 7 flipped (not UTF-8)"),
        jws.flip_header(string_value_start(h, "typ"), 7).compact(),
        MALFORMED_TOKEN,
        "one bit makes the header invalid UTF-8, so it is not JSON",
    );
    let c = &jws.claims;
    for member in ["jti", "sub", "aud"] {
        b.denied(
            format!("{label}: claims {member} last character bit 0 flipped"),
            jws.flip_claims(string_value_end(c, member), 0).compact(),
            BAD_SIGNATURE,
            WHY_SIGNED_PART,
        );
    }
    b.denied(
        format!("{label}: claims exp last digit bit 0 flipped"),
        jws.flip_claims(number_value_end(c, "exp"), 0).compact(),
        BAD_SIGNATURE,
        WHY_SIGNED_PART,
    );
    b.denied(
        format!("{label}: claims member name exp bit 0 flipped"),
        jws.flip_claims(member_name_start(c, "exp"), 0).compact(),
        BAD_SIGNATURE,
        WHY_NO_EXP,
    );
    b.denied(
        format!("{label}: claims iss last character bit 0 flipped"),
        jws.flip_claims(string_value_end(c, "iss"), 0).compact(),
        UNKNOWN_ISSUER,
        WHY_ISS,
    );
    b.denied(
        format!("{label}: claims '{{' bit 0 flipped"),
        jws.flip_claims(0, 0).compact(),
        MALFORMED_TOKEN,
        WHY_NOT_JSON,
    );
}

/// Signatures of the wrong length made from a valid one.
fn lengths(b: &mut Builder, label: &str, jws: &Jws, why: &'static str) {
    let sig = &jws.signature;
    let n = sig.len();
    let mut short = sig.clone();
    short.pop();
    b.denied(
        format!("{label}: signature truncated to {} bytes", n - 1),
        jws.with_signature(short).compact(),
        BAD_SIGNATURE,
        why,
    );
    let mut long = sig.clone();
    long.push(0);
    b.denied(
        format!(
            "{label}: signature extended to {} bytes (0x00 appended)",
            n + 1
        ),
        jws.with_signature(long).compact(),
        BAD_SIGNATURE,
        why,
    );
    let mut prefixed = vec![0];
    prefixed.extend_from_slice(sig);
    b.denied(
        format!(
            "{label}: signature extended to {} bytes (0x00 prepended)",
            n + 1
        ),
        jws.with_signature(prefixed).compact(),
        BAD_SIGNATURE,
        why,
    );
    b.denied(
        format!("{label}: empty signature"),
        jws.with_signature(Vec::new()).compact(),
        BAD_SIGNATURE,
        why,
    );
}

// ---- ECDSA ----------------------------------------------------------------------------------

const WHY_EC_LENGTH: &str =
    "a JWS ECDSA signature is exactly r || s, each the curve's size (RFC 7518 §3.4); any \
     other length is refused";
const WHY_RS_RANGE: &str =
    "r and s must both be in [1, n - 1] (SEC 1 §4.1.4 step 1); the signature decodes, so the \
     reason is the signature";

/// One ECDSA algorithm's description.
struct Ecdsa<'k> {
    alg: &'static str,
    kid: &'static str,
    /// Coordinate size in bytes.
    size: usize,
    order: Vec<u8>,
    /// Signs the input hashed with the given hash.
    sign: HashSigner<'k>,
    hash: Hash,
    wrong_hashes: [Hash; 2],
}

fn ecdsa_cases(b: &mut Builder, p: &Params<'_>, keys: &Keys, ec: &Ecdsa<'_>) {
    let alg = ec.alg;
    let size = ec.size;
    let n = &ec.order;
    let h = header(alg, Some(ec.kid));
    let sign = |input: &[u8]| (ec.sign)(ec.hash, input);
    // One search: a base token with a low S (so that n - S is high), and signatures whose
    // r or s have a leading zero byte, or both their top bit set.
    let low_s = |sig: &[u8]| !is_high(&sig[size..], n);
    let r00 = |sig: &[u8]| sig[0] == 0;
    let s00 = |sig: &[u8]| sig[size] == 0;
    let top = |sig: &[u8]| sig[0] & 0x80 != 0 && sig[size] & 0x80 != 0;
    let found = signed_each(
        &h,
        p,
        &format!("{alg} search"),
        sign,
        &[&low_s, &r00, &s00, &top],
    );
    let [base, zero_r, zero_s, top_r] = <[Jws; 4]>::try_from(found).expect("four tokens");
    b.valid(format!("{alg}: valid (low S)"), base.compact(), WHY_VALID);

    let (r, s) = base.signature.split_at(size);
    let high = [r, &be_sub(n, s)].concat();
    b.valid(
        format!("{alg}: valid, high S (s' = n - s)"),
        base.with_signature(high).compact(),
        "(r, n - s) verifies whenever (r, s) does; JWS (RFC 7518 §3.4) does not require low S, \
         so both must be accepted",
    );
    let no_kid = header(alg, None);
    b.valid(
        format!("{alg}: valid, no kid"),
        signed(&no_kid, &claims(p, &format!("{alg} no kid")), sign).compact(),
        "without kid, every key that fits alg is a candidate, and one key fits",
    );
    b.valid(
        format!("{alg}: valid, r has a leading zero byte"),
        zero_r.compact(),
        "r < 2^(8(size-1)) is still exactly size bytes in JWS; its DER form is shorter",
    );
    b.valid(
        format!("{alg}: valid, s has a leading zero byte"),
        zero_s.compact(),
        "s < 2^(8(size-1)) is still exactly size bytes in JWS; its DER form is shorter",
    );
    b.valid(
        format!("{alg}: valid, r and s have their top bit set"),
        top_r.compact(),
        "r and s >= 2^(8 size - 1) are valid; their DER INTEGERs need a 0x00 sign byte",
    );

    signature_flips(b, alg, &base);
    part_flips(b, alg, &base);
    lengths(b, alg, &base, WHY_EC_LENGTH);
    b.denied(
        format!("{alg}: valid signature in DER instead of r || s"),
        base.with_signature(ecdsa_der(&base.signature)).compact(),
        BAD_SIGNATURE,
        WHY_EC_LENGTH,
    );

    let zero = vec![0u8; size];
    let ones = vec![0xffu8; size];
    let n_plus_1 = be_add(n, &be_one(size)).expect("n + 1 fits");
    let (r, s) = (r.to_vec(), s.to_vec());
    let variants: [(&str, Vec<u8>, Vec<u8>); 9] = [
        ("r = 0", zero.clone(), s.clone()),
        ("s = 0", r.clone(), zero.clone()),
        ("r = s = 0", zero.clone(), zero.clone()),
        ("r = n", n.clone(), s.clone()),
        ("s = n", r.clone(), n.clone()),
        ("r = n + 1 (r + n for r = 1)", n_plus_1.clone(), s.clone()),
        ("s = n + 1", r.clone(), n_plus_1),
        ("r = 2^k - 1 (all ones)", ones.clone(), s.clone()),
        ("s = 2^k - 1 (all ones)", r.clone(), ones),
    ];
    for (what, r, s) in variants {
        b.denied(
            format!("{alg}: {what}"),
            base.with_signature([r, s].concat()).compact(),
            BAD_SIGNATURE,
            WHY_RS_RANGE,
        );
    }
    // r + n and s + n: n is within about 2^224 (P-256) or 2^190 (P-384) of 2^(8 size), so
    // r + n fits in size bytes only for r below 2^(8 size) - n, which a real signature's r or
    // s is with probability about 2^-32 (P-256) or 2^-194 (P-384). "r = n + 1" above is r + n
    // for r = 1.
    assert!(be_add(n, &r).is_none() && be_add(n, &s).is_none());

    for wrong in ec.wrong_hashes {
        b.denied(
            format!("{alg}: the key signed {wrong:?} of the input (wrong hash)"),
            signed(&h, &claims(p, &format!("{alg} {wrong:?}")), |input| {
                (ec.sign)(wrong, input)
            })
            .compact(),
            BAD_SIGNATURE,
            "ECDSA over another hash of the signing input: the verifier hashes with the \
             algorithm's hash, so the equation does not hold",
        );
    }
    b.denied(
        format!("{alg}: signed by an unpublished key of the same curve, published kid"),
        signed(&h, &claims(p, &format!("{alg} stranger")), |input| {
            if alg == "ES256" {
                p256_sign(&keys.stranger, Hash::Sha256, input)
            } else {
                p384_sign(
                    &p384_key("tokenbind corpus P-384, never published"),
                    Hash::Sha384,
                    input,
                )
            }
        })
        .compact(),
        BAD_SIGNATURE,
        "the kid's key did not make this signature",
    );
}

fn wrong_curve_cases(b: &mut Builder, p: &Params<'_>, keys: &Keys) {
    let p256 = |input: &[u8]| p256_sign(&keys.p256, Hash::Sha256, input);
    let p384 = |input: &[u8]| p384_sign(&keys.p384, Hash::Sha384, input);
    b.denied(
        "ES256: kid of the P-384 key, P-384 signature",
        signed(
            &header("ES256", Some(KID_P384)),
            &claims(p, "ES256 on P-384"),
            p384,
        )
        .compact(),
        UNKNOWN_KEY,
        "ES256 needs a P-256 key (RFC 7518 §3.4); the kid names a P-384 key, so no key fits",
    );
    b.denied(
        "ES256: kid of the P-256 key, P-384 signature (96 bytes)",
        signed(
            &header("ES256", Some(KID_P256)),
            &claims(p, "ES256 with P-384 sig"),
            p384,
        )
        .compact(),
        BAD_SIGNATURE,
        WHY_EC_LENGTH,
    );
    b.denied(
        "ES384: kid of the P-256 key, P-256 signature",
        signed(
            &header("ES384", Some(KID_P256)),
            &claims(p, "ES384 on P-256"),
            p256,
        )
        .compact(),
        UNKNOWN_KEY,
        "ES384 needs a P-384 key; the kid names a P-256 key, so no key fits",
    );
    b.denied(
        "ES384: kid of the P-384 key, P-256 signature (64 bytes)",
        signed(
            &header("ES384", Some(KID_P384)),
            &claims(p, "ES384 with P-256 sig"),
            p256,
        )
        .compact(),
        BAD_SIGNATURE,
        WHY_EC_LENGTH,
    );
    b.denied(
        "ES256: kid of the P-256 key, an Ed25519 signature (64 bytes, same length)",
        signed(
            &header("ES256", Some(KID_P256)),
            &claims(p, "ES256 with Ed25519 sig"),
            |i| ed25519_sign(&keys.ed25519, i),
        )
        .compact(),
        BAD_SIGNATURE,
        "64 bytes read as r || s: not an ECDSA signature by this key",
    );
    b.denied(
        "ES256: kid of the RSA 2048 key, P-256 signature",
        signed(
            &header("ES256", Some(KID_RSA2048)),
            &claims(p, "ES256 on RSA"),
            p256,
        )
        .compact(),
        UNKNOWN_KEY,
        "an RSA key never fits ES256",
    );
}

// ---- RSA ------------------------------------------------------------------------------------

const WHY_RSA_LENGTH: &str =
    "an RSA signature is exactly k bytes, k the modulus length (RFC 8017 §8.2.2 step 1, \
     §8.1.2 step 1)";
const WHY_RSA_RANGE: &str =
    "the signature representative must be below n (RFC 8017 §5.2.2 RSAVP1 step 1)";

fn rsa_alg(alg: &str) -> (bool, Hash) {
    let hash = match &alg[2..] {
        "256" => Hash::Sha256,
        "384" => Hash::Sha384,
        "512" => Hash::Sha512,
        other => panic!("not an RSA alg: {other}"),
    };
    (alg.starts_with("PS"), hash)
}

fn rsa_sign(key: &RsaKey, alg: &str, input: &[u8]) -> Vec<u8> {
    match rsa_alg(alg) {
        (true, hash) => key.pss(hash, input),
        (false, hash) => key.pkcs1(hash, input),
    }
}

/// How many cases one RSA algorithm and key get (each signature with an 8192-bit key costs
/// a noticeable fraction of a second in a debug build).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Depth {
    /// Valid, and what can be made from its signature: flips, lengths.
    Base,
    /// Also wrong hashes and the other padding.
    Hashes,
    /// Also out-of-range values and hand-made bad encodings.
    Full,
}

fn rsa_cases(b: &mut Builder, p: &Params<'_>, key: &RsaKey, alg: &'static str, depth: Depth) {
    let label = format!("{alg}-{}", key.bits);
    let h = header(alg, Some(key.kid));
    let sign = |input: &[u8]| rsa_sign(key, alg, input);
    let base = signed(&h, &claims(p, &format!("{label} base")), sign);
    b.valid(
        format!("{label}: valid"),
        base.compact(),
        if key.bits == 8192 {
            "a correct signature by a published 8192-bit key, the largest the filter accepts"
        } else {
            "a correct signature by a published 2048-bit key, the smallest the filter accepts"
        },
    );
    let (pss, hash) = rsa_alg(alg);
    let other_hashes: Vec<Hash> = [Hash::Sha256, Hash::Sha384, Hash::Sha512]
        .into_iter()
        .filter(|x| *x != hash)
        .collect();
    if depth >= Depth::Hashes {
        for wrong in &other_hashes {
            b.denied(
                format!("{label}: signed with {wrong:?} (wrong hash)"),
                signed(&h, &claims(p, &format!("{label} {wrong:?}")), |input| {
                    if pss {
                        key.pss(*wrong, input)
                    } else {
                        key.pkcs1(*wrong, input)
                    }
                })
                .compact(),
                BAD_SIGNATURE,
                "the signature is over another hash (and its DigestInfo or PSS hash length): it is \
                 not a signature for this alg",
            );
        }
        b.denied(
            format!(
                "{label}: the other padding ({})",
                if pss { "PKCS#1 v1.5" } else { "PSS" }
            ),
            signed(&h, &claims(p, &format!("{label} other padding")), |input| {
                if pss {
                    key.pkcs1(hash, input)
                } else {
                    key.pss(hash, input)
                }
            })
            .compact(),
            BAD_SIGNATURE,
            "RS* is RSASSA-PKCS1-v1_5 and PS* is RSASSA-PSS (RFC 7518 §3.3, §3.5): a signature \
             with the other encoding does not verify",
        );
    }
    signature_flips(b, &label, &base);
    // R (0x52) and P (0x50) differ in one bit: RS256 <-> PS256 by a single flip.
    b.denied(
        format!("{label}: header alg first letter bit 1 flipped (R <-> P)"),
        base.flip_header(string_value_start(&base.header, "alg"), 1)
            .compact(),
        BAD_SIGNATURE,
        "the flip turns RS* into PS* (or back): the header is signed, and the signature has \
         the other padding",
    );
    part_flips(b, &label, &base);
    lengths(b, &label, &base, WHY_RSA_LENGTH);
    if depth < Depth::Full {
        return;
    }
    b.denied(
        format!("{label}: signature all zero"),
        base.with_signature(vec![0; key.k]).compact(),
        BAD_SIGNATURE,
        "0^e = 0 is no valid encoded message",
    );
    b.denied(
        format!("{label}: signature = n"),
        base.with_signature(key.n_bytes()).compact(),
        BAD_SIGNATURE,
        WHY_RSA_RANGE,
    );
    b.denied(
        format!("{label}: signature all ones (> n)"),
        base.with_signature(vec![0xff; key.k]).compact(),
        BAD_SIGNATURE,
        WHY_RSA_RANGE,
    );
    // One search: a signature s with s + n still below 2^(8k) (about 1 in 30 for this key),
    // and, for PKCS#1 v1.5, one with a leading zero byte.
    let n_bytes = key.n_bytes();
    let fits = |sig: &[u8]| be_add(sig, &n_bytes).is_some();
    let zero = |sig: &[u8]| sig[0] == 0;
    let wants: Vec<Want<'_>> = if pss { vec![&fits] } else { vec![&fits, &zero] };
    let mut found = signed_each(&h, p, &format!("{label} search"), sign, &wants).into_iter();
    let wrapped = found.next().expect("searched for");
    let plus_n = be_add(&wrapped.signature, &n_bytes).expect("searched for");
    b.denied(
        format!("{label}: signature s + n (same value mod n, still k bytes)"),
        wrapped.with_signature(plus_n).compact(),
        BAD_SIGNATURE,
        "s + n is congruent to a valid s, but a signature representative must be below n \
         (RFC 8017 §5.2.2 RSAVP1 step 1, used by §8.1.2 and §8.2.2): not a valid signature",
    );
    if let Some(zero_lead) = found.next() {
        b.valid(
            format!("{label}: valid, signature has a leading zero byte"),
            zero_lead.compact(),
            "I2OSP pads the signature to k bytes, so a leading 0x00 is part of a valid \
             signature",
        );
        b.denied(
            format!(
                "{label}: the leading zero byte stripped ({} bytes)",
                key.k - 1
            ),
            zero_lead
                .with_signature(zero_lead.signature[1..].to_vec())
                .compact(),
            BAD_SIGNATURE,
            "the same integer, but a signature of k - 1 bytes is refused (RFC 8017 §8.2.2 \
             step 1)",
        );
    }
    if pss {
        for salt_len in [0, 2 * hash.len()] {
            b.denied(
                format!("{label}: PSS salt of {salt_len} bytes"),
                signed(
                    &h,
                    &claims(p, &format!("{label} salt {salt_len}")),
                    |input| key.pss_with_salt_len(hash, input, salt_len),
                )
                .compact(),
                BAD_SIGNATURE,
                "RFC 7518 §3.5: the salt is as long as the hash output; a JWS verifier checks \
                 with that salt length (RFC 8017 §9.1.2 step 10)",
            );
        }
        b.denied(
            format!("{label}: PSS trailer byte 0xbd instead of 0xbc"),
            signed(&h, &claims(p, &format!("{label} trailer")), |input| {
                key.sign_raw(&key.pss_em(hash, input, &hash.digest(b"salt")[..hash.len()], 0xbd))
            })
            .compact(),
            BAD_SIGNATURE,
            "EMSA-PSS-VERIFY step 4: the rightmost octet must be 0xbc",
        );
    } else {
        b.denied(
            format!("{label}: DigestInfo without the NULL parameters"),
            signed(&h, &claims(p, &format!("{label} no NULL")), |input| {
                let prefix = hex("302f300b0609608648016503040201 0420");
                key.sign_raw(&key.pkcs1_em(&prefix, &Hash::Sha256.digest(input)))
            })
            .compact(),
            BAD_SIGNATURE,
            "EMSA-PKCS1-v1_5 verification re-encodes with the DER DigestInfo, which has NULL \
             parameters, and compares (RFC 8017 §8.2.2 step 4)",
        );
        b.denied(
            format!("{label}: padding with a 0xfe byte in PS"),
            signed(&h, &claims(p, &format!("{label} PS fe")), |input| {
                let mut em = key.pkcs1_em(&Hash::Sha256.digest_info(), &Hash::Sha256.digest(input));
                em[10] = 0xfe;
                key.sign_raw(&em)
            })
            .compact(),
            BAD_SIGNATURE,
            "PS must be all 0xff (RFC 8017 §9.2 step 5)",
        );
    }
}

fn rsa_key_fit_cases(b: &mut Builder, p: &Params<'_>, keys: &Keys) {
    b.denied(
        "RS256: kid of the 8192-bit key, signed by the 2048-bit key",
        signed(
            &header("RS256", Some(KID_RSA8192)),
            &claims(p, "RS256 8192 kid"),
            |i| keys.rsa2048.pkcs1(Hash::Sha256, i),
        )
        .compact(),
        BAD_SIGNATURE,
        "256 bytes under a 1024-byte modulus: wrong length, and not that key's signature",
    );
    b.denied(
        "RS256: kid of the P-256 key",
        signed(
            &header("RS256", Some(KID_P256)),
            &claims(p, "RS256 on P-256"),
            |i| keys.rsa2048.pkcs1(Hash::Sha256, i),
        )
        .compact(),
        UNKNOWN_KEY,
        "an EC key never fits RS256",
    );
    b.denied(
        "PS256: kid of the Ed25519 key",
        signed(
            &header("PS256", Some(KID_ED25519)),
            &claims(p, "PS256 on Ed25519"),
            |i| keys.rsa2048.pss(Hash::Sha256, i),
        )
        .compact(),
        UNKNOWN_KEY,
        "an OKP key never fits PS256",
    );
}

// ---- EdDSA ----------------------------------------------------------------------------------

fn eddsa_cases(b: &mut Builder, p: &Params<'_>, keys: &Keys) {
    let h = header("EdDSA", Some(KID_ED25519));
    let sign = |input: &[u8]| ed25519_sign(&keys.ed25519, input);
    let base = signed(&h, &claims(p, "EdDSA base"), sign);
    b.valid("EdDSA: valid", base.compact(), WHY_VALID);
    b.valid(
        "EdDSA: valid, no kid",
        signed(&header("EdDSA", None), &claims(p, "EdDSA no kid"), sign).compact(),
        "without kid, every key that fits alg is a candidate, and one key fits",
    );
    signature_flips(b, "EdDSA", &base);
    part_flips(b, "EdDSA", &base);
    lengths(
        b,
        "EdDSA",
        &base,
        "an Ed25519 signature is exactly 64 bytes (RFC 8032 §5.1.7)",
    );
    // S is the little-endian second half. S + L < 2^254 always fits.
    let l = hex(ED25519_L);
    let mut s_be: Vec<u8> = base.signature[32..].iter().rev().copied().collect();
    s_be = be_add(&s_be, &l).expect("S + L fits in 32 bytes");
    let mut plus_l = base.signature[..32].to_vec();
    plus_l.extend(s_be.iter().rev());
    b.denied(
        "EdDSA: S + L (non-canonical S)",
        base.with_signature(plus_l).compact(),
        BAD_SIGNATURE,
        "RFC 8032 §5.1.7 step 1: S must be in [0, L); S + L satisfies the group equation but \
         must be refused (signature malleability)",
    );
    let mut l_le: Vec<u8> = l.iter().rev().copied().collect();
    let mut s_is_l = base.signature[..32].to_vec();
    s_is_l.append(&mut l_le);
    b.denied(
        "EdDSA: S = L",
        base.with_signature(s_is_l).compact(),
        BAD_SIGNATURE,
        "RFC 8032 §5.1.7 step 1: S = L is out of range",
    );
    let mut identity = vec![0u8; 64];
    identity[0] = 1;
    b.denied(
        "EdDSA: R = identity point, S = 0",
        base.with_signature(identity).compact(),
        BAD_SIGNATURE,
        "[0]B = R + [k]A would need [k]A = identity, false for a prime-order public key",
    );
    b.denied(
        "EdDSA: kid of the P-256 key",
        signed(
            &header("EdDSA", Some(KID_P256)),
            &claims(p, "EdDSA on P-256"),
            sign,
        )
        .compact(),
        UNKNOWN_KEY,
        "an EC key never fits EdDSA",
    );
    b.denied(
        "EdDSA: signed by another Ed25519 key, published kid",
        signed(&h, &claims(p, "EdDSA stranger"), |i| {
            ed25519_sign(&ed25519_key("tokenbind corpus Ed25519, never published"), i)
        })
        .compact(),
        BAD_SIGNATURE,
        "the kid's key did not make this signature",
    );
}

// ---- The corpus -----------------------------------------------------------------------------

/// The signature corpus for `p`, with the keys of [`Keys::new`].
pub fn corpus(p: &Params<'_>) -> Corpus {
    corpus_with(p, &Keys::new())
}

pub fn corpus_with(p: &Params<'_>, keys: &Keys) -> Corpus {
    let mut b = Builder::new();
    ecdsa_cases(
        &mut b,
        p,
        keys,
        &Ecdsa {
            alg: "ES256",
            kid: KID_P256,
            size: 32,
            order: hex(P256_N),
            sign: Box::new(|hash, input| p256_sign(&keys.p256, hash, input)),
            hash: Hash::Sha256,
            wrong_hashes: [Hash::Sha384, Hash::Sha512],
        },
    );
    ecdsa_cases(
        &mut b,
        p,
        keys,
        &Ecdsa {
            alg: "ES384",
            kid: KID_P384,
            size: 48,
            order: hex(P384_N),
            sign: Box::new(|hash, input| p384_sign(&keys.p384, hash, input)),
            hash: Hash::Sha384,
            wrong_hashes: [Hash::Sha256, Hash::Sha512],
        },
    );
    wrong_curve_cases(&mut b, p, keys);
    for alg in ["RS256", "PS256"] {
        rsa_cases(&mut b, p, &keys.rsa2048, alg, Depth::Full);
    }
    for alg in ["RS384", "RS512", "PS384", "PS512"] {
        rsa_cases(&mut b, p, &keys.rsa2048, alg, Depth::Hashes);
    }
    rsa_cases(&mut b, p, &keys.rsa8192, "RS256", Depth::Hashes);
    for alg in ["RS512", "PS256"] {
        rsa_cases(&mut b, p, &keys.rsa8192, alg, Depth::Base);
    }
    rsa_key_fit_cases(&mut b, p, keys);
    eddsa_cases(&mut b, p, keys);
    Corpus {
        jwks: keys.jwks(),
        cases: b.cases,
    }
}
