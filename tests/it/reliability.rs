//! Nothing lost, in one process: durability that no cancelled request can
//! switch off, revocations that reach the CRL and OCSP of a running
//! instance whichever process recorded them, a worker that bounds its
//! retries and goes past bad rows, and a disabled account whose unfinished
//! orders end with it. SQLite and PostgreSQL.

use std::time::{Duration, Instant};

use hallmark::pki::crl::RevocationReason;
use hallmark::workflow::accounts::{create_account, Role};
use hallmark::workflow::revocation::RevokeRequest;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::dv::{challenge, csr, DvLab};
use crate::support::pki::ocsp_status;
use crate::support::pki::{api_key, crl_until, issue, urls};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonce_uses_cancelled_at_any_point_leave_every_write_connection_durable() {
    // PostgreSQL records used nonces in the database, over a connection
    // of their own whose session has `synchronous_commit = off`; SQLite's
    // `serve` keeps them in memory (workflow/nonces.rs).
    for backend in backends().into_iter().filter(|b| *b == Backend::Postgres) {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(backend, dir.path()).await;
        let store = hallmark::store::connect(&db.url).await.unwrap();
        store.check_durable().await.unwrap();
        let far = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
        // Requests dropped at every point of a nonce use, as a client
        // hanging up or a timeout would drop them. (Polled by hand: tokio's
        // timer cannot cut at a finer grain than a millisecond.)
        let mut cancelled = 0;
        for i in 0..1500u64 {
            use futures_util::FutureExt;
            let nonce = format!("n{i}");
            let mut use_it = Box::pin(store.use_nonce(&nonce, far));
            let cut_at = Instant::now() + Duration::from_micros(i * 7 % 400);
            loop {
                if let Some(r) = (&mut use_it).now_or_never() {
                    r.unwrap();
                    break;
                }
                if Instant::now() >= cut_at {
                    cancelled += 1;
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        assert!(cancelled > 0, "{backend:?}: no use was cancelled");
        // Whatever was cut short, the connections that write certificates
        // and revocations still flush every commit.
        for _ in 0..4 {
            store.check_durable().await.unwrap_or_else(|e| {
                panic!("{backend:?}: after {cancelled} cancelled nonce uses: {e}")
            });
        }
        // And a nonce is still single use.
        assert!(store.use_nonce("last", far).await.unwrap());
        assert!(!store.use_nonce("last", far).await.unwrap());
        drop(store);
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_recorded_elsewhere_reaches_the_crl_and_ocsp_of_a_running_instance() {
    // Another process records a revocation and dies before publishing a
    // CRL (as an instance killed within its debounce window would): the
    // running instance learns of it from the database alone.
    for backend in backends() {
        let mut ca = TestCa::with_env(
            backend,
            &[
                ("HALLMARK_CRL__DEBOUNCE_SECS", "2".into()),
                ("HALLMARK_OCSP__CACHE_SECS", "3600".into()),
            ],
        )
        .await;
        let run = ca.start().await;
        let dir = ca.dir.path();
        let (owner, _) = api_key(&run.authority, "owner", Role::Requester).await;
        let (serial, pem) = issue(&run.authority, dir, "gone", "gone.internal", &owner).await;
        std::fs::write(dir.join("root.pem"), &run.root_pem).unwrap();
        std::fs::write(
            dir.join("issuing.pem"),
            run.authority.issuer().certificate().pem(),
        )
        .unwrap();
        let (crl_url, ocsp_url) = urls(&pem);
        crl_until(&crl_url, |_, _| true).await;
        // A cached `good` (no nonce, cached for an hour).
        assert_eq!(ocsp_status(dir, "gone.pem", &ocsp_url), "good");
        assert_eq!(ocsp_status(dir, "gone.pem", &ocsp_url), "good");

        let elsewhere = ca.authority().await;
        elsewhere
            .revoke_as_key_holder(
                &serial.parse().unwrap(),
                RevokeRequest {
                    reason: RevocationReason::KeyCompromise,
                    invalidity_date: None,
                },
                "operator:test",
            )
            .await
            .unwrap();
        drop(elsewhere);
        let revoked_at = Instant::now();

        // OCSP: within one poll (2 s), whatever the cache time.
        let mut ocsp_after = None;
        while revoked_at.elapsed() < Duration::from_secs(10) {
            if ocsp_status(dir, "gone.pem", &ocsp_url).starts_with("revoked") {
                ocsp_after = Some(revoked_at.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ocsp_after = ocsp_after.unwrap_or_else(|| panic!("{backend:?}: OCSP still good"));
        assert!(
            ocsp_after <= Duration::from_secs(3),
            "{backend:?}: OCSP said good for {ocsp_after:?}"
        );
        // CRL: within debounce + one poll + generation.
        crl_until(&crl_url, |_, s| s.contains(&serial)).await;
        let crl_after = revoked_at.elapsed();
        assert!(
            crl_after <= Duration::from_secs(6),
            "{backend:?}: the CRL missed the revocation for {crl_after:?}"
        );
        eprintln!("{backend:?}: OCSP revoked after {ocsp_after:?}, CRL after {crl_after:?}");
        run.stop().await;
        ca.cleanup().await;
    }
}

/// Leaves a challenge's validation as a process that died mid-way would:
/// `processing`, attempted long ago (so the worker takes it over).
async fn strand_validation(db: &TestDb, challenge_id: &str) {
    db.execute(&format!(
        "UPDATE challenges SET status = 'processing', attempted_at = 0 WHERE id = '{challenge_id}'"
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuance_that_keeps_failing_ends_invalid_and_one_bad_row_stops_nothing() {
    for backend in backends() {
        let lab = DvLab::new(backend, &[]).await;
        let key = lab.account("team", Role::Requester).await;
        let dir = lab.ca.dir.path();
        let order_of = |name: &str| {
            let pem = csr(
                dir,
                name,
                &format!("{name}.internal"),
                &format!("DNS:{name}.internal"),
            );
            json!({"csr": pem, "validation": "dv"})
        };
        // One order stuck in `processing` whose issuance can never work
        // (its CSR is gone), claimed by an instance that died long ago.
        let (status, stuck) = lab.post(&key, "/orders", order_of("web")).await;
        assert_eq!(status, StatusCode::CREATED, "{stuck}");
        let stuck_id = stuck["id"].as_str().unwrap().to_owned();
        let stale = |id: &str| {
            format!(
                "UPDATE orders SET status = 'processing', csr_der = NULL, updated_at = 0 WHERE id = '{id}'"
            )
        };
        lab.ca.db.execute(&stale(&stuck_id)).await;
        // One row the worker cannot read (a status no version writes),
        // with a validation of it left `processing` by a dead process.
        let (_, bad) = lab.post(&key, "/orders", order_of("api")).await;
        let bad_id = bad["id"].as_str().unwrap().to_owned();
        let c = challenge(&bad, "api.internal", "http-01");
        match backend {
            Backend::Sqlite => {
                lab.ca
                    .db
                    .execute(&format!(
                        "PRAGMA ignore_check_constraints = ON; UPDATE orders SET status = 'bogus' WHERE id = '{bad_id}'"
                    ))
                    .await
            }
            Backend::Postgres => {
                lab.ca
                    .db
                    .execute("ALTER TABLE orders DROP CONSTRAINT orders_status_check")
                    .await;
                lab.ca
                    .db
                    .execute(&format!(
                        "UPDATE orders SET status = 'bogus' WHERE id = '{bad_id}'"
                    ))
                    .await
            }
        }
        strand_validation(&lab.ca.db, c["id"].as_str().unwrap()).await;
        // And one order past its lifetime, which the same pass must expire.
        let (_, old) = lab.post(&key, "/orders", order_of("alpn")).await;
        let old_id = old["id"].as_str().unwrap().to_owned();
        lab.ca
            .db
            .execute(&format!(
                "UPDATE orders SET expires_at = 1 WHERE id = '{old_id}'"
            ))
            .await;

        let failed = lab.running.orders.work_once().await.unwrap();
        assert!(failed >= 1, "{backend:?}: the bad row was not reported");
        let (_, expired) = lab.get(&key, &format!("/orders/{old_id}")).await;
        assert_eq!(expired["status"], "invalid", "{backend:?}: {expired}");
        assert!(
            expired["error"]["detail"]
                .as_str()
                .unwrap()
                .contains("expired"),
            "{expired}"
        );

        // The stuck order is taken over a bounded number of times, then
        // fails with a reason its requester sees.
        let mut passes = 1;
        loop {
            let (_, now) = lab.get(&key, &format!("/orders/{stuck_id}")).await;
            if now["status"] == "invalid" {
                let detail = now["error"]["detail"].as_str().unwrap();
                assert!(detail.contains("failed 4 times"), "{now}");
                assert_eq!(
                    now["error"]["type"],
                    "urn:ietf:params:acme:error:serverInternal"
                );
                break;
            }
            assert_eq!(now["status"], "processing", "{backend:?}: {now}");
            assert!(
                passes < 6,
                "{backend:?}: still retried after {passes} passes"
            );
            lab.ca
                .db
                .execute(&format!(
                    "UPDATE orders SET updated_at = 0 WHERE id = '{stuck_id}'"
                ))
                .await;
            lab.running.orders.work_once().await.unwrap();
            passes += 1;
        }
        assert_eq!(passes, 4, "{backend:?}: three takeovers, then invalid");
        let log = lab
            .running
            .authority
            .store()
            .audit_page(0, 100_000)
            .await
            .unwrap();
        assert!(log
            .iter()
            .any(|r| r.subject == stuck_id && r.action == "order.invalid"));
        // Expiry is recorded as its own cause, once.
        let old_actions: Vec<&str> = log
            .iter()
            .filter(|r| r.subject == old_id && r.action != "order.create")
            .map(|r| r.action.as_str())
            .collect();
        assert_eq!(old_actions, ["order.expire"], "{backend:?}");
        assert!(
            hallmark::workflow::audit::verify(lab.running.authority.store().as_ref())
                .await
                .is_ok()
        );
        lab.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_an_account_ends_its_unfinished_orders() {
    for backend in backends() {
        let lab = DvLab::new(backend, &[]).await;
        let store = lab.running.authority.store().clone();
        let team = create_account(store.as_ref(), "team", Role::Requester, "operator:test")
            .await
            .unwrap();
        let key = team.api_key.to_string();
        let reviewer = lab.account("vetting", Role::Reviewer).await;
        let dir = lab.ca.dir.path();
        // An OV order whose names are proven: it waits for a reviewer.
        let pem = csr(dir, "ov", "ov.internal", "DNS:ov.internal");
        let (status, ov) = lab
            .post(
                &key,
                "/orders",
                json!({"csr": pem, "validation": "ov", "organization": {"name": "Team", "country": "DE"}}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{ov}");
        let ov_id = ov["id"].as_str().unwrap().to_owned();
        let c = challenge(&ov, "ov.internal", "http-01");
        lab.http01.publish(
            c["http_path"].as_str().unwrap(),
            c["http_body"].as_str().unwrap(),
        );
        let (status, _) = lab
            .post(
                &key,
                &format!("/orders/{ov_id}/challenges/{}", c["id"].as_str().unwrap()),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let waiting = lab.settle(&key, &ov_id).await;
        assert_eq!(waiting["status"], "awaiting_approval", "{waiting}");
        // A DV order whose challenge is published but not yet checked.
        let pem = csr(dir, "web", "web.internal", "DNS:web.internal");
        let (_, dv) = lab
            .post(&key, "/orders", json!({"csr": pem, "validation": "dv"}))
            .await;
        let dv_id = dv["id"].as_str().unwrap().to_owned();
        let c = challenge(&dv, "web.internal", "http-01");
        lab.http01.publish(
            c["http_path"].as_str().unwrap(),
            c["http_body"].as_str().unwrap(),
        );

        store
            .set_account_disabled(
                &team.account.id,
                true,
                hallmark::store::AuditEvent {
                    at: time::OffsetDateTime::now_utc(),
                    actor: "user:admin".into(),
                    action: "account.disable".into(),
                    subject: team.account.id.clone(),
                    details: json!({}),
                },
            )
            .await
            .unwrap();

        // The reviewer finds nothing to approve.
        let (status, p) = lab
            .post(&reviewer, &format!("/orders/{ov_id}/approve"), json!({}))
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{backend:?}: {p}");
        // Both orders are invalid, saying why, and nothing was issued.
        for id in [&ov_id, &dv_id] {
            let (_, o) = lab.get(&reviewer, &format!("/orders/{id}")).await;
            assert_eq!(o["status"], "invalid", "{backend:?}: {o}");
            assert!(
                o["error"]["detail"]
                    .as_str()
                    .unwrap()
                    .contains("was disabled"),
                "{o}"
            );
            assert!(o["certificate"].is_null(), "{o}");
        }
        // A validation finishing now (the worker resuming it) issues nothing.
        strand_validation(&lab.ca.db, c["id"].as_str().unwrap()).await;
        lab.running.orders.work_once().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (_, o) = lab.get(&reviewer, &format!("/orders/{dv_id}")).await;
        assert_eq!(o["status"], "invalid", "{backend:?}: {o}");
        let certificates: Value = serde_json::to_value(
            store
                .certificates(&hallmark::store::CertificateQuery {
                    account_id: Some(team.account.id.clone()),
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap()
                .len(),
        )
        .unwrap();
        assert_eq!(certificates, json!(0), "{backend:?}");
        lab.finish().await;
    }
}

/// A small tmpfs for the disk-full test (root only; `None` elsewhere, and
/// under `CI=true` the test must run).
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let path = tempfile::tempdir().unwrap().keep();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(SmallDisk { path });
        }
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but a tmpfs cannot be mounted (the disk-full test needs root)");
        }
        eprintln!("note: cannot mount a tmpfs; skipping the disk-full test");
        None
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_clearly_and_every_write_acknowledged_after_it_is_kept() {
    let Some(disk) = SmallDisk::mount("2m") else {
        return;
    };
    let url = format!("sqlite://{}", disk.path.join("hallmark.db").display());
    let store = hallmark::store::connect(&url).await.unwrap();
    // Fill the disk.
    let filler = disk.path.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k", "count=64"])
        .arg(format!("of={}", filler.display()))
        .output();
    let mut acknowledged = Vec::new();
    let mut full = 0;
    for i in 0..400 {
        let name = format!("team-{i}-{}", "x".repeat(90));
        match create_account(store.as_ref(), &name, Role::Requester, "operator:test").await {
            Ok(created) => acknowledged.push(created.account.id),
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains("disk full"), "a clear error: {text}");
                full += 1;
                if full >= 3 {
                    break;
                }
            }
        }
    }
    assert!(full > 0, "the disk never filled");
    // Space returns: writes work again without a restart, and every one
    // acknowledged (before and after) is in the database for a new reader.
    std::fs::remove_file(&filler).unwrap();
    for i in 0..20 {
        let created = create_account(
            store.as_ref(),
            &format!("after-{i}"),
            Role::Requester,
            "operator:test",
        )
        .await
        .unwrap();
        acknowledged.push(created.account.id);
    }
    let fresh = hallmark::store::connect(&url).await.unwrap();
    let stored: std::collections::BTreeSet<String> = fresh
        .accounts()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes are not in the database",
        lost.len(),
        acknowledged.len()
    );
    assert!(hallmark::workflow::audit::verify(fresh.as_ref())
        .await
        .is_ok());
    drop((store, fresh));
}

/// The real binary's SQLite flushes every commit of the database and its
/// WAL with `fdatasync`, as the distributions' SQLite does, and never
/// falls back to `fsync` (the bundled amalgamation's default without
/// `HAVE_FDATASYNC`, set in `.cargo/config.toml`): seen with `strace`
/// while `init` writes the new CA's records.
#[test]
fn sqlite_commits_are_flushed_with_fdatasync() {
    if !tool_present("strace", "apt-get install strace") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.txt");
    let out = std::process::Command::new("strace")
        .args(["-f", "-y", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_hallmark"))
        .arg("init")
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env("HALLMARK_ROOT_PASSPHRASE", PASSPHRASE)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trace = std::fs::read_to_string(trace).unwrap();
    let on_database = |call: &str| {
        trace
            .lines()
            .filter(|l| l.contains(call) && l.contains("hallmark.db"))
            .count()
    };
    assert!(
        trace
            .lines()
            .any(|l| l.contains("fdatasync(") && l.contains("hallmark.db-wal>")),
        "no fdatasync of the WAL:\n{trace}"
    );
    // `fdatasync(` contains no `fsync(`: this counts plain fsyncs only.
    assert_eq!(on_database(" fsync("), 0, "{trace}");
    assert!(on_database("fdatasync(") > 0);
}
