//! One request, one decision: extract → (cache | verify) → bind. Plain Rust: the Wasm adapter
//! feeds it header values, a lazily read peer and the clock, and acts on the result.

use crate::binding::{self, Bindings};
use crate::cache::{token_hash, TokenCache, TokenHash};
use crate::config::{Config, Mode};
use crate::extract;
use crate::jwt::{self, TokenFacts};
use crate::metrics::Counter;
use crate::peer::Peer;
use crate::reason::Denial;
use crate::response::{self, Reply};
use std::cell::RefCell;
use std::rc::Rc;

/// The parts of the request the decision reads.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `:path`, query included.
    pub path: &'a str,
    /// Every `Authorization` header value, in order.
    pub authorization: &'a [&'a str],
}

/// What was decided, before the mode is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The path is exempt: the filter did not look at the request.
    Exempt,
    Allow,
    Deny(Denial),
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
    /// The verified facts, when verification succeeded.
    pub facts: Option<Rc<TokenFacts>>,
    pub bindings: Bindings,
    /// The peer, when the decision needed it.
    pub peer: Option<Peer>,
    /// SHA-256 of the token, when there was one. Never log the token; log [`Decision::token_tag`].
    pub token_hash: Option<TokenHash>,
}

impl Decision {
    fn new(outcome: Outcome) -> Self {
        Decision {
            outcome,
            cache: CacheUse::NotConsulted,
            facts: None,
            bindings: Bindings::default(),
            peer: None,
            token_hash: None,
        }
    }

    pub fn denial(&self) -> Option<Denial> {
        match &self.outcome {
            Outcome::Deny(d) => Some(*d),
            _ => None,
        }
    }

    /// The counters this decision increments under `mode`.
    pub fn counters(&self, mode: Mode) -> [Option<Counter>; 2] {
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
        [cache, Some(verdict)]
    }

    /// The local reply to send, if any: only an enforce-mode denial answers.
    pub fn reply(&self, config: &Config) -> Option<Reply> {
        match (&self.outcome, config.mode) {
            (Outcome::Deny(d), Mode::Enforce) => {
                Some(response::unauthorized(d.reason, &config.realm))
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

/// The per-VM decision engine: validated config plus the verified-token cache.
#[derive(Debug)]
pub struct Engine {
    config: Config,
    cache: RefCell<TokenCache>,
}

impl Engine {
    pub fn new(config: Config) -> Self {
        let cache = RefCell::new(TokenCache::new(config.cache_max_entries));
        Engine { config, cache }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn cache_len(&self) -> usize {
        self.cache.borrow().len()
    }

    /// Decides one request at `now` (Unix seconds). `peer` is called at most once, and only
    /// when a verified token's binding needs it.
    pub fn decide(
        &self,
        request: &Request<'_>,
        peer: &mut dyn FnMut() -> Peer,
        now: u64,
    ) -> Decision {
        if self.config.is_exempt(request.path) {
            return Decision::new(Outcome::Exempt);
        }
        let credential =
            match extract::credential(request.authorization, self.config.max_token_bytes) {
                Ok(c) => c,
                Err(d) => return Decision::new(Outcome::Deny(d)),
            };
        let hash = token_hash(credential.token);
        let mut decision = Decision::new(Outcome::Allow);
        decision.token_hash = Some(hash);

        let cached = self.cache.borrow_mut().get(&hash, now);
        let facts = match cached {
            Some(facts) => {
                decision.cache = CacheUse::Hit;
                facts
            }
            None => {
                decision.cache = CacheUse::Miss;
                match jwt::verify(credential.token, &self.config, now) {
                    Ok(facts) => {
                        let facts = Rc::new(facts);
                        self.cache.borrow_mut().insert(hash, Rc::clone(&facts), now);
                        facts
                    }
                    Err(d) => {
                        decision.outcome = Outcome::Deny(d);
                        return decision;
                    }
                }
            }
        };

        let peer = peer();
        match binding::check(&facts, &self.config, &peer) {
            Ok(bindings) => decision.bindings = bindings,
            Err(d) => decision.outcome = Outcome::Deny(d),
        }
        decision.peer = Some(peer);
        decision.facts = Some(facts);
        decision
    }
}
