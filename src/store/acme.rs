//! ACME state in the database: replay nonces (single use, shared by every
//! instance) and ACME accounts, each bound to a hallmark account that owns
//! its orders and certificates.

use async_trait::async_trait;

use super::{AccountRecord, AuditEvent, NewApiKey, Result};

crate::words::words! {
    /// Where an ACME account is (RFC 8555 §7.1.2; hallmark never revokes
    /// one itself).
    pub enum AcmeAccountStatus("account status") {
        /// In use.
        Valid = "valid",
        /// Its holder deactivated it; it can do nothing more.
        Deactivated = "deactivated",
        /// Revoked by the server.
        Revoked = "revoked",
    }
}

/// An ACME account as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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
    /// Where it is.
    pub status: AcmeAccountStatus,
    /// When created.
    pub created_at: i64,
    /// The owning hallmark account is disabled (read, never written).
    pub owner_disabled: bool,
}

/// An external account binding key (RFC 8555 §7.3.4) as stored. The HMAC
/// key is single use: binding an ACME account erases it.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
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

/// What can be read about requester accounts, API keys, ACME accounts and EAB keys.
#[async_trait]
pub trait AccountReads: Send + Sync + 'static {
    /// Every requester account, newest first.
    async fn accounts(&self) -> Result<Vec<AccountRecord>>;

    /// The enabled account owning an unrevoked API key with this hash, and
    /// the stored hash (for a constant-time comparison by the caller).
    async fn account_by_api_key(
        &self,
        key_hash: &[u8; 32],
    ) -> Result<Option<(AccountRecord, Vec<u8>)>>;

    /// An external account binding key by kid.
    async fn eab_key(&self, kid: &str) -> Result<Option<EabKeyRecord>>;

    /// An account's external account binding keys, newest first (at most 100).
    async fn eab_keys_of(&self, account_id: &str) -> Result<Vec<EabKeyRecord>>;

    /// An ACME account by id.
    async fn acme_account(&self, id: &str) -> Result<Option<AcmeAccountRecord>>;

    /// An ACME account by its key's thumbprint.
    async fn acme_account_by_key(&self, thumbprint: &str) -> Result<Option<AcmeAccountRecord>>;

    /// The ACME account bound to a hallmark account, if any.
    async fn acme_account_of(&self, account_id: &str) -> Result<Option<AcmeAccountRecord>>;
}

/// Every change to requester accounts, API keys, ACME accounts, EAB keys and used nonces.
#[async_trait]
pub trait AccountWrites: Send + Sync + 'static {
    /// Creates an account with its first API key and the audit record, in
    /// one transaction.
    async fn create_account(
        &self,
        account: AccountRecord,
        key: NewApiKey,
        event: AuditEvent,
    ) -> Result<()>;

    /// Revokes one API key, with its audit record; `NotFound` if there is
    /// no unrevoked key with this id.
    async fn revoke_api_key(&self, key_id: &str, at: i64, event: AuditEvent) -> Result<()>;

    /// Revokes every key of an account and adds `key`, with the audit
    /// record, in one transaction; `NotFound` if the account does not exist.
    async fn rotate_api_key(
        &self,
        account_id: &str,
        key: NewApiKey,
        at: i64,
        event: AuditEvent,
    ) -> Result<()>;

    /// Sets (or, with `None`, clears) where an account's notices are
    /// mailed, with its audit record; `NotFound` if there is no account.
    async fn set_account_email(
        &self,
        account_id: &str,
        email: Option<&str>,
        event: AuditEvent,
    ) -> Result<()>;

    /// Disables or enables an account, with its audit record.
    async fn set_account_disabled(
        &self,
        account_id: &str,
        disabled: bool,
        event: AuditEvent,
    ) -> Result<()>;

    /// The key ACME nonces are MACed with, shared by every instance:
    /// `candidate` becomes it if there is none yet.
    async fn acme_nonce_key(&self, candidate: &[u8]) -> Result<Vec<u8>>;

    /// Records the use of an (authentic, unexpired) ACME nonce: `true` the
    /// first time, `false` on a replay.
    async fn use_nonce(&self, nonce: &str, expires_at: i64) -> Result<bool>;

    /// Creates an ACME account (and, with `owner`, the hallmark account
    /// that will own its orders) with its audit record.
    async fn create_acme_account(
        &self,
        acme: &AcmeAccountRecord,
        owner: Option<&AccountRecord>,
        eab_kid: Option<&str>,
        event: AuditEvent,
    ) -> Result<()>;

    /// Issues an external account binding key for an enabled account, with
    /// its audit record; `NotFound` if the account is missing or disabled.
    async fn create_eab_key(&self, key: &EabKeyRecord, event: AuditEvent) -> Result<()>;

    /// Changes a valid ACME account's contact, status or key (thumbprint,
    /// JWK), with its audit record; `NotFound` if it is not valid.
    async fn update_acme_account(
        &self,
        id: &str,
        contact: Option<&str>,
        status: Option<AcmeAccountStatus>,
        key: Option<(&str, &str)>,
        event: AuditEvent,
    ) -> Result<()>;
}
