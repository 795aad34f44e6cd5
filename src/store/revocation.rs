//! Revocation, certificate listing and CRL storage: the types and the SQL
//! both backends share. CRL entries are streamed out of a read snapshot
//! (never collected), and a CRL is published under the audit-head lock with
//! a number from `crl_numbers`, only if nothing fresher was published.

use std::sync::Arc;

use async_trait::async_trait;

use super::{AuditEvent, CertificateRecord, Issuance, IssuerRecord, NewCertificate, Result};

use crate::pki::Serial;

/// A revocation to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The certificate.
    pub serial: Serial,
    /// When (Unix seconds).
    pub at: i64,
    /// CRLReason code.
    pub reason: i64,
    /// When the key was compromised, if known (Unix seconds).
    pub invalidity_date: Option<i64>,
    /// For a keyCompromise: the SHA-256 of the certificate's
    /// SubjectPublicKeyInfo, blocked for every later CSR.
    pub blocked_key: Option<Vec<u8>>,
}

crate::words::words! {
    /// The lifecycle state of a certificate.
    pub enum CertificateStatus("certificate status") {
        /// Not revoked and not expired.
        Valid = "valid",
        /// Revoked.
        Revoked = "revoked",
        /// Past notAfter, not revoked.
        Expired = "expired",
    }
}

impl CertificateStatus {
    /// The state of `cert` at `now` (Unix seconds).
    pub fn of(cert: &CertificateRecord, now: i64) -> Self {
        if cert.revoked_at.is_some() {
            CertificateStatus::Revoked
        } else if cert.not_after < now {
            CertificateStatus::Expired
        } else {
            CertificateStatus::Valid
        }
    }
}

/// A page of certificates, newest first, keyed by `(created_at, serial)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateQuery {
    /// Only this account's.
    pub account_id: Option<String>,
    /// Only in this state (at `now`).
    pub status: Option<CertificateStatus>,
    /// Part of a serial, a name or the subject (lower case).
    pub search: Option<String>,
    /// Only older than this `(created_at, serial)`.
    pub before: Option<(i64, String)>,
    /// At most this many.
    pub limit: i64,
    /// The time `status` is judged at.
    pub now: i64,
}

/// What OCSP needs to know about a serial.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StatusRecord {
    /// Issuing CA id.
    pub issuer_id: String,
    /// End of validity.
    pub not_after: i64,
    /// When revoked.
    pub revoked_at: Option<i64>,
    /// CRLReason code.
    pub revocation_reason: Option<i64>,
}

/// Which revoked certificates to stream into a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedScan {
    /// The issuer.
    pub issuer_id: String,
    /// Only this partition (none: all of the issuer's).
    pub partition: Option<i64>,
    /// Only revoked at or after this (delta CRLs).
    pub revoked_since: Option<i64>,
    /// Only certificates still valid at this time (expired ones leave).
    pub not_after_from: i64,
}

/// One revoked certificate, as streamed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedRow {
    /// Serial bytes.
    pub serial: Serial,
    /// When revoked.
    pub revoked_at: i64,
    /// CRLReason code.
    pub reason: i64,
    /// Invalidity date.
    pub invalidity_date: Option<i64>,
}

/// A CRL to publish (the number is assigned by the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCrl {
    /// The issuer.
    pub issuer_id: String,
    /// 0 for the complete CRL, else the partition.
    pub partition: i64,
    /// Whether this is a delta CRL.
    pub delta: bool,
    /// thisUpdate.
    pub this_update: i64,
    /// nextUpdate.
    pub next_update: i64,
    /// The audit sequence number its entries were read at.
    pub snapshot_seq: i64,
    /// Number of entries.
    pub entries: i64,
    /// The number, when the CRL was signed elsewhere (an offline root's);
    /// it must be above the issuer's last. `None`: the store takes the next.
    pub number: Option<i64>,
}

/// A published CRL.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CrlRecord {
    /// The issuer.
    pub issuer_id: String,
    /// 0 for the complete CRL, else the partition.
    pub partition: i64,
    /// Whether this is a delta CRL.
    pub delta: bool,
    /// CRL number.
    pub number: i64,
    /// thisUpdate.
    pub this_update: i64,
    /// nextUpdate.
    pub next_update: i64,
    /// Number of entries.
    pub entries: i64,
    /// The audit sequence number its entries were read at.
    pub snapshot_seq: i64,
    /// DER (empty in [`CertificateReads::crl_heads`]).
    #[sqlx(default)]
    pub der: Vec<u8>,
}

/// The newest revocation of one CRL scope (see [`CertificateReads::crl_marks`]).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CrlMark {
    /// The issuer.
    pub issuer_id: String,
    /// 0 for the complete (and delta) CRL, else the partition.
    pub partition: i64,
    /// The audit sequence number of the newest revocation in the scope.
    pub seq: i64,
}

/// What never changes of a certificate once issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateBody {
    /// Owning account.
    pub account_id: Option<String>,
    /// Issuing CA id.
    pub issuer_id: String,
    /// DER.
    pub der: Vec<u8>,
}

/// What can be read about issuers, certificates, revocations and CRLs.
#[async_trait]
pub trait CertificateReads: Send + Sync + 'static {
    /// Every CA certificate, root first.
    async fn issuers(&self) -> Result<Vec<IssuerRecord>>;

    /// One certificate by serial.
    async fn certificate(&self, serial: &Serial) -> Result<CertificateRecord>;

    /// What never changes of a certificate (its DER, issuer and owner), by
    /// serial: from memory where this process issued it in the last
    /// minute (`store/recent.rs`, [`crate::store::recent::Written`]),
    /// else from the database.
    async fn certificate_body(&self, serial: &Serial) -> Result<Arc<CertificateBody>>;

    /// How many certificates are recorded.
    async fn count_certificates(&self) -> Result<i64>;

    /// How many unrevoked certificates expire in `[from, until)` (Unix
    /// seconds); one range scan of the not_after index.
    async fn count_expiring(&self, from: i64, until: i64) -> Result<i64>;

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

    /// The latest notAfter of an issuer's certificates (one probe of the
    /// (issuer, not_after) index), if it has any.
    async fn issuer_last_expiry(&self, issuer_id: &str) -> Result<Option<i64>>;
}

/// One certificate of a CA brought in from elsewhere, with its
/// revocation, if it was revoked there.
#[derive(Debug, Clone)]
pub struct ImportedCertificate {
    /// The certificate (no account, order or partition).
    pub certificate: NewCertificate,
    /// Its revocation.
    pub revocation: Option<Revocation>,
}

/// Every change to issuers, certificates, revocations and CRLs.
#[async_trait]
pub trait CertificateWrites: Send + Sync + 'static {
    /// Inserts or refreshes a CA certificate.
    async fn upsert_issuer(&self, issuer: &IssuerRecord) -> Result<()>;

    /// Records a CA brought in from elsewhere with every certificate it
    /// issued and their revocations (marking its CRL stale), and the
    /// audit record, in one transaction: all of it or nothing.
    /// `Conflict` if a serial is already recorded.
    async fn import_certificates(
        &self,
        issuer: &IssuerRecord,
        certificates: &[ImportedCertificate],
        event: AuditEvent,
    ) -> Result<u64>;

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

    /// Records an "expiring soon" notice — an audit record
    /// `certificate.expiring` each, in one transaction — for at most
    /// `limit` unrevoked certificates that expire in `[now, until)`, have
    /// had none, and have no successor (a later unrevoked certificate of
    /// the same account for the same names). Returns their serials.
    async fn notice_expiring(&self, now: i64, until: i64, limit: i64) -> Result<Vec<String>>;

    /// Moves every issuer's CRL number up to at least `floor` (never
    /// down), with its audit record, in one transaction: after a restore,
    /// no CRL number the old instance may have published since the backup
    /// is used again. Returns how many counters moved.
    async fn raise_crl_numbers(&self, floor: i64, event: AuditEvent) -> Result<u64>;
}
