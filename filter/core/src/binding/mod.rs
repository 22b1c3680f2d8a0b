//! Is the verified token bound to the caller that presents it? Runs on every request,
//! cache hit or not: the peer is exactly what changes when a token is stolen.
//!
//! One module per binding kind, each deciding from the same [`Inputs`]:
//! - [`x5t`]: `cnf.x5t#S256`, the client certificate's thumbprint (RFC 8705 §3.1).
//! - [`spiffe`]: the token's SPIFFE ID is the peer's X.509-SVID ID.
//! - [`dpop`]: `cnf.jkt`, a DPoP proof from the bound key (RFC 9449, via [`crate::dpop`]).
//!
//! A new kind is a module here, an arm of [`BindingKind`] (listed in [`BindingKind::ALL`]), and
//! its configuration in [`crate::config`].

pub mod dpop;
pub mod spiffe;
pub mod x5t;

use crate::config::Config;
use crate::crypto::Crypto;
use crate::dpop::{ProofKeyCache, Refusal};
use crate::extract::Scheme;
use crate::host::Host;
use crate::jwt::TokenFacts;
use crate::peer::Peer;
use crate::reason::{Denial, Reason};
use crate::replay::ReplayStore;
use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use subtle::ConstantTimeEq;

/// A way of binding a token to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindingKind {
    X5tS256,
    Spiffe,
    Dpop,
}

impl BindingKind {
    /// Every kind, in the order they are checked (and named in [`Bindings::kind`]).
    pub const ALL: [BindingKind; 3] =
        [BindingKind::X5tS256, BindingKind::Spiffe, BindingKind::Dpop];

    /// The label in logs, filter state and [`Bindings::kind`].
    pub const fn as_str(self) -> &'static str {
        match self {
            BindingKind::X5tS256 => "x5t#S256",
            BindingKind::Spiffe => "spiffe",
            BindingKind::Dpop => "dpop",
        }
    }

    /// The name configuration uses for this kind.
    pub const fn config_name(self) -> &'static str {
        match self {
            BindingKind::X5tS256 => "x5t",
            BindingKind::Spiffe => "spiffe",
            BindingKind::Dpop => "dpop",
        }
    }

    /// The kind whose [`BindingKind::config_name`] is `name`.
    pub fn from_config_name(name: &str) -> Option<BindingKind> {
        BindingKind::ALL
            .into_iter()
            .find(|k| k.config_name() == name)
    }

    /// Whether this binding applies to the request, and if so whether it holds.
    pub fn check(self, inputs: &Inputs<'_>) -> Result<Verdict, Refusal> {
        match self {
            BindingKind::X5tS256 => x5t::check(inputs).map_err(Refusal::from),
            BindingKind::Spiffe => spiffe::check(inputs).map_err(Refusal::from),
            BindingKind::Dpop => dpop::check(inputs),
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for BindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which bindings a token passed: a set of [`BindingKind`]. Several can apply to one token;
/// all must pass.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Bindings(u8);

impl Bindings {
    pub fn insert(&mut self, kind: BindingKind) {
        self.0 |= kind.bit();
    }

    pub fn contains(self, kind: BindingKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// Whether any binding passed.
    pub fn any(self) -> bool {
        self.0 != 0
    }

    /// The kinds in the set, in [`BindingKind::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = BindingKind> {
        BindingKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }

    /// A short label for logs and metadata: `x5t#S256`, `spiffe`, `dpop`, joined with `+`
    /// (in [`BindingKind::ALL`] order) when several passed, or `none`. Allocates only for
    /// several.
    pub fn kind(&self) -> Cow<'static, str> {
        let mut kinds = self.iter();
        match (kinds.next(), kinds.next()) {
            (None, _) => Cow::Borrowed("none"),
            (Some(one), None) => Cow::Borrowed(one.as_str()),
            (Some(_), Some(_)) => {
                let labels: Vec<&str> = self.iter().map(BindingKind::as_str).collect();
                Cow::Owned(labels.join("+"))
            }
        }
    }
}

impl FromIterator<BindingKind> for Bindings {
    fn from_iter<I: IntoIterator<Item = BindingKind>>(kinds: I) -> Self {
        let mut set = Bindings::default();
        for kind in kinds {
            set.insert(kind);
        }
        set
    }
}

impl fmt::Debug for Bindings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// The per-VM and per-sidecar state DPoP proofs are checked with; the engine owns it.
#[derive(Debug, Clone, Copy)]
pub struct DpopState<'a> {
    /// Parsed proof keys by thumbprint.
    pub proof_keys: &'a RefCell<ProofKeyCache>,
    /// The shared replay store's sizing (its data is the host's shared data).
    pub replay: &'a ReplayStore,
    pub crypto: &'a Crypto,
}

/// Everything a binding check may read. Host calls happen only for the bindings that apply.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    /// The verified token's facts.
    pub facts: &'a TokenFacts,
    pub config: &'a Config,
    /// The caller: the mTLS peer, or the client a trusted forwarder described.
    pub peer: &'a Peer,
    /// The `Authorization` scheme the token came with.
    pub scheme: Scheme,
    /// The access token exactly as presented.
    pub token: &'a str,
    /// `:path`, as the engine read it.
    pub path: &'a str,
    pub host: &'a dyn Host,
    /// Unix seconds.
    pub now: u64,
    pub dpop: DpopState<'a>,
}

/// What one binding kind found, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Neither the token nor the configuration asks for this binding.
    NotApplicable,
    Passed,
}

/// The result of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The bindings that passed, or the first failure.
    pub result: Result<Bindings, Denial>,
    /// A fresh DPoP nonce to send with the `use_dpop_nonce` challenge, when the failure asks
    /// the client for one.
    pub dpop_nonce: Option<String>,
}

/// Runs every kind in [`BindingKind::ALL`] order (certificate thumbprint, SPIFFE ID, DPoP),
/// then refuses unknown confirmation methods, then applies `require_binding`. The first
/// failure is the result.
pub fn check(inputs: &Inputs<'_>) -> Checked {
    match passed(inputs) {
        Ok(bindings) => Checked {
            result: Ok(bindings),
            dpop_nonce: None,
        },
        Err(refusal) => Checked {
            result: Err(refusal.denial),
            dpop_nonce: refusal.nonce,
        },
    }
}

fn passed(inputs: &Inputs<'_>) -> Result<Bindings, Refusal> {
    let mut passed = Bindings::default();
    for kind in BindingKind::ALL {
        match kind.check(inputs)? {
            Verdict::Passed => passed.insert(kind),
            Verdict::NotApplicable => {}
        }
    }
    if inputs.facts.cnf.unsupported.is_some() {
        return Err(Denial::new(
            Reason::UnsupportedBinding,
            "cnf has a confirmation method this filter does not support",
        )
        .into());
    }
    if inputs.config.require_binding && !passed.any() {
        return Err(Denial::new(
            Reason::UnboundToken,
            "no binding applies and require_binding is true",
        )
        .into());
    }
    Ok(passed)
}

/// Constant-time equality, for values an attacker may probe byte by byte.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// Every subset of [`BindingKind::ALL`], so a new kind is covered without editing this test.
    fn subsets() -> Vec<Vec<BindingKind>> {
        (0u32..1 << BindingKind::ALL.len())
            .map(|mask| {
                BindingKind::ALL
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, k)| k)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn kind_labels_every_subset_in_check_order() {
        for kinds in subsets() {
            let set: Bindings = kinds.iter().copied().collect();
            let want = if kinds.is_empty() {
                "none".to_owned()
            } else {
                kinds
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join("+")
            };
            assert_eq!(set.kind(), want);
            assert_eq!(set.any(), !kinds.is_empty());
            assert_eq!(set.iter().collect::<Vec<_>>(), kinds);
        }
        // Today's labels, exactly.
        let all: Bindings = BindingKind::ALL.into_iter().collect();
        assert_eq!(all.kind(), "x5t#S256+spiffe+dpop");
    }

    #[test]
    fn config_names_round_trip_and_are_unique() {
        for k in BindingKind::ALL {
            assert_eq!(BindingKind::from_config_name(k.config_name()), Some(k));
        }
        assert_eq!(BindingKind::from_config_name("x5t#S256"), None);
        let mut names: Vec<_> = BindingKind::ALL.iter().map(|k| k.config_name()).collect();
        names.dedup();
        assert_eq!(names.len(), BindingKind::ALL.len());
    }
}
