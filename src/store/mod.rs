//! Storage: one async [`Store`] trait, with SQLite (`sqlite.rs`, the embedded
//! default) and PostgreSQL (`postgres.rs`) behind it. All SQL lives here;
//! domain types go in and out, row types stay private.
//!
//! Issuances are group-committed: concurrent inserts queue for one writer
//! task that commits them together, so many issuances share one fsync.

mod acme;
mod batch;
mod dashboard;
mod orders;
pub mod postgres;
mod revocation;
mod shared;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::pki::Serial;

pub use acme::{AcmeAccountRecord, EabKeyRecord};
pub use dashboard::{AuditQuery, Overview, SessionRecord, UserRecord, UserUpdate};
pub use revocation::{
    CertificateQuery, CertificateStatus, CrlMark, CrlRecord, NewCrl, Revocation, RevokedRow,
    RevokedScan, StatusRecord,
};

pub use orders::{
    AuthorizationBundle, AuthorizationRecord, ChallengeOutcome, ChallengeRecord, IssuanceOrder,
    OrderBundle, OrderQuery, OrderRecord, OrderStatus, OrderUpdate, Transition,
};

/// Why a storage operation failed. Callers never see sqlx errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The row asked for does not exist.
    #[error("not found")]
    NotFound,
    /// A unique constraint was violated (e.g. a serial issued twice).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database URL is not one hallmark understands.
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    /// The database could not be reached or failed.
    #[error("database error: {0}")]
    Database(String),
    /// The database cannot take the request now (unreachable, every
    /// connection busy, restarting, out of disk); nothing was written and
    /// the same request can be retried.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database's disk is full: nothing was written; writes work again
    /// once space is freed.
    #[error("database disk full: {0}")]
    DiskFull(String),
    /// A stored value could not be decoded.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A write connection would not flush its commits to disk (the
    /// setting it has).
    #[error("durability is off: {0}")]
    NotDurable(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(db.message().to_owned())
            }
            sqlx::Error::Database(db) if db_full(db.code().as_deref()) => {
                StoreError::DiskFull(db.message().to_owned())
            }
            sqlx::Error::Database(db) if db_unavailable(db.code().as_deref()) => {
                StoreError::Unavailable(db.message().to_owned())
            }
            sqlx::Error::PoolTimedOut => {
                StoreError::Unavailable("no database connection became free in time".into())
            }
            sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
                StoreError::Unavailable("the connection pool is closed".into())
            }
            sqlx::Error::Io(e) => StoreError::Unavailable(format!("connection lost: {e}")),
            other => StoreError::Database(other.to_string()),
        }
    }
}

/// Whether a database error code means the disk is full (SQLite
/// `SQLITE_FULL`, PostgreSQL `53100 disk_full`).
fn db_full(code: Option<&str>) -> bool {
    match code {
        Some(c) if c.len() < 5 => c.parse::<i32>().is_ok_and(|n| n & 0xff == 13),
        Some(c) => c == "53100",
        None => false,
    }
}

/// Whether a database error code means "not now" rather than "never":
/// SQLite out of disk, busy or failing I/O; PostgreSQL shutting down,
/// starting up, out of disk or connections, or the connection lost.
fn db_unavailable(code: Option<&str>) -> bool {
    let Some(code) = code else { return false };
    // SQLite: extended result codes (at most 4 digits), the primary one
    // in the low byte; PostgreSQL's SQLSTATEs are always 5 characters.
    if code.len() < 5 {
        return code
            .parse::<i32>()
            .is_ok_and(|n| matches!(n & 0xff, 5 | 6 | 10 | 13 | 14));
    }
    // PostgreSQL SQLSTATEs: 08 connection exceptions, 53 insufficient
    // resources (disk full, too many connections), 57P01-57P03 shutdown
    // and startup, 57014 statement timeout, 55000 (a database not
    // accepting connections), 40001 serialization failure, 40P01 deadlock,
    // 25006 a read-only transaction (a standby during failover).
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "57014" | "55000" | "40001" | "40P01" | "25006"
        )
}

/// How failed sign-ins lock a user (see [`Store::record_failed_sign_in`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignInLimits {
    /// Failures in a row that lock.
    pub max_failures: i64,
    /// How long a lock lasts (seconds).
    pub lock_secs: i64,
    /// Failures further apart than this (seconds) do not add up.
    pub window_secs: i64,
}

/// Result alias for the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Root or issuing intermediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuerKind {
    /// Self-signed root.
    Root,
    /// Issuing intermediate.
    Intermediate,
}

impl IssuerKind {
    fn as_str(self) -> &'static str {
        match self {
            IssuerKind::Root => "root",
            IssuerKind::Intermediate => "intermediate",
        }
    }
}

/// A CA certificate as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerRecord {
    /// URL id (`root`, `int-…`).
    pub id: String,
    /// Root or intermediate.
    pub kind: IssuerKind,
    /// Subject text.
    pub subject: String,
    /// DER.
    pub cert_der: Vec<u8>,
    /// subjectKeyIdentifier.
    pub key_id: Vec<u8>,
    /// Validity.
    pub not_before: i64,
    /// Validity.
    pub not_after: i64,
}

/// A certificate to record.
#[derive(Debug, Clone)]
pub struct NewCertificate {
    /// Its serial.
    pub serial: Serial,
    /// The issuing CA.
    pub issuer_id: String,
    /// Owning account (REST/ACME), none for operator-signed certificates.
    pub account_id: Option<String>,
    /// Order it came from, if any.
    pub order_id: Option<String>,
    /// Subject text.
    pub subject: String,
    /// The certified names.
    pub identifiers: Vec<String>,
    /// Profile name.
    pub profile: String,
    /// Who asked (`operator:cli`, `account:…`, `system`).
    pub requested_by: String,
    /// Validity.
    pub not_before: OffsetDateTime,
    /// Validity.
    pub not_after: OffsetDateTime,
    /// DER.
    pub der: Vec<u8>,
    /// The CRL partition its CRL distribution point names (0: none).
    pub crl_partition: i64,
}

/// An issuance to commit: the certificate, its audit records and what it
/// does to its order, all in one (group-committed) transaction.
#[derive(Debug, Clone)]
pub struct Issuance {
    /// The certificate.
    pub certificate: NewCertificate,
    /// Audit records (at least `certificate.issue`).
    pub events: Vec<AuditEvent>,
    /// The order created or completed with it, if any.
    pub order: Option<IssuanceOrder>,
}

/// A stored certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    /// Its serial.
    pub serial: Serial,
    /// Issuing CA id.
    pub issuer_id: String,
    /// Owning account.
    pub account_id: Option<String>,
    /// Order.
    pub order_id: Option<String>,
    /// Subject text.
    pub subject: String,
    /// Certified names.
    pub identifiers: Vec<String>,
    /// Profile name.
    pub profile: String,
    /// Who asked.
    pub requested_by: String,
    /// Validity (Unix seconds).
    pub not_before: i64,
    /// Validity (Unix seconds).
    pub not_after: i64,
    /// DER.
    pub der: Vec<u8>,
    /// When revoked (Unix seconds), if revoked.
    pub revoked_at: Option<i64>,
    /// RFC 5280 CRLReason code, if revoked.
    pub revocation_reason: Option<i64>,
    /// When the key was compromised, if the revoker said.
    pub invalidity_date: Option<i64>,
    /// Its CRL partition (0: none).
    pub crl_partition: i64,
    /// When recorded.
    pub created_at: i64,
}

/// Something that happened, to append to the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// When.
    pub at: OffsetDateTime,
    /// Who (`operator:cli`, `user:alice`, `account:…`, `system`).
    pub actor: String,
    /// What (`certificate.issue`, `user.create`, …).
    pub action: String,
    /// What it was done to (a serial, an order id, a user name).
    pub subject: String,
    /// Details as JSON.
    pub details: serde_json::Value,
}

/// An audit record as stored, with its place in the hash chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Sequence number, from 1, without gaps.
    pub seq: i64,
    /// When (Unix seconds).
    pub at: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// To what.
    pub subject: String,
    /// JSON text.
    pub details: String,
    /// Hash of the record before (zeros for the first).
    pub prev_hash: Vec<u8>,
    /// This record's hash.
    pub hash: Vec<u8>,
}

/// The hash that chains audit records: SHA-256 over the previous hash and
/// every field, each length-prefixed so fields cannot run into each other.
pub fn audit_hash(
    prev_hash: &[u8],
    seq: i64,
    at: i64,
    actor: &str,
    action: &str,
    subject: &str,
    details: &str,
) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"hallmark-audit-v1");
    h.update(prev_hash);
    h.update(seq.to_be_bytes());
    h.update(at.to_be_bytes());
    for field in [actor, action, subject, details] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().to_vec()
}

/// A dashboard user to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Random id.
    pub id: String,
    /// Sign-in name.
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// `admin`, `reviewer` or `auditor`.
    pub role: String,
    /// Forces a password change at first sign-in.
    pub must_change_password: bool,
}

/// A requester account (REST and, bound by EAB, ACME).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// Random id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// `requester`, `reviewer` or `admin`.
    pub role: String,
    /// A disabled account cannot authenticate.
    pub disabled: bool,
    /// When created (Unix seconds).
    pub created_at: i64,
}

/// An API key to store: only the SHA-256 of the token is kept.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// Random id.
    pub id: String,
    /// SHA-256 of the token.
    pub key_hash: [u8; 32],
}

/// What the storage can be asked without changing anything: the side the
/// HTTP layer holds (`Authority::reads`). Every change goes through the
/// workflow, which holds the whole [`Store`].
#[async_trait]
pub trait StoreRead: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Checks the database answers (for `/readyz`).
    async fn ping(&self) -> Result<()>;

    /// Checks that the connections writing certificates, revocations and
    /// audit records flush every commit (SQLite `synchronous` FULL,
    /// PostgreSQL `synchronous_commit` not `off`); for `/readyz`.
    async fn check_durable(&self) -> Result<()>;

    /// Every CA certificate, root first.
    async fn issuers(&self) -> Result<Vec<IssuerRecord>>;

    /// One order with its authorizations and challenges.
    async fn order(&self, id: &str) -> Result<OrderBundle>;

    /// A page of orders, newest first.
    async fn orders(&self, query: &OrderQuery) -> Result<Vec<OrderRecord>>;

    /// When `account_id` last proved control of the identifier, if it did at
    /// or after `since` (Unix seconds).
    async fn last_validation(
        &self,
        account_id: &str,
        identifier_type: &str,
        identifier_value: &str,
        since: i64,
    ) -> Result<Option<i64>>;

    /// How many unexpired `pending` authorizations `account_id` holds.
    async fn pending_authorizations(&self, account_id: &str, now: i64) -> Result<i64>;

    /// Challenges `processing` since before `attempted_before` (their
    /// validator died with its process): `(challenge, order, attempted_at)`.
    async fn stale_challenges(
        &self,
        attempted_before: i64,
        limit: i64,
    ) -> Result<Vec<(String, String, i64)>>;

    /// Orders whose issuance should be (re)started: REST DV orders `ready`
    /// since before `ready_before`, and orders `processing` since before
    /// `processing_before`.
    async fn orders_to_resume(
        &self,
        ready_before: i64,
        processing_before: i64,
        limit: i64,
    ) -> Result<Vec<OrderRecord>>;

    /// Unfinished orders (`pending`, `ready`, `awaiting_approval`) whose
    /// `expires_at` has passed.
    async fn expired_orders(&self, now: i64, limit: i64) -> Result<Vec<OrderRecord>>;

    /// One certificate by serial.
    async fn certificate(&self, serial: &Serial) -> Result<CertificateRecord>;

    /// How many certificates are recorded.
    async fn count_certificates(&self) -> Result<i64>;

    /// The end of the audit chain: the last sequence number and its hash.
    async fn audit_head(&self) -> Result<(i64, Vec<u8>)>;

    /// Audit records with `seq > after`, in order, at most `limit`.
    async fn audit_page(&self, after: i64, limit: i64) -> Result<Vec<AuditRecord>>;

    /// How many dashboard users exist.
    async fn count_users(&self) -> Result<i64>;

    /// Whether a key (SHA-256 of its SubjectPublicKeyInfo) was revoked for
    /// keyCompromise.
    async fn key_blocked(&self, spki_sha256: &[u8]) -> Result<bool>;

    /// What OCSP needs about a serial, if it was issued here.
    async fn certificate_status(&self, serial: &Serial) -> Result<Option<StatusRecord>>;

    /// A page of certificates.
    async fn certificates(&self, query: &CertificateQuery) -> Result<Vec<CertificateRecord>>;

    /// Streams the revoked certificates `scan` selects into `sink`, from one
    /// read snapshot, and returns the audit sequence number of that
    /// snapshot (every revocation at or below it is included).
    async fn scan_revoked(
        &self,
        scan: &RevokedScan,
        sink: &mut (dyn FnMut(RevokedRow) + Send),
    ) -> Result<i64>;

    /// The newest CRL of every scope, without DER.
    async fn crl_heads(&self) -> Result<Vec<CrlRecord>>;

    /// The durable staleness marks: for every `(issuer, partition)` with a
    /// revocation, the audit sequence number of its newest revocation
    /// (partition 0 stands for the issuer's complete and delta CRLs). A
    /// CRL whose `snapshot_seq` is below its mark is missing a revocation.
    async fn crl_marks(&self) -> Result<Vec<CrlMark>>;

    /// The DER of the CRL `head` names.
    async fn crl_der(&self, head: &CrlRecord) -> Result<Vec<u8>>;

    /// The partitions (> 0) holding revoked certificates of an issuer.
    async fn revoked_partitions(&self, issuer_id: &str) -> Result<Vec<i64>>;

    /// A dashboard user by name (read from the writer, so a sign-in sees
    /// the newest failure count).
    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>>;

    /// Every dashboard user, by name.
    async fn users(&self) -> Result<Vec<UserRecord>>;

    /// A session by the hash of its cookie, with its user.
    async fn session(&self, id_hash: &[u8]) -> Result<Option<(SessionRecord, UserRecord)>>;

    /// Every requester account, newest first.
    async fn accounts(&self) -> Result<Vec<AccountRecord>>;

    /// Audit records, newest first, filtered.
    async fn audit_search(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>>;

    /// The dashboard overview's counts at `now`.
    async fn overview(&self, now: i64) -> Result<Overview>;

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

    /// The enabled account owning an unrevoked API key with this hash, and
    /// the stored hash (for a constant-time comparison by the caller).
    async fn account_by_api_key(
        &self,
        key_hash: &[u8; 32],
    ) -> Result<Option<(AccountRecord, Vec<u8>)>>;
}

/// The storage contract both backends fulfil: the reads, and every write
/// (each with its audit records, in one transaction).
#[async_trait]
pub trait Store: StoreRead {
    /// Inserts or refreshes a CA certificate.
    async fn upsert_issuer(&self, issuer: &IssuerRecord) -> Result<()>;

    /// Records an issued certificate and its audit record in one
    /// transaction, group-committed with concurrent issuances.
    async fn insert_certificate(&self, cert: NewCertificate, event: AuditEvent) -> Result<()> {
        self.insert_issuance(Issuance {
            certificate: cert,
            events: vec![event],
            order: None,
        })
        .await
    }

    /// Records an issuance — certificate, audit records, and the order it
    /// creates or completes — in one transaction, group-committed with
    /// concurrent issuances. `Conflict` if the order was not `processing`.
    async fn insert_issuance(&self, issuance: Issuance) -> Result<()>;

    /// Creates an order with its authorizations and challenges, and its
    /// audit records, in one transaction.
    async fn create_order(&self, bundle: &OrderBundle, events: Vec<AuditEvent>) -> Result<()>;

    /// Moves a challenge from `pending` to `processing` if it, its
    /// authorization and its order are all still `pending`; `false` if not.
    async fn claim_challenge(
        &self,
        challenge_id: &str,
        order_id: &str,
        at: i64,
        event: AuditEvent,
    ) -> Result<bool>;

    /// Takes over a stale `processing` challenge if nobody else has since
    /// (its `attempted_at` is still `attempted_at_was`).
    async fn reclaim_challenge(
        &self,
        challenge_id: &str,
        attempted_at_was: i64,
        at: i64,
    ) -> Result<bool>;

    /// Records a validation's result: the challenge and its authorization
    /// become valid or invalid; a failure makes the order invalid; the last
    /// valid authorization moves the order to `outcome.when_all_valid`.
    /// `on_order_change` is written too if the order moved. Returns the
    /// order's new status if it changed; `Conflict` if the challenge was not
    /// `processing`.
    async fn finish_challenge(
        &self,
        outcome: &ChallengeOutcome,
        events: Vec<AuditEvent>,
        on_order_change: Vec<AuditEvent>,
    ) -> Result<Option<OrderStatus>>;

    /// Makes `transition` (setting `update`'s fields) with its audit
    /// records; `false` (and nothing written) if the order was not in the
    /// transition's starting status. An illegal transition is refused.
    async fn transition_order(
        &self,
        order_id: &str,
        transition: Transition,
        update: &OrderUpdate,
        at: i64,
        events: Vec<AuditEvent>,
    ) -> Result<bool>;

    /// Appends an audit record on its own.
    async fn append_audit(&self, event: AuditEvent) -> Result<()>;

    /// Creates a dashboard user and its audit record in one transaction;
    /// `Conflict` if the name is taken.
    async fn create_user(&self, user: NewUser, event: AuditEvent) -> Result<()>;

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

    /// Revokes a certificate with its audit record in one transaction;
    /// `NotFound` if there is no such certificate, `Conflict` (and nothing
    /// written) if it is already revoked.
    async fn revoke_certificate(&self, revocation: &Revocation, event: AuditEvent) -> Result<()>;

    /// Publishes a CRL: under the audit-head lock, takes the issuer's next
    /// CRL number, calls `sign` with it for the DER, stores the CRL (keeping
    /// the newest two of its scope) and appends `event` (with the number
    /// added to its details). `None` (nothing written) if a CRL of the same
    /// scope was already published from a later snapshot.
    async fn publish_crl(
        &self,
        crl: &NewCrl,
        sign: &mut (dyn FnMut(i64) -> std::result::Result<Vec<u8>, String> + Send),
        event: AuditEvent,
    ) -> Result<Option<CrlRecord>>;

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
    async fn use_nonce(&self, nonce: &str, expires_at: i64, now: i64) -> Result<bool>;

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
        status: Option<&str>,
        key: Option<(&str, &str)>,
        event: AuditEvent,
    ) -> Result<()>;
}

/// Opens the store a URL names (`sqlite://…` or `postgres://…`) and applies
/// its migrations.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresStore::connect(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(redact_url(url)))
    }
}

/// A URL with any password replaced, for logs and messages: the one
/// after `user:` before the host, and `password=` in the query.
pub fn redact_url(url: &str) -> String {
    let mut out = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    };
    if let Some(q) = out.find('?') {
        let (base, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{base}{}", query.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("postgres://u:secret@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(redact_url("sqlite://a.db"), "sqlite://a.db");
        assert_eq!(
            redact_url("postgres://db/x?user=u&password=secret&sslmode=require"),
            "postgres://db/x?user=u&password=***&sslmode=require"
        );
        assert_eq!(redact_url("mysql://u:secret@db/x"), "mysql://u:***@db/x");
    }

    #[tokio::test]
    async fn an_unsupported_url_is_refused_without_its_password() {
        let Err(e) = connect("mysql://u:hunter2@db/x").await else {
            panic!("mysql is not supported");
        };
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn audit_hash_depends_on_every_field() {
        let base = audit_hash(&[0; 32], 1, 2, "a", "b", "c", "{}");
        assert_ne!(base, audit_hash(&[1; 32], 1, 2, "a", "b", "c", "{}"));
        assert_ne!(base, audit_hash(&[0; 32], 2, 2, "a", "b", "c", "{}"));
        assert_ne!(base, audit_hash(&[0; 32], 1, 2, "ab", "", "c", "{}"));
        assert_ne!(base, audit_hash(&[0; 32], 1, 2, "a", "b", "c", "{ }"));
    }
}
