//! Server-rendered pages (askama): the landing page, which tells a visitor
//! what this CA is and where its files are, and the admin dashboard.

pub mod admin;
pub mod error;
pub mod session;

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;

/// Routes of the web pages.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .merge(admin::router())
        .route("/", get(index))
        .route("/static/style.css", get(style))
}

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage<'a> {
    root_subject: &'a str,
    root_not_after: String,
    root_fingerprint: String,
    issuer_id: &'a str,
    issuer_subject: &'a str,
    issuer_not_after: String,
    http_url: &'a str,
    retired: Vec<RetiredView<'a>>,
}

struct RetiredView<'a> {
    id: &'a str,
    subject: &'a str,
    kind: &'static str,
    until: String,
}

async fn index(State(state): State<Arc<AppState>>) -> Response {
    let root = state.authority.root();
    let issuer = state.authority.issuer().certificate();
    let page = IndexPage {
        root_subject: root.subject(),
        root_not_after: root.not_after().date().to_string(),
        root_fingerprint: root.fingerprint_sha256(),
        issuer_id: issuer.id(),
        issuer_subject: issuer.subject(),
        issuer_not_after: issuer.not_after().date().to_string(),
        http_url: &state.public_http_url,
        retired: state
            .authority
            .retired()
            .iter()
            .map(|r| RetiredView {
                id: r.issuer.certificate().id(),
                subject: r.issuer.certificate().subject(),
                kind: match r.kind {
                    crate::workflow::Retirement::Rotated => "rotated",
                    crate::workflow::Retirement::Imported => "imported",
                },
                until: crate::workflow::rfc3339(r.serves_until)
                    .get(..10)
                    .unwrap_or_default()
                    .to_owned(),
            })
            .collect(),
    };
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering the index page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../../static/style.css"),
    )
}
