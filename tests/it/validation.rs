//! DV validators against real challenge servers on loopback.

use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hallmark::pki::Identifier;
use hallmark::validation::{http01, ValidationConfig, ValidationError};

const KEY_AUTHORIZATION: &str = "tok3n.thumbprint-of-the-account-key";

fn system_resolver() -> hickory_resolver::TokioResolver {
    hallmark::validation::dns01::resolver("", Duration::from_secs(2)).unwrap()
}

/// A challenge server with one route per behaviour; returns its port.
async fn challenge_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let path = |name: &str| format!("/.well-known/acme-challenge/{name}");
    let app = Router::new()
        .route(
            &path("good"),
            get(|| async { format!("{KEY_AUTHORIZATION}\r\n") }),
        )
        .route(&path("wrong"), get(|| async { "not it" }))
        .route(&path("big"), get(|| async { "x".repeat(9000) }))
        .route(&path("missing"), get(|| async { StatusCode::NOT_FOUND }))
        .route(
            &path("slow"),
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                KEY_AUTHORIZATION
            }),
        )
        .route(
            &path("redirect-forbidden"),
            get(move || async move {
                (
                    StatusCode::FOUND,
                    [(
                        header::LOCATION,
                        format!("http://127.0.0.1:{port}/.well-known/acme-challenge/good"),
                    )],
                )
                    .into_response()
            }),
        )
        .route(
            &path("redirect-ftp"),
            get(|| async {
                (StatusCode::FOUND, [(header::LOCATION, "ftp://127.0.0.1/x")]).into_response()
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

#[tokio::test]
async fn http01_accepts_the_key_authorization_and_explains_every_failure() {
    let port = challenge_server().await;
    let config = ValidationConfig {
        http_port: port,
        tls_alpn_port: 443,
        timeout: Duration::from_secs(1),
        ..ValidationConfig::default()
    };
    let client = http01::client(&config, system_resolver()).unwrap();
    let ip = Identifier::Ip("127.0.0.1".parse().unwrap());
    let check = |token: &'static str| {
        let client = client.clone();
        let config = config.clone();
        let ip = ip.clone();
        async move { http01::validate(&client, &config, &ip, token, KEY_AUTHORIZATION).await }
    };

    check("good")
        .await
        .expect("the right key authorization validates");

    let err = check("wrong").await.unwrap_err();
    assert!(
        matches!(&err, ValidationError::WrongContent { length: 6, .. }),
        "{err}"
    );
    assert!(
        !err.to_string().contains("not it"),
        "what was fetched is never repeated: {err}"
    );
    assert_eq!(err.acme_type().code(), "incorrectResponse");

    let err = check("big").await.unwrap_err();
    assert!(matches!(err, ValidationError::BodyTooLarge { .. }), "{err}");

    let err = check("missing").await.unwrap_err();
    assert!(
        matches!(err, ValidationError::BadStatus { status: 404, .. }),
        "{err}"
    );

    let err = check("redirect-forbidden").await.unwrap_err();
    assert!(
        matches!(&err, ValidationError::ForbiddenRedirect { to } if to.contains(&port.to_string())),
        "{err}"
    );

    let err = check("redirect-ftp").await.unwrap_err();
    assert!(
        matches!(err, ValidationError::ForbiddenRedirect { .. }),
        "{err}"
    );

    let started = std::time::Instant::now();
    let err = check("slow").await.unwrap_err();
    assert!(matches!(err, ValidationError::Timeout { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout bounds the fetch"
    );
    assert_eq!(err.acme_type().code(), "connection");

    // Nothing listening: a connection error naming the URL.
    let closed = crate::support::free_port();
    let config = ValidationConfig {
        http_port: closed,
        ..config.clone()
    };
    let err = http01::validate(&client, &config, &ip, "good", KEY_AUTHORIZATION)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ValidationError::Connection { url, .. } if url.contains(&closed.to_string())),
        "{err}"
    );
    assert!(!err.to_string().contains('\n'));
}

#[tokio::test]
async fn http01_stops_after_ten_redirects() {
    // Redirects are only followed to ports 80 and 443, so a redirect loop
    // needs port 80 (available when the tests run as root, as in CI).
    let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:80").await else {
        // CI runs as root, where this check must run, not skip.
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "cannot bind 127.0.0.1:80, which the redirect-loop check needs"
        );
        eprintln!("note: cannot bind 127.0.0.1:80; the redirect-loop check needs it");
        return;
    };
    let app = Router::new().route(
        "/{*rest}",
        get(|| async {
            (
                StatusCode::FOUND,
                [(header::LOCATION, "http://127.0.0.1:80/loop")],
            )
                .into_response()
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let config = ValidationConfig {
        http_port: 80,
        tls_alpn_port: 443,
        timeout: Duration::from_secs(5),
        ..ValidationConfig::default()
    };
    let client = http01::client(&config, system_resolver()).unwrap();
    let ip = Identifier::Ip("127.0.0.1".parse().unwrap());
    let err = http01::validate(&client, &config, &ip, "t", KEY_AUTHORIZATION)
        .await
        .unwrap_err();
    assert_eq!(err, ValidationError::TooManyRedirects);
}

#[tokio::test]
async fn dns01_finds_the_txt_record_follows_cnames_and_explains_every_failure() {
    use crate::support::dns::{self, Entry};
    use hallmark::validation::dns01;

    let expected = dns01::txt_value(KEY_AUTHORIZATION);
    let server = dns::start(vec![
        Entry::Txt("_acme-challenge.good", expected.clone()),
        Entry::Txt("_acme-challenge.wild", expected.clone()),
        Entry::Txt("_acme-challenge.wrong", "not-the-value".into()),
        Entry::Cname("_acme-challenge.delegated", "_acme-challenge.validation"),
        Entry::Txt("_acme-challenge.validation", expected.clone()),
        Entry::A("_acme-challenge.aonly", "127.0.0.1".parse().unwrap()),
    ])
    .await;
    let resolver = dns01::resolver(&server, Duration::from_secs(2)).unwrap();

    dns01::validate(&resolver, "good.internal", KEY_AUTHORIZATION)
        .await
        .expect("TXT record matches");
    dns01::validate(&resolver, "*.wild.internal", KEY_AUTHORIZATION)
        .await
        .expect("a wildcard is validated at its base name");
    dns01::validate(&resolver, "delegated.internal", KEY_AUTHORIZATION)
        .await
        .expect("a CNAME-delegated challenge name is followed");

    let err = dns01::validate(&resolver, "wrong.internal", KEY_AUTHORIZATION)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ValidationError::DnsWrongValue { count: 1, .. })
            && !err.to_string().contains("not-the-value"),
        "{err}"
    );
    assert_eq!(err.acme_type().code(), "incorrectResponse");

    let err = dns01::validate(&resolver, "missing.internal", KEY_AUTHORIZATION)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ValidationError::DnsNameNotFound { name } if name == "_acme-challenge.missing.internal"),
        "{err}"
    );
    assert_eq!(err.acme_type().code(), "dns");

    let err = dns01::validate(&resolver, "aonly.internal", KEY_AUTHORIZATION)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ValidationError::DnsNoTxtRecord { .. }),
        "{err}"
    );

    assert!(dns01::resolver("not an address", Duration::from_secs(1))
        .unwrap_err()
        .contains("host:port"));
}

/// A tls-alpn-01 responder presenting a self-signed certificate for `sans`,
/// with the acmeIdentifier extension over `digest_of` if given; returns its
/// port. `alpn` says whether it speaks acme-tls/1.
async fn tls_alpn_responder(sans: &[&str], digest_of: Option<&str>, alpn: bool) -> u16 {
    tls_alpn_responder_with(sans, digest_of, alpn, false).await
}

/// As [`tls_alpn_responder`]; with `wrong_key` the handshake is signed by a
/// key other than the certificate's.
async fn tls_alpn_responder_with(
    sans: &[&str],
    digest_of: Option<&str>,
    alpn: bool,
    wrong_key: bool,
) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    serve_tls_alpn(listener, sans, digest_of, alpn, wrong_key);
    port
}

/// Serves tls-alpn-01 answers on `listener` (see [`tls_alpn_responder_with`]).
pub fn serve_tls_alpn(
    listener: tokio::net::TcpListener,
    sans: &[&str],
    digest_of: Option<&str>,
    alpn: bool,
    wrong_key: bool,
) {
    use sha2::{Digest, Sha256};
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    if let Some(ka) = digest_of {
        let digest = Sha256::digest(ka.as_bytes());
        params
            .custom_extensions
            .push(rcgen::CustomExtension::new_acme_identifier(&digest));
    }
    let cert = params.self_signed(&key).unwrap();
    let key = if wrong_key {
        rcgen::KeyPair::generate().unwrap()
    } else {
        key
    };
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    // Not with_single_cert: that checks the certificate, and the critical
    // acmeIdentifier extension is one webpki does not know.
    .with_cert_resolver(std::sync::Arc::new(rustls::sign::SingleCertAndKey::from(
        rustls::sign::CertifiedKey::new(
            vec![cert.der().clone()],
            rustls::crypto::ring::sign::any_supported_type(
                &rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap(),
        ),
    )));
    if alpn {
        config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
}

#[tokio::test]
async fn tls_alpn01_checks_the_protocol_the_names_and_the_acme_identifier() {
    use hallmark::validation::tls_alpn01;

    let tls = tls_alpn01::client_config().unwrap();
    let localhost = "127.0.0.1".parse().unwrap();
    let name = Identifier::Dns("a.internal".into());
    let check = |port: u16, identifier: Identifier| {
        let tls = tls.clone();
        async move {
            let config = ValidationConfig {
                http_port: 80,
                tls_alpn_port: port,
                timeout: Duration::from_secs(2),
                ..ValidationConfig::default()
            };
            tls_alpn01::validate(tls, &config, localhost, &identifier, KEY_AUTHORIZATION).await
        }
    };

    let good = tls_alpn_responder(&["a.internal"], Some(KEY_AUTHORIZATION), true).await;
    check(good, name.clone())
        .await
        .expect("a correct challenge certificate validates");

    let ip = tls_alpn_responder(&["127.0.0.1"], Some(KEY_AUTHORIZATION), true).await;
    check(ip, Identifier::Ip(localhost))
        .await
        .expect("an IP identifier validates");

    for (what, port, expected) in [
        (
            "wrong digest",
            tls_alpn_responder(&["a.internal"], Some("another.key-authorization"), true).await,
            "does not hold SHA-256",
        ),
        (
            "no acmeIdentifier",
            tls_alpn_responder(&["a.internal"], None, true).await,
            "no acmeIdentifier",
        ),
        (
            "extra name",
            tls_alpn_responder(&["a.internal", "b.internal"], Some(KEY_AUTHORIZATION), true).await,
            "must be exactly a.internal",
        ),
        (
            "no acme-tls/1",
            tls_alpn_responder(&["a.internal"], Some(KEY_AUTHORIZATION), false).await,
            "did not negotiate",
        ),
    ] {
        let err = check(port, name.clone()).await.unwrap_err();
        assert!(
            matches!(&err, ValidationError::TlsAlpn { reason, .. } if reason.contains(expected)),
            "{what}: {err}"
        );
        assert_eq!(err.acme_type().code(), "unauthorized");
    }

    // A server that does not hold the certificate's key fails the handshake.
    let stolen =
        tls_alpn_responder_with(&["a.internal"], Some(KEY_AUTHORIZATION), true, true).await;
    let err = check(stolen, name.clone()).await.unwrap_err();
    assert!(
        matches!(&err, ValidationError::Connection { reason, .. } if reason.contains("BadSignature")),
        "{err}"
    );
}

#[tokio::test]
async fn http01_resolves_names_through_the_validation_resolver() {
    use crate::support::dns::{self, Entry};
    use hallmark::validation::dns01;

    let port = challenge_server().await;
    let server = dns::start(vec![Entry::A("web", "127.0.0.1".parse().unwrap())]).await;
    let resolver = dns01::resolver(&server, Duration::from_secs(2)).unwrap();
    let config = ValidationConfig {
        http_port: port,
        tls_alpn_port: 443,
        timeout: Duration::from_secs(2),
        ..ValidationConfig::default()
    };
    let client = http01::client(&config, resolver).unwrap();
    let web = Identifier::Dns("web.internal".into());
    http01::validate(&client, &config, &web, "good", KEY_AUTHORIZATION)
        .await
        .expect("web.internal resolves through the test DNS server");
    let err = http01::validate(
        &client,
        &config,
        &Identifier::Dns("nowhere.internal".into()),
        "good",
        KEY_AUTHORIZATION,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ValidationError::Connection { url, .. } if url.contains("nowhere.internal")),
        "{err}"
    );
}

#[tokio::test]
async fn validators_from_configuration_check_all_three_challenge_types() {
    use crate::support::dns::{self, Entry};
    use hallmark::config::ValidationSection;
    use hallmark::validation::{dns01, ChallengeKind, Validators};

    let http_port = challenge_server().await;
    let tls_port = tls_alpn_responder(&["web.internal"], Some(KEY_AUTHORIZATION), true).await;
    // dns-account-01 for the REST account "acct" (no URL prefix here).
    let labelled = dns01::account_record_name("web.internal", "acct");
    let labelled: &'static str = labelled
        .strip_suffix(".internal")
        .unwrap()
        .to_owned()
        .leak();
    let server = dns::start(vec![
        Entry::A("web", "127.0.0.1".parse().unwrap()),
        Entry::Txt("_acme-challenge.web", dns01::txt_value(KEY_AUTHORIZATION)),
        Entry::Txt(labelled, dns01::txt_value(KEY_AUTHORIZATION)),
        // dns-persist-01: a standing record naming this CA and "acct".
        Entry::Txt(
            "_validation-persist.web",
            dns01::persist_value("ca.internal", "acct", false),
        ),
    ])
    .await;
    let validators = Validators::new(
        &ValidationSection {
            dns_resolver: server,
            http_port,
            tls_alpn_port: tls_port,
            timeout_secs: 2,
            ..ValidationSection::default()
        },
        &[],
    )
    .unwrap()
    .with_caa(hallmark::validation::caa::CaaSettings {
        identities: vec!["ca.internal".into()],
    });
    let web = Identifier::Dns("web.internal".into());
    for kind in ChallengeKind::offered_for(&web) {
        validators
            .check("acct", *kind, &web, "good", KEY_AUTHORIZATION)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", kind.as_str()));
    }
    let err = validators
        .check(
            "acct",
            ChallengeKind::TlsAlpn01,
            &Identifier::Dns("gone.internal".into()),
            "good",
            KEY_AUTHORIZATION,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ValidationError::DnsNameNotFound { .. }),
        "{err}"
    );
    let bad = Validators::new(
        &ValidationSection {
            dns_resolver: "nonsense".into(),
            http_port,
            tls_alpn_port: tls_port,
            timeout_secs: 2,
            ..ValidationSection::default()
        },
        &[],
    );
    assert!(bad.err().unwrap().contains("validation.dns_resolver"));
}
