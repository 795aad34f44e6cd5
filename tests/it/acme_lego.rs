//! ACME against lego (Debian's package): http-01 and tls-alpn-01 through
//! lego's own servers, and dns-01 for a wildcard through lego's `exec`
//! provider, whose script hands each TXT record to this test, which puts it
//! into the test DNS server the CA resolves with; all while the server
//! refuses a share of nonces and delays validations. SQLite and PostgreSQL;
//! skipped without lego except under CI.

use std::process::Command;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::dv::DvLab;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lego_gets_certificates_by_http01_tls_alpn01_and_dns01_with_a_wildcard() {
    if !tool_present("lego", "apt-get install lego") {
        return;
    }
    for backend in backends() {
        let (http_port, alpn_port) = (free_port(), free_port());
        // The server refuses every fourth nonce and delays validations up
        // to 1.5 s (test-only), so lego must retry badNonce and poll.
        let lab = DvLab::with_chaos(
            backend,
            &[
                ("HALLMARK_VALIDATION__HTTP_PORT", http_port.to_string()),
                ("HALLMARK_VALIDATION__TLS_ALPN_PORT", alpn_port.to_string()),
                // Every run proves its names afresh.
                ("HALLMARK_ORDERS__REUSE_DAYS", "0".into()),
            ],
            Some(hallmark::config::DangerAcmeChaos {
                reject_every_nth_nonce: 4,
                max_validation_delay_ms: 1500,
            }),
        )
        .await;
        let dir = lab.ca.dir.path().to_owned();
        std::fs::write(dir.join("root.pem"), &lab.running.root_pem).unwrap();

        // The exec provider's script sends "present <fqdn> <value>" here.
        let records = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let records_port = records.local_addr().unwrap().port();
        let dns = lab.dns.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = records.accept().await {
                let dns = dns.clone();
                tokio::spawn(async move {
                    let (r, mut w) = sock.split();
                    let mut line = String::new();
                    BufReader::new(r).read_line(&mut line).await.unwrap();
                    let parts: Vec<&str> = line.split_whitespace().collect();
                    if let ["present", fqdn, value] = parts.as_slice() {
                        dns.add_txt(fqdn.trim_end_matches('.'), value).await;
                    }
                    w.write_all(b"ok\n").await.unwrap();
                });
            }
        });
        let script = dir.join("dns-hook.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/bash\nexec 3<>/dev/tcp/127.0.0.1/{records_port}\necho \"$1 $2 $3\" >&3\nread -r answer <&3\n"
            ),
        )
        .unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }

        let server = format!("{}/acme/directory", lab.running.https_url);
        let runs: Vec<(&str, Vec<String>, Vec<&str>)> = vec![
            (
                "http",
                vec![
                    "--http".into(),
                    "--http.port".into(),
                    format!("127.0.0.1:{http_port}"),
                ],
                vec!["web.internal", "api.internal"],
            ),
            (
                "tls",
                vec![
                    "--tls".into(),
                    "--tls.port".into(),
                    format!("127.0.0.1:{alpn_port}"),
                ],
                vec!["alpn.internal"],
            ),
            (
                "dns",
                vec![
                    "--dns".into(),
                    "exec".into(),
                    "--dns.resolvers".into(),
                    lab.dns.addr.clone(),
                    "--dns.disable-cp".into(),
                ],
                vec!["*.apps.internal", "db.internal"],
            ),
        ];
        for (name, solver, domains) in runs {
            let out = tokio::task::spawn_blocking({
                let dir = dir.clone();
                let server = server.clone();
                let script = script.clone();
                let domains: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
                move || {
                    let mut cmd = Command::new("lego");
                    cmd.args([
                        "--server",
                        &server,
                        "--accept-tos",
                        "--email",
                        "ops@example.internal",
                    ])
                    .args(["--path", &format!("lego-{name}")])
                    .args(&solver);
                    for d in &domains {
                        cmd.args(["--domains", d]);
                    }
                    cmd.arg("run")
                        .current_dir(&dir)
                        .env("LEGO_CA_CERTIFICATES", dir.join("root.pem"))
                        .env("EXEC_PATH", &script)
                        .env("EXEC_PROPAGATION_TIMEOUT", "30")
                        .env("EXEC_POLLING_INTERVAL", "1")
                        .env("EXEC_SEQUENCE_INTERVAL", "1")
                        .output()
                        .unwrap()
                }
            })
            .await
            .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "lego {name} failed:\n{text}");
            let file = domains[0].replace('*', "_");
            let pem =
                std::fs::read_to_string(dir.join(format!("lego-{name}/certificates/{file}.crt")))
                    .unwrap();
            let mut blocks = hallmark::pki::pem_decode_all(&pem, "CERTIFICATE");
            assert_eq!(blocks.len(), 2, "leaf and issuing CA");
            let issuer = hallmark::pki::pem_encode("CERTIFICATE", &blocks.pop().unwrap());
            let leaf = hallmark::pki::pem_encode("CERTIFICATE", &blocks.pop().unwrap());
            let sub = dir.join(name);
            std::fs::create_dir_all(&sub).unwrap();
            assert_openssl_verifies(&sub, &lab.running.root_pem, &issuer, &leaf);
            let san = openssl(
                &sub,
                &[
                    "x509",
                    "-in",
                    "leaf.pem",
                    "-noout",
                    "-ext",
                    "subjectAltName",
                ],
            );
            for d in &domains {
                assert!(san.contains(&format!("DNS:{d}")), "{name}: {san}");
            }
        }
        lab.finish().await;
    }
}
