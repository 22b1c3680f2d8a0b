#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The built `tokenbind.wasm` speaks the proxy-wasm ABI itself: it exports exactly the
//! callbacks the adapter implements (no SDK dispatcher), and every host function it imports is
//! declared in `filter/wasm/src/abi.rs`, the layer that turns every host status into a value.
//! (That the module works in Envoy is what every other test file here shows.)

use tokenbind_integration::{require_wasm, workspace_root};

/// A module's imports (`module.name`) and exports, read from its import (2) and export (7)
/// sections.
fn interface(bytes: &[u8]) -> (Vec<String>, Vec<String>) {
    fn leb(bytes: &[u8], at: &mut usize) -> u64 {
        let (mut value, mut shift) = (0u64, 0);
        loop {
            let b = bytes[*at];
            *at += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return value;
            }
            shift += 7;
        }
    }
    fn name(bytes: &[u8], at: &mut usize) -> String {
        let len = leb(bytes, at) as usize;
        let s = String::from_utf8(bytes[*at..*at + len].to_vec()).unwrap();
        *at += len;
        s
    }
    assert_eq!(&bytes[..8], b"\0asm\x01\0\0\0", "not a wasm module");
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut at = 8;
    while at < bytes.len() {
        let id = bytes[at];
        at += 1;
        let size = leb(bytes, &mut at) as usize;
        let end = at + size;
        let mut p = at;
        match id {
            2 => {
                for _ in 0..leb(bytes, &mut p) {
                    let module = name(bytes, &mut p);
                    let field = name(bytes, &mut p);
                    match bytes[p] {
                        0 => {
                            p += 1;
                            leb(bytes, &mut p);
                        }
                        kind => panic!(
                            "import {module}.{field} of kind {kind} (only functions expected)"
                        ),
                    }
                    imports.push(format!("{module}.{field}"));
                }
            }
            7 => {
                for _ in 0..leb(bytes, &mut p) {
                    exports.push(name(bytes, &mut p));
                    p += 1;
                    leb(bytes, &mut p);
                }
            }
            _ => {}
        }
        at = end;
    }
    (imports, exports)
}

#[test]
fn the_module_exports_the_adapters_callbacks_and_nothing_of_the_sdk() {
    let (_, mut exports) = interface(&std::fs::read(require_wasm()).unwrap());
    exports.sort();
    let mut expected = vec![
        "memory",
        "_initialize",
        "proxy_abi_version_0_2_1",
        "proxy_on_memory_allocate",
        "proxy_on_context_create",
        "proxy_on_vm_start",
        "proxy_on_configure",
        "proxy_on_tick",
        "proxy_on_request_headers",
        "proxy_on_http_call_response",
        "proxy_on_done",
        "proxy_on_delete",
    ];
    expected.sort_unstable();
    assert_eq!(exports, expected);
}

#[test]
fn every_host_function_the_module_imports_is_declared_in_abi_rs() {
    let (imports, _) = interface(&std::fs::read(require_wasm()).unwrap());
    let abi = std::fs::read_to_string(workspace_root().join("filter/wasm/src/abi.rs")).unwrap();
    let proxy: Vec<&str> = imports
        .iter()
        .filter_map(|i| i.strip_prefix("env."))
        .collect();
    assert!(proxy.contains(&"proxy_http_call"), "{imports:?}");
    for f in &proxy {
        assert!(
            abi.contains(&format!("fn {f}(")),
            "tokenbind.wasm imports env.{f}, which filter/wasm/src/abi.rs does not declare"
        );
    }
    for i in &imports {
        assert!(
            i.starts_with("env.proxy_") || i.starts_with("wasi_snapshot_preview1."),
            "unexpected import {i}"
        );
    }
}
