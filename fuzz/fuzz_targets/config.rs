//! The plugin configuration: `Config::from_json` on arbitrary bytes, with a `jwks_file` reader
//! that serves one fixed JWKS. Invariants: an error has a message; a config
//! that parses builds an engine that decides a plain request without panicking, with a denial
//! reason from `Reason::ALL`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokenbind_core::{Config, Engine, MockHost, Outcome, Reason};
use tokenbind_fuzz::{keys, NOW};

fuzz_target!(|data: &[u8]| {
    let jwks = keys().jwks().to_string();
    let read = |path: &str| -> Result<String, String> {
        if path == "/etc/tokenbind/jwks.json" {
            Ok(jwks.clone())
        } else {
            Err(format!("no such file: {} bytes of path", path.len()))
        }
    };
    match Config::from_json(data, &read) {
        Ok(config) => {
            assert!(!config.providers.is_empty(), "a config with no provider");
            let engine = Engine::new(config);
            let host = MockHost::new().with_header("authorization", "Bearer a.b.c");
            let d = engine.decide(&host, NOW);
            if let Outcome::Deny(denial) = d.outcome {
                assert!(Reason::ALL.contains(&denial.reason));
            }
            let _ = d.reply(engine.config());
            let _ = d.counters(engine.config().mode);
            let _ = engine.config().is_exempt(Some("GET"), "/healthz");
        }
        Err(e) => {
            assert!(!e.message.is_empty(), "a config error without a message");
            assert!(!e.to_string().is_empty());
        }
    }
});
