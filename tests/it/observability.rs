//! What an operator sees: `/metrics` series worth alerting on, bounded by
//! route template; a request id on every HTTPS answer and on every log line
//! the request causes; one JSON log line per issuance and revocation, with
//! serial, names and account, and no key material.

use std::process::{Command, Stdio};

use reqwest::StatusCode;
use serde_json::json;

use crate::cli::{hallmark, text};
use crate::support::dv::{csr, DvLab};
use crate::support::*;
use hallmark::workflow::accounts::Role;

/// The value of the series `name{labels}` in a metrics text, if present.
fn series(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_issuances_validations_revocations_and_crls() {
    let backend = backends().remove(0);
    let lab = DvLab::new(backend, &[("HALLMARK_CRL__DEBOUNCE_SECS", "0".into())]).await;
    let key = lab.account("team", Role::Requester).await;
    let pem = csr(lab.ca.dir.path(), "m", "web.internal", "DNS:web.internal");
    let (status, order) = lab
        .post(&key, "/orders", json!({"csr": pem, "validation": "dv"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    lab.answer_http01(&key, &order).await;
    let id = order["id"].as_str().unwrap();
    let done = lab.settle(&key, id).await;
    let serial = done["certificate_serial"].as_str().unwrap().to_owned();
    let (status, _) = lab
        .post(
            &key,
            &format!("/certificates/{serial}/revoke"),
            json!({"reason": "superseded"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // An OCSP request that is not one: counted as malformedRequest.
    let client = lab.running.client();
    let r = client
        .post(format!("{}/ocsp", lab.running.http_url))
        .header("content-type", "application/ocsp-request")
        .body(vec![0x30, 0x00])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Give the CRL after the revocation its moment.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let metrics = get_text(&client, format!("{}/metrics", lab.running.http_url)).await;
    let at_least_one = |s: &str| {
        assert!(
            series(&metrics, s).is_some_and(|v| v >= 1.0),
            "{s} in:\n{metrics}"
        )
    };
    at_least_one(
        r#"hallmark_http_requests_total{route="/api/v1/orders",method="POST",status="201"}"#,
    );
    at_least_one(
        r#"hallmark_http_requests_total{route="/api/v1/orders/{id}",method="GET",status="200"}"#,
    );
    at_least_one(r#"hallmark_http_request_duration_seconds_count{route="/api/v1/orders"}"#);
    at_least_one(
        r#"hallmark_http_request_duration_seconds_bucket{route="/api/v1/orders",le="+Inf"}"#,
    );
    at_least_one(r#"hallmark_certificates_issued_by_profile_total{profile="server",key="ecdsa"}"#);
    at_least_one(r#"hallmark_validations_total{type="http-01",result="valid"}"#);
    at_least_one(r#"hallmark_validation_duration_seconds_count{type="http-01"}"#);
    at_least_one(r#"hallmark_certificates_revoked_total{reason="superseded"}"#);
    at_least_one(r#"hallmark_ocsp_responses_total{status="malformedRequest"}"#);
    at_least_one(r#"hallmark_crl_generation_duration_seconds_count{scope="complete"}"#);
    let issuer = lab.running.authority.issuer().certificate().id().to_owned();
    assert!(
        series(
            &metrics,
            &format!(r#"hallmark_crl_age_seconds{{crl="{issuer}.crl"}}"#)
        )
        .is_some_and(|age| (0.0..60.0).contains(&age)),
        "{metrics}"
    );
    at_least_one(&format!(r#"hallmark_crl_entries{{crl="{issuer}.crl"}}"#));
    // Order transitions, as audited.
    at_least_one(r#"hallmark_audit_events_total{action="order.create"}"#);
    at_least_one(r#"hallmark_audit_events_total{action="order.valid"}"#);
    at_least_one(r#"hallmark_database_connections{pool="write",state="max"}"#);
    // The group commit carried the order's writes.
    at_least_one(r#"hallmark_store_commits_total{queue="workflow"}"#);
    at_least_one(r#"hallmark_store_batched_writes_total{queue="workflow"}"#);
    at_least_one(r#"hallmark_store_commit_duration_seconds_count{queue="workflow"}"#);
    assert!(metrics.contains("# TYPE hallmark_database_errors_total counter"));
    // The revoked certificate does not count as expiring.
    assert!(series(
        &metrics,
        r#"hallmark_certificates_expiring{within_days="30"}"#
    )
    .is_some());
    // Series are by route template: no order id or serial is a label.
    assert!(
        !metrics.contains(id) && !metrics.contains(&serial),
        "{metrics}"
    );
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_answered_and_on_every_json_log_line_the_request_causes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (https, http) = (free_port(), free_port());
    let https_listen = format!("127.0.0.1:{https}");
    let http_listen = format!("127.0.0.1:{http}");
    let env = [
        ("HALLMARK_ROOT_PASSPHRASE", PASSPHRASE),
        ("HALLMARK_SERVER__HTTPS_LISTEN", https_listen.as_str()),
        ("HALLMARK_SERVER__HTTP_LISTEN", http_listen.as_str()),
        ("RUST_LOG", "info"),
    ];
    let out = hallmark(d, &["init"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let out = hallmark(d, &["account", "create", "ops", "--role", "admin"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let api_key = created["api_key"].as_str().unwrap().to_owned();

    // `hallmark sign` logs its issuance as one JSON line.
    std::fs::write(
        d.join("c.csr"),
        openssl_csr(d, "k", P256, "/CN=web.internal", Some("DNS:web.internal")),
    )
    .unwrap();
    let out = hallmark(d, &["--log-format", "json", "sign", "c.csr"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let issued: serde_json::Value = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["message"] == "certificate issued")
        .unwrap_or_else(|| panic!("no issuance line in {stderr}"));
    let serial = issued["fields"]["serial"].as_str().unwrap().to_owned();
    assert_eq!(issued["fields"]["names"], "web.internal", "{issued}");
    assert_eq!(issued["fields"]["profile"], "server", "{issued}");
    assert!(!stderr.contains("PRIVATE KEY"));

    let log = std::fs::File::create(d.join("serve.log")).unwrap();
    let (mut child, _stdout, _) =
        crate::cli::spawn_serve(d, &["--log-format", "json"], &env, Stdio::from(log));
    let root = std::fs::read(d.join("hallmark-data/ca/root.crt.pem")).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&root).unwrap())
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    let base = format!("https://localhost:{https}");
    let mut ready = false;
    for _ in 0..50 {
        if client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready);

    // A sane id is kept; a made-up one replaces an unsafe one.
    let r = client
        .post(format!("{base}/api/v1/certificates/{serial}/revoke"))
        .bearer_auth(&api_key)
        .header("x-request-id", "ticket-4711.a")
        .json(&json!({"reason": "superseded"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-request-id"], "ticket-4711.a");
    for bad in ["a b", &"x".repeat(65)] {
        let r = client
            .get(format!("{base}/healthz"))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(
            id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
    }
    let r = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"].len(), 16);

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let log = std::fs::read_to_string(d.join("serve.log")).unwrap();
    let revoked: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["message"] == "certificate revoked")
        .unwrap_or_else(|| panic!("no revocation line in {log}"));
    assert_eq!(revoked["span"]["id"], "ticket-4711.a", "{revoked}");
    assert_eq!(revoked["span"]["name"], "request", "{revoked}");
    assert_eq!(revoked["fields"]["serial"], serial.as_str(), "{revoked}");
    assert_eq!(revoked["fields"]["names"], "web.internal", "{revoked}");
    assert_eq!(revoked["fields"]["reason"], "superseded", "{revoked}");
    assert!(!log.contains("PRIVATE KEY") && !log.contains(&api_key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_alerts_and_dashboard_name_only_series_hallmark_exports() {
    let backend = backends().remove(0);
    let lab = DvLab::new(backend, &[]).await;
    let metrics = get_text(
        &lab.running.client(),
        format!("{}/metrics", lab.running.http_url),
    )
    .await;
    let exported: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/monitoring");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(docs.join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 10);
    for file in ["prometheus-alerts.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(docs.join(file)).unwrap();
        let mut named = 0;
        for (at, _) in text.match_indices("hallmark_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| exported.contains(b)))
                .unwrap_or(&name);
            assert!(
                exported.contains(&base),
                "{file} names {name}, which /metrics does not export: {exported:?}"
            );
            named += 1;
        }
        assert!(named >= 7, "{file}");
    }
    lab.finish().await;
}
