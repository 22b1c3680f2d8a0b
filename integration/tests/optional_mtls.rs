//! A listener that does NOT require a client certificate, so requests
//! without one reach the filter: a bound token then has nothing to bind to.

use tokenbind_integration::assertions::{assert_allowed, assert_denied};
use tokenbind_integration::client::Client;
use tokenbind_integration::envoy::{Bootstrap, Envoy};
use tokenbind_integration::pki::Pki;
use tokenbind_integration::tokens::{Alg, TokenIssuer};
use tokenbind_integration::{plugin_config, require_wasm, AUDIENCE, CLIENT_ID, ISSUER, LISTENER};

#[test]
fn request_without_peer_certificate_is_denied_no_peer_certificate() {
    let wasm = require_wasm();
    let pki = Pki::new();
    let issuer = TokenIssuer::new(ISSUER);
    let bootstrap = Bootstrap::new(&pki)
        .wasm_filter(&wasm, &plugin_config(&issuer))
        .require_client_certificate(false)
        .build();
    let envoy = Envoy::start(&bootstrap).unwrap_or_else(|e| panic!("{e}"));
    let port = envoy.port(LISTENER);
    let token = issuer.sign(Alg::Es256, &issuer.claims(CLIENT_ID, AUDIENCE));
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str())];

    let before = envoy.snapshot();
    let r = Client::new(pki.ca_pem(), None)
        .get(port, "/api", &headers)
        .unwrap();
    assert_denied(
        &r,
        "no_peer_certificate",
        "valid token over TLS without a client cert",
    );

    // With the certificate the same token passes.
    let r = Client::new(pki.ca_pem(), Some(&pki.client))
        .get(port, "/api", &headers)
        .unwrap();
    assert_allowed(&r, "same token with the client cert");

    // A certificate without a SPIFFE URI SAN cannot match the sub.
    let plain = pki.workload_without_spiffe("plain");
    let r = Client::new(pki.ca_pem(), Some(&plain))
        .get(port, "/api", &headers)
        .unwrap();
    assert_eq!(r.status, 401, "peer cert without a URI SAN:\n{r}");

    let d = envoy.snapshot().since(&before);
    assert_eq!(d.get("tokenbind.denied.no_peer_certificate"), 1, "{d}");
    assert_eq!(d.get("tokenbind.allowed"), 1, "{d}");
}
