//! What the benchmarks share: a fresh database per run, and the
//! allocator the `hallmark` binary runs with, so in-process figures are
//! the deployed service's.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
            "--count" => a.count = value(&mut it, "--count"),
            "--concurrency" => a.concurrency = value(&mut it, "--concurrency"),
            "--backends" => a.backends = list(&mut it, "--backends"),
            _ => {}
        }
    }
    a
}

/// The passphrase every benchmark CA's root key is encrypted with.
#[allow(dead_code)]
pub const PASSPHRASE: &str = "benchmark passphrase";

/// A hallmark serving on fresh loopback listeners, as the load benchmarks
/// start it: database `url`, validators pointed at `http01_port`, no
/// per-account order limits, and `extra` settings; the CA is made first.
#[allow(dead_code)]
pub struct Server {
    /// Its configuration (data directory, public URLs).
    pub config: hallmark::config::Config,
    /// The authority behind it (for setting up accounts).
    pub authority: std::sync::Arc<hallmark::workflow::Authority>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

#[allow(dead_code)]
impl Server {
    pub async fn start(
        dir: &std::path::Path,
        url: String,
        http01_port: u16,
        extra: &[(&str, &str)],
    ) -> Result<Server, String> {
        let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let https = bind().await.map_err(|e| e.to_string())?;
        let http = bind().await.map_err(|e| e.to_string())?;
        let address = |l: &tokio::net::TcpListener| l.local_addr().map(|a| a.to_string());
        let mut env = vec![
            ("DATABASE_URL".to_string(), url),
            (
                "HALLMARK_SERVER__HTTPS_LISTEN".into(),
                address(&https).map_err(|e| e.to_string())?,
            ),
            (
                "HALLMARK_SERVER__HTTP_LISTEN".into(),
                address(&http).map_err(|e| e.to_string())?,
            ),
            (
                "HALLMARK_VALIDATION__HTTP_PORT".into(),
                http01_port.to_string(),
            ),
            ("HALLMARK_ORDERS__RATE_PER_MINUTE".into(), "0".into()),
            (
                "HALLMARK_ORDERS__MAX_PENDING_AUTHORIZATIONS".into(),
                "0".into(),
            ),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let config = hallmark::config::Config::load(None, &dir.join("data"), env)
            .map_err(|e| e.to_string())?;
        hallmark::datadir::init_ca(
            &config,
            PASSPHRASE.as_bytes(),
            time::OffsetDateTime::now_utc(),
        )
        .map_err(|e| e.to_string())?;
        let service = hallmark::service::Service::start(config.clone())
            .await
            .map_err(|e| e.to_string())?;
        let authority = service.authority().clone();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(service.run(https, http, stopped));
        Ok(Server {
            config,
            authority,
            stop,
            task,
        })
    }

    /// An HTTPS client that trusts only this CA, keeping `connections`
    /// idle connections.
    pub fn client(&self, connections: usize) -> Result<reqwest::Client, String> {
        let root = std::fs::read(self.config.data_dir.join("ca/root.crt.pem"))
            .map_err(|e| e.to_string())?;
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&root).map_err(|e| e.to_string())?)
            .tls_built_in_root_certs(false)
            .pool_max_idle_per_host(connections)
            .build()
            .map_err(|e| e.to_string())
    }

    /// Stops serving and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The next command-line value after `flag`, parsed.
#[allow(dead_code)]
pub fn value<T: std::str::FromStr>(it: &mut impl Iterator<Item = String>, flag: &str) -> T {
    it.next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{flag} needs a value"))
}

/// The next command-line value after `flag`, a comma-separated list.
#[allow(dead_code)]
pub fn list<T: std::str::FromStr>(it: &mut impl Iterator<Item = String>, flag: &str) -> Vec<T> {
    let text: String = value(it, flag);
    text.split(',')
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{flag}: bad item {v:?}"))
        })
        .collect()
}

/// A loopback port free at the time of asking.
#[allow(dead_code)]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A configuration on database `url` with free ports, its CA made, and
/// the authority opened (for benchmarks that drive the workflow or the
/// store without a whole server).
#[allow(dead_code)]
pub async fn made_ca(
    dir: &std::path::Path,
    url: &str,
) -> (
    hallmark::config::Config,
    std::sync::Arc<hallmark::workflow::Authority>,
) {
    made_ca_with(dir, url, &[]).await
}

/// [`made_ca`] with extra `HALLMARK_…` settings.
#[allow(dead_code)]
pub async fn made_ca_with(
    dir: &std::path::Path,
    url: &str,
    extra: &[(&str, String)],
) -> (
    hallmark::config::Config,
    std::sync::Arc<hallmark::workflow::Authority>,
) {
    let mut env = vec![
        ("DATABASE_URL".to_string(), url.to_owned()),
        (
            "HALLMARK_SERVER__HTTPS_LISTEN".into(),
            format!("127.0.0.1:{}", free_port()),
        ),
        (
            "HALLMARK_SERVER__HTTP_LISTEN".into(),
            format!("127.0.0.1:{}", free_port()),
        ),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let config = hallmark::config::Config::load(None, &dir.join("data"), env)
        .expect("a benchmark configuration");
    hallmark::datadir::init_ca(
        &config,
        PASSPHRASE.as_bytes(),
        time::OffsetDateTime::now_utc(),
    )
    .expect("a new CA");
    let authority = hallmark::service::open_authority(&config)
        .await
        .expect("the authority opens");
    (config, authority)
}
