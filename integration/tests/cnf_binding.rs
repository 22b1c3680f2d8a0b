//! Confirmation-claim (`cnf`) bindings, with NO `spiffe` section in the
//! configuration so that `cnf` is the only binding the filter can apply.

use std::sync::Arc;

use serde_json::json;
use sha2::{Digest, Sha256};
use tokenbind_integration::assertions::{assert_allowed, assert_denied};
use tokenbind_integration::pki::x5t_s256;
use tokenbind_integration::tokens::{b64url, Alg, Claims};
use tokenbind_integration::{Shared, Stack, AUDIENCE, CLIENT_ID};

/// No spiffe, require_binding: true.
static CNF_ONLY: Shared<Stack> = Shared::new();
/// No spiffe, require_binding: false.
static BINDING_OPTIONAL: Shared<Stack> = Shared::new();

fn cnf_only() -> Arc<Stack> {
    CNF_ONLY.get_or_init(|| {
        Stack::with_filter(|cfg| {
            cfg.as_object_mut().unwrap().remove("spiffe");
        })
    })
}

fn binding_optional() -> Arc<Stack> {
    BINDING_OPTIONAL.get_or_init(|| {
        Stack::with_filter(|cfg| {
            cfg.as_object_mut().unwrap().remove("spiffe");
            cfg["require_binding"] = json!(false);
        })
    })
}

fn claims(s: &Stack) -> Claims {
    s.issuer.claims(CLIENT_ID, AUDIENCE)
}

#[test]
fn thumbprint_bound_token_is_allowed_from_its_certificate() {
    let s = cnf_only();
    // Computed here from the DER, not by the filter.
    let thumb = x5t_s256(&s.pki.client.cert_der);
    let before = s.envoy.snapshot();
    for alg in Alg::ALL {
        let token = s.issuer.sign(alg, &claims(&s).cnf_x5t(&thumb));
        let r = s.get(&s.pki.client, "/api", Some(&token));
        assert_allowed(&r, &format!("{} x5t#S256 = client cert", alg.name()));
    }
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(d.get("tokenbind.allowed"), 2, "counter deltas: {d}");
}

#[test]
fn thumbprint_bound_token_from_another_certificate_is_denied() {
    let s = cnf_only();
    let thumb = s.pki.client.x5t_s256();
    let before = s.envoy.snapshot();
    for alg in Alg::ALL {
        let token = s.issuer.sign(alg, &claims(&s).cnf_x5t(&thumb));
        let r = s.get(&s.pki.attacker, "/api", Some(&token));
        assert_denied(
            &r,
            "thumbprint_mismatch",
            &format!("{} client-bound token from attacker", alg.name()),
        );
    }
    // Same SPIFFE ID, different key and certificate (e.g. a re-issued or
    // cloned identity): the thumbprint still differs.
    let twin = s.pki.workload("client-twin", CLIENT_ID);
    let token = s.issuer.sign(Alg::Es256, &claims(&s).cnf_x5t(&thumb));
    let r = s.get(&twin, "/api", Some(&token));
    assert_denied(&r, "thumbprint_mismatch", "same SPIFFE ID, other cert");
    // The hex (not base64url) encoding of the right digest is not accepted.
    let hex: String = Sha256::digest(&s.pki.client.cert_der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let token = s.issuer.sign(Alg::Es256, &claims(&s).cnf_x5t(&hex));
    let r = s.get(&s.pki.client, "/api", Some(&token));
    assert_denied(&r, "thumbprint_mismatch", "hex-encoded thumbprint");
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.denied.thumbprint_mismatch"),
        4,
        "counter deltas: {d}"
    );
}

#[test]
fn token_without_any_binding_is_denied_when_binding_is_required() {
    let s = cnf_only();
    let before = s.envoy.snapshot();
    let token = s.issuer.sign(Alg::Es256, &claims(&s));
    let r = s.get(&s.pki.client, "/api", Some(&token));
    assert_denied(&r, "unbound_token", "no cnf, no spiffe, require_binding");
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.denied.unbound_token"),
        1,
        "counter deltas: {d}"
    );
}

#[test]
fn dpop_bound_token_as_bearer_is_a_downgrade() {
    let s = cnf_only();
    let before = s.envoy.snapshot();
    let jkt = b64url(&[7u8; 32]);
    let token = s.issuer.sign(Alg::EdDsa, &claims(&s).cnf_jkt(&jkt));
    let r = s.get(&s.pki.client, "/api", Some(&token));
    assert_denied(&r, "dpop_downgrade", "cnf.jkt under the Bearer scheme");
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.denied.dpop_downgrade"),
        1,
        "counter deltas: {d}"
    );
}

#[test]
fn unknown_cnf_member_is_an_unsupported_binding() {
    let s = cnf_only();
    let before = s.envoy.snapshot();
    let cases = [
        json!({"x5t": "sha1-thumbprint-is-not-supported"}),
        json!({"jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64url(&[1u8; 32])}}),
        json!({"kid": "some-key"}),
    ];
    for cnf in &cases {
        let token = s
            .issuer
            .sign(Alg::Es256, &claims(&s).with("cnf", cnf.clone()));
        let r = s.get(&s.pki.client, "/api", Some(&token));
        assert_denied(&r, "unsupported_binding", &format!("cnf = {cnf}"));
    }
    let d = s.envoy.snapshot().since(&before);
    assert_eq!(
        d.get("tokenbind.denied.unsupported_binding"),
        cases.len() as u64,
        "counter deltas: {d}"
    );
}

#[test]
fn unbound_token_is_allowed_when_binding_is_optional() {
    let s = binding_optional();
    let token = s.issuer.sign(Alg::Es256, &claims(&s));
    // Without a binding, any mesh peer may present it: that is what
    // require_binding: false means.
    for leaf in [&s.pki.client, &s.pki.attacker] {
        let r = s.get(leaf, "/api", Some(&token));
        assert_allowed(&r, &format!("unbound token from {}", leaf.name));
    }
    // A binding that is present is still enforced.
    let bound = s
        .issuer
        .sign(Alg::Es256, &claims(&s).cnf_x5t(&s.pki.client.x5t_s256()));
    let r = s.get(&s.pki.attacker, "/api", Some(&bound));
    assert_denied(&r, "thumbprint_mismatch", "bound token, binding optional");
    // And validation failures are still failures.
    let expired = s.issuer.sign(Alg::Es256, &claims(&s).expired());
    let r = s.get(&s.pki.client, "/api", Some(&expired));
    assert_denied(&r, "expired", "expired, binding optional");
}
