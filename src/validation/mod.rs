//! Domain validation: checkers that fetch a challenge answer from the
//! network and report whether it matches. They never change an order; the
//! workflow records what they report (RFC 8555 §8).

pub mod dns01;
pub mod http01;
pub mod tls_alpn01;

use std::time::Duration;

/// Largest challenge response read (RFC 8555 §8.3 answers are ~90 bytes).
pub const MAX_BODY_BYTES: usize = 8 * 1024;
/// Most redirects an http-01 fetch follows.
pub const MAX_REDIRECTS: usize = 10;

/// How validators reach the requester's servers (the `[validation]` section).
#[derive(Debug, Clone)]
pub struct ValidationConfig {
    /// Port http-01 fetches from (80; 5002 in tests).
    pub http_port: u16,
    /// Port tls-alpn-01 connects to (443).
    pub tls_alpn_port: u16,
    /// Longest a validation may take, end to end.
    pub timeout: Duration,
}

/// Why a challenge failed; shown to the requester, one sentence each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// No TCP or TLS connection could be made.
    #[error("could not connect to {url}: {reason}")]
    Connection {
        /// What was fetched.
        url: String,
        /// Why.
        reason: String,
    },
    /// The whole validation took longer than the configured timeout.
    #[error("fetching {url} timed out after {seconds} s")]
    Timeout {
        /// What was fetched.
        url: String,
        /// The limit.
        seconds: u64,
    },
    /// The server answered with a status other than 200.
    #[error("{url} answered HTTP {status}; the challenge needs 200 with the key authorization")]
    BadStatus {
        /// What was fetched.
        url: String,
        /// The status.
        status: u16,
    },
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("the response from {url} is larger than 8192 bytes")]
    BodyTooLarge {
        /// What was fetched.
        url: String,
    },
    /// The body is not the key authorization.
    #[error("the response from {url} is not the key authorization: got {got:?}")]
    WrongContent {
        /// What was fetched.
        url: String,
        /// The start of what came back.
        got: String,
    },
    /// A redirect to a scheme or port other than http(s) on 80/443.
    #[error("refused to follow the redirect to {to}: only http and https on ports 80 and 443 are followed")]
    ForbiddenRedirect {
        /// Where the redirect pointed.
        to: String,
    },
    /// More than [`MAX_REDIRECTS`] redirects.
    #[error("more than 10 redirects")]
    TooManyRedirects,
    /// The tls-alpn-01 handshake or certificate is not what RFC 8737 asks.
    #[error("tls-alpn-01 at {url}: {reason}")]
    TlsAlpn {
        /// Where.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The challenge name does not exist (NXDOMAIN).
    #[error("{name} does not exist in DNS (NXDOMAIN)")]
    DnsNameNotFound {
        /// The queried name.
        name: String,
    },
    /// The name exists but has no TXT record.
    #[error("{name} has no TXT record")]
    DnsNoTxtRecord {
        /// The queried name.
        name: String,
    },
    /// TXT records exist but none is the expected value.
    #[error("no TXT record at {name} matches the expected value; found {found:?}")]
    DnsWrongValue {
        /// The queried name.
        name: String,
        /// The values found.
        found: Vec<String>,
    },
    /// The lookup failed (timeout, SERVFAIL, refused).
    #[error("the DNS lookup of {name} failed: {reason}")]
    Dns {
        /// The queried name.
        name: String,
        /// Why.
        reason: String,
    },
}

impl ValidationError {
    /// The ACME error type (RFC 8555 §6.7) to report this as.
    pub fn acme_type(&self) -> &'static str {
        match self {
            ValidationError::Connection { .. } | ValidationError::Timeout { .. } => "connection",
            ValidationError::BadStatus { .. }
            | ValidationError::BodyTooLarge { .. }
            | ValidationError::ForbiddenRedirect { .. }
            | ValidationError::TooManyRedirects
            | ValidationError::TlsAlpn { .. } => "unauthorized",
            ValidationError::WrongContent { .. } | ValidationError::DnsWrongValue { .. } => {
                "incorrectResponse"
            }
            ValidationError::DnsNameNotFound { .. }
            | ValidationError::DnsNoTxtRecord { .. }
            | ValidationError::Dns { .. } => "dns",
        }
    }
}
