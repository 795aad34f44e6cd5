//! REST orders end to end: the real server, a real challenge HTTP server,
//! a tls-alpn-01 responder and a DNS server on loopback; SQLite and
//! PostgreSQL.

use std::time::Duration;

use hallmark::workflow::accounts::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::dv::{challenge, csr, DvLab};
use crate::support::*;

fn kinds(order: &Value, identifier: &str) -> Vec<String> {
    order["authorizations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["identifier"]["value"] == identifier)
        .unwrap()["challenges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap().to_owned())
        .collect()
}

/// Path part of an absolute URL the API returned.
fn api_path(url: &Value) -> String {
    let url = url.as_str().unwrap();
    url[url.find("/api/v1").unwrap() + "/api/v1".len()..].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dv_order_by_http01_is_issued_at_once_and_its_names_are_reused() {
    for backend in backends() {
        let lab = DvLab::new(backend, &[]).await;
        let key = lab.account("team web", Role::Requester).await;
        let dir = lab.ca.dir.path();
        let pem = csr(dir, "web", "web.internal", "DNS:web.internal,IP:127.0.0.1");

        let r = lab
            .running
            .client()
            .post(lab.url("/orders"))
            .bearer_auth(&key)
            .json(&json!({"csr": pem, "validation": "dv"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{backend:?}");
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let order: Value = r.json().await.unwrap();
        assert_eq!(order["url"], location.as_str());
        assert_eq!(order["status"], "pending");
        assert_eq!(order["identifiers"].as_array().unwrap().len(), 2);
        assert_eq!(
            kinds(&order, "web.internal"),
            ["http-01", "dns-01", "tls-alpn-01", "dns-account-01"]
        );
        assert_eq!(kinds(&order, "127.0.0.1"), ["http-01", "tls-alpn-01"]);
        let id = order["id"].as_str().unwrap().to_owned();

        // Each challenge says what to publish.
        for name in ["web.internal", "127.0.0.1"] {
            let c = challenge(&order, name, "http-01");
            let token = c["token"].as_str().unwrap();
            assert!(token.len() >= 43, "{token}");
            assert_eq!(
                c["http_path"],
                format!("/.well-known/acme-challenge/{token}")
            );
            assert_eq!(c["http_body"], c["key_authorization"]);
            assert!(c["key_authorization"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{token}.")));
            lab.http01.publish(
                c["http_path"].as_str().unwrap(),
                c["http_body"].as_str().unwrap(),
            );
        }
        let dns = challenge(&order, "web.internal", "dns-01");
        assert_eq!(dns["dns_name"], "_acme-challenge.web.internal");
        assert_eq!(dns["dns_txt"].as_str().unwrap().len(), 43);

        for name in ["web.internal", "127.0.0.1"] {
            let c = challenge(&order, name, "http-01");
            let (status, body) = lab.post(&key, &api_path(&c["url"]), json!({})).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        }
        let order = lab.settle(&key, &id).await;
        assert_eq!(order["status"], "valid", "{backend:?}: {order}");
        for a in order["authorizations"].as_array().unwrap() {
            assert_eq!(a["status"], "valid");
        }
        assert_eq!(
            challenge(&order, "web.internal", "http-01")["status"],
            "valid"
        );
        assert_eq!(
            challenge(&order, "web.internal", "dns-01")["status"],
            "pending"
        );

        // The certificate: metadata, then the chain, which openssl accepts.
        let cert_path = api_path(&order["certificate"]);
        let (status, meta) = lab.get(&key, &cert_path).await;
        assert_eq!(status, StatusCode::OK, "{meta}");
        assert_eq!(meta["status"], "valid");
        assert_eq!(meta["order"], id.as_str());
        assert_eq!(meta["identifiers"], json!(["web.internal", "127.0.0.1"]));
        let r = lab
            .running
            .client()
            .get(lab.url(&cert_path))
            .bearer_auth(&key)
            .header("accept", "application/pem-certificate-chain")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()["content-type"],
            "application/pem-certificate-chain"
        );
        let chain = r.text().await.unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
        let leaf_end = chain.find("-----END CERTIFICATE-----\n").unwrap() + 26;
        assert_openssl_verifies(
            dir,
            &lab.running.root_pem,
            &chain[leaf_end..],
            &chain[..leaf_end],
        );

        // The same names again: no challenge, issued in the response.
        let pem2 = csr(dir, "web2", "web.internal", "DNS:web.internal,IP:127.0.0.1");
        let (status, again) = lab
            .post(&key, "/orders", json!({"csr": pem2, "validation": "dv"}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{again}");
        assert_eq!(again["status"], "valid", "{again}");
        assert!(again["certificate"].is_string());
        for a in again["authorizations"].as_array().unwrap() {
            assert_eq!(a["status"], "valid");
            assert!(a["challenges"].as_array().unwrap().is_empty());
        }

        // Another account sees neither the order nor the certificate.
        let other = lab.account("team other", Role::Requester).await;
        let (status, p) = lab.get(&other, &format!("/orders/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{p}");
        let (status, _) = lab.get(&other, &cert_path).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        // ...and its own order for the same names needs challenges.
        let pem3 = csr(dir, "web3", "web.internal", "DNS:web.internal");
        let (_, theirs) = lab
            .post(&other, "/orders", json!({"csr": pem3, "validation": "dv"}))
            .await;
        assert_eq!(theirs["status"], "pending");

        // The list pages, newest first.
        let (status, page) = lab.get(&key, "/orders?limit=1").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["orders"].as_array().unwrap().len(), 1);
        assert_eq!(page["orders"][0]["id"], again["id"]);
        let next = page["next"].as_str().unwrap();
        let (_, page2) = lab
            .get(&key, &format!("/orders?limit=1&before={next}"))
            .await;
        assert_eq!(page2["orders"][0]["id"], id.as_str());
        let (_, valid) = lab.get(&key, "/orders?status=valid").await;
        assert_eq!(valid["orders"].as_array().unwrap().len(), 2);
        assert!(valid["next"].is_null());
        // A list query it cannot follow is refused with the reason.
        for (query, says) in [
            (
                "status=issued",
                "unknown order status \"issued\"; expected one of pending,",
            ),
            ("limit=0", "\"limit\" must be between 1 and 100"),
            ("before=yesterday", "\"before\" must be the \"next\" value"),
            ("q=web", "orders have no search"),
            ("sort=asc", "unknown field"),
        ] {
            let (status, problem) = lab.get(&key, &format!("/orders?{query}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {problem}");
            assert!(
                problem["detail"].as_str().unwrap().contains(says),
                "{query}: {problem}"
            );
        }

        // Every step is in the audit log, and the chain verifies.
        let audit = lab.audit_log().await;
        let actions: Vec<&str> = audit
            .iter()
            .filter(|r| r.subject == id || r.details.contains(&id))
            .map(|r| r.action.as_str())
            .collect();
        for expected in [
            "order.create",
            "challenge.attempt",
            "challenge.valid",
            "order.ready",
            "certificate.issue",
            "order.valid",
        ] {
            assert!(actions.contains(&expected), "{expected} in {actions:?}");
        }
        // A proven DV order is issued in one commit, without a claim.
        assert!(!actions.contains(&"order.processing"), "{actions:?}");
        hallmark::workflow::audit::verify(lab.running.authority.store().as_ref())
            .await
            .expect("the audit chain verifies");
        lab.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_proves_a_wildcard_and_tls_alpn01_proves_a_name() {
    for backend in backends() {
        let mut lab = DvLab::new(backend, &[]).await;
        let key = lab.account("team apps", Role::Requester).await;
        let dir = lab.ca.dir.path();
        let pem = csr(
            dir,
            "apps",
            "alpn.internal",
            "DNS:alpn.internal,DNS:*.apps.internal",
        );
        let (status, order) = lab
            .post(
                &key,
                "/orders",
                json!({"csr": pem, "validation": "dv", "validity_days": 30}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{order}");
        assert_eq!(
            kinds(&order, "*.apps.internal"),
            ["dns-01", "dns-account-01"]
        );
        let wildcard = order["authorizations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["identifier"]["value"] == "*.apps.internal")
            .unwrap();
        assert_eq!(wildcard["wildcard"], true);

        let d = challenge(&order, "*.apps.internal", "dns-01");
        assert_eq!(d["dns_name"], "_acme-challenge.apps.internal");
        lab.dns
            .add_txt(
                d["dns_name"].as_str().unwrap(),
                d["dns_txt"].as_str().unwrap(),
            )
            .await;
        let t = challenge(&order, "alpn.internal", "tls-alpn-01");
        assert_eq!(t["tls_alpn_protocol"], "acme-tls/1");
        crate::validation::serve_tls_alpn(
            lab.tls_alpn.take().unwrap(),
            &["alpn.internal"],
            Some(t["key_authorization"].as_str().unwrap()),
            true,
            false,
        );
        for c in [d, t] {
            let (status, body) = lab.post(&key, &api_path(&c["url"]), json!({})).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        }
        let id = order["id"].as_str().unwrap();
        let done = lab.settle(&key, id).await;
        assert_eq!(done["status"], "valid", "{backend:?}: {done}");
        let (_, meta) = lab.get(&key, &api_path(&done["certificate"])).await;
        assert_eq!(
            meta["identifiers"],
            json!(["alpn.internal", "*.apps.internal"])
        );
        let days = (time::OffsetDateTime::parse(
            meta["not_after"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
            - time::OffsetDateTime::now_utc())
        .whole_days();
        assert!((29..=30).contains(&days), "{days}");
        lab.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_challenge_makes_the_order_invalid_with_the_validators_error() {
    for backend in backends() {
        let lab = DvLab::new(backend, &[]).await;
        let key = lab.account("team fail", Role::Requester).await;
        let dir = lab.ca.dir.path();
        let pem = csr(dir, "api", "api.internal", "DNS:api.internal");
        let (_, order) = lab
            .post(&key, "/orders", json!({"csr": pem, "validation": "dv"}))
            .await;
        let id = order["id"].as_str().unwrap();
        // Nothing published: the challenge server answers 404.
        let c = challenge(&order, "api.internal", "http-01");
        let (status, _) = lab.post(&key, &api_path(&c["url"]), json!({})).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let done = lab.settle(&key, id).await;
        assert_eq!(done["status"], "invalid", "{backend:?}: {done}");
        assert_eq!(
            done["error"]["type"],
            "urn:ietf:params:acme:error:unauthorized"
        );
        let detail = done["error"]["detail"].as_str().unwrap();
        assert!(
            detail.contains("api.internal") && detail.contains("404"),
            "{detail}"
        );
        assert_eq!(done["authorizations"][0]["status"], "invalid");
        let failed = challenge(&done, "api.internal", "http-01");
        assert_eq!(failed["status"], "invalid");
        assert!(failed["error"]["detail"].as_str().unwrap().contains("404"));

        // An invalid order takes no more answers; nothing was issued.
        let other = challenge(&done, "api.internal", "dns-01");
        let (status, p) = lab.post(&key, &api_path(&other["url"]), json!({})).await;
        assert_eq!(status, StatusCode::CONFLICT, "{p}");
        assert_eq!(p["type"], "urn:hallmark:error:conflict");
        assert!(done["certificate"].is_null());
        assert_eq!(
            lab.running
                .authority
                .store()
                .count_certificates()
                .await
                .unwrap(),
            2, // the HTTPS listener's own and the OCSP responder's
        );

        // A validation whose instance died mid-way is taken over by the
        // worker: simulate one stuck in `processing` for an hour.
        let pem = csr(dir, "api2", "api.internal", "DNS:api.internal");
        let (_, order) = lab
            .post(&key, "/orders", json!({"csr": pem, "validation": "dv"}))
            .await;
        let c = challenge(&order, "api.internal", "http-01");
        lab.http01.publish(
            c["http_path"].as_str().unwrap(),
            c["http_body"].as_str().unwrap(),
        );
        let an_hour_ago = time::OffsetDateTime::now_utc().unix_timestamp() - 3600;
        lab.ca
            .db
            .execute(&format!(
                "UPDATE challenges SET status = 'processing', attempted_at = {an_hour_ago} WHERE id = '{}'",
                c["id"].as_str().unwrap()
            ))
            .await;
        lab.running.orders.work_once().await.unwrap();
        let done = lab.settle(&key, order["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "valid", "{backend:?}: {done}");
        lab.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ov_order_waits_for_a_reviewer_who_issues_it_with_the_vetted_organisation() {
    for backend in backends() {
        let lab = DvLab::new(backend, &[]).await;
        let key = lab.account("team ov", Role::Requester).await;
        let reviewer = lab.account("vetting", Role::Reviewer).await;
        let dir = lab.ca.dir.path();
        let pem = csr(dir, "ov", "ov.internal", "DNS:ov.internal");

        let (status, p) = lab
            .post(&key, "/orders", json!({"csr": pem, "validation": "ov"}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            p["detail"].as_str().unwrap().contains("organization"),
            "{p}"
        );
        let (status, p) = lab
            .post(
                &key,
                "/orders",
                json!({"csr": pem, "validation": "dv", "organization": {"name": "X"}}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");

        let org = json!({"name": "Example Corp", "locality": "Berlin", "country": "DE"});
        let (status, order) = lab
            .post(
                &key,
                "/orders",
                json!({"csr": pem, "validation": "ov", "organization": org}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{order}");
        assert_eq!(order["organization"], org);
        let id = order["id"].as_str().unwrap().to_owned();
        let c = challenge(&order, "ov.internal", "http-01");
        lab.http01.publish(
            c["http_path"].as_str().unwrap(),
            c["http_body"].as_str().unwrap(),
        );
        lab.post(&key, &api_path(&c["url"]), json!({})).await;
        let waiting = lab.settle(&key, &id).await;
        assert_eq!(waiting["status"], "awaiting_approval", "{waiting}");
        assert!(waiting["certificate"].is_null());

        // The requester cannot approve; the reviewer sees the order.
        let (status, p) = lab
            .post(&key, &format!("/orders/{id}/approve"), json!({}))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{p}");
        assert_eq!(p["type"], "urn:ietf:params:acme:error:unauthorized");
        let (status, _) = lab.get(&reviewer, &format!("/orders/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        let (_, queue) = lab
            .get(&reviewer, "/orders?status=awaiting_approval&all=true")
            .await;
        assert_eq!(queue["orders"][0]["id"], id.as_str());

        // The reviewer approves with the vetted details.
        let vetted = json!({"name": "Example Corp GmbH", "locality": "Berlin", "state": "Berlin", "country": "de"});
        let (status, approved) = lab
            .post(
                &reviewer,
                &format!("/orders/{id}/approve"),
                json!({"organization": vetted, "reason": "registry entry HRB 1234 checked"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{approved}");
        assert_eq!(approved["status"], "valid", "{approved}");
        assert_eq!(
            approved["approval_reason"],
            "registry entry HRB 1234 checked"
        );
        let audit = lab.audit_log().await;
        let approval = audit.iter().find(|r| r.action == "order.approve").unwrap();
        assert!(approval.details.contains("registry entry HRB 1234 checked"));
        let r = lab
            .running
            .client()
            .get(lab.url(&api_path(&approved["certificate"])))
            .bearer_auth(&key)
            .header("accept", "application/pem-certificate-chain")
            .send()
            .await
            .unwrap();
        std::fs::write(dir.join("ov.pem"), r.text().await.unwrap()).unwrap();
        let subject = openssl(dir, &["x509", "-in", "ov.pem", "-noout", "-subject"]);
        for part in [
            "C = DE",
            "ST = Berlin",
            "L = Berlin",
            "O = Example Corp GmbH",
            "CN = ov.internal",
        ] {
            assert!(subject.contains(part), "{part} in {subject}");
        }
        // Approving twice is a conflict that changes nothing.
        let (status, _) = lab
            .post(&reviewer, &format!("/orders/{id}/approve"), json!({}))
            .await;
        assert_eq!(status, StatusCode::CONFLICT);

        // A second OV order for the same name skips DV but still waits;
        // the reviewer rejects it with a reason the requester sees.
        let pem2 = csr(dir, "ov2", "ov.internal", "DNS:ov.internal");
        let (_, second) = lab
            .post(
                &key,
                "/orders",
                json!({"csr": pem2, "validation": "ov", "organization": {"name": "Example Corp"}}),
            )
            .await;
        assert_eq!(second["status"], "awaiting_approval", "{second}");
        let id2 = second["id"].as_str().unwrap();
        let (status, _) = lab
            .post(
                &reviewer,
                &format!("/orders/{id2}/reject"),
                json!({"reason": " "}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, rejected) = lab
            .post(
                &reviewer,
                &format!("/orders/{id2}/reject"),
                json!({"reason": "the organisation could not be verified"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{rejected}");
        assert_eq!(rejected["status"], "rejected");
        let (_, seen) = lab.get(&key, &format!("/orders/{id2}")).await;
        assert_eq!(
            seen["rejection_reason"],
            "the organisation could not be verified"
        );
        let (status, _) = lab
            .post(&reviewer, &format!("/orders/{id2}/approve"), json!({}))
            .await;
        assert_eq!(status, StatusCode::CONFLICT);
        lab.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_order_requests_get_one_clear_problem_each() {
    for backend in backends() {
        let lab = DvLab::new(backend, &[("HALLMARK_ORDERS__RATE_PER_MINUTE", "5".into())]).await;
        let key = lab.account("team bad", Role::Requester).await;
        let dir = lab.ca.dir.path();
        let client = lab.running.client();
        let problem = |status: StatusCode, p: &Value, kind: &str| {
            assert_eq!(p["type"], kind, "{status} {p}");
            assert!(!p["detail"].as_str().unwrap_or("").is_empty(), "{p}");
        };

        // Not JSON, wrong fields, wrong values.
        let r = client
            .post(lab.url("/orders"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        problem(
            r.status(),
            &r.json().await.unwrap(),
            "urn:ietf:params:acme:error:malformed",
        );
        let (status, p) = lab
            .post(&key, "/orders", json!({"csr": "x", "validation": "ev"}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        problem(status, &p, "urn:ietf:params:acme:error:malformed");
        let (status, p) = lab
            .post(
                &key,
                "/orders",
                json!({"csr": "garbage", "validation": "dv"}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        problem(status, &p, "urn:ietf:params:acme:error:badCSR");
        let outside = csr(dir, "out", "www.example.com", "DNS:www.example.com");
        let (status, p) = lab
            .post(&key, "/orders", json!({"csr": outside, "validation": "dv"}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        problem(status, &p, "urn:ietf:params:acme:error:rejectedIdentifier");
        // A public address is outside the default policy.allowed_ip_ranges.
        let public_ip = csr(dir, "pubip", "web.internal", "DNS:web.internal,IP:8.8.8.8");
        let (status, p) = lab
            .post(
                &key,
                "/orders",
                json!({"csr": public_ip, "validation": "dv"}),
            )
            .await;
        problem(status, &p, "urn:ietf:params:acme:error:rejectedIdentifier");
        assert_eq!(
            p["detail"],
            "IP address 8.8.8.8 is outside the ranges this CA may certify (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, 127.0.0.0/8, ::1/128, fc00::/7)"
        );
        let weak = String::from_utf8(openssl_csr(
            dir,
            "weak",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
            "/CN=web.internal",
            Some("DNS:web.internal"),
        ))
        .unwrap();
        let (status, p) = lab
            .post(&key, "/orders", json!({"csr": weak, "validation": "dv"}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        problem(status, &p, "urn:ietf:params:acme:error:badPublicKey");
        let good = csr(dir, "good", "web.internal", "DNS:web.internal");
        let (status, p) = lab
            .post(
                &key,
                "/orders",
                json!({"csr": good, "validation": "dv", "validity_days": 9999}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        problem(status, &p, "urn:ietf:params:acme:error:malformed");

        // Over 64 KiB: 413 before anything is parsed.
        let r = client
            .post(lab.url("/orders"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(format!(
                "{{\"csr\": \"{}\", \"validation\": \"dv\"}}",
                "A".repeat(70 * 1024)
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        problem(
            r.status(),
            &r.json().await.unwrap(),
            "urn:hallmark:error:bodyTooLarge",
        );

        // Unknown things are 404s.
        let (status, p) = lab.get(&key, "/orders/ord_nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        problem(status, &p, "urn:hallmark:error:notFound");
        let (status, _) = lab
            .get(&key, &format!("/certificates/{}", "0".repeat(32)))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = lab.get(&key, "/orders?status=bogus").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        // The rate limit: five orders reached the engine this minute (the
        // ones the body parser refused did not), so the sixth is a 429.
        let r = client
            .post(lab.url("/orders"))
            .bearer_auth(&key)
            .json(&json!({"csr": good, "validation": "dv"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        problem(
            r.status(),
            &r.json().await.unwrap(),
            "urn:ietf:params:acme:error:rateLimited",
        );
        // Another account has its own budget.
        let other = lab.account("team other", Role::Requester).await;
        let (status, p) = lab
            .post(&other, "/orders", json!({"csr": good, "validation": "dv"}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{p}");
        lab.finish().await;
    }
}

/// A port for the CLI to answer http-01 on (validation fetches from it):
/// outside the kernel's ephemeral range (32768+), so no other test's bind
/// to port 0 can take it between here and the command's bind.
fn cli_http01_port() -> u16 {
    loop {
        let candidate = 20_000 + rand::random::<u16>() % 10_000;
        if std::net::TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            break candidate;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_command_gets_a_certificate_by_http01_and_by_dns01() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    for backend in backends() {
        let port = cli_http01_port();
        let lab = DvLab::new(
            backend,
            &[("HALLMARK_VALIDATION__HTTP_PORT", port.to_string())],
        )
        .await;
        let key = lab.account("team cli", Role::Requester).await;
        let dir = lab.ca.dir.path();
        std::fs::write(dir.join("root.pem"), &lab.running.root_pem).unwrap();
        let base_args = |out: &str| {
            vec![
                "request".to_string(),
                "--server".into(),
                lab.running.https_url.clone(),
                "--ca-file".into(),
                dir.join("root.pem").display().to_string(),
                "--out".into(),
                dir.join(out).display().to_string(),
            ]
        };

        let mut args = base_args("http");
        args.extend(
            [
                "--domain",
                "web.internal",
                "--domain",
                "api.internal",
                "--http-listen",
            ]
            .map(String::from),
        );
        args.push(format!("127.0.0.1:{port}"));
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hallmark"))
            .args(&args)
            .env("HALLMARK_API_KEY", &key)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{backend:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("http/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let verified = openssl(
            dir,
            &[
                "verify",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "http/chain.pem",
                "http/cert.pem",
            ],
        );
        assert!(verified.contains("OK"), "{verified}");
        let text = openssl(dir, &["x509", "-in", "http/cert.pem", "-noout", "-text"]);
        assert!(
            text.contains("DNS:web.internal, DNS:api.internal"),
            "{text}"
        );
        // The key on disk is the certificate's.
        let cert_key = openssl(dir, &["x509", "-in", "http/cert.pem", "-noout", "-pubkey"]);
        let file_key = openssl(dir, &["pkey", "-in", "http/key.pem", "-pubout"]);
        assert_eq!(cert_key, file_key);

        // dns-01 for a wildcard: the command prints the records and waits.
        let mut args = base_args("dns");
        args.extend(["--dns", "--domain", "*.apps.internal"].map(String::from));
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hallmark"))
            .args(&args)
            .env("HALLMARK_API_KEY", &key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let record = loop {
            let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
                .await
                .expect("the command prints the record")
                .unwrap()
                .expect("a line");
            if line.trim_start().starts_with("_acme-challenge") {
                break line;
            }
        };
        let parts: Vec<&str> = record.split_whitespace().collect();
        assert_eq!(parts[0], "_acme-challenge.apps.internal.");
        lab.dns
            .add_txt(parts[0].trim_end_matches('.'), parts[4].trim_matches('"'))
            .await;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"\n").await.unwrap();
        drop(stdin);
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{backend:?}");
        let text = openssl(dir, &["x509", "-in", "dns/cert.pem", "-noout", "-text"]);
        assert!(text.contains("DNS:*.apps.internal"), "{text}");

        // A wildcard cannot be proven by http-01: a clear error, exit 1.
        let mut args = base_args("none");
        args.extend(["--domain", "*.other.internal"].map(String::from));
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hallmark"))
            .args(&args)
            .env("HALLMARK_API_KEY", &key)
            .output()
            .await
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("use --dns"), "{err}");
        lab.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_renews_when_the_window_opens_keeps_the_key_and_runs_the_deploy_hook() {
    let backend = backends().remove(0);
    let port = cli_http01_port();
    let lab = DvLab::new(
        backend,
        &[("HALLMARK_VALIDATION__HTTP_PORT", port.to_string())],
    )
    .await;
    let key = lab.account("team renew", Role::Requester).await;
    let dir = lab.ca.dir.path().to_owned();
    std::fs::write(dir.join("root.pem"), &lab.running.root_pem).unwrap();
    let out_dir = dir.join("web");
    let hook = format!(
        "echo \"$HALLMARK_SERIAL $HALLMARK_DOMAINS $HALLMARK_CERT_DIR\" >> {}",
        dir.join("hook.log").display()
    );
    let run = |args: Vec<String>| {
        let key = key.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hallmark"))
                .args(&args)
                .env("HALLMARK_API_KEY", &key)
                .stdin(std::process::Stdio::null())
                .output()
                .await
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
    };
    let (ok, said) = run(vec![
        "request".into(),
        "--server".into(),
        lab.running.https_url.clone(),
        "--ca-file".into(),
        dir.join("root.pem").display().to_string(),
        "--out".into(),
        out_dir.display().to_string(),
        "--domain".into(),
        "web.internal".into(),
        "--http-listen".into(),
        format!("127.0.0.1:{port}"),
        "--deploy-hook".into(),
        hook.clone(),
    ])
    .await;
    assert!(ok, "{said}");
    let serial_of = |pem: &str| {
        let der = hallmark::pki::pem_decode_all(pem, "CERTIFICATE").remove(0);
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        hex::encode(c.raw_serial())
    };
    let read = |f: &str| std::fs::read_to_string(out_dir.join(f)).unwrap();
    let first = read("cert.pem");
    let first_key = read("key.pem");
    let log = std::fs::read_to_string(dir.join("hook.log")).unwrap();
    assert_eq!(
        log.trim(),
        format!("{} web.internal {}", serial_of(&first), out_dir.display())
    );
    let record: serde_json::Value = serde_json::from_str(&read("renewal.json")).unwrap();
    assert_eq!(record["domains"], json!(["web.internal"]));
    assert!(!read("renewal.json").contains(&key), "no API key on disk");

    // Not due: nothing changes, the hook does not run.
    let renew = |extra: &[&str]| {
        let mut args = vec![
            "renew".to_string(),
            "--out".into(),
            out_dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        run(args)
    };
    let (ok, said) = renew(&[]).await;
    assert!(ok, "{said}");
    assert!(
        said.contains("not due; the CA suggests renewing between"),
        "{said}"
    );
    assert_eq!(read("cert.pem"), first);
    assert_eq!(std::fs::read_to_string(dir.join("hook.log")).unwrap(), log);

    // 70 of its 90 days gone: inside the window, so it renews, with the
    // same key, and the hook runs again with the new serial.
    lab.ca
        .db
        .execute(&format!(
            "UPDATE certificates SET not_before = not_before - 6048000, \
             not_after = not_after - 6048000 WHERE serial = '{}'",
            serial_of(&first)
        ))
        .await;
    let (ok, said) = renew(&[]).await;
    assert!(ok, "{said}");
    let second = read("cert.pem");
    assert_ne!(serial_of(&second), serial_of(&first), "{said}");
    assert_eq!(read("key.pem"), first_key, "the key is kept");
    let log = std::fs::read_to_string(dir.join("hook.log")).unwrap();
    assert!(log.contains(&serial_of(&second)), "{log}");
    let verified = openssl(
        &dir,
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "web/chain.pem",
            "web/cert.pem",
        ],
    );
    assert!(verified.contains("OK"));

    // --force --rotate-key: a new key; a failing hook is an error that
    // says the files were written.
    let (ok, said) = renew(&["--force", "--rotate-key", "--deploy-hook", "exit 3"]).await;
    assert!(!ok, "{said}");
    assert!(
        said.contains("the certificate was written to") && said.contains("\"exit 3\" failed"),
        "{said}"
    );
    assert_ne!(read("key.pem"), first_key);
    let cert_key = openssl(&dir, &["x509", "-in", "web/cert.pem", "-noout", "-pubkey"]);
    let file_key = openssl(&dir, &["pkey", "-in", "web/key.pem", "-pubout"]);
    assert_eq!(cert_key, file_key);

    // A directory `request` never wrote.
    let (ok, said) = run(vec![
        "renew".into(),
        "--out".into(),
        dir.join("none").display().to_string(),
    ])
    .await;
    assert!(!ok && said.contains("renewal.json"), "{said}");
    lab.finish().await;
}
