//! Access-token verification: compact JWS parsing, provider selection by `iss`, key
//! selection by `kid` and `alg`, signature, time claims, audience. The result is the
//! small set of verified facts that the binding checks need, which is what gets cached.

use crate::config::{Config, Provider, SpiffeBinding};
use crate::crypto::Crypto;
use crate::json::{self, JsonError};
use crate::jwk::KeySet;
use crate::jwk::{Alg, AlgError, KeyFingerprint};
use crate::reason::{Denial, Reason};
use crate::spiffe::{SpiffeId, SpiffeIdError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};
use std::rc::Rc;

/// What the token says about SPIFFE binding, resolved once at verification time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpiffeClaim {
    /// SPIFFE binding is not configured.
    Off,
    /// The configured claim is absent (a value of another type is a `malformed_token`).
    Missing,
    Invalid(SpiffeIdError),
    Valid(SpiffeId),
}

/// The `cnf` (confirmation) claim, RFC 7800.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confirmation {
    /// `x5t#S256` (RFC 8705 §3.1): `Some(Ok(digest))`, or `Some(Err(()))` when present but not
    /// a base64url SHA-256 value.
    pub x5t_s256: Option<Result<[u8; 32], ()>>,
    /// `jkt` (RFC 9449 §6.1), the JWK SHA-256 thumbprint of the DPoP key.
    pub jkt: Option<String>,
    /// The first `cnf` member this filter does not understand, if any.
    pub unsupported: Option<String>,
}

/// The verified facts of a token: everything binding checks, logs and metadata need,
/// and nothing else. This is the verified-token cache's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFacts {
    /// Index of the provider that verified the token.
    pub provider: usize,
    pub issuer: String,
    pub subject: Option<String>,
    /// The first second at which the token is no longer accepted (`exp` plus clock skew): an
    /// exclusive bound.
    pub valid_until: u64,
    /// The key that verified the token: when a new key set no longer has it, the cached token
    /// is dropped.
    pub key: KeyFingerprint,
    pub spiffe: SpiffeClaim,
    pub cnf: Confirmation,
}

const fn deny(reason: Reason, detail: &'static str) -> Denial {
    Denial::new(reason, detail)
}

/// The three parts of a compact JWS, decoded.
pub(crate) struct Jws<'t> {
    pub(crate) signing_input: &'t str,
    pub(crate) header: Map<String, Value>,
    pub(crate) claims: Map<String, Value>,
    pub(crate) signature: Vec<u8>,
}

/// Which part of a compact JWS a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Header,
    Claims,
}

/// Why a compact JWS could not be split and decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JwsError {
    /// Not three base64url parts with JSON objects in the first two.
    Form(&'static str),
    /// A JSON member name occurs twice (see [`crate::json`]); the JSON pointer of the second.
    Duplicate(Part, String),
}

fn decode_json_part(
    part: &str,
    which: Part,
    what: &'static str,
) -> Result<Map<String, Value>, JwsError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwsError::Form(what))?;
    match json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Err(JsonError::Duplicate(d)) => Err(JwsError::Duplicate(which, d.pointer())),
        _ => Err(JwsError::Form(what)),
    }
}

json::duplicate_details!(
    header_duplicate,
    "JOSE header",
    [
        "/alg",
        "/kid",
        "/typ",
        "/cty",
        "/crit",
        "/jku",
        "/jwk",
        "/x5u",
        "/x5c",
        "/x5t",
        "/x5t#S256",
        "/b64",
        "/zip",
        "/enc",
    ]
);

json::duplicate_details!(
    claims_duplicate,
    "claims",
    [
        "/iss",
        "/sub",
        "/aud",
        "/exp",
        "/nbf",
        "/iat",
        "/jti",
        "/azp",
        "/client_id",
        "/scope",
        "/scp",
        "/act",
        "/may_act",
        "/cnf",
        "/cnf/jkt",
        "/cnf/x5t#S256",
        "/cnf/jwk",
        "/cnf/jku",
        "/cnf/kid",
    ]
);

/// A token's split error as a denial: `malformed_token`, the detail naming a duplicate member
/// when it is a registered one (the detail is static text, never a name from the request).
fn token_denial(e: JwsError) -> Denial {
    match e {
        JwsError::Form(what) => deny(Reason::MalformedToken, what),
        JwsError::Duplicate(Part::Header, pointer) => {
            deny(Reason::MalformedToken, header_duplicate(&pointer))
        }
        JwsError::Duplicate(Part::Claims, pointer) => {
            deny(Reason::MalformedToken, claims_duplicate(&pointer))
        }
    }
}

pub(crate) fn split(token: &str) -> Result<Jws<'_>, Denial> {
    split_strict(token).map_err(token_denial)
}

/// Splits and decodes a compact JWS; the header and claims go through [`crate::json`], so a
/// duplicate member anywhere in them is refused.
pub(crate) fn split_strict(token: &str) -> Result<Jws<'_>, JwsError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(JwsError::Form(
            "not a compact JWS (three dot-separated parts)",
        ));
    };
    if parts.next().is_some() {
        return Err(JwsError::Form(
            "not a compact JWS (encrypted JWTs are not accepted)",
        ));
    }
    let header = decode_json_part(h, Part::Header, "JOSE header is not base64url JSON object")?;
    let claims = decode_json_part(p, Part::Claims, "claims are not a base64url JSON object")?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwsError::Form("signature is not base64url"))?;
    let signing_input = token.get(..h.len() + 1 + p.len()).unwrap_or("");
    Ok(Jws {
        signing_input,
        header,
        claims,
        signature,
    })
}

/// A NumericDate (RFC 7519 §2): a JSON number of seconds, possibly fractional, not negative.
/// Any other value (a string, `null`, an array ...) is a malformed token, `detail` naming the
/// claim.
fn numeric_date(
    claims: &Map<String, Value>,
    name: &str,
    detail: &'static str,
) -> Result<Option<u64>, Denial> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
            _ => Err(deny(Reason::MalformedToken, detail)),
        },
    }
}

/// A claim that is a string when present (`iss`, `sub`: a StringOrURI, RFC 7519 §2). Any other
/// value, `null` included, is a malformed token, `detail` naming the claim (never its value).
fn string_claim<'a>(
    claims: &'a Map<String, Value>,
    name: &str,
    detail: &'static str,
) -> Result<Option<&'a str>, Denial> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(deny(Reason::MalformedToken, detail)),
    }
}

/// `aud` (RFC 7519 §4.1.3): a StringOrURI or an array of them. An array with any member of
/// another type is refused whole, not matched on its string members.
fn audiences(claims: &Map<String, Value>) -> Result<Vec<&str>, Denial> {
    match claims.get("aud") {
        None => Ok(Vec::new()),
        Some(Value::String(a)) => Ok(vec![a.as_str()]),
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| {
                v.as_str().ok_or(deny(
                    Reason::MalformedToken,
                    "aud array has a member that is not a string",
                ))
            })
            .collect(),
        Some(_) => Err(deny(
            Reason::MalformedToken,
            "aud claim is not a string or an array of strings",
        )),
    }
}

/// The configured SPIFFE claim, followed along its dotted path (`a.b.c`) through nested
/// objects. Absent (anywhere on the path) is [`SpiffeClaim::Missing`]; a value of the wrong
/// type (on the path: not an object; at its end: not a string) is a malformed token.
fn spiffe_claim(
    claims: &Map<String, Value>,
    binding: Option<&SpiffeBinding>,
) -> Result<SpiffeClaim, Denial> {
    let Some(binding) = binding else {
        return Ok(SpiffeClaim::Off);
    };
    let Some((first, rest)) = binding.claim.split_first() else {
        return Ok(SpiffeClaim::Missing);
    };
    let mut value = claims.get(first);
    for segment in rest {
        value = match value {
            None => None,
            Some(Value::Object(members)) => members.get(segment),
            Some(_) => {
                return Err(deny(
                    Reason::MalformedToken,
                    "a claim on the spiffe.claim path is not a JSON object",
                ))
            }
        };
    }
    Ok(match value {
        None => SpiffeClaim::Missing,
        Some(Value::String(s)) => match SpiffeId::parse(s) {
            Ok(id) => SpiffeClaim::Valid(id),
            Err(e) => SpiffeClaim::Invalid(e),
        },
        Some(_) => {
            return Err(deny(
                Reason::MalformedToken,
                "the SPIFFE claim (spiffe.claim) is not a string",
            ))
        }
    })
}

fn confirmation(claims: &Map<String, Value>) -> Result<Confirmation, Denial> {
    let mut cnf = Confirmation::default();
    let Some(value) = claims.get("cnf") else {
        return Ok(cnf);
    };
    let Some(members) = value.as_object() else {
        return Err(deny(
            Reason::MalformedToken,
            "cnf claim is not a JSON object",
        ));
    };
    for (name, value) in members {
        match name.as_str() {
            "x5t#S256" => {
                // RFC 8705 §3.1: a base64url string. Not a string: malformed; a string that is
                // not a SHA-256 digest: kept, so binding refuses it as a thumbprint mismatch.
                let Some(x5t) = value.as_str() else {
                    return Err(deny(Reason::MalformedToken, "cnf.x5t#S256 is not a string"));
                };
                cnf.x5t_s256 = Some(
                    URL_SAFE_NO_PAD
                        .decode(x5t)
                        .ok()
                        .and_then(|d| <[u8; 32]>::try_from(d.as_slice()).ok())
                        .ok_or(()),
                );
            }
            "jkt" => {
                let Some(jkt) = value.as_str() else {
                    return Err(deny(Reason::MalformedToken, "cnf.jkt is not a string"));
                };
                cnf.jkt = Some(jkt.to_owned());
            }
            other => {
                if cnf.unsupported.is_none() {
                    cnf.unsupported = Some(other.to_owned());
                }
            }
        }
    }
    Ok(cnf)
}

/// The registered claims this filter reads once the signature verified, each of its RFC 7519
/// (or RFC 7800, RFC 8705, RFC 9449) JSON type. `iss` is read earlier, to pick the provider;
/// `jti` is not read for access tokens.
struct Registered<'c> {
    sub: Option<&'c str>,
    aud: Vec<&'c str>,
    exp: Option<u64>,
    nbf: Option<u64>,
    iat: Option<u64>,
    spiffe: SpiffeClaim,
    cnf: Confirmation,
}

/// Reads every registered claim before any of their values is judged: a claim of the wrong JSON
/// type makes the token malformed, whatever else is wrong with it, and is never taken as absent
/// (which would leave another check to refuse it with a misleading reason, or let it pass).
fn registered<'c>(
    claims: &'c Map<String, Value>,
    spiffe: Option<&SpiffeBinding>,
) -> Result<Registered<'c>, Denial> {
    Ok(Registered {
        sub: string_claim(claims, "sub", "sub claim is not a string")?,
        aud: audiences(claims)?,
        exp: numeric_date(claims, "exp", "exp claim is not a NumericDate")?,
        nbf: numeric_date(claims, "nbf", "nbf claim is not a NumericDate")?,
        iat: numeric_date(claims, "iat", "iat claim is not a NumericDate")?,
        spiffe: spiffe_claim(claims, spiffe)?,
        cnf: confirmation(claims)?,
    })
}

fn select_provider<'c>(
    config: &'c Config,
    claims: &Map<String, Value>,
) -> Result<(usize, &'c Provider), Denial> {
    let Some(iss) = string_claim(claims, "iss", "iss claim is not a string")? else {
        return Err(deny(Reason::UnknownIssuer, "token has no iss claim"));
    };
    config
        .providers
        .iter()
        .enumerate()
        .find(|(_, p)| p.issuer == iss)
        .ok_or(deny(Reason::UnknownIssuer, "no provider has this issuer"))
}

/// A verification failure: the reason, and the provider the token was routed to (if it got
/// that far), so the caller can react per provider (for example refetch remote keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyError {
    pub denial: Denial,
    pub provider: Option<usize>,
}

impl From<Denial> for VerifyError {
    fn from(denial: Denial) -> Self {
        VerifyError {
            denial,
            provider: None,
        }
    }
}

/// Verifies `token` against the configured providers at time `now` (Unix seconds).
/// `key_sets[i]` holds provider `i`'s current keys (`None`: remote keys not fetched yet).
pub fn verify(
    token: &str,
    config: &Config,
    key_sets: &[Option<Rc<KeySet>>],
    crypto: &Crypto,
    now: u64,
) -> Result<TokenFacts, VerifyError> {
    let mut routed = None;
    verify_routed(token, config, key_sets, crypto, now, &mut routed).map_err(|denial| VerifyError {
        denial,
        provider: routed,
    })
}

fn verify_routed(
    token: &str,
    config: &Config,
    key_sets: &[Option<Rc<KeySet>>],
    crypto: &Crypto,
    now: u64,
    routed: &mut Option<usize>,
) -> Result<TokenFacts, Denial> {
    let jws = split(token)?;

    // Header: algorithm first, so `none` and HMAC never reach key selection.
    let alg = match jws.header.get("alg").and_then(Value::as_str) {
        None => return Err(deny(Reason::MalformedToken, "JOSE header has no alg")),
        Some(a) => match Alg::parse(a) {
            Ok(alg) => alg,
            Err(AlgError::Forbidden) => {
                return Err(deny(
                    Reason::UnsupportedAlgorithm,
                    "alg none or HMAC is never accepted",
                ))
            }
            Err(AlgError::Unknown) => {
                return Err(deny(Reason::UnsupportedAlgorithm, "unknown alg"))
            }
        },
    };
    if jws.header.contains_key("crit") {
        // RFC 7515 §4.1.11: we understand no extensions, so any `crit` must be rejected.
        return Err(deny(
            Reason::MalformedToken,
            "JOSE header has crit extensions",
        ));
    }
    if jws
        .header
        .get("typ")
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
    {
        return Err(deny(
            Reason::MalformedToken,
            "a DPoP proof is not an access token",
        ));
    }
    let kid = match jws.header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err(deny(Reason::MalformedToken, "kid is not a string")),
    };

    let (provider_index, provider) = select_provider(config, &jws.claims)?;
    *routed = Some(provider_index);
    if !provider.algorithms.contains(&alg) {
        return Err(deny(
            Reason::UnsupportedAlgorithm,
            "alg is not on the provider's allow-list",
        ));
    }
    let Some(Some(keys)) = key_sets.get(provider_index) else {
        return Err(deny(
            Reason::JwksUnavailable,
            "the provider's keys have not been fetched",
        ));
    };
    let mut candidates = keys.candidates(kid, alg).peekable();
    if candidates.peek().is_none() {
        return Err(deny(
            Reason::UnknownKey,
            "no key in the JWKS matches kid and alg",
        ));
    }
    let input = jws.signing_input.as_bytes();
    let Some(verified_by) = candidates.find(|k| crypto.verify(&k.key, alg, input, &jws.signature))
    else {
        return Err(deny(Reason::BadSignature, "signature does not verify"));
    };
    let key = *verified_by.key.fingerprint();

    // Claim types first (RFC 7519 §4.1), then their values: time claims (RFC 7519 §4.1.4-6)
    // with the provider's clock skew, and the audience.
    let claims = registered(&jws.claims, config.spiffe.as_ref())?;
    let skew = provider.clock_skew_seconds;
    let Some(exp) = claims.exp else {
        return Err(deny(Reason::MalformedToken, "token has no exp claim"));
    };
    let valid_until = exp.saturating_add(skew);
    if now >= valid_until {
        return Err(deny(Reason::Expired, "exp is in the past"));
    }
    if claims.nbf.is_some_and(|nbf| nbf > now.saturating_add(skew)) {
        return Err(deny(Reason::NotYetValid, "nbf is in the future"));
    }
    if claims.iat.is_some_and(|iat| iat > now.saturating_add(skew)) {
        return Err(deny(Reason::NotYetValid, "iat is in the future"));
    }
    let accepted = |a: &&str| provider.audiences.iter().any(|want| want == a);
    if !claims.aud.iter().any(accepted) {
        return Err(deny(
            Reason::AudienceMismatch,
            "no aud value is accepted by the provider",
        ));
    }

    Ok(TokenFacts {
        provider: provider_index,
        issuer: provider.issuer.clone(),
        subject: claims.sub.map(str::to_owned),
        valid_until,
        key,
        spiffe: claims.spiffe,
        cnf: claims.cnf,
    })
}
