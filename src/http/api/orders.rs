//! Orders: create, list, show, answer a challenge, approve, reject.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{rfc3339, ApiCaller, ApiJson, Listing};
use crate::http::problem::Problem;
use crate::http::AppState;
use crate::pki::profile::Organization;
use crate::store::{
    AuthorizationBundle, AuthorizationStatus, ChallengeKind, ChallengeRecord, ChallengeStatus,
    Failure, IdentifierKind, OrderBundle, OrderRecord, OrderStatus,
};
use crate::validation::{dns01, key_authorization, tls_alpn01, AccountUrls, RequesterAccount};
use crate::workflow::orders::{rest_thumbprint, NewOrder, Validation};

pub(super) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/orders", post(create).get(list))
        .route("/orders/{id}", get(show))
        .route("/orders/{id}/challenges/{challenge_id}", post(respond))
        .route("/orders/{id}/approve", post(approve))
        .route("/orders/{id}/reject", post(reject))
}

/// Fuzzing entry (`fuzz/`): the order bodies as the handlers read them,
/// with the checks that run before any database access.
#[doc(hidden)]
pub fn fuzz_bodies(data: &[u8]) {
    if let Ok(b) = serde_json::from_slice::<CreateRequest>(data) {
        let _ = crate::pki::csr::UnverifiedCsr::parse(b.csr.as_bytes());
        if let Some(org) = b.organization {
            let _ = crate::workflow::orders::check_organization(org);
        }
    }
    if let Ok(b) = serde_json::from_slice::<ApproveRequest>(data) {
        if let Some(org) = b.organization {
            let _ = crate::workflow::orders::check_organization(org);
        }
    }
    let _ = serde_json::from_slice::<RejectRequest>(data);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    csr: String,
    validation: Validation,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    validity_days: Option<u32>,
    #[serde(default)]
    organization: Option<Organization>,
}

async fn create(
    State(state): State<Arc<AppState>>,
    ApiCaller(caller): ApiCaller,
    ApiJson(body): ApiJson<CreateRequest>,
) -> Result<Response, Problem> {
    let bundle = state
        .orders
        .create(
            &caller,
            NewOrder {
                csr: body.csr.into_bytes(),
                validation: body.validation,
                profile: body.profile,
                validity_days: body.validity_days,
                organization: body.organization,
            },
        )
        .await?;
    let view = OrderView::new(&state, &bundle);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, view.url.clone())],
        Json(view),
    )
        .into_response())
}

#[derive(Serialize)]
struct OrderList {
    orders: Vec<OrderSummary>,
    /// Pass as `before` for the next page; null on the last page.
    next: Option<String>,
}

async fn list(
    State(state): State<Arc<AppState>>,
    ApiCaller(caller): ApiCaller,
    listing: Listing<OrderStatus>,
) -> Result<Json<OrderList>, Problem> {
    if listing.q.is_some() {
        return Err(Problem::malformed(
            "orders have no search; \"q\" is for certificates",
        ));
    }
    let orders = state
        .orders
        .list(
            &caller,
            listing.status,
            listing.before.clone(),
            listing.limit,
            listing.all,
        )
        .await?;
    let next = listing.next(&orders, |o| (o.created_at, o.id.clone()));
    Ok(Json(OrderList {
        orders: orders
            .iter()
            .map(|o| OrderSummary::new(&state, o))
            .collect(),
        next,
    }))
}

async fn show(
    State(state): State<Arc<AppState>>,
    ApiCaller(caller): ApiCaller,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, Problem> {
    let bundle = state.orders.get(&caller, &id).await?;
    Ok(Json(OrderView::new(&state, &bundle)))
}

async fn respond(
    State(state): State<Arc<AppState>>,
    ApiCaller(caller): ApiCaller,
    Path((id, challenge_id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let bundle = state
        .orders
        .respond(&caller, &id, &challenge_id, std::time::Duration::ZERO)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(OrderView::new(&state, &bundle))).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApproveRequest {
    #[serde(default)]
    organization: Option<Organization>,
    /// The reviewer's note, kept on the order and in the audit log.
    #[serde(default)]
    reason: Option<String>,
}

async fn approve(
    State(state): State<Arc<AppState>>,
    ApiCaller(caller): ApiCaller,
    Path(id): Path<String>,
    body: Option<ApiJson<ApproveRequest>>,
) -> Result<Json<OrderView>, Problem> {
    let body = body.map(|ApiJson(b)| b).unwrap_or_default();
    let bundle = state
        .orders
        .approve(&caller, &id, body.organization, body.reason.as_deref())
        .await?;
    Ok(Json(OrderView::new(&state, &bundle)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectRequest {
    reason: String,
}

async fn reject(
    State(state): State<Arc<AppState>>,
    ApiCaller(caller): ApiCaller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RejectRequest>,
) -> Result<Json<OrderView>, Problem> {
    let bundle = state.orders.reject(&caller, &id, &body.reason).await?;
    Ok(Json(OrderView::new(&state, &bundle)))
}

#[derive(Serialize)]
struct IdentifierView {
    #[serde(rename = "type")]
    kind: IdentifierKind,
    value: String,
}

/// An order in a list.
#[derive(Serialize)]
struct OrderSummary {
    id: String,
    url: String,
    status: OrderStatus,
    validation: Validation,
    account: String,
    created_at: String,
    expires_at: String,
    certificate: Option<String>,
}

impl OrderSummary {
    fn new(state: &AppState, o: &OrderRecord) -> Self {
        OrderSummary {
            id: o.id.clone(),
            url: order_url(state, &o.id),
            status: o.status,
            validation: o.validation,
            account: o.account_id.clone(),
            created_at: rfc3339(o.created_at),
            expires_at: rfc3339(o.expires_at),
            certificate: o
                .certificate_serial
                .as_ref()
                .map(|s| certificate_url(state, s)),
        }
    }
}

/// An order with everything the requester needs to finish it.
#[derive(Serialize)]
struct OrderView {
    id: String,
    url: String,
    status: OrderStatus,
    validation: Validation,
    account: String,
    profile: String,
    validity_days: Option<i64>,
    identifiers: Vec<IdentifierView>,
    organization: Option<Organization>,
    created_at: String,
    updated_at: String,
    expires_at: String,
    error: Option<serde_json::Value>,
    rejection_reason: Option<String>,
    approval_reason: Option<String>,
    certificate: Option<String>,
    certificate_serial: Option<String>,
    authorizations: Vec<AuthorizationView>,
}

#[derive(Serialize)]
struct AuthorizationView {
    id: String,
    identifier: IdentifierView,
    wildcard: bool,
    status: AuthorizationStatus,
    validated_at: Option<String>,
    expires_at: String,
    challenges: Vec<ChallengeView>,
}

/// A challenge, saying exactly what to publish (DESIGN §4).
#[derive(Serialize)]
struct ChallengeView {
    id: String,
    #[serde(rename = "type")]
    kind: ChallengeKind,
    url: String,
    token: String,
    status: ChallengeStatus,
    key_authorization: String,
    validated_at: Option<String>,
    error: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dns_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dns_txt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_alpn_protocol: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_alpn_digest: Option<String>,
}

fn order_url(state: &AppState, id: &str) -> String {
    format!("{}/api/v1/orders/{id}", state.public_https_url)
}

pub(super) fn certificate_url(state: &AppState, serial: &str) -> String {
    format!("{}/api/v1/certificates/{serial}", state.public_https_url)
}

impl OrderView {
    fn new(state: &AppState, bundle: &OrderBundle) -> Self {
        let o = &bundle.order;
        let thumbprint = rest_thumbprint(&o.account_id);
        let url = order_url(state, &o.id);
        let issuers = &state.acme.caa_identities;
        let account_url =
            AccountUrls::new(&state.public_https_url).url(match o.acme_account_id.as_deref() {
                Some(id) => RequesterAccount::Acme(id),
                None => RequesterAccount::Rest(&o.account_id),
            });
        OrderView {
            id: o.id.clone(),
            status: o.status,
            validation: o.validation,
            account: o.account_id.clone(),
            profile: o.profile.clone(),
            validity_days: o.validity_days,
            identifiers: bundle
                .authorizations
                .iter()
                .map(|a| IdentifierView {
                    kind: a.authorization.identifier_type,
                    value: a.authorization.identifier_value.clone(),
                })
                .collect(),
            organization: o.organization.clone(),
            created_at: rfc3339(o.created_at),
            updated_at: rfc3339(o.updated_at),
            expires_at: rfc3339(o.expires_at),
            error: o.error.as_ref().map(Failure::document),
            rejection_reason: o.rejection_reason.clone(),
            approval_reason: o.approval_reason.clone(),
            certificate: o
                .certificate_serial
                .as_ref()
                .map(|s| certificate_url(state, s)),
            certificate_serial: o.certificate_serial.clone(),
            authorizations: bundle
                .authorizations
                .iter()
                .map(|a| AuthorizationView::new(&url, &thumbprint, &account_url, issuers, a))
                .collect(),
            url,
        }
    }
}

impl AuthorizationView {
    fn new(
        order_url: &str,
        thumbprint: &str,
        account_url: &str,
        issuers: &[String],
        bundle: &AuthorizationBundle,
    ) -> Self {
        let a = &bundle.authorization;
        AuthorizationView {
            id: a.id.clone(),
            identifier: IdentifierView {
                kind: a.identifier_type,
                value: a.identifier_value.clone(),
            },
            wildcard: a.wildcard,
            status: a.status,
            validated_at: a.validated_at.map(rfc3339),
            expires_at: rfc3339(a.expires_at),
            challenges: bundle
                .challenges
                .iter()
                .map(|c| {
                    ChallengeView::new(
                        order_url,
                        thumbprint,
                        (account_url, issuers),
                        &a.identifier_value,
                        c,
                    )
                })
                .collect(),
        }
    }
}

impl ChallengeView {
    fn new(
        order_url: &str,
        thumbprint: &str,
        (account_url, issuers): (&str, &[String]),
        identifier: &str,
        c: &ChallengeRecord,
    ) -> Self {
        let ka = key_authorization(&c.token, thumbprint);
        let mut view = ChallengeView {
            id: c.id.clone(),
            kind: c.kind,
            url: format!("{order_url}/challenges/{}", c.id),
            token: c.token.clone(),
            status: c.status,
            validated_at: c.validated_at.map(rfc3339),
            error: c.error.as_ref().map(Failure::document),
            http_path: None,
            http_body: None,
            dns_name: None,
            dns_txt: None,
            tls_alpn_protocol: None,
            tls_alpn_digest: None,
            key_authorization: ka.clone(),
        };
        match c.kind {
            ChallengeKind::Http01 => {
                view.http_path = Some(format!("/.well-known/acme-challenge/{}", c.token));
                view.http_body = Some(ka);
            }
            ChallengeKind::Dns01 => {
                view.dns_name = Some(dns01::record_name(identifier));
                view.dns_txt = Some(dns01::txt_value(&ka));
            }
            ChallengeKind::DnsAccount01 => {
                view.dns_name = Some(dns01::account_record_name(identifier, account_url));
                view.dns_txt = Some(dns01::txt_value(&ka));
            }
            ChallengeKind::DnsPersist01 => {
                view.dns_name = Some(dns01::persist_record_name(identifier));
                view.dns_txt = issuers.first().map(|issuer| {
                    dns01::persist_value(issuer, account_url, identifier.starts_with("*."))
                });
            }
            ChallengeKind::TlsAlpn01 => {
                view.tls_alpn_protocol = std::str::from_utf8(tls_alpn01::ACME_TLS_ALPN).ok();
                view.tls_alpn_digest = Some(hex::encode(Sha256::digest(ka.as_bytes())));
            }
        }
        view
    }
}
