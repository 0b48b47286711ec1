//! Why the identity service refused a request: one reason code per way a request can be
//! wrong, each with its HTTP status. Reason codes are stable: they are the `reason` label of
//! `weft_identity_rejections_total` and the `error` field of the JSON error body.

use http::StatusCode;

/// A refusal reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No token and no client certificate.
    Unauthenticated,
    TokenMalformed,
    TokenForged,
    TokenTampered,
    TokenExpired,
    /// The request names an identity the token is not bound to.
    TokenWrongIdentity,
    /// Renewal with a client certificate that has expired (or is not valid yet).
    ClientCertExpired,
    /// Renewal with a client certificate from another CA.
    ClientCertUntrusted,
    /// Renewal with a certificate that carries no weft SPIFFE ID.
    ClientCertInvalid,
    CsrMalformed,
    CsrBadSignature,
    /// The CSR asks for an identity other than the proven one.
    CsrWrongIdentity,
    /// The CSR asks for SANs besides the one identity (DNS names, IPs, several URIs...).
    CsrExtraSans,
    /// A key other than ECDSA P-256.
    CsrUnsupportedKey,
    BodyMalformed,
    BodyTooLarge,
    NotFound,
    MethodNotAllowed,
}

impl Reason {
    pub const ALL: &'static [Reason] = &[
        Reason::Unauthenticated,
        Reason::TokenMalformed,
        Reason::TokenForged,
        Reason::TokenTampered,
        Reason::TokenExpired,
        Reason::TokenWrongIdentity,
        Reason::ClientCertExpired,
        Reason::ClientCertUntrusted,
        Reason::ClientCertInvalid,
        Reason::CsrMalformed,
        Reason::CsrBadSignature,
        Reason::CsrWrongIdentity,
        Reason::CsrExtraSans,
        Reason::CsrUnsupportedKey,
        Reason::BodyMalformed,
        Reason::BodyTooLarge,
        Reason::NotFound,
        Reason::MethodNotAllowed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unauthenticated => "unauthenticated",
            Reason::TokenMalformed => "token_malformed",
            Reason::TokenForged => "token_forged",
            Reason::TokenTampered => "token_tampered",
            Reason::TokenExpired => "token_expired",
            Reason::TokenWrongIdentity => "token_wrong_identity",
            Reason::ClientCertExpired => "client_cert_expired",
            Reason::ClientCertUntrusted => "client_cert_untrusted",
            Reason::ClientCertInvalid => "client_cert_invalid",
            Reason::CsrMalformed => "csr_malformed",
            Reason::CsrBadSignature => "csr_bad_signature",
            Reason::CsrWrongIdentity => "csr_wrong_identity",
            Reason::CsrExtraSans => "csr_extra_sans",
            Reason::CsrUnsupportedKey => "csr_unsupported_key",
            Reason::BodyMalformed => "body_malformed",
            Reason::BodyTooLarge => "body_too_large",
            Reason::NotFound => "not_found",
            Reason::MethodNotAllowed => "method_not_allowed",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Reason::Unauthenticated
            | Reason::TokenMalformed
            | Reason::TokenForged
            | Reason::TokenTampered
            | Reason::TokenExpired
            | Reason::ClientCertExpired
            | Reason::ClientCertUntrusted
            | Reason::ClientCertInvalid => StatusCode::UNAUTHORIZED,
            Reason::TokenWrongIdentity | Reason::CsrWrongIdentity => StatusCode::FORBIDDEN,
            Reason::CsrMalformed
            | Reason::CsrBadSignature
            | Reason::CsrExtraSans
            | Reason::CsrUnsupportedKey
            | Reason::BodyMalformed => StatusCode::BAD_REQUEST,
            Reason::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reason::NotFound => StatusCode::NOT_FOUND,
            Reason::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
}

/// A refusal: its reason and a message for the caller that says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({})", reason.as_str())]
pub struct Rejection {
    pub reason: Reason,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}
