//! One request, one decision: extract → (cache | verify) → bind. Plain Rust: the engine asks the
//! [`Host`] for exactly the inputs a decision needs, and the adapter acts on the result.

use crate::binding::{self, Bindings};
use crate::cache::{token_hash, TokenCache, TokenHash};
use crate::config::{Config, Mode};
use crate::crypto::Crypto;
use crate::dpop::{self, ProofKeyCache, ProofRequest};
use crate::extract::{self, Scheme};
use crate::host::Host;
use crate::jwk::KeySet;
use crate::jwt::{self, TokenFacts};
use crate::metrics::Counter;
use crate::nonce;
use crate::peer::{Peer, PeerWant};
use crate::reason::{Denial, Reason};
use crate::replay::{ReplayError, ReplayStore};
use crate::response::{self, Challenge, Reply};
use crate::svid::{self, SvidCache, SvidError, Verdict};
use crate::uri;
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
        }
    }

    pub fn denial(&self) -> Option<Denial> {
        match &self.outcome {
            Outcome::Deny(d) => Some(*d),
            _ => None,
        }
    }

    /// The counters this decision increments under `mode`.
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
        Engine {
            key_sets: RefCell::new(key_sets),
            config,
            cache,
            proof_keys: RefCell::new(ProofKeyCache::new(PROOF_KEY_CACHE_ENTRIES)),
            svids,
            replay,
            crypto,
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

    /// Decides one request at `now` (Unix seconds).
    pub fn decide(&self, host: &dyn Host, now: u64) -> Decision {
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
                let verified = {
                    let key_sets = self.key_sets.borrow();
                    jwt::verify(credential.token, &self.config, &key_sets, &self.crypto, now)
                };
                match verified {
                    Ok(facts) => {
                        let facts = Rc::new(facts);
                        self.cache.borrow_mut().insert(hash, Rc::clone(&facts), now);
                        facts
                    }
                    Err(e) => {
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
        let mut nonce_to_send = None;
        let mut check_dpop = |jkt: &str| {
            self.check_dpop(host, &path, credential.token, jkt, now, &mut nonce_to_send)
        };
        match binding::check(
            &facts,
            &self.config,
            &peer,
            credential.scheme,
            &mut check_dpop,
        ) {
            Ok(bindings) => decision.bindings = bindings,
            Err(d) => decision.outcome = Outcome::Deny(d),
        }
        decision.dpop_nonce = nonce_to_send;
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

    /// RFC 9449 §7.1: the request's single DPoP proof must be valid for this request, this
    /// token and its `cnf.jkt`, and never seen before.
    fn check_dpop(
        &self,
        host: &dyn Host,
        path: &str,
        access_token: &str,
        jkt: &str,
        now: u64,
        nonce_to_send: &mut Option<String>,
    ) -> Result<(), Denial> {
        let settings = &self.config.dpop;
        let proofs = host.request_header_values("dpop");
        let proof = match proofs.as_slice() {
            [] => {
                return Err(Denial::new(
                    Reason::DpopRequired,
                    "DPoP-bound token without a DPoP header",
                ))
            }
            [one] => one,
            _ => {
                return Err(Denial::new(
                    Reason::DpopInvalid,
                    "more than one DPoP header",
                ))
            }
        };
        let method = host.request_header(":method").unwrap_or_default();
        // The scheme the client used: from x-forwarded-proto only when trusted; otherwise from
        // the connection itself (TLS or not), falling back to :scheme if the proxy cannot tell.
        let forwarded = settings
            .trust_forwarded_proto
            .then(|| host.request_header("x-forwarded-proto"))
            .flatten()
            .map(|p| {
                p.split(',')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        let scheme = match (forwarded, host.downstream_tls()) {
            (Some(p), _) => p,
            (None, Some(true)) => "https".to_owned(),
            (None, Some(false)) => "http".to_owned(),
            (None, None) => host.request_header(":scheme").unwrap_or_default(),
        };
        let authority = host.request_header(":authority").unwrap_or_default();
        let request_uri = uri::normalize(&uri::request_uri(&scheme, &authority, path));

        let nonce_key = if settings.require_nonce {
            match nonce::load_key(host) {
                Some(key) => Some(key),
                // Without the key no nonce can be issued: answering use_dpop_nonce would ask
                // the client for something it cannot get. Its own reason, a 503.
                None => {
                    return Err(Denial::new(
                        Reason::DpopNonceUnavailable,
                        "nonce key unavailable in shared data; failing closed",
                    ))
                }
            }
        } else {
            None
        };
        let request = ProofRequest {
            method: &method,
            uri: request_uri.as_deref(),
            access_token,
            jkt,
            now,
            nonce_key: nonce_key.as_ref(),
        };
        let verified = dpop::verify(
            proof,
            &request,
            settings,
            &mut self.proof_keys.borrow_mut(),
            &self.crypto,
        )
        .inspect_err(|d| {
            if let (Reason::DpopNonceRequired, Some(key)) = (d.reason, &nonce_key) {
                *nonce_to_send = Some(nonce::issue(key, now, settings.nonce_lifetime_seconds));
            }
        })?;
        self.replay
            .first_use(host, &verified.replay_id, verified.expires_at, now)
            .map_err(|e| match e {
                ReplayError::Replayed => Denial::new(Reason::DpopReplayed, "jti already used"),
                ReplayError::Full => Denial::new(
                    Reason::DpopReplayStoreFull,
                    "replay store bucket full of live proofs; raise dpop.replay_cache.max_entries",
                ),
                ReplayError::Unavailable => Denial::new(
                    Reason::DpopReplayStoreUnavailable,
                    "replay store could not be written (shared data contention or error); failing closed",
                ),
            })
    }
}
