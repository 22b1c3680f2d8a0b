//! Why a request is denied. One enum feeds the response, the counters and the logs, so the
//! names below are the single source of truth for every surface an operator sees.

/// A denial reason. The string form (`as_str`) is the stable name used in responses,
/// metrics (`tokenbind.denied.<reason>`) and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    MissingToken,
    MalformedToken,
    TokenTooLarge,
    UnsupportedAlgorithm,
    UnknownIssuer,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    AudienceMismatch,
    NoPeerCertificate,
    InvalidSpiffeId,
    SpiffeMismatch,
    TrustDomainNotAllowed,
    InvalidPeerSvid,
    ThumbprintMismatch,
    UnboundToken,
    UnsupportedBinding,
    DpopRequired,
    DpopInvalid,
    DpopReplayed,
    DpopReplayStoreFull,
    DpopReplayStoreUnavailable,
    DpopKeyMismatch,
    DpopAthMismatch,
    DpopHtmMismatch,
    DpopHtuMismatch,
    DpopIatOutOfWindow,
    DpopNonceRequired,
    DpopNonceUnavailable,
    DpopDowngrade,
    JwksUnavailable,
}

impl Reason {
    /// Every reason, in declaration order. Used to pre-define one counter per reason.
    pub const ALL: [Reason; 32] = [
        Reason::MissingToken,
        Reason::MalformedToken,
        Reason::TokenTooLarge,
        Reason::UnsupportedAlgorithm,
        Reason::UnknownIssuer,
        Reason::UnknownKey,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::AudienceMismatch,
        Reason::NoPeerCertificate,
        Reason::InvalidSpiffeId,
        Reason::SpiffeMismatch,
        Reason::TrustDomainNotAllowed,
        Reason::InvalidPeerSvid,
        Reason::ThumbprintMismatch,
        Reason::UnboundToken,
        Reason::UnsupportedBinding,
        Reason::DpopRequired,
        Reason::DpopInvalid,
        Reason::DpopReplayed,
        Reason::DpopReplayStoreFull,
        Reason::DpopReplayStoreUnavailable,
        Reason::DpopKeyMismatch,
        Reason::DpopAthMismatch,
        Reason::DpopHtmMismatch,
        Reason::DpopHtuMismatch,
        Reason::DpopIatOutOfWindow,
        Reason::DpopNonceRequired,
        Reason::DpopNonceUnavailable,
        Reason::DpopDowngrade,
        Reason::JwksUnavailable,
    ];

    /// The stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::MissingToken => "missing_token",
            Reason::MalformedToken => "malformed_token",
            Reason::TokenTooLarge => "token_too_large",
            Reason::UnsupportedAlgorithm => "unsupported_algorithm",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::UnknownKey => "unknown_key",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::AudienceMismatch => "audience_mismatch",
            Reason::NoPeerCertificate => "no_peer_certificate",
            Reason::InvalidSpiffeId => "invalid_spiffe_id",
            Reason::SpiffeMismatch => "spiffe_mismatch",
            Reason::TrustDomainNotAllowed => "trust_domain_not_allowed",
            Reason::InvalidPeerSvid => "invalid_peer_svid",
            Reason::ThumbprintMismatch => "thumbprint_mismatch",
            Reason::UnboundToken => "unbound_token",
            Reason::UnsupportedBinding => "unsupported_binding",
            Reason::DpopRequired => "dpop_required",
            Reason::DpopInvalid => "dpop_invalid",
            Reason::DpopReplayed => "dpop_replayed",
            Reason::DpopReplayStoreFull => "dpop_replay_store_full",
            Reason::DpopReplayStoreUnavailable => "dpop_replay_store_unavailable",
            Reason::DpopKeyMismatch => "dpop_key_mismatch",
            Reason::DpopAthMismatch => "dpop_ath_mismatch",
            Reason::DpopHtmMismatch => "dpop_htm_mismatch",
            Reason::DpopHtuMismatch => "dpop_htu_mismatch",
            Reason::DpopIatOutOfWindow => "dpop_iat_out_of_window",
            Reason::DpopNonceRequired => "dpop_nonce_required",
            Reason::DpopNonceUnavailable => "dpop_nonce_unavailable",
            Reason::DpopDowngrade => "dpop_downgrade",
            Reason::JwksUnavailable => "jwks_unavailable",
        }
    }

    /// Whether the reason is the server's own capacity or state, not the request: answered
    /// with 503 and `Retry-After`, never blamed on the client's credential.
    pub const fn is_server_side(self) -> bool {
        matches!(
            self,
            Reason::DpopReplayStoreFull
                | Reason::DpopReplayStoreUnavailable
                | Reason::DpopNonceUnavailable
        )
    }

    /// Whether the reason is about the DPoP proof itself (RFC 9449 `invalid_dpop_proof`).
    pub const fn is_dpop_proof_problem(self) -> bool {
        matches!(
            self,
            Reason::DpopRequired
                | Reason::DpopInvalid
                | Reason::DpopReplayed
                | Reason::DpopKeyMismatch
                | Reason::DpopAthMismatch
                | Reason::DpopHtmMismatch
                | Reason::DpopHtuMismatch
                | Reason::DpopIatOutOfWindow
        )
    }

    /// Position in [`Reason::ALL`], for dense per-reason tables.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The short, public `error_description` (RFC 6750 §3). Static text only: it never
    /// carries request data, so it cannot echo a token and always fits the RFC's charset.
    pub const fn description(self) -> &'static str {
        match self {
            Reason::MissingToken => "no bearer token",
            Reason::MalformedToken => "the token is malformed",
            Reason::TokenTooLarge => "the token is too large",
            Reason::UnsupportedAlgorithm => "the token algorithm is not accepted",
            Reason::UnknownIssuer => "the token issuer is not trusted",
            Reason::UnknownKey => "the token signing key is unknown",
            Reason::BadSignature => "the token signature is invalid",
            Reason::Expired => "the token has expired",
            Reason::NotYetValid => "the token is not yet valid",
            Reason::AudienceMismatch => "the token is not intended for this audience",
            Reason::NoPeerCertificate => {
                "the token is bound but the caller presented no certificate"
            }
            Reason::InvalidSpiffeId => "the token subject is not a valid SPIFFE ID",
            Reason::SpiffeMismatch => "the token is bound to a different workload",
            Reason::TrustDomainNotAllowed => {
                "the token SPIFFE ID is outside the allowed trust domains"
            }
            Reason::InvalidPeerSvid => "the caller certificate is not a valid X.509-SVID",
            Reason::ThumbprintMismatch => "the token is bound to a different certificate",
            Reason::UnboundToken => "the token is not bound to the caller",
            Reason::UnsupportedBinding => "the token uses an unsupported confirmation method",
            Reason::DpopRequired => "the token is DPoP-bound and requires a DPoP proof",
            Reason::DpopInvalid => "the DPoP proof is invalid",
            Reason::DpopReplayed => "the DPoP proof has already been used",
            Reason::DpopReplayStoreFull => {
                "the server cannot record more DPoP proofs right now; retry with a new proof"
            }
            Reason::DpopReplayStoreUnavailable => {
                "the server cannot record the DPoP proof right now; retry with a new proof"
            }
            Reason::DpopKeyMismatch => "the DPoP proof key is not the key the token is bound to",
            Reason::DpopAthMismatch => "the DPoP proof is not bound to this access token",
            Reason::DpopHtmMismatch => "the DPoP proof is for another HTTP method",
            Reason::DpopHtuMismatch => "the DPoP proof is for another URI",
            Reason::DpopIatOutOfWindow => "the DPoP proof is too old or too far in the future",
            Reason::DpopNonceRequired => "Resource server requires nonce in DPoP proof",
            Reason::DpopNonceUnavailable => {
                "the server cannot issue DPoP nonces right now; retry later"
            }
            Reason::DpopDowngrade => {
                "the token is DPoP-bound and must be sent with the DPoP scheme"
            }
            Reason::JwksUnavailable => "the token issuer keys are not available",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A denial: the public reason plus an internal detail for logs. The detail is static text
/// chosen by the code, never request data, so logging it cannot leak a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    pub detail: &'static str,
}

impl Denial {
    pub const fn new(reason: Reason, detail: &'static str) -> Self {
        Denial { reason, detail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_names_are_unique() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut names: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
    }

    #[test]
    fn descriptions_fit_rfc6750_error_description_charset() {
        // error_description = *( %x20-21 / %x23-5B / %x5D-7E ): no quote, no backslash.
        for r in Reason::ALL {
            for b in r.description().bytes() {
                assert!(
                    (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\',
                    "{r}: {b:#x}"
                );
            }
        }
    }
}
