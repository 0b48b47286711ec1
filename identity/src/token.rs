//! Bootstrap tokens: how a workload proves, once, which identity it may be given.
//!
//! A token is `weft1.<claims>.<signature>`, both parts base64url without padding. The claims are
//! JSON: the one SPIFFE ID the token is bound to, issue and expiry times, a random id, the id of
//! the key that signed it, and the SHA-256 fingerprint of the trust anchor, so a workload holding
//! nothing but its token can fetch the trust bundle and check it (as `kubeadm join`'s discovery
//! hash does). The signature is ECDSA P-256/SHA-256 over the `weft1.<claims>` prefix, made with
//! the identity service's token-signing key.
//!
//! A token is a bearer secret until it expires: keep its file readable only by the workload.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};

use crate::spiffe::SpiffeId;

const PREFIX: &str = "weft1";
/// Tokens larger than this are not parsed.
pub const MAX_TOKEN_LEN: usize = 4096;
/// The default token lifetime of `weft token create`.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a token says. Only trust it after [`TokenKey::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The identity the token proves.
    pub sub: SpiffeId,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
    /// Random token id, for logs.
    pub jti: String,
    /// Id of the signing key (hex of the first 8 bytes of SHA-256 of its public key).
    pub kid: String,
    /// `sha256:<hex>` of the trust anchor the workload must find at the identity service.
    pub anchor: String,
}

impl Claims {
    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.exp)
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the bootstrap token is malformed: {0}")]
    Malformed(String),
    #[error(
        "the bootstrap token was signed by an unknown key (key id {0}): it was not created by this identity service"
    )]
    Forged(String),
    #[error("the bootstrap token's signature does not match its contents: it was altered")]
    Tampered,
    #[error("the bootstrap token expired at {0}: create a new one with `weft token create`")]
    Expired(String),
}

/// Decodes a token's claims without checking its signature: what a workload does to learn its
/// identity and the anchor fingerprint from its token. The identity service always verifies.
pub fn decode_unverified(token: &str) -> Result<Claims, TokenError> {
    split(token.trim()).map(|(_, claims, _)| claims)
}

fn split(token: &str) -> Result<(&str, Claims, Vec<u8>), TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed(format!(
            "longer than {MAX_TOKEN_LEN} bytes"
        )));
    }
    let (signed, sig) = token
        .rsplit_once('.')
        .ok_or_else(|| TokenError::Malformed("expected `weft1.<claims>.<signature>`".into()))?;
    let (prefix, claims) = signed
        .split_once('.')
        .ok_or_else(|| TokenError::Malformed("expected `weft1.<claims>.<signature>`".into()))?;
    if prefix != PREFIX {
        return Err(TokenError::Malformed(format!(
            "unknown token format `{}` (expected `{PREFIX}`)",
            prefix.chars().take(16).collect::<String>()
        )));
    }
    let claims = B64
        .decode(claims)
        .map_err(|_| TokenError::Malformed("the claims are not base64url".into()))?;
    let claims: Claims = serde_json::from_slice(&claims)
        .map_err(|e| TokenError::Malformed(format!("the claims are not valid: {e}")))?;
    let sig = B64
        .decode(sig)
        .map_err(|_| TokenError::Malformed("the signature is not base64url".into()))?;
    Ok((signed, claims, sig))
}

/// The identity service's token-signing key.
#[derive(Debug)]
pub struct TokenKey {
    pair: EcdsaKeyPair,
    kid: String,
}

impl TokenKey {
    /// Loads a PKCS#8 (DER) ECDSA P-256 key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let pair = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            der,
            &SystemRandom::new(),
        )
        .map_err(|e| format!("not an ECDSA P-256 PKCS#8 key: {e}"))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, pair.public_key().as_ref());
        let kid = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self { pair, kid })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Creates a token for `identity`, valid for `ttl` from `now`.
    pub fn create(
        &self,
        identity: &SpiffeId,
        anchor_fingerprint: &str,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<String, String> {
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = Claims {
            sub: identity.clone(),
            iat,
            exp: iat + ttl.as_secs().max(1),
            jti: random_hex(12),
            kid: self.kid.clone(),
            anchor: anchor_fingerprint.to_string(),
        };
        let json = serde_json::to_vec(&claims).map_err(|e| e.to_string())?;
        let signed = format!("{PREFIX}.{}", B64.encode(json));
        let sig = self
            .pair
            .sign(&SystemRandom::new(), signed.as_bytes())
            .map_err(|_| "signing failed".to_string())?;
        Ok(format!("{signed}.{}", B64.encode(sig.as_ref())))
    }

    /// Verifies a token's signature and expiry at `now` and returns its claims.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        let (signed, claims, sig) = split(token.trim())?;
        if claims.kid != self.kid {
            return Err(TokenError::Forged(claims.kid.chars().take(32).collect()));
        }
        signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.pair.public_key().as_ref(),
        )
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| TokenError::Tampered)?;
        if now >= claims.expires_at() {
            return Err(TokenError::Expired(crate::rfc3339(claims.expires_at())));
        }
        Ok(claims)
    }
}

/// `n` random bytes as lowercase hex.
pub(crate) fn random_hex(n: usize) -> String {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; n];
    // The system RNG does not fail on supported platforms; an all-zero id is still harmless.
    let _ = SystemRandom::new().fill(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TokenKey {
        let kp = rcgen::KeyPair::generate().unwrap();
        TokenKey::from_pkcs8(&kp.serialize_der()).unwrap()
    }

    fn id(name: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://weft.local/ns/default/sa/{name}")).unwrap()
    }

    /// A new key, now, and a token it signed for `web`, valid for a minute from now.
    fn signed_for_web() -> (TokenKey, SystemTime, String) {
        let k = key();
        let now = SystemTime::now();
        let t = k
            .create(&id("web"), "sha256:ab", now, Duration::from_secs(60))
            .unwrap();
        (k, now, t)
    }

    #[test]
    fn round_trip() {
        let (k, now, t) = signed_for_web();
        let c = k.verify(&t, now).unwrap();
        assert_eq!(c.sub, id("web"));
        assert_eq!(c.anchor, "sha256:ab");
        assert_eq!(decode_unverified(&t).unwrap(), c);
    }

    #[test]
    fn rejections() {
        let (k, now, t) = signed_for_web();
        // Another key: forged.
        let other = key();
        assert!(matches!(other.verify(&t, now), Err(TokenError::Forged(_))));
        // Claims swapped for another identity, signature kept: tampered.
        let (signed, sig) = t.rsplit_once('.').unwrap();
        let mut claims = decode_unverified(&t).unwrap();
        claims.sub = id("admin");
        let forged_claims = B64.encode(serde_json::to_vec(&claims).unwrap());
        let tampered = format!("weft1.{forged_claims}.{sig}");
        assert_eq!(k.verify(&tampered, now), Err(TokenError::Tampered));
        assert!(signed.starts_with("weft1."));
        // Expired.
        let later = now + Duration::from_secs(61);
        assert!(matches!(k.verify(&t, later), Err(TokenError::Expired(_))));
        // Garbage.
        for bad in ["", "x", "weft1.a.b", "jwt.eyJ.sig", &"a".repeat(5000)] {
            assert!(
                matches!(k.verify(bad, now), Err(TokenError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
