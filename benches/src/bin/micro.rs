//! The micro-benchmark suite (`tokenbind_benches::micro`) with a plain timer.
//!
//! Natively: `cargo run --release -p tokenbind-benches --bin micro -- [--v8 <micro.wasm>]`.
//! With `--v8`, the same suite built for wasm32-wasip1 is also run inside V8 (Node's
//! `node:wasi`, see `wasm/run-in-v8.mjs`) and the two are printed side by side, with the ratio
//! (the cost of running the filter's code as Wasm in V8), and written to
//! `target/bench/micro.json`.
//!
//! Inside V8 (or with `--json`) it prints one JSON object per operation.
//!
//! Options: `--sample-ms N` (default 100), `--samples N` (default 5), `--filter TEXT` (only
//! operations whose name contains TEXT).

use std::process::ExitCode;
use std::time::Duration;

use tokenbind_benches::micro::{measure, suite, Measurement};

struct Options {
    sample: Duration,
    samples: usize,
    filter: Option<String>,
    json: bool,
    v8: Option<String>,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        sample: Duration::from_millis(100),
        samples: 5,
        filter: None,
        json: cfg!(target_family = "wasm"),
        v8: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--sample-ms" => {
                o.sample = Duration::from_millis(
                    value()?.parse().map_err(|e| format!("--sample-ms: {e}"))?,
                )
            }
            "--samples" => o.samples = value()?.parse().map_err(|e| format!("--samples: {e}"))?,
            "--filter" => o.filter = Some(value()?),
            "--json" => o.json = true,
            "--v8" => o.v8 = Some(value()?),
            "--help" | "-h" => {
                println!(
                    "usage: micro [--sample-ms N] [--samples N] [--filter TEXT] [--json] [--v8 micro.wasm]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

fn run_suite(o: &Options) -> Result<Vec<Measurement>, String> {
    let mut out = Vec::new();
    for mut op in suite()? {
        if o.filter.as_deref().is_some_and(|f| !op.name().contains(f)) {
            continue;
        }
        let m = measure(op.as_mut(), o.sample, o.samples);
        if o.json {
            println!("{}", m.to_json());
        } else if o.v8.is_none() {
            println!("{:<24} {:>12.0} ns/op", m.name, m.ns_per_op);
        }
        out.push(m);
    }
    Ok(out)
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|o| {
        let native = run_suite(&o)?;
        match &o.v8 {
            Some(wasm) => compare::run(&o, &native, wasm),
            None => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("micro: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(target_family = "wasm")]
mod compare {
    pub fn run(_: &super::Options, _: &[super::Measurement], _: &str) -> Result<(), String> {
        Err("--v8 is for the native build".into())
    }
}

#[cfg(not(target_family = "wasm"))]
mod compare {
    use super::{Measurement, Options};
    use serde_json::{json, Value};
    use std::path::PathBuf;
    use std::process::{Command, Stdio};

    fn workspace_root() -> PathBuf {
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        manifest.parent().map(PathBuf::from).unwrap_or(manifest)
    }

    /// Runs the wasm build of this suite under Node and prints native vs V8.
    pub fn run(o: &Options, native: &[Measurement], wasm: &str) -> Result<(), String> {
        let runner = workspace_root().join("benches/wasm/run-in-v8.mjs");
        let mut cmd = Command::new("node");
        // proxy-wasm-cpp-host (Envoy's V8 runtime) turns Liftoff off: every function is compiled by
        // TurboFan up front. Do the same, so nothing is measured in the baseline tier.
        cmd.arg("--no-warnings")
            .arg("--no-liftoff")
            .arg(&runner)
            .arg(wasm)
            .arg("--json")
            .arg("--sample-ms")
            .arg(o.sample.as_millis().to_string())
            .arg("--samples")
            .arg(o.samples.to_string());
        if let Some(f) = &o.filter {
            cmd.arg("--filter").arg(f);
        }
        eprintln!("running the suite inside V8: node {}", runner.display());
        let out = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("running node: {e} (Node.js 20 or later is needed)"))?;
        if !out.status.success() {
            return Err(format!("the wasm suite failed under node: {}", out.status));
        }
        let v8: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let node_version = Command::new("node")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let v8_engine = Command::new("node")
            .args(["-p", "process.versions.v8"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();

        println!();
        println!(
            "{:<24} {:>14} {:>14} {:>10}",
            "operation", "native ns/op", "in-V8 ns/op", "V8/native"
        );
        let mut rows = Vec::new();
        for m in native {
            let in_v8 = v8
                .iter()
                .find(|v| v["name"] == m.name.as_str())
                .and_then(|v| v["ns_per_op"].as_f64());
            let ratio = in_v8.map(|v| v / m.ns_per_op);
            println!(
                "{:<24} {:>14.0} {:>14} {:>10}",
                m.name,
                m.ns_per_op,
                in_v8.map_or("-".into(), |v| format!("{v:.0}")),
                ratio.map_or("-".into(), |r| format!("{r:.2}x"))
            );
            rows.push(json!({
                "name": m.name,
                "native_ns_per_op": (m.ns_per_op * 10.0).round() / 10.0,
                "v8_ns_per_op": in_v8,
                "ratio": ratio.map(|r| (r * 100.0).round() / 100.0),
            }));
        }
        let wasm_bytes = std::fs::metadata(wasm).map(|m| m.len()).unwrap_or(0);
        let report = json!({
            "node": node_version,
            "v8": v8_engine,
            "micro_wasm_bytes": wasm_bytes,
            "sample_ms": o.sample.as_millis() as u64,
            "samples": o.samples,
            "rows": rows,
        });
        let dir = workspace_root().join("target/bench");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join("micro.json");
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        println!(
            "\n(node {node_version}, V8 {v8_engine}); written to {}",
            path.display()
        );
        Ok(())
    }
}
