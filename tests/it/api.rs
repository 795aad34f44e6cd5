//! REST API v1: accounts and bearer authentication.

use reqwest::StatusCode;
use sha2::{Digest, Sha256};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_key_is_shown_once_stored_as_a_hash_and_authenticates_api_calls() {
    for backend in backends() {
        let mut ca = TestCa::new(backend).await;
        let running = ca.start().await;

        // The operator creates an account with the real binary.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hallmark"))
            .args([
                "--data-dir",
                ca.data_dir().to_str().unwrap(),
                "account",
                "create",
                "team a",
                "--role",
                "reviewer",
            ])
            .env("DATABASE_URL", &ca.db.url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let id = created["id"].as_str().unwrap().to_owned();
        let key = created["api_key"].as_str().unwrap().to_owned();
        assert!(key.starts_with("hm_") && key.len() == 46, "{key}");
        assert_eq!(created["role"], "reviewer");

        let client = running.client();
        let url = format!("{}/api/v1/account", running.https_url);
        let r = client.get(&url).bearer_auth(&key).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["cache-control"], "no-store");
        let me: serde_json::Value = r.json().await.unwrap();
        assert_eq!(me["id"], id.as_str());
        assert_eq!(me["name"], "team a");
        assert_eq!(me["role"], "reviewer");

        // Every way of not presenting a valid key is a 401 problem.
        let mut wrong = key.clone();
        wrong.replace_range(10..11, if &key[10..11] == "A" { "B" } else { "A" });
        for (what, header) in [
            ("missing", None),
            ("wrong key", Some(format!("Bearer {wrong}"))),
            ("not a hallmark key", Some("Bearer abc".to_string())),
            ("basic auth", Some("Basic dXNlcjpwYXNz".to_string())),
        ] {
            let mut req = client.get(&url);
            if let Some(h) = header {
                req = req.header("authorization", h);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
            assert_eq!(
                r.headers()["www-authenticate"],
                "Bearer realm=\"hallmark\"",
                "{what}"
            );
            assert_eq!(
                r.headers()["content-type"],
                "application/problem+json",
                "{what}"
            );
            let p: serde_json::Value = r.json().await.unwrap();
            assert_eq!(
                p["type"], "urn:ietf:params:acme:error:unauthorized",
                "{what}"
            );
            assert!(!p["detail"].as_str().unwrap().is_empty(), "{what}");
        }

        // Only the SHA-256 of the key is stored; the creation is audited.
        let expected_hash = hex::encode(Sha256::digest(key.as_bytes()));
        let stored = stored_key_hashes(&ca.db).await;
        assert_eq!(stored, vec![expected_hash]);
        assert_eq!(created["key_id"].as_str().unwrap().len(), 4 + 16);
        let audit = running.authority.store().audit_page(0, 100).await.unwrap();
        assert!(audit.iter().any(|r| r.action == "account.create"
            && r.subject == id
            && r.actor.starts_with("operator:")));

        // Rotation by the CLI (another process, as another instance would
        // be): the old key stops working within the bound the server keeps
        // found keys for, the new one works at once.
        let data_dir = ca.data_dir();
        let cli = |args: &[&str]| {
            std::process::Command::new(env!("CARGO_BIN_EXE_hallmark"))
                .arg("--data-dir")
                .arg(&data_dir)
                .arg("account")
                .args(args)
                .env("DATABASE_URL", &ca.db.url)
                .output()
                .unwrap()
        };
        let out = cli(&["rotate-key", &id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rotated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let new_key = rotated["api_key"].as_str().unwrap().to_owned();
        assert_eq!(
            status_once_refused(&client, &url, &key).await,
            StatusCode::UNAUTHORIZED,
            "the rotated-out key is refused"
        );
        let r = client.get(&url).bearer_auth(&new_key).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);

        // Revocation of one key, and a clear error for revoking it again.
        let key_id = rotated["key_id"].as_str().unwrap();
        let out = cli(&["revoke-key", key_id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            status_once_refused(&client, &url, &new_key).await,
            StatusCode::UNAUTHORIZED,
            "a revoked key is refused"
        );
        let out = cli(&["revoke-key", key_id]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("there is no active API key"));
        let out = cli(&["rotate-key", "acct_nope"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("there is no account \"acct_nope\""));

        // Bad input to the CLI: a clear sentence and a non-zero exit.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hallmark"))
            .args([
                "--data-dir",
                ca.data_dir().to_str().unwrap(),
                "account",
                "create",
                " ",
            ])
            .env("DATABASE_URL", &ca.db.url)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr)
            .contains("account name is 1 to 100 printable characters"));

        running.stop().await;
        ca.cleanup().await;
    }
}

/// GETs `url` with `key` until it is refused, for as long as the server
/// may keep a key changed by another process (`store::recent::FRESH_FOR`);
/// the last status.
async fn status_once_refused(client: &reqwest::Client, url: &str, key: &str) -> StatusCode {
    let changed = std::time::Instant::now();
    loop {
        let status = client
            .get(url)
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .status();
        let waited = changed.elapsed();
        if status == StatusCode::UNAUTHORIZED
            || waited > hallmark::store::recent::FRESH_FOR + std::time::Duration::from_millis(500)
        {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn stored_key_hashes(db: &TestDb) -> Vec<String> {
    use sqlx::Connection;
    let sql = "SELECT key_hash FROM api_keys";
    let rows: Vec<Vec<u8>> = match db.backend {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar(sql).fetch_all(&mut c).await.unwrap()
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar(sql).fetch_all(&mut c).await.unwrap()
        }
    };
    rows.into_iter().map(hex::encode).collect()
}
