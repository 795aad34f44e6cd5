//! Issued certificates: metadata as JSON, or the PEM chain.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::{rfc3339, ApiCaller};
use crate::http::problem::Problem;
use crate::http::AppState;
use crate::pki::{pem_encode, Serial};
use crate::store::StoreError;
use crate::workflow::accounts::Role;

/// The media type of a PEM chain (RFC 8555 §9.1).
pub const PEM_CHAIN: &str = "application/pem-certificate-chain";

pub(super) fn router() -> Router<Arc<AppState>> {
    Router::new().route("/certificates/{serial}", get(show))
}

#[derive(Serialize)]
struct CertificateView {
    serial: String,
    url: String,
    status: &'static str,
    subject: String,
    identifiers: Vec<String>,
    profile: String,
    issuer: String,
    account: Option<String>,
    order: Option<String>,
    not_before: String,
    not_after: String,
    revoked_at: Option<String>,
    revocation_reason: Option<i64>,
    certificate_pem: String,
}

async fn show(
    State(state): State<Arc<AppState>>,
    ApiCaller(caller): ApiCaller,
    Path(serial): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let not_found = || Problem::not_found(format!("there is no certificate {serial:?}"));
    let parsed: Serial = serial.parse().map_err(|_| not_found())?;
    let store = state.authority.store();
    let cert = match store.certificate(&parsed).await {
        Err(StoreError::NotFound) => return Err(not_found()),
        other => other?,
    };
    let visible = cert.account_id.as_deref() == Some(caller.account_id.as_str())
        || caller.role != Role::Requester;
    if !visible {
        return Err(not_found());
    }
    let leaf_pem = pem_encode("CERTIFICATE", &cert.der);
    let wants_chain = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|m| m.trim().starts_with(PEM_CHAIN)));
    if wants_chain {
        let issuer_pem = if cert.issuer_id == state.authority.issuer().certificate().id() {
            state.authority.issuer().certificate().pem()
        } else {
            let issuers = store.issuers().await?;
            let issuer = issuers
                .iter()
                .find(|i| i.id == cert.issuer_id)
                .ok_or_else(|| Problem::internal(&"the certificate's issuer is not recorded"))?;
            pem_encode("CERTIFICATE", &issuer.cert_der)
        };
        return Ok((
            [(header::CONTENT_TYPE, HeaderValue::from_static(PEM_CHAIN))],
            format!("{leaf_pem}{issuer_pem}"),
        )
            .into_response());
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let status = if cert.revoked_at.is_some() {
        "revoked"
    } else if cert.not_after < now {
        "expired"
    } else {
        "valid"
    };
    Ok(Json(CertificateView {
        url: super::orders::certificate_url(&state, &serial),
        serial: cert.serial.to_hex(),
        status,
        subject: cert.subject,
        identifiers: cert.identifiers,
        profile: cert.profile,
        issuer: cert.issuer_id,
        account: cert.account_id,
        order: cert.order_id,
        not_before: rfc3339(cert.not_before),
        not_after: rfc3339(cert.not_after),
        revoked_at: cert.revoked_at.map(rfc3339),
        revocation_reason: cert.revocation_reason,
        certificate_pem: leaf_pem,
    })
    .into_response())
}
