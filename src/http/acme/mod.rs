//! ACME (RFC 8555) on the HTTPS listener, sharing the order workflow and
//! validators with the REST API (one engine, two front doors).
//!
//! One file per concern: `request.rs` (nonces, the checks of every JWS —
//! the `Signed` extractor most handlers take — and the layer that adds the
//! ACME headers to every answer), `accounts.rs`, `orders.rs` (orders,
//! authorizations, challenges, certificates), `revocation.rs` (revokeCert,
//! renewal information); the directory and router here.
//!
//! Every POST is a JWS checked in one place (`verify`), cheapest
//! first: the nonce's MAC and expiry (nonces are made without the
//! database, `workflow/nonces.rs`), the `url` header equal to the URL
//! requested, `kid` naming a valid account (or `jwk` where the RFC allows
//! it), the signature — and only then the nonce's single use: recorded in
//! the database so it holds on every instance (PostgreSQL), or in this
//! process where it is its database's one server (SQLite). Account changes go through
//! `workflow::acme_accounts`. Every answer carries a fresh `Replay-Nonce`
//! and `Link: <directory>;rel="index"`.

mod accounts;
pub mod jws;
mod orders;
mod request;
mod revocation;

use accounts::*;
use orders::*;
use request::*;
use revocation::*;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use self::jws::{thumbprint, ExternalBinding, Jws};
use super::problem::Problem;
use super::server::ClientAddr;
use super::AppState;
use crate::acme_error::AcmeError;
use crate::pki::crl::RevocationReason;
use crate::pki::{Identifier, Serial};
use crate::store::{
    AcmeAccountRecord, AcmeAccountStatus, ChallengeStatus, IdentifierKind, OrderBundle,
    OrderSource, OrderStatus, StoreError,
};
use crate::workflow::accounts::{Caller, Role};
use crate::workflow::acme_accounts::{self, AcmeAccountError, Registration};
use crate::workflow::limits::address_key;
use crate::workflow::revocation::{RevokeRequest, Revoker};
use crate::workflow::WorkflowError;

/// Routes under `/acme`. Every POST resource gets the ACME headers from
/// one layer; the directory, newNonce and renewal information add their
/// own (renewal information is cacheable).
pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    let signed = Router::new()
        .route("/acme/new-account", post(new_account))
        .route("/acme/account/{id}", post(account))
        .route("/acme/account/{id}/orders", post(account_orders))
        .route("/acme/new-order", post(new_order))
        .route("/acme/order/{id}", post(order))
        .route("/acme/order/{id}/finalize", post(finalize))
        .route("/acme/authz/{id}", post(authorization))
        .route("/acme/chall/{id}", post(challenge))
        .route("/acme/cert/{serial}", post(certificate))
        .route("/acme/revoke-cert", post(revoke_cert))
        .route("/acme/key-change", post(key_change))
        .layer(axum::middleware::map_response_with_state(
            state,
            acme_headers,
        ));
    Router::new()
        .route("/acme/directory", get(directory))
        .route("/acme/new-nonce", get(new_nonce).head(new_nonce))
        .route("/acme/renewal-info/{id}", get(renewal_info))
        .merge(signed)
}

fn base(state: &AppState) -> String {
    format!("{}/acme", state.public_https_url)
}

async fn directory(State(state): State<Arc<AppState>>) -> Response {
    let b = base(&state);
    let settings = &state.acme;
    let mut meta = json!({
        "website": if settings.website.is_empty() { &state.public_https_url } else { &settings.website },
        "externalAccountRequired": settings.eab_required,
    });
    if !settings.terms_of_service.is_empty() {
        meta["termsOfService"] = json!(settings.terms_of_service);
    }
    if !settings.caa_identities.is_empty() {
        meta["caaIdentities"] = json!(settings.caa_identities);
    }
    // draft-ietf-acme-profiles: the profiles newOrder may name.
    meta["profiles"] = state
        .authority
        .policy()
        .profiles
        .iter()
        .map(|p| (p.name.clone(), json!(p.description)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let body = json!({
        "newNonce": format!("{b}/new-nonce"),
        "newAccount": format!("{b}/new-account"),
        "newOrder": format!("{b}/new-order"),
        "revokeCert": format!("{b}/revoke-cert"),
        "keyChange": format!("{b}/key-change"),
        "renewalInfo": format!("{b}/renewal-info"),
        "meta": meta,
    });
    finish(&state, Json(body).into_response()).await
}
