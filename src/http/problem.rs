//! The one error type of the HTTP edge: RFC 9457 `application/problem+json`.
//! Layer errors become problems here and nowhere else.

use crate::acme_error::AcmeError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;
use crate::workflow::WorkflowError;

/// A problem document.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// `urn:ietf:params:acme:error:<code>` or `urn:hallmark:error:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// One sentence saying what was wrong.
    pub detail: String,
    /// Seconds for a `Retry-After` header (rate limits).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    /// A problem of an ACME error type (RFC 8555 §6.7), titled by the one
    /// table in [`crate::acme_error`]; `status` where the type's default
    /// does not fit.
    pub fn acme(status: StatusCode, kind: AcmeError, detail: impl Into<String>) -> Self {
        Problem {
            kind: kind.urn(),
            title: kind.title(),
            status: status.as_u16(),
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// `rateLimited` (429) with `Retry-After`.
    pub fn rate_limited(retry_after_secs: u64, detail: impl Into<String>) -> Self {
        Problem {
            retry_after: Some(retry_after_secs),
            ..Problem::acme(
                StatusCode::TOO_MANY_REQUESTS,
                AcmeError::RateLimited,
                detail,
            )
        }
    }

    /// A problem with a hallmark error code.
    pub fn hallmark(
        status: StatusCode,
        code: &str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            kind: format!("urn:hallmark:error:{code}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::hallmark(StatusCode::NOT_FOUND, "notFound", "Not found", detail)
    }

    /// 400 `malformed`.
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::acme(StatusCode::BAD_REQUEST, AcmeError::Malformed, detail)
    }

    /// 500 with a generic detail; the cause is logged, never sent.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::acme(
            StatusCode::INTERNAL_SERVER_ERROR,
            AcmeError::ServerInternal,
            "the server failed to handle the request; the error has been logged",
        )
    }
}

impl Problem {
    /// 503: the database cannot take the request now; nothing was written
    /// and the client may retry after a few seconds.
    pub fn unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "database unavailable");
        Problem {
            retry_after: Some(UNAVAILABLE_RETRY_SECS),
            ..Self::hallmark(
                StatusCode::SERVICE_UNAVAILABLE,
                "databaseUnavailable",
                "Service unavailable",
                "the database is unavailable right now; retry in a few seconds",
            )
        }
    }
}

/// `Retry-After` of a 503 for an unavailable database.
const UNAVAILABLE_RETRY_SECS: u64 = 5;

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            )],
            body,
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Problem::not_found("no such resource"),
            StoreError::Unavailable(why) => Problem::unavailable(&why),
            StoreError::DiskFull(why) => {
                tracing::error!(error = %why, "the database's disk is full");
                Problem {
                    retry_after: Some(UNAVAILABLE_RETRY_SECS),
                    ..Self::hallmark(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "databaseFull",
                        "Service unavailable",
                        "the database's disk is full, so nothing was written; retry once an operator has freed space",
                    )
                }
            }
            other => Problem::internal(&other),
        }
    }
}

/// The issuing CA cannot issue now: 503, for the operator to fix, never a
/// 500.
fn issuer_unavailable(detail: String) -> Problem {
    Problem::hallmark(
        StatusCode::SERVICE_UNAVAILABLE,
        "issuerUnavailable",
        "The issuing CA cannot issue",
        detail,
    )
}

impl From<WorkflowError> for Problem {
    fn from(e: WorkflowError) -> Self {
        let bad = StatusCode::BAD_REQUEST;
        match e {
            WorkflowError::Csr(ref c) => {
                let code = c.acme_code();
                Problem::acme(bad, code, c.to_string())
            }
            WorkflowError::Policy(ref p) => {
                let code = p.acme_code();
                Problem::acme(bad, code, p.to_string())
            }
            WorkflowError::Profile(p) => Problem::acme(bad, AcmeError::Malformed, p.to_string()),
            WorkflowError::Ca(
                c @ (crate::pki::ca::CaError::IssuerNotValid { .. }
                | crate::pki::ca::CaError::OutlivesIssuer { .. }),
            ) => issuer_unavailable(c.to_string()),
            WorkflowError::Ca(c) => Problem::internal(&c),
            WorkflowError::IssuerExpiring { .. } => issuer_unavailable(e.to_string()),
            WorkflowError::Store(s) => s.into(),
            WorkflowError::Malformed(m) => Problem::malformed(m),
            WorkflowError::RateLimited { retry_after_secs } => {
                Problem::rate_limited(retry_after_secs, e.to_string())
            }
            WorkflowError::TooManyPending { .. } => Problem::rate_limited(60, e.to_string()),
            WorkflowError::NotFound(m) => Problem::not_found(m.to_string()),
            WorkflowError::Forbidden(m) => Problem::acme(
                StatusCode::FORBIDDEN,
                AcmeError::Unauthorized,
                m.to_string(),
            ),
            WorkflowError::Conflict(m) => {
                Problem::hallmark(StatusCode::CONFLICT, "conflict", "Conflict", m.to_string())
            }
            WorkflowError::AlreadyRevoked { .. } => Problem::acme(
                StatusCode::CONFLICT,
                AcmeError::AlreadyRevoked,
                e.to_string(),
            ),
            WorkflowError::OrderNotReady { .. } => Problem::acme(
                StatusCode::FORBIDDEN,
                AcmeError::OrderNotReady,
                e.to_string(),
            ),
            WorkflowError::CsrNamesDiffer { .. } => {
                Problem::acme(bad, AcmeError::BadCsr, e.to_string())
            }
            WorkflowError::CompromisedKey | WorkflowError::CaKey => {
                Problem::acme(bad, AcmeError::BadPublicKey, e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issuer_that_cannot_issue_is_a_503_with_its_sentence_never_a_500() {
        let p = Problem::from(WorkflowError::IssuerExpiring {
            id: "int-1".into(),
            not_after: 0,
        });
        assert_eq!(p.status, 503);
        assert_eq!(p.kind, "urn:hallmark:error:issuerUnavailable");
        assert!(
            p.detail.contains("int-1 expires at 1970-01-01T00:00:00Z"),
            "{}",
            p.detail
        );
        let p = Problem::from(WorkflowError::Ca(crate::pki::ca::CaError::IssuerNotValid {
            id: "int-1".into(),
            now: time::OffsetDateTime::UNIX_EPOCH,
        }));
        assert_eq!(p.status, 503);
    }
}
