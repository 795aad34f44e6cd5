//! ACME accounts (RFC 8555 §7.3): registration, contact and status
//! updates, key change. The HTTP layer verifies the request and decides
//! what it asks for; these functions make the change and its audit record,
//! as every other write of the workflow does.

use serde_json::json;
use time::OffsetDateTime;

use super::users::random_token;
use crate::store::{
    AccountRecord, AcmeAccountRecord, AcmeAccountStatus, AuditEvent, Conflict, Store, StoreError,
};

/// A new ACME account, as its verified newAccount request describes it.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The account key (JWK JSON text).
    pub jwk: String,
    /// Its RFC 7638 thumbprint.
    pub thumbprint: String,
    /// The contact URLs (JSON array text).
    pub contact: String,
    /// The external account binding that names the hallmark account
    /// owning it: (EAB key id, account id). Without one, a hallmark
    /// account of its own is made.
    pub binding: Option<(String, String)>,
}

/// Why an ACME account change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AcmeAccountError {
    /// The external account binding key was used meanwhile, or its
    /// account was disabled.
    #[error("the external account binding key was used meanwhile, or its account is disabled")]
    BindingUsed,
    /// The account no longer exists.
    #[error("the account is gone")]
    Gone,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Registers an ACME account (its own hallmark account too, without a
/// binding; the binding key used up, with one) in one transaction.
pub async fn register(
    store: &dyn Store,
    request: Registration,
) -> Result<AcmeAccountRecord, AcmeAccountError> {
    let now = OffsetDateTime::now_utc();
    let id = random_token(12);
    let owner = request.binding.is_none().then(|| AccountRecord {
        id: format!("acct_{}", random_token(12)),
        name: format!(
            "acme {}",
            &request.thumbprint[..8.min(request.thumbprint.len())]
        ),
        role: crate::store::Role::Requester,
        disabled: false,
        created_at: now.unix_timestamp(),
    });
    let (kid, account_id) = match (&request.binding, &owner) {
        (Some((kid, account)), _) => (Some(kid.as_str()), account.clone()),
        (None, Some(owner)) => (None, owner.id.clone()),
        (None, None) => unreachable!("an owner is made when there is no binding"),
    };
    let acme = AcmeAccountRecord {
        id: id.clone(),
        account_id: account_id.clone(),
        jwk_thumbprint: request.thumbprint.clone(),
        jwk: request.jwk,
        contact: request.contact,
        status: AcmeAccountStatus::Valid,
        created_at: now.unix_timestamp(),
        owner_disabled: false,
    };
    let event = AuditEvent {
        at: now,
        actor: format!("acme:{id}"),
        action: "acme.account.create".into(),
        subject: id.clone(),
        details: json!({"account": account_id, "thumbprint": request.thumbprint, "eab_kid": kid}),
    };
    match store
        .create_acme_account(&acme, owner.as_ref(), kid, event)
        .await
    {
        Err(StoreError::Conflict(Conflict::BindingKeyUsed(_))) => {
            Err(AcmeAccountError::BindingUsed)
        }
        Err(e) => Err(e.into()),
        Ok(()) => Ok(acme),
    }
}

/// Replaces an account's contacts and/or deactivates it (RFC 8555
/// §7.3.2, §7.3.6); returns the account as it now is.
pub async fn update(
    store: &dyn Store,
    id: &str,
    contact: Option<&str>,
    deactivate: bool,
) -> Result<AcmeAccountRecord, AcmeAccountError> {
    if contact.is_some() || deactivate {
        let event = AuditEvent {
            at: OffsetDateTime::now_utc(),
            actor: format!("acme:{id}"),
            action: if deactivate {
                "acme.account.deactivate"
            } else {
                "acme.account.update"
            }
            .into(),
            subject: id.to_owned(),
            details: json!({}),
        };
        store
            .update_acme_account(
                id,
                contact,
                deactivate.then_some(AcmeAccountStatus::Deactivated),
                None,
                event,
            )
            .await?;
    }
    store.acme_account(id).await?.ok_or(AcmeAccountError::Gone)
}

/// Rolls an account over to a new key (RFC 8555 §7.3.5), the request
/// having proved both keys; returns the account as it now is.
pub async fn change_key(
    store: &dyn Store,
    account: &AcmeAccountRecord,
    new_thumbprint: &str,
    new_jwk: &str,
) -> Result<AcmeAccountRecord, AcmeAccountError> {
    let event = AuditEvent {
        at: OffsetDateTime::now_utc(),
        actor: format!("acme:{}", account.id),
        action: "acme.account.key_change".into(),
        subject: account.id.clone(),
        details: json!({"old": account.jwk_thumbprint, "new": new_thumbprint}),
    };
    store
        .update_acme_account(
            &account.id,
            None,
            None,
            Some((new_thumbprint, new_jwk)),
            event,
        )
        .await?;
    store
        .acme_account(&account.id)
        .await?
        .ok_or(AcmeAccountError::Gone)
}
