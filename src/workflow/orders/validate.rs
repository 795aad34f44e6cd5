//! Answering a challenge: claiming it, running the validator in a task of its own, recording what it found.

use super::*;
use crate::validation::RequesterAccount;

impl Orders {
    /// Asks for one challenge to be validated now. The check runs in a
    /// task of its own; the order is returned once it has finished and
    /// recorded its result (with its claim, in one commit), or after
    /// `wait` once the claim is committed, as the order then stands (the
    /// check goes on). Asking again while it runs, or after it finished,
    /// changes nothing.
    pub async fn respond(
        self: &Arc<Self>,
        caller: &Caller,
        order_id: &str,
        challenge_id: &str,
        wait: Duration,
    ) -> Result<OrderBundle, WorkflowError> {
        let bundle = self.get(caller, order_id).await?;
        self.respond_in(caller, bundle, challenge_id, wait).await
    }

    /// [`Orders::respond`] for an order the caller has just read (`bundle`,
    /// as [`Orders::get`] gave it): the ACME challenge handler, which
    /// reads the order to find the challenge, does not read it twice, and
    /// answers with that challenge only. So when the validation ends
    /// within `wait`, the order returned is the view its result's commit
    /// left here if there is one (no write since, or a later one):
    /// exact for this challenge, as of a moment inside this request, and
    /// elsewhere at most as far behind other instances' writes as any
    /// view kept (`recent::FRESH_FOR`).
    pub async fn respond_in(
        self: &Arc<Self>,
        caller: &Caller,
        bundle: OrderBundle,
        challenge_id: &str,
        wait: Duration,
    ) -> Result<OrderBundle, WorkflowError> {
        let order_id = bundle.order.id.clone();
        let order_id = order_id.as_str();
        if bundle.order.account_id != caller.account_id {
            return Err(NotAllowed::NotOrderOwner.into());
        }
        let (authz, challenge) = find_challenge(&bundle, challenge_id).ok_or_else(|| {
            WorkflowError::from(Missing::Challenge {
                order_id: order_id.to_owned(),
                challenge_id: challenge_id.to_owned(),
            })
        })?;
        if challenge.status != ChallengeStatus::Pending {
            return Ok(bundle);
        }
        if bundle.order.status != OrderStatus::Pending {
            return Err(Clash::OrderNotPending {
                order_id: order_id.to_owned(),
                status: bundle.order.status,
            }
            .into());
        }
        if authz.status != AuthorizationStatus::Pending {
            return Err(Clash::AuthorizationDone {
                identifier: authz.identifier_value.clone(),
                status: authz.status,
            }
            .into());
        }
        let now = OffsetDateTime::now_utc();
        let attempt = AuditEvent {
            at: now,
            actor: caller.actor.clone(),
            action: "challenge.attempt".into(),
            subject: challenge_id.to_owned(),
            details: serde_json::json!({
                "order": order_id,
                "type": challenge.kind,
                "identifier": authz.identifier_value,
            }),
        };
        if !wait.is_zero() {
            // Validated first and claimed in its result's commit: a
            // validation that ends within the wait costs one commit, not
            // two, and the answer comes after that commit. Until then the
            // challenge is `pending` in the store, and only this process
            // runs it (`running_here`).
            let task = self.spawn_validation(
                bundle.order.clone(),
                authz.clone(),
                challenge.clone(),
                Some(attempt.clone()),
            );
            if let Some(task) = task {
                // Dropping the handle on time-out leaves the task running.
                if let Ok(Ok(())) = tokio::time::timeout(wait, task).await {
                    // A view kept now was left by the result's commit or
                    // a later write (a write drops its order's view as it
                    // begins, and writes that overlap leave none).
                    return match self.authority.store().order_seen(order_id) {
                        Some(view) => Ok(view),
                        None => self.load(order_id).await,
                    };
                }
            }
        }
        // The answer says `processing`, so the claim is committed first:
        // no client sees its challenge go back to `pending`. A validation
        // already running here (from above) finds it claimed when it ends.
        let claimed = self
            .authority
            .store()
            .claim_challenge(challenge_id, order_id, now.unix_timestamp(), attempt)
            .await?;
        if claimed && wait.is_zero() {
            self.spawn_validation(bundle.order.clone(), authz.clone(), challenge.clone(), None);
        }
        self.load(order_id).await
    }

    /// Starts validating a challenge in a task of its own, unless this
    /// process already is; the task, which ends once the result is
    /// recorded. `claim` is the claim's event when the challenge was not
    /// claimed first: the result then claims it in the same commit.
    pub(super) fn spawn_validation(
        self: &Arc<Self>,
        order: OrderRecord,
        authz: AuthorizationRecord,
        challenge: ChallengeRecord,
        claim: Option<AuditEvent>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let this = self.clone();
        if !self.running_here().insert(challenge.id.clone()) {
            return None;
        }
        Some(tokio::spawn(async move {
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
            this.validate(order, authz, challenge, claim).await;
        }))
    }

    pub(super) fn running_here(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one challenge and records what it found (with its claim,
    /// if `claim`).
    pub(super) async fn validate(
        &self,
        order: OrderRecord,
        authz: AuthorizationRecord,
        challenge: ChallengeRecord,
        claim: Option<AuditEvent>,
    ) {
        let started = std::time::Instant::now();
        let outcome = self.check(&order, &authz, &challenge).await;
        let metrics = &crate::metrics::METRICS;
        let kind = challenge.kind.as_str();
        metrics
            .validation_duration
            .observe(&[kind], started.elapsed());
        metrics
            .validations
            .inc(&[kind, if outcome.is_ok() { "valid" } else { "invalid" }]);
        let now = OffsetDateTime::now_utc();
        let error = outcome.as_ref().err().map(|e| {
            Failure::new(
                e.acme_type(),
                format!("{} ({}): {e}", authz.identifier_value, challenge.kind),
            )
        });
        // The store makes one of these moves when the last authorization
        // settles (inside `finish_challenge`, atomically with the result).
        let all_valid = if order.validation == Validation::Ov {
            Transition::AwaitApproval
        } else {
            Transition::Validated
        };
        let next = if error.is_some() {
            Transition::Fail(OrderStatus::Pending)
        } else {
            all_valid
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
        let on_change = transition_event(now, "system", &order.id, next, serde_json::json!({}))
            .into_iter()
            .collect();
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
                    when_all_valid: all_valid,
                    claim,
                },
                events,
                on_change,
            )
            .await;
        match result {
            // An ACME order waits in `ready` for its client to finalize.
            Ok(Some(OrderStatus::Ready)) if order.source == OrderSource::Rest => {
                let ready = order.moved(all_valid, &OrderUpdate::default(), now.unix_timestamp());
                self.issue_ready(&ready).await
            }
            Ok(_) => {}
            Err(StoreError::Conflict(why @ Conflict::ChallengeNotProcessing(_))) => {
                tracing::debug!(challenge = %challenge.id, %why, "validation result superseded")
            }
            Err(e) => tracing::warn!(
                challenge = %challenge.id, error = %e,
                "recording a validation failed; the worker will run it again"
            ),
        }
    }

    pub(super) async fn check(
        &self,
        order: &OrderRecord,
        authz: &AuthorizationRecord,
        challenge: &ChallengeRecord,
    ) -> Result<(), ValidationError> {
        let mut identifier = identifier_of(authz).map_err(|e| ValidationError::Dns {
            name: authz.identifier_value.clone(),
            reason: e.to_string(),
        })?;
        // A wildcard is validated at its base name (RFC 8555 §7.1.3);
        // dns-persist-01 needs to know it is one (policy=wildcard).
        if let (Identifier::Dns(name), false) =
            (&identifier, challenge.kind == ChallengeKind::DnsPersist01)
        {
            if let Some(base) = name.strip_prefix("*.") {
                identifier = Identifier::Dns(base.to_owned());
            }
        }
        let kind = challenge.kind;
        let thumbprint = self
            .thumbprint_of(order)
            .await
            .map_err(|e| ValidationError::Dns {
                name: authz.identifier_value.clone(),
                reason: e.to_string(),
            })?;
        let key_authorization = key_authorization(&challenge.token, &thumbprint);
        // Slots are per ACME account for ACME orders, so one client's black
        // holes do not hold another's validations; dns-account-01 and CAA
        // use that account's URL.
        let requester = match order.acme_account_id.as_deref() {
            Some(id) => RequesterAccount::Acme(id),
            None => RequesterAccount::Rest(&order.account_id),
        };
        self.validators
            .check_for(
                requester,
                kind,
                &identifier,
                &challenge.token,
                &key_authorization,
            )
            .await?;
        // Control is proven; CAA decides whether this CA may issue. A
        // wildcard is checked as the wildcard (its issuewild records).
        let named = identifier_of(authz).map_err(|e| ValidationError::Dns {
            name: authz.identifier_value.clone(),
            reason: e.to_string(),
        })?;
        self.validators.check_caa(&named, requester, kind).await
    }
}
