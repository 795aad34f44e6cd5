//! ACME orders (RFC 8555 §7.4, §7.5): newOrder, the order, finalize, authorizations, challenges, and the certificate download.

use super::*;

/// The ACME name of an order status (OV states never occur for ACME).
pub(super) fn order_status(s: OrderStatus) -> &'static str {
    match s {
        OrderStatus::Pending => "pending",
        OrderStatus::Ready => "ready",
        OrderStatus::Processing => "processing",
        OrderStatus::Valid => "valid",
        _ => "invalid",
    }
}

pub(super) fn rfc3339(t: i64) -> String {
    crate::workflow::rfc3339(t)
}

pub(super) fn identifier_json(kind: IdentifierKind, value: &str) -> Value {
    json!({"type": kind, "value": value})
}

pub(super) fn order_json(state: &AppState, b: &OrderBundle) -> Value {
    let base = base(state);
    let o = &b.order;
    let mut v = json!({
        "status": order_status(o.status),
        "expires": rfc3339(o.expires_at),
        "identifiers": b.authorizations.iter().map(|a| identifier_json(a.authorization.identifier_type, &a.authorization.identifier_value)).collect::<Vec<_>>(),
        "authorizations": b.authorizations.iter().map(|a| format!("{base}/authz/{}", a.authorization.id)).collect::<Vec<_>>(),
        "finalize": format!("{base}/order/{}/finalize", o.id),
    });
    if let Some(serial) = &o.certificate_serial {
        v["certificate"] = json!(format!("{base}/cert/{serial}"));
    }
    if let Some(t) = o.not_after {
        v["notAfter"] = json!(rfc3339(t));
    }
    v["profile"] = json!(o.profile);
    if let Some(err) = &o.error {
        v["error"] = err.document();
    }
    v
}

pub(super) fn order_response(state: &AppState, b: &OrderBundle, status: StatusCode) -> Response {
    let url = format!("{}/order/{}", base(state), b.order.id);
    let mut r = with_location(status, &url, order_json(state, b));
    if b.order.status == OrderStatus::Processing {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

pub(super) fn parse_identifiers(payload: &Value) -> Result<Vec<Identifier>, Problem> {
    let bad = |d: &str| Problem::acme(StatusCode::BAD_REQUEST, AcmeError::Malformed, d);
    let list = payload
        .get("identifiers")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("a new order needs \"identifiers\""))?;
    list.iter()
        .map(|i| {
            let value = i
                .get("value")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("an identifier needs a \"value\""))?;
            match i.get("type").and_then(Value::as_str) {
                Some("dns") => Ok(Identifier::Dns(value.to_owned())),
                Some("ip") => value
                    .parse()
                    .map(Identifier::Ip)
                    .map_err(|_| bad(&format!("{value:?} is not an IP address"))),
                _ => Err(Problem::acme(
                    StatusCode::BAD_REQUEST,
                    AcmeError::UnsupportedIdentifier,
                    "identifiers are of type \"dns\" or \"ip\"",
                )),
            }
        })
        .collect()
}

pub(super) async fn new_order(
    State(state): State<Arc<AppState>>,
    Signed(v): Signed,
) -> Result<Response, Problem> {
    let payload = v.payload()?;
    let bad = |d: String| Problem::acme(StatusCode::BAD_REQUEST, AcmeError::Malformed, d);
    let when = |key: &str| -> Result<Option<time::OffsetDateTime>, Problem> {
        match payload.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(t)) => {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .map(Some)
                    .map_err(|_| bad(format!("{key} {t:?} is not an RFC 3339 date-time")))
            }
            Some(_) => Err(bad(format!("{key} must be an RFC 3339 date-time string"))),
        }
    };
    // Certificates start now (backdated a minute for clock skew): a
    // notBefore is accepted only if it is about now.
    if let Some(nb) = when("notBefore")? {
        let skew = (nb - time::OffsetDateTime::now_utc()).abs();
        if skew > time::Duration::minutes(5) {
            return Err(bad(format!(
                    "notBefore must be now or left out (it is {}); hallmark neither back- nor post-dates certificates",
                    rfc3339(nb.unix_timestamp())
                )));
        }
    }
    let not_after = when("notAfter")?;
    if let Some(replaces) = payload.get("replaces") {
        let id = replaces.as_str().unwrap_or_default();
        let cert = renewal_target(&state, id).await?;
        if cert.account_id.as_deref() != Some(v.account().account_id.as_str()) {
            return Err(bad(format!(
                "\"replaces\" names {id:?}, a certificate this account did not order"
            )));
        }
    }
    let identifiers = parse_identifiers(&payload)?;
    // draft-ietf-acme-profiles: a name from the directory's meta.profiles.
    // An unknown name is the policy's UnknownProfile: invalidProfile.
    let profile = match payload.get("profile") {
        None | Some(Value::Null) => "server",
        Some(Value::String(name)) => name.as_str(),
        Some(_) => return Err(bad("profile must be a string".into())),
    };
    let bundle = state
        .orders
        .create_acme(
            &v.caller(),
            &v.account().id,
            &identifiers,
            not_after,
            profile,
        )
        .await?;
    Ok(order_response(&state, &bundle, StatusCode::CREATED))
}

pub(super) async fn order(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Signed(v): Signed,
) -> Result<Response, Problem> {
    let bundle = acme_order(&state, &v, &id).await?;
    Ok(order_response(&state, &bundle, StatusCode::OK))
}

pub(super) async fn finalize(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Signed(v): Signed,
) -> Result<Response, Problem> {
    let payload = v.payload()?;
    let csr = der_member(
        &payload,
        "csr",
        "finalize needs \"csr\": the DER CSR in base64url",
    )?;
    let bundle = state
        .orders
        .finalize(&v.caller(), &v.account().id, &id, &csr)
        .await?;
    Ok(order_response(&state, &bundle, StatusCode::OK))
}

/// An order this ACME account opened; any other is a 404, even one of
/// another ACME account of the same hallmark account.
pub(super) async fn acme_order(
    state: &AppState,
    v: &Verified,
    id: &str,
) -> Result<OrderBundle, Problem> {
    Ok(state
        .orders
        .get_acme(&v.caller(), &v.account().id, id)
        .await?)
}

/// `authz_<key>_<n>` and `chall_<key>_<n>_<x>` belong to `ord_<key>`
/// (the key is base64url and may itself hold `_`, so split from the end).
pub(super) fn order_of(id: &str, prefix: &str) -> Option<String> {
    let rest = id.strip_prefix(prefix)?;
    let tail_segments = if prefix == "chall_" { 2 } else { 1 };
    let mut key = rest;
    for _ in 0..tail_segments {
        key = key.rsplit_once('_')?.0;
    }
    (!key.is_empty()).then(|| format!("ord_{key}"))
}

pub(super) fn challenge_json(state: &AppState, c: &crate::store::ChallengeRecord) -> Value {
    let mut v = json!({
        "type": c.kind,
        "url": format!("{}/chall/{}", base(state), c.id),
        "token": c.token,
        "status": c.status,
    });
    if c.kind == crate::store::ChallengeKind::DnsPersist01 {
        // draft-ietf-acme-dns-persist: the names a record may give for us.
        v["issuer-domain-names"] = json!(state.acme.caa_identities);
    }
    if let Some(t) = c.validated_at {
        v["validated"] = json!(rfc3339(t));
    }
    if let Some(err) = &c.error {
        v["error"] = err.document();
    }
    v
}

pub(super) fn authz_json(state: &AppState, a: &crate::store::AuthorizationBundle) -> Value {
    let r = &a.authorization;
    let value = r
        .identifier_value
        .strip_prefix("*.")
        .unwrap_or(&r.identifier_value);
    let mut v = json!({
        "identifier": identifier_json(r.identifier_type, value),
        "status": r.status,
        "expires": rfc3339(r.expires_at),
        "challenges": a.challenges.iter().map(|c| challenge_json(state, c)).collect::<Vec<_>>(),
    });
    if r.wildcard {
        v["wildcard"] = json!(true);
    }
    v
}

/// A lookup's failure as the client sees it: an order that does not
/// exist or is not this account's is the authorization or challenge
/// asked for being unknown (`not_found`, a 404 naming it); anything else,
/// a store that failed above all, keeps its own answer (a 5xx), so a
/// database outage is never told to a client as "there is no such thing".
fn unknown_or(e: WorkflowError, not_found: impl FnOnce() -> Problem) -> Problem {
    match e {
        WorkflowError::NotFound(_) | WorkflowError::Store(StoreError::NotFound) => not_found(),
        other => other.into(),
    }
}

pub(super) async fn authorization(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Signed(v): Signed,
) -> Result<Response, Problem> {
    let not_found = || Problem::not_found(format!("there is no authorization {id:?}"));
    let order_id = order_of(&id, "authz_").ok_or_else(not_found)?;
    let authz = state
        .orders
        .acme_authorization(&v.caller(), &v.account().id, &order_id, &id)
        .await
        .map_err(|e| unknown_or(e, not_found))?
        .ok_or_else(not_found)?;
    Ok(Json(authz_json(&state, &authz)).into_response())
}

pub(super) async fn challenge(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Signed(v): Signed,
) -> Result<Response, Problem> {
    let not_found = || Problem::not_found(format!("there is no challenge {id:?}"));
    let order_id = order_of(&id, "chall_").ok_or_else(not_found)?;
    let caller = v.caller();
    let mut bundle = if v.is_post_as_get() {
        state
            .orders
            .get_acme(&caller, &v.account().id, &order_id)
            .await
    } else {
        state
            .orders
            .acme_to_answer(&caller, &v.account().id, &order_id, &id)
            .await
    }
    .map_err(|e| unknown_or(e, not_found))?;
    let find = |b: &OrderBundle| {
        b.authorizations
            .iter()
            .flat_map(|a| a.challenges.iter())
            .find(|c| c.id == id)
            .cloned()
    };
    let current = find(&bundle).ok_or_else(not_found)?;
    if !v.is_post_as_get() && current.status == ChallengeStatus::Pending {
        // The client says it is ready: validate, and answer with the
        // result if it comes within `acme.challenge_wait_ms`.
        let wait = std::time::Duration::from_millis(state.acme.challenge_wait_ms);
        bundle = state.orders.respond_in(&caller, bundle, &id, wait).await?;
    }
    let c = find(&bundle).ok_or_else(not_found)?;
    let authz_url = format!("{}/authz/{}", base(&state), c.authorization_id);
    let mut r = Json(challenge_json(&state, &c)).into_response();
    if let Ok(link) = HeaderValue::from_str(&format!("<{authz_url}>;rel=\"up\"")) {
        r.headers_mut().append(header::LINK, link);
    }
    Ok(r)
}

pub(super) async fn certificate(
    State(state): State<Arc<AppState>>,
    Path(serial): Path<String>,
    _headers: HeaderMap,
    Signed(v): Signed,
) -> Result<Response, Problem> {
    let not_found = || Problem::not_found(format!("there is no certificate {serial:?}"));
    let parsed: Serial = serial.parse().map_err(|_| not_found())?;
    let cert = match state.authority.reads().certificate_body(&parsed).await {
        Err(StoreError::NotFound) => return Err(not_found()),
        other => other?,
    };
    if cert.account_id.as_deref() != Some(v.account().account_id.as_str()) {
        return Err(not_found());
    }
    let chain = state.authority.chain_pem(&cert.der, &cert.issuer_id);
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::http::api::PEM_CHAIN),
        )],
        chain,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::Missing;

    #[test]
    fn an_unknown_order_is_the_thing_asked_for_unknown_and_a_failed_store_is_a_server_error() {
        let asked = || Problem::not_found("there is no challenge \"chall_x\"");
        let unknown = unknown_or(Missing::Order("ord_x".into()).into(), asked);
        assert_eq!(unknown.status, 404);
        assert!(unknown.detail.contains("chall_x"), "{}", unknown.detail);
        let missing_row = unknown_or(WorkflowError::Store(StoreError::NotFound), asked);
        assert_eq!(missing_row.status, 404);
        let down = unknown_or(
            WorkflowError::Store(StoreError::Database("connection refused".into())),
            asked,
        );
        assert!(down.status >= 500, "{}", down.status);
    }
}
