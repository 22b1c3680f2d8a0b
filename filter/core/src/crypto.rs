//! Which implementation checks a signature: Envoy's BoringSSL (the `verify_signature` foreign
//! function) or pure Rust inside the Wasm VM. Chosen once, at configure time, per algorithm.
//!
//! The host verifies ECDSA (DER signatures) and RSA PKCS#1 v1.5 with any key and any hash it is
//! handed, so everything that makes a JWS signature check correct stays here: the key must fit
//! the algorithm and curve ([`PublicKey::supports`]), a JWS `r‖s` signature must have exactly
//! the curve's length before it is re-encoded as DER, and the hash is the algorithm's. Ed25519
//! (the host always digests first) and RSA-PSS (no padding parameter) are always pure Rust.

use crate::jwk::{Alg, PublicKey};
use std::fmt;

/// The `crypto` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CryptoMode {
    /// The host where it can, pure Rust elsewhere (and everywhere if the host cannot).
    #[default]
    Auto,
    /// The host for every algorithm it can verify; refuse to start if it cannot.
    Host,
    /// Pure Rust only.
    Wasm,
}

impl CryptoMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            CryptoMode::Auto => "auto",
            CryptoMode::Host => "host",
            CryptoMode::Wasm => "wasm",
        }
    }
}

/// Who verifies one algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Envoy's BoringSSL through `verify_signature`.
    Host,
    /// Pure Rust in the Wasm VM.
    Wasm,
}

impl Backend {
    pub const fn as_str(self) -> &'static str {
        match self {
            Backend::Host => "host",
            Backend::Wasm => "wasm",
        }
    }
}

/// The `hash_function` argument of `verify_signature`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashFn {
    Sha256,
    Sha384,
    Sha512,
}

impl HashFn {
    pub const fn as_str(self) -> &'static str {
        match self {
            HashFn::Sha256 => "sha256",
            HashFn::Sha384 => "sha384",
            HashFn::Sha512 => "sha512",
        }
    }
}

/// The host's verification, given exactly what Envoy's `verify_signature` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRequest<'a> {
    pub hash: HashFn,
    /// DER SubjectPublicKeyInfo.
    pub public_key: &'a [u8],
    /// DER `ECDSA-Sig-Value`, or the raw RSA signature.
    pub signature: &'a [u8],
    pub text: &'a [u8],
}

/// Why the host could not answer (as opposed to answering "does not verify").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostCryptoError {
    /// The host has no `verify_signature` function.
    Missing,
    /// The host refused the arguments (for Envoy: the key did not import).
    BadArgument,
    /// Any other host status or an unreadable result.
    Failed(String),
}

impl fmt::Display for HostCryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostCryptoError::Missing => f.write_str("the host has no verify_signature function"),
            HostCryptoError::BadArgument => f.write_str("the host refused the key or arguments"),
            HostCryptoError::Failed(why) => write!(f, "the host call failed: {why}"),
        }
    }
}

/// The proxy's signature verification (Envoy: the `verify_signature` foreign function).
pub trait SignatureHost {
    /// `Ok(true)` if the signature verifies, `Ok(false)` if it does not.
    fn verify(&self, request: &HostRequest<'_>) -> Result<bool, HostCryptoError>;
}

/// The algorithms the host can verify, with their hash.
const fn host_hash(alg: Alg) -> Option<HashFn> {
    match alg {
        Alg::ES256 | Alg::RS256 => Some(HashFn::Sha256),
        Alg::ES384 | Alg::RS384 => Some(HashFn::Sha384),
        Alg::RS512 => Some(HashFn::Sha512),
        Alg::PS256 | Alg::PS384 | Alg::PS512 | Alg::EdDSA => None,
    }
}

/// The ECDSA coordinate size of an algorithm, in bytes.
const fn ecdsa_coordinate_bytes(alg: Alg) -> Option<usize> {
    match alg {
        Alg::ES256 => Some(32),
        Alg::ES384 => Some(48),
        _ => None,
    }
}

/// The signature verifier of one VM: the backend per algorithm, chosen at configure time.
pub struct Crypto {
    host: Option<Box<dyn SignatureHost>>,
    mode: CryptoMode,
}

impl fmt::Debug for Crypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crypto")
            .field("mode", &self.mode)
            .field("host", &self.host.is_some())
            .finish()
    }
}

impl Default for Crypto {
    fn default() -> Self {
        Crypto::wasm()
    }
}

impl Crypto {
    /// Pure Rust for every algorithm.
    pub fn wasm() -> Crypto {
        Crypto {
            host: None,
            mode: CryptoMode::Wasm,
        }
    }

    /// Chooses the backends for `mode`. `host` is the proxy's verifier, or `None` when
    /// [`probe`] found it missing or wrong. Errors name the `crypto` field.
    pub fn select(
        mode: CryptoMode,
        host: Option<Box<dyn SignatureHost>>,
    ) -> Result<Crypto, String> {
        let host = match (mode, host) {
            (CryptoMode::Wasm, _) => None,
            (CryptoMode::Host, None) => {
                return Err(
                    "crypto: \"host\" was asked for, but this proxy cannot verify \
                            signatures (no working verify_signature foreign function); use \
                            \"auto\" or \"wasm\""
                        .to_owned(),
                )
            }
            (_, host) => host,
        };
        Ok(Crypto { host, mode })
    }

    pub fn mode(&self) -> CryptoMode {
        self.mode
    }

    /// Who verifies `alg`.
    pub fn backend(&self, alg: Alg) -> Backend {
        if self.host.is_some() && host_hash(alg).is_some() {
            Backend::Host
        } else {
            Backend::Wasm
        }
    }

    /// `ES256=host ES384=host ... EdDSA=wasm`, for the start-up log.
    pub fn describe(&self) -> String {
        Alg::ALL
            .iter()
            .map(|a| format!("{a}={}", self.backend(*a).as_str()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Verifies a JWS signature over `signing_input`. False on any mismatch, including a key
    /// that does not fit `alg` and a signature of the wrong length.
    pub fn verify(
        &self,
        key: &PublicKey,
        alg: Alg,
        signing_input: &[u8],
        signature: &[u8],
    ) -> bool {
        if !key.supports(alg) {
            return false;
        }
        let (Some(host), Some(hash), Some(spki)) = (&self.host, host_hash(alg), key.spki()) else {
            return key.verify_in_wasm(alg, signing_input, signature);
        };
        let der;
        let host_signature = match ecdsa_coordinate_bytes(alg) {
            Some(n) => match ecdsa_der(signature, n) {
                Some(d) => {
                    der = d;
                    der.as_slice()
                }
                // Strict: a JWS ECDSA signature is exactly r‖s; anything else never reaches
                // the host.
                None => return false,
            },
            None => signature,
        };
        let request = HostRequest {
            hash,
            public_key: spki,
            signature: host_signature,
            text: signing_input,
        };
        match host.verify(&request) {
            Ok(valid) => valid,
            Err(_) => {
                // The host could not answer (it did at start-up): the same question in pure
                // Rust gives the same answer, so fall back rather than deny. The host adapter
                // counts the failed call.
                key.verify_in_wasm(alg, signing_input, signature)
            }
        }
    }
}

/// JWS `r‖s` (RFC 7518 §3.4) to a DER `ECDSA-Sig-Value`. `None` unless `raw` is exactly
/// `2 × coordinate` bytes.
pub fn ecdsa_der(raw: &[u8], coordinate: usize) -> Option<Vec<u8>> {
    if raw.len() != 2 * coordinate {
        return None;
    }
    let (r, s) = raw.split_at(coordinate);
    let mut body = Vec::with_capacity(raw.len() + 6);
    der_unsigned(&mut body, r);
    der_unsigned(&mut body, s);
    let mut out = Vec::with_capacity(body.len() + 3);
    der_tlv(&mut out, 0x30, &body);
    Some(out)
}

/// Appends a DER length.
fn der_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let significant = bytes.get(skip..).unwrap_or(&[]);
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
}

/// Appends tag, length and content.
pub(crate) fn der_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    der_length(out, content.len());
    out.extend_from_slice(content);
}

/// Appends a non-negative INTEGER from big-endian bytes (minimal encoding).
pub(crate) fn der_unsigned(out: &mut Vec<u8>, big_endian: &[u8]) {
    let skip = big_endian.iter().take_while(|b| **b == 0).count();
    let digits = big_endian.get(skip..).unwrap_or(&[]);
    let mut content = Vec::with_capacity(digits.len() + 1);
    if digits.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(digits);
    der_tlv(out, 0x02, &content);
}

/// DER SubjectPublicKeyInfo of an uncompressed EC point (`04‖x‖y`).
pub(crate) fn ec_spki(curve_oid: &[u8], sec1: &[u8]) -> Vec<u8> {
    const ID_EC_PUBLIC_KEY: [u8; 7] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    let mut algorithm = Vec::with_capacity(24);
    der_tlv(&mut algorithm, 0x06, &ID_EC_PUBLIC_KEY);
    der_tlv(&mut algorithm, 0x06, curve_oid);
    spki(&algorithm, sec1)
}

/// `prime256v1` and `secp384r1`.
pub(crate) const P256_OID: [u8; 8] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
pub(crate) const P384_OID: [u8; 5] = [0x2b, 0x81, 0x04, 0x00, 0x22];

/// DER SubjectPublicKeyInfo of an RSA key (`rsaEncryption`, NULL parameters).
pub(crate) fn rsa_spki(n: &[u8], e: &[u8]) -> Vec<u8> {
    const RSA_ENCRYPTION: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let mut algorithm = Vec::with_capacity(15);
    der_tlv(&mut algorithm, 0x06, &RSA_ENCRYPTION);
    der_tlv(&mut algorithm, 0x05, &[]);
    let mut ints = Vec::with_capacity(n.len() + e.len() + 12);
    der_unsigned(&mut ints, n);
    der_unsigned(&mut ints, e);
    let mut rsa_public_key = Vec::with_capacity(ints.len() + 4);
    der_tlv(&mut rsa_public_key, 0x30, &ints);
    spki(&algorithm, &rsa_public_key)
}

fn spki(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
    let mut bits = Vec::with_capacity(key.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(key);
    let mut body = Vec::with_capacity(algorithm.len() + bits.len() + 8);
    der_tlv(&mut body, 0x30, algorithm);
    der_tlv(&mut body, 0x03, &bits);
    let mut out = Vec::with_capacity(body.len() + 4);
    der_tlv(&mut out, 0x30, &body);
    out
}

/// The protobuf `VerifySignatureArguments` Envoy's `verify_signature` parses: 1 `hash_function`
/// (string), 2 `public_key` (bytes, DER), 3 `signature` (bytes), 4 `text` (bytes).
pub fn encode_arguments(request: &HostRequest<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        request.public_key.len() + request.signature.len() + request.text.len() + 24,
    );
    for (field, bytes) in [
        (1u8, request.hash.as_str().as_bytes()),
        (2, request.public_key),
        (3, request.signature),
        (4, request.text),
    ] {
        out.push(field << 3 | 2); // length-delimited
        let mut len = bytes.len();
        loop {
            let low = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.push(low);
                break;
            }
            out.push(low | 0x80);
        }
        out.extend_from_slice(bytes);
    }
    out
}

fn read_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Parses `VerifySignatureResult`: 1 `result` (bool), 2 `error` (string). Proto3 omits
/// defaults, so an empty message is `result: false`. Returns the result and the error text.
pub fn decode_result(bytes: &[u8]) -> Result<(bool, String), HostCryptoError> {
    let bad = || HostCryptoError::Failed("unreadable VerifySignatureResult".to_owned());
    let mut pos = 0;
    let mut result = false;
    let mut error = String::new();
    while pos < bytes.len() {
        let key = read_varint(bytes, &mut pos).ok_or_else(bad)?;
        match (key >> 3, key & 7) {
            (1, 0) => result = read_varint(bytes, &mut pos).ok_or_else(bad)? != 0,
            (field, 2) => {
                let len = usize::try_from(read_varint(bytes, &mut pos).ok_or_else(bad)?)
                    .map_err(|_| bad())?;
                let end = pos.checked_add(len).ok_or_else(bad)?;
                let value = bytes.get(pos..end).ok_or_else(bad)?;
                if field == 2 {
                    error = String::from_utf8_lossy(value).into_owned();
                }
                pos = end;
            }
            (_, 0) => {
                read_varint(bytes, &mut pos).ok_or_else(bad)?;
            }
            _ => return Err(bad()),
        }
    }
    Ok((result, error))
}

/// RFC 7515 Appendix A.3: an ES256 JWS and its P-256 key, the known answer that tells whether
/// a host really verifies.
mod known_answer {
    pub const SIGNING_INPUT: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
    pub const SIGNATURE: &str =
        "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
    pub const X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    pub const Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
}

/// Asks `host` to verify a known-good ES256 signature and the same signature with one bit
/// flipped. The host is usable only if it accepts the first and refuses the second.
pub fn probe(host: &dyn SignatureHost) -> Result<(), HostCryptoError> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).unwrap_or_default();
    let mut sec1 = vec![4u8];
    sec1.extend(decode(known_answer::X));
    sec1.extend(decode(known_answer::Y));
    let spki = ec_spki(&P256_OID, &sec1);
    let mut raw = decode(known_answer::SIGNATURE);
    let der = ecdsa_der(&raw, 32).ok_or_else(|| HostCryptoError::Failed("probe".to_owned()))?;
    let request = HostRequest {
        hash: HashFn::Sha256,
        public_key: &spki,
        signature: &der,
        text: known_answer::SIGNING_INPUT.as_bytes(),
    };
    if !host.verify(&request)? {
        return Err(HostCryptoError::Failed(
            "it refused a known-good ES256 signature (RFC 7515 A.3)".to_owned(),
        ));
    }
    if let Some(b) = raw.get_mut(40) {
        *b ^= 1;
    }
    let flipped = ecdsa_der(&raw, 32).unwrap_or_default();
    if host.verify(&HostRequest {
        signature: &flipped,
        ..request
    })? {
        return Err(HostCryptoError::Failed(
            "it accepted an ES256 signature with a flipped bit".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_integers_are_minimal_and_positive() {
        let mut out = Vec::new();
        der_unsigned(&mut out, &[0, 0, 0x7f]);
        assert_eq!(out, [0x02, 0x01, 0x7f]);
        out.clear();
        der_unsigned(&mut out, &[0x80]);
        assert_eq!(out, [0x02, 0x02, 0x00, 0x80]);
        out.clear();
        der_unsigned(&mut out, &[0, 0]);
        assert_eq!(out, [0x02, 0x01, 0x00]);
    }

    #[test]
    fn ecdsa_der_is_strict_about_length() {
        assert!(ecdsa_der(&[1; 63], 32).is_none());
        assert!(ecdsa_der(&[1; 65], 32).is_none());
        assert!(ecdsa_der(&[], 32).is_none());
        let der = ecdsa_der(&[0xff; 64], 32).unwrap();
        // SEQUENCE { INTEGER 00 ff.., INTEGER 00 ff.. }
        assert_eq!(&der[..4], &[0x30, 70, 0x02, 33]);
        let der = ecdsa_der(&[0x11; 96], 48).unwrap();
        assert_eq!(&der[..4], &[0x30, 100, 0x02, 48]);
    }

    #[test]
    fn long_der_lengths() {
        let mut out = Vec::new();
        der_tlv(&mut out, 0x04, &[0; 300]);
        assert_eq!(&out[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }

    #[test]
    fn arguments_round_trip_through_a_protobuf_reader() {
        let req = HostRequest {
            hash: HashFn::Sha384,
            public_key: &[1, 2, 3],
            signature: &[9; 200],
            text: b"abc",
        };
        let bytes = encode_arguments(&req);
        assert_eq!(&bytes[..8], &[0x0a, 6, b's', b'h', b'a', b'3', b'8', b'4']);
        assert_eq!(&bytes[8..13], &[0x12, 3, 1, 2, 3]);
        assert_eq!(&bytes[13..16], &[0x1a, 0xc8, 0x01]);
    }

    #[test]
    fn results_decode() {
        assert_eq!(decode_result(&[]), Ok((false, String::new())));
        assert_eq!(decode_result(&[0x08, 0x01]), Ok((true, String::new())));
        assert_eq!(
            decode_result(&[0x12, 0x03, b'b', b'a', b'd']),
            Ok((false, "bad".to_owned()))
        );
        assert!(decode_result(&[0x12, 0x09, b'b']).is_err());
        assert!(decode_result(&[0x08]).is_err());
        assert!(decode_result(&[0x0d, 0, 0, 0, 0]).is_err());
    }

    struct Refusing;
    impl SignatureHost for Refusing {
        fn verify(&self, _: &HostRequest<'_>) -> Result<bool, HostCryptoError> {
            Err(HostCryptoError::Missing)
        }
    }
    struct AcceptsAll;
    impl SignatureHost for AcceptsAll {
        fn verify(&self, _: &HostRequest<'_>) -> Result<bool, HostCryptoError> {
            Ok(true)
        }
    }

    #[test]
    fn probe_tells_missing_and_lying_hosts_apart() {
        assert_eq!(probe(&Refusing), Err(HostCryptoError::Missing));
        assert!(matches!(
            probe(&AcceptsAll),
            Err(HostCryptoError::Failed(_))
        ));
    }

    #[test]
    fn selection() {
        let wasm = Crypto::select(CryptoMode::Wasm, Some(Box::new(AcceptsAll))).unwrap();
        assert!(Alg::ALL.iter().all(|a| wasm.backend(*a) == Backend::Wasm));
        let auto_without = Crypto::select(CryptoMode::Auto, None).unwrap();
        assert_eq!(auto_without.backend(Alg::ES256), Backend::Wasm);
        let err = Crypto::select(CryptoMode::Host, None).unwrap_err();
        assert!(err.starts_with("crypto: \"host\""), "{err}");
        let host = Crypto::select(CryptoMode::Host, Some(Box::new(AcceptsAll))).unwrap();
        assert_eq!(
            host.describe(),
            "ES256=host ES384=host RS256=host RS384=host RS512=host PS256=wasm PS384=wasm PS512=wasm EdDSA=wasm"
        );
    }
}
