//! Is the verified token bound to the caller that presents it? Runs on every request,
//! cache hit or not: the peer is exactly what changes when a token is stolen.

use crate::config::Config;
use crate::extract::Scheme;
use crate::jwt::{SpiffeClaim, TokenFacts};
use crate::peer::Peer;
use crate::reason::{Denial, Reason};
use subtle::ConstantTimeEq;

/// Which bindings a token passed. Several can apply to one token; all must pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bindings {
    pub x5t_s256: bool,
    pub spiffe: bool,
    pub dpop: bool,
}

impl Bindings {
    pub fn any(self) -> bool {
        self.x5t_s256 || self.spiffe || self.dpop
    }

    /// A short label for logs and metadata: `x5t#S256`, `spiffe`, `dpop`, joined with `+`
    /// when several passed, or `none`.
    pub fn kind(self) -> &'static str {
        match (self.x5t_s256, self.spiffe, self.dpop) {
            (false, false, false) => "none",
            (true, false, false) => "x5t#S256",
            (false, true, false) => "spiffe",
            (false, false, true) => "dpop",
            (true, true, false) => "x5t#S256+spiffe",
            (true, false, true) => "x5t#S256+dpop",
            (false, true, true) => "spiffe+dpop",
            (true, true, true) => "x5t#S256+spiffe+dpop",
        }
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Runs the binding checks in order: certificate thumbprint (RFC 8705), SPIFFE ID, DPoP
/// (RFC 9449), unknown confirmation methods, then `require_binding`. The first failure is the
/// reason. `dpop` verifies the request's proof against the token's `cnf.jkt`; it is called only
/// for a DPoP-bound token presented with the DPoP scheme.
pub fn check(
    facts: &TokenFacts,
    config: &Config,
    peer: &Peer,
    scheme: Scheme,
    dpop: &mut dyn FnMut(&str) -> Result<(), Denial>,
) -> Result<Bindings, Denial> {
    let mut passed = Bindings::default();

    if let Some(x5t) = &facts.cnf.x5t_s256 {
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
        passed.x5t_s256 = true;
    }

    if let Some(spiffe) = &config.spiffe {
        let id = match &facts.spiffe {
            SpiffeClaim::Valid(id) => id,
            SpiffeClaim::Missing | SpiffeClaim::Off => {
                return Err(Denial::new(
                    Reason::InvalidSpiffeId,
                    "the SPIFFE claim is missing",
                ))
            }
            SpiffeClaim::Invalid(e) => {
                return Err(Denial::new(Reason::InvalidSpiffeId, e.message()))
            }
        };
        if let Some(allowed) = &spiffe.trust_domains {
            if !allowed.iter().any(|td| td == id.trust_domain()) {
                return Err(Denial::new(
                    Reason::TrustDomainNotAllowed,
                    "token SPIFFE ID trust domain is not in spiffe.trust_domains",
                ));
            }
        }
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
        passed.spiffe = true;
    }

    if let Some(jkt) = &facts.cnf.jkt {
        if scheme != Scheme::DPoP {
            // RFC 9449 §7.2: a DPoP-bound token sent as a bearer token is a downgrade.
            return Err(Denial::new(
                Reason::DpopDowngrade,
                "DPoP-bound token presented with the Bearer scheme",
            ));
        }
        dpop(jkt)?;
        passed.dpop = true;
    }
    if facts.cnf.unsupported.is_some() {
        return Err(Denial::new(
            Reason::UnsupportedBinding,
            "cnf has a confirmation method this filter does not support",
        ));
    }
    if config.require_binding && !passed.any() {
        return Err(Denial::new(
            Reason::UnboundToken,
            "no binding applies and require_binding is true",
        ));
    }
    Ok(passed)
}
