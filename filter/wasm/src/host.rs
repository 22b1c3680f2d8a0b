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
