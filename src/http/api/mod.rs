//! REST API v1 (DESIGN §4), on the HTTPS listener. Every route takes
//! `Authorization: Bearer <api key>`.

mod account;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

use super::problem::Problem;
use super::AppState;
use crate::workflow::accounts::{self, AccountError, Caller};

/// Routes under `/api/v1`.
pub fn router() -> Router<Arc<AppState>> {
    Router::new().nest("/api/v1", account::router())
}

/// The authenticated caller of an API route.
pub struct ApiCaller(pub Caller);

impl FromRequestParts<Arc<AppState>> for ApiCaller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        // RFC 6750 §3: a 401 names the scheme the client should use.
        let unauthorized = |detail: &str| {
            (
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"hallmark\"")],
                Problem::acme(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "Unauthorized",
                    detail,
                ),
            )
                .into_response()
        };
        let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            unauthorized("this request needs an \"Authorization: Bearer <api key>\" header")
        })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| unauthorized("the Authorization header must be \"Bearer <api key>\""))?;
        match accounts::authenticate(state.authority.store().as_ref(), token).await {
            Ok(caller) => Ok(ApiCaller(caller)),
            Err(AccountError::Store(e)) => Err(Problem::from(e).into_response()),
            Err(e) => Err(unauthorized(&e.to_string())),
        }
    }
}
