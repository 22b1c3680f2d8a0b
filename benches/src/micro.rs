//! The micro-benchmark operations, shared by three runners so that they time exactly the same
//! code: criterion (`benches/core.rs`, native), and the `micro` binary, natively and built for
//! wasm32-wasip1 and run inside V8 by Node (`wasm/run-in-v8.mjs`).
//!
//! Each [`Op`] does its set-up once, outside the clock, and times `iters` repetitions itself
//! (criterion's `iter_custom` contract), so operations that consume state, like a full DPoP
//! decision whose proof may be used once, can refresh it without timing the refresh.

use std::cell::{Cell, RefCell};
use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokenbind_core::binding;
use tokenbind_core::cache::token_hash;
use tokenbind_core::config::DpopSettings;
use tokenbind_core::dpop::{self, ProofKeyCache, ProofRequest};
use tokenbind_core::extract::Scheme;
use tokenbind_core::host::MemorySharedData;
use tokenbind_core::jwk::{self, Alg, PublicKey};
use tokenbind_core::jwt::{self, TokenFacts};
use tokenbind_core::replay::ReplayStore;
use tokenbind_core::spiffe::SpiffeId;
use tokenbind_core::{Config, Engine, Host, MockHost, Outcome, Peer, SharedData, SharedError};

use crate::fixtures::{
    self, claims, plugin_config, Issuer, ProofAlg, ProofKey, ProofMinter, TokenAlg, CLIENT_ID,
};

/// One timed operation.
pub trait Op {
    fn name(&self) -> &str;
    /// Runs the operation `iters` times and returns the time spent in the operation itself
    /// (set-up between repetitions excluded).
    fn run(&mut self, iters: u64) -> Duration;
}

/// An operation with no per-repetition state.
struct Simple<F> {
    name: String,
    f: F,
}

impl<F: FnMut()> Op for Simple<F> {
    fn name(&self) -> &str {
        &self.name
    }
    fn run(&mut self, iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            (self.f)();
        }
        start.elapsed()
    }
}

fn simple(name: impl Into<String>, f: impl FnMut() + 'static) -> Box<dyn Op> {
    Box::new(Simple {
        name: name.into(),
        f,
    })
}

/// The request host and port the DPoP proofs are minted for.
pub const AUTHORITY: &str = "orders.mesh.local";
pub const HTU: &str = "https://orders.mesh.local/api/orders";
const PATH: &str = "/api/orders";

/// The client's peer as Envoy reports it (SPIFFE URI SAN, certificate digest and PEM).
pub fn client_peer() -> Peer {
    fixtures::svid_peer(CLIENT_ID)
}

fn engine(jwks: &Value, cache_entries: usize) -> Result<Engine, String> {
    let text = plugin_config(jwks, cache_entries).to_string();
    let config = Config::from_json(text.as_bytes(), &|_| Err("no files".into()))
        .map_err(|e| format!("bench configuration: {e}"))?;
    Ok(Engine::new(config))
}

fn bearer_host(token: &str) -> MockHost {
    MockHost::new()
        .with_header(":authority", AUTHORITY)
        .with_header(":path", PATH)
        .with_header("authorization", &format!("Bearer {token}"))
        .with_peer(client_peer())
        .with_tls(true)
}

fn expect_allow(engine: &Engine, host: &dyn Host, now: u64, what: &str) -> Result<(), String> {
    let d = engine.decide(host, now);
    if d.outcome == Outcome::Allow {
        Ok(())
    } else {
        Err(format!("{what}: expected allow, got {:?}", d.denial()))
    }
}

/// Everything the suite needs, minted once.
pub struct Fixtures {
    pub issuer: Issuer,
    pub jwks: Value,
    pub now: u64,
    /// One bearer token per algorithm, bound to the client's SPIFFE ID.
    pub tokens: Vec<(TokenAlg, String)>,
}

impl Fixtures {
    pub fn new() -> Result<Fixtures, String> {
        let issuer = Issuer::deterministic()?;
        let jwks = issuer.jwks()?;
        let now = fixtures::now();
        let mut tokens = Vec::new();
        for alg in TokenAlg::ALL {
            tokens.push((alg, issuer.sign(alg, &claims(CLIENT_ID, now, 86_400))?));
        }
        Ok(Fixtures {
            issuer,
            jwks,
            now,
            tokens,
        })
    }

    fn token(&self, alg: TokenAlg) -> &str {
        self.tokens
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, t)| t.as_str())
            .unwrap_or_default()
    }
}

/// Every operation, in report order.
pub fn suite() -> Result<Vec<Box<dyn Op>>, String> {
    let fx = Fixtures::new()?;
    let now = fx.now;
    let mut ops: Vec<Box<dyn Op>> = Vec::new();

    // The steady state of scenario C: a cached token, SPIFFE binding checked.
    {
        let token = fx.token(TokenAlg::Es256).to_owned();
        let engine = engine(&fx.jwks, 10_000)?;
        let host = bearer_host(&token);
        expect_allow(&engine, &host, now, "cache-hit decide")?;
        ops.push(simple("decide/cache_hit", move || {
            black_box(engine.decide(black_box(&host), now));
        }));
    }
    // exempt_paths: the normaliser and the matcher (`tokenbind_core::paths`).
    {
        let list = json!([
            "/healthz",
            {"exact": "/ready"},
            {"prefix": "/livez", "methods": ["GET", "HEAD"]}
        ]);
        let matcher = tokenbind_core::paths::PathMatcher::from_json(
            list.as_array().ok_or("exempt list")?,
            "exempt_paths",
        )
        .map_err(|e| e.to_string())?;
        let m = matcher.clone();
        ops.push(simple("paths/match_normal", move || {
            black_box(m.matches(Some("GET"), black_box("/api/orders/42?full=1")));
        }));
        ops.push(simple("paths/match_dirty", move || {
            black_box(matcher.matches(Some("GET"), black_box("/a/%7Eb/./c//../healthz/live")));
        }));
    }
    // The pieces of a cache hit.
    {
        let token = fx.token(TokenAlg::Es256).to_owned();
        ops.push(simple("sha256/token", move || {
            black_box(token_hash(black_box(&token)));
        }));
    }
    // Strict JSON (duplicate members refused) against serde_json's own Value parse, on the
    // decoded header and claims of a typical token: the extra cost of one meaning per token.
    {
        let token = fx.token(TokenAlg::Es256).to_owned();
        let parts: Vec<Vec<u8>> = token
            .split('.')
            .take(2)
            .map(|p| {
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, p)
                    .unwrap_or_default()
            })
            .collect();
        for part in &parts {
            if tokenbind_core::json::from_slice(part).is_err() {
                return Err("the token's header or claims are not strict JSON".into());
            }
        }
        let strict = parts.clone();
        ops.push(simple("json/strict/token_header_and_claims", move || {
            for part in &strict {
                let _ = black_box(tokenbind_core::json::from_slice(black_box(part)));
            }
        }));
        ops.push(simple(
            "json/serde_json/token_header_and_claims",
            move || {
                for part in &parts {
                    let _ = black_box(serde_json::from_slice::<Value>(black_box(part)));
                }
            },
        ));
    }
    {
        // The X.509-SVID leaf check of a peer certificate (once per certificate: cached by digest).
        let pem = fixtures::CLIENT_CERT_PEM.as_bytes();
        ops.push(simple("svid/check_leaf_pem", move || {
            let _ = black_box(tokenbind_core::svid::check_leaf_pem(black_box(pem)));
        }));
        ops.push(simple("spiffe/parse", move || {
            let _ = black_box(SpiffeId::parse(black_box(CLIENT_ID)));
        }));
        let token = fx.token(TokenAlg::Es256).to_owned();
        let engine = engine(&fx.jwks, 0)?;
        let facts = verified_facts(&engine, &token, now)?;
        let peer = client_peer();
        // A bearer token without cnf.jkt: the DPoP state and the host are never touched.
        let host = MockHost::new();
        let proof_keys = RefCell::new(ProofKeyCache::new(0));
        let replay = ReplayStore::new(1);
        let crypto = tokenbind_core::Crypto::wasm();
        ops.push(simple("spiffe/binding_check", move || {
            let r = binding::check(&binding::Inputs {
                facts: black_box(&facts),
                config: engine.config(),
                peer: black_box(&peer),
                scheme: Scheme::Bearer,
                token: &token,
                path: "/",
                host: &host,
                now,
                dpop: binding::DpopState {
                    proof_keys: &proof_keys,
                    replay: &replay,
                    crypto: &crypto,
                },
            });
            let _ = black_box(r);
        }));
    }

    // Scenario D: the cache off, so every decision verifies the signature.
    for alg in TokenAlg::ALL {
        let token = fx.token(alg).to_owned();
        let engine = engine(&fx.jwks, 0)?;
        let host = bearer_host(&token);
        expect_allow(&engine, &host, now, "cold decide")?;
        ops.push(simple(format!("decide/cold/{}", alg.name()), move || {
            black_box(engine.decide(black_box(&host), now));
        }));
    }
    // The signature alone.
    for alg in TokenAlg::ALL {
        let token = fx.token(alg).to_owned();
        let (key, jose_alg) = issuer_key(&fx.jwks, alg)?;
        let (input, signature) = split_jws(&token)?;
        if !key.verify_in_wasm(jose_alg, input.as_bytes(), &signature) {
            return Err(format!("{} signature does not verify", alg.name()));
        }
        ops.push(simple(format!("verify/{}", alg.name()), move || {
            black_box(key.verify_in_wasm(
                jose_alg,
                black_box(input.as_bytes()),
                black_box(&signature),
            ));
        }));
    }

    // DPoP (scenario E).
    for alg in [ProofAlg::Es256, ProofAlg::EdDsa] {
        let key = ProofKey::from_seed(alg, &format!("bench-dpop-{}", alg.name()))?;
        let mut c = claims(CLIENT_ID, now, 86_400);
        c.insert("cnf".into(), json!({"jkt": key.jkt()}));
        let token = fx.issuer.sign(TokenAlg::Es256, &c)?;
        let minter = ProofMinter::new(&key, "GET", HTU, &token);
        let proof = minter.proof(0, now);
        let jkt = key.jkt();
        let settings = DpopSettings::default();
        let mut keys = ProofKeyCache::new(16);
        let crypto = tokenbind_core::Crypto::wasm();
        let request = ProofRequest {
            method: "GET",
            uri: Some(HTU),
            access_token: &token,
            jkt: &jkt,
            now,
            nonce_key: None,
        };
        dpop::verify(&proof, &request, &settings, &mut keys, &crypto)
            .map_err(|d| format!("DPoP proof does not verify: {d:?}"))?;
        let name = format!("dpop/verify/{}", alg.name());
        ops.push(Box::new(Simple {
            name,
            f: move || {
                let request = ProofRequest {
                    method: "GET",
                    uri: Some(HTU),
                    access_token: &token,
                    jkt: &jkt,
                    now,
                    nonce_key: None,
                };
                let _ = black_box(dpop::verify(
                    black_box(&proof),
                    &request,
                    &settings,
                    &mut keys,
                    &crypto,
                ));
            },
        }));
    }
    for alg in [ProofAlg::Es256, ProofAlg::EdDsa] {
        ops.push(Box::new(DpopDecide::new(&fx, alg)?));
    }

    // RFC 7638 thumbprints.
    for alg in [ProofAlg::Es256, ProofAlg::EdDsa] {
        let key = ProofKey::from_seed(alg, "bench-thumbprint")?;
        let jwk: Map<String, Value> = key.jwk().as_object().cloned().unwrap_or_default();
        if jwk::thumbprint(&jwk).as_deref() != Ok(key.jkt().as_str()) {
            return Err("thumbprint differs from the independent computation".into());
        }
        let kty = if alg == ProofAlg::Es256 { "EC" } else { "OKP" };
        ops.push(simple(format!("thumbprint/{kty}"), move || {
            let _ = black_box(jwk::thumbprint(black_box(&jwk)));
        }));
    }
    Ok(ops)
}

fn verified_facts(engine: &Engine, token: &str, now: u64) -> Result<Rc<TokenFacts>, String> {
    let key_sets: Vec<_> = engine
        .config()
        .providers
        .iter()
        .map(|p| p.keys.static_keys().map(|k| Rc::new(k.clone())))
        .collect();
    jwt::verify(token, engine.config(), &key_sets, engine.crypto(), now)
        .map(Rc::new)
        .map_err(|e| format!("token does not verify: {:?}", e.denial))
}

/// The issuer's public key for `alg`, parsed by the filter's JWK code.
fn issuer_key(jwks: &Value, alg: TokenAlg) -> Result<(PublicKey, Alg), String> {
    let kty = match alg {
        TokenAlg::Es256 => "EC",
        TokenAlg::EdDsa => "OKP",
        TokenAlg::Rs256 => "RSA",
    };
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kty"] == kty))
        .and_then(Value::as_object)
        .ok_or_else(|| format!("no {kty} key in the JWKS"))?;
    // The JWKS carries kid/alg/use; parse_public_jwk takes the key members.
    let mut members = jwk.clone();
    for m in ["kid", "alg", "use"] {
        members.remove(m);
    }
    let key = jwk::parse_public_jwk(&members).map_err(|e| format!("{kty} JWK: {e}"))?;
    let jose = Alg::parse(alg.name()).map_err(|e| format!("{e:?}"))?;
    Ok((key, jose))
}

fn split_jws(token: &str) -> Result<(String, Vec<u8>), String> {
    let (input, sig) = token.rsplit_once('.').ok_or("not a JWS")?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|e| format!("signature: {e}"))?;
    Ok((input.to_owned(), sig))
}

/// Proofs kept ready for [`DpopDecide`]; the replay store is reset after each round of them.
const PROOF_POOL: usize = 512;
/// Live entries put into the replay store after each reset: 16 per bucket, the steady state of
/// about 270 proofs/s (entries live 61 s).
const REPLAY_PREFILL: u64 = 16 * 1024;

/// A full decision for a DPoP-bound token (cached) with a fresh proof each time: token cache
/// hit, SPIFFE binding, proof verification (proof key cached) and the replay store.
struct DpopDecide {
    name: String,
    engine: Engine,
    host: DpopHost,
    now: u64,
}

impl DpopDecide {
    fn new(fx: &Fixtures, alg: ProofAlg) -> Result<DpopDecide, String> {
        let now = fx.now;
        let key = ProofKey::from_seed(alg, &format!("bench-dpop-decide-{}", alg.name()))?;
        let mut c = claims(CLIENT_ID, now, 86_400);
        c.insert("cnf".into(), json!({"jkt": key.jkt()}));
        let token = fx.issuer.sign(TokenAlg::Es256, &c)?;
        let minter = ProofMinter::new(&key, "GET", HTU, &token);
        let proofs = (0..PROOF_POOL as u64)
            .map(|n| minter.proof(n, now))
            .collect();
        let host = DpopHost {
            headers: vec![
                (":method".into(), "GET".into()),
                (":scheme".into(), "https".into()),
                (":authority".into(), AUTHORITY.into()),
                (":path".into(), PATH.into()),
                ("authorization".into(), format!("DPoP {token}")),
            ],
            proofs,
            next: Cell::new(0),
            peer: client_peer(),
            shared: RefCell::new(MemorySharedData::default()),
        };
        let engine = engine(&fx.jwks, 10_000)?;
        host.reset(now);
        expect_allow(&engine, &host, now, "DPoP decide")?;
        // A replayed proof must be refused, or this would not be measuring the replay store.
        if engine.decide(&host, now).outcome == Outcome::Allow {
            return Err("a replayed DPoP proof was allowed".into());
        }
        host.reset(now);
        Ok(DpopDecide {
            name: format!("decide/dpop/{}", alg.name()),
            engine,
            host,
            now,
        })
    }
}

impl Op for DpopDecide {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let chunk = left.min(PROOF_POOL as u64);
            self.host.reset(self.now);
            let start = Instant::now();
            for i in 0..chunk as usize {
                self.host.next.set(i);
                black_box(self.engine.decide(&self.host, self.now));
            }
            total += start.elapsed();
            left -= chunk;
        }
        total
    }
}

/// A host for DPoP requests whose `DPoP` header is proof number `next` of a pool, with its
/// own shared data (one sidecar).
struct DpopHost {
    headers: Vec<(String, String)>,
    proofs: Vec<String>,
    next: Cell<usize>,
    peer: Peer,
    shared: RefCell<MemorySharedData>,
}

impl DpopHost {
    /// A fresh replay store holding [`REPLAY_PREFILL`] live entries of other proofs.
    fn reset(&self, now: u64) {
        let shared = MemorySharedData::default();
        ReplayStore::prepare(&shared);
        let store = ReplayStore::new(fixtures::REPLAY_ENTRIES);
        for i in 0..REPLAY_PREFILL {
            let id: [u8; 32] = Sha256::digest(i.to_be_bytes()).into();
            let _ = store.first_use(&shared, &id, now + 61, now);
        }
        *self.shared.borrow_mut() = shared;
        self.next.set(0);
    }
}

impl SharedData for DpopHost {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shared.borrow().get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        self.shared.borrow().set(key, value, cas)
    }
}

impl Host for DpopHost {
    fn request_header(&self, name: &str) -> Option<String> {
        if name == "dpop" {
            return self.proofs.get(self.next.get()).cloned();
        }
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
    fn request_header_values(&self, name: &str) -> Vec<String> {
        self.request_header(name).into_iter().collect()
    }
    fn peer(&self, want: tokenbind_core::peer::PeerWant) -> Peer {
        self.peer.masked(want)
    }
    fn downstream_tls(&self) -> Option<bool> {
        Some(true)
    }
}

/// One result of [`measure`].
#[derive(Debug, Clone)]
pub struct Measurement {
    pub name: String,
    /// Median over the samples.
    pub ns_per_op: f64,
    pub iters_per_sample: u64,
    pub samples: usize,
}

impl Measurement {
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "ns_per_op": (self.ns_per_op * 10.0).round() / 10.0,
            "iters_per_sample": self.iters_per_sample,
            "samples": self.samples,
        })
    }
}

/// Times `op`: calibrates the repetitions so one sample takes about `sample_time`, warms up
/// for one sample, then takes `samples` samples and reports the median time per repetition.
pub fn measure(op: &mut dyn Op, sample_time: Duration, samples: usize) -> Measurement {
    let mut iters: u64 = 1;
    loop {
        let d = op.run(iters);
        if d >= sample_time / 4 || iters >= 1 << 30 {
            let per = d.as_secs_f64() / iters as f64;
            iters = ((sample_time.as_secs_f64() / per.max(1e-12)) as u64).max(1);
            break;
        }
        iters *= 4;
    }
    let _ = op.run(iters);
    let mut per_op: Vec<f64> = (0..samples.max(1))
        .map(|_| op.run(iters).as_nanos() as f64 / iters as f64)
        .collect();
    per_op.sort_by(f64::total_cmp);
    Measurement {
        name: op.name().to_owned(),
        ns_per_op: per_op.get(per_op.len() / 2).copied().unwrap_or(f64::NAN),
        iters_per_sample: iters,
        samples: per_op.len(),
    }
}
