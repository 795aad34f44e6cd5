//! Hostile requesters (issue "Nobody in"): the validator cannot be turned on
//! the network — link-local and metadata targets, the CA's own listeners,
//! operator deny lists, DNS rebinding between check and connect — and one
//! account's black-hole challenges cannot starve another's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hallmark::config::ValidationSection;
use hallmark::pki::Identifier;
use hallmark::validation::{ChallengeKind, ValidationError, Validators};
use hallmark::workflow::accounts::Role;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::dns::{self, Entry};
use crate::support::dv::{challenge, csr, DvLab, Http01Server};
use crate::support::*;

const KEY_AUTHORIZATION: &str = "tok3n.thumbprint-of-the-account-key";

async fn check(v: &Validators, kind: ChallengeKind, id: Identifier) -> Result<(), ValidationError> {
    v.check("acct", kind, &id, "good", KEY_AUTHORIZATION).await
}

fn refused(result: Result<(), ValidationError>) -> String {
    match result {
        Err(e @ ValidationError::RefusedAddress { .. }) => e.to_string(),
        other => panic!("expected a refused address, got {other:?}"),
    }
}

/// A listener that counts the connections it accepts and never answers.
async fn trap(addr: SocketAddr) -> Arc<AtomicUsize> {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    count
}

/// A DNS server on loopback answering every A query for any name with
/// the next address of `answers`, round robin: a rebinding attacker's
/// server (TTL 0).
async fn rebinding_dns(answers: Vec<[u8; 4]>) -> (String, Arc<AtomicUsize>) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    let queries = Arc::new(AtomicUsize::new(0));
    let counter = queries.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let query = &buf[..n];
            // Header (12 bytes), then one question: labels, 0, type, class.
            let mut end = 12;
            while end < n && query[end] != 0 {
                end += 1 + query[end] as usize;
            }
            let question_end = end + 5;
            if question_end > n {
                continue;
            }
            let qtype = u16::from_be_bytes([query[end + 1], query[end + 2]]);
            let mut reply = Vec::with_capacity(64);
            reply.extend_from_slice(&query[..2]); // id
            reply.extend_from_slice(&[0x85, 0x80]); // response, authoritative, RD, RA
            reply.extend_from_slice(&[0, 1]); // one question
            let answer = qtype == 1;
            reply.extend_from_slice(&[0, u8::from(answer), 0, 0, 0, 0]);
            reply.extend_from_slice(&query[12..question_end]);
            if answer {
                let i = counter.fetch_add(1, Ordering::SeqCst);
                reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
                reply.extend_from_slice(&answers[i % answers.len()]);
            }
            let _ = socket.send_to(&reply, peer).await;
        }
    });
    (addr, queries)
}

fn section(resolver: &str, http_port: u16, tls_alpn_port: u16) -> ValidationSection {
    ValidationSection {
        dns_resolver: resolver.to_owned(),
        http_port,
        tls_alpn_port,
        timeout_secs: 2,
        ..ValidationSection::default()
    }
}

#[tokio::test]
async fn validators_refuse_metadata_link_local_own_listeners_and_denied_networks() {
    let web = Http01Server::start().await;
    web.publish("/.well-known/acme-challenge/good", KEY_AUTHORIZATION);
    let resolver = dns::start(vec![
        Entry::A("meta", "169.254.169.254".parse().unwrap()),
        Entry::A("web", "127.0.0.1".parse().unwrap()),
        Entry::A("second", "127.0.0.2".parse().unwrap()),
    ])
    .await;
    let plain = Validators::new(&section(&resolver, web.port, web.port), &[]).unwrap();
    let metadata = Identifier::Ip("169.254.169.254".parse().unwrap());
    let meta_name = Identifier::Dns("meta.internal".into());
    for kind in [ChallengeKind::Http01, ChallengeKind::TlsAlpn01] {
        for id in [metadata.clone(), meta_name.clone()] {
            let started = Instant::now();
            let why = refused(check(&plain, kind, id.clone()).await);
            assert!(
                why.contains("169.254.169.254") && why.contains("link-local"),
                "{why}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "refused before connecting"
            );
        }
    }
    for ip in ["fe80::1", "::ffff:169.254.169.254", "0.0.0.0", "224.0.0.1"] {
        let id = Identifier::Ip(ip.parse().unwrap());
        refused(check(&plain, ChallengeKind::Http01, id).await);
    }
    // Private and loopback addresses are this CA's purpose: allowed.
    check(
        &plain,
        ChallengeKind::Http01,
        Identifier::Dns("web.internal".into()),
    )
    .await
    .unwrap();

    // The CA's own listener, by address and through a name.
    let own: SocketAddr = format!("127.0.0.1:{}", web.port).parse().unwrap();
    let guarded = Validators::new(&section(&resolver, web.port, web.port), &[own]).unwrap();
    for id in [
        Identifier::Ip("127.0.0.1".parse().unwrap()),
        Identifier::Dns("web.internal".into()),
    ] {
        let why = refused(check(&guarded, ChallengeKind::Http01, id).await);
        assert!(why.contains("own listener"), "{why}");
    }

    // Operator lists: deny loopback, but allow 127.0.0.1 itself.
    let listed = Validators::new(
        &ValidationSection {
            deny_networks: vec!["127.0.0.0/8".into()],
            allow_networks: vec!["127.0.0.1/32".into()],
            ..section(&resolver, web.port, web.port)
        },
        &[],
    )
    .unwrap();
    check(
        &listed,
        ChallengeKind::Http01,
        Identifier::Dns("web.internal".into()),
    )
    .await
    .unwrap();
    let why = refused(
        check(
            &listed,
            ChallengeKind::Http01,
            Identifier::Dns("second.internal".into()),
        )
        .await,
    );
    assert!(
        why.contains("127.0.0.0/8") && why.contains("deny_networks"),
        "{why}"
    );
}

#[tokio::test]
async fn the_address_checked_is_the_address_connected_to_under_dns_rebinding() {
    // The good server on 127.0.0.1; a trap on the same port of 127.0.0.2,
    // which the operator denies. The attacker's DNS alternates the two.
    let web = Http01Server::start().await;
    web.publish("/.well-known/acme-challenge/good", KEY_AUTHORIZATION);
    let trapped = trap(format!("127.0.0.2:{}", web.port).parse().unwrap()).await;
    let (resolver, queries) = rebinding_dns(vec![[127, 0, 0, 1], [127, 0, 0, 2]]).await;
    let validators = Validators::new(
        &ValidationSection {
            deny_networks: vec!["127.0.0.2/32".into()],
            ..section(&resolver, web.port, web.port)
        },
        &[],
    )
    .unwrap();
    let name = Identifier::Dns("rebind.internal".into());
    let (mut passed, mut refusals) = (0, 0);
    // One kind after the other, so each sees both answers in turn.
    for kind in [ChallengeKind::Http01, ChallengeKind::TlsAlpn01] {
        for _ in 0..8 {
            match validators
                .check("acct", kind, &name, "good", KEY_AUTHORIZATION)
                .await
            {
                Ok(()) => passed += 1,
                Err(ValidationError::RefusedAddress { .. }) => refusals += 1,
                // tls-alpn-01 against the http-01 server fails its
                // handshake: it connected to the allowed address.
                Err(ValidationError::Connection { url, .. }) if url.contains("127.0.0.1") => {
                    passed += 1
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert!(
        queries.load(Ordering::SeqCst) >= 16,
        "every check resolved anew"
    );
    assert!(
        passed > 0 && refusals > 0,
        "{passed} passed, {refusals} refused"
    );
    assert_eq!(
        trapped.load(Ordering::SeqCst),
        0,
        "no connection ever reached the denied address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_accounts_black_holes_do_not_time_out_another_accounts_validation() {
    let web = Http01Server::start().await;
    web.publish("/.well-known/acme-challenge/good", KEY_AUTHORIZATION);
    // The black hole accepts and never answers, on its own loopback address.
    let hole = trap(format!("127.0.0.3:{}", web.port).parse().unwrap()).await;
    let validators = Arc::new(Validators::new(&section("", web.port, web.port), &[]).unwrap());
    let black_hole = Identifier::Ip("127.0.0.3".parse().unwrap());
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let v = validators.clone();
        let id = black_hole.clone();
        tasks.push(tokio::spawn(async move {
            v.check(
                "mallory",
                ChallengeKind::Http01,
                &id,
                "good",
                KEY_AUTHORIZATION,
            )
            .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = hole.load(Ordering::SeqCst);
    assert!(
        held <= 8,
        "one account holds at most 8 validations at once, held {held}"
    );
    let started = Instant::now();
    let good = Identifier::Ip("127.0.0.1".parse().unwrap());
    validators
        .check(
            "alice",
            ChallengeKind::Http01,
            &good,
            "good",
            KEY_AUTHORIZATION,
        )
        .await
        .expect("another account's validation runs at once");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    for t in tasks.drain(..8) {
        let r = t.await.unwrap();
        assert!(matches!(r, Err(ValidationError::Timeout { .. })), "{r:?}");
    }
    for t in tasks {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_for_the_metadata_address_fails_without_a_connection() {
    let backend = backends().remove(0);
    // Even where policy would certify the link-local block, the validator
    // never connects there.
    let lab = DvLab::new(
        backend,
        &[
            ("HALLMARK_POLICY__ALLOW_IP", "true".into()),
            (
                "HALLMARK_POLICY__ALLOWED_IP_RANGES",
                r#"["127.0.0.0/8", "169.254.0.0/16"]"#.into(),
            ),
        ],
    )
    .await;
    let key = lab.account("team", Role::Requester).await;
    let pem = csr(
        lab.ca.dir.path(),
        "meta",
        "169.254.169.254",
        "IP:169.254.169.254",
    );
    let (status, order) = lab
        .post(&key, "/orders", json!({"csr": pem, "validation": "dv"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let c = challenge(&order, "169.254.169.254", "http-01");
    let url = c["url"].as_str().unwrap();
    let path = &url[url.find("/api/v1").unwrap() + 7..];
    let (status, body) = lab.post(&key, path, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let order = lab.settle(&key, order["id"].as_str().unwrap()).await;
    assert_eq!(order["status"], "invalid", "{order}");
    let error = order["error"].to_string();
    assert!(
        error.contains("refused to connect") && error.contains("link-local"),
        "{error}"
    );
    lab.finish().await;
}

/// Whether the server has closed `socket` (EOF or reset), waiting at most
/// `within`.
async fn closed_by_server(socket: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408 or similar before closing: keep reading to the end.
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_and_ocsp_answer_while_idle_and_slow_connections_flood_the_listener() {
    use hallmark::workflow::revocation::RevokeRequest;
    use tokio::io::AsyncWriteExt;

    // Both ends of 1,200 connections live in this process.
    hallmark::http::server::raise_open_file_limit(8192).unwrap();
    let mut ca = TestCa::with_env(
        backends().remove(0),
        &[
            ("HALLMARK_SERVER__MAX_CONNECTIONS", "256".into()),
            ("HALLMARK_SERVER__IDLE_TIMEOUT_SECS", "3".into()),
        ],
    )
    .await;
    let run = ca.start().await;
    let dir = ca.dir.path();
    let (owner, _) = crate::support::pki::api_key(&run.authority, "owner", Role::Requester).await;
    let (serial, pem) =
        crate::support::pki::issue(&run.authority, dir, "leaf", "leaf.internal", &owner).await;
    run.authority
        .revoke_as_key_holder(
            &serial.parse().unwrap(),
            RevokeRequest {
                reason: hallmark::pki::crl::RevocationReason::Superseded,
                invalidity_date: None,
            },
            "operator:test",
        )
        .await
        .unwrap();
    std::fs::write(dir.join("root.pem"), &run.root_pem).unwrap();
    std::fs::write(
        dir.join("issuing.pem"),
        run.authority.issuer().certificate().pem(),
    )
    .unwrap();
    let (crl_url, ocsp_url) = crate::support::pki::urls(&pem);
    let http_addr = run.http_url.trim_start_matches("http://").to_owned();
    let https_addr = ca.config.https_listen;

    // 1,000 sockets that send nothing, 150 that start a TLS handshake
    // never, and 50 slowloris clients dribbling a header byte every 500 ms.
    let mut idle = Vec::new();
    for i in 0..1150 {
        let socket = if i < 1000 {
            tokio::net::TcpStream::connect(&http_addr).await.unwrap()
        } else {
            tokio::net::TcpStream::connect(https_addr).await.unwrap()
        };
        idle.push(socket);
    }
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut socket = tokio::net::TcpStream::connect(&http_addr).await.unwrap();
        socket
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: ca\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(tokio::spawn(async move {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(30) {
                if socket.write_all(b"a").await.is_err() {
                    return started.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            started.elapsed()
        }));
    }

    // Meanwhile CRL and OCSP answer, each on a new connection, promptly.
    for round in 0..10 {
        let started = Instant::now();
        let client = reqwest::Client::new();
        let crl = client.get(&crl_url).send().await.unwrap();
        assert_eq!(crl.status(), StatusCode::OK, "round {round}");
        assert!(!crl.bytes().await.unwrap().is_empty());
        let d = dir.to_path_buf();
        let url = ocsp_url.clone();
        let status = tokio::task::spawn_blocking(move || {
            crate::support::pki::ocsp_status(&d, "leaf.pem", &url)
        })
        .await
        .unwrap();
        assert!(status.starts_with("revoked"), "round {round}: {status}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "round {round}: CRL and OCSP took {:?}",
            started.elapsed()
        );
    }

    // Every idle socket is closed by the server: evicted for newer ones or
    // after the first-request timeout (3 s here).
    // All at once, so a server that never closes them fails in 6 s.
    let checks: Vec<_> = idle
        .into_iter()
        .map(|mut socket| {
            tokio::spawn(async move { closed_by_server(&mut socket, Duration::from_secs(6)).await })
        })
        .collect();
    let mut still_open = 0;
    for check in checks {
        if !check.await.unwrap() {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 0, "idle sockets the server kept open");
    // Dribbled headers are cut off by the 10 s header timeout.
    for task in slow {
        let held = task.await.unwrap();
        assert!(
            held < Duration::from_secs(15),
            "a slowloris client held on for {held:?}"
        );
    }
    run.stop().await;
    ca.cleanup().await;
}

/// A nonce from the directory (every ACME answer carries one; the
/// directory is not rate-limited).
async fn directory_nonce(run: &Running) -> String {
    let r = run
        .client()
        .get(format!("{}/acme/directory", run.https_url))
        .send()
        .await
        .unwrap();
    r.headers()["replay-nonce"].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unauthenticated_doors_are_rate_limited_per_address() {
    use crate::support::acme::Client;
    use crate::support::browser::Browser;

    let mut ca = TestCa::with_env(
        backends().remove(0),
        &[
            ("HALLMARK_LIMITS__SIGN_IN_PER_MINUTE", "4".into()),
            ("HALLMARK_LIMITS__NEW_ACCOUNTS_PER_MINUTE", "3".into()),
            ("HALLMARK_LIMITS__NEW_NONCES_PER_MINUTE", "5".into()),
            ("HALLMARK_LIMITS__KEY_REVOCATIONS_PER_MINUTE", "2".into()),
        ],
    )
    .await;
    let run = ca.start().await;
    let acme = format!("{}/acme", run.https_url);
    let limited = |status: u16, body: &serde_json::Value, what: &str| {
        assert_eq!(status, 429, "{what}: {body}");
        assert_eq!(
            body["type"], "urn:ietf:params:acme:error:rateLimited",
            "{what}"
        );
        assert!(
            body["detail"].as_str().unwrap().contains("your address"),
            "{body}"
        );
    };

    // newAccount: three, then refused (before any signature is checked).
    for i in 0..4 {
        let client = Client::with(run.client(), acme.clone());
        let url = format!("{acme}/new-account");
        let nonce = directory_nonce(&run).await;
        let body = client.sign(
            &url,
            &nonce,
            Some(&json!({"termsOfServiceAgreed": true})),
            json!({}),
        );
        let a = client.post_body(&url, &body).await;
        if i < 3 {
            assert_eq!(a.status, 201, "{}", a.body);
        } else {
            limited(a.status, &a.body, "newAccount");
            assert!(a.headers.contains_key("retry-after"));
        }
    }

    // newNonce: five, then refused.
    for i in 0..6 {
        let r = run
            .client()
            .head(format!("{acme}/new-nonce"))
            .send()
            .await
            .unwrap();
        if i < 5 {
            assert_eq!(r.status(), StatusCode::OK);
        } else {
            assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
            assert!(r.headers().contains_key("retry-after"));
        }
    }
    let r = run
        .client()
        .get(format!("{acme}/new-nonce"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    limited(status, &r.json().await.unwrap(), "newNonce");

    // revokeCert signed by a (certificate) key: two, then refused.
    for i in 0..3 {
        let stranger = Client::with(run.client(), acme.clone());
        let url = format!("{acme}/revoke-cert");
        let nonce = directory_nonce(&run).await;
        let body = stranger.sign(
            &url,
            &nonce,
            Some(&json!({"certificate": "AAAA"})),
            json!({}),
        );
        let a = stranger.post_body(&url, &body).await;
        if i < 2 {
            assert_ne!(a.status, 429, "{}", a.body);
        } else {
            limited(a.status, &a.body, "revokeCert");
        }
    }

    // Dashboard sign-in: four attempts, then 429 with a sentence.
    let mut browser = Browser::new(&run);
    for i in 0..5 {
        let login = browser.get("/admin/login").await;
        let csrf = login.csrf();
        let page = browser
            .post(
                "/admin/login",
                &[
                    ("csrf", &csrf),
                    ("username", "admin"),
                    ("password", "guess"),
                ],
            )
            .await;
        if i < 4 {
            assert_eq!(page.status, StatusCode::UNAUTHORIZED, "attempt {i}");
        } else {
            assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS, "attempt {i}");
            assert!(
                page.body.contains("too many sign-in attempts"),
                "{}",
                page.body
            );
            assert!(page.headers.contains_key("retry-after"));
        }
    }
    run.stop().await;
    ca.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_checks_are_bounded_and_the_excess_told_to_come_back() {
    let mut ca = TestCa::with_env(
        backends().remove(0),
        &[("HALLMARK_LIMITS__SIGN_IN_PER_MINUTE", "0".into())],
    )
    .await;
    let run = ca.start().await;
    // Four connections, 30 sign-ins each, all at once.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut browser = crate::support::browser::Browser::new(&run);
        let csrf = browser.get("/admin/login").await.csrf();
        let (http, cookies) = (browser.http(), browser.cookie_header());
        let url = format!("{}/admin/login", browser.base);
        for i in 0..30 {
            let (http, cookies, csrf, url) =
                (http.clone(), cookies.clone(), csrf.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let user = format!("nobody{i}");
                let form = [
                    ("csrf", csrf.as_str()),
                    ("username", &user),
                    ("password", "x"),
                ];
                let r = http
                    .post(url)
                    .header("cookie", cookies)
                    .form(&form)
                    .send()
                    .await
                    .unwrap();
                r.status().as_u16()
            }));
        }
    }
    let mut statuses = std::collections::BTreeMap::new();
    for t in tasks {
        *statuses.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    let peak = run.password_gate.peak();
    assert!(peak <= 2, "{peak} password checks ran at once");
    assert!(
        statuses.keys().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert!(statuses.get(&429).copied().unwrap_or(0) > 0, "{statuses:?}");
    run.stop().await;
    ca.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_cannot_hoard_pending_authorizations() {
    for backend in backends() {
        let lab = DvLab::new(
            backend,
            &[("HALLMARK_ORDERS__MAX_PENDING_AUTHORIZATIONS", "3".into())],
        )
        .await;
        let hoarder = lab.account("hoarder", Role::Requester).await;
        let other = lab.account("other", Role::Requester).await;
        let dir = lab.ca.dir.path();
        let order = |key: &str, file: &str, names: &[&str]| {
            let san = names
                .iter()
                .map(|n| format!("DNS:{n}"))
                .collect::<Vec<_>>()
                .join(",");
            let pem = csr(dir, file, names[0], &san);
            let key = key.to_owned();
            let lab = &lab;
            async move {
                lab.post(&key, "/orders", json!({"csr": pem, "validation": "dv"}))
                    .await
            }
        };
        let (status, body) = order(&hoarder, "h1", &["a1.internal", "a2.internal"]).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = order(&hoarder, "h2", &["a3.internal"]).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = order(&hoarder, "h3", &["a4.internal"]).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["type"], "urn:ietf:params:acme:error:rateLimited");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("3 unfinished authorizations"),
            "{body}"
        );
        // Another account is not affected.
        let (status, body) = order(&other, "o1", &["b1.internal"]).await;
        assert_eq!(status, StatusCode::CREATED, "{backend:?}: {body}");
        lab.finish().await;
    }
}

#[tokio::test]
async fn http01_refuses_redirects_to_another_host_and_never_echoes_what_it_read() {
    use axum::http::header;
    use axum::response::IntoResponse;
    use axum::routing::get;

    // web.internal's server: one token redirects to another host (an
    // internal service by name, and by address), one answers with what
    // an internal service would hold.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new()
        .route(
            "/.well-known/acme-challenge/to-name",
            get(|| async {
                (
                    axum::http::StatusCode::FOUND,
                    [(
                        header::LOCATION,
                        "http://secrets.internal/.well-known/acme-challenge/x",
                    )],
                )
                    .into_response()
            }),
        )
        .route(
            "/.well-known/acme-challenge/to-address",
            get(|| async {
                (
                    axum::http::StatusCode::FOUND,
                    [(header::LOCATION, "http://127.0.0.1/admin")],
                )
                    .into_response()
            }),
        )
        .route(
            "/.well-known/acme-challenge/leak",
            get(|| async { "db_password=hunter2-internal-secret" }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let resolver = dns::start(vec![
        Entry::A("web", "127.0.0.1".parse().unwrap()),
        Entry::A("secrets", "127.0.0.1".parse().unwrap()),
    ])
    .await;
    let validators = Validators::new(&section(&resolver, port, port), &[]).unwrap();
    let web = Identifier::Dns("web.internal".into());
    for token in ["to-name", "to-address"] {
        let err = validators
            .check(
                "acct",
                ChallengeKind::Http01,
                &web,
                token,
                KEY_AUTHORIZATION,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, ValidationError::ForbiddenRedirect { .. }),
            "{token}: {err}"
        );
    }
    let err = validators
        .check(
            "acct",
            ChallengeKind::Http01,
            &web,
            "leak",
            KEY_AUTHORIZATION,
        )
        .await
        .unwrap_err();
    let said = err.to_string();
    assert!(
        matches!(err, ValidationError::WrongContent { .. }),
        "{said}"
    );
    assert!(
        !said.contains("hunter2") && !said.contains("db_password"),
        "{said}"
    );
}
