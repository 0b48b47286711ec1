//! `/v1/certify` request bodies (`IdentityService::certify`), from a caller holding a valid
//! bootstrap token for `web`.
//!
//! Input: the request body.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use weft_identity::SpiffeId;
use weft_identity::reject::Reason;
use weft_identity::server::IdentityService;
use weft_identity::tls::{certs_from_pem, peer_identity};
use weft_runtime::metrics::Registry;

struct Setup {
    service: Arc<IdentityService>,
    token: String,
    web: SpiffeId,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let ca = weft_fuzz::new_authority();
    let web = SpiffeId::parse(weft_fuzz::WEB).expect("an id");
    let token = ca
        .token_key()
        .create(
            &web,
            &ca.anchor_fingerprint(),
            SystemTime::now(),
            Duration::from_secs(24 * 3600),
        )
        .expect("a token");
    let service = IdentityService::new(ca, &Registry::new(), vec![]).expect("the service");
    Setup {
        service,
        token,
        web,
    }
});

fuzz_target!(|data: &[u8]| {
    let s = &*SETUP;
    match s.service.certify(data, Some(&s.token), None) {
        // The caller is authenticated: whatever the body, a refusal is about the body, the
        // CSR or the identity it asks for.
        Err(r) => assert!(
            matches!(
                r.reason,
                Reason::BodyMalformed
                    | Reason::TokenWrongIdentity
                    | Reason::CsrMalformed
                    | Reason::CsrBadSignature
                    | Reason::CsrWrongIdentity
                    | Reason::CsrExtraSans
                    | Reason::CsrUnsupportedKey
            ),
            "{:?}: {}",
            r.reason,
            r.message
        ),
        // A certificate is only ever for the identity the token proves.
        Ok(rsp) => {
            assert_eq!(rsp.identity, s.web);
            let leaf = certs_from_pem(rsp.certificate.as_bytes()).expect("the leaf is PEM");
            assert_eq!(leaf.len(), 1);
            assert_eq!(peer_identity(&leaf[0]).as_ref(), Ok(&s.web));
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            assert!(rsp.not_after_unix > now.as_secs());
        }
    }
});
