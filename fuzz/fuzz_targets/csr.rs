//! Certificate signing requests (`weft_identity::csr::check`): the `csr` of a `/v1/certify`
//! body, PEM or DER, checked against the identity the caller proved.
//!
//! Input: the CSR.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use weft_identity::SpiffeId;
use weft_identity::authority::Authority;
use weft_identity::csr::check;
use weft_identity::reject::Reason;
use weft_identity::tls::{der_to_pem, peer_identity};

static CA: LazyLock<Authority> = LazyLock::new(weft_fuzz::new_authority);
static WEB: LazyLock<SpiffeId> = LazyLock::new(|| SpiffeId::parse(weft_fuzz::WEB).expect("an id"));

fuzz_target!(|data: &[u8]| {
    match check(data, &WEB) {
        Err(rejection) => assert!(
            matches!(
                rejection.reason,
                Reason::CsrMalformed
                    | Reason::CsrBadSignature
                    | Reason::CsrWrongIdentity
                    | Reason::CsrExtraSans
                    | Reason::CsrUnsupportedKey
            ),
            "{:?}: {}",
            rejection.reason,
            rejection.message
        ),
        Ok(checked) => {
            // An accepted CSR can be issued, and the certificate names exactly the proven
            // identity, whatever the CSR asked.
            let issued = CA.issue(&checked, &WEB).expect("an accepted CSR is issued");
            assert_eq!(issued.identity, *WEB);
            assert_eq!(peer_identity(&issued.leaf).as_ref(), Ok(&*WEB));
            // The same request in PEM is accepted too.
            if !data.trim_ascii_start().starts_with(b"-----BEGIN") {
                let pem = der_to_pem("CERTIFICATE REQUEST", data);
                assert!(check(pem.as_bytes(), &WEB).is_ok(), "DER accepted, PEM not");
            }
        }
    }
});
