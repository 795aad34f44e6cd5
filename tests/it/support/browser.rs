//! The dashboard as a browser sees it: sign-in, pages, forms with their
//! CSRF token; and an OV order to review.

use super::*;
use crate::support::dv::DvLab;
use reqwest::StatusCode;
use serde_json::json;
use std::collections::HashMap;

/// A browser: keeps cookies, never follows redirects.
pub struct Browser {
    client: reqwest::Client,
    pub base: String,
    cookies: HashMap<String, String>,
}

/// A page as the browser got it.
pub struct Page {
    pub status: StatusCode,
    pub location: String,
    pub body: String,
    pub headers: reqwest::header::HeaderMap,
}

impl Page {
    /// The body with HTML's numeric escapes written as named ones.
    pub fn text(&self) -> String {
        self.body
            .replace("&#60;", "&lt;")
            .replace("&#62;", "&gt;")
            .replace("&#34;", "&quot;")
            .replace("&#38;", "&amp;")
    }

    /// The value of the first hidden `csrf` input.
    pub fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token");
        let rest = &self.body[at + 19..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

impl Browser {
    pub fn new(running: &Running) -> Browser {
        let root = reqwest::Certificate::from_pem(running.root_pem.as_bytes()).unwrap();
        Browser {
            client: reqwest::Client::builder()
                .add_root_certificate(root)
                .tls_built_in_root_certs(false)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: running.https_url.clone(),
            cookies: HashMap::new(),
        }
    }

    /// The HTTP client (no redirects followed, this CA's root trusted).
    pub fn http(&self) -> reqwest::Client {
        self.client.clone()
    }

    /// The `Cookie` header this browser sends.
    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Page {
        let cookie = self.cookie_header();
        let r = req.header("cookie", cookie).send().await.unwrap();
        for v in r.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap();
            assert!(
                v.contains("Secure") && v.contains("HttpOnly") && v.contains("SameSite=Strict"),
                "{v}"
            );
            let (pair, _) = v.split_once(';').unwrap();
            let (k, val) = pair.split_once('=').unwrap();
            if val.is_empty() || v.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), val.to_owned());
            }
        }
        let status = r.status();
        let headers = r.headers().clone();
        let location = headers
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Page {
            status,
            location,
            body: r.text().await.unwrap(),
            headers,
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let req = self.client.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let req = self.client.post(format!("{}{path}", self.base)).form(form);
        self.send(req).await
    }

    /// Signs in; returns the page the sign-in redirected to.
    pub async fn sign_in(&mut self, user: &str, password: &str) -> Page {
        let login = self.get("/admin/login").await;
        assert_eq!(login.status, StatusCode::OK);
        let csrf = login.csrf();
        let r = self
            .post(
                "/admin/login",
                &[("csrf", &csrf), ("username", user), ("password", password)],
            )
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
        r
    }
}

pub const PASSWORD: &str = "correct horse battery staple";

/// An OV order awaiting approval for `ov.internal` with organisation `org`.
pub async fn ov_order(lab: &DvLab, key: &str, org: &str) -> String {
    let dir = lab.ca.dir.path();
    let name = format!("ov{}", rand::random::<u32>());
    let pem = String::from_utf8(openssl_csr(
        dir,
        &name,
        P256,
        "/CN=ov.internal",
        Some("DNS:ov.internal"),
    ))
    .unwrap();
    let (status, order) = lab
        .post(
            key,
            "/orders",
            json!({"csr": pem, "validation": "ov", "organization": {"name": org, "country": "GB"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let id = order["id"].as_str().unwrap().to_owned();
    if order["status"] == "pending" {
        lab.answer_http01(key, &order).await;
    }
    let settled = lab.settle(key, &id).await;
    assert_eq!(settled["status"], "awaiting_approval", "{settled}");
    id
}
