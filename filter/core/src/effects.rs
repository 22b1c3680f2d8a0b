//! What a decision does, as a value: the counters it increments, the filter-state values it
//! writes, the log lines, the local reply, and what becomes of the request. Also the effects of
//! remote-key events and the start-up lines.
//!
//! This is the only module that formats a log line or a filter-state value. The adapter carries
//! effects out in order and decides nothing; everything here is plain Rust, unit-tested.

use crate::config::{Config, ConfigError, Mode};
use crate::crypto::{Crypto, CryptoMode};
use crate::engine::{CacheUse, Decision, Outcome, Xfcc};
use crate::extract::Scheme;
use crate::fetcher::KeyEvent;
use crate::metrics::Counter;
use crate::response::{self, Challenge, Reply};
use std::borrow::Cow;

/// A log level, as proxy-wasm has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// One log line. Never carries a token, proof or key: tokens appear as [`Decision::token_tag`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: Level,
    pub message: String,
}

impl LogLine {
    fn new(level: Level, message: String) -> Self {
        LogLine { level, message }
    }
}

/// What becomes of the request once the effects are carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Let it through (allowed, exempt, or a monitor-mode denial).
    Continue,
    /// It is held for keys: pause it; the engine wakes it ([`crate::engine::Work::wake`]).
    Wait,
    /// The reply answers it: the request stops here.
    Reply,
}

/// Everything one decision (or one batch of key events) does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effects<'a> {
    pub counters: Vec<Counter>,
    /// Keys held per provider: `(provider index, count)` for `tokenbind.jwks.keys.<name>`.
    pub gauges: Vec<(usize, u64)>,
    /// Filter state `wasm.<name>` values, for access logs and later filters.
    pub filter_state: Vec<(&'static str, Cow<'a, str>)>,
    pub log: Vec<LogLine>,
    pub reply: Option<Reply>,
    pub next: Next,
}

impl Effects<'_> {
    fn none() -> Self {
        Effects {
            counters: Vec::new(),
            gauges: Vec::new(),
            filter_state: Vec::new(),
            log: Vec::new(),
            reply: None,
            next: Next::Continue,
        }
    }
}

impl Decision {
    /// The counters this decision's verdict increments under `mode`: cache, verdict, XFCC. A
    /// held request ([`Outcome::AwaitKeys`]) has no verdict yet and counts nothing here.
    pub fn counters(&self, mode: Mode) -> [Option<Counter>; 3] {
        let cache = match self.cache {
            CacheUse::Hit => Some(Counter::CacheHit),
            CacheUse::Miss => Some(Counter::CacheMiss),
            CacheUse::NotConsulted => None,
        };
        let verdict = match (&self.outcome, mode) {
            (Outcome::Exempt, _) => Counter::Exempt,
            (Outcome::Allow, _) => Counter::Allowed,
            (Outcome::Deny(d), Mode::Enforce) => Counter::Denied(d.reason),
            (Outcome::Deny(d), Mode::Monitor) => Counter::WouldDeny(d.reason),
            (Outcome::AwaitKeys { .. }, _) => return [None; 3],
        };
        let xfcc = match self.xfcc {
            Xfcc::Absent => None,
            Xfcc::Used => Some(Counter::XfccUsed),
            Xfcc::Untrusted => Some(Counter::XfccUntrusted),
            Xfcc::Invalid => Some(Counter::XfccInvalid),
        };
        [cache, Some(verdict), xfcc]
    }

    /// The decision as a word for logs and filter state.
    pub fn verdict(&self, mode: Mode) -> &'static str {
        match (&self.outcome, mode) {
            (Outcome::Exempt, _) => "exempt",
            (Outcome::Allow, _) => "allow",
            (Outcome::Deny(_), Mode::Enforce) => "deny",
            (Outcome::Deny(_), Mode::Monitor) => "would_deny",
            (Outcome::AwaitKeys { .. }, _) => "await_keys",
        }
    }

    /// The local reply to send, if any: only an enforce-mode denial answers.
    pub fn reply(&self, config: &Config) -> Option<Reply> {
        match (&self.outcome, config.mode) {
            (Outcome::Deny(d), Mode::Enforce) => {
                let algs = config.dpop.algs_param();
                let challenge = Challenge {
                    realm: &config.realm,
                    dpop_scheme: self.scheme == Some(Scheme::DPoP),
                    dpop_algs: &algs,
                };
                Some(response::unauthorized(
                    d.reason,
                    &challenge,
                    self.dpop_nonce.as_deref(),
                ))
            }
            _ => None,
        }
    }

    /// A short, non-reversible tag for correlating a token across log lines.
    pub fn token_tag(&self) -> Option<String> {
        self.token_hash.map(|h| {
            h.iter()
                .take(6)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        })
    }
}

/// The effects of one decision under `config`.
pub fn of_decision<'a>(decision: &'a Decision, config: &Config) -> Effects<'a> {
    let mut effects = of_key_events(&decision.key_events, config);
    effects
        .counters
        .extend(decision.counters(config.mode).into_iter().flatten());
    if let Outcome::AwaitKeys { .. } = decision.outcome {
        effects.next = Next::Wait;
        return effects;
    }
    if config.emit_filter_state {
        effects.filter_state = filter_state(decision, config.mode);
    }
    if let Outcome::Deny(denial) = decision.outcome {
        let verb = match config.mode {
            Mode::Enforce => "denied",
            Mode::Monitor => "would deny (monitor mode)",
        };
        effects.log.push(LogLine::new(
            Level::Warn,
            format!(
                "tokenbind: {verb}: reason={} detail=\"{}\" peer={} token_sha256={}",
                denial.reason,
                denial.detail,
                decision
                    .peer
                    .as_ref()
                    .and_then(|p| p.spiffe_id())
                    .unwrap_or("-"),
                decision.token_tag().as_deref().unwrap_or("-"),
            ),
        ));
    }
    effects.reply = decision.reply(config);
    if effects.reply.is_some() {
        effects.next = Next::Reply;
    }
    effects
}

/// The filter-state values of a decision (`wasm.tokenbind.*`). Envoy's Wasm ABI cannot write
/// dynamic metadata, so filter state is the channel. An absent value would read as "-" in an
/// access log anyway, so it is left out (one host call fewer).
fn filter_state(decision: &Decision, mode: Mode) -> Vec<(&'static str, Cow<'_, str>)> {
    let mut fields = vec![("tokenbind.decision", Cow::Borrowed(decision.verdict(mode)))];
    if decision.outcome == Outcome::Exempt {
        return fields;
    }
    let facts = decision.facts.as_deref();
    let optional: [(&'static str, Option<Cow<'_, str>>); 6] = [
        (
            "tokenbind.reason",
            decision.denial().map(|d| Cow::Borrowed(d.reason.as_str())),
        ),
        (
            "tokenbind.peer",
            decision
                .peer
                .as_ref()
                .and_then(|p| p.spiffe_id())
                .map(Cow::Borrowed),
        ),
        (
            "tokenbind.iss",
            facts.map(|f| Cow::Borrowed(f.issuer.as_str())),
        ),
        (
            "tokenbind.sub",
            facts.and_then(|f| f.subject.as_deref()).map(Cow::Borrowed),
        ),
        ("tokenbind.binding", Some(decision.bindings.kind())),
        (
            "tokenbind.forwarded_by",
            decision.forwarded_by.as_deref().map(Cow::Borrowed),
        ),
    ];
    fields.extend(
        optional
            .into_iter()
            .filter_map(|(name, value)| Some((name, value?)).filter(|(_, v)| v != "-")),
    );
    fields
}

fn provider_name(config: &Config, provider: usize) -> &str {
    config
        .providers
        .get(provider)
        .map_or("?", |p| p.name.as_str())
}

/// The name of the gauge of keys held for a provider.
pub fn keys_gauge_name(provider_name: &str) -> String {
    format!("tokenbind.jwks.keys.{provider_name}")
}

/// The effects of remote-key events: counters, key-count gauges and log lines.
pub fn of_key_events<'a>(events: &[KeyEvent], config: &Config) -> Effects<'a> {
    let mut effects = Effects::none();
    for event in events {
        match event {
            KeyEvent::Installed {
                provider,
                keys,
                withdrawn,
                skipped,
            } => {
                let name = provider_name(config, *provider);
                for s in skipped {
                    effects.log.push(LogLine::new(
                        Level::Debug,
                        format!(
                            "tokenbind: provider {name}: JWKS keys[{}] skipped: {}",
                            s.index, s.why
                        ),
                    ));
                }
                effects.log.push(LogLine::new(
                    Level::Info,
                    format!("tokenbind: provider {name}: installed {keys} keys"),
                ));
                effects.gauges.push((*provider, *keys as u64));
                if *withdrawn > 0 {
                    effects.log.push(LogLine::new(
                        Level::Warn,
                        format!(
                            "tokenbind: provider {name}: {withdrawn} cached tokens were verified by keys no longer in the key set; they are verified again on their next request"
                        ),
                    ));
                }
            }
            KeyEvent::Fetched {
                provider,
                keys,
                authority,
                path,
            } => {
                effects.counters.push(Counter::JwksFetchSuccess);
                effects.log.push(LogLine::new(
                    Level::Info,
                    format!(
                        "tokenbind: provider {}: fetched {keys} keys from {authority}{path}",
                        provider_name(config, *provider)
                    ),
                ));
            }
            KeyEvent::Discovered {
                provider,
                authority,
                path,
            } => effects.log.push(LogLine::new(
                Level::Info,
                format!(
                    "tokenbind: provider {}: discovered jwks_uri {authority}{path}",
                    provider_name(config, *provider)
                ),
            )),
            KeyEvent::FetchFailed {
                provider,
                authority,
                path,
                status,
                why,
                retry_in_seconds,
            } => {
                effects.counters.push(Counter::JwksFetchFailed);
                // Envoy answers timeouts (504) and connection failures (503) itself.
                let status = status.map_or_else(|| "none".to_owned(), |s| s.to_string());
                effects.log.push(LogLine::new(
                    Level::Warn,
                    format!(
                        "tokenbind: provider {}: fetching {authority}{path} failed: {why} (status {status}); keeping the last good keys, retry in {retry_in_seconds} s",
                        provider_name(config, *provider)
                    ),
                ));
            }
            KeyEvent::DispatchRefused {
                provider,
                cluster,
                status,
            } => {
                effects.counters.push(Counter::JwksFetchFailed);
                effects.log.push(LogLine::new(
                    Level::Warn,
                    format!(
                        "tokenbind: provider {}: cannot call cluster {cluster:?}: host status {status}",
                        provider_name(config, *provider)
                    ),
                ));
            }
            KeyEvent::RefetchGranted { .. } => {
                effects.counters.push(Counter::JwksRefetchUnknownKid);
            }
            // Counted, not logged: on a busy sidecar a full list would flood the log.
            KeyEvent::WaitListFull { .. } => effects.counters.push(Counter::JwksWaitListFull),
        }
    }
    effects
}

/// The lines a VM logs once its configuration is accepted: keys skipped in inline key sets,
/// then a summary.
pub fn configured(config: &Config) -> Vec<LogLine> {
    let mut lines = Vec::new();
    for p in &config.providers {
        for s in p
            .keys
            .static_keys()
            .map(|k| k.skipped.as_slice())
            .unwrap_or_default()
        {
            lines.push(LogLine::new(
                Level::Warn,
                format!(
                    "tokenbind: provider {}: JWKS keys[{}] (kid {:?}) skipped: {}",
                    p.name,
                    s.index,
                    s.kid.as_deref().unwrap_or("-"),
                    s.why
                ),
            ));
        }
    }
    lines.push(LogLine::new(
        Level::Info,
        format!(
            "tokenbind: configured: mode={} providers={} spiffe_binding={} require_binding={} cache.max_entries={}",
            config.mode.as_str(),
            config.providers.len(),
            config.spiffe.is_some(),
            config.require_binding,
            config.cache_max_entries
        ),
    ));
    lines
}

/// The line for a refused configuration.
pub fn config_refused(error: &ConfigError) -> LogLine {
    LogLine::new(Level::Error, format!("tokenbind: {error}"))
}

/// The line for a failed probe of Envoy's signature verification: an error when the
/// configuration requires it (`crypto: "host"`, which is then refused), else informational.
pub fn crypto_probe_failed(mode: CryptoMode, why: &dyn std::fmt::Display) -> LogLine {
    let level = if mode == CryptoMode::Host {
        Level::Error
    } else {
        Level::Info
    };
    LogLine::new(
        level,
        format!("tokenbind: host signature verification unusable: {why}"),
    )
}

/// The line naming the signature backend chosen per algorithm.
pub fn crypto_selected(crypto: &Crypto, mode: CryptoMode) -> LogLine {
    LogLine::new(
        Level::Info,
        format!(
            "tokenbind: crypto: {} (crypto={})",
            crypto.describe(),
            mode.as_str()
        ),
    )
}
