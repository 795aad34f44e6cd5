//! REST issuance for names already authorised (DESIGN §6: ≥ 6,000/s): the
//! real service on loopback HTTPS, an account whose name was proven once by
//! http-01, then N `POST /api/v1/orders` from C concurrent clients, each
//! answered 201 with a `valid` order (CSR intake, authorization reuse,
//! signing, and the order + certificate + audit records group-committed).
//!
//! Run: `cargo bench --bench rest_orders` (options after `--`:
//! `--count N --concurrency C --backends sqlite,postgres`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hallmark::workflow::accounts::{create_account, Role};
use serde_json::{json, Value};

/// Answers every http-01 request with `body` (the bench proves one name).
async fn http01_server(body: Arc<std::sync::Mutex<String>>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/.well-known/acme-challenge/{token}",
        axum::routing::get(move || {
            let body = body.clone();
            async move { body.lock().unwrap().clone() }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

async fn run(backend: &str, args: &common::LoadArgs, csr: &str) -> Result<f64, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (url, pg_name) = common::database_url(backend, dir.path(), "rest")
        .await
        .ok_or("database unavailable")?;
    let answer = Arc::new(std::sync::Mutex::new(String::new()));
    let http01_port = http01_server(answer.clone()).await;
    let server = common::Server::start(dir.path(), url, http01_port, &[]).await?;
    let store = server.authority.store().clone();
    let key = create_account(store.as_ref(), "bench", Role::Requester, "bench")
        .await
        .map_err(|e| e.to_string())?
        .api_key
        .to_string();
    let client = server.client(args.concurrency)?;
    let orders = format!("{}/api/v1/orders", server.config.public_https_url);
    let post = |client: reqwest::Client, key: String, orders: String, csr: String| async move {
        let r = client
            .post(&orders)
            .bearer_auth(&key)
            .json(&json!({"csr": csr, "validation": "dv"}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let order: Value = r.json().await.map_err(|e| e.to_string())?;
        if status != reqwest::StatusCode::CREATED {
            return Err(format!("{status}: {order}"));
        }
        Ok::<Value, String>(order)
    };

    // Prove the name once by http-01.
    let order = post(client.clone(), key.clone(), orders.clone(), csr.to_owned()).await?;
    let challenge = order["authorizations"][0]["challenges"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "http-01"))
        .ok_or("no http-01 challenge")?
        .clone();
    *answer.lock().unwrap() = challenge["http_body"].as_str().unwrap_or("").to_owned();
    client
        .post(challenge["url"].as_str().unwrap_or(""))
        .bearer_auth(&key)
        .json(&json!({}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let order_url = order["url"].as_str().unwrap_or("").to_owned();
    for _ in 0..100 {
        let o: Value = client
            .get(&order_url)
            .bearer_auth(&key)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if o["status"] == "valid" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Warm up, then measure.
    for _ in 0..100 {
        let o = post(client.clone(), key.clone(), orders.clone(), csr.to_owned()).await?;
        if o["status"] != "valid" {
            return Err(format!("the name was not reused: {o}"));
        }
    }
    let per_task = args.count / args.concurrency;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, key, orders, csr) =
            (client.clone(), key.clone(), orders.clone(), csr.to_owned());
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                let o = post(client.clone(), key.clone(), orders.clone(), csr.clone()).await?;
                if o["status"] != "valid" {
                    return Err(format!("not issued at once: {o}"));
                }
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let issued = (per_task * args.concurrency) as f64;
    server.stop().await;
    common::drop_database(pg_name).await;
    Ok(issued / elapsed)
}

fn main() {
    let args = common::load_args(20_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "REST issuance benchmark: {} orders per run, {} concurrent HTTPS clients, {cores} cores",
        args.count, args.concurrency
    );
    println!();
    println!("| store | orders issued/s (HTTPS, P-256 issuing key) |");
    println!("|---|---:|");
    for backend in &args.backends {
        let rate = match runtime.block_on(run(backend, &args, &csr)) {
            Ok(r) => format!("{r:.0}"),
            Err(e) => format!("failed: {e}"),
        };
        println!("| {backend} | {rate} |");
    }
}
