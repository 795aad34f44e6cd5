//! The SQL of requester accounts, API keys, ACME accounts and EAB keys, and used ACME nonces.

use async_trait::async_trait;

use super::{Backend, SqlStore};
use crate::store::*;

const INSERT_ACCOUNT: &str =
    "INSERT INTO accounts (id, name, role, disabled, created_at) VALUES ($1, $2, $3, $4, $5)";

const INSERT_API_KEY: &str =
    "INSERT INTO api_keys (id, account_id, key_hash, created_at) VALUES ($1, $2, $3, $4)";

#[derive(sqlx::FromRow)]
struct AccountKeyRow {
    #[sqlx(flatten)]
    account: AccountRecord,
    key_hash: Vec<u8>,
}

/// Looked up by the key's hash (unique index): one indexed read per request.
const SELECT_ACCOUNT_BY_KEY: &str =
    "SELECT a.id, a.name, a.role, a.disabled, a.created_at, k.key_hash \
     FROM api_keys k JOIN accounts a ON a.id = k.account_id \
     WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND NOT a.disabled";

/// Ends the unfinished orders of an account being disabled: the
/// `Transition::Fail` of each unfinished status, in one statement.
const END_ORDERS_OF_DISABLED_ACCOUNT: &str = "UPDATE orders SET status = 'invalid', \
     updated_at = $2, error = $3 WHERE account_id = $1 \
     AND status IN ('pending', 'ready', 'processing', 'awaiting_approval') RETURNING id";

/// The problem an order of a disabled account ends with.
fn account_disabled_problem() -> String {
    serde_json::json!({
        "type": crate::acme_error::AcmeError::Unauthorized.urn(),
        "detail": "the account that placed this order was disabled; the order will not be issued",
    })
    .to_string()
}

const EAB_COLUMNS: &str =
    "SELECT kid, account_id, hmac_key, created_at, used_at, acme_account_id FROM eab_keys";

const ACME_ACCOUNT_COLUMNS: &str =
    "SELECT id, COALESCE(account_id, '') AS account_id, jwk_thumbprint, jwk, contact, status, \
     created_at, COALESCE((SELECT a.disabled FROM accounts a \
     WHERE a.id = acme_accounts.account_id), FALSE) AS owner_disabled FROM acme_accounts";

impl<B: Backend> SqlStore<B>
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
    /// The ACME account whose `column` (a unique one) is `value`.
    async fn acme_account_where(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Option<AcmeAccountRecord>> {
        let row = sqlx::query_as(&format!("{ACME_ACCOUNT_COLUMNS} WHERE {column} = $1"))
            .bind(value)
            .fetch_optional(&self.read)
            .await?;
        Ok(row)
    }
}

#[async_trait]
impl<B: Backend> AccountReads for SqlStore<B>
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
    async fn accounts(&self) -> Result<Vec<AccountRecord>> {
        Ok(sqlx::query_as(
            "SELECT id, name, role, disabled, created_at FROM accounts ORDER BY created_at DESC, id",
        )
        .fetch_all(&self.read)
        .await?)
    }

    async fn account_by_api_key(
        &self,
        key_hash: &[u8; 32],
    ) -> Result<Option<(AccountRecord, Vec<u8>)>> {
        let changes = self.recent.changes.now();
        if let Some(hit) = self.recent.keys.get(key_hash, changes) {
            return Ok(Some(hit));
        }
        let row: Option<AccountKeyRow> = sqlx::query_as(SELECT_ACCOUNT_BY_KEY)
            .bind(key_hash.to_vec())
            .fetch_optional(&self.read)
            .await?;
        let found = row.map(|r| (r.account, r.key_hash));
        if let Some(found) = &found {
            self.recent.keys.keep(*key_hash, changes, found.clone());
        }
        Ok(found)
    }

    async fn eab_key(&self, kid: &str) -> Result<Option<EabKeyRecord>> {
        let row = sqlx::query_as(&format!("{EAB_COLUMNS} WHERE kid = $1"))
            .bind(kid)
            .fetch_optional(&self.read)
            .await?;
        Ok(row)
    }

    async fn eab_keys_of(&self, account_id: &str) -> Result<Vec<EabKeyRecord>> {
        let rows = sqlx::query_as(&format!(
            "{EAB_COLUMNS} WHERE account_id = $1 ORDER BY created_at DESC, kid LIMIT 100"
        ))
        .bind(account_id)
        .fetch_all(&self.read)
        .await?;
        Ok(rows)
    }

    async fn acme_account(&self, id: &str) -> Result<Option<AcmeAccountRecord>> {
        let changes = self.recent.changes.now();
        let key = id.to_owned();
        if let Some(hit) = self.recent.acme_accounts.get(&key, changes) {
            return Ok(Some(hit));
        }
        let found = self.acme_account_where("id", id).await?;
        if let Some(found) = &found {
            self.recent.acme_accounts.keep(key, changes, found.clone());
        }
        Ok(found)
    }

    async fn acme_account_by_key(&self, thumbprint: &str) -> Result<Option<AcmeAccountRecord>> {
        self.acme_account_where("jwk_thumbprint", thumbprint).await
    }

    async fn acme_account_of(&self, account_id: &str) -> Result<Option<AcmeAccountRecord>> {
        self.acme_account_where("account_id", account_id).await
    }
}

#[async_trait]
impl<B: Backend> AccountWrites for SqlStore<B>
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
    async fn create_account(
        &self,
        account: AccountRecord,
        key: NewApiKey,
        event: AuditEvent,
    ) -> Result<()> {
        let mut tx = self.write.begin().await?;
        Self::append_audit_tx(&mut tx, &[&event]).await?;
        sqlx::query(INSERT_ACCOUNT)
            .bind(&account.id)
            .bind(&account.name)
            .bind(account.role)
            .bind(account.disabled)
            .bind(account.created_at)
            .execute(&mut *tx)
            .await?;
        sqlx::query(INSERT_API_KEY)
            .bind(&key.id)
            .bind(&account.id)
            .bind(key.key_hash.to_vec())
            .bind(account.created_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn revoke_api_key(&self, key_id: &str, at: i64, event: AuditEvent) -> Result<()> {
        let mut tx = self.write.begin().await?;
        Self::append_audit_tx(&mut tx, &[&event]).await?;
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(at)
                .bind(key_id)
                .execute(&mut *tx)
                .await?;
        if B::rows_affected(&done) == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        self.recent.changes.bump();
        Ok(())
    }

    async fn rotate_api_key(
        &self,
        account_id: &str,
        key: NewApiKey,
        at: i64,
        event: AuditEvent,
    ) -> Result<()> {
        let mut tx = self.write.begin().await?;
        Self::append_audit_tx(&mut tx, &[&event]).await?;
        let exists: Option<(String,)> = sqlx::query_as("SELECT id FROM accounts WHERE id = $1")
            .bind(account_id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE account_id = $2 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(account_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(INSERT_API_KEY)
            .bind(&key.id)
            .bind(account_id)
            .bind(key.key_hash.to_vec())
            .bind(at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.recent.changes.bump();
        Ok(())
    }

    async fn set_account_email(
        &self,
        account_id: &str,
        email: Option<&str>,
        event: AuditEvent,
    ) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let head = Self::lock_audit(&mut tx).await?;
        let done = sqlx::query("UPDATE accounts SET email = $2 WHERE id = $1")
            .bind(account_id)
            .bind(email.map(str::to_owned))
            .execute(&mut *tx)
            .await?;
        if B::rows_affected(&done) != 1 {
            return Err(StoreError::NotFound);
        }
        Self::commit_audited(tx, head, &[&event]).await?;
        Ok(())
    }

    async fn set_account_disabled(
        &self,
        account_id: &str,
        disabled: bool,
        event: AuditEvent,
    ) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let head = Self::lock_audit(&mut tx).await?;
        let done = sqlx::query("UPDATE accounts SET disabled = $2 WHERE id = $1")
            .bind(account_id)
            .bind(disabled)
            .execute(&mut *tx)
            .await?;
        if B::rows_affected(&done) != 1 {
            return Err(StoreError::NotFound);
        }
        let mut events = vec![event];
        if disabled {
            // Its unfinished orders end with it: validations
            // finishing later find no pending order, reviewers find
            // nothing to approve, and an issuance in flight finds
            // its order no longer `processing` and is rolled back.
            let ended: Vec<(String,)> = sqlx::query_as(END_ORDERS_OF_DISABLED_ACCOUNT)
                .bind(account_id)
                .bind(events[0].at.unix_timestamp())
                .bind(account_disabled_problem())
                .fetch_all(&mut *tx)
                .await?;
            for (order_id,) in ended {
                events.push(AuditEvent {
                    at: events[0].at,
                    actor: events[0].actor.clone(),
                    action: "order.invalid".into(),
                    subject: order_id,
                    details: serde_json::json!({ "reason": "account disabled" }),
                });
            }
        }
        let refs: Vec<&AuditEvent> = events.iter().collect();
        let committed = Self::commit_audited(tx, head, &refs).await;
        // The account's unfinished orders may have ended (whatever the
        // commit's outcome, no kept view is trusted after it).
        self.recent.orders.forget_all();
        committed?;
        self.recent.changes.bump();
        Ok(())
    }

    async fn acme_nonce_key(&self, candidate: &[u8]) -> Result<Vec<u8>> {
        sqlx::query(
            "INSERT INTO acme_nonce_key (id, hmac_key) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
        )
        .bind(candidate)
        .execute(&self.write)
        .await?;
        let (key,): (Vec<u8>,) = sqlx::query_as("SELECT hmac_key FROM acme_nonce_key WHERE id = 1")
            .fetch_one(&self.write)
            .await?;
        Ok(key)
    }

    async fn use_nonce(&self, nonce: &str, expires_at: i64) -> Result<bool> {
        let Some(nonces) = &self.nonces else {
            return Err(StoreError::Database(
                "this database's one server records used ACME nonces in memory".into(),
            ));
        };
        let used = crate::store::batch::UsedNonce {
            nonce: nonce.to_owned(),
            expires_at,
        };
        nonces.submit(used).await
    }

    async fn create_acme_account(
        &self,
        acme: &AcmeAccountRecord,
        owner: Option<&AccountRecord>,
        eab_kid: Option<&str>,
        event: AuditEvent,
    ) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let head = Self::lock_audit(&mut tx).await?;
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
            if B::rows_affected(&done) != 1 {
                return Err(StoreError::Conflict(Conflict::BindingKeyUsed(
                    kid.to_owned(),
                )));
            }
        }
        if let Some(a) = owner {
            sqlx::query(INSERT_ACCOUNT)
                .bind(&a.id)
                .bind(&a.name)
                .bind(a.role)
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
        .bind(acme.status.as_str())
        .bind(acme.created_at)
        .execute(&mut *tx)
        .await?;
        Self::commit_audited(tx, head, &[&event]).await
    }

    async fn create_eab_key(&self, key: &EabKeyRecord, event: AuditEvent) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let head = Self::lock_audit(&mut tx).await?;
        let enabled: Option<(bool,)> =
            sqlx::query_as("SELECT disabled FROM accounts WHERE id = $1")
                .bind(&key.account_id)
                .fetch_optional(&mut *tx)
                .await?;
        if enabled.map(|r| r.0) != Some(false) {
            return Err(StoreError::NotFound);
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
        Self::commit_audited(tx, head, &[&event]).await
    }

    async fn update_acme_account(
        &self,
        id: &str,
        contact: Option<&str>,
        status: Option<AcmeAccountStatus>,
        key: Option<(&str, &str)>,
        event: AuditEvent,
    ) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let head = Self::lock_audit(&mut tx).await?;
        let done = sqlx::query(
            "UPDATE acme_accounts SET contact = COALESCE($2, contact), \
             status = COALESCE($3, status), jwk_thumbprint = COALESCE($4, jwk_thumbprint), \
             jwk = COALESCE($5, jwk) WHERE id = $1 AND status = 'valid'",
        )
        .bind(id)
        .bind(contact)
        .bind(status.map(AcmeAccountStatus::as_str))
        .bind(key.map(|k| k.0))
        .bind(key.map(|k| k.1))
        .execute(&mut *tx)
        .await?;
        if B::rows_affected(&done) != 1 {
            return Err(StoreError::NotFound);
        }
        Self::commit_audited(tx, head, &[&event]).await?;
        self.recent.changes.bump();
        Ok(())
    }
}
