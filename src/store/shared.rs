//! SQL shared by both backends. Both dialects accept the same statements
//! (`$n` parameters, `RETURNING`, the same column types as seen from Rust),
//! so the statements live once, here; `sqlite.rs` and `postgres.rs` add
//! what differs (connection set-up, pools, migrations).

use super::{CertificateRecord, IssuerKind, IssuerRecord, Result, StoreError};

#[derive(sqlx::FromRow)]
pub(super) struct IssuerRow {
    id: String,
    kind: String,
    subject: String,
    cert_der: Vec<u8>,
    key_id: Vec<u8>,
    not_before: i64,
    not_after: i64,
}

impl IssuerRow {
    pub(super) fn into_record(self) -> Result<IssuerRecord> {
        let kind = match self.kind.as_str() {
            "root" => IssuerKind::Root,
            "intermediate" => IssuerKind::Intermediate,
            other => return Err(StoreError::Corrupt(format!("issuer kind {other:?}"))),
        };
        Ok(IssuerRecord {
            id: self.id,
            kind,
            subject: self.subject,
            cert_der: self.cert_der,
            key_id: self.key_id,
            not_before: self.not_before,
            not_after: self.not_after,
        })
    }
}

pub(super) const SELECT_ISSUERS: &str =
    "SELECT id, kind, subject, cert_der, key_id, not_before, not_after \
     FROM issuers ORDER BY CASE kind WHEN 'root' THEN 0 ELSE 1 END, not_before";

pub(super) const UPSERT_ISSUER: &str =
    "INSERT INTO issuers (id, kind, subject, cert_der, key_id, not_before, not_after, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (id) DO UPDATE SET subject = excluded.subject, cert_der = excluded.cert_der, \
     key_id = excluded.key_id, not_before = excluded.not_before, not_after = excluded.not_after";

#[derive(sqlx::FromRow)]
pub(super) struct CertificateRow {
    serial: String,
    issuer_id: String,
    account_id: Option<String>,
    order_id: Option<String>,
    subject: String,
    identifiers: String,
    profile: String,
    requested_by: String,
    not_before: i64,
    not_after: i64,
    der: Vec<u8>,
    revoked_at: Option<i64>,
    revocation_reason: Option<i64>,
    created_at: i64,
}

impl CertificateRow {
    pub(super) fn into_record(self) -> Result<CertificateRecord> {
        Ok(CertificateRecord {
            serial: self
                .serial
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("serial {:?}", self.serial)))?,
            issuer_id: self.issuer_id,
            account_id: self.account_id,
            order_id: self.order_id,
            subject: self.subject,
            identifiers: serde_json::from_str(&self.identifiers)
                .map_err(|e| StoreError::Corrupt(format!("identifiers: {e}")))?,
            profile: self.profile,
            requested_by: self.requested_by,
            not_before: self.not_before,
            not_after: self.not_after,
            der: self.der,
            revoked_at: self.revoked_at,
            revocation_reason: self.revocation_reason,
            created_at: self.created_at,
        })
    }
}

pub(super) const SELECT_CERTIFICATE: &str =
    "SELECT serial, issuer_id, account_id, order_id, subject, identifiers, profile, \
     requested_by, not_before, not_after, der, revoked_at, revocation_reason, created_at \
     FROM certificates WHERE serial = $1";

/// Rows per multi-row INSERT: 128 rows of 12 parameters stay far below
/// SQLite's and PostgreSQL's bound-parameter limits.
pub(super) const ROWS_PER_INSERT: usize = 128;

/// Followed by `VALUES (…), (…)` for a batch.
pub(super) const INSERT_CERTIFICATE_PREFIX: &str =
    "INSERT INTO certificates (serial, issuer_id, account_id, order_id, subject, identifiers, \
     profile, requested_by, not_before, not_after, der, created_at) ";

/// Taking the audit head first both reads the chain's end and, by writing,
/// serialises every audit-writing transaction: a row lock on PostgreSQL
/// (across instances), the write lock on SQLite (across processes).
pub(super) const LOCK_AUDIT_HEAD: &str =
    "UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, hash";

pub(super) const SET_AUDIT_HEAD: &str = "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1";

/// Followed by `VALUES (…), (…)` for a batch.
pub(super) const INSERT_AUDIT_PREFIX: &str =
    "INSERT INTO audit_log (seq, at, actor, action, subject, details, prev_hash, hash) ";

#[derive(sqlx::FromRow)]
pub(super) struct AuditRow {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub details: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

pub(super) const SELECT_AUDIT_PAGE: &str =
    "SELECT seq, at, actor, action, subject, details, prev_hash, hash \
     FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2";

pub(super) const INSERT_USER: &str = "INSERT INTO users (id, username, password_hash, role, must_change_password, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $6)";

pub(super) const INSERT_ACCOUNT: &str =
    "INSERT INTO accounts (id, name, role, disabled, created_at) VALUES ($1, $2, $3, $4, $5)";

pub(super) const INSERT_API_KEY: &str =
    "INSERT INTO api_keys (id, account_id, key_hash, created_at) VALUES ($1, $2, $3, $4)";

#[derive(sqlx::FromRow)]
pub(super) struct AccountKeyRow {
    pub id: String,
    pub name: String,
    pub role: String,
    pub disabled: bool,
    pub created_at: i64,
    pub key_hash: Vec<u8>,
}

/// Looked up by the key's hash (unique index): one indexed read per request.
pub(super) const SELECT_ACCOUNT_BY_KEY: &str =
    "SELECT a.id, a.name, a.role, a.disabled, a.created_at, k.key_hash \
     FROM api_keys k JOIN accounts a ON a.id = k.account_id \
     WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND NOT a.disabled";

/// Implements [`super::Store`] for a backend struct with `read` and `write`
/// pools of `$db` and a `batcher`, using the shared statements above.
macro_rules! impl_sql_store {
    ($store:ty, $db:ty, $name:literal) => {
        impl $store {
            /// Appends audit records inside `tx`, extending the hash chain,
            /// with one multi-row INSERT.
            async fn append_audit_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                events: &[&$crate::store::AuditEvent],
            ) -> $crate::store::Result<()> {
                let (mut seq, mut prev): (i64, Vec<u8>) =
                    sqlx::query_as($crate::store::shared::LOCK_AUDIT_HEAD)
                        .fetch_one(&mut **tx)
                        .await?;
                let mut rows = Vec::with_capacity(events.len());
                for event in events {
                    seq += 1;
                    let at = event.at.unix_timestamp();
                    let details = event.details.to_string();
                    let hash = $crate::store::audit_hash(
                        &prev,
                        seq,
                        at,
                        &event.actor,
                        &event.action,
                        &event.subject,
                        &details,
                    );
                    let prev_hash = std::mem::replace(&mut prev, hash.clone());
                    rows.push((seq, at, *event, details, prev_hash, hash));
                }
                for chunk in rows.chunks($crate::store::shared::ROWS_PER_INSERT) {
                    let mut insert =
                        sqlx::QueryBuilder::<$db>::new($crate::store::shared::INSERT_AUDIT_PREFIX);
                    insert.push_values(
                        chunk,
                        |mut b, (seq, at, event, details, prev_hash, hash)| {
                            b.push_bind(*seq)
                                .push_bind(*at)
                                .push_bind(event.actor.clone())
                                .push_bind(event.action.clone())
                                .push_bind(event.subject.clone())
                                .push_bind(details.clone())
                                .push_bind(prev_hash.clone())
                                .push_bind(hash.clone());
                        },
                    );
                    insert.build().execute(&mut **tx).await?;
                }
                sqlx::query($crate::store::shared::SET_AUDIT_HEAD)
                    .bind(seq)
                    .bind(&prev)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            /// Commits a batch of issuances in one transaction.
            async fn commit_certificates(
                pool: sqlx::Pool<$db>,
                items: std::sync::Arc<Vec<$crate::store::batch::Item>>,
            ) -> $crate::store::Result<()> {
                let mut tx = pool.begin().await?;
                let events: Vec<&$crate::store::AuditEvent> =
                    items.iter().map(|(_, e)| e).collect();
                Self::append_audit_tx(&mut tx, &events).await?;
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                for chunk in items.chunks($crate::store::shared::ROWS_PER_INSERT) {
                    let mut insert = sqlx::QueryBuilder::<$db>::new(
                        $crate::store::shared::INSERT_CERTIFICATE_PREFIX,
                    );
                    let mut encode_error = None;
                    insert.push_values(chunk, |mut b, (cert, _)| {
                        let identifiers =
                            serde_json::to_string(&cert.identifiers).unwrap_or_else(|e| {
                                encode_error = Some(e.to_string());
                                String::new()
                            });
                        b.push_bind(cert.serial.to_hex())
                            .push_bind(cert.issuer_id.clone())
                            .push_bind(cert.account_id.clone())
                            .push_bind(cert.order_id.clone())
                            .push_bind(cert.subject.clone())
                            .push_bind(identifiers)
                            .push_bind(cert.profile.clone())
                            .push_bind(cert.requested_by.clone())
                            .push_bind(cert.not_before.unix_timestamp())
                            .push_bind(cert.not_after.unix_timestamp())
                            .push_bind(cert.der.clone())
                            .push_bind(now);
                    });
                    if let Some(e) = encode_error {
                        return Err($crate::store::StoreError::Database(e));
                    }
                    insert.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            fn backend(&self) -> &'static str {
                $name
            }

            async fn ping(&self) -> $crate::store::Result<()> {
                sqlx::query("SELECT 1").execute(&self.read).await?;
                Ok(())
            }

            async fn upsert_issuer(
                &self,
                issuer: &$crate::store::IssuerRecord,
            ) -> $crate::store::Result<()> {
                sqlx::query($crate::store::shared::UPSERT_ISSUER)
                    .bind(&issuer.id)
                    .bind(issuer.kind.as_str())
                    .bind(&issuer.subject)
                    .bind(&issuer.cert_der)
                    .bind(&issuer.key_id)
                    .bind(issuer.not_before)
                    .bind(issuer.not_after)
                    .bind(time::OffsetDateTime::now_utc().unix_timestamp())
                    .execute(&self.write)
                    .await?;
                Ok(())
            }

            async fn issuers(&self) -> $crate::store::Result<Vec<$crate::store::IssuerRecord>> {
                let rows: Vec<$crate::store::shared::IssuerRow> =
                    sqlx::query_as($crate::store::shared::SELECT_ISSUERS)
                        .fetch_all(&self.read)
                        .await?;
                rows.into_iter().map(|r| r.into_record()).collect()
            }

            async fn insert_certificate(
                &self,
                cert: $crate::store::NewCertificate,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                self.batcher.submit((cert, event)).await
            }

            async fn certificate(
                &self,
                serial: &$crate::pki::Serial,
            ) -> $crate::store::Result<$crate::store::CertificateRecord> {
                let row: $crate::store::shared::CertificateRow =
                    sqlx::query_as($crate::store::shared::SELECT_CERTIFICATE)
                        .bind(serial.to_hex())
                        .fetch_one(&self.read)
                        .await?;
                row.into_record()
            }

            async fn count_certificates(&self) -> $crate::store::Result<i64> {
                let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM certificates")
                    .fetch_one(&self.read)
                    .await?;
                Ok(n)
            }

            async fn append_audit(
                &self,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                let mut tx = self.write.begin().await?;
                Self::append_audit_tx(&mut tx, &[&event]).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn audit_head(&self) -> $crate::store::Result<(i64, Vec<u8>)> {
                Ok(
                    sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
                        .fetch_one(&self.read)
                        .await?,
                )
            }

            async fn audit_page(
                &self,
                after: i64,
                limit: i64,
            ) -> $crate::store::Result<Vec<$crate::store::AuditRecord>> {
                let rows: Vec<$crate::store::shared::AuditRow> =
                    sqlx::query_as($crate::store::shared::SELECT_AUDIT_PAGE)
                        .bind(after)
                        .bind(limit)
                        .fetch_all(&self.read)
                        .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| $crate::store::AuditRecord {
                        seq: r.seq,
                        at: r.at,
                        actor: r.actor,
                        action: r.action,
                        subject: r.subject,
                        details: r.details,
                        prev_hash: r.prev_hash,
                        hash: r.hash,
                    })
                    .collect())
            }

            async fn create_user(
                &self,
                user: $crate::store::NewUser,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                let mut tx = self.write.begin().await?;
                Self::append_audit_tx(&mut tx, &[&event]).await?;
                sqlx::query($crate::store::shared::INSERT_USER)
                    .bind(&user.id)
                    .bind(&user.username)
                    .bind(&user.password_hash)
                    .bind(&user.role)
                    .bind(user.must_change_password)
                    .bind(event.at.unix_timestamp())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn create_account(
                &self,
                account: $crate::store::AccountRecord,
                key: $crate::store::NewApiKey,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                let mut tx = self.write.begin().await?;
                Self::append_audit_tx(&mut tx, &[&event]).await?;
                sqlx::query($crate::store::shared::INSERT_ACCOUNT)
                    .bind(&account.id)
                    .bind(&account.name)
                    .bind(&account.role)
                    .bind(account.disabled)
                    .bind(account.created_at)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query($crate::store::shared::INSERT_API_KEY)
                    .bind(&key.id)
                    .bind(&account.id)
                    .bind(key.key_hash.to_vec())
                    .bind(account.created_at)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn revoke_api_key(
                &self,
                key_id: &str,
                at: i64,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                let mut tx = self.write.begin().await?;
                Self::append_audit_tx(&mut tx, &[&event]).await?;
                let done = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                    .bind(at)
                    .bind(key_id)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 0 {
                    return Err($crate::store::StoreError::NotFound);
                }
                tx.commit().await?;
                Ok(())
            }

            async fn rotate_api_key(
                &self,
                account_id: &str,
                key: $crate::store::NewApiKey,
                at: i64,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                let mut tx = self.write.begin().await?;
                Self::append_audit_tx(&mut tx, &[&event]).await?;
                let exists: Option<(String,)> = sqlx::query_as("SELECT id FROM accounts WHERE id = $1")
                    .bind(account_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if exists.is_none() {
                    return Err($crate::store::StoreError::NotFound);
                }
                sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE account_id = $2 AND revoked_at IS NULL")
                    .bind(at)
                    .bind(account_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query($crate::store::shared::INSERT_API_KEY)
                    .bind(&key.id)
                    .bind(account_id)
                    .bind(key.key_hash.to_vec())
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn account_by_api_key(
                &self,
                key_hash: &[u8; 32],
            ) -> $crate::store::Result<Option<($crate::store::AccountRecord, Vec<u8>)>> {
                let row: Option<$crate::store::shared::AccountKeyRow> =
                    sqlx::query_as($crate::store::shared::SELECT_ACCOUNT_BY_KEY)
                        .bind(key_hash.to_vec())
                        .fetch_optional(&self.read)
                        .await?;
                Ok(row.map(|r| {
                    (
                        $crate::store::AccountRecord {
                            id: r.id,
                            name: r.name,
                            role: r.role,
                            disabled: r.disabled,
                            created_at: r.created_at,
                        },
                        r.key_hash,
                    )
                }))
            }

            async fn count_users(&self) -> $crate::store::Result<i64> {
                let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
                    .fetch_one(&self.read)
                    .await?;
                Ok(n)
            }
        }
    };
}

pub(super) use impl_sql_store;
