//! Storage: one async [`Store`] trait, with SQLite (`sqlite.rs`, the embedded
//! default) and PostgreSQL (`postgres.rs`) behind it. All SQL lives here;
//! domain types go in and out, row types stay private.
//!
//! Issuances are group-committed: concurrent inserts queue for one writer
//! task that commits them together, so many issuances share one fsync.

mod acme;
mod affinity;
mod batch;
mod dashboard;
mod orders;
pub mod postgres;
pub mod recent;
mod revocation;
mod sql;
pub mod sqlite;
pub mod webhooks;

use std::sync::Arc;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::pki::Serial;

pub use acme::{AccountReads, AccountWrites, AcmeAccountRecord, AcmeAccountStatus, EabKeyRecord};
pub use dashboard::{
    AuditQuery, Overview, SessionRecord, UserReads, UserRecord, UserUpdate, UserWrites,
};
pub use revocation::{
    CertificateBody, CertificateQuery, CertificateReads, CertificateStatus, CertificateWrites,
    CrlMark, CrlRecord, ImportedCertificate, NewCrl, Revocation, RevokedRow, RevokedScan,
    StatusRecord,
};
pub use sql::{Backend, SqlStore};

pub use orders::{
    AuthorizationBundle, AuthorizationRecord, AuthorizationStatus, ChallengeKind, ChallengeOutcome,
    ChallengeRecord, ChallengeStatus, Failure, IdentifierKind, IssuanceOrder, OrderBundle,
    OrderQuery, OrderReads, OrderRecord, OrderSource, OrderStatus, OrderUpdate, OrderWrites,
    Transition, Validation,
};

/// Why a storage operation failed. Callers never see sqlx errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The row asked for does not exist.
    #[error("not found")]
    NotFound,
    /// The write would break a rule the store keeps; nothing was written.
    #[error("conflict: {0}")]
    Conflict(Conflict),
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
        let kind = match &e {
            sqlx::Error::RowNotFound => None,
            sqlx::Error::Database(db) if db.is_unique_violation() => Some("conflict"),
            sqlx::Error::Database(db) if db_full(db.code().as_deref()) => Some("disk_full"),
            sqlx::Error::Database(db) if db_unavailable(db.code().as_deref()) => {
                Some("unavailable")
            }
            sqlx::Error::PoolTimedOut => Some("pool_timeout"),
            sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed | sqlx::Error::Io(_) => {
                Some("unavailable")
            }
            _ => Some("other"),
        };
        if let Some(kind) = kind {
            crate::metrics::METRICS.database_errors.inc(&[kind]);
        }
        match e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(Conflict::Unique(unique_constraint(db.as_ref())))
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
            e @ (sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_)) => {
                StoreError::Corrupt(e.to_string())
            }
            other => StoreError::Database(other.to_string()),
        }
    }
}

impl From<crate::words::UnknownWord> for StoreError {
    fn from(e: crate::words::UnknownWord) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

/// Which rule a refused write would have broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    /// A unique constraint: PostgreSQL's constraint name, or SQLite's
    /// `table.column` list (e.g. `users.username`).
    #[error("{0} is taken")]
    Unique(String),
    /// The certificate was revoked already.
    #[error("certificate {0} is already revoked")]
    AlreadyRevoked(Serial),
    /// A certificate with this serial is recorded already (an import).
    #[error("a certificate with serial {0} is recorded already")]
    SerialTaken(Serial),
    /// The order an issuance completes is no longer where the issuance
    /// started (`ready` or `processing`): another request or instance
    /// finished it first, or it was failed meanwhile.
    #[error("order {0} is no longer {1}")]
    OrderMovedOn(String, OrderStatus),
    /// The challenge whose result is being recorded is not `processing`.
    #[error("challenge {0} is not being validated")]
    ChallengeNotProcessing(String),
    /// A transition `Transition::is_legal` refuses.
    #[error("order {order_id}: {transition} is not a transition an order can make")]
    IllegalTransition {
        /// The order.
        order_id: String,
        /// The move asked for.
        transition: Transition,
    },
    /// The external account binding key was used (or its account
    /// disabled) meanwhile.
    #[error("the external account binding key {0} is already used")]
    BindingKeyUsed(String),
    /// The change would leave no enabled admin.
    #[error("this would leave no enabled admin; add or enable another admin first")]
    LastAdmin,
    /// A CRL signed elsewhere whose number is not above the last published.
    #[error("CRL number {given} is not above the last one published for this issuer ({last})")]
    StaleCrlNumber {
        /// The CRL's number.
        given: i64,
        /// The last number published.
        last: i64,
    },
}

/// The unique constraint a database error names: PostgreSQL reports it;
/// SQLite says `UNIQUE constraint failed: table.column, …`.
fn unique_constraint(db: &dyn sqlx::error::DatabaseError) -> String {
    if let Some(name) = db.constraint() {
        return name.to_owned();
    }
    let message = db.message();
    message
        .strip_prefix("UNIQUE constraint failed: ")
        .unwrap_or(message)
        .to_owned()
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

/// How failed sign-ins lock a user (see [`UserWrites::record_failed_sign_in`]).
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

crate::words::words! {
    /// Root or issuing intermediate.
    pub enum IssuerKind("issuer kind") {
        /// Self-signed root.
        Root = "root",
        /// Issuing intermediate.
        Intermediate = "intermediate",
    }
}

/// A CA certificate as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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
    /// Whether it issues now (false: the root, and retired intermediates
    /// and imported CAs, which only publish CRLs and answer OCSP).
    pub active: bool,
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
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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
    /// What they may do.
    pub role: UserRole,
    /// Forces a password change at first sign-in.
    pub must_change_password: bool,
}

crate::words::words! {
    /// What an account may do with its keys (least first).
    pub enum Role("role") {
        /// Orders certificates for itself.
        Requester = "requester",
        /// Also approves and rejects OV orders.
        Reviewer = "reviewer",
        /// Everything.
        Admin = "admin",
    }
}

crate::words::words! {
    /// What a dashboard user may do (least first).
    pub enum UserRole("role") {
        /// Reads everything, changes nothing.
        Auditor = "auditor",
        /// Approves and rejects requests, revokes certificates.
        Reviewer = "reviewer",
        /// Everything.
        Admin = "admin",
    }
}

/// A requester account (REST and, bound by EAB, ACME).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AccountRecord {
    /// Random id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// What its keys may do.
    pub role: Role,
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
/// workflow, which holds the whole [`Store`]. Each concern's reads are
/// their own trait (`OrderReads` in `orders.rs`, …), implemented once for
/// both databases in `sql/`.
pub trait StoreRead:
    Health
    + OrderReads
    + CertificateReads
    + AuditReads
    + UserReads
    + AccountReads
    + webhooks::WebhookReads
{
}

impl<T> StoreRead for T where
    T: Health
        + OrderReads
        + CertificateReads
        + AuditReads
        + UserReads
        + AccountReads
        + webhooks::WebhookReads
{
}

/// The storage contract both backends fulfil: the reads, and every write
/// (each with its audit records, in one transaction).
pub trait Store:
    StoreRead
    + OrderWrites
    + CertificateWrites
    + AuditWrites
    + UserWrites
    + AccountWrites
    + webhooks::WebhookWrites
{
}

impl<T> Store for T where
    T: StoreRead
        + OrderWrites
        + CertificateWrites
        + AuditWrites
        + UserWrites
        + AccountWrites
        + webhooks::WebhookWrites
{
}

/// One connection pool's use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    /// `read`, `write`, or PostgreSQL's group-commit `writer`.
    pub name: &'static str,
    /// Connections open.
    pub size: u32,
    /// Of them, idle.
    pub idle: u32,
    /// The most it opens.
    pub max: u32,
}

/// The store itself: whether it answers, and on what.
#[async_trait]
pub trait Health: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Whether this store is its database's only server for its whole
    /// life (SQLite; PostgreSQL's `serve` with `database.single_instance`):
    /// what it keeps in memory no other instance can change behind its
    /// back.
    fn one_server(&self) -> bool;

    /// Whether it is the only server now: [`Health::one_server`], and on
    /// PostgreSQL holding the database's serve lock to itself (false from
    /// the moment its connection is found lost until it is taken again).
    fn alone(&self) -> bool;

    /// Checks the database answers (for `/readyz`).
    async fn ping(&self) -> Result<()>;

    /// Each connection pool: its name, open connections, idle ones, and
    /// the most it may open (for `/metrics`).
    fn pools(&self) -> Vec<PoolStats>;

    /// Checks that the connections writing certificates, revocations and
    /// audit records flush every commit (SQLite `synchronous` FULL,
    /// PostgreSQL `synchronous_commit` not `off`); for `/readyz`.
    async fn check_durable(&self) -> Result<()>;
}

/// The audit log: a hash chain every write extends.
#[async_trait]
pub trait AuditReads: Send + Sync + 'static {
    /// The end of the audit chain: the last sequence number and its hash.
    async fn audit_head(&self) -> Result<(i64, Vec<u8>)>;

    /// Audit records with `seq > after`, in order, at most `limit`.
    async fn audit_page(&self, after: i64, limit: i64) -> Result<Vec<AuditRecord>>;

    /// Audit records, newest first, filtered.
    async fn audit_search(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>>;
}

#[async_trait]
pub trait AuditWrites: Send + Sync + 'static {
    /// Appends an audit record on its own.
    async fn append_audit(&self, event: AuditEvent) -> Result<()>;
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

/// Connects as `serve` does: as [`connect`], and on PostgreSQL takes the
/// database's serve lock, shared with other instances or, with
/// `single_instance` (`database.single_instance`), to itself: then orders
/// and used ACME nonces are kept in memory, as SQLite's `serve` (always its
/// file's one server) keeps them.
pub async fn connect_serving(url: &str, single_instance: bool) -> Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            postgres::PostgresStore::connect_serving(url, single_instance).await?,
        ))
    } else {
        connect(url).await
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
