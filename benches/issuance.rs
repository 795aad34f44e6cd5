//! Issuance throughput: sign-and-store certificates per second through the
//! real workflow (CSR parse and proof of possession, policy, profile check,
//! signing, group-committed durable store), for P-256 and RSA-2048 issuing
//! keys, on SQLite and PostgreSQL, beside `openssl speed` on this machine.
//!
//! Run: `cargo bench --bench issuance` (options after `--`:
//! `--count N --concurrency C --backends sqlite,postgres --key-types p256,rsa2048`).

mod common;

use std::time::Instant;

use hallmark::config::Config;
use hallmark::workflow::SignOptions;

const PASSPHRASE: &str = "benchmark passphrase";

struct Args {
    count: usize,
    concurrency: usize,
    backends: Vec<String>,
    key_types: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        count: 20_000,
        concurrency: 32,
        backends: vec!["sqlite".into(), "postgres".into()],
        key_types: vec!["p256".into(), "rsa2048".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--count" => a.count = common::value(&mut it, "--count"),
            "--concurrency" => a.concurrency = common::value(&mut it, "--concurrency"),
            "--key-types" => a.key_types = common::list(&mut it, "--key-types"),
            "--backends" => a.backends = common::list(&mut it, "--backends"),
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

/// `openssl speed` signs per second on one core for the algorithm.
fn openssl_speed(algorithm: &str) -> Option<f64> {
    let out = std::process::Command::new("openssl")
        .args(["speed", "-seconds", "3", "-mr", algorithm])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Machine-readable lines: "+F4:<n>:<bits>:<signs/s>:<verifies/s>"
    // (ECDSA) and "+F2:…" (RSA).
    text.lines()
        .find(|l| l.starts_with("+F2:") || l.starts_with("+F4:"))
        .and_then(|l| l.split(':').nth(3))
        .and_then(|s| s.parse::<f64>().ok())
}

async fn run(key_type: &str, backend: &str, args: &Args, csr: &[u8]) -> Result<f64, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (url, pg_name) = common::database_url(backend, dir.path(), "issuance")
        .await
        .ok_or("database unavailable")?;
    let env = vec![
        ("DATABASE_URL".to_string(), url),
        ("HALLMARK_CA__KEY_TYPE".to_string(), key_type.to_string()),
    ];
    let config = Config::load(None, &dir.path().join("data"), env).map_err(|e| e.to_string())?;
    hallmark::datadir::init_ca(
        &config,
        PASSPHRASE.as_bytes(),
        time::OffsetDateTime::now_utc(),
    )
    .map_err(|e| e.to_string())?;
    let authority = hallmark::service::open_authority(&config)
        .await
        .map_err(|e| e.to_string())?;
    // Warm up connections and caches.
    for _ in 0..50 {
        authority
            .sign_csr(csr, SignOptions::default(), "bench")
            .await
            .map_err(|e| e.to_string())?;
    }
    let per_task = args.count / args.concurrency;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let authority = authority.clone();
        let csr = csr.to_vec();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                authority
                    .sign_csr(&csr, SignOptions::default(), "bench")
                    .await
                    .expect("issuance succeeds");
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let issued = (per_task * args.concurrency) as f64;
    drop(authority);
    common::drop_database(pg_name).await;
    Ok(issued / elapsed)
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // One P-256 CSR, signed over and over (serials differ every time).
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec!["bench.internal".to_string()]).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bench.internal");
    let csr = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem")
        .into_bytes();

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "Issuance benchmark: {} certificates per run, {} concurrent clients, {cores} cores",
        args.count, args.concurrency
    );
    println!();
    println!("| issuing key | store | certificates/s | openssl speed sign/s (1 core) | crypto limit for {cores} cores |");
    println!("|---|---|---:|---:|---:|");
    for (key_type, speed_alg) in [("p256", "ecdsap256"), ("rsa2048", "rsa2048")] {
        if !args.key_types.iter().any(|k| k == key_type) {
            continue;
        }
        let speed = openssl_speed(speed_alg);
        for backend in &args.backends {
            let rate = runtime.block_on(run(key_type, backend, &args, &csr));
            let rate = match rate {
                Ok(r) => format!("{r:.0}"),
                Err(e) => {
                    eprintln!("{key_type} on {backend}: {e}");
                    "unavailable".into()
                }
            };
            let speed_text = speed
                .map(|s| format!("{s:.0}"))
                .unwrap_or_else(|| "?".into());
            let limit = speed
                .map(|s| format!("{:.0}", s * cores as f64))
                .unwrap_or_else(|| "?".into());
            println!("| {key_type} | {backend} | {rate} | {speed_text} | {limit} |");
        }
    }
}
