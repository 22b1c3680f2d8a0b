//! SOAK: floods one server sidecar of the benchmark topology (client sidecar -> mTLS -> server
//! sidecar with tokenbind -> direct response) with requests that are all new to it: every
//! request carries a token never seen before, and every other request is DPoP-bound and carries
//! a proof never seen before. Nothing is ever a cache hit, so the verified-token cache sits at
//! its cap and the DPoP replay store holds every proof of the last `iat` window: the filter's
//! worst case for memory. It runs with the filter's defaults (`cache.max_entries`,
//! `dpop.replay_cache.max_entries`, the `iat` window), and prints the server sidecar's RSS over
//! time and its refusals by reason, then a summary: RSS after warm-up (min, max, least-squares
//! slope) and every `tokenbind.denied.*` counter that rose.
//!
//! Tokens and proofs are minted on the fly (ES256, natively), one connection per load thread.
//!
//!   cargo run --release -p tokenbind-benches --bin soak -- [--minutes N] [--connections N]
//!       [--interval SECS] [--warmup SECS] [--wasm PATH] [--out FILE]

#[allow(dead_code)]
#[path = "e2e/procfs.rs"]
mod procfs;
#[allow(dead_code)]
#[path = "e2e/stack.rs"]
mod stack;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokenbind_benches::fixtures::{
    self, Issuer, ProofAlg, ProofKey, ProofMinter, TokenAlg, CLIENT_ID,
};
use tokenbind_core::config::{DEFAULT_CACHE_ENTRIES, DEFAULT_REPLAY_ENTRIES};
use tokenbind_integration::client::{parse_response, read_response};
use tokenbind_integration::pki::Pki;

use crate::stack::Server;

const HELP: &str = "\
soak: unique tokens and unique DPoP proofs into one tokenbind server sidecar; RSS over time.

  --minutes N       how long to flood (default 10)
  --connections N   load threads, one keep-alive connection each (default 4)
  --interval SECS   seconds between samples (default 15)
  --warmup SECS     samples before this are warm-up, left out of the summary (default 120:
                    the replay store fills for one iat window, 60 s, plus a margin)
  --wasm PATH       the filter module (default target/wasm32-wasip1/release/tokenbind.wasm)
  --out FILE        JSON results (default target/bench/soak.json)
";

/// The Host header (and so the `htu` authority) of every request.
const AUTHORITY: &str = "server.soak";
const DENIED: &str = "wasmcustom.tokenbind.denied.";
const ALLOWED: &str = "wasmcustom.tokenbind.allowed";

struct Opts {
    minutes: u64,
    connections: usize,
    interval: u64,
    warmup: u64,
    wasm: PathBuf,
    out: PathBuf,
}

fn parse_args() -> Result<Opts, String> {
    let root = tokenbind_integration::workspace_root();
    let mut o = Opts {
        minutes: 10,
        connections: 4,
        interval: 15,
        warmup: 120,
        wasm: tokenbind_integration::wasm_path(),
        out: root.join("target/bench/soak.json"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("{flag}: not a number: {v}"))
        }
        match a.as_str() {
            "--minutes" => o.minutes = num(&a, value()?)?,
            "--connections" => o.connections = num(&a, value()?)?,
            "--interval" => o.interval = num(&a, value()?)?,
            "--warmup" => o.warmup = num(&a, value()?)?,
            "--wasm" => o.wasm = PathBuf::from(value()?),
            "--out" => o.out = PathBuf::from(value()?),
            "--help" | "-h" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}\n\n{HELP}")),
        }
    }
    if o.minutes == 0 || o.connections == 0 || o.interval == 0 {
        return Err("--minutes, --connections and --interval must be positive".into());
    }
    Ok(o)
}

fn say(msg: impl AsRef<str>) {
    eprintln!("==> {}", msg.as_ref());
}

/// What the load threads count.
#[derive(Default)]
struct Counts {
    bearer: AtomicU64,
    dpop: AtomicU64,
    ok: AtomicU64,
    /// Responses other than 200, by status.
    other: [AtomicU64; 6],
    /// Connection failures (each one reconnects).
    io_errors: AtomicU64,
}

impl Counts {
    fn status(&self, status: u16) {
        if status == 200 {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            let class = usize::from(status / 100).min(5);
            if let Some(c) = self.other.get(class) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn sent(&self) -> u64 {
        self.bearer.load(Ordering::Relaxed) + self.dpop.load(Ordering::Relaxed)
    }

    fn non_200(&self) -> u64 {
        self.other.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// One sample of the server sidecar.
struct Sample {
    t_s: f64,
    rss_kib: u64,
    hwm_kib: u64,
    requests: u64,
    allowed: u64,
    denied: BTreeMap<String, u64>,
}

/// One load thread: a keep-alive connection to the client sidecar; even requests carry a new
/// bearer token bound to the client's SPIFFE ID, odd ones a new DPoP-bound token and a new
/// proof for it.
fn load(
    thread: usize,
    port: u16,
    issuer: &Issuer,
    stop: &AtomicBool,
    counts: &Counts,
) -> Result<(), String> {
    let key = ProofKey::from_seed(
        ProofAlg::Es256,
        &format!("soak-{thread}-{}", fixtures::now()),
    )?;
    let jkt = key.jkt();
    let htu = format!("https://{AUTHORITY}/");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn: Option<TcpStream> = None;
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let now = fixtures::now();
        let mut claims = fixtures::claims(CLIENT_ID, now, 600);
        claims.insert("jti".into(), json!(format!("soak-{thread}-{now}-{n}")));
        let dpop = n % 2 == 1;
        if dpop {
            claims.insert("cnf".into(), json!({ "jkt": jkt }));
        }
        let token = issuer.sign(TokenAlg::Es256, &claims)?;
        let mut req = format!("GET / HTTP/1.1\r\nhost: {AUTHORITY}\r\n");
        if dpop {
            let proof = ProofMinter::new(&key, "GET", &htu, &token).proof(n, now);
            req.push_str(&format!(
                "authorization: DPoP {token}\r\ndpop: {proof}\r\n\r\n"
            ));
            counts.dpop.fetch_add(1, Ordering::Relaxed);
        } else {
            req.push_str(&format!("authorization: Bearer {token}\r\n\r\n"));
            counts.bearer.fetch_add(1, Ordering::Relaxed);
        }
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => {
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                    .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
                s.set_read_timeout(Some(Duration::from_secs(15)))
                    .map_err(|e| e.to_string())?;
                conn.insert(s)
            }
        };
        let result = stream
            .write_all(req.as_bytes())
            .and_then(|()| read_response(stream));
        match result.map(|buf| parse_response(&buf)) {
            Ok(Ok(resp)) => {
                counts.status(resp.status);
                if resp.header("connection") == Some("close") {
                    conn = None;
                }
            }
            _ => {
                counts.io_errors.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
    }
    Ok(())
}

fn denied(stats: &std::collections::HashMap<String, u64>) -> BTreeMap<String, u64> {
    stats
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(DENIED)?.to_owned(), *v)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Least-squares slope of RSS (MiB) over time (minutes).
fn slope_mib_per_min(samples: &[&Sample]) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return 0.0;
    }
    let xs: Vec<f64> = samples.iter().map(|s| s.t_s / 60.0).collect();
    let ys: Vec<f64> = samples.iter().map(|s| mib(s.rss_kib)).collect();
    let mx = xs.iter().sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if var == 0.0 {
        0.0
    } else {
        cov / var
    }
}

fn run() -> Result<ExitCode, String> {
    let opts = parse_args()?;
    if !opts.wasm.is_file() {
        return Err(format!(
            "filter module not found at {} (scripts/setup.sh builds it)",
            opts.wasm.display()
        ));
    }
    let tmp = tempfile::Builder::new()
        .prefix("tokenbind-soak-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let wasm = tmp.path().join("tokenbind.wasm");
    std::fs::copy(&opts.wasm, &wasm).map_err(|e| format!("copying the module: {e}"))?;

    let issuer = Arc::new(Issuer::deterministic()?);
    let jwks = issuer.jwks()?;
    // The benchmark configuration with the filter's own defaults for every store.
    let mut config = fixtures::plugin_config(&jwks, DEFAULT_CACHE_ENTRIES);
    if let Some(c) = config.as_object_mut() {
        c.remove("cache");
        c.insert("dpop".into(), json!({}));
    }
    let pki = Pki::new();
    let server = stack::start_server(
        &pki,
        &Server::Tokenbind {
            config: config.clone(),
        },
        &wasm,
        &jwks,
        1,
    )?;
    let client = stack::start_client(&pki, stack::server_port(&server)?)?;
    let port = stack::client_port(&client)?;
    let pid = server.pid();
    say(format!(
        "server sidecar pid {pid} (--concurrency 1), client sidecar on 127.0.0.1:{port}; \
         defaults: cache.max_entries {DEFAULT_CACHE_ENTRIES}, dpop.replay_cache.max_entries \
         {DEFAULT_REPLAY_ENTRIES}"
    ));
    say(format!(
        "flooding for {} min with {} connections: every request a new ES256 token, every other one DPoP-bound with a new proof",
        opts.minutes, opts.connections
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let start_stats = stack::stats(&server)?;
    let threads: Vec<_> = (0..opts.connections)
        .map(|t| {
            let (issuer, stop, counts) = (issuer.clone(), stop.clone(), counts.clone());
            std::thread::spawn(move || load(t, port, &issuer, &stop, &counts))
        })
        .collect();

    let mut samples: Vec<Sample> = Vec::new();
    let total = Duration::from_secs(opts.minutes * 60);
    let mut next = Duration::ZERO;
    println!(
        "{:>6}  {:>9}  {:>9}  {:>10}  {:>8}  refusals (tokenbind.denied.*)",
        "t (s)", "RSS MiB", "HWM MiB", "requests", "req/s"
    );
    let mut last_requests = 0u64;
    let mut last_t = 0.0f64;
    loop {
        let elapsed = started.elapsed();
        if elapsed >= next {
            let (hwm, rss) = procfs::memory_kib(pid)?;
            let stats = stack::stats(&server)?;
            let t_s = elapsed.as_secs_f64();
            let requests = counts.sent();
            let d = denied(&stats);
            let rate = (requests - last_requests) as f64 / (t_s - last_t).max(0.001);
            (last_requests, last_t) = (requests, t_s);
            println!(
                "{t_s:>6.0}  {:>9.1}  {:>9.1}  {requests:>10}  {rate:>8.0}  {}",
                mib(rss),
                mib(hwm),
                if d.is_empty() {
                    "none".to_owned()
                } else {
                    d.iter()
                        .map(|(r, n)| format!("{r} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
            samples.push(Sample {
                t_s,
                rss_kib: rss,
                hwm_kib: hwm,
                requests,
                allowed: stats
                    .get(ALLOWED)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(start_stats.get(ALLOWED).copied().unwrap_or(0)),
                denied: d,
            });
            if elapsed >= total {
                break;
            }
            next += Duration::from_secs(opts.interval);
            next = next.min(total);
        }
        if threads.iter().all(|t| t.is_finished()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a load thread panicked".into()),
        }
    }

    let warm: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t_s >= opts.warmup as f64)
        .collect();
    let last = samples.last().ok_or("no sample taken")?;
    let secs = last.t_s;
    let min = warm.iter().map(|s| s.rss_kib).min().unwrap_or(0);
    let max = warm.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let slope = slope_mib_per_min(&warm);
    let refusals: u64 = last.denied.values().sum();
    let non_200 = counts.non_200();
    println!();
    println!(
        "soak: {} requests in {secs:.0} s ({:.0} req/s; {} bearer, {} DPoP), {} allowed by the filter, {} x 200, {} non-200 ({}), {} connection errors",
        last.requests,
        last.requests as f64 / secs.max(1.0),
        counts.bearer.load(Ordering::Relaxed),
        counts.dpop.load(Ordering::Relaxed),
        last.allowed,
        counts.ok.load(Ordering::Relaxed),
        non_200,
        counts
            .other
            .iter()
            .enumerate()
            .filter(|(_, c)| c.load(Ordering::Relaxed) > 0)
            .map(|(i, c)| format!("{i}xx {}", c.load(Ordering::Relaxed)))
            .collect::<Vec<_>>()
            .join(", "),
        counts.io_errors.load(Ordering::Relaxed),
    );
    if warm.is_empty() {
        println!("soak: no sample after the {} s warm-up", opts.warmup);
    } else {
        println!(
            "soak: RSS after the {} s warm-up ({} samples): min {:.1} MiB, max {:.1} MiB, spread {:.1} MiB, slope {:+.2} MiB/min; HWM at the end {:.1} MiB",
            opts.warmup,
            warm.len(),
            mib(min),
            mib(max),
            mib(max - min),
            slope,
            mib(last.hwm_kib)
        );
    }
    println!(
        "soak: refusals by reason: {}",
        if last.denied.is_empty() {
            "none".to_owned()
        } else {
            last.denied
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let record = json!({
        "minutes": opts.minutes,
        "connections": opts.connections,
        "warmup_s": opts.warmup,
        "config": config,
        "requests": last.requests,
        "allowed": last.allowed,
        "non_200": non_200,
        "io_errors": counts.io_errors.load(Ordering::Relaxed),
        "rss_after_warmup_kib": {"min": min, "max": max},
        "slope_mib_per_min": slope,
        "refusals": last.denied,
        "samples": samples.iter().map(|s| json!({
            "t_s": s.t_s, "rss_kib": s.rss_kib, "hwm_kib": s.hwm_kib,
            "requests": s.requests, "allowed": s.allowed, "denied": s.denied,
        })).collect::<Vec<Value>>(),
        "errors": errors,
    });
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(&opts.out, format!("{record:#}\n"))
        .map_err(|e| format!("{}: {e}", opts.out.display()))?;
    say(format!("results: {}", opts.out.display()));
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    // Every request is new and valid: any refusal or non-200 means the run is not clean.
    Ok(if refusals == 0 && non_200 == 0 && last.requests > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("\nsoak: {e}");
            ExitCode::from(1)
        }
    }
}
