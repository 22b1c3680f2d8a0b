//! Is the peer's certificate an X.509-SVID leaf? The SPIFFE X.509-SVID standard
//! (spiffe/spiffe, `standards/X509-SVID.md`) and the SPIFFE ID standard (`standards/SPIFFE-ID.md`).
//!
//! Envoy has already validated the chain during the handshake (X509-SVID.md §5.1, path
//! validation). What it does not check are the SPIFFE leaf rules of §5.2, and
//! `connection.uri_san_peer_certificate` reports only the first URI SAN. So the leaf itself
//! (`connection.peer_certificate`, PEM) is parsed here, and must satisfy:
//!
//! - §2 and §5.2: exactly one URI SAN ("Validators encountering an SVID containing more than one
//!   URI SAN MUST reject the SVID"; an SVID "MUST contain exactly one URI SAN");
//! - §5.2 and SPIFFE-ID.md §2: that URI SAN is a valid SPIFFE ID (scheme `spiffe`) with a
//!   non-root path (§3.1, §5.2: "MUST ensure that the SPIFFE ID has a non-root path component");
//! - §4.1 and §5.2: basic constraints `cA` is false (an absent extension means false,
//!   RFC 5280 §4.2.1.9);
//! - §4.3 and §5.2: key usage has neither `keyCertSign` nor `cRLSign`.
//!
//! Not required here: `digitalSignature` and the key usage extension itself. §4.3 says a leaf
//! "MUST set `digitalSignature`" and that key usage "MUST be set on all SVIDs", but those are
//! rules for the issuer; the validator's list in §5.2 names only `cA`, `keyCertSign`, `cRLSign`,
//! the scheme, the path and the URI SAN count. (go-spiffe's `x509svid.Verify` checks the same
//! list.) The TLS handshake has already proved that the key signs. Validity dates are Envoy's
//! (path validation); they only bound how long a verdict is cached.

use crate::expiring::ExpiringMap;
use crate::spiffe::{SpiffeId, SpiffeIdError};
use der::Decode;
use sha2::{Digest, Sha256};
use std::fmt;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, SubjectAltName};
use x509_cert::Certificate;

/// The largest PEM accepted: an SVID leaf is 1-2 KB; this leaves room for big RSA keys and
/// many DNS SANs while bounding the work an odd certificate can cause.
pub const MAX_PEM_BYTES: usize = 16 * 1024;

/// A certificate that is a valid X.509-SVID leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svid {
    /// The SPIFFE ID of its one URI SAN.
    pub id: SpiffeId,
    /// `notAfter`, Unix seconds.
    pub not_after: u64,
    /// SHA-256 of the certificate DER (what Envoy reports as the peer certificate digest).
    pub sha256: [u8; 32],
}

/// Why a peer certificate is not a valid X.509-SVID leaf. Each maps to a static message for the
/// denial detail in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvidError {
    /// The proxy did not give the certificate (`connection.peer_certificate`).
    Unavailable,
    /// More than [`MAX_PEM_BYTES`].
    TooLarge,
    /// Not exactly one PEM `CERTIFICATE` block (RFC 7468 strict).
    NotPem,
    /// The DER is not an X.509 certificate.
    NotCertificate,
    /// An extension this check reads (SAN, basic constraints, key usage) is malformed or repeated.
    BadExtension,
    /// §2: no URI SAN.
    NoUriSan,
    /// §2, §5.2: more than one URI SAN.
    SeveralUriSans,
    /// §5.2, SPIFFE-ID.md §2: the URI SAN is not a SPIFFE ID.
    InvalidSpiffeId(SpiffeIdError),
    /// §3.1, §5.2: the SPIFFE ID has no path (a trust domain's own ID is not a workload).
    RootSpiffeId,
    /// §4.1, §5.2: `cA` is true.
    CaFlag,
    /// §4.3, §5.2: key usage has `keyCertSign`.
    KeyCertSign,
    /// §4.3, §5.2: key usage has `cRLSign`.
    CrlSign,
    /// The certificate's SHA-256 is not the digest the proxy reports for the peer.
    DigestMismatch,
    /// The certificate's URI SAN is not what the proxy reports as the peer's URI SAN.
    UriSanMismatch,
}

impl SvidError {
    pub const fn message(self) -> &'static str {
        match self {
            SvidError::Unavailable => "peer certificate not available from the proxy",
            SvidError::TooLarge => "peer certificate PEM is too large",
            SvidError::NotPem => "peer certificate is not exactly one PEM CERTIFICATE",
            SvidError::NotCertificate => "peer certificate is not valid X.509 DER",
            SvidError::BadExtension => {
                "peer certificate has a malformed or repeated SAN, basic constraints or key usage"
            }
            SvidError::NoUriSan => "peer certificate has no URI SAN (X509-SVID 2)",
            SvidError::SeveralUriSans => {
                "peer certificate has more than one URI SAN (X509-SVID 2, 5.2)"
            }
            SvidError::InvalidSpiffeId(e) => match e {
                SpiffeIdError::WrongScheme => {
                    "peer certificate URI SAN is not a spiffe:// ID (X509-SVID 5.2)"
                }
                _ => "peer certificate URI SAN is not a valid SPIFFE ID (SPIFFE-ID 2)",
            },
            SvidError::RootSpiffeId => {
                "peer certificate SPIFFE ID has no path (X509-SVID 3.1, 5.2)"
            }
            SvidError::CaFlag => "peer certificate has cA true (X509-SVID 4.1, 5.2)",
            SvidError::KeyCertSign => "peer certificate has keyCertSign (X509-SVID 4.3, 5.2)",
            SvidError::CrlSign => "peer certificate has cRLSign (X509-SVID 4.3, 5.2)",
            SvidError::DigestMismatch => "peer certificate differs from the reported digest",
            SvidError::UriSanMismatch => "peer certificate URI SAN differs from the reported one",
        }
    }

    /// Whether the verdict is about the certificate's bytes alone (and so may be cached by its
    /// digest), not about what the proxy reported this time.
    pub const fn is_about_the_leaf(self) -> bool {
        !matches!(
            self,
            SvidError::Unavailable | SvidError::DigestMismatch | SvidError::UriSanMismatch
        )
    }
}

impl fmt::Display for SvidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// Checks a PEM certificate (exactly one `CERTIFICATE` block, nothing else but surrounding
/// whitespace) as an X.509-SVID leaf. Safe on arbitrary bytes.
pub fn check_leaf_pem(pem: &[u8]) -> Result<Svid, SvidError> {
    check_leaf_der(&decode_one_pem(pem)?)
}

/// Strict RFC 7468 decoding of one `CERTIFICATE` block.
fn decode_one_pem(pem: &[u8]) -> Result<Vec<u8>, SvidError> {
    if pem.len() > MAX_PEM_BYTES {
        return Err(SvidError::TooLarge);
    }
    let text = std::str::from_utf8(pem).map_err(|_| SvidError::NotPem)?;
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0');
    // One block: a second BEGIN (a chain, or anything appended) is refused, not ignored.
    if !text.starts_with("-----BEGIN CERTIFICATE-----") || text.matches("-----BEGIN").count() != 1 {
        return Err(SvidError::NotPem);
    }
    let (label, der) = pem_rfc7468::decode_vec(text.as_bytes()).map_err(|_| SvidError::NotPem)?;
    if label != "CERTIFICATE" {
        return Err(SvidError::NotPem);
    }
    Ok(der)
}

/// Checks a DER certificate as an X.509-SVID leaf. Safe on arbitrary bytes.
pub fn check_leaf_der(der: &[u8]) -> Result<Svid, SvidError> {
    // from_der refuses trailing bytes.
    let cert = Certificate::from_der(der).map_err(|_| SvidError::NotCertificate)?;
    let tbs = cert.tbs_certificate();
    // get_extension refuses a repeated extension (RFC 5280 §4.2).
    let basic = tbs
        .get_extension::<BasicConstraints>()
        .map_err(|_| SvidError::BadExtension)?;
    if basic.is_some_and(|(_, bc)| bc.ca) {
        return Err(SvidError::CaFlag);
    }
    let usage = tbs
        .get_extension::<KeyUsage>()
        .map_err(|_| SvidError::BadExtension)?;
    if let Some((_, ku)) = usage {
        if ku.key_cert_sign() {
            return Err(SvidError::KeyCertSign);
        }
        if ku.crl_sign() {
            return Err(SvidError::CrlSign);
        }
    }
    let san = tbs
        .get_extension::<SubjectAltName>()
        .map_err(|_| SvidError::BadExtension)?;
    let uris = san
        .iter()
        .flat_map(|(_, s)| s.0.iter())
        .filter_map(|n| match n {
            GeneralName::UniformResourceIdentifier(u) => Some(u.as_str()),
            _ => None,
        });
    let id = check_uri_sans(uris)?;
    Ok(Svid {
        id,
        not_after: tbs.validity().not_after.to_unix_duration().as_secs(),
        sha256: Sha256::digest(der).into(),
    })
}

/// The SPIFFE ID of a leaf with these URI SANs: exactly one (§2, §5.2), a valid SPIFFE ID
/// (SPIFFE-ID.md §2) with a non-root path (§3.1, §5.2). Also the rule for the `URI` entries of
/// a trusted forwarder's XFCC element.
pub fn check_uri_sans<'a>(mut uris: impl Iterator<Item = &'a str>) -> Verdict {
    let uri = match (uris.next(), uris.next()) {
        (None, _) => return Err(SvidError::NoUriSan),
        (Some(_), Some(_)) => return Err(SvidError::SeveralUriSans),
        (Some(u), None) => u,
    };
    let id = SpiffeId::parse(uri).map_err(SvidError::InvalidSpiffeId)?;
    if id.as_str().len() == "spiffe://".len() + id.trust_domain().len() {
        return Err(SvidError::RootSpiffeId);
    }
    Ok(id)
}

/// A leaf verdict: the SPIFFE ID, or why the certificate is not an SVID.
pub type Verdict = Result<SpiffeId, SvidError>;

/// Leaf verdicts per VM, keyed by the certificate's SHA-256, so a connection's certificate is
/// read and parsed once, not on every request. Bounded by a cap on entries and by expiry: a
/// valid leaf until its `notAfter` or `ttl` from insertion, whichever is first; a refused leaf
/// for `ttl`. When full, expired entries go first, then the entry closest to expiry; a verdict
/// is only ever the verdict for the exact certificate bytes hashed, so a full cache costs a
/// parse, never a wrong answer.
#[derive(Debug)]
pub struct SvidCache {
    ttl: u64,
    map: ExpiringMap<[u8; 32], Verdict>,
}

impl SvidCache {
    pub fn new(max_entries: usize, ttl_seconds: u64) -> Self {
        SvidCache {
            ttl: ttl_seconds,
            map: ExpiringMap::new(max_entries),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The verdict for a certificate digest, if cached and not expired at `now`.
    pub fn get(&mut self, digest: &[u8; 32], now: u64) -> Option<Verdict> {
        self.map.get(digest, now)
    }

    /// Records the verdict for the certificate with `digest` (whose `notAfter` is `not_after`
    /// when it parsed), evicting to stay within the cap.
    pub fn insert(&mut self, digest: [u8; 32], verdict: Verdict, not_after: Option<u64>, now: u64) {
        let ttl_end = now.saturating_add(self.ttl);
        let expires = not_after.map_or(ttl_end, |n| n.min(ttl_end));
        self.map.insert(digest, verdict, expires, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    fn digest(i: u32) -> [u8; 32] {
        Sha256::digest(i.to_be_bytes()).into()
    }

    #[test]
    fn cap_holds_under_a_flood_of_unique_certificates() {
        let mut c = SvidCache::new(100, 3600);
        for i in 0..20_000u32 {
            let verdict = if i % 3 == 0 {
                Err(SvidError::SeveralUriSans)
            } else {
                Ok(id("spiffe://td/ns/a/sa/b"))
            };
            c.insert(digest(i), verdict, Some(10_000 + u64::from(i % 11)), 10);
            assert!(c.len() <= 100);
            assert_eq!(c.len(), c.map.index_len());
        }
        assert_eq!(c.len(), 100);
        // Whatever survived still answers with its own verdict; the newest is always there.
        assert!(c.get(&digest(19_999), 11).is_some());
        let mut found = 0;
        for i in 0..20_000u32 {
            if let Some(v) = c.get(&digest(i), 11) {
                assert_eq!(v.is_err(), i % 3 == 0);
                found += 1;
            }
        }
        assert_eq!(found, 100);
    }

    #[test]
    fn expiry_is_not_after_capped_by_ttl() {
        let mut c = SvidCache::new(10, 100);
        c.insert(digest(1), Ok(id("spiffe://td/a")), Some(50), 0);
        assert!(c.get(&digest(1), 49).is_some());
        assert!(c.get(&digest(1), 50).is_none());
        c.insert(digest(2), Ok(id("spiffe://td/a")), Some(10_000), 0);
        assert!(c.get(&digest(2), 99).is_some());
        assert!(c.get(&digest(2), 100).is_none());
        c.insert(digest(3), Err(SvidError::CaFlag), None, 0);
        assert_eq!(c.get(&digest(3), 99), Some(Err(SvidError::CaFlag)));
        assert!(c.get(&digest(3), 100).is_none());
        // Already expired: not stored.
        c.insert(digest(4), Ok(id("spiffe://td/a")), Some(5), 5);
        assert!(c.is_empty());
        assert_eq!(c.map.index_len(), 0);
    }

    #[test]
    fn zero_capacity_stores_nothing() {
        let mut c = SvidCache::new(0, 100);
        c.insert(digest(1), Ok(id("spiffe://td/a")), None, 0);
        assert!(c.get(&digest(1), 1).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        assert_eq!(check_leaf_pem(b""), Err(SvidError::NotPem));
        assert_eq!(check_leaf_pem(b"hello"), Err(SvidError::NotPem));
        assert_eq!(
            check_leaf_pem(&[b'a'; MAX_PEM_BYTES + 1]),
            Err(SvidError::TooLarge)
        );
        assert_eq!(
            check_leaf_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            Err(SvidError::NotCertificate)
        );
        assert_eq!(
            check_leaf_der(&[0x30, 0x00]),
            Err(SvidError::NotCertificate)
        );
    }
}
