//! Sign-in, sign-out and changing one's own password.

use super::*;

#[derive(Template)]
#[template(path = "admin/login.html")]
pub(super) struct LoginPage {
    csrf: String,
    error: Option<String>,
    username: String,
}

pub(super) async fn login_page(headers: HeaderMap) -> Response {
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

pub(super) async fn login(
    State(state): State<Arc<AppState>>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Page {
    let expected = session::cookie(&headers, session::LOGIN_COOKIE).unwrap_or("");
    let sent = form.csrf.as_str();
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(sent.as_bytes())) {
        return Err(PageError::Forbidden(
            "the sign-in form expired; reload the page and try again".into(),
        ));
    }
    let username = form.username.trim().to_owned();
    let password = form.password.as_str();
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
            Ok((
                AppendHeaders([
                    (header::SET_COOKIE, session::session_cookie(&token)),
                    (
                        header::SET_COOKIE,
                        session::set_cookie(session::LOGIN_COOKIE, "", 0),
                    ),
                ]),
                Redirect::to(to),
            )
                .into_response())
        }
        Err(UserError::Store(e)) => Err(e.into()),
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
            Ok(response)
        }
    }
}

pub(super) async fn logout(
    State(state): State<Arc<AppState>>,
    Act { who, .. }: Act<Anyone>,
) -> Page {
    if let Err(e) = users::sign_out(state.authority.store().as_ref(), &who.0).await {
        return Err(PageError::internal(e));
    }
    Ok((
        AppendHeaders([
            (
                header::SET_COOKIE,
                session::set_cookie(session::SESSION_COOKIE, "", 0),
            ),
            (header::SET_COOKIE, session::flash("You are signed out.")),
        ]),
        Redirect::to("/admin/login"),
    )
        .into_response())
}

#[derive(Template)]
#[template(path = "admin/password.html")]
pub(super) struct PasswordPage {
    chrome: Chrome,
    forced: bool,
    error: Option<String>,
}

pub(super) async fn password_page(who: Admin, headers: HeaderMap) -> Response {
    let page = render(&PasswordPage {
        forced: who.0.user.must_change_password,
        chrome: chrome(&who, &headers, "password"),
        error: None,
    });
    with_flash_cleared(&headers, page)
}

pub(super) async fn change_password(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Act { who, form, .. }: Act<Anyone, PasswordForm>,
) -> Page {
    let new = form.new_password.as_str();
    let error = if new != form.confirm {
        Some("the two new passwords differ".to_owned())
    } else {
        match users::change_password(
            state.authority.store().as_ref(),
            &state.password_gate,
            &who.0,
            &form.current_password,
            new,
        )
        .await
        {
            Ok((token, _)) => {
                return Ok((
                    AppendHeaders([
                        (header::SET_COOKIE, session::session_cookie(&token)),
                        (
                            header::SET_COOKIE,
                            session::flash("Your password was changed."),
                        ),
                    ]),
                    Redirect::to("/admin"),
                )
                    .into_response())
            }
            Err(UserError::Store(e)) => return Err(e.into()),
            Err(e) => Some(e.to_string()),
        }
    };
    let page = render(&PasswordPage {
        forced: who.0.user.must_change_password,
        chrome: chrome(&who, &headers, "password"),
        error,
    });
    Ok((StatusCode::BAD_REQUEST, page).into_response())
}

/// The sign-in form (its CSRF token is the sign-in page's cookie: there is
/// no session yet).
#[derive(Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct SignInForm {
    csrf: String,
    username: String,
    password: String,
}

/// The change-password form.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct PasswordForm {
    current_password: String,
    new_password: String,
    confirm: String,
}
