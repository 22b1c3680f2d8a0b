//! DPoP proof verification at a resource server (RFC 9449 §4.3 and §7.1).
//!
//! Every check of §4.3 is here, each with its own reason, and the replay check of §11.1.
//! [`check_request`] runs them for one request, in this order:
//!
//! - exactly one `DPoP` header (step 1);
//! - with `require_nonce`, the shared nonce key must be readable, so that a `use_dpop_nonce`
//!   challenge can carry a nonce (fail closed otherwise);
//! - [`verify_signature`]: a well-formed JWS (step 2), `typ` (4), `alg` (5), a public-only
//!   `jwk` (7), then the signature with that key (6);
//! - [`verify`]'s claim checks: the required claims (step 3), `htm` (8), `htu` (9), `nonce`
//!   (10; the refusal carries a fresh nonce), `iat` (11), `ath` and the key thumbprint against
//!   `cnf.jkt` (12);
//! - replay (§11.1, [`crate::replay`]).
//!
//! Not the RFC's order: the signature comes before any claim. A proof that is not signed by
//! the key it names is refused as `dpop_invalid` before its claims are read, so a forger learns
//! nothing from which claim check failed (the token's own claims are judged the same way).
//! Step 7 precedes step 6 because the key must be known to be public-only before it is
//! parsed, cached and used. Replay comes last, after everything else has passed, so that only
//! proofs signed by the token's own key can ever occupy the replay store.

use crate::config::DpopSettings;
use crate::crypto::Crypto;
use crate::host::Host;
use crate::json;
use crate::jwk::{self, Alg, PublicKey};
use crate::jwt::{self, JwsError, Part};
use crate::nonce;
use crate::reason::{Denial, Reason};
use crate::replay::{ReplayError, ReplayStore};
use crate::uri;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use subtle::ConstantTimeEq;

/// Upper bound on a proof's `jti`, to keep replay bookkeeping small and predictable.
const MAX_JTI_BYTES: usize = 256;

/// One request to a protected resource with a DPoP-bound token, as [`check_request`] sees it.
#[derive(Clone, Copy)]
pub struct ResourceRequest<'a> {
    /// Where the `DPoP` header, the method, the authority and the scheme are read, and the
    /// nonce key and the replay store live.
    pub host: &'a dyn Host,
    /// `:path`, as the engine read it.
    pub path: &'a str,
    /// The access token exactly as presented (for `ath`).
    pub access_token: &'a str,
    /// The token's `cnf.jkt`.
    pub jkt: &'a str,
    pub now: u64,
}

/// Why a request's proof was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub denial: Denial,
    /// For `dpop_nonce_required`: a fresh nonce the `use_dpop_nonce` challenge must carry.
    pub nonce: Option<String>,
}

impl From<Denial> for Refusal {
    fn from(denial: Denial) -> Self {
        Refusal {
            denial,
            nonce: None,
        }
    }
}

/// The request-side inputs a proof is checked against.
#[derive(Debug, Clone, Copy)]
pub struct ProofRequest<'a> {
    /// `:method`.
    pub method: &'a str,
    /// The request URI, already normalised ([`crate::uri::normalize`]); `None` if it could not
    /// be rebuilt, which fails the `htu` check.
    pub uri: Option<&'a str>,
    /// The access token exactly as presented (for `ath`).
    pub access_token: &'a str,
    /// The token's `cnf.jkt`.
    pub jkt: &'a str,
    pub now: u64,
    /// The shared nonce key, when nonces are required.
    pub nonce_key: Option<&'a [u8; 32]>,
}

/// A proof that passed every stateless check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// SHA-256 over the key thumbprint and `jti`: the replay-store identity of this proof.
    pub replay_id: [u8; 32],
    /// Until when the proof would be accepted, and so must be remembered.
    pub expires_at: u64,
}

/// Parsed proof keys by RFC 7638 thumbprint, so a client's key is decoded once, not on every
/// request. Bounded: the oldest entry goes first.
#[derive(Debug)]
pub struct ProofKeyCache {
    max_entries: usize,
    keys: HashMap<String, PublicKey>,
    order: VecDeque<String>,
}

impl ProofKeyCache {
    pub fn new(max_entries: usize) -> Self {
        ProofKeyCache {
            max_entries,
            keys: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn get_or_parse(
        &mut self,
        thumbprint: &str,
        jwk: &serde_json::Map<String, Value>,
    ) -> Result<PublicKey, &'static str> {
        if let Some(key) = self.keys.get(thumbprint) {
            // The thumbprint covers every member the key is built from, so the cached key is
            // exactly what parsing this jwk would produce; private members were refused
            // before the thumbprint was trusted (see `verify`).
            return Ok(key.clone());
        }
        let key = jwk::parse_public_jwk(jwk)?;
        if self.max_entries > 0 {
            while self.keys.len() >= self.max_entries {
                match self.order.pop_front() {
                    Some(old) => {
                        self.keys.remove(&old);
                    }
                    None => break,
                }
            }
            self.keys.insert(thumbprint.to_owned(), key.clone());
            self.order.push_back(thumbprint.to_owned());
        }
        Ok(key)
    }
}

const fn invalid(detail: &'static str) -> Denial {
    Denial::new(Reason::DpopInvalid, detail)
}

/// `ath` (RFC 9449 §4.2): base64url(SHA-256(ASCII access token)).
pub fn access_token_hash(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes()))
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// A proof whose form, type, algorithm, key and signature are valid (RFC 9449 §4.3 steps
/// 2 and 4-7), with its claims not yet checked.
#[derive(Debug, Clone)]
pub struct SignedProof {
    /// The RFC 7638 thumbprint of the proof's `jwk`.
    pub thumbprint: String,
    pub claims: serde_json::Map<String, Value>,
}

json::duplicate_details!(
    proof_header_duplicate,
    "DPoP proof header",
    [
        "/typ", "/alg", "/jwk", "/kid", "/crit", "/jwk/kty", "/jwk/crv", "/jwk/x", "/jwk/y",
        "/jwk/n", "/jwk/e", "/jwk/alg", "/jwk/kid", "/jwk/use", "/jwk/d",
    ]
);

json::duplicate_details!(
    proof_claims_duplicate,
    "DPoP proof claims",
    ["/jti", "/htm", "/htu", "/iat", "/ath", "/nonce", "/exp", "/nbf"]
);

/// Checks a proof's form, `typ`, `alg`, `jwk` and signature (RFC 9449 §4.3 steps 2, 4, 5, 7
/// and 6, in that order).
pub fn verify_signature(
    proof: &str,
    settings: &DpopSettings,
    keys: &mut ProofKeyCache,
    crypto: &Crypto,
) -> Result<SignedProof, Denial> {
    if proof.len() > settings.max_proof_bytes {
        return Err(invalid("DPoP proof exceeds dpop.max_proof_bytes"));
    }
    // 2. A well-formed JWT.
    let jws = jwt::split_strict(proof).map_err(|e| match e {
        JwsError::Form(_) => invalid("DPoP proof is not a compact JWS"),
        JwsError::Duplicate(Part::Header, pointer) => invalid(proof_header_duplicate(&pointer)),
        JwsError::Duplicate(Part::Claims, pointer) => invalid(proof_claims_duplicate(&pointer)),
    })?;

    // 4. typ is dpop+jwt.
    let typ = jws.header.get("typ").and_then(Value::as_str);
    if !typ.is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt")) {
        return Err(invalid("DPoP proof typ is not dpop+jwt"));
    }
    // 5. alg: asymmetric, not none, on the allow-list.
    let alg = jws
        .header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(|a| Alg::parse(a).ok())
        .filter(|a| settings.algorithms.contains(a))
        .ok_or(invalid("DPoP proof alg is not accepted"))?;
    // 7. jwk: a public key only.
    let Some(Value::Object(jwk)) = jws.header.get("jwk") else {
        return Err(invalid("DPoP proof has no jwk header"));
    };
    if jwk.keys().any(|m| {
        matches!(
            m.as_str(),
            "d" | "p" | "q" | "dp" | "dq" | "qi" | "oth" | "k"
        )
    }) {
        return Err(invalid("DPoP proof jwk carries private key members"));
    }
    let thumbprint = jwk::thumbprint(jwk).map_err(invalid)?;
    let key = keys.get_or_parse(&thumbprint, jwk).map_err(invalid)?;
    // 6. Signature, with that key.
    if !key.supports(alg) {
        return Err(invalid("DPoP proof alg does not fit its jwk"));
    }
    if !crypto.verify(&key, alg, jws.signing_input.as_bytes(), &jws.signature) {
        return Err(invalid("DPoP proof signature does not verify"));
    }
    Ok(SignedProof {
        thumbprint,
        claims: jws.claims,
    })
}

/// Verifies one DPoP proof (the single `DPoP` header value) for `req`: RFC 9449 §4.3 steps 2
/// to 12, the signature ([`verify_signature`]) before the claims (see the module docs).
pub fn verify(
    proof: &str,
    req: &ProofRequest<'_>,
    settings: &DpopSettings,
    keys: &mut ProofKeyCache,
    crypto: &Crypto,
) -> Result<VerifiedProof, Denial> {
    let SignedProof { thumbprint, claims } = verify_signature(proof, settings, keys, crypto)?;

    // 3. Required claims.
    let claims = &claims;
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_BYTES)
        .ok_or(invalid("DPoP proof has no usable jti"))?;
    let htm = claims
        .get("htm")
        .and_then(Value::as_str)
        .ok_or(invalid("DPoP proof has no htm"))?;
    let htu = claims
        .get("htu")
        .and_then(Value::as_str)
        .ok_or(invalid("DPoP proof has no htu"))?;
    let iat = claims
        .get("iat")
        .and_then(Value::as_f64)
        .filter(|f| f.is_finite() && *f >= 0.0)
        .map(|f| f as u64)
        .ok_or(invalid("DPoP proof has no numeric iat"))?;

    // 8. htm.
    if htm != req.method {
        return Err(Denial::new(
            Reason::DpopHtmMismatch,
            "htm differs from the request method",
        ));
    }
    // 9. htu, both sides normalised, query and fragment ignored.
    let htu_ok = match (crate::uri::normalize(htu), req.uri) {
        (Some(claimed), Some(actual)) => claimed == actual,
        _ => false,
    };
    if !htu_ok {
        return Err(Denial::new(
            Reason::DpopHtuMismatch,
            "htu differs from the request URI",
        ));
    }
    // 10. nonce, when required.
    if let Some(key) = req.nonce_key {
        let fresh = claims
            .get("nonce")
            .and_then(Value::as_str)
            .is_some_and(|n| nonce::is_valid(key, n, req.now, settings.nonce_lifetime_seconds));
        if !fresh {
            return Err(Denial::new(
                Reason::DpopNonceRequired,
                "nonce missing or stale",
            ));
        }
    }
    // 11. iat within the window.
    let window = settings.iat_window_seconds;
    if iat > req.now.saturating_add(window) || iat.saturating_add(window) < req.now {
        return Err(Denial::new(
            Reason::DpopIatOutOfWindow,
            "iat is outside dpop.iat_window_seconds",
        ));
    }
    // 12. ath.
    let ath_ok = claims
        .get("ath")
        .and_then(Value::as_str)
        .is_some_and(|ath| ct_eq(ath, &access_token_hash(req.access_token)));
    if !ath_ok {
        return Err(Denial::new(
            Reason::DpopAthMismatch,
            "ath is not the hash of the access token",
        ));
    }
    // 12, continued. The proof key is the key the token is bound to.
    if !ct_eq(&thumbprint, req.jkt) {
        return Err(Denial::new(
            Reason::DpopKeyMismatch,
            "proof key thumbprint differs from cnf.jkt",
        ));
    }

    let mut id = Sha256::new();
    id.update(thumbprint.as_bytes());
    id.update([0u8]);
    id.update(jti.as_bytes());
    Ok(VerifiedProof {
        replay_id: id.finalize().into(),
        expires_at: iat.saturating_add(window).saturating_add(1),
    })
}

/// RFC 9449 §4.3 and §11.1 for one request: its single DPoP proof must be valid for this
/// request, this token and its `cnf.jkt`, and never seen before. The order is the module's.
pub fn check_request(
    req: &ResourceRequest<'_>,
    settings: &DpopSettings,
    keys: &mut ProofKeyCache,
    replay: &ReplayStore,
    crypto: &Crypto,
) -> Result<(), Refusal> {
    let host = req.host;
    // 1. Exactly one DPoP header.
    let proofs = host.request_header_values("dpop");
    let proof = match proofs.as_slice() {
        [] => {
            return Err(Denial::new(
                Reason::DpopRequired,
                "DPoP-bound token without a DPoP header",
            )
            .into())
        }
        [one] => one,
        _ => return Err(invalid("more than one DPoP header").into()),
    };
    let method = host.request_header(":method").unwrap_or_default();
    let request_uri = uri::client_request_uri(host, req.path, settings.trust_forwarded_proto);

    let nonce_key = if settings.require_nonce {
        match nonce::load_key(host) {
            Some(key) => Some(key),
            // Without the key no nonce can be issued: answering use_dpop_nonce would ask
            // the client for something it cannot get. Its own reason, a 503.
            None => {
                return Err(Denial::new(
                    Reason::DpopNonceUnavailable,
                    "nonce key unavailable in shared data; failing closed",
                )
                .into())
            }
        }
    } else {
        None
    };
    let request = ProofRequest {
        method: &method,
        uri: request_uri.as_deref(),
        access_token: req.access_token,
        jkt: req.jkt,
        now: req.now,
        nonce_key: nonce_key.as_ref(),
    };
    let verified = verify(proof, &request, settings, keys, crypto).map_err(|denial| {
        let nonce = match (denial.reason, &nonce_key) {
            (Reason::DpopNonceRequired, Some(key)) => {
                Some(nonce::issue(key, req.now, settings.nonce_lifetime_seconds))
            }
            _ => None,
        };
        Refusal { denial, nonce }
    })?;
    // §11.1: a proof is accepted once.
    replay
        .first_use(host, &verified.replay_id, verified.expires_at, req.now)
        .map_err(|e| Refusal::from(replay_denial(e)))
}

const fn replay_denial(e: ReplayError) -> Denial {
    match e {
        ReplayError::Replayed => Denial::new(Reason::DpopReplayed, "jti already used"),
        ReplayError::Full => Denial::new(
            Reason::DpopReplayStoreFull,
            "replay store bucket full of live proofs; raise dpop.replay_cache.max_entries",
        ),
        ReplayError::Unavailable => Denial::new(
            Reason::DpopReplayStoreUnavailable,
            "replay store could not be written (shared data contention or error); failing closed",
        ),
    }
}
