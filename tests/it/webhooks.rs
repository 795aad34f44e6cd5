//! Webhooks against a real HTTP receiver on loopback: issuance,
//! revocation, an OV order awaiting approval and its approval arrive as
//! JSON signed with HMAC-SHA256 over "<timestamp>.<body>"; a receiver that
//! fails is retried with backoff; every attempt is in the delivery log the
//! admin API reads; only admin keys read it. On both stores.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::support::browser::ov_order;
use crate::support::dv::{csr, DvLab};
use crate::support::*;
use hallmark::workflow::accounts::Role;

const SECRET: &str = "a-webhook-secret-of-some-length";

type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A receiver that answers 500 to its first request and 204 after.
async fn receiver() -> (String, Received) {
    let received: Received = Default::default();
    let app = axum::Router::new().route(
        "/hook/T0KEN",
        axum::routing::post({
            let received = received.clone();
            move |headers: HeaderMap, body: Bytes| {
                let received = received.clone();
                async move {
                    let mut r = received.lock().unwrap();
                    r.push((headers, body));
                    if r.len() == 1 {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook/T0KEN", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_signed_failures_are_retried_and_every_attempt_is_logged() {
    for backend in backends() {
        let (url, received) = receiver().await;
        let hook = hallmark::config::Webhook {
            url: url.clone(),
            secret: zeroize::Zeroizing::new(SECRET.as_bytes().to_vec()),
            events: hallmark::workflow::webhooks::EVENTS
                .iter()
                .map(|(_, e)| *e)
                .collect(),
        };
        let lab = DvLab::with_config(backend, &[], |c| c.webhooks = vec![hook]).await;
        let key = lab.account("team hooks", Role::Requester).await;
        let reviewer = lab.account("reviewers", Role::Reviewer).await;
        let admin = lab.account("admins", Role::Admin).await;

        // Issue, revoke, and an OV order approved.
        let pem = csr(lab.ca.dir.path(), "w", "web.internal", "DNS:web.internal");
        let (status, order) = lab
            .post(&key, "/orders", json!({"csr": pem, "validation": "dv"}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{order}");
        lab.answer_http01(&key, &order).await;
        let done = lab.settle(&key, order["id"].as_str().unwrap()).await;
        let serial = done["certificate_serial"].as_str().unwrap().to_owned();
        let (status, _) = lab
            .post(
                &key,
                &format!("/certificates/{serial}/revoke"),
                json!({"reason": "superseded"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let ov = ov_order(&lab, &key, "Hook Org").await;
        let (status, p) = lab
            .post(&reviewer, &format!("/orders/{ov}/approve"), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{p}");

        // The receiver sees the four events (the first twice: 500, then
        // the retry a second later).
        let wanted = [
            "certificate.issued",
            "certificate.revoked",
            "order.awaiting_approval",
            "order.approved",
        ];
        let mut events: Vec<(String, Value, HeaderMap)> = Vec::new();
        for _ in 0..150 {
            events = received
                .lock()
                .unwrap()
                .iter()
                .map(|(h, b)| {
                    (
                        h["x-hallmark-event"].to_str().unwrap().to_owned(),
                        serde_json::from_slice(b).unwrap(),
                        h.clone(),
                    )
                })
                .collect();
            if wanted.iter().all(|w| events.iter().any(|(e, _, _)| e == w)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let names: Vec<&str> = events.iter().map(|(e, _, _)| e.as_str()).collect();
        for w in wanted {
            assert!(names.contains(&w), "{w} not among {names:?}");
        }
        assert_eq!(names[0], "certificate.issued");
        assert_eq!(names[1], "certificate.issued", "retried after the 500");
        // In order, each once after the retry; the issuance's own OV
        // certificate also arrives after the approval.
        let first_seen = |w: &str| names.iter().position(|n| *n == w).unwrap();
        assert!(first_seen("certificate.revoked") < first_seen("order.awaiting_approval"));
        assert!(first_seen("order.awaiting_approval") < first_seen("order.approved"));

        for ((event, body, headers), (_, raw)) in events.iter().zip(received.lock().unwrap().iter())
        {
            assert_eq!(body["type"], event.as_str());
            assert_eq!(
                headers["x-hallmark-delivery"].to_str().unwrap(),
                body["id"].to_string()
            );
            let ts: i64 = headers["x-hallmark-timestamp"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
            let mut signed = format!("{ts}.").into_bytes();
            signed.extend_from_slice(raw);
            let expected = format!("sha256={}", hex::encode(ring::hmac::sign(&key, &signed)));
            assert_eq!(headers["x-hallmark-signature"].to_str().unwrap(), expected);
        }
        let issued = &events[0].1;
        assert_eq!(issued["subject"], serial.as_str(), "{issued}");
        assert_eq!(issued["data"]["names"], json!(["web.internal"]), "{issued}");

        // The delivery log: admin keys only; the failed first attempt and
        // its retry; the URL's secret path elided.
        let (status, _) = lab.get(&key, "/webhooks/deliveries").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, log) = lab.get(&admin, "/webhooks/deliveries?limit=1000").await;
        assert_eq!(status, StatusCode::OK, "{log}");
        let rows = log["deliveries"].as_array().unwrap();
        let first = events[0].1["id"].as_i64().unwrap();
        let of_first: Vec<&Value> = rows.iter().filter(|r| r["delivery"] == first).collect();
        assert_eq!(of_first.len(), 2, "{log}");
        let failed = of_first.iter().find(|r| r["attempt"] == 1).unwrap();
        assert_eq!(failed["delivered"], false);
        assert_eq!(failed["status_code"], 500);
        let retried = of_first.iter().find(|r| r["attempt"] == 2).unwrap();
        assert_eq!(retried["delivered"], true);
        assert!(
            !log.to_string().contains("T0KEN"),
            "the path is elided: {log}"
        );
        lab.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrenewed_certificate_near_its_end_gets_one_expiring_soon_event() {
    use hallmark::workflow::SignOptions;
    for backend in backends() {
        let (url, received) = receiver().await;
        let hook = hallmark::config::Webhook {
            url,
            secret: zeroize::Zeroizing::new(SECRET.as_bytes().to_vec()),
            events: vec!["certificate.expiring_soon"],
        };
        let lab = DvLab::with_config(backend, &[], |c| c.webhooks = vec![hook]).await;
        let authority = &lab.running.authority;
        let dir = lab.ca.dir.path();
        let sign = |name: &str| {
            let csr = openssl_csr(
                dir,
                name,
                P256,
                &format!("/CN={name}"),
                Some(&format!("DNS:{name}")),
            );
            async move {
                authority
                    .sign_csr(&csr, SignOptions::default(), "operator:test")
                    .await
                    .unwrap()
                    .certificate
                    .serial
                    .to_hex()
            }
        };
        let lone = sign("web.internal").await;
        let renewed = sign("api.internal").await;
        let _successor = sign("api.internal").await;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        lab.ca
            .db
            .execute(&format!(
                "UPDATE certificates SET not_after = {} WHERE serial IN ('{lone}', '{renewed}')",
                now + 3 * 86_400
            ))
            .await;

        // Only the one nobody renewed, and only once.
        let store = authority.store();
        let noticed = hallmark::workflow::webhooks::notice_expiring(store.as_ref(), now)
            .await
            .unwrap();
        assert_eq!(noticed, std::slice::from_ref(&lone));
        let again = hallmark::workflow::webhooks::notice_expiring(store.as_ref(), now + 60)
            .await
            .unwrap();
        assert!(again.is_empty(), "{again:?}");

        // It reaches the hook (after the receiver's first 500, retried).
        let mut delivered = None;
        for _ in 0..100 {
            let got = received.lock().unwrap().clone();
            if got.len() >= 2 {
                delivered = Some(got);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let got = delivered.expect("the event arrived");
        let body: Value = serde_json::from_slice(&got[1].1).unwrap();
        assert_eq!(body["type"], "certificate.expiring_soon", "{body}");
        assert_eq!(body["subject"], lone.as_str(), "{body}");
        assert_eq!(body["data"]["names"], json!(["web.internal"]), "{body}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(received.lock().unwrap().len(), 2, "one event, no other");
        lab.finish().await;
    }
}
