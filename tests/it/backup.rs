//! `hallmark backup` while certificates are being issued, and `hallmark
//! restore` elsewhere, on both stores: the restored CA holds what the
//! snapshot held, verifies its audit chain, and its next CRL number is above
//! every number the original published after the backup. Damaged backups,
//! non-empty targets and mismatched stores are refused with one sentence.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::cli::{hallmark, text};
use crate::support::*;
use hallmark::workflow::SignOptions;

/// The number in `hallmark crl generate`'s "….crl number N: …" line.
fn crl_number(out: &str) -> i64 {
    let after = out
        .split("int-")
        .nth(1)
        .and_then(|s| s.split(" number ").nth(1))
        .unwrap_or_else(|| panic!("no CRL number in {out}"));
    after.split(':').next().unwrap().trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_elsewhere_with_its_chain_and_rising_crl_numbers() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let db = TestDb::new(backend, &d.join("a")).await;
        std::fs::create_dir_all(d.join("a")).unwrap();
        let env = [
            ("HALLMARK_ROOT_PASSPHRASE", PASSPHRASE),
            ("DATABASE_URL", db.url.as_str()),
        ];
        let run = |args: &[&str], env: &[(&str, &str)]| {
            let out = hallmark(d, args, env);
            (out.status.success(), text(&out))
        };
        let (ok, out) = run(&["init"], &env);
        assert!(ok, "{out}");

        // A certificate revoked before the backup, and a CRL listing it.
        let data = d.join(hallmark::config::DEFAULT_DATA_DIR);
        let config = hallmark::config::Config::load(
            None,
            &data,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap();
        let authority = hallmark::service::open_authority(&config).await.unwrap();
        let csr = openssl_csr(
            d,
            "load",
            P256,
            "/CN=web.internal",
            Some("DNS:web.internal"),
        );
        let revoked = authority
            .sign_csr(&csr, SignOptions::default(), "operator:test")
            .await
            .unwrap()
            .certificate
            .serial
            .to_hex();
        let (ok, out) = run(&["revoke", &revoked, "--reason", "superseded"], &env);
        assert!(ok, "{out}");
        let (ok, out) = run(&["crl", "generate"], &env);
        assert!(ok, "{out}");
        let first = crl_number(&out);

        // Load: issuances on the same database while the backup runs.
        let stop = Arc::new(AtomicBool::new(false));
        let load = {
            let (authority, stop, csr) = (authority.clone(), stop.clone(), csr.clone());
            tokio::spawn(async move {
                let mut issued = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    authority
                        .sign_csr(&csr, SignOptions::default(), "operator:load")
                        .await
                        .expect("issuance under backup");
                    issued += 1;
                }
                issued
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let before = authority.reads().count_certificates().await.unwrap();
        let backup = d.join("backup");
        let b = backup.to_string_lossy().into_owned();
        let out = tokio::task::spawn_blocking({
            let (d, env) = (d.to_owned(), env.map(|(k, v)| (k, v.to_owned())));
            move || {
                let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                hallmark(&d, &["backup", &b], &env)
            }
        })
        .await
        .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        stop.store(true, Ordering::Relaxed);
        let issued = load.await.unwrap();
        let after = authority.reads().count_certificates().await.unwrap();
        assert!(issued > 0 && after > before, "the load ran: {issued}");
        let mode = |p: &std::path::Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode(&backup), 0o700);
        assert_eq!(mode(&backup.join("ca/issuing.key.pem")), 0o600);

        // The original goes on publishing after the backup.
        let mut last = first;
        for _ in 0..2 {
            let (ok, out) = run(&["crl", "generate"], &env);
            assert!(ok, "{out}");
            last = crl_number(&out);
        }
        assert_eq!(last, first + 2);

        // Restore into a new data directory and an empty database.
        let target = d.join("restored");
        let db2 = TestDb::new(backend, &d.join("b")).await;
        std::fs::create_dir_all(d.join("b")).unwrap();
        let t = target.to_string_lossy().into_owned();
        let env2 = [
            ("HALLMARK_ROOT_PASSPHRASE", PASSPHRASE),
            ("DATABASE_URL", db2.url.as_str()),
        ];
        let (ok, out) = run(&["--data-dir", &t, "restore", "backup"], &env2);
        assert!(ok, "{out}");
        assert!(out.contains("audit log verified"), "{out}");
        let (ok, out) = run(&["--data-dir", &t, "audit", "verify"], &env2);
        assert!(ok, "{out}");

        // It holds what the snapshot held: at least what was there when the
        // backup began, no more than when it ended, the revocation kept.
        let restored = hallmark::store::connect(&db2.url).await.unwrap();
        let held = restored.count_certificates().await.unwrap();
        assert!(
            held >= before && held <= after,
            "{before} <= {held} <= {after}"
        );
        let record = restored
            .certificate(&revoked.parse().unwrap())
            .await
            .unwrap();
        assert_eq!(record.revocation_reason, Some(4), "superseded");

        // Its CRLs go on above every number the original published, and
        // list the revocation.
        let (ok, out) = run(&["--data-dir", &t, "crl", "generate"], &env2);
        assert!(ok, "{out}");
        assert!(crl_number(&out) > last, "{out} after {last}");
        assert!(out.contains("1 entries"), "{out}");

        // Refusals: a second restore into the same directory, a restore into
        // a database in use, a damaged backup, a directory that is none.
        let (ok, out) = run(&["--data-dir", &t, "restore", "backup"], &env2);
        assert!(!ok && out.contains("is not empty"), "{out}");
        if backend == Backend::Postgres {
            let (ok, out) = run(&["--data-dir", "fresh", "restore", "backup"], &env);
            assert!(!ok && out.contains("is not empty"), "{out}");
        }
        // The other kind of store: refused before anything is written.
        let other_kind = match backend {
            Backend::Sqlite => "postgres://postgres@127.0.0.1:1/none".to_owned(),
            Backend::Postgres => format!("sqlite://{}/x.db", d.display()),
        };
        let (ok, out) = run(
            &["--data-dir", "mismatch", "restore", "backup"],
            &[("DATABASE_URL", other_kind.as_str())],
        );
        assert!(
            !ok && out.contains("restore into the same kind of store"),
            "{out}"
        );
        assert!(!d.join("mismatch").exists(), "nothing half-done");
        let snapshot = match backend {
            Backend::Sqlite => "hallmark.db",
            Backend::Postgres => "hallmark.pgdump",
        };
        let mut bytes = std::fs::read(backup.join(snapshot)).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        std::fs::write(backup.join(snapshot), bytes).unwrap();
        let (ok, out) = run(&["--data-dir", "other", "restore", "backup"], &env2);
        assert!(
            !ok && out.contains(&format!(
                "the backup is damaged: {snapshot} does not match its SHA-256"
            )),
            "{out}"
        );
        let (ok, out) = run(&["--data-dir", "other", "restore", "a"], &env2);
        assert!(!ok && out.contains("has no manifest.json"), "{out}");
        let (ok, out) = run(&["backup", "backup"], &env);
        assert!(!ok && out.contains("is not empty"), "{out}");

        drop((restored, authority));
        db2.cleanup().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn export_writes_every_certificate_and_an_index_openssl_ca_reads() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let db = TestDb::new(backend, d).await;
        let env = [
            ("HALLMARK_ROOT_PASSPHRASE", PASSPHRASE),
            ("DATABASE_URL", db.url.as_str()),
        ];
        let run = |args: &[&str]| {
            let out = hallmark(d, args, &env);
            (out.status.success(), text(&out), out.stdout)
        };
        assert!(run(&["init"]).0);
        let mut serials = Vec::new();
        for name in ["a", "b", "c"] {
            let host = format!("{name}.internal");
            let csr = openssl_csr(
                d,
                name,
                P256,
                &format!("/CN={host}"),
                Some(&format!("DNS:{host}")),
            );
            std::fs::write(d.join(format!("{name}.csr")), csr).unwrap();
            let (ok, said, pem) = run(&["sign", &format!("{name}.csr")]);
            assert!(ok, "{said}");
            let der =
                hallmark::pki::pem_decode_all(&String::from_utf8(pem).unwrap(), "CERTIFICATE")
                    .remove(0);
            let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
            serials.push(hex::encode(c.raw_serial()));
        }
        let (ok, said, _) = run(&["revoke", &serials[1], "--reason", "keyCompromise"]);
        assert!(ok, "{said}");

        let (ok, said, _) = run(&["export", "out"]);
        assert!(ok, "{said}");
        assert!(
            said.contains("exported 3 certificates (1 revoked)"),
            "{said}"
        );
        for serial in &serials {
            let file = format!("out/certs/{}.pem", serial.to_uppercase());
            let text = openssl(d, &["x509", "-in", &file, "-noout", "-serial"]);
            assert_eq!(text.trim(), format!("serial={}", serial.to_uppercase()));
        }
        let index = std::fs::read_to_string(d.join("out/index.txt")).unwrap();
        assert_eq!(index.lines().count(), 3, "{index}");
        assert!(
            index
                .lines()
                .any(|l| l.starts_with("R\t") && l.contains(",keyCompromise\t")),
            "{index}"
        );
        assert!(index.contains("/CN=b.internal"), "{index}");
        let jsonl = std::fs::read_to_string(d.join("out/index.jsonl")).unwrap();
        let revoked: serde_json::Value = jsonl
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["serial"] == serials[1].as_str())
            .unwrap();
        assert_eq!(revoked["revocation_reason"], "keyCompromise");
        assert_eq!(revoked["names"], serde_json::json!(["b.internal"]));

        // `openssl ca` reads the index: its status of each serial.
        std::fs::write(
            d.join("out/ca.cnf"),
            "[ca]\ndefault_ca = hm\n[hm]\ndatabase = index.txt\n",
        )
        .unwrap();
        let status = |serial: &str| {
            let o = std::process::Command::new("openssl")
                .args(["ca", "-config", "ca.cnf", "-status", &serial.to_uppercase()])
                .current_dir(d.join("out"))
                .output()
                .unwrap();
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        };
        assert!(
            status(&serials[1]).contains("Revoked (R)"),
            "{}",
            status(&serials[1])
        );
        assert!(
            status(&serials[0]).contains("Valid (V)"),
            "{}",
            status(&serials[0])
        );

        let (ok, said, _) = run(&["export", "out"]);
        assert!(!ok && said.contains("is not empty"), "{said}");
        db.cleanup().await;
    }
}
