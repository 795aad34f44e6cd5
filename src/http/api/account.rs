//! `GET /api/v1/account`: who the API key belongs to.

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::ApiCaller;
use crate::http::AppState;

pub(super) fn router() -> Router<Arc<AppState>> {
    Router::new().route("/account", get(show))
}

#[derive(Serialize)]
struct AccountResponse {
    id: String,
    name: String,
    role: &'static str,
}

async fn show(ApiCaller(caller): ApiCaller) -> Json<AccountResponse> {
    Json(AccountResponse {
        id: caller.account_id,
        name: caller.name,
        role: caller.role.as_str(),
    })
}
