//! REST API v1 (DESIGN §4), on the HTTPS listener. Every route takes
//! `Authorization: Bearer <api key>`.

mod account;
mod certificates;
mod orders;
mod webhooks;

/// Fuzzing entry (`fuzz/`): every REST JSON body.
#[doc(hidden)]
pub fn fuzz_bodies(data: &[u8]) {
    orders::fuzz_bodies(data);
    certificates::fuzz_revoke_body(data);
}

use crate::acme_error::AcmeError;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use super::problem::Problem;
use super::AppState;
use crate::workflow::accounts::{self, AccountError, Caller};

/// Routes under `/api/v1`.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .nest(
            "/api/v1",
            account::router()
                .merge(orders::router())
                .merge(certificates::router())
                .merge(webhooks::router()),
        )
        .route("/api/openapi.json", axum::routing::get(openapi))
}

/// The OpenAPI 3.1 description of this API, written by hand next to the
/// handlers; `tests/it/openapi.rs` checks real answers against it.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

pub use certificates::PEM_CHAIN;

/// A JSON request body whose rejections are problem documents: 413 past
/// the body limit, 400 `malformed` (saying what did not fit) otherwise.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_problem(rejection).into_response()),
        }
    }
}

impl<T, S> axum::extract::OptionalFromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    /// No body (or no `Content-Type`) is `None`; a body must be valid.
    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        let empty = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0")
            || !req.headers().contains_key(header::CONTENT_TYPE);
        if empty {
            return Ok(None);
        }
        <ApiJson<T> as FromRequest<S>>::from_request(req, state)
            .await
            .map(Some)
    }
}

fn json_problem(rejection: JsonRejection) -> Problem {
    match rejection {
        JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Problem::hallmark(
                StatusCode::PAYLOAD_TOO_LARGE,
                "bodyTooLarge",
                "Request body too large",
                format!(
                    "the request body is larger than the {} KiB limit",
                    super::MAX_BODY_BYTES / 1024
                ),
            )
        }
        JsonRejection::MissingJsonContentType(_) => Problem::malformed(
            "the request body must be JSON with \"Content-Type: application/json\"",
        ),
        JsonRejection::JsonSyntaxError(e) => Problem::malformed(format!(
            "the request body is not valid JSON: {}",
            e.body_text()
        )),
        JsonRejection::JsonDataError(e) => Problem::malformed(format!(
            "the request body does not have the expected fields: {}",
            e.body_text()
        )),
        other => Problem::malformed(other.body_text()),
    }
}

pub use crate::workflow::rfc3339;

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
                Problem::acme(StatusCode::UNAUTHORIZED, AcmeError::Unauthorized, detail),
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

impl axum::extract::OptionalFromRequestParts<Arc<AppState>> for ApiCaller {
    type Rejection = Response;

    /// No `Authorization` header is `None`; a header must authenticate.
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Option<Self>, Self::Rejection> {
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            return Ok(None);
        }
        <ApiCaller as FromRequestParts<Arc<AppState>>>::from_request_parts(parts, state)
            .await
            .map(Some)
    }
}

/// A list request's query: `status` (a word of `S`; empty is none),
/// `before` (a previous page's `next`, `<created_at>.<id>`), `limit` (1 to
/// `MAX_PAGE`, 50 if none), `all` (every account's) and `q` (a search, where
/// the route has one). Anything else is refused.
pub(super) struct Listing<S> {
    pub status: Option<S>,
    pub before: Option<(i64, String)>,
    pub limit: i64,
    pub all: bool,
    pub q: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    before: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    all: Option<bool>,
}

impl<S, St> FromRequestParts<St> for Listing<S>
where
    S: std::str::FromStr<Err = crate::words::UnknownWord> + Send,
    St: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self, Problem> {
        let axum::extract::Query(query) =
            axum::extract::Query::<ListQuery>::from_request_parts(parts, state)
                .await
                .map_err(|e| Problem::malformed(e.body_text()))?;
        let status = match query.status.as_deref() {
            None | Some("") => None,
            Some(word) => Some(
                word.parse::<S>()
                    .map_err(|e| Problem::malformed(e.to_string()))?,
            ),
        };
        let before = query
            .before
            .map(|b| {
                b.split_once('.')
                    .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.to_owned())))
                    .ok_or_else(|| {
                        Problem::malformed(
                            "\"before\" must be the \"next\" value of a previous page",
                        )
                    })
            })
            .transpose()?;
        let limit = query.limit.unwrap_or(50);
        if !(1..=crate::workflow::orders::MAX_PAGE).contains(&limit) {
            return Err(Problem::malformed(format!(
                "\"limit\" must be between 1 and {}",
                crate::workflow::orders::MAX_PAGE
            )));
        }
        Ok(Listing {
            status,
            before,
            limit,
            all: query.all.unwrap_or(false),
            q: query.q,
        })
    }
}

impl<S> Listing<S> {
    /// The `next` of a page of `items`: the last one's `(created_at, id)`
    /// if the page is full, else none (this was the last page).
    pub fn next<T>(&self, items: &[T], key: impl Fn(&T) -> (i64, String)) -> Option<String> {
        (items.len() as i64 == self.limit)
            .then(|| items.last().map(key))
            .flatten()
            .map(|(at, id)| format!("{at}.{id}"))
    }
}
