//! ACME against real clients: certbot (PyPI) gets, renews and revokes a
//! certificate for two names by http-01 through its own standalone server,
//! with hallmark's validator resolving the names through a test DNS server.
//! On SQLite and PostgreSQL; skipped without certbot except under CI.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use x509_parser::prelude::*;

use crate::support::dv::DvLab;
use crate::support::*;

fn serial_of(pem: &str) -> String {
    let der = hallmark::pki::pem_decode_all(pem, "CERTIFICATE").remove(0);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    hex::encode(cert.raw_serial())
}

/// Runs certbot with its state under `dir/cb` against `server`, trusting
/// `dir/root.pem`; returns success and everything it printed.
pub async fn run_certbot(dir: PathBuf, server: String, args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("certbot")
            .args(&args)
            .args(["--non-interactive", "--server", &server])
            .args([
                "--config-dir",
                "cb/config",
                "--work-dir",
                "cb/work",
                "--logs-dir",
                "cb/logs",
            ])
            .current_dir(&dir)
            .env("REQUESTS_CA_BUNDLE", dir.join("root.pem"))
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certbot_gets_renews_and_revokes_a_certificate_by_http01() {
    if !tool_present("certbot", "pip install certbot") {
        return;
    }
    for backend in backends() {
        let port = free_port();
        let lab = DvLab::new(
            backend,
            &[
                ("HALLMARK_VALIDATION__HTTP_PORT", port.to_string()),
                ("HALLMARK_CRL__DEBOUNCE_SECS", "0".into()),
            ],
        )
        .await;
        let dir = lab.ca.dir.path().to_owned();
        std::fs::write(dir.join("root.pem"), &lab.running.root_pem).unwrap();
        let server = format!("{}/acme/directory", lab.running.https_url);
        let certbot = |args: Vec<String>| run_certbot(dir.clone(), server.clone(), args);
        let p = port.to_string();
        let (ok, out) = certbot(
            [
                "certonly",
                "--standalone",
                "--http-01-port",
                &p,
                "-d",
                "web.internal",
                "-d",
                "api.internal",
                "--agree-tos",
                "--register-unsafely-without-email",
            ]
            .map(String::from)
            .to_vec(),
        )
        .await;
        assert!(ok, "certbot certonly failed:\n{out}");
        let live = lab.ca.dir.path().join("cb/config/live/web.internal");
        let cert = std::fs::read_to_string(live.join("cert.pem")).unwrap();
        let chain = std::fs::read_to_string(live.join("chain.pem")).unwrap();
        assert_openssl_verifies(lab.ca.dir.path(), &lab.running.root_pem, &chain, &cert);
        let text = openssl(
            lab.ca.dir.path(),
            &[
                "x509",
                "-in",
                "leaf.pem",
                "-noout",
                "-ext",
                "subjectAltName",
            ],
        );
        assert!(
            text.contains("DNS:web.internal") && text.contains("DNS:api.internal"),
            "{text}"
        );
        let first = serial_of(&cert);

        let (ok, out) = certbot(
            [
                "renew",
                "--force-renewal",
                "--no-random-sleep-on-renew",
                "--http-01-port",
                &p,
            ]
            .map(String::from)
            .to_vec(),
        )
        .await;
        assert!(ok, "certbot renew failed:\n{out}");
        let renewed = std::fs::read_to_string(live.join("cert.pem")).unwrap();
        let second = serial_of(&renewed);
        assert_ne!(first, second, "renewal issued a new certificate");

        let cert_path = live.join("cert.pem").to_string_lossy().into_owned();
        let (ok, out) = certbot(
            [
                "revoke",
                "--cert-path",
                &cert_path,
                "--reason",
                "keycompromise",
                "--no-delete-after-revoke",
            ]
            .map(String::from)
            .to_vec(),
        )
        .await;
        assert!(ok, "certbot revoke failed:\n{out}");
        let stored = lab
            .running
            .authority
            .store()
            .certificate(&second.parse().unwrap())
            .await
            .unwrap();
        assert_eq!(stored.revocation_reason, Some(1));
        // The next CRL lists it.
        let issuer = lab.running.authority.issuer().certificate().id().to_owned();
        let url = format!("{}/crl/{issuer}.crl", lab.running.http_url);
        let mut listed = false;
        for _ in 0..100 {
            let r = reqwest::get(&url).await.unwrap();
            if r.status() == StatusCode::OK {
                let der = r.bytes().await.unwrap();
                let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
                if crl
                    .iter_revoked_certificates()
                    .any(|e| hex::encode(e.raw_serial()) == second)
                {
                    listed = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(listed, "the revoked certificate is in the next CRL");
        // Every step is in the audit chain, under the ACME account.
        let audit = lab.audit_log().await;
        assert!(audit.iter().any(|r| r.action == "acme.account.create"));
        assert!(audit
            .iter()
            .any(|r| r.action == "certificate.revoke" && r.actor.starts_with("acme:")));
        hallmark::workflow::audit::verify(lab.running.authority.store().as_ref())
            .await
            .unwrap();
        lab.finish().await;
    }
}

/// With `acme.eab_required`, certbot without a binding is refused with
/// `externalAccountRequired`; with `--eab-kid/--eab-hmac-key` from `hallmark
/// account eab-key` it registers and gets a certificate owned by that
/// account, while the server refuses every third nonce and delays each
/// validation up to 2 s (the test-only `danger_acme_chaos`), so certbot
/// must retry `badNonce` and wait for slow validations. Then renewal
/// information (RFC 9773) makes a plain `certbot renew` replace the
/// certificate once it is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certbot_binds_an_external_account_and_survives_bad_nonces_and_slow_validation() {
    if !tool_present("certbot", "pip install certbot") {
        return;
    }
    for backend in backends() {
        let port = free_port();
        let lab = DvLab::with_chaos(
            backend,
            &[
                ("HALLMARK_VALIDATION__HTTP_PORT", port.to_string()),
                ("HALLMARK_ACME__EAB_REQUIRED", "true".into()),
            ],
            Some(hallmark::config::DangerAcmeChaos {
                reject_every_nth_nonce: 3,
                max_validation_delay_ms: 2000,
            }),
        )
        .await;
        let dir = lab.ca.dir.path().to_owned();
        std::fs::write(dir.join("root.pem"), &lab.running.root_pem).unwrap();
        let server = format!("{}/acme/directory", lab.running.https_url);
        let certbot = |args: &[&str]| {
            run_certbot(
                dir.clone(),
                server.clone(),
                args.iter().map(|a| a.to_string()).collect(),
            )
        };
        let p = port.to_string();
        let get = [
            "certonly",
            "--standalone",
            "--http-01-port",
            &p,
            "-d",
            "web.internal",
            "-d",
            "api.internal",
            "--agree-tos",
            "--register-unsafely-without-email",
        ];
        let (ok, out) = certbot(&get).await;
        assert!(!ok, "certbot without a binding must fail:\n{out}");
        assert!(
            out.contains("externalAccountRequired") || out.contains("external account"),
            "{out}"
        );

        let store = lab.running.authority.store().clone();
        let team = hallmark::workflow::accounts::create_account(
            store.as_ref(),
            "team",
            hallmark::workflow::accounts::Role::Requester,
            "test",
        )
        .await
        .unwrap();
        let eab =
            hallmark::workflow::accounts::create_eab_key(store.as_ref(), &team.account.id, "test")
                .await
                .unwrap();
        let mut with_eab = get.to_vec();
        // `=`: a base64url key may start with `-`, which argparse would
        // take for an option.
        let hmac = format!("--eab-hmac-key={}", eab.hmac_key.as_str());
        with_eab.extend(["--eab-kid", &eab.kid, &hmac]);
        let (ok, out) = certbot(&with_eab).await;
        assert!(ok, "certbot with a binding failed:\n{out}");
        let live = dir.join("cb/config/live/web.internal");
        let cert = std::fs::read_to_string(live.join("cert.pem")).unwrap();
        let chain = std::fs::read_to_string(live.join("chain.pem")).unwrap();
        assert_openssl_verifies(&dir, &lab.running.root_pem, &chain, &cert);
        let record = store
            .certificate(&serial_of(&cert).parse().unwrap())
            .await
            .unwrap();
        assert_eq!(record.account_id.as_deref(), Some(team.account.id.as_str()));
        let log = std::fs::read_to_string(dir.join("cb/logs/letsencrypt.log")).unwrap_or_default();
        assert!(
            log.contains("badNonce"),
            "certbot met (and retried) refused nonces"
        );

        // Renewal information: once the operator revokes the certificate,
        // the window moves into the past and a plain `certbot renew` (no
        // --force-renewal), which asks ARI, renews it at once.
        let first = serial_of(&cert);
        lab.running
            .authority
            .revoke(
                hallmark::workflow::revocation::Revoker::Operator("operator:test"),
                &first.parse().unwrap(),
                hallmark::workflow::revocation::RevokeRequest {
                    reason: hallmark::pki::crl::RevocationReason::Superseded,
                    invalidity_date: None,
                },
            )
            .await
            .unwrap();
        let (ok, out) =
            certbot(&["renew", "--no-random-sleep-on-renew", "--http-01-port", &p]).await;
        assert!(ok, "certbot renew failed:\n{out}");
        let renewed = std::fs::read_to_string(live.join("cert.pem")).unwrap();
        assert_ne!(
            serial_of(&renewed),
            first,
            "certbot renewed because ARI said so:\n{out}"
        );
        lab.finish().await;
    }
}
