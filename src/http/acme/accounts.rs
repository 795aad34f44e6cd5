//! ACME accounts (RFC 8555 §7.3): newAccount with or without an external account binding, account updates, the account's orders, key change. The changes themselves are `workflow::acme_accounts`.

use super::*;

/// The ACME problem for an account change the workflow refused.
pub(super) fn account_problem(e: AcmeAccountError) -> Problem {
    match e {
        AcmeAccountError::BindingUsed => Problem::acme(
            StatusCode::UNAUTHORIZED,
            AcmeError::Unauthorized,
            e.to_string(),
        ),
        AcmeAccountError::Gone => Problem::acme(
            StatusCode::BAD_REQUEST,
            AcmeError::AccountDoesNotExist,
            e.to_string(),
        ),
        AcmeAccountError::Store(s) => s.into(),
    }
}

pub(super) fn account_json(state: &AppState, a: &AcmeAccountRecord) -> Value {
    let contact: Value = serde_json::from_str(&a.contact).unwrap_or(json!([]));
    json!({
        "status": a.status,
        "contact": contact,
        "orders": format!("{}/account/{}/orders", base(state), a.id),
    })
}

pub(super) fn with_location(status: StatusCode, location: &str, body: Value) -> Response {
    let mut r = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

pub(super) fn contacts(payload: &Value) -> Result<Option<String>, Problem> {
    let Some(c) = payload.get("contact") else {
        return Ok(None);
    };
    let list = c.as_array().ok_or_else(|| {
        Problem::acme(
            StatusCode::BAD_REQUEST,
            AcmeError::Malformed,
            "\"contact\" must be an array",
        )
    })?;
    for item in list {
        let ok = item
            .as_str()
            .is_some_and(|s| s.starts_with("mailto:") && s.len() <= 254 && !s.contains(','));
        if !ok {
            return Err(Problem::acme(
                StatusCode::BAD_REQUEST,
                AcmeError::InvalidContact,
                "each contact must be one mailto: URL",
            ));
        }
    }
    Ok(Some(c.to_string()))
}

/// Checks a newAccount's external account binding (RFC 8555 §7.3.4): the
/// EAB JWS names an unused key, is for this URL, covers the account's JWK
/// and carries a valid MAC. Returns the key, whose account will own the
/// new ACME account.
pub(super) async fn check_binding(
    state: &AppState,
    uri: &Uri,
    eab: &Value,
    jwk: &Value,
) -> Result<crate::store::EabKeyRecord, Problem> {
    let refused =
        |detail: &str| Problem::acme(StatusCode::UNAUTHORIZED, AcmeError::Unauthorized, detail);
    let binding = ExternalBinding::parse(eab)
        .map_err(|e| Problem::acme(StatusCode::BAD_REQUEST, e.acme_code(), e.to_string()))?;
    let expected = format!("{}{}", state.public_https_url, uri.path());
    if binding.url != expected {
        return Err(refused(
            "the external account binding's \"url\" is not this newAccount URL",
        ));
    }
    if serde_json::from_slice::<Value>(&binding.payload)
        .ok()
        .as_ref()
        != Some(jwk)
    {
        return Err(refused(
            "the external account binding does not cover this account's key",
        ));
    }
    let key = state.authority.reads().eab_key(&binding.kid).await?;
    let Some(key) = key.filter(|k| k.used_at.is_none() && !k.hmac_key.is_empty()) else {
        return Err(refused(
            "the external account binding key is unknown or already used; ask an administrator for a new one",
        ));
    };
    binding
        .verify(&key.hmac_key)
        .map_err(|_| refused("the external account binding's MAC does not verify with its key"))?;
    Ok(key)
}

pub(super) async fn new_account(
    State(state): State<Arc<AppState>>,
    ClientAddr(client): ClientAddr,
    uri: Uri,
    body: Bytes,
) -> Result<Response, Problem> {
    state
        .limits
        .new_account
        .take(address_key(client))
        .map_err(|secs| too_many("newAccount requests", secs))?;
    let v = verify(&state, &uri, &body, true).await?;
    let payload = v.payload()?;
    let jwk = v.jws.protected.jwk.clone().unwrap_or_default();
    let thumb = thumbprint(&jwk)
        .map_err(|e| Problem::acme(StatusCode::BAD_REQUEST, AcmeError::Malformed, e.to_string()))?;
    let store = state.authority.reads();
    if let Some(existing) = store.acme_account_by_key(&thumb).await? {
        let url = format!("{}/account/{}", base(&state), existing.id);
        return Ok(with_location(
            StatusCode::OK,
            &url,
            account_json(&state, &existing),
        ));
    }
    if payload.get("onlyReturnExisting").and_then(Value::as_bool) == Some(true) {
        return Err(Problem::acme(
            StatusCode::BAD_REQUEST,
            AcmeError::AccountDoesNotExist,
            "no account exists for this key",
        ));
    }
    let tos = &state.acme.terms_of_service;
    if !tos.is_empty() && payload.get("termsOfServiceAgreed").and_then(Value::as_bool) != Some(true)
    {
        return Err(Problem::acme(
            StatusCode::BAD_REQUEST,
            AcmeError::Malformed,
            format!("agree to the terms of service at {tos} (\"termsOfServiceAgreed\": true)"),
        ));
    }
    let binding = match payload.get("externalAccountBinding") {
            Some(eab) => Some(check_binding(&state, &uri, eab, &jwk).await?),
            None if state.acme.eab_required => {
                return Err(Problem::acme(
                    StatusCode::UNAUTHORIZED,
                    AcmeError::ExternalAccountRequired,
                    "this CA needs an external account binding: ask an administrator for a key (hallmark account eab-key) and pass its kid and HMAC key to your client",
                ))
            }
            None => None,
        };
    let contact = contacts(&payload)?.unwrap_or_else(|| "[]".into());
    let acme = acme_accounts::register(
        state.authority.store().as_ref(),
        Registration {
            jwk: jwk.to_string(),
            thumbprint: thumb,
            contact,
            binding: binding.map(|key| (key.kid, key.account_id)),
        },
    )
    .await
    .map_err(account_problem)?;
    let id = &acme.id;
    let url = format!("{}/account/{id}", base(&state));
    Ok(with_location(
        StatusCode::CREATED,
        &url,
        account_json(&state, &acme),
    ))
}

pub(super) async fn account(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Signed(v): Signed,
) -> Result<Response, Problem> {
    let a = v.account();
    if a.id != id {
        return Err(Problem::acme(
            StatusCode::UNAUTHORIZED,
            AcmeError::Unauthorized,
            "this is not your account",
        ));
    }
    if v.is_post_as_get() {
        return Ok(Json(account_json(&state, a)).into_response());
    }
    let payload = v.payload()?;
    let contact = contacts(&payload)?;
    let deactivate = payload.get("status").and_then(Value::as_str) == Some("deactivated");
    let updated = acme_accounts::update(
        state.authority.store().as_ref(),
        &id,
        contact.as_deref(),
        deactivate,
    )
    .await
    .map_err(account_problem)?;
    Ok(Json(account_json(&state, &updated)).into_response())
}

pub(super) async fn account_orders(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Signed(v): Signed,
) -> Result<Response, Problem> {
    if v.account().id != id {
        return Err(Problem::acme(
            StatusCode::UNAUTHORIZED,
            AcmeError::Unauthorized,
            "this is not your account",
        ));
    }
    let orders = state
        .authority
        .reads()
        .orders(&crate::store::OrderQuery {
            account_id: Some(v.account().account_id.clone()),
            status: None,
            before: None,
            limit: 100,
        })
        .await?;
    let urls: Vec<String> = orders
        .iter()
        .filter(|o| o.source == OrderSource::Acme)
        .map(|o| format!("{}/order/{}", base(&state), o.id))
        .collect();
    Ok(Json(json!({ "orders": urls })).into_response())
}

/// keyChange (RFC 8555 §7.3.5): the outer JWS is signed by the account's
/// current key, the inner one (its payload) by the new key over
/// `{account, oldKey}`.
pub(super) async fn key_change(
    State(state): State<Arc<AppState>>,
    Signed(v): Signed,
) -> Result<Response, Problem> {
    let bad = |d: &str| Problem::acme(StatusCode::BAD_REQUEST, AcmeError::Malformed, d);
    let inner = Jws::parse(&v.jws.payload).map_err(|e| {
        Problem::acme(
            StatusCode::BAD_REQUEST,
            e.acme_code(),
            format!("the inner JWS: {e}"),
        )
    })?;
    let Some(new_jwk) = inner.protected.jwk.clone() else {
        return Err(bad("the inner JWS must carry the new key as \"jwk\""));
    };
    if inner.protected.nonce.is_some() {
        return Err(bad("the inner JWS must not have a \"nonce\""));
    }
    if inner.protected.url != v.jws.protected.url {
        return Err(bad("the inner JWS \"url\" must equal the outer one"));
    }
    inner.verify(&new_jwk).map_err(|e| {
        Problem::acme(
            StatusCode::BAD_REQUEST,
            e.acme_code(),
            format!("the inner JWS: {e}"),
        )
    })?;
    let payload = inner.json().map_err(|e| bad(&e.to_string()))?;
    let account = v.account();
    if payload.get("account").and_then(Value::as_str) != v.jws.protected.kid.as_deref() {
        return Err(bad(
            "the inner payload's \"account\" must be the account URL that signed the request",
        ));
    }
    let old = payload
        .get("oldKey")
        .ok_or_else(|| bad("the inner payload needs \"oldKey\""))?;
    if thumbprint(old).ok().as_deref() != Some(account.jwk_thumbprint.as_str()) {
        return Err(bad("\"oldKey\" is not the account's current key"));
    }
    let new_thumb = thumbprint(&new_jwk).map_err(|e| bad(&e.to_string()))?;
    let store = state.authority.reads();
    if let Some(holder) = store.acme_account_by_key(&new_thumb).await? {
        let url = format!("{}/account/{}", base(&state), holder.id);
        let mut r = Problem::acme(
            StatusCode::CONFLICT,
            AcmeError::Malformed,
            "the new key already belongs to an account",
        )
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&url) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return Ok(r);
    }
    let updated = acme_accounts::change_key(
        state.authority.store().as_ref(),
        account,
        &new_thumb,
        &new_jwk.to_string(),
    )
    .await
    .map_err(account_problem)?;
    Ok(Json(account_json(&state, &updated)).into_response())
}
