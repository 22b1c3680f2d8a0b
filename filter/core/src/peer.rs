//! The downstream mTLS peer, as Envoy reports it through connection attributes.

use crate::svid::Verdict;
use std::fmt;

/// The Envoy attribute (under `connection.`) holding the peer's leaf certificate, PEM.
pub const PEER_CERTIFICATE: &str = "peer_certificate";

/// What Envoy knows about the caller's TLS client certificate.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// `connection.mtls`: the peer presented a client certificate.
    pub mtls: bool,
    /// `connection.uri_san_peer_certificate`: the first URI SAN of the leaf.
    pub uri_san: Option<String>,
    /// `connection.sha256_peer_certificate_digest`, decoded from hex.
    pub cert_sha256: Option<[u8; 32]>,
    /// `connection.peer_certificate`: the leaf, PEM. Read only when its SVID verdict is not
    /// cached (see [`crate::svid`]).
    pub certificate_pem: Option<Vec<u8>>,
    /// Whether the certificate is an X.509-SVID leaf, and its SPIFFE ID: set by the engine
    /// (never by the host) when a SPIFFE binding or a trusted forwarder needs it.
    pub svid: Option<Verdict>,
}

/// Which peer attributes a decision needs. Each costs a host call, so the engine asks only
/// for what the token's bindings (and the configuration) will look at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerWant {
    /// `connection.uri_san_peer_certificate`: SPIFFE binding, trusted forwarders, logs.
    pub uri_san: bool,
    /// `connection.sha256_peer_certificate_digest`: `cnf.x5t#S256`, XFCC, the SVID cache key.
    pub digest: bool,
    /// `connection.peer_certificate`: the leaf PEM, for the X.509-SVID check on a cache miss.
    pub certificate: bool,
}

impl PeerWant {
    pub const NOTHING: PeerWant = PeerWant {
        uri_san: false,
        digest: false,
        certificate: false,
    };
    pub const ALL: PeerWant = PeerWant {
        uri_san: true,
        digest: true,
        certificate: true,
    };
    /// Only the leaf PEM.
    pub const CERTIFICATE: PeerWant = PeerWant {
        uri_san: false,
        digest: false,
        certificate: true,
    };

    pub fn any(self) -> bool {
        self.uri_san || self.digest || self.certificate
    }
}

/// Reads the wanted attributes through `get` (attribute name under `connection.`).
/// `connection.mtls` is read only when neither a URI SAN nor a digest answered: either one
/// already proves a client certificate, and `mtls` is needed only to tell "no certificate"
/// apart from "a certificate without a URI SAN".
pub fn read(want: PeerWant, get: impl Fn(&str) -> Option<Vec<u8>>) -> Peer {
    if !want.any() {
        return Peer::default();
    }
    let uri_san = want
        .uri_san
        .then(|| get("uri_san_peer_certificate"))
        .flatten();
    let digest = want
        .digest
        .then(|| get("sha256_peer_certificate_digest"))
        .flatten();
    let certificate_pem = want
        .certificate
        .then(|| get(PEER_CERTIFICATE))
        .flatten()
        .filter(|p| !p.is_empty());
    let proven = uri_san.as_ref().is_some_and(|u| !u.is_empty())
        || digest.as_ref().is_some_and(|d| !d.is_empty())
        || certificate_pem.is_some();
    let mtls = if proven { Some(vec![1]) } else { get("mtls") };
    Peer::from_attributes(mtls.as_deref(), uri_san.as_deref(), digest.as_deref())
        .with_certificate_pem(certificate_pem)
}

impl Peer {
    /// The peer with only the wanted fields (what a lazy host read would have returned).
    pub fn masked(&self, want: PeerWant) -> Peer {
        let uri_san = self.uri_san.clone().filter(|_| want.uri_san);
        let cert_sha256 = self.cert_sha256.filter(|_| want.digest);
        let certificate_pem = self.certificate_pem.clone().filter(|_| want.certificate);
        Peer {
            mtls: want.any() && self.mtls,
            uri_san,
            cert_sha256,
            certificate_pem,
            svid: None,
        }
    }

    /// The same peer with its leaf certificate (PEM), as `connection.peer_certificate` gives it.
    pub fn with_certificate_pem(mut self, pem: Option<Vec<u8>>) -> Peer {
        self.certificate_pem = pem;
        self
    }

    /// Builds a peer from the raw attribute bytes Envoy returns. Absent or malformed
    /// attributes become `false` / `None`; nothing here can fail the request by itself.
    pub fn from_attributes(
        mtls: Option<&[u8]>,
        uri_san: Option<&[u8]>,
        sha256_hex: Option<&[u8]>,
    ) -> Peer {
        Peer {
            // Envoy serialises a bool attribute as one byte.
            mtls: mtls.is_some_and(|b| b.first().is_some_and(|v| *v != 0)),
            uri_san: uri_san
                .filter(|b| !b.is_empty())
                .and_then(|b| std::str::from_utf8(b).ok())
                .map(str::to_owned),
            cert_sha256: sha256_hex.and_then(decode_hex32),
            certificate_pem: None,
            svid: None,
        }
    }

    pub fn has_certificate(&self) -> bool {
        self.mtls || self.cert_sha256.is_some()
    }

    /// The peer's SPIFFE ID, when its URI SAN is one (for logs and metadata).
    pub fn spiffe_id(&self) -> Option<&str> {
        self.uri_san
            .as_deref()
            .filter(|u| u.starts_with("spiffe://"))
    }
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("mtls", &self.mtls)
            .field("uri_san", &self.uri_san)
            .field("cert_sha256", &self.cert_sha256.is_some())
            .field("certificate_pem", &self.certificate_pem.is_some())
            .field("svid", &self.svid)
            .finish()
    }
}

/// Decodes 64 hex digits (either case) into 32 bytes.
pub fn decode_hex32(hex: &[u8]) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let hi = (pair.first().copied().and_then(nibble))?;
        let lo = (pair.get(1).copied().and_then(nibble))?;
        *byte = (hi << 4) | lo;
    }
    Some(out)
}

/// The value of one hex digit (either case).
pub(crate) fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Reads `read` makes against a peer with the given attributes, and the peer it builds.
    fn reads(want: PeerWant, uri: &[u8], digest: &[u8]) -> (Vec<String>, Peer) {
        let log = RefCell::new(Vec::new());
        let peer = read(want, |name| {
            log.borrow_mut().push(name.to_owned());
            match name {
                "mtls" => Some(vec![u8::from(!uri.is_empty() || !digest.is_empty())]),
                "uri_san_peer_certificate" => Some(uri.to_vec()),
                "sha256_peer_certificate_digest" => Some(digest.to_vec()),
                "peer_certificate" => Some(b"PEM".to_vec()),
                _ => None,
            }
        });
        (log.into_inner(), peer)
    }

    #[test]
    fn reads_only_what_is_wanted() {
        let hex = [b'a'; 64];
        let uri = b"spiffe://td/ns/a/sa/b";
        let (log, peer) = reads(PeerWant::NOTHING, uri, &hex);
        assert!(log.is_empty());
        assert_eq!(peer, Peer::default());
        // A URI SAN proves a certificate: no mtls read.
        let want_uri = PeerWant {
            uri_san: true,
            ..PeerWant::NOTHING
        };
        let (log, peer) = reads(want_uri, uri, &hex);
        assert_eq!(log, ["uri_san_peer_certificate"]);
        assert!(peer.has_certificate() && peer.cert_sha256.is_none());
        // No URI SAN: mtls tells "no certificate" from "certificate without URI SAN".
        let (log, peer) = reads(want_uri, b"", &hex);
        assert_eq!(log, ["uri_san_peer_certificate", "mtls"]);
        assert!(peer.has_certificate() && peer.uri_san.is_none());
        let (_, peer) = reads(want_uri, b"", b"");
        assert!(!peer.has_certificate());
        let want_both = PeerWant {
            uri_san: true,
            digest: true,
            certificate: false,
        };
        let (log, peer) = reads(want_both, uri, &hex);
        assert_eq!(
            log,
            ["uri_san_peer_certificate", "sha256_peer_certificate_digest"]
        );
        assert!(peer.certificate_pem.is_none());
        // The PEM alone (an SVID cache miss): it proves a certificate too.
        assert_eq!(peer.cert_sha256, Some([0xaa; 32]));
        let (log, leaf) = reads(PeerWant::CERTIFICATE, uri, &hex);
        assert_eq!(log, ["peer_certificate"]);
        assert!(leaf.has_certificate());
        assert_eq!(leaf.certificate_pem.as_deref(), Some(b"PEM".as_slice()));
    }

    #[test]
    fn hex_digest_decodes_in_either_case() {
        let lower = "00ff10abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123";
        let d = decode_hex32(lower.as_bytes()).unwrap();
        assert_eq!(d[0], 0x00);
        assert_eq!(d[1], 0xff);
        assert_eq!(d[2], 0x10);
        assert_eq!(decode_hex32(lower.to_uppercase().as_bytes()), Some(d));
        assert_eq!(decode_hex32(b"00ff"), None);
        assert_eq!(decode_hex32(&[b'g'; 64]), None);
    }

    #[test]
    fn attributes_map_to_a_peer() {
        let p = Peer::from_attributes(Some(&[1]), Some(b"spiffe://td/a"), None);
        assert!(p.mtls && p.has_certificate());
        assert_eq!(p.spiffe_id(), Some("spiffe://td/a"));
        let p = Peer::from_attributes(Some(&[0]), None, None);
        assert!(!p.has_certificate());
        let p = Peer::from_attributes(None, Some(b"https://x"), None);
        assert_eq!(p.spiffe_id(), None);
    }
}
