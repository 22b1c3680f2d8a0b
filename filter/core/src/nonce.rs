//! Stateless DPoP server nonces (RFC 9449 §9): `base64url(window ‖ HMAC-SHA256(key, window)[..16])`.
//!
//! A nonce is valid in the time window it was issued in and the next one, so its lifetime is
//! between one and two windows. The HMAC key is generated at VM start and shared by every
//! worker through shared data, so a nonce from one worker verifies on another.

use crate::host::SharedData;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub const KEY_NAME: &str = "tokenbind.dpop.nonce_key";
const DOMAIN: &[u8] = b"tokenbind dpop nonce v1";

/// Stores `fresh` as the shared nonce key unless a valid key is already there.
pub fn ensure_key(shared: &dyn SharedData, fresh: &[u8; 32]) {
    if load_key(shared).is_none() {
        let _ = shared.set(KEY_NAME, fresh, None);
    }
}

/// The shared nonce key, if one has been set.
pub fn load_key(shared: &dyn SharedData) -> Option<[u8; 32]> {
    shared
        .get(KEY_NAME)
        .and_then(|(bytes, _)| <[u8; 32]>::try_from(bytes.as_slice()).ok())
}

fn tag(key: &[u8; 32], window: u64) -> Option<[u8; 16]> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).ok()?;
    mac.update(DOMAIN);
    mac.update(&window.to_be_bytes());
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; 16];
    out.copy_from_slice(full.get(..16)?);
    Some(out)
}

/// A fresh nonce for time `now`.
pub fn issue(key: &[u8; 32], now: u64, lifetime_seconds: u64) -> String {
    let window = now / lifetime_seconds.max(1);
    let mut raw = [0u8; 24];
    raw[..8].copy_from_slice(&window.to_be_bytes());
    if let Some(t) = tag(key, window) {
        raw[8..].copy_from_slice(&t);
    }
    URL_SAFE_NO_PAD.encode(raw)
}

/// Whether `nonce` was issued by this sidecar in the current or the previous window.
pub fn is_valid(key: &[u8; 32], nonce: &str, now: u64, lifetime_seconds: u64) -> bool {
    let Ok(raw) = URL_SAFE_NO_PAD.decode(nonce) else {
        return false;
    };
    let Ok(raw) = <[u8; 24]>::try_from(raw.as_slice()) else {
        return false;
    };
    let (window, mac) = raw.split_at(8);
    let window = u64::from_be_bytes(window.try_into().unwrap_or([0xff; 8]));
    let current = now / lifetime_seconds.max(1);
    if window != current && window.saturating_add(1) != current {
        return false;
    }
    tag(key, window).is_some_and(|t| bool::from(t.ct_eq(mac)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::MemorySharedData;

    #[test]
    fn valid_for_one_to_two_windows() {
        let key = [7u8; 32];
        let n = issue(&key, 1_000, 300); // window 3 (900..1200)
        assert!(is_valid(&key, &n, 1_000, 300));
        assert!(is_valid(&key, &n, 1_499, 300));
        assert!(!is_valid(&key, &n, 1_500, 300));
        assert!(!is_valid(&key, &n, 899, 300));
    }

    #[test]
    fn forged_or_foreign_nonces_fail() {
        let key = [7u8; 32];
        let n = issue(&key, 1_000, 300);
        assert!(!is_valid(&[8u8; 32], &n, 1_000, 300));
        let mut tampered = n.clone().into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(!is_valid(
            &key,
            std::str::from_utf8(&tampered).unwrap(),
            1_000,
            300
        ));
        assert!(!is_valid(&key, "", 1_000, 300));
        assert!(!is_valid(&key, "not base64!", 1_000, 300));
    }

    #[test]
    fn the_first_key_wins() {
        let shared = MemorySharedData::default();
        ensure_key(&shared, &[1; 32]);
        ensure_key(&shared, &[2; 32]);
        assert_eq!(load_key(&shared), Some([1; 32]));
    }
}
