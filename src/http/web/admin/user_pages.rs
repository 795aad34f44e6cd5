//! Dashboard users: add, role, account link, disable/enable.

use super::*;

/// A user row.
pub struct UserRow {
    /// Name.
    pub username: String,
    /// Role.
    pub role: UserRole,
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
pub(super) struct UsersPage {
    chrome: Chrome,
    rows: Vec<UserRow>,
    roles: Vec<&'static str>,
    /// Accounts a user may belong to: (id, name).
    accounts: Vec<(String, String)>,
}

pub(super) async fn users_page(
    State(state): State<Arc<AppState>>,
    who: Admin,
    headers: HeaderMap,
) -> Page {
    let rows = state.authority.reads().users().await?;
    let accounts = state
        .authority
        .reads()
        .accounts()
        .await?
        .into_iter()
        .map(|a| (a.id, a.name))
        .collect();
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
    Ok(with_flash_cleared(&headers, page))
}

pub(super) fn user_result(r: Result<(), UserError>, ok: &str) -> Page {
    match r {
        Ok(()) => Ok(redirect_with("/admin/users", ok)),
        Err(UserError::Store(e)) => Err(e.into()),
        Err(e) => Ok(redirect_with("/admin/users", &format!("Not changed: {e}"))),
    }
}

pub(super) async fn add_user(
    State(state): State<Arc<AppState>>,
    Act { who, form, .. }: Act<Admins, NewUserForm>,
) -> Page {
    let name = form.username.trim();
    let role = match form.role.parse::<UserRole>() {
        Ok(r) => r,
        Err(e) => return user_result(Err(e.into()), ""),
    };
    let r = users::add_user(
        state.authority.store().as_ref(),
        name,
        role,
        &form.password,
        true,
        &who.0.actor(),
    )
    .await;
    user_result(
        r,
        &format!("Added {name}; they choose their own password at first sign-in."),
    )
}

pub(super) async fn set_user_role(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Act { who, form, .. }: Act<Admins, RoleForm>,
) -> Page {
    let role = match form.role.parse::<UserRole>() {
        Ok(r) => r,
        Err(e) => return user_result(Err(e.into()), ""),
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

pub(super) async fn link_user(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Act { who, form, .. }: Act<Admins, LinkForm>,
) -> Page {
    let account = form
        .account
        .as_deref()
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

pub(super) async fn toggle_user(
    State(state): State<Arc<AppState>>,
    Path((name, action)): Path<(String, String)>,
    Act { who, .. }: Act<Admins>,
) -> Page {
    let disabled = match action.as_str() {
        "disable" => true,
        "enable" => false,
        _ => return Err(PageError::NotFound("such action")),
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

/// The add-user form.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct NewUserForm {
    username: String,
    role: String,
    /// A first password; the user must change it at first sign-in.
    password: String,
}

/// The change-role form.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct RoleForm {
    role: String,
}

/// The link-to-account form.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct LinkForm {
    /// The requester account; empty to unlink.
    account: Option<String>,
}
