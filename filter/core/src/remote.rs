//! Remote JWKS (and OIDC discovery): the fetch schedule, the shared fetch lease, and the key
//! set shared by every worker VM of a sidecar.
//!
//! Everything here is plain Rust over [`SharedData`] with an injected clock and randomness, so
//! the schedule is unit-tested; the Wasm adapter only dispatches the HTTP calls this module asks
//! for and feeds back the responses.
//!
//! Shared data per provider (keys are suffixed with a hash of the fetch settings, so two
//! configurations that fetch differently never share state):
//! - `…keys`: the last good JWKS document, exactly as fetched. Never replaced by a failure.
//! - `…state`: a small JSON record: next refresh time, consecutive failures, the fetch lease,
//!   the last unknown-`kid` refetch, and a discovered `jwks_uri`.

use crate::host::{SharedData, SharedError};
use crate::json::{self, JsonError};
use crate::jwk::KeySet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::borrow::Cow;

/// How a provider fetches its keys (the validated `remote_jwks` config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    /// The Envoy cluster the call goes through (where TLS to the issuer is configured).
    pub cluster: String,
    /// `:authority` and `:path` of the JWKS document, or of the issuer when `discovery`.
    pub authority: String,
    pub path: String,
    /// Read `<uri>/.well-known/openid-configuration` first to find `jwks_uri`.
    pub discovery: bool,
    pub cache_duration_seconds: u64,
    pub timeout_ms: u64,
    pub jitter_percent: u64,
    pub refetch_min_interval_seconds: u64,
    pub max_body_bytes: usize,
}

pub const DEFAULT_CACHE_DURATION_SECONDS: u64 = 600;
pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;
pub const DEFAULT_JITTER_PERCENT: u64 = 10;
pub const DEFAULT_REFETCH_MIN_INTERVAL_SECONDS: u64 = 30;
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;
/// Failed fetches are retried after 1 s, 2 s, 4 s, … at most this long.
pub const MAX_BACKOFF_SECONDS: u64 = 300;

/// Splits an absolute `http(s)` URI into authority and path (query kept in the path).
pub fn split_uri(uri: &str) -> Option<(String, String)> {
    let (scheme, rest) = uri.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("https") && !scheme.eq_ignore_ascii_case("http") {
        return None;
    }
    let rest = rest.split('#').next().unwrap_or("");
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
        return None;
    }
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    Some((authority.to_owned(), path))
}

/// One HTTP GET for the adapter to dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
    /// Whether this is the discovery document rather than the JWKS.
    pub discovery: bool,
}

/// The fetch record shared by all VMs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchState {
    /// Unix seconds: refresh when now ≥ this.
    #[serde(default)]
    pub next_refresh: u64,
    #[serde(default)]
    pub failures: u32,
    /// Unix milliseconds until which one VM owns the in-flight fetch.
    #[serde(default)]
    pub lease_until_ms: u64,
    /// Unix seconds of the last unknown-`kid` refetch.
    #[serde(default)]
    pub last_kid_refetch: u64,
    /// `jwks_uri` from discovery, as (authority, path).
    #[serde(default)]
    pub jwks: Option<(String, String)>,
}

/// A fetch's response as the adapter saw it.
#[derive(Debug, Clone, Copy, Default)]
pub struct FetchResponse<'a> {
    /// HTTP status; `None` for a connection failure or timeout.
    pub status: Option<u16>,
    pub cache_control: Option<&'a str>,
    /// `None` when the body was over `max_body_bytes` (and so not read).
    pub body: Option<&'a [u8]>,
}

/// What a completed fetch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// New keys were stored.
    Keys { count: usize },
    /// Discovery found `jwks_uri`; fetch it next.
    Discovered(FetchRequest),
    /// Why, for the log: static text, or a JWKS/discovery problem naming the member.
    Failed(Cow<'static, str>),
}

/// A provider's remote key source, bound to its shared-data keys.
#[derive(Debug, Clone)]
pub struct RemoteProvider {
    pub settings: RemoteJwks,
    pub issuer: String,
    keys_key: String,
    state_key: String,
}

impl RemoteProvider {
    pub fn new(name: &str, issuer: &str, settings: RemoteJwks) -> Self {
        let mut h = Sha256::new();
        for part in [
            settings.cluster.as_str(),
            settings.authority.as_str(),
            settings.path.as_str(),
            if settings.discovery { "d" } else { "j" },
            issuer,
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        let tag: String = h
            .finalize()
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect();
        RemoteProvider {
            keys_key: format!("tokenbind.jwks.{name}.{tag}.keys"),
            state_key: format!("tokenbind.jwks.{name}.{tag}.state"),
            issuer: issuer.to_owned(),
            settings,
        }
    }

    fn read_state(&self, shared: &dyn SharedData) -> (FetchState, Option<u32>) {
        match shared.get(&self.state_key) {
            Some((bytes, cas)) => (
                serde_json::from_slice(&bytes).unwrap_or_default(),
                Some(cas),
            ),
            None => (FetchState::default(), None),
        }
    }

    fn write_state(
        &self,
        shared: &dyn SharedData,
        state: &FetchState,
        cas: Option<u32>,
    ) -> Result<(), SharedError> {
        let bytes = serde_json::to_vec(state).map_err(|_| SharedError::Other)?;
        shared.set(&self.state_key, &bytes, cas)
    }

    /// Creates the state record if missing (at VM start, before traffic).
    pub fn prepare(&self, shared: &dyn SharedData) {
        if shared.get(&self.state_key).is_none() {
            let _ = self.write_state(shared, &FetchState::default(), None);
        }
    }

    /// The current shared state (for logs and tests).
    pub fn state(&self, shared: &dyn SharedData) -> FetchState {
        self.read_state(shared).0
    }

    /// The shared key set if its CAS differs from `known_cas`: `(keys, cas)`.
    pub fn sync(&self, shared: &dyn SharedData, known_cas: Option<u32>) -> Option<(KeySet, u32)> {
        let (bytes, cas) = shared.get(&self.keys_key)?;
        if Some(cas) == known_cas || bytes.is_empty() {
            return None;
        }
        let text = std::str::from_utf8(&bytes).ok()?;
        KeySet::from_json(text).ok().map(|k| (k, cas))
    }

    /// If a fetch is due (or `force`d) and no VM holds the lease, takes the lease and returns
    /// the request to dispatch.
    pub fn take_due_fetch(
        &self,
        shared: &dyn SharedData,
        now_ms: u64,
        force: bool,
    ) -> Option<FetchRequest> {
        self.take_lease(shared, now_ms, |state| {
            force || now_ms / 1000 >= state.next_refresh
        })
    }

    /// Takes the fetch lease if no VM holds it and `wanted` (which may also update the state)
    /// agrees, in one compare-and-swap of the shared state; returns the request to dispatch.
    fn take_lease(
        &self,
        shared: &dyn SharedData,
        now_ms: u64,
        mut wanted: impl FnMut(&mut FetchState) -> bool,
    ) -> Option<FetchRequest> {
        for _ in 0..4 {
            let (mut state, cas) = self.read_state(shared);
            if state.lease_until_ms > now_ms || !wanted(&mut state) {
                return None;
            }
            state.lease_until_ms = now_ms + self.settings.timeout_ms + 1_000;
            match self.write_state(shared, &state, cas) {
                Ok(()) => return Some(self.request_for(&state)),
                Err(SharedError::CasMismatch) => continue,
                Err(SharedError::Other) => return None,
            }
        }
        None
    }

    fn request_for(&self, state: &FetchState) -> FetchRequest {
        let s = &self.settings;
        match (&state.jwks, s.discovery) {
            (None, true) => FetchRequest {
                cluster: s.cluster.clone(),
                authority: s.authority.clone(),
                path: format!(
                    "{}/.well-known/openid-configuration",
                    s.path.trim_end_matches('/')
                ),
                timeout_ms: s.timeout_ms,
                discovery: true,
            },
            (Some((authority, path)), true) => FetchRequest {
                cluster: s.cluster.clone(),
                authority: authority.clone(),
                path: path.clone(),
                timeout_ms: s.timeout_ms,
                discovery: false,
            },
            (_, false) => FetchRequest {
                cluster: s.cluster.clone(),
                authority: s.authority.clone(),
                path: s.path.clone(),
                timeout_ms: s.timeout_ms,
                discovery: false,
            },
        }
    }

    /// An unknown-`kid` refetch, if the rate limit allows one now and no fetch is under way
    /// anywhere (then the caller waits for that one instead): records the refetch and takes
    /// the fetch lease in one CAS, so every other VM sees a fetch under way at once. The caller
    /// dispatches the returned request.
    pub fn take_kid_refetch(&self, shared: &dyn SharedData, now_ms: u64) -> Option<FetchRequest> {
        let now = now_ms / 1000;
        let interval = self.settings.refetch_min_interval_seconds;
        self.take_lease(shared, now_ms, |state| {
            let limited = state.last_kid_refetch != 0 && now < state.last_kid_refetch + interval;
            if !limited {
                state.last_kid_refetch = now;
            }
            !limited
        })
    }

    /// Handles a fetch response at `now`; `rand_unit` ∈ [0, 1) jitters the next refresh.
    pub fn complete(
        &self,
        shared: &dyn SharedData,
        request: &FetchRequest,
        response: FetchResponse<'_>,
        now: u64,
        rand_unit: f64,
    ) -> FetchOutcome {
        let FetchResponse {
            status,
            cache_control,
            body,
        } = response;
        let outcome = self.evaluate(request, status, body);
        let (mut state, _) = self.read_state(shared);
        state.lease_until_ms = 0;
        let result = match outcome {
            Evaluated::Keys(text, count) => {
                if shared.set(&self.keys_key, text.as_bytes(), None).is_err() {
                    state.failures += 1;
                    state.next_refresh = now
                        + backoff_seconds(state.failures, self.settings.jitter_percent, rand_unit);
                    FetchOutcome::Failed("cannot store keys in shared data".into())
                } else {
                    state.failures = 0;
                    let max_age = cache_control.and_then(parse_max_age);
                    state.next_refresh = next_refresh(
                        now,
                        self.settings.cache_duration_seconds,
                        max_age,
                        self.settings.jitter_percent,
                        rand_unit,
                    );
                    FetchOutcome::Keys { count }
                }
            }
            Evaluated::JwksUri(authority, path) => {
                state.jwks = Some((authority, path));
                // Not a failure and not a refresh: fetch the JWKS right away.
                state.next_refresh = 0;
                FetchOutcome::Discovered(self.request_for(&state))
            }
            Evaluated::Failed(why) => {
                state.failures += 1;
                if !request.discovery && self.settings.discovery {
                    // The discovered jwks_uri may be stale: discover again next time.
                    state.jwks = None;
                }
                state.next_refresh =
                    now + backoff_seconds(state.failures, self.settings.jitter_percent, rand_unit);
                FetchOutcome::Failed(why)
            }
        };
        // The state write is unconditional: only the lease holder completes a fetch.
        let _ = self.write_state(shared, &state, None);
        result
    }

    fn evaluate(
        &self,
        request: &FetchRequest,
        status: Option<u16>,
        body: Option<&[u8]>,
    ) -> Evaluated {
        let Some(status) = status else {
            return Evaluated::Failed("connection failure or timeout".into());
        };
        if status != 200 {
            return Evaluated::Failed("non-200 response".into());
        }
        let Some(body) = body else {
            return Evaluated::Failed("response body over max_body_bytes".into());
        };
        let Ok(text) = std::str::from_utf8(body) else {
            return Evaluated::Failed("response body is not UTF-8".into());
        };
        if request.discovery {
            let doc = match json::from_str(text) {
                Ok(doc) => doc,
                Err(JsonError::Duplicate(d)) => {
                    return Evaluated::Failed(format!("discovery document has a {d}").into())
                }
                Err(JsonError::Syntax(_)) => {
                    return Evaluated::Failed("discovery document is not JSON".into())
                }
            };
            // OpenID Connect Discovery §4.3: the issuer must match exactly.
            if doc.get("issuer").and_then(|v| v.as_str()) != Some(self.issuer.as_str()) {
                return Evaluated::Failed(
                    "discovery document issuer differs from the provider issuer".into(),
                );
            }
            return match doc
                .get("jwks_uri")
                .and_then(|v| v.as_str())
                .and_then(split_uri)
            {
                Some((authority, path)) => Evaluated::JwksUri(authority, path),
                None => Evaluated::Failed("discovery document has no usable jwks_uri".into()),
            };
        }
        match KeySet::from_json(text) {
            Ok(keys) if !keys.is_empty() => Evaluated::Keys(text.to_owned(), keys.len()),
            Ok(_) => Evaluated::Failed("JWKS has no usable keys".into()),
            Err(e) => Evaluated::Failed(format!("JWKS is malformed: {e}").into()),
        }
    }
}

enum Evaluated {
    Keys(String, usize),
    JwksUri(String, String),
    Failed(Cow<'static, str>),
}

/// `max-age` from a `Cache-Control` header, if any.
pub fn parse_max_age(cache_control: &str) -> Option<u64> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.trim().split_once('=')?;
        if name.trim().eq_ignore_ascii_case("max-age") {
            value.trim().trim_matches('"').parse().ok()
        } else {
            None
        }
    })
}

fn jittered(base: u64, jitter_percent: u64, rand_unit: f64) -> u64 {
    let r = rand_unit.clamp(0.0, 1.0);
    let spread = base as f64 * (jitter_percent as f64 / 100.0);
    let value = base as f64 + spread * (2.0 * r - 1.0);
    value.max(1.0) as u64
}

/// When to refresh after a successful fetch at `now`: at 90% of the key set's lifetime
/// (`cache_duration`, or a shorter `Cache-Control: max-age`), ± jitter, so refreshes happen
/// before the keys are due and thousands of sidecars spread out instead of arriving together.
pub fn next_refresh(
    now: u64,
    cache_duration: u64,
    max_age: Option<u64>,
    jitter_percent: u64,
    rand_unit: f64,
) -> u64 {
    let lifetime = match max_age {
        Some(m) if m < cache_duration => m,
        _ => cache_duration,
    };
    let base = (lifetime * 9 / 10).max(1);
    now + jittered(base, jitter_percent, rand_unit)
}

/// Retry delay after `failures` consecutive failures: 1, 2, 4 … seconds, at most
/// [`MAX_BACKOFF_SECONDS`], ± jitter.
pub fn backoff_seconds(failures: u32, jitter_percent: u64, rand_unit: f64) -> u64 {
    let exp = failures.saturating_sub(1).min(16);
    let base = (1u64 << exp).min(MAX_BACKOFF_SECONDS);
    jittered(base, jitter_percent, rand_unit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::MemorySharedData;
    use serde_json::json;

    fn settings(discovery: bool) -> RemoteJwks {
        RemoteJwks {
            cluster: "issuer".into(),
            authority: "issuer.example".into(),
            path: if discovery {
                "/".into()
            } else {
                "/jwks.json".into()
            },
            discovery,
            cache_duration_seconds: 600,
            timeout_ms: 2000,
            jitter_percent: 10,
            refetch_min_interval_seconds: 30,
            max_body_bytes: 1024,
        }
    }

    fn jwks() -> String {
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "a",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]})
        .to_string()
    }

    #[test]
    fn schedule_is_90_percent_of_lifetime_with_bounded_jitter() {
        for i in 0..=100 {
            let r = f64::from(i) / 100.0;
            let t = next_refresh(1_000, 600, None, 10, r);
            assert!((1_000 + 486..=1_000 + 594).contains(&t), "{t}");
        }
        assert_eq!(next_refresh(1_000, 600, None, 10, 0.5), 1_540);
        assert_eq!(next_refresh(1_000, 600, None, 0, 0.99), 1_540);
        // A shorter max-age wins; a longer one does not extend the configured duration.
        assert_eq!(next_refresh(1_000, 600, Some(100), 0, 0.5), 1_090);
        assert_eq!(next_refresh(1_000, 600, Some(6000), 0, 0.5), 1_540);
        // Ten thousand sidecars spread over the jitter window rather than one second.
        let distinct: std::collections::BTreeSet<u64> = (0..10_000)
            .map(|i| next_refresh(0, 600, None, 10, f64::from(i) / 10_000.0))
            .collect();
        assert!(distinct.len() > 100, "{}", distinct.len());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b: Vec<u64> = (1..=12).map(|f| backoff_seconds(f, 0, 0.5)).collect();
        assert_eq!(b, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }

    #[test]
    fn max_age_parsing() {
        assert_eq!(parse_max_age("public, max-age=300"), Some(300));
        assert_eq!(parse_max_age("Max-Age=\"60\", must-revalidate"), Some(60));
        assert_eq!(parse_max_age("no-cache"), None);
        assert_eq!(parse_max_age("max-age=soon"), None);
    }

    #[test]
    fn uri_splitting() {
        assert_eq!(
            split_uri("https://issuer.example/.well-known/jwks.json"),
            Some(("issuer.example".into(), "/.well-known/jwks.json".into()))
        );
        assert_eq!(
            split_uri("https://issuer.example"),
            Some(("issuer.example".into(), "/".into()))
        );
        assert_eq!(
            split_uri("http://127.0.0.1:8080/k?x=1#f"),
            Some(("127.0.0.1:8080".into(), "/k?x=1".into()))
        );
        assert_eq!(split_uri("ftp://x/y"), None);
        assert_eq!(split_uri("https:///y"), None);
        assert_eq!(split_uri("https://u@x/y"), None);
    }

    #[test]
    fn one_lease_for_many_vms_then_refresh_later() {
        let shared = MemorySharedData::default();
        let p = RemoteProvider::new("mesh", "https://issuer.example", settings(false));
        p.prepare(&shared);
        p.prepare(&shared);
        let now_ms = 1_000_000;
        let first = p.take_due_fetch(&shared, now_ms, false);
        assert!(first.is_some());
        // Every other VM sees the lease.
        for _ in 0..5 {
            assert!(p.take_due_fetch(&shared, now_ms + 10, false).is_none());
        }
        let req = first.unwrap();
        assert_eq!(
            (req.authority.as_str(), req.path.as_str()),
            ("issuer.example", "/jwks.json")
        );
        let out = p.complete(
            &shared,
            &req,
            FetchResponse {
                status: Some(200),
                cache_control: Some("max-age=100"),
                body: Some(jwks().as_bytes()),
            },
            1_000,
            0.5,
        );
        assert_eq!(out, FetchOutcome::Keys { count: 1 });
        assert_eq!(p.state(&shared).next_refresh, 1_090);
        let (keys, cas) = p.sync(&shared, None).unwrap();
        assert_eq!(keys.len(), 1);
        assert!(p.sync(&shared, Some(cas)).is_none());
        // Not due yet; due at next_refresh.
        assert!(p.take_due_fetch(&shared, 1_050_000, false).is_none());
        assert!(p.take_due_fetch(&shared, 1_090_000, false).is_some());
    }

    #[test]
    fn an_expired_lease_can_be_taken_over() {
        let shared = MemorySharedData::default();
        let p = RemoteProvider::new("mesh", "https://issuer.example", settings(false));
        p.prepare(&shared);
        assert!(p.take_due_fetch(&shared, 0, false).is_some());
        assert!(p.take_due_fetch(&shared, 2_999, false).is_none());
        assert!(p.take_due_fetch(&shared, 3_001, false).is_some());
    }

    #[test]
    fn failures_keep_the_last_good_keys_and_back_off() {
        let shared = MemorySharedData::default();
        let p = RemoteProvider::new("mesh", "https://issuer.example", settings(false));
        p.prepare(&shared);
        let req = p.take_due_fetch(&shared, 0, false).unwrap();
        p.complete(
            &shared,
            &req,
            FetchResponse {
                status: Some(200),
                cache_control: None,
                body: Some(jwks().as_bytes()),
            },
            0,
            0.5,
        );
        let (_, good_cas) = p.sync(&shared, None).unwrap();
        let cases: [(Option<u16>, Option<&[u8]>); 5] = [
            (None, None),
            (Some(500), Some(b"oops")),
            (Some(200), Some(b"<html>garbage")),
            (Some(200), None),
            (
                Some(200),
                Some(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#),
            ),
        ];
        for (i, (status, body)) in cases.into_iter().enumerate() {
            let req = p
                .take_due_fetch(&shared, 10_000_000 * (i as u64 + 1), true)
                .unwrap();
            let out = p.complete(
                &shared,
                &req,
                FetchResponse {
                    status,
                    cache_control: None,
                    body,
                },
                10_000 * (i as u64 + 1),
                0.5,
            );
            assert!(matches!(out, FetchOutcome::Failed(_)), "{out:?}");
            assert!(
                p.sync(&shared, Some(good_cas)).is_none(),
                "keys replaced by a failure"
            );
            assert_eq!(p.state(&shared).failures, i as u32 + 1);
            assert_eq!(
                p.state(&shared).next_refresh,
                10_000 * (i as u64 + 1) + (1 << i)
            );
        }
    }

    #[test]
    fn unknown_kid_refetch_is_rate_limited_and_takes_the_lease() {
        let shared = MemorySharedData::default();
        let p = RemoteProvider::new("mesh", "https://issuer.example", settings(false));
        p.prepare(&shared);
        let req = p
            .take_kid_refetch(&shared, 100_000)
            .expect("first refetch granted");
        // The lease is taken in the same step: no other VM starts a fetch meanwhile.
        assert!(p.take_due_fetch(&shared, 100_010, true).is_none());
        p.complete(
            &shared,
            &req,
            FetchResponse {
                status: Some(200),
                cache_control: None,
                body: Some(jwks().as_bytes()),
            },
            100,
            0.5,
        );
        assert!(p.take_kid_refetch(&shared, 110_000).is_none());
        assert!(p.take_kid_refetch(&shared, 129_999).is_none());
        assert!(p.take_kid_refetch(&shared, 130_000).is_some());
        // While a fetch is under way, a refetch is not granted (the caller waits for that one).
        let busy = MemorySharedData::default();
        p.prepare(&busy);
        assert!(p.take_due_fetch(&busy, 0, false).is_some());
        assert!(p.take_kid_refetch(&busy, 500).is_none());
    }

    #[test]
    fn discovery_then_jwks() {
        let shared = MemorySharedData::default();
        let p = RemoteProvider::new("mesh", "https://issuer.example", settings(true));
        p.prepare(&shared);
        let req = p.take_due_fetch(&shared, 0, false).unwrap();
        assert!(req.discovery);
        assert_eq!(req.path, "/.well-known/openid-configuration");
        let wrong =
            json!({"issuer": "https://evil.example", "jwks_uri": "https://keys.example/jwks"})
                .to_string();
        assert!(matches!(
            p.complete(
                &shared,
                &req,
                FetchResponse {
                    status: Some(200),
                    cache_control: None,
                    body: Some(wrong.as_bytes())
                },
                0,
                0.5
            ),
            FetchOutcome::Failed(_)
        ));
        let req = p.take_due_fetch(&shared, 10_000, true).unwrap();
        let doc = json!({"issuer": "https://issuer.example", "jwks_uri": "https://keys.example/oauth/jwks"}).to_string();
        let FetchOutcome::Discovered(next) = p.complete(
            &shared,
            &req,
            FetchResponse {
                status: Some(200),
                cache_control: None,
                body: Some(doc.as_bytes()),
            },
            10,
            0.5,
        ) else {
            panic!("no discovery");
        };
        assert!(!next.discovery);
        assert_eq!(
            (next.authority.as_str(), next.path.as_str()),
            ("keys.example", "/oauth/jwks")
        );
        let req = p.take_due_fetch(&shared, 10_001, false).unwrap();
        assert_eq!(req, next);
        assert_eq!(
            p.complete(
                &shared,
                &req,
                FetchResponse {
                    status: Some(200),
                    cache_control: None,
                    body: Some(jwks().as_bytes())
                },
                10,
                0.5
            ),
            FetchOutcome::Keys { count: 1 }
        );
    }

    #[test]
    fn duplicate_members_fail_the_fetch_and_keep_the_last_good_keys() {
        let shared = MemorySharedData::default();
        let p = RemoteProvider::new("mesh", "https://issuer.example", settings(false));
        p.prepare(&shared);
        let req = p.take_due_fetch(&shared, 0, false).unwrap();
        let ok = |body: &[u8], now: u64| {
            p.complete(
                &shared,
                &req,
                FetchResponse {
                    status: Some(200),
                    cache_control: None,
                    body: Some(body),
                },
                now,
                0.5,
            )
        };
        assert_eq!(ok(jwks().as_bytes(), 0), FetchOutcome::Keys { count: 1 });
        let (_, good_cas) = p.sync(&shared, None).unwrap();
        // The same key, with a second kid: a consumer taking the first kid and one taking
        // the last would select different keys.
        let dup = jwks().replacen(r#""kid":"a""#, r#""kid":"a","kid":"b""#, 1);
        assert_ne!(dup, jwks());
        let FetchOutcome::Failed(why) = ok(dup.as_bytes(), 10) else {
            panic!("a duplicate kid was accepted");
        };
        assert_eq!(why, "JWKS is malformed: duplicate member /keys/0/kid");
        assert!(p.sync(&shared, Some(good_cas)).is_none(), "keys replaced");
        assert_eq!(p.state(&shared).failures, 1);
    }

    #[test]
    fn a_discovery_document_with_a_duplicate_member_is_a_failed_fetch() {
        let shared = MemorySharedData::default();
        let p = RemoteProvider::new("mesh", "https://issuer.example", settings(true));
        p.prepare(&shared);
        let req = p.take_due_fetch(&shared, 0, false).unwrap();
        // First-wins would fetch keys from evil.example; last-wins from keys.example.
        let doc = r#"{"issuer":"https://issuer.example","jwks_uri":"https://evil.example/jwks","jwks_uri":"https://keys.example/jwks"}"#;
        let out = p.complete(
            &shared,
            &req,
            FetchResponse {
                status: Some(200),
                cache_control: None,
                body: Some(doc.as_bytes()),
            },
            0,
            0.5,
        );
        assert_eq!(
            out,
            FetchOutcome::Failed("discovery document has a duplicate member /jwks_uri".into())
        );
        assert_eq!(p.state(&shared).failures, 1);
        assert_eq!(p.state(&shared).jwks, None);
    }
}
