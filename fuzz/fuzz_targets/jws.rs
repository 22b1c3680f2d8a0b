//! The compact JWS and its claims: `jwt::verify` against the fixed key set at a fixed clock.
//! Invariants: a verified token was signed by one of the fixed keys (checked directly), its
//! facts agree with the configuration, and a denial's reason is one of `Reason::ALL`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::rc::Rc;
use tokenbind_core::jwk::KeySet;
use tokenbind_core::{jwt, Crypto, Reason};
use tokenbind_fuzz::{config, keys, token_from_input, NOW};

fuzz_target!(|data: &[u8]| {
    let Some(token) = token_from_input(data) else {
        return;
    };
    let config = config();
    let key_sets: Vec<Option<Rc<KeySet>>> = config
        .providers
        .iter()
        .map(|p| p.keys.static_keys().cloned().map(Rc::new))
        .collect();
    let crypto = Crypto::wasm();
    // At the fixed clock, and for a token that verifies also at the edges of the clock: the
    // time arithmetic must never overflow.
    let at_now = jwt::verify(&token, &config, &key_sets, &crypto, NOW).is_ok();
    let clocks: &[u64] = if at_now { &[NOW, 0, u64::MAX] } else { &[NOW] };
    for &now in clocks {
        match jwt::verify(&token, &config, &key_sets, &crypto, now) {
            Ok(facts) => {
                assert!(
                    keys().signed_by_any(&token),
                    "verify accepted a token no fixed key signed"
                );
                assert_eq!(facts.provider, 0);
                assert_eq!(facts.issuer, config.providers[0].issuer);
                assert!(now < facts.valid_until, "accepted at or after valid_until");
                let ks = key_sets[0].as_ref().unwrap();
                assert!(ks.contains(&facts.key), "verified by a key not in the set");
            }
            Err(e) => {
                assert!(Reason::ALL.contains(&e.denial.reason));
                assert!(!e.denial.detail.is_empty());
                assert!(e.provider.is_none_or(|p| p < config.providers.len()));
            }
        }
    }
});
