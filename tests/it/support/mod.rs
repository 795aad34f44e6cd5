//! Test helpers: a CA in a temporary directory on SQLite or a fresh
//! PostgreSQL database, the real service on ephemeral ports, and `openssl`.

pub mod acme;
pub mod browser;
pub mod dns;
pub mod dv;
pub mod eab;
pub mod node;
pub mod pki;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use hallmark::config::Config;
use hallmark::service::{self, Service};
use hallmark::workflow::Authority;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub const PASSPHRASE: &str = "test passphrase, long enough";

/// The body of a GET of `url` with `client`, as text (panics if the
/// request cannot be made or the body read; the status is not checked).
pub async fn get_text(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// The storage backends a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn postgres_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn postgres_reachable(url: &str) -> bool {
    let host_port = url
        .split('@')
        .next_back()
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("127.0.0.1:5432");
    let addr: Option<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .ok()
        .and_then(|mut a| a.next());
    addr.is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// SQLite always; PostgreSQL when reachable, and always under `CI=true`
/// (where an unreachable PostgreSQL fails the test rather than skipping).
pub fn backends() -> Vec<Backend> {
    let url = postgres_admin_url();
    let required = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if postgres_reachable(&url) {
        vec![Backend::Sqlite, Backend::Postgres]
    } else if required {
        panic!("CI=true but PostgreSQL at {url} is not reachable; the PostgreSQL half of the suite must run");
    } else {
        eprintln!("note: PostgreSQL at {url} is not reachable; running on SQLite only");
        vec![Backend::Sqlite]
    }
}

/// A fresh database: a file in `dir` or a new PostgreSQL database.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend, dir: &Path) -> TestDb {
        match backend {
            Backend::Sqlite => TestDb {
                backend,
                url: format!("sqlite://{}", dir.join("test.db").display()),
                pg_name: None,
            },
            Backend::Postgres => {
                use sqlx::Connection;
                let admin = postgres_admin_url();
                let name = format!("hallmark_test_{}", hex::encode(rand::random::<[u8; 6]>()));
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .expect("connect to PostgreSQL");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create database");
                let base = admin
                    .rsplit_once('/')
                    .map(|(b, _)| b.to_owned())
                    .unwrap_or(admin.clone());
                TestDb {
                    backend,
                    url: format!("{base}/{name}"),
                    pg_name: Some(name),
                }
            }
        }
    }

    /// No database (a placeholder for one already cleaned up).
    pub fn none() -> TestDb {
        TestDb {
            backend: Backend::Sqlite,
            url: String::new(),
            pg_name: None,
        }
    }

    /// Runs raw SQL against the database (to tamper with it in tests).
    pub async fn execute(&self, sql: &str) {
        use sqlx::Connection;
        match self.backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query(sql).execute(&mut c).await.unwrap();
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query(sql).execute(&mut c).await.unwrap();
            }
        }
    }

    pub async fn cleanup(mut self) {
        if let Some(name) = self.pg_name.take() {
            drop_database(&name).await;
        }
    }
}

pub async fn drop_database(name: &str) {
    use sqlx::Connection;
    if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    }
}

impl Drop for TestDb {
    /// A test that failed before `cleanup` still drops its PostgreSQL
    /// database (on a thread of its own: a panic unwinds inside the test's
    /// runtime, which cannot be blocked on).
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(drop_database(&name));
                }
            })
            .join();
        }
    }
}

/// A CA in a temporary data directory.
pub struct TestCa {
    pub dir: TempDir,
    pub db: TestDb,
    pub config: Config,
    https: Option<TcpListener>,
    http: Option<TcpListener>,
}

/// Builds a configuration for `data_dir` from `HALLMARK_*`-style pairs.
pub fn config_with(data_dir: &Path, pairs: &[(&str, String)]) -> Config {
    let env: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    Config::load(None, data_dir, env).expect("test configuration is valid")
}

impl TestCa {
    /// Creates a CA; listeners are bound now so certificates carry their URLs.
    pub async fn new(backend: Backend) -> TestCa {
        Self::with_env(backend, &[]).await
    }

    pub async fn with_env(backend: Backend, extra: &[(&str, String)]) -> TestCa {
        Self::made_at(backend, extra, time::OffsetDateTime::now_utc()).await
    }

    /// A CA created at `at` (its certificates' validity starts then).
    pub async fn made_at(
        backend: Backend,
        extra: &[(&str, String)],
        at: time::OffsetDateTime,
    ) -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(backend, dir.path()).await;
        let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let data_dir = dir.path().join("data");
        let mut pairs = vec![
            ("DATABASE_URL", db.url.clone()),
            (
                "HALLMARK_SERVER__HTTPS_LISTEN",
                https.local_addr().unwrap().to_string(),
            ),
            (
                "HALLMARK_SERVER__HTTP_LISTEN",
                http.local_addr().unwrap().to_string(),
            ),
        ];
        pairs.extend(extra.iter().cloned());
        let config = config_with(&data_dir, &pairs);
        hallmark::datadir::init_ca(&config, PASSPHRASE.as_bytes(), at).expect("init CA");
        TestCa {
            dir,
            db,
            config,
            https: Some(https),
            http: Some(http),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    pub async fn authority(&self) -> Arc<Authority> {
        service::open_authority(&self.config)
            .await
            .expect("open authority")
    }

    /// Starts the real service on this CA's listeners.
    pub async fn start(&mut self) -> Running {
        let https = match self.https.take() {
            Some(l) => l,
            None => TcpListener::bind(self.config.https_listen).await.unwrap(),
        };
        let http = match self.http.take() {
            Some(l) => l,
            None => TcpListener::bind(self.config.http_listen).await.unwrap(),
        };
        let mut service = Service::start(self.config.clone())
            .await
            .expect("service starts");
        let admin_password = service.take_initial_admin_password().map(|p| p.to_string());
        let authority = service.authority().clone();
        let password_gate = service.password_gate().clone();
        let orders = service.orders().clone();
        let tls_refresher = service.tls_refresher();
        let (stop, stopped) = watch::channel(false);
        let handle = tokio::spawn(service.run(https, http, stopped));
        Running {
            https_url: self.config.public_https_url.clone(),
            http_url: self.config.public_http_url.clone(),
            root_pem: std::fs::read_to_string(self.data_dir().join("ca/root.crt.pem")).unwrap(),
            admin_password,
            authority,
            password_gate,
            orders,
            tls_refresher,
            stop,
            handle,
        }
    }

    pub async fn cleanup(self) {
        self.db.cleanup().await;
    }
}

pub struct Running {
    pub https_url: String,
    pub http_url: String,
    pub root_pem: String,
    pub admin_password: Option<String>,
    pub authority: Arc<Authority>,
    pub password_gate: Arc<hallmark::workflow::users::PasswordGate>,
    pub orders: Arc<hallmark::workflow::orders::Orders>,
    pub tls_refresher: Option<service::TlsRefresher>,
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Running {
    /// An HTTPS client trusting only this CA's root.
    pub fn client(&self) -> reqwest::Client {
        let root = reqwest::Certificate::from_pem(self.root_pem.as_bytes()).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(root)
            .tls_built_in_root_certs(false)
            .build()
            .unwrap()
    }

    /// Stops the service gracefully and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(15), self.handle)
            .await
            .expect("service stops within the grace period")
            .unwrap();
    }
}

/// Runs `openssl` with `args` in `dir`; panics with its stderr on failure.
pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `openssl` and returns (success, stdout+stderr).
pub fn openssl_status(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Makes a key (`openssl genpkey` arguments) and a CSR with `subject` and
/// `san` (an `-addext` value, or none) in `dir`; returns the CSR PEM.
pub fn openssl_csr(
    dir: &Path,
    name: &str,
    genpkey: &[&str],
    subject: &str,
    san: Option<&str>,
) -> Vec<u8> {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let mut args = vec!["genpkey"];
    args.extend_from_slice(genpkey);
    args.extend_from_slice(&["-out", &key]);
    openssl(dir, &args);
    let ext = san.map(|s| format!("subjectAltName={s}"));
    let mut args = vec!["req", "-new", "-key", &key, "-subj", subject, "-out", &csr];
    if let Some(e) = &ext {
        args.extend_from_slice(&["-addext", e]);
    }
    openssl(dir, &args);
    std::fs::read(dir.join(csr)).unwrap()
}

pub const P256: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
pub const RSA2048: &[&str] = &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];

/// Writes `root.pem`, `chain.pem` and `leaf.pem` into `dir` and asserts that
/// `openssl verify -CAfile root.pem -untrusted chain.pem leaf.pem` accepts
/// the leaf.
pub fn assert_openssl_verifies(dir: &Path, root_pem: &str, chain_pem: &str, leaf_pem: &str) {
    std::fs::write(dir.join("root.pem"), root_pem).unwrap();
    std::fs::write(dir.join("chain.pem"), chain_pem).unwrap();
    std::fs::write(dir.join("leaf.pem"), leaf_pem).unwrap();
    let out = openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "chain.pem",
            "leaf.pem",
        ],
    );
    assert!(out.contains("leaf.pem: OK"), "{out}");
}

/// Runs one of pkilint's linters (`lint_pkix_cert`, `lint_crl`,
/// `lint_ocsp_response`); `None` when pkilint is not installed outside CI
/// (under `CI=true` it must be).
pub fn pkilint(dir: &Path, program: &str, args: &[&str]) -> Option<(bool, String)> {
    let out = Command::new(program).args(args).current_dir(dir).output();
    match out {
        Ok(o) => Some((
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )),
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but pkilint ({program}) is not installed")
        }
        Err(_) => {
            eprintln!("note: pkilint is not installed; skipping {program}");
            None
        }
    }
}

/// A port free on every address now, that no other caller in this
/// process is given.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Below Linux's ephemeral range (32768–60999): a port the kernel hands
    // out for `bind(:0)` or an outgoing connection could be taken by
    // another test (a flood test's client sockets, a server's listener)
    // between this call and the caller's bind — certbot's standalone
    // server once failed in CI that way. Ports here are only ever taken
    // by asking for them; each is handed out once per process, starting
    // at a place of this process's own so concurrent test processes
    // (nextest) rarely meet, and only if TCP and UDP are free on every
    // address now.
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    for _ in 0..SPAN {
        let port = (LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        let tcp = std::net::TcpListener::bind(("0.0.0.0", port)).is_ok();
        if tcp && std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {}", LOW + SPAN)
}

/// Whether `program --version` runs; under `CI=true` a missing tool fails
/// the test (`install` says how to get it), elsewhere the test is skipped.
pub fn tool_present(program: &str, install: &str) -> bool {
    if Command::new(program).arg("--version").output().is_ok() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but {program} is not installed ({install})");
    }
    eprintln!("note: {program} is not installed; skipping this test");
    false
}
