//! Certificates, CRLs and OCSP from the outside: issuing through the
//! service, reading URLs out of certificates, asking openssl.

use super::*;
use hallmark::workflow::accounts::{self, Role};
use hallmark::workflow::{Authority, SignOptions};
use reqwest::StatusCode;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use x509_parser::prelude::*;

/// Issues a certificate for `name` owned by `account`; writes
/// `<file>.key`, `<file>.pem` into `dir` and returns (serial hex, leaf PEM).
pub async fn issue(
    authority: &Authority,
    dir: &Path,
    file: &str,
    name: &str,
    account: &str,
) -> (String, String) {
    let csr = openssl_csr(
        dir,
        file,
        P256,
        &format!("/CN={name}"),
        Some(&format!("DNS:{name}")),
    );
    let signed = authority
        .sign_csr(
            &csr,
            SignOptions {
                account_id: Some(account.to_owned()),
                ..SignOptions::default()
            },
            "test",
        )
        .await
        .unwrap();
    let pem = signed.certificate.pem();
    std::fs::write(dir.join(format!("{file}.pem")), &pem).unwrap();
    (signed.certificate.serial.to_hex(), pem)
}

pub fn parse_pem(pem: &str) -> Vec<u8> {
    hallmark::pki::pem_decode_all(pem, "CERTIFICATE").remove(0)
}

/// The CRL distribution point and OCSP URL of a certificate.
pub fn urls(pem: &str) -> (String, String) {
    let der = parse_pem(pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let mut crl = None;
    let mut ocsp = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::CRLDistributionPoints(cdp) => {
                if let Some(DistributionPointName::FullName(names)) =
                    &cdp.points[0].distribution_point
                {
                    if let GeneralName::URI(u) = names[0] {
                        crl = Some(u.to_owned());
                    }
                }
            }
            ParsedExtension::AuthorityInfoAccess(aia) => {
                for ad in &aia.accessdescs {
                    if ad.access_method.to_id_string() == "1.3.6.1.5.5.7.48.1" {
                        if let GeneralName::URI(u) = ad.access_location {
                            ocsp = Some(u.to_owned());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    (crl.unwrap(), ocsp.unwrap())
}

/// A CRL's number and revoked serials (lower-case hex).
pub fn crl_contents(der: &[u8]) -> (u64, Vec<String>) {
    let (_, crl) = CertificateRevocationList::from_der(der).unwrap();
    let number = crl
        .crl_number()
        .map(|n| n.to_string().parse().unwrap())
        .unwrap();
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect();
    (number, serials)
}

/// Fetches `url` until the CRL satisfies `ok` (at most 20 s).
pub async fn crl_until(
    url: &str,
    ok: impl Fn(u64, &[String]) -> bool,
) -> (Vec<u8>, u64, Vec<String>) {
    let client = reqwest::Client::new();
    for _ in 0..200 {
        let resp = client.get(url).send().await.unwrap();
        if resp.status() == StatusCode::OK {
            let der = resp.bytes().await.unwrap().to_vec();
            let (n, serials) = crl_contents(&der);
            if ok(n, &serials) {
                return (der, n, serials);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never served the expected CRL");
}

/// `openssl verify -crl_check` of `cert` with `crl`, `root.pem` and
/// `issuing.pem`: (accepted, output).
pub fn crl_verify(dir: &Path, crl: &str, cert: &str) -> (bool, String) {
    openssl_status(
        dir,
        &[
            "verify",
            "-crl_check",
            "-CRLfile",
            crl,
            "-CAfile",
            "root.pem",
            "-untrusted",
            "issuing.pem",
            cert,
        ],
    )
}

pub fn write_crl_pem(dir: &Path, der: &[u8], file: &str) {
    std::fs::write(dir.join(file), hallmark::pki::pem_encode("X509 CRL", der)).unwrap();
}

/// The numbers of every complete CRL of `issuer` published, from the audit
/// log (`crl.publish` records), in publishing order.
pub async fn published_crl_numbers(store: &dyn hallmark::store::Store, issuer: &str) -> Vec<i64> {
    store
        .audit_page(0, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action == "crl.publish" && r.subject == format!("{issuer}.crl"))
        .map(|r| {
            serde_json::from_str::<Value>(&r.details).unwrap()["number"]
                .as_i64()
                .unwrap()
        })
        .collect()
}

pub async fn api_key(authority: &Authority, name: &str, role: Role) -> (String, String) {
    let created = accounts::create_account(authority.store().as_ref(), name, role, "test")
        .await
        .unwrap();
    (created.account.id, created.api_key.to_string())
}
/// `openssl ocsp` for `cert` against the certificate's OCSP URL; the
/// status word it prints (`good`, `revoked`, `unknown`).
pub fn ocsp_status(dir: &Path, cert: &str, url: &str) -> String {
    let out = openssl(
        dir,
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-cert",
            cert,
            "-url",
            url,
            "-CAfile",
            "root.pem",
            "-no_nonce",
        ],
    );
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{cert}: ")))
        .unwrap_or_else(|| panic!("no status for {cert}: {out}"));
    line.trim_start_matches(&format!("{cert}: ")).to_owned()
}
