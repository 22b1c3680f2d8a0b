//! The narrow host interface: the few proxy-wasm host calls the filter makes, each turning a
//! host status into an `Option`/`Result` instead of the SDK's panicking convenience methods
//! (which `unwrap` and would, for example, abort the VM on a non-UTF-8 header value).

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};
use std::time::UNIX_EPOCH;

/// A request header's value as bytes, or `None` when absent or unreadable.
pub fn request_header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
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
