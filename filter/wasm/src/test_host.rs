//! A stand-in proxy for native unit tests: the `env.proxy_*` functions [`crate::abi`] imports,
//! defined as plain symbols so the test binary links. Each test thread has its own state.
//! Request headers are what [`set_request_header`] gave; other headers, properties, shared data
//! and foreign functions are absent (`NOT_FOUND`); the
//! configuration buffer is what [`set_configuration`] gave; log lines and local replies are
//! recorded.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(clippy::missing_safety_doc, clippy::not_unsafe_ptr_arg_deref)]

use crate::abi::{NOT_FOUND, OK};
use crate::exports::proxy_on_memory_allocate;
use std::cell::{Cell, RefCell};

thread_local! {
    static LOG: RefCell<Vec<(u32, String)>> = const { RefCell::new(Vec::new()) };
    static REPLIES: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    static CONFIGURATION: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static NEXT_ID: Cell<u32> = const { Cell::new(1) };
    static REQUEST_HEADERS: RefCell<Vec<(String, String)>> = const { RefCell::new(Vec::new()) };
}

/// Sets a request header every request of this test thread carries.
pub fn set_request_header(name: &str, value: &str) {
    REQUEST_HEADERS.with(|h| h.borrow_mut().push((name.to_owned(), value.to_owned())));
}

pub fn set_configuration(json: &str) {
    CONFIGURATION.with(|c| *c.borrow_mut() = json.as_bytes().to_vec());
}

/// Log lines so far, `(level, message)`.
pub fn log_lines() -> Vec<(u32, String)> {
    LOG.with(|l| l.borrow().clone())
}

/// Statuses of the local replies sent so far.
pub fn replies() -> Vec<u32> {
    REPLIES.with(|r| r.borrow().clone())
}

unsafe fn text(data: *const u8, size: usize) -> String {
    String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(data, size) }).into_owned()
}

/// Hands `bytes` to the module the way a proxy does: in memory from `proxy_on_memory_allocate`.
unsafe fn give(bytes: &[u8], data: *mut *mut u8, size: *mut usize) {
    let p = proxy_on_memory_allocate(bytes.len());
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        *data = p;
        *size = bytes.len();
    }
}

#[no_mangle]
pub extern "C" fn proxy_log(level: u32, data: *const u8, size: usize) -> u32 {
    let message = unsafe { text(data, size) };
    LOG.with(|l| l.borrow_mut().push((level, message)));
    OK
}

#[no_mangle]
pub extern "C" fn proxy_get_buffer_bytes(
    buffer_type: u32,
    _start: usize,
    _max_size: usize,
    data: *mut *mut u8,
    size: *mut usize,
) -> u32 {
    if buffer_type != crate::abi::BUFFER_PLUGIN_CONFIGURATION {
        return NOT_FOUND;
    }
    let bytes = CONFIGURATION.with(|c| c.borrow().clone());
    unsafe { give(&bytes, data, size) };
    OK
}

#[no_mangle]
pub extern "C" fn proxy_get_header_map_value(
    map_type: u32,
    key: *const u8,
    key_size: usize,
    data: *mut *mut u8,
    size: *mut usize,
) -> u32 {
    if map_type != crate::abi::HTTP_REQUEST_HEADERS {
        return NOT_FOUND;
    }
    let name = unsafe { text(key, key_size) };
    let value = REQUEST_HEADERS.with(|h| {
        h.borrow()
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    });
    match value {
        Some(v) => {
            unsafe { give(v.as_bytes(), data, size) };
            OK
        }
        None => NOT_FOUND,
    }
}

#[no_mangle]
pub extern "C" fn proxy_get_header_map_pairs(
    _map_type: u32,
    _data: *mut *mut u8,
    _size: *mut usize,
) -> u32 {
    NOT_FOUND
}

#[no_mangle]
pub extern "C" fn proxy_get_property(
    _path: *const u8,
    _path_size: usize,
    _data: *mut *mut u8,
    _size: *mut usize,
) -> u32 {
    NOT_FOUND
}

#[no_mangle]
pub extern "C" fn proxy_set_property(
    _path: *const u8,
    _path_size: usize,
    _value: *const u8,
    _value_size: usize,
) -> u32 {
    OK
}

#[no_mangle]
pub extern "C" fn proxy_get_shared_data(
    _key: *const u8,
    _key_size: usize,
    _data: *mut *mut u8,
    _size: *mut usize,
    _cas: *mut u32,
) -> u32 {
    NOT_FOUND
}

#[no_mangle]
pub extern "C" fn proxy_set_shared_data(
    _key: *const u8,
    _key_size: usize,
    _value: *const u8,
    _value_size: usize,
    _cas: u32,
) -> u32 {
    OK
}

#[no_mangle]
pub extern "C" fn proxy_send_local_response(
    status_code: u32,
    _details: *const u8,
    _details_size: usize,
    _body: *const u8,
    _body_size: usize,
    _headers: *const u8,
    _headers_size: usize,
    _grpc_status: i32,
) -> u32 {
    REPLIES.with(|r| r.borrow_mut().push(status_code));
    OK
}

#[no_mangle]
pub extern "C" fn proxy_continue_stream(_stream_type: u32) -> u32 {
    OK
}

#[no_mangle]
pub extern "C" fn proxy_increment_metric(_metric_id: u32, _offset: i64) -> u32 {
    OK
}

#[no_mangle]
pub extern "C" fn proxy_record_metric(_metric_id: u32, _value: u64) -> u32 {
    OK
}

#[no_mangle]
pub extern "C" fn proxy_define_metric(
    _metric_type: u32,
    _name: *const u8,
    _name_size: usize,
    id: *mut u32,
) -> u32 {
    let next = NEXT_ID.with(|n| {
        let v = n.get();
        n.set(v + 1);
        v
    });
    unsafe { *id = next };
    OK
}

#[no_mangle]
pub extern "C" fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    unsafe { *time = now.as_nanos() as u64 };
    OK
}

#[no_mangle]
pub extern "C" fn proxy_set_tick_period_milliseconds(_period: u32) -> u32 {
    OK
}

#[no_mangle]
pub extern "C" fn proxy_set_effective_context(_context_id: u32) -> u32 {
    OK
}

#[no_mangle]
pub extern "C" fn proxy_call_foreign_function(
    _name: *const u8,
    _name_size: usize,
    _arguments: *const u8,
    _arguments_size: usize,
    _results: *mut *mut u8,
    _results_size: *mut usize,
) -> u32 {
    NOT_FOUND
}

#[no_mangle]
pub extern "C" fn proxy_http_call(
    _upstream: *const u8,
    _upstream_size: usize,
    _headers: *const u8,
    _headers_size: usize,
    _body: *const u8,
    _body_size: usize,
    _trailers: *const u8,
    _trailers_size: usize,
    _timeout_milliseconds: u32,
    token: *mut u32,
) -> u32 {
    unsafe { *token = 7 };
    OK
}
