//! End-to-end benchmark: wrk → client sidecar Envoy → server sidecar Envoy → direct_response.
//!
//! Every scenario (A baseline, B jwt_authn + RBAC, C tokenbind cached, D tokenbind cold vs
//! B-nocache, E tokenbind DPoP, F tokenbind monitor) gets its own pair of Envoys, started once;
//! then the scenarios are run in turn, round after round, and the medians are reported. After
//! the rounds: one run each of A-c2 and C-c2 (server sidecar at `--concurrency 2`, for the
//! memory of one more Wasm VM) and the DPoP flood (DPOP-FLOOD: unique proofs for 60 s against
//! the default replay store). See `benches/README.md` for the topology, the choices (pinning,
//! connections) and how to read the table.
//!
//! `cargo run --release -p tokenbind-benches --bin e2e -- --help`

mod flood;
mod procfs;
mod profile;
mod report;
mod rs256;
mod stack;
mod wrk;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokenbind_integration::envoy::Envoy;
use tokenbind_integration::pki::Pki;
use tokenbind_integration::tokens::{Alg, Claims, TokenIssuer};

use tokenbind_benches::fixtures::{
    self, plugin_config, ProofAlg, ProofKey, ProofMinter, TokenAlg, ATTACKER_ID, AUDIENCE,
    CLIENT_ID, ISSUER,
};

use crate::report::{Row, RunRecord};
use crate::stack::Server;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether SIGINT or SIGTERM arrived: loops stop, and everything started is cleaned up.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

const HELP: &str = "\
usage: e2e [options]

  --rounds N          rounds of all scenarios (default 3)
  --duration SECS     seconds per measured run (default 10; at most 45, DPoP proofs are
                      minted with iat = now and the filter accepts +-60 s)
  --warmup SECS       unmeasured run per scenario before round 1 (default 3)
  --latency SECS      extra run per scenario and round with 1 connection, for unloaded
                      latency (default 3; 0 = off)
  --connections N     wrk connections for the throughput runs (default 16)
  --quick             smoke run: 1 round, 3 s runs, 1 s warm-up, 1 s latency runs
  --scenarios LIST    comma-separated scenario ids, or prefixes ending in * (e.g. A,C,D-*);
                      default: all. A-c2, C-c2 (server sidecar --concurrency 2, for RSS per
                      Wasm VM) and DPOP-FLOOD run once each after the rounds
  --crypto MODE       the filter's `crypto` setting for the tokenbind scenarios: auto (default:
                      the key is left out of the configuration), host or wasm. D-ES256-wasm
                      and E-ES256-wasm always set wasm
  --flood-duration S  length of the DPOP-FLOOD run (default 60; --quick: 10; at most 100:
                      all proofs carry iat = start + S/2 and the filter accepts iat +-60 s)
  --flood-alg ALG     DPOP-FLOOD proof algorithm: ES256 (default) or EdDSA
  --pin MODE          split (default): wrk alone on the first CPU, both sidecars on the
                      second; server-alone: wrk and the client sidecar on the first CPU, the
                      server sidecar alone on the second; none: no pinning
  --no-pin            same as --pin none
  --wasm PATH         the filter module (default: target/wasm32-wasip1/release/tokenbind.wasm)
  --out PATH          JSON results (default: target/bench/results.json; a .md table is
                      written next to it)
  --profile LIST      after the rounds, run these scenarios once more with `perf record -e
                      cpu-clock` attached to the server sidecar; reports go to
                      target/bench/perf-<id>.txt (needs perf: apt-get install linux-perf)
  --wait-quiet LOAD   before starting, wait until the 1-minute load average is below LOAD,
                      checking every 30 s, for at most --wait-max seconds (default 900)
  --wait-max SECS
";

struct Opts {
    rounds: usize,
    duration: u64,
    warmup: u64,
    latency: u64,
    connections: u32,
    scenarios: Option<Vec<String>>,
    pin: Pin,
    wasm: Option<PathBuf>,
    out: PathBuf,
    wait_quiet: Option<f64>,
    wait_max: u64,
    quick: bool,
    profile: Vec<String>,
    /// The `crypto` value for the tokenbind scenarios; None: not set (the filter's default).
    crypto: Option<String>,
    flood_duration: u64,
    flood_alg: ProofAlg,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        rounds: 3,
        duration: 10,
        warmup: 3,
        latency: 3,
        connections: 16,
        scenarios: None,
        pin: Pin::Split,
        wasm: None,
        out: tokenbind_integration::workspace_root().join("target/bench/results.json"),
        wait_quiet: None,
        wait_max: 900,
        quick: false,
        profile: Vec::new(),
        crypto: None,
        flood_duration: 60,
        flood_alg: ProofAlg::Es256,
    };
    let mut explicit = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("{flag}: not a number: {v}"))
        }
        match a.as_str() {
            "--rounds" => o.rounds = num(&a, value()?)?,
            "--duration" => o.duration = num(&a, value()?)?,
            "--warmup" => o.warmup = num(&a, value()?)?,
            "--latency" => o.latency = num(&a, value()?)?,
            "--connections" => o.connections = num(&a, value()?)?,
            "--scenarios" => {
                o.scenarios = Some(value()?.split(',').map(|s| s.trim().to_owned()).collect())
            }
            "--no-pin" => o.pin = Pin::None,
            "--pin" => {
                o.pin = match value()?.as_str() {
                    "split" => Pin::Split,
                    "server-alone" => Pin::ServerAlone,
                    "none" => Pin::None,
                    other => return Err(format!("--pin: unknown mode {other}")),
                }
            }
            "--wasm" => o.wasm = Some(PathBuf::from(value()?)),
            "--out" => o.out = PathBuf::from(value()?),
            "--wait-quiet" => o.wait_quiet = Some(num(&a, value()?)?),
            "--wait-max" => o.wait_max = num(&a, value()?)?,
            "--quick" => o.quick = true,
            "--profile" => o.profile = value()?.split(',').map(|s| s.trim().to_owned()).collect(),
            "--crypto" => {
                o.crypto = match value()?.as_str() {
                    // The filter's default: leave the key out (older builds reject it).
                    "auto" => None,
                    m @ ("host" | "wasm") => Some(m.to_owned()),
                    other => {
                        return Err(format!(
                            "--crypto: expected auto, host or wasm, not {other}"
                        ))
                    }
                }
            }
            "--flood-duration" => o.flood_duration = num(&a, value()?)?,
            "--flood-alg" => {
                o.flood_alg = match value()?.as_str() {
                    "ES256" => ProofAlg::Es256,
                    "EdDSA" => ProofAlg::EdDsa,
                    other => {
                        return Err(format!("--flood-alg: expected ES256 or EdDSA, not {other}"))
                    }
                }
            }
            "--help" | "-h" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}\n\n{HELP}")),
        }
        explicit.push(a);
    }
    if o.quick {
        let set = |flag: &str| explicit.iter().any(|e| e == flag);
        if !set("--rounds") {
            o.rounds = 1;
        }
        if !set("--duration") {
            o.duration = 3;
        }
        if !set("--warmup") {
            o.warmup = 1;
        }
        if !set("--latency") {
            o.latency = 1;
        }
        if !set("--flood-duration") {
            o.flood_duration = 10;
        }
    }
    if o.rounds == 0 || o.duration == 0 || o.connections == 0 {
        return Err("--rounds, --duration and --connections must be positive".into());
    }
    if o.flood_duration == 0 || o.flood_duration > flood::MAX_SECS {
        return Err(format!("--flood-duration must be between 1 and {} s: every proof of the flood carries iat = start + duration/2, and the filter accepts iat +-60 s", flood::MAX_SECS));
    }
    if o.duration > 45 || o.latency > 45 {
        return Err("--duration and --latency are at most 45 s: DPoP proofs are minted with iat = now, just before each run, and the filter accepts them for 60 s".into());
    }
    Ok(o)
}

/// Which processes share a CPU.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pin {
    /// wrk alone on one CPU; the system under test, both sidecars, on the other.
    Split,
    /// wrk and the client sidecar on one CPU; the server sidecar alone on the other.
    ServerAlone,
    None,
}

/// CPUs for wrk, the client sidecars and the server sidecars.
#[derive(Debug, Clone, Copy)]
struct Cpus {
    wrk: usize,
    client: usize,
    server: usize,
}

/// How a scenario's requests are made.
#[derive(Debug, Clone)]
enum Load {
    /// The same `Authorization` value on every request (empty: none).
    Static(String),
    /// A different token on every request, from the pool of `alg`. `fresh`: never reuse a
    /// token (the filter caches verified tokens); otherwise start from the pool's beginning
    /// every run (jwt_authn without its cache keeps no state).
    Pool { alg: TokenAlg, fresh: bool },
    /// A cached DPoP-bound token with a new proof on every request.
    Dpop { alg: ProofAlg },
}

/// What the scenario's server runs, for the sanity checks and counter checks.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Baseline,
    /// tokenbind with every path exempt.
    Exempt,
    JwtAuthn,
    Tokenbind {
        monitor: bool,
        expect_hits: bool,
    },
}

/// When a scenario runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    /// Every round, in the table.
    Rotation,
    /// Once after the rounds, for the server sidecar's memory (the RSS-per-VM section).
    Rss,
    /// Once at the end: the DPoP flood (its own section).
    Flood,
}

struct Scenario {
    id: String,
    title: String,
    server: Server,
    kind: Kind,
    load: Load,
    /// The scenario this one is compared with besides A (C with B, D-x with B-nocache-x).
    reference: Option<String>,
    role: Role,
    /// The server sidecar's `--concurrency`.
    concurrency: u32,
    // Running state.
    envoys: Option<Envoys>,
    authority: String,
    dpop: Option<DpopClient>,
    max_rps: f64,
    pool_offset: usize,
    runs: Vec<RunRecord>,
    latency_runs: Vec<wrk::Summary>,
    sanity: Vec<String>,
    errors: Vec<String>,
    warnings: Vec<String>,
    final_memory: Option<(u64, u64)>,
    final_cache_misses: u64,
    /// (VmHWM, VmRSS) of the server sidecar after start-up and the sanity checks.
    memory_after_start: Option<(u64, u64)>,
    /// What the server sidecar logged about its crypto backends (tokenbind servers).
    crypto_log: Option<stack::CryptoLog>,
    flood: Option<flood::Record>,
}

/// Error prefixes that keep a scenario from running at all.
const NOT_STARTED: &str = "not started";
const SANITY_FAILED: &str = "sanity check failed";

struct Envoys {
    server: Envoy,
    client: Envoy,
    client_port: u16,
}

/// The DPoP client of an E scenario: its key, its token (bound to the key) and the `htu`
/// found by the sanity probe.
struct DpopClient {
    key: ProofKey,
    token: String,
    htu: String,
}

/// Token minting: the integration harness's issuer for ES256 and EdDSA, jwt-simple's
/// RS256KeyPair (a fixed RSA-2048 key) for RS256.
struct Minter {
    issuer: TokenIssuer,
    rs256: jwt_simple::prelude::RS256KeyPair,
    now: i64,
}

impl Minter {
    fn claims(&self, subject: &str) -> Claims {
        Claims::standard(ISSUER, subject, AUDIENCE)
            .with("iat", self.now - 10)
            .with("nbf", self.now - 10)
            // Valid for far longer than any run.
            .with("exp", self.now + 6 * 3600)
    }

    fn sign(&self, alg: TokenAlg, claims: &Claims) -> Result<String, String> {
        Ok(match alg {
            TokenAlg::Es256 => self.issuer.sign(Alg::Es256, claims),
            TokenAlg::EdDsa => self.issuer.sign(Alg::EdDsa, claims),
            TokenAlg::Rs256 => rs256::sign(&self.rs256, &claims.0)?,
        })
    }

    /// Tokens `from..from + count` of the pool of `alg` (distinct by `jti`), on all CPUs.
    fn pool_tokens(&self, alg: TokenAlg, from: usize, count: usize) -> Result<Vec<String>, String> {
        let threads = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .max(1);
        let per = count.div_ceil(threads);
        let parts: Vec<Result<Vec<String>, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let start = from + t * per;
                    let end = (from + count).min(start + per);
                    s.spawn(move || {
                        (start..end)
                            .map(|i| {
                                let c = self
                                    .claims(CLIENT_ID)
                                    .with("jti", format!("{}-{i}", alg.name()));
                                self.sign(alg, &c)
                            })
                            .collect::<Result<Vec<_>, _>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("minting thread panicked".into()))
                })
                .collect()
        });
        let mut out = Vec::with_capacity(count);
        for p in parts {
            out.extend(p?);
        }
        Ok(out)
    }
}

/// Unique proofs for one run, on all CPUs, all with this `iat`.
fn mint_proofs(client: &DpopClient, count: usize, iat: u64) -> Vec<String> {
    let minter = ProofMinter::new(&client.key, "GET", &client.htu, &client.token);
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(1);
    let per = count.div_ceil(threads);
    std::thread::scope(|s| {
        let minter = &minter;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let start = (t * per) as u64;
                let end = (count as u64).min(start + per as u64);
                s.spawn(move || {
                    (start..end)
                        .map(|n| minter.proof(n, iat))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

struct Tokens {
    good: String,
    attacker_sub: String,
    /// Per algorithm, a valid token that is not in the pool (for the sanity checks, so that no
    /// pool token reaches the cache before its run).
    probe: HashMap<TokenAlg, String>,
    pools: HashMap<TokenAlg, Vec<String>>,
}

fn main() -> ExitCode {
    install_signal_handlers();
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("\ne2e: {e}");
            ExitCode::from(1)
        }
    }
}

fn say(msg: impl AsRef<str>) {
    eprintln!("==> {}", msg.as_ref());
}

fn wait_for_quiet(threshold: f64, max: u64) -> Result<(f64, f64, f64), String> {
    let started = Instant::now();
    loop {
        let l = procfs::loadavg();
        if l.0 < threshold {
            return Ok(l);
        }
        if started.elapsed() >= Duration::from_secs(max) {
            say(format!(
                "load average still {:.2} after {max} s; starting anyway (recorded in the results)",
                l.0
            ));
            return Ok(l);
        }
        say(format!(
            "load average {:.2} {:.2} {:.2} >= {threshold}; waiting 30 s ({} s so far)",
            l.0,
            l.1,
            l.2,
            started.elapsed().as_secs()
        ));
        for _ in 0..300 {
            if interrupted() {
                return Err("interrupted".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Every scenario, in the order of a round, then the ones that run once after the rounds.
/// `crypto`: the filter's `crypto` setting for the tokenbind scenarios (None: left out).
fn scenarios(config: &Value, crypto: Option<&str>, flood_alg: ProofAlg) -> Vec<Scenario> {
    let mut config = config.clone();
    if let Some(mode) = crypto {
        config["crypto"] = json!(mode);
    }
    let config = &config;
    let tokenbind = |monitor: bool| {
        let mut c = config.clone();
        if monitor {
            c["mode"] = json!("monitor");
        }
        Server::Tokenbind { config: c }
    };
    let variant = |key: &str, value: Value| {
        let mut c = config.clone();
        c[key] = value;
        Server::Tokenbind { config: c }
    };
    let cached = Kind::Tokenbind {
        monitor: false,
        expect_hits: true,
    };
    let cold = Kind::Tokenbind {
        monitor: false,
        expect_hits: false,
    };
    let list = vec![
        (
            "A",
            "baseline: mTLS, no auth filter (same request as C)",
            Server::Baseline,
            Kind::Baseline,
            Load::Static(String::new()),
            None,
        ),
        (
            "B",
            "jwt_authn (cache on) + RBAC sub == peer SPIFFE ID, ES256",
            Server::JwtAuthn { cache: true },
            Kind::JwtAuthn,
            Load::Static(String::new()),
            None,
        ),
        (
            "C",
            "tokenbind, cached ES256 token",
            tokenbind(false),
            Kind::Tokenbind {
                monitor: false,
                expect_hits: true,
            },
            Load::Static(String::new()),
            Some("B"),
        ),
        (
            "F",
            "tokenbind monitor mode, cached ES256 token",
            tokenbind(true),
            Kind::Tokenbind {
                monitor: true,
                expect_hits: true,
            },
            Load::Static(String::new()),
            Some("C"),
        ),
        // Diagnostics, to take C apart: the fixed cost of a Wasm filter that reads one header
        // and writes one filter-state value, and C without the filter-state writes.
        (
            "W",
            "diagnostic: tokenbind with every path exempt (Wasm filter floor)",
            variant("exempt_paths", json!(["/"])),
            Kind::Exempt,
            Load::Static(String::new()),
            None,
        ),
        (
            "C-nofs",
            "diagnostic: C with emit_filter_state off",
            variant("emit_filter_state", json!(false)),
            Kind::Tokenbind {
                monitor: false,
                expect_hits: true,
            },
            Load::Static(String::new()),
            Some("C"),
        ),
    ];
    let mut out: Vec<Scenario> = list
        .into_iter()
        .map(|(id, title, server, kind, load, reference)| {
            Scenario::new(id, title, server, kind, load, reference)
        })
        .collect();
    // E-x against B-nocache-x: a DPoP request (cached token, fresh proof) against one native
    // cold verification of a token of the same algorithm.
    for alg in [ProofAlg::Es256, ProofAlg::EdDsa] {
        let n = alg.name();
        out.push(Scenario::new(
            &format!("E-{n}"),
            &format!("tokenbind DPoP: cached token + fresh {n} proof"),
            tokenbind(false),
            cached,
            Load::Dpop { alg },
            Some(&format!("B-nocache-{n}")),
        ));
        if alg == ProofAlg::Es256 {
            out.push(Scenario::new(
                "E-ES256-wasm",
                "diagnostic: E-ES256 with crypto \"wasm\" (pure-Rust P-256)",
                variant("crypto", json!("wasm")),
                cached,
                Load::Dpop { alg },
                Some("E-ES256"),
            ));
        }
    }
    for alg in TokenAlg::ALL {
        let n = alg.name();
        out.push(Scenario::new(
            &format!("D-{n}"),
            &format!("tokenbind cold: new {n} token every request"),
            tokenbind(false),
            cold,
            Load::Pool { alg, fresh: true },
            Some(&format!("B-nocache-{n}")),
        ));
        if alg == TokenAlg::Es256 {
            out.push(Scenario::new(
                "D-ES256-wasm",
                "diagnostic: D-ES256 with crypto \"wasm\" (pure-Rust P-256)",
                variant("crypto", json!("wasm")),
                cold,
                Load::Pool { alg, fresh: true },
                Some("D-ES256"),
            ));
        }
        out.push(Scenario::new(
            &format!("B-nocache-{n}"),
            &format!("jwt_authn (no cache) + RBAC, same {n} pool"),
            Server::JwtAuthn { cache: false },
            Kind::JwtAuthn,
            Load::Pool { alg, fresh: false },
            None,
        ));
    }
    // Once after the rounds: the server sidecar with two workers (three Wasm VMs), for the
    // memory one more VM costs.
    let mut a2 = Scenario::new(
        "A-c2",
        "memory: A with the server sidecar at --concurrency 2",
        Server::Baseline,
        Kind::Baseline,
        Load::Static(String::new()),
        None,
    );
    a2.role = Role::Rss;
    a2.concurrency = 2;
    out.push(a2);
    let mut c2 = Scenario::new(
        "C-c2",
        "memory: C with the server sidecar at --concurrency 2",
        tokenbind(false),
        cached,
        Load::Static(String::new()),
        None,
    );
    c2.role = Role::Rss;
    c2.concurrency = 2;
    out.push(c2);
    // Once at the end: unique proofs at the highest rate the sidecar sustains, against the
    // default replay store (dpop.replay_cache left out) and the default iat window.
    let mut flood_config = config.clone();
    if let Some(dpop) = flood_config.get_mut("dpop").and_then(Value::as_object_mut) {
        dpop.remove("replay_cache");
    }
    let mut f = Scenario::new(
        "DPOP-FLOOD",
        &format!(
            "DPoP flood: unique {} proofs, default replay store",
            flood_alg.name()
        ),
        Server::Tokenbind {
            config: flood_config,
        },
        cached,
        Load::Dpop { alg: flood_alg },
        None,
    );
    f.role = Role::Flood;
    out.push(f);
    out
}

impl Scenario {
    fn new(
        id: &str,
        title: &str,
        server: Server,
        kind: Kind,
        load: Load,
        reference: Option<&str>,
    ) -> Scenario {
        Scenario {
            id: id.to_owned(),
            title: title.to_owned(),
            server,
            kind,
            load,
            reference: reference.map(str::to_owned),
            role: Role::Rotation,
            concurrency: 1,
            envoys: None,
            authority: String::new(),
            dpop: None,
            max_rps: 0.0,
            pool_offset: 0,
            runs: Vec::new(),
            latency_runs: Vec::new(),
            sanity: Vec::new(),
            errors: Vec::new(),
            warnings: Vec::new(),
            final_memory: None,
            final_cache_misses: 0,
            memory_after_start: None,
            crypto_log: None,
            flood: None,
        }
    }

    /// Whether its Envoys started and passed the sanity checks.
    fn runnable(&self) -> bool {
        self.envoys.is_some()
            && !self
                .errors
                .iter()
                .any(|e| e.starts_with(SANITY_FAILED) || e.starts_with(NOT_STARTED))
    }

    /// The `crypto` value in the scenario's filter configuration (None: not set, or not a
    /// tokenbind server).
    fn crypto_config(&self) -> Option<&str> {
        match &self.server {
            Server::Tokenbind { config } => config.get("crypto").and_then(Value::as_str),
            _ => None,
        }
    }

    fn envoys(&self) -> Result<&Envoys, String> {
        self.envoys
            .as_ref()
            .ok_or_else(|| format!("{}: Envoys not started", self.id))
    }
}

fn run() -> Result<ExitCode, String> {
    let opts = parse_args()?;
    if wrk::wrk_binary().is_none() {
        return Err("wrk not found: run scripts/bench.sh, or apt-get install -y wrk".into());
    }
    let envoy_bin = tokenbind_integration::envoy_bin();
    if !envoy_bin.is_file() {
        return Err(format!(
            "Envoy not found at {} (scripts/setup.sh installs it)",
            envoy_bin.display()
        ));
    }
    let wasm_src = opts
        .wasm
        .clone()
        .unwrap_or_else(tokenbind_integration::wasm_path);
    if !wasm_src.is_file() {
        return Err(format!(
            "filter module not found at {} (scripts/setup.sh builds it)",
            wasm_src.display()
        ));
    }
    if let Some(threshold) = opts.wait_quiet {
        wait_for_quiet(threshold, opts.wait_max)?;
    }
    let load_start = procfs::loadavg_text();
    let started_at = fixtures::now();
    let clock = Instant::now();
    say(format!("load average at start: {load_start}"));

    let tmp = tempfile::Builder::new()
        .prefix("tokenbind-bench-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    // Other builds may replace the module while this runs: measure a private copy.
    let wasm = tmp.path().join("tokenbind.wasm");
    fs::copy(&wasm_src, &wasm).map_err(|e| format!("copying {}: {e}", wasm_src.display()))?;
    let wasm_bytes = fs::read(&wasm).map_err(|e| format!("{}: {e}", wasm.display()))?;
    let wasm_sha = hex(&Sha256::digest(&wasm_bytes));
    let envoy_version = std::process::Command::new(&envoy_bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();

    let cpus = procfs::allowed_cpus();
    let pinning = match (opts.pin, cpus.first().copied(), cpus.get(1).copied()) {
        (Pin::Split, Some(a), Some(b)) => Some(Cpus {
            wrk: a,
            client: b,
            server: b,
        }),
        (Pin::ServerAlone, Some(a), Some(b)) => Some(Cpus {
            wrk: a,
            client: a,
            server: b,
        }),
        _ => None,
    };
    let pin_text = match pinning {
        Some(c) if c.client == c.server => format!(
            "split: wrk alone on CPU {}, client and server sidecars on CPU {}; Envoys --concurrency 1",
            c.wrk, c.server
        ),
        Some(c) => format!(
            "server-alone: wrk and client sidecars on CPU {}, server sidecars alone on CPU {}; Envoys --concurrency 1",
            c.wrk, c.server
        ),
        None => "not pinned; Envoys --concurrency 1".to_owned(),
    };
    let load_cpu = pinning.map(|c| c.wrk);
    say(format!("pinning: {pin_text}"));

    say("PKI, issuer keys, tokens");
    let pki = Pki::try_new().map_err(|e| format!("PKI: {e}"))?;
    let minter = Minter {
        issuer: TokenIssuer::new(ISSUER),
        rs256: rs256::key()?,
        now: fixtures::now() as i64,
    };
    let mut jwks = minter.issuer.jwks();
    jwks["keys"]
        .as_array_mut()
        .ok_or("issuer JWKS has no keys array")?
        .push(rs256::jwk(&minter.rs256));
    let config = plugin_config(&jwks, 10_000);
    let good = minter.sign(TokenAlg::Es256, &minter.claims(CLIENT_ID))?;
    let attacker_sub = minter.sign(TokenAlg::Es256, &minter.claims(ATTACKER_ID))?;
    let mut probe = HashMap::new();
    for alg in TokenAlg::ALL {
        let c = minter
            .claims(CLIENT_ID)
            .with("jti", format!("probe-{}", alg.name()));
        probe.insert(alg, minter.sign(alg, &c)?);
    }
    let mut tokens = Tokens {
        good,
        attacker_sub,
        probe,
        pools: HashMap::new(),
    };

    let mut all = scenarios(&config, opts.crypto.as_deref(), opts.flood_alg);
    if let Some(filter) = &opts.scenarios {
        all.retain(|s| {
            filter.iter().any(|f| match f.strip_suffix('*') {
                Some(prefix) => s.id.starts_with(prefix),
                None => s.id == *f,
            })
        });
        if all.is_empty() {
            return Err(format!("no scenario matches {filter:?}"));
        }
    }
    for sc in &mut all {
        if let Load::Static(auth) = &mut sc.load {
            // A carries the same header too (ignored), so every static scenario sends
            // byte-identical requests.
            *auth = format!("Bearer {}", tokens.good);
        }
        if let Load::Dpop { alg } = sc.load {
            let key = ProofKey::from_seed(alg, &format!("e2e-dpop-{}-{started_at}", alg.name()))?;
            let claims = minter.claims(CLIENT_ID).cnf_jkt(&key.jkt());
            let token = minter.sign(TokenAlg::Es256, &claims)?;
            sc.dpop = Some(DpopClient {
                key,
                token,
                htu: String::new(),
            });
        }
    }
    for alg in TokenAlg::ALL {
        let wanted = all
            .iter()
            .any(|s| matches!(s.load, Load::Pool { alg: a, .. } if a == alg));
        if wanted {
            let t = Instant::now();
            let pool = minter.pool_tokens(alg, 0, 4000)?;
            say(format!(
                "minted {} {} tokens in {:.1} s",
                pool.len(),
                alg.name(),
                t.elapsed().as_secs_f64()
            ));
            tokens.pools.insert(alg, pool);
        }
    }

    say(format!("starting {} pairs of Envoys", all.len()));
    for sc in &mut all {
        if interrupted() {
            return Err("interrupted".into());
        }
        // A server that refuses its configuration (e.g. a filter build without the `crypto`
        // key, in the -wasm variants) fails its scenario only.
        let server = match stack::start_server(&pki, &sc.server, &wasm, &jwks, sc.concurrency) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("    {:<16} did not start: {e}", sc.id);
                sc.errors.push(format!("{NOT_STARTED}: {e}"));
                continue;
            }
        };
        let port = stack::server_port(&server)?;
        let client = stack::start_client(&pki, port).map_err(|e| format!("{}: {e}", sc.id))?;
        let client_port = stack::client_port(&client)?;
        if let Some(c) = pinning {
            procfs::pin_process(server.pid(), c.server)?;
            procfs::pin_process(client.pid(), c.client)?;
        }
        sc.authority = format!("127.0.0.1:{client_port}");
        eprintln!(
            "    {:<16} server pid {:<7} :{port:<5}  client pid {:<7} :{client_port}",
            sc.id,
            server.pid(),
            client.pid()
        );
        sc.envoys = Some(Envoys {
            server,
            client,
            client_port,
        });
    }

    say("sanity checks (each scenario must allow the good request and deny a mismatched sub)");
    for sc in &mut all {
        if sc.envoys.is_none() {
            continue;
        }
        match sanity(sc, &tokens) {
            Ok(()) => eprintln!("    {:<16} ok: {}", sc.id, sc.sanity.join("; ")),
            Err(e) => {
                eprintln!("    {:<16} FAILED: {e}", sc.id);
                sc.errors.push(format!("{SANITY_FAILED}: {e}"));
            }
        }
        if let Some(e) = &sc.envoys {
            sc.memory_after_start = procfs::memory_kib(e.server.pid()).ok();
            if matches!(sc.server, Server::Tokenbind { .. }) {
                sc.crypto_log = stack::parse_crypto_log(&e.server.log());
            }
        }
    }
    let crypto_line = report::crypto_text(&crypto_views(&all));
    say(crypto_line.trim_end());

    let script = tmp.path().join("requests.lua");
    fs::write(&script, wrk::SCRIPT).map_err(|e| format!("writing the wrk script: {e}"))?;
    let ctx = Ctx {
        script: &script,
        dir: tmp.path(),
        connections: opts.connections,
        load_cpu,
        minter: &minter,
    };

    let with_role = |all: &[Scenario], role: Role| -> Vec<usize> {
        (0..all.len())
            .filter(|&i| all.get(i).is_some_and(|s| s.role == role))
            .collect()
    };
    let rotation = with_role(&all, Role::Rotation);
    if opts.warmup > 0 {
        say(format!("warm-up: {} s per scenario", opts.warmup));
        for &i in &rotation {
            run_scenario(&mut all, i, &mut tokens, &ctx, opts.warmup, Phase::Warmup)?;
        }
    }
    for round in 1..=opts.rounds {
        say(format!(
            "round {round}/{}: {} s per scenario (load average {})",
            opts.rounds,
            opts.duration,
            procfs::loadavg_text()
        ));
        for &i in &rotation {
            run_scenario(
                &mut all,
                i,
                &mut tokens,
                &ctx,
                opts.duration,
                Phase::Measure,
            )?;
            if opts.latency > 0 {
                run_scenario(&mut all, i, &mut tokens, &ctx, opts.latency, Phase::Latency)?;
            }
        }
    }
    if !opts.profile.is_empty() {
        say("profiling the server sidecars (perf record -e cpu-clock), not measured");
        let dir = opts
            .out
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        for &i in &rotation {
            let id = all.get(i).map(|s| s.id.clone()).unwrap_or_default();
            if opts.profile.contains(&id) {
                let report = dir.join(format!("perf-{id}.txt"));
                run_scenario(
                    &mut all,
                    i,
                    &mut tokens,
                    &ctx,
                    opts.duration,
                    Phase::Profile(&report),
                )?;
            }
        }
    }
    let rss = with_role(&all, Role::Rss);
    if !rss.is_empty() {
        say(format!(
            "memory: one {} s run of each server sidecar at --concurrency 2",
            opts.duration
        ));
        for &i in &rss {
            run_scenario(
                &mut all,
                i,
                &mut tokens,
                &ctx,
                opts.duration,
                Phase::Measure,
            )?;
        }
    }
    for i in with_role(&all, Role::Flood) {
        say(format!(
            "DPoP flood: {} s of unique {} proofs, {} connections, default replay store",
            opts.flood_duration,
            opts.flood_alg.name(),
            opts.connections
        ));
        flood::run(&mut all, i, &mut tokens, &ctx, opts.flood_duration)?;
    }
    for sc in &mut all {
        if let Some(e) = &sc.envoys {
            sc.final_memory = procfs::memory_kib(e.server.pid()).ok();
            if let Ok(stats) = stack::stats(&e.server) {
                sc.final_cache_misses = stats
                    .get("wasmcustom.tokenbind.cache.miss")
                    .copied()
                    .unwrap_or(0);
            }
        }
    }
    let load_end = procfs::loadavg_text();
    say(format!("load average at end: {load_end}"));

    let rows = report::rows(&all_views(&all, Role::Rotation));
    let rss_rows = report::rows(&all_views(&all, Role::Rss));
    let flood_record = all.iter().find(|s| s.role == Role::Flood);
    let flood_verdict = flood_record.map(|s| match &s.flood {
        Some(r) => r.verdict(),
        None => (
            None,
            format!("{} did not run: {}", s.id, s.errors.join("; ")),
        ),
    });
    let targets = report::targets_issue9(&rows, flood_verdict);
    let earlier = report::targets(&rows, wasm_bytes.len() as u64);
    let table = report::table(&rows);
    let crypto_text = report::crypto_text(&crypto_views(&all));
    let memory = report::memory(&rows, &rss_rows);
    let flood_text = flood_record.map(flood::text).unwrap_or_default();
    println!();
    println!("{table}");
    println!();
    print!("{crypto_text}");
    println!();
    print!("{}", memory.text);
    if !flood_text.is_empty() {
        println!();
        print!("{flood_text}");
    }
    println!();
    println!("{}", report::targets_text("Targets (issue 9)", &targets));
    println!(
        "{}",
        report::targets_text("Earlier targets (issue 6)", &earlier)
    );
    let meta = json!({
        "started_at_unix": started_at,
        "elapsed_s": clock.elapsed().as_secs(),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "machine": {"cpus_allowed": cpus, "model": procfs_cpu_model()},
        "envoy": envoy_version,
        "wasm": {"source": wasm_src, "bytes": wasm_bytes.len(), "sha256": wasm_sha},
        "settings": {
            "rounds": opts.rounds, "duration_s": opts.duration, "warmup_s": opts.warmup,
            "latency_run_s": opts.latency, "connections": opts.connections,
            "wrk_threads": 1, "pinning": pin_text, "quick": opts.quick,
        },
    });
    let extra = json!({
        "crypto": {
            "option": opts.crypto.as_deref().unwrap_or("auto (not set in the configuration)"),
            "scenarios": crypto_json(&all),
        },
        "memory_per_vm": memory.json,
        "dpop_flood": flood_record.map(flood::json),
        "targets_issue6": report::targets_json(&earlier),
    });
    let md_extra = format!("{crypto_text}\n{}\n{flood_text}", memory.text);
    report::write(
        &opts.out,
        &meta,
        &rows,
        &report::Extra {
            doc: &extra,
            targets: &targets,
            earlier: &earlier,
            table: &table,
            text: &md_extra,
        },
    )?;
    println!(
        "load average: start {load_start}, end {load_end}; results: {}",
        opts.out.display()
    );

    let mut bad: Vec<&Row> = rows.iter().filter(|r| !r.errors.is_empty()).collect();
    bad.extend(rss_rows.iter().filter(|r| !r.errors.is_empty()));
    let flood_errors: Vec<String> = flood_record
        .map(|s| {
            let mut e = s.errors.clone();
            if let Some(r) = &s.flood {
                e.extend(r.errors.iter().cloned());
            }
            e
        })
        .unwrap_or_default();
    if bad.is_empty() && flood_errors.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        println!();
        println!(
            "!!!!!!!! {} SCENARIO(S) HAD ERRORS: THEIR NUMBERS ARE NOT VALID !!!!!!!!",
            bad.len() + usize::from(!flood_errors.is_empty())
        );
        for r in bad {
            for e in &r.errors {
                println!("!!! {}: {e}", r.id);
            }
        }
        for e in &flood_errors {
            println!("!!! DPOP-FLOOD: {e}");
        }
        Ok(ExitCode::from(2))
    }
}

fn procfs_cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn all_views(all: &[Scenario], role: Role) -> Vec<report::View<'_>> {
    all.iter()
        .filter(|s| s.role == role)
        .map(|s| report::View {
            id: &s.id,
            title: &s.title,
            reference: s.reference.as_deref(),
            tokenbind_cold: matches!(s.load, Load::Pool { fresh: true, .. }),
            runs: &s.runs,
            latency_runs: &s.latency_runs,
            sanity: &s.sanity,
            errors: &s.errors,
            warnings: &s.warnings,
            final_memory: s.final_memory,
            final_cache_misses: s.final_cache_misses,
            memory_after_start: s.memory_after_start,
            concurrency: s.concurrency,
            crypto: crypto_of(s),
        })
        .collect()
}

/// A tokenbind scenario's crypto setting and the backends its server sidecar logged; None for
/// the others.
fn crypto_of(s: &Scenario) -> Option<report::Crypto> {
    if !matches!(s.server, Server::Tokenbind { .. }) {
        return None;
    }
    Some(report::Crypto {
        config: s.crypto_config().map(str::to_owned),
        log: s.crypto_log.clone(),
    })
}

fn crypto_views(all: &[Scenario]) -> Vec<(&str, report::Crypto)> {
    all.iter()
        .filter_map(|s| crypto_of(s).map(|c| (s.id.as_str(), c)))
        .collect()
}

fn crypto_json(all: &[Scenario]) -> Value {
    Value::Object(
        crypto_views(all)
            .into_iter()
            .map(|(id, c)| (id.to_owned(), c.to_json()))
            .collect(),
    )
}

/// Checks, through the client sidecar, that the scenario's server allows the legitimate
/// request and treats a token whose `sub` is another workload as it should.
fn sanity(sc: &mut Scenario, tokens: &Tokens) -> Result<(), String> {
    let port = sc.envoys()?.client_port;
    let authority = sc.authority.clone();
    let status = |headers: &[(&str, &str)]| -> Result<(u16, String), String> {
        let r = stack::get(port, &authority, headers)?;
        Ok((r.status, r.body_str()))
    };
    let expect = |what: &str, got: (u16, String), want: u16| -> Result<String, String> {
        if got.0 == want {
            Ok(format!("{what} -> {want}"))
        } else {
            Err(format!(
                "{what}: expected {want}, got {} {}",
                got.0,
                got.1.trim()
            ))
        }
    };
    let good = format!("Bearer {}", tokens.good);
    let stolen = format!("Bearer {}", tokens.attacker_sub);
    let mut done = Vec::new();
    match (sc.kind, &sc.load) {
        (Kind::Baseline, _) => done.push(expect("no token", status(&[])?, 200)?),
        (Kind::Exempt, _) => {
            done.push(expect(
                "token with another workload's sub (exempt)",
                status(&[("authorization", &stolen)])?,
                200,
            )?);
            done.push(expect(
                "good token (exempt)",
                status(&[("authorization", &good)])?,
                200,
            )?);
        }
        (Kind::JwtAuthn, load) => {
            done.push(expect(
                "good token",
                status(&[("authorization", &good)])?,
                200,
            )?);
            done.push(expect(
                "token with another workload's sub (RBAC)",
                status(&[("authorization", &stolen)])?,
                403,
            )?);
            done.push(expect("no token", status(&[])?, 401)?);
            if let Load::Pool { alg, .. } = load {
                let t = probe_token(tokens, *alg)?;
                done.push(expect(
                    &format!("{} pool token", alg.name()),
                    status(&[("authorization", &format!("Bearer {t}"))])?,
                    200,
                )?);
            }
        }
        (Kind::Tokenbind { monitor: true, .. }, _) => {
            let server = &sc.envoys()?.server;
            let before = stack::stats(server)?;
            done.push(expect(
                "good token",
                status(&[("authorization", &good)])?,
                200,
            )?);
            done.push(expect(
                "token with another workload's sub (monitor: allowed)",
                status(&[("authorization", &stolen)])?,
                200,
            )?);
            let after = stack::stats(server)?;
            let name = "wasmcustom.tokenbind.monitor.would_deny.spiffe_mismatch";
            if stack::delta(&before, &after, name) != 1 {
                return Err(format!("{name} did not count the mismatched sub"));
            }
            done.push("would_deny.spiffe_mismatch counted".into());
        }
        (Kind::Tokenbind { .. }, Load::Dpop { .. }) => {
            let client = sc.dpop.as_mut().ok_or("no DPoP client")?;
            let auth = format!("DPoP {}", client.token);
            // Which URI does the server sidecar rebuild? It sees the :authority wrk sends
            // through the client sidecar, and the scheme of its own (TLS) connection.
            let mut found = None;
            let mut tried = Vec::new();
            for scheme in ["https", "http"] {
                client.htu = format!("{scheme}://{authority}/");
                let proof = ProofMinter::new(&client.key, "GET", &client.htu, &client.token)
                    .proof(0, fixtures::now());
                let got = status(&[("authorization", &auth), ("dpop", &proof)])?;
                if got.0 == 200 {
                    found = Some(proof);
                    break;
                }
                tried.push(format!("{}: {} {}", client.htu, got.0, got.1.trim()));
            }
            let proof = found.ok_or_else(|| format!("no htu accepted: {}", tried.join("; ")))?;
            done.push(format!("DPoP proof with htu {} -> 200", client.htu));
            let replay = status(&[("authorization", &auth), ("dpop", &proof)])?;
            if replay.0 != 401 || !replay.1.contains("dpop_replayed") {
                return Err(format!(
                    "replayed proof: expected 401 dpop_replayed, got {} {}",
                    replay.0,
                    replay.1.trim()
                ));
            }
            done.push("replayed proof -> 401 dpop_replayed".into());
            let downgrade = status(&[("authorization", &format!("Bearer {}", client.token))])?;
            done.push(expect("DPoP-bound token as Bearer", downgrade, 401)?);
        }
        (Kind::Tokenbind { .. }, load) => {
            done.push(expect(
                "good token",
                status(&[("authorization", &good)])?,
                200,
            )?);
            let got = status(&[("authorization", &stolen)])?;
            if got.0 != 401 || !got.1.contains("spiffe_mismatch") {
                return Err(format!(
                    "token with another workload's sub: expected 401 spiffe_mismatch, got {} {}",
                    got.0,
                    got.1.trim()
                ));
            }
            done.push("token with another workload's sub -> 401 spiffe_mismatch".into());
            if let Load::Pool { alg, .. } = load {
                let t = probe_token(tokens, *alg)?;
                done.push(expect(
                    &format!("{} pool token", alg.name()),
                    status(&[("authorization", &format!("Bearer {t}"))])?,
                    200,
                )?);
            }
        }
    }
    sc.sanity = done;
    Ok(())
}

fn probe_token(tokens: &Tokens, alg: TokenAlg) -> Result<&str, String> {
    tokens
        .probe
        .get(&alg)
        .map(String::as_str)
        .ok_or_else(|| format!("no {} probe token", alg.name()))
}

struct Ctx<'a> {
    script: &'a Path,
    dir: &'a Path,
    connections: u32,
    load_cpu: Option<usize>,
    minter: &'a Minter,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase<'a> {
    Warmup,
    /// An unmeasured run that only finds the scenario's rate (DPOP-FLOOD without an E run).
    Probe,
    Measure,
    Latency,
    /// An unmeasured run with perf attached to the server sidecar; the report goes here.
    Profile(&'a Path),
}

/// Requests a run of `secs` may send, generously: the fastest rate seen so far (or a guess),
/// times 1.5, plus 1000.
fn budget(rate: f64, secs: u64) -> usize {
    (rate * secs as f64 * 1.5) as usize + 1000
}

/// One wrk run of scenario `i`.
fn run_scenario(
    all: &mut [Scenario],
    i: usize,
    tokens: &mut Tokens,
    ctx: &Ctx<'_>,
    secs: u64,
    phase: Phase<'_>,
) -> Result<(), String> {
    if interrupted() {
        return Err("interrupted".into());
    }
    // The rate estimate for sizing pools: this scenario's best so far, else C's (nothing
    // tokenbind does is faster than a cache hit), else a guess.
    let c_rate = all.iter().find(|s| s.id == "C").map_or(0.0, |s| s.max_rps);
    let Some(sc) = all.get_mut(i) else {
        return Ok(());
    };
    if !sc.runnable() {
        return Ok(());
    }
    let rate = if sc.max_rps > 0.0 {
        sc.max_rps
    } else if c_rate > 0.0 {
        c_rate
    } else {
        4000.0
    };
    let connections = if phase == Phase::Latency {
        1
    } else {
        ctx.connections
    };
    let file = ctx.dir.join(format!("requests-{}.txt", sc.id));
    let mut consumed_from_pool = None;
    let lines: Vec<String> = match &sc.load {
        Load::Static(auth) => vec![auth.clone()],
        Load::Pool { alg, fresh } => {
            let need = budget(rate, secs);
            let start = if *fresh { sc.pool_offset } else { 0 };
            let pool = tokens.pools.entry(*alg).or_default();
            if *fresh && pool.len() < start + need {
                let more = start + need - pool.len();
                let t = Instant::now();
                let minted = ctx.minter.pool_tokens(*alg, pool.len(), more)?;
                pool.extend(minted);
                eprintln!(
                    "    minted {more} more {} tokens ({} in the pool) in {:.1} s",
                    alg.name(),
                    pool.len(),
                    t.elapsed().as_secs_f64()
                );
            }
            let end = (start + need).min(pool.len());
            if *fresh {
                consumed_from_pool = Some(start);
            }
            pool.get(start..end)
                .unwrap_or_default()
                .iter()
                .map(|t| format!("Bearer {t}"))
                .collect()
        }
        Load::Dpop { .. } => {
            let client = sc.dpop.as_ref().ok_or("no DPoP client")?;
            let need = budget(rate, secs);
            let auth = format!("DPoP {}", client.token);
            let t = Instant::now();
            let proofs = mint_proofs(client, need, fixtures::now());
            if phase != Phase::Latency {
                eprintln!(
                    "    minted {need} {} proofs (iat = now) in {:.1} s",
                    client.key.alg().name(),
                    t.elapsed().as_secs_f64()
                );
            }
            proofs.into_iter().map(|p| format!("{auth}\t{p}")).collect()
        }
    };
    let planned = lines.len();
    write_requests(&file, lines)?;

    let profile = match phase {
        Phase::Profile(report) => Some(report),
        _ => None,
    };
    let Measured {
        summary,
        wall_s,
        server_cpu_s,
        client_cpu_s,
        before,
        after,
        memory: (hwm, rss),
        ..
    } = measure(sc, ctx, &file, connections, secs, profile)?;

    if let Some(start) = consumed_from_pool {
        // Never hand these tokens out again: the filter may have cached them.
        sc.pool_offset = start + summary.requests as usize + 2 * connections as usize + 100;
    }
    if matches!(phase, Phase::Warmup | Phase::Probe | Phase::Measure) {
        sc.max_rps = sc.max_rps.max(summary.rps());
    }

    // Every response must be the direct_response 200.
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    if summary.requests == 0 {
        errors.push("no request completed".to_owned());
    }
    for (what, n) in &summary.errors {
        errors.push(format!("wrk: {n} {what} errors"));
    }
    let d = |name: &str| stack::delta(&before, &after, name);
    let ok = d("http.ingress.downstream_rq_2xx");
    let not_ok = d("http.ingress.downstream_rq_4xx") + d("http.ingress.downstream_rq_5xx");
    if not_ok > 0 {
        errors.push(format!(
            "server sidecar answered {not_ok} non-2xx responses"
        ));
    }
    if ok < summary.requests {
        errors.push(format!(
            "server sidecar answered {ok} 2xx for {} requests wrk completed",
            summary.requests
        ));
    }
    if summary.requests as usize > planned && matches!(sc.load, Load::Dpop { .. }) {
        errors.push(format!(
            "wrk sent more requests ({}) than there were proofs ({planned}): proofs were replayed",
            summary.requests
        ));
    }
    let mut counters = serde_json::Map::new();
    match sc.kind {
        Kind::Baseline => {}
        Kind::Exempt => {
            let exempt = d("wasmcustom.tokenbind.exempt");
            counters.insert("tokenbind.exempt".into(), json!(exempt));
            if exempt < summary.requests {
                errors.push(format!(
                    "tokenbind exempted {exempt} of {} requests",
                    summary.requests
                ));
            }
        }
        Kind::JwtAuthn => {
            for name in [
                "http.ingress.jwt_authn.allowed",
                "http.ingress.jwt_authn.denied",
                "http.ingress.jwt_authn.jwt_cache_hit",
                "http.ingress.jwt_authn.jwt_cache_miss",
                "http.ingress.rbac.allowed",
                "http.ingress.rbac.denied",
            ] {
                counters.insert(name.into(), json!(d(name)));
            }
            if d("http.ingress.jwt_authn.allowed") < summary.requests
                || d("http.ingress.rbac.allowed") < summary.requests
            {
                errors.push("jwt_authn/RBAC did not allow every request".into());
            }
        }
        Kind::Tokenbind {
            monitor,
            expect_hits,
        } => {
            let allowed = d("wasmcustom.tokenbind.allowed");
            let hits = d("wasmcustom.tokenbind.cache.hit");
            let misses = d("wasmcustom.tokenbind.cache.miss");
            let host_errors = d("wasmcustom.tokenbind.crypto.host_error");
            counters.insert("tokenbind.crypto.host_error".into(), json!(host_errors));
            if host_errors > 0 {
                warnings.push(format!(
                    "{host_errors} host signature checks failed and fell back to pure Rust"
                ));
            }
            let would_deny: u64 = after
                .keys()
                .filter(|k| k.starts_with("wasmcustom.tokenbind.monitor.would_deny."))
                .map(|k| d(k))
                .sum();
            counters.insert("tokenbind.allowed".into(), json!(allowed));
            counters.insert("tokenbind.cache.hit".into(), json!(hits));
            counters.insert("tokenbind.cache.miss".into(), json!(misses));
            if monitor {
                counters.insert("tokenbind.monitor.would_deny.*".into(), json!(would_deny));
                if would_deny > 0 {
                    errors.push(format!(
                        "monitor mode counted {would_deny} would-deny decisions"
                    ));
                }
            }
            if allowed < summary.requests {
                errors.push(format!(
                    "tokenbind allowed {allowed} of {} requests",
                    summary.requests
                ));
            }
            if matches!(phase, Phase::Measure | Phase::Latency) {
                if expect_hits && misses > 0 {
                    warnings.push(format!("{misses} cache misses where all should hit"));
                }
                if !expect_hits && hits > 0 {
                    warnings.push(format!(
                        "{hits} cache hits where every token should be new (pool reused)"
                    ));
                }
            }
        }
    }
    let label = match phase {
        Phase::Warmup => "warm-up",
        Phase::Probe => "probe",
        Phase::Measure => "measure",
        Phase::Latency => "latency",
        Phase::Profile(_) => "profile",
    };
    eprintln!(
        "    {:<16} {label:<8} {:>8.0} req/s  p50 {:>7.0} us  p99 {:>7.0} us  server CPU {:>5.1}%  {}",
        sc.id,
        summary.rps(),
        summary.p50_us,
        summary.p99_us,
        100.0 * server_cpu_s / wall_s.max(1e-9),
        if errors.is_empty() { "ok".to_owned() } else { format!("ERRORS: {}", errors.join("; ")) }
    );
    for e in &errors {
        sc.errors.push(format!("{label}: {e}"));
    }
    for w in warnings {
        if !sc.warnings.contains(&w) {
            sc.warnings.push(w);
        }
    }
    match phase {
        Phase::Warmup | Phase::Probe | Phase::Profile(_) => {}
        Phase::Latency => sc.latency_runs.push(summary),
        Phase::Measure => sc.runs.push(RunRecord {
            wrk: summary,
            wall_s,
            server_cpu_s,
            client_cpu_s,
            server_2xx: ok,
            hwm_kib: hwm,
            rss_kib: rss,
            counters: Value::Object(counters),
            planned,
        }),
    }
    Ok(())
}

/// Writes one request per line (see [`wrk::SCRIPT`]).
fn write_requests(file: &Path, lines: Vec<String>) -> Result<(), String> {
    fs::write(file, lines.join("\n") + "\n").map_err(|e| format!("{}: {e}", file.display()))
}

/// Seconds since the Unix epoch, with fractions.
fn unix_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Sleeps for `d`, returning early with an error on SIGINT/SIGTERM.
fn sleep_interruptibly(d: Duration) -> Result<(), String> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if interrupted() {
            return Err("interrupted".into());
        }
        std::thread::sleep(
            until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100)),
        );
    }
    Ok(())
}

/// What one wrk run measured.
struct Measured {
    summary: wrk::Summary,
    wall_s: f64,
    server_cpu_s: f64,
    client_cpu_s: f64,
    /// The server sidecar's stats before and after the run.
    before: HashMap<String, u64>,
    after: HashMap<String, u64>,
    /// (VmHWM, VmRSS) of the server sidecar after the run.
    memory: (u64, u64),
    /// Unix time when wrk was started, and when it had exited.
    started_unix: f64,
    ended_unix: f64,
}

/// Runs wrk once against `sc` with the requests in `file`, reading the server sidecar's CPU
/// time, stats and memory around it (and with perf attached if `profile` names a report).
fn measure(
    sc: &Scenario,
    ctx: &Ctx<'_>,
    file: &Path,
    connections: u32,
    secs: u64,
    profile: Option<&Path>,
) -> Result<Measured, String> {
    let envoys = sc.envoys()?;
    let server_pid = envoys.server.pid();
    let url = format!("http://127.0.0.1:{}/", envoys.client_port);
    let before = stack::stats(&envoys.server)?;
    let cpu0 = procfs::cpu_seconds(server_pid)?;
    let client_cpu0 = procfs::cpu_seconds(envoys.client.pid())?;
    let perf = match profile {
        Some(report) => Some(profile::Perf::start(server_pid, report)?),
        None => None,
    };
    let started_unix = unix_time();
    let wall = Instant::now();
    let summary = wrk::run(
        &wrk::Run {
            script: ctx.script,
            requests_file: file,
            url: &url,
            host: &sc.authority,
            connections,
            duration: Duration::from_secs(secs),
            cpu: ctx.load_cpu,
        },
        ctx.dir,
    )
    .map_err(|e| format!("{}: {e}", sc.id))?;
    let wall_s = wall.elapsed().as_secs_f64();
    let ended_unix = unix_time();
    if let Some(perf) = perf {
        let path = perf.finish()?;
        eprintln!("    {:<16} profile written to {}", sc.id, path.display());
    }
    let cpu1 = procfs::cpu_seconds(server_pid)?;
    let client_cpu1 = procfs::cpu_seconds(envoys.client.pid())?;
    let after = stack::stats(&envoys.server)?;
    let memory = procfs::memory_kib(server_pid)?;
    Ok(Measured {
        summary,
        wall_s,
        server_cpu_s: cpu1 - cpu0,
        client_cpu_s: client_cpu1 - client_cpu0,
        before,
        after,
        memory,
        started_unix,
        ended_unix,
    })
}
