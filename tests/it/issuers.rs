//! Issuers beside the current intermediate, on both stores, with the real
//! binary and the real peers: `hallmark ca rotate` (the new intermediate
//! issues; the retired one keeps its CRLs and OCSP for what it issued), and
//! `hallmark import openssl` (a CA made by `openssl ca`, its certificates
//! and revocations served by hallmark's CRL and OCSP).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use hallmark::workflow::accounts::Role;
use serde_json::Value;

use crate::cli::{hallmark, text};
use crate::support::pki::*;
use crate::support::*;

/// The environment that makes the CLI see `ca`'s configuration.
fn cli_env(ca: &TestCa) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", ca.db.url.clone()),
        (
            "HALLMARK_SERVER__HTTPS_LISTEN",
            ca.config.https_listen.to_string(),
        ),
        (
            "HALLMARK_SERVER__HTTP_LISTEN",
            ca.config.http_listen.to_string(),
        ),
        ("HALLMARK_CRL__PARTITIONS", "4".into()),
        ("HALLMARK_CRL__DEBOUNCE_SECS", "0".into()),
    ]
}

fn run(ca: &TestCa, args: &[&str], extra: &[(&str, &str)]) -> (bool, String) {
    let data = ca.data_dir();
    let mut full = vec!["--data-dir", data.to_str().unwrap()];
    full.extend_from_slice(args);
    let env = cli_env(ca);
    let mut pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    pairs.extend_from_slice(extra);
    let out = hallmark(ca.dir.path(), &full, &pairs);
    (out.status.success(), text(&out))
}

/// `openssl ocsp` for `cert` issued by `issuer` (files in `dir`), trusting
/// `trust`: (status word, whole output).
fn ocsp(dir: &Path, issuer: &str, cert: &str, url: &str, trust: &str) -> (String, String) {
    let (ok, out) = openssl_status(
        dir,
        &[
            "ocsp", "-issuer", issuer, "-cert", cert, "-url", url, "-CAfile", trust,
        ],
    );
    assert!(ok, "{out}");
    let status = out
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{cert}: ")))
        .unwrap_or_else(|| panic!("no status for {cert}: {out}"))
        .to_owned();
    (status, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_intermediate_keeps_answering_for_its_certificates_while_the_new_one_issues() {
    for backend in backends() {
        let mut ca = TestCa::with_env(
            backend,
            &[
                ("HALLMARK_CRL__PARTITIONS", "4".into()),
                ("HALLMARK_CRL__DEBOUNCE_SECS", "0".into()),
            ],
        )
        .await;
        let dir = ca.dir.path().to_path_buf();
        let d = dir.as_path();
        let running = ca.start().await;
        std::fs::write(d.join("root.pem"), &running.root_pem).unwrap();
        let (owner, _) = api_key(&running.authority, "owner", Role::Requester).await;
        let (_, admin_key) = api_key(&running.authority, "admin", Role::Admin).await;
        let (old_a, old_a_pem) = issue(&running.authority, d, "old-a", "a.internal", &owner).await;
        let (old_b, _) = issue(&running.authority, d, "old-b", "b.internal", &owner).await;
        let old = running.authority.issuer().certificate().clone();
        std::fs::write(d.join("old-issuing.pem"), old.pem()).unwrap();
        running.stop().await;

        // A wrong passphrase changes nothing.
        let issuing = ca.data_dir().join("ca/issuing.crt.pem");
        let before = std::fs::read(&issuing).unwrap();
        let (ok, out) = run(
            &ca,
            &["ca", "rotate"],
            &[("HALLMARK_ROOT_PASSPHRASE", "not the passphrase at all")],
        );
        assert!(!ok && out.contains("passphrase"), "{out}");
        assert_eq!(std::fs::read(&issuing).unwrap(), before);
        assert!(!ca.data_dir().join("ca/retired").exists());

        let (ok, out) = run(
            &ca,
            &["ca", "rotate"],
            &[("HALLMARK_ROOT_PASSPHRASE", PASSPHRASE)],
        );
        assert!(ok && out.contains("Rotated the issuing CA"), "{out}");
        assert!(
            out.contains(&format!("retired         {}", old.subject())),
            "{out}"
        );
        let retired_key = ca
            .data_dir()
            .join(format!("ca/retired/{}.key.pem", old.id()));
        let mode = std::fs::metadata(&retired_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the retired key stays private");

        let mut ca = ca;
        let running = ca.start().await;
        let authority = running.authority.clone();
        let new = authority.issuer().certificate().clone();
        assert_ne!(new.id(), old.id(), "a new intermediate issues");
        assert_eq!(
            authority
                .retired()
                .iter()
                .map(|r| r.issuer.certificate().id())
                .collect::<Vec<_>>(),
            vec![old.id()]
        );
        std::fs::write(d.join("new-issuing.pem"), new.pem()).unwrap();
        let (new_c, new_c_pem) = issue(&authority, d, "new-c", "c.internal", &owner).await;

        // Both chains verify to the one root.
        for (leaf, issuer) in [
            ("old-a.pem", "old-issuing.pem"),
            ("new-c.pem", "new-issuing.pem"),
        ] {
            let (ok, out) = openssl_status(
                d,
                &["verify", "-CAfile", "root.pem", "-untrusted", issuer, leaf],
            );
            assert!(ok, "{leaf}: {out}");
        }
        let (ok, _) = openssl_status(
            d,
            &[
                "verify",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "new-issuing.pem",
                "old-a.pem",
            ],
        );
        assert!(!ok, "the old leaf does not chain to the new intermediate");

        // The retired intermediate's certificate is still where its
        // certificates' caIssuers URL points; chains follow each issuer.
        let client = running.client();
        let served = reqwest::get(format!("{}/ca/{}.crt", running.http_url, old.id()))
            .await
            .unwrap();
        assert_eq!(served.status(), 200);
        assert_eq!(served.bytes().await.unwrap().as_ref(), old.der());
        for (serial, issuer) in [(&old_a, &old), (&new_c, &new)] {
            let chain = client
                .get(format!(
                    "{}/api/v1/certificates/{serial}",
                    running.https_url
                ))
                .bearer_auth(&admin_key)
                .header("accept", "application/pem-certificate-chain")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(chain.ends_with(&issuer.pem()), "{serial}: {chain}");
        }

        // The start page names the earlier issuer beside the current one.
        let page = get_text(&client, format!("{}/", running.https_url)).await;
        assert!(
            page.contains("Earlier issuers") && page.contains(&format!("/crl/{}.crl", old.id())),
            "{page}"
        );

        // Revoking an old certificate (through the CLI, beside the running
        // service) lands in the retired intermediate's CRL and OCSP.
        let (ok, out) = run(&ca, &["revoke", &old_a, "--reason", "keyCompromise"], &[]);
        assert!(ok, "{out}");
        assert!(out.contains(&format!("published {}", old.id())), "{out}");
        let (crl_url, ocsp_url) = urls(&old_a_pem);
        assert!(
            crl_url.contains(&format!("/crl/{}-p", old.id())),
            "{crl_url}"
        );
        let (der, _, serials) = crl_until(&crl_url, |_, s| s.contains(&old_a)).await;
        assert!(!serials.contains(&old_b));
        write_crl_pem(d, &der, "old.crl.pem");
        let (ok, out) = openssl_status(
            d,
            &[
                "verify",
                "-crl_check",
                "-CRLfile",
                "old.crl.pem",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "old-issuing.pem",
                "old-a.pem",
            ],
        );
        assert!(!ok && out.contains("certificate revoked"), "{out}");
        let (complete, _, serials) = crl_until(
            &format!("{}/crl/{}.crl", running.http_url, old.id()),
            |_, s| s.contains(&old_a),
        )
        .await;
        assert!(!complete.is_empty() && serials.len() == 1);

        let (status, out) = ocsp(d, "old-issuing.pem", "old-a.pem", &ocsp_url, "root.pem");
        assert!(
            status.starts_with("revoked") && out.contains("Response verify OK"),
            "{out}"
        );
        let (status, out) = ocsp(d, "old-issuing.pem", "old-b.pem", &ocsp_url, "root.pem");
        assert!(
            status == "good" && out.contains("Response verify OK"),
            "{out}"
        );
        let (status, out) = ocsp(
            d,
            "new-issuing.pem",
            "new-c.pem",
            &urls(&new_c_pem).1,
            "root.pem",
        );
        assert!(
            status == "good" && out.contains("Response verify OK"),
            "{out}"
        );

        // status names the retired issuer; the audit chain holds the rotation.
        let (_, out) = run(&ca, &["status"], &[]);
        assert!(out.contains(&format!("{:<14} retired", old.id())), "{out}");
        let (ok, out) = run(&ca, &["audit", "verify"], &[]);
        assert!(ok, "{out}");
        let rotations = authority
            .reads()
            .audit_page(0, 10_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.action == "ca.rotate")
            .collect::<Vec<_>>();
        assert_eq!(rotations.len(), 1);
        assert_eq!(rotations[0].subject, new.id());
        // A backup carries the retired intermediate and its key.
        let backup = d.join("backup");
        let (ok, out) = run(&ca, &["backup", backup.to_str().unwrap()], &[]);
        assert!(ok, "{out}");
        let retired_copy = backup.join(format!("ca/retired/{}.key.pem", old.id()));
        assert_eq!(
            std::fs::read(&retired_copy).unwrap(),
            std::fs::read(&retired_key).unwrap()
        );
        let manifest = std::fs::read_to_string(backup.join("manifest.json")).unwrap();
        assert!(
            manifest.contains(&format!("ca/retired/{}.crt.pem", old.id())),
            "{manifest}"
        );
        running.stop().await;
        ca.cleanup().await;
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// An OpenSSL CA as `openssl ca` leaves it, in `dir/old`: three
/// certificates issued, one revoked superseded, one keyCompromise.
fn openssl_ca(dir: &Path) -> [String; 3] {
    let old = dir.join("old");
    std::fs::create_dir_all(old.join("newcerts")).unwrap();
    std::fs::write(old.join("index.txt"), "").unwrap();
    std::fs::write(old.join("serial"), "1000\n").unwrap();
    std::fs::write(
        old.join("ca.cnf"),
        "[ ca ]\ndefault_ca = old\n[ old ]\ndir = .\ndatabase = index.txt\n\
         new_certs_dir = newcerts\ncertificate = ca.crt\nprivate_key = ca.key\nserial = serial\n\
         default_md = sha256\npolicy = any\ndefault_days = 365\ncopy_extensions = copy\n\
         unique_subject = no\n[ any ]\ncommonName = supplied\n",
    )
    .unwrap();
    openssl(
        &old,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/O=Old Corp/CN=Old Corp CA",
            "-days",
            "3650",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    let mut serials = Vec::new();
    for name in ["one", "two", "three"] {
        openssl(
            &old,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}.old.internal"),
                "-addext",
                &format!("subjectAltName=DNS:{name}.old.internal"),
            ],
        );
        openssl(
            &old,
            &[
                "ca",
                "-batch",
                "-config",
                "ca.cnf",
                "-in",
                &format!("{name}.csr"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
        let out = openssl(
            &old,
            &["x509", "-in", &format!("{name}.pem"), "-noout", "-serial"],
        );
        serials.push(
            out.trim()
                .trim_start_matches("serial=")
                .to_ascii_lowercase(),
        );
    }
    openssl(
        &old,
        &[
            "ca",
            "-config",
            "ca.cnf",
            "-revoke",
            "two.pem",
            "-crl_reason",
            "superseded",
        ],
    );
    openssl(
        &old,
        &[
            "ca",
            "-config",
            "ca.cnf",
            "-revoke",
            "three.pem",
            "-crl_compromise",
            "20260101000000Z",
        ],
    );
    serials.try_into().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openssl_ca_is_imported_and_hallmark_answers_for_its_certificates() {
    for backend in backends() {
        let mut ca = TestCa::new(backend).await;
        let dir = ca.dir.path().to_path_buf();
        let d = dir.as_path();
        let [one, two, three] = openssl_ca(d);
        let old = d.join("old");
        // The key encrypted, as a careful operator keeps it.
        openssl(
            &old,
            &[
                "pkcs8",
                "-topk8",
                "-in",
                "ca.key",
                "-out",
                "ca.enc.pem",
                "-passout",
                "pass:old ca key passphrase",
            ],
        );
        std::fs::write(d.join("key-pass"), "old ca key passphrase\n").unwrap();
        let p = |f: &str| old.join(f).to_str().unwrap().to_owned();
        let import = |index: &str, key: &str| {
            vec![
                "import".to_owned(),
                "openssl".into(),
                "--ca-cert".into(),
                p("ca.crt"),
                "--ca-key".into(),
                p(key),
                "--index".into(),
                p(index),
                "--certs".into(),
                p("newcerts"),
            ]
        };
        let pass_file = d.join("key-pass");
        let pass = [(
            "HALLMARK_IMPORT_KEY_PASSPHRASE_FILE",
            pass_file.to_str().unwrap(),
        )];

        // Refusals, each with its sentence, and nothing written.
        let index = std::fs::read_to_string(old.join("index.txt")).unwrap();
        std::fs::write(
            old.join("index-extra.txt"),
            format!("{index}V\t300101000000Z\t\tABCD\tunknown\t/CN=ghost\n"),
        )
        .unwrap();
        let (ok, out) = run(&ca, &strs(&import("index-extra.txt", "ca.enc.pem")), &pass);
        assert!(
            !ok && out.contains("lists 1 serial(s) with no certificate") && out.contains("abcd"),
            "{out}"
        );
        openssl(
            &old,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "other.key",
            ],
        );
        let (ok, out) = run(&ca, &strs(&import("index.txt", "other.key")), &[]);
        assert!(!ok && out.contains("not the CA certificate's"), "{out}");
        let (ok, out) = run(
            &ca,
            &strs(&import("index.txt", "ca.enc.pem")),
            &[("HALLMARK_IMPORT_KEY_PASSPHRASE_FILE", "/nonexistent")],
        );
        assert!(!ok && out.contains("/nonexistent"), "{out}");
        let imported_dir = ca.data_dir().join("ca/imported");
        assert!(
            !imported_dir.exists() || std::fs::read_dir(&imported_dir).unwrap().count() == 0,
            "a refused import leaves no files"
        );

        let (ok, out) = run(&ca, &strs(&import("index.txt", "ca.enc.pem")), &pass);
        assert!(ok, "{out}");
        assert!(
            out.contains("3 certificates (2 revoked, 0 already expired)")
                && out.contains("(2 entries)"),
            "{out}"
        );
        let id = out
            .split(" as ")
            .nth(1)
            .and_then(|s| s.split(':').next())
            .unwrap()
            .to_owned();
        assert!(id.starts_with("imp-"), "{id}");
        let key_file = imported_dir.join(format!("{id}.key.pem"));
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let key_text = std::fs::read_to_string(&key_file).unwrap();
        assert!(key_text.contains("BEGIN PRIVATE KEY"));

        // Twice is refused.
        let (ok, out) = run(&ca, &strs(&import("index.txt", "ca.enc.pem")), &pass);
        assert!(!ok && out.contains("imported already"), "{out}");

        let running = ca.start().await;
        let (_, admin_key) = api_key(&running.authority, "admin", Role::Admin).await;
        // Its CRL, signed by the old CA's key, lists what it revoked.
        let crl_url = format!("{}/crl/{id}.crl", running.http_url);
        let (der, _, serials) = crl_until(&crl_url, |_, s| s.len() == 2).await;
        let mut want = vec![two.clone(), three.clone()];
        want.sort();
        let mut got = serials.clone();
        got.sort();
        assert_eq!(got, want);
        write_crl_pem(&old, &der, "hallmark.crl.pem");
        let (ok, out) = openssl_status(
            &old,
            &[
                "crl",
                "-in",
                "hallmark.crl.pem",
                "-CAfile",
                "ca.crt",
                "-noout",
                "-text",
            ],
        );
        assert!(ok && out.contains("verify OK"), "{out}");
        assert!(
            out.contains("Key Compromise") && out.contains("Superseded"),
            "{out}"
        );
        for (leaf, expect_ok) in [("one.pem", true), ("two.pem", false)] {
            let (ok, out) = openssl_status(
                &old,
                &[
                    "verify",
                    "-crl_check",
                    "-CRLfile",
                    "hallmark.crl.pem",
                    "-CAfile",
                    "ca.crt",
                    leaf,
                ],
            );
            assert_eq!(ok, expect_ok, "{leaf}: {out}");
        }

        // OCSP answers for the old serials, signed by the old CA.
        let ocsp_url = format!("{}/ocsp", running.http_url);
        let (status, out) = ocsp(&old, "ca.crt", "one.pem", &ocsp_url, "ca.crt");
        assert!(
            status == "good" && out.contains("Response verify OK"),
            "{out}"
        );
        let (status, out) = ocsp(&old, "ca.crt", "three.pem", &ocsp_url, "ca.crt");
        assert!(
            status.starts_with("revoked") && out.contains("keyCompromise"),
            "{out}"
        );

        // The REST API knows them.
        let v: Value = running
            .client()
            .get(format!("{}/api/v1/certificates/{two}", running.https_url))
            .bearer_auth(&admin_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], "revoked", "{v}");
        assert_eq!(v["revocation_reason"], "superseded", "{v}");
        assert_eq!(v["issuer"], id.as_str(), "{v}");
        assert_eq!(v["identifiers"][0], "two.old.internal", "{v}");
        assert!(one.len() == 4, "openssl ca's serials are short: {one}");
        running.stop().await;
        ca.cleanup().await;
    }
}
