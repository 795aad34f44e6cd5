//! `GET /api/v1/webhooks/deliveries`: the webhook delivery log (admin keys).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::ApiCaller;
use crate::acme_error::AcmeError;
use crate::http::problem::Problem;
use crate::http::AppState;
use crate::workflow::accounts::Role;
use crate::workflow::webhooks::display_url;

pub(super) fn router() -> Router<Arc<AppState>> {
    Router::new().route("/webhooks/deliveries", get(deliveries))
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<i64>,
}

#[derive(Serialize)]
struct Delivery {
    delivery: i64,
    url: String,
    event: String,
    attempt: i64,
    at: String,
    status_code: Option<i64>,
    error: Option<String>,
    delivered: bool,
}

#[derive(Serialize)]
struct Deliveries {
    deliveries: Vec<Delivery>,
}

async fn deliveries(
    State(state): State<Arc<AppState>>,
    ApiCaller(caller): ApiCaller,
    Query(q): Query<Limit>,
) -> Result<Json<Deliveries>, Problem> {
    if caller.role != Role::Admin {
        return Err(Problem::acme(
            StatusCode::FORBIDDEN,
            AcmeError::Unauthorized,
            "only admin keys may read the webhook delivery log",
        ));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::malformed("\"limit\" must be 1 to 1000"));
    }
    let rows = state.authority.reads().deliveries(limit).await?;
    Ok(Json(Deliveries {
        deliveries: rows
            .into_iter()
            .map(|d| Delivery {
                delivery: d.audit_seq,
                url: display_url(&d.url),
                event: d.event,
                attempt: d.attempt,
                at: crate::workflow::rfc3339(d.at),
                status_code: d.status_code,
                error: d.error,
                delivered: d.delivered,
            })
            .collect(),
    }))
}
