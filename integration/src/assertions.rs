//! Assertions on the filter's HTTP contract, with failure messages that show
//! the whole response.

use serde_json::json;

use crate::client::Response;
use crate::UPSTREAM_BODY;

/// Every denial reason the filter defines.
pub const REASONS: [&str; 29] = [
    "missing_token",
    "malformed_token",
    "token_too_large",
    "unsupported_algorithm",
    "unknown_issuer",
    "unknown_key",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "audience_mismatch",
    "no_peer_certificate",
    "invalid_spiffe_id",
    "spiffe_mismatch",
    "trust_domain_not_allowed",
    "invalid_peer_svid",
    "thumbprint_mismatch",
    "unbound_token",
    "unsupported_binding",
    "dpop_required",
    "dpop_invalid",
    "dpop_replayed",
    "dpop_key_mismatch",
    "dpop_ath_mismatch",
    "dpop_htm_mismatch",
    "dpop_htu_mismatch",
    "dpop_iat_out_of_window",
    "dpop_nonce_required",
    "dpop_downgrade",
    "jwks_unavailable",
];

/// The RFC 6750 / RFC 9449 `error` code the filter uses for a reason.
pub fn error_code(reason: &str) -> &'static str {
    match reason {
        "dpop_nonce_required" => "use_dpop_nonce",
        "dpop_required"
        | "dpop_invalid"
        | "dpop_replayed"
        | "dpop_key_mismatch"
        | "dpop_ath_mismatch"
        | "dpop_htm_mismatch"
        | "dpop_htu_mismatch"
        | "dpop_iat_out_of_window" => "invalid_dpop_proof",
        _ => "invalid_token",
    }
}

/// Whether the filter challenges with the DPoP scheme for this reason (a request that used the
/// DPoP scheme is always challenged with DPoP; see `assert_denied_dpop`).
fn dpop_challenge(reason: &str) -> bool {
    reason.starts_with("dpop_")
}

/// The request reached the route: 200 with the direct-response body.
#[track_caller]
pub fn assert_allowed(resp: &Response, context: &str) {
    assert_eq!(
        resp.status, 200,
        "{context}: expected 200 from the upstream route, got:\n{resp}"
    );
    assert_eq!(resp.body_str(), UPSTREAM_BODY, "{context}: body:\n{resp}");
}

/// The filter denied with `reason`:
/// * status 401,
/// * `content-type: application/json`,
/// * body the JSON object `{"error":"invalid_token","reason":"<reason>"}`
///   and nothing else,
/// * exactly one `www-authenticate`:
///   `Bearer realm="tokenbind", error="invalid_token", error_description="<text>"`
///   (non-empty text without quotes or backslashes), except for
///   `missing_token` where it is exactly `Bearer realm="tokenbind"`.
#[track_caller]
pub fn assert_denied(resp: &Response, reason: &str, context: &str) {
    assert!(
        REASONS.contains(&reason),
        "test bug: {reason} is not a reason"
    );
    assert_eq!(
        resp.status, 401,
        "{context}: expected 401 {reason}, got:\n{resp}"
    );
    let body = resp.json();
    let code = error_code(reason);
    assert_eq!(
        body,
        Some(json!({"error": code, "reason": reason})),
        "{context}: expected body {{\"error\":\"{code}\",\"reason\":\"{reason}\"}}, got:\n{resp}"
    );
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(
        ct == "application/json" || ct.starts_with("application/json;"),
        "{context}: content-type {ct:?}, response:\n{resp}"
    );
    let challenges = resp.header_all("www-authenticate");
    assert_eq!(
        challenges.len(),
        1,
        "{context}: expected exactly one www-authenticate, got:\n{resp}"
    );
    let challenge = challenges[0];
    if reason == "missing_token" {
        assert_eq!(
            challenge, r#"Bearer realm="tokenbind""#,
            "{context}: response:\n{resp}"
        );
    } else if reason == "dpop_nonce_required" {
        assert_eq!(
            challenge,
            r#"DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof""#,
            "{context}: response:\n{resp}"
        );
    } else if dpop_challenge(reason) {
        assert_dpop_challenge_shape(challenge, code, context);
    } else {
        assert_challenge_shape(challenge, context);
    }
}

/// `DPoP algs="<algs>", error="<code>", error_description="<text>"` (RFC 9449 §7.1).
#[track_caller]
pub fn assert_dpop_challenge_shape(challenge: &str, code: &str, context: &str) {
    let rest = challenge.strip_prefix(r#"DPoP algs=""#).unwrap_or_else(|| {
        panic!("{context}: www-authenticate {challenge:?} is not a DPoP challenge")
    });
    let (algs, rest) = rest
        .split_once('"')
        .unwrap_or_else(|| panic!("{context}: unterminated algs in {challenge:?}"));
    assert!(
        !algs.is_empty()
            && algs
                .split(' ')
                .all(|a| !a.is_empty() && a != "none" && !a.starts_with("HS")),
        "{context}: bad algs {algs:?}"
    );
    let prefix = format!(r#", error="{code}", error_description=""#);
    let description = rest
        .strip_prefix(prefix.as_str())
        .and_then(|d| d.strip_suffix('"'))
        .unwrap_or_else(|| {
            panic!("{context}: www-authenticate {challenge:?} lacks error=\"{code}\"")
        });
    assert!(
        !description.is_empty() && !description.contains('"') && !description.contains('\\'),
        "{context}: bad error_description {description:?}"
    );
}

/// `Bearer realm="tokenbind", error="invalid_token", error_description="<text>"`.
#[track_caller]
pub fn assert_challenge_shape(challenge: &str, context: &str) {
    let prefix = r#"Bearer realm="tokenbind", error="invalid_token", error_description=""#;
    let description = challenge
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| {
            panic!(
                "{context}: www-authenticate {challenge:?} is not \
                 Bearer realm=\"tokenbind\", error=\"invalid_token\", error_description=\"...\""
            )
        });
    assert!(
        !description.is_empty()
            && !description.contains('"')
            && !description.contains('\\')
            && description
                .chars()
                .all(|c| c == ' ' || c.is_ascii_graphic()),
        "{context}: bad error_description {description:?}"
    );
}

/// Neither the token nor its signature segment appears anywhere in the
/// response (status line, headers, body).
#[track_caller]
pub fn assert_no_token_in_response(resp: &Response, token: &str, context: &str) {
    let text = resp.to_string();
    for needle in secrets_of(token) {
        assert!(
            !text.contains(needle),
            "{context}: the response leaks the token (or a segment of it):\n{text}"
        );
    }
}

/// Neither the token nor its signature or payload segment appears in `log`.
#[track_caller]
pub fn assert_no_token_in_log(log: &str, token: &str, context: &str) {
    for needle in secrets_of(token) {
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            panic!("{context}: the Envoy log leaks the token: {line}");
        }
    }
}

/// The whole token, its payload and its signature: none may leak. (The
/// header segment is mostly constant across tokens and not secret.)
fn secrets_of(token: &str) -> Vec<&str> {
    let mut out = vec![token];
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() == 3 {
        out.extend(parts[1..].iter().filter(|p| p.len() >= 16));
    }
    out
}
