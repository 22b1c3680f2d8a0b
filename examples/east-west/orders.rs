//! The `orders` workload: a tiny HTTP/1.1 server on loopback standing in for
//! the application behind the inbound sidecar.
//!
//! It answers every request with `200 orders: 3 items for <caller>`, where
//! the caller is the `URI=` element of the `x-forwarded-client-cert` header
//! the sidecar sets from the verified mTLS peer. It counts requests, so the
//! demo can show that a denied request never reached the application.
//! Bounded: at most `MAX_CONNECTIONS` connections, each closed after
//! `IDLE_TIMEOUT` without a request or when the server stops.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const MAX_CONNECTIONS: u64 = 64;
const MAX_HEAD_BYTES: usize = 64 * 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

/// What the application saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// The caller's SPIFFE ID from `x-forwarded-client-cert` (`URI=`).
    pub caller: Option<String>,
}

pub struct OrdersServer {
    port: u16,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    accept: Option<JoinHandle<()>>,
}

impl OrdersServer {
    /// Binds 127.0.0.1 on a kernel-chosen port and serves in the background.
    pub fn start() -> io::Result<OrdersServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (stop, seen) = (stop.clone(), seen.clone());
            thread::Builder::new()
                .name("orders-accept".to_string())
                .spawn(move || accept_loop(listener, stop, seen))?
        };
        Ok(OrdersServer {
            port,
            stop,
            seen,
            accept: Some(accept),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Requests served so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for OrdersServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: TcpListener, stop: Arc<AtomicBool>, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut connections = 0u64;
    while !stop.load(Ordering::SeqCst) && connections < MAX_CONNECTIONS {
        match listener.accept() {
            Ok((stream, _)) => {
                connections += 1;
                let (stop, seen) = (stop.clone(), seen.clone());
                let _ = thread::Builder::new()
                    .name(format!("orders-conn-{connections}"))
                    .spawn(move || {
                        let _ = serve(stream, &stop, &seen);
                    });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// Serves keep-alive requests on one connection (the sidecar pools them).
fn serve(mut stream: TcpStream, stop: &AtomicBool, seen: &Mutex<Vec<Seen>>) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut buf: Vec<u8> = Vec::new();
    let mut idle_since = Instant::now();
    let mut chunk = [0u8; 8192];
    loop {
        if stop.load(Ordering::SeqCst) || idle_since.elapsed() > IDLE_TIMEOUT {
            return Ok(());
        }
        let Some(head_end) = find(&buf, b"\r\n\r\n") else {
            if buf.len() > MAX_HEAD_BYTES {
                return Ok(());
            }
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_string();
        let path = request_line.next().unwrap_or_default().to_string();
        let mut content_length = 0usize;
        let mut caller = None;
        let mut close = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => content_length = value.parse().unwrap_or(0),
                "x-forwarded-client-cert" => caller = xfcc_uri(value),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        // Wait for (and drop) the body.
        let body_end = head_end + 4 + content_length;
        while buf.len() < body_end {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        buf.drain(..body_end);

        let body = format!(
            "orders: 3 items for {}",
            caller.as_deref().unwrap_or("<unknown caller>")
        );
        if let Ok(mut seen) = seen.lock() {
            seen.push(Seen {
                method,
                path,
                caller,
            });
        }
        write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )?;
        stream.flush()?;
        if close {
            return Ok(());
        }
        idle_since = Instant::now();
    }
}

/// The `URI=` value of the last element of an `x-forwarded-client-cert`
/// header (the element the nearest proxy appended).
fn xfcc_uri(header: &str) -> Option<String> {
    let element = header.rsplit(',').next()?;
    element.split(';').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("uri")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
