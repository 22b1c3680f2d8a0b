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
use crate::pki::{Leaf, Pki};
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

    /// The text of admin `GET /stats/prometheus`. Panics if the admin API
    /// fails.
    pub fn prometheus(&self) -> String {
        match self.admin_get("/stats/prometheus") {
            Ok((200, body)) => body,
            Ok((status, body)) => panic!("GET /stats/prometheus returned {status}: {body}"),
            Err(e) => panic!("GET /stats/prometheus failed: {e}. Log:\n{}", self.log()),
        }
    }

    /// The value of the text readout whose name in `/stats` is exactly
    /// `name` (e.g. an ECDS `version_text`), without its quotes.
    pub fn stat_text(&self, name: &str) -> Option<String> {
        parse_stat_text(&self.stats(), name)
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
///
/// The builder also makes sidecar-shaped bootstraps (all optional, the
/// defaults above are unchanged): a different serving identity
/// ([`Bootstrap::serving_identity`]), a plaintext listener
/// ([`Bootstrap::plaintext`], e.g. a sidecar's outbound port), a route to a
/// cluster instead of the direct response ([`Bootstrap::route_to_cluster`]
/// plus [`Bootstrap::cluster`] with [`static_cluster`] / [`mtls_cluster`]),
/// the caller's identity forwarded upstream in `x-forwarded-client-cert`
/// ([`Bootstrap::forward_client_cert_uri`]), and the filter delivered by
/// Extension Config Discovery ([`Bootstrap::ecds_filter`]).
pub struct Bootstrap {
    server_cert_pem: String,
    server_key_pem: String,
    ca_pem: String,
    wasm_filter: Option<Value>,
    require_client_certificate: bool,
    listener_name: String,
    downstream_tls: bool,
    route_cluster: Option<String>,
    clusters: Vec<Value>,
    forward_client_cert: bool,
    normalize_paths: bool,
}

impl Bootstrap {
    pub fn new(pki: &Pki) -> Bootstrap {
        Bootstrap {
            server_cert_pem: pki.server.cert_pem.clone(),
            server_key_pem: pki.server.key_pem.clone(),
            ca_pem: pki.ca_pem().to_string(),
            wasm_filter: None,
            require_client_certificate: true,
            listener_name: LISTENER.to_string(),
            downstream_tls: true,
            route_cluster: None,
            clusters: Vec::new(),
            forward_client_cert: false,
            normalize_paths: true,
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

    /// Name of the listener (default [`LISTENER`]); [`Envoy::port`] takes it.
    pub fn listener_name(mut self, name: &str) -> Bootstrap {
        self.listener_name = name.to_string();
        self
    }

    /// Serve `leaf`'s certificate and key on the mTLS listener instead of
    /// the PKI's `server` certificate (e.g. a workload's own SPIFFE
    /// identity on its inbound sidecar). The trusted CA stays the PKI's.
    pub fn serving_identity(mut self, leaf: &Leaf) -> Bootstrap {
        self.server_cert_pem = leaf.cert_pem.clone();
        self.server_key_pem = leaf.key_pem.clone();
        self
    }

    /// A plaintext listener (no TLS at all), like a sidecar's outbound port
    /// that the local workload talks to over loopback.
    pub fn plaintext(mut self) -> Bootstrap {
        self.downstream_tls = false;
        self
    }

    /// Route every request to cluster `name` (add it with
    /// [`Bootstrap::cluster`]) instead of answering with the
    /// `direct_response` [`UPSTREAM_BODY`].
    pub fn route_to_cluster(mut self, name: &str) -> Bootstrap {
        self.route_cluster = Some(name.to_string());
        self
    }

    /// Adds a cluster to `static_resources.clusters`, e.g. from
    /// [`static_cluster`] or [`mtls_cluster`].
    pub fn cluster(mut self, cluster: Value) -> Bootstrap {
        self.clusters.push(cluster);
        self
    }

    /// Forward the downstream peer's identity to the upstream: the HTTP
    /// connection manager replaces any incoming `x-forwarded-client-cert`
    /// with `By=<our URI SAN>;Hash=<peer cert hash>;URI=<peer URI SAN>`
    /// (`SANITIZE_SET`), as a mesh sidecar does.
    pub fn forward_client_cert_uri(mut self) -> Bootstrap {
        self.forward_client_cert = true;
        self
    }

    /// Leave out the recommended path settings ([`path_normalization`]): the filter then
    /// sees `:path` exactly as the client sent it (defence-in-depth tests).
    pub fn without_path_normalization(mut self) -> Bootstrap {
        self.normalize_paths = false;
        self
    }

    /// Put the tokenbind filter in the chain through Extension Config
    /// Discovery: its configuration comes from `source`'s file (which must
    /// hold a valid resource before Envoy starts, or the listener waits for
    /// it).
    pub fn ecds_filter(mut self, source: &EcdsSource) -> Bootstrap {
        self.wasm_filter = Some(source.http_filter());
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
        let route = match &self.route_cluster {
            Some(cluster) => json!({
                "match": {"prefix": "/"},
                "route": {"cluster": cluster}
            }),
            None => json!({
                "match": {"prefix": "/"},
                "direct_response": {
                    "status": 200,
                    "body": {"inline_string": UPSTREAM_BODY}
                }
            }),
        };
        let mut hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "ingress",
            "codec_type": "AUTO",
            "route_config": {
                "name": "local",
                "virtual_hosts": [{
                    "name": "all",
                    "domains": ["*"],
                    "routes": [route]
                }]
            },
            "http_filters": http_filters
        });
        if self.normalize_paths {
            if let (Some(hcm), Value::Object(settings)) =
                (hcm.as_object_mut(), path_normalization())
            {
                hcm.extend(settings);
            }
        }
        if self.forward_client_cert {
            hcm["forward_client_cert_details"] = json!("SANITIZE_SET");
            hcm["set_current_client_cert_details"] = json!({"uri": true});
        }
        let mut filter_chain = json!({
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": hcm
            }]
        });
        if self.downstream_tls {
            filter_chain["transport_socket"] = json!({
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
            });
        }
        let mut bootstrap = json!({
            "node": {"id": "tokenbind-test", "cluster": "tokenbind-test"},
            "admin": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
            },
            "static_resources": {
                "listeners": [{
                    "name": self.listener_name,
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [filter_chain]
                }]
            }
        });
        if !self.clusters.is_empty() {
            bootstrap["static_resources"]["clusters"] = Value::Array(self.clusters.clone());
        }
        bootstrap
    }
}

/// The HTTP connection manager settings every bootstrap here carries (see the README, "Path
/// exemptions"): Envoy normalises `:path` (RFC 3986 dot segments, percent-encoded unreserved
/// characters, `\` to `/`) and merges slashes before any filter or route sees it, and
/// rejects an escaped `/` or `\` (`%2F`, `%5C`) with 400.
pub fn path_normalization() -> Value {
    json!({
        "normalize_path": true,
        "merge_slashes": true,
        "path_with_escaped_slashes_action": "REJECT_REQUEST"
    })
}

/// The `envoy.filters.http.wasm` filter entry for the tokenbind module.
pub fn wasm_http_filter(wasm: &Path, configuration: &str) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": wasm_typed_config(wasm, configuration)
    })
}

/// The `envoy.extensions.filters.http.wasm.v3.Wasm` message (with its
/// `@type`) for the tokenbind module with `configuration` as the plugin
/// configuration: V8, `fail_open: false`, vm_id and root_id `tokenbind`.
/// [`wasm_http_filter`] wraps it in a filter entry; ECDS delivers it as a
/// `TypedExtensionConfig` ([`EcdsSource::push_wasm`]).
pub fn wasm_typed_config(wasm: &Path, configuration: &str) -> Value {
    json!({
        "@type": WASM_TYPE_URL,
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
    })
}

/// Type URL of the Envoy Wasm HTTP filter configuration.
pub const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// A plaintext HTTP/1.1 cluster `name` with one endpoint, 127.0.0.1:`port`.
pub fn static_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}
            }}}]}]
        }
    })
}

/// A cluster `name` to 127.0.0.1:`port` that originates mTLS, as a mesh
/// sidecar's outbound cluster does: it presents `client`'s certificate,
/// trusts only `ca_pem`, and accepts the server only if its certificate has
/// the URI SAN `server_id` (the SPIFFE ID of the workload it calls).
pub fn mtls_cluster(name: &str, port: u16, client: &Leaf, ca_pem: &str, server_id: &str) -> Value {
    let mut cluster = static_cluster(name, port);
    cluster["transport_socket"] = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [{
                    "certificate_chain": {"inline_string": client.cert_pem},
                    "private_key": {"inline_string": client.key_pem}
                }],
                "validation_context": {
                    "trusted_ca": {"inline_string": ca_pem},
                    "match_typed_subject_alt_names": [{
                        "san_type": "URI",
                        "matcher": {"exact": server_id}
                    }]
                }
            }
        }
    });
    cluster
}

/// A file-based Extension Config Discovery source for one HTTP filter, as
/// Envoy 1.40 reads it: `path_config_source` naming a file that holds a
/// `DiscoveryResponse` whose single resource is an
/// `envoy.config.core.v3.TypedExtensionConfig` named after the filter, with
/// `watched_directory` so Envoy reloads when a file is moved into the
/// directory. [`EcdsSource::push`] writes a temp file in the same directory
/// and renames it over the watched path, so Envoy never sees a partial file.
///
/// Envoy counts updates under `extension_config_discovery.http_filter.<name>.*`
/// (`update_success`, `update_rejected`, `config_fail`, `version_text`):
/// [`EcdsSource::wait_applied`] and [`EcdsSource::wait_rejected`] wait on them.
pub struct EcdsSource {
    dir: TempDir,
    name: String,
    type_url: String,
}

impl EcdsSource {
    /// A new empty watched directory for the filter resource `name`
    /// (accepting [`WASM_TYPE_URL`] configurations).
    pub fn new(name: &str) -> io::Result<EcdsSource> {
        let dir = tempfile::Builder::new()
            .prefix("tokenbind-ecds-")
            .tempdir()?;
        Ok(EcdsSource {
            dir,
            name: name.to_string(),
            type_url: WASM_TYPE_URL.to_string(),
        })
    }

    /// The resource (and filter) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The watched directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The file Envoy reads.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join(format!("{}.json", self.name))
    }

    /// The HTTP filter entry: `name` + `config_discovery` from this file.
    pub fn http_filter(&self) -> Value {
        json!({
            "name": self.name,
            "config_discovery": {
                "config_source": {
                    "path_config_source": {
                        "path": self.path().to_string_lossy(),
                        "watched_directory": {"path": self.dir.path().to_string_lossy()}
                    }
                },
                "type_urls": [self.type_url]
            }
        })
    }

    /// The `DiscoveryResponse` text for `typed_config` at `version`.
    pub fn discovery_response(&self, version: &str, typed_config: &Value) -> Value {
        json!({
            "version_info": version,
            "resources": [{
                "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                "name": self.name,
                "typed_config": typed_config
            }]
        })
    }

    /// Publishes `typed_config` (a message with `@type`) as `version`:
    /// writes a temp file in the watched directory, then renames it over
    /// [`EcdsSource::path`] (atomic on one filesystem).
    pub fn push(&self, version: &str, typed_config: &Value) -> io::Result<()> {
        let text = serde_json::to_string_pretty(&self.discovery_response(version, typed_config))
            .map_err(io::Error::other)?;
        let tmp = self
            .dir
            .path()
            .join(format!(".{}.{version}.tmp", self.name));
        fs::write(&tmp, text)?;
        fs::rename(&tmp, self.path())
    }

    /// Publishes the tokenbind Wasm filter ([`wasm_typed_config`]) with the
    /// verbatim plugin `configuration` as `version`.
    pub fn push_wasm(&self, version: &str, wasm: &Path, configuration: &str) -> io::Result<()> {
        self.push(version, &wasm_typed_config(wasm, configuration))
    }

    /// The ECDS counters and version of this filter in `envoy` right now.
    pub fn status(&self, envoy: &Envoy) -> EcdsStatus {
        EcdsStatus::read(&envoy.stats(), &self.name)
    }

    /// Waits (at most `timeout`) until Envoy reports `version` as the
    /// applied version and `update_success` has risen above
    /// `before.update_success`. Returns the status, or an error describing
    /// the last status seen.
    pub fn wait_applied(
        &self,
        envoy: &Envoy,
        before: &EcdsStatus,
        version: &str,
        timeout: Duration,
    ) -> Result<EcdsStatus, String> {
        self.wait(envoy, timeout, |s| {
            s.version_text == version && s.update_success > before.update_success
        })
        .map_err(|last| {
            format!(
                "ECDS version {version:?} not applied within {timeout:?}; last status: {last:?}"
            )
        })
    }

    /// Waits (at most `timeout`) until Envoy has rejected an update since
    /// `before` (`update_rejected` and `config_fail` risen).
    pub fn wait_rejected(
        &self,
        envoy: &Envoy,
        before: &EcdsStatus,
        timeout: Duration,
    ) -> Result<EcdsStatus, String> {
        self.wait(envoy, timeout, |s| {
            s.update_rejected > before.update_rejected && s.config_fail > before.config_fail
        })
        .map_err(|last| format!("no ECDS rejection within {timeout:?}; last status: {last:?}"))
    }

    fn wait(
        &self,
        envoy: &Envoy,
        timeout: Duration,
        done: impl Fn(&EcdsStatus) -> bool,
    ) -> Result<EcdsStatus, EcdsStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(envoy);
            if done(&status) {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(status);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `extension_config_discovery.http_filter.<name>.*` at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EcdsStatus {
    /// `version_text`: the `version_info` of the last applied update.
    pub version_text: String,
    /// Updates received (applied or not).
    pub update_attempt: u64,
    /// Updates applied.
    pub update_success: u64,
    /// Updates rejected (the configuration did not load).
    pub update_rejected: u64,
    /// `config_fail`: updates whose configuration failed (rises with
    /// `update_rejected` for file-based sources).
    pub config_fail: u64,
    /// `config_reload`. Not a reliable "applied" signal in Envoy 1.40: it
    /// also rises for rejected updates, and whether the initial load counts
    /// varies between runs. Use `version_text` and `update_success`.
    pub config_reload: u64,
}

impl EcdsStatus {
    /// Reads the status of HTTP filter `name` from `/stats` text.
    pub fn read(stats: &str, name: &str) -> EcdsStatus {
        let stat = |s: &str| {
            parse_stat(
                stats,
                &format!("extension_config_discovery.http_filter.{name}.{s}"),
            )
            .unwrap_or(0)
        };
        EcdsStatus {
            version_text: parse_stat_text(
                stats,
                &format!("extension_config_discovery.http_filter.{name}.version_text"),
            )
            .unwrap_or_default(),
            update_attempt: stat("update_attempt"),
            update_success: stat("update_success"),
            update_rejected: stat("update_rejected"),
            config_fail: stat("config_fail"),
            config_reload: stat("config_reload"),
        }
    }
}

/// The value of text readout `name` in `/stats` output (`name: "value"`).
pub fn parse_stat_text(stats: &str, name: &str) -> Option<String> {
    stats.lines().find_map(|line| {
        let (n, v) = line.split_once(": ")?;
        if n == name {
            let v = v.trim();
            Some(
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
                    .to_string(),
            )
        } else {
            None
        }
    })
}

/// `envoy --mode validate -c bootstrap [--config-yaml overlay]`: (exit status success, the
/// output). Validation also loads the Wasm module and runs its `on_configure`.
pub fn validate(bootstrap: &Value, overlay: Option<&Value>) -> (bool, String) {
    use std::io::Read as _;
    let bin = crate::require_envoy();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bootstrap.json");
    fs::write(&path, serde_json::to_vec_pretty(bootstrap).expect("JSON")).expect("write");
    let mut cmd = Command::new(bin);
    cmd.arg("--mode")
        .arg("validate")
        .arg("-c")
        .arg(&path)
        .args(["--disable-hot-restart", "-l", "info"]);
    if let Some(o) = overlay {
        // JSON is YAML.
        cmd.arg("--config-yaml").arg(o.to_string());
    }
    let mut child = cmd
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning envoy --mode validate");
    let mut err = child.stderr.take().expect("stderr");
    let errors = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut text = String::new();
    let _ = child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut text);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for envoy") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("envoy --mode validate did not finish in 120 s");
        }
        thread::sleep(Duration::from_millis(50));
    };
    text.push_str(&errors.join().unwrap_or_default());
    (status.success(), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_text_strips_quotes_and_is_exact() {
        let s = "extension_config_discovery.http_filter.tokenbind.version_text: \"7\"\n\
                 extension_config_discovery.http_filter.tokenbind.update_success: 3\n\
                 extension_config_discovery.http_filter.tokenbind.update_rejected: 1\n\
                 extension_config_discovery.http_filter.tokenbind.config_fail: 1\n";
        assert_eq!(
            parse_stat_text(
                s,
                "extension_config_discovery.http_filter.tokenbind.version_text"
            ),
            Some("7".to_string())
        );
        assert_eq!(parse_stat_text(s, "version_text"), None);
        let st = EcdsStatus::read(s, "tokenbind");
        assert_eq!(st.version_text, "7");
        assert_eq!(
            (st.update_success, st.update_rejected, st.config_fail),
            (3, 1, 1)
        );
        assert_eq!(EcdsStatus::read(s, "other"), EcdsStatus::default());
    }

    #[test]
    fn default_bootstrap_is_the_standard_mtls_direct_response_listener() {
        let pki = Pki::new();
        let b = Bootstrap::new(&pki).build();
        let listener = &b["static_resources"]["listeners"][0];
        assert_eq!(listener["name"], LISTENER);
        let chain = &listener["filter_chains"][0];
        assert_eq!(
            chain["transport_socket"]["typed_config"]["require_client_certificate"],
            true
        );
        let hcm = &chain["filters"][0]["typed_config"];
        assert_eq!(
            hcm["route_config"]["virtual_hosts"][0]["routes"][0]["direct_response"]["body"]
                ["inline_string"],
            UPSTREAM_BODY
        );
        assert!(hcm.get("forward_client_cert_details").is_none());
        assert!(b["static_resources"].get("clusters").is_none());
        assert_eq!(hcm["normalize_path"], true);
        assert_eq!(hcm["merge_slashes"], true);
        assert_eq!(hcm["path_with_escaped_slashes_action"], "REJECT_REQUEST");
        let raw = Bootstrap::new(&pki).without_path_normalization().build();
        let hcm = &raw["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        for key in [
            "normalize_path",
            "merge_slashes",
            "path_with_escaped_slashes_action",
        ] {
            assert!(hcm.get(key).is_none(), "{key}");
        }
    }

    #[test]
    fn sidecar_bootstraps() {
        let pki = Pki::new();
        let outbound = Bootstrap::new(&pki)
            .listener_name("outbound")
            .plaintext()
            .route_to_cluster("up")
            .cluster(mtls_cluster(
                "up",
                1234,
                &pki.client,
                pki.ca_pem(),
                "spiffe://x/y",
            ))
            .build();
        let listener = &outbound["static_resources"]["listeners"][0];
        assert_eq!(listener["name"], "outbound");
        assert!(listener["filter_chains"][0]
            .get("transport_socket")
            .is_none());
        let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(
            hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"],
            "up"
        );
        let cluster = &outbound["static_resources"]["clusters"][0];
        let tls = &cluster["transport_socket"]["typed_config"]["common_tls_context"];
        assert_eq!(
            tls["tls_certificates"][0]["certificate_chain"]["inline_string"],
            pki.client.cert_pem.as_str()
        );
        assert_eq!(
            tls["validation_context"]["match_typed_subject_alt_names"][0]["matcher"]["exact"],
            "spiffe://x/y"
        );

        let ecds = EcdsSource::new("tokenbind").unwrap();
        let inbound = Bootstrap::new(&pki)
            .serving_identity(&pki.attacker)
            .ecds_filter(&ecds)
            .forward_client_cert_uri()
            .build();
        let chain = &inbound["static_resources"]["listeners"][0]["filter_chains"][0];
        assert_eq!(
            chain["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificates"][0]
                ["certificate_chain"]["inline_string"],
            pki.attacker.cert_pem.as_str()
        );
        let hcm = &chain["filters"][0]["typed_config"];
        assert_eq!(hcm["forward_client_cert_details"], "SANITIZE_SET");
        let filter = &hcm["http_filters"][0];
        assert_eq!(filter["name"], "tokenbind");
        assert_eq!(
            filter["config_discovery"]["config_source"]["path_config_source"]["path"],
            ecds.path().to_string_lossy().as_ref()
        );
    }

    #[test]
    fn ecds_push_replaces_the_file_atomically() {
        let ecds = EcdsSource::new("tokenbind").unwrap();
        ecds.push_wasm("1", Path::new("/x.wasm"), "{}").unwrap();
        ecds.push_wasm("2", Path::new("/x.wasm"), "{\"mode\":\"monitor\"}")
            .unwrap();
        let v: Value = serde_json::from_str(&fs::read_to_string(ecds.path()).unwrap()).unwrap();
        assert_eq!(v["version_info"], "2");
        let r = &v["resources"][0];
        assert_eq!(
            r["@type"],
            "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
        );
        assert_eq!(r["name"], "tokenbind");
        assert_eq!(r["typed_config"]["@type"], WASM_TYPE_URL);
        assert_eq!(
            r["typed_config"]["config"]["configuration"]["value"],
            "{\"mode\":\"monitor\"}"
        );
        // Only the watched file is left behind.
        let names: Vec<_> = fs::read_dir(ecds.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("tokenbind.json")]);
    }

    #[test]
    fn parse_stat_is_exact() {
        let s = "a.b: 1\nwasmcustom.tokenbind.allowed: 7\ntokenbind.allowed_x: 9\n";
        assert_eq!(parse_stat(s, "wasmcustom.tokenbind.allowed"), Some(7));
        assert_eq!(parse_stat(s, "tokenbind.allowed"), None);
        assert_eq!(parse_stat(s, "a.b"), Some(1));
    }
}
