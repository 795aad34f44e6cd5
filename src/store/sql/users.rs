//! The SQL of dashboard users and their sessions, and the overview page.

use async_trait::async_trait;

use super::{Backend, SqlStore};
use crate::store::*;

const INSERT_USER: &str = "INSERT INTO users (id, username, password_hash, role, must_change_password, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $6)";

const USER_COLUMNS: &str = "SELECT id, username, password_hash, role, \
     must_change_password, disabled, failed_logins, locked_until, created_at, account_id FROM users";

#[async_trait]
impl<B: Backend> UserReads for SqlStore<B>
where
    for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B>,
    for<'q> B::Arguments<'q>: sqlx::IntoArguments<'q, B>,
    for<'q> &'q str: sqlx::Encode<'q, B> + sqlx::Type<B>,
    for<'q> &'q [u8]: sqlx::Encode<'q, B> + sqlx::Type<B>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, B>,
    for<'q> Option<&'q [u8]>: sqlx::Encode<'q, B>,
    for<'q> Option<String>: sqlx::Encode<'q, B>,
    for<'q> Option<Vec<u8>>: sqlx::Encode<'q, B>,
    for<'q> Option<i64>: sqlx::Encode<'q, B>,
    for<'q> Option<bool>: sqlx::Encode<'q, B>,
    for<'q, 'r> String: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'q, 'r> Vec<u8>: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'q, 'r> i64: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'q, 'r> bool: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'r> &'r str: sqlx::ColumnIndex<B::Row>,
    usize: sqlx::ColumnIndex<B::Row>,
{
    async fn count_users(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
            .fetch_one(&self.read)
            .await?;
        Ok(n)
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query_as(&format!("{} WHERE username = $1", USER_COLUMNS))
            .bind(username)
            .fetch_optional(&self.write)
            .await?;
        Ok(row)
    }

    async fn users(&self) -> Result<Vec<UserRecord>> {
        let rows = sqlx::query_as(&format!("{} ORDER BY username", USER_COLUMNS))
            .fetch_all(&self.read)
            .await?;
        Ok(rows)
    }

    async fn session(&self, id_hash: &[u8]) -> Result<Option<(SessionRecord, UserRecord)>> {
        let row: Option<(Vec<u8>, String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT id_hash, user_id, csrf_token, created_at, last_seen_at, expires_at \
             FROM sessions WHERE id_hash = $1",
        )
        .bind(id_hash)
        .fetch_optional(&self.read)
        .await?;
        let Some(s) = row else { return Ok(None) };
        let user = sqlx::query_as(&format!("{} WHERE id = $1", USER_COLUMNS))
            .bind(&s.1)
            .fetch_optional(&self.read)
            .await?;
        Ok(user.map(|u| {
            (
                SessionRecord {
                    id_hash: s.0,
                    user_id: s.1,
                    csrf_token: s.2,
                    created_at: s.3,
                    last_seen_at: s.4,
                    expires_at: s.5,
                },
                u,
            )
        }))
    }

    async fn overview(&self, now: i64) -> Result<Overview> {
        // The unfinished orders from the partial index `orders_status`, the
        // valid ones as what is left of the count (no index holds them by
        // status); `valid` sorts last.
        let mut orders_by_status: Vec<(OrderStatus, i64)> = sqlx::query_as(
            "SELECT status, COUNT(*) FROM orders WHERE status <> 'valid' \
             GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.read)
        .await?;
        let (orders,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM orders")
            .fetch_one(&self.read)
            .await?;
        let valid = orders - orders_by_status.iter().map(|(_, n)| n).sum::<i64>();
        if valid > 0 {
            orders_by_status.push((OrderStatus::Valid, valid));
        }
        let (issued_recently,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM certificates WHERE created_at >= $1")
                .bind(now - 86_400)
                .fetch_one(&self.read)
                .await?;
        let (expiring_soon,): (i64,) = sqlx::query_as(super::certificates::COUNT_EXPIRING)
            .bind(now)
            .bind(now + 30 * 86_400)
            .fetch_one(&self.read)
            .await?;
        let (certificates,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM certificates")
            .fetch_one(&self.read)
            .await?;
        let (revoked,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM certificates WHERE revoked_at IS NOT NULL")
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
        Ok(Overview {
            orders_by_status,
            issued_recently,
            expiring_soon,
            certificates,
            revoked,
            issued_per_day,
        })
    }
}

#[async_trait]
impl<B: Backend> UserWrites for SqlStore<B>
where
    for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B>,
    for<'q> B::Arguments<'q>: sqlx::IntoArguments<'q, B>,
    for<'q> &'q str: sqlx::Encode<'q, B> + sqlx::Type<B>,
    for<'q> &'q [u8]: sqlx::Encode<'q, B> + sqlx::Type<B>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, B>,
    for<'q> Option<&'q [u8]>: sqlx::Encode<'q, B>,
    for<'q> Option<String>: sqlx::Encode<'q, B>,
    for<'q> Option<Vec<u8>>: sqlx::Encode<'q, B>,
    for<'q> Option<i64>: sqlx::Encode<'q, B>,
    for<'q> Option<bool>: sqlx::Encode<'q, B>,
    for<'q, 'r> String: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'q, 'r> Vec<u8>: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'q, 'r> i64: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'q, 'r> bool: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'r> &'r str: sqlx::ColumnIndex<B::Row>,
    usize: sqlx::ColumnIndex<B::Row>,
{
    async fn create_user(&self, user: NewUser, event: AuditEvent) -> Result<()> {
        let mut tx = self.write.begin().await?;
        Self::append_audit_tx(&mut tx, &[&event]).await?;
        sqlx::query(INSERT_USER)
            .bind(&user.id)
            .bind(&user.username)
            .bind(&user.password_hash)
            .bind(user.role)
            .bind(user.must_change_password)
            .bind(event.at.unix_timestamp())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_failed_sign_in(
        &self,
        user_id: &str,
        now: i64,
        policy: SignInLimits,
        mut failed: AuditEvent,
        locked: AuditEvent,
    ) -> Result<(i64, Option<i64>)> {
        let mut tx = self.write.begin().await?;
        // The audit-head lock serialises this with every other
        // sign-in failure, across instances: read, count, write.
        let head = Self::lock_audit(&mut tx).await?;
        let (count, lock, last): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT failed_logins, locked_until, last_failed_at FROM users WHERE id = $1",
        )
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
        if let Some(until) = lock.filter(|u| *u > now) {
            return Ok((count, Some(until)));
        }
        let fresh = lock.is_some() || last.is_none_or(|t| now - t > policy.window_secs);
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
        Self::commit_audited(tx, head, &events).await?;
        Ok((count, lock))
    }

    async fn update_user(
        &self,
        user_id: &str,
        update: &UserUpdate,
        at: i64,
        event: AuditEvent,
    ) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let head = Self::lock_audit(&mut tx).await?;
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
        .bind(update.role.map(UserRole::as_str))
        .bind(update.disabled)
        .bind(at)
        .bind(update.account_id.is_some())
        .bind(update.account_id.clone().flatten())
        .execute(&mut *tx)
        .await?;
        if B::rows_affected(&done) != 1 {
            return Err(StoreError::NotFound);
        }
        // Nobody can remove the last enabled admin; checked after the
        // change, under the audit-head lock that serialises writers.
        let (admins,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM users WHERE role = 'admin' AND NOT disabled")
                .fetch_one(&mut *tx)
                .await?;
        if admins == 0 {
            return Err(StoreError::Conflict(Conflict::LastAdmin));
        }
        if update.password_hash.is_some() || update.disabled == Some(true) || update.role.is_some()
        {
            // Sessions end when the password, the role or access changes.
            sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        }
        Self::commit_audited(tx, head, &[&event]).await
    }

    async fn create_session(&self, session: &SessionRecord, event: AuditEvent) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let head = Self::lock_audit(&mut tx).await?;
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
        Self::commit_audited(tx, head, &[&event]).await
    }

    async fn touch_session(&self, id_hash: &[u8], at: i64) -> Result<()> {
        sqlx::query("UPDATE sessions SET last_seen_at = $2 WHERE id_hash = $1")
            .bind(id_hash)
            .bind(at)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn delete_session(&self, id_hash: &[u8]) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.write)
            .await?;
        Ok(())
    }
}
