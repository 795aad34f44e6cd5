//! Requester accounts: create, disable/enable, rotate the API key, EAB keys.

use super::*;

/// An account row.
pub struct AccountRow {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Disabled.
    pub disabled: bool,
    /// Created.
    pub created: When,
}

#[derive(Template)]
#[template(path = "admin/accounts.html")]
pub(super) struct AccountsPage {
    chrome: Chrome,
    rows: Vec<AccountRow>,
    new_key: Option<(String, String)>,
    /// A new ACME external account binding: account, kid, HMAC key.
    new_eab: Option<(String, String, String)>,
    /// The ACME directory URL (for the client command shown with new_eab).
    acme_directory: String,
}

pub(super) async fn accounts_page(
    State(state): State<Arc<AppState>>,
    who: Admin,
    headers: HeaderMap,
) -> Page {
    accounts_view(&state, &who, &headers, None, StatusCode::OK).await
}

/// Issues a single-use ACME external account binding key, shown once.
pub(super) async fn create_account_eab(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Act { who, .. }: Act<Admins>,
) -> Page {
    match accounts::create_eab_key(state.authority.store().as_ref(), &id, &who.0.actor()).await {
        Ok(key) => {
            let rows = state.authority.reads().accounts().await?;
            let eab = Some((id, key.kid, key.hmac_key.to_string()));
            Ok(accounts_render(
                &state,
                &who,
                &headers,
                rows,
                None,
                eab,
                StatusCode::OK,
            ))
        }
        Err(e) => Ok(redirect_with(
            "/admin/accounts",
            &format!("No ACME key issued: {e}"),
        )),
    }
}

pub(super) async fn accounts_view(
    state: &AppState,
    who: &Admin,
    headers: &HeaderMap,
    new_key: Option<(String, String)>,
    status: StatusCode,
) -> Page {
    let rows = state.authority.reads().accounts().await?;
    Ok(accounts_render(
        state, who, headers, rows, new_key, None, status,
    ))
}

pub(super) fn accounts_render(
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

pub(super) async fn create_account(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Act { who, form, .. }: Act<Admins, NewAccountForm>,
) -> Page {
    let name = form.name.trim();
    let role = match form.role.as_deref().unwrap_or("requester").parse::<Role>() {
        Ok(r) => r,
        Err(e) => return Ok(redirect_with("/admin/accounts", &e.to_string())),
    };
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Ok(redirect_with(
            "/admin/accounts",
            "An account needs a name of 1 to 100 characters.",
        ));
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
        Err(e) => Ok(redirect_with(
            "/admin/accounts",
            &format!("Not created: {e}"),
        )),
    }
}

pub(super) async fn set_account(state: &AppState, who: &Admin, id: &str, disabled: bool) -> Page {
    match accounts::set_disabled(
        state.authority.store().as_ref(),
        id,
        disabled,
        &who.0.actor(),
    )
    .await
    {
        Ok(()) => Ok(redirect_with(
            "/admin/accounts",
            if disabled {
                "Account disabled: its API keys no longer work, and its unfinished orders were ended."
            } else {
                "Account enabled."
            },
        )),
        Err(accounts::AccountError::NoSuchAccount(_)) => Err(PageError::NotFound("such account")),
        Err(e) => Err(PageError::internal(e)),
    }
}

pub(super) async fn toggle_account(
    State(state): State<Arc<AppState>>,
    Path((id, action)): Path<(String, String)>,
    Act { who, .. }: Act<Admins>,
) -> Page {
    match action.as_str() {
        "disable" => set_account(&state, &who, &id, true).await,
        "enable" => set_account(&state, &who, &id, false).await,
        _ => Err(PageError::NotFound("such action")),
    }
}

pub(super) async fn rotate_account_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Act { who, .. }: Act<Admins>,
) -> Page {
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
        Err(e) => Ok(redirect_with(
            "/admin/accounts",
            &format!("Key not rotated: {e}"),
        )),
    }
}

/// The new-account form.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct NewAccountForm {
    name: String,
    /// `requester` if none.
    role: Option<String>,
}
