//! Plugin configuration: parsed and validated once (in `on_configure`), then shared
//! read-only by every request. Every error names the offending field by its JSON path.

use crate::crypto::CryptoMode;
use crate::json::{self, JsonError};
use crate::jwk::{Alg, AlgError, KeySet};
use crate::paths::PathMatcher;
use crate::remote::{self, RemoteJwks};
use crate::spiffe::validate_trust_domain;
use serde::Deserialize;
use serde_json::Value;
use std::fmt;

/// What the filter does with a denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny with 401.
    #[default]
    Enforce,
    /// Let the request through; count and log the would-deny.
    Monitor,
}

impl Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }
}

/// A configuration error, naming the field by JSON path (`providers[0].jwks.keys[1].x`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "invalid configuration: {}", self.message)
        } else {
            write!(f, "invalid configuration: {}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn config_err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;
pub const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 60;
pub const DEFAULT_REALM: &str = "tokenbind";
const MAX_CLOCK_SKEW_SECONDS: u64 = 600;
const MAX_CACHE_ENTRIES: usize = 1_000_000;
const TOKEN_BYTES_RANGE: std::ops::RangeInclusive<usize> = 256..=65_536;
pub const DEFAULT_DPOP_IAT_WINDOW_SECONDS: u64 = 60;
pub const DEFAULT_NONCE_LIFETIME_SECONDS: u64 = 300;
/// Sized for ~5,500 unique proofs per second with the default ±60 s window: live entries are
/// rate × 61 s, and buckets fill unevenly, so about 30 % headroom. At most 12 MiB of shared
/// data (24 bytes an entry), used only as proofs arrive.
pub const DEFAULT_REPLAY_ENTRIES: usize = 524_288;
/// The default DPoP proof algorithms (RFC 9449 leaves the choice to the server).
pub const DEFAULT_DPOP_ALGORITHMS: [Alg; 5] =
    [Alg::ES256, Alg::ES384, Alg::EdDSA, Alg::RS256, Alg::PS256];
const MAX_DPOP_IAT_WINDOW_SECONDS: u64 = 600;
const MAX_REPLAY_ENTRIES: usize = 4_194_304;
/// The default algorithm allow-list: every asymmetric JWS algorithm we implement.
pub const DEFAULT_ALGORITHMS: [Alg; 9] = Alg::ALL;

// ---- The raw, serde-facing shape. Unknown fields are errors everywhere. ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    mode: Mode,
    providers: Vec<RawProvider>,
    #[serde(default)]
    spiffe: Option<RawSpiffe>,
    #[serde(default = "default_true")]
    require_binding: bool,
    /// Strings (prefix entries) or `{prefix|exact, methods}` objects: see [`crate::paths`].
    #[serde(default)]
    exempt_paths: Vec<Value>,
    #[serde(default)]
    cache: RawCache,
    #[serde(default = "default_max_token_bytes")]
    max_token_bytes: usize,
    #[serde(default = "default_realm")]
    realm: String,
    #[serde(default)]
    dpop: Option<RawDpop>,
    #[serde(default)]
    trusted_forwarders: Vec<String>,
    #[serde(default = "default_true")]
    emit_filter_state: bool,
    #[serde(default)]
    crypto: CryptoMode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDpop {
    #[serde(default)]
    algorithms: Option<Vec<String>>,
    #[serde(default = "default_iat_window")]
    iat_window_seconds: u64,
    #[serde(default)]
    require_nonce: bool,
    #[serde(default = "default_nonce_lifetime")]
    nonce_lifetime_seconds: u64,
    #[serde(default)]
    trust_forwarded_proto: bool,
    #[serde(default)]
    replay_cache: RawReplayCache,
    #[serde(default = "default_max_token_bytes")]
    max_proof_bytes: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplayCache {
    #[serde(default = "default_replay_entries")]
    max_entries: usize,
}

impl Default for RawReplayCache {
    fn default() -> Self {
        RawReplayCache {
            max_entries: DEFAULT_REPLAY_ENTRIES,
        }
    }
}

fn default_iat_window() -> u64 {
    DEFAULT_DPOP_IAT_WINDOW_SECONDS
}
fn default_nonce_lifetime() -> u64 {
    DEFAULT_NONCE_LIFETIME_SECONDS
}
fn default_replay_entries() -> usize {
    DEFAULT_REPLAY_ENTRIES
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: String,
    issuer: String,
    audiences: Vec<String>,
    #[serde(default)]
    jwks: Option<Value>,
    #[serde(default)]
    jwks_file: Option<String>,
    #[serde(default)]
    remote_jwks: Option<RawRemoteJwks>,
    #[serde(default)]
    algorithms: Option<Vec<String>>,
    #[serde(default = "default_skew")]
    clock_skew_seconds: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemoteJwks {
    cluster: String,
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    discovery: bool,
    #[serde(default = "default_cache_duration")]
    cache_duration_seconds: u64,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_jitter")]
    jitter_percent: u64,
    #[serde(default = "default_refetch_interval")]
    refetch_unknown_kid_min_interval_seconds: u64,
    #[serde(default = "default_max_body")]
    max_body_bytes: usize,
}

fn default_cache_duration() -> u64 {
    remote::DEFAULT_CACHE_DURATION_SECONDS
}
fn default_timeout_ms() -> u64 {
    remote::DEFAULT_TIMEOUT_MS
}
fn default_jitter() -> u64 {
    remote::DEFAULT_JITTER_PERCENT
}
fn default_refetch_interval() -> u64 {
    remote::DEFAULT_REFETCH_MIN_INTERVAL_SECONDS
}
fn default_max_body() -> usize {
    remote::DEFAULT_MAX_BODY_BYTES
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpiffe {
    #[serde(default = "default_claim")]
    claim: String,
    #[serde(default)]
    trust_domains: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default = "default_cache_entries")]
    max_entries: usize,
    #[serde(default = "default_svid_cache_entries")]
    svid_max_entries: usize,
    #[serde(default = "default_svid_cache_ttl")]
    svid_ttl_seconds: u64,
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            max_entries: DEFAULT_CACHE_ENTRIES,
            svid_max_entries: DEFAULT_SVID_CACHE_ENTRIES,
            svid_ttl_seconds: DEFAULT_SVID_CACHE_TTL_SECONDS,
        }
    }
}

/// Peer-certificate (X.509-SVID) verdicts kept per VM: one per distinct client certificate.
pub const DEFAULT_SVID_CACHE_ENTRIES: usize = 1024;
pub const MAX_SVID_CACHE_ENTRIES: usize = 65_536;
/// A verdict is re-checked at least this often (and never past the certificate's notAfter).
pub const DEFAULT_SVID_CACHE_TTL_SECONDS: u64 = 3600;
pub const MAX_SVID_CACHE_TTL_SECONDS: u64 = 86_400;

fn default_svid_cache_entries() -> usize {
    DEFAULT_SVID_CACHE_ENTRIES
}
fn default_svid_cache_ttl() -> u64 {
    DEFAULT_SVID_CACHE_TTL_SECONDS
}

fn default_true() -> bool {
    true
}
fn default_max_token_bytes() -> usize {
    DEFAULT_MAX_TOKEN_BYTES
}
fn default_realm() -> String {
    DEFAULT_REALM.to_owned()
}
fn default_skew() -> u64 {
    DEFAULT_CLOCK_SKEW_SECONDS
}
fn default_claim() -> String {
    "sub".to_owned()
}
fn default_cache_entries() -> usize {
    DEFAULT_CACHE_ENTRIES
}

// ---- The compiled, ready-to-use shape. ----

/// Where a provider's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Inline `jwks` or `jwks_file`, parsed at configuration time.
    Static(KeySet),
    /// `remote_jwks`: fetched through an Envoy cluster and shared by all workers.
    Remote(RemoteJwks),
}

impl KeySource {
    /// The static key set, if the keys are not remote.
    pub fn static_keys(&self) -> Option<&KeySet> {
        match self {
            KeySource::Static(k) => Some(k),
            KeySource::Remote(_) => None,
        }
    }

    /// The remote fetch settings, if the keys are remote.
    pub fn remote(&self) -> Option<&RemoteJwks> {
        match self {
            KeySource::Remote(r) => Some(r),
            KeySource::Static(_) => None,
        }
    }
}

/// One token issuer and how its tokens are verified.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub keys: KeySource,
    pub algorithms: Vec<Alg>,
    pub clock_skew_seconds: u64,
}

/// SPIFFE binding: which claim holds the workload's SPIFFE ID, and which trust domains
/// may appear there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeBinding {
    /// The claim path, split on dots (`["sub"]`, `["act", "sub"]`).
    pub claim: Vec<String>,
    /// `None` allows every trust domain.
    pub trust_domains: Option<Vec<String>>,
}

/// DPoP proof verification settings (RFC 9449). Always present: DPoP-bound tokens are
/// verified with these defaults when the `dpop` section is omitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopSettings {
    pub algorithms: Vec<Alg>,
    /// A proof's `iat` may be this far in the past or the future.
    pub iat_window_seconds: u64,
    pub require_nonce: bool,
    pub nonce_lifetime_seconds: u64,
    /// Rebuild `htu` with `x-forwarded-proto` instead of `:scheme` (behind a TLS terminator).
    pub trust_forwarded_proto: bool,
    pub replay_max_entries: usize,
    pub max_proof_bytes: usize,
}

impl Default for DpopSettings {
    fn default() -> Self {
        DpopSettings {
            algorithms: DEFAULT_DPOP_ALGORITHMS.to_vec(),
            iat_window_seconds: DEFAULT_DPOP_IAT_WINDOW_SECONDS,
            require_nonce: false,
            nonce_lifetime_seconds: DEFAULT_NONCE_LIFETIME_SECONDS,
            trust_forwarded_proto: false,
            replay_max_entries: DEFAULT_REPLAY_ENTRIES,
            max_proof_bytes: DEFAULT_MAX_TOKEN_BYTES,
        }
    }
}

impl DpopSettings {
    /// The `algs` value of a DPoP challenge: space-separated algorithm names.
    pub fn algs_param(&self) -> String {
        self.algorithms
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The validated plugin configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub providers: Vec<Provider>,
    pub spiffe: Option<SpiffeBinding>,
    pub require_binding: bool,
    /// Paths that skip the filter, matched on the normalised path ([`crate::paths`]).
    pub exempt_paths: PathMatcher,
    pub cache_max_entries: usize,
    /// `cache.svid_max_entries`: peer-certificate (X.509-SVID) verdicts kept per VM; 0 = none.
    pub svid_cache_max_entries: usize,
    /// `cache.svid_ttl_seconds`: how long a verdict is kept at most.
    pub svid_cache_ttl_seconds: u64,
    pub max_token_bytes: usize,
    pub realm: String,
    pub dpop: DpopSettings,
    /// SPIFFE IDs of peers (ingress gateways) whose `x-forwarded-client-cert` is trusted.
    pub trusted_forwarders: Vec<String>,
    /// Write the decision to Envoy filter state (`wasm.tokenbind.*`) for access logs.
    pub emit_filter_state: bool,
    /// Who verifies signatures: Envoy's BoringSSL where it can (`auto`), always (`host`), or
    /// pure Rust only (`wasm`). See [`crate::crypto`].
    pub crypto: CryptoMode,
}

/// Reads a file named by the configuration (`jwks_file`). The Wasm adapter and tests
/// provide their own; inside Envoy's Wasm sandbox file access may be unavailable.
pub type FileReader<'a> = &'a dyn Fn(&str) -> Result<String, String>;

impl Config {
    /// Parses and validates a JSON configuration.
    pub fn from_json(bytes: &[u8], read_file: FileReader<'_>) -> Result<Config, ConfigError> {
        // A member name twice in one object is refused wherever it is (serde's derive catches
        // duplicate known fields only, and an inline `jwks` object would take the last one).
        // Syntax errors are left to the typed parse below, which names the field.
        if let Err(JsonError::Duplicate(d)) = json::from_slice(bytes) {
            return Err(config_err(d.field(), d.to_string()));
        }
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            config_err(field, e.into_inner().to_string())
        })?;
        compile(raw, read_file)
    }

    /// Whether a request with `method` and `path` (the request's `:path`, query included) is
    /// exempt. A path without a normal form is never exempt ([`crate::paths::normalize`]).
    pub fn is_exempt(&self, method: Option<&str>, path: &str) -> bool {
        self.exempt_paths.matches(method, path)
    }
}

fn compile(raw: RawConfig, read_file: FileReader<'_>) -> Result<Config, ConfigError> {
    if raw.providers.is_empty() {
        return Err(config_err("providers", "at least one provider is required"));
    }
    let mut providers = Vec::with_capacity(raw.providers.len());
    for (i, p) in raw.providers.into_iter().enumerate() {
        let provider = compile_provider(p, &format!("providers[{i}]"), read_file)?;
        if let Some(other) = providers
            .iter()
            .position(|q: &Provider| q.name == provider.name)
        {
            return Err(config_err(
                format!("providers[{i}].name"),
                format!("duplicates providers[{other}].name"),
            ));
        }
        if let Some(other) = providers
            .iter()
            .position(|q: &Provider| q.issuer == provider.issuer)
        {
            return Err(config_err(
                format!("providers[{i}].issuer"),
                format!("duplicates providers[{other}].issuer; a token is routed to its provider by iss"),
            ));
        }
        providers.push(provider);
    }

    let spiffe = match raw.spiffe {
        None => None,
        Some(s) => {
            let claim: Vec<String> = s.claim.split('.').map(str::to_owned).collect();
            if claim.iter().any(String::is_empty) {
                return Err(config_err(
                    "spiffe.claim",
                    "must be a claim name or a dotted path of claim names",
                ));
            }
            if let Some(tds) = &s.trust_domains {
                if tds.is_empty() {
                    return Err(config_err(
                        "spiffe.trust_domains",
                        "is empty, which would reject every token; omit it to allow any trust domain",
                    ));
                }
                for (i, td) in tds.iter().enumerate() {
                    validate_trust_domain(td).map_err(|e| {
                        config_err(format!("spiffe.trust_domains[{i}]"), e.message())
                    })?;
                }
            }
            Some(SpiffeBinding {
                claim,
                trust_domains: s.trust_domains,
            })
        }
    };

    let exempt_paths = PathMatcher::from_json(&raw.exempt_paths, "exempt_paths")?;
    if raw.cache.max_entries > MAX_CACHE_ENTRIES {
        return Err(config_err(
            "cache.max_entries",
            format!("must be at most {MAX_CACHE_ENTRIES} (0 turns the cache off)"),
        ));
    }
    if raw.cache.svid_max_entries > MAX_SVID_CACHE_ENTRIES {
        return Err(config_err(
            "cache.svid_max_entries",
            format!(
                "must be at most {MAX_SVID_CACHE_ENTRIES} (0 checks the peer certificate on every request)"
            ),
        ));
    }
    if !(1..=MAX_SVID_CACHE_TTL_SECONDS).contains(&raw.cache.svid_ttl_seconds) {
        return Err(config_err(
            "cache.svid_ttl_seconds",
            format!("must be between 1 and {MAX_SVID_CACHE_TTL_SECONDS}"),
        ));
    }
    if !TOKEN_BYTES_RANGE.contains(&raw.max_token_bytes) {
        return Err(config_err(
            "max_token_bytes",
            format!(
                "must be between {} and {}",
                TOKEN_BYTES_RANGE.start(),
                TOKEN_BYTES_RANGE.end()
            ),
        ));
    }
    if raw.realm.is_empty()
        || !raw
            .realm
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
    {
        return Err(config_err(
            "realm",
            "must be non-empty printable ASCII without '\"' or '\\'",
        ));
    }

    for (i, id) in raw.trusted_forwarders.iter().enumerate() {
        crate::spiffe::SpiffeId::parse(id)
            .map_err(|e| config_err(format!("trusted_forwarders[{i}]"), e.message()))?;
    }
    let dpop = match raw.dpop {
        None => DpopSettings::default(),
        Some(d) => compile_dpop(d)?,
    };

    Ok(Config {
        trusted_forwarders: raw.trusted_forwarders,
        emit_filter_state: raw.emit_filter_state,
        crypto: raw.crypto,
        dpop,
        mode: raw.mode,
        providers,
        spiffe,
        require_binding: raw.require_binding,
        exempt_paths,
        cache_max_entries: raw.cache.max_entries,
        svid_cache_max_entries: raw.cache.svid_max_entries,
        svid_cache_ttl_seconds: raw.cache.svid_ttl_seconds,
        max_token_bytes: raw.max_token_bytes,
        realm: raw.realm,
    })
}

fn compile_provider(
    p: RawProvider,
    at: &str,
    read_file: FileReader<'_>,
) -> Result<Provider, ConfigError> {
    if p.name.is_empty() {
        return Err(config_err(format!("{at}.name"), "must not be empty"));
    }
    if p.issuer.is_empty() {
        return Err(config_err(format!("{at}.issuer"), "must not be empty"));
    }
    if p.audiences.is_empty() {
        return Err(config_err(
            format!("{at}.audiences"),
            "at least one audience is required",
        ));
    }
    if let Some(i) = p.audiences.iter().position(String::is_empty) {
        return Err(config_err(
            format!("{at}.audiences[{i}]"),
            "must not be empty",
        ));
    }
    if p.clock_skew_seconds > MAX_CLOCK_SKEW_SECONDS {
        return Err(config_err(
            format!("{at}.clock_skew_seconds"),
            format!("must be at most {MAX_CLOCK_SKEW_SECONDS}"),
        ));
    }
    let algorithms = parse_algorithms(
        p.algorithms,
        &format!("{at}.algorithms"),
        &DEFAULT_ALGORITHMS,
    )?;
    let sources = usize::from(p.jwks.is_some())
        + usize::from(p.jwks_file.is_some())
        + usize::from(p.remote_jwks.is_some());
    if sources != 1 {
        return Err(config_err(
            format!("{at}.jwks"),
            if sources == 0 {
                "missing; set exactly one of jwks, jwks_file and remote_jwks"
            } else {
                "set exactly one of jwks, jwks_file and remote_jwks, not several"
            },
        ));
    }
    let keys = match (p.jwks, p.jwks_file, p.remote_jwks) {
        (Some(Value::String(text)), _, _) => {
            static_keys(KeySet::from_json(&text), format!("{at}.jwks"), &algorithms)?
        }
        (Some(value), _, _) => static_keys(
            KeySet::from_value(&value),
            format!("{at}.jwks"),
            &algorithms,
        )?,
        (None, Some(path), _) => {
            let field = format!("{at}.jwks_file");
            let text = read_file(&path)
                .map_err(|e| config_err(field.as_str(), format!("cannot read {path:?}: {e}")))?;
            static_keys(KeySet::from_json(&text), field, &algorithms)?
        }
        (None, None, Some(r)) => {
            KeySource::Remote(compile_remote(r, &p.issuer, &format!("{at}.remote_jwks"))?)
        }
        (None, None, None) => return Err(config_err(format!("{at}.jwks"), "missing")),
    };
    Ok(Provider {
        name: p.name,
        issuer: p.issuer,
        audiences: p.audiences,
        keys,
        algorithms,
        clock_skew_seconds: p.clock_skew_seconds,
    })
}

fn parse_algorithms(
    list: Option<Vec<String>>,
    at: &str,
    default: &[Alg],
) -> Result<Vec<Alg>, ConfigError> {
    let Some(list) = list else {
        return Ok(default.to_vec());
    };
    if list.is_empty() {
        return Err(config_err(
            at,
            "is empty; omit it for the default asymmetric algorithms",
        ));
    }
    let mut algs = Vec::with_capacity(list.len());
    for (i, name) in list.iter().enumerate() {
        match Alg::parse(name) {
            Ok(a) => algs.push(a),
            Err(AlgError::Forbidden) => {
                return Err(config_err(
                    format!("{at}[{i}]"),
                    format!("{name} is never accepted (only asymmetric algorithms are)"),
                ))
            }
            Err(AlgError::Unknown) => {
                return Err(config_err(
                    format!("{at}[{i}]"),
                    format!(
                        "unknown algorithm {name:?}; expected one of ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512, EdDSA"
                    ),
                ))
            }
        }
    }
    Ok(algs)
}

fn compile_dpop(d: RawDpop) -> Result<DpopSettings, ConfigError> {
    let algorithms = parse_algorithms(d.algorithms, "dpop.algorithms", &DEFAULT_DPOP_ALGORITHMS)?;
    if d.iat_window_seconds == 0 || d.iat_window_seconds > MAX_DPOP_IAT_WINDOW_SECONDS {
        return Err(config_err(
            "dpop.iat_window_seconds",
            format!("must be between 1 and {MAX_DPOP_IAT_WINDOW_SECONDS}"),
        ));
    }
    if !(10..=86_400).contains(&d.nonce_lifetime_seconds) {
        return Err(config_err(
            "dpop.nonce_lifetime_seconds",
            "must be between 10 and 86400",
        ));
    }
    if d.replay_cache.max_entries == 0 || d.replay_cache.max_entries > MAX_REPLAY_ENTRIES {
        return Err(config_err(
            "dpop.replay_cache.max_entries",
            format!("must be between 1 and {MAX_REPLAY_ENTRIES}; replay protection cannot be turned off"),
        ));
    }
    if !TOKEN_BYTES_RANGE.contains(&d.max_proof_bytes) {
        return Err(config_err(
            "dpop.max_proof_bytes",
            format!(
                "must be between {} and {}",
                TOKEN_BYTES_RANGE.start(),
                TOKEN_BYTES_RANGE.end()
            ),
        ));
    }
    Ok(DpopSettings {
        algorithms,
        iat_window_seconds: d.iat_window_seconds,
        require_nonce: d.require_nonce,
        nonce_lifetime_seconds: d.nonce_lifetime_seconds,
        trust_forwarded_proto: d.trust_forwarded_proto,
        replay_max_entries: d.replay_cache.max_entries,
        max_proof_bytes: d.max_proof_bytes,
    })
}

fn static_keys(
    parsed: Result<KeySet, crate::jwk::JwksError>,
    field: String,
    algorithms: &[Alg],
) -> Result<KeySource, ConfigError> {
    let keys = parsed.map_err(|e| {
        let field = if e.path.is_empty() {
            field.clone()
        } else {
            format!("{field}.{}", e.path)
        };
        config_err(field, e.message)
    })?;
    if !keys
        .keys()
        .iter()
        .any(|k| algorithms.iter().any(|a| k.accepts(*a)))
    {
        let skipped: Vec<String> = keys
            .skipped
            .iter()
            .map(|s| format!("keys[{}] {}", s.index, s.why))
            .collect();
        return Err(config_err(
            field,
            if skipped.is_empty() {
                "has no key usable with the allowed algorithms".to_owned()
            } else {
                format!(
                    "has no key usable with the allowed algorithms (skipped: {})",
                    skipped.join("; ")
                )
            },
        ));
    }
    Ok(KeySource::Static(keys))
}

fn compile_remote(r: RawRemoteJwks, issuer: &str, at: &str) -> Result<RemoteJwks, ConfigError> {
    if r.cluster.is_empty() {
        return Err(config_err(
            format!("{at}.cluster"),
            "must name an Envoy cluster",
        ));
    }
    let uri = match (&r.uri, r.discovery) {
        (Some(u), _) => u.as_str(),
        (None, true) => issuer,
        (None, false) => {
            return Err(config_err(
                format!("{at}.uri"),
                "missing; give the JWKS URI, or set discovery: true to find it from the issuer",
            ))
        }
    };
    let Some((authority, path)) = remote::split_uri(uri) else {
        return Err(config_err(
            format!("{at}.uri"),
            format!("{uri:?} is not an absolute http(s) URI"),
        ));
    };
    if !(1..=86_400 * 7).contains(&r.cache_duration_seconds) {
        return Err(config_err(
            format!("{at}.cache_duration_seconds"),
            "must be between 1 and 604800",
        ));
    }
    if !(100..=60_000).contains(&r.timeout_ms) {
        return Err(config_err(
            format!("{at}.timeout_ms"),
            "must be between 100 and 60000",
        ));
    }
    if r.jitter_percent > 50 {
        return Err(config_err(
            format!("{at}.jitter_percent"),
            "must be at most 50",
        ));
    }
    if r.refetch_unknown_kid_min_interval_seconds > 86_400 {
        return Err(config_err(
            format!("{at}.refetch_unknown_kid_min_interval_seconds"),
            "must be at most 86400",
        ));
    }
    if !(1024..=4 * 1024 * 1024).contains(&r.max_body_bytes) {
        return Err(config_err(
            format!("{at}.max_body_bytes"),
            "must be between 1024 and 4194304",
        ));
    }
    Ok(RemoteJwks {
        cluster: r.cluster,
        authority,
        path,
        discovery: r.discovery,
        cache_duration_seconds: r.cache_duration_seconds,
        timeout_ms: r.timeout_ms,
        jitter_percent: r.jitter_percent,
        refetch_min_interval_seconds: r.refetch_unknown_kid_min_interval_seconds,
        max_body_bytes: r.max_body_bytes,
    })
}
