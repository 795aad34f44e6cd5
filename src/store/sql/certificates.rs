//! The SQL of issuers, certificates, revocations and CRLs.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::TryStreamExt;

use super::{Backend, KnownHead, Script, SqlStore, Statement, Tx, ROWS_PER_INSERT};
use crate::store::*;

const SELECT_ISSUERS: &str =
    "SELECT id, kind, subject, cert_der, key_id, not_before, not_after, active \
     FROM issuers ORDER BY CASE kind WHEN 'root' THEN 0 ELSE 1 END, not_before";

const UPSERT_ISSUER: &str =
    "INSERT INTO issuers (id, kind, subject, cert_der, key_id, not_before, not_after, created_at, active) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (id) DO UPDATE SET subject = excluded.subject, cert_der = excluded.cert_der, \
     key_id = excluded.key_id, not_before = excluded.not_before, not_after = excluded.not_after, \
     active = excluded.active";

#[derive(sqlx::FromRow)]
struct CertificateRow {
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
    invalidity_date: Option<i64>,
    crl_partition: i64,
    created_at: i64,
}

impl CertificateRow {
    fn into_record(self) -> Result<CertificateRecord> {
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
            invalidity_date: self.invalidity_date,
            crl_partition: self.crl_partition,
            created_at: self.created_at,
        })
    }
}

const SELECT_CERTIFICATE: &str =
    "SELECT serial, issuer_id, account_id, order_id, subject, identifiers, profile, \
     requested_by, not_before, not_after, der, revoked_at, revocation_reason, invalidity_date, \
     crl_partition, created_at FROM certificates WHERE serial = $1";

/// Followed by `VALUES (…), (…)` for a batch.
const INSERT_CERTIFICATE_PREFIX: &str =
    "INSERT INTO certificates (serial, issuer_id, account_id, order_id, subject, identifiers, \
     profile, requested_by, not_before, not_after, der, created_at, crl_partition) ";

/// How many CRLs of one scope are kept (the newest and the one before, so
/// a client fetching during a switch still finds what an ETag names).
const CRLS_KEPT: i64 = 2;

const REVOKE: &str = "UPDATE certificates SET revoked_at = $2, revocation_reason = $3, \
     invalidity_date = $4 WHERE serial = $1 AND revoked_at IS NULL \
     RETURNING issuer_id, crl_partition";

/// A key revoked for keyCompromise, refused in every later CSR.
const BLOCK_KEY: &str = "INSERT INTO blocked_keys (spki_sha256, serial, blocked_at) \
     VALUES ($1, $2, $3) ON CONFLICT (spki_sha256) DO NOTHING";

const MARK_CRL: &str = "INSERT INTO crl_marks (issuer_id, partition, seq) \
     VALUES ($1, $2, $3) ON CONFLICT (issuer_id, partition) DO UPDATE SET seq = excluded.seq";

const SELECT_STATUS: &str =
    "SELECT issuer_id, not_after, revoked_at, revocation_reason FROM certificates WHERE serial = $1";

const CERTIFICATE_COLUMNS: &str =
    "SELECT serial, issuer_id, account_id, order_id, subject, identifiers, profile, \
     requested_by, not_before, not_after, der, revoked_at, revocation_reason, invalidity_date, \
     crl_partition, created_at FROM certificates WHERE 1 = 1";

const CRL_FRESHEST_SNAPSHOT: &str = "SELECT MAX(snapshot_seq) FROM crls \
     WHERE issuer_id = $1 AND partition = $2 AND delta = $3";

const NEXT_CRL_NUMBER: &str = "INSERT INTO crl_numbers (issuer_id, last_number) \
     VALUES ($1, 1) ON CONFLICT (issuer_id) DO UPDATE SET last_number = crl_numbers.last_number + 1 \
     RETURNING last_number";

const SET_CRL_NUMBER: &str = "UPDATE crl_numbers SET last_number = $2 WHERE issuer_id = $1";

const INSERT_CRL: &str = "INSERT INTO crls (issuer_id, partition, delta, number, \
     this_update, next_update, created_at, snapshot_seq, entries) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

const INSERT_CRL_CHUNK: &str = "INSERT INTO crl_chunks (issuer_id, partition, delta, number, \
     seq, der) VALUES ($1, $2, $3, $4, $5, $6)";

/// Bytes of DER per `crl_chunks` row: large enough that a 47 MB CRL is
/// 45 statements, small enough that no driver buffer or bound copy
/// approaches the size of the CRL.
const CRL_CHUNK_BYTES: usize = 1 << 20;

const PRUNE_CRLS: &str = "DELETE FROM crls WHERE issuer_id = $1 AND partition = $2 \
     AND delta = $3 AND number NOT IN (SELECT number FROM crls WHERE issuer_id = $1 \
     AND partition = $2 AND delta = $3 ORDER BY number DESC LIMIT $4)";

const SELECT_CRL_HEADS: &str = "SELECT c.issuer_id, c.partition, c.delta, c.number, \
     c.this_update, c.next_update, c.entries, c.snapshot_seq FROM crls c \
     JOIN (SELECT issuer_id, partition, delta, MAX(number) AS number FROM crls \
     GROUP BY issuer_id, partition, delta) m ON m.issuer_id = c.issuer_id \
     AND m.partition = c.partition AND m.delta = c.delta AND m.number = c.number \
     ORDER BY c.issuer_id, c.partition, c.delta";

const SELECT_CRL_SIZE: &str = "SELECT COALESCE(SUM(LENGTH(der)), 0) FROM crl_chunks \
     WHERE issuer_id = $1 AND partition = $2 AND delta = $3 AND number = $4";

const SELECT_CRL_CHUNKS: &str = "SELECT der FROM crl_chunks WHERE issuer_id = $1 \
     AND partition = $2 AND delta = $3 AND number = $4 ORDER BY seq";

const SELECT_REVOKED_PARTITIONS: &str = "SELECT DISTINCT crl_partition FROM certificates \
     WHERE issuer_id = $1 AND revoked_at IS NOT NULL AND crl_partition > 0";

/// Unrevoked certificates expiring in [$1, $2). Every certificate has an
/// issuer, so the `issuer_id` term selects nothing out: it lets the query
/// range over `certificates_issuer_not_after` an issuer at a time, the one
/// index on expiry (migration 0017).
pub(super) const COUNT_EXPIRING: &str =
    "SELECT COUNT(*) FROM certificates WHERE issuer_id IN (SELECT id FROM issuers) \
     AND not_after >= $1 AND not_after < $2 AND revoked_at IS NULL";

/// Certificates expiring in [$1, $2) whose owner has not been told and has
/// no later one for the same names, soonest first, at most $3.
pub(super) const EXPIRING_DUE: &str =
    "SELECT c.serial, c.identifiers, c.account_id, c.not_after FROM certificates c \
     WHERE c.issuer_id IN (SELECT id FROM issuers) \
     AND c.not_after >= $1 AND c.not_after < $2 AND c.revoked_at IS NULL \
     AND c.expiry_noticed_at IS NULL AND c.requested_by <> 'system' \
     AND NOT EXISTS (SELECT 1 FROM certificates n \
         WHERE (n.account_id = c.account_id OR (n.account_id IS NULL AND c.account_id IS NULL)) \
         AND n.identifiers = c.identifiers AND n.not_after > c.not_after \
         AND n.revoked_at IS NULL) \
     ORDER BY c.not_after LIMIT $3";

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
    /// Inserts or refreshes a CA certificate on `conn` (a pool connection
    /// or a transaction's).
    async fn upsert_issuer_on(conn: &mut B::Connection, issuer: &IssuerRecord) -> Result<()> {
        sqlx::query(UPSERT_ISSUER)
            .bind(&issuer.id)
            .bind(issuer.kind.as_str())
            .bind(&issuer.subject)
            .bind(&issuer.cert_der)
            .bind(&issuer.key_id)
            .bind(issuer.not_before)
            .bind(issuer.not_after)
            .bind(time::OffsetDateTime::now_utc().unix_timestamp())
            .bind(issuer.active)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Marks a certificate revoked in `tx` (unless it is already) and, for
    /// a key compromise, blocks its key; the certificate's issuer and CRL
    /// partition, or `None` if no unrevoked certificate has that serial.
    async fn revoke_tx(tx: &mut Tx<B>, rev: &Revocation) -> Result<Option<(String, i64)>> {
        let done: Option<(String, i64)> = sqlx::query_as(REVOKE)
            .bind(rev.serial.to_hex())
            .bind(rev.at)
            .bind(rev.reason)
            .bind(rev.invalidity_date)
            .fetch_optional(&mut **tx)
            .await?;
        if let (Some(_), Some(spki_sha256)) = (&done, &rev.blocked_key) {
            sqlx::query(BLOCK_KEY)
                .bind(spki_sha256)
                .bind(rev.serial.to_hex())
                .bind(rev.at)
                .execute(&mut **tx)
                .await?;
        }
        Ok(done)
    }

    /// Starts the writer of the workflow's durable writes on `pool`
    /// ([`Self::commit_writes`]).
    pub(in crate::store) fn workflow_writer(
        pool: sqlx::Pool<B>,
    ) -> batch::Batcher<batch::Write, batch::Done> {
        let known = std::sync::Arc::new(std::sync::Mutex::new(KnownHead::default()));
        batch::Batcher::spawn("workflow", B::SOCKETS, move |items| {
            Self::commit_writes(pool.clone(), known.clone(), items)
        })
    }

    /// Commits a batch of the workflow's writes in one transaction: the
    /// guarded changes first in queue order (order moves, challenge claims
    /// and results, each its own guarded UPDATEs), then the orders the
    /// batch's issuances complete (one statement), then new orders (those
    /// issued at once among them), then the certificates whose orders
    /// moved, then the audit records of everything that happened.
    /// One outcome per item.
    ///
    /// A batch that only adds rows or completes orders (REST issuances,
    /// new orders, ACME finalizes) is first tried as one statement after the audit head the
    /// writer last knew ([`KnownHead`]): one round trip instead of five
    /// (`BEGIN`, taking the head, the completions, the inserts, `COMMIT`).
    /// PostgreSQL runs a statement as a transaction of its own; on SQLite
    /// the statement's text is the transaction, `BEGIN IMMEDIATE; …;
    /// COMMIT`, rolled back if any part of it fails. The statement moves
    /// the head only from where the writer knew it and completes orders
    /// only if every one of them moves, failing whole otherwise; a
    /// statement the database refused wrote nothing, so the batch is then
    /// committed the ordinary way.
    async fn commit_writes(
        pool: sqlx::Pool<B>,
        known: std::sync::Arc<std::sync::Mutex<KnownHead>>,
        writes: std::sync::Arc<Vec<batch::Write>>,
    ) -> Result<Vec<batch::Done>> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut retried = false;
        let head = writes
            .iter()
            .all(batch::Write::adds_or_completes)
            .then(|| lock(&known).take_for_batch())
            .flatten();
        if let Some(head) = head {
            match Self::commit_in_one_statement(&pool, head, &writes, now).await {
                Ok(Some((outcomes, end))) => {
                    crate::metrics::METRICS
                        .store_one_statement_commits
                        .inc(&["committed"]);
                    lock(&known).confirmed(end);
                    return Ok(outcomes);
                }
                Ok(None) => {}
                Err(sqlx::Error::Database(e)) => {
                    // Refused by the database: nothing of it was written.
                    tracing::debug!(error = %e, "a one-statement batch was refused; committing it the ordinary way");
                    retried = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let (outcomes, end) = Self::commit_in_transaction(&pool, &writes, now).await?;
        let mut known = lock(&known);
        if retried {
            crate::metrics::METRICS
                .store_one_statement_commits
                .inc(&["retried"]);
            known.stale();
        }
        known.set(end);
        Ok(outcomes)
    }

    /// [`Self::commit_writes`] as one statement after `head`, for writes
    /// that only add rows or complete orders: `None` if the batch is too
    /// large for one statement or asks for an illegal move. The statement
    /// fails whole unless every order it completes moved
    /// ([`Script::check_last`]).
    async fn commit_in_one_statement(
        pool: &sqlx::Pool<B>,
        head: (i64, Vec<u8>),
        writes: &[batch::Write],
        now: i64,
    ) -> std::result::Result<Option<(Vec<batch::Done>, (i64, Vec<u8>))>, sqlx::Error> {
        let mut opened: Vec<&OrderBundle> = Vec::new();
        let mut items: Vec<&Issuance> = Vec::new();
        let mut completions: Vec<super::orders::Completion> = Vec::new();
        for write in writes {
            match write {
                batch::Write::Open { bundle, .. } => opened.push(bundle),
                batch::Write::Issue(issuance) => {
                    if let Some(IssuanceOrder::Create(bundle)) = &issuance.order {
                        opened.push(bundle);
                    }
                    if let Some(completion) = super::orders::Completion::of(issuance) {
                        if !completion.is_legal() {
                            return Ok(None);
                        }
                        completions.push(completion);
                    }
                    items.push(issuance);
                }
                // Only writes that add rows, or complete orders, are
                // committed this way.
                _ => return Ok(None),
            }
        }
        let outcomes = vec![batch::Done::Written; writes.len()];
        let events: Vec<&AuditEvent> = writes
            .iter()
            .flat_map(|write| write.events(batch::Done::Written))
            .collect();
        if events.is_empty() {
            return Ok(None);
        }
        let mut script = Script::new::<B>();
        if !B::WRITES_AS_CTES {
            script.write("BEGIN IMMEDIATE");
        }
        Self::push_completions(&mut script, &completions);
        Self::push_inserts(&mut script, &opened, &items, now)
            .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        let end = Self::push_audit(&mut script, head, &events, true);
        if !B::WRITES_AS_CTES {
            script.write("COMMIT");
        }
        let Some(mut statement) = script.into_statement() else {
            return Ok(None);
        };
        let query = statement
            .query::<B>()
            .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        let mut conn = pool.acquire().await?;
        if let Err(e) = query.execute(&mut *conn).await {
            if !B::WRITES_AS_CTES {
                // The transaction the text began is still open unless
                // SQLite rolled it back itself; nothing of it stays.
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            }
            return Err(e);
        }
        super::count_audit(&events);
        Ok(Some((outcomes, end)))
    }

    /// [`Self::commit_writes`] in a transaction that takes the audit head
    /// first; returns the outcomes and the chain's new end.
    async fn commit_in_transaction(
        pool: &sqlx::Pool<B>,
        writes: &[batch::Write],
        now: i64,
    ) -> Result<(Vec<batch::Done>, (i64, Vec<u8>))> {
        use batch::{Done, Write};
        let mut tx = pool.begin().await?;
        let head = Self::lock_audit(&mut tx).await?;
        let mut outcomes = Vec::with_capacity(writes.len());
        let mut opened: Vec<&OrderBundle> = Vec::new();
        let mut items: Vec<&Issuance> = Vec::new();
        // Issuances that complete their orders: the orders move together
        // after the other guarded changes, and an issuance is stored only
        // if its order moved.
        let mut completing: Vec<(usize, &Issuance, super::orders::Completion)> = Vec::new();
        for (i, write) in writes.iter().enumerate() {
            outcomes.push(match write {
                Write::Move {
                    order_id,
                    transition,
                    update,
                    at,
                    ..
                } => Done::Moved(
                    Self::move_order_tx(&mut tx, order_id, *transition, update, *at).await?,
                ),
                Write::Claim {
                    challenge_id,
                    order_id,
                    at,
                    ..
                } => Done::Moved(
                    Self::claim_challenge_tx(&mut tx, challenge_id, order_id, *at).await?,
                ),
                Write::Finish { outcome, .. } => {
                    Self::finish_challenge_tx(&mut tx, outcome).await?
                }
                Write::Open { bundle, .. } => {
                    opened.push(bundle);
                    Done::Written
                }
                Write::Issue(issuance) => {
                    if let Some(IssuanceOrder::Create(bundle)) = &issuance.order {
                        opened.push(bundle);
                    }
                    match super::orders::Completion::of(issuance) {
                        Some(completion) => completing.push((i, issuance, completion)),
                        None => items.push(issuance),
                    }
                    Done::Written
                }
            });
        }
        if !completing.is_empty() {
            let completions: Vec<_> = completing.iter().map(|(_, _, c)| c).collect();
            let moved = Self::complete_orders_tx(&mut tx, &completions).await?;
            for ((i, issuance, _), moved) in completing.iter().zip(moved) {
                if moved {
                    items.push(issuance);
                } else {
                    outcomes[*i] = Done::Moved(false);
                }
            }
        }
        // Orders first: certificates refer to them. Every insert and the
        // audit records go in one round trip.
        let mut script = Script::new::<B>();
        Self::push_inserts(&mut script, &opened, &items, now)?;
        let events: Vec<&AuditEvent> = writes
            .iter()
            .zip(&outcomes)
            .flat_map(|(write, done)| write.events(*done))
            .collect();
        let end = Self::push_audit(&mut script, head, &events, false);
        script.execute(&mut tx).await?;
        tx.commit().await?;
        super::count_audit(&events);
        Ok((outcomes, end))
    }

    /// Adds to `script` the INSERTs of new orders (first: certificates
    /// refer to them) and of certificates.
    fn push_inserts<'a>(
        script: &mut Script<'a>,
        opened: &[&'a OrderBundle],
        items: &[&'a Issuance],
        now: i64,
    ) -> Result<()> {
        Self::push_orders(script, opened);
        for chunk in items.chunks(ROWS_PER_INSERT) {
            let insert = script.write(INSERT_CERTIFICATE_PREFIX);
            for item in chunk {
                let cert = &item.certificate;
                let identifiers = serde_json::to_string(&cert.identifiers)
                    .map_err(|e| StoreError::Database(e.to_string()))?;
                insert
                    .row()
                    .bind(cert.serial.to_hex())
                    .bind(&cert.issuer_id)
                    .bind(&cert.account_id)
                    .bind(&cert.order_id)
                    .bind(&cert.subject)
                    .bind(identifiers)
                    .bind(&cert.profile)
                    .bind(&cert.requested_by)
                    .bind(cert.not_before.unix_timestamp())
                    .bind(cert.not_after.unix_timestamp())
                    .bind(&cert.der)
                    .bind(now)
                    .bind(cert.crl_partition);
            }
        }
        Ok(())
    }
}

/// The writer's [`KnownHead`], which no panic can leave half-changed.
fn lock(known: &std::sync::Mutex<KnownHead>) -> std::sync::MutexGuard<'_, KnownHead> {
    known
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl<B: Backend> CertificateReads for SqlStore<B>
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
    async fn issuers(&self) -> Result<Vec<IssuerRecord>> {
        Ok(sqlx::query_as(SELECT_ISSUERS).fetch_all(&self.read).await?)
    }

    async fn issuer_last_expiry(&self, issuer_id: &str) -> Result<Option<i64>> {
        let (last,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(not_after) FROM certificates WHERE issuer_id = $1")
                .bind(issuer_id)
                .fetch_one(&self.read)
                .await?;
        Ok(last)
    }

    async fn certificate(&self, serial: &crate::pki::Serial) -> Result<CertificateRecord> {
        let row: CertificateRow = sqlx::query_as(SELECT_CERTIFICATE)
            .bind(serial.to_hex())
            .fetch_one(&self.read)
            .await?;
        row.into_record()
    }

    async fn certificate_body(&self, serial: &crate::pki::Serial) -> Result<Arc<CertificateBody>> {
        let key = serial.to_hex();
        if let Some(kept) = self.recent.issued.get(&key) {
            return Ok(kept);
        }
        let cert = self.certificate(serial).await?;
        Ok(Arc::new(CertificateBody {
            account_id: cert.account_id,
            issuer_id: cert.issuer_id,
            der: cert.der,
        }))
    }

    async fn count_certificates(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM certificates")
            .fetch_one(&self.read)
            .await?;
        Ok(n)
    }

    async fn count_expiring(&self, from: i64, until: i64) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as(COUNT_EXPIRING)
            .bind(from)
            .bind(until)
            .fetch_one(&self.read)
            .await?;
        Ok(n)
    }

    async fn key_blocked(&self, spki_sha256: &[u8]) -> Result<bool> {
        // Every new CSR has a key never seen before, so the whole (short)
        // blocklist is held instead of answers per key.
        let changes = self.recent.changes.now();
        if let Some(set) = self.recent.blocked.get(&(), changes) {
            return Ok(set.contains(spki_sha256));
        }
        let limit = crate::store::recent::MAX_BLOCKED_IN_MEMORY;
        let all: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT spki_sha256 FROM blocked_keys LIMIT $1")
            .bind(limit as i64 + 1)
            .fetch_all(&self.read)
            .await?;
        if all.len() <= limit {
            let set: std::collections::HashSet<Vec<u8>> = all.into_iter().map(|(k,)| k).collect();
            let blocked = set.contains(spki_sha256);
            self.recent
                .blocked
                .keep((), changes, std::sync::Arc::new(set));
            return Ok(blocked);
        }
        let row: Option<(String,)> =
            sqlx::query_as("SELECT serial FROM blocked_keys WHERE spki_sha256 = $1")
                .bind(spki_sha256)
                .fetch_optional(&self.read)
                .await?;
        Ok(row.is_some())
    }

    async fn certificate_status(&self, serial: &Serial) -> Result<Option<StatusRecord>> {
        Ok(sqlx::query_as(SELECT_STATUS)
            .bind(serial.to_hex())
            .fetch_optional(&self.read)
            .await?)
    }

    async fn certificates(&self, query: &CertificateQuery) -> Result<Vec<CertificateRecord>> {
        use CertificateStatus;
        let mut q = Statement::new(CERTIFICATE_COLUMNS);
        if let Some(account) = &query.account_id {
            q.push(" AND account_id = ").bind(account);
        }
        match query.status {
            None => {}
            Some(CertificateStatus::Revoked) => {
                q.push(" AND revoked_at IS NOT NULL");
            }
            Some(CertificateStatus::Valid) => {
                q.push(" AND revoked_at IS NULL AND not_after >= ")
                    .bind(query.now);
            }
            Some(CertificateStatus::Expired) => {
                q.push(" AND revoked_at IS NULL AND not_after < ")
                    .bind(query.now);
            }
        }
        if let Some(search) = &query.search {
            let escaped = like_escape(search);
            // Any part of a serial: a leaf's first fourteen digits are
            // `01` and the millisecond it was signed, shared by its
            // neighbours.
            q.push(" AND (serial LIKE ")
                .bind(format!("%{escaped}%"))
                .push(" ESCAPE '\\' OR identifiers LIKE ")
                .bind(format!("%{escaped}%"))
                .push(" ESCAPE '\\' OR subject LIKE ")
                .bind(format!("%{escaped}%"))
                .push(" ESCAPE '\\')");
        }
        q.newest_first("serial", &query.before, query.limit);
        let rows: Vec<CertificateRow> = q.query_as::<B, _>()?.fetch_all(&self.read).await?;
        rows.into_iter().map(|r| r.into_record()).collect()
    }

    async fn scan_revoked(
        &self,
        scan: &RevokedScan,
        sink: &mut (dyn FnMut(RevokedRow) + Send),
    ) -> Result<i64> {
        // One read snapshot for the audit head and the entries, so
        // the snapshot number says exactly which revocations are in.
        let mut tx = self.read.begin().await?;
        let snapshot: &str = B::READ_SNAPSHOT;
        if !snapshot.is_empty() {
            sqlx::query(snapshot).execute(&mut *tx).await?;
        }
        let (seq,): (i64,) = sqlx::query_as("SELECT seq FROM audit_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        B::scan_revoked(&mut tx, scan, sink).await?;
        tx.rollback().await?;
        Ok(seq)
    }

    async fn crl_heads(&self) -> Result<Vec<CrlRecord>> {
        Ok(sqlx::query_as(SELECT_CRL_HEADS)
            .fetch_all(&self.read)
            .await?)
    }

    async fn crl_marks(&self) -> Result<Vec<CrlMark>> {
        Ok(
            sqlx::query_as("SELECT issuer_id, partition, seq FROM crl_marks")
                .fetch_all(&self.read)
                .await?,
        )
    }

    async fn crl_der(&self, head: &CrlRecord) -> Result<Vec<u8>> {
        // One snapshot for the size and the chunks, so a prune between
        // them cannot tear the CRL.
        let mut tx = self.read.begin().await?;
        let (size,): (i64,) = sqlx::query_as(SELECT_CRL_SIZE)
            .bind(&head.issuer_id)
            .bind(head.partition)
            .bind(head.delta)
            .bind(head.number)
            .fetch_one(&mut *tx)
            .await?;
        let mut der = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        let mut chunks = sqlx::query_as::<_, (Vec<u8>,)>(SELECT_CRL_CHUNKS)
            .bind(&head.issuer_id)
            .bind(head.partition)
            .bind(head.delta)
            .bind(head.number)
            .fetch(&mut *tx);
        while let Some((chunk,)) = chunks.try_next().await? {
            der.extend_from_slice(&chunk);
        }
        drop(chunks);
        tx.rollback().await?;
        if der.is_empty() {
            return Err(StoreError::Corrupt(format!(
                "CRL {} of {} has no content",
                head.number, head.issuer_id
            )));
        }
        Ok(der)
    }

    async fn revoked_partitions(&self, issuer_id: &str) -> Result<Vec<i64>> {
        let rows: Vec<(i64,)> = sqlx::query_as(SELECT_REVOKED_PARTITIONS)
            .bind(issuer_id)
            .fetch_all(&self.read)
            .await?;
        Ok(rows.into_iter().map(|(p,)| p).collect())
    }
}

#[async_trait]
impl<B: Backend> CertificateWrites for SqlStore<B>
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
    async fn upsert_issuer(&self, issuer: &IssuerRecord) -> Result<()> {
        let mut conn = self.write.acquire().await?;
        Self::upsert_issuer_on(&mut conn, issuer).await
    }

    async fn import_certificates(
        &self,
        issuer: &IssuerRecord,
        certificates: &[ImportedCertificate],
        event: AuditEvent,
    ) -> Result<u64> {
        let mut tx = self.write.begin().await?;
        let head = Self::lock_audit(&mut tx).await?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        Self::upsert_issuer_on(&mut tx, issuer).await?;
        let insert = format!(
            "{INSERT_CERTIFICATE_PREFIX} VALUES ($1, $2, NULL, NULL, $3, $4, $5, $6, $7, $8, $9, $10, 0)"
        );
        let mut revoked = false;
        for imported in certificates {
            let c = &imported.certificate;
            let exists: Option<(String,)> =
                sqlx::query_as("SELECT issuer_id FROM certificates WHERE serial = $1")
                    .bind(c.serial.to_hex())
                    .fetch_optional(&mut *tx)
                    .await?;
            if exists.is_some() {
                return Err(StoreError::Conflict(Conflict::SerialTaken(c.serial)));
            }
            sqlx::query(&insert)
                .bind(c.serial.to_hex())
                .bind(&c.issuer_id)
                .bind(&c.subject)
                .bind(serde_json::to_string(&c.identifiers).unwrap_or_else(|_| "[]".into()))
                .bind(&c.profile)
                .bind(&c.requested_by)
                .bind(c.not_before.unix_timestamp())
                .bind(c.not_after.unix_timestamp())
                .bind(&c.der)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            if let Some(rev) = &imported.revocation {
                revoked = true;
                Self::revoke_tx(&mut tx, rev).await?;
            }
        }
        if revoked {
            sqlx::query(MARK_CRL)
                .bind(&issuer.id)
                .bind(0i64)
                .bind(head.0 + 1)
                .execute(&mut *tx)
                .await?;
        }
        Self::commit_audited(tx, head, &[&event]).await?;
        self.recent.changes.bump();
        Ok(certificates.len() as u64)
    }

    async fn insert_issuance(&self, issuance: Issuance) -> Result<()> {
        let moved_on = match &issuance.order {
            Some(IssuanceOrder::Complete {
                order_id,
                transition,
                ..
            }) => Some((order_id.clone(), transition.from())),
            _ => None,
        };
        // An order created whole is kept as it is; an order completed is
        // kept as the view held before it, if that view was where the
        // completion starts, changed as COMPLETE_ORDERS changes it. (An
        // issuance that completes its order is `Written` when its batch
        // went as one statement, which fails whole if an order had moved
        // on, and `Moved(true)` otherwise.)
        let order = match &issuance.order {
            Some(IssuanceOrder::Complete {
                order_id,
                transition,
                csr_der,
                at,
            }) => {
                let (transition, at, serial) = (*transition, *at, issuance.certificate.serial);
                let update = OrderUpdate {
                    csr_der: csr_der.clone(),
                    ..OrderUpdate::default()
                };
                let completed = move |b: &mut OrderBundle, done: batch::Done| {
                    let stored = matches!(done, batch::Done::Written | batch::Done::Moved(true));
                    if !stored || b.order.status != transition.from() {
                        return false;
                    }
                    b.order = b
                        .order
                        .moved(transition, &update, at)
                        .completed(&serial.to_hex(), at);
                    true
                };
                Some((order_id.clone(), None, Some(completed)))
            }
            Some(IssuanceOrder::Create(bundle)) => {
                Some((bundle.order.id.clone(), Some((**bundle).clone()), None))
            }
            None => None,
        };
        let kept = (
            issuance.certificate.serial.to_hex(),
            CertificateBody {
                account_id: issuance.certificate.account_id.clone(),
                issuer_id: issuance.certificate.issuer_id.clone(),
                der: issuance.certificate.der.clone(),
            },
        );
        let issue = batch::Write::Issue(Box::new(issuance));
        let done = match &order {
            Some((order_id, view, completed)) => {
                let after = match (view, completed) {
                    (Some(b), _) => super::orders::After::Whole(b),
                    (None, Some(change)) => super::orders::After::Outcome(change),
                    (None, None) => super::orders::After::Unknown,
                };
                self.submit_order_write(order_id, issue, after).await?
            }
            None => self.batcher.submit(issue).await?,
        };
        match done {
            batch::Done::Moved(false) => {
                let (order_id, from) = moved_on.ok_or_else(|| {
                    StoreError::Database("an issuance without an order was not stored".into())
                })?;
                Err(StoreError::Conflict(Conflict::OrderMovedOn(order_id, from)))
            }
            _ => {
                self.recent.issued.keep(kept.0, Arc::new(kept.1));
                Ok(())
            }
        }
    }

    async fn notice_expiring(&self, now: i64, until: i64, limit: i64) -> Result<Vec<String>> {
        let mut tx = self.write.begin().await?;
        let head = Self::lock_audit(&mut tx).await?;
        let due: Vec<(String, String, Option<String>, i64)> = sqlx::query_as(EXPIRING_DUE)
            .bind(now)
            .bind(until)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        let at = time::OffsetDateTime::from_unix_timestamp(now)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let mut events = Vec::with_capacity(due.len());
        for (serial, identifiers, account_id, not_after) in &due {
            sqlx::query("UPDATE certificates SET expiry_noticed_at = $2 WHERE serial = $1")
                .bind(serial.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let names: serde_json::Value =
                serde_json::from_str(identifiers).unwrap_or(serde_json::Value::Null);
            events.push(AuditEvent {
                at,
                actor: "system".into(),
                action: "certificate.expiring".into(),
                subject: serial.clone(),
                details: serde_json::json!({
                    "names": names,
                    "account": account_id,
                    "not_after": not_after,
                }),
            });
        }
        let refs: Vec<&AuditEvent> = events.iter().collect();
        Self::commit_audited(tx, head, &refs).await?;
        Ok(due.into_iter().map(|(serial, ..)| serial).collect())
    }

    async fn raise_crl_numbers(&self, floor: i64, event: AuditEvent) -> Result<u64> {
        let mut tx = self.write.begin().await?;
        let head = Self::lock_audit(&mut tx).await?;
        let moved: Vec<(String,)> = sqlx::query_as(
            "INSERT INTO crl_numbers (issuer_id, last_number) SELECT id, $1 FROM issuers WHERE true \
             ON CONFLICT (issuer_id) DO UPDATE SET last_number = $1 \
             WHERE crl_numbers.last_number < $1 RETURNING issuer_id",
        )
        .bind(floor)
        .fetch_all(&mut *tx)
        .await?;
        Self::commit_audited(tx, head, &[&event]).await?;
        Ok(moved.len() as u64)
    }

    async fn revoke_certificate(&self, rev: &Revocation, event: AuditEvent) -> Result<()> {
        use StoreError;
        let mut tx = self.write.begin().await?;
        let head = Self::lock_audit(&mut tx).await?;
        let Some((issuer_id, partition)) = Self::revoke_tx(&mut tx, rev).await? else {
            let exists: Option<(Option<i64>,)> =
                sqlx::query_as("SELECT revoked_at FROM certificates WHERE serial = $1")
                    .bind(rev.serial.to_hex())
                    .fetch_optional(&mut *tx)
                    .await?;
            return Err(match exists {
                None => StoreError::NotFound,
                Some(_) => StoreError::Conflict(Conflict::AlreadyRevoked(rev.serial)),
            });
        };
        // The revocation's own audit sequence number marks its
        // CRLs stale until one is published from a later snapshot.
        let seq = head.0 + 1;
        let mut scopes = vec![0];
        if partition > 0 {
            scopes.push(partition);
        }
        for p in scopes {
            sqlx::query(MARK_CRL)
                .bind(&issuer_id)
                .bind(p)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        Self::commit_audited(tx, head, &[&event]).await?;
        if rev.blocked_key.is_some() {
            self.recent.changes.bump();
        }
        Ok(())
    }

    async fn publish_crl(
        &self,
        crl: &NewCrl,
        sign: &mut (dyn FnMut(i64) -> std::result::Result<Vec<u8>, String> + Send),
        mut event: AuditEvent,
    ) -> Result<Option<CrlRecord>> {
        let mut tx = self.write.begin().await?;
        // Serialises publication with every writer, across
        // instances (row lock) and processes (SQLite write lock).
        let head = Self::lock_audit(&mut tx).await?;
        let (freshest,): (Option<i64>,) = sqlx::query_as(CRL_FRESHEST_SNAPSHOT)
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
        let (next,): (i64,) = sqlx::query_as(NEXT_CRL_NUMBER)
            .bind(&crl.issuer_id)
            .fetch_one(&mut *tx)
            .await?;
        let number = match crl.number {
            Some(given) if given < next => {
                return Err(StoreError::Conflict(Conflict::StaleCrlNumber {
                    given,
                    last: next - 1,
                }))
            }
            Some(given) => {
                // The counter moves up to it, so numbers given here later
                // stay above.
                sqlx::query(SET_CRL_NUMBER)
                    .bind(&crl.issuer_id)
                    .bind(given)
                    .execute(&mut *tx)
                    .await?;
                given
            }
            None => next,
        };
        let der = sign(number).map_err(StoreError::Database)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        sqlx::query(INSERT_CRL)
            .bind(&crl.issuer_id)
            .bind(crl.partition)
            .bind(crl.delta)
            .bind(number)
            .bind(crl.this_update)
            .bind(crl.next_update)
            .bind(now)
            .bind(crl.snapshot_seq)
            .bind(crl.entries)
            .execute(&mut *tx)
            .await?;
        for (seq, chunk) in (0_i64..).zip(der.chunks(CRL_CHUNK_BYTES)) {
            sqlx::query(INSERT_CRL_CHUNK)
                .bind(&crl.issuer_id)
                .bind(crl.partition)
                .bind(crl.delta)
                .bind(number)
                .bind(seq)
                .bind(chunk)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(PRUNE_CRLS)
            .bind(&crl.issuer_id)
            .bind(crl.partition)
            .bind(crl.delta)
            .bind(CRLS_KEPT)
            .execute(&mut *tx)
            .await?;
        if let Some(details) = event.details.as_object_mut() {
            details.insert("number".into(), number.into());
        }
        Self::commit_audited(tx, head, &[&event]).await?;
        Ok(Some(CrlRecord {
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
}
