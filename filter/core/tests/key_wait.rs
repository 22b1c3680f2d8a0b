//! Waiting for remote keys, in the core: the engine holds a request whose provider has no keys
//! yet (or does not know its `kid` while a refetch is coming), dispatches fetches from its tick
//! through the mock host, and wakes the request when keys arrive or its deadline passes. These
//! are the behaviour tests of what the Wasm adapter used to decide; integration/tests/remote_jwks.rs
//! keeps the end-to-end cases through a real Envoy.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use serde_json::{json, Value};
use tokenbind_core::effects::{self, Level, Next};
use tokenbind_core::fetcher::KeyEvent;
use tokenbind_core::metrics::Counter;
use tokenbind_core::remote::FetchResponse;
use tokenbind_core::{Attempt, Config, Engine, MockHost, Outcome, Reason};

const CONTEXT: u32 = 7;

fn remote_engine(keys: &Keys, remote: Value) -> Engine {
    let mut settings = json!({"cluster": "issuer", "uri": "https://issuer.example/jwks.json",
                              "timeout_ms": 2000});
    merge(&mut settings, remote);
    let mut cfg = config_json(keys, json!({}));
    let provider = cfg["providers"][0].as_object_mut().unwrap();
    provider.remove("jwks");
    provider.insert("remote_jwks".into(), settings);
    let config = Config::from_json(cfg.to_string().as_bytes(), &|_| Err("no files".into()))
        .unwrap_or_else(|e| panic!("{e}"));
    Engine::new(config)
}

fn request(token: &str) -> MockHost {
    MockHost::new()
        .with_header("authorization", &format!("Bearer {token}"))
        .with_peer(client_peer())
}

/// A remote provider with `remote` settings, a request with a fresh ES256 token from the
/// client, and the clock (ms).
fn start(remote: Value) -> (Keys, Engine, MockHost, u64) {
    let keys = Keys::new();
    let engine = remote_engine(&keys, remote);
    let host = request(&token(&keys, Signer::ES256, json!({})));
    engine.prepare(&host, None);
    (keys, engine, host, now() * 1000)
}

fn held(at_ms: u64) -> Attempt {
    Attempt {
        now_ms: at_ms,
        hold_as: Some(CONTEXT),
    }
}

fn last(at_ms: u64) -> Attempt {
    Attempt {
        now_ms: at_ms,
        hold_as: None,
    }
}

fn reason(outcome: &Outcome) -> Option<Reason> {
    match outcome {
        Outcome::Deny(d) => Some(d.reason),
        _ => None,
    }
}

/// Answers the fetch dispatched last with `jwks`.
fn answer(engine: &Engine, host: &MockHost, jwks: &Value, at_ms: u64) -> tokenbind_core::Work {
    let (token, _) = host
        .dispatched
        .borrow()
        .last()
        .cloned()
        .expect("a fetch was dispatched");
    assert!(engine.fetch_body_limit(token).is_some());
    let body = jwks.to_string();
    engine
        .fetch_response(
            host,
            token,
            FetchResponse {
                status: Some(200),
                cache_control: None,
                body: Some(body.as_bytes()),
            },
            at_ms,
            0.5,
        )
        .expect("the token is a fetch in flight")
}

#[test]
fn a_request_before_the_first_keys_waits_and_is_allowed_when_they_arrive() {
    let (keys, engine, host, t0) = start(json!({}));

    let d = engine.attempt(&host, held(t0));
    assert_eq!(d.outcome, Outcome::AwaitKeys { provider: 0 });
    assert_eq!(engine.waiting(), 1);
    let fx = effects::of_decision(&d, engine.config());
    assert_eq!(fx.next, Next::Wait);
    assert!(fx.counters.is_empty() && fx.log.is_empty() && fx.reply.is_none());
    assert!(fx.filter_state.is_empty());

    // The tick dispatches the first fetch through the cluster; nobody wakes yet.
    let work = engine.tick(&host, t0 + 100, 0.5);
    assert!(work.wake.is_empty() && work.busy);
    let dispatched = host.dispatched.borrow().clone();
    assert_eq!(dispatched.len(), 1);
    assert_eq!(
        (
            dispatched[0].1.cluster.as_str(),
            dispatched[0].1.path.as_str()
        ),
        ("issuer", "/jwks.json")
    );
    // Unknown call tokens are not ours.
    assert!(engine.fetch_body_limit(999).is_none());

    let work = answer(&engine, &host, &keys.jwks(), t0 + 200);
    assert_eq!(work.wake, vec![CONTEXT]);
    assert!(!work.busy, "keys here, nothing waits");
    let fx = effects::of_key_events(&work.events, engine.config());
    assert_eq!(fx.counters, vec![Counter::JwksFetchSuccess]);
    assert_eq!(fx.gauges, vec![(0, 3)]);
    assert!(fx
        .log
        .iter()
        .any(|l| l.message == "tokenbind: provider mesh: installed 3 keys"));

    // The woken request's final attempt.
    let d = engine.attempt(&host, last(t0 + 200));
    assert_eq!(d.outcome, Outcome::Allow);
    assert_eq!(engine.waiting(), 0);
}

#[test]
fn a_held_request_is_decided_at_its_deadline() {
    let (_keys, engine, host, t0) = start(json!({}));
    assert!(matches!(
        engine.attempt(&host, held(t0)).outcome,
        Outcome::AwaitKeys { .. }
    ));
    assert!(engine.tick(&host, t0 + 1_999, 0.5).wake.is_empty());
    assert_eq!(engine.tick(&host, t0 + 2_000, 0.5).wake, vec![CONTEXT]);
    let d = engine.attempt(&host, last(t0 + 2_000));
    assert_eq!(reason(&d.outcome), Some(Reason::JwksUnavailable));
}

#[test]
fn a_forgotten_request_is_never_woken() {
    let (keys, engine, host, t0) = start(json!({}));
    engine.attempt(&host, held(t0));
    engine.tick(&host, t0, 0.5);
    engine.forget(CONTEXT);
    assert_eq!(engine.waiting(), 0);
    assert!(answer(&engine, &host, &keys.jwks(), t0 + 10)
        .wake
        .is_empty());
}

#[test]
fn a_final_attempt_never_waits() {
    let keys = Keys::new();
    let engine = remote_engine(&keys, json!({}));
    let host = request(&token(&keys, Signer::ES256, json!({})));
    engine.prepare(&host, None);
    let d = engine.attempt(&host, last(now() * 1000));
    assert_eq!(reason(&d.outcome), Some(Reason::JwksUnavailable));
    assert_eq!(engine.waiting(), 0);
    // A denial carries the peer for its log line.
    assert_eq!(d.peer.as_ref().and_then(|p| p.spiffe_id()), Some(CLIENT));
}

#[test]
fn an_unknown_kid_waits_for_one_refetch_then_the_rate_limit_answers_at_once() {
    let keys = Keys::new();
    let engine = remote_engine(&keys, json!({}));
    let token_es = token(&keys, Signer::ES256, json!({}));
    let host = request(&token_es);
    engine.prepare(&host, None);
    let t0 = now() * 1000;
    // The issuer publishes only its EdDSA and RSA keys at first.
    let mut without_es = keys.jwks();
    without_es["keys"].as_array_mut().unwrap().remove(0);
    engine.tick(&host, t0, 0.5);
    answer(&engine, &host, &without_es, t0 + 10);
    assert_eq!(host.dispatched.borrow().len(), 1);

    // The ES256 token's kid is unknown: one refetch is granted and the request waits for it.
    let d = engine.attempt(&host, held(t0 + 20));
    assert_eq!(d.outcome, Outcome::AwaitKeys { provider: 0 });
    assert_eq!(d.key_events, vec![KeyEvent::RefetchGranted { provider: 0 }]);
    let fx = effects::of_decision(&d, engine.config());
    assert_eq!(fx.counters, vec![Counter::JwksRefetchUnknownKid]);
    // Dispatched from the tick (the root context), not from the request.
    assert_eq!(host.dispatched.borrow().len(), 1);
    engine.tick(&host, t0 + 30, 0.5);
    assert_eq!(host.dispatched.borrow().len(), 2);
    // The issuer has not rotated yet: the refetch brings the same keys; the request is woken
    // and refused.
    let work = answer(&engine, &host, &without_es, t0 + 40);
    assert_eq!(work.wake, vec![CONTEXT]);
    let d = engine.attempt(&host, last(t0 + 40));
    assert_eq!(reason(&d.outcome), Some(Reason::UnknownKey));

    // The same again right after: the refetch interval (30 s) has not passed and nothing is
    // coming, so it is answered at once instead of waiting out the timeout.
    let d = engine.attempt(&host, held(t0 + 50));
    assert_eq!(
        reason(&d.outcome),
        Some(Reason::UnknownKey),
        "{:?}",
        d.outcome
    );
    assert!(d.key_events.is_empty());
    assert_eq!(engine.waiting(), 0);
    engine.tick(&host, t0 + 60, 0.5);
    assert_eq!(host.dispatched.borrow().len(), 2, "no refetch");

    // After the interval another refetch is granted, and this time the key is there.
    let later = t0 + 31_000;
    let d = engine.attempt(&host, held(later));
    assert_eq!(d.outcome, Outcome::AwaitKeys { provider: 0 });
    engine.tick(&host, later, 0.5);
    assert_eq!(
        answer(&engine, &host, &keys.jwks(), later + 10).wake,
        vec![CONTEXT]
    );
    assert_eq!(
        engine.attempt(&host, last(later + 10)).outcome,
        Outcome::Allow
    );
}

#[test]
fn keys_another_vm_fetched_are_installed_on_the_spot_without_waiting() {
    let keys = Keys::new();
    let fetching_vm = remote_engine(&keys, json!({}));
    let other_vm = remote_engine(&keys, json!({}));
    // One sidecar: both VMs see the same shared data (the mock host's).
    let host = request(&token(&keys, Signer::ES256, json!({})));
    fetching_vm.prepare(&host, None);
    other_vm.prepare(&host, None);
    let t0 = now() * 1000;
    fetching_vm.tick(&host, t0, 0.5);
    answer(&fetching_vm, &host, &keys.jwks(), t0 + 10);

    // The other VM has not ticked since: its first decision installs the stored keys.
    let d = other_vm.attempt(&host, held(t0 + 20));
    assert_eq!(d.outcome, Outcome::Allow);
    assert!(matches!(
        d.key_events.as_slice(),
        [KeyEvent::Installed { keys: 3, .. }]
    ));
    assert_eq!(other_vm.waiting(), 0);
    let fx = effects::of_decision(&d, other_vm.config());
    assert!(fx.counters.contains(&Counter::Allowed));
    assert_eq!(fx.gauges, vec![(0, 3)]);
    assert_eq!(fx.next, Next::Continue);
}

#[test]
fn during_an_outage_back_off_a_request_is_answered_at_once() {
    // The timeout (500 ms) is shorter than the first back-off (1 s).
    let (_keys, engine, host, t0) = start(json!({"timeout_ms": 500}));
    engine.tick(&host, t0, 0.5);
    let (token, _) = host.dispatched.borrow()[0].clone();
    let work = engine
        .fetch_response(
            &host,
            token,
            FetchResponse {
                status: Some(500),
                cache_control: None,
                body: Some(b"oops"),
            },
            t0 + 10,
            0.5,
        )
        .unwrap();
    let fx = effects::of_key_events(&work.events, engine.config());
    assert_eq!(fx.counters, vec![Counter::JwksFetchFailed]);
    assert!(fx
        .log
        .iter()
        .any(|l| l.level == Level::Warn && l.message.contains("keeping the last good keys")));
    let d = engine.attempt(&host, held(t0 + 20));
    assert_eq!(reason(&d.outcome), Some(Reason::JwksUnavailable));
    assert_eq!(engine.waiting(), 0);
}

#[test]
fn a_refused_dispatch_wakes_the_waiters_and_counts_as_a_failed_fetch() {
    let (_keys, engine, host, t0) = start(json!({}));
    engine.attempt(&host, held(t0));
    host.refuse_http.set(Some(3));
    let work = engine.tick(&host, t0 + 10, 0.5);
    assert_eq!(work.wake, vec![CONTEXT]);
    let fx = effects::of_key_events(&work.events, engine.config());
    assert_eq!(fx.counters, vec![Counter::JwksFetchFailed]);
    assert!(fx.log[0].message.contains("cannot call cluster \"issuer\""));
    assert_eq!(
        reason(&engine.attempt(&host, last(t0 + 10)).outcome),
        Some(Reason::JwksUnavailable)
    );
}

#[test]
fn the_wait_list_cap_holds_and_a_full_list_is_reported_as_itself() {
    let (keys, engine, host, t0) = start(json!({}));
    let engine = engine.with_wait_capacity(2);
    for id in 1..=2 {
        let d = engine.attempt(
            &host,
            Attempt {
                now_ms: t0,
                hold_as: Some(id),
            },
        );
        assert!(matches!(d.outcome, Outcome::AwaitKeys { .. }));
    }
    let d = engine.attempt(
        &host,
        Attempt {
            now_ms: t0,
            hold_as: Some(3),
        },
    );
    assert_eq!(reason(&d.outcome), Some(Reason::JwksUnavailable));
    assert_eq!(d.key_events, vec![KeyEvent::WaitListFull { provider: 0 }]);
    assert_eq!(engine.waiting(), 2);
    let fx = effects::of_decision(&d, engine.config());
    assert!(fx.counters.contains(&Counter::JwksWaitListFull));
    assert!(fx
        .counters
        .contains(&Counter::Denied(Reason::JwksUnavailable)));
    assert_eq!(fx.next, Next::Reply);
    // Both held requests wake with the keys, in order.
    engine.tick(&host, t0, 0.5);
    assert_eq!(
        answer(&engine, &host, &keys.jwks(), t0 + 5).wake,
        vec![1, 2]
    );
}

#[test]
fn deny_effects_log_a_tag_never_the_token_and_write_filter_state() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({"emit_filter_state": true}));
    let tok = token(&keys, Signer::ES256, json!({}));
    let host = MockHost::new()
        .with_header("authorization", &format!("Bearer {tok}"))
        .with_peer(attacker_peer());
    let d = engine.decide(&host, now());
    assert_eq!(reason(&d.outcome), Some(Reason::SpiffeMismatch));
    let fx = effects::of_decision(&d, engine.config());
    assert_eq!(fx.log.len(), 1);
    let line = &fx.log[0].message;
    assert!(line.starts_with("tokenbind: denied: reason=spiffe_mismatch "));
    assert!(line.contains(&format!("peer={ATTACKER}")));
    assert!(line.contains(&format!("token_sha256={}", d.token_tag().unwrap())));
    assert!(!line.contains(&tok) && !line.contains(tok.split('.').nth(2).unwrap()));
    let state: Vec<(&str, &str)> = fx
        .filter_state
        .iter()
        .map(|(k, v)| (*k, v.as_ref()))
        .collect();
    assert!(state.contains(&("tokenbind.decision", "deny")));
    assert!(state.contains(&("tokenbind.reason", "spiffe_mismatch")));
    assert!(state.contains(&("tokenbind.peer", ATTACKER)));
    assert!(state.contains(&("tokenbind.iss", ISSUER)));
    assert_eq!(fx.reply.as_ref().map(|r| r.status), Some(401));
    assert_eq!(fx.next, Next::Reply);
}
