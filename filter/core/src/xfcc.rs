//! `x-forwarded-client-cert` (Envoy's XFCC format) from trusted forwarders.
//!
//! Behind an ingress gateway the sidecar's mTLS peer is the gateway, not the original client.
//! When the peer is one of `trusted_forwarders`, the client identity the gateway saw (the last
//! XFCC element: the one the gateway appended about its own downstream) stands in for the peer.
//! XFCC from anyone else is ignored: any workload could write the header.

use crate::peer::{decode_hex32, Peer};
use crate::svid;

/// One XFCC element's fields this filter uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    /// `Hash`: hex SHA-256 of the client certificate DER.
    pub hash: Option<String>,
    /// `URI`: the client certificate's URI SANs, one entry each, in order.
    pub uris: Vec<String>,
}

/// Splits on `sep` outside double quotes (quotes may contain `\"` escapes).
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(s.get(start..i).unwrap_or(""));
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(s.get(start..).unwrap_or(""));
    parts
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\""),
        None => v.to_owned(),
    }
}

/// Parses an XFCC header value into its elements (one per hop), or `None` if malformed.
pub fn parse(value: &str) -> Option<Vec<Element>> {
    if value.trim().is_empty() || value.len() > 64 * 1024 {
        return None;
    }
    let mut elements = Vec::new();
    for element in split_unquoted(value, ',') {
        let mut e = Element::default();
        for pair in split_unquoted(element, ';') {
            if pair.trim().is_empty() {
                continue;
            }
            let (key, val) = pair.split_once('=')?;
            match key.trim().to_ascii_lowercase().as_str() {
                "hash" => e.hash = Some(unquote(val)),
                "uri" => e.uris.push(unquote(val)),
                "by" | "cert" | "chain" | "subject" | "dns" => {}
                _ => return None,
            }
        }
        elements.push(e);
    }
    Some(elements)
}

/// What an XFCC header says about a forwarded client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forwarded {
    /// Nothing beyond what this sidecar appended about its own peer.
    Nothing,
    /// The client the forwarder saw.
    Client(Peer),
    /// Malformed, or the forwarder's element names no certificate.
    Invalid,
}

/// The client a forwarding peer saw, from the XFCC header as the filter receives it.
///
/// With `forward_client_cert_details: APPEND_FORWARD` (Istio's sidecar default) this sidecar
/// appends an element about its own peer; that element (whose `Hash` is the peer's certificate
/// digest) is dropped first. The element before it is the one the forwarder appended about its
/// client.
pub fn forwarded_client(value: &str, peer: &Peer) -> Forwarded {
    let Some(mut elements) = parse(value) else {
        return Forwarded::Invalid;
    };
    let appended_here = |e: &Element| {
        let hash = e.hash.as_deref().and_then(|h| decode_hex32(h.as_bytes()));
        hash.is_some() && hash == peer.cert_sha256
    };
    if elements.last().is_some_and(appended_here) {
        elements.pop();
    }
    let Some(last) = elements.pop() else {
        return Forwarded::Nothing;
    };
    let cert_sha256 = last
        .hash
        .as_deref()
        .and_then(|h| decode_hex32(h.as_bytes()));
    if cert_sha256.is_none() && last.uris.is_empty() {
        return Forwarded::Invalid;
    }
    // The X.509-SVID rule for the forwarded client's certificate, from its URI entries: exactly
    // one, a SPIFFE ID with a path. `Cert=` (if any) is not parsed: the forwarder verified it.
    let svid = svid::check_uri_sans(last.uris.iter().map(String::as_str));
    Forwarded::Client(Peer {
        mtls: true,
        uri_san: last.uris.into_iter().next(),
        cert_sha256,
        certificate_pem: None,
        svid: Some(svid),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "c1dd4102be3a7dec5cfce0f4e5bc1d3c2fa54421df96c84ae842343e74b7c80f";

    #[test]
    fn envoy_format() {
        let v = format!(
            "By=spiffe://cluster.local/ns/istio-system/sa/gw;Hash={HASH};Subject=\"CN=client,O=a;b,c\";URI=spiffe://cluster.local/ns/default/sa/client"
        );
        let e = parse(&v).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].uris, ["spiffe://cluster.local/ns/default/sa/client"]);
        let Forwarded::Client(p) = forwarded_client(&v, &Peer::default()) else {
            panic!("no client");
        };
        assert!(p.mtls);
        assert_eq!(p.cert_sha256.unwrap()[0], 0xc1);
    }

    #[test]
    fn the_element_this_sidecar_appended_about_its_peer_is_skipped() {
        const GW_HASH: &str = "00000000000000000000000000000000000000000000000000000000000000aa";
        let gateway = Peer {
            mtls: true,
            uri_san: Some("spiffe://td/gw".into()),
            cert_sha256: decode_hex32(GW_HASH.as_bytes()),
            ..Peer::default()
        };
        // APPEND_FORWARD on this sidecar: [gateway's view of the client, our view of the gateway].
        let v = format!("By=spiffe://td/gw;Hash={HASH};URI=spiffe://td/client,By=spiffe://td/me;Hash={GW_HASH};URI=spiffe://td/gw");
        let Forwarded::Client(c) = forwarded_client(&v, &gateway) else {
            panic!("no client");
        };
        assert_eq!(c.uri_san.as_deref(), Some("spiffe://td/client"));
        // ALWAYS_FORWARD_ONLY: only the gateway's element.
        let v = format!("By=spiffe://td/gw;Hash={HASH};URI=spiffe://td/client");
        assert!(matches!(
            forwarded_client(&v, &gateway),
            Forwarded::Client(_)
        ));
        // SANITIZE_SET here, or a direct caller under APPEND_FORWARD: only our own element.
        let v = format!("By=spiffe://td/me;Hash={GW_HASH};URI=spiffe://td/gw");
        assert_eq!(forwarded_client(&v, &gateway), Forwarded::Nothing);
    }

    #[test]
    fn the_forwarded_client_must_have_exactly_one_spiffe_uri() {
        use crate::svid::SvidError;
        let verdict = |v: &str| match forwarded_client(v, &Peer::default()) {
            Forwarded::Client(p) => p.svid.unwrap(),
            other => panic!("{other:?}"),
        };
        let one = format!("Hash={HASH};URI=spiffe://td/ns/a/sa/b");
        assert_eq!(verdict(&one).unwrap().as_str(), "spiffe://td/ns/a/sa/b");
        let two = format!("Hash={HASH};URI=spiffe://td/ns/a/sa/b;URI=spiffe://td/ns/a/sa/c");
        assert_eq!(verdict(&two), Err(SvidError::SeveralUriSans));
        assert_eq!(verdict(&format!("Hash={HASH}")), Err(SvidError::NoUriSan));
        assert!(matches!(
            verdict(&format!("Hash={HASH};URI=https://td/a")),
            Err(SvidError::InvalidSpiffeId(_))
        ));
        assert_eq!(
            verdict(&format!("Hash={HASH};URI=spiffe://td")),
            Err(SvidError::RootSpiffeId)
        );
    }

    #[test]
    fn malformed_or_empty() {
        assert!(parse("").is_none());
        assert!(parse("garbage").is_none());
        assert!(parse("Foo=bar").is_none());
        assert_eq!(
            forwarded_client("By=spiffe://td/gw", &Peer::default()),
            Forwarded::Invalid
        );
        assert_eq!(
            forwarded_client("garbage", &Peer::default()),
            Forwarded::Invalid
        );
        assert!(parse("Subject=\"unterminated").is_some());
    }
}
