//! Every crafted bad-token kind x every algorithm, from the legitimate
//! client's own mTLS identity (so only token validation can fail), against a
//! dedicated Envoy: each gets 401 with its own reason and exactly its own
//! denial counter moves.

use serde_json::json;
use tokenbind_integration::assertions::{assert_allowed, assert_denied, assert_no_token_in_log};
use tokenbind_integration::tokens::{Alg, BadToken};
use tokenbind_integration::{Stack, AUDIENCE, CLIENT_ID, UPSTREAM_BODY};

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

/// Registered claims of the wrong JSON type (RFC 7519 §4.1.2-3), signed properly by the real
/// issuer and sent from the client's own mTLS identity: `"sub": 42` is not "no sub" (which
/// would be `invalid_spiffe_id`), and an `aud` array is not matched on its string members.
/// Each is a 401 `malformed_token`, never reaches the upstream route, moves only its own
/// counter, and its denial log names the claim.
#[test]
fn registered_claims_of_the_wrong_type_are_malformed_tokens() {
    let s = Stack::with_filter(|_| {});
    let claims = s.issuer.claims(CLIENT_ID, AUDIENCE);
    let cases = [
        (
            "sub: 42",
            claims.clone().with("sub", 42),
            "sub claim is not a string",
        ),
        (
            "aud: [server, 7]",
            claims.clone().with("aud", json!([AUDIENCE, 7])),
            "aud array has a member that is not a string",
        ),
    ];
    for alg in Alg::ALL {
        // The same claims with the right types pass: only the type is wrong below.
        let good = s
            .issuer
            .sign(alg, &claims.clone().with("aud", json!([AUDIENCE])));
        assert_allowed(&s.get(&s.pki.client, "/api", Some(&good)), alg.name());
        for (name, bad, detail) in &cases {
            let context = format!("{name} / {}", alg.name());
            let token = s.issuer.sign(alg, bad);
            let before = s.envoy.snapshot();
            let r = s.get(&s.pki.client, "/api", Some(&token));
            assert_denied(&r, "malformed_token", &context);
            assert_ne!(
                r.body_str(),
                UPSTREAM_BODY,
                "{context}: reached the upstream"
            );
            let d = s.envoy.snapshot().since(&before);
            assert_eq!(
                d.get("tokenbind.denied.malformed_token"),
                1,
                "{context}: {d}"
            );
            assert_eq!(d.get("tokenbind.allowed"), 0, "{context}: {d}");
            let others: Vec<_> = d
                .changed()
                .into_iter()
                .filter(|(k, _)| {
                    k.starts_with("tokenbind.denied.") && k != "tokenbind.denied.malformed_token"
                })
                .collect();
            assert!(others.is_empty(), "{context}: other denials moved: {d}");
            let log = s.envoy.log();
            let logged = format!("reason=malformed_token detail=\"{detail}\"");
            assert!(
                log.lines()
                    .any(|l| l.contains("tokenbind: denied:") && l.contains(&logged)),
                "{context}: no denial log naming the claim ({detail:?}):\n{log}"
            );
            assert_no_token_in_log(&log, &token, &context);
        }
    }
}
