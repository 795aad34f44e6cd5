//! Revocation, CRLs and OCSP against the real service, checked by the real
//! peers: `openssl verify -crl_check`, `openssl crl -verify`, `openssl
//! ocsp`, and pkilint's CRL and OCSP linters.

use hallmark::workflow::accounts::Role;
use hallmark::workflow::crl::{CrlKind, CrlPublisher};
use hallmark::workflow::SignOptions;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::pki::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_certificates_are_refused_by_openssl_through_crl_and_ocsp() {
    for backend in backends() {
        let mut ca =
            TestCa::with_env(backend, &[("HALLMARK_CRL__DEBOUNCE_SECS", "0".into())]).await;
        let run = ca.start().await;
        let dir = ca.dir.path();
        let authority = run.authority.clone();
        let (owner, owner_key) = api_key(&authority, "owner", Role::Requester).await;
        let (_, other_key) = api_key(&authority, "other", Role::Requester).await;
        let (_, admin_key) = api_key(&authority, "admin", Role::Admin).await;
        let (s1, pem1) = issue(&authority, dir, "one", "one.internal", &owner).await;
        let (s2, _pem2) = issue(&authority, dir, "two", "two.internal", &owner).await;
        let (s3, _pem3) = issue(&authority, dir, "three", "three.internal", &owner).await;
        std::fs::write(dir.join("root.pem"), &run.root_pem).unwrap();
        std::fs::write(
            dir.join("issuing.pem"),
            authority.issuer().certificate().pem(),
        )
        .unwrap();

        let (crl_url, ocsp_url) = urls(&pem1);
        assert!(crl_url.starts_with(&run.http_url), "{crl_url}");
        let (der, first_number, serials) = crl_until(&crl_url, |_, _| true).await;
        assert!(serials.is_empty());
        write_crl_pem(dir, &der, "crl0.pem");
        let ok = crl_verify(dir, "crl0.pem", "one.pem").1;
        assert!(ok.contains("one.pem: OK"), "{ok}");
        let ocsp = |cert: &str, extra: &[&str]| {
            // A CertID digest option must come before -cert.
            let mut args = vec!["ocsp"];
            args.extend_from_slice(extra);
            args.extend_from_slice(&[
                "-issuer",
                "issuing.pem",
                "-cert",
                cert,
                "-url",
                &ocsp_url,
                "-CAfile",
                "root.pem",
            ]);
            let (ok, out) = openssl_status(dir, &args);
            assert!(ok, "{out}");
            out
        };
        let good = ocsp("one.pem", &[]);
        assert!(
            good.contains("one.pem: good") && good.contains("Response verify OK"),
            "{good}"
        );

        // Refusals change nothing.
        let client = run.client();
        let revoke_url = |s: &str| format!("{}/api/v1/certificates/{s}/revoke", run.https_url);
        let r = client
            .post(revoke_url(&s1))
            .bearer_auth(&other_key)
            .json(&json!({"reason": "keyCompromise"}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::NOT_FOUND,
            "another account's certificate does not exist"
        );
        let r = client
            .post(revoke_url(&s1))
            .json(&json!({"reason": "superseded"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        for (reason, needle) in [
            ("certificateHold", "certificateHold is not offered"),
            ("nonsense", "unknown revocation reason"),
        ] {
            let r = client
                .post(revoke_url(&s1))
                .bearer_auth(&owner_key)
                .json(&json!({"reason": reason}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST);
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["type"], "urn:ietf:params:acme:error:malformed");
            assert!(body["detail"].as_str().unwrap().contains(needle), "{body}");
        }
        let cert = authority
            .store()
            .certificate(&s1.parse().unwrap())
            .await
            .unwrap();
        assert_eq!(cert.revoked_at, None);

        // The owner revokes; a second time is a 409 that changes nothing.
        let r = client
            .post(revoke_url(&s1))
            .bearer_auth(&owner_key)
            .json(&json!({"reason": "keyCompromise", "invalidity_date": "2026-01-02T03:04:05Z"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "revoked");
        assert_eq!(body["revocation_reason"], "keyCompromise");
        let r = client
            .post(revoke_url(&s1))
            .bearer_auth(&admin_key)
            .json(&json!({"reason": "superseded"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CONFLICT);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["type"], "urn:ietf:params:acme:error:alreadyRevoked");
        let cert = authority
            .store()
            .certificate(&s1.parse().unwrap())
            .await
            .unwrap();
        assert_eq!(cert.revocation_reason, Some(1), "the first reason stands");

        // An admin revokes another account's certificate.
        let r = client
            .post(revoke_url(&s3))
            .bearer_auth(&admin_key)
            .json(&json!({"reason": "cessationOfOperation"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);

        // Within seconds the CRL at the certificate's CDP lists both.
        let (der, number, serials) =
            crl_until(&crl_url, |_, s| s.contains(&s1) && s.contains(&s3)).await;
        assert!(
            number > first_number,
            "CRL numbers increase: {first_number} then {number}"
        );
        assert!(!serials.contains(&s2));
        write_crl_pem(dir, &der, "crl.pem");
        let (refused, out) = crl_verify(dir, "crl.pem", "one.pem");
        assert!(!refused && out.contains("certificate revoked"), "{out}");
        let ok = crl_verify(dir, "crl.pem", "two.pem").1;
        assert!(ok.contains("two.pem: OK"), "{ok}");
        let verified = openssl(
            dir,
            &[
                "crl",
                "-in",
                "crl.pem",
                "-CAfile",
                "issuing.pem",
                "-noout",
                "-verify",
            ],
        );
        assert!(
            verified.contains("verify OK") || verified.is_empty(),
            "{verified}"
        );
        let text = openssl(dir, &["crl", "-in", "crl.pem", "-noout", "-text"]);
        assert!(
            text.contains("Key Compromise") && text.contains("Invalidity Date"),
            "{text}"
        );

        // Conditional GETs.
        let resp = reqwest::get(&crl_url).await.unwrap();
        let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
        let last_modified = resp.headers()["last-modified"].to_str().unwrap().to_owned();
        let max_age = resp.headers()["cache-control"].to_str().unwrap().to_owned();
        assert_eq!(resp.headers()["content-type"], "application/pkix-crl");
        assert!(max_age.starts_with("public, max-age="), "{max_age}");
        let plain = reqwest::Client::new();
        let r = plain
            .get(&crl_url)
            .header("If-None-Match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        let r = plain
            .get(&crl_url)
            .header("If-Modified-Since", &last_modified)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        let r = plain
            .get(&crl_url)
            .header("If-None-Match", "\"old\"")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        // The HTTPS listener serves the same CRL.
        let https_crl = client
            .get(crl_url.replace(&run.http_url, &run.https_url))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(crl_contents(&https_crl).0, number);

        // OCSP: revoked (with reason and time) and good, by SHA-1 and SHA-256
        // CertIDs, POST and GET.
        let revoked = ocsp("one.pem", &[]);
        assert!(
            revoked.contains("one.pem: revoked") && revoked.contains("Response verify OK"),
            "{revoked}"
        );
        assert!(revoked.contains("keyCompromise"), "{revoked}");
        let good = ocsp("two.pem", &["-sha256"]);
        assert!(
            good.contains("two.pem: good") && good.contains("Response verify OK"),
            "{good}"
        );
        openssl(
            dir,
            &[
                "ocsp",
                "-issuer",
                "issuing.pem",
                "-cert",
                "one.pem",
                "-no_nonce",
                "-reqout",
                "req.der",
            ],
        );
        let req = std::fs::read(dir.join("req.der")).unwrap();
        let b64 = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(&req)
        };
        let resp = plain
            .get(format!(
                "{ocsp_url}/{}",
                b64.replace('+', "%2B")
                    .replace('/', "%2F")
                    .replace('=', "%3D")
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/ocsp-response");
        assert!(resp.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age="));
        std::fs::write(dir.join("get.der"), resp.bytes().await.unwrap()).unwrap();
        let text = openssl(
            dir,
            &[
                "ocsp",
                "-respin",
                "get.der",
                "-issuer",
                "issuing.pem",
                "-cert",
                "one.pem",
                "-CAfile",
                "root.pem",
            ],
        );
        assert!(text.contains("one.pem: revoked"), "{text}");
        let garbage = plain
            .post(&ocsp_url)
            .header("content-type", "application/ocsp-request")
            .body("this is not DER")
            .send()
            .await
            .unwrap();
        std::fs::write(dir.join("garbage.der"), garbage.bytes().await.unwrap()).unwrap();
        let (_, text) = openssl_status(dir, &["ocsp", "-respin", "garbage.der", "-resp_text"]);
        assert!(text.contains("malformedrequest"), "{text}");

        // pkilint: the CRL and the OCSP answers.
        openssl(
            dir,
            &[
                "ocsp",
                "-issuer",
                "issuing.pem",
                "-cert",
                "one.pem",
                "-url",
                &ocsp_url,
                "-CAfile",
                "root.pem",
                "-respout",
                "resp.der",
            ],
        );
        for (program, args) in [
            (
                "lint_crl",
                vec!["lint", "-t", "CRL", "-p", "BR", "-s", "WARNING", "crl.pem"],
            ),
            (
                "lint_crl",
                vec![
                    "lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING", "crl.pem",
                ],
            ),
            (
                "lint_ocsp_response",
                vec!["lint", "-s", "WARNING", "resp.der"],
            ),
            (
                "lint_ocsp_response",
                vec!["lint", "-s", "WARNING", "get.der"],
            ),
        ] {
            if let Some((ok, out)) = pkilint(dir, program, &args) {
                assert!(ok && out.trim().is_empty(), "{program} {args:?}: {out}");
            }
        }

        // The owner's list, filtered and searched; pages.
        let list = |q: &str| {
            let client = client.clone();
            let url = format!("{}/api/v1/certificates?{q}", run.https_url);
            let key = owner_key.clone();
            async move {
                let r = client.get(url).bearer_auth(key).send().await.unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                r.json::<Value>().await.unwrap()
            }
        };
        let serials_of = |v: &Value| -> Vec<String> {
            v["certificates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["serial"].as_str().unwrap().to_owned())
                .collect()
        };
        let revoked = list("status=revoked").await;
        let mut got = serials_of(&revoked);
        got.sort();
        let mut want = vec![s1.clone(), s3.clone()];
        want.sort();
        assert_eq!(got, want);
        assert_eq!(serials_of(&list("status=valid").await), vec![s2.clone()]);
        assert_eq!(serials_of(&list("q=two.internal").await), vec![s2.clone()]);
        // Any part of a serial finds it: its random tail, or its start
        // (the millisecond it was signed) with a few random digits after it.
        assert_eq!(
            serials_of(&list(&format!("q={}", &s3[20..])).await),
            vec![s3.clone()]
        );
        assert_eq!(
            serials_of(&list(&format!("q={}", &s3[..18])).await),
            vec![s3.clone()]
        );
        let page1 = list("limit=2").await;
        assert_eq!(serials_of(&page1).len(), 2);
        let next = page1["next"].as_str().unwrap();
        let page2 = list(&format!("limit=2&before={next}")).await;
        assert_eq!(serials_of(&page2).len(), 1);
        let r = client
            .get(format!(
                "{}/api/v1/certificates?status=bogus",
                run.https_url
            ))
            .bearer_auth(&owner_key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let others = client
            .get(format!("{}/api/v1/certificates", run.https_url))
            .bearer_auth(&other_key)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        assert!(
            serials_of(&others).is_empty(),
            "accounts see only their own"
        );

        // Every revocation is in the audit chain, which still verifies.
        let records = authority.store().audit_page(0, 10_000).await.unwrap();
        let revocations: Vec<_> = records
            .iter()
            .filter(|r| r.action == "certificate.revoke")
            .collect();
        assert_eq!(revocations.len(), 2);
        assert!(records.iter().any(|r| r.action == "crl.publish"));
        hallmark::workflow::audit::verify(authority.store().as_ref())
            .await
            .unwrap();

        run.stop().await;
        ca.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_without_an_api_key_revokes_by_signing_with_the_certificate_key() {
    let mut ca = TestCa::new(Backend::Sqlite).await;
    let run = ca.start().await;
    let dir = ca.dir.path();
    let (owner, _) = api_key(&run.authority, "owner", Role::Requester).await;
    let (serial, _) = issue(&run.authority, dir, "lost", "lost.internal", &owner).await;
    let url = format!("{}/api/v1/certificates/{serial}/revoke", run.https_url);
    let client = run.client();
    let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
    let sign = |message: &str, key: &str| {
        std::fs::write(dir.join("message.txt"), message).unwrap();
        openssl(
            dir,
            &[
                "dgst",
                "-sha256",
                "-sign",
                key,
                "-out",
                "sig.der",
                "message.txt",
            ],
        );
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(dir.join("sig.der")).unwrap())
    };
    let message = format!("hallmark-revoke-v1\n{serial}\nkeyCompromise\n{now}\n");

    // Another key's signature, and a signature over another reason, fail.
    openssl_csr(dir, "stranger", P256, "/CN=x", None);
    for (sig, reason) in [
        (sign(&message, "stranger.key"), "keyCompromise"),
        (sign(&message, "lost.key"), "superseded"),
    ] {
        let r = client
            .post(&url)
            .json(&json!({"reason": reason, "proof": {"signed_at": now, "signature": sig}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    // A stale proof is refused.
    let old = now - 3600;
    let stale = sign(
        &format!("hallmark-revoke-v1\n{serial}\nkeyCompromise\n{old}\n"),
        "lost.key",
    );
    let r = client
        .post(&url)
        .json(&json!({"reason": "keyCompromise", "proof": {"signed_at": old, "signature": stale}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let cert = run
        .authority
        .store()
        .certificate(&serial.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(cert.revoked_at, None, "refused proofs change nothing");

    let r = client
        .post(&url)
        .json(&json!({"reason": "keyCompromise", "proof": {"signed_at": now, "signature": sign(&message, "lost.key")}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let cert = run
        .authority
        .store()
        .certificate(&serial.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(cert.revocation_reason, Some(1));
    let audit = run.authority.store().audit_page(0, 1000).await.unwrap();
    let rec = audit
        .iter()
        .find(|r| r.action == "certificate.revoke")
        .unwrap();
    assert_eq!(rec.actor, "key-holder");

    // Listed while valid; gone from the next CRL once expired.
    let crls = CrlPublisher::new(run.authority.clone(), ca.config.crl.clone());
    let listed = crls.generate(CrlKind::Complete).await.unwrap();
    assert_eq!(listed.record.entries, 1);
    ca.db
        .execute(&format!(
            "UPDATE certificates SET not_after = 1000 WHERE serial = '{serial}'"
        ))
        .await;
    let after = crls.generate(CrlKind::Complete).await.unwrap();
    assert_eq!(
        after.record.entries, 0,
        "an expired certificate leaves the CRL"
    );
    assert!(after.record.number > listed.record.number);
    run.stop().await;
    ca.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsp_answers_signed_by_the_issuing_ca_itself_verify_too() {
    let mut ca = TestCa::with_env(
        Backend::Sqlite,
        &[("HALLMARK_OCSP__SIGNER", "issuer".into())],
    )
    .await;
    let run = ca.start().await;
    let dir = ca.dir.path();
    assert!(
        run.authority.store().count_certificates().await.unwrap() <= 1,
        "no responder certificate is issued"
    );
    let (owner, _) = api_key(&run.authority, "owner", Role::Requester).await;
    let (_, pem) = issue(&run.authority, dir, "leaf", "leaf.internal", &owner).await;
    let (_, ocsp_url) = urls(&pem);
    std::fs::write(dir.join("root.pem"), &run.root_pem).unwrap();
    std::fs::write(
        dir.join("issuing.pem"),
        run.authority.issuer().certificate().pem(),
    )
    .unwrap();
    let (ok, out) = openssl_status(
        dir,
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-cert",
            "leaf.pem",
            "-url",
            &ocsp_url,
            "-CAfile",
            "root.pem",
            "-resp_text",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("Response verify OK") && out.contains("leaf.pem: good"),
        "{out}"
    );
    // A certificate of another CA is not ours to answer for.
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "x.key",
            "-subj",
            "/CN=other",
            "-out",
            "other.pem",
        ],
    );
    let (_, out) = openssl_status(
        dir,
        &[
            "ocsp",
            "-issuer",
            "other.pem",
            "-cert",
            "other.pem",
            "-url",
            &ocsp_url,
            "-noverify",
        ],
    );
    assert!(out.contains("unauthorized"), "{out}");
    run.stop().await;
    ca.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_for_key_compromise_is_refused_in_every_later_csr() {
    for backend in backends() {
        let mut ca = TestCa::new(backend).await;
        let run = ca.start().await;
        let dir = ca.dir.path();
        let authority = run.authority.clone();
        let (owner, owner_key) = api_key(&authority, "owner", Role::Requester).await;
        let (s1, _) = issue(&authority, dir, "leaked", "leaked.internal", &owner).await;
        let (s2, _) = issue(&authority, dir, "old", "old.internal", &owner).await;
        let client = run.client();
        for (serial, reason) in [(&s1, "keyCompromise"), (&s2, "superseded")] {
            let r = client
                .post(format!(
                    "{}/api/v1/certificates/{serial}/revoke",
                    run.https_url
                ))
                .bearer_auth(&owner_key)
                .json(&json!({ "reason": reason }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
        }
        // A new CSR with the compromised key, for another name.
        let again = |key: &str, name: &str| {
            openssl(
                dir,
                &[
                    "req",
                    "-new",
                    "-key",
                    key,
                    "-subj",
                    &format!("/CN={name}"),
                    "-addext",
                    &format!("subjectAltName=DNS:{name}"),
                    "-out",
                    "again.csr",
                ],
            );
            std::fs::read(dir.join("again.csr")).unwrap()
        };
        let csr = again("leaked.key", "fresh.internal");
        let r = client
            .post(format!("{}/api/v1/orders", run.https_url))
            .bearer_auth(&owner_key)
            .json(&json!({"csr": String::from_utf8(csr.clone()).unwrap(), "validation": "dv"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["type"], "urn:ietf:params:acme:error:badPublicKey",
            "{body}"
        );
        assert!(
            body["detail"].as_str().unwrap().contains("keyCompromise"),
            "{body}"
        );
        // The operator's `hallmark sign` path refuses it too.
        let refused = authority
            .sign_csr(&csr, SignOptions::default(), "operator:test")
            .await;
        assert!(
            matches!(
                refused,
                Err(hallmark::workflow::WorkflowError::CompromisedKey)
            ),
            "{backend:?}"
        );
        // A key revoked for another reason is still good.
        let csr = again("old.key", "fresh.internal");
        authority
            .sign_csr(&csr, SignOptions::default(), "operator:test")
            .await
            .unwrap();
        run.stop().await;
        ca.cleanup().await;
    }
}
