//! RS256 for the end-to-end run, minted with jwt-simple's `RS256KeyPair` (the integration
//! harness's issuer has ES256 and EdDSA keys only): the fixed RSA-2048 bench key, its JWK for
//! the filter's and jwt_authn's key sets, and signing.

use jwt_simple::prelude::{JWTClaims, RS256KeyPair, RSAKeyPairLike};
use serde_json::{json, Map, Value};
use tokenbind_benches::fixtures::{b64url, RS256_KID, RSA2048_PEM};

pub fn key() -> Result<RS256KeyPair, String> {
    RS256KeyPair::from_pem(RSA2048_PEM)
        .map(|k| k.with_key_id(RS256_KID))
        .map_err(|e| format!("loading the RSA-2048 bench key: {e}"))
}

pub fn jwk(key: &RS256KeyPair) -> Value {
    let c = key.public_key().to_components();
    json!({
        "kty": "RSA",
        "kid": key.key_id().as_deref().unwrap_or(RS256_KID),
        "alg": "RS256",
        "use": "sig",
        "n": b64url(&c.n),
        "e": b64url(&c.e),
    })
}

pub fn sign(key: &RS256KeyPair, claims: &Map<String, Value>) -> Result<String, String> {
    let mut c = JWTClaims::<Map<String, Value>>::new();
    c.custom = claims.clone();
    key.sign(c)
        .map_err(|e| format!("jwt-simple RS256 sign: {e}"))
}
