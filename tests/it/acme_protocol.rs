//! ACME protocol errors, exactly per RFC 8555, from a small client written
//! here (ES256 with ring): bad nonce, wrong `url`, unknown `kid`, an
//! algorithm that does not fit the key, finalize before ready and with a
//! CSR for other names, another account's order; and that nonces are
//! shared by two instances on one database.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

use crate::common::*;

/// An ACME client with one P-256 account key.
pub struct Client {
    http: reqwest::Client,
    pub base: String,
    key: EcdsaKeyPair,
    pub kid: Option<String>,
}

/// An answer: status, headers and JSON (or text) body.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Client {
    pub fn new(running: &Running) -> Client {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Client {
            http: running.client(),
            base: format!("{}/acme", running.https_url),
            key: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .unwrap(),
            kid: None,
        }
    }

    pub fn jwk(&self) -> Value {
        let p = self.key.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..])})
    }

    pub async fn nonce(&self) -> String {
        let r = self
            .http
            .head(format!("{}/new-nonce", self.base))
            .send()
            .await
            .unwrap();
        r.headers()["replay-nonce"].to_str().unwrap().to_owned()
    }

    /// A signed request body; `header` overrides the defaults.
    pub fn sign(&self, url: &str, nonce: &str, payload: Option<&Value>, header: Value) -> Value {
        let mut protected = json!({"alg": "ES256", "nonce": nonce, "url": url});
        match &self.kid {
            Some(kid) => protected["kid"] = json!(kid),
            None => protected["jwk"] = self.jwk(),
        }
        for (k, v) in header.as_object().unwrap() {
            if v.is_null() {
                protected.as_object_mut().unwrap().remove(k);
            } else {
                protected[k] = v.clone();
            }
        }
        let p = URL_SAFE_NO_PAD.encode(protected.to_string());
        let b = payload
            .map(|v| URL_SAFE_NO_PAD.encode(v.to_string()))
            .unwrap_or_default();
        let sig = self
            .key
            .sign(&SystemRandom::new(), format!("{p}.{b}").as_bytes())
            .unwrap();
        json!({"protected": p, "payload": b, "signature": URL_SAFE_NO_PAD.encode(sig.as_ref())})
    }

    pub async fn post_body(&self, url: &str, body: &Value) -> Answer {
        let r = self
            .http
            .post(url)
            .header("content-type", "application/jose+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A correctly signed POST (POST-as-GET when `payload` is None).
    pub async fn post(&self, url: &str, payload: Option<&Value>) -> Answer {
        let nonce = self.nonce().await;
        let body = self.sign(url, &nonce, payload, json!({}));
        self.post_body(url, &body).await
    }

    pub async fn register(&mut self) -> Answer {
        let a = self
            .post(
                &format!("{}/new-account", self.base),
                Some(&json!({"termsOfServiceAgreed": true})),
            )
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        self.kid = Some(a.headers["location"].to_str().unwrap().to_owned());
        a
    }
}

fn problem(a: &Answer) -> &str {
    a.body["type"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_have_the_exact_acme_types() {
    for backend in backends() {
        let mut ca = TestCa::new(backend).await;
        let run = ca.start().await;
        let mut alice = Client::new(&run);
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
        let mut again = Client {
            kid: None,
            ..Client::new(&run)
        };
        std::mem::swap(&mut again.key, &mut alice.key);
        let a = again.post(&new_account, Some(&json!({}))).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.headers["location"].to_str().unwrap(), kid);
        std::mem::swap(&mut again.key, &mut alice.key);

        // An unknown kid.
        let mut ghost = Client::new(&run);
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
        let mut bob = Client::new(&run);
        bob.register().await;
        for url in [&order_url, &cert_url] {
            let a = bob.post(url, None).await;
            assert_eq!(a.status, 404, "{url}: {}", a.body);
        }
        // A kid request signed by the wrong key fails.
        let mut mallory = Client::new(&run);
        mallory.kid = alice.kid.clone();
        let a = mallory.post(&order_url, None).await;
        assert_eq!(problem(&a), "urn:ietf:params:acme:error:malformed");
        run.stop().await;
        ca.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_nonces_and_accounts() {
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
        let mut client = Client::new(&first);
        let public = client.base.clone();
        let nonce = client.nonce().await; // from the first instance
        let body = client.sign(
            &format!("{public}/new-account"),
            &nonce,
            Some(&json!({"termsOfServiceAgreed": true})),
            json!({}),
        );
        let a = client
            .post_body(&format!("{second_base}/new-account"), &body)
            .await;
        assert_eq!(
            a.status, 201,
            "a nonce from one instance is good at another: {}",
            a.body
        );
        let replay = client
            .post_body(&format!("{public}/new-account"), &body)
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
