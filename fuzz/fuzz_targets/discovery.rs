//! The OIDC discovery document and fetched JWKS bodies, through the remote key source exactly
//! as the adapter drives it: take the due fetch, complete it with the fuzzer's body and
//! `Cache-Control`. Input: the first line is the `Cache-Control` value, the rest the body.
//! Invariants: a discovered `jwks_uri` is an authority without userinfo or whitespace and a
//! path starting with `/`, and the next fetch goes there; stored keys sync back with the count
//! reported; the refresh time is never before now; and the stored state stays readable.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokenbind_core::host::MemorySharedData;
use tokenbind_core::jwk::MAX_KEYS;
use tokenbind_core::remote::{self, FetchOutcome, FetchResponse, RemoteJwks, RemoteProvider};
use tokenbind_fuzz::{ISSUER, NOW};

fn settings(discovery: bool) -> RemoteJwks {
    RemoteJwks {
        cluster: "issuer".into(),
        authority: "issuer.example".into(),
        path: if discovery {
            "/".into()
        } else {
            "/jwks.json".into()
        },
        discovery,
        cache_duration_seconds: 600,
        timeout_ms: 2_000,
        jitter_percent: 10,
        refetch_min_interval_seconds: 30,
        max_body_bytes: 64 * 1024,
    }
}

fuzz_target!(|data: &[u8]| {
    let (cache_control, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (std::str::from_utf8(&data[..i]).ok(), &data[i + 1..]),
        None => (None, data),
    };
    if let Some(cc) = cache_control {
        let _ = remote::parse_max_age(cc);
    }
    if let Ok(text) = std::str::from_utf8(body) {
        if let Some((authority, path)) = remote::split_uri(text) {
            assert!(!authority.is_empty() && !authority.contains('@'));
            assert!(path.starts_with('/'));
        }
    }
    for discovery in [true, false] {
        let shared = MemorySharedData::default();
        let provider = RemoteProvider::new("mesh", ISSUER, settings(discovery));
        provider.prepare(&shared);
        let now_ms = NOW * 1000;
        let request = provider
            .take_due_fetch(&shared, now_ms, false)
            .expect("a fresh provider has a fetch due");
        assert_eq!(request.discovery, discovery);
        let response = FetchResponse {
            status: Some(200),
            cache_control,
            body: Some(body),
        };
        let outcome = provider.complete(&shared, &request, response, NOW, 0.5);
        let state = provider.state(&shared);
        assert_eq!(state.lease_until_ms, 0, "the lease is released");
        match outcome {
            FetchOutcome::Discovered(next) => {
                assert!(discovery, "a JWKS fetch cannot discover");
                assert!(!next.discovery);
                assert!(!next.authority.is_empty());
                assert!(!next.authority.contains('@'));
                assert!(!next.authority.contains(char::is_whitespace));
                assert!(next.path.starts_with('/'));
                assert_eq!(
                    state.jwks,
                    Some((next.authority.clone(), next.path.clone()))
                );
                // The discovered JWKS fetch is due at once.
                let again = provider.take_due_fetch(&shared, now_ms + 1, false);
                assert_eq!(again.as_ref(), Some(&next));
            }
            FetchOutcome::Keys { count } => {
                assert!(!discovery, "a discovery document is never a key set");
                assert!(count > 0 && count <= MAX_KEYS);
                let (keys, _) = provider.sync(&shared, None).expect("stored keys sync");
                assert_eq!(keys.len(), count);
                assert!(state.next_refresh > NOW);
            }
            FetchOutcome::Failed(why) => {
                assert!(!why.is_empty());
                assert!(state.failures == 1);
                assert!(state.next_refresh > NOW);
                assert!(
                    provider.sync(&shared, None).is_none(),
                    "a failure stored keys"
                );
            }
        }
    }
});
