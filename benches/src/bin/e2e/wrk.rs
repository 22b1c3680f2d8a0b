//! The load generator: wrk with a Lua script that sends one pre-built request per line of a
//! file (cycling), so every scenario pays the same per-request cost in wrk.

use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::interrupted;
use crate::procfs;

/// The Lua script. Arguments: the requests file, the `Host` header. Each line is an
/// `Authorization` value, optionally followed by a tab and a `DPoP` value; an empty line sends
/// no credential. Requests are formatted once, in `init` (before wrk starts its clock).
pub const SCRIPT: &str = r#"
local reqs = {}
local n = 0
local i = 0
function init(args)
  local host = args[2]
  for line in io.lines(args[1]) do
    local h = {["Host"] = host}
    local tab = string.find(line, "\t", 1, true)
    if tab then
      h["Authorization"] = string.sub(line, 1, tab - 1)
      h["DPoP"] = string.sub(line, tab + 1)
    elseif #line > 0 then
      h["Authorization"] = line
    end
    n = n + 1
    reqs[n] = wrk.format("GET", "/", h)
  end
  if n == 0 then
    n = 1
    reqs[1] = wrk.format("GET", "/", {["Host"] = host})
  end
end
function request()
  i = i + 1
  if i > n then i = 1 end
  return reqs[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"err_connect":%d,"err_read":%d,"err_write":%d,' ..
    '"err_status":%d,"err_timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
"#;

/// One wrk run's summary.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub requests: u64,
    pub duration_s: f64,
    /// Connect, read, write, timeout errors and non-2xx/3xx responses.
    pub errors: Vec<(String, u64)>,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub mean_us: f64,
}

impl Summary {
    pub fn rps(&self) -> f64 {
        if self.duration_s > 0.0 {
            self.requests as f64 / self.duration_s
        } else {
            0.0
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.iter().map(|(_, n)| n).sum()
    }
}

/// What to run.
pub struct Run<'a> {
    pub script: &'a Path,
    pub requests_file: &'a Path,
    pub url: &'a str,
    pub host: &'a str,
    pub connections: u32,
    pub duration: Duration,
    pub cpu: Option<usize>,
}

/// Kills and reaps wrk if it is still running when dropped (error paths, interrupts).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

pub fn wrk_binary() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("wrk"))
            .find(|p| p.is_file())
    })
}

/// Runs wrk once and returns its summary. Waits at most the duration plus 30 s.
pub fn run(r: &Run<'_>, out_dir: &Path) -> Result<Summary, String> {
    let secs = r.duration.as_secs().max(1);
    let stdout_path = out_dir.join("wrk.out");
    let stderr_path = out_dir.join("wrk.err");
    let stdout = fs::File::create(&stdout_path).map_err(|e| format!("wrk stdout: {e}"))?;
    let stderr = fs::File::create(&stderr_path).map_err(|e| format!("wrk stderr: {e}"))?;
    let mut cmd = Command::new("wrk");
    cmd.arg("-t1")
        .arg(format!("-c{}", r.connections))
        .arg(format!("-d{secs}s"))
        .arg("--timeout")
        .arg("10s")
        .arg("-s")
        .arg(r.script)
        .arg(r.url)
        .arg("--")
        .arg(r.requests_file)
        .arg(r.host)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    let cpu = r.cpu;
    // SAFETY: runs in the forked child before exec; prctl and sched_setaffinity are
    // async-signal-safe. wrk dies with this process (it is spawned from the main thread,
    // which lives for the whole run).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(cpu) = cpu {
                procfs::pin_self(cpu)?;
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("starting wrk: {e} (install it: apt-get install -y wrk)"))?;
    let mut guard = Guard(child);
    let deadline = Instant::now() + r.duration + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = guard
            .0
            .try_wait()
            .map_err(|e| format!("waiting for wrk: {e}"))?
        {
            break status;
        }
        if interrupted() {
            return Err("interrupted".into());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "wrk did not finish within {:?}; killed",
                r.duration + Duration::from_secs(30)
            ));
        }
        thread::sleep(Duration::from_millis(50));
    };
    let out = fs::read_to_string(&stdout_path).unwrap_or_default();
    let err = fs::read_to_string(&stderr_path).unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "wrk failed ({status}): {}{}",
            out.trim(),
            err.trim()
        ));
    }
    parse(&out).ok_or_else(|| format!("no WRKJSON line in wrk's output:\n{out}{err}"))
}

fn parse(out: &str) -> Option<Summary> {
    let line = out.lines().find_map(|l| l.strip_prefix("WRKJSON "))?;
    let v: Value = serde_json::from_str(line).ok()?;
    let n = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let errors = [
        ("connect", "err_connect"),
        ("read", "err_read"),
        ("write", "err_write"),
        ("status (non-2xx/3xx)", "err_status"),
        ("timeout", "err_timeout"),
    ]
    .iter()
    .map(|(name, key)| (name.to_string(), n(key) as u64))
    .filter(|(_, c)| *c > 0)
    .collect();
    Some(Summary {
        requests: n("requests") as u64,
        duration_s: n("duration_us") / 1e6,
        errors,
        p50_us: n("p50_us"),
        p90_us: n("p90_us"),
        p99_us: n("p99_us"),
        p999_us: n("p999_us"),
        mean_us: n("mean_us"),
    })
}
