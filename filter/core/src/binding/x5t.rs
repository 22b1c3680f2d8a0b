//! `cnf.x5t#S256` (RFC 8705 §3.1): the token is bound to the client certificate whose DER
//! SHA-256 it names. Applies to every token with that member; needs no configuration.

use super::{ct_eq, Inputs, Verdict};
use crate::reason::{Denial, Reason};

pub fn check(inputs: &Inputs<'_>) -> Result<Verdict, Denial> {
    let Some(x5t) = &inputs.facts.cnf.x5t_s256 else {
        return Ok(Verdict::NotApplicable);
    };
    let peer = inputs.peer;
    let Some(peer_digest) = peer.cert_sha256.filter(|_| peer.has_certificate()) else {
        return Err(Denial::new(
            Reason::NoPeerCertificate,
            "cnf.x5t#S256 needs a client certificate",
        ));
    };
    let Ok(bound) = x5t else {
        return Err(Denial::new(
            Reason::ThumbprintMismatch,
            "cnf.x5t#S256 is not a base64url SHA-256 digest",
        ));
    };
    if !ct_eq(bound, &peer_digest) {
        return Err(Denial::new(
            Reason::ThumbprintMismatch,
            "cnf.x5t#S256 differs from the peer certificate",
        ));
    }
    Ok(Verdict::Passed)
}
