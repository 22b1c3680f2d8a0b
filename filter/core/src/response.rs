//! The reply a denied request receives: a 401 with an RFC 6750 / RFC 9449 challenge, or a 503
//! when the server itself is out of capacity.

use crate::reason::{Class, Reason};

/// A local reply: status, headers, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// How to challenge the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge<'a> {
    pub realm: &'a str,
    /// The client used the DPoP scheme (RFC 9449 §7.1).
    pub dpop_scheme: bool,
    /// The `algs` parameter of a DPoP challenge.
    pub dpop_algs: &'a str,
}

/// The RFC 6750 / RFC 9449 error code for a reason (the body's `error` for a 401).
pub fn error_code(reason: Reason) -> &'static str {
    match reason.class() {
        Class::NonceChallenge => "use_dpop_nonce",
        Class::DpopProof => "invalid_dpop_proof",
        Class::Missing | Class::Token | Class::Downgrade => "invalid_token",
        Class::ServerSide => "temporarily_unavailable",
    }
}

/// The HTTP status of a denial in enforce mode.
pub fn status(reason: Reason) -> u32 {
    match reason.class() {
        Class::ServerSide => 503,
        Class::Missing
        | Class::Token
        | Class::Downgrade
        | Class::DpopProof
        | Class::NonceChallenge => 401,
    }
}

/// The `WWW-Authenticate` challenge for a denial; `None` for a server-side reason (the
/// credential was not judged).
///
/// - No token: `Bearer realm=".."` and no error code (RFC 6750 §3.1).
/// - A DPoP nonce is needed: `DPoP error="use_dpop_nonce", ..` (RFC 9449 §9).
/// - A DPoP proof problem, a downgrade, or any failure of a request that used the DPoP scheme:
///   `DPoP algs="..", error=.., error_description=..` (RFC 9449 §7.1).
/// - Anything else: `Bearer realm="..", error="invalid_token", error_description=..`.
pub fn challenge(reason: Reason, challenge: &Challenge<'_>) -> Option<String> {
    let description = reason.description();
    let dpop = || {
        format!(
            "DPoP algs=\"{}\", error=\"{}\", error_description=\"{description}\"",
            challenge.dpop_algs,
            error_code(reason)
        )
    };
    Some(match reason.class() {
        Class::Missing => format!("Bearer realm=\"{}\"", challenge.realm),
        Class::NonceChallenge => {
            format!("DPoP error=\"use_dpop_nonce\", error_description=\"{description}\"")
        }
        Class::DpopProof | Class::Downgrade => dpop(),
        Class::Token if challenge.dpop_scheme => dpop(),
        Class::Token => format!(
            "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{description}\"",
            challenge.realm
        ),
        Class::ServerSide => return None,
    })
}

/// The `WWW-Authenticate` challenge for a 401 denial (see [`challenge`]); empty for a
/// server-side reason, which has none.
pub fn www_authenticate(reason: Reason, c: &Challenge<'_>) -> String {
    challenge(reason, c).unwrap_or_default()
}

/// The full 401 reply. The body names the reason and never echoes request data. A fresh
/// `DPoP-Nonce` rides along when the client must retry with one.
pub fn unauthorized(reason: Reason, c: &Challenge<'_>, dpop_nonce: Option<&str>) -> Reply {
    let Some(www_authenticate) = challenge(reason, c) else {
        return unavailable(reason);
    };
    let mut headers = vec![
        ("www-authenticate", www_authenticate),
        ("content-type", "application/json".to_owned()),
        ("cache-control", "no-store".to_owned()),
    ];
    if let Some(nonce) = dpop_nonce {
        headers.push(("dpop-nonce", nonce.to_owned()));
    }
    Reply {
        status: status(reason),
        headers,
        body: format!(
            "{{\"error\":\"{}\",\"reason\":\"{}\"}}",
            error_code(reason),
            reason.as_str()
        ),
    }
}

/// A 503 for a denial that is the server's own capacity or state (a full replay store): the
/// credential was not judged bad, so there is no challenge; the client may retry with a fresh
/// proof.
fn unavailable(reason: Reason) -> Reply {
    Reply {
        status: status(reason),
        headers: vec![
            ("content-type", "application/json".to_owned()),
            ("cache-control", "no-store".to_owned()),
            ("retry-after", "1".to_owned()),
        ],
        body: format!(
            "{{\"error\":\"temporarily_unavailable\",\"reason\":\"{}\"}}",
            reason.as_str()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEARER: Challenge<'static> = Challenge {
        realm: "tokenbind",
        dpop_scheme: false,
        dpop_algs: "ES256 EdDSA",
    };
    const DPOP: Challenge<'static> = Challenge {
        dpop_scheme: true,
        ..BEARER
    };

    #[test]
    fn missing_token_has_no_error_attribute() {
        assert_eq!(
            www_authenticate(Reason::MissingToken, &BEARER),
            "Bearer realm=\"tokenbind\""
        );
    }

    #[test]
    fn dpop_challenges() {
        assert_eq!(
            www_authenticate(Reason::DpopReplayed, &BEARER),
            "DPoP algs=\"ES256 EdDSA\", error=\"invalid_dpop_proof\", error_description=\"the DPoP proof has already been used\""
        );
        assert_eq!(
            www_authenticate(Reason::DpopNonceRequired, &DPOP),
            "DPoP error=\"use_dpop_nonce\", error_description=\"Resource server requires nonce in DPoP proof\""
        );
        assert!(www_authenticate(Reason::Expired, &DPOP)
            .starts_with("DPoP algs=\"ES256 EdDSA\", error=\"invalid_token\""));
        assert!(www_authenticate(Reason::DpopDowngrade, &BEARER).starts_with("DPoP algs="));
        let reply = unauthorized(Reason::DpopNonceRequired, &DPOP, Some("abc"));
        assert!(reply.headers.contains(&("dpop-nonce", "abc".to_owned())));
        assert_eq!(
            reply.body,
            "{\"error\":\"use_dpop_nonce\",\"reason\":\"dpop_nonce_required\"}"
        );
    }

    #[test]
    fn other_reasons_are_invalid_token_with_description() {
        assert_eq!(
            www_authenticate(Reason::SpiffeMismatch, &BEARER),
            "Bearer realm=\"tokenbind\", error=\"invalid_token\", error_description=\"the token is bound to a different workload\""
        );
    }

    #[test]
    fn body_is_json_with_reason() {
        for r in Reason::ALL {
            let reply = unauthorized(r, &BEARER, None);
            let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
            assert_eq!(v["reason"], r.as_str());
            if r.is_server_side() {
                assert_eq!(reply.status, 503);
                assert_eq!(v["error"], "temporarily_unavailable");
                assert!(reply.headers.contains(&("retry-after", "1".to_owned())));
                assert!(!reply.headers.iter().any(|(k, _)| *k == "www-authenticate"));
            } else {
                assert_eq!(reply.status, 401);
                assert_eq!(v["error"], error_code(r));
            }
        }
    }
}
