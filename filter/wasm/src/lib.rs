//! tokenbind as a proxy-wasm filter: a thin shell over `tokenbind-core`.
//!
//! The root context parses and validates the configuration once, defines the counters and runs
//! the remote-JWKS timer; each HTTP context asks the engine for a decision and carries out its
//! effects ([`tokenbind_core::effects`]): counters, filter state, log lines, the reply. Every
//! decision is the core's: this crate only moves values between Envoy and the engine, and keeps
//! each request's state (Init → Waiting → Decided | Responded) so that a request is decided
//! once per attempt.
//!
//! The module speaks the proxy-wasm ABI itself, without the SDK: [`exports`] are the callbacks
//! Envoy calls, [`context`] maps their context ids to the root and HTTP contexts below, and
//! [`abi`] makes every host call. None of them panics on what the host passes or returns.

mod abi;
mod context;
mod exports;
mod host;
#[cfg(test)]
mod test_host;

use context::Action;
use std::cell::Cell;
use std::rc::Rc;
use tokenbind_core::crypto::{self, SignatureHost};
use tokenbind_core::effects::{self, Effects, Level, LogLine, Next};
use tokenbind_core::metrics::{self, Counter};
use tokenbind_core::remote::FetchResponse;
use tokenbind_core::{Attempt, Config, ConfigError, Crypto, CryptoMode, Engine, Work};

/// VM start-up, from `_initialize`.
fn start() {
    // Every log line goes through the non-panicking ABI layer.
    let _ = log::set_logger(&host::LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    // Nothing should panic (clippy denies it); if something does, say where, at critical.
    std::panic::set_hook(Box::new(|info| {
        host::log_critical(&format!("tokenbind: panic: {info}"))
    }));
}

/// Timer period while keys are missing, a fetch is under way or requests wait, and otherwise.
const FAST_TICK_MS: u64 = 100;
const SLOW_TICK_MS: u64 = 1_000;

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

    fn id(&self, counter: Counter) -> Option<u32> {
        self.0.get(counter.index()).copied().flatten()
    }
}

fn emit(line: &LogLine) {
    let level = match line.level {
        Level::Debug => log::Level::Debug,
        Level::Info => log::Level::Info,
        Level::Warn => log::Level::Warn,
        Level::Error => log::Level::Error,
    };
    log::log!(level, "{}", line.message);
}

/// Everything a VM's contexts share: built once per configuration.
struct Shared {
    engine: Engine,
    counters: Counters,
    /// `tokenbind.jwks.keys.<provider>` gauge ids, by provider index.
    gauges: Vec<Option<u32>>,
}

impl Shared {
    /// Carries out `effects` in order; returns what becomes of the request.
    fn carry_out(&self, effects: &Effects<'_>) -> Next {
        for c in &effects.counters {
            if let Some(id) = self.counters.id(*c) {
                host::increment(id);
            }
        }
        for (provider, value) in &effects.gauges {
            if let Some(Some(id)) = self.gauges.get(*provider) {
                host::set_gauge(*id, *value);
            }
        }
        for (name, value) in &effects.filter_state {
            host::set_filter_state(name, value);
        }
        for line in &effects.log {
            emit(line);
        }
        if let Some(reply) = &effects.reply {
            let headers: Vec<(&str, &str)> = reply
                .headers
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect();
            if !host::send_reply(reply.status, &headers, reply.body.as_bytes()) {
                log::error!("tokenbind: host refused the {} reply", reply.status);
            }
        }
        effects.next
    }

    /// Carries out timer work; returns the held requests to decide again.
    fn carry_out_work(&self, work: Work) -> Vec<u32> {
        self.carry_out(&effects::of_key_events(&work.events, self.engine.config()));
        host::set_tick_period_ms(if work.busy {
            FAST_TICK_MS
        } else {
            SLOW_TICK_MS
        });
        work.wake
    }

    /// The timer: sync keys, dispatch due fetches. Returns the requests to wake.
    fn tick(&self) -> Vec<u32> {
        let work = self
            .engine
            .tick(&host::Envoy, host::now_unix_millis(), host::random_unit());
        self.carry_out_work(work)
    }

    /// A fetch's response (fetches are dispatched by the root context, so responses arrive
    /// there). `None` if `token` is not a fetch in flight (the response is ignored); otherwise
    /// the requests to wake.
    fn on_call_response(&self, token: u32, body_size: usize) -> Option<Vec<u32>> {
        let limit = self.engine.fetch_body_limit(token)?;
        let status = host::call_response_header(":status").and_then(|v| v.parse::<u16>().ok());
        let cache_control = host::call_response_header("cache-control");
        // A body over the limit is not read (the engine refuses the fetch).
        let body =
            (body_size <= limit).then(|| host::call_response_body(body_size).unwrap_or_default());
        let response = FetchResponse {
            status,
            cache_control: cache_control.as_deref(),
            body: body.as_deref(),
        };
        let work = self.engine.fetch_response(
            &host::Envoy,
            token,
            response,
            host::now_unix_millis(),
            host::random_unit(),
        )?;
        Some(self.carry_out_work(work))
    }
}

/// Detects once whether Envoy verifies signatures for us (a known-answer probe of
/// `verify_signature`), then chooses the backend per algorithm for `mode`. `None` (after logging
/// why) when `crypto: "host"` cannot be honoured.
fn select_crypto(mode: CryptoMode, counters: &Counters) -> Option<Crypto> {
    let host: Option<Box<dyn SignatureHost>> = match mode {
        CryptoMode::Wasm => None,
        // The probe's failures are reported by the log line below, not as run-time host errors.
        CryptoMode::Auto | CryptoMode::Host => match crypto::probe(&host::EnvoyCrypto {
            error_counter: None,
        }) {
            Ok(()) => Some(Box::new(host::EnvoyCrypto {
                error_counter: counters.id(Counter::CryptoHostError),
            })),
            Err(e) => {
                emit(&effects::crypto_probe_failed(mode, &e));
                None
            }
        },
    };
    match Crypto::select(mode, host) {
        Ok(crypto) => {
            emit(&effects::crypto_selected(&crypto, mode));
            Some(crypto)
        }
        Err(message) => {
            emit(&effects::config_refused(&ConfigError {
                field: String::new(),
                message,
            }));
            None
        }
    }
}

fn read_file(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| {
        format!("{e} (Envoy's Wasm sandbox does not expose files; use \"jwks\" or \"remote_jwks\" instead)")
    })
}

/// A root context's `on_configure`: parses and validates the plugin configuration once and
/// builds what its HTTP contexts share. `None` (after logging why) refuses the configuration.
fn configure() -> Option<Rc<Shared>> {
    let Some(bytes) = host::plugin_configuration() else {
        emit(&effects::config_refused(&ConfigError {
            field: String::new(),
            message: "the plugin configuration is empty".to_owned(),
        }));
        return None;
    };
    let config = match Config::from_json(&bytes, &read_file) {
        Ok(config) => config,
        Err(e) => {
            emit(&effects::config_refused(&e));
            return None;
        }
    };
    // The DPoP nonce key every worker shares, if no VM created one yet.
    let mut fresh_key = [0u8; 32];
    let nonce_key = match getrandom::fill(&mut fresh_key) {
        Ok(()) => Some(&fresh_key),
        Err(e) if config.dpop.require_nonce => {
            emit(&effects::config_refused(&ConfigError {
                field: "dpop.require_nonce".to_owned(),
                message: format!("no randomness for the nonce key ({e})"),
            }));
            return None;
        }
        Err(e) => {
            log::warn!("tokenbind: no randomness for the DPoP nonce key ({e}); nonces unavailable");
            None
        }
    };
    for line in effects::configured(&config) {
        emit(&line);
    }
    let counters = Counters::define();
    let crypto = select_crypto(config.crypto, &counters)?;
    let engine = Engine::with_crypto(config, crypto);
    engine.prepare(&host::Envoy, nonce_key);
    let gauges = engine
        .config()
        .providers
        .iter()
        .map(|p| {
            p.keys.remote()?;
            host::define_gauge(&effects::keys_gauge_name(&p.name)).ok()
        })
        .collect();
    let shared = Rc::new(Shared {
        engine,
        counters,
        gauges,
    });
    if shared.engine.fetches_keys() {
        // Keys another VM already fetched are used at once; the first tick fetches if none.
        let work = shared.engine.sync(&host::Envoy, host::now_unix_millis());
        shared.carry_out_work(work);
        host::set_tick_period_ms(FAST_TICK_MS);
    }
    Some(shared)
}

/// Where a request is (as in Envoy's `jwt_authn`): each attempt decides it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No decision yet.
    Init,
    /// Held for keys; the root context wakes it ([`Http::resume`]).
    Waiting,
    /// Let through.
    Decided,
    /// Answered with a local reply.
    Responded,
}

/// One request's context.
struct Http {
    context_id: u32,
    shared: Rc<Shared>,
    state: Cell<State>,
}

impl Http {
    fn new(context_id: u32, shared: Rc<Shared>) -> Http {
        Http {
            context_id,
            shared,
            state: Cell::new(State::Init),
        }
    }

    /// The request is finishing (answered, reset or timed out): stop holding it.
    fn on_done(&self) {
        if self.state.get() == State::Waiting {
            self.shared.engine.forget(self.context_id);
        }
    }

    fn on_request_headers(&self) -> Action {
        if self.state.get() != State::Init {
            // Headers come once per stream; a second call changes nothing.
            return Action::Continue;
        }
        let attempt = Attempt {
            now_ms: host::now_unix_millis(),
            hold_as: Some(self.context_id),
        };
        self.act(attempt)
    }

    /// Held, and now woken by the root context (keys arrived, or the deadline passed), with
    /// this request's context effective: its final attempt.
    fn resume(&self) {
        if self.state.get() != State::Waiting {
            return;
        }
        let attempt = Attempt {
            now_ms: host::now_unix_millis(),
            hold_as: None,
        };
        if self.act(attempt) == Action::Continue {
            host::resume_request();
        }
    }

    fn act(&self, attempt: Attempt) -> Action {
        let shared = &self.shared;
        let decision = shared.engine.attempt(&host::Envoy, attempt);
        let next = shared.carry_out(&effects::of_decision(&decision, shared.engine.config()));
        let (state, action) = match next {
            Next::Continue => (State::Decided, Action::Continue),
            Next::Reply => (State::Responded, Action::Pause),
            Next::Wait => {
                // Fetches are dispatched by the root context's tick: a call dispatched here
                // belongs to this request's stream, and its response is lost when the stream
                // ends first (deadline, client gone).
                host::set_tick_period_ms(FAST_TICK_MS);
                (State::Waiting, Action::Pause)
            }
        };
        self.state.set(state);
        action
    }
}
