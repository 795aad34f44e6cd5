//! The one SQL implementation of the store, generic over the backend.
//!
//! Both dialects accept the same statements (`$n` parameters, `RETURNING`,
//! the same column types as seen from Rust), so each statement is written
//! once, in the module of its concern (`orders.rs`, `certificates.rs`, …),
//! inside an `impl<B: Backend> … for SqlStore<B>`. What differs between
//! SQLite and PostgreSQL — connection set-up, the used-nonce record, the
//! durability check — is the [`Backend`] trait, implemented in `sqlite.rs`
//! and `postgres.rs`.
//!
//! Every generic impl carries the same `where` clause (Rust does not yet
//! let a trait imply bounds on other types): what sqlx needs to run a
//! query on `B` and move `String`, `&str`, `i64`, bytes and `bool` in and
//! out of it. Copy it from an existing impl.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{Database, Pool};

mod accounts;
mod audit;
mod certificates;
mod orders;
mod users;
mod webhooks;

use super::batch::{Batcher, Done, UsedNonce, Write};
use super::recent::{Changes, Recent, Tracked, Written};
use super::{
    AuditEvent, AuthorizationStatus, ChallengeKind, ChallengeStatus, Failure, Health,
    IdentifierKind, OrderSource, OrderStatus, Result, RevokedRow, RevokedScan, StoreError,
    Validation,
};
use crate::pki::profile::Organization;
use crate::pki::Serial;

/// How long a pooled connection may have sat idle before it is checked
/// (a ping) as it is taken from the pool. sqlx checks every connection as
/// it goes back to the pool anyway, and by default again as it is taken —
/// one more round trip to the database (or hand-off to SQLite's worker
/// thread) per query; under load connections are idle for microseconds,
/// so only one that sat longer than this, and may have been cut while it
/// waited (a PostgreSQL restart), is pinged first.
pub(super) const PING_IF_IDLE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// `before_acquire` for every pool (with `test_before_acquire(false)`):
/// pings a connection only if it was idle longer than [`PING_IF_IDLE_FOR`].
pub(super) fn ping_if_idle<C: sqlx::Connection>(
    conn: &mut C,
    meta: sqlx::pool::PoolConnectionMetadata,
) -> futures_util::future::BoxFuture<'_, std::result::Result<bool, sqlx::Error>> {
    Box::pin(async move {
        if meta.idle_for > PING_IF_IDLE_FOR {
            conn.ping().await?;
        }
        Ok(true)
    })
}

/// A pool a group-commit queue has to itself.
pub(super) struct OwnPool<B: Backend> {
    /// Its name in `/metrics`.
    pub(super) name: &'static str,
    pub(super) pool: Pool<B>,
    /// Whether its commits must be durable, as `/readyz` checks: false
    /// only for used nonces', whose sessions do not wait for the flush.
    pub(super) durable: bool,
}

/// A store on database `B`: a read pool, a write pool (one connection on
/// SQLite, which has one writer anyway) and the group-commit queues: the
/// workflow's in front of the write pool (on PostgreSQL, in front of
/// connections of its own) and, on PostgreSQL, used nonces' (in front of
/// a connection of their own).
pub struct SqlStore<B: Backend> {
    pub(super) read: Pool<B>,
    pub(super) write: Pool<B>,
    /// The pools a group-commit queue has to itself (PostgreSQL's
    /// `writer` and `nonces`).
    pub(super) own_pools: Vec<OwnPool<B>>,
    /// The group-commit queue of the workflow's durable writes.
    pub(super) batcher: Batcher<Write, Done>,
    /// The group-commit queue of used ACME nonces, shared by every
    /// instance (PostgreSQL). None on SQLite, whose `serve` is its file's
    /// one server: a serving store that is its database's one server
    /// ([`SqlStore::one_server`]) records them in memory
    /// (`workflow/nonces.rs`).
    pub(super) nonces: Option<Batcher<UsedNonce, bool>>,
    /// The hot reads' recent answers (`store/recent.rs`).
    pub(super) recent: RecentReads,
    /// Whether this store is its database's one server, for its whole
    /// life: SQLite's (a file of one host), and PostgreSQL's `serve` with
    /// `database.single_instance`, which holds the database's serve lock
    /// to itself (`store/postgres.rs`). Only then are orders answered
    /// from memory whatever their status ([`RecentReads::orders`]; else
    /// only finished ones) and ACME nonces recorded in memory: where
    /// several instances serve behind a load balancer, an
    /// ACME client whose requests land on different instances must never
    /// see its order go back to an earlier status, nor a nonce used on
    /// one instance taken again on another.
    pub(super) one_server: bool,
    /// Whether it is the one server now, so its kept orders may be
    /// answered from: always on SQLite; on PostgreSQL false from the
    /// moment the serve lock's connection is found lost until the lock is
    /// taken again (and every kept order forgotten).
    pub(super) alone: Arc<AtomicBool>,
    /// Held while the store lives: dropping it ends the task that keeps
    /// PostgreSQL's serve lock, which closes the lock's connection.
    pub(super) serve_lock: Option<tokio::sync::oneshot::Sender<()>>,
}

impl<B: Backend> SqlStore<B> {
    /// Whether kept orders may be answered from now.
    pub(super) fn answers_from_memory(&self) -> bool {
        self.one_server && self.alone.load(Ordering::Acquire)
    }
}

/// What [`SqlStore`] keeps of the reads every request makes.
#[derive(Default)]
pub(in crate::store) struct RecentReads {
    /// Bumped after every write that may change an answer below.
    pub(in crate::store) changes: Changes,
    /// The account (and stored hash) behind an API key's hash.
    pub(in crate::store) keys: Recent<[u8; 32], (super::AccountRecord, Vec<u8>)>,
    /// ACME accounts by id.
    pub(in crate::store) acme_accounts: Recent<String, super::AcmeAccountRecord>,
    /// When an account last proved a name: (account, kind, value).
    pub(in crate::store) proofs: Recent<(String, IdentifierKind, String), i64>,
    /// Every blocked key's SPKI hash (while there are at most
    /// [`super::recent::MAX_BLOCKED_IN_MEMORY`]), under the key `()`.
    pub(in crate::store) blocked: Recent<(), std::sync::Arc<std::collections::HashSet<Vec<u8>>>>,
    /// Orders with their authorizations and challenges, by id: all of
    /// them answered from where the store is its database's one server
    /// ([`SqlStore::one_server`]), else only finished ones (valid or
    /// invalid, which no write moves again). Every write to an order through this store goes by
    /// [`SqlStore::submit_order_write`], which hides its view while the
    /// write is in flight.
    pub(in crate::store) orders: Arc<Tracked<String, super::OrderBundle>>,
    /// Certificates this process issued, by serial (hex): what never
    /// changes of them.
    pub(in crate::store) issued: Written<String, Arc<crate::store::CertificateBody>>,
}

/// What differs between the databases hallmark runs on.
#[async_trait]
pub trait Backend: Database {
    /// The name `/readyz` and the logs show.
    const LABEL: &'static str;
    /// Run first in a read transaction so its reads are one snapshot
    /// (empty where a read transaction is one already).
    const READ_SNAPSHOT: &'static str;
    /// Whether [`Statement`]s that name no parameters in their own text
    /// should write them as `?` in order rather than `$n`: SQLite finds a
    /// numbered parameter's name by a linear scan of every parameter, so
    /// binding a multi-row INSERT of n numbered parameters takes n² string
    /// comparisons (9 % of the CPU of REST issuance before this).
    const ANONYMOUS_PARAMETERS: bool;
    /// Whether a [`Script`] of several writes is one statement of
    /// data-modifying CTEs (PostgreSQL) rather than statements in turn.
    const WRITES_AS_CTES: bool;
    /// Whether a [`Script`]'s multi-row writes bind each column as one
    /// array (`SELECT * FROM unnest($1::text[], …)`, PostgreSQL) rather
    /// than a `VALUES` list of a parameter per value: the text is then
    /// the same whatever the number of rows, so the writer's connection
    /// prepares and plans it once, and the server binds and initialises
    /// a few arrays instead of hundreds of parameters per batch.
    const ROWS_AS_ARRAYS: bool;
    /// Adds `column` as one array parameter (only where
    /// [`Self::ROWS_AS_ARRAYS`]).
    fn add_column<'q>(
        out: &mut <Self as Database>::Arguments<'q>,
        column: &'q Column<'_>,
    ) -> std::result::Result<(), sqlx::error::BoxDynError>;
    /// Whether its connections are sockets, so that a runtime that
    /// drives them needs tokio's I/O driver: not SQLite's, which are
    /// threads of sqlx's reached over channels (the group-commit writer's
    /// runtime then parks on a futex, not on `epoll`).
    const SOCKETS: bool;
    /// Fails unless every commit on `write` waits for the disk.
    async fn check_durable(write: &Pool<Self>) -> Result<()>;
    /// How many rows a statement changed.
    fn rows_affected(done: &Self::QueryResult) -> u64;
    /// Streams the revoked certificates `scan` selects, read on `conn`
    /// (inside its read transaction), into `sink`. A CRL reads up to
    /// millions of rows this way, so each backend does it its cheapest way.
    async fn scan_revoked(
        conn: &mut Self::Connection,
        scan: &RevokedScan,
        sink: &mut (dyn FnMut(RevokedRow) + Send),
    ) -> Result<()>;
}

/// The query behind [`Backend::scan_revoked`]: its parameters are, in
/// order, the issuer, `not_after_from`, then the partition and the
/// `revoked_since` when set. The partial index `certificates_revoked`
/// covers every column, so the scan never reads the table.
pub(super) fn revoked_scan_sql(scan: &RevokedScan, numbered: bool) -> String {
    let mut n = 0;
    let mut param = || {
        n += 1;
        if numbered {
            format!("${n}")
        } else {
            "?".to_owned()
        }
    };
    let mut sql = format!(
        "SELECT serial, revoked_at, revocation_reason, invalidity_date \
         FROM certificates WHERE issuer_id = {} AND revoked_at IS NOT NULL AND not_after >= {}",
        param(),
        param()
    );
    if scan.partition.is_some() {
        sql += &format!(" AND crl_partition = {}", param());
    }
    if scan.revoked_since.is_some() {
        sql += &format!(" AND revoked_at >= {}", param());
    }
    sql
}

/// One row of [`revoked_scan_sql`] as a [`RevokedRow`].
pub(super) fn revoked_row(
    serial: &str,
    revoked_at: i64,
    reason: Option<i64>,
    invalidity_date: Option<i64>,
) -> Result<RevokedRow> {
    Ok(RevokedRow {
        serial: serial
            .parse::<Serial>()
            .map_err(|_| StoreError::Corrupt(format!("serial {serial:?}")))?,
        revoked_at,
        reason: reason.unwrap_or(0),
        invalidity_date,
    })
}

/// The SQL both databases record used nonces with, followed by `VALUES
/// (…), (…)`: the fresh ones come back.
pub(super) const INSERT_USED_NONCES_SUFFIX: &str =
    " ON CONFLICT (nonce) DO NOTHING RETURNING nonce";

/// Which of `nonces` the database took as fresh (`inserted`), a repeat
/// within the batch counting as used.
pub(super) fn fresh_nonces(nonces: &[UsedNonce], inserted: Vec<(String,)>) -> Vec<bool> {
    let mut inserted: std::collections::HashSet<String> =
        inserted.into_iter().map(|(n,)| n).collect();
    nonces.iter().map(|n| inserted.remove(&n.nonce)).collect()
}

/// A multi-row INSERT of `nonces` into `table` (each nonce once), its
/// rows bound as `B` binds them best (on PostgreSQL one array per
/// column, so every batch is the same prepared text).
pub(super) fn insert_nonces<'a, B: Backend>(table: &str, nonces: &'a [UsedNonce]) -> Statement<'a> {
    let mut q = Statement::for_rows::<B>();
    q.push(&format!("INSERT INTO {table} (nonce, expires_at) "));
    let mut seen = std::collections::HashSet::new();
    for n in nonces.iter().filter(|n| seen.insert(n.nonce.as_str())) {
        q.row().bind(n.nonce.as_str()).bind(n.expires_at);
    }
    q.push(INSERT_USED_NONCES_SUFFIX);
    q
}

/// A transaction on the write pool.
pub(super) type Tx<B> = sqlx::Transaction<'static, B>;

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
    /// Takes the audit head (serialising this transaction with every other
    /// writer: a row lock on PostgreSQL, across instances; the write lock on
    /// SQLite, across processes) and returns the chain's end.
    pub(super) async fn lock_audit(tx: &mut Tx<B>) -> Result<(i64, Vec<u8>)> {
        Ok(sqlx::query_as(LOCK_AUDIT_HEAD).fetch_one(&mut **tx).await?)
    }

    /// Appends audit records after `head` (from [`Self::lock_audit`]),
    /// extending the hash chain, in one round trip to the database.
    pub(super) async fn write_audit(
        tx: &mut Tx<B>,
        head: (i64, Vec<u8>),
        events: &[&AuditEvent],
    ) -> Result<()> {
        let mut script = Script::new::<B>();
        Self::push_audit(&mut script, head, events, false);
        script.execute(tx).await?;
        count_audit(events);
        Ok(())
    }

    /// Adds to `script` the audit records of `events` after `head`
    /// (from [`Self::lock_audit`], or what the writer last knew), extending
    /// the hash chain, with one multi-row INSERT per 128, and the chain's
    /// new end; returns that end. With `guarded`, the end moves only if it
    /// still is `head`, and the script fails otherwise: for a script that
    /// runs without taking the head first. A statement of CTEs checks the
    /// rows the update matched ([`Script::check_last`]); on SQLite an
    /// update from a moved head would set the head's `seq` to NULL, which
    /// its `NOT NULL` refuses (and the first record's `seq` would already
    /// be taken, which the primary key refuses).
    pub(super) fn push_audit<'a>(
        script: &mut Script<'a>,
        head: (i64, Vec<u8>),
        events: &[&'a AuditEvent],
        guarded: bool,
    ) -> (i64, Vec<u8>) {
        if events.is_empty() {
            return head;
        }
        let expected = guarded.then(|| head.clone());
        let (mut seq, mut prev) = head;
        for chunk in events.chunks(ROWS_PER_INSERT) {
            let insert = script.write(INSERT_AUDIT_PREFIX);
            for event in chunk {
                seq += 1;
                let at = event.at.unix_timestamp();
                let details = event.details.to_string();
                let hash = super::audit_hash(
                    &prev,
                    seq,
                    at,
                    &event.actor,
                    &event.action,
                    &event.subject,
                    &details,
                );
                let prev_hash = std::mem::replace(&mut prev, hash.clone());
                insert
                    .row()
                    .bind(seq)
                    .bind(at)
                    .bind(event.actor.as_str())
                    .bind(event.action.as_str())
                    .bind(event.subject.as_str())
                    .bind(details)
                    .bind(prev_hash)
                    .bind(hash);
            }
        }
        match expected {
            // SQLite: a moved head makes `seq` NULL, which `NOT NULL` refuses.
            Some((old_seq, old_hash)) if !script.ctes => {
                script
                    .write("UPDATE audit_head SET seq = CASE WHEN seq = ")
                    .bind(old_seq)
                    .push(" AND hash = ")
                    .bind(old_hash)
                    .push(" THEN ")
                    .bind(seq)
                    .push(" END, hash = ")
                    .bind(prev.clone())
                    .push(" WHERE id = 1");
            }
            expected => {
                let update = script
                    .write("UPDATE audit_head SET seq = ")
                    .bind(seq)
                    .push(", hash = ")
                    .bind(prev.clone())
                    .push(" WHERE id = 1");
                if let Some((old_seq, old_hash)) = expected {
                    update
                        .push(" AND seq = ")
                        .bind(old_seq)
                        .push(" AND hash = ")
                        .bind(old_hash)
                        .push(" RETURNING 1");
                    script.check_last(1);
                }
            }
        }
        (seq, prev)
    }

    /// [`Self::write_audit`] then commits: the end of every audited write.
    pub(super) async fn commit_audited(
        mut tx: Tx<B>,
        head: (i64, Vec<u8>),
        events: &[&AuditEvent],
    ) -> Result<()> {
        Self::write_audit(&mut tx, head, events).await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`Self::lock_audit`] then [`Self::write_audit`].
    pub(super) async fn append_audit_tx(tx: &mut Tx<B>, events: &[&AuditEvent]) -> Result<()> {
        let head = Self::lock_audit(tx).await?;
        Self::write_audit(tx, head, events).await
    }
}

/// What the workflow's writer knows of the audit chain's end between its
/// batches, so that a batch with nothing guarded can be one statement
/// without taking the head first ([`SqlStore::commit_writes`]). Any other
/// write of the chain — another instance, a revocation of this one, a CLI
/// command on the same SQLite file — makes it stale; the batch's
/// statement then fails whole and the batch is committed the ordinary
/// way, which reads the head again.
#[derive(Default)]
pub(in crate::store) struct KnownHead {
    /// The end after the writer's last commit.
    head: Option<(i64, Vec<u8>)>,
    /// Batches to commit the ordinary way before trying again, after the
    /// head was found stale: doubles each time up to
    /// [`KnownHead::MAX_BACKOFF`] so that instances writing the chain in
    /// turn do not each pay a failed statement per batch; reset by a
    /// batch that needed no retry.
    backoff: u32,
    skip: u32,
}

impl KnownHead {
    const MAX_BACKOFF: u32 = 64;

    /// The head to write after without taking it, if worth trying now.
    pub(in crate::store) fn take_for_batch(&mut self) -> Option<(i64, Vec<u8>)> {
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        self.head.take()
    }

    /// The chain's end after a commit (or as just read).
    pub(in crate::store) fn set(&mut self, head: (i64, Vec<u8>)) {
        self.head = Some(head);
    }

    /// A one-statement batch committed: the known head was right.
    pub(in crate::store) fn confirmed(&mut self, head: (i64, Vec<u8>)) {
        self.backoff = 0;
        self.head = Some(head);
    }

    /// The head had moved: skip the next batches, more each time.
    pub(in crate::store) fn stale(&mut self) {
        self.backoff = (self.backoff * 2).clamp(1, Self::MAX_BACKOFF);
        self.skip = self.backoff;
    }
}

/// Counts audit records written (once they are).
pub(super) fn count_audit(events: &[&AuditEvent]) {
    for event in events {
        crate::metrics::METRICS
            .audit_events
            .inc(&[event.action.as_str()]);
    }
}

/// Rows per multi-row INSERT: 128 rows of at most 18 parameters stay far below
/// SQLite's and PostgreSQL's bound-parameter limits.
pub(super) const ROWS_PER_INSERT: usize = 128;

/// Taking the audit head first both reads the chain's end and, by writing,
/// serialises every audit-writing transaction.
const LOCK_AUDIT_HEAD: &str = "UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, hash";

/// Followed by `VALUES (…), (…)` for a batch.
const INSERT_AUDIT_PREFIX: &str =
    "INSERT INTO audit_log (seq, at, actor, action, subject, details, prev_hash, hash) ";

/// A statement whose shape depends on the input (optional filters, a
/// multi-row INSERT), with its parameters numbered as they are added.
///
/// sqlx's `QueryBuilder` cannot be used from generic code (its arguments
/// would have to outlive it), so this one keeps the values itself and
/// binds them when the query is made.
pub(super) struct Statement<'a> {
    sql: String,
    args: Vec<Arg<'a>>,
    /// Whether the current `VALUES` row is open.
    in_row: bool,
    /// Where [`Self::bind`] wrote each `$n` in `sql`.
    marks: Vec<std::ops::Range<usize>>,
    /// Whether the text names parameters itself ([`Self::arg`]).
    named: bool,
    /// Whether `VALUES` rows are bound as arrays ([`Backend::ROWS_AS_ARRAYS`]),
    /// and the columns of the rows being bound so.
    arrays: bool,
    columns: Vec<Column<'a>>,
    /// The column the next [`Self::bind`] of a row fills.
    column: usize,
    /// Whether a row bound a value of another type than the row before
    /// it in the same column (a bug, refused by [`Self::query`]).
    mixed: bool,
}

/// A column of the rows of a multi-row write, bound as one array.
pub enum Column<'a> {
    Text(Vec<Option<Cow<'a, str>>>),
    Int(Vec<Option<i64>>),
    Bytes(Vec<Option<Cow<'a, [u8]>>>),
    Bool(Vec<Option<bool>>),
}

impl<'a> Column<'a> {
    fn of(value: Arg<'a>) -> Self {
        match value {
            Arg::Text(v) => Column::Text(vec![v]),
            Arg::Int(v) => Column::Int(vec![v]),
            Arg::Bytes(v) => Column::Bytes(vec![v]),
            Arg::Bool(v) => Column::Bool(vec![v]),
            Arg::Column(c) => c,
        }
    }

    /// Adds a row's value; `false` if it is of another type.
    fn push(&mut self, value: Arg<'a>) -> bool {
        match (self, value) {
            (Column::Text(c), Arg::Text(v)) => c.push(v),
            (Column::Int(c), Arg::Int(v)) => c.push(v),
            (Column::Bytes(c), Arg::Bytes(v)) => c.push(v),
            (Column::Bool(c), Arg::Bool(v)) => c.push(v),
            _ => return false,
        }
        true
    }

    /// The PostgreSQL type of the array.
    fn array_type(&self) -> &'static str {
        match self {
            Column::Text(_) => "text[]",
            Column::Int(_) => "int8[]",
            Column::Bytes(_) => "bytea[]",
            Column::Bool(_) => "bool[]",
        }
    }
}

/// One parameter of a [`Statement`]: a value or NULL of one of the
/// column types hallmark uses.
pub(super) enum Arg<'a> {
    Text(Option<Cow<'a, str>>),
    Int(Option<i64>),
    Bytes(Option<Cow<'a, [u8]>>),
    Bool(Option<bool>),
    /// A column of rows ([`Backend::ROWS_AS_ARRAYS`]).
    Column(Column<'a>),
}

macro_rules! arg_from {
    ($($t:ty => $v:expr),* $(,)?) => {
        $(impl<'a> From<$t> for Arg<'a> {
            fn from(x: $t) -> Self {
                let f: fn($t) -> Arg<'a> = $v;
                f(x)
            }
        })*
    };
}

arg_from! {
    &'a str => |x| Arg::Text(Some(Cow::Borrowed(x))),
    &'a String => |x| Arg::Text(Some(Cow::Borrowed(x))),
    String => |x| Arg::Text(Some(Cow::Owned(x))),
    Option<&'a str> => |x| Arg::Text(x.map(Cow::Borrowed)),
    Option<&'a [u8]> => |x| Arg::Bytes(x.map(Cow::Borrowed)),
    &'a Option<String> => |x| Arg::Text(x.as_deref().map(Cow::Borrowed)),
    Option<String> => |x| Arg::Text(x.map(Cow::Owned)),
    i64 => |x| Arg::Int(Some(x)),
    Option<i64> => Arg::Int,
    &'a [u8] => |x| Arg::Bytes(Some(Cow::Borrowed(x))),
    &'a Vec<u8> => |x| Arg::Bytes(Some(Cow::Borrowed(x))),
    Vec<u8> => |x| Arg::Bytes(Some(Cow::Owned(x))),
    &'a Option<Vec<u8>> => |x| Arg::Bytes(x.as_deref().map(Cow::Borrowed)),
    Option<Vec<u8>> => |x| Arg::Bytes(x.map(Cow::Owned)),
    bool => |x| Arg::Bool(Some(x)),
    Option<bool> => Arg::Bool,
    &'a Failure => |x| Arg::Text(Some(Cow::Owned(x.to_json()))),
    &'a Option<Failure> => |x| Arg::Text(x.as_ref().map(|f| Cow::Owned(f.to_json()))),
    // Serialising a struct of strings cannot fail.
    &'a Option<Organization> => |x| Arg::Text(x.as_ref().map(|o| Cow::Owned(serde_json::to_string(o).unwrap_or_default()))),
}

/// The words enums are stored as.
macro_rules! arg_from_words {
    ($($t:ty),* $(,)?) => {
        $(impl From<$t> for Arg<'_> {
            fn from(x: $t) -> Self {
                Arg::Text(Some(Cow::Borrowed(x.as_str())))
            }
        }
        impl From<&$t> for Arg<'_> {
            fn from(x: &$t) -> Self {
                Arg::Text(Some(Cow::Borrowed(x.as_str())))
            }
        })*
    };
}

arg_from_words!(
    OrderStatus,
    AuthorizationStatus,
    ChallengeStatus,
    ChallengeKind,
    IdentifierKind,
    Validation,
    OrderSource,
);

impl<'a> Statement<'a> {
    pub(super) fn new(sql: &str) -> Self {
        Statement {
            sql: sql.to_owned(),
            args: Vec::new(),
            in_row: false,
            marks: Vec::new(),
            named: false,
            arrays: false,
            columns: Vec::new(),
            column: 0,
            mixed: false,
        }
    }

    /// An empty statement whose `VALUES` rows are bound as `B` binds
    /// them best ([`Backend::ROWS_AS_ARRAYS`]).
    pub(super) fn for_rows<B: Backend>() -> Self {
        Statement {
            arrays: B::ROWS_AS_ARRAYS,
            ..Statement::new("")
        }
    }

    /// Appends SQL text.
    pub(super) fn push(&mut self, sql: &str) -> &mut Self {
        self.close_row();
        self.sql.push_str(sql);
        self
    }

    /// Adds the value of a parameter the text already names (`$n`, in
    /// order, before any [`Self::bind`]).
    pub(super) fn arg(&mut self, value: impl Into<Arg<'a>>) -> &mut Self {
        self.args.push(value.into());
        self.named = true;
        self
    }

    /// Appends a parameter (`$n`) with its value.
    pub(super) fn bind(&mut self, value: impl Into<Arg<'a>>) -> &mut Self {
        if self.in_row && self.arrays {
            let value = value.into();
            match self.columns.get_mut(self.column) {
                Some(column) => self.mixed |= !column.push(value),
                None => self.columns.push(Column::of(value)),
            }
            self.column += 1;
            return self;
        }
        if self.in_row {
            self.sql
                .push_str(if self.sql.ends_with('(') { "" } else { ", " });
        }
        self.args.push(value.into());
        let at = self.sql.len();
        // Writing into the String cannot fail.
        let _ = write!(self.sql, "${}", self.args.len());
        self.marks.push(at..self.sql.len());
        self
    }

    /// Ends a list query: newest first by `created_at` then `key`, after
    /// the `(created_at, key)` cursor of the previous page if any, at most
    /// `limit` rows.
    pub(super) fn newest_first(
        &mut self,
        key: &'static str,
        before: &'a Option<(i64, String)>,
        limit: i64,
    ) -> &mut Self {
        if let Some((created, last)) = before {
            self.push(" AND (created_at < ")
                .bind(*created)
                .push(" OR (created_at = ")
                .bind(*created)
                .push(" AND ")
                .push(key)
                .push(" < ")
                .bind(last)
                .push("))");
        }
        self.push(" ORDER BY created_at DESC, ")
            .push(key)
            .push(" DESC LIMIT ")
            .bind(limit)
    }

    /// Starts a row of a multi-row `VALUES` list; the parameters bound
    /// until the next `row` or `push` are its columns.
    pub(super) fn row(&mut self) -> &mut Self {
        if self.arrays {
            // A row after the first must fill every column the first did.
            self.mixed |= self.in_row && self.column != self.columns.len();
            self.in_row = true;
            self.column = 0;
            return self;
        }
        if self.in_row {
            self.sql.push_str("), (");
        } else {
            self.sql.push_str("VALUES (");
            self.in_row = true;
        }
        self
    }

    fn close_row(&mut self) {
        if !std::mem::take(&mut self.in_row) {
            return;
        }
        if !self.arrays {
            self.sql.push(')');
            return;
        }
        // The rows as one array per column, named as a `VALUES` list
        // names its columns.
        self.mixed |= self.column != self.columns.len();
        let columns = std::mem::take(&mut self.columns);
        let width = columns.len();
        self.sql.push_str("SELECT * FROM unnest(");
        for (i, column) in columns.into_iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let array_type = column.array_type();
            self.args.push(Arg::Column(column));
            let _ = write!(self.sql, "{sep}${}::{array_type}", self.args.len());
        }
        self.sql.push_str(") AS r(");
        for i in 1..=width {
            let sep = if i == 1 { "" } else { ", " };
            let _ = write!(self.sql, "{sep}column{i}");
        }
        self.sql.push(')');
    }

    /// The statement, its parameters bound.
    pub(super) fn query<B: Backend>(
        &mut self,
    ) -> Result<sqlx::query::Query<'_, B, B::Arguments<'_>>>
    where
        Self: Binds<B>,
        for<'q> B::Arguments<'q>: sqlx::IntoArguments<'q, B>,
    {
        self.finish::<B>();
        self.refuse_mixed()?;
        Ok(sqlx::query_with(&self.sql, self.arguments()?))
    }

    /// The statement as a query for rows of type `O`, its parameters bound.
    pub(super) fn query_as<B: Backend, O>(
        &mut self,
    ) -> Result<sqlx::query::QueryAs<'_, B, O, B::Arguments<'_>>>
    where
        Self: Binds<B>,
        O: for<'r> sqlx::FromRow<'r, B::Row>,
        for<'q> B::Arguments<'q>: sqlx::IntoArguments<'q, B>,
    {
        self.finish::<B>();
        self.refuse_mixed()?;
        Ok(sqlx::query_as_with(&self.sql, self.arguments()?))
    }

    fn refuse_mixed(&self) -> Result<()> {
        if self.mixed {
            return Err(StoreError::Database(
                "a multi-row write bound rows of different columns".into(),
            ));
        }
        Ok(())
    }

    /// Closes the text and, where `B` binds anonymous parameters faster
    /// and the text names none itself, writes each `$n` as `?`.
    fn finish<B: Backend>(&mut self) {
        self.close_row();
        if B::ANONYMOUS_PARAMETERS && !self.named {
            // One pass: replacing each mark in place moved the text after
            // it every time, quadratic in a large batch's parameters.
            let mut sql = String::with_capacity(self.sql.len());
            let mut from = 0;
            for mark in std::mem::take(&mut self.marks) {
                sql.push_str(&self.sql[from..mark.start]);
                sql.push('?');
                from = mark.end;
            }
            sql.push_str(&self.sql[from..]);
            self.sql = sql;
        }
    }
}

/// Several writes sent to the database as one statement, so a batch
/// costs one round trip however many tables it fills: on SQLite the
/// statements follow each other (`…; …`, which sqlx runs in turn with the
/// parameters numbered across them); on PostgreSQL, whose prepared
/// statements hold one command, each write is a data-modifying CTE
/// (`WITH w0 AS (…), w1 AS (…) SELECT 1`). Every write of a CTE runs
/// once against the same snapshot, and foreign keys are checked at the
/// end of the statement, so a row may refer to one inserted by an
/// earlier write of the same script on both backends.
pub(super) struct Script<'a> {
    /// The statements to send, each under [`SCRIPT_PARAMETERS`].
    done: Vec<Statement<'a>>,
    q: Statement<'a>,
    ctes: bool,
    writes: usize,
    open: bool,
    /// The writes of the statement being written whose rows must number
    /// exactly so many ([`Self::check_last`]).
    checked: Vec<(usize, usize)>,
}

/// Parameters after which a [`Script`] starts another statement: one
/// write adds at most 128 rows of 17, so a statement stays below
/// SQLite's 32,766 bound parameters while any ordinary batch is one
/// statement. On PostgreSQL a write's rows are one array per column
/// ([`Backend::ROWS_AS_ARRAYS`]), so a script is one statement there.
const SCRIPT_PARAMETERS: usize = 30_000;

impl<'a> Script<'a> {
    pub(super) fn new<B: Backend>() -> Self {
        Script {
            done: Vec::new(),
            q: Statement::for_rows::<B>(),
            ctes: B::WRITES_AS_CTES,
            writes: 0,
            open: false,
            checked: Vec::new(),
        }
    }

    /// Makes the statement fail unless the last write added (which must
    /// end `RETURNING` something) returned exactly `rows` rows — on
    /// PostgreSQL, where the statement is one transaction of its own, so
    /// that nothing of it stays. A guarded write that matched fewer (or
    /// more) rows is the only way to get there: the statement then
    /// divides by zero (PostgreSQL has no `RAISE` outside functions, and
    /// a constant `1/0` would be folded when planning), an error the
    /// caller takes as "ask again the ordinary way". Without CTEs (SQLite,
    /// whose one-statement text is `BEGIN IMMEDIATE; …; COMMIT`, rolled
    /// back whole on an error) a guard follows the write: it sets the
    /// audit head's `seq` to NULL, which `NOT NULL` refuses, unless
    /// `changes()` — the rows the statement before it changed — is `rows`.
    pub(super) fn check_last(&mut self, rows: usize) {
        if self.writes == 0 {
            return;
        }
        if self.ctes {
            self.checked.push((self.writes - 1, rows));
        } else {
            self.write(&format!(
                "UPDATE audit_head SET seq = CASE WHEN changes() = {rows} THEN seq END WHERE id = 1"
            ));
        }
    }

    /// Starts the next write with `sql`; its text and parameters go on
    /// through the statement returned (only [`Statement::bind`], never
    /// [`Statement::arg`]: the parameters are numbered across writes).
    pub(super) fn write(&mut self, sql: &str) -> &mut Statement<'a> {
        if self.q.args.len() >= SCRIPT_PARAMETERS {
            self.end_statement();
        }
        self.close();
        if self.ctes {
            let sep = if self.writes == 0 { "WITH " } else { ", " };
            self.q.push(&format!("{sep}w{} AS (", self.writes));
            self.open = true;
        } else if self.writes > 0 {
            self.q.push("; ");
        }
        self.writes += 1;
        self.q.push(sql)
    }

    fn close(&mut self) {
        if std::mem::take(&mut self.open) {
            self.q.push(")");
        }
    }

    /// Closes the statement being written, if it has a write.
    fn end_statement(&mut self) {
        if self.writes == 0 {
            return;
        }
        self.close();
        if self.ctes {
            if self.checked.is_empty() {
                self.q.push(" SELECT 1");
            } else {
                let all: Vec<String> = std::mem::take(&mut self.checked)
                    .into_iter()
                    .map(|(w, rows)| format!("(SELECT count(*) FROM w{w}) = {rows}"))
                    .collect();
                self.q.push(&format!(
                    " SELECT 1 / (CASE WHEN {} THEN 1 ELSE 0 END)",
                    all.join(" AND ")
                ));
            }
        }
        let next = Statement {
            arrays: self.q.arrays,
            ..Statement::new("")
        };
        self.done.push(std::mem::replace(&mut self.q, next));
        self.writes = 0;
    }

    /// The script as one statement, if it is one (a script past
    /// [`SCRIPT_PARAMETERS`] is several).
    pub(super) fn into_statement(self) -> Option<Statement<'a>> {
        let mut statements = self.statements();
        if statements.len() == 1 {
            statements.pop()
        } else {
            None
        }
    }

    /// The statements, in order.
    fn statements(mut self) -> Vec<Statement<'a>> {
        self.end_statement();
        self.done
    }

    /// Runs every write in `tx`, in order: one round trip for any
    /// ordinary batch; nothing if there is no write.
    pub(super) async fn execute<B: Backend>(self, tx: &mut Tx<B>) -> Result<()>
    where
        Statement<'a>: Binds<B>,
        for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B>,
        for<'q> B::Arguments<'q>: sqlx::IntoArguments<'q, B>,
    {
        for mut statement in self.statements() {
            statement.query::<B>()?.execute(&mut **tx).await?;
        }
        Ok(())
    }
}

/// Binding a [`Statement`]'s values on database `B`.
pub(super) trait Binds<B: Backend> {
    /// The values, in order, as `B`'s arguments; a value the database
    /// cannot take is an error, never a silently shorter parameter list.
    fn arguments(&self) -> Result<B::Arguments<'_>>;
}

impl<B: Backend> Binds<B> for Statement<'_>
where
    for<'q> Option<&'q str>: sqlx::Encode<'q, B> + sqlx::Type<B>,
    for<'q> Option<&'q [u8]>: sqlx::Encode<'q, B> + sqlx::Type<B>,
    for<'q> Option<i64>: sqlx::Encode<'q, B> + sqlx::Type<B>,
    for<'q> Option<bool>: sqlx::Encode<'q, B> + sqlx::Type<B>,
{
    fn arguments(&self) -> Result<B::Arguments<'_>> {
        use sqlx::Arguments;
        let mut out = B::Arguments::default();
        out.reserve(self.args.len(), 0);
        for (i, arg) in self.args.iter().enumerate() {
            match arg {
                Arg::Text(v) => out.add(v.as_deref()),
                Arg::Int(v) => out.add(*v),
                Arg::Bytes(v) => out.add(v.as_deref()),
                Arg::Bool(v) => out.add(*v),
                Arg::Column(c) => B::add_column(&mut out, c),
            }
            .map_err(|e| StoreError::Database(format!("parameter ${}: {e}", i + 1)))?;
        }
        Ok(out)
    }
}

#[async_trait]
impl<B: Backend> Health for SqlStore<B>
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
    fn backend(&self) -> &'static str {
        B::LABEL
    }

    fn one_server(&self) -> bool {
        self.one_server
    }

    fn alone(&self) -> bool {
        self.answers_from_memory()
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    fn pools(&self) -> Vec<super::PoolStats> {
        [("read", &self.read), ("write", &self.write)]
            .into_iter()
            .chain(self.own_pools.iter().map(|own| (own.name, &own.pool)))
            .map(|(name, pool)| super::PoolStats {
                name,
                size: pool.size(),
                idle: pool.num_idle() as u32,
                max: pool.options().get_max_connections(),
            })
            .collect()
    }

    async fn check_durable(&self) -> Result<()> {
        B::check_durable(&self.write).await?;
        for own in self.own_pools.iter().filter(|own| own.durable) {
            B::check_durable(&own.pool).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_writes<'a>(mut script: Script<'a>) -> Vec<Statement<'a>> {
        let insert = script.write("INSERT INTO a (x) ");
        insert.row().bind(1i64).row().bind(2i64);
        script
            .write("UPDATE h SET v = ")
            .bind(3i64)
            .push(" WHERE id = 1");
        script.statements()
    }

    #[test]
    fn a_script_is_one_statement_of_ctes_on_postgres_and_statements_in_turn_on_sqlite() {
        let pg = two_writes(Script::new::<sqlx::Postgres>());
        assert_eq!(pg.len(), 1);
        assert_eq!(
            pg[0].sql,
            "WITH w0 AS (INSERT INTO a (x) SELECT * FROM unnest($1::int8[]) AS r(column1)), \
             w1 AS (UPDATE h SET v = $2 WHERE id = 1) SELECT 1"
        );
        // The rows are one array per column.
        assert_eq!(pg[0].args.len(), 2);
        assert!(matches!(&pg[0].args[0], Arg::Column(Column::Int(v)) if v == &[Some(1), Some(2)]));
        let mut sqlite = two_writes(Script::new::<sqlx::Sqlite>());
        assert_eq!(sqlite.len(), 1);
        sqlite[0].finish::<sqlx::Sqlite>();
        assert_eq!(
            sqlite[0].sql,
            "INSERT INTO a (x) VALUES (?), (?); UPDATE h SET v = ? WHERE id = 1"
        );
        assert_eq!(sqlite[0].args.len(), 3);
        assert!(Script::new::<sqlx::Postgres>().statements().is_empty());
    }

    #[test]
    fn every_numbered_parameter_becomes_one_anonymous_one_on_sqlite() {
        let mut script = Script::new::<sqlx::Sqlite>();
        let insert = script.write("INSERT INTO a (x, y) ");
        for i in 0..150i64 {
            insert.row().bind(i).bind("$9");
        }
        let mut statements = script.statements();
        statements[0].finish::<sqlx::Sqlite>();
        let sql = &statements[0].sql;
        let expected = format!(
            "INSERT INTO a (x, y) VALUES {}",
            vec!["(?, ?)"; 150].join(", ")
        );
        assert_eq!(sql, &expected, "every mark, and only the marks, became `?`");
        assert_eq!(statements[0].args.len(), 300);
    }

    #[test]
    fn a_guarded_audit_script_moves_the_head_only_from_where_it_was_known() {
        let event = AuditEvent {
            at: time::OffsetDateTime::UNIX_EPOCH,
            actor: "system".into(),
            action: "certificate.issue".into(),
            subject: "01".into(),
            details: serde_json::json!({}),
        };
        let head = (7i64, vec![9u8; 32]);
        let write = |guarded| {
            let mut script = Script::new::<sqlx::Postgres>();
            let end = SqlStore::<sqlx::Postgres>::push_audit(
                &mut script,
                head.clone(),
                &[&event, &event],
                guarded,
            );
            (script.into_statement().unwrap(), end)
        };
        let (plain, end) = write(false);
        assert!(plain
            .sql
            .ends_with("w1 AS (UPDATE audit_head SET seq = $9, hash = $10 WHERE id = 1) SELECT 1"));
        assert_eq!(end.0, 9);
        let (guarded, guarded_end) = write(true);
        assert_eq!(guarded_end, end, "the guard changes nothing of the chain");
        assert!(guarded.sql.ends_with(
            "w1 AS (UPDATE audit_head SET seq = $9, hash = $10 WHERE id = 1 \
             AND seq = $11 AND hash = $12 RETURNING 1) \
             SELECT 1 / (CASE WHEN (SELECT count(*) FROM w1) = 1 THEN 1 ELSE 0 END)"
        ));
        assert!(matches!(guarded.args[10], Arg::Int(Some(7))));
        assert!(matches!(&guarded.args[11], Arg::Bytes(Some(h)) if h.as_ref() == [9u8; 32]));
        // The two records' sequence numbers are one column.
        assert!(
            matches!(&guarded.args[0], Arg::Column(Column::Int(v)) if v == &[Some(8), Some(9)])
        );
        // On SQLite a script runs only after taking the head in its
        // transaction: no guard is written.
        let mut script = Script::new::<sqlx::Sqlite>();
        SqlStore::<sqlx::Sqlite>::push_audit(&mut script, head.clone(), &[&event], true);
        let statement = script.into_statement().unwrap();
        assert!(statement.sql.ends_with("WHERE id = 1"));
    }

    #[test]
    fn a_large_script_is_split_below_the_parameter_bound_and_rows_of_any_number_are_one_text() {
        let large = |mut script: Script<'static>| {
            for _ in 0..300 {
                let insert = script.write("INSERT INTO a (x) ");
                for i in 0..128i64 {
                    insert.row().bind(i);
                }
            }
            script.statements()
        };
        // SQLite binds each value: past SCRIPT_PARAMETERS a script is
        // several statements, each numbering its own parameters.
        let statements = large(Script::new::<sqlx::Sqlite>());
        assert_eq!(statements.len(), 2);
        assert_eq!(
            statements.iter().map(|s| s.args.len()).sum::<usize>(),
            300 * 128
        );
        for s in &statements {
            assert!(s.args.len() < 32_766, "SQLite's bound on parameters");
            assert!(s.sql.starts_with("INSERT INTO a (x) VALUES ($1), ($2)"));
        }
        // PostgreSQL binds a column of rows as one array: one statement,
        // and the same text for 1 row as for 128.
        let statements = large(Script::new::<sqlx::Postgres>());
        assert_eq!(statements.len(), 1);
        assert_eq!(statements[0].args.len(), 300);
        assert!(statements[0]
            .args
            .iter()
            .all(|a| matches!(a, Arg::Column(Column::Int(v)) if v.len() == 128)));
        let text = |rows: i64| {
            let mut script = Script::new::<sqlx::Postgres>();
            let insert = script.write("INSERT INTO a (x, y) ");
            for i in 0..rows {
                insert.row().bind(i).bind("y");
            }
            script.into_statement().unwrap().sql
        };
        assert_eq!(text(1), text(128));
        assert_eq!(
            text(3),
            "WITH w0 AS (INSERT INTO a (x, y) SELECT * FROM unnest($1::int8[], $2::text[]) \
             AS r(column1, column2)) SELECT 1"
        );
    }

    #[test]
    fn rows_of_different_columns_are_refused_not_sent() {
        let refused = |second_row: &dyn Fn(&mut Statement<'static>)| {
            let mut script = Script::new::<sqlx::Postgres>();
            let insert = script.write("INSERT INTO a (x, y) ");
            insert.row().bind(1i64).bind("y").row();
            second_row(insert);
            let mut statement = script.into_statement().unwrap();
            statement.query::<sqlx::Postgres>().is_err()
        };
        assert!(
            refused(&|row| {
                row.bind("x").bind("y");
            }),
            "a column of another type"
        );
        assert!(
            refused(&|row| {
                row.bind(2i64);
            }),
            "a row short of a column"
        );
        assert!(
            !refused(&|row| {
                row.bind(2i64).bind("z");
            }),
            "rows alike are sent"
        );
    }
}
