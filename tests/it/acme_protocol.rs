//! ACME protocol errors, exactly per RFC 8555, from a small client written
//! here (ES256 with ring): bad nonce, wrong `url`, unknown `kid`, an
//! algorithm that does not fit the key, finalize before ready and with a
//! CSR for other names, another account's order; and that nonces are
//! shared by two instances on one database.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;

use crate::support::acme::{Answer, Client};
use crate::support::dv::DvLab;
use crate::support::*;

/// A client for this server's ACME directory.
pub fn client(running: &Running) -> Client {
    Client::with(running.client(), format!("{}/acme", running.https_url))
}

fn problem(a: &Answer) -> &str {
    a.body["type"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_have_the_exact_acme_types() {
    for backend in backends() {
        let mut ca = TestCa::new(backend).await;
        let run = ca.start().await;
        let mut alice = client(&run);
        let new_account = format!("{}/new-account", alice.base);

        // Every answer carries a nonce and the directory link.
        let dir = run
            .client()
            .get(format!("{}/directory", alice.base))
            .send()
            .await
            .unwrap();
        assert!(dir.headers().contains_key("replay-nonce"));
        assert!(dir.headers()["link"]
            .to_str()
            .unwrap()
            .contains("rel=\"index\""));

        // A nonce is good once.
        let nonce = alice.nonce().await;
        let body = alice.sign(
            &new_account,
            &nonce,
            Some(&json!({"onlyReturnExisting": true})),
            json!({}),
        );
        let first = alice.post_body(&new_account, &body).await;
        assert_eq!(
            problem(&first),
            "urn:ietf:params:acme:error:accountDoesNotExist"
        );
        // The ACME headers, once each (one layer adds them to every POST).
        let index_links = first
            .headers
            .get_all("link")
            .iter()
            .filter(|v| v.to_str().unwrap().contains("rel=\"index\""))
            .count();
        assert_eq!(index_links, 1);
        assert_eq!(first.headers.get_all("replay-nonce").iter().count(), 1);
        let replay = alice.post_body(&new_account, &body).await;
        assert_eq!(replay.status, 400);
        assert_eq!(problem(&replay), "urn:ietf:params:acme:error:badNonce");
        assert!(
            replay.headers.contains_key("replay-nonce"),
            "a badNonce answer carries a fresh nonce"
        );
        let made_up = alice.sign(&new_account, "not-a-nonce", Some(&json!({})), json!({}));
        assert_eq!(
            problem(&alice.post_body(&new_account, &made_up).await),
            "urn:ietf:params:acme:error:badNonce"
        );

        // A forged signature costs no nonce: the signature is checked
        // before the nonce is used up, so the same nonce still works.
        let nonce = alice.nonce().await;
        let lookup = json!({"onlyReturnExisting": true});
        let mut forged = alice.sign(&new_account, &nonce, Some(&lookup), json!({}));
        forged["signature"] = json!("AAAA".repeat(21) + "AAAA");
        let a = alice.post_body(&new_account, &forged).await;
        assert_eq!(a.status, 400, "{}", a.body);
        assert_ne!(problem(&a), "urn:ietf:params:acme:error:badNonce");
        let body = alice.sign(&new_account, &nonce, Some(&lookup), json!({}));
        assert_eq!(
            problem(&alice.post_body(&new_account, &body).await),
            "urn:ietf:params:acme:error:accountDoesNotExist"
        );

        // The url header must be the URL requested.
        let nonce = alice.nonce().await;
        let wrong = alice.sign(
            &format!("{}/new-order", alice.base),
            &nonce,
            Some(&json!({})),
            json!({}),
        );
        let a = alice.post_body(&new_account, &wrong).await;
        assert_eq!(a.status, 401);
        assert_eq!(problem(&a), "urn:ietf:params:acme:error:unauthorized");

        // An algorithm that does not fit the key.
        let nonce = alice.nonce().await;
        let body = alice.sign(
            &new_account,
            &nonce,
            Some(&json!({})),
            json!({"alg": "RS256"}),
        );
        assert_eq!(
            problem(&alice.post_body(&new_account, &body).await),
            "urn:ietf:params:acme:error:badSignatureAlgorithm"
        );
        let nonce = alice.nonce().await;
        let body = alice.sign(
            &new_account,
            &nonce,
            Some(&json!({})),
            json!({"alg": "HS256"}),
        );
        assert_eq!(
            problem(&alice.post_body(&new_account, &body).await),
            "urn:ietf:params:acme:error:badSignatureAlgorithm"
        );

        // Garbage is malformed.
        let a = alice
            .post_body(&new_account, &json!({"hello": "world"}))
            .await;
        assert_eq!(problem(&a), "urn:ietf:params:acme:error:malformed");

        // Registration; the same key again returns the same account.
        alice.register().await;
        let kid = alice.kid.clone().unwrap();
        let mut again = client(&run);
        std::mem::swap(&mut again.key, &mut alice.key);
        let a = again.post(&new_account, Some(&json!({}))).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.headers["location"].to_str().unwrap(), kid);
        std::mem::swap(&mut again.key, &mut alice.key);

        // An unknown kid.
        let mut ghost = client(&run);
        ghost.kid = Some(format!("{}/account/nobody", ghost.base));
        let a = ghost
            .post(&format!("{}/new-order", ghost.base), Some(&json!({})))
            .await;
        assert_eq!(
            problem(&a),
            "urn:ietf:params:acme:error:accountDoesNotExist"
        );

        // An order; finalize before it is ready.
        let order = alice
            .post(
                &format!("{}/new-order", alice.base),
                Some(&json!({"identifiers": [{"type": "dns", "value": "web.internal"}]})),
            )
            .await;
        assert_eq!(order.status, 201, "{}", order.body);
        assert_eq!(order.body["status"], "pending");
        let order_url = order.headers["location"].to_str().unwrap().to_owned();
        let finalize = order.body["finalize"].as_str().unwrap().to_owned();
        let csr_der = |name: &str| {
            let pem = openssl_csr(
                ca.dir.path(),
                name,
                P256,
                &format!("/CN={name}"),
                Some(&format!("DNS:{name}")),
            );
            let der = hallmark::pki::pem_decode_all(
                std::str::from_utf8(&pem).unwrap(),
                "CERTIFICATE REQUEST",
            )
            .remove(0);
            URL_SAFE_NO_PAD.encode(der)
        };
        let a = alice
            .post(&finalize, Some(&json!({"csr": csr_der("web.internal")})))
            .await;
        assert_eq!(a.status, 403);
        assert_eq!(problem(&a), "urn:ietf:params:acme:error:orderNotReady");

        // Names outside policy are refused as rejectedIdentifier.
        let a = alice
            .post(
                &format!("{}/new-order", alice.base),
                Some(&json!({"identifiers": [{"type": "dns", "value": "www.example.com"}]})),
            )
            .await;
        assert_eq!(
            problem(&a),
            "urn:ietf:params:acme:error:rejectedIdentifier",
            "{}",
            a.body
        );

        // Make the order ready (the account proved the name: reuse) and
        // finalize with a CSR for another name.
        ca.db
            .execute("UPDATE authorizations SET status = 'valid', validated_at = 1 WHERE status = 'pending'")
            .await;
        ca.db
            .execute("UPDATE orders SET status = 'ready' WHERE status = 'pending'")
            .await;
        let a = alice
            .post(&finalize, Some(&json!({"csr": csr_der("api.internal")})))
            .await;
        assert_eq!(a.status, 400);
        assert_eq!(problem(&a), "urn:ietf:params:acme:error:badCSR");
        let a = alice
            .post(&finalize, Some(&json!({"csr": csr_der("web.internal")})))
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body["status"], "valid");
        // finalize answers from what it wrote, without reading the order
        // back: the answer is the order as stored.
        let stored = alice.post(&order_url, None).await;
        assert_eq!(a.body, stored.body, "{backend:?}");
        let cert_url = a.body["certificate"].as_str().unwrap().to_owned();
        let cert = alice.post(&cert_url, None).await;
        assert_eq!(
            cert.headers["content-type"],
            "application/pem-certificate-chain"
        );
        assert!(
            cert.body
                .as_str()
                .unwrap()
                .matches("BEGIN CERTIFICATE")
                .count()
                == 2
        );

        // Another account sees neither the order nor the certificate.
        let mut bob = client(&run);
        bob.register().await;
        for url in [&order_url, &cert_url] {
            let a = bob.post(url, None).await;
            assert_eq!(a.status, 404, "{url}: {}", a.body);
        }
        // A kid request signed by the wrong key fails.
        let mut mallory = client(&run);
        mallory.kid = alice.kid.clone();
        let a = mallory.post(&order_url, None).await;
        assert_eq!(problem(&a), "urn:ietf:params:acme:error:malformed");
        run.stop().await;
        ca.cleanup().await;
    }
}

/// A `ready` order is signed and stored with its move to `valid` in one
/// commit, guarded on `ready`, with no `processing` claim before it: eight
/// finalizes of one order at once may all sign, but exactly one
/// certificate is stored (and audited); the others are told the order is
/// no longer ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_finalizes_store_one_certificate() {
    for backend in backends() {
        let mut ca = TestCa::new(backend).await;
        let run = ca.start().await;
        let mut alice = client(&run);
        alice.register().await;
        let order = alice
            .post(
                &format!("{}/new-order", alice.base),
                Some(&json!({"identifiers": [{"type": "dns", "value": "race.internal"}]})),
            )
            .await;
        assert_eq!(order.status, 201, "{}", order.body);
        let order_url = order.headers["location"].to_str().unwrap().to_owned();
        let order_id = order_url.rsplit('/').next().unwrap().to_owned();
        let finalize = order.body["finalize"].as_str().unwrap().to_owned();
        ca.db
            .execute("UPDATE authorizations SET status = 'valid', validated_at = 1 WHERE status = 'pending'")
            .await;
        ca.db
            .execute("UPDATE orders SET status = 'ready' WHERE status = 'pending'")
            .await;
        let pem = openssl_csr(
            ca.dir.path(),
            "race",
            P256,
            "/CN=race.internal",
            Some("DNS:race.internal"),
        );
        let der = hallmark::pki::pem_decode_all(
            std::str::from_utf8(&pem).unwrap(),
            "CERTIFICATE REQUEST",
        )
        .remove(0);
        let payload = json!({"csr": URL_SAFE_NO_PAD.encode(der)});
        let answers =
            futures_util::future::join_all((0..8).map(|_| alice.post(&finalize, Some(&payload))))
                .await;
        let valid: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
        assert_eq!(valid.len(), 1, "{backend:?}: one finalize succeeds");
        for a in answers.iter().filter(|a| a.status != 200) {
            assert_eq!(a.status, 403, "{backend:?}: {}", a.body);
            assert_eq!(problem(a), "urn:ietf:params:acme:error:orderNotReady");
            assert!(
                a.body["detail"].as_str().unwrap().contains("valid"),
                "{}",
                a.body
            );
        }
        let serial = valid[0].body["certificate"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned();
        let stored = alice.post(&order_url, None).await;
        assert_eq!(stored.body["status"], "valid");
        assert_eq!(stored.body["certificate"], valid[0].body["certificate"]);

        let log = run.authority.store().audit_page(0, 10_000).await.unwrap();
        let issued: Vec<&str> = log
            .iter()
            .filter(|r| r.action == "certificate.issue" && r.details.contains(&order_id))
            .map(|r| r.subject.as_str())
            .collect();
        assert_eq!(issued.len(), 1, "{backend:?}: {issued:?}");
        assert!(
            serial.eq_ignore_ascii_case(issued[0]),
            "{serial} {issued:?}"
        );
        let moves: Vec<&str> = log
            .iter()
            .filter(|r| r.subject == order_id)
            .map(|r| r.action.as_str())
            .collect();
        assert_eq!(moves, ["order.create", "order.valid"], "{backend:?}");
        hallmark::workflow::audit::verify(run.authority.store().as_ref())
            .await
            .expect("the audit chain verifies");
        run.stop().await;
        ca.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_accounts_and_on_postgresql_nonces() {
    for backend in backends() {
        let mut ca = TestCa::new(backend).await;
        let first = ca.start().await;
        let mut config = ca.config.clone();
        let https = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        config.https_listen = https.local_addr().unwrap();
        config.http_listen = http.local_addr().unwrap();
        let second_base = format!("https://localhost:{}/acme", config.https_listen.port());
        let service = hallmark::service::Service::start(config).await.unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let handle = tokio::spawn(service.run(https, http, stopped));

        // Behind a load balancer both answer for the same public URL; the
        // client signs that URL and the request lands on the second.
        let mut client = client(&first);
        let public = client.base.clone();
        let nonce = client.nonce().await; // from the first instance
        let body = client.sign(
            &format!("{public}/new-account"),
            &nonce,
            Some(&json!({"termsOfServiceAgreed": true})),
            json!({}),
        );
        let mut a = client
            .post_body(&format!("{second_base}/new-account"), &body)
            .await;
        let body = if backend == Backend::Sqlite {
            // SQLite's `serve` is its file's one server: it records used
            // nonces in memory under a key of its own, so another
            // process's nonce (or one from before a restart) is refused,
            // and the answer carries one to retry with (RFC 8555 §6.5).
            assert_eq!(
                problem(&a),
                "urn:ietf:params:acme:error:badNonce",
                "{backend:?}"
            );
            let retry = a.headers["replay-nonce"].to_str().unwrap().to_owned();
            let body = client.sign(
                &format!("{public}/new-account"),
                &retry,
                Some(&json!({"termsOfServiceAgreed": true})),
                json!({}),
            );
            a = client
                .post_body(&format!("{second_base}/new-account"), &body)
                .await;
            body
        } else {
            body
        };
        assert_eq!(
            a.status, 201,
            "{backend:?}: a nonce from one instance is good at another: {}",
            a.body
        );
        let replay = client
            .post_body(&format!("{second_base}/new-account"), &body)
            .await;
        assert_eq!(
            problem(&replay),
            "urn:ietf:params:acme:error:badNonce",
            "and only once"
        );
        // The account made through the second exists for the first.
        client.kid = Some(a.headers["location"].to_str().unwrap().to_owned());
        let order = client
            .post(
                &format!("{public}/new-order"),
                Some(&json!({"identifiers": [{"type": "dns", "value": "web.internal"}]})),
            )
            .await;
        assert_eq!(order.status, 201, "{}", order.body);

        let _ = stop.send(true);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(15), handle).await;
        first.stop().await;
        ca.cleanup().await;
    }
}

/// A new order for `name`: its URL and its challenge of `kind`.
async fn new_order(client: &Client, name: &str, kind: &str) -> (String, serde_json::Value) {
    let order = client
        .post(
            &format!("{}/new-order", client.base),
            Some(&json!({"identifiers": [{"type": "dns", "value": name}]})),
        )
        .await;
    assert_eq!(order.status, 201, "{}", order.body);
    let authz_url = order.body["authorizations"][0].as_str().unwrap();
    let authz = client.post(authz_url, None).await;
    let chall = authz.body["challenges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind}: {}", authz.body))
        .clone();
    (order.location(), chall)
}

/// A challenge POST answers with its validation's result when that comes
/// within `acme.challenge_wait_ms` (so the first poll finds the order
/// `ready`); a slower validation is answered `processing` after the wait
/// and goes on in the background; with 0 the answer does not wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_is_answered_with_its_result_when_it_comes_within_the_wait() {
    for backend in backends() {
        let wait = ("HALLMARK_ACME__CHALLENGE_WAIT_MS", "400".to_owned());
        let lab = DvLab::new(backend, &[wait]).await;
        let mut alice = client(&lab.running);
        alice.register().await;
        // Published correctly: the answer is the result, and the order is
        // ready without a second poll.
        let (order_url, chall) = new_order(&alice, "web.internal", "http-01").await;
        let token = chall["token"].as_str().unwrap();
        lab.http01.publish(
            &format!("/.well-known/acme-challenge/{token}"),
            &format!("{token}.{}", alice.thumbprint()),
        );
        let a = alice
            .post(chall["url"].as_str().unwrap(), Some(&json!({})))
            .await;
        assert_eq!(a.status, 200, "{backend:?}: {}", a.body);
        assert_eq!(a.body["status"], "valid", "{backend:?}: {}", a.body);
        assert!(a.body["validated"].is_string(), "{}", a.body);
        let o = alice.post(&order_url, None).await;
        assert_eq!(o.body["status"], "ready", "{backend:?}: {}", o.body);

        // Published wrongly: the answer carries the failure.
        let (order_url, chall) = new_order(&alice, "api.internal", "http-01").await;
        let token = chall["token"].as_str().unwrap();
        lab.http01
            .publish(&format!("/.well-known/acme-challenge/{token}"), "wrong");
        let a = alice
            .post(chall["url"].as_str().unwrap(), Some(&json!({})))
            .await;
        assert_eq!(a.body["status"], "invalid", "{backend:?}: {}", a.body);
        assert_eq!(
            a.body["error"]["type"], "urn:ietf:params:acme:error:incorrectResponse",
            "{}",
            a.body
        );
        let o = alice.post(&order_url, None).await;
        assert_eq!(o.body["status"], "invalid", "{backend:?}: {}", o.body);

        // A validation slower than the wait (tls-alpn-01 against a port
        // that accepts and never answers, timing out after 3 s): answered
        // `processing` once the wait is over; it fails in the background.
        // The same challenge asked for again during the wait is answered
        // `processing` at once, and validated once.
        let (order_url, chall) = new_order(&alice, "alpn.internal", "tls-alpn-01").await;
        let url = chall["url"].as_str().unwrap();
        let empty = json!({});
        let started = std::time::Instant::now();
        let (a, again) = tokio::join!(alice.post(url, Some(&empty)), async {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let again = alice.post(url, Some(&empty)).await;
            (again, started.elapsed())
        });
        let took = started.elapsed();
        assert_eq!(a.body["status"], "processing", "{backend:?}: {}", a.body);
        assert!(
            took >= std::time::Duration::from_millis(400)
                && took < std::time::Duration::from_millis(2_500),
            "{backend:?}: answered after {took:?}"
        );
        let (again, again_took) = again;
        assert_eq!(
            again.body["status"], "processing",
            "{backend:?}: {}",
            again.body
        );
        assert!(
            again_took < std::time::Duration::from_millis(400),
            "{backend:?}: the second ask answered after {again_took:?}"
        );
        let o = alice.poll(&order_url, &["pending"]).await;
        assert_eq!(o.body["status"], "invalid", "{backend:?}: {}", o.body);
        // One attempt recorded per challenge, whether its claim came with
        // its result (the first two) or before it (the slow one).
        let log = lab.audit_log().await;
        let mut attempted: Vec<&str> = log
            .iter()
            .filter(|r| r.action == "challenge.attempt")
            .map(|r| r.subject.as_str())
            .collect();
        assert_eq!(attempted.len(), 3, "{backend:?}: {attempted:?}");
        attempted.sort_unstable();
        attempted.dedup();
        assert_eq!(attempted.len(), 3, "{backend:?}: {attempted:?}");
        hallmark::workflow::audit::verify(lab.running.authority.store().as_ref())
            .await
            .expect("the audit chain verifies");
        lab.finish().await;

        // With no wait, the answer comes before the validation's result.
        let wait = ("HALLMARK_ACME__CHALLENGE_WAIT_MS", "0".to_owned());
        let lab = DvLab::new(backend, &[wait]).await;
        let mut bob = client(&lab.running);
        bob.register().await;
        let (_, chall) = new_order(&bob, "alpn.internal", "tls-alpn-01").await;
        let started = std::time::Instant::now();
        let a = bob
            .post(chall["url"].as_str().unwrap(), Some(&json!({})))
            .await;
        assert!(started.elapsed() < std::time::Duration::from_millis(1_000));
        assert_eq!(a.body["status"], "processing", "{backend:?}: {}", a.body);
        lab.finish().await;
    }
}
