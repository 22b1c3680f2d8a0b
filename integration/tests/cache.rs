//! The verification cache: hits and misses are counted, and a cache hit
//! never skips the per-request binding check. A dedicated Envoy (one worker,
//! so one VM and one cache) and a single sequential test keep counts exact.

use tokenbind_integration::assertions::{assert_allowed, assert_denied};
use tokenbind_integration::envoy::Snapshot;
use tokenbind_integration::tokens::{corrupt_signature, Alg};
use tokenbind_integration::{Stack, AUDIENCE, CLIENT_ID};

#[track_caller]
fn assert_cache(s: &Stack, base: &Snapshot, miss: u64, hit: u64, step: &str) {
    let d = s.envoy.snapshot().since(base);
    assert_eq!(
        (d.get("tokenbind.cache.miss"), d.get("tokenbind.cache.hit")),
        (miss, hit),
        "{step}: expected (cache.miss, cache.hit) = ({miss}, {hit}); counter deltas: {d}"
    );
}

#[test]
fn cache_counts_and_binding_is_checked_on_every_request() {
    let s = Stack::with_filter(|_| {});
    let base = s.envoy.snapshot();
    let token = s
        .issuer
        .sign(Alg::Es256, &s.issuer.claims(CLIENT_ID, AUDIENCE));

    let r = s.get(&s.pki.client, "/api", Some(&token));
    assert_allowed(&r, "first use");
    assert_cache(&s, &base, 1, 0, "after first use");

    let r = s.get(&s.pki.client, "/api", Some(&token));
    assert_allowed(&r, "second use");
    assert_cache(&s, &base, 1, 1, "after second use");

    // The attacker replays the now-cached token: the cache may skip the
    // signature check, never the binding.
    let r = s.get(&s.pki.attacker, "/api", Some(&token));
    assert_denied(&r, "spiffe_mismatch", "cached token replayed by attacker");
    assert_cache(&s, &base, 1, 2, "after attacker replay of the cached token");

    // The legitimate client is still fine afterwards (the denial did not
    // poison the entry).
    let r = s.get(&s.pki.client, "/api", Some(&token));
    assert_allowed(&r, "client after the replay");
    assert_cache(&s, &base, 1, 3, "after client use following the replay");

    // Same header and payload with a corrupted signature must not be served
    // from the cache entry of the genuine token.
    let forged = corrupt_signature(&token);
    let r = s.get(&s.pki.client, "/api", Some(&forged));
    assert_denied(&r, "bad_signature", "cached token with corrupted signature");

    // A different token is a new miss.
    let other = s
        .issuer
        .sign(Alg::EdDsa, &s.issuer.claims(CLIENT_ID, AUDIENCE));
    let r = s.get(&s.pki.client, "/api", Some(&other));
    assert_allowed(&r, "second token");
    let d = s.envoy.snapshot().since(&base);
    assert_eq!(d.get("tokenbind.cache.hit"), 3, "counter deltas: {d}");
    assert!(
        d.get("tokenbind.cache.miss") >= 2,
        "a new token must be a miss; counter deltas: {d}"
    );
    assert_eq!(d.get("tokenbind.allowed"), 4, "counter deltas: {d}");
    assert_eq!(d.get("tokenbind.denied.spiffe_mismatch"), 1, "{d}");
    assert_eq!(d.get("tokenbind.denied.bad_signature"), 1, "{d}");
}
