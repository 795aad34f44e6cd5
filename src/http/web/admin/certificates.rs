//! Certificates: search, detail, chain download, revoke.

use super::*;

/// A certificate row.
pub struct CertRow {
    /// Serial.
    pub serial: String,
    /// Names.
    pub names: String,
    /// valid, revoked, expired.
    pub status: CertificateStatus,
    /// Account.
    pub account: String,
    /// Expiry.
    pub not_after: When,
}

#[derive(Template)]
#[template(path = "admin/certificates.html")]
pub(super) struct CertificatesPage {
    chrome: Chrome,
    q: String,
    status: String,
    rows: Vec<CertRow>,
    next: Option<String>,
}

pub(super) async fn certificates(
    State(state): State<Arc<AppState>>,
    who: Admin,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Page {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let search = q
        .get("q")
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .map(|s| s.chars().take(253).collect::<String>());
    let status_name = q.get("status").cloned().unwrap_or_default();
    let status = status_name.parse::<CertificateStatus>().ok();
    let certs = state
        .authority
        .reads()
        .certificates(&CertificateQuery {
            account_id: q.get("account").filter(|a| !a.is_empty()).cloned(),
            status,
            search: search.clone(),
            before: parse_before(q.get("before")),
            limit: PAGE,
            now,
        })
        .await?;
    let next = (certs.len() as i64 == PAGE)
        .then(|| {
            certs
                .last()
                .map(|c| format!("{}.{}", c.created_at, c.serial))
        })
        .flatten();
    let rows = certs
        .iter()
        .map(|c| CertRow {
            serial: c.serial.to_hex(),
            names: c.identifiers.join(", "),
            status: CertificateStatus::of(c, now),
            account: c
                .account_id
                .clone()
                .unwrap_or_else(|| c.requested_by.clone()),
            not_after: when(c.not_after),
        })
        .collect();
    let page = render(&CertificatesPage {
        chrome: chrome(&who, &headers, "certificates"),
        q: search.unwrap_or_default(),
        status: if status.is_some() {
            status_name
        } else {
            String::new()
        },
        rows,
        next,
    });
    Ok(with_flash_cleared(&headers, page))
}

#[derive(Template)]
#[template(path = "admin/certificate.html")]
pub(super) struct CertificatePage {
    chrome: Chrome,
    serial: String,
    status: CertificateStatus,
    subject: String,
    names: Vec<String>,
    issuer: String,
    profile: String,
    account: String,
    order: String,
    requested_by: String,
    not_before: When,
    not_after: When,
    revoked_at: Option<When>,
    reason: String,
    key: String,
    signature: String,
    fingerprint: String,
    crl: String,
    pem: String,
    reasons: Vec<&'static str>,
}

pub(super) async fn load_certificate(
    state: &AppState,
    serial: &str,
) -> Result<CertificateRecord, PageError> {
    let none = PageError::NotFound("such certificate");
    let parsed: Serial = serial.parse().map_err(|_| none)?;
    match state.authority.reads().certificate(&parsed).await {
        Err(StoreError::NotFound) => Err(PageError::NotFound("such certificate")),
        found => Ok(found?),
    }
}

pub(super) async fn certificate_detail(
    State(state): State<Arc<AppState>>,
    who: Admin,
    headers: HeaderMap,
    Path(serial): Path<String>,
) -> Page {
    let c = load_certificate(&state, &serial).await?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (key, signature) = crate::pki::describe_certificate(&c.der).unwrap_or_default();
    let fingerprint = crate::pki::sha256_fingerprint(&c.der);
    let page = render(&CertificatePage {
        chrome: chrome(&who, &headers, "certificates"),
        serial: c.serial.to_hex(),
        status: CertificateStatus::of(&c, now),
        subject: c.subject.clone(),
        names: c.identifiers.clone(),
        issuer: c.issuer_id.clone(),
        profile: c.profile.clone(),
        account: c.account_id.clone().unwrap_or_default(),
        order: c.order_id.clone().unwrap_or_default(),
        requested_by: c.requested_by.clone(),
        not_before: when(c.not_before),
        not_after: when(c.not_after),
        revoked_at: c.revoked_at.map(when),
        reason: c
            .revocation_reason
            .and_then(RevocationReason::from_code)
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default(),
        key,
        signature,
        fingerprint,
        crl: state
            .authority
            .issuer_by_id(&c.issuer_id)
            .map(|i| i.urls().crl_partition(c.crl_partition as u32))
            .unwrap_or_default(),
        pem: pem_encode("CERTIFICATE", &c.der),
        reasons: RevocationReason::ALL.iter().map(|r| r.as_str()).collect(),
    });
    Ok(with_flash_cleared(&headers, page))
}

pub(super) async fn certificate_chain(
    State(state): State<Arc<AppState>>,
    _who: Admin,
    Path(serial): Path<String>,
) -> Page {
    let c = load_certificate(&state, &serial).await?;
    let chain = state.authority.chain_pem(&c.der, &c.issuer_id);
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "application/pem-certificate-chain".to_owned(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.chain.pem\"", c.serial),
            ),
        ],
        chain,
    )
        .into_response())
}

pub(super) async fn revoke(
    State(state): State<Arc<AppState>>,
    Path(serial): Path<String>,
    Act { who, form, .. }: Act<Reviewers, RevokeForm>,
) -> Page {
    let back = format!("/admin/certificates/{serial}");
    let Ok(parsed) = serial.parse::<Serial>() else {
        return Err(PageError::NotFound("such certificate"));
    };
    let reason = match form
        .reason
        .as_deref()
        .unwrap_or("unspecified")
        .parse::<RevocationReason>()
    {
        Ok(r) => r,
        Err(e) => return Ok(redirect_with(&back, &format!("Not revoked: {e}"))),
    };
    match state
        .authority
        .revoke(
            Revoker::Account(&reviewer(&who)),
            &parsed,
            RevokeRequest {
                reason,
                invalidity_date: None,
            },
        )
        .await
    {
        Ok(_) => Ok(redirect_with(
            &back,
            &format!("Revoked ({reason}). The CRL lists it within seconds."),
        )),
        Err(e) => refused(&back, "Not revoked", e),
    }
}

/// The revoke form.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct RevokeForm {
    /// An RFC 5280 reason name; `unspecified` if none.
    reason: Option<String>,
}
