//! A deliberately small HTTP/1.1 client over rustls.
//!
//! It writes the request bytes itself, so tests can send any header set,
//! including duplicates and odd casing. Every request uses its own TLS
//! connection with `Connection: close`, so the TLS peer identity of each
//! request is exactly the one chosen.

use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::pki::Leaf;

/// Per-socket connect/read/write timeout.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// A parsed HTTP/1.1 response.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// All header lines in order, names as received.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked if needed.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as (lossy) UTF-8.
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "HTTP/1.1 {} {}", self.status, self.reason)?;
        for (k, v) in &self.headers {
            writeln!(f, "{k}: {v}")?;
        }
        writeln!(f)?;
        write!(f, "{}", self.body_str())
    }
}

/// Why a request produced no HTTP response.
#[derive(Debug)]
pub enum ClientError {
    Connect(io::Error),
    /// TLS handshake or record-layer failure (e.g. the server rejected our
    /// certificate, or the lack of one).
    Tls(String),
    Io(io::Error),
    /// The server closed the connection without sending anything.
    EmptyResponse,
    Malformed(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect(e) => write!(f, "connect failed: {e}"),
            ClientError::Tls(e) => write!(f, "TLS error: {e}"),
            ClientError::Io(e) => write!(f, "I/O error: {e}"),
            ClientError::EmptyResponse => write!(f, "connection closed without a response"),
            ClientError::Malformed(e) => write!(f, "malformed response: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

fn io_or_tls(e: io::Error) -> ClientError {
    // rustls reports TLS failures (alerts, bad certs) as InvalidData wrapping
    // a rustls::Error.
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => ClientError::Tls(tls.to_string()),
        None => ClientError::Io(e),
    }
}

/// An HTTPS client with a fixed TLS identity (or none), trusting one CA.
#[derive(Clone)]
pub struct Client {
    config: Arc<ClientConfig>,
    /// Name of the identity, for messages.
    pub identity: String,
}

impl Client {
    /// Trusts `ca_pem`; presents `identity`'s certificate and key if given.
    /// Panics on bad PEM (test code).
    pub fn new(ca_pem: &str, identity: Option<&Leaf>) -> Client {
        let mut roots = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut BufReader::new(ca_pem.as_bytes())) {
            let cert = cert.unwrap_or_else(|e| panic!("bad CA PEM: {e}"));
            roots
                .add(cert)
                .unwrap_or_else(|e| panic!("CA cert rejected by rustls: {e}"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("rustls protocol versions: {e}"))
            .with_root_certificates(roots);
        let config = match identity {
            Some(leaf) => {
                let chain: Vec<CertificateDer<'static>> =
                    rustls_pemfile::certs(&mut BufReader::new(leaf.cert_pem.as_bytes()))
                        .collect::<Result<_, _>>()
                        .unwrap_or_else(|e| panic!("bad cert PEM for {}: {e}", leaf.name));
                let key: PrivateKeyDer<'static> =
                    rustls_pemfile::private_key(&mut BufReader::new(leaf.key_pem.as_bytes()))
                        .unwrap_or_else(|e| panic!("bad key PEM for {}: {e}", leaf.name))
                        .unwrap_or_else(|| panic!("no private key in PEM for {}", leaf.name));
                builder
                    .with_client_auth_cert(chain, key)
                    .unwrap_or_else(|e| panic!("client cert for {} rejected: {e}", leaf.name))
            }
            None => builder.with_no_client_auth(),
        };
        Client {
            config: Arc::new(config),
            identity: identity.map_or_else(|| "<no certificate>".to_string(), |l| l.name.clone()),
        }
    }

    /// `GET path` with the given extra headers. `Host`, `Connection: close`
    /// are added; header order and duplicates are kept as given.
    pub fn get(
        &self,
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, ClientError> {
        self.request(port, "GET", path, headers, b"")
    }

    /// Any method, with a body (Content-Length added when non-empty).
    pub fn request(
        &self,
        port: u16,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, ClientError> {
        self.send_raw(port, &request_bytes(method, path, headers, body))
    }

    /// Sends `request` verbatim over a new TLS connection to 127.0.0.1:`port`
    /// (SNI `localhost`) and reads the response until the server closes.
    pub fn send_raw(&self, port: u16, request: &[u8]) -> Result<Response, ClientError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(ClientError::Connect)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(ClientError::Io)?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))
            .map_err(ClientError::Io)?;
        tcp.set_nodelay(true).map_err(ClientError::Io)?;
        let name = ServerName::try_from("localhost")
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .to_owned();
        let conn = ClientConnection::new(self.config.clone(), name)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let mut tls = StreamOwned::new(conn, tcp);
        tls.write_all(request).map_err(io_or_tls)?;
        tls.flush().map_err(io_or_tls)?;

        let buf = read_response(&mut tls).map_err(io_or_tls)?;
        if buf.is_empty() {
            return Err(ClientError::EmptyResponse);
        }
        parse_response(&buf)
    }
}

/// The bytes of an HTTP/1.1 request as [`Client::request`] sends it:
/// `host: localhost`, the given headers in order, `content-length` when the
/// body is non-empty, `connection: close`.
pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\n");
    for (k, v) in headers {
        raw.push_str(k);
        raw.push_str(": ");
        raw.push_str(v);
        raw.push_str("\r\n");
    }
    if !body.is_empty() {
        raw.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    raw.push_str("connection: close\r\n\r\n");
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A plaintext HTTP/1.1 request to 127.0.0.1:`port` over a new TCP
/// connection (no TLS), e.g. a workload calling its sidecar's outbound
/// listener on loopback. Same request shape as [`Client::request`].
pub fn plain_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, ClientError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(ClientError::Connect)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(ClientError::Io)?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(ClientError::Io)?;
    tcp.set_nodelay(true).map_err(ClientError::Io)?;
    tcp.write_all(&request_bytes(method, path, headers, body))
        .map_err(ClientError::Io)?;
    let buf = read_response(&mut tcp).map_err(ClientError::Io)?;
    if buf.is_empty() {
        return Err(ClientError::EmptyResponse);
    }
    parse_response(&buf)
}

/// `GET path` in plaintext; see [`plain_request`].
pub fn plain_get(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<Response, ClientError> {
    plain_request(port, "GET", path, headers, b"")
}

/// Reads one HTTP/1.1 response: until it is complete by its own framing
/// (content-length or chunked), else until EOF.
///
/// Stopping at the framing matters: after a `Connection: close` response
/// Envoy waits for the client to close first (delayed_close_timeout, 1 s),
/// so reading to EOF would cost a second per request.
pub fn read_response<R: Read>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match r.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if is_complete(&buf) {
                    break;
                }
            }
            // Peer closed without close_notify: fine once we have data.
            Err(e)
                if !buf.is_empty()
                    && matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                    ) =>
            {
                break
            }
            Err(e) => return Err(e),
        }
    }
    Ok(buf)
}

/// Whether `buf` holds a complete response by its framing. Close-delimited
/// responses are never complete before EOF.
fn is_complete(buf: &[u8]) -> bool {
    let Ok((resp, rest)) = parse_head(buf) else {
        return false;
    };
    if resp.status == 204 || resp.status == 304 || (100..200).contains(&resp.status) {
        return true;
    }
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return dechunk(rest).is_ok();
    }
    match resp.header("content-length").map(str::parse::<usize>) {
        Some(Ok(len)) => rest.len() >= len,
        _ => false,
    }
}

/// Parses one HTTP/1.1 response (status line, headers, body by
/// chunked / content-length / close delimiting).
pub fn parse_response(buf: &[u8]) -> Result<Response, ClientError> {
    let (mut resp, rest) = parse_head(buf)?;
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    resp.body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| ClientError::Malformed(format!("bad content-length {len:?}")))?;
        if rest.len() < len {
            return Err(ClientError::Malformed(format!(
                "body truncated: {} of {len} bytes",
                rest.len()
            )));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(resp)
}

/// Status line and headers (body left empty), and the bytes after them.
fn parse_head(buf: &[u8]) -> Result<(Response, &[u8]), ClientError> {
    let head_end = find(buf, b"\r\n\r\n")
        .ok_or_else(|| ClientError::Malformed("no end of headers".to_string()))?;
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| ClientError::Malformed("headers are not UTF-8".to_string()))?;
    let rest = &buf[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(ClientError::Malformed(format!(
            "bad status line {status_line:?}"
        )));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Malformed(format!("bad status line {status_line:?}")))?;
    let reason = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    for line in lines {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| ClientError::Malformed(format!("bad header line {line:?}")))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let resp = Response {
        status,
        reason,
        headers,
        body: Vec::new(),
    };
    Ok((resp, rest))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n")
            .ok_or_else(|| ClientError::Malformed("chunk size line".to_string()))?;
        let size_str = std::str::from_utf8(&data[..line_end])
            .map_err(|_| ClientError::Malformed("chunk size not UTF-8".to_string()))?;
        let size_hex = size_str.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| ClientError::Malformed(format!("bad chunk size {size_hex:?}")))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(ClientError::Malformed("chunk truncated".to_string()));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_multi_headers() {
        let r = parse_response(
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: a\r\nwww-authenticate: b\r\ncontent-length: 2\r\n\r\nhiXX",
        )
        .unwrap();
        assert_eq!(r.status, 401);
        assert_eq!(r.reason, "Unauthorized");
        assert_eq!(r.header_all("www-authenticate"), vec!["a", "b"]);
        assert_eq!(r.header("Content-Length"), Some("2"));
        assert_eq!(r.body, b"hi");
    }

    #[test]
    fn parses_chunked() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
    }
}
