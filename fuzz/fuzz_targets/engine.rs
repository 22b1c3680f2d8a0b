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
use tokenbind_core::extract;
use tokenbind_core::{Config, Engine, MockHost, Mode, Outcome, Reason};
use tokenbind_fuzz::{engine_config as config, engine_input, keys};

fuzz_target!(|data: &[u8]| {
    let (host, config_n, now) = engine_input(data);
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
            assert_eq!(
                second.outcome,
                Outcome::Allow,
                "the cache changed the answer"
            );
        }
    }
});

fn check(d: &tokenbind_core::Decision, host: &MockHost, config: &Config, now: u64) {
    use tokenbind_core::Host as _;
    match &d.outcome {
        Outcome::AwaitKeys { .. } => panic!("a final decision (Engine::decide) waited for keys"),
        Outcome::Exempt => {
            assert!(config.is_exempt(
                host.request_header(":method").as_deref(),
                &host.request_header(":path").unwrap_or_default()
            ));
        }
        Outcome::Allow => {
            let auth = host
                .request_header("authorization")
                .expect("allowed without Authorization");
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
                assert_eq!(
                    proofs.len(),
                    1,
                    "DPoP-bound token allowed without one proof"
                );
                assert!(
                    keys().signed_by_any(&proofs[0]),
                    "allowed an unsigned DPoP proof"
                );
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
