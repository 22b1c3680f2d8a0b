//! `perf record -e cpu-clock` on a server sidecar during one run, summarised by shared object
//! and symbol. Envoy's binary is stripped and V8's JIT code (the compiled Wasm) has no perf
//! map, so the useful split is by object: the Envoy binary (proxy, TLS, V8 runtime, host
//! calls), anonymous JIT memory (the filter's compiled Wasm and V8 stubs), libc, the kernel.

use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub struct Perf {
    child: Child,
    data: PathBuf,
    report: PathBuf,
}

impl Perf {
    pub fn start(pid: u32, report: &Path) -> Result<Perf, String> {
        if let Some(dir) = report.parent() {
            fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let data = report.with_extension("data");
        let mut cmd = Command::new("perf");
        cmd.args(["record", "-q", "-e", "cpu-clock", "-F", "4999", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; perf dies with this process.
        unsafe {
            cmd.pre_exec(|| {
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
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting perf: {e} (apt-get install -y linux-perf)"))?;
        // Let perf attach before the load starts.
        thread::sleep(Duration::from_millis(500));
        Ok(Perf {
            child,
            data,
            report: report.to_path_buf(),
        })
    }

    /// Stops perf (SIGINT, at most 30 s) and writes the report.
    pub fn finish(mut self) -> Result<PathBuf, String> {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err("perf record did not stop".into());
                }
            }
        }
        let mut text = String::new();
        for sort in ["dso", "dso,sym"] {
            let out = Command::new("perf")
                .args([
                    "report",
                    "--stdio",
                    "--percent-limit",
                    "0.5",
                    "--sort",
                    sort,
                    "-i",
                ])
                .arg(&self.data)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("perf report: {e}"))?;
            text.push_str(&format!("### perf report --sort {sort}\n"));
            text.push_str(&String::from_utf8_lossy(&out.stdout));
            text.push('\n');
        }
        fs::write(&self.report, text).map_err(|e| format!("{}: {e}", self.report.display()))?;
        Ok(self.report.clone())
    }
}

impl Drop for Perf {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
