//! tls-alpn-01 (RFC 8737): a TLS handshake to `<name>:<tls_alpn_port>` with
//! SNI set to the name (for an IP, its reverse-DNS name, RFC 8738 §6) and
//! ALPN `acme-tls/1` only. The server must negotiate `acme-tls/1` and present
//! a certificate whose SAN is exactly the identifier and which carries the
//! critical acmeIdentifier extension holding SHA-256(key authorization).
//! The certificate is self-signed by design, so it is not chained to any
//! root; the handshake signature is still verified, which proves the server
//! holds the certificate's key.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ring::signature as sig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::{ValidationConfig, ValidationError};
use crate::pki::Identifier;

/// The ALPN protocol of RFC 8737 §6.2.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// id-pe-acmeIdentifier (RFC 8737 §6.1).
const ACME_IDENTIFIER_OID: &str = "1.3.6.1.5.5.7.1.31";

/// Accepts any certificate (it is inspected after the handshake) but still
/// verifies the handshake signature.
#[derive(Debug)]
struct InspectLater;

impl ServerCertVerifier for InspectLater {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_handshake_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_handshake_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.iter().map(|(scheme, _)| *scheme).collect()
    }
}

/// Handshake signature schemes and the ring algorithms that check them.
const SCHEMES: [(SignatureScheme, &dyn sig::VerificationAlgorithm); 9] = {
    use SignatureScheme as S;
    [
        (S::ECDSA_NISTP256_SHA256, &sig::ECDSA_P256_SHA256_ASN1),
        (S::ECDSA_NISTP384_SHA384, &sig::ECDSA_P384_SHA384_ASN1),
        (S::ED25519, &sig::ED25519),
        (S::RSA_PSS_SHA256, &sig::RSA_PSS_2048_8192_SHA256),
        (S::RSA_PSS_SHA384, &sig::RSA_PSS_2048_8192_SHA384),
        (S::RSA_PSS_SHA512, &sig::RSA_PSS_2048_8192_SHA512),
        (S::RSA_PKCS1_SHA256, &sig::RSA_PKCS1_2048_8192_SHA256),
        (S::RSA_PKCS1_SHA384, &sig::RSA_PKCS1_2048_8192_SHA384),
        (S::RSA_PKCS1_SHA512, &sig::RSA_PKCS1_2048_8192_SHA512),
    ]
};

/// Verifies the handshake signature with the leaf's public key. webpki
/// would refuse the certificate for its critical acmeIdentifier extension,
/// so the key is taken from the certificate with x509-parser instead; this
/// is what proves the server holds the challenge certificate's key.
fn verify_handshake_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let bad = |_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature);
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert)
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
    let algorithm = SCHEMES
        .iter()
        .find(|(scheme, _)| *scheme == dss.scheme)
        .map(|(_, alg)| *alg)
        .ok_or(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::NoSignatureSchemesInCommon,
        ))?;
    ring::signature::UnparsedPublicKey::new(
        algorithm,
        &parsed.public_key().subject_public_key.data,
    )
    .verify(message, dss.signature())
    .map_err(bad)?;
    Ok(HandshakeSignatureValid::assertion())
}

/// The TLS client configuration for tls-alpn-01.
pub fn client_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(InspectLater))
        .with_no_client_auth();
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The SNI for an identifier: the name, or an IP's reverse-DNS name.
fn server_name(identifier: &Identifier) -> String {
    match identifier {
        Identifier::Dns(name) => name.clone(),
        Identifier::Ip(IpAddr::V4(v4)) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        Identifier::Ip(IpAddr::V6(v6)) => {
            let mut labels: Vec<String> = v6
                .octets()
                .iter()
                .flat_map(|b| [b >> 4, b & 0x0f])
                .map(|n| format!("{n:x}"))
                .collect();
            labels.reverse();
            format!("{}.ip6.arpa", labels.join("."))
        }
    }
}

/// Connects to `address` (the identifier's resolved address) and checks the
/// challenge certificate.
pub async fn validate(
    tls: Arc<rustls::ClientConfig>,
    config: &ValidationConfig,
    address: IpAddr,
    identifier: &Identifier,
    key_authorization: &str,
) -> Result<(), ValidationError> {
    let target = SocketAddr::new(address, config.tls_alpn_port);
    let url = format!("tls://{target} (SNI {})", server_name(identifier));
    let work = async {
        let connection_error = |reason: String| ValidationError::Connection {
            url: url.clone(),
            reason,
        };
        let tcp = tokio::net::TcpStream::connect(target)
            .await
            .map_err(|e| connection_error(e.to_string()))?;
        let name = ServerName::try_from(server_name(identifier))
            .map_err(|e| connection_error(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| connection_error(e.to_string()))?;
        let (_, session) = stream.get_ref();
        if session.alpn_protocol() != Some(ACME_TLS_ALPN) {
            return Err(ValidationError::TlsAlpn {
                url: url.clone(),
                reason: "the server did not negotiate the acme-tls/1 protocol".into(),
            });
        }
        let cert = session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .ok_or_else(|| connection_error("the server presented no certificate".into()))?;
        check_certificate(cert, identifier, key_authorization).map_err(|reason| {
            ValidationError::TlsAlpn {
                url: url.clone(),
                reason,
            }
        })
    };
    match tokio::time::timeout(config.timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(ValidationError::Timeout {
            url,
            seconds: config.timeout.as_secs(),
        }),
    }
}

/// RFC 8737 §3: exactly one SAN, the identifier; a critical acmeIdentifier
/// extension whose value is the DER OCTET STRING of SHA-256(key authorization).
fn check_certificate(
    der: &[u8],
    identifier: &Identifier,
    key_authorization: &str,
) -> Result<(), String> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| format!("the challenge certificate does not parse: {e}"))?;
    let mut sans = Vec::new();
    let mut acme_identifier = None;
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                sans.push(match name {
                    GeneralName::DNSName(d) => Identifier::Dns(d.to_ascii_lowercase()),
                    GeneralName::IPAddress(b) if b.len() == 4 => {
                        Identifier::Ip(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default()))
                    }
                    GeneralName::IPAddress(b) if b.len() == 16 => {
                        Identifier::Ip(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default()))
                    }
                    other => return Err(format!("the challenge certificate names {other:?}")),
                });
            }
        } else if ext.oid.to_id_string() == ACME_IDENTIFIER_OID {
            if !ext.critical {
                return Err("the acmeIdentifier extension is not critical".into());
            }
            acme_identifier = Some(ext.value.to_vec());
        }
    }
    if sans != [identifier.clone()] {
        return Err(format!(
            "the challenge certificate's subjectAltName must be exactly {identifier}, not {}",
            sans.iter()
                .map(Identifier::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let digest = Sha256::digest(key_authorization.as_bytes());
    let mut expected = vec![0x04, 0x20];
    expected.extend_from_slice(&digest);
    match acme_identifier {
        None => Err("the challenge certificate has no acmeIdentifier extension".into()),
        Some(value) if value != expected => Err(
            "the acmeIdentifier extension does not hold SHA-256 of the key authorization".into(),
        ),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_identifiers_use_reverse_dns_names_for_sni() {
        assert_eq!(
            server_name(&Identifier::Ip("10.1.2.3".parse().unwrap())),
            "3.2.1.10.in-addr.arpa"
        );
        let v6 = server_name(&Identifier::Ip("2001:db8::1".parse().unwrap()));
        assert!(
            v6.starts_with("1.0.0.0.") && v6.ends_with(".8.b.d.0.1.0.0.2.ip6.arpa"),
            "{v6}"
        );
    }
}
