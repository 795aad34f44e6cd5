//! PostgreSQL, for production and for several instances behind a load
//! balancer. Migrations take sqlx's advisory lock, so instances starting
//! together migrate once.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Pool, Postgres};

use async_trait::async_trait;

use super::batch::{Batcher, UsedNonce};
use super::sql::{
    fresh_nonces, insert_nonces, ping_if_idle, revoked_row, revoked_scan_sql, Column, OwnPool,
};
use super::{redact_url, Backend, Result, RevokedRow, RevokedScan, SqlStore, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The PostgreSQL store.
pub type PostgresStore = SqlStore<Postgres>;

impl SqlStore<Postgres> {
    /// Connects to `url` and migrates the database.
    pub async fn connect(url: &str) -> Result<Self> {
        let cannot_connect = |e: sqlx::Error| {
            StoreError::Database(format!("cannot connect to {}: {e}", redact_url(url)))
        };
        let options = PgConnectOptions::from_str(url).map_err(cannot_connect)?;
        let pool = pool_options(16)
            .connect_with(options.clone())
            .await
            .map_err(cannot_connect)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(format!("migrating {}: {e}", redact_url(url))))?;
        // The group-commit writer has a connection of its own, whose
        // prepared statements it alone uses: a batch's statement text
        // depends on which writes the batch holds, so on a shared pool
        // most batches met a connection that had not prepared their text
        // yet, and PostgreSQL planned it again. Its statements write rows
        // by key, so one generic plan per text is as good as a plan for
        // each batch's values (docs/BENCHMARKS.md, 2026-12-05). Two
        // connections, used in turn: sqlx checks a connection as it goes
        // back to its pool (a round trip), and with one the next batch
        // waited for that; with two it takes the other at once. The
        // writer commits one batch at a time either way.
        let writer = pool_options(WRITER_CONNECTIONS)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::Executor::execute(&mut *conn, "SET plan_cache_mode = force_generic_plan")
                        .await
                        .map(|_| ())
                })
            })
            .connect_with(options.clone().statement_cache_capacity(WRITER_STATEMENTS))
            .await
            .map_err(cannot_connect)?;
        let batcher = Self::workflow_writer(writer.clone());
        // Used nonces go through a connection of their own whose session
        // does not wait for the WAL flush (a used nonce is worth no disk
        // flush), so each batch is one autocommitted statement, one round
        // trip, and no connection that writes anything else carries the
        // setting.
        let nonce_pool = pool_options(1)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::Executor::execute(&mut *conn, "SET synchronous_commit = off")
                        .await
                        .map(|_| ())
                })
            })
            .connect_with(options.clone())
            .await
            .map_err(cannot_connect)?;
        let nonces = {
            let pool = nonce_pool.clone();
            Batcher::spawn(
                "nonces",
                true,
                move |items: std::sync::Arc<Vec<UsedNonce>>| {
                    let pool = pool.clone();
                    async move { insert_used_nonces(pool, &items).await }
                },
            )
        };
        Ok(SqlStore {
            read: pool.clone(),
            write: pool,
            own_pools: vec![
                OwnPool {
                    name: "writer",
                    pool: writer,
                    durable: true,
                },
                OwnPool {
                    name: "nonces",
                    pool: nonce_pool,
                    durable: false,
                },
            ],
            batcher,
            nonces: Some(nonces),
            recent: Default::default(),
        })
    }
}

/// Records used ACME nonces, shared by every instance, in one statement
/// on `pool`, whose session does not wait for the WAL flush. Now and then
/// (one batch in 256) it also forgets used nonces that expired (they are
/// refused for their expiry anyway).
async fn insert_used_nonces(pool: Pool<Postgres>, nonces: &[UsedNonce]) -> Result<Vec<bool>> {
    let inserted = insert_nonces::<Postgres>("acme_nonces", nonces)
        .query_as::<Postgres, (String,)>()?
        .fetch_all(&pool)
        .await?;
    if rand::random::<u8>() == 0 {
        sqlx::query("DELETE FROM acme_nonces WHERE expires_at < $1")
            .bind(time::OffsetDateTime::now_utc().unix_timestamp())
            .execute(&pool)
            .await?;
    }
    Ok(fresh_nonces(nonces, inserted))
}

/// Connections of the group-commit writer's own pool.
const WRITER_CONNECTIONS: u32 = 2;

/// Statement texts the writer's connection keeps prepared (sqlx's
/// default is 100): one for each mix of writes a batch held, a few dozen
/// since a write's rows are arrays ([`super::sql::Backend::ROWS_AS_ARRAYS`]).
const WRITER_STATEMENTS: usize = 512;

/// The options both pools share: a connection idle for a while is pinged
/// before use, and one that sqlx still counts a transaction on (a COMMIT
/// that failed mid-way) is closed, never reused.
fn pool_options(connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .before_acquire(ping_if_idle)
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
}

#[async_trait]
impl Backend for Postgres {
    const LABEL: &'static str = "postgres";
    const READ_SNAPSHOT: &'static str =
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY";
    const ANONYMOUS_PARAMETERS: bool = false;
    const WRITES_AS_CTES: bool = true;
    const ROWS_AS_ARRAYS: bool = true;
    const ONE_SERVER: bool = false;
    const SOCKETS: bool = true;

    fn add_column(
        out: &mut PgArguments,
        column: &Column<'_>,
    ) -> std::result::Result<(), sqlx::error::BoxDynError> {
        use sqlx::Arguments;
        match column {
            Column::Text(v) => out.add(v.iter().map(|x| x.as_deref()).collect::<Vec<_>>()),
            Column::Int(v) => out.add(v.as_slice()),
            Column::Bytes(v) => out.add(v.iter().map(|x| x.as_deref()).collect::<Vec<_>>()),
            Column::Bool(v) => out.add(v.as_slice()),
        }
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
