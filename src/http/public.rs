//! Public endpoints on both listeners: CA certificates (pre-encoded once at
//! start-up, served from memory with an ETag) and health checks.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::problem::Problem;
use super::AppState;
use crate::pki::CaCertificate;

/// One pre-encoded file.
#[derive(Debug, Clone)]
struct CachedFile {
    body: Bytes,
    content_type: HeaderValue,
    etag: HeaderValue,
}

impl CachedFile {
    fn new(body: Vec<u8>, content_type: &'static str) -> Self {
        let etag = format!("\"{}\"", hex::encode(&Sha256::digest(&body)[..16]));
        CachedFile {
            body: Bytes::from(body),
            content_type: HeaderValue::from_static(content_type),
            etag: HeaderValue::from_str(&etag).expect("hex is a valid header value"),
        }
    }
}

/// The CA certificate files, by file name (`root.crt`, `int-….pem`, `chain.pem`).
#[derive(Debug, Default)]
pub struct CaFiles {
    files: HashMap<String, CachedFile>,
}

impl CaFiles {
    /// Encodes the root and the issuing intermediate in every served form.
    pub fn new(root: &CaCertificate, issuing: &CaCertificate) -> Self {
        let mut files = HashMap::new();
        for cert in [root, issuing] {
            files.insert(
                format!("{}.crt", cert.id()),
                CachedFile::new(cert.der().to_vec(), "application/pkix-cert"),
            );
            files.insert(
                format!("{}.pem", cert.id()),
                CachedFile::new(cert.pem().into_bytes(), "application/x-pem-file"),
            );
        }
        let chain = format!("{}{}", issuing.pem(), root.pem());
        files.insert(
            "chain.pem".into(),
            CachedFile::new(chain.into_bytes(), "application/pem-certificate-chain"),
        );
        CaFiles { files }
    }
}

/// Routes served on both listeners.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/ca/{file}", get(ca_file))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn ca_file(
    State(state): State<Arc<AppState>>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(f) = state.ca_files.files.get(&file) else {
        return Problem::not_found(format!(
            "there is no CA file {file:?}; try root.crt, root.pem or chain.pem"
        ))
        .into_response();
    };
    let cache = [
        (header::ETAG, f.etag.clone()),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        ),
    ];
    let matches = headers.get(header::IF_NONE_MATCH).is_some_and(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii() == f.etag.as_bytes() || t.trim_ascii() == b"*")
    });
    if matches {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [(header::CONTENT_TYPE, f.content_type.clone())],
        f.body.clone(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.authority.store().ping().await {
        Ok(()) => "ready\n".into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            Problem::hallmark(
                StatusCode::SERVICE_UNAVAILABLE,
                "databaseUnavailable",
                "Not ready",
                "the database does not answer",
            )
            .into_response()
        }
    }
}

/// Prometheus text exposition: what an operator alerts on (CA expiry, the
/// database answering) and issuance volume.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    use std::fmt::Write;
    let authority = &state.authority;
    let database_up = u8::from(authority.store().ping().await.is_ok());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP hallmark_build_info The running hallmark version."
    );
    let _ = writeln!(out, "# TYPE hallmark_build_info gauge");
    let _ = writeln!(
        out,
        "hallmark_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(
        out,
        "# HELP hallmark_database_up Whether the database answers (1) or not (0)."
    );
    let _ = writeln!(out, "# TYPE hallmark_database_up gauge");
    let _ = writeln!(out, "hallmark_database_up {database_up}");
    let _ = writeln!(out, "# HELP hallmark_certificates_issued_total Certificates this process issued since it started.");
    let _ = writeln!(out, "# TYPE hallmark_certificates_issued_total counter");
    let _ = writeln!(
        out,
        "hallmark_certificates_issued_total {}",
        authority.issued_count()
    );
    let _ = writeln!(
        out,
        "# HELP hallmark_ca_not_after_seconds When each CA certificate expires (Unix time)."
    );
    let _ = writeln!(out, "# TYPE hallmark_ca_not_after_seconds gauge");
    for cert in [authority.root(), authority.issuer().certificate()] {
        let _ = writeln!(
            out,
            "hallmark_ca_not_after_seconds{{issuer=\"{}\"}} {}",
            cert.id(),
            cert.not_after().unix_timestamp()
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        out,
    )
        .into_response()
}
