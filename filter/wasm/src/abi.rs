//! Raw proxy-wasm ABI 0.2.1 host calls: every call the filter makes, start-up included.
//!
//! The proxy-wasm SDK's `hostcalls` wrappers `panic!` on any status they do not expect, and its
//! map deserialiser indexes without bounds checks. A panic aborts the worker's Wasm VM, so the
//! filter does not use the SDK: it calls the ABI directly, every status becomes a value, and
//! every buffer the host returns is parsed with checked arithmetic. (The exports, the other half
//! of the ABI, are in [`crate::exports`].)

use std::ptr::{null, null_mut};

/// Proxy-wasm status codes (ABI 0.2.1).
pub const OK: u32 = 0;
pub const NOT_FOUND: u32 = 1;
pub const BAD_ARGUMENT: u32 = 2;
pub const CAS_MISMATCH: u32 = 8;

/// `MapType` values.
pub const HTTP_REQUEST_HEADERS: u32 = 0;
pub const HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
/// `StreamType::HttpRequest`.
const STREAM_HTTP_REQUEST: u32 = 0;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_http_call(
        upstream_data: *const u8,
        upstream_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        body_data: *const u8,
        body_size: usize,
        trailers_data: *const u8,
        trailers_size: usize,
        timeout_milliseconds: u32,
        return_token: *mut u32,
    ) -> u32;
    fn proxy_call_foreign_function(
        function_name_data: *const u8,
        function_name_size: usize,
        arguments_data: *const u8,
        arguments_size: usize,
        results_data: *mut *mut u8,
        results_size: *mut usize,
    ) -> u32;
}

/// Takes ownership of a buffer the host allocated through
/// [`crate::exports::proxy_on_memory_allocate`] (exactly `size` bytes, `Vec<u8>` layout).
///
/// # Safety
/// `data` must be null or a pointer returned by `proxy_on_memory_allocate(size)`, not yet freed.
unsafe fn take(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: per the contract above, `data` owns an allocation of exactly `size` bytes with
    // the global allocator's layout for `[u8; size]`, which is what `Vec` expects.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// A header value; `None` when absent or on any host error.
pub fn header_value(map_type: u32, name: &str) -> Option<Vec<u8>> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the key is a live slice; the out-pointers are valid locals.
    let status = unsafe {
        proxy_get_header_map_value(map_type, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    // SAFETY: on return the host has either left `data` null or handed us its allocation.
    let bytes = unsafe { take(data, size) };
    (status == OK).then_some(bytes)
}

/// Every header of a map as (name, value) byte pairs; empty on any host error.
pub fn header_pairs(map_type: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the out-pointers are valid locals.
    let status = unsafe { proxy_get_header_map_pairs(map_type, &mut data, &mut size) };
    // SAFETY: as in `header_value`.
    let bytes = unsafe { take(data, size) };
    if status != OK {
        return Vec::new();
    }
    deserialize_pairs(&bytes).unwrap_or_default()
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(raw)).ok()
}

/// The ABI's map encoding: `count`, then `count` × (name size, value size), then each name and
/// value followed by a NUL. Returns `None` if the buffer is inconsistent.
pub fn deserialize_pairs(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)?;
    let mut pos = count.checked_mul(8)?.checked_add(4)?;
    let mut pairs = Vec::with_capacity(count.min(256));
    for i in 0..count {
        let sizes_at = 4 + i * 8;
        let name_size = read_u32(bytes, sizes_at)?;
        let value_size = read_u32(bytes, sizes_at + 4)?;
        let name = bytes.get(pos..pos.checked_add(name_size)?)?.to_vec();
        pos = pos.checked_add(name_size)?.checked_add(1)?;
        let value = bytes.get(pos..pos.checked_add(value_size)?)?.to_vec();
        pos = pos.checked_add(value_size)?.checked_add(1)?;
        pairs.push((name, value));
    }
    Some(pairs)
}

fn serialize_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut size = 4;
    for (k, v) in pairs {
        size += 8 + k.len() + v.len() + 2;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&u32::try_from(pairs.len()).unwrap_or(0).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&u32::try_from(k.len()).unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&u32::try_from(v.len()).unwrap_or(0).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// An Envoy attribute (`["connection", "mtls"]`); `None` when absent or on any host error.
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    let serialized = path.join("\0");
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the path is a live slice; the out-pointers are valid locals.
    let status =
        unsafe { proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size) };
    // SAFETY: as in `header_value`.
    let bytes = unsafe { take(data, size) };
    (status == OK && !data.is_null()).then_some(bytes)
}

/// Sets filter state `wasm.<name>`; ignores host errors.
pub fn set_property(name: &str, value: &str) {
    // SAFETY: both slices are live for the call; the host copies them.
    let _ = unsafe { proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) };
}

/// Shared data and its CAS token; `None` when absent or on any host error.
pub fn shared_get(key: &str) -> Option<(Vec<u8>, u32)> {
    let mut data = null_mut();
    let mut size = 0;
    let mut cas = 0;
    // SAFETY: the key is a live slice; the out-pointers are valid locals.
    let status =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    // SAFETY: as in `header_value`.
    let bytes = unsafe { take(data, size) };
    (status == OK).then_some((bytes, cas))
}

/// Writes shared data (with `cas`, only if unchanged since read). Returns the ABI status.
pub fn shared_set(key: &str, value: &[u8], cas: Option<u32>) -> u32 {
    // SAFETY: both slices are live for the call; the host copies them.
    unsafe {
        proxy_set_shared_data(
            key.as_ptr(),
            key.len(),
            if value.is_empty() {
                null()
            } else {
                value.as_ptr()
            },
            value.len(),
            cas.unwrap_or(0),
        )
    }
}

/// Sends a local reply for the current HTTP context. False if the host refused.
pub fn send_local_response(status: u32, headers: &[(&str, &str)], body: &[u8]) -> bool {
    let serialized = serialize_pairs(headers);
    let details = "tokenbind";
    // SAFETY: every pointer comes from a live slice passed with its length; the host copies.
    let result = unsafe {
        proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            serialized.as_ptr(),
            serialized.len(),
            -1,
        )
    };
    result == OK
}

/// Resumes the current (paused) HTTP request.
pub fn continue_request() -> bool {
    // SAFETY: no pointers involved.
    unsafe { proxy_continue_stream(STREAM_HTTP_REQUEST) == OK }
}

pub fn increment_metric(id: u32, offset: i64) {
    // SAFETY: no pointers involved.
    let _ = unsafe { proxy_increment_metric(id, offset) };
}

pub fn record_metric(id: u32, value: u64) {
    // SAFETY: no pointers involved.
    let _ = unsafe { proxy_record_metric(id, value) };
}

/// Host time in nanoseconds since the Unix epoch.
pub fn now_nanos() -> Option<u64> {
    let mut t = 0u64;
    // SAFETY: the out-pointer is a valid local.
    let status = unsafe { proxy_get_current_time_nanoseconds(&mut t) };
    (status == OK).then_some(t)
}

/// `BufferType` values.
pub const BUFFER_HTTP_CALL_RESPONSE_BODY: u32 = 4;
pub const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
/// `MetricType` values.
pub const METRIC_COUNTER: u32 = 0;
pub const METRIC_GAUGE: u32 = 1;

/// Writes a log line at `level` (proxy-wasm `LogLevel`: 0 trace … 5 critical); a host error
/// is ignored (there is nowhere else to report it).
pub fn log(level: u32, message: &str) {
    // SAFETY: the message is a live slice; the host copies it.
    let _ = unsafe { proxy_log(level, message.as_ptr(), message.len()) };
}

/// Defines a metric; its id, or the host status.
pub fn define_metric(metric_type: u32, name: &str) -> Result<u32, u32> {
    let mut id = 0;
    // SAFETY: the name is a live slice; the out-pointer is a valid local.
    let status = unsafe { proxy_define_metric(metric_type, name.as_ptr(), name.len(), &mut id) };
    if status == OK {
        Ok(id)
    } else {
        Err(status)
    }
}

/// Up to `max_size` bytes of a host buffer; `None` when absent or on any host error.
pub fn buffer(buffer_type: u32, max_size: usize) -> Option<Vec<u8>> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the out-pointers are valid locals.
    let status = unsafe { proxy_get_buffer_bytes(buffer_type, 0, max_size, &mut data, &mut size) };
    // SAFETY: as in `header_value`.
    let bytes = unsafe { take(data, size) };
    (status == OK && !data.is_null()).then_some(bytes)
}

/// Sets the root context's timer period. False if the host refused.
pub fn set_tick_period_ms(period: u32) -> bool {
    // SAFETY: no pointers involved.
    unsafe { proxy_set_tick_period_milliseconds(period) == OK }
}

/// Makes `context_id` the context later host calls act on. False if it is gone.
pub fn set_effective_context(context_id: u32) -> bool {
    // SAFETY: no pointers involved.
    unsafe { proxy_set_effective_context(context_id) == OK }
}

/// Dispatches an HTTP call (no body, no trailers) through the Envoy cluster `upstream`: the
/// call's token, or the host status (`BAD_ARGUMENT` for an unknown cluster or bad headers,
/// `INTERNAL_FAILURE` when Envoy cannot start the call, any other status as it is).
pub fn http_call(upstream: &str, headers: &[(&str, &str)], timeout_ms: u32) -> Result<u32, u32> {
    let headers = serialize_pairs(headers);
    let trailers = serialize_pairs(&[]);
    let mut token = 0;
    // SAFETY: every pointer comes from a live slice passed with its length (the body is absent:
    // null, 0); the host copies them. The out-pointer is a valid local.
    let status = unsafe {
        proxy_http_call(
            upstream.as_ptr(),
            upstream.len(),
            headers.as_ptr(),
            headers.len(),
            null(),
            0,
            trailers.as_ptr(),
            trailers.len(),
            timeout_ms,
            &mut token,
        )
    };
    if status == OK {
        Ok(token)
    } else {
        Err(status)
    }
}

/// Calls a host foreign function (Envoy: `verify_signature`, ...). The status and the result
/// bytes (empty when the host returned none).
pub fn call_foreign_function(name: &str, arguments: &[u8]) -> (u32, Vec<u8>) {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: both slices are live for the call; the out-pointers are valid locals.
    let status = unsafe {
        proxy_call_foreign_function(
            name.as_ptr(),
            name.len(),
            if arguments.is_empty() {
                null()
            } else {
                arguments.as_ptr()
            },
            arguments.len(),
            &mut data,
            &mut size,
        )
    };
    // SAFETY: as in `header_value`.
    let bytes = unsafe { take(data, size) };
    (status, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_round_trip_and_truncation() {
        let bytes = serialize_pairs(&[(":path", "/a"), ("dpop", "x.y.z"), ("e", "")]);
        let pairs = deserialize_pairs(&bytes).unwrap();
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[1], (b"dpop".to_vec(), b"x.y.z".to_vec()));
        for cut in 0..bytes.len() {
            // Never panics; truncated input is refused (or parses a consistent prefix).
            let _ = deserialize_pairs(&bytes[..cut]);
        }
        assert!(deserialize_pairs(&[255, 255, 255, 255]).is_none());
        assert_eq!(deserialize_pairs(&[]), Some(vec![]));
    }
}
