//! Issuance: ACME finalize, claiming a ready order, signing the order's CSR and storing the certificate with the order's completion.

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
        let mut bundle = self.get_acme(caller, acme_account_id, order_id).await?;
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
        let update = OrderUpdate {
            csr_der: Some(checked.csr.der().to_vec()),
            ..OrderUpdate::default()
        };
        let moved = self
            .move_order(
                order_id,
                Transition::ClaimIssuance,
                &update,
                &caller.actor,
                serde_json::json!({}),
            )
            .await?;
        if !moved {
            // Another request moved it first: say where it is now.
            return Err(WorkflowError::OrderNotReady {
                order_id: order_id.to_owned(),
                status: self.load(order_id).await?.order.status,
            });
        }
        // The claim and the issuance each changed only the order row, in
        // ways known here: the answer needs no read (its `updated_at` may
        // be the database's within the second).
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let order = bundle.order.moved(Transition::ClaimIssuance, &update, now);
        let signed = self.issue_claimed_with(&order, checked).await?;
        bundle.order = order.completed(&signed.certificate.serial.to_hex(), now);
        Ok(bundle)
    }

    /// Takes a `ready` DV order to `processing` and issues it.
    pub(super) async fn issue_ready(&self, order_id: &str) {
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
        let result = self.sign_order(order).await;
        self.settle_claimed(order, result).await
    }

    /// [`Self::issue_claimed`] for a CSR that passed intake just now.
    async fn issue_claimed_with(
        &self,
        order: &OrderRecord,
        checked: CheckedCsr,
    ) -> Result<Signed, WorkflowError> {
        let result = self.sign_checked(order, &checked).await;
        self.settle_claimed(order, result).await
    }

    /// What becomes of a claimed order after its signing `result`.
    async fn settle_claimed(
        &self,
        order: &OrderRecord,
        result: Result<Signed, WorkflowError>,
    ) -> Result<Signed, WorkflowError> {
        let error = match &result {
            Ok(_) => return result,
            Err(WorkflowError::Store(StoreError::Conflict(
                why @ Conflict::OrderNotProcessing(_),
            ))) => {
                tracing::info!(order = %order.id, %why, "another instance finished this order");
                return result;
            }
            Err(WorkflowError::Store(e)) => {
                tracing::warn!(order = %order.id, error = %e, "recording an issuance failed; the worker will resume it");
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
                Transition::Fail(OrderStatus::Processing),
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

    pub(super) async fn sign_order(&self, order: &OrderRecord) -> Result<Signed, WorkflowError> {
        let csr_der = order.csr_der.as_deref().ok_or_else(|| {
            WorkflowError::Store(StoreError::Corrupt(format!(
                "order {} has no CSR",
                order.id
            )))
        })?;
        let checked = self.authority.intake(csr_der).await?;
        self.sign_checked(order, &checked).await
    }

    /// Signs `order` (claimed) with its CSR, already through intake.
    async fn sign_checked(
        &self,
        order: &OrderRecord,
        checked: &CheckedCsr,
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
                }),
                Vec::new(),
            )
            .await
    }
}
