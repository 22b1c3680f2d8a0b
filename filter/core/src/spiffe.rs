//! SPIFFE ID parsing and validation, following the SPIFFE ID standard
//! (spiffe/standards, SPIFFE-ID.md §2): `spiffe://<trust-domain><path>`.

use std::fmt;

const SCHEME: &str = "spiffe://";
/// SPIFFE-ID.md §2.3: maximum length of a SPIFFE ID is 2048 bytes.
const MAX_ID_LEN: usize = 2048;
/// SPIFFE-ID.md §2.1: trust domain names are at most 255 bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A validated SPIFFE ID.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    id: String,
    trust_domain_end: usize,
}

/// Why a string is not a SPIFFE ID. Each variant maps to a static message for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpiffeIdError {
    Empty,
    TooLong,
    WrongScheme,
    MissingTrustDomain,
    TrustDomainTooLong,
    BadTrustDomainChar,
    EmptySegment,
    DotSegment,
    BadPathChar,
    TrailingSlash,
}

impl SpiffeIdError {
    pub const fn message(self) -> &'static str {
        match self {
            SpiffeIdError::Empty => "SPIFFE ID is empty",
            SpiffeIdError::TooLong => "SPIFFE ID is longer than 2048 bytes",
            SpiffeIdError::WrongScheme => "SPIFFE ID must start with spiffe://",
            SpiffeIdError::MissingTrustDomain => "SPIFFE ID has no trust domain",
            SpiffeIdError::TrustDomainTooLong => "trust domain is longer than 255 bytes",
            SpiffeIdError::BadTrustDomainChar => {
                "trust domain may only hold lower-case letters, digits, '.', '-' and '_'"
            }
            SpiffeIdError::EmptySegment => "SPIFFE ID path has an empty segment",
            SpiffeIdError::DotSegment => "SPIFFE ID path has a '.' or '..' segment",
            SpiffeIdError::BadPathChar => {
                "SPIFFE ID path may only hold letters, digits, '.', '-', '_' and '/'"
            }
            SpiffeIdError::TrailingSlash => "SPIFFE ID path ends with '/'",
        }
    }
}

impl fmt::Display for SpiffeIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

fn trust_domain_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

fn path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

/// Validates a bare trust domain name (as used in `spiffe.trust_domains`).
pub fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    if !td.bytes().all(trust_domain_char) {
        return Err(SpiffeIdError::BadTrustDomainChar);
    }
    Ok(())
}

impl SpiffeId {
    pub fn parse(s: &str) -> Result<SpiffeId, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        if !path.is_empty() {
            // `path` starts with '/'; every segment after it must be non-empty and clean.
            let body = &path[1..];
            if body.is_empty() {
                return Err(SpiffeIdError::TrailingSlash);
            }
            let segments: Vec<&str> = body.split('/').collect();
            let last = segments.len() - 1;
            for (i, seg) in segments.iter().enumerate() {
                if seg.is_empty() {
                    return Err(if i == last {
                        SpiffeIdError::TrailingSlash
                    } else {
                        SpiffeIdError::EmptySegment
                    });
                }
                if *seg == "." || *seg == ".." {
                    return Err(SpiffeIdError::DotSegment);
                }
                if !seg.bytes().all(path_char) {
                    return Err(SpiffeIdError::BadPathChar);
                }
            }
        }
        Ok(SpiffeId {
            id: s.to_owned(),
            trust_domain_end: SCHEME.len() + td.len(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }

    pub fn trust_domain(&self) -> &str {
        self.id
            .get(SCHEME.len()..self.trust_domain_end)
            .unwrap_or("")
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids() {
        for (id, td) in [
            (
                "spiffe://cluster.local/ns/default/sa/client",
                "cluster.local",
            ),
            ("spiffe://example.org", "example.org"),
            ("spiffe://a_b-c.9/x.y/Z-_", "a_b-c.9"),
        ] {
            let parsed = SpiffeId::parse(id).unwrap();
            assert_eq!(parsed.as_str(), id);
            assert_eq!(parsed.trust_domain(), td);
        }
    }

    #[test]
    fn invalid_ids() {
        use SpiffeIdError::*;
        let long = format!("spiffe://td/{}", "a".repeat(2048));
        let long_td = format!("spiffe://{}/x", "a".repeat(256));
        let cases: &[(&str, SpiffeIdError)] = &[
            ("", Empty),
            ("https://cluster.local/ns/a", WrongScheme),
            ("SPIFFE://cluster.local/ns/a", WrongScheme),
            ("spiffe:/cluster.local", WrongScheme),
            ("spiffe://", MissingTrustDomain),
            ("spiffe:///ns/a", MissingTrustDomain),
            ("spiffe://Cluster.local/ns/a", BadTrustDomainChar),
            ("spiffe://cluster.local:8080/ns/a", BadTrustDomainChar),
            ("spiffe://user@cluster.local/ns/a", BadTrustDomainChar),
            ("spiffe://cluster.local/", TrailingSlash),
            ("spiffe://cluster.local/ns/a/", TrailingSlash),
            ("spiffe://cluster.local//a", EmptySegment),
            ("spiffe://cluster.local/ns/../a", DotSegment),
            ("spiffe://cluster.local/./a", DotSegment),
            ("spiffe://cluster.local/ns/a?x=1", BadPathChar),
            ("spiffe://cluster.local/ns/a#f", BadPathChar),
            ("spiffe://cluster.local/ns/%41", BadPathChar),
            (long.as_str(), TooLong),
            (long_td.as_str(), TrustDomainTooLong),
        ];
        for (id, want) in cases {
            assert_eq!(SpiffeId::parse(id), Err(*want), "{id}");
        }
    }
}
