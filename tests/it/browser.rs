//! The dashboard in real headless Chromium (tests/e2e/dashboard.mjs, with
//! playwright-core from npm and Debian's chromium), on SQLite and
//! PostgreSQL. Skipped without node, the npm package or chromium, except
//! under `CI=true`, where they must be there (`.ci/run` installs them).

use std::path::PathBuf;
use std::process::Command;

use hallmark::workflow::accounts::Role;
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::browser::{ov_order, PASSWORD};
use crate::support::dv::DvLab;
use crate::support::*;

fn e2e_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2e")
}

/// Whether the browser tools are installed; panics under CI if not.
fn tools_present() -> bool {
    let node = Command::new("node").arg("--version").output().is_ok();
    let package = e2e_dir().join("node_modules/playwright-core").exists();
    let chromium = std::path::Path::new("/usr/bin/chromium").exists();
    if node && package && chromium {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but the browser test cannot run: node {node}, playwright-core {package}, chromium {chromium}");
    }
    eprintln!("note: node, tests/e2e/node_modules or /usr/bin/chromium missing; skipping the browser test");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_works_the_dashboard_in_chromium() {
    if !tools_present() {
        return;
    }
    for backend in backends() {
        let lab = DvLab::new(backend, &[("HALLMARK_CRL__DEBOUNCE_SECS", "0".into())]).await;
        let initial = lab.running.admin_password.clone().unwrap();
        let key = lab.account("shop", Role::Requester).await;
        let approve = ov_order(&lab, &key, "Example Shop Ltd").await;
        let reject = ov_order(&lab, &key, "Unverifiable GmbH").await;
        let reject_id = reject.clone();
        let approve_id = approve.clone();
        let evil = "<script>alert(1)</script>";
        let xss = ov_order(&lab, &key, evil).await;
        // Screenshots go to docs/screenshots when asked (to refresh the
        // README's), else into the test's own directory.
        let shots = std::env::var("HALLMARK_SCREENSHOT_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| lab.ca.dir.path().join("shots"));
        let out = tokio::task::spawn_blocking({
            let base = lab.running.https_url.clone();
            let shots = shots.clone();
            move || {
                Command::new("node")
                    .arg("dashboard.mjs")
                    .current_dir(e2e_dir())
                    .env("BASE_URL", base)
                    .env("ADMIN_PASSWORD", initial)
                    .env("NEW_PASSWORD", PASSWORD)
                    .env("ORDER_APPROVE", approve)
                    .env("ORDER_REJECT", reject)
                    .env("ORDER_XSS", xss)
                    .env("SCREENSHOT_DIR", shots)
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the browser script failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        let pages = &seen["pages"];
        assert_eq!(pages["redirected_to"], "/admin/login");
        assert_eq!(pages["after_password"], "Your password was changed.");
        assert_eq!(
            seen["dialogs"].as_array().unwrap().len(),
            0,
            "no script ran: {seen}"
        );
        assert_eq!(pages["script_elements_in_table"], 0);
        assert!(
            pages["queue_text"].as_str().unwrap().contains(evil),
            "the organisation shows as text"
        );
        assert!(pages["xss_detail_text"].as_str().unwrap().contains(evil));
        assert!(pages["after_approve"]
            .as_str()
            .unwrap()
            .starts_with("Approved. Certificate"));
        assert!(pages["after_reject"]
            .as_str()
            .unwrap()
            .starts_with("Rejected."));
        assert!(pages["after_revoke"]
            .as_str()
            .unwrap()
            .starts_with("Revoked (keyCompromise)"));
        assert_eq!(
            pages["crl_entries"], "1",
            "the CRL status shows the revocation"
        );
        assert_eq!(pages["narrow_overflow"], false, "the overview fits 360 px");

        // What the browser did is what the system recorded.
        let store = lab.running.authority.store();
        let serial = seen["serial"].as_str().unwrap();
        let cert = store.certificate(&serial.parse().unwrap()).await.unwrap();
        assert_eq!(cert.revocation_reason, Some(1));
        let (_, order) = lab.get(&key, &format!("/orders/{approve_id}")).await;
        assert_eq!(order["approval_reason"], "Registry entry checked by phone.");
        let (_, order) = lab.get(&key, &format!("/orders/{reject_id}")).await;
        assert_eq!(order["status"], "rejected");
        assert_eq!(
            order["rejection_reason"],
            "The organisation could not be verified."
        );
        let api_key = seen["api_key"].as_str().unwrap();
        let r = lab
            .running
            .client()
            .get(format!("{}/api/v1/account", lab.running.https_url))
            .bearer_auth(api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let account: Value = r.json().await.unwrap();
        assert_eq!(account["name"], "payments team");
        for name in [
            "login",
            "overview",
            "requests",
            "request",
            "certificates",
            "certificate",
            "accounts",
            "users",
            "audit",
            "crl",
            "overview-360px",
        ] {
            assert!(
                shots.join(format!("{name}.png")).exists(),
                "screenshot {name}"
            );
        }
        lab.finish().await;
    }
}
