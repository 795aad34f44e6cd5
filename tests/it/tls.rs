//! The handshake hallmark's users depend on: a tokio-rustls server with an
//! issued certificate, and a rustls client that trusts only the root.

use std::sync::Arc;

use hallmark::datadir::issuer_urls;
use hallmark::pki::ca::{create_root, CaNames};
use hallmark::pki::profile::LeafRequest;
use hallmark::pki::{Identifier, Issuer, KeySigner, KeyType, PrivateKey, Profile, Serial, Subject};
use rustls::pki_types::{CertificateDer, ServerName};
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A root and intermediate created at `created`, and a leaf for
/// `a.internal` issued at `issued` for `days`.
fn chain_at(
    created: OffsetDateTime,
    issued: OffsetDateTime,
    days: u32,
) -> (Vec<u8>, String, String) {
    let names = CaNames {
        organization: "test".into(),
        root_common_name: "Test Root".into(),
        intermediate_common_name: "Test Issuing".into(),
    };
    let mut rng = rand::thread_rng();
    let root_key = PrivateKey::generate(KeyType::P256).unwrap().into_signer();
    let root_cert = create_root(&root_key, &names, created, Serial::random(&mut rng)).unwrap();
    let root = Issuer::new(
        root_cert.clone(),
        root_key,
        issuer_urls("http://ca.test", "root", false),
    )
    .unwrap();
    let int_key = PrivateKey::generate(KeyType::P256).unwrap().into_signer();
    let int_cert = root
        .issue_intermediate(
            int_key.public_key_spki(),
            &names,
            None,
            created,
            Serial::random(&mut rng),
        )
        .unwrap();
    let id = int_cert.id().to_owned();
    let int = Issuer::new(int_cert, int_key, issuer_urls("http://ca.test", &id, true)).unwrap();
    let leaf_key = PrivateKey::generate(KeyType::P256).unwrap();
    let ids = [Identifier::Dns("a.internal".into())];
    let leaf = int
        .issue_leaf(
            &LeafRequest {
                spki_der: leaf_key.public_key_spki(),
                key_is_rsa: false,
                identifiers: &ids,
                subject: &Subject::default(),
                shape: Profile::Server.shape(),
                serial: Serial::random(&mut rng),
                now: issued,
                validity_days: days,
                not_after: None,
                crl_partition: 0,
            },
            397,
        )
        .unwrap();
    let chain = format!("{}{}", leaf.pem(), int.certificate().pem());
    (
        root_cert.der().to_vec(),
        chain,
        leaf_key.to_pkcs8_pem().unwrap().to_string(),
    )
}

/// Serves one TLS connection with `chain`/`key`, then tries a client
/// handshake for `server_name` trusting only `root`.
pub(crate) async fn handshake(
    root: &[u8],
    chain: &str,
    key: &str,
    server_name: &str,
) -> Result<(), String> {
    let config = hallmark::service::tls_config(chain, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        if let Ok(mut tls) = acceptor.accept(tcp).await {
            let mut buf = [0u8; 5];
            if tls.read_exact(&mut buf).await.is_ok() {
                let _ = tls.write_all(b"world").await;
            }
        }
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(root.to_vec())).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let result = async {
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"world");
        Ok(())
    }
    .await;
    let _ = server.await;
    result
}

#[tokio::test]
async fn rustls_handshake_succeeds_for_the_san_and_fails_for_another_name() {
    let now = OffsetDateTime::now_utc();
    let (root, chain, key) = chain_at(now, now, 90);
    handshake(&root, &chain, &key, "a.internal")
        .await
        .expect("handshake for the SAN succeeds");
    let err = handshake(&root, &chain, &key, "b.internal")
        .await
        .unwrap_err();
    assert!(
        err.contains("NotValidForName") || err.contains("not valid for name"),
        "{err}"
    );
}

#[tokio::test]
async fn rustls_handshake_fails_for_an_expired_certificate() {
    let now = OffsetDateTime::now_utc();
    let (root, chain, key) = chain_at(now - Duration::days(400), now - Duration::days(100), 30);
    let err = handshake(&root, &chain, &key, "a.internal")
        .await
        .unwrap_err();
    assert!(err.to_lowercase().contains("expired"), "{err}");
}

#[tokio::test]
async fn rustls_handshake_fails_against_another_root() {
    let now = OffsetDateTime::now_utc();
    let (_, chain, key) = chain_at(now, now, 90);
    let (other_root, _, _) = chain_at(now, now, 90);
    let err = handshake(&other_root, &chain, &key, "a.internal")
        .await
        .unwrap_err();
    // Same issuer name, other key: the signature check refuses it.
    assert!(
        err.contains("UnknownIssuer") || err.contains("BadSignature"),
        "{err}"
    );
}
