//! The issuing key in a PKCS#11 token (SoftHSM2), through the real binary:
//! init makes the key in a fresh token, two instances share it, and every
//! signature — certificates, CRLs, the OCSP responder's certificate, the
//! service's own TLS certificate — is made there and verifies; a restart
//! finds the key again; a wrong PIN or a missing token stops the start with
//! one sentence.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::support::pki::ocsp_status;
use crate::support::*;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A fresh SoftHSM2 token labelled `hallmark` in `d/tokens`; returns the
/// SOFTHSM2_CONF path.
fn fresh_token(d: &Path) -> String {
    std::fs::create_dir_all(d.join("tokens")).unwrap();
    let conf = d.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            d.join("tokens").display()
        ),
    )
    .unwrap();
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            "hallmark",
            "--pin",
            "246810",
            "--so-pin",
            "135790",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::write(d.join("pin"), "246810\n").unwrap();
    std::fs::write(d.join("bad-pin"), "000000\n").unwrap();
    conf.display().to_string()
}

/// The real binary, as the CLI tests run it.
use crate::cli::{hallmark as run, text};

/// Starts `serve` on fresh ports and waits for `/readyz`.
fn start(d: &Path, env: &[(&str, &str)]) -> (Child, String, String) {
    let (https, http) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hallmark"));
    cmd.arg("serve")
        .current_dir(d)
        .env_remove("DATABASE_URL")
        .env_remove("HALLMARK_ROOT_PASSPHRASE")
        .env("HALLMARK_SERVER__HTTPS_LISTEN", &https)
        .env("HALLMARK_SERVER__HTTP_LISTEN", &http)
        .env(
            "HALLMARK_SERVER__PUBLIC_HTTPS_URL",
            format!("https://{https}"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            line.clear();
        }
    });
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(&http) {
            use std::io::{Read, Write};
            s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").unwrap();
            let mut resp = String::new();
            let _ = s.read_to_string(&mut resp);
            if resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200") {
                return (child, https, http);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("serve did not become ready");
}

fn stop(mut child: Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

fn get(url: &str) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "10", url])
        .output()
        .unwrap();
    assert!(out.status.success(), "GET {url}: {out:?}");
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuing_key_lives_in_a_pkcs11_token_shared_by_two_instances() {
    if !tool_present("softhsm2-util", "apt-get install softhsm2") {
        return;
    }
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let conf = fresh_token(d);
        let db = TestDb::new(backend, d).await;
        let env = [
            ("SOFTHSM2_CONF", conf.as_str()),
            ("DATABASE_URL", db.url.as_str()),
        ];
        let mut init_env = env.to_vec();
        init_env.push(("HALLMARK_ROOT_PASSPHRASE", PASSPHRASE));
        let out = run(
            d,
            &[
                "init",
                "--pkcs11-module",
                MODULE,
                "--pkcs11-token",
                "hallmark",
                "--pkcs11-pin-file",
                "pin",
            ],
            &init_env,
        );
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("it never leaves the token"),
            "{}",
            text(&out)
        );
        // No key file: the configuration names the token instead.
        assert!(!d.join("hallmark-data/ca/issuing.key.pem").exists());
        let toml = std::fs::read_to_string(d.join("hallmark-data/hallmark.toml")).unwrap();
        assert!(toml.contains("\npkcs11_token = \"hallmark\""), "{toml}");
        let issuing = std::fs::read_to_string(d.join("hallmark-data/ca/issuing.crt.pem")).unwrap();
        std::fs::write(d.join("issuing.pem"), &issuing).unwrap();
        std::fs::copy(d.join("hallmark-data/ca/root.crt.pem"), d.join("root.pem")).unwrap();

        // Two instances on the same token and database.
        let (a, https_a, http_a) = start(d, &env);
        let (b, _https_b, http_b) = start(d, &env);

        // A certificate signed in the token (operator path), verified.
        openssl(
            d,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "leaf.key",
                "-subj",
                "/CN=hsm.internal",
                "-addext",
                "subjectAltName=DNS:hsm.internal",
                "-out",
                "leaf.csr",
            ],
        );
        let signed = run(d, &["sign", "leaf.csr"], &env);
        assert!(signed.status.success(), "{}", text(&signed));
        let chain = String::from_utf8(signed.stdout).unwrap();
        let end = chain.find("-----END CERTIFICATE-----").unwrap() + 26;
        std::fs::write(d.join("leaf.pem"), &chain[..end]).unwrap();
        openssl(
            d,
            &[
                "verify",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "issuing.pem",
                "leaf.pem",
            ],
        );
        let serial = openssl(d, &["x509", "-in", "leaf.pem", "-noout", "-serial"]);
        let serial = serial
            .trim()
            .trim_start_matches("serial=")
            .to_ascii_lowercase();

        // The service's own TLS certificate was signed in the token too.
        let (ok, out) = openssl_status(
            d,
            &[
                "s_client",
                "-connect",
                &https_a,
                "-CAfile",
                "root.pem",
                "-verify_return_error",
                "-brief",
            ],
        );
        assert!(ok && out.contains("Verification: OK"), "{out}");

        // Revocation: the CRL (signed in the token) lists it on both
        // instances, and OCSP answers revoked with a chain to the root.
        assert_eq!(
            ocsp_status(d, "leaf.pem", &format!("http://{http_b}/ocsp")),
            "good"
        );
        let revoked = run(d, &["revoke", &serial, "--reason", "keyCompromise"], &env);
        assert!(revoked.status.success(), "{}", text(&revoked));
        let int_id = {
            let text = openssl(
                d,
                &[
                    "x509",
                    "-in",
                    "leaf.pem",
                    "-noout",
                    "-ext",
                    "crlDistributionPoints",
                ],
            );
            let url = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("URI:"))
                .unwrap()
                .to_owned();
            url.rsplit('/').next().unwrap().to_owned()
        };
        for http in [&http_a, &http_b] {
            let mut listed = false;
            for _ in 0..50 {
                let crl = get(&format!("http://{http}/crl/{int_id}"));
                std::fs::write(d.join("crl.der"), &crl).unwrap();
                let text = openssl(
                    d,
                    &[
                        "crl",
                        "-inform",
                        "DER",
                        "-in",
                        "crl.der",
                        "-CAfile",
                        "issuing.pem",
                        "-noout",
                        "-text",
                    ],
                );
                if text.to_ascii_lowercase().contains(&serial) {
                    listed = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            assert!(listed, "{http} serves a CRL listing {serial}");
            let status = ocsp_status(d, "leaf.pem", &format!("http://{http}/ocsp"));
            assert!(status.starts_with("revoked"), "{http}: {status}");
        }

        // Restart: the key is found again by its label.
        stop(a);
        let (a, https_a, _) = start(d, &env);
        let (ok, out) = openssl_status(
            d,
            &[
                "s_client",
                "-connect",
                &https_a,
                "-CAfile",
                "root.pem",
                "-verify_return_error",
                "-brief",
            ],
        );
        assert!(ok, "{out}");
        stop(a);
        stop(b);

        // A wrong PIN, a missing token, a missing module: one sentence and
        // a non-zero exit before anything listens.
        for (key, value, sentence) in [
            (
                "HALLMARK_CA__PKCS11_PIN_FILE",
                "bad-pin",
                "refused the PIN: it is incorrect",
            ),
            (
                "HALLMARK_CA__PKCS11_TOKEN",
                "absent",
                "no PKCS#11 token labelled \"absent\" is present",
            ),
            (
                "HALLMARK_CA__PKCS11_MODULE",
                "/nonexistent/libpkcs11.so",
                "could not be loaded: there is no such file",
            ),
        ] {
            let mut bad = env.to_vec();
            bad.push((key, value));
            bad.push(("HALLMARK_SERVER__HTTPS_LISTEN", "127.0.0.1:0"));
            bad.push(("HALLMARK_SERVER__HTTP_LISTEN", "127.0.0.1:0"));
            let out = run(d, &["serve"], &bad);
            let said = text(&out);
            assert!(!out.status.success(), "{said}");
            assert!(said.contains(sentence), "{said}");
            assert!(!said.contains("panicked"), "{said}");
        }
        db.cleanup().await;
    }
}

#[tokio::test]
async fn the_root_key_can_live_in_the_token_too_online_or_offline() {
    if !tool_present("softhsm2-util", "apt-get install softhsm2") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conf = fresh_token(d);
    let token = [
        ("SOFTHSM2_CONF", conf.as_str()),
        ("HALLMARK_CA__PKCS11_MODULE", MODULE),
        ("HALLMARK_CA__PKCS11_TOKEN", "hallmark"),
        ("HALLMARK_CA__PKCS11_PIN_FILE", "pin"),
    ];
    let ok = |o: Output| {
        assert!(o.status.success(), "{}", text(&o));
        text(&o)
    };

    // Both keys in the token: no passphrase anywhere, no key files.
    let mut both = token.to_vec();
    both.push(("HALLMARK_CA__PKCS11_ROOT_KEY_LABEL", "hallmark-root"));
    let out = ok(run(d, &["--data-dir", "both", "init"], &both));
    assert!(out.contains("root key      in the PKCS#11 token"), "{out}");
    assert!(!d.join("both/ca/root.key.pem").exists());
    assert!(!d.join("both/ca/issuing.key.pem").exists());
    // init signed the first root CRL with the token's root key.
    assert!(out.contains("published     root.crl"), "{out}");
    let out = ok(run(
        d,
        &["--data-dir", "both", "crl", "generate", "--root"],
        &both,
    ));
    assert!(out.contains("root.crl number 2"), "{out}");

    // An offline root in the token signs a file-key intermediate's CSR and
    // its CRL, without a passphrase.
    let out = ok(run(
        d,
        &[
            "--data-dir",
            "offline",
            "init",
            "--root-only",
            "--pkcs11-module",
            MODULE,
            "--pkcs11-token",
            "hallmark",
            "--pkcs11-pin-file",
            "pin",
        ],
        &[("SOFTHSM2_CONF", conf.as_str())],
    ));
    assert!(out.contains("label \"hallmark-root\""), "{out}");
    assert!(!d.join("offline/ca/root.key.pem").exists());
    let toml = std::fs::read_to_string(d.join("offline/hallmark.toml")).unwrap();
    assert!(
        toml.contains("\npkcs11_root_key_label = \"hallmark-root\""),
        "{toml}"
    );
    ok(run(
        d,
        &["--data-dir", "online", "init", "--intermediate-csr"],
        &[],
    ));
    let offline = [("SOFTHSM2_CONF", conf.as_str())];
    ok(run(
        d,
        &[
            "--data-dir",
            "offline",
            "root",
            "sign-intermediate",
            "online/ca/issuing.csr.pem",
            "--out",
            "int.pem",
        ],
        &offline,
    ));
    ok(run(
        d,
        &[
            "--data-dir",
            "online",
            "ca",
            "install-intermediate",
            "int.pem",
            "--root",
            "offline/ca/root.crt.pem",
        ],
        &[],
    ));
    openssl(
        d,
        &["verify", "-CAfile", "offline/ca/root.crt.pem", "int.pem"],
    );
    ok(run(
        d,
        &["--data-dir", "offline", "root", "crl", "--out", "root.crl"],
        &offline,
    ));
    openssl(
        d,
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "root.crl",
            "-CAfile",
            "offline/ca/root.crt.pem",
            "-noout",
        ],
    );
    let out = ok(run(
        d,
        &["--data-dir", "online", "crl", "import", "root.crl"],
        &[],
    ));
    assert!(out.contains("published root.crl"), "{out}");
}
