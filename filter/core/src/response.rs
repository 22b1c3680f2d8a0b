//! The 401 a denied request receives (RFC 6750 §3).

use crate::reason::Reason;

/// A local reply: status, headers, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// The `WWW-Authenticate` challenge for a denial. A request with no token gets no error
/// code (RFC 6750 §3.1); every other denial is `invalid_token` with a static description.
pub fn www_authenticate(reason: Reason, realm: &str) -> String {
    match reason {
        Reason::MissingToken => format!("Bearer realm=\"{realm}\""),
        _ => format!(
            "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
            reason.description()
        ),
    }
}

/// The full 401 reply. The body names the reason and never echoes request data.
pub fn unauthorized(reason: Reason, realm: &str) -> Reply {
    Reply {
        status: 401,
        headers: vec![
            ("www-authenticate", www_authenticate(reason, realm)),
            ("content-type", "application/json".to_owned()),
            ("cache-control", "no-store".to_owned()),
        ],
        body: format!(
            "{{\"error\":\"invalid_token\",\"reason\":\"{}\"}}",
            reason.as_str()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_token_has_no_error_attribute() {
        assert_eq!(
            www_authenticate(Reason::MissingToken, "tokenbind"),
            "Bearer realm=\"tokenbind\""
        );
    }

    #[test]
    fn other_reasons_are_invalid_token_with_description() {
        assert_eq!(
            www_authenticate(Reason::SpiffeMismatch, "tokenbind"),
            "Bearer realm=\"tokenbind\", error=\"invalid_token\", error_description=\"the token is bound to a different workload\""
        );
    }

    #[test]
    fn body_is_json_with_reason() {
        for r in Reason::ALL {
            let reply = unauthorized(r, "tokenbind");
            assert_eq!(reply.status, 401);
            let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
            assert_eq!(v["error"], "invalid_token");
            assert_eq!(v["reason"], r.as_str());
        }
    }
}
