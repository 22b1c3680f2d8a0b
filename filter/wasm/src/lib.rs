//! tokenbind as a proxy-wasm filter: a thin shell over `tokenbind-core`.
//!
//! The root context parses and validates the configuration once and defines the counters;
//! each HTTP context reads the few request inputs, asks the engine for a decision, counts it,
//! logs it, and answers 401 in enforce mode. No decision logic lives here.

mod host;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::rc::Rc;
use tokenbind_core::metrics::{self, Counter};
use tokenbind_core::replay::ReplayStore;
use tokenbind_core::{nonce, Config, Decision, Engine, Host, Mode, Outcome};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Counter ids, indexed by [`Counter::index`].
struct Counters(Vec<Option<u32>>);

impl Counters {
    fn define() -> Counters {
        let mut ids = vec![None; metrics::COUNT];
        for counter in Counter::all() {
            let name = counter.name();
            match host::define_counter(&name) {
                Ok(id) => {
                    if let Some(slot) = ids.get_mut(counter.index()) {
                        *slot = Some(id);
                    }
                }
                Err(status) => log::warn!("tokenbind: cannot define metric {name}: {status:?}"),
            }
        }
        Counters(ids)
    }

    fn increment(&self, counter: Counter) {
        if let Some(Some(id)) = self.0.get(counter.index()) {
            host::increment(*id);
        }
    }
}

struct Shared {
    engine: Engine,
    counters: Counters,
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

fn read_file(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| {
        format!("{e} (Envoy's Wasm sandbox may not expose files; inline the key set with \"jwks\" instead)")
    })
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(bytes) = host::plugin_configuration() else {
            log::error!("tokenbind: invalid configuration: the plugin configuration is empty");
            return false;
        };
        let config = match Config::from_json(&bytes, &read_file) {
            Ok(config) => config,
            Err(e) => {
                log::error!("tokenbind: {e}");
                return false;
            }
        };
        for p in &config.providers {
            for s in &p.keys.skipped {
                log::warn!(
                    "tokenbind: provider {}: JWKS keys[{}] (kid {:?}) skipped: {}",
                    p.name,
                    s.index,
                    s.kid.as_deref().unwrap_or("-"),
                    s.why
                );
            }
        }
        log::info!(
            "tokenbind: configured: mode={} providers={} spiffe_binding={} require_binding={} cache.max_entries={}",
            config.mode.as_str(),
            config.providers.len(),
            config.spiffe.is_some(),
            config.require_binding,
            config.cache_max_entries
        );
        // DPoP state shared by all workers: the replay buckets and the nonce key. Created at
        // configuration time, before traffic, because shared data cannot create keys with CAS.
        ReplayStore::prepare(&host::Envoy);
        let mut fresh_key = [0u8; 32];
        match getrandom::fill(&mut fresh_key) {
            Ok(()) => nonce::ensure_key(&host::Envoy, &fresh_key),
            Err(e) if config.dpop.require_nonce => {
                log::error!("tokenbind: invalid configuration: dpop.require_nonce: no randomness for the nonce key ({e})");
                return false;
            }
            Err(e) => log::warn!(
                "tokenbind: no randomness for the DPoP nonce key ({e}); nonces unavailable"
            ),
        }
        self.shared = Some(Rc::new(Shared {
            engine: Engine::new(config),
            counters: Counters::define(),
        }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = Rc::clone(self.shared.as_ref()?);
        Some(Box::new(Http { shared }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    shared: Rc<Shared>,
}

impl Context for Http {}

fn log_denial(decision: &Decision, mode: Mode) {
    let Some(denial) = decision.denial() else {
        return;
    };
    let peer = decision.peer.clone().unwrap_or_else(|| host::Envoy.peer());
    let verb = match mode {
        Mode::Enforce => "denied",
        Mode::Monitor => "would deny (monitor mode)",
    };
    log::warn!(
        "tokenbind: {verb}: reason={} detail=\"{}\" peer={} token_sha256={}",
        denial.reason,
        denial.detail,
        peer.spiffe_id().unwrap_or("-"),
        decision.token_tag().as_deref().unwrap_or("-"),
    );
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let shared = &self.shared;
        let config = shared.engine.config();
        let decision = shared.engine.decide(&host::Envoy, host::now_unix_seconds());

        for counter in decision.counters(config.mode).into_iter().flatten() {
            shared.counters.increment(counter);
        }
        match &decision.outcome {
            Outcome::Exempt | Outcome::Allow => Action::Continue,
            Outcome::Deny(_) => {
                log_denial(&decision, config.mode);
                match decision.reply(config) {
                    None => Action::Continue,
                    Some(reply) => {
                        let headers: Vec<(&str, &str)> = reply
                            .headers
                            .iter()
                            .map(|(k, v)| (*k, v.as_str()))
                            .collect();
                        if host::send_reply(reply.status, &headers, reply.body.as_bytes()) {
                            Action::Pause
                        } else {
                            log::error!("tokenbind: host refused the 401 reply");
                            Action::Pause
                        }
                    }
                }
            }
        }
    }
}
