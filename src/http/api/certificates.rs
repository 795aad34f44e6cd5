//! Issued certificates: a paginated list, metadata as JSON or the PEM
//! chain, and revocation (by API key or by proof of key possession).

use crate::acme_error::AcmeError;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{rfc3339, ApiCaller, ApiJson, Listing};
use crate::http::problem::Problem;
use crate::http::AppState;
use crate::pki::crl::RevocationReason;
use crate::pki::{pem_encode, Serial};
use crate::store::{CertificateQuery, CertificateRecord, CertificateStatus, StoreError};
use crate::workflow::accounts::Role;
use crate::workflow::revocation::{KeyProof, RevokeRequest, Revoker};

/// The media type of a PEM chain (RFC 8555 §9.1).
pub const PEM_CHAIN: &str = "application/pem-certificate-chain";

pub(super) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/certificates", get(list))
        .route("/certificates/{serial}", get(show))
        .route("/certificates/{serial}/revoke", axum::routing::post(revoke))
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
    revocation_reason: Option<&'static str>,
    invalidity_date: Option<String>,
    crl: String,
    certificate_pem: String,
}

impl CertificateView {
    fn new(state: &AppState, cert: CertificateRecord, now: i64) -> Self {
        let serial = cert.serial.to_hex();
        let status = CertificateStatus::of(&cert, now);
        let crl = state
            .authority
            .issuer_by_id(&cert.issuer_id)
            .map(|i| i.urls().crl_partition(cert.crl_partition as u32))
            .unwrap_or_default();
        CertificateView {
            url: super::orders::certificate_url(state, &serial),
            serial,
            status: status.as_str(),
            subject: cert.subject,
            identifiers: cert.identifiers,
            profile: cert.profile,
            issuer: cert.issuer_id,
            account: cert.account_id,
            order: cert.order_id,
            not_before: rfc3339(cert.not_before),
            not_after: rfc3339(cert.not_after),
            revoked_at: cert.revoked_at.map(rfc3339),
            revocation_reason: cert.revoked_at.map(|_| {
                cert.revocation_reason
                    .and_then(RevocationReason::from_code)
                    .unwrap_or(RevocationReason::Unspecified)
                    .as_str()
            }),
            invalidity_date: cert.invalidity_date.map(rfc3339),
            crl,
            certificate_pem: pem_encode("CERTIFICATE", &cert.der),
        }
    }
}

#[derive(Serialize)]
struct CertificateList {
    certificates: Vec<CertificateView>,
    /// Pass as `before` for the next page; null on the last page.
    next: Option<String>,
}

/// Longest search text.
const MAX_SEARCH: usize = 253;

async fn list(
    State(state): State<Arc<AppState>>,
    ApiCaller(caller): ApiCaller,
    listing: Listing<CertificateStatus>,
) -> Result<Json<CertificateList>, Problem> {
    let search = listing
        .q
        .as_deref()
        .map(|q| q.trim().to_ascii_lowercase())
        .filter(|q| !q.is_empty());
    if search.as_ref().is_some_and(|q| q.len() > MAX_SEARCH) {
        return Err(Problem::malformed(format!(
            "\"q\" must be at most {MAX_SEARCH} characters"
        )));
    }
    let everyone = listing.all;
    if everyone && caller.role == Role::Requester {
        return Err(Problem::acme(
            StatusCode::FORBIDDEN,
            AcmeError::Unauthorized,
            "only reviewer and admin keys may list every account's certificates",
        ));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let certs = state
        .authority
        .reads()
        .certificates(&CertificateQuery {
            account_id: (!everyone).then(|| caller.account_id.clone()),
            status: listing.status,
            search,
            before: listing.before.clone(),
            limit: listing.limit,
            now,
        })
        .await?;
    let next = listing.next(&certs, |c| (c.created_at, c.serial.to_string()));
    Ok(Json(CertificateList {
        certificates: certs
            .into_iter()
            .map(|c| CertificateView::new(&state, c, now))
            .collect(),
        next,
    }))
}

/// Fuzzing entry (`fuzz/`): the revocation body and its reason and date.
#[doc(hidden)]
pub fn fuzz_revoke_body(data: &[u8]) {
    if let Ok(b) = serde_json::from_slice::<RevokeBody>(data) {
        if let Some(r) = b.reason {
            let _ = r.parse::<RevocationReason>();
        }
        if let Some(d) = b.invalidity_date {
            let _ = time::OffsetDateTime::parse(&d, &time::format_description::well_known::Rfc3339);
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    invalidity_date: Option<String>,
    #[serde(default)]
    proof: Option<ProofBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProofBody {
    signed_at: i64,
    signature: String,
}

async fn revoke(
    State(state): State<Arc<AppState>>,
    caller: Option<ApiCaller>,
    Path(serial): Path<String>,
    ApiJson(body): ApiJson<RevokeBody>,
) -> Result<Json<CertificateView>, Problem> {
    let parsed: Serial = serial
        .parse()
        .map_err(|_| Problem::not_found(format!("there is no certificate {serial:?}")))?;
    let reason = match body.reason.as_deref() {
        None => RevocationReason::Unspecified,
        Some(r) => r
            .parse::<RevocationReason>()
            .map_err(|e| Problem::malformed(e.to_string()))?,
    };
    let invalidity_date =
        body.invalidity_date
            .as_deref()
            .map(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| {
                        Problem::malformed(
                            "invalidity_date must be an RFC 3339 time such as 2026-01-02T03:04:05Z",
                        )
                    })
            })
            .transpose()?;
    let request = RevokeRequest {
        reason,
        invalidity_date,
    };
    let cert = match (caller, body.proof) {
        (Some(ApiCaller(caller)), _) => {
            state
                .authority
                .revoke(Revoker::Account(&caller), &parsed, request)
                .await?
        }
        (None, Some(proof)) => {
            use base64::Engine;
            let signature = base64::engine::general_purpose::STANDARD
                .decode(proof.signature.trim())
                .map_err(|_| Problem::malformed("proof.signature must be standard base64"))?;
            state
                .authority
                .revoke_with_key_proof(
                    &parsed,
                    request,
                    &KeyProof {
                        signed_at: proof.signed_at,
                        signature,
                    },
                )
                .await?
        }
        (None, None) => {
            return Err(Problem::acme(
                StatusCode::UNAUTHORIZED,
                AcmeError::Unauthorized,
                "revoking needs an \"Authorization: Bearer <api key>\" header or a \"proof\" signed with the certificate's key",
            ))
        }
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Ok(Json(CertificateView::new(&state, cert, now)))
}

async fn show(
    State(state): State<Arc<AppState>>,
    ApiCaller(caller): ApiCaller,
    Path(serial): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let not_found = || Problem::not_found(format!("there is no certificate {serial:?}"));
    let parsed: Serial = serial.parse().map_err(|_| not_found())?;
    let store = state.authority.reads();
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
        let chain = if state.authority.issuer_by_id(&cert.issuer_id).is_some() {
            state.authority.chain_pem(&cert.der, &cert.issuer_id)
        } else {
            // An issuer this instance no longer serves (its certificates
            // have all expired): its certificate is still recorded.
            let issuers = store.issuers().await?;
            let issuer = issuers
                .iter()
                .find(|i| i.id == cert.issuer_id)
                .ok_or_else(|| Problem::internal(&"the certificate's issuer is not recorded"))?;
            format!("{leaf_pem}{}", pem_encode("CERTIFICATE", &issuer.cert_der))
        };
        return Ok((
            [(header::CONTENT_TYPE, HeaderValue::from_static(PEM_CHAIN))],
            chain,
        )
            .into_response());
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Ok(Json(CertificateView::new(&state, cert, now)).into_response())
}
