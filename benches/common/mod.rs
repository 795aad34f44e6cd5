//! What the benchmarks share: a fresh database per run.

/// The PostgreSQL server's admin URL (`TEST_DATABASE_URL`, as for tests).
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh database for `backend` (`sqlite`: a file in `dir`; `postgres`:
/// a new database named after `tag`); the PostgreSQL name to drop after.
pub async fn database_url(
    backend: &str,
    dir: &std::path::Path,
    tag: &str,
) -> Option<(String, Option<String>)> {
    match backend {
        "sqlite" => Some((format!("sqlite://{}", dir.join("bench.db").display()), None)),
        "postgres" => {
            use sqlx::Connection;
            let admin = admin_url();
            let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
            let name = format!("hallmark_bench_{tag}_{}", std::process::id());
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
                .execute(&mut conn)
                .await
                .ok()?;
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .ok()?;
            let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned())?;
            Some((format!("{base}/{name}"), Some(name)))
        }
        _ => None,
    }
}

/// Drops a database [`database_url`] made.
pub async fn drop_database(name: Option<String>) {
    use sqlx::Connection;
    let Some(name) = name else { return };
    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url()).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    }
}
