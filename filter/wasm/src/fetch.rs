//! Remote JWKS in the Wasm VM: dispatches the fetches `tokenbind_core::remote` asks for, syncs
//! the key set every VM shares, and holds requests that arrived before their keys.

use crate::host::{self, Envoy};
use std::cell::RefCell;
use tokenbind_core::metrics::Counter;
use tokenbind_core::remote::{FetchOutcome, FetchRequest, FetchResponse, RemoteProvider};
use tokenbind_core::Engine;

/// Requests waiting for keys, at most this many per VM; beyond it they are decided at once.
const MAX_PENDING: usize = 10_000;

struct Source {
    provider: usize,
    name: String,
    remote: RemoteProvider,
    /// CAS of the shared key set this VM has installed.
    installed_cas: Option<u32>,
    /// A fetch this VM dispatched: (token, request, give-up time in ms).
    in_flight: Option<(u32, FetchRequest, u64)>,
    /// A fetch this VM holds the lease for, to dispatch from the root context at the next tick
    /// (a call dispatched from an HTTP context is lost if that request's stream ends first).
    queued: Option<FetchRequest>,
    gauge: Option<u32>,
}

/// A request paused until its provider's keys arrive or its deadline passes.
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    pub context_id: u32,
    pub provider: usize,
    pub deadline_ms: u64,
}

/// What happened, for the caller to count.
#[derive(Debug, Default)]
pub struct Events {
    pub counters: Vec<Counter>,
    /// Providers whose keys changed in this VM, or whose fetch finished (either way): their
    /// waiting requests can be decided now.
    pub settled: Vec<usize>,
}

#[derive(Default)]
pub struct Fetcher {
    sources: Vec<Source>,
    pending: RefCell<Vec<Pending>>,
}

impl Fetcher {
    pub fn new(engine: &Engine) -> Fetcher {
        let mut sources = Vec::new();
        for (i, p) in engine.config().providers.iter().enumerate() {
            if let Some(settings) = p.keys.remote() {
                let remote = RemoteProvider::new(&p.name, &p.issuer, settings.clone());
                remote.prepare(&Envoy);
                let gauge = host::define_gauge(&format!("tokenbind.jwks.keys.{}", p.name)).ok();
                sources.push(Source {
                    provider: i,
                    name: p.name.clone(),
                    remote,
                    installed_cas: None,
                    in_flight: None,
                    queued: None,
                    gauge,
                });
            }
        }
        Fetcher {
            sources,
            pending: RefCell::new(Vec::new()),
        }
    }

    pub fn is_remote(&self, provider: usize) -> bool {
        self.sources.iter().any(|s| s.provider == provider)
    }

    pub fn has_work(&self) -> bool {
        !self.sources.is_empty()
    }

    /// Whether this VM should tick fast: keys missing, a fetch in flight or requests waiting.
    pub fn busy(&self, engine: &Engine) -> bool {
        !self.pending.borrow().is_empty()
            || self.sources.iter().any(|s| {
                s.in_flight.is_some() || s.queued.is_some() || !engine.has_keys(s.provider)
            })
    }

    /// Installs key sets other VMs (or this one) stored since the last look.
    pub fn sync(&mut self, engine: &Engine, events: &mut Events) {
        for s in &mut self.sources {
            if let Some((keys, cas)) = s.remote.sync(&Envoy, s.installed_cas) {
                for skipped in &keys.skipped {
                    log::debug!(
                        "tokenbind: provider {}: JWKS keys[{}] skipped: {}",
                        s.name,
                        skipped.index,
                        skipped.why
                    );
                }
                log::info!(
                    "tokenbind: provider {}: installed {} keys",
                    s.name,
                    keys.len()
                );
                if let Some(g) = s.gauge {
                    host::set_gauge(g, keys.len() as u64);
                }
                let withdrawn = engine.install_keys(s.provider, keys);
                if withdrawn > 0 {
                    log::warn!(
                        "tokenbind: provider {}: {withdrawn} cached tokens were verified by keys no longer in the key set; they are verified again on their next request",
                        s.name
                    );
                }
                s.installed_cas = Some(cas);
                events.settled.push(s.provider);
            }
        }
    }

    /// Dispatches every fetch that is queued or due, if this VM holds or wins the shared
    /// lease. Call from the root context only.
    pub fn dispatch_due(&mut self, now_ms: u64, events: &mut Events) {
        for s in &mut self.sources {
            if let Some(request) = s.queued.take() {
                if s.in_flight.is_none() {
                    dispatch(s, request, now_ms, events);
                    continue;
                }
            }
            if let Some((_, _, give_up)) = &s.in_flight {
                if now_ms < *give_up {
                    continue;
                }
                // The callback never came (e.g. the context that dispatched it went away).
                s.in_flight = None;
            }
            if let Some(request) = s.remote.take_due_fetch(&Envoy, now_ms, false) {
                dispatch(s, request, now_ms, events);
            }
        }
    }

    /// Grants an unknown-`kid` refetch for `provider` if the rate limit allows and no fetch is
    /// under way; the next tick dispatches it.
    pub fn grant_kid_refetch(&mut self, provider: usize, now_ms: u64) -> bool {
        let Some(s) = self.sources.iter_mut().find(|s| s.provider == provider) else {
            return false;
        };
        match s.remote.take_kid_refetch(&Envoy, now_ms) {
            Some(request) => {
                s.queued = Some(request);
                true
            }
            None => false,
        }
    }

    /// Whether keys for `provider` may arrive before `deadline_ms`: a fetch is queued or under
    /// way anywhere in the sidecar, or one is due by then. During an outage's back-off nothing
    /// is coming, and a request is better answered at once than after the whole timeout.
    pub fn keys_may_arrive(&self, provider: usize, now_ms: u64, deadline_ms: u64) -> bool {
        self.fetching(provider, now_ms)
            || self.sources.iter().any(|s| {
                s.provider == provider
                    && s.remote.state(&Envoy).next_refresh.saturating_mul(1000) <= deadline_ms
            })
    }

    /// Whether a fetch for `provider` is under way anywhere in the sidecar.
    pub fn fetching(&self, provider: usize, now_ms: u64) -> bool {
        self.sources.iter().any(|s| {
            s.provider == provider
                && (s.in_flight.is_some()
                    || s.queued.is_some()
                    || s.remote.state(&Envoy).lease_until_ms > now_ms)
        })
    }

    /// Handles an HTTP call response if it belongs to one of our fetches.
    pub fn on_response(
        &mut self,
        token: u32,
        body_size: usize,
        now_ms: u64,
        events: &mut Events,
    ) -> bool {
        let Some(s) = self
            .sources
            .iter_mut()
            .find(|s| matches!(&s.in_flight, Some((t, _, _)) if *t == token))
        else {
            return false;
        };
        let Some((_, request, _)) = s.in_flight.take() else {
            return false;
        };
        let status = host::call_response_header(":status").and_then(|v| v.parse::<u16>().ok());
        let cache_control = host::call_response_header("cache-control");
        let body = if body_size > s.remote.settings.max_body_bytes {
            None
        } else {
            Some(host::call_response_body(body_size).unwrap_or_default())
        };
        let response = FetchResponse {
            status,
            cache_control: cache_control.as_deref(),
            body: body.as_deref(),
        };
        let outcome = s.remote.complete(
            &Envoy,
            &request,
            response,
            now_ms / 1000,
            host::random_unit(),
        );
        match outcome {
            FetchOutcome::Keys { count } => {
                log::info!(
                    "tokenbind: provider {}: fetched {count} keys from {}{}",
                    s.name,
                    request.authority,
                    request.path
                );
                events.counters.push(Counter::JwksFetchSuccess);
                events.settled.push(s.provider);
            }
            FetchOutcome::Discovered(next) => {
                log::info!(
                    "tokenbind: provider {}: discovered jwks_uri {}{}",
                    s.name,
                    next.authority,
                    next.path
                );
                if let Some(request) = s.remote.take_due_fetch(&Envoy, now_ms, true) {
                    // Dispatched at the next tick, from the root context.
                    s.queued = Some(request);
                }
            }
            FetchOutcome::Failed(why) => {
                let state = s.remote.state(&Envoy);
                // Envoy answers timeouts (504) and connection failures (503) itself.
                let status = status.map_or_else(|| "none".to_owned(), |s| s.to_string());
                log::warn!(
                    "tokenbind: provider {}: fetching {}{} failed: {why} (status {status}); keeping the last good keys, retry in {} s",
                    s.name,
                    request.authority,
                    request.path,
                    state.next_refresh.saturating_sub(now_ms / 1000)
                );
                events.counters.push(Counter::JwksFetchFailed);
                events.settled.push(s.provider);
            }
        }
        true
    }

    /// Holds a request; false if the pending list is full (decide it now instead).
    pub fn hold(&self, pending: Pending) -> bool {
        let mut list = self.pending.borrow_mut();
        if list.len() >= MAX_PENDING {
            return false;
        }
        list.push(pending);
        true
    }

    /// Forgets a request (it finished or was reset).
    pub fn forget(&self, context_id: u32) {
        self.pending
            .borrow_mut()
            .retain(|p| p.context_id != context_id);
    }

    /// Takes the requests that can be decided now: their provider's keys changed or its fetch
    /// finished, or their deadline passed.
    pub fn take_ready(&self, settled: &[usize], now_ms: u64) -> Vec<Pending> {
        let mut list = self.pending.borrow_mut();
        let (ready, waiting): (Vec<Pending>, Vec<Pending>) = list
            .drain(..)
            .partition(|p| now_ms >= p.deadline_ms || settled.contains(&p.provider));
        *list = waiting;
        ready
    }
}

fn dispatch(s: &mut Source, request: FetchRequest, now_ms: u64, events: &mut Events) {
    match host::http_get(
        &request.cluster,
        &request.authority,
        &request.path,
        request.timeout_ms,
    ) {
        Ok(token) => {
            let give_up = now_ms + request.timeout_ms + 1_000;
            s.in_flight = Some((token, request, give_up));
        }
        Err(status) => {
            log::warn!(
                "tokenbind: provider {}: cannot call cluster {:?}: {status:?}",
                s.name,
                request.cluster
            );
            // Release the lease and back off like any failed fetch.
            s.remote.complete(
                &Envoy,
                &request,
                FetchResponse {
                    status: None,
                    cache_control: None,
                    body: None,
                },
                now_ms / 1000,
                host::random_unit(),
            );
            events.counters.push(Counter::JwksFetchFailed);
            events.settled.push(s.provider);
        }
    }
}
