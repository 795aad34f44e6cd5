//! Certificate profiles (draft-ietf-acme-profiles): announced in the ACME
//! directory, chosen by certbot's --preferred-profile / --required-profile
//! and by REST orders. `shortlived` (RFC 9608): at most 7 days, noRevAvail,
//! no CRL or OCSP pointer, renewal suggested from half its life; pkilint
//! clean and accepted by `openssl verify` without revocation data.

use reqwest::StatusCode;
use serde_json::json;
use x509_parser::prelude::*;

use crate::acme::run_certbot;
use crate::support::dv::{csr, DvLab};
use crate::support::*;
use hallmark::workflow::accounts::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certbot_asks_for_the_shortlived_profile_and_gets_rfc9608_certificates() {
    if !tool_present("certbot", "pip install certbot") {
        return;
    }
    let backend = backends().remove(0);
    let port = free_port();
    let lab = DvLab::new(
        backend,
        &[("HALLMARK_VALIDATION__HTTP_PORT", port.to_string())],
    )
    .await;
    let dir = lab.ca.dir.path().to_owned();
    std::fs::write(dir.join("root.pem"), &lab.running.root_pem).unwrap();
    let server = format!("{}/acme/directory", lab.running.https_url);

    // The directory announces the profiles.
    let directory: serde_json::Value = lab
        .running
        .client()
        .get(&server)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let profiles = directory["meta"]["profiles"].as_object().unwrap();
    let names: Vec<&str> = profiles.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["server", "server-client", "shortlived"],
        "{directory}"
    );

    let p = port.to_string();
    let certbot = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "certonly",
            "--standalone",
            "--http-01-port",
            &p,
            "-d",
            "web.internal",
            "--agree-tos",
            "--register-unsafely-without-email",
            "--force-renewal",
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        run_certbot(dir.clone(), server.clone(), args)
    };
    let (ok, out) = certbot(&["--required-profile", "shortlived"]).await;
    assert!(ok, "certbot failed:\n{out}");
    let live = dir.join("cb/config/live/web.internal");
    let pem = std::fs::read_to_string(live.join("cert.pem")).unwrap();
    std::fs::write(dir.join("short.pem"), &pem).unwrap();
    let chain = std::fs::read_to_string(live.join("chain.pem")).unwrap();
    std::fs::write(dir.join("chain.pem"), &chain).unwrap();
    let der = hallmark::pki::pem_decode_all(&pem, "CERTIFICATE").remove(0);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!(life <= 7 * 86_400 + 60, "{life} s");
    let oids: Vec<String> = cert
        .extensions()
        .iter()
        .map(|e| e.oid.to_id_string())
        .collect();
    assert!(
        oids.contains(&"2.5.29.56".to_string()),
        "noRevAvail: {oids:?}"
    );
    assert!(
        !oids.contains(&"2.5.29.31".to_string()),
        "no CRL DP: {oids:?}"
    );
    let text = openssl(&dir, &["x509", "-in", "short.pem", "-noout", "-text"]);
    assert!(!text.contains("OCSP - URI"), "{text}");
    assert!(text.contains("CA Issuers - URI"), "{text}");
    // Accepted with no revocation data at all.
    openssl(
        &dir,
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "chain.pem",
            "short.pem",
        ],
    );
    if let Some((_, out)) = pkilint(
        &dir,
        "lint_pkix_cert",
        &["lint", "-s", "WARNING", "short.pem"],
    ) {
        assert!(out.trim().is_empty(), "pkilint:\n{out}");
    }
    // Renewal information suggests renewing from half its life.
    let ari = crate::support::eab::ari_id(&pem);
    let info: serde_json::Value = lab
        .running
        .client()
        .get(format!("{}/acme/renewal-info/{ari}", lab.running.https_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let start = ::time::OffsetDateTime::parse(
        info["suggestedWindow"]["start"].as_str().unwrap(),
        &::time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp();
    let half = cert.validity().not_before.timestamp() + life / 2;
    assert!((start - half).abs() <= 1, "{info}");

    // A preferred profile the server has not: certbot falls back; a
    // required one: it fails with the server's invalidProfile.
    let (ok, out) = certbot(&["--required-profile", "tiny"]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("invalidProfile") || out.contains("unknown certificate profile"),
        "{out}"
    );
    let (ok, out) = certbot(&["--preferred-profile", "server-client"]).await;
    assert!(ok, "certbot failed:\n{out}");
    let pem = std::fs::read_to_string(live.join("cert.pem")).unwrap();
    let der = hallmark::pki::pem_decode_all(&pem, "CERTIFICATE").remove(0);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_orders_choose_a_profile_and_shortlived_is_capped_at_seven_days() {
    for backend in backends() {
        let lab = DvLab::new(backend, &[]).await;
        let key = lab.account("team", Role::Requester).await;
        let pem = csr(lab.ca.dir.path(), "s", "web.internal", "DNS:web.internal");
        let (status, p) = lab
            .post(
                &key,
                "/orders",
                json!({"csr": pem, "validation": "dv", "profile": "shortlived", "validity_days": 30}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
        assert!(
            p["detail"].as_str().unwrap().contains("choose 1 to 7 days"),
            "{p}"
        );
        let (status, order) = lab
            .post(
                &key,
                "/orders",
                json!({"csr": pem, "validation": "dv", "profile": "shortlived"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{order}");
        assert_eq!(order["profile"], "shortlived");
        assert_eq!(order["validity_days"], 7);
        lab.answer_http01(&key, &order).await;
        let done = lab.settle(&key, order["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "valid", "{done}");
        let (status, p) = lab
            .post(
                &key,
                "/orders",
                json!({"csr": pem, "validation": "dv", "profile": "tiny"}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
        lab.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_profile_narrows_validity_and_key_types_and_is_announced() {
    let backend = backends().remove(0);
    let lab = DvLab::new(
        backend,
        &[(
            "HALLMARK_PROFILES__DEVICE",
            r#"{ base = "server-client", max_validity_days = 30, key_types = ["p256"], description = "Devices on the floor" }"#.into(),
        )],
    )
    .await;
    let directory: serde_json::Value = lab
        .running
        .client()
        .get(format!("{}/acme/directory", lab.running.https_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        directory["meta"]["profiles"]["device"],
        "Devices on the floor"
    );

    let key = lab.account("floor", Role::Requester).await;
    let pem = csr(lab.ca.dir.path(), "d", "web.internal", "DNS:web.internal");
    let (status, order) = lab
        .post(
            &key,
            "/orders",
            json!({"csr": pem, "validation": "dv", "profile": "device"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert_eq!(order["profile"], "device");
    assert_eq!(order["validity_days"], 30);
    lab.answer_http01(&key, &order).await;
    let done = lab.settle(&key, order["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "valid", "{done}");
    let (_, cert) = lab
        .get(
            &key,
            &format!(
                "/certificates/{}",
                done["certificate_serial"].as_str().unwrap()
            ),
        )
        .await;
    let pem = cert["certificate_pem"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let der = hallmark::pki::pem_decode_all(&pem, "CERTIFICATE").remove(0);
    let (_, parsed) = X509Certificate::from_der(&der).unwrap();
    let eku = parsed.extended_key_usage().unwrap().unwrap().value;
    assert!(
        eku.server_auth && eku.client_auth,
        "the server-client shape"
    );

    // Its own key types: an RSA key is refused for it, not for `server`.
    let rsa = String::from_utf8(openssl_csr(
        lab.ca.dir.path(),
        "rsa",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        "/CN=web.internal",
        Some("DNS:web.internal"),
    ))
    .unwrap();
    let (status, p) = lab
        .post(
            &key,
            "/orders",
            json!({"csr": rsa, "validation": "dv", "profile": "device"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert_eq!(p["type"], "urn:ietf:params:acme:error:badPublicKey", "{p}");
    let (status, p) = lab
        .post(
            &key,
            "/orders",
            json!({"csr": rsa, "validation": "dv", "profile": "server"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_profile_chooses_its_usages_and_leaves_out_revocation_information() {
    let backend = backends().remove(0);
    let lab = DvLab::new(
        backend,
        &[(
            "HALLMARK_PROFILES__MTLS",
            r#"{ extended_key_usages = ["clientAuth"], key_usages = ["digitalSignature", "keyAgreement"], revocation_info = false }"#.into(),
        )],
    )
    .await;
    let dir = lab.ca.dir.path().to_owned();
    std::fs::write(dir.join("root.pem"), &lab.running.root_pem).unwrap();
    std::fs::write(
        dir.join("chain.pem"),
        lab.running.authority.issuer().certificate().pem(),
    )
    .unwrap();
    let key = lab.account("mesh", Role::Requester).await;

    // One issuance per key type under the profile: its certificate, parsed.
    let issue = |pem: String, file: &'static str| {
        let lab = &lab;
        let key = &key;
        let dir = dir.clone();
        async move {
            let (status, order) = lab
                .post(
                    key,
                    "/orders",
                    json!({"csr": pem, "validation": "dv", "profile": "mtls"}),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{order}");
            assert_eq!(
                order["validity_days"], 7,
                "no revocation information: 7 days"
            );
            if order["status"] != "valid" {
                lab.answer_http01(key, &order).await;
            }
            let done = lab.settle(key, order["id"].as_str().unwrap()).await;
            assert_eq!(done["status"], "valid", "{done}");
            let serial = done["certificate_serial"].as_str().unwrap();
            let (_, cert) = lab.get(key, &format!("/certificates/{serial}")).await;
            assert_eq!(cert["profile"], "mtls", "the configured name is recorded");
            let pem = cert["certificate_pem"].as_str().unwrap().to_owned();
            std::fs::write(dir.join(file), &pem).unwrap();
            hallmark::pki::pem_decode_all(&pem, "CERTIFICATE").remove(0)
        }
    };

    let ec = issue(
        csr(&dir, "m", "web.internal", "DNS:web.internal"),
        "mtls.pem",
    )
    .await;
    let (_, cert) = X509Certificate::from_der(&ec).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(
        eku.client_auth && !eku.server_auth,
        "clientAuth only: {eku:?}"
    );
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(
        ku.digital_signature() && ku.key_agreement() && !ku.key_encipherment(),
        "{ku}"
    );
    let oids: Vec<String> = cert
        .extensions()
        .iter()
        .map(|e| e.oid.to_id_string())
        .collect();
    assert!(oids.contains(&"2.5.29.56".into()), "noRevAvail: {oids:?}");
    assert!(!oids.contains(&"2.5.29.31".into()), "no CRL DP: {oids:?}");
    let text = openssl(&dir, &["x509", "-in", "mtls.pem", "-noout", "-text"]);
    assert!(!text.contains("OCSP - URI"), "{text}");
    // A TLS client certificate, not a server one, to openssl.
    let verify = |purpose: &str| {
        std::process::Command::new("openssl")
            .args(["verify", "-CAfile", "root.pem", "-untrusted", "chain.pem"])
            .args(["-purpose", purpose, "mtls.pem"])
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    assert!(verify("sslclient").status.success());
    let server = verify("sslserver");
    assert!(
        !server.status.success(),
        "{}",
        String::from_utf8_lossy(&server.stdout)
    );
    if let Some((_, out)) = pkilint(
        &dir,
        "lint_pkix_cert",
        &["lint", "-s", "WARNING", "mtls.pem"],
    ) {
        assert!(out.trim().is_empty(), "pkilint:\n{out}");
    }

    // keyAgreement is for EC keys: an RSA key gets digitalSignature alone
    // (the profile asked for no keyEncipherment).
    let rsa = String::from_utf8(openssl_csr(
        &dir,
        "rsa",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        "/CN=web.internal",
        Some("DNS:web.internal"),
    ))
    .unwrap();
    let der = issue(rsa, "mtls-rsa.pem").await;
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(
        ku.digital_signature() && !ku.key_agreement() && !ku.key_encipherment(),
        "{ku}"
    );
    lab.finish().await;
}
