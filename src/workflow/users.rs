//! Dashboard users: the initial admin created on first start, and argon2id
//! password hashing (argon2 is for human passwords only; API keys are
//! high-entropy tokens looked up by SHA-256).

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;
use base64::Engine;
use rand::RngCore;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use sha2::{Digest, Sha256};

use crate::store::{
    AuditEvent, Conflict, NewUser, SessionRecord, SignInLimits, Store, StoreError, UserRecord,
    UserUpdate,
};

/// A session ends after this long without a request (seconds).
pub const IDLE_TIMEOUT_SECS: i64 = 30 * 60;
/// A session ends this long after sign-in, used or not (seconds).
pub const ABSOLUTE_TIMEOUT_SECS: i64 = 12 * 3600;
/// Failed sign-ins in a row that lock a user.
pub const MAX_FAILED_LOGINS: i64 = 5;
/// How long a lock lasts (seconds).
pub const LOCK_SECS: i64 = 15 * 60;
/// How failed sign-ins lock a user: [`MAX_FAILED_LOGINS`] within
/// [`LOCK_SECS`] of each other lock for [`LOCK_SECS`].
pub const SIGN_IN_LIMITS: SignInLimits = SignInLimits {
    max_failures: MAX_FAILED_LOGINS,
    lock_secs: LOCK_SECS,
    window_secs: LOCK_SECS,
};
/// Shortest password.
pub const MIN_PASSWORD_LEN: usize = 12;
/// Longest password (argon2 input is bounded so hashing stays cheap).
pub const MAX_PASSWORD_LEN: usize = 256;

pub use crate::store::UserRole;

impl From<crate::words::UnknownWord> for UserError {
    fn from(e: crate::words::UnknownWord) -> Self {
        UserError::Invalid(e.to_string())
    }
}

/// Why a user operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// Wrong name or password (deliberately not saying which).
    #[error("wrong user name or password")]
    BadCredentials,
    /// Too many failures.
    #[error("too many failed sign-ins; try again in {minutes} minutes")]
    Locked {
        /// Minutes left.
        minutes: i64,
    },
    /// Too many sign-ins at once (password checks are bounded), or too
    /// many from this address.
    #[error("too many sign-in attempts right now; try again in {retry_after_secs} seconds")]
    Busy {
        /// When to come back.
        retry_after_secs: u64,
    },
    /// Input that cannot be accepted (the sentence says why).
    #[error("{0}")]
    Invalid(String),
    /// The change would break a rule (the last admin).
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for UserError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => UserError::Conflict(m.to_string()),
            other => UserError::Store(other),
        }
    }
}

/// A signed-in user, as every dashboard request sees it.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The user.
    pub user: UserRecord,
    /// Its role.
    pub role: UserRole,
    /// The session's CSRF token.
    pub csrf: String,
    /// SHA-256 of the session cookie.
    pub id_hash: Vec<u8>,
}

impl SignedIn {
    /// The audit actor: `user:<name>`.
    pub fn actor(&self) -> String {
        format!("user:{}", self.user.username)
    }
}

/// SHA-256 of a session cookie value (only the hash is stored).
pub fn session_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Sign-ins waiting for a password check beyond which more are refused.
const MAX_WAITING_PASSWORD_CHECKS: usize = 32;

/// The bound on concurrent argon2 checks of one service (each takes
/// 19 MiB and a core for tens of milliseconds): a few run, a few dozen
/// wait, the rest are told to come back (`limits.password_checks`).
pub struct PasswordGate {
    running: tokio::sync::Semaphore,
    waiting: AtomicUsize,
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl PasswordGate {
    /// At most `limit` checks at once.
    pub fn new(limit: u32) -> PasswordGate {
        PasswordGate {
            running: tokio::sync::Semaphore::new(limit.max(1) as usize),
            waiting: AtomicUsize::new(0),
            now: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// The most checks that ever ran at once through this gate.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

/// Verifies a password against a PHC hash off the async threads (argon2 is
/// deliberately slow), within the process's bound on concurrent checks.
async fn verify_password(
    gate: &PasswordGate,
    password: &str,
    hash: &str,
) -> Result<bool, UserError> {
    if gate.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING_PASSWORD_CHECKS {
        gate.waiting.fetch_sub(1, Ordering::AcqRel);
        return Err(UserError::Busy {
            retry_after_secs: 1,
        });
    }
    let permit = gate.running.acquire().await;
    gate.waiting.fetch_sub(1, Ordering::AcqRel);
    let _permit = permit.map_err(|_| UserError::Busy {
        retry_after_secs: 1,
    })?;
    let password = Zeroizing::new(password.to_owned());
    let hash = hash.to_owned();
    let now = gate.now.fetch_add(1, Ordering::AcqRel) + 1;
    gate.peak.fetch_max(now, Ordering::AcqRel);
    let ok = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                let ok = Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok();
                release_hash_memory();
                ok
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    gate.now.fetch_sub(1, Ordering::AcqRel);
    Ok(ok)
}

/// A hash to verify against when the user does not exist, so a sign-in
/// takes as long for unknown names as for known ones.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password(&random_token(16)).unwrap_or_default())
}

/// Signs a user in: checks the lock, the password (argon2id) and the
/// account state, counts failures (locking after [`MAX_FAILED_LOGINS`]),
/// and on success creates a session. Returns the cookie value (shown to
/// the browser only) and the session.
pub async fn sign_in(
    store: &dyn Store,
    gate: &PasswordGate,
    username: &str,
    password: &str,
) -> Result<(Zeroizing<String>, SignedIn), UserError> {
    let now = now();
    let user = if username.len() <= 64 && password.len() <= MAX_PASSWORD_LEN {
        store.user_by_name(username).await?
    } else {
        None
    };
    let Some(user) = user else {
        verify_password(gate, password, dummy_hash()).await?;
        return Err(UserError::BadCredentials);
    };
    if let Some(until) = user.locked_until.filter(|u| *u > now) {
        return Err(UserError::Locked {
            minutes: (until - now + 59) / 60,
        });
    }
    let ok = verify_password(gate, password, &user.password_hash).await?;
    if !ok || user.disabled {
        let at = OffsetDateTime::now_utc();
        let event = |action: &str| AuditEvent {
            at,
            actor: "anonymous".into(),
            action: action.into(),
            subject: user.username.clone(),
            details: serde_json::json!({}),
        };
        let (failures, locked) = store
            .record_failed_sign_in(
                &user.id,
                now,
                SIGN_IN_LIMITS,
                event("user.sign_in_failed"),
                event("user.lock"),
            )
            .await?;
        if let Some(until) = locked {
            tracing::warn!(user = %user.username, failures, "dashboard user locked after repeated failed sign-ins");
            return Err(UserError::Locked {
                minutes: (until - now + 59) / 60,
            });
        }
        return Err(UserError::BadCredentials);
    }
    start_session(store, user, now).await
}

async fn start_session(
    store: &dyn Store,
    user: UserRecord,
    now: i64,
) -> Result<(Zeroizing<String>, SignedIn), UserError> {
    let token = Zeroizing::new(random_token(32));
    let session = SessionRecord {
        id_hash: session_hash(&token),
        user_id: user.id.clone(),
        csrf_token: random_token(24),
        created_at: now,
        last_seen_at: now,
        expires_at: now + ABSOLUTE_TIMEOUT_SECS,
    };
    store
        .create_session(
            &session,
            AuditEvent {
                at: OffsetDateTime::now_utc(),
                actor: format!("user:{}", user.username),
                action: "user.sign_in".into(),
                subject: user.username.clone(),
                details: serde_json::json!({}),
            },
        )
        .await?;
    let role = user.role;
    Ok((
        token,
        SignedIn {
            user,
            role,
            csrf: session.csrf_token,
            id_hash: session.id_hash,
        },
    ))
}

/// The signed-in user of a session cookie, if the session is still good
/// (not past its idle or absolute timeout, user enabled). Expired sessions
/// are deleted.
pub async fn session(store: &dyn Store, token: &str) -> Result<Option<SignedIn>, StoreError> {
    let id_hash = session_hash(token);
    let Some((session, user)) = store.session(&id_hash).await? else {
        return Ok(None);
    };
    let now = now();
    if user.disabled || session.expires_at <= now || session.last_seen_at + IDLE_TIMEOUT_SECS <= now
    {
        store.delete_session(&id_hash).await?;
        return Ok(None);
    }
    // One write a minute at most per session.
    if now - session.last_seen_at >= 60 {
        store.touch_session(&id_hash, now).await?;
    }
    let role = user.role;
    Ok(Some(SignedIn {
        user,
        role,
        csrf: session.csrf_token,
        id_hash,
    }))
}

/// Ends a session.
pub async fn sign_out(store: &dyn Store, who: &SignedIn) -> Result<(), StoreError> {
    store.delete_session(&who.id_hash).await
}

fn check_new_password(password: &str) -> Result<(), UserError> {
    let n = password.chars().count();
    if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&n) {
        return Err(UserError::Invalid(format!(
            "a password must have {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters"
        )));
    }
    Ok(())
}

/// Changes the signed-in user's own password (the current one must be
/// given); every session of the user ends and a new one starts.
pub async fn change_password(
    store: &dyn Store,
    gate: &PasswordGate,
    who: &SignedIn,
    current: &str,
    new: &str,
) -> Result<(Zeroizing<String>, SignedIn), UserError> {
    if !verify_password(gate, current, &who.user.password_hash).await? {
        return Err(UserError::Invalid("the current password is wrong".into()));
    }
    check_new_password(new)?;
    if new == current {
        return Err(UserError::Invalid(
            "the new password must differ from the current one".into(),
        ));
    }
    let hash = hash_password(new).map_err(|e| UserError::Invalid(e.to_string()))?;
    store
        .update_user(
            &who.user.id,
            &UserUpdate {
                password_hash: Some(hash.clone()),
                must_change_password: Some(false),
                ..UserUpdate::default()
            },
            now(),
            AuditEvent {
                at: OffsetDateTime::now_utc(),
                actor: who.actor(),
                action: "user.password".into(),
                subject: who.user.username.clone(),
                details: serde_json::json!({}),
            },
        )
        .await?;
    let mut user = who.user.clone();
    user.password_hash = hash;
    user.must_change_password = false;
    start_session(store, user, now()).await
}

/// Checks a new user name: 1 to 64 of `a-z 0-9 . _ -`.
fn check_username(name: &str) -> Result<(), UserError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(UserError::Invalid(
            "a user name has 1 to 64 characters from a-z, 0-9, '.', '_' and '-'".into(),
        ))
    }
}

/// Adds a dashboard user; `must_change` forces a new password at first
/// sign-in (for passwords an admin chose).
pub async fn add_user(
    store: &dyn Store,
    username: &str,
    role: UserRole,
    password: &str,
    must_change: bool,
    actor: &str,
) -> Result<(), UserError> {
    check_username(username)?;
    check_new_password(password)?;
    let hash = hash_password(password).map_err(|e| UserError::Invalid(e.to_string()))?;
    let result = store
        .create_user(
            NewUser {
                id: random_token(12),
                username: username.to_owned(),
                password_hash: hash,
                role,
                must_change_password: must_change,
            },
            AuditEvent {
                at: OffsetDateTime::now_utc(),
                actor: actor.to_owned(),
                action: "user.create".into(),
                subject: username.to_owned(),
                details: serde_json::json!({ "role": role.as_str() }),
            },
        )
        .await;
    match result {
        Err(StoreError::Conflict(Conflict::Unique(_))) => Err(UserError::Conflict(format!(
            "a user named {username:?} exists already"
        ))),
        other => Ok(other?),
    }
}

/// Changes another user's role or enabled state (admins only; checked by
/// the caller). Refused if no enabled admin would remain.
pub async fn modify_user(
    store: &dyn Store,
    username: &str,
    role: Option<UserRole>,
    disabled: Option<bool>,
    actor: &str,
) -> Result<(), UserError> {
    let user = existing_user(store, username).await?;
    let action = match (role, disabled) {
        (Some(_), _) => "user.role",
        (None, Some(true)) => "user.disable",
        (None, Some(false)) => "user.enable",
        (None, None) => return Ok(()),
    };
    store
        .update_user(
            &user.id,
            &UserUpdate {
                role,
                disabled,
                ..UserUpdate::default()
            },
            now(),
            AuditEvent {
                at: OffsetDateTime::now_utc(),
                actor: actor.to_owned(),
                action: action.into(),
                subject: username.to_owned(),
                details: serde_json::json!({
                    "role": role.map(UserRole::as_str),
                    "disabled": disabled,
                }),
            },
        )
        .await?;
    Ok(())
}

/// Links a dashboard user to the requester account they belong to
/// (`None` unlinks). A linked user never approves that account's orders
/// and, as a reviewer, revokes only its certificates: the same rules as
/// the account's own API keys of that role.
pub async fn link_user(
    store: &dyn Store,
    username: &str,
    account_id: Option<&str>,
    actor: &str,
) -> Result<(), UserError> {
    let user = existing_user(store, username).await?;
    if let Some(id) = account_id {
        let exists = store.accounts().await?.iter().any(|a| a.id == id);
        if !exists {
            return Err(UserError::Invalid(format!("there is no account {id:?}")));
        }
    }
    store
        .update_user(
            &user.id,
            &UserUpdate {
                account_id: Some(account_id.map(str::to_owned)),
                ..UserUpdate::default()
            },
            now(),
            AuditEvent {
                at: OffsetDateTime::now_utc(),
                actor: actor.to_owned(),
                action: "user.link".into(),
                subject: username.to_owned(),
                details: serde_json::json!({ "account": account_id }),
            },
        )
        .await?;
    Ok(())
}

/// The user called `username`, or a sentence saying there is none.
async fn existing_user(store: &dyn Store, username: &str) -> Result<UserRecord, UserError> {
    store
        .user_by_name(username)
        .await?
        .ok_or_else(|| UserError::Invalid(format!("there is no user {username:?}")))
}

/// The name of the first administrator.
pub const INITIAL_ADMIN: &str = "admin";

/// A random token of `bytes` random bytes, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// Hashes a password with argon2id (the crate's defaults: m=19 MiB, t=2,
/// p=1, OWASP's recommendation) into a PHC string.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let hash = Argon2::default().hash_password(password.as_bytes(), &salt);
    release_hash_memory();
    Ok(hash?.to_string())
}

/// Hands the 19 MiB argon2id just freed back to the system at once. The
/// service's allocator (mimalloc, `main.rs`) otherwise keeps freed pages
/// until the thread that freed them allocates again or exits — about 10 s
/// for tokio's blocking threads — so one sign-in, or the initial
/// administrator made at first start, kept ~19 MiB more for that long,
/// 10–18 MB over the idle budget (DESIGN §6: 30 MB; docs/BENCHMARKS.md,
/// "Start-up and memory"). The next hash faults its 19 MiB in again
/// (~4,900 pages; not measured apart from the hash itself). Where
/// mimalloc is not the allocator (the library's tests) its heap on this
/// thread is empty and this does nothing.
fn release_hash_memory() {
    // SAFETY: mi_collect takes no pointers; it frees only memory that no
    // live allocation holds, on mimalloc's own heaps.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Creates the initial `admin` user with a random one-time password if the
/// database has no user yet. Returns the password, to be shown once; `None`
/// if users exist (or another instance created the admin first).
pub async fn ensure_initial_admin(
    store: &dyn Store,
) -> Result<Option<Zeroizing<String>>, StoreError> {
    if store.count_users().await? > 0 {
        return Ok(None);
    }
    let password = Zeroizing::new(random_token(18));
    let hash = hash_password(&password)
        .map_err(|e| StoreError::Database(format!("hashing the password: {e}")))?;
    let user = NewUser {
        id: random_token(12),
        username: INITIAL_ADMIN.into(),
        password_hash: hash,
        role: UserRole::Admin,
        must_change_password: true,
    };
    let event = AuditEvent {
        at: OffsetDateTime::now_utc(),
        actor: "system".into(),
        action: "user.create".into(),
        subject: INITIAL_ADMIN.into(),
        details: serde_json::json!({"role": "admin", "initial": true}),
    };
    match store.create_user(user, event).await {
        Ok(()) => Ok(Some(password)),
        Err(StoreError::Conflict(Conflict::Unique(_))) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHash, PasswordVerifier};

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("s3cret-pass").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let parsed = PasswordHash::new(&hash).unwrap();
        assert!(Argon2::default()
            .verify_password(b"s3cret-pass", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"wrong", &parsed)
            .is_err());
    }
}
