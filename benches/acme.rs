//! Complete ACME issuances per second (issue 6), beside the REST figure:
//! the real service on loopback HTTPS and C concurrent ACME clients, each
//! with its own account (ES256 JWS made with ring, the nonce of each
//! answer reused), doing the whole protocol for every certificate:
//! newOrder, authorization, (challenge, polling), finalize with a fresh
//! P-256 CSR, order polling and the PEM chain download.
//!
//! Two runs per store:
//! - `renewal`: the account proved its name before (authorization reuse),
//!   as a renewal within `orders.reuse_days` is;
//! - `new name`: `orders.reuse_days = 0`, so every certificate also needs
//!   an http-01 validation, fetched from the bench's own server.
//!
//! Beside them, `--backends pebble` drives pebble (Debian's `pebble`, the
//! ACME test server that stores nothing and signs in memory) with the same
//! client: challenges always valid, no rejected nonces, authorizations
//! reused for the renewal run.
//!
//! Run: `cargo bench --bench acme` (options after `--`:
//! `--count N --concurrency C --backends sqlite,postgres,postgres-single,pebble`
//! (`postgres-single`: PostgreSQL with `database.single_instance`), and
//! `--runs N` for N rounds of every system, interleaved, reported as
//! medians with every run beside them, and `--probe` to print, for each
//! hallmark run, what its group-commit writer did during the timed part
//! (commits, mean batch, mean commit and the share of the run it was
//! busy) and, with several instances on PostgreSQL, its used-nonce
//! batches). The table gives each system's medians as a ratio of
//! pebble's and against issue 16's goals (renewals ≥ 1,000/s on SQLite
//! and ≥ 600/s on PostgreSQL, new names ≥ 400/s).

mod common;

#[path = "../tests/it/support/acme.rs"]
mod acme_client;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::json;

use acme_client::Client;

const NAME: &str = "127.0.0.1";

type Answers = Arc<Mutex<HashMap<String, String>>>;

/// Publishes an http-01 key authorization by token.
type Publish = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Serves the key authorizations the clients publish, by token.
async fn http01_server(answers: Answers) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/.well-known/acme-challenge/{token}",
        axum::routing::get(
            move |axum::extract::Path(token): axum::extract::Path<String>| {
                let answers = answers.clone();
                async move {
                    answers
                        .lock()
                        .unwrap()
                        .get(&token)
                        .cloned()
                        .unwrap_or_default()
                }
            },
        ),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

/// pebble on a free loopback port with a fresh TLS certificate; killed
/// when dropped.
struct Pebble {
    process: std::process::Child,
    directory: String,
    root: reqwest::Certificate,
}

impl Pebble {
    fn start(dir: &std::path::Path, reuse: bool) -> Result<Pebble, String> {
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = rcgen::CertificateParams::new(vec![NAME.to_owned()])
            .and_then(|p| p.self_signed(&key))
            .map_err(|e| e.to_string())?;
        let write = |name: &str, text: String| {
            std::fs::write(dir.join(name), text).map_err(|e| e.to_string())
        };
        write("pebble.crt", cert.pem())?;
        write("pebble.key", key.serialize_pem())?;
        let port = common::free_port();
        let config = json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{}", common::free_port()),
            "certificate": dir.join("pebble.crt"),
            "privateKey": dir.join("pebble.key"),
            "httpPort": common::free_port(),
            "tlsPort": common::free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        write("pebble.json", config.to_string())?;
        let process = std::process::Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .env("PEBBLE_VA_ALWAYS_VALID", "1")
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", if reuse { "100" } else { "0" })
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("pebble: {e} (apt-get install pebble)"))?;
        let pebble = Pebble {
            process,
            directory: format!("https://{NAME}:{port}/dir"),
            root: reqwest::Certificate::from_pem(cert.pem().as_bytes())
                .map_err(|e| e.to_string())?,
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(pebble);
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        Err("pebble did not listen".into())
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Certificates/s from C clients that register and warm up first.
async fn measure(mut clients: Vec<Client>, count: usize, publish: Publish) -> Result<f64, String> {
    for c in &mut clients {
        let a = c.register_with(json!({"termsOfServiceAgreed": true})).await;
        if a.status != 201 {
            return Err(format!("register: {}", a.body));
        }
        c.issue(&[NAME], json!({}), publish.as_ref())
            .await
            .map_err(|a| format!("warm-up issuance: {}", a.body))?;
    }
    let per_client = count / clients.len();
    let before = WriterFigures::now();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in clients {
        let publish = publish.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_client {
                let chain = c
                    .issue(&[NAME], json!({}), publish.as_ref())
                    .await
                    .map_err(|a| format!("{}: {}", a.status, a.body))?;
                if !chain.contains("BEGIN CERTIFICATE") {
                    return Err(format!("not a chain: {chain}"));
                }
            }
            Ok::<(), String>(())
        }));
    }
    let issued = (per_client * tasks.len()) as f64;
    let mut failed = None;
    for t in tasks.iter_mut() {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = Some(e),
            Err(e) => failed = Some(e.to_string()),
        }
        if failed.is_some() {
            break;
        }
    }
    if let Some(e) = failed {
        // The other clients stop here, not later against a server gone.
        for t in &tasks {
            t.abort();
        }
        return Err(e);
    }
    let took = started.elapsed().as_secs_f64();
    if std::env::args().any(|a| a == "--probe") {
        let d = WriterFigures::now().minus(&before);
        let commits = d.commits.max(1) as f64;
        eprintln!(
            "    probe: {} workflow commits ({:.1} per certificate; {} as one statement, {} of them refused and retried), mean batch {:.1}, mean commit {:.2} ms, writer busy {:.0} % of the run",
            d.commits,
            d.commits as f64 / issued,
            d.one_statement,
            d.retried,
            d.writes as f64 / commits,
            d.busy * 1000.0 / commits,
            d.busy * 100.0 / took
        );
        if d.nonce_commits > 0 {
            eprintln!(
                "    probe: {} used-nonce batches, mean batch {:.1}, mean {:.2} ms, busy {:.0} % of the run (summed over its lanes)",
                d.nonce_commits,
                d.nonce_writes as f64 / d.nonce_commits as f64,
                d.nonce_busy * 1000.0 / d.nonce_commits as f64,
                d.nonce_busy * 100.0 / took
            );
        }
    }
    Ok(issued / took)
}

/// The workflow writer's totals (hallmark's metrics are process-wide, and
/// the bench runs the server in its own process).
struct WriterFigures {
    commits: u64,
    one_statement: u64,
    retried: u64,
    writes: u64,
    busy: f64,
    nonce_commits: u64,
    nonce_writes: u64,
    nonce_busy: f64,
}

impl WriterFigures {
    fn now() -> Self {
        let m = &hallmark::metrics::METRICS;
        WriterFigures {
            commits: m.store_commits.get(&["workflow"]),
            one_statement: m.store_one_statement_commits.get(&["committed"]),
            retried: m.store_one_statement_commits.get(&["retried"]),
            writes: m.store_batched_writes.get(&["workflow"]),
            busy: m.store_commit_duration.sum(&["workflow"]),
            nonce_commits: m.store_commits.get(&["nonces"]),
            nonce_writes: m.store_batched_writes.get(&["nonces"]),
            nonce_busy: m.store_commit_duration.sum(&["nonces"]),
        }
    }

    fn minus(&self, before: &Self) -> Self {
        WriterFigures {
            commits: self.commits - before.commits,
            one_statement: self.one_statement - before.one_statement,
            retried: self.retried - before.retried,
            writes: self.writes - before.writes,
            busy: self.busy - before.busy,
            nonce_commits: self.nonce_commits - before.nonce_commits,
            nonce_writes: self.nonce_writes - before.nonce_writes,
            nonce_busy: self.nonce_busy - before.nonce_busy,
        }
    }
}

/// pebble (Debian's) now and then deadlocks under this load: a goroutine
/// dump of a stuck pebble shows newOrder's `FindValidAuthorization` taking
/// its memory store's read lock a second time while `AddChallenge` waits
/// for the write lock, and every later request queueing behind them. So
/// pebble is driven in parts of a quarter of the count, each on a fresh
/// pebble; a part that hangs (a request unanswered for 5 s) is dropped
/// and run again, and the rate is that of the parts that finished.
async fn run_pebble(args: &common::LoadArgs, reuse: bool) -> Result<f64, String> {
    const PARTS: usize = 4;
    const MOST_HUNG: usize = 12;
    let per_part = (args.count / PARTS).max(args.concurrency);
    let (mut issued, mut took, mut done, mut hung) = (0.0, 0.0, 0, 0);
    while done < PARTS {
        match pebble_part(args, reuse, per_part).await {
            Ok(rate) => {
                let n = (per_part / args.concurrency * args.concurrency) as f64;
                issued += n;
                took += n / rate;
                done += 1;
            }
            Err(e) if e.contains("TimedOut") && hung < MOST_HUNG => hung += 1,
            Err(e) => return Err(e),
        }
    }
    eprintln!("    pebble: {done} parts of {per_part} finished, {hung} hung and were run again");
    Ok(issued / took)
}

async fn pebble_part(args: &common::LoadArgs, reuse: bool, count: usize) -> Result<f64, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let pebble = Pebble::start(dir.path(), reuse)?;
    let http = reqwest::Client::builder()
        .add_root_certificate(pebble.root.clone())
        .tls_built_in_root_certs(false)
        .timeout(std::time::Duration::from_secs(5))
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .map_err(|e| e.to_string())?;
    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        clients.push(Client::discover(http.clone(), &pebble.directory).await?);
    }
    measure(clients, count, Arc::new(|_: &str, _: &str| {})).await
}

async fn run(backend: &str, args: &common::LoadArgs, reuse: bool) -> Result<f64, String> {
    if backend == "pebble" {
        return run_pebble(args, reuse).await;
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    // `postgres-single`: PostgreSQL with `database.single_instance`.
    let single = backend == "postgres-single";
    let store = if single { "postgres" } else { backend };
    let (url, pg_name) = common::database_url(store, dir.path(), "acme")
        .await
        .ok_or("database unavailable")?;
    let answers: Answers = Arc::default();
    let http01_port = http01_server(answers.clone()).await;
    let reuse_days = if reuse { "30" } else { "0" };
    let server = common::Server::start(
        dir.path(),
        url,
        http01_port,
        &[
            // Every client registers and asks for nonces from one address.
            ("HALLMARK_LIMITS__NEW_ACCOUNTS_PER_MINUTE", "0"),
            ("HALLMARK_LIMITS__NEW_NONCES_PER_MINUTE", "0"),
            ("HALLMARK_ORDERS__REUSE_DAYS", reuse_days),
            (
                "HALLMARK_DATABASE__SINGLE_INSTANCE",
                if single { "true" } else { "false" },
            ),
        ],
    )
    .await?;
    let http_client = server.client(args.concurrency)?;
    let base = format!("{}/acme", server.config.public_https_url);
    let publish = Arc::new(move |token: &str, body: &str| {
        answers
            .lock()
            .unwrap()
            .insert(token.to_owned(), body.to_owned());
    });
    let clients = (0..args.concurrency)
        .map(|_| Client::with(http_client.clone(), base.clone()))
        .collect();
    let rate = measure(clients, args.count, publish).await;
    server.stop().await;
    common::drop_database(pg_name).await;
    rate
}

fn main() {
    let args = common::load_args(2_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "ACME issuance benchmark: {} certificates per run, {} concurrent ACME clients (one account each), {cores} cores",
        args.count, args.concurrency
    );
    let runs = runs_arg();
    // Rounds interleave the systems (each once a round), so the drift of
    // the machine within the hour hits every one of them alike.
    let mut rates: HashMap<(String, bool), Vec<f64>> = HashMap::new();
    let mut failures: HashMap<(String, bool), String> = HashMap::new();
    for round in 1..=runs {
        if runs > 1 {
            eprintln!("round {round} of {runs}");
        }
        for backend in &args.backends {
            for reuse in [true, false] {
                match runtime.block_on(run(backend, &args, reuse)) {
                    Ok(r) => {
                        eprintln!("  {backend} {}: {r:.0}/s", flow(reuse));
                        rates.entry((backend.clone(), reuse)).or_default().push(r);
                    }
                    Err(e) => {
                        eprintln!("  {backend} {}: failed: {e}", flow(reuse));
                        failures.insert((backend.clone(), reuse), e);
                    }
                }
            }
        }
    }
    println!();
    println!(
        "| store | renewal (name reused)/s, median | runs | new name (http-01 each)/s, median | runs | × pebble (renewal / new name) | goal (renewal / new name) |"
    );
    println!("|---|---:|---|---:|---|---|---|");
    let median = |key: &(String, bool)| rates.get(key).map(|r| median_of(r));
    for backend in &args.backends {
        let mut cells = Vec::new();
        for reuse in [true, false] {
            let key = (backend.clone(), reuse);
            let all = rates
                .get(&key)
                .map(|r| {
                    r.iter()
                        .map(|v| format!("{v:.0}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            cells.push(match (median(&key), failures.get(&key)) {
                (Some(m), None) => (format!("{m:.0}"), all),
                (Some(m), Some(_)) => (format!("{m:.0}"), format!("{all} (a run failed)")),
                (None, Some(e)) => (format!("failed: {e}"), all),
                (None, None) => ("—".into(), all),
            });
        }
        let ratio = |reuse: bool| match (
            median(&(backend.clone(), reuse)),
            median(&("pebble".to_owned(), reuse)),
        ) {
            (Some(h), Some(p)) if p > 0.0 => format!("{:.2}", h / p),
            _ => "—".into(),
        };
        let verdict = match goals(backend) {
            None => "reference".to_owned(),
            Some((renewal, new_name)) => {
                let met = |reuse: bool, goal: f64| match median(&(backend.clone(), reuse)) {
                    Some(m) if m >= goal => format!("{goal:.0} met"),
                    Some(_) => format!("{goal:.0} not met"),
                    None => format!("{goal:.0} —"),
                };
                format!("{} / {}", met(true, renewal), met(false, new_name))
            }
        };
        println!(
            "| {backend} | {} | {} | {} | {} | {} / {} | {verdict} |",
            cells[0].0,
            cells[0].1,
            cells[1].0,
            cells[1].1,
            ratio(true),
            ratio(false)
        );
    }
}

fn flow(reuse: bool) -> &'static str {
    if reuse {
        "renewal"
    } else {
        "new name"
    }
}

/// Issue 16's goals, complete ACME runs per second (renewal, new name):
/// none for pebble, the reference.
fn goals(backend: &str) -> Option<(f64, f64)> {
    match backend {
        "sqlite" => Some((1_000.0, 400.0)),
        "postgres" | "postgres-single" => Some((600.0, 400.0)),
        _ => None,
    }
}

/// `--runs N`: rounds of every system (default 1).
fn runs_arg() -> usize {
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if arg == "--runs" {
            return it.next().and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
        }
    }
    1
}

fn median_of(rates: &[f64]) -> f64 {
    let mut sorted = rates.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}
