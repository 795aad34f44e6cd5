//! The running service: public endpoints on both listeners, HTTPS with its
//! self-issued certificate, first-start admin, restart.

use reqwest::StatusCode;

use crate::support::*;
use hallmark::workflow::SignOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_endpoints_serve_ca_certificates_and_health_on_both_listeners() {
    for backend in backends() {
        let mut ca = TestCa::new(backend).await;
        let running = ca.start().await;
        let https = running.client();
        let plain = reqwest::Client::new();
        let root_der = running.authority.root().der().to_vec();
        let issuer_id = running.authority.issuer().certificate().id().to_owned();

        for (client, base) in [
            (&plain, running.http_url.clone()),
            (&https, running.https_url.clone()),
        ] {
            let r = client
                .get(format!("{base}/ca/root.crt"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()["content-type"], "application/pkix-cert");
            let etag = r.headers()["etag"].clone();
            assert_eq!(r.bytes().await.unwrap().to_vec(), root_der);

            let r = client
                .get(format!("{base}/ca/root.crt"))
                .header("if-none-match", etag)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NOT_MODIFIED);

            let pem = get_text(client, format!("{base}/ca/{issuer_id}.pem")).await;
            assert_eq!(pem, running.authority.issuer().certificate().pem());
            let der = client
                .get(format!("{base}/ca/{issuer_id}.crt"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(der.to_vec(), running.authority.issuer().certificate().der());
            let chain = get_text(client, format!("{base}/ca/chain.pem")).await;
            assert_eq!(chain, format!("{pem}{}", running.authority.root().pem()));

            let r = client.get(format!("{base}/healthz")).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let r = client.get(format!("{base}/readyz")).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);

            let r = client
                .get(format!("{base}/ca/nothing.crt"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND);
            assert_eq!(r.headers()["content-type"], "application/problem+json");
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["type"], "urn:hallmark:error:notFound");
            assert!(body["detail"].as_str().unwrap().contains("nothing.crt"));
        }

        // Metrics count what this process issued (its own HTTPS certificate
        // included).
        let issued = |text: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix("hallmark_certificates_issued_total "))
                .and_then(|v| v.parse().ok())
                .expect("the issuance counter is exported")
        };
        let metrics_url = format!("{}/metrics", running.http_url);
        let before = get_text(&plain, &metrics_url).await;
        let csr = openssl_csr(ca.dir.path(), "m", P256, "/CN=m.internal", None);
        running
            .authority
            .sign_csr(&csr, SignOptions::default(), "t")
            .await
            .unwrap();
        let after = get_text(&plain, &metrics_url).await;
        assert_eq!(issued(&after), issued(&before) + 1, "{after}");
        assert!(after.contains("hallmark_database_up 1"), "{after}");
        assert!(
            after.contains(&format!(
                "hallmark_ca_not_after_seconds{{issuer=\"{issuer_id}\"}}"
            )),
            "{after}"
        );

        // The HTTPS landing page, with browser security headers.
        let r = https
            .get(format!("{}/", running.https_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["strict-transport-security"]
            .to_str()
            .unwrap()
            .contains("max-age"));
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        assert!(r.headers().contains_key("content-security-policy"));
        assert!(r.text().await.unwrap().contains("hallmark Root CA"));

        running.stop().await;
        ca.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listener_uses_a_certificate_issued_by_its_own_intermediate() {
    let mut ca = TestCa::new(Backend::Sqlite).await;
    let running = ca.start().await;
    let chain = std::fs::read_to_string(ca.data_dir().join("tls/server.crt.pem")).unwrap();
    let dir = ca.dir.path();
    assert_openssl_verifies(dir, &running.root_pem, &chain, &chain);
    let text = openssl(
        dir,
        &[
            "x509",
            "-in",
            "chain.pem",
            "-noout",
            "-ext",
            "subjectAltName",
        ],
    );
    assert!(
        text.contains("DNS:localhost") && text.contains("IP Address:127.0.0.1"),
        "{text}"
    );
    // s_client, a real TLS peer, completes a verified handshake.
    let port = ca.config.https_listen.port().to_string();
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "localhost",
            "-CAfile",
            "root.pem",
            "-verify_return_error",
            "-brief",
        ])
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("piped stdin");
            stdin.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")?;
            drop(stdin);
            child.wait_with_output()
        })
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("Verification: OK"), "{all}");
    let key_mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(ca.data_dir().join("tls/server.key.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(key_mode, 0o600);
    running.stop().await;
    ca.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_service_keeps_its_ca_data_and_tls_certificate() {
    for backend in backends() {
        let mut ca = TestCa::new(backend).await;
        let first = ca.start().await;
        let password = first
            .admin_password
            .clone()
            .expect("first start prints a one-time admin password");
        assert!(password.len() >= 20);
        let csr = openssl_csr(ca.dir.path(), "k", P256, "/CN=keep.internal", None);
        let signed = first
            .authority
            .sign_csr(&csr, SignOptions::default(), "t")
            .await
            .unwrap();
        let root = first.authority.root().der().to_vec();
        let tls_before = std::fs::read(ca.data_dir().join("tls/server.crt.pem")).unwrap();
        first.stop().await;

        let second = ca.start().await;
        assert_eq!(
            second.admin_password, None,
            "the password is shown only once"
        );
        assert_eq!(second.authority.root().der(), root.as_slice());
        let stored = second
            .authority
            .store()
            .certificate(&signed.certificate.serial)
            .await
            .unwrap();
        assert_eq!(stored.der, signed.certificate.der);
        assert_eq!(
            std::fs::read(ca.data_dir().join("tls/server.crt.pem")).unwrap(),
            tls_before
        );
        let r = second
            .client()
            .get(format!("{}/readyz", second.https_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        // The admin password is stored only as an argon2id hash.
        second.stop().await;
        let hash = read_admin_hash(&ca.db).await;
        assert!(hash.starts_with("$argon2id$"));
        assert!(!hash.contains(&password));
        ca.cleanup().await;
    }
}

async fn read_admin_hash(db: &TestDb) -> String {
    use sqlx::Connection;
    let sql = "SELECT password_hash FROM users WHERE username = 'admin'";
    match db.backend {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
        }
    }
}

/// The serial of the certificate the HTTPS listener presents, by s_client.
fn presented_serial(dir: &std::path::Path, port: u16) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' | openssl s_client -connect 127.0.0.1:{port} -servername localhost 2>/dev/null | openssl x509 -noout -serial"
        ))
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_certificate_is_renewed_while_serving_without_a_restart() {
    let mut ca = TestCa::new(Backend::Sqlite).await;
    let running = ca.start().await;
    let port = ca.config.https_listen.port();
    let dir = ca.dir.path().to_path_buf();
    let refresher = running.tls_refresher.clone().expect("TLS is on");
    let before = presented_serial(&dir, port);
    assert!(before.starts_with("serial="), "{before}");

    // Nothing to do while the certificate is current.
    assert!(!refresher.refresh().await.unwrap());
    assert_eq!(presented_serial(&dir, port), before);

    // A key that no longer matches the certificate (a crash between the
    // two writes) makes a new pair.
    let key_path = ca.data_dir().join("tls/server.key.pem");
    let other_key = hallmark::pki::PrivateKey::generate(hallmark::pki::KeyType::P256).unwrap();
    std::fs::remove_file(&key_path).unwrap();
    std::fs::write(&key_path, other_key.to_pkcs8_pem().unwrap().as_bytes()).unwrap();
    assert!(refresher.refresh().await.unwrap());
    let renewed = presented_serial(&dir, port);
    assert!(
        renewed.starts_with("serial=") && renewed != before,
        "{before} -> {renewed}"
    );
    let before = renewed;

    // A certificate that no longer fits (here: the file was damaged) is
    // replaced, and new handshakes get the new one at once.
    std::fs::write(ca.data_dir().join("tls/server.crt.pem"), "damaged").unwrap();
    assert!(refresher.refresh().await.unwrap());
    let after = presented_serial(&dir, port);
    assert!(
        after.starts_with("serial=") && after != before,
        "{before} -> {after}"
    );
    let r = running
        .client()
        .get(format!("{}/healthz", running.https_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    running.stop().await;
    ca.cleanup().await;
}
