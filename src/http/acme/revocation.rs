//! revokeCert (RFC 8555 §7.6), signed by the account or by the certificate's own key, and renewal information (RFC 9773).

use super::*;

/// Whether `jwk` is the public key of the certificate `der`.
pub(super) fn jwk_matches_certificate(jwk: &Value, der: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    let Ok(key) = jws::PublicJwk::from_jwk(jwk) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(der) else {
        return false;
    };
    let spki = cert.public_key();
    let bits = spki.subject_public_key.data.as_ref();
    match key {
        jws::PublicJwk::P256(p) | jws::PublicJwk::P384(p) | jws::PublicJwk::Ed25519(p) => p == bits,
        jws::PublicJwk::Rsa { n, e } => match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => {
                let trim = |b: &[u8]| {
                    b.iter()
                        .skip_while(|x| **x == 0)
                        .copied()
                        .collect::<Vec<u8>>()
                };
                trim(rsa.modulus) == trim(&n) && trim(rsa.exponent) == trim(&e)
            }
            _ => false,
        },
    }
}

/// revokeCert (RFC 8555 §7.6): signed by the account that owns the
/// certificate (`kid`) or by the certificate's own key (`jwk`).
pub(super) async fn revoke_cert(
    State(state): State<Arc<AppState>>,
    ClientAddr(client): ClientAddr,
    uri: Uri,
    body: Bytes,
) -> Result<Response, Problem> {
    // Signed by a certificate's key, revocation needs no account: the
    // one unauthenticated write, limited per address.
    let by_certificate_key = Jws::parse(&body).is_ok_and(|j| j.protected.jwk.is_some());
    if by_certificate_key {
        state
            .limits
            .key_revocation
            .take(address_key(client))
            .map_err(|secs| too_many("revocations signed by a certificate key", secs))?;
    }
    let v = verify(&state, &uri, &body, true).await?;
    let payload = v.payload()?;
    let der = der_member(
        &payload,
        "certificate",
        "revokeCert needs \"certificate\": the DER certificate in base64url",
    )?;
    let reason = match payload.get("reason").and_then(Value::as_i64) {
        None => RevocationReason::Unspecified,
        Some(code) => RevocationReason::from_code(code).ok_or_else(|| {
            Problem::acme(
                StatusCode::BAD_REQUEST,
                AcmeError::BadRevocationReason,
                format!("reason {code} is not offered; use 0-5 or 9 (certificateHold is not)"),
            )
        })?,
    };
    let serial: Option<Serial> = {
        use x509_parser::prelude::FromDer;
        x509_parser::certificate::X509Certificate::from_der(&der)
            .ok()
            .and_then(|(_, c)| hex::encode(c.raw_serial()).parse().ok())
    };
    let not_ours = || Problem::not_found("this CA did not issue that certificate");
    let serial = serial.ok_or_else(not_ours)?;
    let store = state.authority.reads();
    let cert = match store.certificate(&serial).await {
        Err(StoreError::NotFound) => return Err(not_ours()),
        other => other?,
    };
    if cert.der != der {
        return Err(not_ours());
    }
    let request = RevokeRequest {
        reason,
        invalidity_date: None,
    };
    match &v.account {
        Some(a) => {
            if cert.account_id.as_deref() != Some(a.account_id.as_str()) {
                return Err(Problem::acme(
                        StatusCode::FORBIDDEN,
                        AcmeError::Unauthorized,
                        "this account did not order that certificate; sign with the certificate's key instead",
                    ));
            }
            state
                .authority
                .revoke(Revoker::Account(&v.caller()), &serial, request)
                .await?;
        }
        None => {
            let jwk = v.jws.protected.jwk.clone().unwrap_or_default();
            if !jwk_matches_certificate(&jwk, &cert.der) {
                return Err(Problem::acme(
                    StatusCode::FORBIDDEN,
                    AcmeError::Unauthorized,
                    "the JWS key is neither an account's nor the certificate's",
                ));
            }
            state
                .authority
                .revoke_as_key_holder(&serial, request, "acme:key-holder")
                .await?;
        }
    }
    Ok(StatusCode::OK.into_response())
}

/// The certificate an ARI certificate id (RFC 9773 §4.1) names:
/// `base64url(AKI keyIdentifier) "." base64url(serial DER content)`.
pub(super) async fn renewal_target(
    state: &AppState,
    id: &str,
) -> Result<crate::store::CertificateRecord, Problem> {
    let bad = || {
        Problem::acme(
            StatusCode::BAD_REQUEST,
            AcmeError::Malformed,
            format!(
                "{id:?} is not a certificate id: base64url(key identifier) \".\" base64url(serial)"
            ),
        )
    };
    let (aki, serial) = id.split_once('.').ok_or_else(bad)?;
    let aki = URL_SAFE_NO_PAD.decode(aki).map_err(|_| bad())?;
    let serial = URL_SAFE_NO_PAD.decode(serial).map_err(|_| bad())?;
    let not_ours = || Problem::not_found(format!("this CA issued no certificate {id:?}"));
    let Some(issuer) = state
        .authority
        .issuers()
        .find(|i| i.certificate().key_id() == aki.as_slice())
    else {
        return Err(not_ours());
    };
    let serial = Serial::from_magnitude(&serial).ok_or_else(not_ours)?;
    match state.authority.reads().certificate(&serial).await {
        Err(StoreError::NotFound) => Err(not_ours()),
        Ok(cert) if cert.issuer_id != issuer.certificate().id() => Err(not_ours()),
        other => Ok(other?),
    }
}

/// How often clients should ask again about a certificate (seconds).
pub(super) const RENEWAL_INFO_RETRY_SECS: i64 = 6 * 3600;

/// ARI (RFC 9773): when to renew. Normally within the third quarter of the
/// certificate's second half (2/3 to 5/6 of its lifetime), a `shortlived`
/// one from half its life to two thirds; a revoked
/// certificate gets a window in the past, which means "now".
pub(super) async fn renewal_info(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let cert = renewal_target(&state, &id).await?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let (start, end) = if cert.revoked_at.is_some() {
            (now - 2 * 3600, now - 3600)
        } else if crate::pki::profile::without_revocation_info(&cert.der) {
            // A short-lived certificate cannot be revoked in any way a
            // client would notice (RFC 9608), so it is renewed early: from
            // half its life to two thirds.
            let life = cert.not_after - cert.not_before;
            (cert.not_before + life / 2, cert.not_before + life * 2 / 3)
        } else {
            let life = cert.not_after - cert.not_before;
            (
                cert.not_before + life * 2 / 3,
                cert.not_before + life * 5 / 6,
            )
        };
        let body = json!({"suggestedWindow": {"start": rfc3339(start), "end": rfc3339(end)}});
        let mut r = Json(body).into_response();
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(RENEWAL_INFO_RETRY_SECS),
        );
        Ok(r)
    }
    .await;
    let mut response = respond(&state, result).await;
    // Unlike the other ACME resources, this one may be cached.
    if response.status() == StatusCode::OK {
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::order_of;

    #[test]
    fn ids_lead_back_to_their_order_even_with_underscores_in_the_key() {
        assert_eq!(
            order_of("authz_01ab_c-d_000", "authz_").as_deref(),
            Some("ord_01ab_c-d")
        );
        assert_eq!(
            order_of("chall_01ab_c-d_002_h", "chall_").as_deref(),
            Some("ord_01ab_c-d")
        );
        assert_eq!(order_of("chall_x", "chall_"), None);
        assert_eq!(order_of("authz_", "authz_"), None);
    }
}
