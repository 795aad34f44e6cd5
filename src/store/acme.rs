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
    /// The owning hallmark account is disabled (read, never written).
    pub owner_disabled: bool,
}

/// An external account binding key (RFC 8555 §7.3.4) as stored. The HMAC
/// key is single use: binding an ACME account erases it.
#[derive(Clone, PartialEq, Eq)]
pub struct EabKeyRecord {
    /// The key id clients send (`eab_…`).
    pub kid: String,
    /// The hallmark account ACME accounts bound with it belong to.
    pub account_id: String,
    /// The HMAC key; empty once used.
    pub hmac_key: Vec<u8>,
    /// When issued.
    pub created_at: i64,
    /// When an ACME account was bound with it.
    pub used_at: Option<i64>,
    /// The ACME account bound with it.
    pub acme_account_id: Option<String>,
}

impl std::fmt::Debug for EabKeyRecord {
    /// Like a derived `Debug`, without the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EabKeyRecord")
            .field("kid", &self.kid)
            .field("account_id", &self.account_id)
            .field("created_at", &self.created_at)
            .field("used_at", &self.used_at)
            .field("acme_account_id", &self.acme_account_id)
            .finish_non_exhaustive()
    }
}

pub(super) const EAB_COLUMNS: &str =
    "SELECT kid, account_id, hmac_key, created_at, used_at, acme_account_id FROM eab_keys";

pub(super) const ACME_ACCOUNT_COLUMNS: &str =
    "SELECT id, account_id, jwk_thumbprint, jwk, contact, status, created_at, \
     COALESCE((SELECT a.disabled FROM accounts a WHERE a.id = acme_accounts.account_id), FALSE) \
     FROM acme_accounts";

/// Implements the ACME methods as inherent `*_impl` methods of a backend
/// with `read` and `write` pools; the `Store` impl calls them.
macro_rules! impl_acme_sql {
    ($store:ty, $db:ty) => {
        impl $store {
            fn acme_row(
                r: (String, Option<String>, String, String, String, String, i64, bool),
            ) -> $crate::store::AcmeAccountRecord {
                $crate::store::AcmeAccountRecord {
                    id: r.0,
                    account_id: r.1.unwrap_or_default(),
                    jwk_thumbprint: r.2,
                    jwk: r.3,
                    contact: r.4,
                    status: r.5,
                    created_at: r.6,
                    owner_disabled: r.7,
                }
            }

            pub(super) async fn nonce_key_impl(
                &self,
                candidate: &[u8],
            ) -> $crate::store::Result<Vec<u8>> {
                sqlx::query(
                    "INSERT INTO acme_nonce_key (id, hmac_key) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
                )
                .bind(candidate)
                .execute(&self.write)
                .await?;
                let (key,): (Vec<u8>,) =
                    sqlx::query_as("SELECT hmac_key FROM acme_nonce_key WHERE id = 1")
                        .fetch_one(&self.write)
                        .await?;
                Ok(key)
            }

            pub(super) async fn use_nonce_impl(
                &self,
                nonce: &str,
                expires_at: i64,
                now: i64,
            ) -> $crate::store::Result<bool> {
                let fresh = self.insert_used_nonce(nonce, expires_at).await?;
                if rand::random::<u16>() < 64 {
                    // Now and then, forget used nonces that have expired
                    // (they are refused for their expiry anyway).
                    self.prune_nonces(now).await?;
                }
                Ok(fresh)
            }

            fn eab_row(
                r: (String, String, Vec<u8>, i64, Option<i64>, Option<String>),
            ) -> $crate::store::EabKeyRecord {
                $crate::store::EabKeyRecord {
                    kid: r.0,
                    account_id: r.1,
                    hmac_key: r.2,
                    created_at: r.3,
                    used_at: r.4,
                    acme_account_id: r.5,
                }
            }

            pub(super) async fn create_eab_key_impl(
                &self,
                key: &$crate::store::EabKeyRecord,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                let mut tx = self.write.begin().await?;
                let head = Self::lock_audit_tx(&mut tx).await?;
                let enabled: Option<(bool,)> =
                    sqlx::query_as("SELECT disabled FROM accounts WHERE id = $1")
                        .bind(&key.account_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if enabled.map(|r| r.0) != Some(false) {
                    return Err($crate::store::StoreError::NotFound);
                }
                sqlx::query(
                    "INSERT INTO eab_keys (kid, account_id, hmac_key, created_at) VALUES ($1, $2, $3, $4)",
                )
                .bind(&key.kid)
                .bind(&key.account_id)
                .bind(&key.hmac_key)
                .bind(key.created_at)
                .execute(&mut *tx)
                .await?;
                Self::write_audit_tx(&mut tx, head, &[&event]).await?;
                tx.commit().await?;
                Ok(())
            }

            pub(super) async fn eab_keys_impl(
                &self,
                kid: Option<&str>,
                account_id: Option<&str>,
            ) -> $crate::store::Result<Vec<$crate::store::EabKeyRecord>> {
                let (column, value) = match (kid, account_id) {
                    (Some(k), _) => ("kid", k),
                    (_, Some(a)) => ("account_id", a),
                    _ => return Ok(Vec::new()),
                };
                let rows = sqlx::query_as(&format!(
                    "{} WHERE {column} = $1 ORDER BY created_at DESC, kid LIMIT 100",
                    $crate::store::acme::EAB_COLUMNS
                ))
                .bind(value)
                .fetch_all(&self.read)
                .await?;
                Ok(rows.into_iter().map(Self::eab_row).collect())
            }

            pub(super) async fn create_acme_account_impl(
                &self,
                acme: &$crate::store::AcmeAccountRecord,
                owner: Option<&$crate::store::AccountRecord>,
                eab_kid: Option<&str>,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                let mut tx = self.write.begin().await?;
                let head = Self::lock_audit_tx(&mut tx).await?;
                if let Some(kid) = eab_kid {
                    // Single use: the first binding wins and erases the key.
                    let done = sqlx::query(
                        "UPDATE eab_keys SET used_at = $2, acme_account_id = $3, hmac_key = $4 \
                         WHERE kid = $1 AND used_at IS NULL AND account_id = $5 \
                         AND account_id IN (SELECT id FROM accounts WHERE NOT disabled)",
                    )
                    .bind(kid)
                    .bind(acme.created_at)
                    .bind(&acme.id)
                    .bind(Vec::<u8>::new())
                    .bind(&acme.account_id)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() != 1 {
                        return Err($crate::store::StoreError::Conflict(format!(
                            "the external account binding key {kid} is already used"
                        )));
                    }
                }
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
