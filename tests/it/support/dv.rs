//! DV on loopback: a real http-01 server, the lab of DNS server and
//! challenge responders every order test proves names with, CSRs.

use super::*;
use crate::support::dns::{self, DnsServer, Entry};
use axum::extract::{Path, State};
use axum::http::StatusCode as AxumStatus;
use axum::routing::get;
use axum::Router;
use hallmark::workflow::accounts::{create_account, Role};
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An http-01 server answering whatever the test publishes.
#[derive(Clone, Default)]
pub struct Http01Server {
    pub port: u16,
    answers: Arc<Mutex<HashMap<String, String>>>,
}

impl Http01Server {
    pub async fn start() -> Http01Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let answers: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let app = Router::new()
            .route(
                "/.well-known/acme-challenge/{token}",
                get(
                    |State(answers): State<Arc<Mutex<HashMap<String, String>>>>,
                     Path(token): Path<String>| async move {
                        match answers.lock().unwrap().get(&token) {
                            Some(body) => Ok(body.clone()),
                            None => Err(AxumStatus::NOT_FOUND),
                        }
                    },
                ),
            )
            .with_state(answers.clone());
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Http01Server { port, answers }
    }

    pub fn publish(&self, path: &str, body: &str) {
        let token = path.rsplit('/').next().unwrap().to_owned();
        self.answers.lock().unwrap().insert(token, body.to_owned());
    }
}

/// A CA whose validators point at this test's challenge servers.
pub struct DvLab {
    pub ca: TestCa,
    pub running: Running,
    pub http01: Http01Server,
    pub dns: DnsServer,
    pub tls_alpn: Option<tokio::net::TcpListener>,
}

impl DvLab {
    pub async fn new(backend: Backend, extra: &[(&str, String)]) -> DvLab {
        Self::with_chaos(backend, extra, None).await
    }

    /// The whole audit log so far, oldest first.
    pub async fn audit_log(&self) -> Vec<hallmark::store::AuditRecord> {
        self.running
            .authority
            .store()
            .audit_page(0, 1_000_000)
            .await
            .unwrap()
    }

    /// Like `new`, with the test-only ACME faults switched on.
    pub async fn with_chaos(
        backend: Backend,
        extra: &[(&str, String)],
        chaos: Option<hallmark::config::DangerAcmeChaos>,
    ) -> DvLab {
        Self::with_config(backend, extra, |c| c.danger_acme_chaos = chaos).await
    }

    /// Like `new`, with the configuration changed by `setup` before the
    /// service starts (for what no `HALLMARK_*` variable sets).
    pub async fn with_config(
        backend: Backend,
        extra: &[(&str, String)],
        setup: impl FnOnce(&mut hallmark::config::Config),
    ) -> DvLab {
        let http01 = Http01Server::start().await;
        let dns = dns::serve(vec![
            Entry::A("web", "127.0.0.1".parse().unwrap()),
            Entry::A("api", "127.0.0.1".parse().unwrap()),
            Entry::A("alpn", "127.0.0.1".parse().unwrap()),
            Entry::A("ov", "127.0.0.1".parse().unwrap()),
        ])
        .await;
        let tls_alpn = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut env = vec![
            ("HALLMARK_VALIDATION__DNS_RESOLVER", dns.addr.clone()),
            ("HALLMARK_VALIDATION__HTTP_PORT", http01.port.to_string()),
            (
                "HALLMARK_VALIDATION__TLS_ALPN_PORT",
                tls_alpn.local_addr().unwrap().port().to_string(),
            ),
            ("HALLMARK_VALIDATION__TIMEOUT_SECS", "3".into()),
        ];
        env.extend(extra.iter().cloned());
        let mut ca = TestCa::with_env(backend, &env).await;
        setup(&mut ca.config);
        let running = ca.start().await;
        DvLab {
            ca,
            running,
            http01,
            dns,
            tls_alpn: Some(tls_alpn),
        }
    }

    /// A new account's API key.
    pub async fn account(&self, name: &str, role: Role) -> String {
        create_account(
            self.running.authority.store().as_ref(),
            name,
            role,
            "operator:test",
        )
        .await
        .unwrap()
        .api_key
        .to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.running.https_url)
    }

    pub async fn post(&self, key: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .running
            .client()
            .post(self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, key: &str, path: &str) -> (StatusCode, Value) {
        let r = self
            .running
            .client()
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls an order until it leaves pending/ready/processing.
    pub async fn settle(&self, key: &str, id: &str) -> Value {
        for _ in 0..200 {
            let (status, order) = self.get(key, &format!("/orders/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{order}");
            if !["pending", "ready", "processing"].contains(&order["status"].as_str().unwrap()) {
                return order;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("order {id} did not settle");
    }

    /// Publishes the http-01 answer of `order`'s first authorization and
    /// asks the CA to validate it.
    pub async fn answer_http01(&self, key: &str, order: &Value) {
        let c = order["authorizations"][0]["challenges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "http-01")
            .unwrap();
        self.http01.publish(
            c["http_path"].as_str().unwrap(),
            c["http_body"].as_str().unwrap(),
        );
        let url = c["url"].as_str().unwrap();
        self.post(
            key,
            &url[url.find("/api/v1").unwrap() + 7..],
            serde_json::json!({}),
        )
        .await;
    }

    pub async fn finish(self) {
        self.running.stop().await;
        self.ca.cleanup().await;
    }
}

pub fn csr(dir: &std::path::Path, name: &str, cn: &str, san: &str) -> String {
    String::from_utf8(openssl_csr(
        dir,
        name,
        P256,
        &format!("/CN={cn}"),
        Some(san),
    ))
    .unwrap()
}

pub fn challenge<'a>(order: &'a Value, identifier: &str, kind: &str) -> &'a Value {
    order["authorizations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["identifier"]["value"] == identifier)
        .unwrap_or_else(|| panic!("no authorization for {identifier}: {order}"))["challenges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} challenge for {identifier}: {order}"))
}
