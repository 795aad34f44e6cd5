//! The HTTP edge: axum routers for the two listeners, the problem+json error
//! type, and the connection loop with TLS and graceful shutdown.

pub mod acme;
pub mod api;
pub mod est;
pub mod problem;
pub mod public;
pub mod server;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::Router;
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument;

use crate::workflow::orders::Orders;
use crate::workflow::Authority;

/// Largest request body accepted anywhere (a CSR with 100 names is ~5 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest time a request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Shared by every handler.
pub struct AppState {
    /// The CA.
    pub authority: Arc<Authority>,
    /// The order engine.
    pub orders: Arc<Orders>,
    /// Pre-encoded CA certificates.
    pub ca_files: public::CaFiles,
    /// CRL publishing and the served copies.
    pub crls: Arc<crate::workflow::crl::CrlPublisher>,
    /// The OCSP responder.
    pub ocsp: Arc<crate::workflow::ocsp::OcspResponder>,
    /// Public HTTPS base URL.
    pub public_https_url: String,
    /// Public HTTP base URL.
    pub public_http_url: String,
    /// ACME settings.
    pub acme: crate::config::AcmeSection,
    /// Test-only ACME faults (never set from configuration).
    pub danger_acme_chaos: Option<crate::config::DangerAcmeChaos>,
    /// ACME nonces: their key and the record of their use.
    pub acme_nonces: Arc<crate::workflow::nonces::Nonces>,
    /// Valid nonces used on this instance (for `danger_acme_chaos`).
    pub acme_nonce_uses: std::sync::atomic::AtomicU64,
    /// Per-address limits of the unauthenticated doors.
    pub limits: crate::workflow::limits::AddressLimits,
    /// The bound on concurrent password checks.
    pub password_gate: Arc<crate::workflow::users::PasswordGate>,
    /// The configured webhooks (shown in the dashboard).
    pub webhooks: Vec<crate::config::Webhook>,
}

fn common_layers(router: Router) -> Router {
    router
        .fallback(|| async { problem::Problem::not_found("there is nothing at this path") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
}

/// The plain-HTTP listener: what certificates point to (CA certificates,
/// later CRLs and OCSP) and health checks.
///
/// No per-request trace span here: these are the hot, anonymous GETs every
/// relying party makes (the CA-certificate GET budget is 80 % of nginx).
pub fn http_router(state: Arc<AppState>) -> Router {
    common_layers(public::router().with_state(state))
}

/// The HTTPS listener: the public routes, the web pages (and later the API,
/// ACME and dashboard), with browser security headers.
pub fn https_router(state: Arc<AppState>) -> Router {
    let router = public::router()
        .merge(web::router())
        .merge(api::router())
        .merge(acme::router(state.clone()))
        .merge(est::router())
        .with_state(state);
    common_layers(router.route_layer(axum::middleware::from_fn(keep_route)))
        .layer(axum::middleware::from_fn(observe))
}

/// The browser security headers every HTTPS answer carries, unless its
/// handler set its own (set by [`observe`]: one pass over the answer's
/// headers instead of a tower layer each).
const SECURITY_HEADERS: [(header::HeaderName, &str); 6] = [
    (header::CACHE_CONTROL, "no-store"),
    (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
];

/// The `X-Request-Id` header: taken from the request when it is a sane
/// id, else made here; returned on every HTTPS answer.
pub const REQUEST_ID: &str = "x-request-id";

/// Hands the matched route template to [`observe`], which runs outside the
/// router and cannot see it on the request.
async fn keep_route(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(route);
    }
    response
}

/// Every HTTPS request: a request id (the caller's `X-Request-Id` if it is
/// 1–64 of `A-Za-z0-9._-`, else 16 random hex digits) on every log line
/// the request causes — as the `request` span, which the JSON log format
/// carries too — and in the answer's `X-Request-Id`; and the request's
/// count and latency by route template (never the raw path, so the series
/// stay bounded); and the [`SECURITY_HEADERS`] its handler did not set.
async fn observe(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let given = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
        .map(str::to_owned);
    let id = given.unwrap_or_else(|| hex::encode(rand::random::<[u8; 8]>()));
    let method = request.method().clone();
    let span =
        tracing::info_span!("request", id = %id, method = %method, path = %request.uri().path());
    if let Ok(value) = HeaderValue::from_str(&id) {
        request.headers_mut().insert(REQUEST_ID, value);
    }
    let mut response = next.run(request).instrument(span.clone()).await;
    let route = response
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let status = response.status();
    let metrics = &crate::metrics::METRICS;
    metrics
        .http_requests
        .inc(&[&route, method.as_str(), status.as_str()]);
    metrics.http_duration.observe(&[&route], started.elapsed());
    span.in_scope(|| {
        tracing::debug!(
            status = status.as_u16(),
            route,
            ms = started.elapsed().as_millis() as u64,
            "answered"
        );
    });
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(REQUEST_ID, value);
    }
    for (name, value) in SECURITY_HEADERS {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod layering {
    /// The HTTP layer reads the store (`Authority::reads`) and changes
    /// nothing itself: the whole store appears only as the argument of a
    /// workflow function, and no audit record is built here.
    #[test]
    fn the_edge_reads_and_leaves_every_write_to_the_workflow() {
        fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    files(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let mut paths = Vec::new();
        files(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http"),
            &mut paths,
        );
        assert!(paths.len() > 10);
        // Spelled in pieces so this test does not find itself.
        let (store_call, handed, audit) = (
            concat!(".", "store()"),
            concat!(".", "store().as_ref()"),
            concat!("Audit", "Event"),
        );
        let mut offences = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let context = format!("{}{}", if i > 0 { lines[i - 1] } else { "" }, line);
                let hands_to_workflow = ["users::", "accounts::", "acme_accounts::"]
                    .iter()
                    .any(|m| context.contains(m));
                if line.contains(store_call) && !(line.contains(handed) && hands_to_workflow) {
                    offences.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
                }
                if line.contains(audit) && !line.trim_start().starts_with("//") {
                    offences.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
                }
            }
        }
        assert!(offences.is_empty(), "{}", offences.join("\n"));
    }
}
