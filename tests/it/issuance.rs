//! Signing CSRs under policy: real `openssl` CSRs in, certificates that
//! `openssl verify` accepts and that carry exactly DESIGN §3's profile out.

use std::collections::HashSet;

use hallmark::pki::{CsrError, Serial};
use hallmark::policy::PolicyError;
use hallmark::workflow::{SignOptions, WorkflowError};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::*;

use crate::support::*;

/// Whether an error is the expected kind.
type ErrorCheck = fn(&WorkflowError) -> bool;

#[tokio::test]
async fn issued_certificate_verifies_with_openssl_and_has_exactly_the_profile() {
    for backend in backends() {
        let ca = TestCa::new(backend).await;
        let authority = ca.authority().await;
        let dir = ca.dir.path();
        for (name, genpkey, rsa) in [("ec", P256, false), ("rsa", RSA2048, true)] {
            let csr = openssl_csr(
                dir,
                name,
                genpkey,
                "/CN=web.internal/O=Ignored Org",
                Some("DNS:web.internal,DNS:api.web.internal,IP:10.1.2.3"),
            );
            let signed = authority
                .sign_csr(&csr, SignOptions::default(), "operator:test")
                .await
                .expect("a good CSR is signed");
            assert_openssl_verifies(
                dir,
                &authority.root().pem(),
                &authority.issuer().certificate().pem(),
                &signed.certificate.pem(),
            );

            let (_, cert) = X509Certificate::from_der(&signed.certificate.der).unwrap();
            let tbs = &cert.tbs_certificate;
            assert_eq!(tbs.raw_serial().len(), 16, "16-byte serial");
            assert_eq!(
                hex::encode(tbs.raw_serial()),
                signed.certificate.serial.to_hex()
            );
            assert_eq!(
                tbs.subject.to_string(),
                "CN=web.internal",
                "subject is built, not copied"
            );
            let validity =
                tbs.validity.not_after.to_datetime() - tbs.validity.not_before.to_datetime();
            assert_eq!(
                validity.whole_seconds(),
                90 * 86400 - 1,
                "90 days inclusive"
            );
            let backdate =
                ::time::OffsetDateTime::now_utc() - tbs.validity.not_before.to_datetime();
            assert!(
                backdate.whole_seconds() >= 59 && backdate.whole_seconds() <= 75,
                "{backdate}"
            );

            let issuer_id = authority.issuer().certificate().id().to_owned();
            let mut oids = Vec::new();
            for ext in tbs.extensions() {
                oids.push(ext.oid.to_id_string());
                match ext.parsed_extension() {
                    ParsedExtension::BasicConstraints(bc) => assert!(ext.critical && !bc.ca),
                    ParsedExtension::KeyUsage(ku) => {
                        assert!(ext.critical && ku.digital_signature());
                        assert_eq!(ku.key_encipherment(), rsa);
                        assert!(!ku.key_cert_sign() && !ku.crl_sign());
                    }
                    ParsedExtension::ExtendedKeyUsage(eku) => {
                        assert!(eku.server_auth && !eku.client_auth && eku.other.is_empty())
                    }
                    ParsedExtension::SubjectAlternativeName(san) => {
                        let names: Vec<String> = san
                            .general_names
                            .iter()
                            .map(|n| match n {
                                GeneralName::DNSName(d) => d.to_string(),
                                GeneralName::IPAddress(b) => format!("{b:?}"),
                                other => panic!("unexpected SAN {other:?}"),
                            })
                            .collect();
                        assert_eq!(
                            names,
                            vec!["web.internal", "api.web.internal", "[10, 1, 2, 3]"]
                        );
                    }
                    ParsedExtension::SubjectKeyIdentifier(_) => {}
                    ParsedExtension::AuthorityKeyIdentifier(aki) => assert_eq!(
                        aki.key_identifier.as_ref().unwrap().0,
                        authority.issuer().certificate().key_id()
                    ),
                    ParsedExtension::CRLDistributionPoints(cdp) => {
                        let text = format!("{cdp:?}");
                        assert!(
                            text.contains(&format!(
                                "{}/crl/{issuer_id}.crl",
                                ca.config.public_http_url
                            )),
                            "{text}"
                        );
                    }
                    ParsedExtension::AuthorityInfoAccess(aia) => {
                        let uris: Vec<String> = aia
                            .accessdescs
                            .iter()
                            .map(|d| match &d.access_location {
                                GeneralName::URI(u) => u.to_string(),
                                other => panic!("{other:?}"),
                            })
                            .collect();
                        assert_eq!(
                            uris,
                            vec![
                                format!("{}/ocsp", ca.config.public_http_url),
                                format!("{}/ca/{issuer_id}.crt", ca.config.public_http_url)
                            ]
                        );
                    }
                    other => panic!("unexpected extension {other:?}"),
                }
            }
            oids.sort();
            assert_eq!(
                oids,
                vec![
                    "1.3.6.1.5.5.7.1.1",
                    "2.5.29.14",
                    "2.5.29.15",
                    "2.5.29.17",
                    "2.5.29.19",
                    "2.5.29.31",
                    "2.5.29.35",
                    "2.5.29.37"
                ]
            );

            let stored = authority
                .store()
                .certificate(&signed.certificate.serial)
                .await
                .unwrap();
            assert_eq!(stored.der, signed.certificate.der);
            assert_eq!(stored.requested_by, "operator:test");
        }
        ca.cleanup().await;
    }
}

#[tokio::test]
async fn server_client_profile_adds_client_auth_and_days_are_honoured() {
    let ca = TestCa::new(Backend::Sqlite).await;
    let authority = ca.authority().await;
    let csr = openssl_csr(
        ca.dir.path(),
        "k",
        P256,
        "/CN=m.internal",
        Some("DNS:m.internal"),
    );
    let signed = authority
        .sign_csr(
            &csr,
            SignOptions {
                validity_days: Some(30),
                profile: Some("server-client".into()),
                ..SignOptions::default()
            },
            "operator:test",
        )
        .await
        .unwrap();
    let (_, cert) = X509Certificate::from_der(&signed.certificate.der).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let v = cert.validity().not_after.to_datetime() - cert.validity().not_before.to_datetime();
    assert_eq!(v.whole_days(), 29);
    let err = authority
        .sign_csr(
            &csr,
            SignOptions {
                profile: Some("codesign".into()),
                ..SignOptions::default()
            },
            "t",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            WorkflowError::Policy(hallmark::policy::PolicyError::UnknownProfile { .. })
        ),
        "{err}"
    );
    let err = authority
        .sign_csr(
            &csr,
            SignOptions {
                validity_days: Some(400),
                ..SignOptions::default()
            },
            "t",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            WorkflowError::Policy(PolicyError::ValidityNotAllowed { .. })
        ),
        "{err}"
    );
    ca.cleanup().await;
}

#[tokio::test]
async fn every_bad_csr_gets_its_own_error_and_nothing_is_stored() {
    for backend in backends() {
        let ca = TestCa::new(backend).await;
        let authority = ca.authority().await;
        let dir = ca.dir.path();
        let good = openssl_csr(dir, "good", P256, "/CN=a.internal", Some("DNS:a.internal"));

        // A flipped bit in the signature: proof of possession fails.
        let mut tampered = std::process::Command::new("openssl")
            .args(["req", "-in", "good.csr", "-outform", "DER"])
            .current_dir(dir)
            .output()
            .unwrap()
            .stdout;
        let last = tampered.len() - 3;
        tampered[last] ^= 0x01;

        let many: Vec<String> = (0..101).map(|i| format!("DNS:h{i}.internal")).collect();
        let many = many.join(",");
        let cases: Vec<(&str, Vec<u8>, ErrorCheck)> = vec![
            ("garbage", b"this is not a CSR".to_vec(), |e| {
                matches!(e, WorkflowError::Csr(CsrError::NotACsr))
            }),
            ("bad signature", tampered, |e| {
                matches!(e, WorkflowError::Csr(CsrError::BadSignature))
            }),
            (
                "RSA 1024",
                openssl_csr(
                    dir,
                    "weak",
                    &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
                    "/CN=a.internal",
                    None,
                ),
                |e| {
                    matches!(
                        e,
                        WorkflowError::Policy(PolicyError::WeakRsaKey {
                            bits: 1024,
                            min: 2048
                        })
                    )
                },
            ),
            (
                "secp256k1",
                openssl_csr(
                    dir,
                    "k1",
                    &[
                        "-algorithm",
                        "EC",
                        "-pkeyopt",
                        "ec_paramgen_curve:secp256k1",
                    ],
                    "/CN=a.internal",
                    None,
                ),
                |e| matches!(e, WorkflowError::Policy(PolicyError::KeyTypeNotAllowed(..))),
            ),
            (
                "Ed25519 not allowed",
                openssl_csr(
                    dir,
                    "ed",
                    &["-algorithm", "ED25519"],
                    "/CN=a.internal",
                    None,
                ),
                |e| matches!(e, WorkflowError::Policy(PolicyError::KeyTypeNotAllowed(..))),
            ),
            (
                "outside policy",
                openssl_csr(dir, "out", P256, "/CN=example.com", Some("DNS:example.com")),
                |e| {
                    matches!(
                        e,
                        WorkflowError::Policy(PolicyError::SuffixNotAllowed { .. })
                    )
                },
            ),
            (
                "upper case",
                openssl_csr(
                    dir,
                    "up",
                    P256,
                    "/CN=Web.internal",
                    Some("DNS:Web.internal"),
                ),
                |e| matches!(e, WorkflowError::Policy(PolicyError::NotLowerCase(_))),
            ),
            (
                "wildcard on a suffix",
                openssl_csr(dir, "wild2", P256, "/O=x", Some("DNS:*.internal")),
                |e| matches!(e, WorkflowError::Policy(PolicyError::BadWildcard(_))),
            ),
            (
                "too many names",
                openssl_csr(dir, "many", P256, "/O=x", Some(&many)),
                |e| matches!(e, WorkflowError::Policy(PolicyError::TooManyNames(101))),
            ),
            (
                "CN not among SANs",
                openssl_csr(
                    dir,
                    "cn",
                    P256,
                    "/CN=other.internal",
                    Some("DNS:a.internal"),
                ),
                |e| matches!(e, WorkflowError::Csr(CsrError::CommonNameNotInSans(_))),
            ),
            (
                "email SAN",
                openssl_csr(dir, "mail", P256, "/O=x", Some("email:a@b.internal")),
                |e| {
                    matches!(
                        e,
                        WorkflowError::Csr(CsrError::UnsupportedName { kind: "email" })
                    )
                },
            ),
            (
                "no names",
                openssl_csr(dir, "none", P256, "/O=x", None),
                |e| matches!(e, WorkflowError::Csr(CsrError::NoNames)),
            ),
        ];
        for (what, csr, expected) in cases {
            let err = authority
                .sign_csr(&csr, SignOptions::default(), "operator:test")
                .await
                .expect_err(what);
            assert!(expected(&err), "{what}: unexpected error {err:?}");
            let sentence = err.to_string();
            assert!(
                !sentence.is_empty() && !sentence.contains('\n'),
                "{what}: {sentence}"
            );
        }
        assert_eq!(
            authority.store().count_certificates().await.unwrap(),
            0,
            "nothing stored"
        );
        assert_eq!(
            authority.store().audit_head().await.unwrap().0,
            0,
            "nothing audited"
        );

        // The good CSR still works, as DER too.
        let der = std::process::Command::new("openssl")
            .args(["req", "-in", "good.csr", "-outform", "DER"])
            .current_dir(dir)
            .output()
            .unwrap()
            .stdout;
        authority
            .sign_csr(&good, SignOptions::default(), "t")
            .await
            .unwrap();
        authority
            .sign_csr(&der, SignOptions::default(), "t")
            .await
            .unwrap();
        assert_eq!(authority.store().count_certificates().await.unwrap(), 2);
        ca.cleanup().await;
    }
}

#[tokio::test]
async fn ed25519_csrs_are_accepted_when_policy_allows_them() {
    let ca = TestCa::with_env(
        Backend::Sqlite,
        &[(
            "HALLMARK_POLICY__KEY_TYPES",
            "[\"p256\", \"ed25519\"]".into(),
        )],
    )
    .await;
    let authority = ca.authority().await;
    let csr = openssl_csr(
        ca.dir.path(),
        "ed",
        &["-algorithm", "ED25519"],
        "/CN=e.internal",
        None,
    );
    let signed = authority
        .sign_csr(&csr, SignOptions::default(), "t")
        .await
        .unwrap();
    assert_openssl_verifies(
        ca.dir.path(),
        &authority.root().pem(),
        &signed.chain_pem(),
        &signed.certificate.pem(),
    );
    // RSA 2048 is now refused: only p256 and ed25519 are allowed.
    let rsa = openssl_csr(ca.dir.path(), "rsa", RSA2048, "/CN=e.internal", None);
    let err = authority
        .sign_csr(&rsa, SignOptions::default(), "t")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            WorkflowError::Policy(PolicyError::KeyTypeNotAllowed(..))
        ),
        "{err}"
    );
    ca.cleanup().await;
}

#[tokio::test]
async fn ten_thousand_concurrent_issuances_have_distinct_serials_and_a_sound_audit_chain() {
    for backend in backends() {
        let ca = TestCa::new(backend).await;
        let authority = ca.authority().await;
        let csr = openssl_csr(
            ca.dir.path(),
            "k",
            P256,
            "/CN=n.internal",
            Some("DNS:n.internal"),
        );
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let authority = authority.clone();
            let csr = csr.clone();
            tasks.push(tokio::spawn(async move {
                let mut serials = Vec::new();
                for _ in 0..(10_000 / 32 + 1) {
                    let s = authority
                        .sign_csr(&csr, SignOptions::default(), "bulk")
                        .await
                        .unwrap();
                    serials.push(s.certificate.serial);
                }
                serials
            }));
        }
        let mut all: Vec<Serial> = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let distinct: HashSet<Serial> = all.iter().copied().collect();
        assert!(all.len() >= 10_000);
        assert_eq!(distinct.len(), all.len(), "every serial is distinct");
        assert_eq!(
            authority.store().count_certificates().await.unwrap(),
            all.len() as i64
        );
        let summary = hallmark::workflow::audit::verify(authority.store().as_ref())
            .await
            .unwrap();
        assert_eq!(
            summary.records,
            all.len() as i64,
            "one audit record per issuance"
        );
        ca.cleanup().await;
    }
}

#[tokio::test]
async fn encrypted_root_key_loads_with_the_right_passphrase_and_fails_clearly_otherwise() {
    let ca = TestCa::new(Backend::Sqlite).await;
    let layout = hallmark::datadir::Layout::new(&ca.data_dir());
    let root =
        hallmark::datadir::load_root_issuer(&layout, &ca.config, PASSPHRASE.as_bytes()).unwrap();
    assert_eq!(root.certificate().id(), "root");
    let err = hallmark::datadir::load_root_issuer(&layout, &ca.config, b"not the passphrase")
        .unwrap_err();
    assert!(err.to_string().contains("passphrase is wrong"), "{err}");
    let pem = std::fs::read_to_string(layout.root_key()).unwrap();
    assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    use std::os::unix::fs::PermissionsExt;
    for key in [layout.root_key(), layout.issuing_key()] {
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is 0600", key.display());
    }
    // OpenSSL reads the encrypted key too (standard PBES2).
    let (ok, out) = openssl_status(
        ca.dir.path(),
        &[
            "pkey",
            "-in",
            layout.root_key().to_str().unwrap(),
            "-passin",
            &format!("pass:{PASSPHRASE}"),
            "-noout",
        ],
    );
    assert!(ok, "{out}");
    // A second init refuses to overwrite the CA.
    let again = hallmark::datadir::init_ca(
        &ca.config,
        PASSPHRASE.as_bytes(),
        ::time::OffsetDateTime::now_utc(),
    );
    assert!(again
        .unwrap_err()
        .to_string()
        .contains("refusing to overwrite"));
    ca.cleanup().await;
}

#[tokio::test]
async fn every_ca_key_type_makes_a_chain_openssl_accepts() {
    for key_type in ["p384", "rsa2048"] {
        let ca = TestCa::with_env(
            Backend::Sqlite,
            &[("HALLMARK_CA__KEY_TYPE", key_type.into())],
        )
        .await;
        let authority = ca.authority().await;
        let csr = openssl_csr(ca.dir.path(), "k", P256, "/CN=k.internal", None);
        let signed = authority
            .sign_csr(&csr, SignOptions::default(), "t")
            .await
            .unwrap();
        let dir = ca.dir.path();
        assert_openssl_verifies(
            dir,
            &authority.root().pem(),
            &signed.chain_pem(),
            &signed.certificate.pem(),
        );
        let text = openssl(dir, &["x509", "-in", "root.pem", "-noout", "-text"]);
        assert!(text.contains("CA:TRUE, pathlen:1"), "{text}");
        assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
        ca.cleanup().await;
    }
}

/// Runs pkilint's RFC 5280 certificate linter.
fn pkilint(dir: &std::path::Path, file: &str) -> Option<(bool, String)> {
    crate::support::pkilint(dir, "lint_pkix_cert", &["lint", "-s", "WARNING", file])
}

/// pkilint's findings, each a header line and its indented details, less
/// one false positive: pkilint checks dNSName syntax with a validator that
/// wants at least two labels, but the intermediate's nameConstraints
/// permit single-label subtrees (`internal`, `localhost`), which RFC 5280
/// (the preferred name syntax of RFC 1034 §3.5) allows.
fn without_single_label_constraints(out: &str) -> Vec<String> {
    let mut findings: Vec<String> = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with(' ') {
            if let Some(last) = findings.last_mut() {
                last.push('\n');
                last.push_str(line);
            }
        } else {
            findings.push(line.to_owned());
        }
    }
    findings.retain(|f| {
        let mut lines = f.lines();
        let header = lines.next().unwrap_or("");
        let details: Vec<&str> = lines.collect();
        let single_label = |d: &&str| {
            d.trim()
                .strip_prefix(
                    "pkix.invalid_domain_name_syntax (ERROR): Invalid domain name syntax: \"",
                )
                .and_then(|v| v.strip_suffix('"'))
                .is_some_and(|v| !v.is_empty() && !v.contains('.'))
        };
        let false_positive = header.contains("nameConstraints.permittedSubtrees.")
            && header.ends_with(".base.dNSName")
            && !details.is_empty()
            && details.iter().all(single_label);
        !false_positive
    });
    findings
}

#[tokio::test]
async fn issued_and_ca_certificates_pass_the_rfc5280_linter() {
    let ca = TestCa::new(Backend::Sqlite).await;
    let authority = ca.authority().await;
    let dir = ca.dir.path();
    let mut files = vec![
        ("root.pem".to_string(), authority.root().pem()),
        (
            "intermediate.pem".to_string(),
            authority.issuer().certificate().pem(),
        ),
    ];
    for (name, genpkey, san) in [
        (
            "ec",
            P256,
            // No wildcard here: pkilint's RFC 5280 linter treats `*.` as bad DNS
            // syntax (wildcards are RFC 6125's, not RFC 5280's).
            "DNS:web.internal,DNS:api.web.internal,IP:10.1.2.3,IP:fd00::1",
        ),
        ("rsa", RSA2048, "DNS:rsa.internal"),
    ] {
        let csr = openssl_csr(dir, name, genpkey, "/O=ignored", Some(san));
        let signed = authority
            .sign_csr(&csr, SignOptions::default(), "t")
            .await
            .unwrap();
        files.push((format!("{name}-leaf.pem"), signed.certificate.pem()));
    }
    for (file, pem) in files {
        std::fs::write(dir.join(&file), pem).unwrap();
        let Some((_, out)) = pkilint(dir, &file) else {
            return;
        };
        let findings = without_single_label_constraints(&out);
        assert!(findings.is_empty(), "{file}: pkilint reports:\n{out}");
    }
    ca.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_issuers_last_months_leaves_end_with_it_and_in_its_last_day_issuing_is_a_503() {
    use hallmark::pki::ca::INTERMEDIATE_VALIDITY;
    let backend = backends().remove(0);
    let now = ::time::OffsetDateTime::now_utc();

    // Ten days left: a 90-day request ends with the issuer, not after it.
    let ca = TestCa::made_at(
        backend,
        &[],
        now - INTERMEDIATE_VALIDITY + ::time::Duration::days(10),
    )
    .await;
    let authority = ca.authority().await;
    let issuer_end = authority.issuer().certificate().not_after();
    let csr = openssl_csr(
        ca.dir.path(),
        "k",
        P256,
        "/CN=web.internal",
        Some("DNS:web.internal"),
    );
    let signed = authority
        .sign_csr(&csr, SignOptions::default(), "operator:test")
        .await
        .expect("issued, cut to the issuer's end");
    assert!(signed.certificate.not_after <= issuer_end);
    assert!(issuer_end - signed.certificate.not_after < ::time::Duration::seconds(2));
    drop(authority);

    // Twelve hours left: refused with a sentence.
    let ca = TestCa::made_at(
        backend,
        &[],
        now - INTERMEDIATE_VALIDITY + ::time::Duration::hours(12),
    )
    .await;
    let authority = ca.authority().await;
    let err = authority
        .sign_csr(&csr, SignOptions::default(), "operator:test")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("within a day, so it issues nothing more"),
        "{err}"
    );
    // The HTTP layer answers it as 503 issuerUnavailable
    // (http::problem's unit test), never a 500.
}
