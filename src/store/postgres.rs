//! PostgreSQL, for production and for several instances behind a load
//! balancer. Migrations take sqlx's advisory lock, so instances starting
//! together migrate once.

use std::time::Duration;

use sqlx::postgres::{PgConnection, PgPoolOptions};
use sqlx::{Pool, Postgres};

use async_trait::async_trait;

use super::batch::{Batcher, UsedNonce};
use super::sql::{fresh_nonces, insert_nonces, ping_if_idle, revoked_row, revoked_scan_sql};
use super::{redact_url, Backend, Result, RevokedRow, RevokedScan, SqlStore, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The PostgreSQL store.
pub type PostgresStore = SqlStore<Postgres>;

impl SqlStore<Postgres> {
    /// Connects to `url` and migrates the database.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .test_before_acquire(false)
            .before_acquire(ping_if_idle)
            // A connection sqlx still counts a transaction on (a COMMIT
            // that failed mid-way) is closed, never reused.
            .after_release(|conn, _| {
                Box::pin(async move {
                    let idle = !sqlx::Connection::is_in_transaction(conn);
                    if !idle {
                        tracing::error!(
                            "a PostgreSQL connection was left inside a transaction; closing it"
                        );
                    }
                    Ok(idle)
                })
            })
            .connect(url)
            .await
            .map_err(|e| {
                StoreError::Database(format!("cannot connect to {}: {e}", redact_url(url)))
            })?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(format!("migrating {}: {e}", redact_url(url))))?;
        let batcher = Self::workflow_writer(pool.clone());
        let write = pool.clone();
        let nonces = Batcher::spawn("nonces", move |items: std::sync::Arc<Vec<UsedNonce>>| {
            let write = write.clone();
            async move { Postgres::insert_used_nonces(write, &items).await }
        });
        Ok(SqlStore {
            read: pool.clone(),
            write: pool,
            batcher,
            nonces,
            recent: Default::default(),
        })
    }
}

#[async_trait]
impl Backend for Postgres {
    const LABEL: &'static str = "postgres";
    const READ_SNAPSHOT: &'static str =
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY";
    const ANONYMOUS_PARAMETERS: bool = false;
    const WRITES_AS_CTES: bool = true;
    const KEEPS_ORDERS: bool = false;

    /// The commit does not wait for the WAL flush (`synchronous_commit =
    /// off` for this transaction only): a used nonce is worth no disk flush.
    async fn insert_used_nonces(write: Pool<Self>, nonces: &[UsedNonce]) -> Result<Vec<bool>> {
        let mut tx = write.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        let inserted = insert_nonces("acme_nonces", nonces)
            .query_as::<Postgres, (String,)>()?
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(fresh_nonces(nonces, inserted))
    }

    async fn prune_nonces(write: &Pool<Self>, now: i64) -> Result<()> {
        sqlx::query("DELETE FROM acme_nonces WHERE expires_at < $1")
            .bind(now)
            .execute(write)
            .await?;
        Ok(())
    }

    async fn scan_revoked(
        conn: &mut PgConnection,
        scan: &RevokedScan,
        sink: &mut (dyn FnMut(RevokedRow) + Send),
    ) -> Result<()> {
        use futures_util::TryStreamExt;
        let sql = revoked_scan_sql(scan, true);
        let mut q = sqlx::query_as::<_, (String, i64, Option<i64>, Option<i64>)>(&sql)
            .bind(&scan.issuer_id)
            .bind(scan.not_after_from);
        if let Some(p) = scan.partition {
            q = q.bind(p);
        }
        if let Some(since) = scan.revoked_since {
            q = q.bind(since);
        }
        let mut rows = q.fetch(conn);
        while let Some((serial, revoked_at, reason, invalidity_date)) = rows.try_next().await? {
            sink(revoked_row(&serial, revoked_at, reason, invalidity_date)?);
        }
        Ok(())
    }

    /// Commits wait for the WAL flush (`synchronous_commit` is not `off`
    /// for the sessions of the write pool).
    async fn check_durable(write: &Pool<Self>) -> Result<()> {
        let (level,): (String,) = sqlx::query_as("SHOW synchronous_commit")
            .fetch_one(write)
            .await?;
        if level == "off" {
            return Err(StoreError::NotDurable(
                "PostgreSQL has synchronous_commit = off".into(),
            ));
        }
        Ok(())
    }

    fn rows_affected(done: &Self::QueryResult) -> u64 {
        done.rows_affected()
    }
}
