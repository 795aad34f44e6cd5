//! The order state machine (DESIGN §2), in one place:
//!
//! ```text
//! pending ──(last challenge valid, DV)──▶ ready ──▶ processing ──▶ valid
//!    │      (last challenge valid, OV)──▶ awaiting_approval ─(approve)─┘
//!    │                                          └─(reject)──▶ rejected
//!    └──(a challenge fails, issuance fails, or the order expires)──▶ invalid
//! ```
//!
//! Every move is a compare-and-set in the store, in the same transaction as
//! its audit record, so two instances (or a request and the background
//! worker) can never both move one order. Validation runs in background
//! tasks; a validation whose process died is taken over by the worker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::accounts::{Caller, Role};
use super::limits::TokenBuckets;
use super::users::random_token;
use super::{Authority, IssueRequest, Signed, WorkflowError};
use crate::acme_error::AcmeError;
use crate::config::OrdersSection;
use crate::pki::profile::Organization;
use crate::pki::{Identifier, Profile, Subject};
use crate::store::{
    AuditEvent, AuthorizationBundle, AuthorizationRecord, ChallengeOutcome, ChallengeRecord,
    IssuanceOrder, OrderBundle, OrderQuery, OrderRecord, OrderStatus, OrderUpdate, StoreError,
    Transition,
};
use crate::validation::{key_authorization, ChallengeKind, ValidationError, Validators};

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

/// DV (domain control only) or OV (also vetted by a reviewer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Validation {
    /// Domain validation.
    Dv,
    /// Organisation validation.
    Ov,
}

impl Validation {
    fn as_str(self) -> &'static str {
        match self {
            Validation::Dv => "dv",
            Validation::Ov => "ov",
        }
    }
}

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
    match authz.identifier_type.as_str() {
        "dns" => Ok(Identifier::Dns(authz.identifier_value.clone())),
        "ip" => authz
            .identifier_value
            .parse()
            .map(Identifier::Ip)
            .map_err(|_| StoreError::Corrupt(format!("ip {:?}", authz.identifier_value))),
        other => Err(StoreError::Corrupt(format!("identifier type {other:?}"))),
    }
}

/// A problem document (RFC 9457) as stored in an order's or challenge's
/// `error`.
pub fn problem_document(kind: AcmeError, detail: &str) -> String {
    serde_json::json!({
        "type": kind.urn(),
        "detail": detail,
    })
    .to_string()
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

    /// Opens an order: checks the CSR and policy, reuses recent
    /// authorizations, and creates challenges for the rest — all in one
    /// transaction. A DV order whose identifiers are all authorised already
    /// is issued at once; an OV one goes straight to review.
    pub async fn create(
        &self,
        caller: &Caller,
        request: NewOrder,
    ) -> Result<OrderBundle, WorkflowError> {
        self.rate_limit(&caller.account_id)?;
        let checked = self.authority.intake(&request.csr).await?;
        let validity_days = self
            .authority
            .policy()
            .validity_days(request.validity_days)?;
        let profile = request
            .profile
            .as_deref()
            .unwrap_or("server")
            .parse::<Profile>()?;
        let organization = match (request.validation, request.organization) {
            (Validation::Ov, Some(org)) => Some(check_organization(org)?),
            (Validation::Ov, None) => {
                return Err(WorkflowError::Malformed(
                    "an OV order needs \"organization\" with at least a \"name\"".into(),
                ))
            }
            (Validation::Dv, Some(_)) => return Err(WorkflowError::Malformed(
                "\"organization\" is only for OV orders; a DV certificate names no organisation"
                    .into(),
            )),
            (Validation::Dv, None) => None,
        };

        let now = OffsetDateTime::now_utc();
        let expires_at = now.unix_timestamp() + i64::from(self.settings.lifetime_hours) * 3600;
        let store = self.authority.store();
        let mut bundle = self
            .new_bundle(
                caller,
                &checked.identifiers,
                now,
                expires_at,
                "rest",
                request.validation,
            )
            .await?;
        let order_id = bundle.order.id.clone();
        let all_valid = bundle
            .authorizations
            .iter()
            .all(|a| a.challenges.is_empty());
        bundle.order.profile = profile.as_str().into();
        bundle.order.validity_days = Some(i64::from(validity_days));
        bundle.order.csr_der = Some(checked.csr.der().to_vec());
        bundle.order.organization = organization
            .as_ref()
            .map(|o| serde_json::to_string(o).unwrap_or_default());
        let actor = caller.actor.clone();
        let names: Vec<String> = checked.identifiers.iter().map(Identifier::value).collect();
        let reused = bundle
            .authorizations
            .iter()
            .filter(|a| a.challenges.is_empty())
            .count();
        let mut events = vec![AuditEvent {
            at: now,
            actor: actor.clone(),
            action: "order.create".into(),
            subject: order_id.clone(),
            details: serde_json::json!({
                "validation": request.validation.as_str(),
                "names": names,
                "profile": profile.as_str(),
                "validity_days": validity_days,
                "reused_authorizations": reused,
            }),
        }];
        match (all_valid, request.validation) {
            (true, Validation::Dv) => {
                let subject = Subject::default();
                let signed = self
                    .authority
                    .issue(
                        IssueRequest {
                            now,
                            ..checked.issue_request(
                                &subject,
                                profile,
                                validity_days,
                                Some(caller.account_id.clone()),
                                &actor,
                            )
                        },
                        Some(IssuanceOrder::Create(Box::new(bundle.clone()))),
                        events,
                    )
                    .await?;
                bundle.order.status = OrderStatus::Valid;
                bundle.order.certificate_serial = Some(signed.certificate.serial.to_hex());
            }
            (true, Validation::Ov) => {
                bundle.order.status = OrderStatus::AwaitingApproval;
                events.push(transition_event(
                    now,
                    &actor,
                    &order_id,
                    OrderStatus::AwaitingApproval,
                ));
                store.create_order(&bundle, events).await?;
            }
            (false, _) => store.create_order(&bundle, events).await?,
        }
        Ok(bundle)
    }

    /// A new order (status `pending`, profile `server`) with one
    /// authorization per identifier: reused when this account proved the
    /// identifier within `orders.reuse_days`, else with fresh challenges.
    async fn new_bundle(
        &self,
        caller: &Caller,
        identifiers: &[Identifier],
        now: OffsetDateTime,
        expires_at: i64,
        source: &str,
        validation: Validation,
    ) -> Result<OrderBundle, WorkflowError> {
        let at = now.unix_timestamp();
        let reuse_secs = i64::from(self.settings.reuse_days) * 86_400;
        // Time first, so ids sort by creation (pages of orders made in the
        // same second keep their order), then 96 random bits.
        let millis = now.unix_timestamp_nanos() / 1_000_000;
        let key = format!("{millis:012x}{}", random_token(12));
        let order_id = format!("ord_{key}");
        let store = self.authority.store();
        let mut authorizations = Vec::with_capacity(identifiers.len());
        for (i, identifier) in identifiers.iter().enumerate() {
            let (kind, value) = match identifier {
                Identifier::Dns(name) => ("dns", name.clone()),
                Identifier::Ip(ip) => ("ip", ip.to_string()),
            };
            let reused = if reuse_secs > 0 {
                store
                    .last_validation(&caller.account_id, kind, &value, at - reuse_secs)
                    .await?
            } else {
                None
            };
            let authz_id = format!("authz_{key}_{i:03}");
            let challenges = match reused {
                Some(_) => Vec::new(),
                None => ChallengeKind::offered_for(identifier)
                    .iter()
                    .map(|kind| ChallengeRecord {
                        id: format!("chall_{key}_{i:03}_{}", challenge_letter(*kind)),
                        authorization_id: authz_id.clone(),
                        kind: kind.as_str().to_owned(),
                        token: random_token(32),
                        status: "pending".into(),
                        error: None,
                        attempted_at: None,
                        validated_at: None,
                        created_at: at,
                    })
                    .collect(),
            };
            authorizations.push(AuthorizationBundle {
                authorization: AuthorizationRecord {
                    id: authz_id,
                    order_id: order_id.clone(),
                    account_id: caller.account_id.clone(),
                    identifier_type: kind.to_owned(),
                    wildcard: value.starts_with("*."),
                    identifier_value: value,
                    status: if reused.is_some() { "valid" } else { "pending" }.into(),
                    validated_at: reused,
                    expires_at: reused.map_or(expires_at, |v| v + reuse_secs),
                    created_at: at,
                },
                challenges,
            });
        }
        let fresh = authorizations
            .iter()
            .filter(|a| !a.challenges.is_empty())
            .count() as i64;
        let limit = self.settings.max_pending_authorizations;
        if fresh > 0 && limit > 0 {
            let pending = store.pending_authorizations(&caller.account_id, at).await?;
            if pending + fresh > i64::from(limit) {
                return Err(WorkflowError::TooManyPending { pending, limit });
            }
        }
        Ok(OrderBundle {
            order: OrderRecord {
                id: order_id,
                account_id: caller.account_id.clone(),
                status: OrderStatus::Pending,
                validation: validation.as_str().into(),
                source: source.into(),
                profile: "server".into(),
                validity_days: None,
                csr_der: None,
                organization: None,
                error: None,
                rejection_reason: None,
                approval_reason: None,
                certificate_serial: None,
                created_at: at,
                updated_at: at,
                expires_at,
                not_after: None,
                acme_account_id: None,
                issue_attempts: 0,
            },
            authorizations,
        })
    }

    /// One order, if the caller may see it: its owner, or any reviewer or
    /// admin. Anyone else gets `NotFound`, as if it did not exist.
    pub async fn get(&self, caller: &Caller, order_id: &str) -> Result<OrderBundle, WorkflowError> {
        let bundle = self.load(order_id).await?;
        if bundle.order.account_id != caller.account_id && caller.role == Role::Requester {
            return Err(no_such_order(order_id));
        }
        Ok(bundle)
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

    /// Asks for one challenge to be validated now. The check runs in the
    /// background; the order as it stands is returned at once. Asking
    /// again while it runs, or after it finished, changes nothing.
    pub async fn respond(
        self: &Arc<Self>,
        caller: &Caller,
        order_id: &str,
        challenge_id: &str,
    ) -> Result<OrderBundle, WorkflowError> {
        let bundle = self.get(caller, order_id).await?;
        if bundle.order.account_id != caller.account_id {
            return Err(WorkflowError::Forbidden(
                "only the account that owns an order can answer its challenges".into(),
            ));
        }
        let (authz, challenge) = find_challenge(&bundle, challenge_id).ok_or_else(|| {
            WorkflowError::NotFound(format!(
                "order {order_id} has no challenge {challenge_id:?}"
            ))
        })?;
        if challenge.status != "pending" {
            return Ok(bundle);
        }
        if bundle.order.status != OrderStatus::Pending {
            return Err(WorkflowError::Conflict(format!(
                "order {order_id} is {}; challenges can only be answered while it is pending",
                bundle.order.status
            )));
        }
        if authz.status != "pending" {
            return Err(WorkflowError::Conflict(format!(
                "the authorization for {} is already {}; no other challenge is needed",
                authz.identifier_value, authz.status
            )));
        }
        let now = OffsetDateTime::now_utc();
        let claimed = self
            .authority
            .store()
            .claim_challenge(
                challenge_id,
                order_id,
                now.unix_timestamp(),
                AuditEvent {
                    at: now,
                    actor: caller.actor.clone(),
                    action: "challenge.attempt".into(),
                    subject: challenge_id.to_owned(),
                    details: serde_json::json!({
                        "order": order_id,
                        "type": challenge.kind,
                        "identifier": authz.identifier_value,
                    }),
                },
            )
            .await?;
        if claimed {
            self.spawn_validation(bundle.order.clone(), authz.clone(), challenge.clone());
        }
        self.load(order_id).await
    }

    /// Approves an OV order awaiting approval and issues its certificate
    /// with the vetted organisation (`organization` replaces the requested
    /// one if given); `reason` is the reviewer's note, kept on the order
    /// and in the audit record. Reviewer or admin keys only, never the
    /// order's own account (nor a dashboard user belonging to it).
    pub async fn approve(
        &self,
        caller: &Caller,
        order_id: &str,
        organization: Option<Organization>,
        reason: Option<&str>,
    ) -> Result<OrderBundle, WorkflowError> {
        let reason = reason.map(str::trim).filter(|r| !r.is_empty());
        if let Some(r) = reason {
            if r.chars().count() > MAX_REASON_LEN || has_control(r) {
                return Err(WorkflowError::Malformed(
                    "an approval \"reason\" must be at most 1000 printable characters".into(),
                ));
            }
        }
        let bundle = self.reviewable(caller, order_id, "approve").await?;
        let organization = organization.map(check_organization).transpose()?;
        let organization_json = organization
            .as_ref()
            .map(|o| serde_json::to_string(o).unwrap_or_default());
        let now = OffsetDateTime::now_utc();
        let vetted = organization_json
            .clone()
            .or_else(|| bundle.order.organization.clone());
        let moved = self
            .authority
            .store()
            .transition_order(
                order_id,
                Transition::Approve,
                &OrderUpdate {
                    organization: organization_json,
                    approval_reason: reason.map(str::to_owned),
                    ..OrderUpdate::default()
                },
                now.unix_timestamp(),
                vec![AuditEvent {
                    at: now,
                    actor: caller.actor.clone(),
                    action: "order.approve".into(),
                    subject: order_id.to_owned(),
                    details: serde_json::json!({
                        "organization": vetted.and_then(|o| serde_json::from_str::<serde_json::Value>(&o).ok()),
                        "reason": reason,
                    }),
                }],
            )
            .await?;
        if !moved {
            return Err(changed_meanwhile(order_id));
        }
        let order = self.load(order_id).await?.order;
        self.issue_claimed(&order).await?;
        self.load(order_id).await
    }

    /// Rejects an OV order awaiting approval, with the reason the requester
    /// will see. Reviewer or admin keys only, never the order's own.
    pub async fn reject(
        &self,
        caller: &Caller,
        order_id: &str,
        reason: &str,
    ) -> Result<OrderBundle, WorkflowError> {
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > MAX_REASON_LEN || has_control(reason) {
            return Err(WorkflowError::Malformed(
                "a rejection needs a \"reason\" of 1 to 1000 printable characters".into(),
            ));
        }
        self.reviewable(caller, order_id, "reject").await?;
        let now = OffsetDateTime::now_utc();
        let moved = self
            .authority
            .store()
            .transition_order(
                order_id,
                Transition::Reject,
                &OrderUpdate {
                    rejection_reason: Some(reason.to_owned()),
                    ..OrderUpdate::default()
                },
                now.unix_timestamp(),
                vec![AuditEvent {
                    at: now,
                    actor: caller.actor.clone(),
                    action: "order.reject".into(),
                    subject: order_id.to_owned(),
                    details: serde_json::json!({ "reason": reason }),
                }],
            )
            .await?;
        if !moved {
            return Err(changed_meanwhile(order_id));
        }
        self.load(order_id).await
    }

    /// The background worker: resumes validations and issuances an
    /// instance dropped, and expires old orders, until `shutdown`.
    pub async fn run_worker(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(WORKER_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            match self.work_once().await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    failed = n,
                    "the order worker's pass had failures; retrying them on the next pass"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "the order worker failed; retrying on the next pass")
                }
            }
        }
    }

    /// One pass of the background worker (public for tests). Each kind of
    /// work and each row is handled on its own: an error is logged with
    /// the row it concerns and the pass goes on, so one bad row never
    /// stops the others (or the expiry of old orders). Returns how many
    /// rows failed.
    pub async fn work_once(self: &Arc<Self>) -> Result<usize, WorkflowError> {
        let store = self.authority.store().clone();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mut failed = 0;
        // Validations whose task died with its process.
        let stale_before = now - 3 * self.validation_timeout.as_secs() as i64 - 30;
        match store.stale_challenges(stale_before, WORKER_BATCH).await {
            Ok(rows) => {
                for (challenge_id, order_id, attempted_at) in rows {
                    if let Err(e) = self
                        .resume_validation(&challenge_id, &order_id, attempted_at, now)
                        .await
                    {
                        failed += 1;
                        tracing::error!(challenge = %challenge_id, order = %order_id, error = %e, "resuming a validation failed; going on with the others");
                    }
                }
            }
            Err(e) => {
                failed += 1;
                tracing::warn!(error = %e, "listing interrupted validations failed");
            }
        }
        // Issuances that were due but did not happen.
        match store
            .orders_to_resume(
                now - RESUME_READY_AFTER_SECS,
                now - RESUME_PROCESSING_AFTER_SECS,
                WORKER_BATCH,
            )
            .await
        {
            Ok(orders) => {
                for order in orders {
                    if let Err(e) = self.resume_issuance(&order, now).await {
                        failed += 1;
                        tracing::error!(order = %order.id, error = %e, "resuming an issuance failed; going on with the others");
                    }
                }
            }
            Err(e) => {
                failed += 1;
                tracing::warn!(error = %e, "listing issuances to resume failed");
            }
        }
        // Orders nobody finished in time.
        match store.expired_orders(now, WORKER_BATCH).await {
            Ok(orders) => {
                for order in orders {
                    let problem = problem_document(
                        AcmeError::Malformed,
                        "the order expired before it was finished",
                    );
                    if let Err(e) = self
                        .fail(&order, order.status, problem, "order.expire")
                        .await
                    {
                        failed += 1;
                        tracing::error!(order = %order.id, error = %e, "expiring an order failed; going on with the others");
                    }
                }
            }
            Err(e) => {
                failed += 1;
                tracing::warn!(error = %e, "listing expired orders failed");
            }
        }
        Ok(failed)
    }

    async fn resume_validation(
        self: &Arc<Self>,
        challenge_id: &str,
        order_id: &str,
        attempted_at: i64,
        now: i64,
    ) -> Result<(), WorkflowError> {
        let store = self.authority.store();
        if self.running_here().contains(challenge_id) {
            return Ok(());
        }
        if !store
            .reclaim_challenge(challenge_id, attempted_at, now)
            .await?
        {
            return Ok(());
        }
        let bundle = store.order(order_id).await?;
        if let Some((authz, challenge)) = find_challenge(&bundle, challenge_id) {
            tracing::info!(challenge = %challenge_id, "resuming an interrupted validation");
            self.spawn_validation(bundle.order.clone(), authz.clone(), challenge.clone());
        }
        Ok(())
    }

    /// Resumes a `ready` DV order nobody issued, or takes over a stale
    /// `processing` claim — at most [`MAX_ISSUE_ATTEMPTS`] times, then the
    /// order becomes `invalid` with a reason its requester sees.
    async fn resume_issuance(&self, order: &OrderRecord, now: i64) -> Result<(), WorkflowError> {
        tracing::info!(order = %order.id, status = %order.status, attempts = order.issue_attempts, "resuming an issuance");
        match order.status {
            OrderStatus::Ready => self.issue_ready(&order.id).await,
            OrderStatus::Processing if order.issue_attempts >= MAX_ISSUE_ATTEMPTS => {
                tracing::error!(order = %order.id, attempts = order.issue_attempts, "issuing an order kept failing; the order is now invalid");
                let problem = problem_document(
                    AcmeError::ServerInternal,
                    &format!(
                        "issuing the certificate failed {} times; the error has been logged; place a new order",
                        order.issue_attempts + 1
                    ),
                );
                self.fail(order, OrderStatus::Processing, problem, "order.invalid")
                    .await?;
            }
            OrderStatus::Processing => {
                let taken = self
                    .authority
                    .store()
                    .transition_order(
                        &order.id,
                        Transition::RetakeClaim,
                        &OrderUpdate {
                            updated_before: Some(now - RESUME_PROCESSING_AFTER_SECS),
                            count_issue_attempt: true,
                            ..OrderUpdate::default()
                        },
                        now,
                        Vec::new(),
                    )
                    .await?;
                if taken {
                    let _ = self.issue_claimed(order).await;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Moves `order` from `from` to `invalid` with `problem` (JSON), audited
    /// as `action` by the system.
    async fn fail(
        &self,
        order: &OrderRecord,
        from: OrderStatus,
        problem: String,
        action: &str,
    ) -> Result<bool, WorkflowError> {
        let at = OffsetDateTime::now_utc();
        Ok(self
            .authority
            .store()
            .transition_order(
                &order.id,
                Transition::Fail(from),
                &OrderUpdate {
                    error: Some(problem),
                    ..OrderUpdate::default()
                },
                at.unix_timestamp(),
                vec![AuditEvent {
                    at,
                    actor: "system".into(),
                    action: action.into(),
                    subject: order.id.clone(),
                    details: serde_json::json!({ "was": from.as_str() }),
                }],
            )
            .await?)
    }

    async fn load(&self, order_id: &str) -> Result<OrderBundle, WorkflowError> {
        match self.authority.store().order(order_id).await {
            Err(StoreError::NotFound) => Err(no_such_order(order_id)),
            other => Ok(other?),
        }
    }

    /// The order, if `caller` may review it and it awaits approval.
    async fn reviewable(
        &self,
        caller: &Caller,
        order_id: &str,
        verb: &str,
    ) -> Result<OrderBundle, WorkflowError> {
        if caller.role == Role::Requester {
            return Err(WorkflowError::Forbidden(format!(
                "only reviewer and admin API keys may {verb} orders"
            )));
        }
        let bundle = self.load(order_id).await?;
        if bundle.order.account_id == caller.account_id {
            return Err(WorkflowError::Forbidden(format!(
                "an account cannot {verb} its own order; another reviewer must"
            )));
        }
        if bundle.order.status != OrderStatus::AwaitingApproval {
            return Err(WorkflowError::Conflict(format!(
                "order {order_id} is {}; only an order awaiting approval can be {verb}d",
                bundle.order.status
            )));
        }
        Ok(bundle)
    }

    fn spawn_validation(
        self: &Arc<Self>,
        order: OrderRecord,
        authz: AuthorizationRecord,
        challenge: ChallengeRecord,
    ) {
        let this = self.clone();
        if !self.running_here().insert(challenge.id.clone()) {
            return;
        }
        tokio::spawn(async move {
            // Forgotten however the task ends, panics included.
            struct Forget(Arc<Orders>, String);
            impl Drop for Forget {
                fn drop(&mut self) {
                    self.0.running_here().remove(&self.1);
                }
            }
            let _forget = Forget(this.clone(), challenge.id.clone());
            if this.danger_validation_delay_ms > 0 {
                let ms = rand::random::<u64>() % (this.danger_validation_delay_ms + 1);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            this.validate(order, authz, challenge).await;
        });
    }

    fn running_here(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one claimed challenge and records what it found.
    async fn validate(
        &self,
        order: OrderRecord,
        authz: AuthorizationRecord,
        challenge: ChallengeRecord,
    ) {
        let outcome = self.check(&order, &authz, &challenge).await;
        let now = OffsetDateTime::now_utc();
        let error = outcome.as_ref().err().map(|e| {
            problem_document(
                e.acme_type(),
                &format!("{} ({}): {e}", authz.identifier_value, challenge.kind),
            )
        });
        // The store makes one of these moves when the last authorization
        // settles (inside `finish_challenge`, atomically with the result).
        let when_all_valid = if order.validation == "ov" {
            Transition::AwaitApproval
        } else {
            Transition::Validated
        }
        .to();
        let next = if error.is_some() {
            Transition::Fail(OrderStatus::Pending).to()
        } else {
            when_all_valid
        };
        let events = vec![AuditEvent {
            at: now,
            actor: "system".into(),
            action: if error.is_some() {
                "challenge.invalid"
            } else {
                "challenge.valid"
            }
            .into(),
            subject: challenge.id.clone(),
            details: serde_json::json!({
                "order": order.id,
                "type": challenge.kind,
                "identifier": authz.identifier_value,
                "error": outcome.as_ref().err().map(|e| e.to_string()),
            }),
        }];
        let on_change = vec![transition_event(now, "system", &order.id, next)];
        let result = self
            .authority
            .store()
            .finish_challenge(
                &ChallengeOutcome {
                    challenge_id: challenge.id.clone(),
                    authorization_id: authz.id.clone(),
                    order_id: order.id.clone(),
                    at: now.unix_timestamp(),
                    error,
                    when_all_valid,
                },
                events,
                on_change,
            )
            .await;
        match result {
            // An ACME order waits in `ready` for its client to finalize.
            Ok(Some(OrderStatus::Ready)) if order.source == "rest" => {
                self.issue_ready(&order.id).await
            }
            Ok(_) => {}
            Err(StoreError::Conflict(why)) => {
                tracing::debug!(challenge = %challenge.id, %why, "validation result superseded")
            }
            Err(e) => tracing::warn!(
                challenge = %challenge.id, error = %e,
                "recording a validation failed; the worker will run it again"
            ),
        }
    }

    async fn check(
        &self,
        order: &OrderRecord,
        authz: &AuthorizationRecord,
        challenge: &ChallengeRecord,
    ) -> Result<(), ValidationError> {
        let mut identifier = identifier_of(authz).map_err(|e| ValidationError::Dns {
            name: authz.identifier_value.clone(),
            reason: e.to_string(),
        })?;
        // A wildcard is validated at its base name (RFC 8555 §7.1.3).
        if let Identifier::Dns(name) = &identifier {
            if let Some(base) = name.strip_prefix("*.") {
                identifier = Identifier::Dns(base.to_owned());
            }
        }
        let kind: ChallengeKind =
            challenge
                .kind
                .parse()
                .map_err(|reason: String| ValidationError::Connection {
                    url: identifier.to_string(),
                    reason,
                })?;
        let thumbprint = self
            .thumbprint_of(order)
            .await
            .map_err(|e| ValidationError::Dns {
                name: authz.identifier_value.clone(),
                reason: e.to_string(),
            })?;
        let key_authorization = key_authorization(&challenge.token, &thumbprint);
        // Slots are per ACME account for ACME orders, so one client's black
        // holes do not hold another's validations.
        let slots = order
            .acme_account_id
            .as_deref()
            .unwrap_or(&order.account_id);
        self.validators
            .check(
                slots,
                kind,
                &identifier,
                &challenge.token,
                &key_authorization,
            )
            .await
    }

    /// The thumbprint in an order's key authorizations: the ACME account
    /// key's for ACME orders, the REST account's derived one otherwise.
    pub async fn thumbprint_of(&self, order: &OrderRecord) -> Result<String, StoreError> {
        if order.source == "acme" {
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

    /// Opens an ACME order (RFC 8555 §7.4) for identifiers, without a CSR
    /// yet: policy checks every name, recent proofs are reused, the rest
    /// get challenges. It waits in `pending`, then `ready` for finalize.
    /// `not_after`: the certificate's requested end; it must leave at least
    /// an hour and fall within the policy's maximum validity.
    pub async fn create_acme(
        &self,
        caller: &Caller,
        acme_account_id: &str,
        identifiers: &[Identifier],
        not_after: Option<OffsetDateTime>,
    ) -> Result<OrderBundle, WorkflowError> {
        self.rate_limit(&caller.account_id)?;
        if identifiers.is_empty() {
            return Err(WorkflowError::Malformed(
                "an order needs at least one identifier".into(),
            ));
        }
        let checked = self.authority.policy().check_identifiers(identifiers)?;
        let now = OffsetDateTime::now_utc();
        let at = now.unix_timestamp();
        let requested_days = match not_after {
            None => None,
            Some(t) if t < now + time::Duration::hours(1) => {
                return Err(WorkflowError::Malformed(format!(
                    "notAfter {} is less than an hour away",
                    crate::workflow::rfc3339(t.unix_timestamp())
                )))
            }
            Some(t) => {
                let from = at - crate::pki::profile::BACKDATE.whole_seconds();
                let days = (t.unix_timestamp() - from + 86_399) / 86_400;
                Some(u32::try_from(days).unwrap_or(u32::MAX))
            }
        };
        let validity_days = self.authority.policy().validity_days(requested_days)?;
        let expires_at = at + i64::from(self.settings.lifetime_hours) * 3600;
        let mut bundle = self
            .new_bundle(caller, &checked, now, expires_at, "acme", Validation::Dv)
            .await?;
        bundle.order.validity_days = Some(i64::from(validity_days));
        bundle.order.not_after = not_after.map(OffsetDateTime::unix_timestamp);
        bundle.order.acme_account_id = Some(acme_account_id.to_owned());
        if bundle
            .authorizations
            .iter()
            .all(|a| a.challenges.is_empty())
        {
            bundle.order.status = OrderStatus::Ready;
        }
        let names: Vec<String> = checked.iter().map(Identifier::value).collect();
        let mut events = vec![AuditEvent {
            at: now,
            actor: caller.actor.clone(),
            action: "order.create".into(),
            subject: bundle.order.id.clone(),
            details: serde_json::json!({"validation": "dv", "names": names, "source": "acme"}),
        }];
        if bundle.order.status == OrderStatus::Ready {
            events.push(transition_event(
                now,
                &caller.actor,
                &bundle.order.id,
                OrderStatus::Ready,
            ));
        }
        self.authority.store().create_order(&bundle, events).await?;
        Ok(bundle)
    }

    /// An ACME order, if this ACME account opened it: any other order is
    /// `NotFound`, even one of another ACME account of the same hallmark
    /// account (orders from before migration 0004 name none).
    pub async fn get_acme(
        &self,
        caller: &Caller,
        acme_account_id: &str,
        order_id: &str,
    ) -> Result<OrderBundle, WorkflowError> {
        let bundle = self.get(caller, order_id).await?;
        let mine = bundle.order.source == "acme"
            && bundle
                .order
                .acme_account_id
                .as_deref()
                .is_none_or(|a| a == acme_account_id);
        if !mine {
            return Err(no_such_order(order_id));
        }
        Ok(bundle)
    }

    /// Finalizes a `ready` ACME order with its CSR (RFC 8555 §7.4): the
    /// CSR passes intake and policy and names exactly the order's
    /// identifiers; then the certificate is issued.
    pub async fn finalize(
        &self,
        caller: &Caller,
        acme_account_id: &str,
        order_id: &str,
        csr: &[u8],
    ) -> Result<OrderBundle, WorkflowError> {
        let bundle = self.get_acme(caller, acme_account_id, order_id).await?;
        if bundle.order.status != OrderStatus::Ready {
            return Err(WorkflowError::OrderNotReady(format!(
                "order {order_id} is {}; it can be finalized only when ready",
                bundle.order.status
            )));
        }
        let checked = self.authority.intake(csr).await?;
        let mut want: Vec<String> = bundle
            .authorizations
            .iter()
            .map(|a| a.authorization.identifier_value.clone())
            .collect();
        let mut have: Vec<String> = checked.identifiers.iter().map(Identifier::value).collect();
        want.sort();
        have.sort();
        if want != have {
            return Err(WorkflowError::BadCsr(format!(
                "the CSR names {} but the order is for {}",
                have.join(", "),
                want.join(", ")
            )));
        }
        let now = OffsetDateTime::now_utc();
        let moved = self
            .authority
            .store()
            .transition_order(
                order_id,
                Transition::ClaimIssuance,
                &OrderUpdate {
                    csr_der: Some(checked.csr.der().to_vec()),
                    ..OrderUpdate::default()
                },
                now.unix_timestamp(),
                vec![transition_event(
                    now,
                    &caller.actor,
                    order_id,
                    OrderStatus::Processing,
                )],
            )
            .await?;
        if !moved {
            return Err(WorkflowError::OrderNotReady(format!(
                "order {order_id} changed meanwhile; it is no longer ready"
            )));
        }
        let order = self.load(order_id).await?.order;
        self.issue_claimed(&order).await?;
        self.load(order_id).await
    }

    /// Takes a `ready` DV order to `processing` and issues it.
    async fn issue_ready(&self, order_id: &str) {
        let now = OffsetDateTime::now_utc();
        let claimed = self
            .authority
            .store()
            .transition_order(
                order_id,
                Transition::ClaimIssuance,
                &OrderUpdate::default(),
                now.unix_timestamp(),
                vec![transition_event(
                    now,
                    "system",
                    order_id,
                    OrderStatus::Processing,
                )],
            )
            .await;
        let order = match claimed {
            Ok(true) => match self.load(order_id).await {
                Ok(bundle) => bundle.order,
                Err(e) => {
                    tracing::warn!(order = %order_id, error = %e, "loading a claimed order failed; the worker will resume it");
                    return;
                }
            },
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(order = %order_id, error = %e, "claiming an order for issuance failed; the worker will resume it");
                return;
            }
        };
        let _ = self.issue_claimed(&order).await;
    }

    /// Issues an order this instance holds in `processing`. If issuance is
    /// refused (the policy changed since the order was made) the order
    /// becomes invalid with the reason; a database failure leaves it
    /// `processing` for the worker to resume.
    async fn issue_claimed(&self, order: &OrderRecord) -> Result<Signed, WorkflowError> {
        let result = self.sign_order(order).await;
        let error = match &result {
            Ok(_) => return result,
            Err(WorkflowError::Store(StoreError::Conflict(why))) => {
                tracing::info!(order = %order.id, %why, "another instance finished this order");
                return result;
            }
            Err(WorkflowError::Store(e)) => {
                tracing::warn!(order = %order.id, error = %e, "recording an issuance failed; the worker will resume it");
                return result;
            }
            Err(WorkflowError::Csr(e)) => problem_document(e.acme_code(), &e.to_string()),
            Err(WorkflowError::Policy(e)) => problem_document(e.acme_code(), &e.to_string()),
            Err(e) => {
                tracing::error!(order = %order.id, error = %e, "issuing an order failed");
                problem_document(
                    AcmeError::ServerInternal,
                    "issuing the certificate failed; the error has been logged",
                )
            }
        };
        let now = OffsetDateTime::now_utc();
        if let Err(e) = self
            .authority
            .store()
            .transition_order(
                &order.id,
                Transition::Fail(OrderStatus::Processing),
                &OrderUpdate {
                    error: Some(error),
                    ..OrderUpdate::default()
                },
                now.unix_timestamp(),
                vec![transition_event(
                    now,
                    "system",
                    &order.id,
                    OrderStatus::Invalid,
                )],
            )
            .await
        {
            tracing::warn!(order = %order.id, error = %e, "marking an order invalid failed");
        }
        result
    }

    async fn sign_order(&self, order: &OrderRecord) -> Result<Signed, WorkflowError> {
        let csr_der = order.csr_der.as_deref().ok_or_else(|| {
            WorkflowError::Store(StoreError::Corrupt(format!(
                "order {} has no CSR",
                order.id
            )))
        })?;
        let checked = self.authority.intake(csr_der).await?;
        let validity_days = self
            .authority
            .policy()
            .validity_days(order.validity_days.map(|d| d as u32))?;
        let profile = order.profile.parse::<Profile>()?;
        let organization = match &order.organization {
            Some(json) if order.validation == "ov" => Some(
                serde_json::from_str::<Organization>(json)
                    .map_err(|e| StoreError::Corrupt(format!("organization: {e}")))?,
            ),
            _ => None,
        };
        let subject = Subject { organization };
        let actor = account_actor(&order.account_id);
        let mut request = checked.issue_request(
            &subject,
            profile,
            validity_days,
            Some(order.account_id.clone()),
            &actor,
        );
        request.not_after = order
            .not_after
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
        self.authority
            .issue(
                request,
                Some(IssuanceOrder::Complete {
                    order_id: order.id.clone(),
                }),
                Vec::new(),
            )
            .await
    }
}

fn challenge_letter(kind: ChallengeKind) -> char {
    match kind {
        ChallengeKind::Http01 => 'h',
        ChallengeKind::Dns01 => 'd',
        ChallengeKind::TlsAlpn01 => 't',
    }
}

fn account_actor(account_id: &str) -> String {
    format!("account:{account_id}")
}

fn transition_event(
    at: OffsetDateTime,
    actor: &str,
    order_id: &str,
    to: OrderStatus,
) -> AuditEvent {
    AuditEvent {
        at,
        actor: actor.to_owned(),
        action: format!("order.{}", to.as_str()),
        subject: order_id.to_owned(),
        details: serde_json::json!({}),
    }
}

fn no_such_order(order_id: &str) -> WorkflowError {
    WorkflowError::NotFound(format!("there is no order {order_id:?}"))
}

fn changed_meanwhile(order_id: &str) -> WorkflowError {
    WorkflowError::Conflict(format!(
        "order {order_id} changed while this request ran; fetch it and try again"
    ))
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
