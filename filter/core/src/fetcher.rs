//! Remote keys in one VM: which fetches to dispatch and when, which key sets to install, and
//! which requests wait for them ([`crate::waiting`]).
//!
//! [`crate::remote`] keeps one provider's schedule, lease and key set in shared data; this module
//! drives every remote provider of a VM over a [`FetchHost`] and a clock passed in as Unix
//! milliseconds. It never logs or counts: what happened comes back as [`KeyEvent`]s, which
//! [`crate::effects`] turns into counters and log lines. The engine owns one `Fetcher`; the Wasm
//! adapter only calls the engine from its timer and HTTP-call callbacks.

use crate::config::Config;
use crate::host::{FetchHost, SharedData};
use crate::jwk::{KeySet, SkippedKey};
use crate::remote::{FetchOutcome, FetchRequest, FetchResponse, RemoteProvider};
use crate::waiting::{Held, Waiting};
use std::borrow::Cow;

/// How long past a fetch's own timeout a VM waits for its callback before it gives the fetch up
/// (e.g. the call was lost with the context that dispatched it).
const CALLBACK_GRACE_MS: u64 = 1_000;

/// Something that happened to a provider's remote keys, for counters and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyEvent {
    /// This VM installed a key set (fetched by it or by another VM). `withdrawn` cached tokens
    /// were verified by keys no longer in the set and were dropped.
    Installed {
        provider: usize,
        keys: usize,
        withdrawn: usize,
        skipped: Vec<SkippedKey>,
    },
    /// A fetch stored new keys.
    Fetched {
        provider: usize,
        keys: usize,
        authority: String,
        path: String,
    },
    /// Discovery found `jwks_uri`; it is fetched next.
    Discovered {
        provider: usize,
        authority: String,
        path: String,
    },
    /// A fetch failed; the last good keys are kept and it is retried in `retry_in_seconds`.
    FetchFailed {
        provider: usize,
        authority: String,
        path: String,
        status: Option<u16>,
        why: Cow<'static, str>,
        retry_in_seconds: u64,
    },
    /// The host refused to dispatch a fetch (e.g. an unknown cluster); counted as a failed fetch.
    DispatchRefused {
        provider: usize,
        cluster: String,
        status: u32,
    },
    /// An unknown `kid` was granted a refetch (rate-limited per provider, across the sidecar).
    RefetchGranted { provider: usize },
    /// A request could not be held for keys: the wait list is full. It was decided at once.
    WaitListFull { provider: usize },
}

/// Why a request's token found no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// The provider has no keys yet (`jwks_unavailable`).
    NoKeys,
    /// No key has the token's `kid` (`unknown_key`).
    UnknownKid,
}

/// Whether a request waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Held; `refetch` if this request's unknown `kid` was granted a refetch.
    Held { refetch: bool },
    /// Nothing is coming before the deadline (an outage's back-off, or the refetch rate limit):
    /// decide now.
    Final,
    /// It would wait, but the wait list is full: decide now.
    Full,
}

#[derive(Debug)]
struct InFlight {
    token: u32,
    request: FetchRequest,
    give_up_ms: u64,
}

#[derive(Debug)]
struct Source {
    provider: usize,
    remote: RemoteProvider,
    /// CAS of the shared key set this VM has installed.
    installed_cas: Option<u32>,
    in_flight: Option<InFlight>,
    /// A fetch this VM holds the lease for, dispatched at the next tick (from the root context:
    /// a call dispatched from a request's context is lost if that stream ends first).
    queued: Option<FetchRequest>,
}

/// Every remote provider of one VM, and the requests waiting for their keys.
#[derive(Debug, Default)]
pub struct Fetcher {
    sources: Vec<Source>,
    waiting: Waiting,
    /// Providers whose keys changed here or whose fetch ended since their waiters were last
    /// woken.
    settled: Vec<usize>,
}

impl Fetcher {
    pub fn new(config: &Config) -> Fetcher {
        Fetcher::with_capacity(config, crate::waiting::DEFAULT_CAPACITY)
    }

    /// A fetcher whose wait list holds at most `capacity` requests.
    pub fn with_capacity(config: &Config, capacity: usize) -> Fetcher {
        let sources = config
            .providers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let settings = p.keys.remote()?;
                Some(Source {
                    provider: i,
                    remote: RemoteProvider::new(&p.name, &p.issuer, settings.clone()),
                    installed_cas: None,
                    in_flight: None,
                    queued: None,
                })
            })
            .collect();
        Fetcher {
            sources,
            waiting: Waiting::new(capacity),
            settled: Vec::new(),
        }
    }

    /// Creates the shared fetch records (at configuration time, before traffic).
    pub fn prepare(&self, shared: &dyn SharedData) {
        for s in &self.sources {
            s.remote.prepare(shared);
        }
    }

    /// Whether any provider fetches its keys.
    pub fn has_work(&self) -> bool {
        !self.sources.is_empty()
    }

    pub fn is_remote(&self, provider: usize) -> bool {
        self.source(provider).is_some()
    }

    fn source(&self, provider: usize) -> Option<&Source> {
        self.sources.iter().find(|s| s.provider == provider)
    }

    /// How many requests wait for keys.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Whether the VM should tick fast: keys missing, a fetch queued or in flight, or requests
    /// waiting.
    pub fn busy(&self, has_keys: impl Fn(usize) -> bool) -> bool {
        !self.waiting.is_empty()
            || self
                .sources
                .iter()
                .any(|s| s.in_flight.is_some() || s.queued.is_some() || !has_keys(s.provider))
    }

    /// Key sets stored in shared data (by any VM) since this VM last installed them: for the
    /// engine to install. Their providers' waiters are woken at the next [`Fetcher::take_ready`].
    pub fn sync(&mut self, shared: &dyn SharedData) -> Vec<(usize, KeySet)> {
        let mut fresh = Vec::new();
        for s in &mut self.sources {
            if let Some((keys, cas)) = s.remote.sync(shared, s.installed_cas) {
                s.installed_cas = Some(cas);
                fresh.push((s.provider, keys));
                if !self.settled.contains(&s.provider) {
                    self.settled.push(s.provider);
                }
            }
        }
        fresh
    }

    /// Dispatches every fetch that is queued or due, if this VM holds or wins the shared lease.
    /// Call from the root context only.
    pub fn dispatch_due(&mut self, host: &dyn FetchHost, now_ms: u64, rand: f64) -> Vec<KeyEvent> {
        let mut events = Vec::new();
        for i in 0..self.sources.len() {
            let Some(s) = self.sources.get_mut(i) else {
                continue;
            };
            if s.in_flight.is_none() {
                if let Some(request) = s.queued.take() {
                    self.dispatch(i, request, host, now_ms, rand, &mut events);
                    continue;
                }
            }
            if let Some(f) = &s.in_flight {
                if now_ms < f.give_up_ms {
                    continue;
                }
                s.in_flight = None;
            }
            if let Some(request) = s.remote.take_due_fetch(host, now_ms, false) {
                self.dispatch(i, request, host, now_ms, rand, &mut events);
            }
        }
        events
    }

    fn dispatch(
        &mut self,
        index: usize,
        request: FetchRequest,
        host: &dyn FetchHost,
        now_ms: u64,
        rand: f64,
        events: &mut Vec<KeyEvent>,
    ) {
        let Some(s) = self.sources.get_mut(index) else {
            return;
        };
        match host.http_get(&request) {
            Ok(token) => {
                let give_up_ms = now_ms
                    .saturating_add(request.timeout_ms)
                    .saturating_add(CALLBACK_GRACE_MS);
                s.in_flight = Some(InFlight {
                    token,
                    request,
                    give_up_ms,
                });
            }
            Err(status) => {
                // Release the lease and back off like any failed fetch.
                s.remote.complete(
                    host,
                    &request,
                    FetchResponse::default(),
                    now_ms / 1000,
                    rand,
                );
                events.push(KeyEvent::DispatchRefused {
                    provider: s.provider,
                    cluster: request.cluster,
                    status,
                });
                let provider = s.provider;
                self.settle(provider);
            }
        }
    }

    fn settle(&mut self, provider: usize) {
        if !self.settled.contains(&provider) {
            self.settled.push(provider);
        }
    }

    /// The body size a fetch's response may have to be read, or `None` if `token` is not a
    /// fetch in flight.
    pub fn body_limit(&self, token: u32) -> Option<usize> {
        self.sources.iter().find_map(|s| match &s.in_flight {
            Some(f) if f.token == token => Some(s.remote.settings.max_body_bytes),
            _ => None,
        })
    }

    /// A fetch's response. `None` if `token` is not a fetch in flight (ignore the response).
    pub fn on_response(
        &mut self,
        shared: &dyn SharedData,
        token: u32,
        response: FetchResponse<'_>,
        now_ms: u64,
        rand: f64,
    ) -> Option<Vec<KeyEvent>> {
        let s = self
            .sources
            .iter_mut()
            .find(|s| s.in_flight.as_ref().is_some_and(|f| f.token == token))?;
        let request = s.in_flight.take()?.request;
        let provider = s.provider;
        let outcome = s
            .remote
            .complete(shared, &request, response, now_ms / 1000, rand);
        let event = match outcome {
            FetchOutcome::Keys { count } => KeyEvent::Fetched {
                provider,
                keys: count,
                authority: request.authority,
                path: request.path,
            },
            FetchOutcome::Discovered(next) => {
                // Dispatched at the next tick, from the root context.
                s.queued = s.remote.take_due_fetch(shared, now_ms, true);
                return Some(vec![KeyEvent::Discovered {
                    provider,
                    authority: next.authority,
                    path: next.path,
                }]);
            }
            FetchOutcome::Failed(why) => KeyEvent::FetchFailed {
                provider,
                retry_in_seconds: s
                    .remote
                    .state(shared)
                    .next_refresh
                    .saturating_sub(now_ms / 1000),
                authority: request.authority,
                path: request.path,
                status: response.status,
                why,
            },
        };
        self.settle(provider);
        Some(vec![event])
    }

    /// Whether a request whose token found no key (`missing`) for remote `provider` waits, and
    /// holds it if so, until `now_ms` + the provider's `timeout_ms`:
    /// - no keys yet: if a fetch is queued or under way anywhere in the sidecar, or one is due
    ///   before the deadline (during an outage's back-off nothing is coming, and the request is
    ///   better answered at once than after the whole timeout);
    /// - unknown `kid`: if a refetch is granted now (rate-limited across the sidecar, dispatched
    ///   at the next tick) or a fetch is already under way.
    pub fn wait(
        &mut self,
        shared: &dyn SharedData,
        provider: usize,
        missing: Missing,
        context_id: u32,
        now_ms: u64,
    ) -> Wait {
        let Some(index) = self.sources.iter().position(|s| s.provider == provider) else {
            return Wait::Final;
        };
        let Some(s) = self.sources.get_mut(index) else {
            return Wait::Final;
        };
        let deadline_ms = now_ms.saturating_add(s.remote.settings.timeout_ms);
        // The shared fetch record costs a shared-data copy and a JSON parse: read it once, and
        // only when this VM has no fetch of its own queued or in flight.
        let local = s.in_flight.is_some() || s.queued.is_some();
        let state = (!local).then(|| s.remote.state(shared));
        let fetching = local || state.as_ref().is_some_and(|st| st.lease_until_ms > now_ms);
        let mut refetch = false;
        let coming = match missing {
            Missing::NoKeys => {
                fetching
                    || state
                        .as_ref()
                        .is_some_and(|st| st.next_refresh.saturating_mul(1000) <= deadline_ms)
            }
            Missing::UnknownKid => {
                if fetching {
                    true
                } else if let Some(request) = s.remote.take_kid_refetch(shared, now_ms) {
                    s.queued = Some(request);
                    refetch = true;
                    true
                } else {
                    false
                }
            }
        };
        if !coming {
            return Wait::Final;
        }
        let held = self.waiting.hold(Held {
            context_id,
            provider,
            deadline_ms,
        });
        if held {
            Wait::Held { refetch }
        } else {
            Wait::Full
        }
    }

    /// The held requests that can be decided now (their provider settled, or their deadline
    /// passed), as context ids in the order they were held.
    pub fn take_ready(&mut self, now_ms: u64) -> Vec<u32> {
        let settled = std::mem::take(&mut self.settled);
        self.waiting
            .take_ready(&settled, now_ms)
            .into_iter()
            .map(|h| h.context_id)
            .collect()
    }

    /// Forgets a request (its stream ended). True if it was waiting.
    pub fn forget(&mut self, context_id: u32) -> bool {
        self.waiting.forget(context_id)
    }
}
