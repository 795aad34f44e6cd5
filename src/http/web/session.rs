//! Dashboard sessions on the HTTP side: the session cookie, the signed-in
//! user extractor (redirecting to sign-in), role checks, CSRF checks and
//! flash messages.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use subtle::ConstantTimeEq;

use super::error::PageError;
use crate::http::AppState;
use crate::workflow::users::{self, SignedIn, UserRole, ABSOLUTE_TIMEOUT_SECS};

/// The session cookie (`__Host-`: Secure, Path=/, no Domain).
pub const SESSION_COOKIE: &str = "__Host-hallmark_session";
/// The pre-sign-in CSRF cookie of the sign-in form.
pub const LOGIN_COOKIE: &str = "__Host-hallmark_login";
/// A one-shot message shown on the next page.
pub const FLASH_COOKIE: &str = "__Host-hallmark_flash";

/// The value of cookie `name`, if sent.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: Secure, HttpOnly, SameSite=Strict, Path=/.
pub fn set_cookie(name: &str, value: &str, max_age: i64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict"
    ))
    .unwrap_or(HeaderValue::from_static(""))
}

/// The session cookie for `token`.
pub fn session_cookie(token: &str) -> HeaderValue {
    set_cookie(SESSION_COOKIE, token, ABSOLUTE_TIMEOUT_SECS)
}

/// A flash message for the next page (URL-safe encoded).
pub fn flash(message: &str) -> HeaderValue {
    set_cookie(FLASH_COOKIE, &encode(message), 60)
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The flash message sent with this request, if any.
pub fn take_flash(headers: &HeaderMap) -> Option<String> {
    cookie(headers, FLASH_COOKIE)
        .map(decode)
        .filter(|m| !m.is_empty())
        .map(|m| m.chars().take(300).collect())
}

/// A redirect after a form, with a flash message.
pub fn redirect_with(to: &str, message: &str) -> Response {
    ([(header::SET_COOKIE, flash(message))], Redirect::to(to)).into_response()
}

/// The signed-in user of a dashboard request. Without a good session the
/// request is redirected to the sign-in page; a user who must change the
/// password is sent there first.
pub struct Admin(pub SignedIn);

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = PageError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(PageError::SignIn);
        };
        match users::session(state.authority.store().as_ref(), token).await {
            Ok(Some(who)) => {
                let path = parts.uri.path();
                if who.user.must_change_password
                    && path != "/admin/password"
                    && path != "/admin/logout"
                {
                    return Err(PageError::ChangePassword);
                }
                Ok(Admin(who))
            }
            Ok(None) => Err(PageError::SignIn),
            Err(e) => Err(PageError::Unavailable(format!(
                "reading a dashboard session failed: {e}"
            ))),
        }
    }
}

impl Admin {
    /// Refuses (403) unless the user's role is at least `role`.
    pub fn require(&self, role: UserRole) -> Result<(), PageError> {
        if self.0.role >= role {
            Ok(())
        } else {
            Err(PageError::Forbidden(format!(
                "your role ({}) may not do this; it needs {}",
                self.0.role.as_str(),
                role.as_str()
            )))
        }
    }

    /// Refuses (403) unless `token` is this session's CSRF token.
    pub fn check_csrf(&self, token: Option<&str>) -> Result<(), PageError> {
        let ok = token.is_some_and(|t| bool::from(t.as_bytes().ct_eq(self.0.csrf.as_bytes())));
        if ok {
            Ok(())
        } else {
            Err(PageError::Forbidden(
                "the form's security token is missing or stale; reload the page and try again"
                    .into(),
            ))
        }
    }

    /// Role and CSRF together, for state-changing forms.
    pub fn may(&self, role: UserRole, csrf: Option<&str>) -> Result<(), PageError> {
        self.check_csrf(csrf)?;
        self.require(role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flash_messages_round_trip() {
        let m = "Revoked 0a1b; reason <keyCompromise> & more";
        assert_eq!(decode(&encode(m)), m);
        assert!(!encode(m).contains(';'));
    }
}
