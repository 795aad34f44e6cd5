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

/// The load options the HTTP benchmarks share: `--count N --concurrency C
/// --backends sqlite,postgres` (anything else, such as cargo's `--bench`,
/// is ignored).
pub struct LoadArgs {
    pub count: usize,
    pub concurrency: usize,
    pub backends: Vec<String>,
}

/// Parses [`LoadArgs`] from the command line, with `count` as default.
#[allow(dead_code)]
pub fn load_args(count: usize) -> LoadArgs {
    let mut a = LoadArgs {
        count,
        concurrency: 32,
        backends: vec!["sqlite".into(), "postgres".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--count" => a.count = it.next().and_then(|v| v.parse().ok()).expect("--count N"),
            "--concurrency" => {
                a.concurrency = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--concurrency C")
            }
            "--backends" => {
                a.backends = it
                    .next()
                    .expect("--backends list")
                    .split(',')
                    .map(String::from)
                    .collect()
            }
            _ => {}
        }
    }
    a
}
