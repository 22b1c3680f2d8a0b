//! Rebuilding and normalising the request URI for DPoP `htu` (RFC 9449 §4.3 step 9).
//!
//! Both sides of the comparison go through [`normalize`]: the `htu` in the proof, and the URI
//! rebuilt from the request as `<scheme>://<:authority><:path without query>`. Normalisation is
//! RFC 3986 §6.2.2 (case, percent-encoding, dot segments) and §6.2.3 (default port, empty
//! path), and query and fragment are dropped, as RFC 9449 requires.
//!
//! The scheme is the one the client used ([`client_scheme`]), which is not always `:scheme`.

use crate::host::Host;
use crate::peer::nibble;

/// Normalises an absolute http(s) URI for `htu` comparison. Returns `None` for anything that
/// is not an absolute `http` or `https` URI with an authority and no userinfo.
pub fn normalize(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => "443",
        "http" => "80",
        _ => return None,
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let authority = match authority.rsplit_once(':') {
        // Not an IPv6 literal's colon: the port is after the last ']' (if any).
        Some((host, port)) if !port.contains(']') => {
            if port.is_empty() || port == default_port {
                host.to_owned()
            } else if port.bytes().all(|b| b.is_ascii_digit()) {
                authority.clone()
            } else {
                return None;
            }
        }
        _ => authority,
    };
    let path = normalize_percent(path)?;
    let path = remove_dot_segments(&path);
    let path = if path.is_empty() {
        "/".to_owned()
    } else {
        path
    };
    Some(format!("{scheme}://{authority}{path}"))
}

/// Rebuilds the request's URI from its pseudo-headers, ready for [`normalize`].
pub fn request_uri(scheme: &str, authority: &str, path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    format!("{scheme}://{authority}{path}")
}

/// The scheme the client used, for rebuilding its URI: the first `x-forwarded-proto` value
/// (lower-cased) only when `trust_forwarded_proto`; otherwise the connection itself (TLS or
/// not); `:scheme` only if the proxy cannot tell. Envoy derives `:scheme` for HTTP/1 from a
/// client-supplied `x-forwarded-proto` unless `use_remote_address` is set, so it is the last
/// resort. Reads only the headers the answer needs.
pub fn client_scheme(host: &dyn Host, trust_forwarded_proto: bool) -> String {
    let forwarded = trust_forwarded_proto
        .then(|| host.request_header("x-forwarded-proto"))
        .flatten()
        .map(|p| {
            p.split(',')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match (forwarded, host.downstream_tls()) {
        (Some(p), _) => p,
        (None, Some(true)) => "https".to_owned(),
        (None, Some(false)) => "http".to_owned(),
        (None, None) => host.request_header(":scheme").unwrap_or_default(),
    }
}

/// The URI the client sent this request to ([`client_scheme`], `:authority`, `path` without
/// query), normalised; `None` if it has no normal form.
pub fn client_request_uri(
    host: &dyn Host,
    path: &str,
    trust_forwarded_proto: bool,
) -> Option<String> {
    let scheme = client_scheme(host, trust_forwarded_proto);
    let authority = host.request_header(":authority").unwrap_or_default();
    normalize(&request_uri(&scheme, &authority, path))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn upper_hex(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16).map_or('0', |c| c.to_ascii_uppercase())
}

/// Upper-cases percent-encoding hex digits and decodes percent-encoded unreserved characters.
fn normalize_percent(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(nibble)?;
            let lo = bytes.get(i + 2).copied().and_then(nibble)?;
            let decoded = (hi << 4) | lo;
            if is_unreserved(decoded) {
                out.push(char::from(decoded));
            } else {
                out.push('%');
                out.push(upper_hex(hi));
                out.push(upper_hex(lo));
            }
            i += 3;
        } else {
            if !b.is_ascii() || b.is_ascii_control() || b == b' ' {
                return None;
            }
            out.push(char::from(b));
            i += 1;
        }
    }
    Some(out)
}

/// RFC 3986 §5.2.4.
fn remove_dot_segments(path: &str) -> String {
    let mut output: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    output.push("");
                }
            }
            ".." => {
                if output.len() > 1 {
                    output.pop();
                }
                if i == last {
                    output.push("");
                }
            }
            s => output.push(s),
        }
    }
    output.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        let cases = [
            (
                "https://resource.example.org/protectedresource",
                "https://resource.example.org/protectedresource",
            ),
            (
                "HTTPS://Resource.Example.ORG:443/protectedresource",
                "https://resource.example.org/protectedresource",
            ),
            (
                "https://resource.example.org/protectedresource?x=1#f",
                "https://resource.example.org/protectedresource",
            ),
            (
                "https://resource.example.org",
                "https://resource.example.org/",
            ),
            (
                "https://resource.example.org:8443/a",
                "https://resource.example.org:8443/a",
            ),
            (
                "http://resource.example.org:80/a",
                "http://resource.example.org/a",
            ),
            ("https://h/a/./b/../c", "https://h/a/c"),
            ("https://h/%7Euser/%2f", "https://h/~user/%2F"),
            ("https://[::1]:443/a", "https://[::1]/a"),
            ("https://[::1]:8443/a", "https://[::1]:8443/a"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).as_deref(), Some(want), "{input}");
        }
    }

    #[test]
    fn path_case_is_significant() {
        assert_ne!(normalize("https://h/A"), normalize("https://h/a"));
    }

    #[test]
    fn refusals() {
        for bad in [
            "ftp://h/a",
            "https:///a",
            "https://u@h/a",
            "/relative",
            "https://h/%zz",
            "https://h:x/a",
            "https://h/a b",
        ] {
            assert_eq!(normalize(bad), None, "{bad}");
        }
    }

    use crate::host::MockHost;

    #[test]
    fn scheme_selection() {
        // (trust_forwarded_proto, downstream TLS, x-forwarded-proto, :scheme) -> scheme
        let cases = [
            (false, None, None, "https", "https"),
            (false, None, None, "HTTP", "HTTP"),
            (false, Some(true), None, "http", "https"),
            (false, Some(false), None, "https", "http"),
            (false, Some(true), Some("http"), "http", "https"),
            (false, None, Some("http"), "https", "https"),
            (true, Some(false), Some("HTTPS"), "http", "https"),
            (true, Some(true), Some("http, https"), "https", "http"),
            (true, Some(false), Some(" https ,http"), "http", "https"),
            (true, Some(false), None, "https", "http"),
            (true, None, None, "http", "http"),
        ];
        for (trust, tls, forwarded, scheme, want) in cases {
            let mut host = MockHost::new().with_header(":scheme", scheme);
            if let Some(tls) = tls {
                host = host.with_tls(tls);
            }
            if let Some(p) = forwarded {
                host = host.with_header("x-forwarded-proto", p);
            }
            assert_eq!(
                client_scheme(&host, trust),
                want,
                "{trust} {tls:?} {forwarded:?} {scheme}"
            );
        }
    }

    #[test]
    fn no_scheme_at_all_has_no_request_uri() {
        let host = MockHost::new().without_header(":scheme");
        assert_eq!(client_scheme(&host, false), "");
        assert_eq!(client_request_uri(&host, "/a", false), None);
    }

    #[test]
    fn client_request_uri_drops_the_query_and_normalises() {
        let host = MockHost::new()
            .with_tls(true)
            .with_header(":authority", "Orders.Mesh.Local:443");
        assert_eq!(
            client_request_uri(&host, "/api/./orders?page=2", false).as_deref(),
            Some("https://orders.mesh.local/api/orders")
        );
    }

    #[test]
    fn rebuilds_from_pseudo_headers() {
        assert_eq!(
            normalize(&request_uri(
                "https",
                "resource.example.org",
                "/protectedresource?q=1"
            ))
            .as_deref(),
            Some("https://resource.example.org/protectedresource")
        );
    }
}
