//! tokenbind as a proxy-wasm filter: a thin shell over `tokenbind-core`.
//!
//! The root context parses and validates the configuration once, defines the counters and runs
//! the remote-JWKS timer; each HTTP context asks the engine for a decision, counts it, logs it,
//! and answers 401 in enforce mode. No decision logic lives here.
//!
//! The module speaks the proxy-wasm ABI itself, without the SDK: [`exports`] are the callbacks
//! Envoy calls, [`context`] maps their context ids to the root and HTTP contexts below, and
//! [`abi`] makes every host call. None of them panics on what the host passes or returns.

mod abi;
mod context;
mod exports;
mod fetch;
mod host;
#[cfg(test)]
mod test_host;

use context::Action;
use fetch::{Events, Fetcher, Pending};
use std::cell::RefCell;
use std::rc::Rc;
use tokenbind_core::crypto::{self, SignatureHost};
use tokenbind_core::metrics::{self, Counter};
use tokenbind_core::replay::ReplayStore;
use tokenbind_core::{nonce, Config, Crypto, CryptoMode, Decision, Engine, Host, Mode, Reason};

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

    fn increment(&self, counter: Counter) {
        if let Some(id) = self.id(counter) {
            host::increment(id);
        }
    }
}

/// Everything a VM's contexts share: built once per configuration.
struct Shared {
    engine: Engine,
    counters: Counters,
    fetcher: RefCell<Fetcher>,
}

impl Shared {
    fn count(&self, events: &Events) {
        for c in &events.counters {
            self.counters.increment(*c);
        }
    }

    /// Writes the decision to filter state (`wasm.tokenbind.*`) for access logs and other
    /// filters. Envoy's Wasm ABI cannot write dynamic metadata, so filter state is the channel.
    fn record(&self, decision: &Decision, peer: Option<&tokenbind_core::Peer>) {
        let config = self.engine.config();
        if !config.emit_filter_state {
            return;
        }
        if decision.outcome == tokenbind_core::Outcome::Exempt {
            host::set_filter_state("tokenbind.decision", "exempt");
            return;
        }
        let facts = decision.facts.as_deref();
        let fields = [
            ("tokenbind.decision", decision.verdict(config.mode)),
            (
                "tokenbind.reason",
                decision.denial().map_or("-", |d| d.reason.as_str()),
            ),
            (
                "tokenbind.peer",
                peer.and_then(|p| p.spiffe_id()).unwrap_or("-"),
            ),
            ("tokenbind.iss", facts.map_or("-", |f| f.issuer.as_str())),
            (
                "tokenbind.sub",
                facts.and_then(|f| f.subject.as_deref()).unwrap_or("-"),
            ),
            ("tokenbind.binding", decision.bindings.kind()),
        ];
        // An absent value reads as "-" in an access log anyway: skip the host call.
        for (name, value) in fields {
            if value != "-" {
                host::set_filter_state(name, value);
            }
        }
        if let Some(gw) = &decision.forwarded_by {
            host::set_filter_state("tokenbind.forwarded_by", gw);
        }
    }

    /// Counts, records, logs and answers a final decision. Returns whether the request may
    /// continue.
    fn act(&self, decision: &Decision) -> bool {
        let config = self.engine.config();
        for counter in decision.counters(config.mode).into_iter().flatten() {
            self.counters.increment(counter);
        }
        let Some(denial) = decision.denial() else {
            self.record(decision, decision.peer.as_ref());
            return true;
        };
        // Denials before binding (no token, bad signature, ...) read the peer once, for the log.
        let peer = decision.peer.clone().unwrap_or_else(|| {
            host::Envoy.peer(tokenbind_core::peer::PeerWant {
                uri_san: true,
                ..tokenbind_core::peer::PeerWant::NOTHING
            })
        });
        self.record(decision, Some(&peer));
        let verb = match config.mode {
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
        match decision.reply(config) {
            None => true,
            Some(reply) => {
                let headers: Vec<(&str, &str)> = reply
                    .headers
                    .iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect();
                if !host::send_reply(reply.status, &headers, reply.body.as_bytes()) {
                    log::error!("tokenbind: host refused the 401 reply");
                }
                false
            }
        }
    }

    /// The remote provider a denial is about, when the denial may only mean that its keys are
    /// not (yet) here: no keys at all, or an unknown `kid`.
    fn awaiting_remote_keys(&self, decision: &Decision) -> Option<(Reason, usize)> {
        let reason = decision.denial()?.reason;
        if !matches!(reason, Reason::UnknownKey | Reason::JwksUnavailable) {
            return None;
        }
        let provider = decision.provider?;
        self.fetcher
            .borrow()
            .is_remote(provider)
            .then_some((reason, provider))
    }

    /// Whether a decision should wait for keys instead of being final: the token's provider is
    /// remote and either has no keys yet, or does not know the `kid` and a refetch is granted
    /// or already under way.
    fn should_wait(&self, decision: &Decision, now_ms: u64) -> Option<usize> {
        let (reason, provider) = self.awaiting_remote_keys(decision)?;
        if reason == Reason::JwksUnavailable {
            let deadline = now_ms + self.remote_timeout_ms(provider);
            return self
                .fetcher
                .borrow()
                .keys_may_arrive(provider, now_ms, deadline)
                .then_some(provider);
        }
        if self
            .fetcher
            .borrow_mut()
            .grant_kid_refetch(provider, now_ms)
        {
            self.counters.increment(Counter::JwksRefetchUnknownKid);
            Some(provider)
        } else {
            self.fetcher
                .borrow()
                .fetching(provider, now_ms)
                .then_some(provider)
        }
    }

    fn remote_timeout_ms(&self, provider: usize) -> u64 {
        self.engine
            .config()
            .providers
            .get(provider)
            .and_then(|p| p.keys.remote())
            .map_or(0, |r| r.timeout_ms)
    }

    /// A decision made without a remote provider's current keys (unknown `kid`, or no keys yet)
    /// may only mean that another worker VM stored a newer key set that this VM has not
    /// installed yet (it syncs on its timer). Installs it now; returns whether the keys changed,
    /// i.e. whether the request must be decided again. (Also releases requests held here.)
    fn sync_if_stale(&self, decision: &Decision, now_ms: u64, current_context: u32) -> bool {
        if self.awaiting_remote_keys(decision).is_none() {
            return false;
        }
        let mut events = Events::default();
        self.fetcher.borrow_mut().sync(&self.engine, &mut events);
        if events.settled.is_empty() {
            return false;
        }
        self.release(&events.settled, now_ms, current_context);
        true
    }

    /// Decides the held requests that can be decided now, each in its own context, then
    /// returns the host to `current_context`.
    fn release(&self, settled: &[usize], now_ms: u64, current_context: u32) {
        let ready = self.fetcher.borrow().take_ready(settled, now_ms);
        if ready.is_empty() {
            return;
        }
        for p in ready {
            if !host::set_effective_context(p.context_id) {
                continue;
            }
            let decision = self.engine.decide(&host::Envoy, now_ms / 1000);
            if self.act(&decision) {
                host::resume_request();
            }
        }
        host::set_effective_context(current_context);
    }

    /// Sync keys, dispatch due fetches, release waiting requests.
    fn tick(&self, current_context: u32) {
        let now_ms = host::now_unix_millis();
        let mut events = Events::default();
        {
            let mut fetcher = self.fetcher.borrow_mut();
            fetcher.sync(&self.engine, &mut events);
            fetcher.dispatch_due(now_ms, &mut events);
        }
        self.count(&events);
        self.release(&events.settled, now_ms, current_context);
        let busy = self.fetcher.borrow().busy(&self.engine);
        host::set_tick_period_ms(if busy { FAST_TICK_MS } else { SLOW_TICK_MS });
    }

    /// A fetch's response. Fetches are dispatched only by the root context, so responses only
    /// arrive there. False if `token` is not a fetch in flight (the response is ignored).
    fn on_call_response(&self, token: u32, body_size: usize, current_context: u32) -> bool {
        let now_ms = host::now_unix_millis();
        let mut events = Events::default();
        {
            let mut fetcher = self.fetcher.borrow_mut();
            if !fetcher.on_response(token, body_size, now_ms, &mut events) {
                return false;
            }
            fetcher.sync(&self.engine, &mut events);
        }
        self.count(&events);
        self.release(&events.settled, now_ms, current_context);
        true
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
                let level = if mode == CryptoMode::Host {
                    log::Level::Error
                } else {
                    log::Level::Info
                };
                log::log!(
                    level,
                    "tokenbind: host signature verification unusable: {e}"
                );
                None
            }
        },
    };
    match Crypto::select(mode, host) {
        Ok(crypto) => {
            log::info!(
                "tokenbind: crypto: {} (crypto={})",
                crypto.describe(),
                mode.as_str()
            );
            Some(crypto)
        }
        Err(e) => {
            log::error!("tokenbind: invalid configuration: {e}");
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
        log::error!("tokenbind: invalid configuration: the plugin configuration is empty");
        return None;
    };
    let config = match Config::from_json(&bytes, &read_file) {
        Ok(config) => config,
        Err(e) => {
            log::error!("tokenbind: {e}");
            return None;
        }
    };
    for p in &config.providers {
        for s in p
            .keys
            .static_keys()
            .map(|k| k.skipped.as_slice())
            .unwrap_or_default()
        {
            log::warn!(
                "tokenbind: provider {}: JWKS keys[{}] (kid {:?}) skipped: {}",
                p.name,
                s.index,
                s.kid.as_deref().unwrap_or("-"),
                s.why
            );
        }
    }
    // DPoP state shared by all workers: the replay buckets and the nonce key. Created at
    // configuration time, before traffic, because shared data cannot create keys with CAS.
    ReplayStore::prepare(&host::Envoy);
    let mut fresh_key = [0u8; 32];
    match getrandom::fill(&mut fresh_key) {
        Ok(()) => nonce::ensure_key(&host::Envoy, &fresh_key),
        Err(e) if config.dpop.require_nonce => {
            log::error!("tokenbind: invalid configuration: dpop.require_nonce: no randomness for the nonce key ({e})");
            return None;
        }
        Err(e) => {
            log::warn!("tokenbind: no randomness for the DPoP nonce key ({e}); nonces unavailable")
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
    let counters = Counters::define();
    let crypto = select_crypto(config.crypto, &counters)?;
    let engine = Engine::with_crypto(config, crypto);
    let fetcher = Fetcher::new(&engine);
    let remote = fetcher.has_work();
    let shared = Rc::new(Shared {
        engine,
        counters,
        fetcher: RefCell::new(fetcher),
    });
    if remote {
        // Keys another VM already fetched are used at once; the first tick fetches if none.
        let mut events = Events::default();
        shared
            .fetcher
            .borrow_mut()
            .sync(&shared.engine, &mut events);
        host::set_tick_period_ms(FAST_TICK_MS);
    }
    Some(shared)
}

/// One request's context.
struct Http {
    context_id: u32,
    shared: Rc<Shared>,
}

impl Http {
    /// The request is finishing (answered, reset or timed out): stop holding it.
    fn on_done(&self) {
        self.shared.fetcher.borrow().forget(self.context_id);
    }

    fn on_request_headers(&self) -> Action {
        let shared = &self.shared;
        // One clock read per request.
        let now_ms = host::now_unix_millis();
        let mut decision = shared.engine.decide(&host::Envoy, now_ms / 1000);
        if shared.sync_if_stale(&decision, now_ms, self.context_id) {
            decision = shared.engine.decide(&host::Envoy, now_ms / 1000);
        }
        if let Some(provider) = shared.should_wait(&decision, now_ms) {
            let timeout = shared.remote_timeout_ms(provider);
            let held = shared.fetcher.borrow().hold(Pending {
                context_id: self.context_id,
                provider,
                deadline_ms: now_ms + timeout,
            });
            if held {
                // Fetches are dispatched by the root context's tick: a call dispatched here
                // belongs to this request's stream, and its response is lost when the stream
                // ends first (deadline, client gone).
                host::set_tick_period_ms(FAST_TICK_MS);
                return Action::Pause;
            }
        }
        if shared.act(&decision) {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}
