//! What the dashboard needs from the database: users and their sign-in
//! state, sessions (shared by every instance), accounts, the audit log
//! newest first with filters, and the overview's counts.

/// A dashboard user as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Random id.
    pub id: String,
    /// Sign-in name.
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// `admin`, `reviewer` or `auditor`.
    pub role: String,
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
    pub role: Option<String>,
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
    pub orders_by_status: Vec<(String, i64)>,
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

pub(super) const USER_COLUMNS: &str = "SELECT id, username, password_hash, role, \
     must_change_password, disabled, failed_logins, locked_until, created_at, account_id FROM users";

/// Implements the dashboard methods as inherent `*_impl` methods of a
/// backend with `read` and `write` pools; the `Store` impl calls them.
/// Ends the unfinished orders of an account being disabled: the
/// `Transition::Fail` of each unfinished status, in one statement.
pub(super) const END_ORDERS_OF_DISABLED_ACCOUNT: &str = "UPDATE orders SET status = 'invalid', \
     updated_at = $2, error = $3 WHERE account_id = $1 \
     AND status IN ('pending', 'ready', 'processing', 'awaiting_approval') RETURNING id";

/// The problem an order of a disabled account ends with.
pub(super) fn account_disabled_problem() -> String {
    serde_json::json!({
        "type": crate::acme_error::AcmeError::Unauthorized.urn(),
        "detail": "the account that placed this order was disabled; the order will not be issued",
    })
    .to_string()
}

macro_rules! impl_dashboard_sql {
    ($store:ty, $db:ty) => {
        impl $store {
            fn user_row(
                r: (String, String, String, String, bool, bool, i64, Option<i64>, i64, Option<String>),
            ) -> $crate::store::UserRecord {
                $crate::store::UserRecord {
                    id: r.0,
                    username: r.1,
                    password_hash: r.2,
                    role: r.3,
                    must_change_password: r.4,
                    disabled: r.5,
                    failed_logins: r.6,
                    locked_until: r.7,
                    created_at: r.8,
                    account_id: r.9,
                }
            }

            pub(super) async fn user_by_name_impl(
                &self,
                username: &str,
            ) -> $crate::store::Result<Option<$crate::store::UserRecord>> {
                let row = sqlx::query_as(&format!(
                    "{} WHERE username = $1",
                    $crate::store::dashboard::USER_COLUMNS
                ))
                .bind(username)
                .fetch_optional(&self.write)
                .await?;
                Ok(row.map(Self::user_row))
            }

            pub(super) async fn users_impl(
                &self,
            ) -> $crate::store::Result<Vec<$crate::store::UserRecord>> {
                let rows = sqlx::query_as(&format!(
                    "{} ORDER BY username",
                    $crate::store::dashboard::USER_COLUMNS
                ))
                .fetch_all(&self.read)
                .await?;
                Ok(rows.into_iter().map(Self::user_row).collect())
            }

            pub(super) async fn record_failed_sign_in_impl(
                &self,
                user_id: &str,
                now: i64,
                policy: $crate::store::SignInLimits,
                mut failed: $crate::store::AuditEvent,
                locked: $crate::store::AuditEvent,
            ) -> $crate::store::Result<(i64, Option<i64>)> {
                let mut tx = self.write.begin().await?;
                // The audit-head lock serialises this with every other
                // sign-in failure, across instances: read, count, write.
                let head = Self::lock_audit_tx(&mut tx).await?;
                let (count, lock, last): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
                    "SELECT failed_logins, locked_until, last_failed_at FROM users WHERE id = $1",
                )
                .bind(user_id)
                .fetch_one(&mut *tx)
                .await?;
                if let Some(until) = lock.filter(|u| *u > now) {
                    return Ok((count, Some(until)));
                }
                let fresh = lock.is_some()
                    || last.is_none_or(|t| now - t > policy.window_secs);
                let count = if fresh { 1 } else { count + 1 };
                let lock = (count >= policy.max_failures).then_some(now + policy.lock_secs);
                sqlx::query(
                    "UPDATE users SET failed_logins = $2, locked_until = $3, last_failed_at = $4 WHERE id = $1",
                )
                .bind(user_id)
                .bind(count)
                .bind(lock)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if let Some(details) = failed.details.as_object_mut() {
                    details.insert("failures_in_a_row".into(), count.into());
                }
                let mut events = vec![&failed];
                if lock.is_some() {
                    events.push(&locked);
                }
                Self::write_audit_tx(&mut tx, head, &events).await?;
                tx.commit().await?;
                Ok((count, lock))
            }

            pub(super) async fn update_user_impl(
                &self,
                user_id: &str,
                update: &$crate::store::UserUpdate,
                at: i64,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                let mut tx = self.write.begin().await?;
                let head = Self::lock_audit_tx(&mut tx).await?;
                let done = sqlx::query(
                    "UPDATE users SET password_hash = COALESCE($2, password_hash), \
                     must_change_password = COALESCE($3, must_change_password), \
                     role = COALESCE($4, role), disabled = COALESCE($5, disabled), \
                     updated_at = $6, \
                     account_id = CASE WHEN $7 THEN $8 ELSE account_id END WHERE id = $1",
                )
                .bind(user_id)
                .bind(&update.password_hash)
                .bind(update.must_change_password)
                .bind(&update.role)
                .bind(update.disabled)
                .bind(at)
                .bind(update.account_id.is_some())
                .bind(update.account_id.clone().flatten())
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() != 1 {
                    return Err($crate::store::StoreError::NotFound);
                }
                // Nobody can remove the last enabled admin; checked after the
                // change, under the audit-head lock that serialises writers.
                let (admins,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM users WHERE role = 'admin' AND NOT disabled",
                )
                .fetch_one(&mut *tx)
                .await?;
                if admins == 0 {
                    return Err($crate::store::StoreError::Conflict(
                        "this would leave no enabled admin; add or enable another admin first".into(),
                    ));
                }
                if update.password_hash.is_some() || update.disabled == Some(true) || update.role.is_some() {
                    // Sessions end when the password, the role or access changes.
                    sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                        .bind(user_id)
                        .execute(&mut *tx)
                        .await?;
                }
                Self::write_audit_tx(&mut tx, head, &[&event]).await?;
                tx.commit().await?;
                Ok(())
            }

            pub(super) async fn create_session_impl(
                &self,
                session: &$crate::store::SessionRecord,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                let mut tx = self.write.begin().await?;
                let head = Self::lock_audit_tx(&mut tx).await?;
                sqlx::query(
                    "INSERT INTO sessions (id_hash, user_id, csrf_token, created_at, last_seen_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&session.id_hash)
                .bind(&session.user_id)
                .bind(&session.csrf_token)
                .bind(session.created_at)
                .bind(session.last_seen_at)
                .bind(session.expires_at)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE users SET failed_logins = 0, locked_until = NULL, last_failed_at = NULL WHERE id = $1",
                )
                    .bind(&session.user_id)
                    .execute(&mut *tx)
                    .await?;
                // Old sessions of anyone go when they are found expired;
                // also sweep a few here so the table does not grow.
                sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
                    .bind(session.created_at)
                    .execute(&mut *tx)
                    .await?;
                Self::write_audit_tx(&mut tx, head, &[&event]).await?;
                tx.commit().await?;
                Ok(())
            }

            pub(super) async fn session_impl(
                &self,
                id_hash: &[u8],
            ) -> $crate::store::Result<Option<($crate::store::SessionRecord, $crate::store::UserRecord)>>
            {
                let row: Option<(Vec<u8>, String, String, i64, i64, i64)> = sqlx::query_as(
                    "SELECT id_hash, user_id, csrf_token, created_at, last_seen_at, expires_at \
                     FROM sessions WHERE id_hash = $1",
                )
                .bind(id_hash)
                .fetch_optional(&self.read)
                .await?;
                let Some(s) = row else { return Ok(None) };
                let user = sqlx::query_as(&format!(
                    "{} WHERE id = $1",
                    $crate::store::dashboard::USER_COLUMNS
                ))
                .bind(&s.1)
                .fetch_optional(&self.read)
                .await?;
                Ok(user.map(|u| {
                    (
                        $crate::store::SessionRecord {
                            id_hash: s.0,
                            user_id: s.1,
                            csrf_token: s.2,
                            created_at: s.3,
                            last_seen_at: s.4,
                            expires_at: s.5,
                        },
                        Self::user_row(u),
                    )
                }))
            }

            pub(super) async fn touch_session_impl(
                &self,
                id_hash: &[u8],
                at: i64,
            ) -> $crate::store::Result<()> {
                sqlx::query("UPDATE sessions SET last_seen_at = $2 WHERE id_hash = $1")
                    .bind(id_hash)
                    .bind(at)
                    .execute(&self.write)
                    .await?;
                Ok(())
            }

            pub(super) async fn delete_session_impl(
                &self,
                id_hash: &[u8],
            ) -> $crate::store::Result<()> {
                sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
                    .bind(id_hash)
                    .execute(&self.write)
                    .await?;
                Ok(())
            }

            pub(super) async fn accounts_impl(
                &self,
            ) -> $crate::store::Result<Vec<$crate::store::AccountRecord>> {
                let rows: Vec<(String, String, String, bool, i64)> = sqlx::query_as(
                    "SELECT id, name, role, disabled, created_at FROM accounts ORDER BY created_at DESC, id",
                )
                .fetch_all(&self.read)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, name, role, disabled, created_at)| $crate::store::AccountRecord {
                        id,
                        name,
                        role,
                        disabled,
                        created_at,
                    })
                    .collect())
            }

            pub(super) async fn set_account_disabled_impl(
                &self,
                account_id: &str,
                disabled: bool,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                let mut tx = self.write.begin().await?;
                let head = Self::lock_audit_tx(&mut tx).await?;
                let done = sqlx::query("UPDATE accounts SET disabled = $2 WHERE id = $1")
                    .bind(account_id)
                    .bind(disabled)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() != 1 {
                    return Err($crate::store::StoreError::NotFound);
                }
                let mut events = vec![event];
                if disabled {
                    // Its unfinished orders end with it: validations
                    // finishing later find no pending order, reviewers find
                    // nothing to approve, and an issuance in flight finds
                    // its order no longer `processing` and is rolled back.
                    let ended: Vec<(String,)> = sqlx::query_as(
                        $crate::store::dashboard::END_ORDERS_OF_DISABLED_ACCOUNT,
                    )
                    .bind(account_id)
                    .bind(events[0].at.unix_timestamp())
                    .bind($crate::store::dashboard::account_disabled_problem())
                    .fetch_all(&mut *tx)
                    .await?;
                    for (order_id,) in ended {
                        events.push($crate::store::AuditEvent {
                            at: events[0].at,
                            actor: events[0].actor.clone(),
                            action: "order.invalid".into(),
                            subject: order_id,
                            details: serde_json::json!({ "reason": "account disabled" }),
                        });
                    }
                }
                let refs: Vec<&$crate::store::AuditEvent> = events.iter().collect();
                Self::write_audit_tx(&mut tx, head, &refs).await?;
                tx.commit().await?;
                Ok(())
            }

            pub(super) async fn audit_search_impl(
                &self,
                query: &$crate::store::AuditQuery,
            ) -> $crate::store::Result<Vec<$crate::store::AuditRecord>> {
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "SELECT seq, at, actor, action, subject, details, prev_hash, hash FROM audit_log WHERE 1 = 1",
                );
                if let Some(actor) = &query.actor {
                    q.push(" AND actor = ").push_bind(actor.clone());
                }
                if let Some(action) = &query.action {
                    q.push(" AND action LIKE ")
                        .push_bind(format!("{}%", $crate::store::revocation::like_escape(action)))
                        .push(" ESCAPE '\\'");
                }
                if let Some(subject) = &query.subject {
                    q.push(" AND subject = ").push_bind(subject.clone());
                }
                if let Some(before) = query.before {
                    q.push(" AND seq < ").push_bind(before);
                }
                q.push(" ORDER BY seq DESC LIMIT ").push_bind(query.limit);
                let rows: Vec<$crate::store::shared::AuditRow> =
                    q.build_query_as().fetch_all(&self.read).await?;
                Ok(rows.into_iter().map(|r| r.into_record()).collect())
            }

            pub(super) async fn overview_impl(
                &self,
                now: i64,
            ) -> $crate::store::Result<$crate::store::Overview> {
                let orders_by_status: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT status, COUNT(*) FROM orders GROUP BY status ORDER BY status",
                )
                .fetch_all(&self.read)
                .await?;
                let (issued_recently,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM certificates WHERE created_at >= $1")
                        .bind(now - 86_400)
                        .fetch_one(&self.read)
                        .await?;
                let (expiring_soon,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM certificates WHERE not_after >= $1 AND not_after < $2 \
                     AND revoked_at IS NULL",
                )
                .bind(now)
                .bind(now + 30 * 86_400)
                .fetch_one(&self.read)
                .await?;
                let (certificates,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM certificates")
                    .fetch_one(&self.read)
                    .await?;
                let (revoked,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM certificates WHERE revoked_at IS NOT NULL",
                )
                .fetch_one(&self.read)
                .await?;
                let since = (now / 86_400 - 29) * 86_400;
                let issued_per_day: Vec<(i64, i64)> = sqlx::query_as(
                    "SELECT created_at / 86400 AS day, COUNT(*) FROM certificates \
                     WHERE created_at >= $1 GROUP BY created_at / 86400 ORDER BY day",
                )
                .bind(since)
                .fetch_all(&self.read)
                .await?;
                Ok($crate::store::Overview {
                    orders_by_status,
                    issued_recently,
                    expiring_soon,
                    certificates,
                    revoked,
                    issued_per_day,
                })
            }
        }
    };
}

pub(super) use impl_dashboard_sql;
