//! The host signature backend, natively: Envoy's `verify_signature` is stood in for by an
//! independent DER parser (RustCrypto's SPKI and ECDSA-Sig-Value decoders), so the SPKI and
//! signature encodings the core sends are checked by code that did not write them. The real
//! BoringSSL is exercised by integration/tests/crypto_differential.rs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use serde_json::json;
use std::cell::Cell;
use std::rc::Rc;
use tokenbind_core::crypto::{
    probe, Backend, Crypto, CryptoMode, HashFn, HostCryptoError, HostRequest, SignatureHost,
};
use tokenbind_core::jwk::Alg;
use tokenbind_core::{Config, Engine, MockHost, Outcome, Reason};

fn digest(hash: HashFn, text: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    match hash {
        HashFn::Sha256 => sha2::Sha256::digest(text).to_vec(),
        HashFn::Sha384 => sha2::Sha384::digest(text).to_vec(),
        HashFn::Sha512 => sha2::Sha512::digest(text).to_vec(),
    }
}

/// What Envoy's `verify_signature` does: import a DER SPKI (BadArgument if it does not), then
/// verify a DER ECDSA signature or an RSA PKCS#1 v1.5 signature over `hash(text)`, whatever
/// the key's curve.
#[derive(Default)]
struct DerHost {
    calls: Rc<Cell<u32>>,
}

impl SignatureHost for DerHost {
    fn verify(&self, r: &HostRequest<'_>) -> Result<bool, HostCryptoError> {
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        use p256::pkcs8::DecodePublicKey;
        self.calls.set(self.calls.get() + 1);
        let prehash = digest(r.hash, r.text);
        if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_der(r.public_key) {
            let Ok(sig) = p256::ecdsa::Signature::from_der(r.signature) else {
                return Ok(false);
            };
            return Ok(key.verify_prehash(&prehash, &sig).is_ok());
        }
        if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_der(r.public_key) {
            let Ok(sig) = p384::ecdsa::Signature::from_der(r.signature) else {
                return Ok(false);
            };
            return Ok(key.verify_prehash(&prehash, &sig).is_ok());
        }
        if let Ok(key) =
            <rsa::RsaPublicKey as rsa::pkcs8::DecodePublicKey>::from_public_key_der(r.public_key)
        {
            let scheme = match r.hash {
                HashFn::Sha256 => rsa::Pkcs1v15Sign::new::<rsa::sha2::Sha256>(),
                HashFn::Sha384 => rsa::Pkcs1v15Sign::new::<rsa::sha2::Sha384>(),
                HashFn::Sha512 => rsa::Pkcs1v15Sign::new::<rsa::sha2::Sha512>(),
            };
            return Ok(key.verify(scheme, &prehash, r.signature).is_ok());
        }
        Err(HostCryptoError::BadArgument)
    }
}

/// A host whose calls all fail (as if the foreign function broke after start-up).
#[derive(Default)]
struct BrokenHost {
    calls: Rc<Cell<u32>>,
}
impl SignatureHost for BrokenHost {
    fn verify(&self, _: &HostRequest<'_>) -> Result<bool, HostCryptoError> {
        self.calls.set(self.calls.get() + 1);
        Err(HostCryptoError::Failed("status 10".to_owned()))
    }
}

/// A proxy without the foreign function.
struct NoFunction;
impl SignatureHost for NoFunction {
    fn verify(&self, _: &HostRequest<'_>) -> Result<bool, HostCryptoError> {
        Err(HostCryptoError::Missing)
    }
}

fn engine_with(keys: &Keys, crypto: Crypto) -> Engine {
    let cfg = config_json(keys, json!({}));
    let config =
        Config::from_json(cfg.to_string().as_bytes(), &|_| Err("no files".into())).unwrap();
    Engine::with_crypto(config, crypto)
}

fn decide(engine: &Engine, token: &str) -> Outcome {
    let host = MockHost::new()
        .with_header("authorization", &format!("Bearer {token}"))
        .with_peer(client_peer());
    engine.decide(&host, now()).outcome
}

fn flip_signature_bit(token: &str) -> String {
    let (head, sig) = token.rsplit_once('.').unwrap();
    let mut bytes =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
    bytes[10] ^= 0x04;
    format!("{head}.{}", b64(&bytes))
}

#[test]
fn the_probe_passes_against_an_independent_der_parser() {
    // The RFC 7515 A.3 known answer, re-encoded by the core as SPKI + DER, verifies; the
    // flipped signature does not.
    probe(&DerHost::default()).unwrap();
    assert_eq!(probe(&NoFunction), Err(HostCryptoError::Missing));
}

#[test]
fn host_backend_verifies_es256_and_rs256_and_leaves_eddsa_to_wasm() {
    let keys = Keys::new();
    let host = DerHost::default();
    let calls = Rc::clone(&host.calls);
    let crypto = Crypto::select(CryptoMode::Host, Some(Box::new(host))).unwrap();
    assert_eq!(crypto.backend(Alg::ES256), Backend::Host);
    assert_eq!(crypto.backend(Alg::PS256), Backend::Wasm);
    assert_eq!(crypto.backend(Alg::EdDSA), Backend::Wasm);
    let engine = engine_with(&keys, crypto);
    for signer in [Signer::ES256, Signer::RS256] {
        let before = calls.get();
        let token = token(&keys, signer, json!({}));
        assert_eq!(decide(&engine, &token), Outcome::Allow);
        assert_eq!(calls.get(), before + 1, "one host call per verification");
        let bad = flip_signature_bit(&token);
        assert!(matches!(
            decide(&engine, &bad),
            Outcome::Deny(d) if d.reason == Reason::BadSignature
        ));
    }
    let before = calls.get();
    let ed = token(&keys, Signer::EdDSA, json!({}));
    assert_eq!(decide(&engine, &ed), Outcome::Allow);
    assert_eq!(calls.get(), before, "EdDSA never goes to the host");
}

#[test]
fn a_wrong_length_ecdsa_signature_never_reaches_the_host() {
    let keys = Keys::new();
    let host = DerHost::default();
    let calls = Rc::clone(&host.calls);
    let engine = engine_with(
        &keys,
        Crypto::select(CryptoMode::Host, Some(Box::new(host))).unwrap(),
    );
    let token = token(&keys, Signer::ES256, json!({}));
    let (head, sig) = token.rsplit_once('.').unwrap();
    let raw =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
    for len in [0, 32, 63, 65, 72] {
        let mut s = raw.clone();
        s.resize(len, 0);
        let cut = format!("{head}.{}", b64(&s));
        assert!(matches!(
            decide(&engine, &cut),
            Outcome::Deny(d) if d.reason == Reason::BadSignature
        ));
    }
    assert_eq!(calls.get(), 0);
}

#[test]
fn a_failing_host_falls_back_to_wasm_with_the_same_answer() {
    let keys = Keys::new();
    let host = BrokenHost::default();
    let failed_calls = Rc::clone(&host.calls);
    let engine = engine_with(
        &keys,
        Crypto::select(CryptoMode::Auto, Some(Box::new(host))).unwrap(),
    );
    let good = token(&keys, Signer::ES256, json!({}));
    assert_eq!(decide(&engine, &good), Outcome::Allow);
    assert!(matches!(
        decide(&engine, &flip_signature_bit(&token(&keys, Signer::RS256, json!({})))),
        Outcome::Deny(d) if d.reason == Reason::BadSignature
    ));
    // Both checks asked the host, which failed, and were answered in pure Rust.
    assert_eq!(failed_calls.get(), 2);
}

#[test]
fn a_proxy_without_the_function_gets_wasm_in_auto_and_refuses_host() {
    // What the adapter does at start-up: probe, then select.
    let probed = probe(&NoFunction)
        .ok()
        .map(|()| Box::new(NoFunction) as Box<dyn SignatureHost>);
    assert!(probed.is_none());
    let auto = Crypto::select(CryptoMode::Auto, None).unwrap();
    assert!(Alg::ALL.iter().all(|a| auto.backend(*a) == Backend::Wasm));
    let keys = Keys::new();
    let engine = engine_with(&keys, auto);
    assert_eq!(
        decide(&engine, &token(&keys, Signer::ES256, json!({}))),
        Outcome::Allow
    );
    let err = Crypto::select(CryptoMode::Host, None).unwrap_err();
    assert!(err.contains("verify_signature"), "{err}");
    // And the config key itself.
    let cfg = config_json(&keys, json!({"crypto": "boringssl"}));
    let e = Config::from_json(cfg.to_string().as_bytes(), &|_| Err("no files".into())).unwrap_err();
    assert_eq!(e.field, "crypto");
    assert!(e.message.contains("auto"), "{}", e.message);
}
