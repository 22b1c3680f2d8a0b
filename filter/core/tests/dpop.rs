//! DPoP (RFC 9449): the RFC's own examples, and one engine-level case per DPoP reason.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use p256::ecdsa::signature::Signer as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokenbind_core::config::DpopSettings;
use tokenbind_core::dpop::{self, access_token_hash, ProofKeyCache, ProofRequest};
use tokenbind_core::host::MemorySharedData;
use tokenbind_core::jwk::thumbprint;
use tokenbind_core::{
    Crypto, Decision, Host, MockHost, Outcome, Peer, Reason, SharedData, SharedError,
};

// ---- RFC 9449 examples -------------------------------------------------------------------

/// RFC 9449 §4.1, Figure 4: the token-request proof.
const RFC_TOKEN_PROOF: &str = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg";
/// RFC 9449 §7.1, Figure 13: the protected-resource proof.
const RFC_RESOURCE_PROOF: &str = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFbyJ9.2oW9RP35yRqzhrtNP86L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA";
/// RFC 9449 §7.1, Figure 12: the access token.
const RFC_ACCESS_TOKEN: &str = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";
/// RFC 9449 §6.1, Figure 7: `cnf.jkt` of the example key.
const RFC_JKT: &str = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";

fn rfc_jwk() -> Value {
    json!({"kty": "EC", "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
           "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA", "crv": "P-256"})
}

fn rfc_request(access_token: &str) -> ProofRequest<'_> {
    ProofRequest {
        method: "GET",
        uri: Some("https://resource.example.org/protectedresource"),
        access_token,
        jkt: RFC_JKT,
        now: 1_562_262_618,
        nonce_key: None,
    }
}

#[test]
fn rfc9449_4_1_token_request_proof_verifies_with_its_own_jwk() {
    let mut keys = ProofKeyCache::new(8);
    let proof = dpop::verify_signature(
        RFC_TOKEN_PROOF,
        &DpopSettings::default(),
        &mut keys,
        &Crypto::wasm(),
    )
    .unwrap();
    assert_eq!(proof.thumbprint, RFC_JKT);
    assert_eq!(proof.claims["htm"], "POST");
    assert_eq!(proof.claims["htu"], "https://server.example.com/token");
    assert_eq!(proof.claims["iat"], 1_562_262_616);
    assert_eq!(proof.claims["jti"], "-BwC3ESc6acc2lTc");
    // One bit off in the signature and it no longer verifies.
    let mut bad = RFC_TOKEN_PROOF.to_owned();
    let i = bad.len() - 10;
    let c = if &bad[i..=i] == "A" { "B" } else { "A" };
    bad.replace_range(i..=i, c);
    let err = dpop::verify_signature(&bad, &DpopSettings::default(), &mut keys, &Crypto::wasm())
        .unwrap_err();
    assert_eq!(err.reason, Reason::DpopInvalid);
}

#[test]
fn rfc9449_6_1_jkt_is_the_rfc7638_thumbprint_of_the_example_key() {
    assert_eq!(thumbprint(rfc_jwk().as_object().unwrap()).unwrap(), RFC_JKT);
}

#[test]
fn rfc9449_7_1_figure_13_resource_proof_verifies_for_its_access_token_only() {
    let settings = DpopSettings::default();
    let mut keys = ProofKeyCache::new(8);
    assert_eq!(
        access_token_hash(RFC_ACCESS_TOKEN),
        "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    );
    dpop::verify(
        RFC_RESOURCE_PROOF,
        &rfc_request(RFC_ACCESS_TOKEN),
        &settings,
        &mut keys,
        &Crypto::wasm(),
    )
    .unwrap();
    let other = dpop::verify(
        RFC_RESOURCE_PROOF,
        &rfc_request("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxV"),
        &settings,
        &mut keys,
        &Crypto::wasm(),
    );
    assert_eq!(other.unwrap_err().reason, Reason::DpopAthMismatch);
    // The same proof for another method, URI or time.
    let mut req = rfc_request(RFC_ACCESS_TOKEN);
    req.method = "POST";
    assert_eq!(
        dpop::verify(
            RFC_RESOURCE_PROOF,
            &req,
            &settings,
            &mut keys,
            &Crypto::wasm()
        )
        .unwrap_err()
        .reason,
        Reason::DpopHtmMismatch
    );
    let mut req = rfc_request(RFC_ACCESS_TOKEN);
    req.uri = Some("https://resource.example.org/other");
    assert_eq!(
        dpop::verify(
            RFC_RESOURCE_PROOF,
            &req,
            &settings,
            &mut keys,
            &Crypto::wasm()
        )
        .unwrap_err()
        .reason,
        Reason::DpopHtuMismatch
    );
    let mut req = rfc_request(RFC_ACCESS_TOKEN);
    req.now = 1_562_262_618 + 61;
    assert_eq!(
        dpop::verify(
            RFC_RESOURCE_PROOF,
            &req,
            &settings,
            &mut keys,
            &Crypto::wasm()
        )
        .unwrap_err()
        .reason,
        Reason::DpopIatOutOfWindow
    );
    let mut req = rfc_request(RFC_ACCESS_TOKEN);
    req.jkt = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
    assert_eq!(
        dpop::verify(
            RFC_RESOURCE_PROOF,
            &req,
            &settings,
            &mut keys,
            &Crypto::wasm()
        )
        .unwrap_err()
        .reason,
        Reason::DpopKeyMismatch
    );
}

// ---- Engine-level cases --------------------------------------------------------------------

const URL: &str = "https://orders.mesh.local/api/orders";

enum ProofKey {
    Es256(p256::ecdsa::SigningKey),
    Ed25519(ed25519_compact::KeyPair),
}

impl ProofKey {
    fn es256(seed: &str) -> Self {
        let bytes: [u8; 32] = Sha256::digest(seed.as_bytes()).into();
        ProofKey::Es256(p256::ecdsa::SigningKey::from_slice(&bytes).unwrap())
    }

    fn ed25519(seed: &str) -> Self {
        let bytes: [u8; 32] = Sha256::digest(seed.as_bytes()).into();
        ProofKey::Ed25519(ed25519_compact::KeyPair::from_seed(
            ed25519_compact::Seed::new(bytes),
        ))
    }

    fn jwk(&self) -> Value {
        match self {
            ProofKey::Es256(k) => {
                let point = k.verifying_key().to_sec1_point(false);
                let p = point.as_bytes();
                json!({"kty": "EC", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65])})
            }
            ProofKey::Ed25519(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(k.pk.as_ref())})
            }
        }
    }

    fn alg(&self) -> &'static str {
        match self {
            ProofKey::Es256(_) => "ES256",
            ProofKey::Ed25519(_) => "EdDSA",
        }
    }

    fn jkt(&self) -> String {
        thumbprint(self.jwk().as_object().unwrap()).unwrap()
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

    /// A proof for `access_token` with the standard claims, then `header` and `claims`
    /// overrides applied (`null` removes a member).
    fn proof(&self, access_token: &str, header: Value, claims: Value) -> String {
        let mut h = json!({"typ": "dpop+jwt", "alg": self.alg(), "jwk": self.jwk()});
        merge(&mut h, header);
        let mut c = json!({
            "jti": format!("{:x}", rand_u64()),
            "htm": "GET",
            "htu": URL,
            "iat": now(),
            "ath": access_token_hash(access_token),
        });
        merge(&mut c, claims);
        let input = format!(
            "{}.{}",
            b64(h.to_string().as_bytes()),
            b64(c.to_string().as_bytes())
        );
        let sig = self.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }
}

fn rand_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    u64::from_be_bytes(
        Sha256::digest(format!("{n}-{:?}", std::time::Instant::now())).as_slice()[..8]
            .try_into()
            .unwrap(),
    )
}

/// A host for a DPoP request to `URL`, sharing `shared` (one sidecar, possibly several VMs).
struct Sidecar<'a> {
    inner: MockHost,
    shared: &'a MemorySharedData,
}

impl SharedData for Sidecar<'_> {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shared.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        self.shared.set(key, value, cas)
    }
}

impl Host for Sidecar<'_> {
    fn request_header(&self, name: &str) -> Option<String> {
        self.inner.request_header(name)
    }
    fn request_header_values(&self, name: &str) -> Vec<String> {
        self.inner.request_header_values(name)
    }
    fn peer(&self, want: tokenbind_core::peer::PeerWant) -> Peer {
        self.inner.peer(want)
    }
    fn downstream_tls(&self) -> Option<bool> {
        self.inner.downstream_tls()
    }
}

fn request<'s>(
    shared: &'s MemorySharedData,
    scheme: &str,
    token: &str,
    proofs: &[&str],
) -> Sidecar<'s> {
    let mut host = MockHost::new()
        .with_header(":authority", "orders.mesh.local")
        .with_header(":path", "/api/orders?page=2")
        .with_header("authorization", &format!("{scheme} {token}"))
        .with_peer(client_peer());
    for p in proofs {
        host = host.with_header("dpop", p);
    }
    Sidecar {
        inner: host,
        shared,
    }
}

fn sidecar_state() -> MemorySharedData {
    let shared = MemorySharedData::default();
    tokenbind_core::replay::ReplayStore::prepare(&shared);
    tokenbind_core::nonce::ensure_key(&shared, &[42; 32]);
    shared
}

fn reason(d: &Decision) -> Option<Reason> {
    d.denial().map(|d| d.reason)
}

struct Setup {
    keys: Keys,
    key: ProofKey,
    token: String,
}

fn setup(key: ProofKey) -> Setup {
    let keys = Keys::new();
    let token = token(&keys, Signer::ES256, json!({"cnf": {"jkt": key.jkt()}}));
    Setup { keys, key, token }
}

#[test]
fn a_fresh_proof_from_the_bound_key_is_allowed_es256_and_eddsa() {
    for key in [ProofKey::es256("a"), ProofKey::ed25519("b")] {
        let s = setup(key);
        let engine = engine(&s.keys, json!({}));
        let shared = sidecar_state();
        let proof = s.key.proof(&s.token, json!({}), json!({}));
        let d = engine.decide(&request(&shared, "DPoP", &s.token, &[&proof]), now());
        assert_eq!(d.outcome, Outcome::Allow, "{:?}", d.denial());
        assert_eq!(d.bindings.kind(), "spiffe+dpop");
    }
}

#[test]
fn one_case_per_dpop_reason() {
    let s = setup(ProofKey::es256("client"));
    let other = ProofKey::es256("someone else");
    let n = now();
    let t = &s.token;
    let p = |h: Value, c: Value| s.key.proof(t, h, c);
    let d_private = {
        let mut jwk = s.key.jwk();
        jwk["d"] = json!("AAAA");
        p(json!({"jwk": jwk}), json!({}))
    };
    let cases: Vec<(&str, &str, Vec<String>, Option<Reason>)> = vec![
        ("valid", "DPoP", vec![p(json!({}), json!({}))], None),
        (
            "no proof header",
            "DPoP",
            vec![],
            Some(Reason::DpopRequired),
        ),
        (
            "two proof headers",
            "DPoP",
            vec![p(json!({}), json!({})), p(json!({}), json!({}))],
            Some(Reason::DpopInvalid),
        ),
        (
            "not a JWT",
            "DPoP",
            vec!["not-a-jwt".into()],
            Some(Reason::DpopInvalid),
        ),
        (
            "typ is JWT",
            "DPoP",
            vec![p(json!({"typ": "JWT"}), json!({}))],
            Some(Reason::DpopInvalid),
        ),
        (
            "alg none",
            "DPoP",
            vec![p(json!({"alg": "none"}), json!({}))],
            Some(Reason::DpopInvalid),
        ),
        (
            "alg HS256",
            "DPoP",
            vec![p(json!({"alg": "HS256"}), json!({}))],
            Some(Reason::DpopInvalid),
        ),
        (
            "no jwk",
            "DPoP",
            vec![p(json!({"jwk": null}), json!({}))],
            Some(Reason::DpopInvalid),
        ),
        (
            "private jwk",
            "DPoP",
            vec![d_private],
            Some(Reason::DpopInvalid),
        ),
        (
            "jwk of another key",
            "DPoP",
            vec![p(json!({"jwk": other.jwk()}), json!({}))],
            Some(Reason::DpopInvalid),
        ),
        (
            "no jti",
            "DPoP",
            vec![p(json!({}), json!({"jti": null}))],
            Some(Reason::DpopInvalid),
        ),
        (
            "no htu",
            "DPoP",
            vec![p(json!({}), json!({"htu": null}))],
            Some(Reason::DpopInvalid),
        ),
        (
            "no iat",
            "DPoP",
            vec![p(json!({}), json!({"iat": null}))],
            Some(Reason::DpopInvalid),
        ),
        (
            "signed by another key",
            "DPoP",
            vec![other.proof(t, json!({}), json!({}))],
            Some(Reason::DpopKeyMismatch),
        ),
        (
            "ath of another token",
            "DPoP",
            vec![p(json!({}), json!({"ath": access_token_hash("other")}))],
            Some(Reason::DpopAthMismatch),
        ),
        (
            "no ath",
            "DPoP",
            vec![p(json!({}), json!({"ath": null}))],
            Some(Reason::DpopAthMismatch),
        ),
        (
            "POST proof on GET",
            "DPoP",
            vec![p(json!({}), json!({"htm": "POST"}))],
            Some(Reason::DpopHtmMismatch),
        ),
        (
            "lower-case method",
            "DPoP",
            vec![p(json!({}), json!({"htm": "get"}))],
            Some(Reason::DpopHtmMismatch),
        ),
        (
            "other path",
            "DPoP",
            vec![p(
                json!({}),
                json!({"htu": "https://orders.mesh.local/api/refunds"}),
            )],
            Some(Reason::DpopHtuMismatch),
        ),
        (
            "other host",
            "DPoP",
            vec![p(
                json!({}),
                json!({"htu": "https://evil.example/api/orders"}),
            )],
            Some(Reason::DpopHtuMismatch),
        ),
        (
            "http instead of https",
            "DPoP",
            vec![p(
                json!({}),
                json!({"htu": "http://orders.mesh.local/api/orders"}),
            )],
            Some(Reason::DpopHtuMismatch),
        ),
        (
            "htu normalised: case, port, query",
            "DPoP",
            vec![p(
                json!({}),
                json!({"htu": "HTTPS://Orders.Mesh.Local:443/api/orders?page=9"}),
            )],
            None,
        ),
        (
            "iat two minutes old",
            "DPoP",
            vec![p(json!({}), json!({"iat": n - 120}))],
            Some(Reason::DpopIatOutOfWindow),
        ),
        (
            "iat two minutes ahead",
            "DPoP",
            vec![p(json!({}), json!({"iat": n + 120}))],
            Some(Reason::DpopIatOutOfWindow),
        ),
        (
            "bound token as a bearer token",
            "Bearer",
            vec![p(json!({}), json!({}))],
            Some(Reason::DpopDowngrade),
        ),
    ];
    let mut failures = Vec::new();
    for (name, scheme, proofs, want) in cases {
        let engine = engine(&s.keys, json!({}));
        let shared = sidecar_state();
        let refs: Vec<&str> = proofs.iter().map(String::as_str).collect();
        let d = engine.decide(&request(&shared, scheme, t, &refs), n);
        if reason(&d) != want {
            failures.push(format!("{name}: want {want:?}, got {:?}", d.denial()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_proof_is_single_use_across_worker_vms() {
    let s = setup(ProofKey::ed25519("client"));
    // Two engines are two Wasm VMs (two worker threads); shared data is common to both.
    let worker_a = engine(&s.keys, json!({}));
    let worker_b = engine(&s.keys, json!({}));
    let shared = sidecar_state();
    let proof = s.key.proof(&s.token, json!({}), json!({}));
    let first = worker_a.decide(&request(&shared, "DPoP", &s.token, &[&proof]), now());
    assert_eq!(first.outcome, Outcome::Allow);
    let again = worker_b.decide(&request(&shared, "DPoP", &s.token, &[&proof]), now());
    assert_eq!(reason(&again), Some(Reason::DpopReplayed));
    let again = worker_a.decide(&request(&shared, "DPoP", &s.token, &[&proof]), now());
    assert_eq!(reason(&again), Some(Reason::DpopReplayed));
    // A fresh proof from the same key is fine.
    let fresh = s.key.proof(&s.token, json!({}), json!({}));
    assert_eq!(
        worker_b
            .decide(&request(&shared, "DPoP", &s.token, &[&fresh]), now())
            .outcome,
        Outcome::Allow
    );
}

#[test]
fn a_full_replay_store_is_its_own_reason_never_a_replay() {
    let s = setup(ProofKey::es256("client"));
    // The smallest store: one live entry per bucket (BUCKETS entries in all).
    let engine = engine(
        &s.keys,
        json!({"dpop": {"replay_cache": {"max_entries": 1}}}),
    );
    let shared = sidecar_state();
    let mut full = 0;
    let mut allowed = 0;
    for _ in 0..(2 * tokenbind_core::replay::BUCKETS) {
        let proof = s.key.proof(&s.token, json!({}), json!({}));
        let d = engine.decide(&request(&shared, "DPoP", &s.token, &[&proof]), now());
        match reason(&d) {
            None => allowed += 1,
            Some(Reason::DpopReplayStoreFull) => {
                full += 1;
                let reply = d.reply(engine.config()).unwrap();
                assert_eq!(reply.status, 503);
                assert!(reply.body.contains("dpop_replay_store_full"));
            }
            other => panic!("a unique proof was refused as {other:?}"),
        }
    }
    assert!(full > 0 && allowed > 0, "full {full}, allowed {allowed}");
    // The cap held: never more than one 24-byte entry per bucket.
    assert!(shared.total_bytes() <= tokenbind_core::replay::BUCKETS * 24 + 64);
    // A real replay is still a replay, even with the store full.
    let proof = s.key.proof(&s.token, json!({}), json!({}));
    let shared = sidecar_state();
    let first = engine.decide(&request(&shared, "DPoP", &s.token, &[&proof]), now());
    assert_eq!(first.outcome, Outcome::Allow);
    let again = engine.decide(&request(&shared, "DPoP", &s.token, &[&proof]), now());
    assert_eq!(reason(&again), Some(Reason::DpopReplayed));
}

#[test]
fn a_replay_store_that_cannot_be_written_is_its_own_reason_a_503() {
    let s = setup(ProofKey::es256("client"));
    let engine = engine(&s.keys, json!({}));
    let shared = sidecar_state();
    // Other workers win every compare-and-swap: the proof cannot be recorded.
    shared.conflicts_before_success(1_000);
    let proof = s.key.proof(&s.token, json!({}), json!({}));
    let d = engine.decide(&request(&shared, "DPoP", &s.token, &[&proof]), now());
    assert_eq!(reason(&d), Some(Reason::DpopReplayStoreUnavailable));
    let reply = d.reply(engine.config()).unwrap();
    assert_eq!(reply.status, 503);
    assert!(reply.body.contains("dpop_replay_store_unavailable"));
    // Fail closed, not a replay: once the store can be written, the same proof is accepted.
    shared.conflicts_before_success(0);
    let d = engine.decide(&request(&shared, "DPoP", &s.token, &[&proof]), now());
    assert_eq!(d.outcome, Outcome::Allow);
}

#[test]
fn the_default_replay_store_carries_a_flood_for_its_whole_window() {
    // 5,000 unique proofs per second for 61 s (the default window plus one second), each
    // recorded until iat + 60 s: every one must be accepted.
    let store =
        tokenbind_core::replay::ReplayStore::new(tokenbind_core::config::DEFAULT_REPLAY_ENTRIES);
    let shared = MemorySharedData::default();
    tokenbind_core::replay::ReplayStore::prepare(&shared);
    let start = 1_000_000u64;
    let mut refused = 0;
    for i in 0..(5_000u64 * 61) {
        let now = start + i / 5_000;
        let id: [u8; 32] = Sha256::digest(i.to_be_bytes()).into();
        if store.first_use(&shared, &id, now + 61, now).is_err() {
            refused += 1;
        }
    }
    assert_eq!(refused, 0);
}

#[test]
fn rejected_proofs_do_not_consume_the_replay_store() {
    let s = setup(ProofKey::es256("client"));
    let engine = engine(&s.keys, json!({}));
    let shared = sidecar_state();
    let before = shared.total_bytes();
    let wrong_uri = s
        .key
        .proof(&s.token, json!({}), json!({"htu": "https://x/y"}));
    let d = engine.decide(&request(&shared, "DPoP", &s.token, &[&wrong_uri]), now());
    assert_eq!(reason(&d), Some(Reason::DpopHtuMismatch));
    assert_eq!(shared.total_bytes(), before);
}

#[test]
fn a_missing_nonce_key_is_its_own_reason_and_never_asks_for_a_nonce() {
    let s = setup(ProofKey::es256("client"));
    let engine = engine(&s.keys, json!({"dpop": {"require_nonce": true}}));
    // Shared data without the nonce key (as if the VM that creates it had no randomness).
    let shared = MemorySharedData::default();
    tokenbind_core::replay::ReplayStore::prepare(&shared);
    let proof = s.key.proof(&s.token, json!({}), json!({}));
    let d = engine.decide(&request(&shared, "DPoP", &s.token, &[&proof]), now());
    assert_eq!(reason(&d), Some(Reason::DpopNonceUnavailable));
    assert!(d.dpop_nonce.is_none());
    let reply = d.reply(engine.config()).unwrap();
    assert_eq!(reply.status, 503);
    assert!(!reply
        .headers
        .iter()
        .any(|(k, _)| *k == "dpop-nonce" || *k == "www-authenticate"));
    assert!(reply.body.contains("dpop_nonce_unavailable"));
}

#[test]
fn nonce_round_trip_when_required() {
    let s = setup(ProofKey::es256("client"));
    let engine = engine(&s.keys, json!({"dpop": {"require_nonce": true}}));
    let shared = sidecar_state();
    let first = s.key.proof(&s.token, json!({}), json!({}));
    let d = engine.decide(&request(&shared, "DPoP", &s.token, &[&first]), now());
    assert_eq!(reason(&d), Some(Reason::DpopNonceRequired));
    let reply = d.reply(engine.config()).unwrap();
    assert_eq!(reply.status, 401);
    let header = |name: &str| {
        reply
            .headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        header("www-authenticate").unwrap(),
        "DPoP error=\"use_dpop_nonce\", error_description=\"Resource server requires nonce in DPoP proof\""
    );
    let nonce = header("dpop-nonce").unwrap();
    let stale = s.key.proof(&s.token, json!({}), json!({"nonce": "bm9wZQ"}));
    assert_eq!(
        reason(&engine.decide(&request(&shared, "DPoP", &s.token, &[&stale]), now())),
        Some(Reason::DpopNonceRequired)
    );
    let retry = s.key.proof(&s.token, json!({}), json!({"nonce": nonce}));
    let d = engine.decide(&request(&shared, "DPoP", &s.token, &[&retry]), now());
    assert_eq!(d.outcome, Outcome::Allow, "{:?}", d.denial());
}

#[test]
fn forwarded_proto_only_when_trusted() {
    let s = setup(ProofKey::es256("client"));
    let shared = sidecar_state();
    // Behind a TLS-terminating hop the sidecar sees plain http; the client signed https.
    let host = |proof: &str| {
        let mut r = request(&shared, "DPoP", &s.token, &[proof]);
        r.inner = std::mem::take(&mut r.inner)
            .with_tls(false)
            .with_header(":scheme", "http")
            .with_header("x-forwarded-proto", "https");
        r
    };
    let untrusting = engine(&s.keys, json!({}));
    let proof = s.key.proof(&s.token, json!({}), json!({}));
    assert_eq!(
        reason(&untrusting.decide(&host(&proof), now())),
        Some(Reason::DpopHtuMismatch)
    );
    let trusting = engine(&s.keys, json!({"dpop": {"trust_forwarded_proto": true}}));
    let proof = s.key.proof(&s.token, json!({}), json!({}));
    assert_eq!(
        trusting.decide(&host(&proof), now()).outcome,
        Outcome::Allow
    );
}

#[test]
fn every_binding_must_pass_when_dpop_and_spiffe_compose() {
    let s = setup(ProofKey::es256("client"));
    let engine = engine(&s.keys, json!({}));
    let shared = sidecar_state();
    // The attacker stole both the token and a proof-signing key... but not the workload
    // identity: SPIFFE binding still fails.
    let proof = s.key.proof(&s.token, json!({}), json!({}));
    let mut r = request(&shared, "DPoP", &s.token, &[&proof]);
    r.inner.set_peer(attacker_peer());
    assert_eq!(
        reason(&engine.decide(&r, now())),
        Some(Reason::SpiffeMismatch)
    );
}

#[test]
fn dpop_scheme_failures_challenge_with_dpop() {
    let s = setup(ProofKey::es256("client"));
    let engine = engine(&s.keys, json!({}));
    let shared = sidecar_state();
    let proof = s.key.proof(&s.token, json!({}), json!({"htm": "PUT"}));
    let d = engine.decide(&request(&shared, "DPoP", &s.token, &[&proof]), now());
    let reply = d.reply(engine.config()).unwrap();
    let www = &reply.headers[0].1;
    assert_eq!(
        www,
        "DPoP algs=\"ES256 ES384 EdDSA RS256 PS256\", error=\"invalid_dpop_proof\", error_description=\"the DPoP proof is for another HTTP method\""
    );
    assert_eq!(
        reply.body,
        "{\"error\":\"invalid_dpop_proof\",\"reason\":\"dpop_htm_mismatch\"}"
    );
}

#[test]
fn proof_keys_are_parsed_once_and_the_cache_is_bounded() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({}));
    let shared = sidecar_state();
    for i in 0..1100 {
        let key = ProofKey::ed25519(&format!("k{i}"));
        let token = token(&keys, Signer::EdDSA, json!({"cnf": {"jkt": key.jkt()}}));
        let proof = key.proof(&token, json!({}), json!({}));
        let d = engine.decide(&request(&shared, "DPoP", &token, &[&proof]), now());
        assert_eq!(d.outcome, Outcome::Allow);
    }
    assert_eq!(engine.proof_keys_len(), 1024);
}

#[test]
fn scheme_comes_from_the_connection_not_a_client_header() {
    // Envoy sets :scheme for HTTP/1 from a client's x-forwarded-proto unless use_remote_address
    // is on. On a TLS connection the client used https, whatever that header says.
    let s = setup(ProofKey::es256("client"));
    let shared = sidecar_state();
    let engine = engine(&s.keys, json!({}));
    let host = |proof: &str| {
        let mut r = request(&shared, "DPoP", &s.token, &[proof]);
        r.inner = std::mem::take(&mut r.inner)
            .with_tls(true)
            .with_header(":scheme", "http")
            .with_header("x-forwarded-proto", "http");
        r
    };
    let http = s.key.proof(
        &s.token,
        json!({}),
        json!({"htu": "http://orders.mesh.local/api/orders"}),
    );
    assert_eq!(
        reason(&engine.decide(&host(&http), now())),
        Some(Reason::DpopHtuMismatch)
    );
    let https = s.key.proof(&s.token, json!({}), json!({}));
    assert_eq!(engine.decide(&host(&https), now()).outcome, Outcome::Allow);
}

#[test]
fn ed25519_is_accepted_as_the_fully_specified_name_of_eddsa() {
    // RFC 9864 names EdDSA-with-Ed25519 "Ed25519"; panva/dpop 2.x emits it.
    let s = setup(ProofKey::ed25519("client"));
    let engine = engine(&s.keys, json!({}));
    let shared = sidecar_state();
    let proof = s.key.proof(&s.token, json!({"alg": "Ed25519"}), json!({}));
    let d = engine.decide(&request(&shared, "DPoP", &s.token, &[&proof]), now());
    assert_eq!(d.outcome, Outcome::Allow, "{:?}", d.denial());
}
