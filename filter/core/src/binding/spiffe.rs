//! SPIFFE binding: with `spiffe` configured, the token's SPIFFE ID (its `spiffe.claim`) must
//! be the ID of the peer's X.509-SVID ([`crate::svid`]), in an allowed trust domain.

use super::{ct_eq, Inputs, Verdict};
use crate::jwt::SpiffeClaim;
use crate::reason::{Denial, Reason};

pub fn check(inputs: &Inputs<'_>) -> Result<Verdict, Denial> {
    let Some(spiffe) = &inputs.config.spiffe else {
        return Ok(Verdict::NotApplicable);
    };
    let id = match &inputs.facts.spiffe {
        SpiffeClaim::Valid(id) => id,
        SpiffeClaim::Missing | SpiffeClaim::Off => {
            return Err(Denial::new(
                Reason::InvalidSpiffeId,
                "the SPIFFE claim is missing",
            ))
        }
        SpiffeClaim::Invalid(e) => return Err(Denial::new(Reason::InvalidSpiffeId, e.message())),
    };
    if let Some(allowed) = &spiffe.trust_domains {
        if !allowed.iter().any(|td| td == id.trust_domain()) {
            return Err(Denial::new(
                Reason::TrustDomainNotAllowed,
                "token SPIFFE ID trust domain is not in spiffe.trust_domains",
            ));
        }
    }
    let peer = inputs.peer;
    if !peer.has_certificate() {
        return Err(Denial::new(
            Reason::NoPeerCertificate,
            "SPIFFE binding needs a client certificate",
        ));
    }
    // The peer must be an X.509-SVID leaf (crate::svid); its one URI SAN is the peer's ID.
    let peer_id = match &peer.svid {
        Some(Ok(id)) => id.as_str(),
        Some(Err(e)) => return Err(Denial::new(Reason::InvalidPeerSvid, e.message())),
        None => {
            return Err(Denial::new(
                Reason::InvalidPeerSvid,
                "peer certificate was not checked as an X.509-SVID",
            ))
        }
    };
    if !ct_eq(id.as_str().as_bytes(), peer_id.as_bytes()) {
        return Err(Denial::new(
            Reason::SpiffeMismatch,
            "token SPIFFE ID differs from the peer certificate URI SAN",
        ));
    }
    Ok(Verdict::Passed)
}
