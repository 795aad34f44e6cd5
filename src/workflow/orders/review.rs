//! OV review: approve (with the vetted organisation and a note) and reject, never by the order's own account.

use super::*;

impl Orders {
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
        let vetted = organization
            .clone()
            .or_else(|| bundle.order.organization.clone());
        let update = OrderUpdate {
            organization,
            approval_reason: reason.map(str::to_owned),
            ..OrderUpdate::default()
        };
        let details = serde_json::json!({ "organization": vetted, "reason": reason });
        self.decide(caller, order_id, Transition::Approve, &update, details)
            .await?;
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
        let update = OrderUpdate {
            rejection_reason: Some(reason.to_owned()),
            ..OrderUpdate::default()
        };
        let details = serde_json::json!({ "reason": reason });
        self.decide(caller, order_id, Transition::Reject, &update, details)
            .await?;
        self.load(order_id).await
    }

    /// Records a reviewer's decision (`Approve` or `Reject`); another
    /// decision made meanwhile is a clash, not a second record.
    async fn decide(
        &self,
        caller: &Caller,
        order_id: &str,
        decision: Transition,
        update: &OrderUpdate,
        details: serde_json::Value,
    ) -> Result<(), WorkflowError> {
        if self
            .move_order(order_id, decision, update, &caller.actor, details)
            .await?
        {
            Ok(())
        } else {
            Err(changed_meanwhile(order_id))
        }
    }

    /// The order, if `caller` may review it and it awaits approval.
    pub(super) async fn reviewable(
        &self,
        caller: &Caller,
        order_id: &str,
        verb: &'static str,
    ) -> Result<OrderBundle, WorkflowError> {
        if caller.role == Role::Requester {
            return Err(NotAllowed::NotReviewer(verb).into());
        }
        let bundle = self.load(order_id).await?;
        if bundle.order.account_id == caller.account_id {
            return Err(NotAllowed::OwnOrder(verb).into());
        }
        let bundle = self
            .confirm_status(bundle, OrderStatus::AwaitingApproval)
            .await?;
        if bundle.order.status != OrderStatus::AwaitingApproval {
            return Err(Clash::NotAwaitingApproval {
                order_id: order_id.to_owned(),
                status: bundle.order.status,
                verb,
            }
            .into());
        }
        Ok(bundle)
    }
}
