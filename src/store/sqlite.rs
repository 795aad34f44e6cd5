//! The embedded default: one SQLite file in WAL mode with foreign keys on.
//!
//! All writes go through one connection (SQLite has one writer anyway), so
//! writers in this process never fight over the lock; readers get their own
//! pool. `synchronous = FULL` makes every commit durable, and is set once
//! when a connection opens, never changed per request.
//!
//! The one exception is the record of used ACME nonces: it lives in a
//! second database file (`<db>-nonces`) that every write connection
//! attaches as `nonces` with `synchronous = OFF`. A used nonce is worth no
//! disk flush, a commit that only touches that file does not flush, and
//! because `synchronous` is set per database file once when the connection
//! opens, no request — cancelled or not — can change the durability of the
//! main database. The nonce writes share the one write connection, so they
//! never contend with certificate writes for SQLite's lock.

use std::str::FromStr;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::pool::PoolConnectionMetadata;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Pool, Sqlite};

use async_trait::async_trait;

use super::batch::{Batcher, UsedNonce};
use super::sql::{fresh_nonces, insert_nonces};
use super::{Backend, Result, SqlStore, StoreError};

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
            .busy_timeout(Duration::from_secs(10));
        let nonce_file = nonce_file_of(&options);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                let nonce_file = nonce_file.clone();
                Box::pin(async move { attach_nonces(conn, &nonce_file).await })
            })
            .after_release(closed_unless_idle)
            .connect_with(options.clone())
            .await
            .map_err(|e| StoreError::Database(format!("cannot open {url}: {e}")))?;
        MIGRATOR
            .run(&write)
            .await
            .map_err(|e| StoreError::Database(format!("migrating {url}: {e}")))?;
        let read = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.read_only(true))
            .await
            .map_err(|e| StoreError::Database(format!("cannot open {url}: {e}")))?;
        let pool = write.clone();
        let batcher = Batcher::spawn(move |items| Self::commit_writes(pool.clone(), items));
        let pool = write.clone();
        let nonces = Batcher::spawn(move |items: std::sync::Arc<Vec<UsedNonce>>| {
            let pool = pool.clone();
            async move { Sqlite::insert_used_nonces(pool, &items).await }
        });
        Ok(SqlStore {
            read,
            write,
            batcher,
            nonces,
            recent: Default::default(),
        })
    }
}

/// The file used nonces are recorded in: beside the database, or in
/// memory for an in-memory database.
fn nonce_file_of(options: &SqliteConnectOptions) -> String {
    let main = options.get_filename().to_string_lossy().into_owned();
    if main.is_empty() || main == ":memory:" {
        ":memory:".to_owned()
    } else {
        format!("{main}-nonces")
    }
}

/// Attaches the used-nonce file to a new write connection, without disk
/// flushes for it alone (the main database keeps `synchronous = FULL`).
async fn attach_nonces(conn: &mut SqliteConnection, file: &str) -> Result<(), sqlx::Error> {
    sqlx::query("ATTACH DATABASE $1 AS nonces")
        .bind(file)
        .execute(&mut *conn)
        .await?;
    for statement in [
        "PRAGMA nonces.journal_mode = WAL",
        "PRAGMA nonces.synchronous = OFF",
        "CREATE TABLE IF NOT EXISTS nonces.used (nonce TEXT PRIMARY KEY, expires_at INTEGER NOT NULL)",
        "CREATE INDEX IF NOT EXISTS nonces.used_expiry ON used (expires_at)",
    ] {
        sqlx::query(statement).execute(&mut *conn).await?;
    }
    Ok(())
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

    /// Records used ACME nonces in the attached nonce file (which is never
    /// flushed), in one statement.
    async fn insert_used_nonces(write: Pool<Self>, nonces: &[UsedNonce]) -> Result<Vec<bool>> {
        let inserted = insert_nonces("nonces.used", nonces)
            .query_as::<Sqlite, (String,)>()?
            .fetch_all(&write)
            .await?;
        Ok(fresh_nonces(nonces, inserted))
    }

    async fn prune_nonces(write: &Pool<Self>, now: i64) -> Result<()> {
        sqlx::query("DELETE FROM nonces.used WHERE expires_at < $1")
            .bind(now)
            .execute(write)
            .await?;
        Ok(())
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
}
