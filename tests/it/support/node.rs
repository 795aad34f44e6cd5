//! `hallmark serve` as a child process the fault tests kill, restart and
//! load with bursts of issuances and revocations.

use super::*;
use crate::support::dv::{challenge, csr, Http01Server};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A data directory, database and listeners for `hallmark serve` run as a
/// child process, with this test's challenge servers.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub db: TestDb,
    pub env: Vec<(String, String)>,
    pub https: String,
    pub http: String,
    pub child: Option<Child>,
    /// Whether `serve` ever started here: until it has, its listeners
    /// may move to other ports (another test may take a port between
    /// [`free_port`] and the bind).
    started: bool,
}

impl Node {
    pub async fn new(backend: Backend, http01: &Http01Server, dns_addr: &str) -> Node {
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
            started: false,
        };
        let out = node.cli(&["init"]);
        assert!(out.0, "init: {}", out.1);
        node
    }

    pub fn cli(&self, args: &[&str]) -> (bool, String) {
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

    /// Starts `serve` and waits until `/readyz` answers 200. A first start
    /// whose port another test took meanwhile moves to fresh ports.
    pub async fn start(&mut self) {
        for _ in 0..5 {
            let before = self.log().len();
            self.spawn();
            if self.ready().await {
                self.started = true;
                return;
            }
            let taken = self.log()[before..].contains("Address already in use");
            if self.started || !taken {
                break;
            }
            let (https, http) = (free_port(), free_port());
            for (key, value) in &mut self.env {
                match key.as_str() {
                    "HALLMARK_SERVER__HTTPS_LISTEN" => *value = format!("127.0.0.1:{https}"),
                    "HALLMARK_SERVER__HTTP_LISTEN" => *value = format!("127.0.0.1:{http}"),
                    _ => {}
                }
            }
            self.https = format!("https://localhost:{https}");
            self.http = format!("http://127.0.0.1:{http}");
        }
        panic!("serve did not become ready: {}", self.log());
    }

    fn spawn(&mut self) {
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
    }

    /// Whether `/readyz` answers 200 within 15 s while `serve` runs.
    async fn ready(&mut self) -> bool {
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if let Ok(r) = client.get(format!("{}/readyz", self.http)).send().await {
                if r.status() == StatusCode::OK {
                    return true;
                }
            }
            if let Some(child) = &mut self.child {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    pub fn signal(&mut self, signal: &str) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("serve runs");
        Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap()
    }

    pub fn client(&self) -> reqwest::Client {
        let root = std::fs::read(self.dir.path().join("hallmark-data/ca/root.crt.pem")).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&root).unwrap())
            .tls_built_in_root_certs(false)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }
}

impl Node {
    /// A node with `serve` running, an account whose key it returns, and
    /// `web.internal` proven for that account (so orders for it are
    /// issued at once).
    pub async fn serving_with_a_proven_name(
        backend: Backend,
        http01: &Http01Server,
        dns_addr: &str,
    ) -> (Node, String, reqwest::Client) {
        let mut node = Node::new(backend, http01, dns_addr).await;
        let (ok, out) = node.cli(&["account", "create", "burst"]);
        assert!(ok, "{out}");
        let key = serde_json::from_str::<Value>(&out).unwrap()["api_key"]
            .as_str()
            .unwrap()
            .to_owned();
        node.start().await;
        let client = node.client();
        prove_name(&node, &client, &key, http01).await;
        (node, key, client)
    }

    /// Stops `serve` (if running) and drops the test database.
    pub async fn finish(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let db = std::mem::replace(&mut self.db, TestDb::none());
        db.cleanup().await;
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
pub struct Acknowledged {
    pub issued: BTreeSet<String>,
    pub revoked: BTreeSet<String>,
    pub requests: u64,
    pub errors: u64,
    pub acme: u64,
    /// What the requests that did not complete got, by kind.
    pub failures: std::collections::BTreeMap<String, u64>,
}

impl Acknowledged {
    pub fn failed(&mut self, what: String) {
        self.errors += 1;
        *self.failures.entry(what).or_default() += 1;
    }
}

/// Complete ACME issuances for web.internal (http-01 the first time, then
/// the authorization is reused) until `stop`; each in its own task, so a
/// connection cut by a kill is one error.
pub async fn acme_burst(
    acme: Arc<crate::support::acme::Client>,
    http01: Http01Server,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Acknowledged>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let (acme, http01) = (acme.clone(), http01.clone());
        let one = tokio::spawn(async move {
            let publish = |token: &str, ka: &str| {
                http01.publish(&format!("/.well-known/acme-challenge/{token}"), ka)
            };
            acme.issue(&["web.internal"], json!({}), &publish)
                .await
                .ok()
        });
        let chain = one.await.ok().flatten();
        let mut s = seen.lock().unwrap();
        s.requests += 1;
        match chain {
            Some(pem) => {
                let der = hallmark::pki::pem_decode_all(&pem, "CERTIFICATE").remove(0);
                let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("a certificate");
                s.issued.insert(hex::encode(cert.raw_serial()));
                s.acme += 1;
            }
            None => s.failed("acme: cut or refused".into()),
        }
    }
}

/// Issues (names already proven) and revokes every third certificate,
/// from `workers` clients, until `stop`.
pub async fn burst(
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
                let (order, what): (Option<Value>, String) = match r {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        (r.json().await.ok(), String::new())
                    }
                    Ok(r) => (None, format!("order: {}", r.status())),
                    Err(e) => (
                        None,
                        format!(
                            "order: connection ({})",
                            if e.is_connect() { "refused" } else { "cut" }
                        ),
                    ),
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
                        None => s.failed(what),
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
                        Ok(r) => s.failed(format!("revoke: {}", r.status())),
                        Err(_) => s.failed("revoke: connection".into()),
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
pub async fn prove_name(node: &Node, client: &reqwest::Client, key: &str, http01: &Http01Server) {
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
