//! tokenbind-core: the decision logic of the tokenbind Envoy filter, with no proxy-wasm types.
//!
//! Modules are named after what they decide:
//! - [`extract`]: where the token is (`Authorization`).
//! - [`jwt`] and [`jwk`]: is the token valid (signature, issuer, time, audience).
//! - [`crypto`]: who checks a signature (Envoy's BoringSSL or pure Rust), chosen at start-up.
//! - [`binding`]: is it bound to this caller ([`peer`], [`spiffe`], RFC 8705 thumbprint).
//! - [`svid`]: is the caller's certificate an X.509-SVID leaf.
//! - [`dpop`], [`replay`], [`nonce`], [`uri`]: RFC 9449 proof-of-possession.
//! - [`cache`]: the verified-token cache.
//! - [`expiring`]: the bounded, expiring map under every per-VM verdict cache.
//! - [`paths`]: which normalised path a request names, and which path entries it matches.
//! - [`fetcher`] and [`waiting`]: remote keys in a VM (what to fetch and install) and the
//!   requests held until they arrive; [`remote`] keeps one provider's schedule in shared data.
//! - [`engine`]: one request attempt, one [`engine::Decision`] (allow, deny, or await keys).
//! - [`effects`]: what a decision does (counters, filter state, log line, reply), as a value.
//! - [`reason`], [`response`], [`metrics`]: one enum of denial reasons feeding replies,
//!   counters and logs.

pub mod binding;
pub mod cache;
pub mod config;
pub mod crypto;
pub mod dpop;
pub mod effects;
pub mod engine;
pub mod expiring;
pub mod extract;
pub mod fetcher;
pub mod host;
pub mod json;
pub mod jwk;
pub mod jwt;
pub mod metrics;
pub mod nonce;
pub mod paths;
pub mod peer;
pub mod reason;
pub mod remote;
pub mod replay;
pub mod response;
pub mod spiffe;
pub mod svid;
pub mod uri;
pub mod waiting;
pub mod xfcc;

pub use config::{Config, ConfigError, Mode};
pub use crypto::{Crypto, CryptoMode};
pub use effects::Effects;
pub use engine::{Attempt, CacheUse, Decision, Engine, Outcome, Work, Xfcc};
pub use host::{FetchHost, Host, MockHost, SharedData, SharedError};
pub use peer::Peer;
pub use reason::{Denial, Reason};
