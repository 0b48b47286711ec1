//! Bootstrap tokens (`weft_identity::token`): what a workload reads from its token file and
//! what the identity service reads from `Authorization: Bearer`.
//!
//! Input: the token text.
#![no_main]

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use weft_identity::SpiffeId;
use weft_identity::token::{Claims, TokenError, TokenKey, decode_unverified};

static KEY: LazyLock<TokenKey> = LazyLock::new(|| {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .expect("a P-256 key");
    TokenKey::from_pkcs8(pkcs8.as_ref()).expect("a token key")
});

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let now = SystemTime::now();
    let decoded = decode_unverified(token);
    let verified = KEY.verify(token, now);
    match &decoded {
        // Both read the token the same way: a malformed token is malformed to both.
        Err(e) => {
            assert!(matches!(e, TokenError::Malformed(_)), "{e:?}");
            assert_eq!(verified, decoded);
        }
        Ok(claims) => {
            match &verified {
                Ok(c) => assert_eq!(c, claims),
                Err(TokenError::Malformed(m)) => panic!("decodes but malformed to verify: {m}"),
                Err(_) => {}
            }
            round_trips(claims, now);
        }
    }
});

/// Decoded claims mean what they say: the identity parses back to itself, the claims
/// re-encoded decode to the same claims, and a token this key makes for the identity
/// verifies to it.
fn round_trips(claims: &Claims, now: SystemTime) {
    let sub = claims.sub.as_str();
    assert_eq!(SpiffeId::parse(sub).as_ref(), Ok(&claims.sub));
    let json = serde_json::to_vec(claims).expect("claims serialize");
    let again = format!("weft1.{}.{}", B64.encode(json), B64.encode(b"sig"));
    assert_eq!(decode_unverified(&again).as_ref(), Ok(claims));
    let token = KEY
        .create(&claims.sub, &claims.anchor, now, Duration::from_secs(60))
        .expect("a token");
    let verified = KEY.verify(&token, now).expect("a fresh token verifies");
    assert_eq!(verified.sub, claims.sub);
    assert_eq!(verified.anchor, claims.anchor);
}
