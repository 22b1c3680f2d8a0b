//! Medians, the table, the targets, and the JSON / Markdown output.

use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use crate::stack::CryptoLog;
use crate::wrk::Summary;

/// One measured run.
pub struct RunRecord {
    pub wrk: Summary,
    pub wall_s: f64,
    pub server_cpu_s: f64,
    pub client_cpu_s: f64,
    pub server_2xx: u64,
    pub hwm_kib: u64,
    pub rss_kib: u64,
    pub counters: Value,
    /// Distinct requests prepared for the run (tokens or proofs).
    pub planned: usize,
}

impl RunRecord {
    fn cpu_per_10k(&self) -> f64 {
        if self.wrk.requests == 0 {
            f64::NAN
        } else {
            self.server_cpu_s * 10_000.0 / self.wrk.requests as f64
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "requests": self.wrk.requests,
            "duration_s": round(self.wrk.duration_s, 3),
            "rps": round(self.wrk.rps(), 1),
            "p50_us": self.wrk.p50_us,
            "p90_us": self.wrk.p90_us,
            "p99_us": self.wrk.p99_us,
            "p999_us": self.wrk.p999_us,
            "mean_us": self.wrk.mean_us,
            "wrk_errors": self.wrk.errors.iter().map(|(k, v)| json!({k: v})).collect::<Vec<_>>(),
            "server_2xx": self.server_2xx,
            "server_cpu_s": round(self.server_cpu_s, 3),
            "server_cpu_s_per_10k": round(self.cpu_per_10k(), 4),
            "server_cpu_pct": round(100.0 * self.server_cpu_s / self.wall_s.max(1e-9), 1),
            "client_cpu_s": round(self.client_cpu_s, 3),
            "server_vmhwm_kib": self.hwm_kib,
            "server_vmrss_kib": self.rss_kib,
            "distinct_requests_prepared": self.planned,
            "counters": self.counters,
        })
    }
}

/// What the report needs of a scenario.
pub struct View<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub reference: Option<&'a str>,
    pub tokenbind_cold: bool,
    pub runs: &'a [RunRecord],
    pub latency_runs: &'a [Summary],
    pub sanity: &'a [String],
    pub errors: &'a [String],
    pub warnings: &'a [String],
    pub final_memory: Option<(u64, u64)>,
    pub final_cache_misses: u64,
    pub memory_after_start: Option<(u64, u64)>,
    pub concurrency: u32,
    pub crypto: Option<Crypto>,
}

/// A tokenbind scenario's signature backends: the `crypto` value in its configuration and
/// what its server sidecar logged at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct Crypto {
    /// None: the key is not in the configuration (the filter's default, auto).
    pub config: Option<String>,
    /// None: no `tokenbind: crypto:` line in the log (e.g. a filter build that predates it).
    pub log: Option<CryptoLog>,
}

impl Crypto {
    fn config_text(&self) -> String {
        match &self.config {
            Some(c) => format!("crypto \"{c}\""),
            None => "crypto not set".to_owned(),
        }
    }

    fn backends_text(&self) -> String {
        match &self.log {
            Some(l) => l.line.clone(),
            None => "unknown (no `tokenbind: crypto:` line in the server sidecar's log)".to_owned(),
        }
    }

    pub fn to_json(&self) -> Value {
        let backends = match &self.log {
            Some(l) => Value::Object(
                l.backends
                    .iter()
                    .map(|(a, b)| (a.clone(), json!(b)))
                    .collect(),
            ),
            None => json!("unknown"),
        };
        json!({
            "config": self.config,
            "mode_logged": self.log.as_ref().map_or(json!("unknown"), |l| json!(l.mode)),
            "backends": backends,
            "log_line": self.log.as_ref().map(|l| l.line.clone()),
            "notes": self.log.as_ref().map_or(Vec::new(), |l| l.notes.clone()),
        })
    }
}

/// "Crypto backends" lines: scenarios grouped by configuration and logged backends.
pub fn crypto_text(scenarios: &[(&str, Crypto)]) -> String {
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    for (id, c) in scenarios {
        let key = format!("{}: {}", c.config_text(), c.backends_text());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, ids)) => ids.push(id),
            None => groups.push((key, vec![id])),
        }
    }
    let mut out = String::from(
        "Crypto backends (the server sidecar's `tokenbind: crypto:` start-up line):\n",
    );
    if groups.is_empty() {
        out.push_str("  (no tokenbind scenario)\n");
    }
    for (key, ids) in groups {
        out.push_str(&format!("  {}: {key}\n", ids.join(", ")));
    }
    for (id, c) in scenarios {
        for note in c.log.iter().flat_map(|l| l.notes.iter()) {
            out.push_str(&format!("  note ({id}): {note}\n"));
        }
    }
    out
}

/// A scenario's medians over the rounds.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub title: String,
    pub reference: Option<String>,
    pub tokenbind_cold: bool,
    pub rounds: usize,
    pub rps: f64,
    /// Median over rounds of (this scenario's req/s / A's req/s in the same round).
    pub ratio_a: Option<f64>,
    pub ratio_ref: Option<f64>,
    pub p50_us: f64,
    pub p99_us: f64,
    pub lat_p50_us: Option<f64>,
    pub lat_p99_us: Option<f64>,
    pub cpu_per_10k: f64,
    /// Server CPU per request of each round, µs.
    pub cpu_us_rounds: Vec<f64>,
    /// A's server CPU per request divided by this scenario's: the throughput ratio the server
    /// sidecar alone would reach if it were the bottleneck.
    pub capacity_a: Option<f64>,
    pub client_cpu_per_10k: f64,
    pub server_cpu_pct: f64,
    pub peak_rss_mib: Option<f64>,
    pub rss_mib: Option<f64>,
    pub cache_misses_total: u64,
    /// (VmHWM, VmRSS) KiB after start-up and the sanity checks, and at the end.
    pub memory_after_start: Option<(u64, u64)>,
    pub memory_at_end: Option<(u64, u64)>,
    pub concurrency: u32,
    pub crypto: Option<Crypto>,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub sanity: Vec<String>,
    pub per_round: Vec<Value>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let hi = v.get(n / 2).copied().unwrap_or(f64::NAN);
    if n % 2 == 1 {
        hi
    } else {
        (v.get(n / 2 - 1).copied().unwrap_or(hi) + hi) / 2.0
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Median over the rounds both ran of `a`'s req/s divided by `b`'s.
fn paired_ratio(a: &View<'_>, b: Option<&View<'_>>) -> Option<f64> {
    let b = b?;
    let ratios: Vec<f64> = a
        .runs
        .iter()
        .zip(b.runs.iter())
        .filter(|(_, y)| y.wrk.rps() > 0.0)
        .map(|(x, y)| x.wrk.rps() / y.wrk.rps())
        .collect();
    if ratios.is_empty() {
        None
    } else {
        Some(median(ratios))
    }
}

pub fn rows(views: &[View<'_>]) -> Vec<Row> {
    let find = |id: &str| views.iter().find(|v| v.id == id);
    let cpu_of = |v: &View<'_>| median(v.runs.iter().map(RunRecord::cpu_per_10k).collect());
    let cpu_a = find("A").map(cpu_of).filter(|x| x.is_finite() && *x > 0.0);
    views
        .iter()
        .map(|v| {
            let runs = v.runs;
            let m = |f: &dyn Fn(&RunRecord) -> f64| median(runs.iter().map(f).collect());
            let lat = |f: &dyn Fn(&Summary) -> f64| {
                if v.latency_runs.is_empty() {
                    None
                } else {
                    Some(median(v.latency_runs.iter().map(f).collect()))
                }
            };
            let per_round = runs
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let mut j = r.to_json();
                    if let Some(l) = v.latency_runs.get(i) {
                        j["latency_1conn"] = json!({
                            "rps": round(l.rps(), 1), "p50_us": l.p50_us, "p99_us": l.p99_us,
                            "p999_us": l.p999_us, "errors": l.error_count(),
                        });
                    }
                    j
                })
                .collect();
            let mut errors = v.errors.to_vec();
            if runs.is_empty() && errors.is_empty() {
                errors.push("no measured run".into());
            }
            Row {
                id: v.id.to_owned(),
                title: v.title.to_owned(),
                reference: v.reference.map(str::to_owned),
                tokenbind_cold: v.tokenbind_cold,
                rounds: runs.len(),
                rps: m(&|r| r.wrk.rps()),
                ratio_a: if v.id == "A" {
                    None
                } else {
                    paired_ratio(v, find("A"))
                },
                ratio_ref: v.reference.and_then(|r| paired_ratio(v, find(r))),
                p50_us: m(&|r| r.wrk.p50_us),
                p99_us: m(&|r| r.wrk.p99_us),
                lat_p50_us: lat(&|s| s.p50_us),
                lat_p99_us: lat(&|s| s.p99_us),
                cpu_per_10k: m(&|r| r.cpu_per_10k()),
                cpu_us_rounds: runs.iter().map(|r| r.cpu_per_10k() * 100.0).collect(),
                capacity_a: cpu_a
                    .map(|a| a / m(&|r| r.cpu_per_10k()))
                    .filter(|x| x.is_finite()),
                client_cpu_per_10k: m(&|r| {
                    r.client_cpu_s * 10_000.0 / (r.wrk.requests.max(1) as f64)
                }),
                server_cpu_pct: m(&|r| 100.0 * r.server_cpu_s / r.wall_s.max(1e-9)),
                peak_rss_mib: v.final_memory.map(|(hwm, _)| hwm as f64 / 1024.0),
                rss_mib: v.final_memory.map(|(_, rss)| rss as f64 / 1024.0),
                cache_misses_total: v.final_cache_misses,
                memory_after_start: v.memory_after_start,
                memory_at_end: v.final_memory,
                concurrency: v.concurrency,
                crypto: v.crypto.clone(),
                errors,
                warnings: v.warnings.to_vec(),
                sanity: v.sanity.to_vec(),
                per_round,
            }
        })
        .collect()
}

fn fmt(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "-".into()
    }
}

fn fmt_opt(x: Option<f64>, digits: usize) -> String {
    x.map_or("-".into(), |x| fmt(x, digits))
}

/// The results table (Markdown, aligned for the terminal too).
pub fn table(rows: &[Row]) -> String {
    let header = [
        "scenario",
        "req/s",
        "× A",
        "× ref (ref)",
        "p50 µs",
        "p99 µs",
        "1-conn p50/p99 µs",
        "server CPU-s /10k req",
        "server req/CPU-s × A",
        "server CPU %",
        "server peak RSS MiB",
        "status",
    ];
    let mut lines: Vec<Vec<String>> = Vec::new();
    for r in rows {
        let status = if !r.errors.is_empty() {
            format!("ERRORS ({})", r.errors.len())
        } else if !r.warnings.is_empty() {
            "ok, warnings".into()
        } else {
            "ok".into()
        };
        lines.push(vec![
            r.id.clone(),
            fmt(r.rps, 0),
            fmt_opt(r.ratio_a, 3),
            match (&r.reference, r.ratio_ref) {
                (Some(id), Some(x)) => format!("{x:.3} ({id})"),
                _ => "-".into(),
            },
            fmt(r.p50_us, 0),
            fmt(r.p99_us, 0),
            match (r.lat_p50_us, r.lat_p99_us) {
                (Some(a), Some(b)) => format!("{a:.0} / {b:.0}"),
                _ => "-".into(),
            },
            fmt(r.cpu_per_10k, 3),
            fmt_opt(r.capacity_a, 3),
            fmt(r.server_cpu_pct, 0),
            fmt_opt(r.peak_rss_mib, 1),
            status,
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l.get(i).map_or(0, |c| c.chars().count()))
                .chain(std::iter::once(
                    header.get(i).map_or(0, |h| h.chars().count()),
                ))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let render = |cells: Vec<String>| -> String {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let w = widths.get(i).copied().unwrap_or(0);
                let pad = w.saturating_sub(c.chars().count());
                if i == 0 || i == header.len() - 1 {
                    format!("{c}{}", " ".repeat(pad))
                } else {
                    format!("{}{c}", " ".repeat(pad))
                }
            })
            .collect();
        format!("| {} |", padded.join(" | "))
    };
    let mut out = vec![render(header.iter().map(|h| h.to_string()).collect())];
    out.push(format!(
        "|{}|",
        widths
            .iter()
            .enumerate()
            .map(|(i, w)| if i == 0 || i == header.len() - 1 {
                format!(":{}", "-".repeat(w + 1))
            } else {
                format!("{}:", "-".repeat(w + 1))
            })
            .collect::<Vec<_>>()
            .join("|")
    ));
    for l in lines {
        out.push(render(l));
    }
    let titles: Vec<String> = rows
        .iter()
        .map(|r| format!("- {}: {}", r.id, r.title))
        .collect();
    format!("{}\n\n{}", out.join("\n"), titles.join("\n"))
}

/// One target and whether this run met it.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// None: could not be evaluated (a scenario missing or with errors).
    pub pass: Option<bool>,
    pub detail: String,
}

fn ratio_target(name: &str, id: &str, of: &str, value: Option<f64>, min: f64) -> Target {
    Target {
        name: name.to_owned(),
        pass: value.map(|v| v >= min),
        detail: match value {
            Some(v) => format!("{id} = {v:.3} × {of}"),
            None => format!("{id} or {of} missing or had errors"),
        },
    }
}

/// The RSS target: the largest peak RSS of a tokenbind server that ended with a full cache
/// (10,000 entries: a cold scenario that missed at least 10,000 times) against A's.
fn rss_target(rows: &[Row], max_over_a_mib: f64) -> Target {
    let a = rows.iter().find(|r| r.id == "A" && r.errors.is_empty());
    let worst = rows
        .iter()
        .filter(|r| r.tokenbind_cold && r.errors.is_empty() && r.cache_misses_total >= 10_000)
        .filter_map(|r| r.peak_rss_mib.map(|m| (r.id.as_str(), m)))
        .max_by(|x, y| x.1.total_cmp(&y.1));
    let (pass, detail) = match (worst, a.and_then(|r| r.peak_rss_mib)) {
        (Some((id, m)), Some(am)) => (
            Some(m <= am + max_over_a_mib),
            format!(
                "{id} server (10,000 cached tokens) peak RSS {m:.1} MiB vs A {am:.1} MiB: {:+.1} MiB",
                m - am
            ),
        ),
        _ => (
            None,
            "no tokenbind server ended with 10,000 cached tokens, or A missing".into(),
        ),
    };
    Target {
        name: format!(
            "server RSS with 10,000 cached tokens ≤ A + {max_over_a_mib:.0} MiB (--concurrency 1)"
        ),
        pass,
        detail,
    }
}

/// The targets of issue 9. `flood`: the DPoP flood's verdict and detail (None: not run).
pub fn targets_issue9(rows: &[Row], flood: Option<(Option<bool>, String)>) -> Vec<Target> {
    let get = |id: &str| rows.iter().find(|r| r.id == id && r.errors.is_empty());
    // The ratio against the scenario's reference, if both ran cleanly.
    let vs_ref = |id: &str, of: &str| {
        get(id)
            .filter(|r| r.reference.as_deref() == Some(of) && get(of).is_some())
            .and_then(|r| r.ratio_ref)
    };
    let vs_a = |id: &str| {
        get(id)
            .filter(|_| get("A").is_some())
            .and_then(|r| r.ratio_a)
    };
    let mut out = vec![
        ratio_target(
            "D-ES256 ≥ 1.0 × B-nocache-ES256",
            "D-ES256",
            "B-nocache-ES256",
            vs_ref("D-ES256", "B-nocache-ES256"),
            1.0,
        ),
        ratio_target(
            "D-RS256 ≥ 1.0 × B-nocache-RS256",
            "D-RS256",
            "B-nocache-RS256",
            vs_ref("D-RS256", "B-nocache-RS256"),
            1.0,
        ),
        ratio_target(
            "E-ES256 ≥ 0.9 × B-nocache-ES256",
            "E-ES256",
            "B-nocache-ES256",
            vs_ref("E-ES256", "B-nocache-ES256"),
            0.9,
        ),
        ratio_target("E-EdDSA ≥ 0.35 × A", "E-EdDSA", "A", vs_a("E-EdDSA"), 0.35),
        ratio_target("D-EdDSA ≥ 0.4 × A", "D-EdDSA", "A", vs_a("D-EdDSA"), 0.4),
        ratio_target("C ≥ 1.05 × B", "C", "B", vs_ref("C", "B"), 1.05),
        ratio_target("C ≥ 0.9 × A", "C", "A", vs_a("C"), 0.9),
    ];
    // C's server CPU per request against W's, paired by round.
    let (pass, detail) = match (get("C"), get("W")) {
        (Some(c), Some(w)) => {
            let diffs: Vec<f64> = c
                .cpu_us_rounds
                .iter()
                .zip(&w.cpu_us_rounds)
                .map(|(c, w)| c - w)
                .collect();
            let d = median(diffs);
            if d.is_finite() {
                (
                    Some(d <= 5.0),
                    format!(
                        "C {:.1} µs vs W {:.1} µs per request: {d:+.1} µs (median of the per-round differences)",
                        c.cpu_per_10k * 100.0,
                        w.cpu_per_10k * 100.0
                    ),
                )
            } else {
                (None, "C or W has no measured CPU".into())
            }
        }
        _ => (None, "C or W missing or had errors".into()),
    };
    out.push(Target {
        name: "C server CPU/request ≤ W's + 5 µs".into(),
        pass,
        detail,
    });
    out.push(rss_target(rows, 25.0));
    let (pass, detail) = flood.unwrap_or((None, "DPOP-FLOOD not run".into()));
    out.push(Target {
        name: "DPoP flood: zero legitimate proofs refused".into(),
        pass,
        detail,
    });
    out
}

/// The targets of issue 6 (the earlier round of work), still computed for comparison.
pub fn targets(rows: &[Row], wasm_bytes: u64) -> Vec<Target> {
    let get = |id: &str| rows.iter().find(|r| r.id == id && r.errors.is_empty());
    let mut out = Vec::new();
    let mut ratio = |name: &str, id: &str, of: &str, value: Option<f64>, min: f64, max: f64| {
        let pass = value.map(|v| v >= min && v <= max);
        let detail = match value {
            Some(v) => format!("{id} = {v:.3} × {of}"),
            None => format!("{id} or {of} missing or had errors"),
        };
        out.push(Target {
            name: name.to_owned(),
            pass,
            detail,
        });
    };
    let c = get("C");
    ratio(
        "C ≥ 0.95 × A",
        "C",
        "A",
        c.and_then(|r| r.ratio_a),
        0.95,
        f64::INFINITY,
    );
    ratio(
        "C ≥ 1.0 × B",
        "C",
        "B",
        c.filter(|_| get("B").is_some()).and_then(|r| r.ratio_ref),
        1.0,
        f64::INFINITY,
    );
    ratio(
        "F within 2% of C",
        "F",
        "C",
        get("F").filter(|_| c.is_some()).and_then(|r| r.ratio_ref),
        0.98,
        1.02,
    );
    ratio(
        "D-EdDSA ≥ 0.5 × A",
        "D-EdDSA",
        "A",
        get("D-EdDSA").and_then(|r| r.ratio_a),
        0.5,
        f64::INFINITY,
    );
    ratio(
        "D-ES256 ≥ 0.5 × B-nocache-ES256",
        "D-ES256",
        "B-nocache-ES256",
        get("D-ES256")
            .filter(|_| get("B-nocache-ES256").is_some())
            .and_then(|r| r.ratio_ref),
        0.5,
        f64::INFINITY,
    );
    ratio(
        "E-EdDSA ≥ 0.5 × A",
        "E-EdDSA",
        "A",
        get("E-EdDSA").and_then(|r| r.ratio_a),
        0.5,
        f64::INFINITY,
    );
    let a = get("A");
    for (label, loaded) in [("16 connections", true), ("1 connection", false)] {
        let pick = |r: &Row| if loaded { Some(r.p99_us) } else { r.lat_p99_us };
        let (pass, detail) = match (c.and_then(pick), a.and_then(pick)) {
            (Some(cv), Some(av)) if cv.is_finite() && av.is_finite() => (
                Some(cv <= av + 100.0),
                format!("C p99 {cv:.0} µs vs A p99 {av:.0} µs: {:+.0} µs", cv - av),
            ),
            _ => (None, "C or A missing".into()),
        };
        out.push(Target {
            name: format!("C p99 ≤ A p99 + 100 µs ({label})"),
            pass,
            detail,
        });
    }
    out.push(rss_target(rows, 30.0));
    out.push(Target {
        name: ".wasm < 1.5 MB".into(),
        pass: Some(wasm_bytes < 1_500_000),
        detail: format!("tokenbind.wasm is {wasm_bytes} bytes"),
    });
    out
}

pub fn targets_text(title: &str, targets: &[Target]) -> String {
    let mut s = format!("{title}:\n");
    let width = targets
        .iter()
        .map(|t| t.name.chars().count())
        .max()
        .unwrap_or(0);
    for t in targets {
        let mark = match t.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "n/a ",
        };
        let pad = " ".repeat(width.saturating_sub(t.name.chars().count()));
        s.push_str(&format!("  [{mark}] {}{pad}  {}\n", t.name, t.detail));
    }
    s
}

pub fn targets_json(targets: &[Target]) -> Value {
    Value::Array(
        targets
            .iter()
            .map(|t| {
                json!({
                    "target": t.name,
                    "pass": t.pass,
                    "verdict": match t.pass { Some(true) => "PASS", Some(false) => "MISS", None => "n/a" },
                    "detail": t.detail,
                })
            })
            .collect(),
    )
}

/// The memory section: the server sidecar's VmRSS / VmHWM after start-up and at the end for
/// A and C (`--concurrency 1`, from the rounds) and A-c2 and C-c2 (`--concurrency 2`, one
/// run), and what one more Wasm VM costs.
pub struct Memory {
    pub text: String,
    pub json: Value,
}

pub fn memory(rows: &[Row], rss_rows: &[Row]) -> Memory {
    let pick = |id: &str| rows.iter().chain(rss_rows).find(|r| r.id == id);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let ids = ["A", "C", "A-c2", "C-c2"];
    let mut text = String::from(
        "Server sidecar memory (MiB; start: after start-up and the sanity checks; end: after the \
         last run; a sidecar at --concurrency N has N + 1 Wasm VMs, the main thread's and one \
         per worker):\n",
    );
    text.push_str(
        "| scenario | --concurrency | requests served | VmRSS start | VmHWM start | VmRSS end | VmHWM end |\n",
    );
    text.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let mut per = serde_json::Map::new();
    for id in ids {
        let Some(r) = pick(id) else { continue };
        let cell = |m: Option<(u64, u64)>, hwm: bool| {
            m.map_or("-".to_owned(), |(h, r)| {
                format!("{:.1}", mib(if hwm { h } else { r }))
            })
        };
        let requests: u64 = r
            .per_round
            .iter()
            .filter_map(|j| j["requests"].as_u64())
            .sum();
        text.push_str(&format!(
            "| {id} | {} | {requests} | {} | {} | {} | {} |\n",
            r.concurrency,
            cell(r.memory_after_start, false),
            cell(r.memory_after_start, true),
            cell(r.memory_at_end, false),
            cell(r.memory_at_end, true),
        ));
        let kib = |m: Option<(u64, u64)>| m.map(|(h, r)| json!({"vmhwm_kib": h, "vmrss_kib": r}));
        per.insert(
            id.to_owned(),
            json!({
                "concurrency": r.concurrency,
                "status": if r.errors.is_empty() { "ok" } else { "ERRORS" },
                "after_start": kib(r.memory_after_start),
                "at_end": kib(r.memory_at_end),
            }),
        );
    }
    // (C − A) at each concurrency is the filter's cost; its growth from 1 to 2 workers is one VM.
    let mut derived = serde_json::Map::new();
    let ok = |id: &str| pick(id).filter(|r| r.errors.is_empty());
    for (when, sel) in [
        (
            "start",
            (|r: &Row| r.memory_after_start) as fn(&Row) -> Option<(u64, u64)>,
        ),
        ("end", |r: &Row| r.memory_at_end),
    ] {
        for (field, hwm) in [("VmRSS", false), ("VmHWM", true)] {
            let get = |id: &str| {
                ok(id)
                    .and_then(sel)
                    .map(|(h, r)| mib(if hwm { h } else { r }))
            };
            let c1 = get("C").zip(get("A")).map(|(c, a)| c - a);
            let c2 = get("C-c2").zip(get("A-c2")).map(|(c, a)| c - a);
            let vm = c1.zip(c2).map(|(c1, c2)| c2 - c1);
            let fixed = c1.zip(vm).map(|(c1, vm)| c1 - 2.0 * vm);
            let f = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:+.1}"));
            if vm.is_some() {
                text.push_str(&format!(
                    "  {field} at {when}: tokenbind (C − A) {} MiB at --concurrency 1, {} MiB at 2; \
                     one more Wasm VM {} MiB; the rest (C − A − 2 VMs) {} MiB\n",
                    f(c1),
                    f(c2),
                    f(vm),
                    f(fixed)
                ));
            } else if c1.is_some() || c2.is_some() {
                text.push_str(&format!(
                    "  {field} at {when}: tokenbind (C − A) {} MiB at --concurrency 1, {} MiB at 2 \
                     (one VM's share needs A, C, A-c2 and C-c2)\n",
                    f(c1),
                    f(c2)
                ));
            }
            let r = |x: Option<f64>| x.map(|x| round(x, 2));
            derived.insert(
                format!("{}_{when}", field.to_lowercase()),
                json!({
                    "tokenbind_c1_mib": r(c1), "tokenbind_c2_mib": r(c2),
                    "per_vm_mib": r(vm), "rest_mib": r(fixed),
                }),
            );
        }
    }
    Memory {
        text,
        json: json!({"scenarios": per, "derived": derived}),
    }
}

fn row_json(r: &Row) -> Value {
    json!({
        "id": r.id,
        "title": r.title,
        "server_concurrency": r.concurrency,
        "crypto": r.crypto.as_ref().map(Crypto::to_json),
        "rounds": r.rounds,
        "median": {
            "rps": round(r.rps, 1),
            "ratio_to_A": r.ratio_a.map(|x| round(x, 4)),
            "reference": r.reference,
            "ratio_to_reference": r.ratio_ref.map(|x| round(x, 4)),
            "p50_us": r.p50_us,
            "p99_us": r.p99_us,
            "latency_1conn_p50_us": r.lat_p50_us,
            "latency_1conn_p99_us": r.lat_p99_us,
            "server_cpu_s_per_10k": round(r.cpu_per_10k, 4),
            "server_capacity_ratio_to_A": r.capacity_a.map(|x| round(x, 4)),
            "client_cpu_s_per_10k": round(r.client_cpu_per_10k, 4),
            "server_cpu_pct": round(r.server_cpu_pct, 1),
        },
        "server_peak_rss_mib": r.peak_rss_mib.map(|x| round(x, 1)),
        "server_rss_mib_at_end": r.rss_mib.map(|x| round(x, 1)),
        "server_memory_after_start_kib": r.memory_after_start.map(|(h, r)| json!({"vmhwm": h, "vmrss": r})),
        "tokenbind_cache_misses_total": r.cache_misses_total,
        "status": if r.errors.is_empty() { "ok" } else { "ERRORS" },
        "errors": r.errors,
        "warnings": r.warnings,
        "sanity": r.sanity,
        "rounds_detail": r.per_round,
    })
}

/// What goes into the results besides the rows.
pub struct Extra<'a> {
    /// Merged into the top level of the JSON document.
    pub doc: &'a Value,
    /// Issue 9's targets (`targets` in the JSON) and the earlier ones.
    pub targets: &'a [Target],
    pub earlier: &'a [Target],
    pub table: &'a str,
    /// Printed sections after the table (crypto, memory, flood), for the Markdown.
    pub text: &'a str,
}

/// Writes the JSON results to `path` and the table and targets as Markdown next to it.
pub fn write(path: &Path, meta: &Value, rows: &[Row], extra: &Extra<'_>) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut doc = json!({
        "meta": meta,
        "scenarios": rows.iter().map(row_json).collect::<Vec<_>>(),
        "targets": targets_json(extra.targets),
    });
    if let (Some(d), Some(more)) = (doc.as_object_mut(), extra.doc.as_object()) {
        for (k, v) in more {
            d.insert(k.clone(), v.clone());
        }
    }
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    let md = path.with_extension("md");
    let settings = &meta["settings"];
    let body = format!(
        "{}\n\n{}\n{}\n{}\nLoad average: start {}, end {}. Envoy: {}. {} rounds × {} s, {} connections, \
         warm-up {} s, 1-connection runs {} s. Pinning: {}.\n",
        extra.table,
        extra.text,
        targets_text("Targets (issue 9)", extra.targets),
        targets_text("Earlier targets (issue 6)", extra.earlier),
        meta["loadavg_start"].as_str().unwrap_or("?"),
        meta["loadavg_end"].as_str().unwrap_or("?"),
        meta["envoy"].as_str().unwrap_or("?"),
        settings["rounds"],
        settings["duration_s"],
        settings["connections"],
        settings["warmup_s"],
        settings["latency_run_s"],
        settings["pinning"].as_str().unwrap_or("?"),
    );
    fs::write(&md, body).map_err(|e| format!("{}: {e}", md.display()))?;
    Ok(())
}
