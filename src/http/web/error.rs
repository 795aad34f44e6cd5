//! The dashboard's one error type: every way a dashboard request can end
//! without its page, and the one place each becomes a status and a
//! sentence. (An action the workflow refuses is not an error here: it goes
//! back to its page with a flash saying why.)

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use crate::store::StoreError;

/// Why a dashboard request ends without its page.
#[derive(Debug)]
pub enum PageError {
    /// No valid session: to the sign-in page.
    SignIn,
    /// The user must change their password before anything else.
    ChangePassword,
    /// The user's role or the form's token does not allow this (403).
    Forbidden(String),
    /// What the URL names does not exist (404): "there is no …".
    NotFound(&'static str),
    /// The form could not be read (axum's status and sentence).
    BadForm(StatusCode, String),
    /// The database does not answer (503); logged.
    Unavailable(String),
    /// Anything else (500): logged, not shown.
    Internal(String),
}

impl PageError {
    /// A failure the user cannot act on, logged with its cause.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        PageError::Internal(e.to_string())
    }
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => PageError::NotFound("such record"),
            StoreError::Unavailable(why) => PageError::Unavailable(why),
            other => PageError::internal(other),
        }
    }
}

impl From<axum::extract::rejection::FormRejection> for PageError {
    fn from(e: axum::extract::rejection::FormRejection) -> Self {
        PageError::BadForm(e.status(), e.body_text())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, text) = match self {
            PageError::SignIn => return Redirect::to("/admin/login").into_response(),
            PageError::ChangePassword => return Redirect::to("/admin/password").into_response(),
            PageError::Forbidden(why) => (StatusCode::FORBIDDEN, why),
            PageError::NotFound(what) => (StatusCode::NOT_FOUND, format!("there is no {what}")),
            PageError::BadForm(status, why) => (status, why),
            PageError::Unavailable(why) => {
                tracing::error!(error = %why, "a dashboard request found the database unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database does not answer; try again shortly".into(),
                )
            }
            PageError::Internal(why) => {
                tracing::error!(error = %why, "a dashboard request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "something went wrong; see the server log".into(),
                )
            }
        };
        // Plain text: nothing the user sent is interpreted as markup.
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            text,
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status_and_hides_internal_causes() {
        let cases = [
            (PageError::SignIn, StatusCode::SEE_OTHER),
            (PageError::Forbidden("no".into()), StatusCode::FORBIDDEN),
            (PageError::NotFound("such thing"), StatusCode::NOT_FOUND),
            (
                PageError::from(StoreError::Unavailable("pool".into())),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                PageError::from(StoreError::Database("secret detail".into())),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (e, status) in cases {
            assert_eq!(e.into_response().status(), status);
        }
        assert!(matches!(
            PageError::from(StoreError::NotFound),
            PageError::NotFound(_)
        ));
    }
}
