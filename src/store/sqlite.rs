//! The embedded default: one SQLite file in WAL mode with foreign keys on.
//!
//! All writes go through one connection (SQLite has one writer anyway), so
//! writers in this process never fight over the lock; readers get their own
//! pool. `synchronous = FULL` makes every commit durable, and is set once
//! when a connection opens, never changed per request.
//!
//! Used ACME nonces are not here: `serve` is the one server of its SQLite
//! file, and records them in memory (`workflow/nonces.rs`).

use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::pool::PoolConnectionMetadata;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Pool, Sqlite};

use async_trait::async_trait;

use super::sql::{ping_if_idle, revoked_row, revoked_scan_sql, Column};
use super::{Backend, Result, RevokedRow, RevokedScan, SqlStore, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite store.
pub type SqliteStore = SqlStore<Sqlite>;

impl SqlStore<Sqlite> {
    /// Opens (creating if needed) the database at `url` and migrates it.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::UnsupportedUrl(format!("{url}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            // A statement's undo record (the statement journal) in memory:
            // a batch's multi-row INSERT that outgrew 64 KiB of it created,
            // wrote and deleted a temporary file inside the commit.
            .pragma("temp_store", "MEMORY");
        let cannot_open = |e: sqlx::Error| StoreError::Database(format!("cannot open {url}: {e}"));
        let write = write_pool(&options).await.map_err(cannot_open)?;
        MIGRATOR
            .run(&write)
            .await
            .map_err(|e| StoreError::Database(format!("migrating {url}: {e}")))?;
        let read = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .test_before_acquire(false)
            .before_acquire(ping_if_idle)
            .connect_with(options.clone().read_only(true))
            .await
            .map_err(cannot_open)?;
        let batcher = Self::workflow_writer(write.clone());
        Ok(SqlStore {
            read,
            write,
            own_pools: Vec::new(),
            batcher,
            nonces: None,
            recent: Default::default(),
            one_server: true,
            alone: Arc::new(AtomicBool::new(true)),
            serve_lock: None,
        })
    }
}

/// A pool of one write connection to the database of `options`.
async fn write_pool(options: &SqliteConnectOptions) -> Result<Pool<Sqlite>, sqlx::Error> {
    SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .test_before_acquire(false)
        .before_acquire(ping_if_idle)
        .after_release(closed_unless_idle)
        // Its sqlx thread on the writer's core (`store/affinity.rs`).
        .after_connect(|_, _| {
            Box::pin(async {
                super::affinity::pin_threads_named(super::affinity::WRITE_THREAD);
                Ok(())
            })
        })
        .connect_with(
            options
                .clone()
                .thread_name(|id| format!("{}-{id}", super::affinity::WRITE_THREAD)),
        )
        .await
}

/// Whether a write connection may go back to the pool: only if no
/// transaction is open on it, by SQLite's account and by sqlx's. After a
/// failed COMMIT or statement (a full disk, an I/O error) SQLite may roll
/// the transaction back itself; sqlx's ROLLBACK then fails and it keeps
/// counting a transaction, so the next `begin` becomes a SAVEPOINT and a
/// later failure can leave every following "commit" inside a transaction
/// that never commits — writes acknowledged and then lost. Such a
/// connection is closed instead, and the pool opens a clean one.
fn closed_unless_idle(
    conn: &mut SqliteConnection,
    _: PoolConnectionMetadata,
) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        // Locking the handle waits for the worker to finish what is queued
        // (a dropped transaction's rollback) first.
        let sqlite_idle = {
            let mut handle = conn.lock_handle().await?;
            // SAFETY: the handle is locked for this call; sqlite3_get_autocommit
            // only reads the connection's state.
            unsafe { libsqlite3_sys::sqlite3_get_autocommit(handle.as_raw_handle().as_ptr()) != 0 }
        };
        let idle = sqlite_idle && !conn.is_in_transaction();
        if !idle {
            tracing::error!(
                sqlite_idle,
                sqlx_depth_zero = !conn.is_in_transaction(),
                "a SQLite write connection was left inside a transaction after a failure; closing it"
            );
        }
        Ok(idle)
    })
}

#[async_trait]
impl Backend for Sqlite {
    const LABEL: &'static str = "sqlite";
    /// A SQLite read transaction is a snapshot from its first read on.
    const READ_SNAPSHOT: &'static str = "";
    const ANONYMOUS_PARAMETERS: bool = true;
    const WRITES_AS_CTES: bool = false;
    const ROWS_AS_ARRAYS: bool = false;
    const SOCKETS: bool = false;

    fn add_column<'q>(
        _: &mut SqliteArguments<'q>,
        _: &'q Column<'_>,
    ) -> std::result::Result<(), sqlx::error::BoxDynError> {
        Err("SQLite has no array parameters".into())
    }

    /// Every connection that writes durable state flushes each commit
    /// (`synchronous` FULL or EXTRA).
    async fn check_durable(write: &Pool<Self>) -> Result<()> {
        let (level,): (i64,) = sqlx::query_as("PRAGMA main.synchronous")
            .fetch_one(write)
            .await?;
        if level < 2 {
            return Err(StoreError::NotDurable(format!(
                "the SQLite write connection has synchronous = {level}"
            )));
        }
        Ok(())
    }

    fn rows_affected(done: &Self::QueryResult) -> u64 {
        done.rows_affected()
    }

    /// Steps the query on the connection's own handle, in this thread,
    /// with the handle locked away from sqlx's worker thread for the scan.
    /// Through the worker every row is a message over a channel and a
    /// thread wake-up: a million rows took 6 s that way, almost all of it
    /// hand-offs. The scan runs inside the transaction `conn` has open, so
    /// it reads that transaction's snapshot.
    async fn scan_revoked(
        conn: &mut SqliteConnection,
        scan: &RevokedScan,
        sink: &mut (dyn FnMut(RevokedRow) + Send),
    ) -> Result<()> {
        let sql = revoked_scan_sql(scan, false);
        let mut handle = conn.lock_handle().await?;
        let db = handle.as_raw_handle();
        let mut run = || direct::scan_revoked(db, &sql, scan, sink);
        // Let the runtime move this worker's other tasks elsewhere while
        // the scan holds the thread (a current-thread runtime cannot).
        match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(run),
            _ => run(),
        }
    }
}

/// Direct calls into SQLite, on a handle locked from sqlx's worker.
mod direct {
    use std::ffi::{c_int, CStr};
    use std::ptr::NonNull;

    use libsqlite3_sys as ffi;

    use super::{revoked_row, Result, RevokedRow, RevokedScan, StoreError};

    /// A prepared statement, finalized when dropped.
    struct Prepared {
        db: *mut ffi::sqlite3,
        stmt: *mut ffi::sqlite3_stmt,
    }

    impl Prepared {
        fn new(db: NonNull<ffi::sqlite3>, sql: &str) -> Result<Self> {
            let db = db.as_ptr();
            let mut stmt = std::ptr::null_mut();
            let len = c_int::try_from(sql.len())
                .map_err(|_| StoreError::Database("statement too long".into()))?;
            // SAFETY: `db` is an open connection locked for this thread;
            // `sql` is valid for `len` bytes; `stmt` receives the statement.
            let rc = unsafe {
                ffi::sqlite3_prepare_v2(
                    db,
                    sql.as_ptr().cast(),
                    len,
                    &mut stmt,
                    std::ptr::null_mut(),
                )
            };
            let prepared = Prepared { db, stmt };
            prepared.check(rc)?;
            Ok(prepared)
        }

        fn check(&self, rc: c_int) -> Result<()> {
            if rc == ffi::SQLITE_OK {
                return Ok(());
            }
            // SAFETY: `db` is open; the message is copied before any other call.
            let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(self.db)) }
                .to_string_lossy()
                .into_owned();
            Err(match rc & 0xff {
                ffi::SQLITE_BUSY | ffi::SQLITE_LOCKED => StoreError::Unavailable(message),
                _ => StoreError::Database(message),
            })
        }

        fn bind_text(&self, index: c_int, value: &str) -> Result<()> {
            let len = c_int::try_from(value.len())
                .map_err(|_| StoreError::Database("parameter too long".into()))?;
            // SAFETY: the statement is live; SQLITE_TRANSIENT makes SQLite
            // copy the bytes before this returns.
            let rc = unsafe {
                ffi::sqlite3_bind_text(
                    self.stmt,
                    index,
                    value.as_ptr().cast(),
                    len,
                    ffi::SQLITE_TRANSIENT(),
                )
            };
            self.check(rc)
        }

        fn bind_i64(&self, index: c_int, value: i64) -> Result<()> {
            // SAFETY: the statement is live.
            self.check(unsafe { ffi::sqlite3_bind_int64(self.stmt, index, value) })
        }

        /// Steps once: `true` with a row to read, `false` when done.
        fn step(&self) -> Result<bool> {
            // SAFETY: the statement is live and its parameters bound.
            match unsafe { ffi::sqlite3_step(self.stmt) } {
                ffi::SQLITE_ROW => Ok(true),
                ffi::SQLITE_DONE => Ok(false),
                rc => self.check(rc).and(Ok(false)),
            }
        }

        /// Column `i` of the current row as text (empty when NULL or not
        /// UTF-8, which the caller's parse refuses).
        fn text(&self, i: c_int) -> &str {
            // SAFETY: a row is current; the text pointer is valid for
            // `bytes` bytes until the next step, and `&self` outlives
            // neither (the caller copies what it keeps before stepping).
            unsafe {
                let ptr = ffi::sqlite3_column_text(self.stmt, i);
                if ptr.is_null() {
                    return "";
                }
                let bytes = ffi::sqlite3_column_bytes(self.stmt, i) as usize;
                std::str::from_utf8(std::slice::from_raw_parts(ptr, bytes)).unwrap_or("")
            }
        }

        fn i64(&self, i: c_int) -> Option<i64> {
            // SAFETY: a row is current.
            unsafe {
                (ffi::sqlite3_column_type(self.stmt, i) != ffi::SQLITE_NULL)
                    .then(|| ffi::sqlite3_column_int64(self.stmt, i))
            }
        }
    }

    impl Drop for Prepared {
        fn drop(&mut self) {
            // SAFETY: finalizing a statement (or null) once.
            unsafe { ffi::sqlite3_finalize(self.stmt) };
        }
    }

    /// Runs the revoked-certificate scan `sql` (from `revoked_scan_sql`).
    pub(super) fn scan_revoked(
        db: NonNull<ffi::sqlite3>,
        sql: &str,
        scan: &RevokedScan,
        sink: &mut (dyn FnMut(RevokedRow) + Send),
    ) -> Result<()> {
        let q = Prepared::new(db, sql)?;
        q.bind_text(1, &scan.issuer_id)?;
        q.bind_i64(2, scan.not_after_from)?;
        let optional = [scan.partition, scan.revoked_since];
        for (index, value) in (3..).zip(optional.into_iter().flatten()) {
            q.bind_i64(index, value)?;
        }
        while q.step()? {
            sink(revoked_row(
                q.text(0),
                q.i64(1).unwrap_or(0),
                q.i64(2),
                q.i64(3),
            )?);
        }
        Ok(())
    }
}
