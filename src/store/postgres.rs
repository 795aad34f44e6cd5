//! PostgreSQL, for production and for several instances behind a load
//! balancer. Migrations take sqlx's advisory lock, so instances starting
//! together migrate once.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, Pool, Postgres};

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
            one_server: false,
            alone: Arc::new(AtomicBool::new(false)),
            serve_lock: None,
        })
    }
}

/// The advisory lock every `serve` on a PostgreSQL database holds, on a
/// connection of its own, for as long as it runs: shared where instances
/// serve behind a load balancer, to itself with `database.single_instance`.
/// Advisory locks belong to one database, so databases on one server do
/// not meet. (The bytes of "hallmark".)
const SERVE_LOCK: i64 = 0x6861_6c6c_6d61_726b;

/// How often the serve lock's connection is checked, and how long a check
/// may take before the connection counts as lost.
const SERVE_LOCK_CHECK: Duration = Duration::from_secs(1);
const SERVE_LOCK_TIMEOUT: Duration = Duration::from_secs(3);

impl SqlStore<Postgres> {
    /// Connects as `serve` does: as [`Self::connect`], then takes the
    /// database's serve lock, shared or (`single_instance`) to itself, and
    /// keeps it while the store lives. Fails, before anything is served,
    /// if an instance of the other kind holds it. With `single_instance`
    /// the store is its database's one server ([`SqlStore::one_server`]):
    /// orders and used nonces are kept in memory, as on SQLite.
    pub async fn connect_serving(url: &str, single_instance: bool) -> Result<Self> {
        let mut store = Self::connect(url).await?;
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Database(e.to_string()))?
            .application_name("hallmark serve lock");
        let conn = take_serve_lock(&options, single_instance)
            .await
            .map_err(|e| {
                StoreError::Database(format!("cannot connect to {}: {e}", redact_url(url)))
            })?
            .ok_or_else(|| StoreError::Database(lock_refused(single_instance)))?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        store.one_server = single_instance;
        store.alone.store(single_instance, Ordering::Release);
        tokio::spawn(keep_serve_lock(
            conn,
            options,
            single_instance,
            store.alone.clone(),
            store.recent.orders.clone(),
            stopped,
        ));
        store.serve_lock = Some(stop);
        if single_instance {
            tracing::info!(
                "serving this PostgreSQL database as its one instance (database.single_instance): orders and ACME nonces kept in memory"
            );
        }
        Ok(store)
    }
}

/// Why the serve lock was refused.
fn lock_refused(single_instance: bool) -> String {
    if single_instance {
        "another hallmark instance is serving this PostgreSQL database, and database.single_instance = true needs it to itself: stop the other instances, or set database.single_instance = false on every instance".into()
    } else {
        "a hallmark instance with database.single_instance = true is serving this PostgreSQL database: stop it, or serve only through it".into()
    }
}

/// A new connection holding the serve lock, or `None` if a session holds
/// it in a way that excludes this one.
async fn take_serve_lock(
    options: &PgConnectOptions,
    single_instance: bool,
) -> std::result::Result<Option<PgConnection>, sqlx::Error> {
    let mut conn = PgConnection::connect_with(options).await?;
    let sql = if single_instance {
        "SELECT pg_try_advisory_lock($1)"
    } else {
        "SELECT pg_try_advisory_lock_shared($1)"
    };
    let (taken,): (bool,) = sqlx::query_as(sql)
        .bind(SERVE_LOCK)
        .fetch_one(&mut conn)
        .await?;
    if taken {
        return Ok(Some(conn));
    }
    let _ = conn.close().await;
    Ok(None)
}

/// Checks the serve lock's connection every second until `stop` (the
/// store dropped). A single instance that finds it lost (the database
/// restarted, the connection cut) stops answering from the orders it kept
/// at once, and once it takes the lock again forgets them all before it
/// uses memory again: another instance may have served in between. An
/// instance that could not see the loss would keep answering from views
/// at most [`super::recent::FRESH_FOR`] old.
async fn keep_serve_lock(
    conn: PgConnection,
    options: PgConnectOptions,
    single_instance: bool,
    alone: Arc<AtomicBool>,
    orders: Arc<super::recent::Tracked<String, super::OrderBundle>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut held = Some(conn);
    let mut refused_logged = false;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(SERVE_LOCK_CHECK) => {}
        }
        match held.as_mut() {
            Some(conn) => {
                let check = tokio::time::timeout(SERVE_LOCK_TIMEOUT, conn.ping()).await;
                if !matches!(check, Ok(Ok(()))) {
                    alone.store(false, Ordering::Release);
                    held = None;
                    refused_logged = false;
                    tracing::warn!(
                        single_instance,
                        "lost the connection holding this database's serve lock; taking it again"
                    );
                }
            }
            None => match take_serve_lock(&options, single_instance).await {
                Ok(Some(conn)) => {
                    if single_instance {
                        orders.forget_all();
                        alone.store(true, Ordering::Release);
                    }
                    held = Some(conn);
                    tracing::info!(single_instance, "took this database's serve lock again");
                }
                Ok(None) if !refused_logged => {
                    refused_logged = true;
                    tracing::error!(
                        single_instance,
                        "cannot take this database's serve lock again: {} (or this instance's lost session is not closed yet); orders are read from the database until it is taken",
                        lock_refused(single_instance)
                    );
                }
                // The database away: tried again in a second.
                _ => {}
            },
        }
    }
    if let Some(conn) = held {
        let _ = conn.close().await;
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
