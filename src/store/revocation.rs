//! Revocation, certificate listing and CRL storage: the types and the SQL
//! both backends share. CRL entries are streamed out of a read snapshot
//! (never collected), and a CRL is published under the audit-head lock with
//! a number from `crl_numbers`, only if nothing fresher was published.

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

/// The lifecycle state of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateStatus {
    /// Not revoked and not expired.
    Valid,
    /// Revoked.
    Revoked,
    /// Past notAfter, not revoked.
    Expired,
}

impl CertificateStatus {
    /// Its name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateStatus::Valid => "valid",
            CertificateStatus::Revoked => "revoked",
            CertificateStatus::Expired => "expired",
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
    /// A serial prefix or part of a name or subject (lower case).
    pub search: Option<String>,
    /// Only older than this `(created_at, serial)`.
    pub before: Option<(i64, String)>,
    /// At most this many.
    pub limit: i64,
    /// The time `status` is judged at.
    pub now: i64,
}

/// What OCSP needs to know about a serial.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

/// A published CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// DER (empty in [`super::Store::crl_heads`]).
    pub der: Vec<u8>,
}

/// The newest revocation of one CRL scope (see [`super::Store::crl_marks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlMark {
    /// The issuer.
    pub issuer_id: String,
    /// 0 for the complete (and delta) CRL, else the partition.
    pub partition: i64,
    /// The audit sequence number of the newest revocation in the scope.
    pub seq: i64,
}

/// How many CRLs of one scope are kept (the newest and the one before, so
/// a client fetching during a switch still finds what an ETag names).
pub(super) const CRLS_KEPT: i64 = 2;

pub(super) const REVOKE: &str = "UPDATE certificates SET revoked_at = $2, revocation_reason = $3, \
     invalidity_date = $4 WHERE serial = $1 AND revoked_at IS NULL \
     RETURNING issuer_id, crl_partition";

pub(super) const MARK_CRL: &str = "INSERT INTO crl_marks (issuer_id, partition, seq) \
     VALUES ($1, $2, $3) ON CONFLICT (issuer_id, partition) DO UPDATE SET seq = excluded.seq";

pub(super) const SELECT_STATUS: &str =
    "SELECT issuer_id, not_after, revoked_at, revocation_reason FROM certificates WHERE serial = $1";

pub(super) const CERTIFICATE_COLUMNS: &str =
    "SELECT serial, issuer_id, account_id, order_id, subject, identifiers, profile, \
     requested_by, not_before, not_after, der, revoked_at, revocation_reason, invalidity_date, \
     crl_partition, created_at FROM certificates WHERE 1 = 1";

pub(super) const CRL_FRESHEST_SNAPSHOT: &str = "SELECT MAX(snapshot_seq) FROM crls \
     WHERE issuer_id = $1 AND partition = $2 AND delta = $3";

pub(super) const NEXT_CRL_NUMBER: &str = "INSERT INTO crl_numbers (issuer_id, last_number) \
     VALUES ($1, 1) ON CONFLICT (issuer_id) DO UPDATE SET last_number = crl_numbers.last_number + 1 \
     RETURNING last_number";

pub(super) const INSERT_CRL: &str = "INSERT INTO crls (issuer_id, partition, delta, number, \
     this_update, next_update, der, created_at, snapshot_seq, entries) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

pub(super) const PRUNE_CRLS: &str = "DELETE FROM crls WHERE issuer_id = $1 AND partition = $2 \
     AND delta = $3 AND number NOT IN (SELECT number FROM crls WHERE issuer_id = $1 \
     AND partition = $2 AND delta = $3 ORDER BY number DESC LIMIT $4)";

pub(super) const SELECT_CRL_HEADS: &str = "SELECT c.issuer_id, c.partition, c.delta, c.number, \
     c.this_update, c.next_update, c.entries, c.snapshot_seq FROM crls c \
     JOIN (SELECT issuer_id, partition, delta, MAX(number) AS number FROM crls \
     GROUP BY issuer_id, partition, delta) m ON m.issuer_id = c.issuer_id \
     AND m.partition = c.partition AND m.delta = c.delta AND m.number = c.number \
     ORDER BY c.issuer_id, c.partition, c.delta";

pub(super) const SELECT_CRL: &str = "SELECT der FROM crls WHERE issuer_id = $1 AND partition = $2 \
     AND delta = $3 AND number = $4";

pub(super) const SELECT_REVOKED_PARTITIONS: &str =
    "SELECT DISTINCT crl_partition FROM certificates \
     WHERE issuer_id = $1 AND revoked_at IS NOT NULL AND crl_partition > 0";

/// Escapes `%`, `_` and `\` for `LIKE … ESCAPE '\'`.
pub(super) fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Implements the revocation and CRL methods as inherent `*_impl` methods
/// of a backend with `read` and `write` pools; the `Store` impl calls them.
macro_rules! impl_revocation_sql {
    ($store:ty, $db:ty, $snapshot:expr) => {
        impl $store {
            pub(super) async fn revoke_certificate_impl(
                &self,
                rev: &$crate::store::Revocation,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                use $crate::store::StoreError;
                let mut tx = self.write.begin().await?;
                let head = Self::lock_audit_tx(&mut tx).await?;
                let done: Option<(String, i64)> = sqlx::query_as($crate::store::revocation::REVOKE)
                    .bind(rev.serial.to_hex())
                    .bind(rev.at)
                    .bind(rev.reason)
                    .bind(rev.invalidity_date)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some((issuer_id, partition)) = done else {
                    let exists: Option<(Option<i64>,)> =
                        sqlx::query_as("SELECT revoked_at FROM certificates WHERE serial = $1")
                            .bind(rev.serial.to_hex())
                            .fetch_optional(&mut *tx)
                            .await?;
                    return Err(match exists {
                        None => StoreError::NotFound,
                        Some(_) => StoreError::Conflict(format!(
                            "certificate {} is already revoked",
                            rev.serial
                        )),
                    });
                };
                if let Some(spki_sha256) = &rev.blocked_key {
                    sqlx::query(
                        "INSERT INTO blocked_keys (spki_sha256, serial, blocked_at) VALUES ($1, $2, $3) \
                         ON CONFLICT (spki_sha256) DO NOTHING",
                    )
                    .bind(spki_sha256)
                    .bind(rev.serial.to_hex())
                    .bind(rev.at)
                    .execute(&mut *tx)
                    .await?;
                }
                // The revocation's own audit sequence number marks its
                // CRLs stale until one is published from a later snapshot.
                let seq = head.0 + 1;
                let mut scopes = vec![0];
                if partition > 0 {
                    scopes.push(partition);
                }
                for p in scopes {
                    sqlx::query($crate::store::revocation::MARK_CRL)
                        .bind(&issuer_id)
                        .bind(p)
                        .bind(seq)
                        .execute(&mut *tx)
                        .await?;
                }
                Self::write_audit_tx(&mut tx, head, &[&event]).await?;
                tx.commit().await?;
                Ok(())
            }

            pub(super) async fn certificate_status_impl(
                &self,
                serial: &$crate::pki::Serial,
            ) -> $crate::store::Result<Option<$crate::store::StatusRecord>> {
                let row: Option<(String, i64, Option<i64>, Option<i64>)> =
                    sqlx::query_as($crate::store::revocation::SELECT_STATUS)
                        .bind(serial.to_hex())
                        .fetch_optional(&self.read)
                        .await?;
                Ok(
                    row.map(|(issuer_id, not_after, revoked_at, revocation_reason)| {
                        $crate::store::StatusRecord {
                            issuer_id,
                            not_after,
                            revoked_at,
                            revocation_reason,
                        }
                    }),
                )
            }

            pub(super) async fn certificates_impl(
                &self,
                query: &$crate::store::CertificateQuery,
            ) -> $crate::store::Result<Vec<$crate::store::CertificateRecord>> {
                use $crate::store::CertificateStatus;
                let mut q =
                    sqlx::QueryBuilder::<$db>::new($crate::store::revocation::CERTIFICATE_COLUMNS);
                if let Some(account) = &query.account_id {
                    q.push(" AND account_id = ").push_bind(account.clone());
                }
                match query.status {
                    None => {}
                    Some(CertificateStatus::Revoked) => {
                        q.push(" AND revoked_at IS NOT NULL");
                    }
                    Some(CertificateStatus::Valid) => {
                        q.push(" AND revoked_at IS NULL AND not_after >= ")
                            .push_bind(query.now);
                    }
                    Some(CertificateStatus::Expired) => {
                        q.push(" AND revoked_at IS NULL AND not_after < ")
                            .push_bind(query.now);
                    }
                }
                if let Some(search) = &query.search {
                    let escaped = $crate::store::revocation::like_escape(search);
                    q.push(" AND (serial LIKE ")
                        .push_bind(format!("{escaped}%"))
                        .push(" ESCAPE '\\' OR identifiers LIKE ")
                        .push_bind(format!("%{escaped}%"))
                        .push(" ESCAPE '\\' OR subject LIKE ")
                        .push_bind(format!("%{escaped}%"))
                        .push(" ESCAPE '\\')");
                }
                if let Some((created, serial)) = &query.before {
                    q.push(" AND (created_at < ")
                        .push_bind(*created)
                        .push(" OR (created_at = ")
                        .push_bind(*created)
                        .push(" AND serial < ")
                        .push_bind(serial.clone())
                        .push("))");
                }
                q.push(" ORDER BY created_at DESC, serial DESC LIMIT ")
                    .push_bind(query.limit);
                let rows: Vec<$crate::store::shared::CertificateRow> =
                    q.build_query_as().fetch_all(&self.read).await?;
                rows.into_iter().map(|r| r.into_record()).collect()
            }

            pub(super) async fn scan_revoked_impl(
                &self,
                scan: &$crate::store::RevokedScan,
                sink: &mut (dyn FnMut($crate::store::RevokedRow) + Send),
            ) -> $crate::store::Result<i64> {
                use futures_util::TryStreamExt;
                // One read snapshot for the audit head and the entries, so
                // the snapshot number says exactly which revocations are in.
                let mut tx = self.read.begin().await?;
                let snapshot: &str = $snapshot;
                if !snapshot.is_empty() {
                    sqlx::query(snapshot).execute(&mut *tx).await?;
                }
                let (seq,): (i64,) = sqlx::query_as("SELECT seq FROM audit_head WHERE id = 1")
                    .fetch_one(&mut *tx)
                    .await?;
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "SELECT serial, revoked_at, revocation_reason, invalidity_date \
                     FROM certificates WHERE issuer_id = ",
                );
                q.push_bind(scan.issuer_id.clone())
                    .push(" AND revoked_at IS NOT NULL AND not_after >= ")
                    .push_bind(scan.not_after_from);
                if let Some(p) = scan.partition {
                    q.push(" AND crl_partition = ").push_bind(p);
                }
                if let Some(since) = scan.revoked_since {
                    q.push(" AND revoked_at >= ").push_bind(since);
                }
                {
                    let mut rows = q
                        .build_query_as::<(String, i64, Option<i64>, Option<i64>)>()
                        .fetch(&mut *tx);
                    while let Some((serial, revoked_at, reason, invalidity_date)) =
                        rows.try_next().await?
                    {
                        let serial = serial.parse().map_err(|_| {
                            $crate::store::StoreError::Corrupt(format!("serial {serial:?}"))
                        })?;
                        sink($crate::store::RevokedRow {
                            serial,
                            revoked_at,
                            reason: reason.unwrap_or(0),
                            invalidity_date,
                        });
                    }
                }
                tx.rollback().await?;
                Ok(seq)
            }

            pub(super) async fn publish_crl_impl(
                &self,
                crl: &$crate::store::NewCrl,
                sign: &mut (dyn FnMut(i64) -> std::result::Result<Vec<u8>, String> + Send),
                mut event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<Option<$crate::store::CrlRecord>> {
                use $crate::store::revocation as r;
                let mut tx = self.write.begin().await?;
                // Serialises publication with every writer, across
                // instances (row lock) and processes (SQLite write lock).
                let head = Self::lock_audit_tx(&mut tx).await?;
                let (freshest,): (Option<i64>,) = sqlx::query_as(r::CRL_FRESHEST_SNAPSHOT)
                    .bind(&crl.issuer_id)
                    .bind(crl.partition)
                    .bind(crl.delta)
                    .fetch_one(&mut *tx)
                    .await?;
                if freshest.is_some_and(|f| f > crl.snapshot_seq) {
                    // Someone published from a later snapshot: ours would
                    // have a higher number and fewer revocations.
                    return Ok(None);
                }
                let (number,): (i64,) = sqlx::query_as(r::NEXT_CRL_NUMBER)
                    .bind(&crl.issuer_id)
                    .fetch_one(&mut *tx)
                    .await?;
                let der = sign(number).map_err($crate::store::StoreError::Database)?;
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                sqlx::query(r::INSERT_CRL)
                    .bind(&crl.issuer_id)
                    .bind(crl.partition)
                    .bind(crl.delta)
                    .bind(number)
                    .bind(crl.this_update)
                    .bind(crl.next_update)
                    .bind(&der)
                    .bind(now)
                    .bind(crl.snapshot_seq)
                    .bind(crl.entries)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(r::PRUNE_CRLS)
                    .bind(&crl.issuer_id)
                    .bind(crl.partition)
                    .bind(crl.delta)
                    .bind(r::CRLS_KEPT)
                    .execute(&mut *tx)
                    .await?;
                if let Some(details) = event.details.as_object_mut() {
                    details.insert("number".into(), number.into());
                }
                Self::write_audit_tx(&mut tx, head, &[&event]).await?;
                tx.commit().await?;
                Ok(Some($crate::store::CrlRecord {
                    issuer_id: crl.issuer_id.clone(),
                    partition: crl.partition,
                    delta: crl.delta,
                    number,
                    this_update: crl.this_update,
                    next_update: crl.next_update,
                    entries: crl.entries,
                    snapshot_seq: crl.snapshot_seq,
                    der,
                }))
            }

            pub(super) async fn crl_heads_impl(
                &self,
            ) -> $crate::store::Result<Vec<$crate::store::CrlRecord>> {
                let rows: Vec<(String, i64, bool, i64, i64, i64, i64, i64)> =
                    sqlx::query_as($crate::store::revocation::SELECT_CRL_HEADS)
                        .fetch_all(&self.read)
                        .await?;
                Ok(rows
                    .into_iter()
                    .map(
                        |(
                            issuer_id,
                            partition,
                            delta,
                            number,
                            this_update,
                            next_update,
                            entries,
                            snapshot_seq,
                        )| {
                            $crate::store::CrlRecord {
                                issuer_id,
                                partition,
                                delta,
                                number,
                                this_update,
                                next_update,
                                entries,
                                snapshot_seq,
                                der: Vec::new(),
                            }
                        },
                    )
                    .collect())
            }

            pub(super) async fn key_blocked_impl(
                &self,
                spki_sha256: &[u8],
            ) -> $crate::store::Result<bool> {
                let row: Option<(String,)> =
                    sqlx::query_as("SELECT serial FROM blocked_keys WHERE spki_sha256 = $1")
                        .bind(spki_sha256)
                        .fetch_optional(&self.read)
                        .await?;
                Ok(row.is_some())
            }

            pub(super) async fn crl_marks_impl(
                &self,
            ) -> $crate::store::Result<Vec<$crate::store::CrlMark>> {
                let rows: Vec<(String, i64, i64)> =
                    sqlx::query_as("SELECT issuer_id, partition, seq FROM crl_marks")
                        .fetch_all(&self.read)
                        .await?;
                Ok(rows
                    .into_iter()
                    .map(|(issuer_id, partition, seq)| $crate::store::CrlMark {
                        issuer_id,
                        partition,
                        seq,
                    })
                    .collect())
            }

            pub(super) async fn crl_der_impl(
                &self,
                head: &$crate::store::CrlRecord,
            ) -> $crate::store::Result<Vec<u8>> {
                let (der,): (Vec<u8>,) = sqlx::query_as($crate::store::revocation::SELECT_CRL)
                    .bind(&head.issuer_id)
                    .bind(head.partition)
                    .bind(head.delta)
                    .bind(head.number)
                    .fetch_one(&self.read)
                    .await?;
                Ok(der)
            }

            pub(super) async fn revoked_partitions_impl(
                &self,
                issuer_id: &str,
            ) -> $crate::store::Result<Vec<i64>> {
                let rows: Vec<(i64,)> =
                    sqlx::query_as($crate::store::revocation::SELECT_REVOKED_PARTITIONS)
                        .bind(issuer_id)
                        .fetch_all(&self.read)
                        .await?;
                Ok(rows.into_iter().map(|(p,)| p).collect())
            }
        }
    };
}

pub(super) use impl_revocation_sql;
