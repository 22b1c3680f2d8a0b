//! The demo program (examples/demo.rs) runs end to end and reports success.

use std::process::Command;

use tokenbind_integration::{require_envoy, require_wasm};

#[test]
fn demo_runs_and_every_step_behaves() {
    require_envoy();
    require_wasm();
    let out = Command::new(env!("CARGO_BIN_EXE_demo"))
        .output()
        .expect("run the demo binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    for needle in [
        "Step 1",
        "Step 2",
        "Step 3",
        "spiffe_mismatch",
        r#"www-authenticate: Bearer realm="tokenbind", error="invalid_token""#,
        "wasmcustom.tokenbind.monitor.would_deny.spiffe_mismatch = 1",
        "RESULT: all steps behaved as expected.",
    ] {
        assert!(
            stdout.contains(needle),
            "demo output lacks {needle:?}:\n{stdout}"
        );
    }
    assert!(!stdout.contains("[FAIL]"), "{stdout}");
    // No JWT (three base64url segments starting with the JSON-object
    // prefix "eyJ") is printed.
    assert!(!stdout.contains("eyJ"), "demo printed a token:\n{stdout}");
}
