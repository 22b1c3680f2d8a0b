//! Why a request is denied. One enum feeds the response, the counters and the logs, so the
//! names below are the single source of truth for every surface an operator sees.

/// How a reason is answered (see [`crate::response`]). Every reason has exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// No credential: a bare `Bearer realm=".."` challenge (RFC 6750 §3.1).
    Missing,
    /// A token problem: `invalid_token`.
    Token,
    /// A DPoP-bound token sent as a bearer token: `invalid_token` under a DPoP challenge.
    Downgrade,
    /// A problem with the DPoP proof itself: `invalid_dpop_proof` (RFC 9449 §7.1).
    DpopProof,
    /// A nonce is needed: `use_dpop_nonce` with a fresh `DPoP-Nonce` (RFC 9449 §9).
    NonceChallenge,
    /// The server's own capacity or state, not the request: 503 with `Retry-After`.
    ServerSide,
}

/// Declares every reason once: its variant, stable name, reply class and public description.
/// The enum, [`Reason::ALL`] (its length counted here), and every per-reason table derive from
/// this one list, so a reason cannot be left out of any of them.
macro_rules! reasons {
    ($($variant:ident => $name:literal, $class:ident, $description:literal;)*) => {
        /// A denial reason. The string form (`as_str`) is the stable name used in responses,
        /// metrics (`tokenbind.denied.<reason>`) and logs.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($variant,)*
        }

        impl Reason {
            /// Every reason, in declaration order. Used to pre-define one counter per reason.
            pub const ALL: [Reason; reasons!(@count $($variant)*)] = [$(Reason::$variant,)*];

            /// The stable snake_case name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                }
            }

            /// How the reason is answered.
            pub const fn class(self) -> Class {
                match self {
                    $(Reason::$variant => Class::$class,)*
                }
            }

            /// The short, public `error_description` (RFC 6750 §3). Static text only: it never
            /// carries request data, so it cannot echo a token and always fits the RFC's charset.
            pub const fn description(self) -> &'static str {
                match self {
                    $(Reason::$variant => $description,)*
                }
            }
        }
    };
    (@count) => { 0usize };
    (@count $head:ident $($tail:ident)*) => { 1usize + reasons!(@count $($tail)*) };
}

reasons! {
    MissingToken => "missing_token", Missing, "no bearer token";
    MalformedToken => "malformed_token", Token, "the token is malformed";
    TokenTooLarge => "token_too_large", Token, "the token is too large";
    UnsupportedAlgorithm => "unsupported_algorithm", Token, "the token algorithm is not accepted";
    UnknownIssuer => "unknown_issuer", Token, "the token issuer is not trusted";
    UnknownKey => "unknown_key", Token, "the token signing key is unknown";
    BadSignature => "bad_signature", Token, "the token signature is invalid";
    Expired => "expired", Token, "the token has expired";
    NotYetValid => "not_yet_valid", Token, "the token is not yet valid";
    AudienceMismatch => "audience_mismatch", Token, "the token is not intended for this audience";
    NoPeerCertificate => "no_peer_certificate", Token, "the token is bound but the caller presented no certificate";
    InvalidSpiffeId => "invalid_spiffe_id", Token, "the token subject is not a valid SPIFFE ID";
    SpiffeMismatch => "spiffe_mismatch", Token, "the token is bound to a different workload";
    TrustDomainNotAllowed => "trust_domain_not_allowed", Token, "the token SPIFFE ID is outside the allowed trust domains";
    InvalidPeerSvid => "invalid_peer_svid", Token, "the caller certificate is not a valid X.509-SVID";
    ThumbprintMismatch => "thumbprint_mismatch", Token, "the token is bound to a different certificate";
    UnboundToken => "unbound_token", Token, "the token is not bound to the caller";
    UnsupportedBinding => "unsupported_binding", Token, "the token uses an unsupported confirmation method";
    DpopRequired => "dpop_required", DpopProof, "the token is DPoP-bound and requires a DPoP proof";
    DpopInvalid => "dpop_invalid", DpopProof, "the DPoP proof is invalid";
    DpopReplayed => "dpop_replayed", DpopProof, "the DPoP proof has already been used";
    DpopReplayStoreFull => "dpop_replay_store_full", ServerSide, "the server cannot record more DPoP proofs right now; retry with a new proof";
    DpopReplayStoreUnavailable => "dpop_replay_store_unavailable", ServerSide, "the server cannot record the DPoP proof right now; retry with a new proof";
    DpopKeyMismatch => "dpop_key_mismatch", DpopProof, "the DPoP proof key is not the key the token is bound to";
    DpopAthMismatch => "dpop_ath_mismatch", DpopProof, "the DPoP proof is not bound to this access token";
    DpopHtmMismatch => "dpop_htm_mismatch", DpopProof, "the DPoP proof is for another HTTP method";
    DpopHtuMismatch => "dpop_htu_mismatch", DpopProof, "the DPoP proof is for another URI";
    DpopIatOutOfWindow => "dpop_iat_out_of_window", DpopProof, "the DPoP proof is too old or too far in the future";
    DpopNonceRequired => "dpop_nonce_required", NonceChallenge, "Resource server requires nonce in DPoP proof";
    DpopNonceUnavailable => "dpop_nonce_unavailable", ServerSide, "the server cannot issue DPoP nonces right now; retry later";
    DpopDowngrade => "dpop_downgrade", Downgrade, "the token is DPoP-bound and must be sent with the DPoP scheme";
    JwksUnavailable => "jwks_unavailable", Token, "the token issuer keys are not available";
}

impl Reason {
    /// Whether the reason is the server's own capacity or state, not the request: answered
    /// with 503 and `Retry-After`, never blamed on the client's credential.
    pub const fn is_server_side(self) -> bool {
        matches!(self.class(), Class::ServerSide)
    }

    /// Whether the reason is about the DPoP proof itself (RFC 9449 `invalid_dpop_proof`).
    pub const fn is_dpop_proof_problem(self) -> bool {
        matches!(self.class(), Class::DpopProof)
    }

    /// Position in [`Reason::ALL`], for dense per-reason tables.
    pub const fn index(self) -> usize {
        self as usize
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
