//! The filter's counters: a fixed, declared list of names, so the adapter can define them
//! all once per VM and index them densely on the request path.

use crate::reason::Reason;

/// Declares the fixed counters once: variant and stat name. The enum, [`FIXED`], the dense
/// indices and the names derive from this list and from [`Reason::ALL`], so no counter can be
/// left out of a table or share another's index.
macro_rules! counters {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// One counter.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Counter {
            $($(#[$doc])* $variant,)*
            Denied(Reason),
            WouldDeny(Reason),
        }

        /// The fixed counters' positions: a field-less twin of their variants.
        #[derive(Clone, Copy)]
        #[repr(usize)]
        enum Slot {
            $($variant,)*
        }

        /// The fixed counters, in index order.
        const FIXED_COUNTERS: &[Counter] = &[$(Counter::$variant,)*];

        impl Counter {
            pub const fn index(self) -> usize {
                match self {
                    $(Counter::$variant => Slot::$variant as usize,)*
                    Counter::Denied(r) => FIXED + r.index(),
                    Counter::WouldDeny(r) => FIXED + REASONS + r.index(),
                }
            }

            /// The Envoy stat name.
            pub fn name(self) -> String {
                match self {
                    $(Counter::$variant => $name.to_owned(),)*
                    Counter::Denied(r) => format!("tokenbind.denied.{}", r.as_str()),
                    Counter::WouldDeny(r) => format!("tokenbind.monitor.would_deny.{}", r.as_str()),
                }
            }
        }
    };
}

counters! {
    Allowed => "tokenbind.allowed",
    Exempt => "tokenbind.exempt",
    CacheHit => "tokenbind.cache.hit",
    CacheMiss => "tokenbind.cache.miss",
    JwksFetchSuccess => "tokenbind.jwks.fetch_success",
    JwksFetchFailed => "tokenbind.jwks.fetch_failed",
    JwksRefetchUnknownKid => "tokenbind.jwks.refetch_unknown_kid",
    XfccUsed => "tokenbind.xfcc.used",
    XfccUntrusted => "tokenbind.xfcc.untrusted",
    XfccInvalid => "tokenbind.xfcc.invalid",
    /// A host signature check that could not answer and fell back to pure Rust.
    CryptoHostError => "tokenbind.crypto.host_error",
    /// A request that could not be held for keys because the VM's wait list was full.
    JwksWaitListFull => "tokenbind.jwks.wait_list_full",
}

const FIXED: usize = FIXED_COUNTERS.len();
const REASONS: usize = Reason::ALL.len();
/// Number of counters.
pub const COUNT: usize = FIXED + 2 * REASONS;

impl Counter {
    /// Every counter, in index order.
    pub fn all() -> impl Iterator<Item = Counter> {
        FIXED_COUNTERS
            .iter()
            .copied()
            .chain(Reason::ALL.into_iter().map(Counter::Denied))
            .chain(Reason::ALL.into_iter().map(Counter::WouldDeny))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_names_unique() {
        let all: Vec<Counter> = Counter::all().collect();
        assert_eq!(all.len(), COUNT);
        for (i, c) in all.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
        let mut names: Vec<String> = all.iter().map(|c| c.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), COUNT);
        assert!(names.contains(&"tokenbind.monitor.would_deny.spiffe_mismatch".to_owned()));
    }
}
