//! tokenbind-core: the decision logic of the tokenbind Envoy filter, with no proxy-wasm types.
//!
//! Modules are named after what they decide:
//! - [`extract`]: where the token is (`Authorization`).
//! - [`jwt`] and [`jwk`]: is the token valid (signature, issuer, time, audience).
//! - [`binding`]: is it bound to this caller ([`peer`], [`spiffe`], RFC 8705 thumbprint).
//! - [`cache`]: the verified-token cache.
//! - [`engine`]: one request, one [`engine::Decision`].
//! - [`reason`], [`response`], [`metrics`]: one enum of denial reasons feeding replies,
//!   counters and logs.

pub mod binding;
pub mod cache;
pub mod config;
pub mod engine;
pub mod extract;
pub mod jwk;
pub mod jwt;
pub mod metrics;
pub mod peer;
pub mod reason;
pub mod response;
pub mod spiffe;

pub use config::{Config, ConfigError, Mode};
pub use engine::{CacheUse, Decision, Engine, Outcome, Request};
pub use peer::Peer;
pub use reason::{Denial, Reason};
