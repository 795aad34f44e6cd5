//! Issuance: ACME finalize, a ready order issued in one commit (or claimed first by the worker), signing the order's CSR and storing the certificate with the order's completion.

use super::*;
use crate::workflow::CheckedCsr;

impl Orders {
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
        // A view of the order `ready` that this instance wrote or read a
        // moment ago is enough to begin with, even where other instances
        // may have moved the order since: the issuance is stored only if
        // the order is still `ready` (guarded below), so a stale view
        // costs a signature, never a second certificate. Any other status
        // is read again.
        let ready = |v: &OrderBundle| v.order.status == OrderStatus::Ready;
        let bundle = match self.seen_acme(caller, acme_account_id, order_id, ready) {
            Some(view) => view,
            None => self.get_acme(caller, acme_account_id, order_id).await?,
        };
        let mut bundle = self.confirm_status(bundle, OrderStatus::Ready).await?;
        if bundle.order.status != OrderStatus::Ready {
            return Err(WorkflowError::OrderNotReady {
                order_id: order_id.to_owned(),
                status: bundle.order.status,
            });
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
            return Err(WorkflowError::CsrNamesDiffer {
                csr: have,
                order: want,
            });
        }
        // Signed, then stored with the order's move in one commit, guarded
        // on `ready`: a finalize racing this one signs too, but only the
        // first is stored; the other is told where the order is now.
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let csr_der = checked.csr.der().to_vec();
        let result = self
            .sign_checked(
                &bundle.order,
                &checked,
                Transition::IssueReady,
                Some(csr_der.clone()),
            )
            .await;
        let signed = match self.settle(&bundle.order, result).await {
            Err(WorkflowError::Store(StoreError::Conflict(Conflict::OrderMovedOn(..)))) => {
                return Err(WorkflowError::OrderNotReady {
                    order_id: order_id.to_owned(),
                    status: self.load(order_id).await?.order.status,
                });
            }
            other => other?,
        };
        // The answer needs no read: the issuance changed only the order
        // row, in ways known here (its `updated_at` may be the database's
        // within the second).
        let update = OrderUpdate {
            csr_der: Some(csr_der),
            ..OrderUpdate::default()
        };
        bundle.order = bundle
            .order
            .moved(Transition::IssueReady, &update, now)
            .completed(&signed.certificate.serial.to_hex(), now);
        Ok(bundle)
    }

    /// Issues a `ready` REST DV order (its CSR stored with it) in one
    /// commit, as the request that proved its last name finishes.
    pub(super) async fn issue_ready(&self, order: &OrderRecord) {
        let result = self.sign_order(order, Transition::IssueReady).await;
        let _ = self.settle(order, result).await;
    }

    /// The worker's way with a `ready` DV order nobody issued: claimed
    /// first (`processing`), so an issuance that keeps killing its process
    /// is taken over a bounded number of times, then issued.
    pub(super) async fn claim_and_issue(&self, order_id: &str) {
        let claimed = self
            .move_order(
                order_id,
                Transition::ClaimIssuance,
                &OrderUpdate::default(),
                "system",
                serde_json::json!({}),
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
    pub(super) async fn issue_claimed(&self, order: &OrderRecord) -> Result<Signed, WorkflowError> {
        let result = self.sign_order(order, Transition::Issue).await;
        self.settle(order, result).await
    }

    /// What becomes of an order (`ready` or `processing`, as it was when
    /// signing began) after its signing `result`: a refusal makes it
    /// `invalid` with the reason; a database failure leaves it where it
    /// was, for a retry (ACME finalize) or the worker.
    async fn settle(
        &self,
        order: &OrderRecord,
        result: Result<Signed, WorkflowError>,
    ) -> Result<Signed, WorkflowError> {
        let error = match &result {
            Ok(_) => return result,
            Err(WorkflowError::Store(StoreError::Conflict(why @ Conflict::OrderMovedOn(..)))) => {
                tracing::info!(order = %order.id, %why, "another request or instance finished this order");
                return result;
            }
            Err(WorkflowError::Store(e)) => {
                tracing::warn!(order = %order.id, status = %order.status, error = %e, "recording an issuance failed; the order stays as it was, to be retried");
                return result;
            }
            Err(WorkflowError::Csr(e)) => Failure::new(e.acme_code(), e.to_string()),
            Err(WorkflowError::Policy(e)) => Failure::new(e.acme_code(), e.to_string()),
            Err(e) => {
                tracing::error!(order = %order.id, error = %e, "issuing an order failed");
                Failure::new(
                    AcmeError::ServerInternal,
                    "issuing the certificate failed; the error has been logged",
                )
            }
        };
        let update = OrderUpdate {
            error: Some(error),
            ..OrderUpdate::default()
        };
        if let Err(e) = self
            .move_order(
                &order.id,
                Transition::Fail(order.status),
                &update,
                "system",
                serde_json::json!({}),
            )
            .await
        {
            tracing::warn!(order = %order.id, error = %e, "marking an order invalid failed");
        }
        result
    }

    /// Signs `order` with its stored CSR and stores the certificate with
    /// the order's move to `valid` by `transition`.
    pub(super) async fn sign_order(
        &self,
        order: &OrderRecord,
        transition: Transition,
    ) -> Result<Signed, WorkflowError> {
        let csr_der = order.csr_der.as_deref().ok_or_else(|| {
            WorkflowError::Store(StoreError::Corrupt(format!(
                "order {} has no CSR",
                order.id
            )))
        })?;
        let checked = self.authority.intake(csr_der).await?;
        self.sign_checked(order, &checked, transition, None).await
    }

    /// Signs `order` with its CSR, already through intake, and stores the
    /// certificate with the order's move by `transition` (and `csr_der`
    /// kept with the order).
    async fn sign_checked(
        &self,
        order: &OrderRecord,
        checked: &CheckedCsr,
        transition: Transition,
        csr_der: Option<Vec<u8>>,
    ) -> Result<Signed, WorkflowError> {
        let validity_days = self
            .authority
            .policy()
            .validity_days(order.validity_days.map(|d| d as u32))?;
        // The order's profile by name; its key types are checked here, where
        // an ACME order first has a key.
        let policy = self.authority.policy();
        let spec = policy.profile(&order.profile)?;
        policy.check_profile_key(spec, checked.csr.key())?;
        let organization = match order.validation {
            Validation::Ov => order.organization.clone(),
            Validation::Dv => None,
        };
        let subject = Subject { organization };
        let actor = account_actor(&order.account_id);
        let mut request = checked.issue_request(
            &subject,
            spec,
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
                    transition,
                    csr_der,
                    at: OffsetDateTime::now_utc().unix_timestamp(),
                }),
                Vec::new(),
            )
            .await
    }
}
