//! Fault injection with real processes and a real database: `hallmark
//! serve` killed with SIGKILL in the middle of a burst of issuances and
//! revocations; PostgreSQL refusing connections under load; graceful
//! shutdown under load. What a client saw acknowledged must be true
//! afterwards. (The long runs — soak, disk full, many kills — are
//! `scripts/faults.sh`, with figures in docs/RELIABILITY.md.)

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hallmark::workflow::accounts::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;
use crate::dns::{self, Entry};
use crate::orders::{challenge, csr, DvLab, Http01Server};
use crate::revocation::{api_key, crl_contents};

/// A data directory, database and listeners for `hallmark serve` run as a
/// child process, with this test's challenge servers.
struct Node {
    dir: tempfile::TempDir,
    db: TestDb,
    env: Vec<(String, String)>,
    https: String,
    http: String,
    child: Option<Child>,
}

impl Node {
    async fn new(backend: Backend, http01: &Http01Server, dns_addr: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(backend, dir.path()).await;
        let https = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        let env: Vec<(String, String)> = [
            ("HALLMARK_ROOT_PASSPHRASE", PASSPHRASE.to_owned()),
            ("DATABASE_URL", db.url.clone()),
            ("HALLMARK_SERVER__HTTPS_LISTEN", https.clone()),
            ("HALLMARK_SERVER__HTTP_LISTEN", http.clone()),
            ("HALLMARK_VALIDATION__DNS_RESOLVER", dns_addr.to_owned()),
            ("HALLMARK_VALIDATION__HTTP_PORT", http01.port.to_string()),
            ("HALLMARK_VALIDATION__TIMEOUT_SECS", "3".into()),
            ("HALLMARK_CRL__DEBOUNCE_SECS", "1".into()),
            ("HALLMARK_ORDERS__RATE_PER_MINUTE", "100000".into()),
            ("RUST_LOG", "warn".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let node = Node {
            dir,
            db,
            env,
            https: format!("https://localhost:{}", https.rsplit(':').next().unwrap()),
            http: format!("http://{http}"),
            child: None,
        };
        let out = node.cli(&["init"]);
        assert!(out.0, "init: {}", out.1);
        node
    }

    fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_hallmark"))
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("DATABASE_URL")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Starts `serve` and waits until `/readyz` answers 200.
    async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_hallmark"))
            .arg("serve")
            .current_dir(self.dir.path())
            .env_remove("DATABASE_URL")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if let Ok(r) = client.get(format!("{}/readyz", self.http)).send().await {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("serve did not become ready: {}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    fn signal(&mut self, signal: &str) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("serve runs");
        Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap()
    }

    fn client(&self) -> reqwest::Client {
        let root = std::fs::read(self.dir.path().join("hallmark-data/ca/root.crt.pem")).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&root).unwrap())
            .tls_built_in_root_certs(false)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What clients were told.
#[derive(Default)]
struct Acknowledged {
    issued: BTreeSet<String>,
    revoked: BTreeSet<String>,
    requests: u64,
    errors: u64,
}

/// Issues (names already proven) and revokes every third certificate,
/// from `workers` clients, until `stop`.
async fn burst(
    client: reqwest::Client,
    base: String,
    key: String,
    csrs: Arc<Vec<String>>,
    workers: usize,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Acknowledged>>,
) {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (client, base, key, csrs, stop, seen) = (
            client.clone(),
            base.clone(),
            key.clone(),
            csrs.clone(),
            stop.clone(),
            seen.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                i += workers;
                let r = client
                    .post(format!("{base}/api/v1/orders"))
                    .bearer_auth(&key)
                    .json(&json!({"csr": csrs[i % csrs.len()], "validation": "dv"}))
                    .send()
                    .await;
                let order: Option<Value> = match r {
                    Ok(r) if r.status() == StatusCode::CREATED => r.json().await.ok(),
                    _ => None,
                };
                let serial = order
                    .as_ref()
                    .filter(|o| o["status"] == "valid")
                    .and_then(|o| o["certificate_serial"].as_str().map(str::to_owned));
                {
                    let mut s = seen.lock().unwrap();
                    s.requests += 1;
                    match &serial {
                        Some(serial) => {
                            s.issued.insert(serial.clone());
                        }
                        None => s.errors += 1,
                    }
                }
                let Some(serial) = serial else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                if i % 3 == 0 {
                    let r = client
                        .post(format!("{base}/api/v1/certificates/{serial}/revoke"))
                        .bearer_auth(&key)
                        .json(&json!({"reason": "superseded"}))
                        .send()
                        .await;
                    let mut s = seen.lock().unwrap();
                    s.requests += 1;
                    match r {
                        Ok(r) if r.status() == StatusCode::OK => {
                            s.revoked.insert(serial);
                        }
                        _ => s.errors += 1,
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Proves `web.internal` once for the account behind `key` through the
/// child's validator, so later orders for it are issued at once.
async fn prove_name(node: &Node, client: &reqwest::Client, key: &str, http01: &Http01Server) {
    let pem = csr(node.dir.path(), "proof", "web.internal", "DNS:web.internal");
    let r = client
        .post(format!("{}/api/v1/orders", node.https))
        .bearer_auth(key)
        .json(&json!({"csr": pem, "validation": "dv"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let order: Value = r.json().await.unwrap();
    let c = challenge(&order, "web.internal", "http-01");
    http01.publish(
        c["http_path"].as_str().unwrap(),
        c["http_body"].as_str().unwrap(),
    );
    let r = client
        .post(format!(
            "{}/api/v1/orders/{}/challenges/{}",
            node.https,
            order["id"].as_str().unwrap(),
            c["id"].as_str().unwrap()
        ))
        .bearer_auth(key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    for _ in 0..100 {
        let o: Value = client
            .get(format!(
                "{}/api/v1/orders/{}",
                node.https,
                order["id"].as_str().unwrap()
            ))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if o["status"] == "valid" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the name was never proven");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_killed_mid_burst_loses_no_acknowledged_issuance_or_revocation() {
    for backend in backends() {
        let http01 = Http01Server::start().await;
        let dns = dns::serve(vec![Entry::A("web", "127.0.0.1".parse().unwrap())]).await;
        let mut node = Node::new(backend, &http01, &dns.addr).await;
        let (ok, out) = node.cli(&["account", "create", "burst"]);
        assert!(ok, "{out}");
        let key = serde_json::from_str::<Value>(&out).unwrap()["api_key"]
            .as_str()
            .unwrap()
            .to_owned();
        node.start().await;
        let client = node.client();
        prove_name(&node, &client, &key, &http01).await;
        let csrs: Arc<Vec<String>> = Arc::new(
            (0..4)
                .map(|i| {
                    csr(
                        node.dir.path(),
                        &format!("b{i}"),
                        "web.internal",
                        "DNS:web.internal",
                    )
                })
                .collect(),
        );
        let seen = Arc::new(Mutex::new(Acknowledged::default()));
        let kills = 3;
        for round in 0..kills {
            let stop = Arc::new(AtomicBool::new(false));
            let load = tokio::spawn(burst(
                client.clone(),
                node.https.clone(),
                key.clone(),
                csrs.clone(),
                8,
                stop.clone(),
                seen.clone(),
            ));
            // At a random moment of the burst.
            let at = 400 + rand::random::<u64>() % 1200;
            tokio::time::sleep(Duration::from_millis(at)).await;
            let status = node.signal("-KILL");
            assert!(!status.success(), "round {round}: killed, not exited");
            stop.store(true, Ordering::Relaxed);
            load.await.unwrap();
            node.start().await;
        }
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        assert!(
            seen.issued.len() >= 10 && !seen.revoked.is_empty(),
            "{backend:?}: the burst did too little: {} issued, {} revoked",
            seen.issued.len(),
            seen.revoked.len()
        );

        // Every certificate a client received is on record, once; every
        // acknowledged revocation is recorded.
        let store = hallmark::store::connect(&node.db.url).await.unwrap();
        for serial in &seen.issued {
            let cert = store
                .certificate(&serial.parse().unwrap())
                .await
                .unwrap_or_else(|e| {
                    panic!("{backend:?}: {serial} was returned but is not stored: {e}")
                });
            if seen.revoked.contains(serial) {
                assert!(
                    cert.revoked_at.is_some(),
                    "{backend:?}: revocation of {serial} lost"
                );
            }
        }
        let log = store.audit_page(0, 1_000_000).await.unwrap();
        let issues: Vec<&str> = log
            .iter()
            .filter(|r| r.action == "certificate.issue")
            .map(|r| r.subject.as_str())
            .collect();
        let unique: BTreeSet<&str> = issues.iter().copied().collect();
        assert_eq!(
            issues.len(),
            unique.len(),
            "{backend:?}: a serial issued twice"
        );

        // The restarted instance publishes every acknowledged revocation
        // (its CRL within debounce + poll + generation).
        let issuer = store
            .issuers()
            .await
            .unwrap()
            .into_iter()
            .find(|i| i.kind == hallmark::store::IssuerKind::Intermediate)
            .unwrap()
            .id;
        let started = Instant::now();
        let plain = reqwest::Client::new();
        loop {
            let der = plain
                .get(format!("{}/crl/{issuer}.crl", node.http))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let (_, listed) = crl_contents(&der);
            if seen.revoked.iter().all(|s| listed.contains(s)) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(8),
                "{backend:?}: acknowledged revocations missing from the CRL"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // No order is stuck: claims the dead processes left behind are
        // resumed by the worker (made stale here instead of waiting).
        node.db
            .execute("UPDATE orders SET updated_at = 0 WHERE status IN ('ready', 'processing')")
            .await;
        let started = Instant::now();
        loop {
            let open: Vec<_> = store
                .orders(&hallmark::store::OrderQuery {
                    limit: 10_000,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_iter()
                .filter(|o| {
                    matches!(
                        o.status,
                        hallmark::store::OrderStatus::Ready
                            | hallmark::store::OrderStatus::Processing
                    )
                })
                .collect();
            if open.is_empty() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{backend:?}: orders stuck: {:?}",
                open.iter().map(|o| (&o.id, o.status)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let (ok, out) = node.cli(&["audit", "verify"]);
        assert!(ok, "{backend:?}: audit verify: {out}");
        eprintln!(
            "{backend:?}: {kills} kills, {} requests, {} not completed (cut by the kills), {} issued, {} revoked, 0 lost",
            seen.requests,
            seen.errors,
            seen.issued.len(),
            seen.revoked.len()
        );
        node.signal("-TERM");
        drop(store);
        let db = std::mem::replace(
            &mut node.db,
            TestDb::new(Backend::Sqlite, Path::new("/nonexistent")).await,
        );
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refusing_connections_gives_503s_and_the_service_recovers_by_itself() {
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    let lab = DvLab::new(Backend::Postgres, &[]).await;
    let (owner, key) = api_key(&lab.running.authority, "team", Role::Requester).await;
    let _ = owner;
    let client = lab.running.client();
    let name = lab.ca.db.url.rsplit('/').next().unwrap().to_owned();
    let admin = "postgres://postgres@127.0.0.1:5432/postgres";
    let admin_sql = |sql: String| async move {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(admin).await.unwrap();
        sqlx::query(&sql).execute(&mut c).await.unwrap();
    };
    let pem = csr(lab.ca.dir.path(), "x", "web.internal", "DNS:web.internal");
    let order = |client: reqwest::Client, key: String, pem: String, url: String| async move {
        let started = Instant::now();
        let r = client
            .post(url)
            .bearer_auth(key)
            .json(&json!({"csr": pem, "validation": "dv"}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let ctype = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = r.json().await.unwrap_or(Value::Null);
        (status, ctype, body, started.elapsed())
    };
    let (status, _, body, _) =
        order(client.clone(), key.clone(), pem.clone(), lab.url("/orders")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // The database goes away: no new connections, existing ones cut.
    admin_sql(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await;
    admin_sql(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .await;
    let mut outage = Vec::new();
    for _ in 0..4 {
        outage.push(tokio::spawn(order(
            client.clone(),
            key.clone(),
            pem.clone(),
            lab.url("/orders"),
        )));
    }
    for t in outage {
        let (status, ctype, body, took) = t.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(ctype.as_deref(), Some("application/problem+json"));
        assert_eq!(
            body["type"], "urn:hallmark:error:databaseUnavailable",
            "{body}"
        );
        assert!(took < Duration::from_secs(15), "a 503 took {took:?}");
    }
    let ready = reqwest::get(format!("{}/readyz", lab.running.http_url))
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    // CRLs are still served from memory.
    let issuer = lab.running.authority.issuer().certificate().id().to_owned();
    let crl = reqwest::get(format!("{}/crl/{issuer}.crl", lab.running.http_url))
        .await
        .unwrap();
    assert_eq!(crl.status(), StatusCode::OK);

    // Nothing half-written: no order was recorded during the outage.
    admin_sql(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;
    let started = Instant::now();
    loop {
        let r = reqwest::get(format!("{}/readyz", lab.running.http_url))
            .await
            .unwrap();
        if r.status() == StatusCode::OK {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never ready again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovered = started.elapsed();
    let (status, _, body, _) =
        order(client.clone(), key.clone(), pem.clone(), lab.url("/orders")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, list) = lab.get(&key, "/orders").await;
    assert_eq!(
        list["orders"].as_array().map(Vec::len),
        Some(2),
        "only the orders made while the database was up: {list}"
    );
    assert!(
        hallmark::workflow::audit::verify(lab.running.authority.store().as_ref())
            .await
            .is_ok()
    );
    eprintln!("PostgreSQL outage: 4 requests, 4 × 503, ready again {recovered:?} after the database returned");
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_the_requests_in_flight() {
    for backend in backends() {
        let http01 = Http01Server::start().await;
        let dns = dns::serve(vec![Entry::A("web", "127.0.0.1".parse().unwrap())]).await;
        let mut node = Node::new(backend, &http01, &dns.addr).await;
        let (ok, out) = node.cli(&["account", "create", "burst"]);
        assert!(ok, "{out}");
        let key = serde_json::from_str::<Value>(&out).unwrap()["api_key"]
            .as_str()
            .unwrap()
            .to_owned();
        node.start().await;
        let client = node.client();
        prove_name(&node, &client, &key, &http01).await;
        let csrs = Arc::new(vec![csr(
            node.dir.path(),
            "g",
            "web.internal",
            "DNS:web.internal",
        )]);
        // Requests that were sent before SIGTERM all complete.
        let mut inflight = Vec::new();
        for _ in 0..32 {
            let (client, base, key, csr) = (
                client.clone(),
                node.https.clone(),
                key.clone(),
                csrs[0].clone(),
            );
            inflight.push(tokio::spawn(async move {
                client
                    .post(format!("{base}/api/v1/orders"))
                    .bearer_auth(key)
                    .json(&json!({"csr": csr, "validation": "dv"}))
                    .send()
                    .await
                    .map(|r| r.status())
            }));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        let status = node.signal("-TERM");
        assert!(
            status.success(),
            "{backend:?}: clean exit on SIGTERM: {status}"
        );
        let mut done = 0;
        let mut refused = 0;
        for t in inflight {
            match t.await.unwrap() {
                Ok(s) => {
                    assert_eq!(s, StatusCode::CREATED, "{backend:?}");
                    done += 1;
                }
                // Sent after the listener closed, or on a kept-alive
                // connection the server was closing as idle: never read by
                // the server (the count below proves it).
                Err(_) => refused += 1,
            }
        }
        assert!(done > 0, "{backend:?}: nothing was in flight");
        let store = hallmark::store::connect(&node.db.url).await.unwrap();
        let stored = store.count_certificates().await.unwrap();
        // Every stored certificate reached its client as a 201 (besides the
        // proof's, the HTTPS listener's and the OCSP responder's): none was
        // made by a request whose answer was cut.
        assert_eq!(stored as usize, done + 3, "{backend:?}: {refused} refused");
        eprintln!("{backend:?}: graceful shutdown: {done} finished, {refused} not read by the server, 0 cut");
        drop(store);
        let db = std::mem::replace(
            &mut node.db,
            TestDb::new(Backend::Sqlite, Path::new("/nonexistent")).await,
        );
        db.cleanup().await;
    }
}
