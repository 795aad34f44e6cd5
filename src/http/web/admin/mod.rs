//! The admin dashboard under `/admin`: every page and action. Reading is
//! open to every role; approving, rejecting and revoking need `reviewer`;
//! accounts, users and CRL regeneration need `admin`. Every form carries
//! the session's CSRF token, checked before anything else.

mod account_pages;
mod audit_log;
mod certificates;
mod crl_page;
mod overview;
mod requests;
mod signin;
mod user_pages;
mod webhook_page;
use account_pages::*;
use audit_log::*;
use certificates::*;
use crl_page::*;
use overview::*;
use requests::*;
use signin::*;
use user_pages::*;
use webhook_page::*;

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{AppendHeaders, Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use subtle::ConstantTimeEq;

use super::error::PageError;
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

/// What a dashboard handler answers: its page (or a redirect), or why not.
pub(super) type Page = Result<Response, PageError>;

/// Rows per page in lists.
pub(super) const PAGE: i64 = 50;

/// Every state-changing dashboard form: the session's CSRF token and the
/// form's own fields `F` (a struct per form, in the page's module).
#[derive(serde::Deserialize)]
struct WithCsrf<F> {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    fields: F,
}

/// A form whose only field is the CSRF token (a button).
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct NoFields {}

/// The least role an action needs (a marker for [`Act`]).
pub(super) trait MinRole {
    /// The role.
    const ROLE: UserRole;
}

/// Any signed-in user (their own password, signing out).
pub(super) struct Anyone;
/// Reviewers and admins.
pub(super) struct Reviewers;
/// Admins only.
pub(super) struct Admins;

impl MinRole for Anyone {
    const ROLE: UserRole = UserRole::Auditor;
}
impl MinRole for Reviewers {
    const ROLE: UserRole = UserRole::Reviewer;
}
impl MinRole for Admins {
    const ROLE: UserRole = UserRole::Admin;
}

/// A state-changing dashboard form, with the checks every action makes,
/// made once before the handler runs: a session (else the sign-in page),
/// the session's CSRF token in the form, and at least role `R` (else 403).
pub(super) struct Act<R, F = NoFields> {
    /// Who acts.
    pub who: Admin,
    /// The form's fields.
    pub form: F,
    _role: std::marker::PhantomData<R>,
}

impl<R: MinRole, F> axum::extract::FromRequest<Arc<AppState>> for Act<R, F>
where
    F: serde::de::DeserializeOwned + Send,
{
    type Rejection = PageError;

    async fn from_request(
        request: axum::extract::Request,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        use axum::extract::FromRequestParts;
        let (mut parts, body) = request.into_parts();
        let who = Admin::from_request_parts(&mut parts, state).await?;
        let request = axum::extract::Request::from_parts(parts, body);
        let Form(form) = Form::<WithCsrf<F>>::from_request(request, state).await?;
        who.may(R::ROLE, Some(form.csrf.as_str()))?;
        Ok(Act {
            who,
            form: form.fields,
            _role: std::marker::PhantomData,
        })
    }
}

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
        .route("/admin/webhooks", get(webhooks_page))
}

/// Renders a template, or a plain 500.
pub(super) fn render(t: &impl Template) -> Response {
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

pub(super) fn when(unix: i64) -> When {
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

pub(super) fn chrome(who: &Admin, headers: &HeaderMap, section: &'static str) -> Chrome {
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
pub(super) fn with_flash_cleared(headers: &HeaderMap, page: Response) -> Response {
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
