//! Requester accounts and their API keys.
//!
//! An API key is `hm_` and 32 random bytes (base64url): too much entropy to
//! guess, so it is stored and looked up by its SHA-256 alone — one indexed
//! read per request, no password hashing on the hot path (DESIGN §6). The
//! token is shown once, at creation, and never stored.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::users::random_token;
use crate::store::{AccountRecord, AuditEvent, NewApiKey, Store, StoreError};

/// The prefix that marks a hallmark API key (and lets secret scanners find
/// leaked ones).
pub const API_KEY_PREFIX: &str = "hm_";
/// Longest account name.
const MAX_NAME_LEN: usize = 100;

pub use crate::store::Role;

/// Why an account could not be created or a key not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The role name is not known.
    #[error(transparent)]
    UnknownRole(#[from] crate::words::UnknownWord),
    /// The account name is empty, too long or has control characters.
    #[error("an account name is 1 to 100 printable characters")]
    BadName,
    /// No key, a malformed key, an unknown or revoked key, or a disabled
    /// account: deliberately one kind, so callers cannot tell which.
    #[error("the API key is missing, malformed, unknown or revoked")]
    Unauthenticated,
    /// No unrevoked key with this id.
    #[error("there is no active API key {0:?}")]
    NoSuchKey(String),
    /// No account with this id.
    #[error("there is no account {0:?}")]
    NoSuchAccount(String),
    /// Not an address mail can go to.
    #[error("{0:?} is not an email address like team@corp.internal")]
    BadEmail(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An account as its API key proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Account id.
    pub account_id: String,
    /// Account name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Who it is in the audit log (`account:<id>`, `user:<name>`).
    pub actor: String,
}

/// A new account and the API key to show once.
pub struct CreatedAccount {
    /// The account.
    pub account: AccountRecord,
    /// The key's id (not secret; used to revoke it).
    pub key_id: String,
    /// The API key (secret).
    pub api_key: Zeroizing<String>,
}

impl std::fmt::Debug for CreatedAccount {
    /// Like a derived `Debug`, without the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedAccount")
            .field("account", &self.account)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A freshly generated key: its id, the token to show once, and its hash.
fn new_key() -> (NewApiKey, Zeroizing<String>) {
    let api_key = Zeroizing::new(format!("{API_KEY_PREFIX}{}", random_token(32)));
    let key = NewApiKey {
        id: format!("key_{}", random_token(12)),
        key_hash: key_hash(&api_key),
    };
    (key, api_key)
}

fn key_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Creates an account with one API key; `actor` is recorded in the audit log.
pub async fn create_account(
    store: &dyn Store,
    name: &str,
    role: Role,
    actor: &str,
) -> Result<CreatedAccount, AccountError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control)
    {
        return Err(AccountError::BadName);
    }
    let now = OffsetDateTime::now_utc();
    let account = AccountRecord {
        id: format!("acct_{}", random_token(12)),
        name: name.to_owned(),
        role,
        disabled: false,
        created_at: now.unix_timestamp(),
    };
    let (key, api_key) = new_key();
    let key_id = key.id.clone();
    let event = AuditEvent {
        at: now,
        actor: actor.to_owned(),
        action: "account.create".into(),
        subject: account.id.clone(),
        details: serde_json::json!({"name": account.name, "role": account.role, "key_id": key.id}),
    };
    store.create_account(account.clone(), key, event).await?;
    Ok(CreatedAccount {
        account,
        key_id,
        api_key,
    })
}

/// Disables an account (its API keys stop working, its ACME accounts are
/// refused, its unfinished orders end, in one transaction) or enables it
/// again. `actor` is recorded in the audit log.
/// Sets (or clears) where an account's expiry notices are mailed.
pub async fn set_email(
    store: &dyn Store,
    account_id: &str,
    email: Option<&str>,
    actor: &str,
) -> Result<(), AccountError> {
    if let Some(e) = email {
        if !crate::smtp::plausible_address(e) {
            return Err(AccountError::BadEmail(e.to_owned()));
        }
    }
    let event = AuditEvent {
        at: OffsetDateTime::now_utc(),
        actor: actor.to_owned(),
        action: "account.set_email".into(),
        subject: account_id.to_owned(),
        details: serde_json::json!({ "email": email }),
    };
    match store.set_account_email(account_id, email, event).await {
        Err(StoreError::NotFound) => Err(AccountError::NoSuchAccount(account_id.to_owned())),
        other => Ok(other?),
    }
}

/// Disables or enables an account.
pub async fn set_disabled(
    store: &dyn Store,
    account_id: &str,
    disabled: bool,
    actor: &str,
) -> Result<(), AccountError> {
    let event = AuditEvent {
        at: OffsetDateTime::now_utc(),
        actor: actor.to_owned(),
        action: if disabled {
            "account.disable"
        } else {
            "account.enable"
        }
        .into(),
        subject: account_id.to_owned(),
        details: serde_json::json!({}),
    };
    match store
        .set_account_disabled(account_id, disabled, event)
        .await
    {
        Err(StoreError::NotFound) => Err(AccountError::NoSuchAccount(account_id.to_owned())),
        other => Ok(other?),
    }
}

/// Revokes one API key: the next request with it gets 401 — at once on
/// this instance, within `store::recent::FRESH_FOR` on the others.
pub async fn revoke_key(store: &dyn Store, key_id: &str, actor: &str) -> Result<(), AccountError> {
    let now = OffsetDateTime::now_utc();
    let event = AuditEvent {
        at: now,
        actor: actor.to_owned(),
        action: "api_key.revoke".into(),
        subject: key_id.to_owned(),
        details: serde_json::json!({}),
    };
    match store
        .revoke_api_key(key_id, now.unix_timestamp(), event)
        .await
    {
        Err(StoreError::NotFound) => Err(AccountError::NoSuchKey(key_id.to_owned())),
        other => Ok(other?),
    }
}

/// Replaces every key of an account with a new one; returns its id and the
/// token to show once.
pub async fn rotate_key(
    store: &dyn Store,
    account_id: &str,
    actor: &str,
) -> Result<(String, Zeroizing<String>), AccountError> {
    let now = OffsetDateTime::now_utc();
    let (key, api_key) = new_key();
    let key_id = key.id.clone();
    let event = AuditEvent {
        at: now,
        actor: actor.to_owned(),
        action: "api_key.rotate".into(),
        subject: account_id.to_owned(),
        details: serde_json::json!({"key_id": key_id}),
    };
    match store
        .rotate_api_key(account_id, key, now.unix_timestamp(), event)
        .await
    {
        Err(StoreError::NotFound) => Err(AccountError::NoSuchAccount(account_id.to_owned())),
        Err(e) => Err(e.into()),
        Ok(()) => Ok((key_id, api_key)),
    }
}

/// A new external account binding key (RFC 8555 §7.3.4) to show once.
pub struct EabKey {
    /// The key id (`eab_…`): `--eab-kid` for certbot, `--kid` for lego.
    pub kid: String,
    /// The HMAC-SHA256 key, base64url: `--eab-hmac-key` / `--hmac`.
    pub hmac_key: Zeroizing<String>,
}

impl std::fmt::Debug for EabKey {
    /// Like a derived `Debug`, without the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EabKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Issues a single-use external account binding key for an enabled
/// account: the ACME account bound with it owns that account's orders and
/// certificates. `actor` is recorded in the audit log.
pub async fn create_eab_key(
    store: &dyn Store,
    account_id: &str,
    actor: &str,
) -> Result<EabKey, AccountError> {
    use base64::Engine;
    let now = OffsetDateTime::now_utc();
    let raw: Zeroizing<[u8; 32]> = Zeroizing::new(rand::random());
    let kid = format!("eab_{}", random_token(12));
    let record = crate::store::EabKeyRecord {
        kid: kid.clone(),
        account_id: account_id.to_owned(),
        hmac_key: raw.to_vec(),
        created_at: now.unix_timestamp(),
        used_at: None,
        acme_account_id: None,
    };
    let event = AuditEvent {
        at: now,
        actor: actor.to_owned(),
        action: "acme.eab_key.create".into(),
        subject: account_id.to_owned(),
        details: serde_json::json!({"kid": kid}),
    };
    match store.create_eab_key(&record, event).await {
        Err(StoreError::NotFound) => Err(AccountError::NoSuchAccount(account_id.to_owned())),
        Err(e) => Err(e.into()),
        Ok(()) => Ok(EabKey {
            kid,
            hmac_key: Zeroizing::new(
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_slice()),
            ),
        }),
    }
}

/// Checks a bearer token: well-formed, known, not revoked, account enabled.
pub async fn authenticate(store: &dyn Store, token: &str) -> Result<Caller, AccountError> {
    // A well-formed key is the prefix and 43 base64url characters.
    let body = token
        .strip_prefix(API_KEY_PREFIX)
        .ok_or(AccountError::Unauthenticated)?;
    if body.len() != 43
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(AccountError::Unauthenticated);
    }
    let hash = key_hash(token);
    let (account, stored) = store
        .account_by_api_key(&hash)
        .await?
        .ok_or(AccountError::Unauthenticated)?;
    // The lookup matched on the hash already; compare again in constant time
    // so no code path depends on a variable-time comparison of secrets.
    if !bool::from(stored.as_slice().ct_eq(&hash)) {
        return Err(AccountError::Unauthenticated);
    }
    let role = account.role;
    Ok(Caller {
        actor: format!("account:{}", account.id),
        account_id: account.id,
        name: account.name,
        role,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_by_name() {
        for r in [Role::Requester, Role::Reviewer, Role::Admin] {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn debug_output_never_shows_a_key() {
        let eab = EabKey {
            kid: "eab_x".into(),
            hmac_key: Zeroizing::new("super-secret-hmac".into()),
        };
        let shown = format!("{eab:?}");
        assert!(
            shown.contains("eab_x") && !shown.contains("super-secret"),
            "{shown}"
        );
        let created = CreatedAccount {
            account: AccountRecord {
                id: "acct_x".into(),
                name: "team".into(),
                role: Role::Requester,
                disabled: false,
                created_at: 0,
            },
            key_id: "key_x".into(),
            api_key: Zeroizing::new("hm_super-secret-api-key".into()),
        };
        let shown = format!("{created:?}");
        assert!(
            shown.contains("key_x") && !shown.contains("super-secret"),
            "{shown}"
        );
    }

    #[test]
    fn tokens_have_the_documented_shape() {
        let token = format!("{API_KEY_PREFIX}{}", random_token(32));
        assert_eq!(token.len(), 3 + 43);
    }
}
