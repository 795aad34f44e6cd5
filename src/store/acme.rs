//! ACME state in the database: replay nonces (single use, shared by every
//! instance) and ACME accounts, each bound to a hallmark account that owns
//! its orders and certificates.

/// An ACME account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeAccountRecord {
    /// Random id (the account URL ends with it).
    pub id: String,
    /// The hallmark account that owns its orders.
    pub account_id: String,
    /// RFC 7638 thumbprint of its key.
    pub jwk_thumbprint: String,
    /// The JWK (JSON).
    pub jwk: String,
    /// Contact URLs (JSON array).
    pub contact: String,
    /// `valid`, `deactivated` or `revoked`.
    pub status: String,
    /// When created.
    pub created_at: i64,
}

pub(super) const ACME_ACCOUNT_COLUMNS: &str =
    "SELECT id, account_id, jwk_thumbprint, jwk, contact, status, created_at FROM acme_accounts";

/// Implements the ACME methods as inherent `*_impl` methods of a backend
/// with `read` and `write` pools; the `Store` impl calls them.
macro_rules! impl_acme_sql {
    ($store:ty, $db:ty) => {
        impl $store {
            fn acme_row(
                r: (String, Option<String>, String, String, String, String, i64),
            ) -> $crate::store::AcmeAccountRecord {
                $crate::store::AcmeAccountRecord {
                    id: r.0,
                    account_id: r.1.unwrap_or_default(),
                    jwk_thumbprint: r.2,
                    jwk: r.3,
                    contact: r.4,
                    status: r.5,
                    created_at: r.6,
                }
            }

            pub(super) async fn add_nonce_impl(
                &self,
                nonce: &str,
                expires_at: i64,
            ) -> $crate::store::Result<()> {
                sqlx::query("INSERT INTO acme_nonces (nonce, expires_at) VALUES ($1, $2)")
                    .bind(nonce)
                    .bind(expires_at)
                    .execute(&self.write)
                    .await?;
                Ok(())
            }

            pub(super) async fn use_nonce_impl(
                &self,
                nonce: &str,
                now: i64,
            ) -> $crate::store::Result<bool> {
                let done = sqlx::query("DELETE FROM acme_nonces WHERE nonce = $1 AND expires_at >= $2")
                    .bind(nonce)
                    .bind(now)
                    .execute(&self.write)
                    .await?;
                if rand::random::<u8>() == 0 {
                    // Now and then, sweep nonces nobody used.
                    sqlx::query("DELETE FROM acme_nonces WHERE expires_at < $1")
                        .bind(now)
                        .execute(&self.write)
                        .await?;
                }
                Ok(done.rows_affected() == 1)
            }

            pub(super) async fn create_acme_account_impl(
                &self,
                acme: &$crate::store::AcmeAccountRecord,
                owner: Option<&$crate::store::AccountRecord>,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                let mut tx = self.write.begin().await?;
                let head = Self::lock_audit_tx(&mut tx).await?;
                if let Some(a) = owner {
                    sqlx::query($crate::store::shared::INSERT_ACCOUNT)
                        .bind(&a.id)
                        .bind(&a.name)
                        .bind(&a.role)
                        .bind(a.disabled)
                        .bind(a.created_at)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(
                    "INSERT INTO acme_accounts (id, account_id, jwk_thumbprint, jwk, contact, status, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&acme.id)
                .bind(&acme.account_id)
                .bind(&acme.jwk_thumbprint)
                .bind(&acme.jwk)
                .bind(&acme.contact)
                .bind(&acme.status)
                .bind(acme.created_at)
                .execute(&mut *tx)
                .await?;
                Self::write_audit_tx(&mut tx, head, &[&event]).await?;
                tx.commit().await?;
                Ok(())
            }

            pub(super) async fn acme_account_impl(
                &self,
                by_id: Option<&str>,
                by_thumbprint: Option<&str>,
                by_owner: Option<&str>,
            ) -> $crate::store::Result<Option<$crate::store::AcmeAccountRecord>> {
                let (column, value) = match (by_id, by_thumbprint, by_owner) {
                    (Some(id), _, _) => ("id", id),
                    (_, Some(t), _) => ("jwk_thumbprint", t),
                    (_, _, Some(o)) => ("account_id", o),
                    _ => return Ok(None),
                };
                let row = sqlx::query_as(&format!(
                    "{} WHERE {column} = $1",
                    $crate::store::acme::ACME_ACCOUNT_COLUMNS
                ))
                .bind(value)
                .fetch_optional(&self.read)
                .await?;
                Ok(row.map(Self::acme_row))
            }

            pub(super) async fn update_acme_account_impl(
                &self,
                id: &str,
                contact: Option<&str>,
                status: Option<&str>,
                key: Option<(&str, &str)>,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                let mut tx = self.write.begin().await?;
                let head = Self::lock_audit_tx(&mut tx).await?;
                let done = sqlx::query(
                    "UPDATE acme_accounts SET contact = COALESCE($2, contact), \
                     status = COALESCE($3, status), jwk_thumbprint = COALESCE($4, jwk_thumbprint), \
                     jwk = COALESCE($5, jwk) WHERE id = $1 AND status = 'valid'",
                )
                .bind(id)
                .bind(contact)
                .bind(status)
                .bind(key.map(|k| k.0))
                .bind(key.map(|k| k.1))
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() != 1 {
                    return Err($crate::store::StoreError::NotFound);
                }
                Self::write_audit_tx(&mut tx, head, &[&event]).await?;
                tx.commit().await?;
                Ok(())
            }
        }
    };
}

pub(super) use impl_acme_sql;
