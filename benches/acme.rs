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
//! Run: `cargo bench --bench acme` (options after `--`:
//! `--count N --concurrency C --backends sqlite,postgres`).

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

async fn run(backend: &str, args: &common::LoadArgs, reuse: bool) -> Result<f64, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (url, pg_name) = common::database_url(backend, dir.path(), "acme")
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
        ],
    )
    .await?;
    let http_client = server.client(args.concurrency)?;
    let base = format!("{}/acme", server.config.public_https_url);
    let publish = {
        let answers = answers.clone();
        Arc::new(move |token: &str, body: &str| {
            answers
                .lock()
                .unwrap()
                .insert(token.to_owned(), body.to_owned());
        })
    };

    // Each client registers and gets one certificate (proving the name)
    // before the clock starts.
    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        let mut c = Client::with(http_client.clone(), base.clone());
        let a = c.register_with(json!({"termsOfServiceAgreed": true})).await;
        if a.status != 201 {
            return Err(format!("register: {}", a.body));
        }
        c.issue(&[NAME], json!({}), publish.as_ref())
            .await
            .map_err(|a| format!("warm-up issuance: {}", a.body))?;
        clients.push(c);
    }
    let per_client = args.count / args.concurrency;
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
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let issued = (per_client * args.concurrency) as f64;
    server.stop().await;
    common::drop_database(pg_name).await;
    Ok(issued / elapsed)
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
    println!();
    println!("| store | renewal (name reused)/s | new name (http-01 each)/s |");
    println!("|---|---:|---:|");
    for backend in &args.backends {
        let mut cells = Vec::new();
        for reuse in [true, false] {
            cells.push(match runtime.block_on(run(backend, &args, reuse)) {
                Ok(r) => format!("{r:.0}"),
                Err(e) => format!("failed: {e}"),
            });
        }
        println!("| {backend} | {} | {} |", cells[0], cells[1]);
    }
}
