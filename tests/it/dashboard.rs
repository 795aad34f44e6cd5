//! The admin dashboard over real HTTPS: sign-in, sessions, roles, CSRF and
//! escaping, for every route, on SQLite and PostgreSQL.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hallmark::workflow::accounts::Role;
use hallmark::workflow::users::{self, UserRole};
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::browser::{ov_order, Browser, PASSWORD};
use crate::support::dv::DvLab;
use crate::support::*;

/// Every dashboard route: (method, path, least role; None for reads).
fn routes(
    order: &str,
    serial: &str,
    account: &str,
) -> Vec<(&'static str, String, Option<UserRole>)> {
    vec![
        ("GET", "/admin".into(), None),
        ("GET", "/admin/password".into(), None),
        ("GET", "/admin/requests".into(), None),
        ("GET", format!("/admin/requests/{order}"), None),
        ("GET", "/admin/certificates".into(), None),
        ("GET", format!("/admin/certificates/{serial}"), None),
        (
            "GET",
            format!("/admin/certificates/{serial}/chain.pem"),
            None,
        ),
        ("GET", "/admin/accounts".into(), None),
        ("GET", "/admin/users".into(), None),
        ("GET", "/admin/audit".into(), None),
        ("GET", "/admin/crl".into(), None),
        (
            "POST",
            format!("/admin/requests/{order}/approve"),
            Some(UserRole::Reviewer),
        ),
        (
            "POST",
            format!("/admin/requests/{order}/reject"),
            Some(UserRole::Reviewer),
        ),
        (
            "POST",
            format!("/admin/certificates/{serial}/revoke"),
            Some(UserRole::Reviewer),
        ),
        ("POST", "/admin/accounts".into(), Some(UserRole::Admin)),
        (
            "POST",
            format!("/admin/accounts/{account}/disable"),
            Some(UserRole::Admin),
        ),
        (
            "POST",
            format!("/admin/accounts/{account}/enable"),
            Some(UserRole::Admin),
        ),
        (
            "POST",
            format!("/admin/accounts/{account}/rotate"),
            Some(UserRole::Admin),
        ),
        (
            "POST",
            format!("/admin/accounts/{account}/eab"),
            Some(UserRole::Admin),
        ),
        ("POST", "/admin/users".into(), Some(UserRole::Admin)),
        (
            "POST",
            "/admin/users/auditor/role".into(),
            Some(UserRole::Admin),
        ),
        (
            "POST",
            "/admin/users/auditor/disable".into(),
            Some(UserRole::Admin),
        ),
        (
            "POST",
            "/admin/users/auditor/enable".into(),
            Some(UserRole::Admin),
        ),
        (
            "POST",
            "/admin/crl/regenerate".into(),
            Some(UserRole::Admin),
        ),
        ("POST", "/admin/password".into(), Some(UserRole::Auditor)),
        ("POST", "/admin/logout".into(), Some(UserRole::Auditor)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_a_session_the_right_role_and_the_csrf_token() {
    for backend in backends() {
        let lab = DvLab::new(backend, &[]).await;
        let store = lab.running.authority.store().clone();
        for (name, role) in [
            ("auditor", UserRole::Auditor),
            ("reviewer", UserRole::Reviewer),
            ("boss", UserRole::Admin),
        ] {
            users::add_user(store.as_ref(), name, role, PASSWORD, false, "test")
                .await
                .unwrap();
        }
        let key = lab.account("team", Role::Requester).await;
        let order = ov_order(&lab, &key, "Example Ltd").await;
        let account = store.accounts().await.unwrap()[0].id.clone();
        let csr = openssl_csr(
            lab.ca.dir.path(),
            "plain",
            P256,
            "/CN=plain.internal",
            Some("DNS:plain.internal"),
        );
        let serial = lab
            .running
            .authority
            .sign_csr(&csr, Default::default(), "test")
            .await
            .unwrap()
            .certificate
            .serial
            .to_hex();
        let routes = routes(&order, &serial, &account);

        // No session: every route sends the browser to sign in.
        let mut anonymous = Browser::new(&lab.running);
        for (method, path, _) in &routes {
            let p = if *method == "GET" {
                anonymous.get(path).await
            } else {
                anonymous.post(path, &[("csrf", "x")]).await
            };
            assert_eq!(p.status, StatusCode::SEE_OTHER, "{method} {path}");
            assert_eq!(p.location, "/admin/login", "{method} {path}");
        }

        let mut auditor = Browser::new(&lab.running);
        auditor.sign_in("auditor", PASSWORD).await;
        let mut reviewer = Browser::new(&lab.running);
        reviewer.sign_in("reviewer", PASSWORD).await;
        let mut boss = Browser::new(&lab.running);
        boss.sign_in("boss", PASSWORD).await;

        // Reads are open to every role, with the security headers.
        for (method, path, role) in &routes {
            if *method != "GET" || role.is_some() {
                continue;
            }
            let p = auditor.get(path).await;
            assert_eq!(p.status, StatusCode::OK, "GET {path}: {}", p.body);
            for h in [
                "content-security-policy",
                "strict-transport-security",
                "x-frame-options",
                "referrer-policy",
            ] {
                assert!(p.headers.contains_key(h), "GET {path} lacks {h}");
            }
            assert_eq!(p.headers["x-frame-options"], "DENY");
            assert!(!p.headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("unsafe-inline"));
        }

        let head = store.audit_head().await.unwrap().0;
        let auditor_token = auditor.get("/admin").await.csrf();
        let reviewer_token = reviewer.get("/admin").await.csrf();
        for (method, path, role) in &routes {
            let Some(role) = role else { continue };
            // Missing or wrong CSRF: 403 whatever the role.
            for form in [
                vec![],
                vec![("csrf", "wrong")],
                vec![("csrf", auditor_token.as_str())],
            ] {
                let p = boss.post(path, &form).await;
                assert_eq!(
                    p.status,
                    StatusCode::FORBIDDEN,
                    "{method} {path} with {form:?}"
                );
            }
            // Too small a role: 403 even with the right token.
            if *role >= UserRole::Reviewer {
                let p = auditor
                    .post(
                        path,
                        &[("csrf", &auditor_token), ("reason", "x"), ("role", "admin")],
                    )
                    .await;
                assert_eq!(p.status, StatusCode::FORBIDDEN, "auditor {path}");
            }
            if *role == UserRole::Admin {
                let p = reviewer
                    .post(
                        path,
                        &[("csrf", &reviewer_token), ("name", "x"), ("role", "admin")],
                    )
                    .await;
                assert_eq!(p.status, StatusCode::FORBIDDEN, "reviewer {path}");
            }
        }
        assert_eq!(
            store.audit_head().await.unwrap().0,
            head,
            "refused requests changed nothing"
        );
        assert!(store
            .certificate(&serial.parse().unwrap())
            .await
            .unwrap()
            .revoked_at
            .is_none());

        // Sign-out ends the session for good.
        let token = auditor.get("/admin").await.csrf();
        let p = auditor.post("/admin/logout", &[("csrf", &token)]).await;
        assert_eq!(p.location, "/admin/login");
        assert_eq!(auditor.get("/admin").await.location, "/admin/login");
        lab.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviewers_approve_and_reject_revoke_and_user_text_is_escaped() {
    for backend in backends() {
        let lab = DvLab::new(backend, &[("HALLMARK_CRL__DEBOUNCE_SECS", "0".into())]).await;
        let store = lab.running.authority.store().clone();
        users::add_user(
            store.as_ref(),
            "rita",
            UserRole::Reviewer,
            PASSWORD,
            false,
            "test",
        )
        .await
        .unwrap();
        let key = lab.account("team", Role::Requester).await;
        let evil = "<script>alert(1)</script>";
        let good = ov_order(&lab, &key, "Good Org").await;
        let bad = ov_order(&lab, &key, evil).await;

        let mut rita = Browser::new(&lab.running);
        rita.sign_in("rita", PASSWORD).await;
        let queue = rita.get("/admin/requests").await;
        assert!(queue.body.contains(&good) && queue.body.contains(&bad));
        assert!(!queue.body.contains(evil), "user text must be escaped");
        assert!(
            queue
                .text()
                .contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{}",
            queue.body
        );
        let detail = rita.get(&format!("/admin/requests/{bad}")).await;
        assert!(!detail.body.contains(evil));
        assert!(detail.body.contains("ECDSA P-256") && detail.body.contains("ov.internal"));
        // The reviewer sees what the certificate will be: its profile.
        assert!(
            detail
                .body
                .contains("<code>server</code> — TLS server certificate (serverAuth)"),
            "{}",
            detail.body
        );

        // Approve one: the certificate is issued with the organisation.
        let token = detail.csrf();
        let p = rita
            .post(
                &format!("/admin/requests/{good}/approve"),
                &[("csrf", &token)],
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        let after = rita.get(&p.location).await;
        assert!(
            after.body.contains("Approved. Certificate"),
            "{}",
            after.body
        );
        let (_, order) = lab.get(&key, &format!("/orders/{good}")).await;
        assert_eq!(order["status"], "valid");
        let serial = order["certificate_serial"].as_str().unwrap().to_owned();
        let audit = store.audit_page(0, 10_000).await.unwrap();
        assert!(audit
            .iter()
            .any(|r| r.action == "order.approve" && r.actor == "user:rita"));

        // Reject the other with a reason the requester sees (escaped here too).
        let reason = "No <b>proof</b> of the organisation";
        let p = rita
            .post(
                &format!("/admin/requests/{bad}/reject"),
                &[("csrf", &token), ("reason", reason)],
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        let (_, order) = lab.get(&key, &format!("/orders/{bad}")).await;
        assert_eq!(order["status"], "rejected");
        assert_eq!(order["rejection_reason"], reason);
        let page = rita.get(&format!("/admin/requests/{bad}")).await;
        assert!(page.text().contains("No &lt;b&gt;proof&lt;/b&gt;"));

        // A reviewer revokes by the same rule as a reviewer's API key: only
        // the certificates of the account they belong to (rita: none yet).
        let p = rita
            .post(
                &format!("/admin/certificates/{serial}/revoke"),
                &[("csrf", &token), ("reason", "superseded")],
            )
            .await;
        let page = rita.get(&p.location).await;
        assert!(
            page.body
                .contains("Not revoked: only the owning account or an admin"),
            "{}",
            page.body
        );
        // Once she belongs to the team, she may revoke its certificates,
        // and never approves its orders (four-eyes).
        let (_, me) = lab.get(&key, "/account").await;
        let team = me["id"].as_str().unwrap().to_owned();
        users::link_user(store.as_ref(), "rita", Some(&team), "test")
            .await
            .unwrap();
        let rita_again = Browser::new(&lab.running);
        let mut rita = rita_again;
        rita.sign_in("rita", PASSWORD).await;
        let own = ov_order(&lab, &key, "Own Org").await;
        let page = rita.get(&format!("/admin/requests/{own}")).await;
        let token = page.csrf();
        let p = rita
            .post(
                &format!("/admin/requests/{own}/approve"),
                &[("csrf", &token), ("reason", "looks fine to me")],
            )
            .await;
        let page = rita.get(&p.location).await;
        assert!(
            page.body
                .contains("Not approved: an account cannot approve its own order"),
            "{}",
            page.body
        );
        let (_, order) = lab.get(&key, &format!("/orders/{own}")).await;
        assert_eq!(order["status"], "awaiting_approval");

        // Revoke the issued certificate; the CRL status shows a new CRL.
        let before = lab.running.authority.store().crl_heads().await.unwrap();
        let p = rita
            .post(
                &format!("/admin/certificates/{serial}/revoke"),
                &[("csrf", &token), ("reason", "superseded")],
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        let page = rita.get(&p.location).await;
        assert!(page.body.contains("Revoked (superseded)"), "{}", page.body);
        let cert = store.certificate(&serial.parse().unwrap()).await.unwrap();
        assert_eq!(cert.revocation_reason, Some(4));
        let mut published = false;
        for _ in 0..50 {
            let heads = store.crl_heads().await.unwrap();
            if heads
                .iter()
                .any(|h| h.entries == 1 && !before.iter().any(|b| b.number == h.number))
            {
                published = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(published, "a CRL listing the revocation was published");
        let crl = rita.get("/admin/crl").await;
        assert!(
            crl.body.contains(".crl") && crl.body.contains("<td class=\"num\">1</td>"),
            "{}",
            crl.body
        );

        // Search finds it by name and by any part of its serial (a leaf's
        // serial starts with its millisecond; the tail is random).
        let found = rita
            .get("/admin/certificates?q=ov.internal&status=revoked")
            .await;
        assert!(found.body.contains(&serial));
        for part in [&serial[..8], &serial[20..]] {
            let found = rita.get(&format!("/admin/certificates?q={part}")).await;
            assert!(found.body.contains(&serial), "q={part}");
        }
        let other = rita.get("/admin/certificates?q=not-a-serial-part").await;
        assert!(!other.body.contains(&serial));
        lab.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_manage_accounts_and_users_but_never_remove_the_last_admin() {
    for backend in backends() {
        let mut ca = TestCa::new(backend).await;
        let run = ca.start().await;
        let initial = run
            .admin_password
            .clone()
            .expect("the first start prints a password");
        let store = run.authority.store().clone();

        // The initial password forces a change first.
        let mut admin = Browser::new(&run);
        let p = admin.sign_in("admin", &initial).await;
        assert_eq!(p.location, "/admin/password");
        assert_eq!(
            admin.get("/admin/accounts").await.location,
            "/admin/password"
        );
        let form = admin.get("/admin/password").await;
        let token = form.csrf();
        let short = admin
            .post(
                "/admin/password",
                &[
                    ("csrf", &token),
                    ("current_password", &initial),
                    ("new_password", "short"),
                    ("confirm", "short"),
                ],
            )
            .await;
        assert_eq!(short.status, StatusCode::BAD_REQUEST);
        assert!(short.body.contains("12 to 256 characters"));
        let p = admin
            .post(
                "/admin/password",
                &[
                    ("csrf", &token),
                    ("current_password", &initial),
                    ("new_password", PASSWORD),
                    ("confirm", PASSWORD),
                ],
            )
            .await;
        assert_eq!(p.location, "/admin");
        let overview = admin.get("/admin").await;
        assert_eq!(overview.status, StatusCode::OK);
        assert!(overview.body.contains("Your password was changed."));
        let token = overview.csrf();

        // A new account: its key is shown once and works against the API.
        let page = admin
            .post(
                "/admin/accounts",
                &[
                    ("csrf", &token),
                    ("name", "web team"),
                    ("role", "requester"),
                ],
            )
            .await;
        assert_eq!(page.status, StatusCode::OK);
        let at = page.body.find("<pre id=\"api-key\">").unwrap() + 18;
        let api_key = page.body[at..at + page.body[at..].find('<').unwrap()].to_owned();
        let r = run
            .client()
            .get(format!("{}/api/v1/account", run.https_url))
            .bearer_auth(&api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let who: Value = r.json().await.unwrap();
        assert_eq!(who["name"], "web team");
        assert!(
            !admin.get("/admin/accounts").await.body.contains(&api_key),
            "shown once only"
        );
        let id = who["id"].as_str().unwrap().to_owned();

        // An ACME external account binding key, shown once, bound to it.
        let page = admin
            .post(&format!("/admin/accounts/{id}/eab"), &[("csrf", &token)])
            .await;
        assert_eq!(page.status, StatusCode::OK);
        let pre = |name: &str| {
            let open = format!("<pre id=\"{name}\">");
            let at = page.body.find(&open).unwrap() + open.len();
            page.body[at..at + page.body[at..].find('<').unwrap()].to_owned()
        };
        let (kid, hmac) = (pre("eab-kid"), pre("eab-hmac"));
        assert!(kid.starts_with("eab_") && hmac.len() == 43, "{kid} {hmac}");
        let stored = store.eab_key(&kid).await.unwrap().unwrap();
        assert_eq!(stored.account_id, id);
        assert_eq!(URL_SAFE_NO_PAD.encode(&stored.hmac_key), hmac);
        assert!(!admin.get("/admin/accounts").await.body.contains(&hmac));

        admin
            .post(
                &format!("/admin/accounts/{id}/disable"),
                &[("csrf", &token)],
            )
            .await;
        let r = run
            .client()
            .get(format!("{}/api/v1/account", run.https_url))
            .bearer_auth(&api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "a disabled account's key stops working"
        );

        // Users: add, change role, and the last admin stays.
        let p = admin
            .post(
                "/admin/users",
                &[
                    ("csrf", &token),
                    ("username", "ann"),
                    ("role", "reviewer"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        let ann = store.user_by_name("ann").await.unwrap().unwrap();
        assert!(
            ann.must_change_password,
            "a password an admin chose must be changed"
        );
        let p = admin
            .post(
                "/admin/users/admin/role",
                &[("csrf", &token), ("role", "auditor")],
            )
            .await;
        let page = admin.get(&p.location).await;
        assert!(page.body.contains("no enabled admin"), "{}", page.body);
        assert_eq!(
            store.user_by_name("admin").await.unwrap().unwrap().role,
            UserRole::Admin
        );
        let p = admin
            .post("/admin/users/admin/disable", &[("csrf", &token)])
            .await;
        let page = admin.get(&p.location).await;
        assert!(page.body.contains("no enabled admin"));
        admin
            .post(
                "/admin/users/ann/role",
                &[("csrf", &token), ("role", "admin")],
            )
            .await;
        assert_eq!(
            store.user_by_name("ann").await.unwrap().unwrap().role,
            UserRole::Admin
        );

        // Audit: every action names the user; filters work.
        let audit = admin
            .get("/admin/audit?actor=user:admin&action=account.")
            .await;
        assert!(audit.body.contains("account.create") && audit.body.contains("account.disable"));
        assert!(!audit.body.contains("user.create"));
        hallmark::workflow::audit::verify(store.as_ref())
            .await
            .unwrap();

        // Throttling: five wrong passwords lock the user, even for the right one.
        let mut guesser = Browser::new(&run);
        for _ in 0..5 {
            let login = guesser.get("/admin/login").await;
            let p = guesser
                .post(
                    "/admin/login",
                    &[
                        ("csrf", &login.csrf()),
                        ("username", "ann"),
                        ("password", "wrong password!"),
                    ],
                )
                .await;
            assert_eq!(p.status, StatusCode::UNAUTHORIZED);
        }
        let login = guesser.get("/admin/login").await;
        let p = guesser
            .post(
                "/admin/login",
                &[
                    ("csrf", &login.csrf()),
                    ("username", "ann"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(p.status, StatusCode::UNAUTHORIZED);
        assert!(p.body.contains("too many failed sign-ins"));
        // The sign-in form itself needs its token.
        let p = guesser
            .post(
                "/admin/login",
                &[("username", "admin"), ("password", PASSWORD)],
            )
            .await;
        assert_eq!(p.status, StatusCode::FORBIDDEN);

        // Idle sessions end.
        ca.db
            .execute("UPDATE sessions SET last_seen_at = last_seen_at - 7200")
            .await;
        assert_eq!(admin.get("/admin").await.location, "/admin/login");
        run.stop().await;
        ca.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_failures_count_atomically_lock_once_and_are_forgiven_in_time() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(backend, dir.path()).await;
        let store = hallmark::store::connect(&db.url).await.unwrap();
        users::add_user(
            store.as_ref(),
            "ops",
            UserRole::Admin,
            PASSWORD,
            false,
            "test",
        )
        .await
        .unwrap();
        let gate = std::sync::Arc::new(users::PasswordGate::new(2));
        // Twelve wrong guesses at once: every one counts, the fifth locks,
        // the rest find the lock and count nothing.
        let mut guesses = Vec::new();
        for i in 0..12 {
            let store = store.clone();
            let gate = gate.clone();
            guesses.push(tokio::spawn(async move {
                users::sign_in(store.as_ref(), &gate, "ops", &format!("wrong password {i}")).await
            }));
        }
        for g in guesses {
            assert!(g.await.unwrap().is_err());
        }
        let user = store.user_by_name("ops").await.unwrap().unwrap();
        assert_eq!(user.failed_logins, 5, "{backend:?}");
        assert!(
            user.locked_until.is_some(),
            "{backend:?}: parallel guesses must lock"
        );
        let log = store.audit_page(0, 10_000).await.unwrap();
        let count = |action: &str| {
            log.iter()
                .filter(|r| r.action == action && r.subject == "ops")
                .count()
        };
        assert_eq!(count("user.sign_in_failed"), 5, "{backend:?}");
        assert_eq!(count("user.lock"), 1, "{backend:?}");
        // Locked: even the right password is refused.
        assert!(matches!(
            users::sign_in(store.as_ref(), &gate, "ops", PASSWORD).await,
            Err(users::UserError::Locked { .. })
        ));

        let failures_and_lock = || async {
            let user = store.user_by_name("ops").await.unwrap().unwrap();
            (user.failed_logins, user.locked_until)
        };
        // Once the lock has expired, one wrong password is one failure,
        // not a new lock.
        db.execute("UPDATE users SET locked_until = 1, last_failed_at = 1 WHERE username = 'ops'")
            .await;
        assert!(matches!(
            users::sign_in(store.as_ref(), &gate, "ops", "wrong again").await,
            Err(users::UserError::BadCredentials)
        ));
        assert_eq!(failures_and_lock().await, (1, None), "{backend:?}");
        // Failures further apart than the lock time do not add up.
        for _ in 0..6 {
            db.execute("UPDATE users SET last_failed_at = 1 WHERE username = 'ops'")
                .await;
            assert!(matches!(
                users::sign_in(store.as_ref(), &gate, "ops", "one a day").await,
                Err(users::UserError::BadCredentials)
            ));
        }
        assert_eq!(failures_and_lock().await, (1, None), "{backend:?}");
        // And the right password signs in and clears the count.
        assert!(users::sign_in(store.as_ref(), &gate, "ops", PASSWORD)
            .await
            .is_ok());
        let user = store.user_by_name("ops").await.unwrap().unwrap();
        assert_eq!(user.failed_logins, 0);
        assert!(hallmark::workflow::audit::verify(store.as_ref())
            .await
            .is_ok());
        drop(store);
        db.cleanup().await;
    }
}
