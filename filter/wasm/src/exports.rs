//! The proxy-wasm ABI 0.2.1 functions the module exports, each forwarding to [`crate::context`].
//!
//! Only the callbacks the filter acts on are exported. Envoy looks each callback up when it
//! loads the module and, for one the module lacks, does what the callback's neutral value would
//! (continue the stream, report done, ignore the event); the response path, request bodies and
//! trailers, access-log time, queues, gRPC and network streams therefore cost no VM call.
//!
//! Parameters are taken as `u32` (never `bool`: a host passing anything but 0 or 1 must not be
//! undefined behaviour) and booleans returned as `u32`.

use crate::context;
use std::alloc::{alloc, Layout};
use std::ptr::{null_mut, NonNull};

#[cfg(target_os = "wasi")]
extern "C" {
    fn __wasm_call_ctors();
}

/// WASI reactor start-up: Envoy calls `_initialize` once per VM before any other export (with
/// the host calls restricted to logging, clocks, randomness and the WASI environment). A
/// `cdylib` gets no `_initialize` from the Rust toolchain, so it runs the static constructors
/// (wasi-libc's environment and preopens) itself, then the filter's own start-up.
#[no_mangle]
pub extern "C" fn _initialize() {
    #[cfg(target_os = "wasi")]
    // SAFETY: called once, by the host, before any other code of the module runs.
    unsafe {
        __wasm_call_ctors();
    }
    crate::start();
}

/// Tells Envoy which ABI the module speaks.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// Memory for a value the host hands the module: `size` bytes with the layout of a
/// `Vec<u8>` of capacity `size`, which [`crate::abi`] takes back as one. Null when the memory
/// cannot be had (the host then fails its call with a status; nothing aborts).
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let Ok(layout) = Layout::array::<u8>(size) else {
        return null_mut();
    };
    if size == 0 {
        // What `Vec::with_capacity(0)` holds: dangling, never freed.
        return NonNull::<u8>::dangling().as_ptr();
    }
    // SAFETY: `layout` has a non-zero size.
    unsafe { alloc(layout) }
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, parent_context_id: u32) {
    context::on_context_create(context_id, parent_context_id);
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(context_id: u32, _vm_configuration_size: u32) -> u32 {
    u32::from(context::on_vm_start(context_id))
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(context_id: u32, _plugin_configuration_size: u32) -> u32 {
    u32::from(context::on_configure(context_id))
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(context_id: u32) {
    context::on_tick(context_id);
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(
    context_id: u32,
    _num_headers: u32,
    _end_of_stream: u32,
) -> u32 {
    context::on_request_headers(context_id) as u32
}

#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    context_id: u32,
    token: u32,
    _num_headers: u32,
    body_size: u32,
    _num_trailers: u32,
) {
    context::on_http_call_response(
        context_id,
        token,
        usize::try_from(body_size).unwrap_or(usize::MAX),
    );
}

#[no_mangle]
pub extern "C" fn proxy_on_done(context_id: u32) -> u32 {
    u32::from(context::on_done(context_id))
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    context::on_delete(context_id);
}
