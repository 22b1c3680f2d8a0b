//! A real Envoy process for tests.
//!
//! * The bootstrap is written as JSON into a per-instance temp dir.
//! * Admin and listeners bind 127.0.0.1 port 0; real ports are read from
//!   `--admin-address-path` and `GET /listeners?format=json`.
//! * `--disable-hot-restart` so parallel instances share nothing.
//! * Start-up waits (bounded) for `/ready` to say `LIVE`; if Envoy exits
//!   first, the error carries its log.
//! * Drop kills (SIGKILL) and reaps the process. As a second line of defence
//!   every Envoy is spawned from one long-lived thread with
//!   `PR_SET_PDEATHSIG = SIGKILL`, so it also dies if the test process dies
//!   without running destructors (abort, SIGKILL, `static` fixtures).

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::client::{parse_response, read_response};
use crate::pki::Pki;
use crate::{envoy_bin, LISTENER, UPSTREAM_BODY};

/// Prefix Envoy 1.40 puts in front of metric names defined by a Wasm module
/// (proxy_define_metric) in admin `/stats` output: the filter's
/// `tokenbind.allowed` is printed as `wasmcustom.tokenbind.allowed`.
/// Verified against Envoy 1.40.0 (tests/monitor.rs reads the full name).
/// The Prometheus endpoint strips it again (`tokenbind_allowed`).
pub const WASM_METRIC_PREFIX: &str = "wasmcustom.";

/// How to run Envoy.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    /// `--concurrency` (worker threads). Default 1, so the filter has one
    /// worker VM and one token cache.
    pub concurrency: u32,
    /// `-l`. Default `info`. (At `debug` Envoy's own HTTP codec logs request
    /// headers, tokens included, so token-leak checks must use `info`.)
    pub log_level: String,
    /// `--component-log-level`, e.g. `wasm:debug`.
    pub component_log_level: Option<String>,
    /// Upper bound for start-up (spawn to `/ready` = LIVE).
    pub startup_timeout: Duration,
    /// Extra command-line arguments.
    pub extra_args: Vec<String>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        EnvoyOptions {
            concurrency: 1,
            log_level: "info".to_string(),
            component_log_level: None,
            startup_timeout: Duration::from_secs(30),
            extra_args: Vec::new(),
        }
    }
}

/// Why Envoy is not running.
#[derive(Debug)]
pub enum StartError {
    /// No Envoy binary at the path.
    MissingBinary(PathBuf),
    /// Could not set up the temp dir or spawn the process.
    Io(String),
    /// Envoy exited during start-up (e.g. it rejected the configuration).
    Exited { status: ExitStatus, log: String },
    /// Envoy did not become LIVE in time (it has been killed).
    Timeout { waited: Duration, log: String },
}

impl StartError {
    /// Envoy's log output, if it got far enough to write any.
    pub fn log(&self) -> Option<&str> {
        match self {
            StartError::Exited { log, .. } | StartError::Timeout { log, .. } => Some(log),
            _ => None,
        }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::MissingBinary(p) => write!(
                f,
                "Envoy binary not found at {} (override with ENVOY_BIN); run scripts/test.sh",
                p.display()
            ),
            StartError::Io(e) => write!(f, "could not start Envoy: {e}"),
            StartError::Exited { status, log } => {
                write!(f, "Envoy exited during start-up ({status}). Log:\n{log}")
            }
            StartError::Timeout { waited, log } => write!(
                f,
                "Envoy did not become LIVE within {waited:?}. Log:\n{log}"
            ),
        }
    }
}

impl std::error::Error for StartError {}

/// A running Envoy. Dropping it kills the process.
pub struct Envoy {
    child: Child,
    dir: TempDir,
    admin: SocketAddr,
    listeners: HashMap<String, u16>,
    log_path: PathBuf,
}

impl Envoy {
    /// Starts Envoy with `config` as its bootstrap and default options.
    pub fn start(config: &Value) -> Result<Envoy, StartError> {
        Self::start_with(config, EnvoyOptions::default())
    }

    /// Starts Envoy with `config` as its bootstrap.
    pub fn start_with(config: &Value, options: EnvoyOptions) -> Result<Envoy, StartError> {
        let bin = envoy_bin();
        if !bin.is_file() {
            return Err(StartError::MissingBinary(bin));
        }
        let io = |what: &str, e: io::Error| StartError::Io(format!("{what}: {e}"));
        let dir = tempfile::Builder::new()
            .prefix("tokenbind-envoy-")
            .tempdir()
            .map_err(|e| io("temp dir", e))?;
        let config_path = dir.path().join("envoy.json");
        let text = serde_json::to_string_pretty(config)
            .map_err(|e| StartError::Io(format!("serialising bootstrap: {e}")))?;
        fs::write(&config_path, text).map_err(|e| io("writing bootstrap", e))?;
        let admin_path = dir.path().join("admin-address.txt");
        // Envoy's stderr is its application log. (`--log-path` would be
        // buffered for up to --file-flush-interval-msecs.)
        let log_path = dir.path().join("envoy.log");
        let stderr = File::create(&log_path).map_err(|e| io("log file", e))?;
        let stdout = File::create(dir.path().join("stdout.log")).map_err(|e| io("stdout", e))?;

        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&config_path)
            .arg("--disable-hot-restart")
            .arg("--concurrency")
            .arg(options.concurrency.to_string())
            .arg("-l")
            .arg(&options.log_level)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(&options.extra_args);
        if let Some(c) = &options.component_log_level {
            cmd.arg("--component-log-level").arg(c);
        }
        cmd.current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = spawn_tied_to_process(cmd).map_err(|e| io("spawning envoy", e))?;

        let mut envoy = Envoy {
            child,
            dir,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listeners: HashMap::new(),
            log_path,
        };
        let started = Instant::now();
        let deadline = started + options.startup_timeout;
        loop {
            match envoy.child.try_wait() {
                Ok(Some(status)) => {
                    return Err(StartError::Exited {
                        status,
                        log: envoy.log(),
                    })
                }
                Ok(None) => {}
                Err(e) => return Err(io("waiting for envoy", e)),
            }
            if envoy.admin.port() == 0 {
                if let Some(addr) = fs::read_to_string(&admin_path)
                    .ok()
                    .and_then(|s| s.trim().parse::<SocketAddr>().ok())
                {
                    envoy.admin = addr;
                }
            }
            if envoy.admin.port() != 0 {
                if let Ok((200, body)) = envoy.admin_get("/ready") {
                    if body.trim() == "LIVE" {
                        break;
                    }
                }
            }
            if Instant::now() >= deadline {
                let log = envoy.log();
                return Err(StartError::Timeout {
                    waited: started.elapsed(),
                    log,
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
        envoy.listeners = envoy
            .read_listeners()
            .map_err(|e| StartError::Io(format!("reading /listeners: {e}")))?;
        Ok(envoy)
    }

    fn read_listeners(&self) -> Result<HashMap<String, u16>, String> {
        let (status, body) = self
            .admin_get("/listeners?format=json")
            .map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("status {status}: {body}"));
        }
        let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let mut out = HashMap::new();
        for l in v["listener_statuses"].as_array().into_iter().flatten() {
            let name = l["name"].as_str().unwrap_or_default().to_string();
            if let Some(port) = l["local_address"]["socket_address"]["port_value"].as_u64() {
                out.insert(name, port as u16);
            }
        }
        Ok(out)
    }

    /// The bound port of listener `name`. Panics (listing the known
    /// listeners and the log) if there is none.
    pub fn port(&self, name: &str) -> u16 {
        self.try_port(name).unwrap_or_else(|| {
            panic!(
                "Envoy has no listener named {name:?} (listeners: {:?}). Log:\n{}",
                self.listeners,
                self.log()
            )
        })
    }

    /// The bound port of listener `name`, if Envoy has it.
    pub fn try_port(&self, name: &str) -> Option<u16> {
        self.listeners.get(name).copied()
    }

    /// All listeners and their ports.
    pub fn listeners(&self) -> &HashMap<String, u16> {
        &self.listeners
    }

    /// The admin address.
    pub fn admin_address(&self) -> SocketAddr {
        self.admin
    }

    /// Envoy's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The per-instance temp dir (bootstrap, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `GET path` on the admin API: (status, body).
    pub fn admin_get(&self, path: &str) -> io::Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.admin, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
        )?;
        let buf = read_response(&mut s)?;
        let resp = parse_response(&buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok((resp.status, resp.body_str()))
    }

    /// The text of admin `GET /stats`. Panics if the admin API fails.
    pub fn stats(&self) -> String {
        match self.admin_get("/stats") {
            Ok((200, body)) => body,
            Ok((status, body)) => panic!("GET /stats returned {status}: {body}"),
            Err(e) => panic!("GET /stats failed: {e}. Log:\n{}", self.log()),
        }
    }

    /// The value of the counter or gauge whose name in `/stats` is exactly
    /// `name`; 0 if absent.
    pub fn stat(&self, name: &str) -> u64 {
        parse_stat(&self.stats(), name).unwrap_or(0)
    }

    /// A counter defined by the tokenbind Wasm module, by the name the
    /// filter gives it (e.g. `tokenbind.denied.spiffe_mismatch`). Envoy
    /// prints it as [`WASM_METRIC_PREFIX`] + name; this reads exactly that
    /// stat. 0 if absent (never incremented and never defined).
    pub fn counter(&self, name: &str) -> u64 {
        self.stat(&wasm_stat_name(name))
    }

    /// All numeric stats right now, for computing deltas with
    /// [`Snapshot::since`].
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::parse(&self.stats())
    }

    /// Every stat line whose name contains `needle` (for diagnostics).
    pub fn stats_matching(&self, needle: &str) -> String {
        self.stats()
            .lines()
            .filter(|l| l.contains(needle))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Everything Envoy has logged so far.
    pub fn log(&self) -> String {
        let mut out = fs::read(&self.log_path).unwrap_or_default();
        if let Ok(stdout) = fs::read(self.dir.path().join("stdout.log")) {
            out.extend_from_slice(&stdout);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Numeric stats at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    values: HashMap<String, u64>,
}

impl Snapshot {
    /// Parses `/stats` text output.
    pub fn parse(stats: &str) -> Snapshot {
        let values = stats
            .lines()
            .filter_map(|l| {
                let (n, v) = l.split_once(": ")?;
                Some((n.to_string(), v.trim().parse().ok()?))
            })
            .collect();
        Snapshot { values }
    }

    /// Value of the Wasm-defined counter `metric` (filter-side name, e.g.
    /// `tokenbind.allowed`); 0 if absent.
    pub fn counter(&self, metric: &str) -> u64 {
        self.values
            .get(&wasm_stat_name(metric))
            .copied()
            .unwrap_or(0)
    }

    /// Per-counter increase from `earlier` to `self` (Wasm-defined counters,
    /// filter-side names).
    pub fn since(&self, earlier: &Snapshot) -> Delta {
        let mut changed = HashMap::new();
        for (name, v) in &self.values {
            let Some(metric) = name.strip_prefix(WASM_METRIC_PREFIX) else {
                continue;
            };
            let before = earlier.values.get(name).copied().unwrap_or(0);
            if *v != before {
                changed.insert(metric.to_string(), v.saturating_sub(before));
            }
        }
        Delta { changed }
    }
}

/// Increases of Wasm-defined counters between two snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    changed: HashMap<String, u64>,
}

impl Delta {
    /// Increase of `metric` (e.g. `tokenbind.denied.expired`); 0 if none.
    pub fn get(&self, metric: &str) -> u64 {
        self.changed.get(metric).copied().unwrap_or(0)
    }

    /// All counters that changed, sorted, for messages.
    pub fn changed(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self.changed.iter().map(|(k, v)| (k.clone(), *v)).collect();
        v.sort();
        v
    }
}

impl fmt::Display for Delta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .changed()
            .into_iter()
            .map(|(k, v)| format!("{k} +{v}"))
            .collect();
        write!(f, "[{}]", parts.join(", "))
    }
}

/// The name under which Envoy prints a Wasm-defined metric.
pub fn wasm_stat_name(metric: &str) -> String {
    format!("{WASM_METRIC_PREFIX}{metric}")
}

/// The value of stat `name` in `/stats` text output (`name: value` lines).
pub fn parse_stat(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|line| {
        let (n, v) = line.split_once(": ")?;
        if n == name {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` from a dedicated thread that lives as long as the process,
/// with the parent-death signal set to SIGKILL. (PR_SET_PDEATHSIG fires when
/// the spawning *thread* exits, hence the dedicated thread rather than the
/// short-lived test thread.)
fn spawn_tied_to_process(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let spawned = thread::Builder::new()
            .name("envoy-spawner".to_string())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = spawned {
            panic!("cannot start the envoy spawner thread: {e}");
        }
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread dropped the request"))?
}

/// Builder for the standard test bootstrap: one listener `main` on
/// 127.0.0.1:0 with mTLS (`require_client_certificate: true`, clients
/// validated against the test CA), an HTTP connection manager running the
/// optional wasm filter then the router, and a catch-all route with
/// `direct_response` 200 "upstream ok".
pub struct Bootstrap {
    server_cert_pem: String,
    server_key_pem: String,
    ca_pem: String,
    wasm_filter: Option<Value>,
    require_client_certificate: bool,
}

impl Bootstrap {
    pub fn new(pki: &Pki) -> Bootstrap {
        Bootstrap {
            server_cert_pem: pki.server.cert_pem.clone(),
            server_key_pem: pki.server.key_pem.clone(),
            ca_pem: pki.ca_pem().to_string(),
            wasm_filter: None,
            require_client_certificate: true,
        }
    }

    /// Adds the tokenbind wasm filter from `wasm` with `plugin_config`
    /// serialised into its StringValue configuration.
    pub fn wasm_filter(self, wasm: &Path, plugin_config: &Value) -> Bootstrap {
        self.wasm_filter_raw(wasm, &plugin_config.to_string())
    }

    /// Adds the wasm filter with a verbatim configuration string (which need
    /// not be valid JSON).
    pub fn wasm_filter_raw(mut self, wasm: &Path, configuration: &str) -> Bootstrap {
        self.wasm_filter = Some(wasm_http_filter(wasm, configuration));
        self
    }

    /// Whether the listener demands a client certificate (default true).
    /// With false, clients without a certificate reach the filter.
    pub fn require_client_certificate(mut self, require: bool) -> Bootstrap {
        self.require_client_certificate = require;
        self
    }

    pub fn build(&self) -> Value {
        let mut http_filters = Vec::new();
        if let Some(f) = &self.wasm_filter {
            http_filters.push(f.clone());
        }
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));
        json!({
            "node": {"id": "tokenbind-test", "cluster": "tokenbind-test"},
            "admin": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
            },
            "static_resources": {
                "listeners": [{
                    "name": LISTENER,
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [{
                        "transport_socket": {
                            "name": "envoy.transport_sockets.tls",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                                "require_client_certificate": self.require_client_certificate,
                                "common_tls_context": {
                                    "tls_certificates": [{
                                        "certificate_chain": {"inline_string": self.server_cert_pem},
                                        "private_key": {"inline_string": self.server_key_pem}
                                    }],
                                    "validation_context": {
                                        "trusted_ca": {"inline_string": self.ca_pem}
                                    }
                                }
                            }
                        },
                        "filters": [{
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                "stat_prefix": "ingress",
                                "codec_type": "AUTO",
                                "route_config": {
                                    "name": "local",
                                    "virtual_hosts": [{
                                        "name": "all",
                                        "domains": ["*"],
                                        "routes": [{
                                            "match": {"prefix": "/"},
                                            "direct_response": {
                                                "status": 200,
                                                "body": {"inline_string": UPSTREAM_BODY}
                                            }
                                        }]
                                    }]
                                },
                                "http_filters": http_filters
                            }
                        }]
                    }]
                }]
            }
        })
    }
}

/// The `envoy.filters.http.wasm` filter entry for the tokenbind module.
pub fn wasm_http_filter(wasm: &Path, configuration: &str) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "tokenbind",
                "root_id": "tokenbind",
                "vm_config": {
                    "vm_id": "tokenbind",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm.to_string_lossy()}}
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration
                },
                "fail_open": false
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_is_exact() {
        let s = "a.b: 1\nwasmcustom.tokenbind.allowed: 7\ntokenbind.allowed_x: 9\n";
        assert_eq!(parse_stat(s, "wasmcustom.tokenbind.allowed"), Some(7));
        assert_eq!(parse_stat(s, "tokenbind.allowed"), None);
        assert_eq!(parse_stat(s, "a.b"), Some(1));
    }
}
