//! DV validators against real challenge servers on loopback.

use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hallmark::pki::Identifier;
use hallmark::validation::{http01, ValidationConfig, ValidationError};

const KEY_AUTHORIZATION: &str = "tok3n.thumbprint-of-the-account-key";

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
        timeout: Duration::from_secs(1),
    };
    let client = http01::client(&config).unwrap();
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
        matches!(&err, ValidationError::WrongContent { got, .. } if got == "not it"),
        "{err}"
    );
    assert_eq!(err.acme_type(), "incorrectResponse");

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
    assert_eq!(err.acme_type(), "connection");

    // Nothing listening: a connection error naming the URL.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
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
        timeout: Duration::from_secs(5),
    };
    let client = http01::client(&config).unwrap();
    let ip = Identifier::Ip("127.0.0.1".parse().unwrap());
    let err = http01::validate(&client, &config, &ip, "t", KEY_AUTHORIZATION)
        .await
        .unwrap_err();
    assert_eq!(err, ValidationError::TooManyRedirects);
}

#[tokio::test]
async fn dns01_finds_the_txt_record_follows_cnames_and_explains_every_failure() {
    use crate::dns::{self, Entry};
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
        matches!(&err, ValidationError::DnsWrongValue { found, .. } if found == &vec!["not-the-value".to_string()]),
        "{err}"
    );
    assert_eq!(err.acme_type(), "incorrectResponse");

    let err = dns01::validate(&resolver, "missing.internal", KEY_AUTHORIZATION)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ValidationError::DnsNameNotFound { name } if name == "_acme-challenge.missing.internal"),
        "{err}"
    );
    assert_eq!(err.acme_type(), "dns");

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
