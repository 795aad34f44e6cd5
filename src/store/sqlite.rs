//! The embedded default: one SQLite file in WAL mode with foreign keys on.
//!
//! All writes go through one connection (SQLite has one writer anyway), so
//! writers in this process never fight over the lock; readers get their own
//! pool. `synchronous = FULL` makes every commit durable.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Sqlite};

use super::acme::impl_acme_sql;
use super::batch::Batcher;
use super::dashboard::impl_dashboard_sql;
use super::revocation::impl_revocation_sql;
use super::shared::impl_sql_store;
use super::{Result, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite store.
pub struct SqliteStore {
    read: Pool<Sqlite>,
    write: Pool<Sqlite>,
    batcher: Batcher,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` and migrates it.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::UnsupportedUrl(format!("{url}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
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
        let batcher = Batcher::spawn(move |items| Self::commit_certificates(pool.clone(), items));
        Ok(SqliteStore {
            read,
            write,
            batcher,
        })
    }
}

impl SqliteStore {
    /// Records a used ACME nonce: `false` if it was used before. Without
    /// an fsync (`synchronous = OFF` for this one statement, on the one
    /// write connection): a used nonce is worth no disk flush, and the
    /// next durable commit flushes it anyway.
    async fn insert_used_nonce(&self, nonce: &str, expires_at: i64) -> Result<bool> {
        let mut conn = self.write.acquire().await?;
        sqlx::query("PRAGMA synchronous = OFF")
            .execute(&mut *conn)
            .await?;
        let done = sqlx::query(
            "INSERT INTO acme_nonces (nonce, expires_at) VALUES ($1, $2) ON CONFLICT (nonce) DO NOTHING",
        )
        .bind(nonce)
        .bind(expires_at)
        .execute(&mut *conn)
        .await;
        // Back to durable commits whatever happened.
        sqlx::query("PRAGMA synchronous = FULL")
            .execute(&mut *conn)
            .await?;
        Ok(done?.rows_affected() == 1)
    }
}

impl_sql_store!(SqliteStore, Sqlite, "sqlite");
// A SQLite read transaction is a snapshot from its first read on.
impl_revocation_sql!(SqliteStore, Sqlite, "");
impl_dashboard_sql!(SqliteStore, Sqlite);
impl_acme_sql!(SqliteStore, Sqlite);
