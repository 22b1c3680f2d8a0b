//! Where the token is: the `Authorization` header (RFC 6750 §2.1, RFC 9449 §7.1).

use crate::reason::{Denial, Reason};

/// The authorization scheme the client used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    DPoP,
}

/// The credential from the request: scheme and token text (not yet verified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credential<'a> {
    pub scheme: Scheme,
    pub token: &'a str,
}

/// `b64token` of RFC 6750 §2.1: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// Extracts the credential from every `Authorization` header value on the request.
///
/// Envoy folds repeated `Authorization` headers into one comma-joined value, and a JWT never
/// contains a comma, so both shapes of "more than one Authorization header" are refused.
pub fn credential<'a>(
    authorization: &[&'a str],
    max_token_bytes: usize,
) -> Result<Credential<'a>, Denial> {
    let value = match authorization {
        [] => return Err(Denial::new(Reason::MissingToken, "no Authorization header")),
        [one] => *one,
        _ => {
            return Err(Denial::new(
                Reason::MalformedToken,
                "more than one Authorization header",
            ))
        }
    };
    let value = value.trim_matches([' ', '\t']);
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::DPoP
    } else {
        // RFC 6750 §3.1: a request using another scheme lacks a bearer token; no error code.
        return Err(Denial::new(
            Reason::MissingToken,
            "Authorization scheme is not Bearer or DPoP",
        ));
    };
    let token = rest.trim_start_matches([' ', '\t']);
    if token.len() > max_token_bytes {
        return Err(Denial::new(
            Reason::TokenTooLarge,
            "token exceeds max_token_bytes",
        ));
    }
    if token.is_empty() {
        return Err(Denial::new(Reason::MalformedToken, "empty token"));
    }
    if token.contains(',') {
        return Err(Denial::new(
            Reason::MalformedToken,
            "more than one Authorization header",
        ));
    }
    if !is_b64token(token) {
        return Err(Denial::new(
            Reason::MalformedToken,
            "token has characters outside b64token",
        ));
    }
    Ok(Credential { scheme, token })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(values: &[&str]) -> Reason {
        credential(values, 64).unwrap_err().reason
    }

    #[test]
    fn bearer_and_dpop_schemes_case_insensitive() {
        let c = credential(&["Bearer abc.def.ghi"], 64).unwrap();
        assert_eq!((c.scheme, c.token), (Scheme::Bearer, "abc.def.ghi"));
        let c = credential(&["bEaReR   abc"], 64).unwrap();
        assert_eq!(c.token, "abc");
        let c = credential(&["DPoP abc"], 64).unwrap();
        assert_eq!(c.scheme, Scheme::DPoP);
    }

    #[test]
    fn refusals() {
        assert_eq!(reason(&[]), Reason::MissingToken);
        assert_eq!(reason(&["Basic dXNlcjpwYXNz"]), Reason::MissingToken);
        assert_eq!(reason(&["Bearer"]), Reason::MalformedToken);
        assert_eq!(reason(&["Bearer "]), Reason::MalformedToken);
        assert_eq!(reason(&["Bearer a", "Bearer b"]), Reason::MalformedToken);
        assert_eq!(reason(&["Bearer a,Bearer b"]), Reason::MalformedToken);
        assert_eq!(reason(&["Bearer a b"]), Reason::MalformedToken);
        assert_eq!(reason(&["Bearer \"quoted\""]), Reason::MalformedToken);
        assert_eq!(
            reason(&[&format!("Bearer {}", "a".repeat(65))]),
            Reason::TokenTooLarge
        );
        assert!(credential(&[&format!("Bearer {}", "a".repeat(64))], 64).is_ok());
    }
}
