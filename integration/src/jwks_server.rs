//! A small, real HTTP/1.1 server on 127.0.0.1 (kernel-assigned port) standing
//! in for a token issuer's key endpoint, for the remote-JWKS tests.
//!
//! * Serves JSON documents by exact path ([`JwksServer::set_document`]): the
//!   JWKS at [`JWKS_PATH`] ([`JwksServer::set_jwks`]) and the OpenID Connect
//!   discovery document at [`DISCOVERY_PATH`] ([`JwksServer::set_discovery`]).
//!   Other paths are 404. Documents can be replaced at any time (key
//!   rotation); an optional `Cache-Control` header goes on every 200.
//! * Failure modes, switched at runtime with [`JwksServer::set_behaviour`]:
//!   a fixed status (500), a garbage body, a huge body, a delay, or hanging
//!   (the request is read and never answered). [`JwksServer::stop`] closes the
//!   listener and every open connection, so new connections are refused;
//!   [`JwksServer::resume`] listens again on the same port.
//! * Keep-alive: responses carry `content-length` and the connection stays
//!   open for the next request (Envoy pools upstream connections), unless
//!   the request said `connection: close`.
//! * Every request is logged (method, path, `host`, time) before it is
//!   answered; tests count fetches with [`JwksServer::count`].
//! * Threads: one acceptor (non-blocking accept, polled) and one per
//!   connection, all polling a shutdown flag at least every 50 ms. Drop stops
//!   them and joins them, so a hanging connection lives at most as long as
//!   the server.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Where [`JwksServer::set_jwks`] publishes the key set.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// Where [`JwksServer::set_discovery`] publishes the discovery document (the
/// OpenID Connect location for an issuer without a path).
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// How often blocked threads look at the shutdown flags.
const POLL: Duration = Duration::from_millis(50);
/// A request head larger than this is refused (400) and the connection closed.
const MAX_HEAD: usize = 64 * 1024;

/// How the server answers every request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// 200 with the document at the path, 404 if there is none.
    Serve,
    /// This status with a short text body, for every path.
    Status(u16),
    /// 200 `application/json` whose body is not JSON.
    Garbage,
    /// 200 `application/json` whose body is the document at the path (or
    /// `{}`) padded with a filler member to at least this many bytes: valid
    /// JSON, a valid JWKS even, only too large.
    Oversized(usize),
    /// Read the request, log it, never answer. The connection stays open
    /// until the client closes it, the server stops or is dropped.
    Hang,
    /// Wait this long, then answer as [`Behaviour::Serve`] (a slow issuer).
    Delay(Duration),
    /// 200 `application/json` with exactly this body, for every path: JSON no `Value` can
    /// hold, such as a duplicate member.
    Raw(String),
}

/// One request the server received.
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    pub method: String,
    /// The request target as sent (path and query).
    pub path: String,
    /// The `host` header, if any (HTTP/1.1 `:authority`).
    pub host: Option<String>,
    /// All header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// When the request head was complete.
    pub at: Instant,
    /// Which connection (accept order, from 1) carried it.
    pub connection: u64,
}

impl fmt::Display for LoggedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} (host {:?}, conn #{})",
            self.method,
            self.path,
            self.host.as_deref().unwrap_or("-"),
            self.connection
        )
    }
}

struct State {
    documents: HashMap<String, Value>,
    behaviour: Behaviour,
    /// While set, requests are logged but not answered (see `pause`).
    paused: bool,
    cache_control: Option<String>,
    log: Vec<LoggedRequest>,
}

struct Inner {
    state: Mutex<State>,
    /// Signalled whenever a request is logged.
    logged: Condvar,
    /// Server dropped: every thread exits.
    shutdown: AtomicBool,
    /// Bumped by `stop`: connections accepted under an older epoch close.
    epoch: AtomicU64,
    next_connection: AtomicU64,
    /// Clones of open connections, so `stop` can shut them down at once.
    open: Mutex<HashMap<u64, TcpStream>>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The listening half: the acceptor thread and its stop flag.
struct Acceptor {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// A test HTTP server for JWKS and discovery documents. See the module docs.
pub struct JwksServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
    acceptor: Mutex<Option<Acceptor>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    started: Instant,
}

impl JwksServer {
    /// Listens on 127.0.0.1:0, serving nothing yet (every path 404) until
    /// documents are set. Panics if it cannot bind (callers are tests).
    pub fn start() -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("JWKS test server cannot bind 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("JWKS test server has no local address: {e}"));
        let server = JwksServer {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    documents: HashMap::new(),
                    behaviour: Behaviour::Serve,
                    paused: false,
                    cache_control: None,
                    log: Vec::new(),
                }),
                logged: Condvar::new(),
                shutdown: AtomicBool::new(false),
                epoch: AtomicU64::new(0),
                next_connection: AtomicU64::new(1),
                open: Mutex::new(HashMap::new()),
            }),
            addr,
            acceptor: Mutex::new(None),
            connections: Arc::new(Mutex::new(Vec::new())),
            started: Instant::now(),
        };
        server
            .listen(listener)
            .unwrap_or_else(|e| panic!("JWKS test server cannot start: {e}"));
        server
    }

    /// A server already serving `jwks` at [`JWKS_PATH`].
    pub fn serving(jwks: Value) -> JwksServer {
        let s = Self::start();
        s.set_jwks(jwks);
        s
    }

    fn listen(&self, listener: TcpListener) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let inner = Arc::clone(&self.inner);
        let connections = Arc::clone(&self.connections);
        let stop_flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("jwks-accept".to_string())
            .spawn(move || accept_loop(listener, inner, connections, stop_flag))?;
        *self.acceptor.lock().unwrap_or_else(|p| p.into_inner()) = Some(Acceptor { stop, thread });
        Ok(())
    }

    /// The bound port (stable across [`JwksServer::stop`] / [`JwksServer::resume`]).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Serves `doc` as JSON at exactly `path` (replacing any earlier one).
    pub fn set_document(&self, path: &str, doc: Value) {
        self.inner.lock().documents.insert(path.to_string(), doc);
    }

    /// Stops serving `path` (it becomes 404).
    pub fn remove_document(&self, path: &str) {
        self.inner.lock().documents.remove(path);
    }

    /// Serves `jwks` at [`JWKS_PATH`].
    pub fn set_jwks(&self, jwks: Value) {
        self.set_document(JWKS_PATH, jwks);
    }

    /// Serves `doc` at [`DISCOVERY_PATH`].
    pub fn set_discovery(&self, doc: Value) {
        self.set_document(DISCOVERY_PATH, doc);
    }

    /// How every request is answered from now on. Requests already hanging
    /// keep hanging.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.inner.lock().behaviour = behaviour;
    }

    /// Holds every request from now on: it is logged at once, answered (by
    /// the behaviour current then) only after [`JwksServer::unpause`]. Lets a
    /// test know a fetch is in flight and decide when it lands.
    pub fn pause(&self) {
        self.inner.lock().paused = true;
    }

    /// Answers the held requests, and later ones at once.
    pub fn unpause(&self) {
        self.inner.lock().paused = false;
    }

    /// The current behaviour.
    pub fn behaviour(&self) -> Behaviour {
        self.inner.lock().behaviour.clone()
    }

    /// `Cache-Control` on every 200 response (`None`: no such header).
    pub fn set_cache_control(&self, value: Option<&str>) {
        self.inner.lock().cache_control = value.map(str::to_string);
    }

    /// Closes the listener and every open connection: new connections are
    /// refused until [`JwksServer::resume`]. Returns once the port is closed.
    pub fn stop(&self) {
        let acceptor = self
            .acceptor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(a) = acceptor {
            a.stop.store(true, Ordering::SeqCst);
            let _ = a.thread.join();
        }
        self.inner.epoch.fetch_add(1, Ordering::SeqCst);
        let open = std::mem::take(&mut *self.inner.open.lock().unwrap_or_else(|p| p.into_inner()));
        for (_, stream) in open {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Whether the server is listening.
    pub fn is_listening(&self) -> bool {
        self.acceptor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Listens again on the same port after [`JwksServer::stop`] (no-op if
    /// listening). Fails if the port was taken in between.
    pub fn resume(&self) -> io::Result<()> {
        if self.is_listening() {
            return Ok(());
        }
        // std sets SO_REUSEADDR on Unix, so TIME_WAIT connections do not block this.
        let listener = TcpListener::bind(self.addr)?;
        self.listen(listener)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.inner.lock().log.clone()
    }

    /// Requests received so far whose target is exactly `path`.
    pub fn count(&self, path: &str) -> usize {
        self.inner
            .lock()
            .log
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// Total requests received so far.
    pub fn total(&self) -> usize {
        self.inner.lock().log.len()
    }

    /// The paths requested so far, in order.
    pub fn paths(&self) -> Vec<String> {
        self.inner
            .lock()
            .log
            .iter()
            .map(|r| r.path.clone())
            .collect()
    }

    /// The request log as text, times relative to the server's start (for
    /// failure messages).
    pub fn describe_log(&self) -> String {
        let log = self.inner.lock().log.clone();
        if log.is_empty() {
            return "(no requests)".to_string();
        }
        log.iter()
            .map(|r| {
                format!(
                    "  +{:>6} ms {r}",
                    r.at.saturating_duration_since(self.started).as_millis()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits (at most `timeout`) until at least `n` requests for `path` have
    /// arrived; returns the count then, or an error with the log.
    pub fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        let mut state = self.inner.lock();
        loop {
            let count = state.log.iter().filter(|r| r.path == path).count();
            if count >= n {
                return Ok(count);
            }
            let now = Instant::now();
            if now >= deadline {
                drop(state);
                return Err(format!(
                    "{count} requests for {path} (wanted {n}) within {timeout:?}; log:\n{}",
                    self.describe_log()
                ));
            }
            state = self
                .inner
                .logged
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.inner.shutdown.store(true, Ordering::SeqCst);
        self.stop();
        let threads =
            std::mem::take(&mut *self.connections.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Merges the `keys` arrays of several JWKS documents into one JWKS.
pub fn merge_jwks(sets: &[&Value]) -> Value {
    let keys: Vec<Value> = sets
        .iter()
        .flat_map(|s| s["keys"].as_array().cloned().unwrap_or_default())
        .collect();
    json!({ "keys": keys })
}

/// An OpenID Connect discovery document naming `issuer` and `jwks_uri`.
pub fn discovery_document(issuer: &str, jwks_uri: &str) -> Value {
    json!({
        "issuer": issuer,
        "jwks_uri": jwks_uri,
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256", "EdDSA"]
    })
}

fn accept_loop(
    listener: TcpListener,
    inner: Arc<Inner>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) && !inner.shutdown.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let id = inner.next_connection.fetch_add(1, Ordering::SeqCst);
                let epoch = inner.epoch.load(Ordering::SeqCst);
                if let Ok(clone) = stream.try_clone() {
                    inner
                        .open
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id, clone);
                }
                let conn_inner = Arc::clone(&inner);
                let spawned = thread::Builder::new()
                    .name(format!("jwks-conn-{id}"))
                    .spawn(move || {
                        let _ = serve_connection(stream, &conn_inner, id, epoch);
                        conn_inner
                            .open
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&id);
                    });
                if let Ok(handle) = spawned {
                    let mut list = connections.lock().unwrap_or_else(|p| p.into_inner());
                    list.retain(|h| !h.is_finished());
                    list.push(handle);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5))
            }
            Err(_) => thread::sleep(POLL),
        }
    }
    // Dropping the listener closes the port.
}

/// Whether the connection must end: server dropped, or stopped since it was
/// accepted.
fn closing(inner: &Inner, epoch: u64) -> bool {
    inner.shutdown.load(Ordering::SeqCst) || inner.epoch.load(Ordering::SeqCst) != epoch
}

fn serve_connection(mut stream: TcpStream, inner: &Inner, id: u64, epoch: u64) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // Read one request head.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                let _ = respond(
                    &mut stream,
                    400,
                    "text/plain",
                    None,
                    b"head too large",
                    true,
                );
                return Ok(());
            }
            if closing(inner, epoch) {
                return Ok(());
            }
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if is_timeout(&e) => continue,
                Err(e) => return Err(e),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                Some((n.trim().to_ascii_lowercase(), v.trim().to_string()))
            })
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        // Skip a request body, if any (GETs have none; be tolerant).
        let body_len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + body_len {
            if closing(inner, epoch) {
                return Ok(());
            }
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if is_timeout(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        buf.drain(..head_end + body_len);
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));

        {
            let mut state = inner.lock();
            state.log.push(LoggedRequest {
                method: method.clone(),
                path: path.clone(),
                host: header("host"),
                headers: headers.clone(),
                at: Instant::now(),
                connection: id,
            });
            inner.logged.notify_all();
        }
        while inner.lock().paused {
            if closing(inner, epoch) {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(10));
        }
        let (behaviour, document, cache_control) = {
            let state = inner.lock();
            (
                state.behaviour.clone(),
                state.documents.get(&path).cloned(),
                state.cache_control.clone(),
            )
        };

        let behaviour = match behaviour {
            Behaviour::Delay(delay) => {
                let until = Instant::now() + delay;
                while Instant::now() < until {
                    if closing(inner, epoch) {
                        return Ok(());
                    }
                    thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
                }
                Behaviour::Serve
            }
            other => other,
        };
        match behaviour {
            Behaviour::Delay(_) | Behaviour::Serve => match document {
                Some(doc) if method == "GET" || method == "HEAD" => {
                    let body = doc.to_string();
                    respond(
                        &mut stream,
                        200,
                        "application/json",
                        cache_control.as_deref(),
                        body.as_bytes(),
                        close,
                    )?;
                }
                Some(_) => respond(&mut stream, 405, "text/plain", None, b"method", close)?,
                None => respond(&mut stream, 404, "text/plain", None, b"not found", close)?,
            },
            Behaviour::Status(code) => {
                let body = format!("status {code} from the JWKS test server");
                respond(
                    &mut stream,
                    code,
                    "text/plain",
                    None,
                    body.as_bytes(),
                    close,
                )?;
            }
            Behaviour::Raw(body) => respond(
                &mut stream,
                200,
                "application/json",
                cache_control.as_deref(),
                body.as_bytes(),
                close,
            )?,
            Behaviour::Garbage => respond(
                &mut stream,
                200,
                "application/json",
                cache_control.as_deref(),
                b"<html><body>this is not a JWKS {\"keys\": [</body></html>",
                close,
            )?,
            Behaviour::Oversized(size) => {
                let mut doc = document.unwrap_or_else(|| json!({}));
                let base = doc.to_string().len();
                if let Some(obj) = doc.as_object_mut() {
                    obj.insert(
                        "padding".to_string(),
                        Value::String("x".repeat(size.saturating_sub(base) + 16)),
                    );
                }
                let body = doc.to_string();
                respond(
                    &mut stream,
                    200,
                    "application/json",
                    cache_control.as_deref(),
                    body.as_bytes(),
                    close,
                )?;
            }
            Behaviour::Hang => {
                // Never answer; return when the client goes away or we stop.
                loop {
                    if closing(inner, epoch) {
                        return Ok(());
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) => return Ok(()),
                        Ok(_) => {} // pipelined bytes: ignored, we never answer
                        Err(e) if is_timeout(&e) => {}
                        Err(_) => return Ok(()),
                    }
                }
            }
        }
        if close {
            let _ = stream.shutdown(Shutdown::Write);
            return Ok(());
        }
    }
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    cache_control: Option<&str>,
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(cc) = cache_control {
        head.push_str(&format!("cache-control: {cc}\r\n"));
    }
    if close {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{parse_response, read_response};

    type Answer = (u16, String, Vec<(String, String)>);

    fn get(port: u16, path: &str) -> io::Result<Answer> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: jwks.local\r\nconnection: close\r\n\r\n"
        )?;
        let buf = read_response(&mut s)?;
        let r = parse_response(&buf).map_err(|e| io::Error::other(e.to_string()))?;
        Ok((r.status, r.body_str(), r.headers.clone()))
    }

    #[test]
    fn serves_documents_logs_requests_and_switches_behaviour() {
        let s = JwksServer::serving(json!({"keys": []}));
        s.set_cache_control(Some("max-age=60"));
        let (status, body, headers) = get(s.port(), JWKS_PATH).unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, r#"{"keys":[]}"#);
        assert!(headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("cache-control") && v == "max-age=60"));
        assert_eq!(get(s.port(), "/nope").unwrap().0, 404);
        s.set_behaviour(Behaviour::Status(500));
        assert_eq!(get(s.port(), JWKS_PATH).unwrap().0, 500);
        s.set_behaviour(Behaviour::Garbage);
        let (status, body, _) = get(s.port(), JWKS_PATH).unwrap();
        assert_eq!(status, 200);
        assert!(serde_json::from_str::<Value>(&body).is_err());
        s.set_behaviour(Behaviour::Oversized(100_000));
        let (status, body, _) = get(s.port(), JWKS_PATH).unwrap();
        assert_eq!(status, 200);
        assert!(body.len() >= 100_000);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["keys"], json!([]));
        assert_eq!(s.count(JWKS_PATH), 4);
        assert_eq!(s.count("/nope"), 1);
        assert_eq!(s.requests()[0].host.as_deref(), Some("jwks.local"));
    }

    #[test]
    fn keep_alive_serves_several_requests_on_one_connection() {
        let s = JwksServer::serving(json!({"keys": [1]}));
        let mut c = TcpStream::connect(("127.0.0.1", s.port())).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for _ in 0..3 {
            write!(c, "GET {JWKS_PATH} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
            let buf = read_response(&mut c).unwrap();
            assert_eq!(parse_response(&buf).unwrap().status, 200);
        }
        let conns: Vec<u64> = s.requests().iter().map(|r| r.connection).collect();
        assert_eq!(conns.len(), 3);
        assert!(conns.iter().all(|c| *c == conns[0]));
    }

    #[test]
    fn hang_stop_and_resume() {
        let s = JwksServer::serving(json!({"keys": []}));
        s.set_behaviour(Behaviour::Hang);
        let mut c = TcpStream::connect(("127.0.0.1", s.port())).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        write!(c, "GET {JWKS_PATH} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut b = [0u8; 16];
        let e = c.read(&mut b).unwrap_err();
        assert!(is_timeout(&e), "{e}");
        s.wait_for(JWKS_PATH, 1, Duration::from_secs(5)).unwrap();
        // Stop: the hanging connection is closed and new ones are refused.
        s.stop();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(matches!(c.read(&mut b), Ok(0) | Err(_)));
        assert!(TcpStream::connect(("127.0.0.1", s.port())).is_err());
        s.resume().unwrap();
        s.set_behaviour(Behaviour::Serve);
        assert_eq!(get(s.port(), JWKS_PATH).unwrap().0, 200);
    }

    #[test]
    fn pause_logs_at_once_and_answers_on_unpause() {
        let s = JwksServer::serving(json!({"keys": []}));
        s.pause();
        let port = s.port();
        let t = thread::spawn(move || get(port, JWKS_PATH).map(|r| r.0));
        s.wait_for(JWKS_PATH, 1, Duration::from_secs(5)).unwrap();
        thread::sleep(Duration::from_millis(200));
        assert!(!t.is_finished(), "answered while paused");
        s.unpause();
        assert_eq!(t.join().unwrap().unwrap(), 200);
    }

    #[test]
    fn delay_answers_late() {
        let s = JwksServer::serving(json!({"keys": []}));
        s.set_behaviour(Behaviour::Delay(Duration::from_millis(300)));
        let t = Instant::now();
        assert_eq!(get(s.port(), JWKS_PATH).unwrap().0, 200);
        assert!(t.elapsed() >= Duration::from_millis(300));
    }

    #[test]
    fn drop_ends_hanging_connections_promptly() {
        let s = JwksServer::start();
        s.set_behaviour(Behaviour::Hang);
        let mut c = TcpStream::connect(("127.0.0.1", s.port())).unwrap();
        write!(c, "GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        s.wait_for("/", 1, Duration::from_secs(5)).unwrap();
        let t = Instant::now();
        drop(s);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
}
