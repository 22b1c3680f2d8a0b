//! One request, one decision: extract → (cache | verify) → bind → decide. Plain Rust: the engine
//! asks the [`Host`] for exactly the inputs a decision needs, and returns a [`Decision`];
//! [`crate::effects`] maps it to counters, filter state, the log line and the reply, which the
//! adapter carries out.
//!
//! The engine never blocks on the host. A token whose remote provider has no keys yet (or does
//! not know its `kid` while a refetch is coming) is decided as [`Outcome::AwaitKeys`]: the
//! engine's [`Fetcher`] holds the request, and wakes it from [`Engine::tick`] or
//! [`Engine::fetch_response`] when the keys arrive or its deadline passes. The adapter then makes
//! the request's second and last attempt, which never waits.

use crate::binding::{self, Bindings};
use crate::cache::{token_hash, TokenCache, TokenHash};
use crate::config::Config;
use crate::crypto::Crypto;
use crate::dpop::ProofKeyCache;
use crate::extract::{self, Scheme};
use crate::fetcher::{Fetcher, KeyEvent, Missing, Wait};
use crate::host::{FetchHost, Host, SharedData};
use crate::jwk::KeySet;
use crate::jwt::{self, TokenFacts, VerifyError};
use crate::nonce;
use crate::peer::{Peer, PeerWant};
use crate::reason::{Denial, Reason};
use crate::remote::FetchResponse;
use crate::replay::ReplayStore;
use crate::svid::{self, SvidCache, SvidError, Verdict};
use std::cell::RefCell;
use std::rc::Rc;

/// Parsed DPoP proof keys kept per VM.
const PROOF_KEY_CACHE_ENTRIES: usize = 1024;

/// Reads the peer's leaf PEM and checks it as an X.509-SVID; with `digest`, the certificate
/// must be the one Envoy reported the digest of.
fn check_pem(host: &dyn Host, digest: Option<[u8; 32]>) -> Result<svid::Svid, SvidError> {
    let pem = host
        .peer(PeerWant::CERTIFICATE)
        .certificate_pem
        .ok_or(SvidError::Unavailable)?;
    let checked = svid::check_leaf_pem(&pem)?;
    if digest.is_some_and(|d| d != checked.sha256) {
        return Err(SvidError::DigestMismatch);
    }
    Ok(checked)
}

/// What was decided, before the mode is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The path is exempt: the filter did not look at the request.
    Exempt,
    Allow,
    Deny(Denial),
    /// Not decided yet: the request is held until `provider`'s keys arrive or its deadline
    /// passes (only when the attempt allowed waiting, see [`Attempt`]).
    AwaitKeys {
        provider: usize,
    },
}

/// What the filter did with `x-forwarded-client-cert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Xfcc {
    /// Not present (or not looked at).
    Absent,
    /// From a trusted forwarder: its client stood in for the peer.
    Used,
    /// From a peer that is not a trusted forwarder: ignored.
    Untrusted,
    /// From a trusted forwarder but malformed or naming no certificate: no peer certificate.
    Invalid,
}

/// Whether the verified-token cache answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    NotConsulted,
    Hit,
    Miss,
}

/// The decision and the context needed to count, log and answer it.
#[derive(Debug, Clone)]
pub struct Decision {
    pub outcome: Outcome,
    pub cache: CacheUse,
    /// The scheme the client used, when it sent a credential.
    pub scheme: Option<Scheme>,
    /// The verified facts, when verification succeeded.
    pub facts: Option<Rc<TokenFacts>>,
    pub bindings: Bindings,
    /// The peer, when the decision needed it.
    pub peer: Option<Peer>,
    /// SHA-256 of the token, when there was one. Never log the token; log [`Decision::token_tag`].
    pub token_hash: Option<TokenHash>,
    /// A fresh DPoP nonce to send with a `use_dpop_nonce` challenge.
    pub dpop_nonce: Option<String>,
    /// The provider the token was routed to by `iss`, when it got that far.
    pub provider: Option<usize>,
    pub xfcc: Xfcc,
    /// The trusted forwarder's SPIFFE ID, when its XFCC was used.
    pub forwarded_by: Option<String>,
    /// What happened to remote keys while deciding (keys another VM fetched were installed, a
    /// refetch was granted, the wait list was full), for counters and logs.
    pub key_events: Vec<KeyEvent>,
}

/// One attempt at deciding a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// The clock, Unix milliseconds.
    pub now_ms: u64,
    /// The request's context id when it may be held for keys ([`Outcome::AwaitKeys`]); `None`
    /// for a final attempt, which always allows or denies.
    pub hold_as: Option<u32>,
}

impl Attempt {
    /// A final attempt at `now` (Unix seconds): it never waits.
    pub const fn final_at(now: u64) -> Attempt {
        Attempt {
            now_ms: now.saturating_mul(1000),
            hold_as: None,
        }
    }
}

/// Timer work for the adapter: events to count and log, requests to decide again, and how
/// fast to tick.
#[derive(Debug, Default)]
pub struct Work {
    pub events: Vec<KeyEvent>,
    /// Held requests (context ids) that can be decided now, each with a final attempt.
    pub wake: Vec<u32>,
    /// Keys missing, a fetch under way or requests waiting: tick fast.
    pub busy: bool,
}

impl Decision {
    fn new(outcome: Outcome) -> Self {
        Decision {
            outcome,
            cache: CacheUse::NotConsulted,
            scheme: None,
            facts: None,
            bindings: Bindings::default(),
            peer: None,
            token_hash: None,
            dpop_nonce: None,
            provider: None,
            xfcc: Xfcc::Absent,
            forwarded_by: None,
            key_events: Vec::new(),
        }
    }

    pub fn denial(&self) -> Option<Denial> {
        match &self.outcome {
            Outcome::Deny(d) => Some(*d),
            _ => None,
        }
    }
}

/// The per-VM decision engine: validated config plus the per-VM caches and key sets.
#[derive(Debug)]
pub struct Engine {
    config: Config,
    /// Each provider's current keys; `None` until a remote provider's first fetch lands.
    key_sets: RefCell<Vec<Option<Rc<KeySet>>>>,
    cache: RefCell<TokenCache>,
    proof_keys: RefCell<ProofKeyCache>,
    /// X.509-SVID verdicts of peer certificates, by certificate digest.
    svids: RefCell<SvidCache>,
    replay: ReplayStore,
    crypto: Crypto,
    /// Remote providers' fetches and the requests waiting for their keys.
    fetcher: RefCell<Fetcher>,
}

impl Engine {
    /// An engine that verifies every signature in pure Rust.
    pub fn new(config: Config) -> Self {
        Engine::with_crypto(config, Crypto::wasm())
    }

    /// An engine whose signatures go through `crypto` (see [`Crypto::select`]).
    pub fn with_crypto(config: Config, crypto: Crypto) -> Self {
        let cache = RefCell::new(TokenCache::new(config.cache_max_entries));
        let replay = ReplayStore::new(config.dpop.replay_max_entries);
        let svids = RefCell::new(SvidCache::new(
            config.svid_cache_max_entries,
            config.svid_cache_ttl_seconds,
        ));
        let key_sets = config
            .providers
            .iter()
            .map(|p| p.keys.static_keys().map(|k| Rc::new(k.clone())))
            .collect();
        let fetcher = RefCell::new(Fetcher::new(&config));
        Engine {
            key_sets: RefCell::new(key_sets),
            config,
            cache,
            proof_keys: RefCell::new(ProofKeyCache::new(PROOF_KEY_CACHE_ENTRIES)),
            svids,
            replay,
            crypto,
            fetcher,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn crypto(&self) -> &Crypto {
        &self.crypto
    }

    /// Installs a provider's (newly fetched) keys. Cached tokens of that provider whose key is
    /// no longer in the set are dropped at once, so withdrawing a key (after a compromise)
    /// withdraws the tokens it signed; they are verified again, and refused, on their next
    /// request. Returns how many cached tokens were dropped.
    pub fn install_keys(&self, provider: usize, keys: KeySet) -> usize {
        let dropped = self
            .cache
            .borrow_mut()
            .retain(|f| f.provider != provider || keys.contains(&f.key));
        if let Some(slot) = self.key_sets.borrow_mut().get_mut(provider) {
            *slot = Some(Rc::new(keys));
        }
        dropped
    }

    /// Whether a provider has keys to verify with.
    pub fn has_keys(&self, provider: usize) -> bool {
        self.key_sets
            .borrow()
            .get(provider)
            .is_some_and(Option::is_some)
    }

    pub fn cache_len(&self) -> usize {
        self.cache.borrow().len()
    }

    pub fn proof_keys_len(&self) -> usize {
        self.proof_keys.borrow().len()
    }

    /// Peer-certificate verdicts cached in this VM.
    pub fn svid_cache_len(&self) -> usize {
        self.svids.borrow().len()
    }

    /// Replaces the wait list with one of `capacity` requests (tests prove the cap holds).
    pub fn with_wait_capacity(self, capacity: usize) -> Self {
        let fetcher = RefCell::new(Fetcher::with_capacity(&self.config, capacity));
        Engine { fetcher, ..self }
    }

    /// Creates the state every VM of the sidecar shares (the replay buckets, the nonce key,
    /// each remote provider's fetch record), at configuration time, before traffic: shared data
    /// cannot create keys with CAS. `nonce_key` is fresh randomness for the nonce key, used only
    /// if no VM created one yet.
    pub fn prepare(&self, shared: &dyn SharedData, nonce_key: Option<&[u8; 32]>) {
        ReplayStore::prepare(shared);
        if let Some(key) = nonce_key {
            nonce::ensure_key(shared, key);
        }
        self.fetcher.borrow().prepare(shared);
    }

    /// Whether any provider fetches its keys (the adapter then runs a timer).
    pub fn fetches_keys(&self) -> bool {
        self.fetcher.borrow().has_work()
    }

    /// Requests held for keys in this VM.
    pub fn waiting(&self) -> usize {
        self.fetcher.borrow().waiting()
    }

    /// Decides one request at `now` (Unix seconds), finally: it never waits for keys.
    pub fn decide(&self, host: &dyn Host, now: u64) -> Decision {
        self.attempt(host, Attempt::final_at(now))
    }

    /// Decides one request: allow, deny, or, when `attempt.hold_as` is set and keys may arrive,
    /// [`Outcome::AwaitKeys`] with the request held. A denied decision always carries the peer
    /// (for the log line), read here if the checks did not need it.
    pub fn attempt(&self, host: &dyn Host, attempt: Attempt) -> Decision {
        let mut decision = self.decide_once(host, attempt);
        if decision.peer.is_none() && matches!(decision.outcome, Outcome::Deny(_)) {
            decision.peer = Some(host.peer(PeerWant {
                uri_san: true,
                ..PeerWant::NOTHING
            }));
        }
        decision
    }

    /// Installs the key sets other VMs already fetched (at configuration time, so a new VM
    /// uses them at once) and wakes requests they settle.
    pub fn sync(&self, shared: &dyn SharedData, now_ms: u64) -> Work {
        let events = self.sync_keys(shared);
        self.work(events, now_ms)
    }

    /// Syncs key sets, dispatches due fetches and wakes the held requests that can be decided
    /// now. From the adapter's timer, in the root context.
    pub fn tick(&self, host: &dyn FetchHost, now_ms: u64, rand: f64) -> Work {
        let mut events = self.sync_keys(host);
        events.extend(self.fetcher.borrow_mut().dispatch_due(host, now_ms, rand));
        self.work(events, now_ms)
    }

    /// The body size to read of the response to fetch `token`, or `None` if `token` is not a
    /// fetch in flight.
    pub fn fetch_body_limit(&self, token: u32) -> Option<usize> {
        self.fetcher.borrow().body_limit(token)
    }

    /// A fetch's response (in the root context, which dispatched it). `None` if `token` is not
    /// a fetch in flight: the response is ignored.
    pub fn fetch_response(
        &self,
        host: &dyn FetchHost,
        token: u32,
        response: FetchResponse<'_>,
        now_ms: u64,
        rand: f64,
    ) -> Option<Work> {
        let mut events = self
            .fetcher
            .borrow_mut()
            .on_response(host, token, response, now_ms, rand)?;
        events.extend(self.sync_keys(host));
        Some(self.work(events, now_ms))
    }

    /// Forgets a request (its stream ended), whether it was held or not.
    pub fn forget(&self, context_id: u32) {
        self.fetcher.borrow_mut().forget(context_id);
    }

    fn work(&self, events: Vec<KeyEvent>, now_ms: u64) -> Work {
        let mut fetcher = self.fetcher.borrow_mut();
        let wake = fetcher.take_ready(now_ms);
        let busy = fetcher.busy(|p| self.has_keys(p));
        Work { events, wake, busy }
    }

    /// Installs key sets that any VM stored in shared data since this VM last looked.
    fn sync_keys(&self, shared: &dyn SharedData) -> Vec<KeyEvent> {
        let fresh = self.fetcher.borrow_mut().sync(shared);
        fresh
            .into_iter()
            .map(|(provider, keys)| {
                let count = keys.len();
                let skipped = keys.skipped.clone();
                let withdrawn = self.install_keys(provider, keys);
                KeyEvent::Installed {
                    provider,
                    keys: count,
                    withdrawn,
                    skipped,
                }
            })
            .collect()
    }

    /// The provider a verification failure is about, when it may only mean that the remote
    /// provider's keys are not (yet) here: no keys at all, or an unknown `kid`.
    fn missing_keys(&self, e: &VerifyError) -> Option<(usize, Missing)> {
        let missing = match e.denial.reason {
            Reason::JwksUnavailable => Missing::NoKeys,
            Reason::UnknownKey => Missing::UnknownKid,
            _ => return None,
        };
        let provider = e.provider?;
        self.fetcher
            .borrow()
            .is_remote(provider)
            .then_some((provider, missing))
    }

    fn verify(&self, token: &str, now: u64) -> Result<TokenFacts, VerifyError> {
        let key_sets = self.key_sets.borrow();
        jwt::verify(token, &self.config, &key_sets, &self.crypto, now)
    }

    /// Verifies a token not in the cache. When its remote provider's keys are missing, another
    /// VM may already have stored newer ones (this VM syncs on its timer): they are installed
    /// and the token verified once more. If keys are still missing and the attempt may wait,
    /// the request is held: `Err(None)`.
    fn verify_fresh(
        &self,
        host: &dyn Host,
        token: &str,
        attempt: Attempt,
        decision: &mut Decision,
    ) -> Result<TokenFacts, Option<VerifyError>> {
        let now = attempt.now_ms / 1000;
        let mut result = self.verify(token, now);
        let Err(e) = &result else {
            return result.map_err(Some);
        };
        if self.missing_keys(e).is_none() {
            return result.map_err(Some);
        }
        let installed = self.sync_keys(host);
        if !installed.is_empty() {
            decision.key_events.extend(installed);
            result = self.verify(token, now);
        }
        let Err(e) = &result else {
            return result.map_err(Some);
        };
        let (Some((provider, missing)), Some(context_id)) = (self.missing_keys(e), attempt.hold_as)
        else {
            return result.map_err(Some);
        };
        let wait =
            self.fetcher
                .borrow_mut()
                .wait(host, provider, missing, context_id, attempt.now_ms);
        match wait {
            Wait::Held { refetch } => {
                if refetch {
                    decision
                        .key_events
                        .push(KeyEvent::RefetchGranted { provider });
                }
                decision.outcome = Outcome::AwaitKeys { provider };
                decision.provider = Some(provider);
                Err(None)
            }
            Wait::Full => {
                decision
                    .key_events
                    .push(KeyEvent::WaitListFull { provider });
                result.map_err(Some)
            }
            Wait::Final => result.map_err(Some),
        }
    }

    fn decide_once(&self, host: &dyn Host, attempt: Attempt) -> Decision {
        let now = attempt.now_ms / 1000;
        let path = host.request_header(":path").unwrap_or_default();
        if !self.config.exempt_paths.is_empty() {
            let method = if self.config.exempt_paths.uses_methods() {
                host.request_header(":method")
            } else {
                None
            };
            match self.config.exempt_paths.find(method.as_deref(), &path) {
                Ok(Some(_)) => return Decision::new(Outcome::Exempt),
                Ok(None) => {}
                // Never exempt: the request goes through the full token check.
                Err(refusal) => log::debug!("path has no normal form ({refusal}): not exempt"),
            }
        }
        let authorization = host.request_header("authorization");
        let values: Vec<&str> = authorization.as_deref().into_iter().collect();
        let credential = match extract::credential(&values, self.config.max_token_bytes) {
            Ok(c) => c,
            Err(d) => return Decision::new(Outcome::Deny(d)),
        };
        let hash = token_hash(credential.token);
        let mut decision = Decision::new(Outcome::Allow);
        decision.token_hash = Some(hash);
        decision.scheme = Some(credential.scheme);

        let cached = self.cache.borrow_mut().get(&hash, now);
        let facts = match cached {
            Some(facts) => {
                decision.cache = CacheUse::Hit;
                facts
            }
            None => {
                decision.cache = CacheUse::Miss;
                match self.verify_fresh(host, credential.token, attempt, &mut decision) {
                    Ok(facts) => {
                        let facts = Rc::new(facts);
                        self.cache.borrow_mut().insert(hash, Rc::clone(&facts), now);
                        facts
                    }
                    // Held for keys: the outcome is set.
                    Err(None) => return decision,
                    Err(Some(e)) => {
                        decision.outcome = Outcome::Deny(e.denial);
                        decision.provider = e.provider;
                        return decision;
                    }
                }
            }
        };

        let mut peer = host.peer(self.peer_want(&facts));
        if self.config.spiffe.is_some() {
            self.check_svid(host, &mut peer, now);
        }
        let peer = self.effective_peer(host, peer, now, &mut decision);
        let checked = binding::check(&binding::Inputs {
            facts: &facts,
            config: &self.config,
            peer: &peer,
            scheme: credential.scheme,
            token: credential.token,
            path: &path,
            host,
            now,
            dpop: binding::DpopState {
                proof_keys: &self.proof_keys,
                replay: &self.replay,
                crypto: &self.crypto,
            },
        });
        match checked.result {
            Ok(bindings) => decision.bindings = bindings,
            Err(d) => decision.outcome = Outcome::Deny(d),
        }
        decision.dpop_nonce = checked.dpop_nonce;
        decision.provider = Some(facts.provider);
        decision.peer = Some(peer);
        decision.facts = Some(facts);
        decision
    }

    /// The peer attributes this token's decision reads: the URI SAN for SPIFFE binding, trusted
    /// forwarders and the filter-state/log identity; the certificate digest for `cnf.x5t#S256`,
    /// XFCC and the X.509-SVID cache key (SPIFFE binding). The leaf PEM is read later, only on an
    /// SVID cache miss ([`Engine::peer_svid`]).
    fn peer_want(&self, facts: &TokenFacts) -> PeerWant {
        let forwarders = !self.config.trusted_forwarders.is_empty();
        let spiffe = self.config.spiffe.is_some();
        PeerWant {
            uri_san: spiffe || forwarders || self.config.emit_filter_state,
            digest: facts.cnf.x5t_s256.is_some() || forwarders || spiffe,
            certificate: false,
        }
    }

    /// Sets `peer.svid` ([`Engine::peer_svid`]) once: not again if it is set, not at all without
    /// a certificate.
    fn check_svid(&self, host: &dyn Host, peer: &mut Peer, now: u64) {
        if peer.svid.is_none() && peer.has_certificate() {
            peer.svid = Some(self.peer_svid(host, peer, now));
        }
    }

    /// Whether the peer's leaf is an X.509-SVID, and its SPIFFE ID ([`crate::svid`]). The verdict
    /// is cached by the certificate digest Envoy reports; on a miss the PEM is read and parsed,
    /// and its SHA-256 must be that digest. The SPIFFE ID must also be the URI SAN Envoy reports
    /// (`uri_san_peer_certificate` is the first URI SAN; a valid SVID has only one): if the two
    /// views of one certificate disagree, the peer is refused rather than either view believed.
    fn peer_svid(&self, host: &dyn Host, peer: &Peer, now: u64) -> Verdict {
        let verdict = match peer.cert_sha256 {
            Some(digest) => {
                let cached = self.svids.borrow_mut().get(&digest, now);
                match cached {
                    Some(v) => v,
                    None => {
                        let checked = check_pem(host, Some(digest));
                        let mut cache = self.svids.borrow_mut();
                        match &checked {
                            Ok(s) => cache.insert(digest, Ok(s.id.clone()), Some(s.not_after), now),
                            Err(e) if e.is_about_the_leaf() => {
                                cache.insert(digest, Err(*e), None, now)
                            }
                            Err(_) => {}
                        }
                        checked.map(|s| s.id)
                    }
                }
            }
            // No digest to key a cache by: check the certificate every time.
            None => check_pem(host, None).map(|s| s.id),
        };
        let id = verdict?;
        if peer.uri_san.as_deref() != Some(id.as_str()) {
            return Err(SvidError::UriSanMismatch);
        }
        Ok(id)
    }

    /// The caller whose identity the bindings check: the mTLS peer, or, when the peer is a
    /// trusted forwarder that sent `x-forwarded-client-cert`, the client it forwarded.
    ///
    /// A forwarder is trusted only if its own leaf is an X.509-SVID whose SPIFFE ID is listed:
    /// the first URI SAN alone could belong to a certificate that names several workloads.
    fn effective_peer(
        &self,
        host: &dyn Host,
        mut peer: Peer,
        now: u64,
        decision: &mut Decision,
    ) -> Peer {
        use crate::xfcc::{forwarded_client, Forwarded};
        // Without trusted forwarders XFCC can never matter: skip the header lookup.
        if self.config.trusted_forwarders.is_empty() {
            return peer;
        }
        let Some(xfcc) = host.request_header("x-forwarded-client-cert") else {
            return peer;
        };
        let forwarded = forwarded_client(&xfcc, &peer);
        if forwarded == Forwarded::Nothing {
            return peer;
        }
        self.check_svid(host, &mut peer, now);
        let trusted = matches!(&peer.svid, Some(Ok(id))
            if self.config.trusted_forwarders.iter().any(|t| t == id.as_str()));
        if !trusted {
            decision.xfcc = Xfcc::Untrusted;
            return peer;
        }
        decision.forwarded_by = peer.spiffe_id().map(str::to_owned);
        match forwarded {
            Forwarded::Client(client) => {
                decision.xfcc = Xfcc::Used;
                client
            }
            Forwarded::Invalid | Forwarded::Nothing => {
                decision.xfcc = Xfcc::Invalid;
                Peer::default()
            }
        }
    }
}
