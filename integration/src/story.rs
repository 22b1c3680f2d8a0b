//! Printing helpers shared by the demos (`examples/demo.rs`, `examples/east-west/`): headings,
//! responses, `[ok]`/`[FAIL]` checks, and a `main` that turns failed checks into an exit code.

use crate::client::Response;
use std::process::ExitCode;

/// The checks a demo made; any failure makes it exit non-zero.
pub struct Story {
    failures: Vec<String>,
}

impl Story {
    /// Prints `[ok]` or `[FAIL]` for a claim about what just happened.
    pub fn check(&mut self, ok: bool, what: &str) {
        if ok {
            println!("   [ok]   {what}");
        } else {
            println!("   [FAIL] {what}");
            self.failures.push(what.to_string());
        }
    }
}

pub fn heading(text: &str) {
    println!();
    println!("== {text}");
}

/// Prints a response's status, the named headers and the body.
pub fn show(resp: &Response, headers: &[&str]) {
    println!("   <- HTTP {} {}", resp.status, resp.reason);
    for name in headers {
        for v in resp.header_all(name) {
            println!("      {name}: {v}");
        }
    }
    println!("      body: {}", resp.body_str());
}

/// The `reason` of a tokenbind 401 body.
pub fn reason_of(resp: &Response) -> Option<String> {
    resp.json()?.get("reason")?.as_str().map(str::to_string)
}

/// Runs a demo and reports: success only if it ran to the end and every check passed.
pub fn main(run: impl FnOnce(&mut Story) -> Result<(), String>) -> ExitCode {
    let mut story = Story {
        failures: Vec::new(),
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&mut story)));
    println!();
    match result {
        Ok(Ok(())) if story.failures.is_empty() => {
            println!("RESULT: all steps behaved as expected.");
            ExitCode::SUCCESS
        }
        Ok(Ok(())) => {
            println!("RESULT: {} check(s) failed:", story.failures.len());
            for f in &story.failures {
                println!("  - {f}");
            }
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            println!("RESULT: demo could not run: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            println!("RESULT: demo aborted (see the panic message above).");
            ExitCode::FAILURE
        }
    }
}
