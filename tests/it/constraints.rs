//! Name constraints on the issuing intermediate: a certificate the
//! intermediate's key signs for a name outside policy (as a stolen key
//! would; hallmark itself refuses to) is rejected by OpenSSL and rustls,
//! and a configuration wider than the intermediate is refused at start.

use std::path::Path;
use std::process::Command;

use hallmark::datadir::{self, Layout};
use hallmark::pki::profile::LeafRequest;
use hallmark::pki::{Identifier, Issuer, KeySigner, KeyType, PrivateKey, Profile, Serial, Subject};
use hallmark::service::{self, StartError};
use time::OffsetDateTime;

use crate::support::{config_with, PASSPHRASE};
use crate::tls::handshake;

/// Signs a leaf for `ids` with the intermediate's key, bypassing policy.
fn leaf(issuer: &Issuer, ids: &[Identifier]) -> (String, String) {
    let key = PrivateKey::generate(KeyType::P256).unwrap();
    let cert = issuer
        .issue_leaf(
            &LeafRequest {
                spki_der: key.public_key_spki(),
                key_is_rsa: false,
                identifiers: ids,
                subject: &Subject::default(),
                shape: Profile::Server.shape(),
                serial: Serial::random(&mut rand::thread_rng()),
                now: OffsetDateTime::now_utc(),
                validity_days: 30,
                not_after: None,
                crl_partition: 0,
            },
            397,
        )
        .unwrap();
    (
        format!("{}{}", cert.pem(), issuer.certificate().pem()),
        key.to_pkcs8_pem().unwrap().to_string(),
    )
}

/// `openssl verify` of the leaf at the head of `chain` against the root.
fn openssl_verify(dir: &Path, root: &str, chain: &str) -> (bool, String) {
    let blocks: Vec<&str> = chain
        .split_inclusive("-----END CERTIFICATE-----\n")
        .collect();
    std::fs::write(dir.join("root.pem"), root).unwrap();
    std::fs::write(dir.join("leaf.pem"), blocks[0]).unwrap();
    std::fs::write(dir.join("int.pem"), blocks[1]).unwrap();
    let out = Command::new("openssl")
        .current_dir(dir)
        .args([
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "int.pem",
            "leaf.pem",
        ])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn dns(s: &str) -> Identifier {
    Identifier::Dns(s.into())
}
fn ip(s: &str) -> Identifier {
    Identifier::Ip(s.parse().unwrap())
}

#[tokio::test]
async fn names_outside_the_intermediates_constraints_are_refused_by_openssl_and_rustls() {
    let dir = tempfile::tempdir().unwrap();
    let check = |constrained: bool| {
        let data = dir.path().join(format!("data-{constrained}"));
        let config = config_with(
            &data,
            &[("HALLMARK_CA__NAME_CONSTRAINTS", constrained.to_string())],
        );
        datadir::init_ca(&config, PASSPHRASE.as_bytes(), OffsetDateTime::now_utc()).unwrap();
        let layout = Layout::new(&data);
        let issuer = datadir::load_issuer(&layout, &config).unwrap();
        let root = datadir::load_root_cert(&layout).unwrap();
        (data, issuer, root)
    };

    let (data, issuer, root) = check(true);
    let constraints = issuer.certificate().name_constraints().cloned().unwrap();
    assert_eq!(constraints.dns, ["internal", "test", "localhost"]);
    // A certificate of IP addresses only has no CN: OpenSSL would check a
    // CN of `127.0.0.1` against the DNS constraints and refuse it.
    for inside in [
        vec![dns("web.internal")],
        vec![dns("*.a.test"), ip("10.1.2.3")],
        vec![ip("127.0.0.1")],
        vec![ip("10.1.2.3"), ip("::1")],
    ] {
        let (chain, _) = leaf(&issuer, &inside);
        let (ok, out) = openssl_verify(&data, &root.pem(), &chain);
        assert!(ok, "{inside:?}: {out}");
    }
    for outside in [
        vec![dns("www.example.com")],
        vec![dns("web.internal"), dns("bank.example")],
        vec![ip("8.8.8.8")],
    ] {
        let (chain, _) = leaf(&issuer, &outside);
        let (ok, out) = openssl_verify(&data, &root.pem(), &chain);
        assert!(!ok, "{outside:?} accepted");
        assert!(out.contains("permitted subtree violation"), "{out}");
    }

    // rustls (webpki) as the TLS client: the same split.
    let (chain, key) = leaf(&issuer, &[dns("web.internal")]);
    handshake(root.der(), &chain, &key, "web.internal")
        .await
        .expect("a name inside the constraints is accepted");
    let (chain, key) = leaf(&issuer, &[dns("www.example.com")]);
    let err = handshake(root.der(), &chain, &key, "www.example.com")
        .await
        .unwrap_err();
    assert!(err.contains("NameConstraint"), "{err}");

    // Without constraints (`ca.name_constraints = false`) the same stolen
    // key would be trusted for any name: what the extension prevents.
    let (data, issuer, root) = check(false);
    assert!(issuer.certificate().name_constraints().is_none());
    let (chain, key) = leaf(&issuer, &[dns("www.example.com")]);
    let (ok, out) = openssl_verify(&data, &root.pem(), &chain);
    assert!(ok, "{out}");
    handshake(root.der(), &chain, &key, "www.example.com")
        .await
        .expect("an unconstrained intermediate vouches for anything");
}

#[tokio::test]
async fn a_configuration_wider_than_the_intermediate_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = format!("sqlite://{}", dir.path().join("h.db").display());
    let base = [("DATABASE_URL", db.clone())];
    let config = config_with(&data, &base);
    datadir::init_ca(&config, PASSPHRASE.as_bytes(), OffsetDateTime::now_utc()).unwrap();
    let start = |pairs: &[(&str, &str)]| {
        let mut all: Vec<(&str, String)> = base.to_vec();
        all.extend(pairs.iter().map(|(k, v)| (*k, v.to_string())));
        let config = config_with(&data, &all);
        async move { service::open_authority(&config).await.map(|_| ()) }
    };

    // Narrower and equal policies start.
    start(&[]).await.unwrap();
    start(&[("HALLMARK_POLICY__ALLOWED_SUFFIXES", r#"["svc.internal"]"#)])
        .await
        .unwrap();
    start(&[("HALLMARK_POLICY__ALLOWED_IP_RANGES", r#"["10.9.0.0/16"]"#)])
        .await
        .unwrap();

    for (pairs, setting, value) in [
        (
            [(
                "HALLMARK_POLICY__ALLOWED_SUFFIXES",
                r#"["internal", "corp"]"#,
            )],
            "policy.allowed_suffixes",
            "corp",
        ),
        (
            [("HALLMARK_POLICY__ALLOWED_IP_RANGES", r#"["0.0.0.0/0"]"#)],
            "policy.allowed_ip_ranges",
            "0.0.0.0/0",
        ),
        (
            [(
                "HALLMARK_SERVER__PUBLIC_HTTPS_URL",
                "https://ca.example.com:8443",
            )],
            "server.public_https_url",
            "ca.example.com",
        ),
    ] {
        let err = start(&pairs).await.expect_err("refused");
        assert!(
            matches!(&err, StartError::OutsideNameConstraints { .. }),
            "{err}"
        );
        let sentence = err.to_string();
        assert!(
            sentence.starts_with(&format!("{setting} includes {value}, which"))
                && sentence.contains("internal, test, localhost"),
            "{sentence}"
        );
    }

    // With IP identifiers off, the ranges are not the intermediate's
    // concern.
    start(&[
        ("HALLMARK_POLICY__ALLOW_IP", "false"),
        ("HALLMARK_POLICY__ALLOWED_IP_RANGES", r#"["0.0.0.0/0"]"#),
    ])
    .await
    .unwrap();
}

#[test]
fn a_new_ca_constrains_its_intermediate_to_policy_and_its_own_names() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = config_with(
        &data,
        &[
            (
                "HALLMARK_POLICY__ALLOWED_SUFFIXES",
                r#"["corp.internal"]"#.into(),
            ),
            (
                "HALLMARK_POLICY__ALLOWED_IP_RANGES",
                r#"["10.20.0.0/16"]"#.into(),
            ),
            (
                "HALLMARK_SERVER__PUBLIC_HTTPS_URL",
                "https://ca.corp.internal:8443".into(),
            ),
        ],
    );
    datadir::init_ca(&config, PASSPHRASE.as_bytes(), OffsetDateTime::now_utc()).unwrap();
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "nameConstraints", "-in"])
        .arg(Layout::new(&data).issuing_cert())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    // The public host is under the suffix already; localhost and the
    // loopback addresses of the service certificate are added.
    assert_eq!(
        lines,
        [
            "X509v3 Name Constraints: critical",
            "Permitted:",
            "DNS:corp.internal",
            "DNS:localhost",
            "IP:10.20.0.0/255.255.0.0",
            "IP:127.0.0.1/255.255.255.255",
            "IP:0:0:0:0:0:0:0:1/FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF",
        ],
        "{text}"
    );
}
