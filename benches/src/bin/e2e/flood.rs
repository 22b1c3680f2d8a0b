//! DPOP-FLOOD: unique, valid DPoP proofs at the highest rate the server sidecar sustains
//! (closed loop, `--connections`), for 60 s, against the filter's default replay store and
//! default `iat` window. Every proof carries the same `iat`, half the run after its start, so
//! all of them stay inside the ±60 s window for the whole run; their replay-store entries then
//! all stay live until the run ends (an entry lives until `iat` + window + 1 s), which is the
//! store's worst case at that rate. Refusals are counted by reason from the server sidecar's
//! `tokenbind.denied.*` counters.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokenbind_core::config::{DEFAULT_DPOP_IAT_WINDOW_SECONDS, DEFAULT_REPLAY_ENTRIES};

use crate::{
    fixtures, measure, mint_proofs, procfs, run_scenario, say, sleep_interruptibly, stack,
    unix_time, write_requests, Ctx, Load, Measured, Phase, Scenario, Tokens,
};

/// Longest flood: `iat` is the run's midpoint, so the run may last up to twice the window,
/// less room for minting-time error and wrk's start-up (reading the proofs).
pub const MAX_SECS: u64 = 100;

/// Seconds of wrk start-up (it formats every request before its clock starts) allowed for.
const WRK_STARTUP_S: f64 = 10.0;

const DENIED: &str = "wasmcustom.tokenbind.denied.";

/// One flood run.
pub struct Record {
    pub alg: &'static str,
    pub crypto: Option<String>,
    pub secs: u64,
    pub connections: u32,
    pub rate_estimate: f64,
    pub rate_source: String,
    /// Unique proofs minted (rate estimate × duration × 1.5 + 1000).
    pub proofs: usize,
    pub mint_s: f64,
    pub iat: u64,
    pub started_unix: f64,
    pub ended_unix: f64,
    pub requests: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// wrk's non-2xx/3xx responses.
    pub wrk_non_2xx: u64,
    /// wrk's socket errors (connect, read, write, timeout).
    pub wrk_socket_errors: Vec<(String, u64)>,
    pub server_2xx: u64,
    pub server_4xx: u64,
    pub server_5xx: u64,
    pub allowed: u64,
    /// Every `tokenbind.denied.*` counter that rose, by reason.
    pub denied: Vec<(String, u64)>,
    /// These two counters, None if the filter does not define them.
    pub dpop_replayed: Option<u64>,
    pub dpop_replay_store_full: Option<u64>,
    pub server_cpu_pct: f64,
    pub server_cpu_us_per_request: f64,
    /// (VmHWM, VmRSS) KiB before and after.
    pub memory_before: (u64, u64),
    pub memory_after: (u64, u64),
    /// What makes the run invalid (not the refusals: those are the result).
    pub errors: Vec<String>,
}

impl Record {
    pub fn refused(&self) -> u64 {
        self.denied.iter().map(|(_, n)| n).sum()
    }

    /// PASS only when every response was the 200 and no `tokenbind.denied.*` counter rose.
    pub fn verdict(&self) -> (Option<bool>, String) {
        let refusals = self.refusals_text();
        let summary = format!(
            "{} requests in {} s ({:.0} req/s, {} unique {} proofs), {}",
            self.requests, self.secs, self.rps, self.proofs, self.alg, refusals
        );
        let all_ok = self.wrk_non_2xx == 0
            && self.server_4xx + self.server_5xx == 0
            && self.denied.is_empty()
            && self.server_2xx >= self.requests
            && self.requests > 0;
        if self.errors.is_empty() {
            return (Some(all_ok), summary);
        }
        // An invalid run still shows a miss if proofs that were never sent before were
        // refused for a reason other than a replay.
        let other = self
            .denied
            .iter()
            .filter(|(r, _)| r != "dpop_replayed")
            .map(|(_, n)| n)
            .sum::<u64>();
        let pass = (other > 0).then_some(false);
        (
            pass,
            format!("{summary}; run invalid: {}", self.errors.join("; ")),
        )
    }

    fn refusals_text(&self) -> String {
        let non_200 = self.wrk_non_2xx.max(self.server_4xx + self.server_5xx);
        let mut s = if self.denied.is_empty() {
            "no tokenbind.denied.* counter rose".to_owned()
        } else {
            format!(
                "refused by tokenbind: {}",
                self.denied
                    .iter()
                    .map(|(r, n)| format!("{r} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        s.push_str(&format!(", {non_200} non-200 responses"));
        s
    }
}

/// Runs the flood on scenario `i` (DPOP-FLOOD) and stores its record there.
pub fn run(
    all: &mut [Scenario],
    i: usize,
    tokens: &mut Tokens,
    ctx: &Ctx<'_>,
    secs: u64,
) -> Result<(), String> {
    let Some(sc) = all.get(i) else {
        return Ok(());
    };
    if !sc.runnable() {
        say(format!("    {}: skipped: {}", sc.id, sc.errors.join("; ")));
        return Ok(());
    }
    let Load::Dpop { alg } = sc.load else {
        return Err(format!("{}: not a DPoP scenario", sc.id));
    };
    // The rate: the fastest run of the E scenario with the same proofs and crypto setting in
    // this run, else a short probe on the flood's own server.
    let e_id = format!("E-{}", alg.name());
    let crypto = sc.crypto_config().map(str::to_owned);
    let from_e = all
        .iter()
        .find(|s| s.id == e_id && s.crypto_config() == crypto.as_deref() && s.max_rps > 0.0)
        .map(|s| s.max_rps);
    let (rate, rate_source) = match from_e {
        Some(r) => (r, format!("{e_id}'s fastest run in this benchmark")),
        None => {
            run_scenario(all, i, tokens, ctx, 3, Phase::Probe)?;
            let sc = all.get(i).ok_or("no flood scenario")?;
            // A failed probe is in the scenario's errors: the flood is reported as not run.
            if sc.errors.iter().any(|e| e.starts_with("probe")) || sc.max_rps <= 0.0 {
                return Ok(());
            }
            (
                sc.max_rps,
                "a 3 s probe on the flood's own server (its proofs stay in the replay store \
                 for 61 s, on top of the flood's)"
                    .to_owned(),
            )
        }
    };
    let sc = all.get_mut(i).ok_or("no flood scenario")?;
    let client = sc.dpop.as_ref().ok_or("no DPoP client")?;
    let need = (rate.max(100.0) * secs as f64 * 1.5) as usize + 1000;
    let auth = format!("DPoP {}", client.token);

    // All proofs carry iat = the run's midpoint. Minting takes time, so estimate it from a
    // sample, then wait for the planned start after minting.
    let sample_n = need.min(1000);
    let t = Instant::now();
    let sample = mint_proofs(client, sample_n, fixtures::now());
    let per_proof = t.elapsed().as_secs_f64() / sample.len().max(1) as f64;
    drop(sample);
    let mint_estimate = per_proof * need as f64 * 1.3 + 5.0;
    let iat = fixtures::now() + mint_estimate.ceil() as u64 + secs / 2;
    let t = Instant::now();
    let lines: Vec<String> = mint_proofs(client, need, iat)
        .into_iter()
        .map(|p| format!("{auth}\t{p}"))
        .collect();
    let planned = lines.len();
    let file = ctx.dir.join("requests-DPOP-FLOOD.txt");
    write_requests(&file, lines)?;
    let mint_s = t.elapsed().as_secs_f64();
    let window = DEFAULT_DPOP_IAT_WINDOW_SECONDS as f64;
    let start_at = iat as f64 - (secs / 2) as f64;
    let latest = iat as f64 + window - secs as f64 - WRK_STARTUP_S;
    eprintln!(
        "    minted {planned} {} proofs (iat = start + {} s; rate estimate {rate:.0} req/s from {rate_source}) in {mint_s:.1} s",
        alg.name(),
        secs / 2
    );
    let now = unix_time();
    if now > latest {
        sc.errors.push(format!(
            "not run: minting took {mint_s:.0} s, more than estimated ({mint_estimate:.0} s): \
             the proofs would leave the iat window during the run"
        ));
        return Ok(());
    }
    if now < start_at {
        sleep_interruptibly(Duration::from_secs_f64(start_at - now))?;
    }

    let server_pid = sc.envoys()?.server.pid();
    let memory_before = procfs::memory_kib(server_pid)?;
    let m: Measured = measure(sc, ctx, &file, ctx.connections, secs, None)?;
    let d = |name: &str| stack::delta(&m.before, &m.after, name);
    let present = |name: &str| m.after.contains_key(name).then(|| d(name));
    let mut denied: Vec<(String, u64)> = m
        .after
        .keys()
        .filter_map(|k| k.strip_prefix(DENIED).map(|r| (r.to_owned(), d(k))))
        .filter(|(_, n)| *n > 0)
        .collect();
    denied.sort();
    let wrk_non_2xx = m
        .summary
        .errors
        .iter()
        .filter(|(k, _)| k.starts_with("status"))
        .map(|(_, n)| n)
        .sum();
    let wrk_socket_errors: Vec<(String, u64)> = m
        .summary
        .errors
        .iter()
        .filter(|(k, _)| !k.starts_with("status"))
        .cloned()
        .collect();

    let mut errors = Vec::new();
    if m.summary.requests == 0 {
        errors.push("no request completed".to_owned());
    }
    for (what, n) in &wrk_socket_errors {
        errors.push(format!("wrk: {n} {what} errors"));
    }
    if m.summary.requests as usize > planned {
        errors.push(format!(
            "wrk sent more requests ({}) than there were proofs ({planned}): proofs were replayed",
            m.summary.requests
        ));
    }
    if m.started_unix < iat as f64 - window || m.ended_unix > iat as f64 + window {
        errors.push(format!(
            "the run ({:.0}..{:.0}) left the iat window ({iat} ± {window:.0} s)",
            m.started_unix, m.ended_unix
        ));
    }
    let record = Record {
        alg: alg.name(),
        crypto,
        secs,
        connections: ctx.connections,
        rate_estimate: rate,
        rate_source,
        proofs: planned,
        mint_s,
        iat,
        started_unix: m.started_unix,
        ended_unix: m.ended_unix,
        requests: m.summary.requests,
        rps: m.summary.rps(),
        p50_us: m.summary.p50_us,
        p99_us: m.summary.p99_us,
        wrk_non_2xx,
        wrk_socket_errors,
        server_2xx: d("http.ingress.downstream_rq_2xx"),
        server_4xx: d("http.ingress.downstream_rq_4xx"),
        server_5xx: d("http.ingress.downstream_rq_5xx"),
        allowed: d("wasmcustom.tokenbind.allowed"),
        denied,
        dpop_replayed: present("wasmcustom.tokenbind.denied.dpop_replayed"),
        dpop_replay_store_full: present("wasmcustom.tokenbind.denied.dpop_replay_store_full"),
        server_cpu_pct: 100.0 * m.server_cpu_s / m.wall_s.max(1e-9),
        server_cpu_us_per_request: m.server_cpu_s * 1e6 / (m.summary.requests.max(1) as f64),
        memory_before,
        memory_after: m.memory,
        errors,
    };
    eprintln!(
        "    {:<16} flood    {:>8.0} req/s  p50 {:>7.0} us  p99 {:>7.0} us  server CPU {:>5.1}%  {}{}",
        sc.id,
        record.rps,
        record.p50_us,
        record.p99_us,
        record.server_cpu_pct,
        record.refusals_text(),
        if record.errors.is_empty() {
            String::new()
        } else {
            format!("; ERRORS: {}", record.errors.join("; "))
        }
    );
    sc.flood = Some(record);
    Ok(())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn count(x: Option<u64>) -> String {
    x.map_or("no such counter".to_owned(), |n| n.to_string())
}

/// The printed section.
pub fn text(sc: &Scenario) -> String {
    let Some(r) = &sc.flood else {
        return format!(
            "DPoP flood ({}): not run{}\n",
            sc.id,
            if sc.errors.is_empty() {
                String::new()
            } else {
                format!(": {}", sc.errors.join("; "))
            }
        );
    };
    let (pass, _) = r.verdict();
    let mut s = format!(
        "DPoP flood ({}): {} s, {} connections, unique {} proofs (crypto {}), default replay store \
         (dpop.replay_cache not set; {} entries in this source tree) and iat window (±{} s), \
         every proof iat = start + {} s:\n",
        sc.id,
        r.secs,
        r.connections,
        r.alg,
        r.crypto.as_deref().unwrap_or("not set"),
        DEFAULT_REPLAY_ENTRIES,
        DEFAULT_DPOP_IAT_WINDOW_SECONDS,
        r.secs / 2
    );
    s.push_str(&format!(
        "  {} requests, {:.0} req/s (p50 {:.0} µs, p99 {:.0} µs); {} proofs minted in {:.1} s from a rate estimate of {:.0} req/s ({})\n",
        r.requests, r.rps, r.p50_us, r.p99_us, r.proofs, r.mint_s, r.rate_estimate, r.rate_source
    ));
    s.push_str(&format!(
        "  responses: server 2xx {}, 4xx {}, 5xx {}; wrk non-2xx {}; tokenbind.allowed {}\n",
        r.server_2xx, r.server_4xx, r.server_5xx, r.wrk_non_2xx, r.allowed
    ));
    s.push_str(&format!(
        "  refusals by reason (tokenbind.denied.*): {}; dpop_replayed {}, dpop_replay_store_full {}\n",
        if r.denied.is_empty() {
            "none".to_owned()
        } else {
            r.denied
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
        count(r.dpop_replayed),
        count(r.dpop_replay_store_full)
    ));
    s.push_str(&format!(
        "  server CPU {:.0} %, {:.1} µs/request; VmRSS {:.1} -> {:.1} MiB, VmHWM {:.1} -> {:.1} MiB\n",
        r.server_cpu_pct,
        r.server_cpu_us_per_request,
        mib(r.memory_before.1),
        mib(r.memory_after.1),
        mib(r.memory_before.0),
        mib(r.memory_after.0)
    ));
    s.push_str(&format!(
        "  zero legitimate proofs refused: {}\n",
        match pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "n/a (run invalid)",
        }
    ));
    for e in &r.errors {
        s.push_str(&format!("  !!! {e}\n"));
    }
    s
}

/// The JSON section.
pub fn json(sc: &Scenario) -> Value {
    let Some(r) = &sc.flood else {
        return json!({"id": sc.id, "ran": false, "errors": sc.errors});
    };
    let (pass, detail) = r.verdict();
    json!({
        "id": sc.id,
        "ran": true,
        "alg": r.alg,
        "crypto_config": r.crypto,
        "duration_s": r.secs,
        "connections": r.connections,
        "replay_cache_max_entries": format!("default (not set; {DEFAULT_REPLAY_ENTRIES} in this source tree)"),
        "iat_window_s": DEFAULT_DPOP_IAT_WINDOW_SECONDS,
        "iat": r.iat,
        "started_unix": (r.started_unix * 1000.0).round() / 1000.0,
        "ended_unix": (r.ended_unix * 1000.0).round() / 1000.0,
        "rate_estimate_rps": r.rate_estimate.round(),
        "rate_source": r.rate_source,
        "proofs_minted": r.proofs,
        "mint_s": (r.mint_s * 10.0).round() / 10.0,
        "requests": r.requests,
        "rps": r.rps.round(),
        "p50_us": r.p50_us,
        "p99_us": r.p99_us,
        "wrk_non_2xx": r.wrk_non_2xx,
        "wrk_socket_errors": r.wrk_socket_errors.iter().map(|(k, v)| json!({k: v})).collect::<Vec<_>>(),
        "server_2xx": r.server_2xx,
        "server_4xx": r.server_4xx,
        "server_5xx": r.server_5xx,
        "tokenbind_allowed": r.allowed,
        "refused_total": r.refused(),
        "denied_by_reason": Value::Object(r.denied.iter().map(|(k, v)| (k.clone(), json!(v))).collect()),
        "denied_dpop_replayed": r.dpop_replayed,
        "denied_dpop_replay_store_full": r.dpop_replay_store_full,
        "server_cpu_pct": (r.server_cpu_pct * 10.0).round() / 10.0,
        "server_cpu_us_per_request": (r.server_cpu_us_per_request * 10.0).round() / 10.0,
        "server_memory_before_kib": {"vmhwm": r.memory_before.0, "vmrss": r.memory_before.1},
        "server_memory_after_kib": {"vmhwm": r.memory_after.0, "vmrss": r.memory_after.1},
        "verdict": match pass { Some(true) => "PASS", Some(false) => "MISS", None => "n/a" },
        "verdict_detail": detail,
        "errors": r.errors,
    })
}
