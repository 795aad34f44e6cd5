//! Public endpoints on both listeners: CA certificates (pre-encoded once at
//! start-up, served from memory with an ETag), CRLs (served from the
//! in-memory copy of the newest in the database), OCSP and health checks.

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
    /// Encodes the root, the issuing intermediate and the retired issuers
    /// (whose certificates' caIssuers URLs still point here) in every
    /// served form. `chain.pem` is the issuing intermediate's chain.
    pub fn new(root: &CaCertificate, issuing: &CaCertificate, retired: &[&CaCertificate]) -> Self {
        let mut files = HashMap::new();
        for cert in [root, issuing].into_iter().chain(retired.iter().copied()) {
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
        .route("/crl/{file}", get(crl_file))
        .route("/ocsp", axum::routing::post(ocsp_post))
        .route("/ocsp/{*request}", get(ocsp_get))
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
    if etag_matches(&headers, f.etag.as_bytes()) {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [(header::CONTENT_TYPE, f.content_type.clone())],
        f.body.clone(),
    )
        .into_response()
}

/// `If-None-Match` names `etag` (or `*`).
fn etag_matches(headers: &HeaderMap, etag: &[u8]) -> bool {
    headers.get(header::IF_NONE_MATCH).is_some_and(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii() == etag || t.trim_ascii() == b"*")
    })
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 §5.6.7).
const HTTP_DATE: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
);

fn http_date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(HTTP_DATE).ok())
        .unwrap_or_default()
}

fn parse_http_date(s: &str) -> Option<i64> {
    time::PrimitiveDateTime::parse(s.trim(), HTTP_DATE)
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}

async fn crl_file(
    State(state): State<Arc<AppState>>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut crl = state.crls.served(&file);
    if crl.is_none() && state.crls.could_serve(&file) {
        // Not seen yet by this instance (just started, or published by
        // another one a moment ago): look in the database once.
        if let Err(e) = state.crls.refresh().await {
            tracing::warn!(error = %e, "reading the newest CRLs failed");
        }
        crl = state.crls.served(&file);
    }
    let Some(crl) = crl else {
        return Problem::not_found(format!(
            "there is no CRL {file:?}; the issuing CA's is named in every certificate's CRL distribution point"
        ))
        .into_response();
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let max_age = (crl.next_update - now).clamp(0, i64::from(state.crls.config().max_age_secs));
    let last_modified = http_date(crl.this_update);
    let cache = [
        (
            header::ETAG,
            HeaderValue::from_str(&crl.etag).unwrap_or(HeaderValue::from_static("\"\"")),
        ),
        (
            header::LAST_MODIFIED,
            HeaderValue::from_str(&last_modified).unwrap_or(HeaderValue::from_static("")),
        ),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_str(&format!("public, max-age={max_age}"))
                .unwrap_or(HeaderValue::from_static("no-cache")),
        ),
    ];
    let not_modified = if headers.contains_key(header::IF_NONE_MATCH) {
        etag_matches(&headers, crl.etag.as_bytes())
    } else {
        headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date)
            .is_some_and(|since| since >= crl.this_update)
    };
    if not_modified {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/pkix-crl"),
        )],
        crl.der.clone(),
    )
        .into_response()
}

/// `GET /ocsp/<base64 of the DER request>` (RFC 6960 appendix A.1); the
/// answer is cacheable until its nextUpdate (RFC 5019 §6).
async fn ocsp_get(State(state): State<Arc<AppState>>, Path(request): Path<String>) -> Response {
    use base64::Engine;
    // Clients URL-encode the base64, and some keep '+' unencoded, which
    // some paths turn into a space; base64 never contains spaces.
    let text: String = request.trim_start_matches('/').replace(' ', "+");
    let der = base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .unwrap_or_default();
    let answer = state.ocsp.answer(&der).await;
    ocsp_response(answer, true)
}

/// `POST /ocsp` with `application/ocsp-request`.
async fn ocsp_post(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let type_ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|t| t.trim().eq_ignore_ascii_case("application/ocsp-request"));
    if !type_ok {
        return Problem::hallmark(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupportedMediaType",
            "Unsupported media type",
            "an OCSP request must be sent as application/ocsp-request",
        )
        .into_response();
    }
    let answer = state.ocsp.answer(&body).await;
    ocsp_response(answer, false)
}

fn ocsp_response(answer: crate::workflow::ocsp::OcspAnswer, cacheable: bool) -> Response {
    let content_type = (
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/ocsp-response"),
    );
    match answer.validity {
        Some((this_update, next_update)) if cacheable => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let max_age = (next_update - now).max(0);
            let etag = format!("\"{}\"", hex::encode(&Sha256::digest(&answer.der)[..16]));
            (
                [
                    content_type,
                    (
                        header::CACHE_CONTROL,
                        HeaderValue::from_str(&format!(
                            "public, max-age={max_age}, no-transform, must-revalidate"
                        ))
                        .unwrap_or(HeaderValue::from_static("no-cache")),
                    ),
                    (
                        header::LAST_MODIFIED,
                        HeaderValue::from_str(&http_date(this_update))
                            .unwrap_or(HeaderValue::from_static("")),
                    ),
                    (
                        header::EXPIRES,
                        HeaderValue::from_str(&http_date(next_update))
                            .unwrap_or(HeaderValue::from_static("")),
                    ),
                    (
                        header::ETAG,
                        HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\"")),
                    ),
                ],
                answer.der,
            )
                .into_response()
        }
        _ => (
            [
                content_type,
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            answer.der,
        )
            .into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// How long `/readyz` waits for the database before answering 503.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let store = state.authority.reads();
    let check = async {
        store.ping().await?;
        store.check_durable().await
    };
    let detail = match tokio::time::timeout(READY_TIMEOUT, check).await {
        Ok(Ok(())) => return "ready\n".into_response(),
        Ok(Err(crate::store::StoreError::NotDurable(why))) => {
            tracing::error!(error = %why, "readiness check failed");
            "the database would not flush commits to disk"
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            "the database does not answer"
        }
        Err(_) => {
            tracing::warn!("readiness check timed out");
            "the database did not answer within 3 seconds"
        }
    };
    Problem::hallmark(
        StatusCode::SERVICE_UNAVAILABLE,
        "databaseUnavailable",
        "Not ready",
        detail,
    )
    .into_response()
}

/// Prometheus text exposition: what an operator alerts on (CA expiry, the
/// database answering) and issuance volume.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let authority = &state.authority;
    let reads = authority.reads();
    let database_up = u8::from(reads.ping().await.is_ok());
    let mut out = String::new();
    let o = &mut out;
    gauge(
        o,
        "hallmark_build_info",
        "The running hallmark version.",
        [(label("version", env!("CARGO_PKG_VERSION")), 1)],
    );
    gauge(
        o,
        "hallmark_database_up",
        "Whether the database answers (1) or not (0).",
        [(String::new(), database_up)],
    );
    if reads.one_server() {
        gauge(
            o,
            "hallmark_database_one_server",
            "Whether this instance is its database's one server now (1; SQLite always, PostgreSQL with database.single_instance while it holds the serve lock) or has lost the lock (0).",
            [(String::new(), u8::from(reads.alone()))],
        );
    }
    family(
        o,
        "hallmark_certificates_issued_total",
        "counter",
        "Certificates this process issued since it started.",
        [(String::new(), authority.issued_count())],
    );
    gauge(
        o,
        "hallmark_ca_not_after_seconds",
        "When each CA certificate expires (Unix time).",
        [authority.root(), authority.issuer().certificate()].map(|cert| {
            (
                label("issuer", cert.id()),
                cert.not_after().unix_timestamp(),
            )
        }),
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut expiring = Vec::new();
    for days in [7, 30] {
        if let Ok(n) = reads.count_expiring(now, now + days * 86_400).await {
            expiring.push((label("within_days", days), n));
        }
    }
    gauge(
        o,
        "hallmark_certificates_expiring",
        "Unrevoked certificates that expire within the window (days).",
        expiring,
    );
    let served = state.crls.all_served();
    let by_crl = |value: &dyn Fn(&crate::workflow::crl::ServedCrl) -> i64| {
        served
            .iter()
            .map(|crl| (label("crl", crl.kind.file_name(&crl.issuer_id)), value(crl)))
            .collect::<Vec<_>>()
    };
    gauge(
        o,
        "hallmark_crl_age_seconds",
        "Seconds since thisUpdate of the CRL this instance serves, by file.",
        by_crl(&|crl| now - crl.this_update),
    );
    gauge(
        o,
        "hallmark_crl_next_update_seconds",
        "nextUpdate of the CRL this instance serves (Unix time), by file.",
        by_crl(&|crl| crl.next_update),
    );
    gauge(
        o,
        "hallmark_crl_bytes",
        "Size of the CRL this instance serves, by file.",
        by_crl(&|crl| crl.der.len() as i64),
    );
    gauge(
        o,
        "hallmark_crl_entries",
        "Entries of the CRL this instance serves, by file.",
        by_crl(&|crl| crl.entries),
    );
    let connections = reads.pools().into_iter().flat_map(|pool| {
        [
            ("idle", pool.idle),
            ("busy", pool.size.saturating_sub(pool.idle)),
            ("max", pool.max),
        ]
        .map(|(state, n)| (format!("{{pool=\"{}\",state=\"{state}\"}}", pool.name), n))
    });
    gauge(
        o,
        "hallmark_database_connections",
        "Database connections by pool and state (idle, busy), and each pool's maximum.",
        connections,
    );
    crate::metrics::METRICS.render(&mut out);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        out,
    )
        .into_response()
}

/// One metric family of the text exposition: its HELP and TYPE lines,
/// then a line for each sample (its labels, as [`label`] writes them, or
/// none, and its value).
fn family<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, V)>,
) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// A [`family`] of gauges.
fn gauge<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, V)>,
) {
    family(out, name, "gauge", help, samples);
}

/// One label, `{key="value"}` (the values here are versions, ids, numbers
/// and file names: nothing to escape).
fn label(key: &str, value: impl std::fmt::Display) -> String {
    format!("{{{key}=\"{value}\"}}")
}
