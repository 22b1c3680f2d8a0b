//! Every crafted bad-token kind x every algorithm, from the legitimate
//! client's own mTLS identity (so only token validation can fail), against a
//! dedicated Envoy: each gets 401 with its own reason and exactly its own
//! denial counter moves.

use tokenbind_integration::assertions::assert_denied;
use tokenbind_integration::tokens::{Alg, BadToken};
use tokenbind_integration::{Stack, AUDIENCE, CLIENT_ID};

#[test]
fn every_bad_token_kind_is_denied_with_its_reason_for_both_algorithms() {
    let s = Stack::with_filter(|_| {});
    let claims = s.issuer.claims(CLIENT_ID, AUDIENCE);
    let mut failures = Vec::new();
    for bad in BadToken::ALL {
        for alg in Alg::ALL {
            let token = s.issuer.craft(bad, alg, &claims);
            let before = s.envoy.snapshot();
            let r = s.get(&s.pki.client, "/api", Some(&token));
            let context = format!("{bad:?} / {}", alg.name());
            let outcome = std::panic::catch_unwind(|| assert_denied(&r, bad.reason(), &context));
            if outcome.is_err() {
                failures.push(format!(
                    "{context}: expected 401 {}, got {} {}",
                    bad.reason(),
                    r.status,
                    r.body_str()
                ));
                continue;
            }
            let d = s.envoy.snapshot().since(&before);
            let expected = format!("tokenbind.denied.{}", bad.reason());
            let others: Vec<_> = d
                .changed()
                .into_iter()
                .filter(|(k, _)| k.starts_with("tokenbind.denied.") && *k != expected)
                .collect();
            if d.get(&expected) != 1 || !others.is_empty() || d.get("tokenbind.allowed") != 0 {
                failures.push(format!("{context}: counter deltas {d}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
