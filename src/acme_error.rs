//! The ACME error types (RFC 8555 §6.7, with RFC 8657's `caa` additions
//! hallmark answers with): one table of code, title and default HTTP
//! status, used by every layer that names an error type — policy, CSR
//! intake, the validators, the workflow's stored problems, the REST API and
//! ACME — so a type is spelled, titled and answered the same way everywhere.

use std::fmt;

const URN_PREFIX: &str = "urn:ietf:params:acme:error:";

/// An ACME error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AcmeError {
    /// The request names an account that does not exist.
    AccountDoesNotExist,
    /// The certificate is already revoked.
    AlreadyRevoked,
    /// The CSR is unacceptable.
    BadCsr,
    /// The nonce is unknown, used or expired.
    BadNonce,
    /// The key is not allowed (or blocked after a compromise).
    BadPublicKey,
    /// The revocation reason is not offered.
    BadRevocationReason,
    /// The JWS algorithm is not supported or does not fit the key.
    BadSignatureAlgorithm,
    /// A CAA record forbids issuance.
    Caa,
    /// The validator could not connect.
    Connection,
    /// A DNS problem during validation.
    Dns,
    /// newAccount needs an external account binding.
    ExternalAccountRequired,
    /// The challenge response was wrong.
    IncorrectResponse,
    /// A contact URL is invalid.
    InvalidContact,
    /// newOrder names a profile the server does not offer
    /// (draft-ietf-acme-profiles).
    InvalidProfile,
    /// The request is malformed.
    Malformed,
    /// The order is not ready for finalization.
    OrderNotReady,
    /// A rate limit was exceeded.
    RateLimited,
    /// Policy forbids an identifier.
    RejectedIdentifier,
    /// The server failed.
    ServerInternal,
    /// A TLS problem during validation.
    Tls,
    /// The client lacks authorization.
    Unauthorized,
    /// A contact URL scheme is not supported.
    UnsupportedContact,
    /// An identifier type is not supported.
    UnsupportedIdentifier,
}

impl AcmeError {
    /// Every type, for tests and documentation.
    pub const ALL: [AcmeError; 23] = [
        AcmeError::AccountDoesNotExist,
        AcmeError::AlreadyRevoked,
        AcmeError::BadCsr,
        AcmeError::BadNonce,
        AcmeError::BadPublicKey,
        AcmeError::BadRevocationReason,
        AcmeError::BadSignatureAlgorithm,
        AcmeError::Caa,
        AcmeError::Connection,
        AcmeError::Dns,
        AcmeError::ExternalAccountRequired,
        AcmeError::IncorrectResponse,
        AcmeError::InvalidContact,
        AcmeError::InvalidProfile,
        AcmeError::Malformed,
        AcmeError::OrderNotReady,
        AcmeError::RateLimited,
        AcmeError::RejectedIdentifier,
        AcmeError::ServerInternal,
        AcmeError::Tls,
        AcmeError::Unauthorized,
        AcmeError::UnsupportedContact,
        AcmeError::UnsupportedIdentifier,
    ];

    /// (code, title, default HTTP status): the one table.
    fn row(self) -> (&'static str, &'static str, u16) {
        match self {
            AcmeError::AccountDoesNotExist => {
                ("accountDoesNotExist", "Account does not exist", 400)
            }
            AcmeError::AlreadyRevoked => ("alreadyRevoked", "Already revoked", 409),
            AcmeError::BadCsr => ("badCSR", "Bad CSR", 400),
            AcmeError::BadNonce => ("badNonce", "Bad nonce", 400),
            AcmeError::BadPublicKey => ("badPublicKey", "Public key not allowed", 400),
            AcmeError::BadRevocationReason => ("badRevocationReason", "Bad revocation reason", 400),
            AcmeError::BadSignatureAlgorithm => {
                ("badSignatureAlgorithm", "Bad signature algorithm", 400)
            }
            AcmeError::Caa => ("caa", "CAA forbids issuance", 403),
            AcmeError::Connection => ("connection", "Connection failed", 400),
            AcmeError::Dns => ("dns", "DNS problem", 400),
            AcmeError::ExternalAccountRequired => {
                ("externalAccountRequired", "External account required", 401)
            }
            AcmeError::IncorrectResponse => ("incorrectResponse", "Incorrect response", 400),
            AcmeError::InvalidContact => ("invalidContact", "Invalid contact", 400),
            AcmeError::InvalidProfile => ("invalidProfile", "Invalid profile", 400),
            AcmeError::Malformed => ("malformed", "Malformed request", 400),
            AcmeError::OrderNotReady => ("orderNotReady", "Order not ready", 403),
            AcmeError::RateLimited => ("rateLimited", "Rate limited", 429),
            AcmeError::RejectedIdentifier => ("rejectedIdentifier", "Identifier rejected", 400),
            AcmeError::ServerInternal => ("serverInternal", "Internal server error", 500),
            AcmeError::Tls => ("tls", "TLS problem", 400),
            AcmeError::Unauthorized => ("unauthorized", "Unauthorized", 403),
            AcmeError::UnsupportedContact => ("unsupportedContact", "Unsupported contact", 400),
            AcmeError::UnsupportedIdentifier => {
                ("unsupportedIdentifier", "Unsupported identifier", 400)
            }
        }
    }

    /// The type's code (`badNonce`).
    pub fn code(self) -> &'static str {
        self.row().0
    }

    /// Its short title (`Bad nonce`).
    pub fn title(self) -> &'static str {
        self.row().1
    }

    /// The HTTP status it is answered with unless a caller has a reason
    /// for another (401 for an unauthenticated ACME request, say).
    pub fn status(self) -> u16 {
        self.row().2
    }

    /// The problem `type` URN (`urn:ietf:params:acme:error:badNonce`).
    pub fn urn(self) -> String {
        format!("{URN_PREFIX}{}", self.code())
    }

    /// The type a problem `type` URN names, if it is one of the table's.
    pub fn from_urn(urn: &str) -> Option<AcmeError> {
        let code = urn.strip_prefix(URN_PREFIX)?;
        AcmeError::ALL.into_iter().find(|e| e.code() == code)
    }
}

impl fmt::Display for AcmeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_rfc_spelled() {
        let mut codes: Vec<&str> = AcmeError::ALL.iter().map(|e| e.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), AcmeError::ALL.len());
        assert_eq!(AcmeError::BadCsr.code(), "badCSR");
        assert_eq!(
            AcmeError::BadNonce.urn(),
            "urn:ietf:params:acme:error:badNonce"
        );
        assert_eq!(AcmeError::from_urn("urn:ietf:params:acme:error:nope"), None);
        assert_eq!(AcmeError::from_urn("badNonce"), None);
        for e in AcmeError::ALL {
            assert_eq!(AcmeError::from_urn(&e.urn()), Some(e));
            assert!((400..600).contains(&e.status()), "{e}");
            assert!(!e.title().is_empty());
        }
    }
}
