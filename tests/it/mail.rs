//! Expiry mail (`[smtp]`) on both stores, to a real SMTP server on
//! loopback (Python's aiosmtpd) that requires STARTTLS — with a
//! certificate from this CA — and AUTH, and refuses the first message once:
//! each unrenewed certificate near its end is mailed once, to its
//! account's address or its ACME account's contacts, and `smtp.also_to`,
//! retried after the refusal, and
//! every attempt is in the delivery log.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use hallmark::pki::{Identifier, KeySigner, KeyType, PrivateKey};
use hallmark::workflow::accounts::{self, Role};
use hallmark::workflow::SignOptions;
use serde_json::Value;

use crate::support::pki::*;
use crate::support::*;

const RECEIVER: &str = r#"
import json, os, ssl, sys
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, cert, key, out, user, password = sys.argv[1:7]

class Handler:
    def __init__(self):
        self.seen = 0
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith('gone@'):
            return '550 5.1.1 no such mailbox'
        envelope.rcpt_tos.append(address)
        return '250 OK'
    async def handle_DATA(self, server, session, envelope):
        self.seen += 1
        if self.seen == 1:
            return '451 4.3.0 not now, try again later'
        n = len(os.listdir(out))
        path = os.path.join(out, '%d.json' % n)
        with open(path + '.tmp', 'w') as f:
            json.dump({'from': envelope.mail_from, 'to': sorted(envelope.rcpt_tos),
                       'data': envelope.content.decode('utf-8'),
                       'user': session.auth_data.login.decode() if session.auth_data else None}, f)
        os.rename(path + '.tmp', path)
        return '250 2.0.0 queued'

def check(server, session, envelope, mechanism, auth_data):
    ok = (isinstance(auth_data, LoginPassword) and auth_data.login == user.encode()
          and auth_data.password == password.encode())
    return AuthResult(success=ok, auth_data=auth_data)

tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
tls.load_cert_chain(cert, key)
c = Controller(Handler(), hostname='127.0.0.1', port=int(port), tls_context=tls,
               require_starttls=True, authenticator=check, auth_required=True)
c.start()
print('ready', flush=True)
sys.stdin.read()
c.stop()
"#;

fn aiosmtpd_present() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but aiosmtpd is not installed (pip install aiosmtpd)");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_certificate_is_mailed_to_its_account_over_starttls_and_retried() {
    if !aiosmtpd_present() {
        eprintln!("note: aiosmtpd is not installed; skipping");
        return;
    }
    for backend in backends() {
        let port = free_port();
        let outer = tempfile::tempdir().unwrap();
        let o = outer.path();
        std::fs::write(o.join("smtp-password"), "mail-s3cret\n").unwrap();
        let mut ca = TestCa::with_env(
            backend,
            &[
                ("HALLMARK_SMTP__HOST", "localhost".into()),
                ("HALLMARK_SMTP__PORT", port.to_string()),
                ("HALLMARK_SMTP__FROM", "ca@corp.internal".into()),
                ("HALLMARK_SMTP__USERNAME", "hallmark".into()),
                (
                    "HALLMARK_SMTP__PASSWORD_FILE",
                    o.join("smtp-password").display().to_string(),
                ),
                // A stale address the server refuses does not keep the
                // others from their notice.
                (
                    "HALLMARK_SMTP__ALSO_TO",
                    "[\"pki@corp.internal\", \"gone@corp.internal\"]".into(),
                ),
            ],
        )
        .await;
        let dir = ca.dir.path().to_path_buf();
        let authority = ca.authority().await;

        // The mail server's certificate comes from this CA.
        let key = PrivateKey::generate(KeyType::P256).unwrap();
        let signed = authority
            .issue_service_certificate(
                key.public_key_spki(),
                &[Identifier::Dns("localhost".into())],
                30,
            )
            .await
            .unwrap();
        std::fs::write(o.join("smtp.crt"), signed.chain_pem()).unwrap();
        std::fs::write(o.join("smtp.key"), key.to_pkcs8_pem().unwrap().as_bytes()).unwrap();
        std::fs::create_dir(o.join("inbox")).unwrap();
        std::fs::write(o.join("receiver.py"), RECEIVER).unwrap();
        let mut receiver = Command::new("python3")
            .arg(o.join("receiver.py"))
            .args([
                port.to_string().as_str(),
                o.join("smtp.crt").to_str().unwrap(),
                o.join("smtp.key").to_str().unwrap(),
                o.join("inbox").to_str().unwrap(),
                "hallmark",
                "mail-s3cret",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        BufReader::new(receiver.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready");

        // Two certificates near their end: one of an account with an
        // address, one of an account without; and a third far from it.
        let (team, _) = api_key(&authority, "team", Role::Requester).await;
        let (quiet, _) = api_key(&authority, "quiet", Role::Requester).await;
        let (_, admin_key) = api_key(&authority, "admin", Role::Admin).await;
        let bad = accounts::set_email(
            authority.store().as_ref(),
            &team,
            Some("not an address"),
            "test",
        )
        .await
        .unwrap_err();
        assert!(bad.to_string().contains("not an email address"), "{bad}");
        accounts::set_email(
            authority.store().as_ref(),
            &team,
            Some("team@corp.internal"),
            "test",
        )
        .await
        .unwrap();
        let mut serials = Vec::new();
        for (name, account, days) in [
            ("soon.internal", &team, 3),
            ("quiet.internal", &quiet, 3),
            ("later.internal", &team, 60),
        ] {
            let csr = openssl_csr(
                &dir,
                name,
                P256,
                &format!("/CN={name}"),
                Some(&format!("DNS:{name}")),
            );
            let s = authority
                .sign_csr(
                    &csr,
                    SignOptions {
                        validity_days: Some(days),
                        account_id: Some(account.clone()),
                        ..SignOptions::default()
                    },
                    "test",
                )
                .await
                .unwrap();
            serials.push(s.certificate.serial.to_hex());
        }
        drop(authority);
        // The second came through ACME: its ACME account's mailto:
        // contacts get the notice (other contact kinds are not mail).
        ca.db
            .execute(&format!(
                "INSERT INTO acme_accounts (id, account_id, jwk_thumbprint, jwk, contact, status, created_at) \
                 VALUES ('acme1', '{quiet}', 'tp1', '{{}}', '[\"mailto:acme-ops@corp.internal?subject=certs\", \"tel:+15550100\"]', 'valid', 0)"
            ))
            .await;
        ca.db
            .execute(&format!(
                "INSERT INTO orders (id, account_id, status, validation, source, profile, created_at, updated_at, expires_at, acme_account_id) \
                 VALUES ('ord1', '{quiet}', 'valid', 'dv', 'acme', 'server', 0, 0, 0, 'acme1')"
            ))
            .await;
        ca.db
            .execute(&format!(
                "UPDATE certificates SET order_id = 'ord1' WHERE serial = '{}'",
                serials[1]
            ))
            .await;

        let running = ca.start().await;
        let inbox = o.join("inbox");
        let mut mails: Vec<Value> = Vec::new();
        for _ in 0..300 {
            let mut names: Vec<_> = std::fs::read_dir(&inbox)
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            names.sort();
            if names.len() >= 2 {
                mails = names
                    .iter()
                    .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
                    .collect();
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(mails.len(), 2, "two notices within 30 s");
        // A moment more: nothing else arrives (not the 60-day one).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(std::fs::read_dir(&inbox).unwrap().count(), 2);

        let about = |serial: &str| {
            mails
                .iter()
                .find(|m| m["data"].as_str().unwrap().contains(serial))
                .unwrap_or_else(|| panic!("no mail about {serial}: {mails:?}"))
        };
        let soon = about(&serials[0]);
        assert_eq!(soon["from"], "ca@corp.internal");
        assert_eq!(
            soon["user"], "hallmark",
            "AUTH PLAIN with the configured user"
        );
        assert_eq!(
            soon["to"],
            serde_json::json!(["pki@corp.internal", "team@corp.internal"])
        );
        let data = soon["data"].as_str().unwrap();
        assert!(
            data.contains("Subject: Certificate for soon.internal expires on "),
            "{data}"
        );
        assert!(data.contains("Auto-Submitted: auto-generated"), "{data}");
        assert!(
            data.contains(&format!(
                "{}/api/v1/certificates/{}",
                running.https_url, serials[0]
            )),
            "{data}"
        );
        let acme_mail = about(&serials[1]);
        assert_eq!(
            acme_mail["to"],
            serde_json::json!(["acme-ops@corp.internal", "pki@corp.internal"])
        );

        // The delivery log holds the refused attempt and the retry.
        let log: Value = running
            .client()
            .get(format!(
                "{}/api/v1/webhooks/deliveries?limit=100",
                running.https_url
            ))
            .bearer_auth(&admin_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let rows: Vec<&Value> = log["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["url"] == format!("smtp://localhost:{port}"))
            .collect();
        let failed: Vec<&&Value> = rows.iter().filter(|r| r["delivered"] == false).collect();
        assert_eq!(failed.len(), 1, "{log}");
        assert!(
            failed[0]["error"].as_str().unwrap().contains("451"),
            "{log}"
        );
        assert_eq!(
            rows.iter().filter(|r| r["delivered"] == true).count(),
            2,
            "{log}"
        );

        running.stop().await;
        let _ = receiver.stdin.take().unwrap().write_all(b"");
        let _ = receiver.kill();
        let _ = receiver.wait();
        ca.cleanup().await;
    }
}
