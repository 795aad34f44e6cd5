//! Logs carry no secret: the real binary, at debug level with JSON logs,
//! through a whole life — init, an account and its API key, an EAB key,
//! dashboard sign-in and password change, REST, ACME with EAB, revocation
//! — and nothing it printed or logged (beyond the one line of a command
//! whose job is to print a new secret) holds a key, password, passphrase
//! or token.

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::acme::Client;
use crate::support::dns::{self, Entry};
use crate::support::dv::Http01Server;
use crate::support::*;

const NEW_PASSWORD: &str = "a brand new dashboard password";

/// The value of `name` in a response's Set-Cookie headers.
fn cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers().get_all("set-cookie").iter().find_map(|v| {
        let v = v.to_str().ok()?;
        let (pair, _) = v.split_once(';')?;
        let (k, val) = pair.split_once('=')?;
        (k == name && !val.is_empty()).then(|| val.to_owned())
    })
}

/// The hidden CSRF input of a page.
fn csrf(body: &str) -> String {
    let at = body.find("name=\"csrf\" value=\"").expect("a form");
    let rest = &body[at + 19..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// Posts the sign-in form (with the login cookie and token it needs).
async fn sign_in(
    client: &reqwest::Client,
    base: &str,
    user: &str,
    password: &str,
) -> reqwest::Response {
    let login = client
        .get(format!("{base}/admin/login"))
        .send()
        .await
        .unwrap();
    let login_cookie = cookie(&login, "__Host-hallmark_login").unwrap_or_default();
    let token = csrf(&login.text().await.unwrap());
    client
        .post(format!("{base}/admin/login"))
        .header("cookie", format!("__Host-hallmark_login={login_cookie}"))
        .form(&[
            ("csrf", token.as_str()),
            ("username", user),
            ("password", password),
        ])
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_life_at_debug_level_logs_no_secret() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let db = TestDb::new(backend, d).await;
        // A database password that must never be printed (PostgreSQL's
        // trust authentication ignores it).
        let db_secret = "db-pass-Zq8w3";
        let database_url = if db.url.starts_with("postgres://postgres@") {
            db.url.replacen(
                "postgres://postgres@",
                &format!("postgres://postgres:{db_secret}@"),
                1,
            )
        } else {
            db.url.clone()
        };
        let http01 = Http01Server::start().await;
        let dns = dns::start(vec![Entry::A("life", "127.0.0.1".parse().unwrap())]).await;
        let passphrase_file = d.join("root-passphrase");
        std::fs::write(&passphrase_file, format!("{PASSPHRASE}\n")).unwrap();
        let password_file = d.join("admin-password");
        let (https, http) = (free_port(), free_port());
        let env: Vec<(String, String)> = [
            (
                "HALLMARK_ROOT_PASSPHRASE_FILE",
                passphrase_file.display().to_string(),
            ),
            ("DATABASE_URL", database_url.clone()),
            (
                "HALLMARK_SERVER__HTTPS_LISTEN",
                format!("127.0.0.1:{https}"),
            ),
            ("HALLMARK_SERVER__HTTP_LISTEN", format!("127.0.0.1:{http}")),
            (
                "HALLMARK_SERVER__INITIAL_PASSWORD_FILE",
                password_file.display().to_string(),
            ),
            ("HALLMARK_VALIDATION__DNS_RESOLVER", dns.clone()),
            ("HALLMARK_VALIDATION__HTTP_PORT", http01.port.to_string()),
            ("HALLMARK_ACME__EAB_REQUIRED", "true".into()),
            ("HALLMARK_CRL__DEBOUNCE_SECS", "0".into()),
            ("RUST_LOG", "debug".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let mut printed = String::new();
        let cli = |args: &[&str], printed: &mut String| -> String {
            let out = Command::new(env!("CARGO_BIN_EXE_hallmark"))
                .args(["--log-format", "json"])
                .args(args)
                .current_dir(d)
                .env_remove("DATABASE_URL")
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(out.status.success(), "{args:?}: {out:?}");
            printed.push_str(&String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let out = cli(&["init"], &mut printed);
        printed.push_str(&out);
        // These two print a new secret on stdout by design: their stdout
        // is read, not scanned; their logs are.
        let account: Value = serde_json::from_str(&cli(
            &["account", "create", "team", "--role", "admin"],
            &mut printed,
        ))
        .unwrap();
        let api_key = account["api_key"].as_str().unwrap().to_owned();
        let account_id = account["id"].as_str().unwrap().to_owned();
        let eab: Value =
            serde_json::from_str(&cli(&["account", "eab-key", &account_id], &mut printed)).unwrap();
        let eab_kid = eab["kid"].as_str().unwrap().to_owned();
        let eab_hmac = eab["hmac_key"].as_str().unwrap().to_owned();

        let log_path = d.join("serve.log");
        let mut serve = Command::new(env!("CARGO_BIN_EXE_hallmark"))
            .args(["--log-format", "json", "serve"])
            .current_dir(d)
            .env_remove("DATABASE_URL")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(d.join("serve.out")).unwrap())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap();
        let plain = reqwest::Client::new();
        let mut ready = false;
        for _ in 0..300 {
            if let Ok(r) = plain
                .get(format!("http://127.0.0.1:{http}/readyz"))
                .send()
                .await
            {
                if r.status() == StatusCode::OK {
                    ready = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ready, "serve became ready");
        let root = std::fs::read(d.join("hallmark-data/ca/root.crt.pem")).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&root).unwrap())
            .tls_built_in_root_certs(false)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let base = format!("https://localhost:{https}");

        // Dashboard: sign in with the one-time password, choose a new one.
        let initial = std::fs::read_to_string(&password_file)
            .unwrap()
            .trim()
            .to_owned();
        let r = sign_in(&client, &base, "admin", &initial).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let session = cookie(&r, "__Host-hallmark_session").expect("a session cookie");
        let page = client
            .get(format!("{base}/admin/password"))
            .header("cookie", format!("__Host-hallmark_session={session}"))
            .send()
            .await
            .unwrap();
        let token = csrf(&page.text().await.unwrap());
        let r = client
            .post(format!("{base}/admin/password"))
            .header("cookie", format!("__Host-hallmark_session={session}"))
            .form(&[
                ("csrf", token.as_str()),
                ("current_password", &initial),
                ("new_password", NEW_PASSWORD),
                ("confirm", NEW_PASSWORD),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "password changed");
        // And a wrong password, which is logged as a failure.
        let wrong = "not-the-password-Kx7";
        sign_in(&client, &base, "admin", wrong).await;

        // REST with the API key, and a bad one.
        let r = client
            .get(format!("{base}/api/v1/account"))
            .bearer_auth(&api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let bad_key = format!("{api_key}x");
        client
            .get(format!("{base}/api/v1/account"))
            .bearer_auth(&bad_key)
            .send()
            .await
            .unwrap();

        // ACME with the EAB key: register, issue by http-01, revoke.
        let mut acme = Client::with(client.clone(), format!("{base}/acme"));
        let hmac = URL_SAFE_NO_PAD.decode(&eab_hmac).unwrap();
        let binding = crate::support::eab::binding(
            &eab_kid,
            &hmac,
            &format!("{base}/acme/new-account"),
            &acme.jwk(),
        );
        let a = acme
            .register_with(json!({"termsOfServiceAgreed": true, "externalAccountBinding": binding}))
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        let publish = |token: &str, body: &str| {
            http01.publish(&format!("/.well-known/acme-challenge/{token}"), body)
        };
        let pem = acme
            .issue(&["life.internal"], json!({}), &publish)
            .await
            .unwrap_or_else(|a| panic!("{}", a.body));
        let der = hallmark::pki::pem_decode_all(&pem, "CERTIFICATE").remove(0);
        let r = acme
            .post(
                &format!("{base}/acme/revoke-cert"),
                Some(&json!({"certificate": URL_SAFE_NO_PAD.encode(&der), "reason": 4})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);

        Command::new("kill")
            .args(["-TERM", &serve.id().to_string()])
            .status()
            .unwrap();
        assert!(serve.wait().unwrap().success());
        printed.push_str(&std::fs::read_to_string(d.join("serve.out")).unwrap());
        let logs = std::fs::read_to_string(&log_path).unwrap();
        printed.push_str(&logs);

        // The logs are not empty: debug lines of the flows above are there.
        let lines = logs.lines().count();
        assert!(lines > 20, "{backend:?}: only {lines} log lines");
        for path in [
            "/admin/login",
            "/admin/password",
            "/api/v1/account",
            "/acme/revoke-cert",
        ] {
            assert!(
                logs.contains(path),
                "{backend:?}: the request to {path} is logged"
            );
        }
        let root_key = std::fs::read_to_string(d.join("hallmark-data/ca/root.key.pem")).unwrap();
        let issuing_key =
            std::fs::read_to_string(d.join("hallmark-data/ca/issuing.key.pem")).unwrap();
        let key_body = |pem: &str| pem.lines().nth(1).unwrap_or("").to_owned();
        let secrets = [
            ("root passphrase", PASSPHRASE.to_owned()),
            ("API key", api_key.clone()),
            (
                "API key secret part",
                api_key[api_key.len() - 20..].to_owned(),
            ),
            ("wrong API key", bad_key.clone()),
            ("EAB HMAC key", eab_hmac.clone()),
            ("initial admin password", initial.clone()),
            ("new admin password", NEW_PASSWORD.to_owned()),
            ("wrong password", wrong.to_owned()),
            ("session cookie", session.clone()),
            ("database password", db_secret.to_owned()),
            ("root key", key_body(&root_key)),
            ("issuing key", key_body(&issuing_key)),
        ];
        for (what, secret) in &secrets {
            assert!(secret.len() >= 8, "{what} is long enough to search for");
            assert!(
                !printed.contains(secret.as_str()),
                "{backend:?}: the {what} appears in the output or logs"
            );
        }
        assert!(
            !printed.contains("PRIVATE KEY"),
            "{backend:?}: a PEM key was printed"
        );
        db.cleanup().await;
    }
}
