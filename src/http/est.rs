//! EST (RFC 7030) under `/.well-known/est/`, for devices: `cacerts` (the
//! chain as base64 certs-only PKCS#7), `csrattrs` (none asked for: 204),
//! `simpleenroll`, authenticated by an account's API key as the HTTP Basic
//! password, and `simplereenroll`, authenticated by the current
//! certificate in the TLS handshake.
//!
//! Enrolment goes through the same order engine as REST, with the
//! `server-client` profile (a device's certificate is also its TLS client
//! certificate for re-enrolment): a certificate is issued at once for names
//! the account has proven within `orders.reuse_days`; for others the order
//! waits for its challenges over REST, and EST answers 403 naming them.
//! Re-enrolment needs no new proof: the current, unrevoked certificate of
//! the same names is it (RFC 7030 §4.2.2).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::Router;
use base64::Engine;

use super::problem::Problem;
use super::server::ClientCertificate;
use super::AppState;
use crate::acme_error::AcmeError;
use crate::pki::{pkcs7, Csr, Serial};
use crate::store::OrderStatus;
use crate::store::StoreError;
use crate::workflow::accounts::{self, AccountError};
use crate::workflow::orders::{NewOrder, Validation};
use crate::workflow::SignOptions;

/// The EST routes.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/.well-known/est/cacerts", get(cacerts))
        .route("/.well-known/est/csrattrs", get(csrattrs))
        .route("/.well-known/est/simpleenroll", post(simpleenroll))
        .route("/.well-known/est/simplereenroll", post(simplereenroll))
}

/// A base64 certs-only PKCS#7 answer (RFC 7030 §4.1.3).
fn pkcs7_response(certificates: &[&[u8]]) -> Response {
    let body = base64::engine::general_purpose::STANDARD.encode(pkcs7::certs_only(certificates));
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                "application/pkcs7-mime; smime-type=certs-only",
            ),
            (
                header::HeaderName::from_static("content-transfer-encoding"),
                "base64",
            ),
        ],
        body,
    )
        .into_response()
}

async fn cacerts(State(state): State<Arc<AppState>>) -> Response {
    let issuer = state.authority.issuer().certificate().der().to_vec();
    let root = state.authority.root().der().to_vec();
    pkcs7_response(&[&issuer, &root])
}

async fn csrattrs() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn simpleenroll(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let unauthorized =
        |detail: &str| Problem::acme(StatusCode::UNAUTHORIZED, AcmeError::Unauthorized, detail);
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            unauthorized("EST enrolment needs HTTP Basic authentication with an account's API key as the password")
        })?;
    let api_key = basic.split_once(':').map_or("", |(_, p)| p);
    let caller = match accounts::authenticate(state.authority.store().as_ref(), api_key).await {
        Ok(caller) => caller,
        Err(AccountError::Store(e)) => return Err(Problem::from(e)),
        Err(e) => return Err(unauthorized(&e.to_string())),
    };
    let der = csr_der(&body)?;
    let bundle = state
        .orders
        .create(
            &caller,
            NewOrder {
                csr: der,
                validation: Validation::Dv,
                profile: Some("server-client".into()),
                validity_days: None,
                organization: None,
            },
        )
        .await?;
    let order = &bundle.order;
    match (&order.status, &order.certificate_serial) {
        (OrderStatus::Valid, Some(serial)) => {
            let serial = serial
                .parse()
                .map_err(|_| Problem::malformed("the issued serial could not be read"))?;
            let cert = state.authority.reads().certificate(&serial).await?;
            Ok(pkcs7_response(&[&cert.der]))
        }
        _ => {
            let pending: Vec<String> = bundle
                .authorizations
                .iter()
                .filter(|a| !a.challenges.is_empty())
                .map(|a| a.authorization.identifier_value.clone())
                .collect();
            Err(Problem::acme(
                StatusCode::FORBIDDEN,
                AcmeError::Unauthorized,
                format!(
                    "this account has not proven {} recently; complete order {} over the REST API, then enrol again",
                    pending.join(", "),
                    order.id
                ),
            ))
        }
    }
}

/// application/pkcs10: base64 DER, line breaks allowed.
fn csr_der(body: &[u8]) -> Result<Vec<u8>, Problem> {
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(|_| {
            Problem::malformed("the body must be a base64 PKCS#10 CSR (application/pkcs10)")
        })
}

async fn simplereenroll(
    State(state): State<Arc<AppState>>,
    client: Option<Extension<ClientCertificate>>,
    body: Bytes,
) -> Result<Response, Problem> {
    let refuse =
        |detail: String| Problem::acme(StatusCode::UNAUTHORIZED, AcmeError::Unauthorized, detail);
    let Some(Extension(ClientCertificate(presented))) = client else {
        return Err(refuse(
            "re-enrolment needs the current certificate as the TLS client certificate".into(),
        ));
    };
    // The handshake checked it chains to this CA's root; this CA must also
    // have issued it, to an enabled account, and it must still stand.
    let serial = x509_parser::parse_x509_certificate(&presented)
        .ok()
        .and_then(|(_, c)| hex::encode(c.raw_serial()).parse::<Serial>().ok())
        .ok_or_else(|| refuse("the client certificate could not be read".into()))?;
    let current = match state.authority.reads().certificate(&serial).await {
        Ok(c) if c.der == *presented => c,
        Ok(_) | Err(StoreError::NotFound) => {
            return Err(refuse(
                "the client certificate was not issued by this CA".into(),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    if current.revoked_at.is_some() {
        return Err(refuse(format!("certificate {serial} is revoked")));
    }
    if current.not_after < time::OffsetDateTime::now_utc().unix_timestamp() {
        return Err(refuse(format!("certificate {serial} has expired")));
    }
    let Some(account_id) = current.account_id.clone() else {
        return Err(refuse(format!(
            "certificate {serial} belongs to no account"
        )));
    };
    let enabled = state
        .authority
        .reads()
        .accounts()
        .await?
        .into_iter()
        .any(|a| a.id == account_id && !a.disabled);
    if !enabled {
        return Err(refuse(format!("the account {account_id} is disabled")));
    }
    // RFC 7030 §4.2.2: the same names as the certificate being renewed.
    let der = csr_der(&body)?;
    let csr = Csr::parse(&der).map_err(|e| Problem::malformed(e.to_string()))?;
    let mut asked: Vec<String> = csr.identifiers().iter().map(|i| i.value()).collect();
    let mut held = current.identifiers.clone();
    asked.sort();
    held.sort();
    if asked != held {
        return Err(Problem::acme(
            StatusCode::BAD_REQUEST,
            AcmeError::RejectedIdentifier,
            format!(
                "a re-enrolment must name exactly the current certificate's names ({})",
                held.join(", ")
            ),
        ));
    }
    let signed = state
        .authority
        .sign_csr(
            &der,
            SignOptions {
                validity_days: None,
                profile: Some(current.profile.clone()),
                account_id: Some(account_id.clone()),
                subject: Default::default(),
            },
            &format!("est:{account_id}"),
        )
        .await?;
    Ok(pkcs7_response(&[&signed.certificate.der]))
}
