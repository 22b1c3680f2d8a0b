//! The whole engine deciding on arbitrary headers and peers. The input is text, one item a
//! line: `name: value` adds a request header (`:path: /x` replaces a pseudo-header), and
//! control lines set the rest of the fake host:
//! `@config=N` (0: enforce with SPIFFE, a trusted forwarder and DPoP; 1: monitor, no binding
//! required, DPoP nonces required, `x-forwarded-proto` trusted; 2: enforce without SPIFFE),
//! `@now=±N` (seconds from the fixed clock), `@mtls=0|1`, `@uri=…`, `@sha256=…` (peer
//! attributes as Envoy hands them over), `@tls=0|1`, `@nonce-key` (a nonce key in shared data).
//!
//! Invariants: the engine never allows a request whose token no fixed key signed (checked
//! directly, not through the engine's key parsing), nor a DPoP-bound token without exactly one
//! proof a fixed key signed; a denial's reason is in `Reason::ALL` and has a reply in enforce
//! mode; a second identical request gets the same answer from the cache, except that a DPoP
//! proof cannot be used twice.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use tokenbind_core::extract;
use tokenbind_core::{Config, Engine, MockHost, Mode, Outcome, Peer, Reason};
use tokenbind_fuzz::{config_json, keys, merge, NOW};

fn config(n: u8) -> Config {
    let mut cfg = config_json();
    match n % 3 {
        1 => merge(
            &mut cfg,
            json!({"mode": "monitor", "require_binding": false, "spiffe": null,
                   "dpop": {"require_nonce": true, "trust_forwarded_proto": true}}),
        ),
        2 => merge(&mut cfg, json!({"spiffe": null})),
        _ => {}
    }
    Config::from_json(cfg.to_string().as_bytes(), &|_| Err("no files".into())).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut host = MockHost::new();
    let (mut mtls, mut uri, mut sha) = (None::<Vec<u8>>, None::<String>, None::<String>);
    let (mut config_n, mut now, mut nonce_key) = (0u8, NOW, false);
    for line in text.split('\n') {
        if let Some(control) = line.strip_prefix('@') {
            let (k, v) = control.split_once('=').unwrap_or((control, ""));
            match k {
                "config" => config_n = v.trim().parse().unwrap_or(0),
                "now" => {
                    let off: i64 = v.trim().parse().unwrap_or(0);
                    now = NOW.saturating_add_signed(off);
                }
                "mtls" => mtls = Some(vec![u8::from(v.trim() == "1")]),
                "uri" => uri = Some(v.to_owned()),
                "sha256" => sha = Some(v.to_owned()),
                "tls" => host = host.with_tls(v.trim() == "1"),
                "nonce-key" => nonce_key = true,
                _ => {}
            }
        } else if let Some(i) = line.get(1..).and_then(|l| l.find(':')) {
            let (name, value) = line.split_at(i + 1);
            let value = value[1..].trim_start_matches(' ');
            host = host.with_header(name, value);
        }
    }
    host.set_peer(Peer::from_attributes(
        mtls.as_deref(),
        uri.as_deref().map(str::as_bytes),
        sha.as_deref().map(str::as_bytes),
    ));
    if nonce_key {
        tokenbind_core::nonce::ensure_key(&host.shared, &[42u8; 32]);
    }
    let engine = Engine::new(config(config_n));
    let config = engine.config();

    let first = engine.decide(&host, now);
    check(&first, &host, config, now);
    let second = engine.decide(&host, now);
    check(&second, &host, config, now);
    if first.outcome == Outcome::Allow {
        let dpop_bound = first.facts.as_ref().is_some_and(|f| f.cnf.jkt.is_some());
        if dpop_bound {
            assert!(
                matches!(second.outcome, Outcome::Deny(d) if d.reason == Reason::DpopReplayed),
                "a DPoP proof was accepted twice: {:?}",
                second.outcome
            );
        } else {
            assert_eq!(second.outcome, Outcome::Allow, "the cache changed the answer");
        }
    }
});

fn check(d: &tokenbind_core::Decision, host: &MockHost, config: &Config, now: u64) {
    use tokenbind_core::Host as _;
    match &d.outcome {
        Outcome::Exempt => {
            assert!(config.is_exempt(&host.request_header(":path").unwrap_or_default()));
        }
        Outcome::Allow => {
            let auth = host.request_header("authorization").expect("allowed without Authorization");
            let cred = extract::credential(&[auth.as_str()], config.max_token_bytes)
                .expect("allowed without a credential");
            assert!(
                keys().signed_by_any(cred.token),
                "allowed a token whose signature no fixed key made"
            );
            let facts = d.facts.as_ref().expect("allowed without verified facts");
            assert!(now < facts.valid_until, "allowed an expired token");
            if facts.cnf.jkt.is_some() {
                let proofs = host.request_header_values("dpop");
                assert_eq!(proofs.len(), 1, "DPoP-bound token allowed without one proof");
                assert!(keys().signed_by_any(&proofs[0]), "allowed an unsigned DPoP proof");
            }
        }
        Outcome::Deny(denial) => {
            assert!(Reason::ALL.contains(&denial.reason));
            assert!(!denial.detail.is_empty());
            assert_eq!(d.reply(config).is_some(), config.mode == Mode::Enforce);
        }
    }
    let _ = d.counters(config.mode);
    let _ = d.verdict(config.mode);
    let _ = d.token_tag();
}
