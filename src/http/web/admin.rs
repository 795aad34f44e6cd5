//! The admin dashboard under `/admin`: every page and action. Reading is
//! open to every role; approving, rejecting and revoking need `reviewer`;
//! accounts, users and CRL regeneration need `admin`. Every form carries
//! the session's CSRF token, checked before anything else.

// Early returns here are finished responses, built once per request and
// returned straight to axum, never propagated: boxing them buys nothing.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{AppendHeaders, Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use subtle::ConstantTimeEq;

use super::session::{self, redirect_with, Admin};
use crate::http::server::ClientAddr;
use crate::http::AppState;
use crate::pki::crl::RevocationReason;
use crate::pki::{pem_encode, Csr, Serial};
use crate::store::{
    AuditQuery, CertificateQuery, CertificateRecord, CertificateStatus, OrderQuery, OrderStatus,
    StoreError,
};
use crate::workflow::accounts::{self, Caller, Role};
use crate::workflow::crl::CrlKind;
use crate::workflow::limits::address_key;
use crate::workflow::revocation::{RevokeRequest, Revoker};
use crate::workflow::users::{self, UserError, UserRole};
use crate::workflow::WorkflowError;

/// Rows per page in lists.
const PAGE: i64 = 50;

type Fields = Form<HashMap<String, String>>;

/// Routes under `/admin`.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin", get(overview))
        .route("/admin/login", get(login_page).post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/password", get(password_page).post(change_password))
        .route("/admin/requests", get(requests))
        .route("/admin/requests/{id}", get(request_detail))
        .route("/admin/requests/{id}/approve", post(approve))
        .route("/admin/requests/{id}/reject", post(reject))
        .route("/admin/certificates", get(certificates))
        .route("/admin/certificates/{serial}", get(certificate_detail))
        .route(
            "/admin/certificates/{serial}/chain.pem",
            get(certificate_chain),
        )
        .route("/admin/certificates/{serial}/revoke", post(revoke))
        .route("/admin/accounts", get(accounts_page).post(create_account))
        .route("/admin/accounts/{id}/{action}", post(toggle_account))
        .route("/admin/accounts/{id}/rotate", post(rotate_account_key))
        .route("/admin/accounts/{id}/eab", post(create_account_eab))
        .route("/admin/users", get(users_page).post(add_user))
        .route("/admin/users/{name}/role", post(set_user_role))
        .route("/admin/users/{name}/account", post(link_user))
        .route("/admin/users/{name}/{action}", post(toggle_user))
        .route("/admin/audit", get(audit))
        .route("/admin/crl", get(crl_status))
        .route("/admin/crl/regenerate", post(regenerate_crl))
}

/// Renders a template, or a plain 500.
fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a dashboard page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "a dashboard request failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "something went wrong; see the server log",
    )
        .into_response()
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("there is no {what}")).into_response()
}

/// `2026-11-24 10:02:03 UTC`.
pub fn utc(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
            ))
            .ok()
        })
        .unwrap_or_default()
}

/// `3 hours ago`, `in 29 days`.
pub fn relative(unix: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let d = unix - now;
    let a = d.abs();
    let (n, unit) = match a {
        0..=59 => {
            return if d >= 0 {
                "in a moment".into()
            } else {
                "just now".into()
            }
        }
        60..=3599 => (a / 60, "minute"),
        3600..=86_399 => (a / 3600, "hour"),
        _ => (a / 86_400, "day"),
    };
    let s = if n == 1 { "" } else { "s" };
    if d >= 0 {
        format!("in {n} {unit}{s}")
    } else {
        format!("{n} {unit}{s} ago")
    }
}

/// A time as the pages show it: UTC and relative.
pub struct When {
    /// UTC text.
    pub utc: String,
    /// Relative text.
    pub relative: String,
}

fn when(unix: i64) -> When {
    When {
        utc: utc(unix),
        relative: relative(unix),
    }
}

/// What every page's layout needs.
pub struct Chrome {
    /// The user's name.
    pub username: String,
    /// The user's role.
    pub role: &'static str,
    /// CSRF token for forms.
    pub csrf: String,
    /// A message from the last action.
    pub flash: Option<String>,
    /// Which nav item is current.
    pub section: &'static str,
    /// May approve, reject, revoke.
    pub can_review: bool,
    /// May manage accounts, users, CRLs.
    pub can_admin: bool,
}

fn chrome(who: &Admin, headers: &HeaderMap, section: &'static str) -> Chrome {
    Chrome {
        username: who.0.user.username.clone(),
        role: who.0.role.as_str(),
        csrf: who.0.csrf.clone(),
        flash: session::take_flash(headers),
        section,
        can_review: who.0.role >= UserRole::Reviewer,
        can_admin: who.0.role >= UserRole::Admin,
    }
}

/// Pages that show a flash clear it.
fn with_flash_cleared(headers: &HeaderMap, page: Response) -> Response {
    if session::cookie(headers, session::FLASH_COOKIE).is_some() {
        let mut page = page;
        page.headers_mut().append(
            header::SET_COOKIE,
            session::set_cookie(session::FLASH_COOKIE, "", 0),
        );
        page
    } else {
        page
    }
}

fn field<'a>(f: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    f.get(name).map(String::as_str)
}

// ---------------------------------------------------------------- sign-in

#[derive(Template)]
#[template(path = "admin/login.html")]
struct LoginPage {
    csrf: String,
    error: Option<String>,
    username: String,
}

async fn login_page(headers: HeaderMap) -> Response {
    let token = users::random_token(24);
    let page = render(&LoginPage {
        csrf: token.clone(),
        error: session::take_flash(&headers),
        username: String::new(),
    });
    (
        [(
            header::SET_COOKIE,
            session::set_cookie(session::LOGIN_COOKIE, &token, 3600),
        )],
        page,
    )
        .into_response()
}

async fn login(
    State(state): State<Arc<AppState>>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    Form(f): Fields,
) -> Response {
    let expected = session::cookie(&headers, session::LOGIN_COOKIE).unwrap_or("");
    let sent = field(&f, "csrf").unwrap_or("");
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(sent.as_bytes())) {
        return session::forbidden("the sign-in form expired; reload the page and try again");
    }
    let username = field(&f, "username").unwrap_or("").trim().to_owned();
    let password = field(&f, "password").unwrap_or("");
    let attempt = match state.limits.sign_in.take(address_key(client)) {
        Ok(()) => {
            users::sign_in(
                state.authority.store().as_ref(),
                &state.password_gate,
                &username,
                password,
            )
            .await
        }
        Err(retry_after_secs) => Err(UserError::Busy { retry_after_secs }),
    };
    match attempt {
        Ok((token, who)) => {
            let to = if who.user.must_change_password {
                "/admin/password"
            } else {
                "/admin"
            };
            (
                AppendHeaders([
                    (header::SET_COOKIE, session::session_cookie(&token)),
                    (
                        header::SET_COOKIE,
                        session::set_cookie(session::LOGIN_COOKIE, "", 0),
                    ),
                ]),
                Redirect::to(to),
            )
                .into_response()
        }
        Err(UserError::Store(e)) => internal(e),
        Err(e) => {
            let token = users::random_token(24);
            let (status, retry_after) = match &e {
                UserError::Busy { retry_after_secs } => {
                    (StatusCode::TOO_MANY_REQUESTS, Some(*retry_after_secs))
                }
                _ => (StatusCode::UNAUTHORIZED, None),
            };
            let page = render(&LoginPage {
                csrf: token.clone(),
                error: Some(e.to_string()),
                username,
            });
            let mut response = (
                status,
                [(
                    header::SET_COOKIE,
                    session::set_cookie(session::LOGIN_COOKIE, &token, 3600),
                )],
                page,
            )
                .into_response();
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            response
        }
    }
}

async fn logout(State(state): State<Arc<AppState>>, who: Admin, Form(f): Fields) -> Response {
    if let Err(r) = who.check_csrf(field(&f, "csrf")) {
        return r;
    }
    if let Err(e) = users::sign_out(state.authority.store().as_ref(), &who.0).await {
        return internal(e);
    }
    (
        AppendHeaders([
            (
                header::SET_COOKIE,
                session::set_cookie(session::SESSION_COOKIE, "", 0),
            ),
            (header::SET_COOKIE, session::flash("You are signed out.")),
        ]),
        Redirect::to("/admin/login"),
    )
        .into_response()
}

#[derive(Template)]
#[template(path = "admin/password.html")]
struct PasswordPage {
    chrome: Chrome,
    forced: bool,
    error: Option<String>,
}

async fn password_page(who: Admin, headers: HeaderMap) -> Response {
    let page = render(&PasswordPage {
        forced: who.0.user.must_change_password,
        chrome: chrome(&who, &headers, "password"),
        error: None,
    });
    with_flash_cleared(&headers, page)
}

async fn change_password(
    State(state): State<Arc<AppState>>,
    who: Admin,
    headers: HeaderMap,
    Form(f): Fields,
) -> Response {
    if let Err(r) = who.check_csrf(field(&f, "csrf")) {
        return r;
    }
    let new = field(&f, "new_password").unwrap_or("");
    let error = if new != field(&f, "confirm").unwrap_or("") {
        Some("the two new passwords differ".to_owned())
    } else {
        match users::change_password(
            state.authority.store().as_ref(),
            &state.password_gate,
            &who.0,
            field(&f, "current_password").unwrap_or(""),
            new,
        )
        .await
        {
            Ok((token, _)) => {
                return (
                    AppendHeaders([
                        (header::SET_COOKIE, session::session_cookie(&token)),
                        (
                            header::SET_COOKIE,
                            session::flash("Your password was changed."),
                        ),
                    ]),
                    Redirect::to("/admin"),
                )
                    .into_response()
            }
            Err(UserError::Store(e)) => return internal(e),
            Err(e) => Some(e.to_string()),
        }
    };
    let page = render(&PasswordPage {
        forced: who.0.user.must_change_password,
        chrome: chrome(&who, &headers, "password"),
        error,
    });
    (StatusCode::BAD_REQUEST, page).into_response()
}

// ---------------------------------------------------------------- overview

/// One bar of the issuance chart.
pub struct Bar {
    /// Day label (`11-24`).
    pub label: String,
    /// Certificates that day.
    pub count: i64,
    /// x of the bar (SVG units).
    pub x: i64,
    /// Height (SVG units, of 100).
    pub height: i64,
}

/// One CRL line.
pub struct CrlLine {
    /// File name.
    pub file: String,
    /// Number.
    pub number: i64,
    /// Entries.
    pub entries: i64,
    /// thisUpdate.
    pub this_update: When,
    /// nextUpdate.
    pub next_update: When,
}

#[derive(Template)]
#[template(path = "admin/overview.html")]
struct OverviewPage {
    chrome: Chrome,
    orders: Vec<(String, i64)>,
    pending: i64,
    issued_recently: i64,
    expiring_soon: i64,
    certificates: i64,
    revoked: i64,
    bars: Vec<Bar>,
    max_per_day: i64,
    crls: Vec<CrlLine>,
}

fn crl_lines(state: &AppState) -> Vec<CrlLine> {
    state
        .crls
        .all_served()
        .into_iter()
        .map(|c| CrlLine {
            file: c.kind.file_name(&c.issuer_id),
            number: c.number,
            entries: c.entries,
            this_update: when(c.this_update),
            next_update: when(c.next_update),
        })
        .collect()
}

async fn overview(State(state): State<Arc<AppState>>, who: Admin, headers: HeaderMap) -> Response {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let o = match state.authority.reads().overview(now).await {
        Ok(o) => o,
        Err(e) => return internal(e),
    };
    let today = now / 86_400;
    let per_day: HashMap<i64, i64> = o.issued_per_day.iter().copied().collect();
    let max_per_day = per_day.values().copied().max().unwrap_or(0).max(1);
    let bars = (0..30)
        .map(|i| {
            let day = today - 29 + i;
            let count = per_day.get(&day).copied().unwrap_or(0);
            let label = time::OffsetDateTime::from_unix_timestamp(day * 86_400)
                .map(|t| format!("{:02}-{:02}", u8::from(t.month()), t.day()))
                .unwrap_or_default();
            Bar {
                label,
                count,
                x: i * 10,
                height: count * 100 / max_per_day,
            }
        })
        .collect();
    let pending = o
        .orders_by_status
        .iter()
        .find(|(s, _)| s == "awaiting_approval")
        .map(|(_, n)| *n)
        .unwrap_or(0);
    let page = render(&OverviewPage {
        chrome: chrome(&who, &headers, "overview"),
        orders: o.orders_by_status,
        pending,
        issued_recently: o.issued_recently,
        expiring_soon: o.expiring_soon,
        certificates: o.certificates,
        revoked: o.revoked,
        bars,
        max_per_day,
        crls: crl_lines(&state),
    });
    with_flash_cleared(&headers, page)
}

// ---------------------------------------------------------------- requests

/// An order row.
pub struct OrderRow {
    /// Id.
    pub id: String,
    /// Status.
    pub status: String,
    /// DV or OV.
    pub validation: String,
    /// Account id.
    pub account: String,
    /// Names from the CSR.
    pub names: String,
    /// Organisation name (OV).
    pub organization: String,
    /// Created.
    pub created: When,
}

#[derive(Template)]
#[template(path = "admin/requests.html")]
struct RequestsPage {
    chrome: Chrome,
    status: String,
    statuses: Vec<&'static str>,
    rows: Vec<OrderRow>,
    next: Option<String>,
}

fn org_name(json: Option<&str>) -> String {
    json.and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .and_then(|v| v["name"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn csr_names(der: Option<&[u8]>) -> String {
    // Orders hold only CSRs that passed intake, so parsing verifies again.
    der.and_then(|d| Csr::parse(d).ok())
        .map(|c| {
            c.identifiers()
                .iter()
                .map(|i| i.value())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn parse_before(b: Option<&String>) -> Option<(i64, String)> {
    b.and_then(|b| b.split_once('.'))
        .and_then(|(at, id)| Some((at.parse().ok()?, id.to_owned())))
}

async fn requests(
    State(state): State<Arc<AppState>>,
    who: Admin,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let status_name = q
        .get("status")
        .cloned()
        .unwrap_or_else(|| "awaiting_approval".into());
    let status = OrderStatus::ALL
        .into_iter()
        .find(|s| s.as_str() == status_name);
    let orders = match state
        .authority
        .reads()
        .orders(&OrderQuery {
            account_id: None,
            status,
            before: parse_before(q.get("before")),
            limit: PAGE,
        })
        .await
    {
        Ok(o) => o,
        Err(e) => return internal(e),
    };
    let next = (orders.len() as i64 == PAGE)
        .then(|| orders.last().map(|o| format!("{}.{}", o.created_at, o.id)))
        .flatten();
    let rows = orders
        .into_iter()
        .map(|o| OrderRow {
            names: csr_names(o.csr_der.as_deref()),
            organization: org_name(o.organization.as_deref()),
            id: o.id,
            status: o.status.as_str().into(),
            validation: o.validation.to_uppercase(),
            account: o.account_id,
            created: when(o.created_at),
        })
        .collect();
    let mut statuses = vec!["all"];
    statuses.extend(OrderStatus::ALL.iter().map(|s| s.as_str()));
    let page = render(&RequestsPage {
        chrome: chrome(&who, &headers, "requests"),
        status: if status.is_some() {
            status_name
        } else {
            "all".into()
        },
        statuses,
        rows,
        next,
    });
    with_flash_cleared(&headers, page)
}

/// One identifier's validation, as the detail page shows it.
pub struct AuthzLine {
    /// The identifier.
    pub identifier: String,
    /// Its status.
    pub status: String,
    /// Each challenge: type, status, error.
    pub challenges: Vec<(String, String, String)>,
}

#[derive(Template)]
#[template(path = "admin/request.html")]
struct RequestPage {
    chrome: Chrome,
    id: String,
    status: String,
    validation: String,
    account: String,
    account_name: String,
    created: When,
    csr_subject: String,
    csr_names: Vec<String>,
    csr_key: String,
    csr_signature: String,
    organization: Vec<(&'static str, String)>,
    authorizations: Vec<AuthzLine>,
    error: String,
    rejection_reason: String,
    approval_reason: String,
    certificate: Option<String>,
    awaiting: bool,
}

fn problem_detail(json: Option<&str>) -> String {
    json.and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .map(|v| v["detail"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

async fn request_detail(
    State(state): State<Arc<AppState>>,
    who: Admin,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let store = state.authority.reads();
    let bundle = match store.order(&id).await {
        Ok(b) => b,
        Err(StoreError::NotFound) => return not_found("such request"),
        Err(e) => return internal(e),
    };
    let o = &bundle.order;
    let csr = o.csr_der.as_deref().and_then(|d| Csr::parse(d).ok());
    let org: serde_json::Value = o
        .organization
        .as_deref()
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default();
    let organization = [
        ("Organisation", "name"),
        ("Locality", "locality"),
        ("State", "state"),
        ("Country", "country"),
    ]
    .into_iter()
    .filter_map(|(label, key)| org[key].as_str().map(|v| (label, v.to_owned())))
    .collect();
    let account_name = store
        .accounts()
        .await
        .ok()
        .and_then(|all| all.into_iter().find(|a| a.id == o.account_id))
        .map(|a| a.name)
        .unwrap_or_default();
    let page = render(&RequestPage {
        chrome: chrome(&who, &headers, "requests"),
        id: o.id.clone(),
        status: o.status.as_str().into(),
        validation: o.validation.to_uppercase(),
        account: o.account_id.clone(),
        account_name,
        created: when(o.created_at),
        csr_subject: csr
            .as_ref()
            .map(|c| c.subject().to_owned())
            .unwrap_or_default(),
        csr_names: csr
            .as_ref()
            .map(|c| c.identifiers().iter().map(|i| i.value()).collect())
            .unwrap_or_default(),
        csr_key: csr.as_ref().map(|c| c.key().describe()).unwrap_or_default(),
        csr_signature: csr
            .as_ref()
            .map(|c| c.signature_algorithm().to_owned())
            .unwrap_or_default(),
        organization,
        authorizations: bundle
            .authorizations
            .iter()
            .map(|a| AuthzLine {
                identifier: a.authorization.identifier_value.clone(),
                status: a.authorization.status.clone(),
                challenges: a
                    .challenges
                    .iter()
                    .map(|c| {
                        (
                            c.kind.clone(),
                            c.status.clone(),
                            problem_detail(c.error.as_deref()),
                        )
                    })
                    .collect(),
            })
            .collect(),
        error: problem_detail(o.error.as_deref()),
        rejection_reason: o.rejection_reason.clone().unwrap_or_default(),
        approval_reason: o.approval_reason.clone().unwrap_or_default(),
        certificate: o.certificate_serial.clone(),
        awaiting: o.status == OrderStatus::AwaitingApproval,
    });
    with_flash_cleared(&headers, page)
}

/// The dashboard user as a caller of the workflow: the account they
/// belong to if they are linked to one (so they never approve that
/// account's orders and revoke as it may), else themselves. The same
/// rules then hold as for API keys of the same role.
fn reviewer(who: &Admin) -> Caller {
    Caller {
        account_id: who
            .0
            .user
            .account_id
            .clone()
            .unwrap_or_else(|| who.0.actor()),
        name: who.0.user.username.clone(),
        role: if who.0.role >= UserRole::Admin {
            Role::Admin
        } else {
            Role::Reviewer
        },
        actor: who.0.actor(),
    }
}

fn workflow_message(e: WorkflowError) -> Result<String, Response> {
    match e {
        WorkflowError::Store(e) => Err(internal(e)),
        WorkflowError::Ca(e) => Err(internal(e)),
        other => Ok(other.to_string()),
    }
}

async fn approve(
    State(state): State<Arc<AppState>>,
    who: Admin,
    Path(id): Path<String>,
    Form(f): Fields,
) -> Response {
    if let Err(r) = who.may(UserRole::Reviewer, field(&f, "csrf")) {
        return r;
    }
    let back = format!("/admin/requests/{id}");
    let reason = field(&f, "reason");
    match state
        .orders
        .approve(&reviewer(&who), &id, None, reason)
        .await
    {
        Ok(b) => redirect_with(
            &back,
            &format!(
                "Approved. Certificate {} was issued.",
                b.order.certificate_serial.unwrap_or_default()
            ),
        ),
        Err(e) => match workflow_message(e) {
            Ok(m) => redirect_with(&back, &format!("Not approved: {m}")),
            Err(r) => r,
        },
    }
}

async fn reject(
    State(state): State<Arc<AppState>>,
    who: Admin,
    Path(id): Path<String>,
    Form(f): Fields,
) -> Response {
    if let Err(r) = who.may(UserRole::Reviewer, field(&f, "csrf")) {
        return r;
    }
    let back = format!("/admin/requests/{id}");
    let reason = field(&f, "reason").unwrap_or("");
    match state.orders.reject(&reviewer(&who), &id, reason).await {
        Ok(_) => redirect_with(&back, "Rejected. The requester sees your reason."),
        Err(e) => match workflow_message(e) {
            Ok(m) => redirect_with(&back, &format!("Not rejected: {m}")),
            Err(r) => r,
        },
    }
}

// ------------------------------------------------------------ certificates

/// A certificate row.
pub struct CertRow {
    /// Serial.
    pub serial: String,
    /// Names.
    pub names: String,
    /// valid, revoked, expired.
    pub status: &'static str,
    /// Account.
    pub account: String,
    /// Expiry.
    pub not_after: When,
}

#[derive(Template)]
#[template(path = "admin/certificates.html")]
struct CertificatesPage {
    chrome: Chrome,
    q: String,
    status: String,
    rows: Vec<CertRow>,
    next: Option<String>,
}

fn status_of(c: &CertificateRecord, now: i64) -> &'static str {
    if c.revoked_at.is_some() {
        "revoked"
    } else if c.not_after < now {
        "expired"
    } else {
        "valid"
    }
}

async fn certificates(
    State(state): State<Arc<AppState>>,
    who: Admin,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let search = q
        .get("q")
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .map(|s| s.chars().take(253).collect::<String>());
    let status_name = q.get("status").cloned().unwrap_or_default();
    let status = match status_name.as_str() {
        "valid" => Some(CertificateStatus::Valid),
        "revoked" => Some(CertificateStatus::Revoked),
        "expired" => Some(CertificateStatus::Expired),
        _ => None,
    };
    let certs = match state
        .authority
        .reads()
        .certificates(&CertificateQuery {
            account_id: q.get("account").filter(|a| !a.is_empty()).cloned(),
            status,
            search: search.clone(),
            before: parse_before(q.get("before")),
            limit: PAGE,
            now,
        })
        .await
    {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    let next = (certs.len() as i64 == PAGE)
        .then(|| {
            certs
                .last()
                .map(|c| format!("{}.{}", c.created_at, c.serial))
        })
        .flatten();
    let rows = certs
        .iter()
        .map(|c| CertRow {
            serial: c.serial.to_hex(),
            names: c.identifiers.join(", "),
            status: status_of(c, now),
            account: c
                .account_id
                .clone()
                .unwrap_or_else(|| c.requested_by.clone()),
            not_after: when(c.not_after),
        })
        .collect();
    let page = render(&CertificatesPage {
        chrome: chrome(&who, &headers, "certificates"),
        q: search.unwrap_or_default(),
        status: if status.is_some() {
            status_name
        } else {
            String::new()
        },
        rows,
        next,
    });
    with_flash_cleared(&headers, page)
}

#[derive(Template)]
#[template(path = "admin/certificate.html")]
struct CertificatePage {
    chrome: Chrome,
    serial: String,
    status: &'static str,
    subject: String,
    names: Vec<String>,
    issuer: String,
    profile: String,
    account: String,
    order: String,
    requested_by: String,
    not_before: When,
    not_after: When,
    revoked_at: Option<When>,
    reason: String,
    key: String,
    signature: String,
    fingerprint: String,
    crl: String,
    pem: String,
    reasons: Vec<&'static str>,
}

async fn load_certificate(state: &AppState, serial: &str) -> Result<CertificateRecord, Response> {
    let parsed: Serial = serial.parse().map_err(|_| not_found("such certificate"))?;
    match state.authority.reads().certificate(&parsed).await {
        Ok(c) => Ok(c),
        Err(StoreError::NotFound) => Err(not_found("such certificate")),
        Err(e) => Err(internal(e)),
    }
}

async fn certificate_detail(
    State(state): State<Arc<AppState>>,
    who: Admin,
    headers: HeaderMap,
    Path(serial): Path<String>,
) -> Response {
    let c = match load_certificate(&state, &serial).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (key, signature) = crate::pki::describe_certificate(&c.der).unwrap_or_default();
    let fingerprint = crate::pki::sha256_fingerprint(&c.der);
    let page = render(&CertificatePage {
        chrome: chrome(&who, &headers, "certificates"),
        serial: c.serial.to_hex(),
        status: status_of(&c, now),
        subject: c.subject.clone(),
        names: c.identifiers.clone(),
        issuer: c.issuer_id.clone(),
        profile: c.profile.clone(),
        account: c.account_id.clone().unwrap_or_default(),
        order: c.order_id.clone().unwrap_or_default(),
        requested_by: c.requested_by.clone(),
        not_before: when(c.not_before),
        not_after: when(c.not_after),
        revoked_at: c.revoked_at.map(when),
        reason: c
            .revocation_reason
            .and_then(RevocationReason::from_code)
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default(),
        key,
        signature,
        fingerprint,
        crl: state
            .authority
            .issuer()
            .urls()
            .crl_partition(c.crl_partition as u32),
        pem: pem_encode("CERTIFICATE", &c.der),
        reasons: RevocationReason::ALL.iter().map(|r| r.as_str()).collect(),
    });
    with_flash_cleared(&headers, page)
}

async fn certificate_chain(
    State(state): State<Arc<AppState>>,
    _who: Admin,
    Path(serial): Path<String>,
) -> Response {
    let c = match load_certificate(&state, &serial).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let issuer = state.authority.issuer().certificate();
    let chain = if c.issuer_id == issuer.id() {
        format!("{}{}", pem_encode("CERTIFICATE", &c.der), issuer.pem())
    } else {
        pem_encode("CERTIFICATE", &c.der)
    };
    (
        [
            (
                header::CONTENT_TYPE,
                "application/pem-certificate-chain".to_owned(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.chain.pem\"", c.serial),
            ),
        ],
        chain,
    )
        .into_response()
}

async fn revoke(
    State(state): State<Arc<AppState>>,
    who: Admin,
    Path(serial): Path<String>,
    Form(f): Fields,
) -> Response {
    if let Err(r) = who.may(UserRole::Reviewer, field(&f, "csrf")) {
        return r;
    }
    let back = format!("/admin/certificates/{serial}");
    let Ok(parsed) = serial.parse::<Serial>() else {
        return not_found("such certificate");
    };
    let reason = match field(&f, "reason")
        .unwrap_or("unspecified")
        .parse::<RevocationReason>()
    {
        Ok(r) => r,
        Err(e) => return redirect_with(&back, &format!("Not revoked: {e}")),
    };
    match state
        .authority
        .revoke(
            Revoker::Account(&reviewer(&who)),
            &parsed,
            RevokeRequest {
                reason,
                invalidity_date: None,
            },
        )
        .await
    {
        Ok(_) => redirect_with(
            &back,
            &format!("Revoked ({reason}). The CRL lists it within seconds."),
        ),
        Err(e) => match workflow_message(e) {
            Ok(m) => redirect_with(&back, &format!("Not revoked: {m}")),
            Err(r) => r,
        },
    }
}

// ---------------------------------------------------------------- accounts

/// An account row.
pub struct AccountRow {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: String,
    /// Disabled.
    pub disabled: bool,
    /// Created.
    pub created: When,
}

#[derive(Template)]
#[template(path = "admin/accounts.html")]
struct AccountsPage {
    chrome: Chrome,
    rows: Vec<AccountRow>,
    new_key: Option<(String, String)>,
    /// A new ACME external account binding: account, kid, HMAC key.
    new_eab: Option<(String, String, String)>,
    /// The ACME directory URL (for the client command shown with new_eab).
    acme_directory: String,
}

async fn accounts_page(
    State(state): State<Arc<AppState>>,
    who: Admin,
    headers: HeaderMap,
) -> Response {
    accounts_view(&state, &who, &headers, None, StatusCode::OK).await
}

/// Issues a single-use ACME external account binding key, shown once.
async fn create_account_eab(
    State(state): State<Arc<AppState>>,
    who: Admin,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Fields,
) -> Response {
    if let Err(r) = who.may(UserRole::Admin, field(&f, "csrf")) {
        return r;
    }
    match accounts::create_eab_key(state.authority.store().as_ref(), &id, &who.0.actor()).await {
        Ok(key) => {
            let rows = match state.authority.reads().accounts().await {
                Ok(a) => a,
                Err(e) => return internal(e),
            };
            let eab = Some((id, key.kid, key.hmac_key.to_string()));
            accounts_render(&state, &who, &headers, rows, None, eab, StatusCode::OK)
        }
        Err(e) => redirect_with("/admin/accounts", &format!("No ACME key issued: {e}")),
    }
}

async fn accounts_view(
    state: &AppState,
    who: &Admin,
    headers: &HeaderMap,
    new_key: Option<(String, String)>,
    status: StatusCode,
) -> Response {
    let rows = match state.authority.reads().accounts().await {
        Ok(a) => a,
        Err(e) => return internal(e),
    };
    accounts_render(state, who, headers, rows, new_key, None, status)
}

fn accounts_render(
    state: &AppState,
    who: &Admin,
    headers: &HeaderMap,
    rows: Vec<crate::store::AccountRecord>,
    new_key: Option<(String, String)>,
    new_eab: Option<(String, String, String)>,
    status: StatusCode,
) -> Response {
    let page = render(&AccountsPage {
        chrome: chrome(who, headers, "accounts"),
        rows: rows
            .into_iter()
            .map(|a| AccountRow {
                id: a.id,
                name: a.name,
                role: a.role,
                disabled: a.disabled,
                created: when(a.created_at),
            })
            .collect(),
        new_key,
        new_eab,
        acme_directory: format!("{}/acme/directory", state.public_https_url),
    });
    let mut page = with_flash_cleared(headers, page);
    *page.status_mut() = status;
    page
}

async fn create_account(
    State(state): State<Arc<AppState>>,
    who: Admin,
    headers: HeaderMap,
    Form(f): Fields,
) -> Response {
    if let Err(r) = who.may(UserRole::Admin, field(&f, "csrf")) {
        return r;
    }
    let name = field(&f, "name").unwrap_or("").trim();
    let role = match field(&f, "role").unwrap_or("requester").parse::<Role>() {
        Ok(r) => r,
        Err(e) => return redirect_with("/admin/accounts", &e.to_string()),
    };
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return redirect_with(
            "/admin/accounts",
            "An account needs a name of 1 to 100 characters.",
        );
    }
    match accounts::create_account(state.authority.store().as_ref(), name, role, &who.0.actor())
        .await
    {
        Ok(created) => {
            // The key is shown once, on this answer, never again.
            accounts_view(
                &state,
                &who,
                &headers,
                Some((created.account.id.clone(), created.api_key.to_string())),
                StatusCode::OK,
            )
            .await
        }
        Err(e) => redirect_with("/admin/accounts", &format!("Not created: {e}")),
    }
}

async fn set_account(state: &AppState, who: &Admin, id: &str, disabled: bool) -> Response {
    match accounts::set_disabled(
        state.authority.store().as_ref(),
        id,
        disabled,
        &who.0.actor(),
    )
    .await
    {
        Ok(()) => redirect_with(
            "/admin/accounts",
            if disabled {
                "Account disabled: its API keys no longer work, and its unfinished orders were ended."
            } else {
                "Account enabled."
            },
        ),
        Err(accounts::AccountError::NoSuchAccount(_)) => not_found("such account"),
        Err(e) => internal(e),
    }
}

async fn toggle_account(
    State(state): State<Arc<AppState>>,
    who: Admin,
    Path((id, action)): Path<(String, String)>,
    Form(f): Fields,
) -> Response {
    if let Err(r) = who.may(UserRole::Admin, field(&f, "csrf")) {
        return r;
    }
    match action.as_str() {
        "disable" => set_account(&state, &who, &id, true).await,
        "enable" => set_account(&state, &who, &id, false).await,
        _ => not_found("such action"),
    }
}

async fn rotate_account_key(
    State(state): State<Arc<AppState>>,
    who: Admin,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Fields,
) -> Response {
    if let Err(r) = who.may(UserRole::Admin, field(&f, "csrf")) {
        return r;
    }
    match accounts::rotate_key(state.authority.store().as_ref(), &id, &who.0.actor()).await {
        Ok((_, key)) => {
            accounts_view(
                &state,
                &who,
                &headers,
                Some((id, key.to_string())),
                StatusCode::OK,
            )
            .await
        }
        Err(e) => redirect_with("/admin/accounts", &format!("Key not rotated: {e}")),
    }
}

// ------------------------------------------------------------------- users

/// A user row.
pub struct UserRow {
    /// Name.
    pub username: String,
    /// Role.
    pub role: String,
    /// Disabled.
    pub disabled: bool,
    /// Must change password.
    pub must_change: bool,
    /// Created.
    pub created: When,
    /// The account they belong to (id), or empty.
    pub account: String,
}

#[derive(Template)]
#[template(path = "admin/users.html")]
struct UsersPage {
    chrome: Chrome,
    rows: Vec<UserRow>,
    roles: Vec<&'static str>,
    /// Accounts a user may belong to: (id, name).
    accounts: Vec<(String, String)>,
}

async fn users_page(
    State(state): State<Arc<AppState>>,
    who: Admin,
    headers: HeaderMap,
) -> Response {
    let rows = match state.authority.reads().users().await {
        Ok(u) => u,
        Err(e) => return internal(e),
    };
    let accounts = match state.authority.reads().accounts().await {
        Ok(a) => a.into_iter().map(|a| (a.id, a.name)).collect(),
        Err(e) => return internal(e),
    };
    let page = render(&UsersPage {
        chrome: chrome(&who, &headers, "users"),
        rows: rows
            .into_iter()
            .map(|u| UserRow {
                username: u.username,
                role: u.role,
                disabled: u.disabled,
                must_change: u.must_change_password,
                created: when(u.created_at),
                account: u.account_id.unwrap_or_default(),
            })
            .collect(),
        roles: UserRole::ALL.iter().map(|r| r.as_str()).collect(),
        accounts,
    });
    with_flash_cleared(&headers, page)
}

fn user_result(r: Result<(), UserError>, ok: &str) -> Response {
    match r {
        Ok(()) => redirect_with("/admin/users", ok),
        Err(UserError::Store(e)) => internal(e),
        Err(e) => redirect_with("/admin/users", &format!("Not changed: {e}")),
    }
}

async fn add_user(State(state): State<Arc<AppState>>, who: Admin, Form(f): Fields) -> Response {
    if let Err(r) = who.may(UserRole::Admin, field(&f, "csrf")) {
        return r;
    }
    let name = field(&f, "username").unwrap_or("").trim();
    let role = match field(&f, "role").unwrap_or("").parse::<UserRole>() {
        Ok(r) => r,
        Err(e) => return user_result(Err(e), ""),
    };
    let r = users::add_user(
        state.authority.store().as_ref(),
        name,
        role,
        field(&f, "password").unwrap_or(""),
        true,
        &who.0.actor(),
    )
    .await;
    user_result(
        r,
        &format!("Added {name}; they choose their own password at first sign-in."),
    )
}

async fn set_user_role(
    State(state): State<Arc<AppState>>,
    who: Admin,
    Path(name): Path<String>,
    Form(f): Fields,
) -> Response {
    if let Err(r) = who.may(UserRole::Admin, field(&f, "csrf")) {
        return r;
    }
    let role = match field(&f, "role").unwrap_or("").parse::<UserRole>() {
        Ok(r) => r,
        Err(e) => return user_result(Err(e), ""),
    };
    let r = users::modify_user(
        state.authority.store().as_ref(),
        &name,
        Some(role),
        None,
        &who.0.actor(),
    )
    .await;
    user_result(r, &format!("{name} is now {}.", role.as_str()))
}

async fn link_user(
    State(state): State<Arc<AppState>>,
    who: Admin,
    Path(name): Path<String>,
    Form(f): Fields,
) -> Response {
    if let Err(r) = who.may(UserRole::Admin, field(&f, "csrf")) {
        return r;
    }
    let account = field(&f, "account")
        .map(str::trim)
        .filter(|a| !a.is_empty());
    let r = users::link_user(
        state.authority.store().as_ref(),
        &name,
        account,
        &who.0.actor(),
    )
    .await;
    let done = match account {
        Some(a) => format!("{name} belongs to account {a}: they will never approve its orders."),
        None => format!("{name} belongs to no account."),
    };
    user_result(r, &done)
}

async fn toggle_user(
    State(state): State<Arc<AppState>>,
    who: Admin,
    Path((name, action)): Path<(String, String)>,
    Form(f): Fields,
) -> Response {
    if let Err(r) = who.may(UserRole::Admin, field(&f, "csrf")) {
        return r;
    }
    let disabled = match action.as_str() {
        "disable" => true,
        "enable" => false,
        _ => return not_found("such action"),
    };
    let r = users::modify_user(
        state.authority.store().as_ref(),
        &name,
        None,
        Some(disabled),
        &who.0.actor(),
    )
    .await;
    let done = if disabled {
        format!("{name} is disabled and signed out.")
    } else {
        format!("{name} is enabled.")
    };
    user_result(r, &done)
}

// ------------------------------------------------------------------- audit

/// An audit row.
pub struct AuditRow {
    /// Sequence number.
    pub seq: i64,
    /// When.
    pub at: When,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// To what.
    pub subject: String,
    /// Details (JSON).
    pub details: String,
}

#[derive(Template)]
#[template(path = "admin/audit.html")]
struct AuditPage {
    chrome: Chrome,
    actor: String,
    action: String,
    subject: String,
    rows: Vec<AuditRow>,
    next: Option<i64>,
}

async fn audit(
    State(state): State<Arc<AppState>>,
    who: Admin,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| {
        q.get(k)
            .map(|v| v.trim().chars().take(200).collect::<String>())
            .filter(|v| !v.is_empty())
    };
    let query = AuditQuery {
        actor: get("actor"),
        action: get("action"),
        subject: get("subject"),
        before: q.get("before").and_then(|b| b.parse().ok()),
        limit: PAGE,
    };
    let records = match state.authority.reads().audit_search(&query).await {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let next = (records.len() as i64 == PAGE)
        .then(|| records.last().map(|r| r.seq))
        .flatten();
    let page = render(&AuditPage {
        chrome: chrome(&who, &headers, "audit"),
        actor: query.actor.unwrap_or_default(),
        action: query.action.unwrap_or_default(),
        subject: query.subject.unwrap_or_default(),
        rows: records
            .into_iter()
            .map(|r| AuditRow {
                seq: r.seq,
                at: when(r.at),
                actor: r.actor,
                action: r.action,
                subject: r.subject,
                details: r.details,
            })
            .collect(),
        next,
    });
    with_flash_cleared(&headers, page)
}

// --------------------------------------------------------------------- CRL

#[derive(Template)]
#[template(path = "admin/crl.html")]
struct CrlPage {
    chrome: Chrome,
    crls: Vec<CrlLine>,
    http_url: String,
}

async fn crl_status(
    State(state): State<Arc<AppState>>,
    who: Admin,
    headers: HeaderMap,
) -> Response {
    let page = render(&CrlPage {
        chrome: chrome(&who, &headers, "crl"),
        crls: crl_lines(&state),
        http_url: state.public_http_url.clone(),
    });
    with_flash_cleared(&headers, page)
}

async fn regenerate_crl(
    State(state): State<Arc<AppState>>,
    who: Admin,
    Form(f): Fields,
) -> Response {
    if let Err(r) = who.may(UserRole::Admin, field(&f, "csrf")) {
        return r;
    }
    match state.crls.generate_every_by(&who.0.actor()).await {
        Ok(done) => {
            let names: Vec<String> = done
                .iter()
                .map(|g| {
                    let r = &g.record;
                    format!(
                        "{} number {}",
                        CrlKind::of(r).file_name(&r.issuer_id),
                        r.number
                    )
                })
                .collect();
            redirect_with("/admin/crl", &format!("Published {}.", names.join(", ")))
        }
        Err(e) => redirect_with("/admin/crl", &format!("Regeneration failed: {e}")),
    }
}
