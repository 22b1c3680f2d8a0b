//! The differential corpora (`tests/corpus/`) through the native engine with the pure-Rust
//! backend (`crypto: "wasm"`): every case must get its hand-reasoned verdict, reason included.
//! `integration/tests/crypto_differential.rs` sends the same cases through a real Envoy with
//! `crypto: "host"` (BoringSSL) and `crypto: "wasm"`, and compares with this engine.
//!
//! Reasons: a signature that decodes but is wrong in any way (bit flips, r or s out of range,
//! wrong length, wrong hash, wrong padding) is `bad_signature`: the filter base64url-decodes the
//! third part (`malformed_token` only if that fails, as for non-canonical base64url), then the
//! verifier answers false for anything that is not a valid signature of exactly the right length.
//! A flip that changes which issuer, algorithm or key applies is denied before the signature is
//! looked at (`unknown_issuer`, `unsupported_algorithm`, `unknown_key`), and a flip that breaks
//! the JSON is `malformed_token`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "corpus/dpop_proofs.rs"]
mod dpop_proofs;
#[path = "corpus/native.rs"]
mod native;
#[path = "corpus/signatures.rs"]
mod signatures;

use native::{Sidecar, Verdict};
use serde_json::{json, Value};
use std::sync::OnceLock;

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "spiffe://cluster.local/ns/default/sa/server";
const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";
/// A fixed `now`, so the corpus is the same on every run.
const NOW: u64 = 1_750_000_000;
const AUTHORITY: &str = "localhost";
const PATH: &str = "/api/corpus";

fn params() -> signatures::Params<'static> {
    signatures::Params {
        issuer: ISSUER,
        audience: AUDIENCE,
        subject: CLIENT,
        now: NOW,
    }
}

fn dpop_params(htu: &str) -> dpop_proofs::DpopParams<'_> {
    dpop_proofs::DpopParams {
        token: params(),
        method: "GET",
        htu,
    }
}

fn htu() -> String {
    format!("https://{AUTHORITY}{PATH}")
}

/// The signature corpus, built once per test binary (building it signs a few hundred times).
fn signature_corpus() -> &'static signatures::Corpus {
    static CORPUS: OnceLock<signatures::Corpus> = OnceLock::new();
    CORPUS.get_or_init(|| signatures::corpus(&params()))
}

fn dpop_corpus() -> &'static dpop_proofs::DpopCorpus {
    static CORPUS: OnceLock<dpop_proofs::DpopCorpus> = OnceLock::new();
    CORPUS.get_or_init(|| dpop_proofs::corpus(&dpop_params(&htu())))
}

/// The plugin configuration for the corpus: its JWKS, every algorithm, SPIFFE binding, and
/// the pure-Rust backend.
fn config(jwks: &Value) -> String {
    json!({
        "mode": "enforce",
        "providers": [{
            "name": "corpus",
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "jwks": jwks,
            "algorithms": signatures::ALGORITHMS,
            "clock_skew_seconds": 60
        }],
        "spiffe": {"claim": "sub", "trust_domains": ["cluster.local"]},
        "dpop": {"iat_window_seconds": 600},
        "crypto": "wasm"
    })
    .to_string()
}

/// Checks every `(name, expected, got, why)`, failing with all mismatches at once.
fn assert_all(what: &str, results: &[(String, Verdict, Verdict, &str)]) {
    let failures: Vec<String> = results
        .iter()
        .filter(|(_, want, got, _)| want != got)
        .map(|(name, want, got, why)| format!("  {name}: expected {want}, got {got}\n    ({why})"))
        .collect();
    assert!(
        failures.is_empty(),
        "{what}: {} of {} cases disagree with their hand-reasoned verdict:\n{}",
        failures.len(),
        results.len(),
        failures.join("\n")
    );
}

fn summary(results: &[(String, Verdict, Verdict, &str)]) -> String {
    let allowed = results.iter().filter(|r| r.2.allowed).count();
    let mut denied = std::collections::BTreeMap::new();
    for r in results {
        if let Some(reason) = &r.2.reason {
            *denied.entry(reason.clone()).or_insert(0) += 1;
        }
    }
    format!(
        "{} cases: {allowed} allowed, denied {denied:?}",
        results.len()
    )
}

#[test]
fn signature_corpus_native_pure_rust() {
    let corpus = signature_corpus();
    let engine = native::engine(&config(&corpus.jwks));
    let mut sidecar = Sidecar::new();
    let peer = native::peer(CLIENT);
    let results: Vec<_> = corpus
        .cases
        .iter()
        .map(|case| {
            let got = sidecar.decide(
                &engine,
                "GET",
                AUTHORITY,
                PATH,
                &format!("Bearer {}", case.token),
                None,
                &peer,
                NOW,
            );
            (
                case.name.clone(),
                Verdict::expected(case.reason),
                got,
                case.why,
            )
        })
        .collect();
    println!(
        "signature corpus, native engine, crypto \"wasm\": {}",
        summary(&results)
    );
    assert_all("signature corpus, native, crypto wasm", &results);
}

#[test]
fn dpop_corpus_native_pure_rust() {
    let corpus = dpop_corpus();
    let engine = native::engine(&config(&corpus.jwks));
    let mut sidecar = Sidecar::new();
    let peer = native::peer(CLIENT);
    let results: Vec<_> = corpus
        .cases
        .iter()
        .map(|case| {
            let got = sidecar.decide(
                &engine,
                "GET",
                AUTHORITY,
                PATH,
                &format!("DPoP {}", case.access_token),
                Some(&case.proof),
                &peer,
                NOW,
            );
            (
                case.name.clone(),
                Verdict::expected(case.reason),
                got,
                case.why,
            )
        })
        .collect();
    println!(
        "DPoP corpus, native engine, crypto \"wasm\": {}",
        summary(&results)
    );
    assert_all("DPoP corpus, native, crypto wasm", &results);
}

/// The corpus covers what issue 9 asks for, for every algorithm: guards against a case kind
/// silently disappearing from the generator.
#[test]
fn the_corpora_cover_every_kind_of_case() {
    let corpus = signature_corpus();
    let names: Vec<(&str, bool)> = corpus
        .cases
        .iter()
        .map(|c| (c.name.as_str(), c.expect_valid))
        .collect();
    let has = |prefix: &str, needle: &str, valid: bool| {
        names
            .iter()
            .any(|(n, v)| n.starts_with(prefix) && n.contains(needle) && *v == valid)
    };
    for alg in [
        "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "EdDSA",
    ] {
        assert!(has(alg, ": valid", true), "{alg}: a valid signature");
        for part in ["signature byte", "header", "claims"] {
            assert!(has(alg, part, false), "{alg}: a bit flip in the {part}");
        }
        assert!(
            has(alg, "wrong hash", false) || alg == "EdDSA",
            "{alg}: wrong hash"
        );
    }
    for alg in ["ES256", "ES384"] {
        for kind in [
            "high S",
            "r = 0",
            "s = 0",
            "r = n",
            "s = n",
            "all ones",
            "truncated",
            "extended",
            "empty signature",
            "DER",
        ] {
            let valid = kind == "high S";
            assert!(has(alg, kind, valid), "{alg}: {kind}");
        }
    }
    assert!(has("ES256", "truncated to 63 bytes", false));
    assert!(has("ES256", "extended to 65 bytes", false));
    assert!(has("ES256: kid of the P-384 key", "", false), "wrong curve");
    assert!(has("ES384: kid of the P-256 key", "", false), "wrong curve");
    assert!(has("RS256-2048", "truncated to 255 bytes", false));
    assert!(has("RS256-2048", "extended to 257 bytes", false));
    assert!(has("RS256-2048", "the other padding (PSS)", false));
    assert!(has("PS256-2048", "the other padding (PKCS#1 v1.5)", false));
    assert!(has("RS256-2048: valid", "", true), "RSA 2048 valid");
    assert!(has("RS256-8192: valid", "", true), "RSA 8192 valid");
    assert!(has("PS256-8192: valid", "", true), "RSA 8192 PSS valid");

    let dpop = dpop_corpus();
    let has = |needle: &str, valid: bool| {
        dpop.cases
            .iter()
            .any(|c| c.name.contains(needle) && c.expect_valid == valid)
    };
    for (needle, valid) in [
        ("ES256 proof: valid", true),
        ("ES256 proof: valid, high S", true),
        ("EdDSA proof: valid", true),
        ("ES256 proof: signature byte", false),
        ("ES256 proof: header", false),
        ("ES256 proof: claims", false),
        ("ES256 proof: r = 0", false),
        ("ES256 proof: s = 0", false),
        ("ES256 proof: r = n", false),
        ("ES256 proof: s = n", false),
        ("ES256 proof: signature truncated", false),
        ("ES256 proof: signature extended", false),
        ("ES256 proof: jwk is a P-384 key", false),
        ("EdDSA proof: signature byte", false),
        ("EdDSA proof: S + L", false),
    ] {
        assert!(has(needle, valid), "DPoP corpus: {needle}");
    }
}

/// The same parameters give the same corpus, byte for byte (the integration test relies on
/// the generator, not on stored tokens, so this is what makes its inputs reproducible).
#[test]
fn the_corpora_are_deterministic() {
    let a = signature_corpus();
    let b = signatures::corpus(&params());
    assert_eq!(a.jwks, b.jwks);
    let tokens = |c: &signatures::Corpus| {
        c.cases
            .iter()
            .map(|c| (c.name.clone(), c.token.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(tokens(a), tokens(&b));
    let proofs = |c: &dpop_proofs::DpopCorpus| {
        c.cases
            .iter()
            .map(|c| (c.name.clone(), c.access_token.clone(), c.proof.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        proofs(dpop_corpus()),
        proofs(&dpop_proofs::corpus(&dpop_params(&htu())))
    );
}
