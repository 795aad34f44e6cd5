//! CRLs at scale and across instances: partitioned and delta CRLs that
//! name each other, CRL numbers unique across two instances on one
//! database, and CRL names checked before the database is asked.

use std::time::Duration;

use hallmark::workflow::accounts::Role;
use hallmark::workflow::crl::CrlPublisher;
use reqwest::StatusCode;
use serde_json::json;
use x509_parser::prelude::*;

use crate::support::pki::*;
use crate::support::*;

/// The root and issuing certificates as `root.pem` and `issuing.pem` in
/// `dir`, where `crl_verify` looks for them.
fn write_ca_pems(dir: &std::path::Path, run: &Running) {
    std::fs::write(dir.join("root.pem"), &run.root_pem).unwrap();
    std::fs::write(
        dir.join("issuing.pem"),
        run.authority.issuer().certificate().pem(),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_and_delta_crls_name_each_other_and_list_revocations() {
    for backend in backends() {
        let mut ca = TestCa::with_env(
            backend,
            &[
                ("HALLMARK_CRL__DEBOUNCE_SECS", "0".into()),
                ("HALLMARK_CRL__PARTITIONS", "3".into()),
                ("HALLMARK_CRL__DELTA", "true".into()),
            ],
        )
        .await;
        let run = ca.start().await;
        let dir = ca.dir.path();
        let authority = run.authority.clone();
        let (owner, owner_key) = api_key(&authority, "owner", Role::Requester).await;
        write_ca_pems(dir, &run);
        let mut certs = Vec::new();
        for i in 0..6 {
            certs.push(
                issue(
                    &authority,
                    dir,
                    &format!("c{i}"),
                    &format!("c{i}.internal"),
                    &owner,
                )
                .await,
            );
        }
        let issuer = authority.issuer().certificate().id().to_owned();
        let complete_url = format!("{}/crl/{issuer}.crl", run.http_url);
        let delta_url = format!("{}/crl/{issuer}-delta.crl", run.http_url);
        let (serial, pem) = &certs[0];
        let (cdp, _) = urls(pem);
        assert!(
            cdp.starts_with(&format!("{}/crl/{issuer}-p", run.http_url)) && cdp.ends_with(".crl"),
            "a partitioned certificate names its partition: {cdp}"
        );
        let (base_der, _, _) = crl_until(&complete_url, |_, _| true).await;
        crl_until(&cdp, |_, _| true).await;

        let r = run
            .client()
            .post(format!(
                "{}/api/v1/certificates/{serial}/revoke",
                run.https_url
            ))
            .bearer_auth(&owner_key)
            .json(&json!({"reason": "superseded"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);

        let (part_der, _, listed) = crl_until(&cdp, |_, s| s.contains(serial)).await;
        assert_eq!(listed.len(), 1);
        let (_, part) = CertificateRevocationList::from_der(&part_der).unwrap();
        let idp = part
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "2.5.29.28")
            .expect("a partition CRL has an issuingDistributionPoint");
        assert!(idp.critical);
        write_crl_pem(dir, &part_der, "part.pem");
        let (ok, out) = crl_verify(dir, "part.pem", "c0.pem");
        assert!(!ok && out.contains("certificate revoked"), "{out}");

        let (complete_der, complete_number, all) =
            crl_until(&complete_url, |_, s| s.contains(serial)).await;
        assert_eq!(all.len(), 1);
        let (_, complete) = CertificateRevocationList::from_der(&complete_der).unwrap();
        assert!(
            complete
                .extensions()
                .iter()
                .any(|e| e.oid.to_id_string() == "2.5.29.46"),
            "the complete CRL announces its delta (freshestCRL)"
        );
        let (delta_der, delta_number, in_delta) =
            crl_until(&delta_url, |_, s| s.contains(serial)).await;
        assert!(delta_number > 0);
        assert_eq!(in_delta, vec![serial.clone()]);
        let (_, delta) = CertificateRevocationList::from_der(&delta_der).unwrap();
        let indicator = delta
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "2.5.29.27")
            .expect("deltaCRLIndicator");
        assert!(indicator.critical);
        // The delta's base is a complete CRL that was published.
        let (base_number, _) = crl_contents(&base_der);
        let base_in_delta: u64 = {
            let mut r = hallmark::pki::der::Reader::new(indicator.value);
            let i = r.expect(0x02).unwrap();
            i.content.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b))
        };
        assert!(base_in_delta >= base_number && base_in_delta <= complete_number);
        // openssl accepts the pair with -use_deltas.
        write_crl_pem(dir, &complete_der, "complete.pem");
        write_crl_pem(dir, &delta_der, "delta.pem");
        for f in ["part.pem", "complete.pem", "delta.pem"] {
            if let Some((ok, out)) = pkilint(
                dir,
                "lint_crl",
                &["lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING", f],
            ) {
                assert!(ok && out.trim().is_empty(), "lint_crl {f}: {out}");
            }
        }
        run.stop().await;
        ca.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_complete_with_partitions_the_issuer_crl_covers_only_unpartitioned_certificates() {
    for backend in backends() {
        let mut ca = TestCa::with_env(
            backend,
            &[
                ("HALLMARK_CRL__DEBOUNCE_SECS", "0".into()),
                ("HALLMARK_CRL__PARTITIONS", "2".into()),
                ("HALLMARK_CRL__COMPLETE_WITH_PARTITIONS", "false".into()),
            ],
        )
        .await;
        let run = ca.start().await;
        let dir = ca.dir.path();
        let authority = run.authority.clone();
        let (owner, owner_key) = api_key(&authority, "owner", Role::Requester).await;
        write_ca_pems(dir, &run);
        let (serial, pem) = issue(&authority, dir, "c0", "c0.internal", &owner).await;
        let issuer = authority.issuer().certificate().id().to_owned();
        let complete_url = format!("{}/crl/{issuer}.crl", run.http_url);
        let (cdp, _) = urls(&pem);
        let (_, before, _) = crl_until(&complete_url, |_, _| true).await;

        let r = run
            .client()
            .post(format!(
                "{}/api/v1/certificates/{serial}/revoke",
                run.https_url
            ))
            .bearer_auth(&owner_key)
            .json(&json!({"reason": "superseded"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let (part_der, _, listed) = crl_until(&cdp, |_, s| s.contains(&serial)).await;
        assert_eq!(listed, vec![serial.clone()]);

        // Republished after the revocation, and still without it: it
        // covers only certificates outside every partition, and says so.
        let (complete_der, _, all) = crl_until(&complete_url, |n, _| n > before).await;
        assert!(all.is_empty(), "{backend:?}: {all:?}");
        let (_, complete) = CertificateRevocationList::from_der(&complete_der).unwrap();
        let idp = complete
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "2.5.29.28")
            .expect("the scoped issuer CRL has an issuingDistributionPoint");
        assert!(idp.critical);
        assert!(
            idp.value
                .windows(complete_url.len())
                .any(|w| w == complete_url.as_bytes()),
            "it names its own URL"
        );
        // openssl uses the partition CRL for the certificate, and will not
        // take the issuer CRL, whose scope does not cover it, as proof.
        write_crl_pem(dir, &part_der, "part.pem");
        let (ok, out) = crl_verify(dir, "part.pem", "c0.pem");
        assert!(!ok && out.contains("certificate revoked"), "{out}");
        write_crl_pem(dir, &complete_der, "complete.pem");
        let (ok, out) = crl_verify(dir, "complete.pem", "c0.pem");
        assert!(!ok && !out.contains("certificate revoked"), "{out}");
        if let Some((ok, out)) = pkilint(
            dir,
            "lint_crl",
            &[
                "lint",
                "-t",
                "CRL",
                "-p",
                "PKIX",
                "-s",
                "WARNING",
                "complete.pem",
            ],
        ) {
            assert!(ok && out.trim().is_empty(), "lint_crl: {out}");
        }
        run.stop().await;
        ca.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_database_publish_unique_numbers_and_serve_every_revocation() {
    // Several instances share PostgreSQL in production; SQLite runs the
    // same check with two services on one file.
    for backend in backends() {
        let mut ca =
            TestCa::with_env(backend, &[("HALLMARK_CRL__DEBOUNCE_SECS", "1".into())]).await;
        let first = ca.start().await;
        let mut config = ca.config.clone();
        let https = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        config.https_listen = https.local_addr().unwrap();
        config.http_listen = http.local_addr().unwrap();
        let second_http = format!("http://{}", config.http_listen);
        let second_https = format!("https://localhost:{}", config.https_listen.port());
        let service = hallmark::service::Service::start(config).await.unwrap();
        let (stop2, stopped2) = tokio::sync::watch::channel(false);
        let second = tokio::spawn(service.run(https, http, stopped2));

        let dir = ca.dir.path();
        let authority = first.authority.clone();
        let (owner, owner_key) = api_key(&authority, "owner", Role::Requester).await;
        let mut serials = Vec::new();
        for i in 0..16 {
            serials.push(
                issue(
                    &authority,
                    dir,
                    &format!("m{i}"),
                    &format!("m{i}.internal"),
                    &owner,
                )
                .await
                .0,
            );
        }
        let client = first.client();
        let mut tasks = Vec::new();
        for (i, serial) in serials.iter().enumerate() {
            let base = if i % 2 == 0 {
                first.https_url.clone()
            } else {
                second_https.clone()
            };
            let client = client.clone();
            let key = owner_key.clone();
            let serial = serial.clone();
            tasks.push(tokio::spawn(async move {
                let r = client
                    .post(format!("{base}/api/v1/certificates/{serial}/revoke"))
                    .bearer_auth(key)
                    .json(&json!({"reason": "superseded"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let issuer = authority.issuer().certificate().id().to_owned();
        let all = |_: u64, s: &[String]| serials.iter().all(|x| s.contains(x));
        let (_, n1, _) = crl_until(&format!("{}/crl/{issuer}.crl", first.http_url), all).await;
        let (_, n2, _) = crl_until(&format!("{second_http}/crl/{issuer}.crl",), all).await;
        assert!(n1 > 0 && n2 > 0);

        // Every CRL number was published once, with one content.
        let published = published_crl_numbers(authority.store().as_ref(), &issuer).await;
        let mut unique = published.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            published.len(),
            "numbers published twice: {published:?}"
        );
        // Both instances serve the newest once the dust settles.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let newest = *unique.last().unwrap() as u64;
        let (_, a, _) = crl_until(&format!("{}/crl/{issuer}.crl", first.http_url), |n, _| {
            n == newest
        })
        .await;
        let (_, b, _) = crl_until(&format!("{second_http}/crl/{issuer}.crl"), |n, _| {
            n == newest
        })
        .await;
        assert_eq!(a, b);

        let _ = stop2.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(15), second).await;
        first.stop().await;
        ca.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_crl_names_that_can_exist_are_looked_up_in_the_database() {
    // A stranger asking for /crl/<anything> must not make the server read
    // its database: only names it could have published are looked up.
    let ca = TestCa::with_env(Backend::Sqlite, &[("HALLMARK_CRL__PARTITIONS", "2".into())]).await;
    let authority = ca.authority().await;
    let int = authority.issuer().certificate().id().to_owned();
    let root = authority.root().id().to_owned();
    let crls = CrlPublisher::new(authority, ca.config.crl.clone());
    for (file, lookup) in [
        (format!("{int}.crl"), true),
        (format!("{root}.crl"), true),
        (format!("{int}-p1.crl"), true),
        (format!("{int}-p2.crl"), true),
        (format!("{int}-p3.crl"), false),
        (format!("{int}-p4000000000.crl"), false),
        (format!("{int}-p0.crl"), false),
        (format!("{int}-delta.crl"), false),
        ("int-ffffffff.crl".to_owned(), false),
        (format!("{int}.der"), false),
    ] {
        assert_eq!(crls.could_serve(&file), lookup, "{file}");
    }
    ca.cleanup().await;
}
