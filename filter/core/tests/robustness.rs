//! Bad input gets an answer, never a panic: randomised mutations of valid tokens, proofs,
//! headers, configurations and key sets go through every parser and the whole engine.
//! Deterministic (seeded), so a failure reproduces; runs natively and inside V8.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use serde_json::json;
use tokenbind_core::jwk::KeySet;
use tokenbind_core::{nonce, uri, xfcc, Config, MockHost, Outcome, Peer};

/// xorshift64*: tiny, seeded, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const ALPHABET: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/~ ,;\"\\{}:[]%\x00\xff";

/// One random edit: flip, insert, delete, truncate, duplicate a slice, or splice in a
/// JSON-ish fragment. Works on bytes; the result may be invalid UTF-8 (callers handle that).
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(3) {
        let len = v.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] = ALPHABET[rng.below(ALPHABET.len())];
            }
            1 => {
                let i = rng.below(len + 1);
                v.insert(i, ALPHABET[rng.below(ALPHABET.len())]);
            }
            2 if len > 0 => {
                v.remove(rng.below(len));
            }
            3 => v.truncate(rng.below(len + 1)),
            4 if len > 1 => {
                let a = rng.below(len);
                let b = a + rng.below(len - a);
                let chunk = v[a..b].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, chunk);
            }
            5 => {
                let frag: &[&[u8]] = &[
                    b"null",
                    b"1e999",
                    b"-1",
                    b"[]",
                    b"{}",
                    b"\"\"",
                    b"true",
                    b"\"\\u0000\"",
                ];
                let f = frag[rng.below(frag.len())];
                let at = rng.below(len + 1);
                v.splice(at..at, f.iter().copied());
            }
            _ => {}
        }
    }
    v
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn mutated_tokens_never_panic_the_engine() {
    let keys = Keys::new();
    let engine = engine(&keys, json!({"cache": {"max_entries": 64}}));
    let seeds = [
        token(&keys, Signer::ES256, json!({})),
        token(
            &keys,
            Signer::EdDSA,
            json!({"cnf": {"x5t#S256": CLIENT_CERT_X5T_S256}}),
        ),
        token(
            &keys,
            Signer::RS256,
            json!({"cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}}),
        ),
    ];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut allowed = 0;
    for i in 0..6_000 {
        let seed = &seeds[i % seeds.len()];
        let mutated = lossy(&mutate(&mut rng, seed.as_bytes()));
        let scheme = ["Bearer ", "DPoP ", "bearer\t", "", "Basic "][rng.below(5)];
        let mut host = MockHost::new()
            .with_header(":path", &lossy(&mutate(&mut rng, b"/api/orders?x=1")))
            .with_header("authorization", &format!("{scheme}{mutated}"))
            .with_peer(if rng.below(2) == 0 {
                client_peer()
            } else {
                attacker_peer()
            });
        if rng.below(4) == 0 {
            host = host.with_header("dpop", &lossy(&mutate(&mut rng, seed.as_bytes())));
        }
        if rng.below(4) == 0 {
            host = host.with_header(
                "x-forwarded-client-cert",
                &lossy(&mutate(
                    &mut rng,
                    b"By=spiffe://a/b;Hash=00;URI=spiffe://c/d",
                )),
            );
        }
        let d = engine.decide(&host, now());
        if d.outcome == Outcome::Allow {
            allowed += 1;
            // Only an intact token can be allowed.
            let presented = mutated.trim_matches([' ', '\t']);
            assert!(
                seeds.iter().any(|s| s == presented),
                "allowed a mutated token"
            );
        }
        let _ = d.reply(engine.config());
    }
    assert!(engine.cache_len() <= 64);
    assert!(allowed < 6_000);
}

#[test]
fn mutated_configurations_are_errors_not_panics() {
    let keys = Keys::new();
    let valid = config_json(
        &keys,
        json!({"dpop": {"require_nonce": true}, "trusted_forwarders": ["spiffe://td/gw"]}),
    )
    .to_string();
    let remote = config_json(
        &keys,
        json!({"providers": [{"name": "m", "issuer": "i", "audiences": ["a"],
        "remote_jwks": {"cluster": "c", "uri": "https://i/j", "discovery": true}}]}),
    )
    .to_string();
    let mut rng = Rng(0x5eed_0000_0000_0002);
    let mut errors = 0;
    for i in 0..4_000 {
        let seed = if i % 2 == 0 { &valid } else { &remote };
        let bytes = mutate(&mut rng, seed.as_bytes());
        match Config::from_json(&bytes, &|_| Err("no files".into())) {
            Ok(_) => {}
            Err(e) => {
                errors += 1;
                assert!(e.to_string().starts_with("invalid configuration"), "{e}");
            }
        }
    }
    assert!(errors > 0);
}

#[test]
fn mutated_key_sets_never_panic() {
    let keys = Keys::new();
    let jwks = keys.jwks().to_string();
    let mut rng = Rng(0x5eed_0000_0000_0003);
    for _ in 0..4_000 {
        let text = lossy(&mutate(&mut rng, jwks.as_bytes()));
        if let Ok(set) = KeySet::from_json(&text) {
            assert!(set.len() <= tokenbind_core::jwk::MAX_KEYS);
        }
    }
}

#[test]
fn headers_uris_nonces_and_xfcc_never_panic() {
    let mut rng = Rng(0x5eed_0000_0000_0004);
    let key = [9u8; 32];
    let good_nonce = nonce::issue(&key, 1_000, 300);
    for _ in 0..20_000 {
        let u = lossy(&mutate(
            &mut rng,
            b"HTTPS://Resource.Example.ORG:443/a/./b/../%7Ec?q#f",
        ));
        let _ = uri::normalize(&u);
        let x = lossy(&mutate(&mut rng, b"By=spiffe://a/gw;Hash=c1dd4102be3a7dec5cfce0f4e5bc1d3c2fa54421df96c84ae842343e74b7c80f;Subject=\"CN=x,O=y\";URI=spiffe://a/b,Hash=00;URI=spiffe://c/d"));
        let _ = xfcc::forwarded_client(&x, &Peer::default());
        let n = lossy(&mutate(&mut rng, good_nonce.as_bytes()));
        if n != good_nonce {
            assert!(
                !nonce::is_valid(&key, &n, 1_000, 300) || n.trim_end_matches('=') == good_nonce
            );
        }
        let _ = tokenbind_core::spiffe::SpiffeId::parse(&lossy(&mutate(
            &mut rng,
            b"spiffe://cluster.local/ns/a/sa/b",
        )));
        let p = mutate(&mut rng, b"\x01");
        let h = mutate(
            &mut rng,
            b"c1dd4102be3a7dec5cfce0f4e5bc1d3c2fa54421df96c84ae842343e74b7c80f",
        );
        let _ = Peer::from_attributes(Some(&p), Some(&h), Some(&h));
    }
}
