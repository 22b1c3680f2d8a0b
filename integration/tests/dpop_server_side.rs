//! The DPoP reasons that are the server's own state, not the client's credential, against a
//! real Envoy: `dpop_replay_store_full` and `dpop_nonce_unavailable`. Both are 503 with
//! `retry-after` and no challenge (the proof was not judged bad), each with its own counter,
//! and the upstream is not reached.
//!
//! * Store full: with `dpop.replay_cache.max_entries: 1` the store holds one live proof per
//!   bucket (`BUCKETS` = 4096 buckets, so 4096 in all). The cap is per bucket, so the test
//!   computes each proof's bucket (the replay id is SHA-256 over the key thumbprint, a zero byte
//!   and the `jti`; its first two bytes pick the bucket) and sends two valid, unique proofs that
//!   fall in the same bucket inside the iat window: the first is recorded, the second finds the
//!   bucket full. Sending thousands of proofs until the birthday bound hit would test the same
//!   thing slower and by chance.
//! * Nonce key unavailable: the key is created in shared data at `on_configure`, so tokenbind
//!   alone never lacks it (a VM without randomness refuses `require_nonce` at configure). Shared
//!   data belongs to the `vm_id`, not to a plugin, so the real way it goes missing is another
//!   plugin configured with the same `vm_id` that writes the key's name: here a minimal
//!   proxy-wasm module (assembled below, 200 bytes) placed before tokenbind in the chain writes
//!   a 9-byte value there on every request. The filter then has no valid key and must neither
//!   accept the proof nor ask for a nonce it cannot issue.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokenbind_integration::assertions::assert_allowed;
use tokenbind_integration::client::Response;
use tokenbind_integration::dpop::{unique_jti, ProofAlg, ProofKey};
use tokenbind_integration::envoy::{wasm_typed_config, Bootstrap, Envoy};
use tokenbind_integration::pki::Pki;
use tokenbind_integration::tokens::{Alg, TokenIssuer};
use tokenbind_integration::{
    plugin_config, require_wasm, Stack, AUDIENCE, CLIENT_ID, ISSUER, UPSTREAM_BODY,
};

const PATH: &str = "/api/orders";
const HTU: &str = "https://localhost/api/orders";
/// `tokenbind_core::replay::BUCKETS`.
const BUCKETS: usize = 4096;

fn dpop_get(s: &Stack, token: &str, proof: &str) -> Response {
    let auth = format!("DPoP {token}");
    s.client(&s.pki.client)
        .request(
            s.port(),
            "GET",
            PATH,
            &[("authorization", &auth), ("dpop", proof)],
            b"",
        )
        .unwrap_or_else(|e| panic!("GET {PATH} failed: {e}"))
}

/// 503 `temporarily_unavailable` with `reason`, `retry-after`, no challenge, not the upstream.
#[track_caller]
fn assert_unavailable(r: &Response, reason: &str, context: &str) {
    assert_eq!(r.status, 503, "{context}: expected 503 {reason}:\n{r}");
    assert_eq!(
        r.json(),
        Some(json!({"error": "temporarily_unavailable", "reason": reason})),
        "{context}: body:\n{r}"
    );
    assert_ne!(
        r.body_str(),
        UPSTREAM_BODY,
        "{context}: reached the upstream"
    );
    assert_eq!(r.header("retry-after"), Some("1"), "{context}:\n{r}");
    assert!(
        r.header_all("www-authenticate").is_empty(),
        "{context}: a server-side refusal carries no challenge:\n{r}"
    );
    assert!(
        r.header("dpop-nonce").is_none(),
        "{context}: no nonce:\n{r}"
    );
}

fn bucket_of(jkt: &str, jti: &str) -> usize {
    let mut h = Sha256::new();
    h.update(jkt.as_bytes());
    h.update([0u8]);
    h.update(jti.as_bytes());
    let id = h.finalize();
    usize::from(u16::from_be_bytes([id[0], id[1]])) % BUCKETS
}

/// Two distinct jtis whose proofs from the key `jkt` land in the same replay bucket.
fn colliding_jtis(jkt: &str) -> (String, String) {
    let mut seen = std::collections::HashMap::new();
    for _ in 0..100_000 {
        let jti = unique_jti();
        if let Some(first) = seen.insert(bucket_of(jkt, &jti), jti.clone()) {
            return (first, jti);
        }
    }
    panic!("no two of 100000 jtis share one of {BUCKETS} buckets");
}

#[test]
fn a_full_replay_store_bucket_is_503_dpop_replay_store_full() {
    let s = Stack::with_filter(|cfg| {
        cfg["dpop"] = json!({"replay_cache": {"max_entries": 1}});
    });
    let key = ProofKey::generate(ProofAlg::Es256);
    let token = s.issuer.sign(
        Alg::Es256,
        &s.issuer.claims(CLIENT_ID, AUDIENCE).cnf_jkt(&key.jkt()),
    );
    let (a, b) = colliding_jtis(&key.jkt());
    let proof = |jti: &str| key.proof_with("GET", HTU, &token, json!({}), json!({"jti": jti}));

    let before = s.envoy.snapshot();
    assert_allowed(
        &dpop_get(&s, &token, &proof(&a)),
        "first proof in the bucket",
    );
    let r = dpop_get(&s, &token, &proof(&b));
    assert_unavailable(
        &r,
        "dpop_replay_store_full",
        "second proof in the same bucket",
    );
    // Still full: the refused proof was not recorded and does not become a replay.
    let r = dpop_get(&s, &token, &proof(&b));
    assert_unavailable(&r, "dpop_replay_store_full", "the same proof again");
    // The first is still remembered: its replay is a replay, not a full store.
    let r = dpop_get(&s, &token, &proof(&a));
    assert_eq!(r.status, 401, "replay of the recorded proof:\n{r}");
    assert_eq!(
        r.json()
            .and_then(|v| v["reason"].as_str().map(str::to_owned)),
        Some("dpop_replayed".to_owned())
    );
    // A proof in another bucket is accepted: the cap is per bucket.
    let other = loop {
        let jti = unique_jti();
        if bucket_of(&key.jkt(), &jti) != bucket_of(&key.jkt(), &a) {
            break jti;
        }
    };
    assert_allowed(
        &dpop_get(&s, &token, &proof(&other)),
        "proof in another bucket",
    );

    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        (
            d.get("tokenbind.allowed"),
            d.get("tokenbind.denied.dpop_replay_store_full"),
            d.get("tokenbind.denied.dpop_replayed"),
        ),
        (2, 2, 1),
        "{d}"
    );
    assert!(
        s.envoy
            .log()
            .contains("raise dpop.replay_cache.max_entries"),
        "the log tells the operator what to size"
    );
}

// ---- A plugin sharing tokenbind's vm_id -----------------------------------------------------

fn leb(mut v: u32, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        // Values here are < 2^31, so unsigned and signed LEB128 agree when the top bit of the
        // last byte's payload (0x40) is clear.
        if v == 0 && byte & 0x40 == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn vec_of(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    leb(items.len() as u32, &mut out);
    for i in items {
        out.extend_from_slice(i);
    }
    out
}

fn name(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    leb(s.len() as u32, &mut out);
    out.extend_from_slice(s.as_bytes());
    out
}

fn section(id: u8, body: Vec<u8>) -> Vec<u8> {
    let mut out = vec![id];
    leb(body.len() as u32, &mut out);
    out.extend(body);
    out
}

fn i32_const(v: u32) -> Vec<u8> {
    let mut out = vec![0x41];
    leb(v, &mut out);
    out
}

/// A proxy-wasm (ABI 0.2.1) module whose `proxy_on_request_headers` writes `value` under
/// shared-data key `key` (CAS 0: unconditionally) and continues.
fn shared_data_writer(key: &str, value: &[u8]) -> Vec<u8> {
    const I32: u8 = 0x7f;
    const KEY_AT: u32 = 16;
    const VALUE_AT: u32 = 256;
    let functype = |params: &[u8], results: &[u8]| {
        let mut t = vec![0x60];
        leb(params.len() as u32, &mut t);
        t.extend_from_slice(params);
        leb(results.len() as u32, &mut t);
        t.extend_from_slice(results);
        t
    };
    let types = vec_of(&[
        functype(&[], &[]),                           // 0: abi version marker
        functype(&[I32], &[I32]),                     // 1: malloc
        functype(&[I32, I32], &[]),                   // 2: on_context_create
        functype(&[I32, I32], &[I32]),                // 3: on_vm_start, on_configure
        functype(&[I32, I32, I32], &[I32]),           // 4: on_request_headers
        functype(&[I32, I32, I32, I32, I32], &[I32]), // 5: proxy_set_shared_data
    ]);
    let mut import = name("env");
    import.extend(name("proxy_set_shared_data"));
    import.extend([0x00, 5]);
    let imports = vec_of(&[import]);
    // Functions 1..=6 (0 is the import).
    let functions = vec_of(&[vec![0], vec![1], vec![2], vec![3], vec![3], vec![4]]);
    let memory = vec_of(&[vec![0x00, 1]]);
    let export = |n: &str, kind: u8, index: u32| {
        let mut e = name(n);
        e.push(kind);
        leb(index, &mut e);
        e
    };
    let exports = vec_of(&[
        export("memory", 2, 0),
        export("proxy_abi_version_0_2_1", 0, 1),
        export("malloc", 0, 2),
        export("proxy_on_memory_allocate", 0, 2),
        export("proxy_on_context_create", 0, 3),
        export("proxy_on_vm_start", 0, 4),
        export("proxy_on_configure", 0, 5),
        export("proxy_on_request_headers", 0, 6),
    ]);
    let body = |expr: Vec<u8>| {
        let mut b = vec![0x00]; // no locals
        b.extend(expr);
        b.push(0x0b);
        let mut sized = Vec::new();
        leb(b.len() as u32, &mut sized);
        sized.extend(b);
        sized
    };
    let mut write = Vec::new();
    for v in [KEY_AT, key.len() as u32, VALUE_AT, value.len() as u32, 0] {
        write.extend(i32_const(v));
    }
    write.extend([0x10, 0]); // call proxy_set_shared_data
    write.push(0x1a); // drop its status
    write.extend(i32_const(0)); // Continue
    let code = vec_of(&[
        body(vec![]),
        body(i32_const(1024)),
        body(vec![]),
        body(i32_const(1)),
        body(i32_const(1)),
        body(write),
    ]);
    let segment = |at: u32, bytes: &[u8]| {
        let mut d = vec![0x00];
        d.extend(i32_const(at));
        d.push(0x0b);
        leb(bytes.len() as u32, &mut d);
        d.extend_from_slice(bytes);
        d
    };
    let data = vec_of(&[segment(KEY_AT, key.as_bytes()), segment(VALUE_AT, value)]);

    let mut module = b"\0asm\x01\0\0\0".to_vec();
    for (id, s) in [
        (1, types),
        (2, imports),
        (3, functions),
        (5, memory),
        (7, exports),
        (10, code),
        (11, data),
    ] {
        module.extend(section(id, s));
    }
    module
}

/// The HTTP filters of the standard bootstrap's listener.
fn http_filters(bootstrap: &mut Value) -> &mut Vec<Value> {
    bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("the bootstrap has no http_filters"))
}

/// The standard stack (with `dpop.require_nonce`), plus, before tokenbind, a plugin with
/// tokenbind's `vm_id` running the module at `writer`.
fn start_with_writer(writer: &Path) -> Stack {
    let wasm = require_wasm();
    let pki = Pki::new();
    let issuer = TokenIssuer::new(ISSUER);
    let mut cfg = plugin_config(&issuer);
    cfg["dpop"] = json!({"require_nonce": true});
    let mut bootstrap = Bootstrap::new(&pki).wasm_filter(&wasm, &cfg).build();
    let mut other = wasm_typed_config(writer, "");
    other["config"]["name"] = json!("co-tenant");
    other["config"]["root_id"] = json!("co-tenant");
    assert_eq!(other["config"]["vm_config"]["vm_id"], "tokenbind");
    let filters = http_filters(&mut bootstrap);
    let at = filters
        .iter()
        .position(|f| f["name"] == "envoy.filters.http.wasm")
        .unwrap_or_else(|| panic!("no wasm filter in the bootstrap"));
    filters.insert(
        at,
        json!({"name": "envoy.filters.http.wasm", "typed_config": other}),
    );
    let envoy = Envoy::start(&bootstrap)
        .unwrap_or_else(|e| panic!("Envoy failed to start with two plugins: {e}"));
    Stack { pki, issuer, envoy }
}

#[test]
fn a_nonce_key_clobbered_by_a_plugin_sharing_the_vm_id_is_503_dpop_nonce_unavailable() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let writer: PathBuf = dir.path().join("co-tenant.wasm");
    std::fs::write(
        &writer,
        shared_data_writer("tokenbind.dpop.nonce_key", b"clobbered"),
    )
    .unwrap_or_else(|e| panic!("writing the module: {e}"));
    let s = start_with_writer(&writer);

    // The co-tenant plugin runs on every request and does not disturb a Bearer request.
    let before = s.envoy.snapshot();
    let bearer = s
        .issuer
        .sign(Alg::Es256, &s.issuer.claims(CLIENT_ID, AUDIENCE));
    assert_allowed(
        &s.get(&s.pki.client, PATH, Some(&bearer)),
        "bearer token behind the co-tenant plugin",
    );

    let key = ProofKey::generate(ProofAlg::Es256);
    let token = s.issuer.sign(
        Alg::Es256,
        &s.issuer.claims(CLIENT_ID, AUDIENCE).cnf_jkt(&key.jkt()),
    );
    // A valid proof without a nonce (normally: 401 use_dpop_nonce with a fresh nonce), and one
    // with a made-up nonce: without the key neither can be judged, and no nonce can be issued.
    for (what, proof) in [
        ("proof without a nonce", key.proof("GET", HTU, &token)),
        (
            "proof with a nonce",
            key.proof_with(
                "GET",
                HTU,
                &token,
                json!({}),
                json!({"nonce": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}),
            ),
        ),
    ] {
        let r = dpop_get(&s, &token, &proof);
        assert_unavailable(&r, "dpop_nonce_unavailable", what);
    }
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        (
            d.get("tokenbind.allowed"),
            d.get("tokenbind.denied.dpop_nonce_unavailable"),
            d.get("tokenbind.denied.dpop_nonce_required"),
        ),
        (1, 2, 0),
        "{d}"
    );
    assert!(
        s.envoy
            .log()
            .contains("nonce key unavailable in shared data"),
        "the log says why:\n{}",
        s.envoy.log()
    );
}
