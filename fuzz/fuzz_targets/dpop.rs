//! The DPoP proof (RFC 9449 §4.3): `dpop::verify` for a fixed request, token and `cnf.jkt`,
//! with a key cache shared across iterations' halves. Invariants: an accepted proof was signed
//! by the key its `jwk` names (one of the fixed keys, checked directly), its thumbprint is the
//! bound `jkt`, and every denial reason is in `Reason::ALL`. Also checks that the proof-key
//! cache answers the same as a fresh parse, and never grows past its cap.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokenbind_core::dpop::{self, ProofKeyCache, ProofRequest};
use tokenbind_core::{uri, Crypto, Reason};
use tokenbind_fuzz::{config, htu, jkt, keys, token_from_input, Signer, NOW};

/// The access token every proof seed is bound to (`ath`).
pub const ACCESS_TOKEN: &str = "fuzz.access.token";

fuzz_target!(|data: &[u8]| {
    let Some(proof) = token_from_input(data) else {
        return;
    };
    let settings = config().dpop;
    let crypto = Crypto::wasm();
    let uri = uri::normalize(&htu());
    let mut cache = ProofKeyCache::new(2);
    for signer in Signer::ALL {
        let jkt = jkt(signer);
        let req = ProofRequest {
            method: "GET",
            uri: uri.as_deref(),
            access_token: ACCESS_TOKEN,
            jkt: &jkt,
            now: NOW,
            nonce_key: None,
        };
        let fresh = dpop::verify(&proof, &req, &settings, &mut ProofKeyCache::new(0), &crypto);
        let cached = dpop::verify(&proof, &req, &settings, &mut cache, &crypto);
        let again = dpop::verify(&proof, &req, &settings, &mut cache, &crypto);
        assert_eq!(fresh, cached, "the proof-key cache changed the verdict");
        assert_eq!(cached, again, "a cached proof key changed the verdict");
        assert!(cache.len() <= 2, "proof-key cache over its cap");
        match fresh {
            Ok(v) => {
                assert!(
                    keys().signed_by_any(&proof),
                    "accepted a proof no fixed key signed"
                );
                assert!(v.expires_at > NOW);
            }
            Err(d) => assert!(Reason::ALL.contains(&d.reason)),
        }
    }
    // The same proof with a nonce required: a nonce key that signs nothing the fuzzer knows.
    let jkt = jkt(Signer::Es256);
    let key = [7u8; 32];
    let req = ProofRequest {
        method: "GET",
        uri: uri.as_deref(),
        access_token: ACCESS_TOKEN,
        jkt: &jkt,
        now: NOW,
        nonce_key: Some(&key),
    };
    if let Err(d) = dpop::verify(&proof, &req, &settings, &mut cache, &crypto) {
        assert!(Reason::ALL.contains(&d.reason));
    }
});
