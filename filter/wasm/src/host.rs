//! The narrow host interface: the proxy-wasm host calls the filter makes. Every one goes
//! through [`crate::abi`], which turns every host status into a value, start-up (metrics,
//! configuration, logging) and remote JWKS fetches included: nothing here can panic on a host
//! status.

use crate::abi;
use tokenbind_core::crypto::{self, HostCryptoError, HostRequest, SignatureHost};
use tokenbind_core::peer::{self, PeerWant};
use tokenbind_core::remote::FetchRequest;
use tokenbind_core::{FetchHost, Host, Peer, SharedData, SharedError};

/// The proxy, as the decision engine sees it. Host calls are global in proxy-wasm, so this
/// carries no state.
pub struct Envoy;

impl SharedData for Envoy {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        abi::shared_get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        match abi::shared_set(key, value, cas) {
            abi::OK => Ok(()),
            abi::CAS_MISMATCH => Err(SharedError::CasMismatch),
            _ => Err(SharedError::Other),
        }
    }
}

impl FetchHost for Envoy {
    /// A GET through an Envoy cluster. The engine dispatches fetches only from the root
    /// context's timer, so responses come back to the root context.
    fn http_get(&self, request: &FetchRequest) -> Result<u32, u32> {
        abi::http_call(
            &request.cluster,
            &[
                (":method", "GET"),
                (":path", &request.path),
                (":authority", &request.authority),
                (":scheme", "https"),
                ("accept", "application/json"),
                ("user-agent", "tokenbind"),
            ],
            u32::try_from(request.timeout_ms).unwrap_or(u32::MAX),
        )
    }
}

impl Host for Envoy {
    fn request_header(&self, name: &str) -> Option<String> {
        // Non-UTF-8 bytes become U+FFFD, which no token, proof or URI check accepts.
        abi::header_value(abi::HTTP_REQUEST_HEADERS, name).map(text)
    }

    fn request_header_values(&self, name: &str) -> Vec<String> {
        abi::header_pairs(abi::HTTP_REQUEST_HEADERS)
            .into_iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| text(v))
            .collect()
    }

    fn peer(&self, want: PeerWant) -> Peer {
        peer::read(want, |attribute| abi::property(&["connection", attribute]))
    }

    fn downstream_tls(&self) -> Option<bool> {
        Some(abi::property(&["connection", "tls_version"]).is_some_and(|v| !v.is_empty()))
    }
}

/// Header bytes as text without a second copy when they are UTF-8 (they nearly always are).
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Envoy's BoringSSL, through the `verify_signature` foreign function. A failed call (not a
/// "does not verify") increments `tokenbind.crypto.host_error`; the core then falls back to
/// pure Rust.
pub struct EnvoyCrypto {
    pub error_counter: Option<u32>,
}

impl SignatureHost for EnvoyCrypto {
    fn verify(&self, request: &HostRequest<'_>) -> Result<bool, HostCryptoError> {
        let arguments = crypto::encode_arguments(request);
        let (status, result) = abi::call_foreign_function("verify_signature", &arguments);
        let outcome = match status {
            abi::OK => crypto::decode_result(&result).map(|(valid, _error)| valid),
            abi::NOT_FOUND => Err(HostCryptoError::Missing),
            abi::BAD_ARGUMENT => Err(HostCryptoError::BadArgument),
            other => Err(HostCryptoError::Failed(format!("status {other}"))),
        };
        if outcome.is_err() {
            if let Some(id) = self.error_counter {
                increment(id);
            }
        }
        outcome
    }
}

/// Unix time in milliseconds from the host clock; 0 only if the host cannot tell, which makes
/// every token look expired (fail closed).
pub fn now_unix_millis() -> u64 {
    abi::now_nanos().map_or(0, |n| n / 1_000_000)
}

/// The plugin configuration bytes.
pub fn plugin_configuration() -> Option<Vec<u8>> {
    abi::buffer(abi::BUFFER_PLUGIN_CONFIGURATION, usize::MAX)
}

/// Defines a counter: its id, or the host status.
pub fn define_counter(name: &str) -> Result<u32, u32> {
    abi::define_metric(abi::METRIC_COUNTER, name)
}

pub fn define_gauge(name: &str) -> Result<u32, u32> {
    abi::define_metric(abi::METRIC_GAUGE, name)
}

pub fn increment(id: u32) {
    abi::increment_metric(id, 1);
}

pub fn set_gauge(id: u32, value: u64) {
    abi::record_metric(id, value);
}

/// Sends a local reply. Returns false if the host refused.
pub fn send_reply(status: u32, headers: &[(&str, &str)], body: &[u8]) -> bool {
    abi::send_local_response(status, headers, body)
}

/// Sets Envoy filter state `wasm.<name>` (readable by access logs as
/// `%FILTER_STATE(wasm.<name>:PLAIN)%`).
pub fn set_filter_state(name: &str, value: &str) {
    abi::set_property(name, value);
}

/// A header of the HTTP call response being delivered, as text (lossy).
pub fn call_response_header(name: &str) -> Option<String> {
    abi::header_value(abi::HTTP_CALL_RESPONSE_HEADERS, name)
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// The body of the HTTP call response being delivered.
pub fn call_response_body(size: usize) -> Option<Vec<u8>> {
    abi::buffer(abi::BUFFER_HTTP_CALL_RESPONSE_BODY, size)
}

/// The `log` crate's logger, over the raw `proxy_log` call (the SDK's logger panics on an
/// unexpected host status, and deny lines are logged on the request path).
pub struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => 0,
            log::Level::Debug => 1,
            log::Level::Info => 2,
            log::Level::Warn => 3,
            log::Level::Error => 4,
        };
        abi::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

pub static LOGGER: Logger = Logger;

/// A line at proxy-wasm's `critical` level (above what the `log` crate has).
pub fn log_critical(message: &str) {
    abi::log(5, message);
}

/// Makes `context_id` the context subsequent host calls act on. False if it is gone.
pub fn set_effective_context(context_id: u32) -> bool {
    abi::set_effective_context(context_id)
}

pub fn resume_request() {
    abi::continue_request();
}

pub fn set_tick_period_ms(ms: u64) {
    let _ = abi::set_tick_period_ms(u32::try_from(ms).unwrap_or(u32::MAX));
}

/// A uniformly random number in [0, 1) from WASI randomness (0.5 if unavailable).
pub fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}
