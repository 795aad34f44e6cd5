//! The order state machine (DESIGN §2), in one place:
//!
//! ```text
//! pending ──(last challenge valid, DV)──▶ ready ──▶ processing ──▶ valid
//!    │      (last challenge valid, OV)──▶ awaiting_approval ─(approve)─┘
//!    │                                          └─(reject)──▶ rejected
//!    └──(a challenge fails, issuance fails, or the order expires)──▶ invalid
//! ```
//!
//! Every move is a `store::Transition` (the one table of legal moves),
//! made as a compare-and-set in the store, in the same transaction as its
//! audit record, so two instances (or a request and the background worker)
//! can never both move one order. Validation runs in background tasks; a
//! validation whose process died is taken over by the worker.
//!
//! One file per part of the life: `create.rs`, `validate.rs`,
//! `review.rs`, `issue.rs`, `worker.rs`; shared helpers and reads here.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::accounts::{Caller, Role};
use super::limits::TokenBuckets;
use super::users::random_token;
use super::{Authority, Clash, IssueRequest, Missing, NotAllowed, Signed, WorkflowError};
use crate::acme_error::AcmeError;
use crate::config::OrdersSection;
use crate::pki::profile::Organization;
use crate::pki::{Identifier, Subject};
pub use crate::store::Validation;
use crate::store::{
    AuditEvent, AuthorizationBundle, AuthorizationRecord, AuthorizationStatus, ChallengeKind,
    ChallengeOutcome, ChallengeRecord, ChallengeStatus, Conflict, Failure, IdentifierKind,
    IssuanceOrder, OrderBundle, OrderQuery, OrderRecord, OrderSource, OrderStatus, OrderUpdate,
    StoreError, Transition,
};
use crate::validation::{key_authorization, ValidationError, Validators};

mod create;
mod issue;
mod review;
mod validate;
mod worker;

/// How often the background worker looks for work.
const WORKER_INTERVAL: Duration = Duration::from_secs(5);
/// A `ready` order no instance has picked up for this long is resumed.
const RESUME_READY_AFTER_SECS: i64 = 30;
/// A `processing` claim older than this is taken over (issuance takes
/// milliseconds; this only happens when an instance died mid-way).
const RESUME_PROCESSING_AFTER_SECS: i64 = 120;
/// How often a stale `processing` claim is taken over before the order is
/// made `invalid` (issuance takes milliseconds; an order that failed this
/// often will fail again).
const MAX_ISSUE_ATTEMPTS: i64 = 3;
/// Most rows the worker handles per pass and kind of work.
const WORKER_BATCH: i64 = 100;
/// Longest organisation name (X.520 ub-organization-name).
const MAX_ORGANIZATION_LEN: usize = 64;
/// Longest locality or state (X.520 ub-locality-name, ub-state-name).
const MAX_LOCALITY_LEN: usize = 128;
/// Longest rejection reason.
const MAX_REASON_LEN: usize = 1000;
/// Largest page of orders.
pub const MAX_PAGE: i64 = 100;

/// A new order as a requester asks for it.
#[derive(Debug, Clone)]
pub struct NewOrder {
    /// The CSR (PEM text or DER).
    pub csr: Vec<u8>,
    /// DV or OV.
    pub validation: Validation,
    /// Certificate profile (`server` if none).
    pub profile: Option<String>,
    /// Validity in days (the policy default if none).
    pub validity_days: Option<u32>,
    /// The organisation to vet (OV only).
    pub organization: Option<Organization>,
}

/// The thumbprint a REST account's key authorizations use (DESIGN §4):
/// derived from its id, so REST and ACME share one validation engine.
pub fn rest_thumbprint(account_id: &str) -> String {
    let digest = Sha256::digest(format!("hallmark-rest-account:{account_id}").as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

/// The identifier an authorization is for (a wildcard keeps its `*.`).
pub fn identifier_of(authz: &AuthorizationRecord) -> Result<Identifier, StoreError> {
    match authz.identifier_type {
        IdentifierKind::Dns => Ok(Identifier::Dns(authz.identifier_value.clone())),
        IdentifierKind::Ip => authz
            .identifier_value
            .parse()
            .map(Identifier::Ip)
            .map_err(|_| StoreError::Corrupt(format!("ip {:?}", authz.identifier_value))),
    }
}

/// The order engine: creation, validation, approval, issuance and the
/// background worker. One per process, shared by the REST API and ACME.
pub struct Orders {
    authority: Arc<Authority>,
    validators: Arc<Validators>,
    settings: OrdersSection,
    validation_timeout: Duration,
    /// Per-account token buckets for new orders.
    limiter: TokenBuckets<String>,
    /// Challenges this process is validating (or waiting to): the worker
    /// does not resume them, however long they wait for a slot.
    running: Mutex<std::collections::HashSet<String>>,
    /// Test-only: each validation first sleeps up to this long (ms).
    danger_validation_delay_ms: u64,
}

impl Orders {
    /// Puts the engine together.
    pub fn new(
        authority: Arc<Authority>,
        validators: Arc<Validators>,
        settings: OrdersSection,
        validation_timeout: Duration,
        danger_validation_delay_ms: u64,
    ) -> Arc<Orders> {
        Arc::new(Orders {
            authority,
            validators,
            limiter: TokenBuckets::new(settings.rate_per_minute),
            settings,
            validation_timeout,
            running: Mutex::default(),
            danger_validation_delay_ms,
        })
    }

    fn rate_limit(&self, account_id: &str) -> Result<(), WorkflowError> {
        self.limiter
            .take(account_id.to_owned())
            .map_err(|retry_after_secs| WorkflowError::RateLimited { retry_after_secs })
    }

    /// The CA.
    pub fn authority(&self) -> &Arc<Authority> {
        &self.authority
    }

    async fn load(&self, order_id: &str) -> Result<OrderBundle, WorkflowError> {
        match self.authority.store().order(order_id).await {
            Err(StoreError::NotFound) => Err(no_such_order(order_id)),
            other => Ok(other?),
        }
    }

    /// The ACME order `order_id` as this instance last saw it, if `usable`
    /// accepts that view, the caller may see the order and this ACME
    /// account opened it ([`crate::store::OrderReads::order_seen`]: only
    /// for what no move changes, or a write guarded on the status seen).
    /// `None` otherwise, for the caller to read the order.
    fn seen_acme(
        &self,
        caller: &Caller,
        acme_account_id: &str,
        order_id: &str,
        usable: impl FnOnce(&OrderBundle) -> bool,
    ) -> Option<OrderBundle> {
        let view = self.authority.store().order_seen(order_id)?;
        if !usable(&view) {
            return None;
        }
        opened_by(acme_account_id, visible(caller, view).ok()?).ok()
    }

    /// `bundle` if its order is in `status`; otherwise the order as the
    /// database holds it now. The store may answer with a view kept a
    /// moment (an earlier status if another instance moved the order
    /// since), so a refusal for being in the wrong status asks again.
    async fn confirm_status(
        &self,
        bundle: OrderBundle,
        status: OrderStatus,
    ) -> Result<OrderBundle, WorkflowError> {
        if bundle.order.status == status {
            return Ok(bundle);
        }
        Ok(self.authority.store().order_now(&bundle.order.id).await?)
    }

    /// One order, if the caller may see it: its owner, or any reviewer or
    /// admin. Anyone else gets `NotFound`, as if it did not exist.
    pub async fn get(&self, caller: &Caller, order_id: &str) -> Result<OrderBundle, WorkflowError> {
        let bundle = self.load(order_id).await?;
        visible(caller, bundle)
    }

    /// A page of orders, newest first: the caller's own, or every account's
    /// for reviewers and admins when `all` is set.
    pub async fn list(
        &self,
        caller: &Caller,
        status: Option<OrderStatus>,
        before: Option<(i64, String)>,
        limit: i64,
        all: bool,
    ) -> Result<Vec<OrderRecord>, WorkflowError> {
        let everyone = all && caller.role != Role::Requester;
        Ok(self
            .authority
            .store()
            .orders(&OrderQuery {
                account_id: (!everyone).then(|| caller.account_id.clone()),
                status,
                before,
                limit: limit.clamp(1, MAX_PAGE),
            })
            .await?)
    }

    /// The thumbprint in an order's key authorizations: the ACME account
    /// key's for ACME orders, the REST account's derived one otherwise.
    pub async fn thumbprint_of(&self, order: &OrderRecord) -> Result<String, StoreError> {
        if order.source == OrderSource::Acme {
            let store = self.authority.store();
            let acme = match &order.acme_account_id {
                Some(id) => store.acme_account(id).await?,
                // Orders from before migration 0004 name no ACME account.
                None => store.acme_account_of(&order.account_id).await?,
            };
            let acme = acme.ok_or_else(|| {
                StoreError::Corrupt(format!("order {} has no ACME account", order.id))
            })?;
            return Ok(acme.jwk_thumbprint);
        }
        Ok(rest_thumbprint(&order.account_id))
    }
}

fn challenge_letter(kind: ChallengeKind) -> char {
    match kind {
        ChallengeKind::Http01 => 'h',
        ChallengeKind::Dns01 => 'd',
        ChallengeKind::TlsAlpn01 => 't',
        ChallengeKind::DnsAccount01 => 'a',
        ChallengeKind::DnsPersist01 => 'p',
    }
}

fn account_actor(account_id: &str) -> String {
    format!("account:{account_id}")
}

/// The audit record of `transition` on `order_id` by `actor` (none for a
/// move that records nothing).
fn transition_event(
    at: OffsetDateTime,
    actor: &str,
    order_id: &str,
    transition: Transition,
    details: serde_json::Value,
) -> Option<AuditEvent> {
    let action = transition.audit_action()?;
    Some(order_event(at, actor, order_id, action, details))
}

fn order_event(
    at: OffsetDateTime,
    actor: &str,
    order_id: &str,
    action: &str,
    details: serde_json::Value,
) -> AuditEvent {
    AuditEvent {
        at,
        actor: actor.to_owned(),
        action: action.to_owned(),
        subject: order_id.to_owned(),
        details,
    }
}

impl Orders {
    /// Makes `transition` on `order_id`, setting `update`'s fields, with its
    /// audit record (the transition's action, by `actor`, with `details`):
    /// the one way the workflow moves an existing order. `false` if the
    /// order was no longer where the transition starts.
    pub(super) async fn move_order(
        &self,
        order_id: &str,
        transition: Transition,
        update: &OrderUpdate,
        actor: &str,
        details: serde_json::Value,
    ) -> Result<bool, StoreError> {
        let action = transition.audit_action();
        self.move_order_as(order_id, transition, action, update, actor, details)
            .await
    }

    /// [`Self::move_order`], recorded as `action` — a cause more specific
    /// than the move's own (`order.expire` for a `Fail`) — or not at all.
    pub(super) async fn move_order_as(
        &self,
        order_id: &str,
        transition: Transition,
        action: Option<&str>,
        update: &OrderUpdate,
        actor: &str,
        details: serde_json::Value,
    ) -> Result<bool, StoreError> {
        let now = OffsetDateTime::now_utc();
        let event = action.map(|action| order_event(now, actor, order_id, action, details));
        self.authority
            .store()
            .transition_order(
                order_id,
                transition,
                update,
                now.unix_timestamp(),
                event.into_iter().collect(),
            )
            .await
    }
}

/// `bundle` if `caller` may see its order: its owner, or any reviewer or
/// admin; anyone else is told there is no such order.
fn visible(caller: &Caller, bundle: OrderBundle) -> Result<OrderBundle, WorkflowError> {
    if bundle.order.account_id != caller.account_id && caller.role == Role::Requester {
        return Err(no_such_order(&bundle.order.id));
    }
    Ok(bundle)
}

/// `bundle` if its order is an ACME order this ACME account opened: any
/// other order is no such order, even one of another ACME account of the
/// same hallmark account (orders from before migration 0004 name none).
fn opened_by(acme_account_id: &str, bundle: OrderBundle) -> Result<OrderBundle, WorkflowError> {
    let mine = bundle.order.source == OrderSource::Acme
        && bundle
            .order
            .acme_account_id
            .as_deref()
            .is_none_or(|a| a == acme_account_id);
    if !mine {
        return Err(no_such_order(&bundle.order.id));
    }
    Ok(bundle)
}

fn no_such_order(order_id: &str) -> WorkflowError {
    Missing::Order(order_id.to_owned()).into()
}

fn changed_meanwhile(order_id: &str) -> WorkflowError {
    Clash::OrderChanged(order_id.to_owned()).into()
}

fn find_challenge<'a>(
    bundle: &'a OrderBundle,
    challenge_id: &str,
) -> Option<(&'a AuthorizationRecord, &'a ChallengeRecord)> {
    bundle.authorizations.iter().find_map(|a| {
        a.challenges
            .iter()
            .find(|c| c.id == challenge_id)
            .map(|c| (&a.authorization, c))
    })
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Checks and normalises OV organisation details: what X.520 allows in
/// the subject, no control characters, a two-letter country.
pub fn check_organization(org: Organization) -> Result<Organization, WorkflowError> {
    let bad = |what: &str| WorkflowError::Malformed(what.to_owned());
    let name = org.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > MAX_ORGANIZATION_LEN || has_control(&name) {
        return Err(bad(
            "organization.name must be 1 to 64 printable characters",
        ));
    }
    let optional = |v: Option<String>, field: &str| -> Result<Option<String>, WorkflowError> {
        match v.map(|s| s.trim().to_owned()) {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) if s.chars().count() > MAX_LOCALITY_LEN || has_control(&s) => Err(bad(
                &format!("organization.{field} must be at most 128 printable characters"),
            )),
            Some(s) => Ok(Some(s)),
        }
    };
    let locality = optional(org.locality, "locality")?;
    let state = optional(org.state, "state")?;
    let country = match org.country.map(|c| c.trim().to_ascii_uppercase()) {
        None => None,
        Some(c) if c.is_empty() => None,
        Some(c) if c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()) => Some(c),
        Some(_) => {
            return Err(bad(
                "organization.country must be a two-letter ISO 3166 code such as \"DE\"",
            ))
        }
    };
    Ok(Organization {
        name,
        locality,
        state,
        country,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organisations_are_checked_and_normalised() {
        let org = check_organization(Organization {
            name: " Example GmbH ".into(),
            locality: Some("Berlin".into()),
            state: Some("".into()),
            country: Some("de".into()),
        })
        .unwrap();
        assert_eq!(org.name, "Example GmbH");
        assert_eq!(org.state, None);
        assert_eq!(org.country.as_deref(), Some("DE"));
        for bad in [
            Organization {
                name: "".into(),
                locality: None,
                state: None,
                country: None,
            },
            Organization {
                name: "x".repeat(65),
                locality: None,
                state: None,
                country: None,
            },
            Organization {
                name: "a\nb".into(),
                locality: None,
                state: None,
                country: None,
            },
            Organization {
                name: "ok".into(),
                locality: None,
                state: None,
                country: Some("DEU".into()),
            },
        ] {
            assert!(matches!(
                check_organization(bad),
                Err(WorkflowError::Malformed(_))
            ));
        }
    }

    #[test]
    fn rest_thumbprints_differ_per_account() {
        assert_ne!(rest_thumbprint("acct_a"), rest_thumbprint("acct_b"));
        assert_eq!(rest_thumbprint("acct_a").len(), 43);
    }
}
