//! `x-forwarded-client-cert` values: `xfcc::parse` and `xfcc::forwarded_client`.
//! Invariants: a parse yields at least one element; a forwarded client names a certificate
//! (digest or URI SAN) and is never the appending sidecar's own element about its peer.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokenbind_core::peer::decode_hex32;
use tokenbind_core::xfcc::{self, Forwarded};
use tokenbind_core::Peer;

const GATEWAY_HASH: &str = tokenbind_fuzz::GATEWAY_SHA256;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = xfcc::parse(value);
    if let Some(elements) = &parsed {
        assert!(
            !elements.is_empty(),
            "a parsed XFCC has at least one element"
        );
    }
    let gateway = Peer::from_attributes(
        Some(&[1]),
        Some(tokenbind_fuzz::GATEWAY.as_bytes()),
        Some(GATEWAY_HASH.as_bytes()),
    );
    for peer in [gateway, Peer::default()] {
        match xfcc::forwarded_client(value, &peer) {
            Forwarded::Client(client) => {
                let elements = parsed.as_ref().expect("a client from an unparseable XFCC");
                assert!(client.mtls);
                assert!(
                    client.cert_sha256.is_some() || client.uri_san.is_some(),
                    "a forwarded client that names no certificate"
                );
                // The client is never taken from an element this sidecar appended about its
                // own peer when that element is the only one.
                let own = decode_hex32(GATEWAY_HASH.as_bytes());
                if elements.len() == 1 && peer.cert_sha256 == own {
                    assert!(
                        client.cert_sha256 != own,
                        "own element taken for the client"
                    );
                }
            }
            Forwarded::Invalid | Forwarded::Nothing => {}
        }
    }
});
