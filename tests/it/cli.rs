//! The real `hallmark` binary, run as an operator would.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hallmark::pki::Serial;

use crate::support::*;

pub(crate) fn hallmark(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hallmark"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("HALLMARK_ROOT_PASSPHRASE")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

pub(crate) fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn hallmark_sign_prints_a_chain_openssl_accepts_and_records_it() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(backend, dir.path()).await;
        let d = dir.path();
        let env = [
            ("HALLMARK_ROOT_PASSPHRASE", PASSPHRASE),
            ("DATABASE_URL", db.url.as_str()),
        ];
        let out = hallmark(d, &["init"], &env);
        assert!(out.status.success(), "{}", text(&out));

        // A CSR made by `openssl req`, as an operator would.
        openssl(
            d,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "svc.key",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-new",
                "-key",
                "svc.key",
                "-subj",
                "/CN=svc.internal",
                "-addext",
                "subjectAltName=DNS:svc.internal",
                "-out",
                "svc.csr",
            ],
        );
        let out = hallmark(d, &["sign", "svc.csr", "--days", "30"], &env);
        assert!(out.status.success(), "{}", text(&out));
        let chain = String::from_utf8(out.stdout.clone()).unwrap();
        assert_eq!(
            chain.matches("BEGIN CERTIFICATE").count(),
            2,
            "leaf and intermediate"
        );
        std::fs::write(d.join("chain.pem"), &chain).unwrap();
        let verified = openssl(
            d,
            &[
                "verify",
                "-CAfile",
                "hallmark-data/ca/root.crt.pem",
                "-untrusted",
                "chain.pem",
                "chain.pem",
            ],
        );
        assert!(verified.contains("OK"));

        // It is in the store, as the operator's act, and in the audit log.
        let serial_hex = openssl(d, &["x509", "-in", "chain.pem", "-noout", "-serial"]);
        let serial: Serial = serial_hex
            .trim()
            .trim_start_matches("serial=")
            .to_ascii_lowercase()
            .parse()
            .unwrap();
        let store = hallmark::store::connect(&db.url).await.unwrap();
        let record = store.certificate(&serial).await.unwrap();
        assert!(record.requested_by.starts_with("operator:"));
        let audit = store.audit_page(0, 10).await.unwrap();
        assert!(audit
            .iter()
            .any(|r| r.action == "certificate.issue" && r.subject == serial.to_hex()));
        let out = hallmark(d, &["audit", "verify"], &env);
        assert!(
            // init's two first CRLs, then the issuance.
            out.status.success() && text(&out).contains("audit log verified: 3 records"),
            "{}",
            text(&out)
        );

        // Revoked by the serial as openssl printed it (upper case); a
        // second revocation is refused with a clear message.
        let printed = serial_hex.trim().trim_start_matches("serial=").to_owned();
        assert!(
            printed.chars().any(|c| c.is_ascii_uppercase())
                || printed.chars().all(|c| c.is_ascii_digit())
        );
        let out = hallmark(d, &["revoke", &printed, "--reason", "superseded"], &env);
        assert!(out.status.success(), "{}", text(&out));
        let record = store.certificate(&serial).await.unwrap();
        assert_eq!(record.revocation_reason, Some(4));
        let out = hallmark(d, &["revoke", &printed], &env);
        assert!(!out.status.success());
        assert!(text(&out).contains("already revoked"), "{}", text(&out));
        let out = hallmark(d, &["revoke", "not-a-serial"], &env);
        assert!(!out.status.success());
        assert!(text(&out).contains("is not a serial"), "{}", text(&out));

        // A CSR outside policy: one clear sentence, non-zero exit, nothing stored.
        openssl(
            d,
            &[
                "req",
                "-new",
                "-key",
                "svc.key",
                "-subj",
                "/CN=svc.example.com",
                "-out",
                "bad.csr",
            ],
        );
        let out = hallmark(d, &["sign", "bad.csr"], &env);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("\"svc.example.com\" is not under an allowed domain"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(out.stdout.is_empty());
        assert_eq!(store.count_certificates().await.unwrap(), 1);

        std::fs::write(d.join("huge.csr"), vec![b'A'; 1 << 20]).unwrap();
        let out = hallmark(d, &["sign", "huge.csr"], &env);
        assert!(
            !out.status.success() && text(&out).contains("it is not a CSR"),
            "{}",
            text(&out)
        );

        let out = hallmark(d, &["sign", "missing.csr"], &env);
        assert!(
            !out.status.success() && text(&out).contains("cannot read missing.csr"),
            "{}",
            text(&out)
        );
        drop(store);
        db.cleanup().await;
    }
}

#[test]
fn init_refuses_to_overwrite_and_needs_a_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = hallmark(d, &["init"], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("set HALLMARK_ROOT_PASSPHRASE"),
        "{}",
        text(&out)
    );
    assert!(!d.join("hallmark-data/ca").exists(), "nothing half-made");

    let out = hallmark(d, &["init"], &[("HALLMARK_ROOT_PASSPHRASE", "short")]);
    assert!(
        !out.status.success() && text(&out).contains("at least 12 characters"),
        "{}",
        text(&out)
    );
    assert!(!d.join("hallmark-data/ca").exists(), "nothing half-made");

    let env = [("HALLMARK_ROOT_PASSPHRASE", PASSPHRASE)];
    let out = hallmark(d, &["init", "--key-type", "p384"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let root = std::fs::read(d.join("hallmark-data/ca/root.crt.pem")).unwrap();
    let out = hallmark(d, &["init"], &env);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("refusing to overwrite"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read(d.join("hallmark-data/ca/root.crt.pem")).unwrap(),
        root
    );
    assert!(
        d.join("hallmark-data/hallmark.toml").exists(),
        "a commented config is written"
    );
}

#[test]
fn bad_configuration_fails_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = hallmark(
        dir.path(),
        &["serve"],
        &[("HALLMARK_SERVER__TLS", "sometimes")],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("server.tls"), "{}", text(&out));
    let out = hallmark(dir.path(), &["--config", "nope.toml", "serve"], &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("nope.toml"), "{}", text(&out));
}

#[tokio::test]
async fn serve_first_start_creates_the_ca_prints_a_password_once_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (https, http) = (free_port(), free_port());
    let https_listen = format!("127.0.0.1:{https}");
    let http_listen = format!("127.0.0.1:{http}");
    let env = [
        ("HALLMARK_ROOT_PASSPHRASE", PASSPHRASE),
        ("HALLMARK_SERVER__HTTPS_LISTEN", https_listen.as_str()),
        ("HALLMARK_SERVER__HTTP_LISTEN", http_listen.as_str()),
    ];
    let first = run_serve(d, &env, true);
    assert!(first.contains("creating one"), "{first}");
    let second = run_serve(d, &env, false);
    assert!(!second.contains("creating one"), "{second}");
}

#[test]
fn the_first_password_can_go_to_a_file_or_be_avoided_with_user_add() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (https, http) = (free_port(), free_port());
    let https_listen = format!("127.0.0.1:{https}");
    let http_listen = format!("127.0.0.1:{http}");
    let secret = d.join("admin-password");
    let env = [
        ("HALLMARK_ROOT_PASSPHRASE", PASSPHRASE),
        ("HALLMARK_SERVER__HTTPS_LISTEN", https_listen.as_str()),
        ("HALLMARK_SERVER__HTTP_LISTEN", http_listen.as_str()),
        (
            "HALLMARK_SERVER__INITIAL_PASSWORD_FILE",
            secret.to_str().unwrap(),
        ),
    ];
    let printed = run_serve(d, &env, true);
    let password = std::fs::read_to_string(&secret).unwrap();
    let password = password.trim();
    assert!(password.len() >= 16, "{password:?}");
    assert!(
        !printed.contains(password),
        "the password stays out of the output"
    );
    assert!(printed.contains(secret.to_str().unwrap()), "{printed}");
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Or: add the first administrator before the first start; serve then
    // makes no password at all.
    let other = tempfile::tempdir().unwrap();
    let o = other.path();
    let mut add = Command::new(env!("CARGO_BIN_EXE_hallmark"));
    add.args([
        "user",
        "add",
        "alice",
        "--role",
        "admin",
        "--password-stdin",
    ])
    .current_dir(o)
    .env_remove("DATABASE_URL")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = add.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a long enough password\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let env = [
        ("HALLMARK_ROOT_PASSPHRASE", PASSPHRASE),
        ("HALLMARK_SERVER__HTTPS_LISTEN", https_listen.as_str()),
        ("HALLMARK_SERVER__HTTP_LISTEN", http_listen.as_str()),
    ];
    run_serve(o, &env, false);
}

/// Runs `hallmark serve` until it has printed its banner, checks it answers,
/// sends SIGTERM and returns everything it printed.
fn run_serve(d: &Path, env: &[(&str, &str)], expect_password: bool) -> String {
    let (mut child, mut reader, mut printed) = spawn_serve(d, &[], env, Stdio::null());
    let http = env
        .iter()
        .find(|(k, _)| *k == "HALLMARK_SERVER__HTTP_LISTEN")
        .unwrap()
        .1;
    let mut ok = false;
    for _ in 0..50 {
        if let Ok(mut s) = std::net::TcpStream::connect(http) {
            use std::io::{Read, Write};
            s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").unwrap();
            let mut resp = String::new();
            let _ = s.read_to_string(&mut resp);
            if resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200") {
                ok = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "readyz answers 200");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut rest = String::new();
    use std::io::Read;
    let _ = reader.read_to_string(&mut rest);
    let status = child.wait().unwrap();
    assert!(status.success(), "exits cleanly on SIGTERM: {status}");
    printed.push_str(&rest);
    assert_eq!(
        printed.contains("One-time password"),
        expect_password,
        "{printed}"
    );
    printed
}

/// Starts `hallmark [global…] serve` in `d` with its stderr going to
/// `stderr`; returns it once it has printed where its CA certificates are,
/// with its standard output and what it printed so far.
pub(crate) fn spawn_serve(
    d: &Path,
    global: &[&str],
    env: &[(&str, &str)],
    stderr: Stdio,
) -> (
    std::process::Child,
    BufReader<std::process::ChildStdout>,
    String,
) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hallmark"));
    cmd.args(global)
        .arg("serve")
        .current_dir(d)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    while !printed.contains("CA certificates") {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("serve exited early: {printed}");
        }
        printed.push_str(&line);
    }
    (child, reader, printed)
}

#[test]
fn the_root_passphrase_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let secret = d.join("root-passphrase");
    let file = secret.to_str().unwrap();
    // Missing and empty files are clear errors; nothing is half-made.
    let out = hallmark(d, &["init"], &[("HALLMARK_ROOT_PASSPHRASE_FILE", file)]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("HALLMARK_ROOT_PASSPHRASE_FILE") && text(&out).contains("cannot read"),
        "{}",
        text(&out)
    );
    std::fs::write(&secret, "\n").unwrap();
    let out = hallmark(d, &["init"], &[("HALLMARK_ROOT_PASSPHRASE_FILE", file)]);
    assert!(
        !out.status.success() && text(&out).contains("is empty"),
        "{}",
        text(&out)
    );
    assert!(!d.join("hallmark-data/ca").exists(), "nothing half-made");
    // The first line is the passphrase (as Docker secrets are written).
    std::fs::write(&secret, format!("{PASSPHRASE}\n")).unwrap();
    let out = hallmark(d, &["init"], &[("HALLMARK_ROOT_PASSPHRASE_FILE", file)]);
    assert!(out.status.success(), "{}", text(&out));
    let (ok, opened) = openssl_status(
        d,
        &[
            "pkey",
            "-in",
            "hallmark-data/ca/root.key.pem",
            "-passin",
            &format!("pass:{PASSPHRASE}"),
            "-noout",
        ],
    );
    assert!(
        ok,
        "the root key opens with the file's passphrase: {opened}"
    );
}

#[test]
fn sign_refuses_the_cas_own_key_and_known_weak_rsa_moduli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let env = [("HALLMARK_ROOT_PASSPHRASE", PASSPHRASE)];
    let out = hallmark(d, &["init"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let csr_of = |key: &str, out: &str| {
        openssl(
            d,
            &[
                "req",
                "-new",
                "-key",
                key,
                "-subj",
                "/CN=svc.internal",
                "-addext",
                "subjectAltName=DNS:svc.internal",
                "-outform",
                "DER",
                "-out",
                out,
            ],
        );
    };

    // A CSR for the issuing CA's own key.
    csr_of("hallmark-data/ca/issuing.key.pem", "own.der");
    let out = hallmark(d, &["sign", "own.der"], &env);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("the CSR's public key is this CA's own key"),
        "{}",
        text(&out)
    );

    // An RSA CSR whose modulus is made divisible by 3: refused as weak
    // before its (now wrong) signature is even checked.
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa.key",
        ],
    );
    csr_of("rsa.key", "rsa.der");
    let modulus = openssl(d, &["rsa", "-in", "rsa.key", "-noout", "-modulus"]);
    let modulus = hex::decode(modulus.trim().trim_start_matches("Modulus=")).unwrap();
    let mut der = std::fs::read(d.join("rsa.der")).unwrap();
    let at = der
        .windows(modulus.len())
        .position(|w| w == modulus.as_slice())
        .expect("the modulus in the CSR");
    // Stay odd (or 2 would be the factor found): move n by 2 or 4 to a
    // multiple of 3, up or down, whichever changes only the last byte.
    let rem = modulus
        .iter()
        .fold(0u32, |r, b| (r * 256 + u32::from(*b)) % 3) as u8;
    let (up, down) = if rem == 1 { (2, 4) } else { (4, 2) };
    let last = at + modulus.len() - 1;
    der[last] = if der[last] <= 255 - up {
        der[last] + up
    } else {
        der[last] - down
    };
    std::fs::write(d.join("weak.der"), &der).unwrap();
    let out = hallmark(d, &["sign", "weak.der"], &env);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("the RSA key is known to be weak: its modulus is divisible by 3"),
        "{}",
        text(&out)
    );
    // The untouched CSR of the same key is signed.
    let out = hallmark(d, &["sign", "rsa.der"], &env);
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test]
async fn an_offline_root_signs_the_intermediate_and_root_crls_that_the_serving_side_installs() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let db = TestDb::new(backend, d).await;
        let pass = [("HALLMARK_ROOT_PASSPHRASE", PASSPHRASE)];
        let url = "http://127.0.0.1:18080";
        // The serving side: no passphrase in its environment, ever.
        let on_env = [
            ("DATABASE_URL", db.url.as_str()),
            ("HALLMARK_POLICY__ALLOWED_SUFFIXES", r#"["corp.internal"]"#),
            ("HALLMARK_SERVER__PUBLIC_HTTP_URL", url),
        ];
        let off_env = [pass[0], ("HALLMARK_SERVER__PUBLIC_HTTP_URL", url)];
        let on = |args: &[&str]| hallmark(d, &[&["--data-dir", "on"], args].concat(), &on_env);
        let off = |args: &[&str]| hallmark(d, &[&["--data-dir", "off"], args].concat(), &off_env);
        let ok = |o: Output| {
            assert!(o.status.success(), "{}", text(&o));
            text(&o)
        };
        let fails = |o: Output, sentence: &str| {
            assert!(!o.status.success(), "{}", text(&o));
            assert!(text(&o).contains(sentence), "{}", text(&o));
        };

        ok(off(&["init", "--root-only"]));
        assert!(!d.join("off/ca/issuing.key.pem").exists());
        fails(off(&["crl", "generate"]), "holds only a root");
        let out = ok(on(&["init", "--intermediate-csr"]));
        assert!(out.contains("permitting corp.internal, localhost"), "{out}");
        assert!(!d.join("on/ca/root.key.pem").exists());
        fails(on(&["crl", "generate"]), "is waiting for its certificate");

        // The root signs with the constraints the CSR asks for.
        let out = ok(off(&[
            "root",
            "sign-intermediate",
            "on/ca/issuing.csr.pem",
            "--out",
            "int.pem",
        ]));
        assert!(
            out.contains("permits       corp.internal, localhost"),
            "{out}"
        );
        assert!(out.contains("(from the CSR)"), "{out}");
        let log = std::fs::read_to_string(d.join("off/ca/signed-intermediates.log")).unwrap();
        assert_eq!(log.lines().count(), 1, "{log}");
        let serial = openssl(d, &["x509", "-in", "int.pem", "-noout", "-serial"]);
        let serial = serial.trim().trim_start_matches("serial=").to_owned();
        assert!(log.contains(&serial.to_ascii_lowercase()), "{log} {serial}");

        // Installing checks what it is given.
        fails(
            on(&["ca", "install-intermediate", "int.pem"]),
            "--root ROOT_CERT",
        );
        fails(
            on(&[
                "ca",
                "install-intermediate",
                "off/ca/root.crt.pem",
                "--root",
                "off/ca/root.crt.pem",
            ]),
            "not for the waiting issuing key",
        );
        let out = ok(on(&[
            "ca",
            "install-intermediate",
            "int.pem",
            "--root",
            "off/ca/root.crt.pem",
        ]));
        assert!(out.contains("it never needs the root key"), "{out}");
        fails(
            on(&["ca", "install-intermediate", "int.pem"]),
            "already has an issuing intermediate",
        );

        // The serving side issues; the chain verifies to the offline root.
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
                "/CN=web.corp.internal",
                "-addext",
                "subjectAltName=DNS:web.corp.internal",
                "-out",
                "leaf.csr",
            ],
        );
        let signed = on(&["sign", "leaf.csr"]);
        let chain = String::from_utf8(signed.stdout.clone()).unwrap();
        assert!(signed.status.success(), "{}", text(&signed));
        let leaf_end = chain.find("-----END CERTIFICATE-----").unwrap() + 26;
        std::fs::write(d.join("leaf.pem"), &chain[..leaf_end]).unwrap();
        openssl(
            d,
            &[
                "verify",
                "-CAfile",
                "off/ca/root.crt.pem",
                "-untrusted",
                "int.pem",
                "leaf.pem",
            ],
        );

        // Root CRLs are signed offline and imported; numbers only rise.
        fails(
            on(&["crl", "generate", "--root"]),
            "the root key is not in on",
        );
        ok(off(&["root", "crl", "--out", "r1.crl"]));
        let out = ok(on(&["crl", "import", "r1.crl"]));
        assert!(out.contains("published root.crl number"), "{out}");
        fails(
            on(&["crl", "import", "r1.crl"]),
            "is not above the last one published",
        );
        fails(
            on(&["crl", "import", "leaf.pem"]),
            "holds no PEM X509 CRL block",
        );
        // A CRL from another root is refused.
        ok(hallmark(
            d,
            &["--data-dir", "other", "init", "--root-only"],
            &off_env,
        ));
        ok(hallmark(
            d,
            &["--data-dir", "other", "root", "crl", "--out", "other.crl"],
            &off_env,
        ));
        fails(
            on(&["crl", "import", "other.crl"]),
            "is not signed by this CA's root",
        );

        // Revoking the intermediate at the root: every later CRL lists it,
        // and OpenSSL then refuses the leaf's chain.
        ok(off(&[
            "root",
            "crl",
            "--out",
            "r2.crl",
            "--revoke",
            &serial,
            "--reason",
            "keyCompromise",
        ]));
        ok(off(&["root", "crl", "--out", "r3.crl"]));
        let out = ok(on(&["crl", "import", "r3.crl"]));
        assert!(out.contains("1 entries"), "{out}");
        let listed = openssl(
            d,
            &["crl", "-inform", "DER", "-in", "r3.crl", "-noout", "-text"],
        );
        assert!(
            listed.contains(&serial) && listed.contains("Key Compromise"),
            "{listed}"
        );
        openssl(
            d,
            &[
                "crl",
                "-inform",
                "DER",
                "-in",
                "r3.crl",
                "-out",
                "root.crl.pem",
            ],
        );
        ok(on(&["crl", "generate"]));
        // What every serving instance serves: the imported root CRL and the
        // intermediate's own.
        let config = config_with(
            &d.join("on"),
            &on_env
                .iter()
                .map(|(k, v)| (*k, v.to_string()))
                .collect::<Vec<_>>(),
        );
        let authority = hallmark::service::open_authority(&config).await.unwrap();
        let int_file = format!("{}.crl", authority.issuer().certificate().id());
        let crls = hallmark::workflow::crl::CrlPublisher::new(authority, config.crl.clone());
        crls.refresh().await.unwrap();
        let served_root = crls.served("root.crl").expect("the root CRL is served");
        assert_eq!(
            served_root.der.as_ref(),
            std::fs::read(d.join("r3.crl")).unwrap().as_slice()
        );
        let int_crl = crls
            .served(&int_file)
            .expect("the intermediate's CRL is served");
        std::fs::write(d.join("int.crl"), int_crl.der.as_ref()).unwrap();
        openssl(
            d,
            &[
                "crl",
                "-inform",
                "DER",
                "-in",
                "int.crl",
                "-out",
                "int.crl.pem",
            ],
        );
        let both = [
            std::fs::read_to_string(d.join("int.crl.pem")).unwrap(),
            std::fs::read_to_string(d.join("root.crl.pem")).unwrap(),
        ]
        .concat();
        std::fs::write(d.join("crls.pem"), both).unwrap();
        // Before the intermediate's revocation (r1's contents), the chain
        // passes the same check.
        openssl(
            d,
            &[
                "crl",
                "-inform",
                "DER",
                "-in",
                "r1.crl",
                "-out",
                "r1.crl.pem",
            ],
        );
        let before = [
            std::fs::read_to_string(d.join("int.crl.pem")).unwrap(),
            std::fs::read_to_string(d.join("r1.crl.pem")).unwrap(),
        ]
        .concat();
        std::fs::write(d.join("before.pem"), before).unwrap();
        openssl(
            d,
            &[
                "verify",
                "-crl_check_all",
                "-CRLfile",
                "before.pem",
                "-CAfile",
                "off/ca/root.crt.pem",
                "-untrusted",
                "int.pem",
                "leaf.pem",
            ],
        );
        let (verified, out) = openssl_status(
            d,
            &[
                "verify",
                "-crl_check_all",
                "-CRLfile",
                "crls.pem",
                "-CAfile",
                "off/ca/root.crt.pem",
                "-untrusted",
                "int.pem",
                "leaf.pem",
            ],
        );
        assert!(!verified, "{out}");
        assert!(out.contains("certificate revoked"), "{out}");
        db.cleanup().await;
    }
}

#[tokio::test]
async fn config_check_status_and_completions_answer_an_operator() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let db = TestDb::new(backend, d).await;
        let env = [
            ("HALLMARK_ROOT_PASSPHRASE", PASSPHRASE),
            ("DATABASE_URL", db.url.as_str()),
        ];

        // `config check` before there is a CA, then for files that are bad
        // in three ways: each exits 1 and names the key or the file.
        let out = hallmark(d, &["config", "check"], &env);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("no CA in this data directory yet"),
            "{}",
            text(&out)
        );

        // `init` publishes the first CRLs, so `status` is clean at once.
        let out = hallmark(d, &["init"], &env);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("published     root.crl"),
            "{}",
            text(&out)
        );
        let out = hallmark(d, &["status"], &env);
        assert!(out.status.success(), "{}", text(&out));
        let said = text(&out);
        assert!(
            said.contains("no problems") && said.contains("root.crl"),
            "{said}"
        );
        let out = hallmark(d, &["status", "--json"], &env);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(status["issuers"].as_array().unwrap().len(), 2, "{status}");
        assert_eq!(status["crls"].as_array().unwrap().len(), 2, "{status}");
        assert!(status["issuers"][1]["days_left"].as_i64().unwrap() > 1800);

        let out = hallmark(d, &["config", "check"], &env);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("within the name constraints of int-"),
            "{}",
            text(&out)
        );
        for (file, body, says) in [
            (
                "type.toml",
                "[policy]\nmax_validity_days = \"x\"\n",
                "policy.max_validity_days: invalid type",
            ),
            (
                "field.toml",
                "[crl]\nvalidity_day = 3\n",
                "crl.validity_day: unknown field",
            ),
            (
                "wide.toml",
                "[policy]\nallowed_suffixes = [\"internal\", \"corp\"]\n",
                "policy.allowed_suffixes includes corp, which the issuing intermediate int-",
            ),
        ] {
            std::fs::write(d.join(file), body).unwrap();
            let out = hallmark(d, &["config", "check", file], &env);
            assert!(!out.status.success(), "{file}: {}", text(&out));
            assert!(text(&out).contains(says), "{file}: {}", text(&out));
        }
        let out = hallmark(d, &["config", "check", "absent.toml"], &env);
        assert!(!out.status.success());
        assert!(
            text(&out).contains("absent.toml does not exist"),
            "{}",
            text(&out)
        );

        // A CRL past its nextUpdate is a problem `status` names, exit 1.
        db.execute("UPDATE crls SET next_update = 1").await;
        let out = hallmark(d, &["status"], &env);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("root.crl is past its nextUpdate"),
            "{}",
            text(&out)
        );

        for shell in ["bash", "zsh", "fish"] {
            let out = hallmark(d, &["completions", shell], &[]);
            assert!(out.status.success(), "{shell}: {}", text(&out));
            let script = String::from_utf8_lossy(&out.stdout);
            assert!(
                script.contains("backup") && script.contains("sign-intermediate"),
                "{shell}"
            );
        }
        let out = hallmark(d, &["completions", "tcsh"], &[]);
        assert!(!out.status.success());
        db.cleanup().await;
    }
}
