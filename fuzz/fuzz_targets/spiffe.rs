//! SPIFFE IDs (SPIFFE-ID.md §2): `SpiffeId::parse` and `spiffe::validate_trust_domain`.
//! Invariants: a parsed ID is the input exactly, re-parses to itself, and its trust domain is
//! a valid trust domain and a prefix after `spiffe://`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokenbind_core::spiffe::{validate_trust_domain, SpiffeId};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match SpiffeId::parse(s) {
        Ok(id) => {
            assert_eq!(id.as_str(), s);
            assert_eq!(id.to_string(), s);
            assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id));
            let td = id.trust_domain();
            assert_eq!(validate_trust_domain(td), Ok(()));
            assert!(s.starts_with(&format!("spiffe://{td}")));
            let rest = &s["spiffe://".len() + td.len()..];
            assert!(rest.is_empty() || rest.starts_with('/'));
            assert!(s.len() <= 2048);
        }
        Err(e) => assert!(!e.message().is_empty()),
    }
    let _ = validate_trust_domain(s);
});
