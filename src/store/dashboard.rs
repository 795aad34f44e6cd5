//! What the dashboard needs from the database: users and their sign-in
//! state, sessions (shared by every instance), accounts, the audit log
//! newest first with filters, and the overview's counts.

use async_trait::async_trait;

use super::{AuditEvent, NewUser, OrderStatus, Result, SignInLimits, UserRole};

/// A dashboard user as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UserRecord {
    /// Random id.
    pub id: String,
    /// Sign-in name.
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// What they may do.
    pub role: UserRole,
    /// Must choose a new password before anything else.
    pub must_change_password: bool,
    /// Cannot sign in.
    pub disabled: bool,
    /// Failed sign-ins since the last success.
    pub failed_logins: i64,
    /// Sign-in refused until then (Unix seconds).
    pub locked_until: Option<i64>,
    /// When created.
    pub created_at: i64,
    /// The requester account this person belongs to, if any: they never
    /// approve its orders.
    pub account_id: Option<String>,
}

/// Changes to a user (each `None` leaves the field alone).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserUpdate {
    /// New argon2id hash.
    pub password_hash: Option<String>,
    /// New must-change flag.
    pub must_change_password: Option<bool>,
    /// New role.
    pub role: Option<UserRole>,
    /// Disable or enable.
    pub disabled: Option<bool>,
    /// Link to an account (`Some(Some(id))`) or unlink (`Some(None)`).
    pub account_id: Option<Option<String>>,
}

/// A signed-in session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// SHA-256 of the cookie value (the value itself is never stored).
    pub id_hash: Vec<u8>,
    /// Its user.
    pub user_id: String,
    /// The CSRF token every form of this session carries.
    pub csrf_token: String,
    /// When signed in.
    pub created_at: i64,
    /// Last request.
    pub last_seen_at: i64,
    /// Absolute end.
    pub expires_at: i64,
}

/// Audit records newest first, filtered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Actor equals.
    pub actor: Option<String>,
    /// Action starts with (`certificate.`, `order.approve`).
    pub action: Option<String>,
    /// Subject equals.
    pub subject: Option<String>,
    /// Only records with `seq` below this.
    pub before: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

/// The overview's numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overview {
    /// Orders by status.
    pub orders_by_status: Vec<(OrderStatus, i64)>,
    /// Certificates issued since the given time.
    pub issued_recently: i64,
    /// Valid certificates expiring before the given time.
    pub expiring_soon: i64,
    /// Certificates, revoked certificates.
    pub certificates: i64,
    /// Revoked certificates.
    pub revoked: i64,
    /// Issued per day (day number = Unix seconds / 86400), oldest first.
    pub issued_per_day: Vec<(i64, i64)>,
}

/// What can be read about dashboard users, their sessions and the overview.
#[async_trait]
pub trait UserReads: Send + Sync + 'static {
    /// How many dashboard users exist.
    async fn count_users(&self) -> Result<i64>;

    /// A dashboard user by name (read from the writer, so a sign-in sees
    /// the newest failure count).
    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>>;

    /// Every dashboard user, by name.
    async fn users(&self) -> Result<Vec<UserRecord>>;

    /// A session by the hash of its cookie, with its user.
    async fn session(&self, id_hash: &[u8]) -> Result<Option<(SessionRecord, UserRecord)>>;

    /// The dashboard overview's counts at `now`.
    async fn overview(&self, now: i64) -> Result<Overview>;
}

/// Every change to dashboard users and their sessions.
#[async_trait]
pub trait UserWrites: Send + Sync + 'static {
    /// Creates a dashboard user and its audit record in one transaction;
    /// `Conflict` if the name is taken.
    async fn create_user(&self, user: NewUser, event: AuditEvent) -> Result<()>;

    /// Counts a failed sign-in of an existing user, atomically (parallel
    /// guesses each count) and fairly: a failure after an expired lock, or
    /// more than `policy.window_secs` after the previous failure, starts
    /// the count again at one. At `policy.max_failures` the user is locked
    /// until `now + policy.lock_secs`. Appends `failed` (always) and
    /// `locked` (when this failure set the lock) to the audit log. If a
    /// lock is already in force nothing is counted or written. Returns the
    /// failures in a row and the lock in force.
    async fn record_failed_sign_in(
        &self,
        user_id: &str,
        now: i64,
        policy: SignInLimits,
        failed: AuditEvent,
        locked: AuditEvent,
    ) -> Result<(i64, Option<i64>)>;

    /// Changes a user with its audit record; `Conflict` (nothing written)
    /// if no enabled admin would remain. A new password, role or disabling
    /// ends the user's sessions.
    async fn update_user(
        &self,
        user_id: &str,
        update: &UserUpdate,
        at: i64,
        event: AuditEvent,
    ) -> Result<()>;

    /// Stores a new session (and resets the user's failure count) with its
    /// audit record.
    async fn create_session(&self, session: &SessionRecord, event: AuditEvent) -> Result<()>;

    /// Marks a session used now (for the idle timeout).
    async fn touch_session(&self, id_hash: &[u8], at: i64) -> Result<()>;

    /// Ends a session.
    async fn delete_session(&self, id_hash: &[u8]) -> Result<()>;
}
