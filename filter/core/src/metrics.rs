//! The filter's counters: a fixed, declared list of names, so the adapter can define them
//! all once per VM and index them densely on the request path.

use crate::reason::Reason;

/// One counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Allowed,
    Exempt,
    CacheHit,
    CacheMiss,
    JwksFetchSuccess,
    JwksFetchFailed,
    JwksRefetchUnknownKid,
    XfccUsed,
    XfccUntrusted,
    XfccInvalid,
    /// A host signature check that could not answer and fell back to pure Rust.
    CryptoHostError,
    /// A request that could not be held for keys because the VM's wait list was full.
    JwksWaitListFull,
    Denied(Reason),
    WouldDeny(Reason),
}

const FIXED: usize = 12;
const REASONS: usize = Reason::ALL.len();
/// Number of counters.
pub const COUNT: usize = FIXED + 2 * REASONS;

impl Counter {
    /// Every counter, in index order.
    pub fn all() -> impl Iterator<Item = Counter> {
        [
            Counter::Allowed,
            Counter::Exempt,
            Counter::CacheHit,
            Counter::CacheMiss,
            Counter::JwksFetchSuccess,
            Counter::JwksFetchFailed,
            Counter::JwksRefetchUnknownKid,
            Counter::XfccUsed,
            Counter::XfccUntrusted,
            Counter::XfccInvalid,
            Counter::CryptoHostError,
            Counter::JwksWaitListFull,
        ]
        .into_iter()
        .chain(Reason::ALL.into_iter().map(Counter::Denied))
        .chain(Reason::ALL.into_iter().map(Counter::WouldDeny))
    }

    pub const fn index(self) -> usize {
        match self {
            Counter::Allowed => 0,
            Counter::Exempt => 1,
            Counter::CacheHit => 2,
            Counter::CacheMiss => 3,
            Counter::JwksFetchSuccess => 4,
            Counter::JwksFetchFailed => 5,
            Counter::JwksRefetchUnknownKid => 6,
            Counter::XfccUsed => 7,
            Counter::XfccUntrusted => 8,
            Counter::XfccInvalid => 9,
            Counter::CryptoHostError => 10,
            Counter::JwksWaitListFull => 11,
            Counter::Denied(r) => FIXED + r.index(),
            Counter::WouldDeny(r) => FIXED + REASONS + r.index(),
        }
    }

    /// The Envoy stat name.
    pub fn name(self) -> String {
        match self {
            Counter::Allowed => "tokenbind.allowed".to_owned(),
            Counter::Exempt => "tokenbind.exempt".to_owned(),
            Counter::CacheHit => "tokenbind.cache.hit".to_owned(),
            Counter::CacheMiss => "tokenbind.cache.miss".to_owned(),
            Counter::JwksFetchSuccess => "tokenbind.jwks.fetch_success".to_owned(),
            Counter::JwksFetchFailed => "tokenbind.jwks.fetch_failed".to_owned(),
            Counter::JwksRefetchUnknownKid => "tokenbind.jwks.refetch_unknown_kid".to_owned(),
            Counter::XfccUsed => "tokenbind.xfcc.used".to_owned(),
            Counter::XfccUntrusted => "tokenbind.xfcc.untrusted".to_owned(),
            Counter::XfccInvalid => "tokenbind.xfcc.invalid".to_owned(),
            Counter::CryptoHostError => "tokenbind.crypto.host_error".to_owned(),
            Counter::JwksWaitListFull => "tokenbind.jwks.wait_list_full".to_owned(),
            Counter::Denied(r) => format!("tokenbind.denied.{}", r.as_str()),
            Counter::WouldDeny(r) => format!("tokenbind.monitor.would_deny.{}", r.as_str()),
        }
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
