//! A differential corpus of DPoP proofs (RFC 9449): access tokens bound by `cnf.jkt` to a proof
//! key, and proofs for one request (method, `htu`, that access token, `now`), each with the
//! verdict a correct resource server must give, reasoned from RFC 9449 §4.3 and the JWS
//! specifications, never from running a verifier.
//!
//! Shared, as source, by `filter/core/tests/signature_differential.rs` and
//! `integration/tests/crypto_differential.rs`, next to the signature corpus
//! (`signatures.rs`), whose keys, signers and byte helpers it uses; both files must be
//! declared as `signatures` and `dpop_proofs` at the root of the test crate.
//!
//! The harness's proof minter (`integration/src/dpop.rs`) makes random keys and `jti`s and
//! reads the clock; this corpus must be deterministic and buildable in the core's tests, so it
//! signs with the corpus's own seeded keys (p256, p384, ed25519-compact, RSA by hand).
//!
//! The proof signature is checked before any claim (RFC 9449 §4.3 steps 5-7 before 8-12, and
//! so in the filter), so every signature problem, and every bit flip in a proof's claims, is
//! `dpop_invalid`.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use crate::signatures::{
    b64, be_add, be_sub, claims, ecdsa_der, ed25519_jwk, ed25519_key, ed25519_sign, header, hex,
    is_high, number_value_end, p256_jwk, p256_key, p256_sign, p384_jwk, p384_key, p384_sign,
    string_value_end, string_value_start, Hash, HashSigner, Jws, Keys, Params, ED25519_L, KID_P256,
    P256_N, P384_N,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const DPOP_INVALID: &str = "dpop_invalid";

/// The request the proofs are made for.
#[derive(Debug, Clone, Copy)]
pub struct DpopParams<'a> {
    /// Issuer, audience, subject and `now` of the access tokens; `now` is also every proof's
    /// `iat`.
    pub token: Params<'a>,
    /// `htm`.
    pub method: &'a str,
    /// `htu`: the request URI as the resource server rebuilds it.
    pub htu: &'a str,
}

#[derive(Debug, Clone)]
pub struct DpopCase {
    /// Unique within the corpus, `<proof alg>: <what>`.
    pub name: String,
    /// Sent as `Authorization: DPoP <access_token>`.
    pub access_token: String,
    /// Sent as the one `DPoP` header.
    pub proof: String,
    pub expect_valid: bool,
    /// `None` exactly when `expect_valid`.
    pub reason: Option<&'static str>,
    pub why: &'static str,
}

#[derive(Debug, Clone)]
pub struct DpopCorpus {
    /// The issuer's public JWKS (the signature corpus's).
    pub jwks: Value,
    pub cases: Vec<DpopCase>,
}

impl DpopCorpus {
    pub fn valid(&self) -> usize {
        self.cases.iter().filter(|c| c.expect_valid).count()
    }

    pub fn denied_by_reason(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut out = std::collections::BTreeMap::new();
        for reason in self.cases.iter().filter_map(|c| c.reason) {
            *out.entry(reason).or_insert(0) += 1;
        }
        out
    }
}

/// RFC 7638 JWK thumbprint: base64url(SHA-256) of the required members in lexicographic
/// order, no whitespace (§3.2; EC §3.2, RSA §3.2, OKP RFC 8037 §2).
pub fn thumbprint(jwk: &Value) -> String {
    let members: &[&str] = match jwk["kty"].as_str() {
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("OKP") => &["crv", "kty", "x"],
        Some("RSA") => &["e", "kty", "n"],
        other => panic!("no thumbprint for kty {other:?}"),
    };
    let body: Vec<String> = members
        .iter()
        .map(|m| {
            let value = jwk[*m].as_str().unwrap_or_else(|| panic!("jwk has no {m}"));
            format!("\"{m}\":{}", Value::String(value.to_owned()))
        })
        .collect();
    b64(&Sha256::digest(
        format!("{{{}}}", body.join(",")).as_bytes(),
    ))
}

/// `ath` (RFC 9449 §4.2).
pub fn ath(access_token: &str) -> String {
    b64(&Sha256::digest(access_token.as_bytes()))
}

/// A client's proof key: its public JWK and how it signs (with a given hash, for ECDSA).
struct ProofKey<'k> {
    alg: &'static str,
    jwk: Value,
    sign: HashSigner<'k>,
    hash: Hash,
}

struct Proofs<'a, 'k> {
    p: &'a DpopParams<'a>,
    keys: &'k Keys,
    cases: Vec<DpopCase>,
}

impl Proofs<'_, '_> {
    /// An access token from the issuer (ES256, the signature corpus's P-256 key) bound to
    /// `jwk`.
    fn access_token(&self, jwk: &Value, jti: &str) -> String {
        let mut c = claims(&self.p.token, jti);
        c["cnf"] = json!({"jkt": thumbprint(jwk)});
        let jws = Jws::unsigned(&header("ES256", Some(KID_P256)), &c);
        let sig = p256_sign(
            &self.keys.p256,
            Hash::Sha256,
            jws.signing_input().as_bytes(),
        );
        jws.with_signature(sig).compact()
    }

    /// A proof's unsigned parts: header `typ`, `alg`, `jwk`; claims `jti`, `htm`, `htu`, `iat`,
    /// `ath`.
    fn unsigned(&self, alg: &str, jwk: &Value, access_token: &str, jti: &str) -> Jws {
        Jws::unsigned(
            &json!({"typ": "dpop+jwt", "alg": alg, "jwk": jwk}),
            &json!({
                "jti": jti,
                "htm": self.p.method,
                "htu": self.p.htu,
                "iat": self.p.token.now,
                "ath": ath(access_token),
            }),
        )
    }

    fn proof(&self, key: &ProofKey<'_>, access_token: &str, jti: &str) -> Jws {
        let jws = self.unsigned(key.alg, &key.jwk, access_token, jti);
        let sig = (key.sign)(key.hash, jws.signing_input().as_bytes());
        jws.with_signature(sig)
    }

    /// The first proof over `jti/0`, `jti/1`, ... whose signature satisfies `want`.
    fn proof_where(
        &self,
        key: &ProofKey<'_>,
        access_token: &str,
        jti: &str,
        want: impl Fn(&[u8]) -> bool,
    ) -> Jws {
        for i in 0..100_000 {
            let jws = self.proof(key, access_token, &format!("{jti}/{i}"));
            if want(&jws.signature) {
                return jws;
            }
        }
        panic!("no proof for {jti} satisfied the search");
    }

    fn push(
        &mut self,
        name: String,
        token: &str,
        proof: &Jws,
        reason: Option<&'static str>,
        why: &'static str,
    ) {
        self.push_text(name, token, proof.compact(), reason, why);
    }

    fn push_text(
        &mut self,
        name: String,
        token: &str,
        proof: String,
        reason: Option<&'static str>,
        why: &'static str,
    ) {
        assert!(
            self.cases.iter().all(|c| c.name != name),
            "duplicate case name {name}"
        );
        self.cases.push(DpopCase {
            name,
            access_token: token.to_owned(),
            proof,
            expect_valid: reason.is_none(),
            reason,
            why,
        });
    }

    fn invalid(&mut self, name: String, token: &str, proof: &Jws, why: &'static str) {
        self.push(name, token, proof, Some(DPOP_INVALID), why);
    }
}

const WHY_VALID: &str =
    "a fresh proof for this request and token, signed by the key of the token's cnf.jkt";
const WHY_SIG: &str = "the proof signature does not verify with its jwk (RFC 9449 §4.3 step 6)";
const WHY_PART: &str =
    "one bit of the signed proof changed: its signature no longer verifies, and the signature \
     is checked before the claims";
const WHY_LENGTH: &str = "a JWS signature of the wrong length for its algorithm";

/// Signature flips, header and claims flips, and lengths.
fn common(ps: &mut Proofs<'_, '_>, label: &str, token: &str, base: &Jws) {
    let n = base.signature.len();
    for (index, bit) in [(0, 7), (n / 2, 0), (n - 1, 0)] {
        ps.invalid(
            format!("{label}: signature byte {index} bit {bit} flipped"),
            token,
            &base.flip_signature(index, bit),
            WHY_SIG,
        );
    }
    let h = base.header.clone();
    ps.invalid(
        format!("{label}: header typ bit 0 flipped"),
        token,
        &base.flip_header(string_value_start(&h, "typ"), 0),
        "typ is no longer dpop+jwt (RFC 9449 §4.3 step 4)",
    );
    ps.invalid(
        format!("{label}: header alg last character bit 0 flipped"),
        token,
        &base.flip_header(string_value_end(&h, "alg"), 0),
        "alg is no longer an accepted algorithm (step 5)",
    );
    ps.invalid(
        format!("{label}: header jwk x last character bit 0 flipped"),
        token,
        &base.flip_header(string_value_end(&h, "x"), 0),
        "the jwk is another key, or none at all: the signature does not verify with it",
    );
    ps.invalid(
        format!("{label}: header '{{' bit 0 flipped"),
        token,
        &base.flip_header(0, 0),
        "the header is not JSON: not a JWT (step 2)",
    );
    let c = base.claims.clone();
    for member in ["jti", "htm", "htu", "ath"] {
        ps.invalid(
            format!("{label}: claims {member} last character bit 0 flipped"),
            token,
            &base.flip_claims(string_value_end(&c, member), 0),
            WHY_PART,
        );
    }
    ps.invalid(
        format!("{label}: claims iat last digit bit 0 flipped"),
        token,
        &base.flip_claims(number_value_end(&c, "iat"), 0),
        WHY_PART,
    );
    let sig = &base.signature;
    let mut short = sig.clone();
    short.pop();
    ps.invalid(
        format!("{label}: signature truncated to {} bytes", n - 1),
        token,
        &base.with_signature(short),
        WHY_LENGTH,
    );
    let mut long = sig.clone();
    long.push(0);
    ps.invalid(
        format!("{label}: signature extended to {} bytes", n + 1),
        token,
        &base.with_signature(long),
        WHY_LENGTH,
    );
    ps.invalid(
        format!("{label}: empty signature"),
        token,
        &base.with_signature(Vec::new()),
        WHY_LENGTH,
    );
}

/// ECDSA-specific: high S, r/s out of range, DER, wrong hash.
fn ecdsa(ps: &mut Proofs<'_, '_>, key: &ProofKey<'_>, order: &[u8], size: usize, full: bool) {
    let alg = key.alg;
    let label = format!("{alg} proof");
    let token = ps.access_token(&key.jwk, &format!("DPoP {alg} token"));
    let base = ps.proof_where(key, &token, &format!("{alg} base"), |sig| {
        !is_high(&sig[size..], order)
    });
    ps.push(
        format!("{label}: valid (low S)"),
        &token,
        &base,
        None,
        WHY_VALID,
    );
    let (r, s) = base.signature.split_at(size);
    // A signature made anew, so that its jti (and replay identity) differs from the base's.
    let twin = ps.proof_where(key, &token, &format!("{alg} high"), |sig| {
        !is_high(&sig[size..], order)
    });
    let (tr, ts) = twin.signature.split_at(size);
    ps.push(
        format!("{label}: valid, high S (s' = n - s)"),
        &token,
        &twin.with_signature([tr, &be_sub(order, ts)].concat()),
        None,
        "(r, n - s) verifies whenever (r, s) does; JWS does not require low S",
    );
    let n_ones = vec![0xffu8; size];
    let zero = vec![0u8; size];
    let variants: Vec<(&str, Vec<u8>, Vec<u8>)> = if full {
        vec![
            ("r = 0", zero.clone(), s.to_vec()),
            ("s = 0", r.to_vec(), zero),
            ("r = n", order.to_vec(), s.to_vec()),
            ("s = n", r.to_vec(), order.to_vec()),
            ("r = 2^k - 1 (all ones)", n_ones, s.to_vec()),
        ]
    } else {
        vec![("s = n", r.to_vec(), order.to_vec())]
    };
    for (what, r, s) in variants {
        ps.invalid(
            format!("{label}: {what}"),
            &token,
            &base.with_signature([r, s].concat()),
            "r and s must be in [1, n - 1] (SEC 1 §4.1.4 step 1)",
        );
    }
    assert!(
        be_add(order, r).is_none(),
        "r + n never fits (see signatures.rs)"
    );
    if !full {
        ps.invalid(
            format!("{label}: signature byte 0 bit 7 flipped"),
            &token,
            &base.flip_signature(0, 7),
            WHY_SIG,
        );
        return;
    }
    let zero_r = ps.proof_where(key, &token, &format!("{alg} r00"), |sig| sig[0] == 0);
    ps.push(
        format!("{label}: valid, r has a leading zero byte"),
        &token,
        &zero_r,
        None,
        "r below 2^(8(size-1)) is still size bytes in JWS; its DER INTEGER is shorter",
    );
    common(ps, &label, &token, &base);
    ps.invalid(
        format!("{label}: valid signature in DER instead of r || s"),
        &token,
        &base.with_signature(ecdsa_der(&base.signature)),
        "JWS ECDSA signatures are r || s (RFC 7518 §3.4), not DER",
    );
    let wrong = if key.hash == Hash::Sha256 {
        Hash::Sha384
    } else {
        Hash::Sha256
    };
    let mut jws = ps.unsigned(alg, &key.jwk, &token, &format!("{alg} wrong hash"));
    let sig = (key.sign)(wrong, jws.signing_input().as_bytes());
    jws = jws.with_signature(sig);
    ps.invalid(
        format!("{label}: the key signed {wrong:?} of the input (wrong hash)"),
        &token,
        &jws,
        "ECDSA over another hash of the signing input does not verify",
    );
}

fn wrong_curve(ps: &mut Proofs<'_, '_>, p256: &ProofKey<'_>, p384: &ProofKey<'_>) {
    let token = ps.access_token(&p256.jwk, "DPoP wrong-curve token");
    let sign_with = |key: &ProofKey<'_>, alg: &str, jwk: &Value, jti: &str| {
        let jws = ps.unsigned(alg, jwk, &token, jti);
        let sig = (key.sign)(key.hash, jws.signing_input().as_bytes());
        jws.with_signature(sig)
    };
    let cases = [
        (
            "ES256 proof: jwk is a P-384 key, P-384 signature",
            sign_with(p384, "ES256", &p384.jwk, "wrong curve 1"),
            "ES256 needs a P-256 jwk (RFC 7518 §3.4): the alg does not fit the key",
        ),
        (
            "ES384 proof: jwk is a P-256 key, P-256 signature",
            sign_with(p256, "ES384", &p256.jwk, "wrong curve 2"),
            "ES384 needs a P-384 jwk: the alg does not fit the key",
        ),
        (
            "ES256 proof: P-256 jwk, P-384 signature (96 bytes)",
            sign_with(p384, "ES256", &p256.jwk, "wrong curve 3"),
            "96 bytes are no ES256 signature, and not by this key",
        ),
    ];
    for (name, jws, why) in cases {
        ps.invalid(name.to_owned(), &token, &jws, why);
    }
}

fn eddsa(ps: &mut Proofs<'_, '_>, key: &ProofKey<'_>) {
    let label = "EdDSA proof";
    let token = ps.access_token(&key.jwk, "DPoP EdDSA token");
    let base = ps.proof(key, &token, "EdDSA base");
    ps.push(format!("{label}: valid"), &token, &base, None, WHY_VALID);
    common(ps, label, &token, &base);
    let l = hex(ED25519_L);
    let s_be: Vec<u8> = base.signature[32..].iter().rev().copied().collect();
    let s_plus_l = be_add(&s_be, &l).expect("S + L fits");
    let mut sig = base.signature[..32].to_vec();
    sig.extend(s_plus_l.iter().rev());
    ps.invalid(
        format!("{label}: S + L (non-canonical S)"),
        &token,
        &base.with_signature(sig),
        "RFC 8032 §5.1.7: S must be below L",
    );
    let mut identity = vec![0u8; 64];
    identity[0] = 1;
    ps.invalid(
        format!("{label}: R = identity point, S = 0"),
        &token,
        &base.with_signature(identity),
        "[0]B = R + [k]A does not hold for a prime-order public key",
    );
}

fn rsa(ps: &mut Proofs<'_, '_>, pss: bool) {
    let keys = ps.keys;
    let alg = if pss { "PS256" } else { "RS256" };
    let label = format!("{alg} proof");
    let key = &keys.rsa2048;
    let jwk = key.bare_jwk();
    let token = ps.access_token(&jwk, &format!("DPoP {alg} token"));
    let sign = |input: &[u8]| {
        if pss {
            key.pss(Hash::Sha256, input)
        } else {
            key.pkcs1(Hash::Sha256, input)
        }
    };
    let other = |input: &[u8]| {
        if pss {
            key.pkcs1(Hash::Sha256, input)
        } else {
            key.pss(Hash::Sha256, input)
        }
    };
    let make = |jti: &str, f: &dyn Fn(&[u8]) -> Vec<u8>| {
        let jws = ps.unsigned(alg, &jwk, &token, jti);
        let sig = f(jws.signing_input().as_bytes());
        jws.with_signature(sig)
    };
    let base = make(&format!("{alg} base"), &sign);
    let other_padding = make(&format!("{alg} other padding"), &other);
    let n = key.n_bytes();
    let mut wrapped = None;
    for i in 0..100_000 {
        let jws = make(&format!("{alg} s+n/{i}"), &sign);
        if let Some(sig) = be_add(&jws.signature, &n) {
            wrapped = Some(jws.with_signature(sig));
            break;
        }
    }
    let wrapped = wrapped.expect("a signature below 2^(8k) - n");
    ps.push(
        format!("{label}: valid (2048-bit key)"),
        &token,
        &base,
        None,
        WHY_VALID,
    );
    ps.invalid(
        format!("{label}: signature byte 128 bit 0 flipped"),
        &token,
        &base.flip_signature(128, 0),
        WHY_SIG,
    );
    ps.invalid(
        format!(
            "{label}: {} signature",
            if pss { "PKCS#1 v1.5" } else { "PSS" }
        ),
        &token,
        &other_padding,
        "RS256 is PKCS#1 v1.5 and PS256 is PSS (RFC 7518 §3.3, §3.5)",
    );
    ps.invalid(
        format!("{label}: signature s + n (same value mod n, still k bytes)"),
        &token,
        &wrapped,
        "a signature representative must be below n (RFC 8017 §5.2.2 step 1)",
    );
}

/// The DPoP corpus for `p`, with the keys of [`Keys::new`] as the issuer's.
pub fn corpus(p: &DpopParams<'_>) -> DpopCorpus {
    corpus_with(p, &Keys::new())
}

pub fn corpus_with(p: &DpopParams<'_>, keys: &Keys) -> DpopCorpus {
    let p256 = p256_key("tokenbind corpus DPoP P-256");
    let p384 = p384_key("tokenbind corpus DPoP P-384");
    let ed = ed25519_key("tokenbind corpus DPoP Ed25519");
    let es256 = ProofKey {
        alg: "ES256",
        jwk: p256_jwk(&p256),
        sign: Box::new(|hash, input| p256_sign(&p256, hash, input)),
        hash: Hash::Sha256,
    };
    let es384 = ProofKey {
        alg: "ES384",
        jwk: p384_jwk(&p384),
        sign: Box::new(|hash, input| p384_sign(&p384, hash, input)),
        hash: Hash::Sha384,
    };
    let eddsa_key = ProofKey {
        alg: "EdDSA",
        jwk: ed25519_jwk(&ed),
        sign: Box::new(|_, input| ed25519_sign(&ed, input)),
        hash: Hash::Sha512,
    };
    let mut ps = Proofs {
        p,
        keys,
        cases: Vec::new(),
    };
    ecdsa(&mut ps, &es256, &hex(P256_N), 32, true);
    ecdsa(&mut ps, &es384, &hex(P384_N), 48, false);
    wrong_curve(&mut ps, &es256, &es384);
    eddsa(&mut ps, &eddsa_key);
    rsa(&mut ps, false);
    rsa(&mut ps, true);
    DpopCorpus {
        jwks: keys.jwks(),
        cases: ps.cases,
    }
}
