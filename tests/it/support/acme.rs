//! A small ACME client (RFC 8555) for the tests and the ACME benchmark:
//! one ES256 account key (ring), flattened JWS, nonces reused from each
//! answer's `Replay-Nonce` as real clients do (with one retry on
//! `badNonce`), http-01 through a callback that publishes key
//! authorizations, and CSRs made with rcgen. Nothing in it depends on the
//! test harness, so `benches/acme.rs` includes it by path.

#![allow(dead_code)]

use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// An ACME client with one P-256 account key.
pub struct Client {
    http: reqwest::Client,
    /// `https://host:port/acme`.
    pub base: String,
    pub key: EcdsaKeyPair,
    /// The account URL once registered.
    pub kid: Option<String>,
    nonce: Mutex<Option<String>>,
    /// newNonce, newAccount and newOrder: under `base` for hallmark, read
    /// from the directory by [`Client::discover`] for another server.
    pub urls: [String; 3],
}

/// An answer: status, headers and JSON (or text) body.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The problem type, or "".
    pub fn problem(&self) -> &str {
        self.body["type"].as_str().unwrap_or("")
    }

    /// The `Location` header.
    pub fn location(&self) -> String {
        self.headers["location"].to_str().unwrap().to_owned()
    }
}

/// A P-256 key pair in PKCS#8, freshly generated.
pub fn new_p256_key() -> EcdsaKeyPair {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap()
}

/// The public JWK of a P-256 key.
pub fn p256_jwk(key: &EcdsaKeyPair) -> Value {
    let p = key.public_key().as_ref();
    json!({"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..])})
}

/// A flattened JWS over `payload` (empty for POST-as-GET).
pub fn jws(key: &EcdsaKeyPair, protected: &Value, payload: Option<&Value>) -> Value {
    let p = URL_SAFE_NO_PAD.encode(protected.to_string());
    let b = payload
        .map(|v| URL_SAFE_NO_PAD.encode(v.to_string()))
        .unwrap_or_default();
    let sig = key
        .sign(&SystemRandom::new(), format!("{p}.{b}").as_bytes())
        .unwrap();
    json!({"protected": p, "payload": b, "signature": URL_SAFE_NO_PAD.encode(sig.as_ref())})
}

impl Client {
    /// A client for the ACME server under `base` (`…/acme`).
    pub fn with(http: reqwest::Client, base: String) -> Client {
        let urls = ["new-nonce", "new-account", "new-order"].map(|p| format!("{base}/{p}"));
        Client {
            http,
            base,
            key: new_p256_key(),
            kid: None,
            nonce: Mutex::new(None),
            urls,
        }
    }

    /// A client for any ACME server, by its directory URL (the benchmark
    /// drives pebble with it).
    pub async fn discover(http: reqwest::Client, directory: &str) -> Result<Client, String> {
        let d: Value = http
            .get(directory)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let url = |k: &str| {
            d[k].as_str()
                .map(str::to_owned)
                .ok_or(format!("the directory has no {k}: {d}"))
        };
        let urls = [url("newNonce")?, url("newAccount")?, url("newOrder")?];
        let mut client = Client::with(http, directory.to_owned());
        client.urls = urls;
        Ok(client)
    }

    pub fn jwk(&self) -> Value {
        p256_jwk(&self.key)
    }

    /// RFC 7638 thumbprint of the account key.
    pub fn thumbprint(&self) -> String {
        let j = self.jwk();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            j["x"].as_str().unwrap(),
            j["y"].as_str().unwrap()
        );
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }

    /// A fresh nonce from newNonce.
    pub async fn nonce(&self) -> String {
        let r = self.http.head(&self.urls[0]).send().await.unwrap();
        r.headers()["replay-nonce"].to_str().unwrap().to_owned()
    }

    /// The nonce the last answer carried, else a fresh one.
    async fn next_nonce(&self) -> String {
        let saved = self.nonce.lock().unwrap().take();
        match saved {
            Some(n) => n,
            None => self.nonce().await,
        }
    }

    /// A signed request body; `header` overrides the defaults (a `null`
    /// removes a field).
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
        jws(&self.key, &protected, payload)
    }

    /// POSTs `body`; a request that got no answer at all (refused, timed
    /// out) is an [`Answer`] of status 0 whose body says why, so a load
    /// run can tell it from a refusal without a panic in its tasks.
    pub async fn post_body(&self, url: &str, body: &Value) -> Answer {
        let sent = self
            .http
            .post(url)
            .header("content-type", "application/jose+json")
            .body(body.to_string())
            .send()
            .await;
        let r = match sent {
            Ok(r) => r,
            Err(e) => {
                return Answer {
                    status: 0,
                    headers: Default::default(),
                    body: Value::String(format!("no answer from {url}: {e:?}")),
                }
            }
        };
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        if let Some(n) = headers.get("replay-nonce").and_then(|v| v.to_str().ok()) {
            *self.nonce.lock().unwrap() = Some(n.to_owned());
        }
        let text = r
            .text()
            .await
            .unwrap_or_else(|e| format!("no whole answer from {url}: {e:?}"));
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A correctly signed POST (POST-as-GET when `payload` is None); a
    /// `badNonce` answer is retried with the nonce it carries, as RFC 8555
    /// §6.5 asks of clients.
    pub async fn post(&self, url: &str, payload: Option<&Value>) -> Answer {
        let mut answer = None;
        for _ in 0..8 {
            let nonce = self.next_nonce().await;
            let body = self.sign(url, &nonce, payload, json!({}));
            let a = self.post_body(url, &body).await;
            if a.problem() != "urn:ietf:params:acme:error:badNonce" {
                return a;
            }
            answer = Some(a);
        }
        answer.unwrap()
    }

    /// newAccount with `payload`; keeps the account URL on success.
    pub async fn register_with(&mut self, payload: Value) -> Answer {
        let a = self.post(&self.urls[1], Some(&payload)).await;
        if a.status == 201 || a.status == 200 {
            self.kid = Some(a.location());
        }
        a
    }

    pub async fn register(&mut self) -> Answer {
        let a = self
            .register_with(json!({"termsOfServiceAgreed": true}))
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        a
    }

    /// Polls `url` (POST-as-GET) until its status leaves `waiting`.
    pub async fn poll(&self, url: &str, waiting: &[&str]) -> Answer {
        for _ in 0..600 {
            let a = self.post(url, None).await;
            let status = a.body["status"].as_str().unwrap_or("");
            if !waiting.contains(&status) {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{url} stayed in {waiting:?}");
    }

    /// A whole issuance for `names`: newOrder, http-01 for each pending
    /// authorization through `publish(token, key_authorization)`, finalize
    /// with a fresh P-256 CSR, and the certificate chain (PEM). `extra`
    /// is merged into the newOrder payload.
    pub async fn issue(
        &self,
        names: &[&str],
        extra: Value,
        publish: &(dyn Fn(&str, &str) + Sync),
    ) -> Result<String, Answer> {
        let identifier = |n: &&str| match n.parse::<std::net::IpAddr>() {
            Ok(_) => json!({"type": "ip", "value": n}),
            Err(_) => json!({"type": "dns", "value": n}),
        };
        let mut payload = json!({"identifiers": names.iter().map(identifier).collect::<Vec<_>>()});
        for (k, v) in extra.as_object().unwrap() {
            payload[k] = v.clone();
        }
        let order = self.post(&self.urls[2], Some(&payload)).await;
        if order.status != 201 {
            return Err(order);
        }
        let order_url = order.location();
        for authz_url in order.body["authorizations"].as_array().unwrap() {
            let authz = self.post(authz_url.as_str().unwrap(), None).await;
            if authz.body["status"] != "pending" {
                continue;
            }
            let chall = authz.body["challenges"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "http-01")
                .expect("an http-01 challenge")
                .clone();
            let token = chall["token"].as_str().unwrap();
            publish(token, &format!("{token}.{}", self.thumbprint()));
            let a = self
                .post(chall["url"].as_str().unwrap(), Some(&json!({})))
                .await;
            if a.status != 200 {
                return Err(a);
            }
        }
        let ready = self.poll(&order_url, &["pending"]).await;
        if ready.body["status"] != "ready" {
            return Err(ready);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key).unwrap();
        let fin = self
            .post(
                ready.body["finalize"].as_str().unwrap(),
                Some(&json!({"csr": URL_SAFE_NO_PAD.encode(csr.der())})),
            )
            .await;
        if fin.status != 200 {
            return Err(fin);
        }
        let done = self.poll(&order_url, &["processing", "ready"]).await;
        let Some(cert_url) = done.body["certificate"].as_str() else {
            return Err(done);
        };
        let cert = self.post(cert_url, None).await;
        match cert.body.as_str() {
            Some(pem) if cert.status == 200 => Ok(pem.to_owned()),
            _ => Err(cert),
        }
    }
}
