//! EST (RFC 7030): cacerts and simpleenroll answers are base64 certs-only
//! PKCS#7 that `openssl pkcs7` reads; enrolment is authenticated by an API
//! key as the HTTP Basic password and issues at once for names the account
//! has proven, and refuses (naming them) for others; curl re-enrols with
//! the enrolled certificate as its TLS client certificate, until it is
//! revoked.

use base64::Engine;
use hallmark::workflow::accounts::Role;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::dv::{csr, DvLab};
use crate::support::*;

/// Decodes a base64 PKCS#7 answer and prints its certificates' subjects.
fn subjects(dir: &std::path::Path, body: &str, file: &str) -> String {
    let text: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap();
    std::fs::write(dir.join(file), der).unwrap();
    openssl(
        dir,
        &[
            "pkcs7",
            "-inform",
            "DER",
            "-in",
            file,
            "-print_certs",
            "-noout",
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn est_serves_the_ca_certificates_and_enrols_proven_names() {
    let backend = backends().remove(0);
    let lab = DvLab::new(backend, &[]).await;
    let dir = lab.ca.dir.path().to_owned();
    let client = lab.running.client();
    let est = |path: &str| format!("{}/.well-known/est/{path}", lab.running.https_url);

    let r = client.get(est("cacerts")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"],
        "application/pkcs7-mime; smime-type=certs-only"
    );
    let printed = subjects(&dir, &r.text().await.unwrap(), "cacerts.p7");
    assert!(
        printed.contains("hallmark Issuing CA") && printed.contains("hallmark Root CA"),
        "{printed}"
    );
    let r = client.get(est("csrattrs")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // A base64 DER CSR, as EST clients send it.
    let key = lab.account("devices", Role::Requester).await;
    csr(&dir, "dev", "web.internal", "DNS:web.internal");
    openssl(
        &dir,
        &[
            "req", "-in", "dev.csr", "-outform", "DER", "-out", "dev.der",
        ],
    );
    let body = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(dir.join("dev.der")).unwrap());
    let enrol = |auth: Option<String>| {
        let mut req = client
            .post(est("simpleenroll"))
            .header("content-type", "application/pkcs10")
            .body(body.clone());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    let basic = |password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("device-1:{password}"))
        )
    };

    let r = enrol(None).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = enrol(Some(basic("hm_wrong"))).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Not yet proven: refused, naming the name and the order to finish.
    let r = enrol(Some(basic(&key))).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let p: serde_json::Value = r.json().await.unwrap();
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("has not proven web.internal"),
        "{p}"
    );

    // Proven over REST (http-01), then enrolled at once.
    let pem = csr(&dir, "rest", "web.internal", "DNS:web.internal");
    let (_, order) = lab
        .post(&key, "/orders", json!({"csr": pem, "validation": "dv"}))
        .await;
    lab.answer_http01(&key, &order).await;
    let done = lab.settle(&key, order["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "valid", "{done}");
    let r = enrol(Some(basic(&key))).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let printed = subjects(&dir, &r.text().await.unwrap(), "enrolled.p7");
    assert!(
        printed.contains("CN=web.internal") || printed.contains("CN = web.internal"),
        "{printed}"
    );
    openssl(
        &dir,
        &[
            "pkcs7",
            "-inform",
            "DER",
            "-in",
            "enrolled.p7",
            "-print_certs",
            "-out",
            "enrolled.pem",
        ],
    );
    std::fs::write(dir.join("root.pem"), &lab.running.root_pem).unwrap();
    std::fs::write(
        dir.join("int.pem"),
        lab.running.authority.issuer().certificate().pem(),
    )
    .unwrap();
    openssl(
        &dir,
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "int.pem",
            "enrolled.pem",
        ],
    );
    let eku = openssl(
        &dir,
        &[
            "x509",
            "-in",
            "enrolled.pem",
            "-noout",
            "-ext",
            "extendedKeyUsage",
        ],
    );
    assert!(eku.contains("TLS Web Client Authentication"), "{eku}");

    // Re-enrolment with curl: the enrolled certificate (and its chain) as
    // the TLS client certificate, a new key's CSR for the same name.
    let chain = format!(
        "{}{}",
        std::fs::read_to_string(dir.join("enrolled.pem")).unwrap(),
        lab.running.authority.issuer().certificate().pem()
    );
    std::fs::write(dir.join("client.pem"), chain).unwrap();
    csr(&dir, "next", "web.internal", "DNS:web.internal");
    openssl(
        &dir,
        &[
            "req", "-in", "next.csr", "-outform", "DER", "-out", "next.der",
        ],
    );
    std::fs::write(
        dir.join("next.b64"),
        base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(dir.join("next.der")).unwrap()),
    )
    .unwrap();
    csr(&dir, "other", "api.internal", "DNS:api.internal");
    openssl(
        &dir,
        &[
            "req",
            "-in",
            "other.csr",
            "-outform",
            "DER",
            "-out",
            "other.der",
        ],
    );
    std::fs::write(
        dir.join("other.b64"),
        base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(dir.join("other.der")).unwrap()),
    )
    .unwrap();
    let url = est("simplereenroll");
    let curl = |with_cert: bool, body: &str| {
        let mut cmd = std::process::Command::new("curl");
        cmd.current_dir(&dir)
            .args(["-s", "-w", "\n%{http_code}", "--cacert", "root.pem"])
            .args(["-H", "Content-Type: application/pkcs10", "--data-binary"])
            .arg(format!("@{body}"));
        if with_cert {
            cmd.args(["--cert", "client.pem", "--key", "dev.key"]);
        }
        let out = cmd.arg(&url).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_owned(), body.to_owned())
    };
    let (code, body) = curl(false, "next.b64");
    assert_eq!(code, "401", "{body}");
    let (code, body) = curl(true, "other.b64");
    assert_eq!(code, "400", "{body}");
    assert!(
        body.contains("exactly the current certificate's names"),
        "{body}"
    );
    let (code, body) = curl(true, "next.b64");
    assert_eq!(code, "200", "{body}");
    let printed = subjects(&dir, &body, "reenrolled.p7");
    assert!(printed.contains("web.internal"), "{printed}");

    // Once revoked, the certificate no longer re-enrols.
    let serial = openssl(&dir, &["x509", "-in", "enrolled.pem", "-noout", "-serial"]);
    let serial = serial
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    let (status, body) = lab
        .post(
            &key,
            &format!("/certificates/{serial}/revoke"),
            json!({"reason": "superseded"}),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    let (code, body) = curl(true, "next.b64");
    assert_eq!(code, "401", "{body}");
    assert!(body.contains("is revoked"), "{body}");
    lab.finish().await;
}
