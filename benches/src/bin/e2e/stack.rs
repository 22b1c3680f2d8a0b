//! The Envoys: one server sidecar per scenario (mTLS listener requiring a client certificate,
//! the scenario's auth filters, `direct_response` 200) and one client sidecar in front of each
//! (plaintext loopback listener, routing to an mTLS cluster that presents the client's SPIFFE
//! certificate), built with the integration harness's `Bootstrap` and `mtls_cluster`.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokenbind_integration::client::{parse_response, read_response, Response};
use tokenbind_integration::envoy::{mtls_cluster, Bootstrap, Envoy, EnvoyOptions};
use tokenbind_integration::pki::Pki;
use tokenbind_integration::{LISTENER, SERVER_ID};

use tokenbind_benches::fixtures::{AUDIENCE, ISSUER};

/// What the server sidecar runs in front of the router.
#[derive(Debug, Clone, PartialEq)]
pub enum Server {
    /// No auth filter.
    Baseline,
    /// Envoy's jwt_authn (with or without its JWT cache) plus RBAC comparing the token's
    /// `sub` with the peer's URI SAN.
    JwtAuthn { cache: bool },
    /// The tokenbind Wasm filter with this plugin configuration.
    Tokenbind { config: Value },
}

pub const OUTBOUND: &str = "outbound";

/// Envoy's options: `concurrency` workers, warnings only, except the Wasm component at `info`
/// when `wasm_info` (the filter logs its crypto backends at start-up at that level; it logs
/// nothing at `info` per request).
fn options(concurrency: u32, wasm_info: bool) -> EnvoyOptions {
    EnvoyOptions {
        concurrency,
        log_level: "warning".into(),
        component_log_level: wasm_info.then(|| "wasm:info".to_owned()),
        startup_timeout: Duration::from_secs(90),
        ..EnvoyOptions::default()
    }
}

/// Starts the server sidecar with `concurrency` worker threads.
pub fn start_server(
    pki: &Pki,
    server: &Server,
    wasm: &Path,
    jwks: &Value,
    concurrency: u32,
) -> Result<Envoy, String> {
    let bootstrap = match server {
        Server::Baseline => Bootstrap::new(pki).build(),
        Server::Tokenbind { config } => Bootstrap::new(pki).wasm_filter(wasm, config).build(),
        Server::JwtAuthn { cache } => {
            let mut b = Bootstrap::new(pki).build();
            let filters = b
                .pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters")
                .and_then(Value::as_array_mut)
                .ok_or("the Bootstrap layout changed: no http_filters")?;
            filters.insert(0, rbac_filter());
            filters.insert(0, jwt_authn_filter(jwks, *cache));
            b
        }
    };
    let wasm_info = matches!(server, Server::Tokenbind { .. });
    Envoy::start_with(&bootstrap, options(concurrency, wasm_info)).map_err(|e| {
        // The whole log is long; the lines that say why are the errors (e.g. the filter's
        // "tokenbind: invalid configuration: ...").
        let why: Vec<&str> = e
            .log()
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.contains("tokenbind:") || l.contains("[critical]") || l.contains("[error]")
            })
            // After Envoy's "[time][thread][level][component] [source:line] " prefix.
            .map(|l| l.rsplit_once("] ").map_or(l, |(_, msg)| msg))
            .take(4)
            .collect();
        if why.is_empty() {
            format!("server sidecar: {e}")
        } else {
            format!("server sidecar: {}", why.join(" / "))
        }
    })
}

/// Starts a client sidecar routing to the server sidecar on `server_port`.
pub fn start_client(pki: &Pki, server_port: u16) -> Result<Envoy, String> {
    let bootstrap = Bootstrap::new(pki)
        .listener_name(OUTBOUND)
        .plaintext()
        .route_to_cluster("server")
        .cluster(mtls_cluster(
            "server",
            server_port,
            &pki.client,
            pki.ca_pem(),
            SERVER_ID,
        ))
        .build();
    Envoy::start_with(&bootstrap, options(1, false)).map_err(|e| format!("client sidecar: {e}"))
}

pub fn server_port(envoy: &Envoy) -> Result<u16, String> {
    envoy
        .try_port(LISTENER)
        .ok_or_else(|| "server sidecar has no listener".to_string())
}

pub fn client_port(envoy: &Envoy) -> Result<u16, String> {
    envoy
        .try_port(OUTBOUND)
        .ok_or_else(|| "client sidecar has no listener".to_string())
}

/// `envoy.filters.http.jwt_authn` verifying our issuer's tokens from an inline JWKS, putting
/// the payload in dynamic metadata (`jwt_payload`) for RBAC.
pub fn jwt_authn_filter(jwks: &Value, cache: bool) -> Value {
    let mut provider = json!({
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "local_jwks": {"inline_string": jwks.to_string()},
        "payload_in_metadata": "jwt_payload",
        "clock_skew_seconds": 60
    });
    if cache {
        // The same size as tokenbind's cache.
        provider["jwt_cache_config"] = json!({"jwt_cache_size": 10000});
    }
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"mesh": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "mesh"}}]
        }
    })
}

fn ident(name: &str) -> Value {
    json!({"ident_expr": {"name": name}})
}

fn select(operand: Value, field: &str) -> Value {
    json!({"select_expr": {"operand": operand, "field": field}})
}

fn index(operand: Value, key: &str) -> Value {
    json!({"call_expr": {"function": "_[_]", "args": [operand, {"const_expr": {"string_value": key}}]}})
}

/// `envoy.filters.http.rbac` allowing a request only if the CEL condition
/// `metadata.filter_metadata["envoy.filters.http.jwt_authn"]["jwt_payload"]["sub"] ==
/// connection.uri_san_peer_certificate` holds: the native way to bind a token's `sub` to the
/// mTLS peer's SPIFFE ID. (RBAC takes the parsed CEL AST.)
pub fn rbac_filter() -> Value {
    let sub = index(
        index(
            index(
                select(ident("metadata"), "filter_metadata"),
                "envoy.filters.http.jwt_authn",
            ),
            "jwt_payload",
        ),
        "sub",
    );
    let peer = select(ident("connection"), "uri_san_peer_certificate");
    json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {
                "action": "ALLOW",
                "policies": {
                    "token-sub-is-peer-spiffe-id": {
                        "permissions": [{"any": true}],
                        "principals": [{"any": true}],
                        "condition": {"call_expr": {"function": "_==_", "args": [sub, peer]}}
                    }
                }
            }
        }
    })
}

/// `GET /` to the client sidecar on 127.0.0.1:`port` with `Host: authority` (as wrk sends
/// it), over a new plaintext connection.
pub fn get(port: u16, authority: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let io = |e: std::io::Error| format!("GET via 127.0.0.1:{port}: {e}");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(io)?;
    s.set_write_timeout(Some(Duration::from_secs(15)))
        .map_err(io)?;
    let mut req = format!("GET / HTTP/1.1\r\nhost: {authority}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(io)?;
    let buf = read_response(&mut s).map_err(io)?;
    parse_response(&buf).map_err(|e| format!("GET via 127.0.0.1:{port}: {e}"))
}

/// All numeric stats of `envoy` (admin `/stats`).
pub fn stats(envoy: &Envoy) -> Result<HashMap<String, u64>, String> {
    match envoy.admin_get("/stats") {
        Ok((200, body)) => Ok(body
            .lines()
            .filter_map(|l| {
                let (n, v) = l.split_once(": ")?;
                Some((n.to_string(), v.trim().parse().ok()?))
            })
            .collect()),
        Ok((status, body)) => Err(format!("/stats returned {status}: {body}")),
        Err(e) => Err(format!("/stats: {e}")),
    }
}

/// Increase of `name` between two stats snapshots.
pub fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>, name: &str) -> u64 {
    after
        .get(name)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(name).copied().unwrap_or(0))
}

/// What the filter logged at start-up about its signature backends: the line
/// `tokenbind: crypto: ES256=host ... EdDSA=wasm (crypto=auto)`, one per Wasm VM.
#[derive(Debug, Clone, PartialEq)]
pub struct CryptoLog {
    /// `alg=backend` pairs, in the logged order.
    pub backends: Vec<(String, String)>,
    /// The mode the filter reports (`crypto=...` in parentheses), if it logged one.
    pub mode: Option<String>,
    /// The logged text after `tokenbind: crypto: ` (all distinct lines, joined by " | ", if the
    /// VMs disagree).
    pub line: String,
    /// Other start-up lines about the backends (e.g. "host signature verification unusable").
    pub notes: Vec<String>,
}

const CRYPTO_MARK: &str = "tokenbind: crypto: ";
const HOST_UNUSABLE_MARK: &str = "tokenbind: host signature verification unusable";

/// Parses the filter's `tokenbind: crypto:` start-up line(s) out of an Envoy log. None when
/// there is none (a filter build that predates the line, or Wasm logs below `info`).
pub fn parse_crypto_log(log: &str) -> Option<CryptoLog> {
    let mut lines: Vec<&str> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for l in log.lines() {
        if let Some((_, rest)) = l.split_once(CRYPTO_MARK) {
            let rest = rest.trim();
            if !lines.contains(&rest) {
                lines.push(rest);
            }
        } else if let Some(i) = l.find(HOST_UNUSABLE_MARK) {
            let note = l.get(i + "tokenbind: ".len()..).unwrap_or_default().trim();
            if !notes.iter().any(|n| n == note) {
                notes.push(note.to_owned());
            }
        }
    }
    let first = *lines.first()?;
    let (pairs, mode) = match first.rsplit_once(" (crypto=") {
        Some((pairs, mode)) => (pairs, Some(mode.trim_end_matches(')').to_owned())),
        None => (first, None),
    };
    let backends = pairs
        .split_whitespace()
        .filter_map(|p| p.split_once('='))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    Some(CryptoLog {
        backends,
        mode,
        line: lines.join(" | "),
        notes,
    })
}
