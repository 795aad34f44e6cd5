//! The dashboard with many certificates: server time of the certificates
//! list, a search and a later page with 10,000 certificates recorded, on
//! SQLite and PostgreSQL, measured over loopback HTTPS by a signed-in
//! client (median and worst of 50 requests each).
//!
//! Run: `cargo bench --bench dashboard` (options after `--`:
//! `--count N --backends sqlite,postgres`).

mod common;

use std::time::{Duration, Instant};

use hallmark::service::Service;
use hallmark::workflow::users::{self, UserRole};

const PASSWORD: &str = "benchmark password";

fn args() -> (u64, Vec<String>) {
    let mut count = 10_000;
    let mut backends = vec!["sqlite".to_owned(), "postgres".to_owned()];
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--count" => count = common::value(&mut it, "--count"),
            "--backends" => backends = common::list(&mut it, "--backends"),
            _ => {}
        }
    }
    (count, backends)
}

/// `n` certificates for `n` names over ten accounts, inserted by SQL.
async fn fill(url: &str, backend: &str, issuer: &str, n: u64) {
    use sqlx::Connection;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let series = match backend {
        "sqlite" => format!(
            "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {n}) SELECT n FROM s"
        ),
        _ => format!("SELECT n FROM generate_series(1, {n}) AS n"),
    };
    let hex = match backend {
        "sqlite" => "printf('41%030x', n)",
        _ => "'41' || lpad(to_hex(n), 30, '0')",
    };
    let blob = match backend {
        "sqlite" => "x'3000'",
        _ => "'\\x3000'::bytea",
    };
    let accounts = format!(
        "INSERT INTO accounts (id, name, role, disabled, created_at) \
         SELECT 'acct_' || n, 'team ' || n, 'requester', FALSE, {now} FROM ({series}) AS t WHERE n <= 10"
    );
    let certs = format!(
        "INSERT INTO certificates (serial, issuer_id, account_id, subject, identifiers, profile, \
         requested_by, not_before, not_after, der, created_at, revoked_at, revocation_reason) \
         SELECT {hex}, '{issuer}', 'acct_' || (n % 10 + 1), 'CN=host' || n || '.internal', \
         '[\"host' || n || '.internal\"]', 'server', 'bench', {now}, {now} + 7776000, {blob}, \
         {now} - n, CASE WHEN n % 20 = 0 THEN {now} ELSE NULL END, \
         CASE WHEN n % 20 = 0 THEN 1 ELSE NULL END FROM ({series}) AS t"
    );
    if backend == "sqlite" {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(&accounts).execute(&mut c).await.unwrap();
        sqlx::query(&certs).execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(&accounts).execute(&mut c).await.unwrap();
        sqlx::query(&certs).execute(&mut c).await.unwrap();
        sqlx::query("ANALYZE").execute(&mut c).await.unwrap();
    }
}

fn main() {
    let (count, backends) = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("| store | certificates | page | median ms | worst ms |");
    println!("|---|---:|---|---:|---:|");
    for backend in backends {
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let Some((url, pg)) = common::database_url(&backend, dir.path(), "dash").await else {
                eprintln!("{backend}: not reachable, skipped");
                return;
            };
            let (config, authority) = common::made_ca(dir.path(), &url).await;
            let https = config.https_listen.port();
            let issuer = authority.issuer().certificate().id().to_owned();
            fill(&url, &backend, &issuer, count).await;
            users::add_user(
                authority.store().as_ref(),
                "bench",
                UserRole::Auditor,
                PASSWORD,
                false,
                "bench",
            )
            .await
            .unwrap();
            drop(authority);
            let service = Service::start(config.clone()).await.unwrap();
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let l1 = tokio::net::TcpListener::bind(config.https_listen)
                .await
                .unwrap();
            let l2 = tokio::net::TcpListener::bind(config.http_listen)
                .await
                .unwrap();
            let handle = tokio::spawn(service.run(l1, l2, stopped));
            let root = std::fs::read(dir.path().join("data/ca/root.crt.pem")).unwrap();
            let client = reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&root).unwrap())
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap();
            let base = format!("https://localhost:{https}");
            let login = client
                .get(format!("{base}/admin/login"))
                .send()
                .await
                .unwrap();
            let login_cookie = login.headers()["set-cookie"]
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_owned();
            let body = login.text().await.unwrap();
            let at = body.find("name=\"csrf\" value=\"").unwrap() + 19;
            let csrf = &body[at..at + body[at..].find('"').unwrap()];
            let r = client
                .post(format!("{base}/admin/login"))
                .header("cookie", &login_cookie)
                .form(&[
                    ("csrf", csrf),
                    ("username", "bench"),
                    ("password", PASSWORD),
                ])
                .send()
                .await
                .unwrap();
            let session = r
                .headers()
                .get_all("set-cookie")
                .iter()
                .map(|v| v.to_str().unwrap())
                .find(|v| v.starts_with("__Host-hallmark_session="))
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_owned();
            let first = client
                .get(format!("{base}/admin/certificates"))
                .header("cookie", &session)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let next = first
                .find("before=")
                .map(|i| first[i + 7..].split('"').next().unwrap().to_owned())
                .unwrap();
            for (label, path) in [
                ("first page", "/admin/certificates".to_owned()),
                (
                    "search by name",
                    format!("/admin/certificates?q=host{}.internal", count / 2),
                ),
                (
                    "search by serial prefix",
                    "/admin/certificates?q=41000000000000000000000000001".to_owned(),
                ),
                (
                    "revoked only",
                    "/admin/certificates?status=revoked".to_owned(),
                ),
                ("second page", format!("/admin/certificates?before={next}")),
                (
                    "one account",
                    "/admin/certificates?account=acct_3".to_owned(),
                ),
            ] {
                let mut times = Vec::new();
                for _ in 0..50 {
                    let t = Instant::now();
                    let r = client
                        .get(format!("{base}{path}"))
                        .header("cookie", &session)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200, "{path}");
                    let _ = r.bytes().await.unwrap();
                    times.push(t.elapsed());
                }
                times.sort();
                let ms = |d: Duration| d.as_secs_f64() * 1000.0;
                println!(
                    "| {backend} | {count} | {label} | {:.1} | {:.1} |",
                    ms(times[times.len() / 2]),
                    ms(*times.last().unwrap())
                );
            }
            let _ = stop.send(true);
            let _ = handle.await;
            common::drop_database(pg).await;
        });
    }
}
