//! The background worker: interrupted validations and issuances resumed, stale claims taken over a bounded number of times, expired orders ended.

use super::*;

impl Orders {
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
                    let problem = Failure::new(
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

    pub(super) async fn resume_validation(
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
            self.spawn_validation(bundle.order.clone(), authz.clone(), challenge.clone(), None);
        }
        Ok(())
    }

    /// Resumes a `ready` DV order nobody issued, or takes over a stale
    /// `processing` claim — at most [`MAX_ISSUE_ATTEMPTS`] times, then the
    /// order becomes `invalid` with a reason its requester sees.
    pub(super) async fn resume_issuance(
        &self,
        order: &OrderRecord,
        now: i64,
    ) -> Result<(), WorkflowError> {
        tracing::info!(order = %order.id, status = %order.status, attempts = order.issue_attempts, "resuming an issuance");
        match order.status {
            OrderStatus::Ready => self.claim_and_issue(&order.id).await,
            OrderStatus::Processing if order.issue_attempts >= MAX_ISSUE_ATTEMPTS => {
                tracing::error!(order = %order.id, attempts = order.issue_attempts, "issuing an order kept failing; the order is now invalid");
                let problem = Failure::new(
                    AcmeError::ServerInternal,
                    format!(
                        "issuing the certificate failed {} times; the error has been logged; place a new order",
                        order.issue_attempts + 1
                    ),
                );
                self.fail(order, OrderStatus::Processing, problem, "order.invalid")
                    .await?;
            }
            OrderStatus::Processing => {
                let update = OrderUpdate {
                    updated_before: Some(now - RESUME_PROCESSING_AFTER_SECS),
                    count_issue_attempt: true,
                    ..OrderUpdate::default()
                };
                let taken = self
                    .move_order(
                        &order.id,
                        Transition::RetakeClaim,
                        &update,
                        "system",
                        serde_json::json!({}),
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

    /// Moves `order` from `from` to `invalid` with `problem`, audited
    /// as `action` by the system.
    pub(super) async fn fail(
        &self,
        order: &OrderRecord,
        from: OrderStatus,
        problem: Failure,
        action: &str,
    ) -> Result<bool, WorkflowError> {
        let update = OrderUpdate {
            error: Some(problem),
            ..OrderUpdate::default()
        };
        let details = serde_json::json!({ "was": from.as_str() });
        Ok(self
            .move_order_as(
                &order.id,
                Transition::Fail(from),
                Some(action),
                &update,
                "system",
                details,
            )
            .await?)
    }
}
