//! The narrow host interface: the few proxy-wasm host calls the filter makes, each turning a
//! host status into an `Option`/`Result` instead of the SDK's panicking convenience methods
//! (which `unwrap` and would, for example, abort the VM on a non-UTF-8 header value).

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};
use std::time::UNIX_EPOCH;
use tokenbind_core::{Host, Peer, SharedData, SharedError};

/// The proxy, as the decision engine sees it. Host calls are global in proxy-wasm, so this
/// carries no state.
pub struct Envoy;

impl SharedData for Envoy {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), Some(cas))) => Some((value, cas)),
            Ok((Some(value), None)) => Some((value, 0)),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(|status| match status {
            Status::CasMismatch => SharedError::CasMismatch,
            _ => SharedError::Other,
        })
    }
}

impl Host for Envoy {
    fn request_header(&self, name: &str) -> Option<String> {
        // Non-UTF-8 bytes become U+FFFD, which no token, proof or URI check accepts.
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    }

    fn request_header_values(&self, name: &str) -> Vec<String> {
        hostcalls::get_map_bytes(MapType::HttpRequestHeaders)
            .map(|headers| {
                headers
                    .into_iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| String::from_utf8_lossy(&v).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn peer(&self) -> Peer {
        Peer::from_attributes(
            property(&["connection", "mtls"]).as_deref(),
            property(&["connection", "uri_san_peer_certificate"]).as_deref(),
            property(&["connection", "sha256_peer_certificate_digest"]).as_deref(),
        )
    }
}

/// An Envoy attribute (`connection.mtls`, ...), or `None` when absent or unreadable.
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// Current Unix time in seconds from the host clock; 0 only if the host cannot tell,
/// which makes every token look expired (fail closed).
pub fn now_unix_seconds() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// The plugin configuration bytes.
pub fn plugin_configuration() -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
}

pub fn define_counter(name: &str) -> Result<u32, Status> {
    hostcalls::define_metric(MetricType::Counter, name)
}

pub fn increment(id: u32) {
    // A failed increment must never fail the request.
    let _ = hostcalls::increment_metric(id, 1);
}

/// Sends a local reply. Returns false if the host refused.
pub fn send_reply(status: u32, headers: &[(&str, &str)], body: &[u8]) -> bool {
    hostcalls::send_http_response(status, headers.to_vec(), Some(body)).is_ok()
}

/// Unix time in milliseconds from the host clock (0 if unavailable).
pub fn now_unix_millis() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn define_gauge(name: &str) -> Result<u32, Status> {
    hostcalls::define_metric(MetricType::Gauge, name)
}

pub fn set_gauge(id: u32, value: u64) {
    let _ = hostcalls::record_metric(id, value);
}

/// Dispatches a GET through an Envoy cluster; returns the call token.
pub fn http_get(
    cluster: &str,
    authority: &str,
    path: &str,
    timeout_ms: u64,
) -> Result<u32, Status> {
    hostcalls::dispatch_http_call(
        cluster,
        vec![
            (":method", "GET"),
            (":path", path),
            (":authority", authority),
            (":scheme", "https"),
            ("accept", "application/json"),
            ("user-agent", "tokenbind"),
        ],
        None,
        vec![],
        std::time::Duration::from_millis(timeout_ms),
    )
}

/// A header of the HTTP call response being delivered, as text (lossy).
pub fn call_response_header(name: &str) -> Option<String> {
    hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name)
        .ok()
        .flatten()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// The body of the HTTP call response being delivered.
pub fn call_response_body(size: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size)
        .ok()
        .flatten()
}

/// Makes `context_id` the context subsequent host calls act on. False if it is gone.
pub fn set_effective_context(context_id: u32) -> bool {
    hostcalls::set_effective_context(context_id).is_ok()
}

pub fn resume_request() {
    let _ = hostcalls::resume_http_request();
}

pub fn set_tick_period_ms(ms: u64) {
    let _ = hostcalls::set_tick_period(std::time::Duration::from_millis(ms));
}

/// A uniformly random number in [0, 1) from WASI randomness (0.5 if unavailable).
pub fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
}

/// Sets Envoy filter state `wasm.<name>` (readable by access logs as
/// `%FILTER_STATE(wasm.<name>:PLAIN)%`). Calls the ABI directly: the SDK's wrapper panics on
/// any status but Ok, and a missing stream must not abort the VM.
pub fn set_filter_state(name: &str, value: &str) {
    // SAFETY: both pointers come from live slices whose lengths are passed alongside; the host
    // copies the bytes before returning and keeps no reference to them.
    let _status =
        unsafe { proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) };
}
