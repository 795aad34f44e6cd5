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

use crate::common::*;
use crate::dns::{self, Entry};
use crate::orders::{challenge, csr, DvLab, Http01Server};

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
    for _ in 0..8 {
        for kind in [ChallengeKind::Http01, ChallengeKind::TlsAlpn01] {
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
    let lab = DvLab::new(backend, &[("HALLMARK_POLICY__ALLOW_IP", "true".into())]).await;
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
