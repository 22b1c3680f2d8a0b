//! Every Envoy configuration shipped under `envoy/` and `examples/` passes the real Envoy's
//! `--mode validate`, and the standalone example `envoy/tokenbind.yaml` really runs.
//!
//! Files (`*.yaml`, `*.yml`, `*.json`, recursively; `node_modules` skipped) are classified by
//! content, per document:
//! - a **bootstrap** (a mapping with `static_resources` or `dynamic_resources`) is validated
//!   on its own;
//! - a **bootstrap fragment** (every top-level key is a Bootstrap field, e.g. a `stats_config`
//!   overlay) is validated as `--config-yaml` on top of `envoy/tokenbind.yaml`;
//! - anything else (Istio/Kubernetes resources with `apiVersion`/`kind`, snippets of other
//!   messages, dashboards, package files) is not an Envoy bootstrap and is listed as skipped.
//!
//! Paths: the examples name their files under `/etc/tokenbind/`. Validation reads them (TLS
//! certificates, the Wasm module: Envoy 1.40's validate mode loads the module and runs the
//! plugin's configure step), so the test points them at files it makes: `*.wasm` -> the built
//! filter, `ca*.crt|pem` -> a test CA, `*.key` -> a server key, other `*.crt|pem` -> the
//! server certificate. Any other `/etc/tokenbind/` path fails the test (teach it here).
//!
//! The live run of `envoy/tokenbind.yaml` also binds the ports to 127.0.0.1:0, points the
//! `backend` cluster at a tiny local upstream, and swaps the provider's issuer, audience, JWKS
//! and trust domain for the test issuer's and PKI's; nothing else is changed.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize as _;
use serde_json::{json, Value};
use tokenbind_integration::client::{Client, Response};
use tokenbind_integration::envoy::Envoy;
use tokenbind_integration::pki::{Leaf, Pki};
use tokenbind_integration::tokens::{Alg, TokenIssuer};
use tokenbind_integration::{
    require_wasm, workspace_root, AUDIENCE, CLIENT_ID, ISSUER, TRUST_DOMAIN,
};

/// The standalone example (also the base for bootstrap fragments).
const EXAMPLE: &str = "envoy/tokenbind.yaml";
const EXAMPLE_LISTENER: &str = "tokenbind_mtls";
const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// Top-level fields of envoy.config.bootstrap.v3.Bootstrap (Envoy 1.40).
const BOOTSTRAP_FIELDS: &[&str] = &[
    "node",
    "node_context_params",
    "static_resources",
    "dynamic_resources",
    "cluster_manager",
    "hds_config",
    "flags_path",
    "stats_sinks",
    "deferred_stat_options",
    "stats_config",
    "stats_flush_interval",
    "stats_flush_on_admin",
    "watchdog",
    "watchdogs",
    "tracing",
    "layered_runtime",
    "admin",
    "overload_manager",
    "enable_dispatcher_stats",
    "header_prefix",
    "stats_server_version_override",
    "use_tcp_for_dns_lookups",
    "dns_resolution_config",
    "typed_dns_resolver_config",
    "bootstrap_extensions",
    "fatal_actions",
    "config_sources",
    "default_config_source",
    "default_socket_interface",
    "certificate_provider_instances",
    "inline_headers",
    "perf_tracing_file_path",
    "default_regex_engine",
    "xds_delegate_extension",
    "xds_config_tracker_extension",
    "listener_manager",
    "application_log_config",
    "grpc_async_client_manager_config",
    "memory_allocator_manager",
];

#[derive(Debug, PartialEq, Eq)]
enum Class {
    Bootstrap,
    Fragment,
    Other(String),
}

fn classify(doc: &Value) -> Class {
    let Some(map) = doc.as_object() else {
        return Class::Other("not a mapping".into());
    };
    if map.contains_key("apiVersion") && map.contains_key("kind") {
        return Class::Other(format!(
            "Kubernetes resource {}/{}",
            map["apiVersion"].as_str().unwrap_or("?"),
            map["kind"].as_str().unwrap_or("?")
        ));
    }
    if map.contains_key("static_resources") || map.contains_key("dynamic_resources") {
        return Class::Bootstrap;
    }
    if !map.is_empty() && map.keys().all(|k| BOOTSTRAP_FIELDS.contains(&k.as_str())) {
        return Class::Fragment;
    }
    let keys: Vec<&str> = map.keys().map(String::as_str).take(4).collect();
    Class::Other(format!("not a bootstrap (keys {keys:?})"))
}

/// Every config file under `envoy/` and `examples/`, relative to the workspace, sorted.
fn config_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if name != "node_modules" && !name.starts_with('.') {
                    walk(&p, out);
                }
            } else if [".yaml", ".yml", ".json"].iter().any(|x| name.ends_with(x)) {
                out.push(p);
            }
        }
    }
    let root = workspace_root();
    let mut out = Vec::new();
    walk(&root.join("envoy"), &mut out);
    walk(&root.join("examples"), &mut out);
    let mut rel: Vec<PathBuf> = out
        .into_iter()
        .map(|p| p.strip_prefix(&root).unwrap().to_path_buf())
        .collect();
    rel.sort();
    rel
}

/// The documents of a YAML or JSON file (JSON is YAML).
fn docs(rel: &Path) -> Vec<Value> {
    let path = workspace_root().join(rel);
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", rel.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            Value::deserialize(d)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", rel.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Files the `/etc/tokenbind/` paths are pointed at.
struct Files {
    pki: Pki,
    wasm: PathBuf,
}

impl Files {
    fn new() -> Files {
        Files {
            pki: Pki::new(),
            wasm: require_wasm(),
        }
    }

    fn substitute(&self, path: &str) -> Option<PathBuf> {
        let name = path.strip_prefix("/etc/tokenbind/")?;
        let p = if name.ends_with(".wasm") {
            self.wasm.clone()
        } else if name.starts_with("ca") && (name.ends_with(".crt") || name.ends_with(".pem")) {
            self.pki.ca_path().to_path_buf()
        } else if name.ends_with(".key") {
            self.pki.server.key_path.clone()
        } else if name.ends_with(".crt") || name.ends_with(".pem") {
            self.pki.server.cert_path.clone()
        } else {
            panic!("no test file for {path}: teach integration/tests/example_configs.rs");
        };
        Some(p)
    }

    /// `doc` with every `/etc/tokenbind/...` string replaced by a real file.
    fn rewrite(&self, doc: &Value) -> Value {
        match doc {
            Value::String(s) => match self.substitute(s) {
                Some(p) => json!(p.to_string_lossy()),
                None => doc.clone(),
            },
            Value::Array(a) => Value::Array(a.iter().map(|v| self.rewrite(v)).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), self.rewrite(v)))
                    .collect(),
            ),
            _ => doc.clone(),
        }
    }
}

/// `envoy --mode validate` succeeded and said OK: (that, the output).
fn envoy_validate(bootstrap: &Value, overlay: Option<&Value>) -> (bool, String) {
    let (ok, text) = tokenbind_integration::envoy::validate(bootstrap, overlay);
    (ok && text.contains(" OK"), text)
}

#[test]
fn every_example_envoy_config_passes_envoy_validate() {
    let files = Files::new();
    let base = files.rewrite(&docs(Path::new(EXAMPLE)).remove(0));
    let mut checked = Vec::new();
    let mut skipped = Vec::new();
    let mut failures = Vec::new();
    for rel in config_files() {
        for (i, doc) in docs(&rel).iter().enumerate() {
            let what = format!("{}#{i}", rel.display());
            let (ok, log) = match classify(doc) {
                Class::Bootstrap => envoy_validate(&files.rewrite(doc), None),
                Class::Fragment => envoy_validate(&base, Some(&files.rewrite(doc))),
                Class::Other(why) => {
                    skipped.push(format!("{what}: {why}"));
                    continue;
                }
            };
            if ok {
                checked.push(what);
            } else {
                failures.push(format!("{what}:\n{log}"));
            }
        }
    }
    eprintln!("validated: {checked:#?}\nnot Envoy bootstraps: {skipped:#?}");
    assert!(
        failures.is_empty(),
        "envoy --mode validate rejected:\n{}",
        failures.join("\n\n")
    );
    assert!(
        checked.iter().any(|c| c == &format!("{EXAMPLE}#0")),
        "{EXAMPLE} was found and validated: {checked:?}"
    );
}

/// The check has teeth: validate mode refuses a bad plugin configuration (it runs the plugin's
/// configure step), an unknown bootstrap field, and a bad fragment.
#[test]
fn validate_rejects_broken_examples() {
    let files = Files::new();
    let base = files.rewrite(&docs(Path::new(EXAMPLE)).remove(0));

    let mut bad_plugin = base.clone();
    let value = plugin_config(&mut bad_plugin);
    let mut config: Value = serde_json::from_str(value.as_str().unwrap()).unwrap();
    config["providers"][0]["audience"] = json!("typo");
    *value = json!(config.to_string());
    let (ok, log) = envoy_validate(&bad_plugin, None);
    assert!(
        !ok,
        "a plugin configuration with an unknown key passed validation:\n{log}"
    );
    assert!(
        log.contains("tokenbind: invalid configuration: providers[0].audience"),
        "the plugin names the bad key:\n{log}"
    );

    let mut bad_field = base.clone();
    bad_field["static_resources"]["listeners"][0]["require_client_certificate"] = json!(true);
    let (ok, log) = envoy_validate(&bad_field, None);
    assert!(!ok, "an unknown Listener field passed validation:\n{log}");

    let (ok, log) = envoy_validate(&base, Some(&json!({"stats_config": {"stats_tag": []}})));
    assert!(
        !ok,
        "a fragment with an unknown field passed validation:\n{log}"
    );
}

const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// Every HTTP connection manager configuration in `v`.
fn hcms(v: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    if v.get("@type").and_then(Value::as_str) == Some(HCM_TYPE) {
        out.push(v);
    }
    match v {
        Value::Object(m) => m.values().for_each(|c| out.extend(hcms(c))),
        Value::Array(a) => a.iter().for_each(|c| out.extend(hcms(c))),
        _ => {}
    }
    out
}

/// Every example bootstrap, and the harness's own (which the benchmarks and examples/ use),
/// normalises paths before the filter sees them and refuses escaped slashes (README, "Path
/// exemptions").
#[test]
fn every_example_bootstrap_normalises_paths() {
    let want = tokenbind_integration::envoy::path_normalization();
    let mut seen = Vec::new();
    let harness = tokenbind_integration::envoy::Bootstrap::new(&Pki::new()).build();
    let mut bootstraps = vec![("integration/src/envoy.rs Bootstrap".to_string(), harness)];
    for rel in config_files() {
        for (i, doc) in docs(&rel).into_iter().enumerate() {
            if classify(&doc) == Class::Bootstrap {
                bootstraps.push((format!("{}#{i}", rel.display()), doc));
            }
        }
    }
    for (what, doc) in &bootstraps {
        let found = hcms(doc);
        assert!(!found.is_empty(), "{what} has no HTTP connection manager");
        for hcm in found {
            for (key, value) in want.as_object().unwrap() {
                assert_eq!(hcm.get(key), Some(value), "{what}: {key}");
            }
        }
        seen.push(what.clone());
    }
    assert!(
        seen.iter().any(|w| w == &format!("{EXAMPLE}#0")),
        "{seen:?}"
    );
}

#[test]
fn classification_is_by_content() {
    assert_eq!(classify(&json!({"static_resources": {}})), Class::Bootstrap);
    assert_eq!(
        classify(&json!({"admin": {}, "dynamic_resources": {}})),
        Class::Bootstrap
    );
    assert_eq!(classify(&json!({"stats_config": {}})), Class::Fragment);
    for other in [
        json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin", "spec": {}}),
        json!({"access_log": []}),
        json!({"title": "dashboard", "panels": []}),
        json!([1, 2]),
    ] {
        assert!(matches!(classify(&other), Class::Other(_)), "{other}");
    }
    // The Istio manifests are not Envoy bootstraps, and the example is one.
    let istio: BTreeSet<PathBuf> = config_files()
        .into_iter()
        .filter(|p| p.starts_with("envoy/istio"))
        .collect();
    assert!(!istio.is_empty());
    for rel in &istio {
        for doc in docs(rel) {
            assert!(
                matches!(classify(&doc), Class::Other(_)),
                "{}",
                rel.display()
            );
        }
    }
    assert_eq!(classify(&docs(Path::new(EXAMPLE))[0]), Class::Bootstrap);
}

/// The example's plugin configuration and a setter for it.
fn plugin_config(bootstrap: &mut Value) -> &mut Value {
    fn find(v: &mut Value) -> Option<&mut Value> {
        if v.get("@type").and_then(Value::as_str) == Some(WASM_TYPE) {
            return v.pointer_mut("/config/configuration/value");
        }
        match v {
            Value::Object(m) => m.values_mut().find_map(find),
            Value::Array(a) => a.iter_mut().find_map(find),
            _ => None,
        }
    }
    find(bootstrap).expect("the example has a Wasm filter with a configuration string")
}

/// Binds every socket address to 127.0.0.1:0 (admin and listeners).
fn loopback_port_zero(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(sa) = m.get_mut("socket_address") {
                sa["address"] = json!("127.0.0.1");
                sa["port_value"] = json!(0);
            }
            for (k, child) in m.iter_mut() {
                if k != "clusters" {
                    loopback_port_zero(child);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(loopback_port_zero),
        _ => {}
    }
}

/// A minimal HTTP/1.1 upstream on 127.0.0.1 answering every request `200 backend ok`, until
/// dropped (at most 60 s).
struct Upstream {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

const BACKEND_BODY: &str = "backend ok";

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((s, _)) => serve(s),
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Upstream {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

fn serve(mut s: TcpStream) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65536 {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BACKEND_BODY}",
        BACKEND_BODY.len()
    );
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn get(pki: &Pki, envoy: &Envoy, leaf: &Leaf, token: Option<&str>) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    Client::new(pki.ca_pem(), Some(leaf))
        .get(envoy.port(EXAMPLE_LISTENER), "/orders", &headers)
        .unwrap_or_else(|e| panic!("GET /orders as {} failed: {e}", leaf.name))
}

#[track_caller]
fn assert_backend(r: &Response, what: &str) {
    assert_eq!(
        r.status, 200,
        "{what}: expected the backend's 200, got:\n{r}"
    );
    assert_eq!(r.body_str(), BACKEND_BODY, "{what}");
}

#[test]
fn standalone_example_runs_in_monitor_mode() {
    let files = Files::new();
    let issuer = TokenIssuer::new(ISSUER);
    let upstream = Upstream::start();
    let mut bootstrap = files.rewrite(&docs(Path::new(EXAMPLE)).remove(0));
    loopback_port_zero(&mut bootstrap);
    let cluster = bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == "backend")
        .expect("backend cluster");
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"]["port_value"] = json!(upstream.port);

    let value = plugin_config(&mut bootstrap);
    let mut config: Value = serde_json::from_str(value.as_str().unwrap()).expect("config JSON");
    let mode = config["mode"].as_str().unwrap().to_string();
    assert_eq!(mode, "monitor", "the example starts in monitor mode");
    config["providers"][0]["issuer"] = json!(issuer.issuer());
    config["providers"][0]["audiences"] = json!([AUDIENCE]);
    config["providers"][0]["jwks"] = json!({"keys": [issuer.jwk(Alg::Es256)]});
    config["spiffe"]["trust_domains"] = json!([TRUST_DOMAIN]);
    *value = json!(config.to_string());

    let envoy = Envoy::start(&bootstrap).unwrap_or_else(|e| {
        panic!("Envoy refused {EXAMPLE} (test files and ports swapped in): {e}")
    });
    assert!(
        envoy.log().contains("tokenbind: configured: mode=monitor"),
        "the plugin configured itself. Log:\n{}",
        envoy.log()
    );
    let pki = &files.pki;
    let token = issuer.sign(Alg::Es256, &issuer.claims(CLIENT_ID, AUDIENCE));
    let before = envoy.snapshot();
    assert_backend(&get(pki, &envoy, &pki.client, Some(&token)), "bound caller");
    assert_backend(
        &get(pki, &envoy, &pki.attacker, Some(&token)),
        "stolen token (monitor)",
    );
    assert_backend(&get(pki, &envoy, &pki.client, None), "no token (monitor)");
    let delta = envoy.snapshot().since(&before);
    assert_eq!(delta.get("tokenbind.allowed"), 1, "{delta}");
    assert_eq!(
        delta.get("tokenbind.monitor.would_deny.spiffe_mismatch"),
        1,
        "{delta}"
    );
    assert_eq!(
        delta.get("tokenbind.monitor.would_deny.missing_token"),
        1,
        "{delta}"
    );
    drop(envoy);
    drop(upstream);
}
