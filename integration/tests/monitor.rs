//! Monitor mode: the filter never blocks but counts what it would deny.
//! One dedicated Envoy, one test, so counter values are exact.

use tokenbind_integration::assertions::assert_allowed;
use tokenbind_integration::tokens::Alg;
use tokenbind_integration::{Stack, AUDIENCE, CLIENT_ID};

#[test]
fn monitor_mode_lets_everything_through_and_counts_would_deny() {
    let s = Stack::with_filter(|cfg| cfg["mode"] = "monitor".into());
    let token = s
        .issuer
        .sign(Alg::Es256, &s.issuer.claims(CLIENT_ID, AUDIENCE));
    let before = s.envoy.snapshot();

    // Stolen token replayed by the attacker: passes, but is counted.
    let r = s.get(&s.pki.attacker, "/api", Some(&token));
    assert_allowed(&r, "monitor: attacker replay");
    assert!(
        r.header("www-authenticate").is_none(),
        "monitor mode must not challenge:\n{r}"
    );
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.monitor.would_deny.spiffe_mismatch"),
        1,
        "counter deltas: {d}"
    );
    assert_eq!(
        d.get("tokenbind.denied.spiffe_mismatch"),
        0,
        "monitor mode must not count a denial; deltas: {d}"
    );
    // Exact Envoy stat names, read straight from /stats.
    assert_eq!(
        s.envoy
            .stat("wasmcustom.tokenbind.monitor.would_deny.spiffe_mismatch"),
        1,
        "stats:\n{}",
        s.envoy.stats_matching("tokenbind")
    );

    // No token at all: passes, counted as would_deny.missing_token.
    let r = s.get(&s.pki.client, "/api", None);
    assert_allowed(&r, "monitor: no token");
    // Expired: passes, counted.
    let expired = s
        .issuer
        .sign(Alg::EdDsa, &s.issuer.claims(CLIENT_ID, AUDIENCE).expired());
    let r = s.get(&s.pki.client, "/api", Some(&expired));
    assert_allowed(&r, "monitor: expired");
    // The legitimate call: allowed, not a would-deny.
    let r = s.get(&s.pki.client, "/api", Some(&token));
    assert_allowed(&r, "monitor: legitimate");

    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.monitor.would_deny.missing_token"),
        1,
        "{d}"
    );
    assert_eq!(d.get("tokenbind.monitor.would_deny.expired"), 1, "{d}");
    assert_eq!(
        d.get("tokenbind.monitor.would_deny.spiffe_mismatch"),
        1,
        "{d}"
    );
    assert_eq!(d.get("tokenbind.allowed"), 1, "{d}");
    let denied: Vec<_> = d
        .changed()
        .into_iter()
        .filter(|(k, _)| k.starts_with("tokenbind.denied."))
        .collect();
    assert!(
        denied.is_empty(),
        "monitor mode counted denials: {denied:?}"
    );
}
