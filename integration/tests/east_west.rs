//! The east-west demo (examples/east-west/) runs end to end and reports
//! success: three workloads, each behind its own sidecar Envoy.

use std::process::Command;

use tokenbind_integration::{require_envoy, require_wasm};

#[test]
fn east_west_demo_runs_and_every_step_behaves() {
    require_envoy();
    require_wasm();
    let out = Command::new(env!("CARGO_BIN_EXE_east-west"))
        .output()
        .unwrap_or_else(|e| panic!("run the east-west binary: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "east-west exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    for needle in [
        "Step 1: frontend calls orders with its own token",
        "Step 2: batch is compromised and replays frontend's stolen token",
        "Step 3",
        "Step 4",
        "orders: 3 items for spiffe://cluster.local/ns/default/sa/frontend",
        r#"body: {"error":"invalid_token","reason":"spiffe_mismatch"}"#,
        r#"www-authenticate: Bearer realm="tokenbind", error="invalid_token""#,
        "orders sidecar /stats: wasmcustom.tokenbind.denied.spiffe_mismatch = 1",
        "the orders application never saw the request",
        "RESULT: all steps behaved as expected.",
    ] {
        assert!(
            stdout.contains(needle),
            "east-west output lacks {needle:?}:\n{stdout}"
        );
    }
    assert!(!stdout.contains("[FAIL]"), "{stdout}");
    // No JWT (segments starting with the JSON-object prefix "eyJ") printed.
    assert!(
        !stdout.contains("eyJ") && !stderr.contains("eyJ"),
        "east-west printed a token:\n{stdout}\n{stderr}"
    );
}
