//! Opening orders: REST orders from a CSR, ACME orders from identifiers, with their authorizations (reused or new, within the pending limit).

use super::*;

/// How long a CAA check holds for a reused validation.
pub const CAA_RECHECK_SECS: i64 = 8 * 3600;

impl Orders {
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
        let policy = self.authority.policy();
        let spec = policy.profile(request.profile.as_deref().unwrap_or("server"))?;
        policy.check_profile_key(spec, checked.csr.key())?;
        let validity_days = policy.validity_days_within(request.validity_days, spec.cap())?;
        let profile_name = spec.name.clone();
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
                OrderSource::Rest,
                request.validation,
            )
            .await?;
        let order_id = bundle.order.id.clone();
        let all_valid = bundle
            .authorizations
            .iter()
            .all(|a| a.challenges.is_empty());
        bundle.order.profile = profile_name.clone();
        bundle.order.validity_days = Some(i64::from(validity_days));
        bundle.order.csr_der = Some(checked.csr.der().to_vec());
        bundle.order.organization = organization;
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
                "profile": profile_name,
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
                                spec,
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
                events.extend(transition_event(
                    now,
                    &actor,
                    &order_id,
                    Transition::AwaitApproval,
                    serde_json::json!({}),
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
    pub(super) async fn new_bundle(
        &self,
        caller: &Caller,
        identifiers: &[Identifier],
        now: OffsetDateTime,
        expires_at: i64,
        source: OrderSource,
        validation: Validation,
    ) -> Result<OrderBundle, WorkflowError> {
        let at = now.unix_timestamp();
        let mut reuse_secs = i64::from(self.settings.reuse_days) * 86_400;
        if !self.validators.issuer_domains().is_empty() {
            // With CAA on, a name is reused only while its CAA check is
            // recent (as the Baseline Requirements ask of public CAs); an
            // older one is validated, and so CAA-checked, again.
            reuse_secs = reuse_secs.min(CAA_RECHECK_SECS);
        }
        // Time first, so ids sort by creation (pages of orders made in the
        // same second keep their order), then 96 random bits.
        let millis = now.unix_timestamp_nanos() / 1_000_000;
        let key = format!("{millis:012x}{}", random_token(12));
        let order_id = format!("ord_{key}");
        let store = self.authority.store();
        let mut authorizations = Vec::with_capacity(identifiers.len());
        for (i, identifier) in identifiers.iter().enumerate() {
            let kind = IdentifierKind::of(identifier);
            let value = identifier.value();
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
                    // dns-persist-01 needs issuer domain names to be named by.
                    .filter(|kind| {
                        **kind != ChallengeKind::DnsPersist01
                            || !self.validators.issuer_domains().is_empty()
                    })
                    .map(|kind| ChallengeRecord {
                        id: format!("chall_{key}_{i:03}_{}", challenge_letter(*kind)),
                        authorization_id: authz_id.clone(),
                        kind: *kind,
                        token: random_token(32),
                        status: ChallengeStatus::Pending,
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
                    identifier_type: kind,
                    wildcard: value.starts_with("*."),
                    identifier_value: value,
                    status: if reused.is_some() {
                        AuthorizationStatus::Valid
                    } else {
                        AuthorizationStatus::Pending
                    },
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
                validation,
                source,
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
        profile: &str,
    ) -> Result<OrderBundle, WorkflowError> {
        let spec = self.authority.policy().profile(profile)?.clone();
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
        let validity_days = self
            .authority
            .policy()
            .validity_days_within(requested_days, spec.cap())?;
        let expires_at = at + i64::from(self.settings.lifetime_hours) * 3600;
        let mut bundle = self
            .new_bundle(
                caller,
                &checked,
                now,
                expires_at,
                OrderSource::Acme,
                Validation::Dv,
            )
            .await?;
        bundle.order.validity_days = Some(i64::from(validity_days));
        bundle.order.not_after = not_after.map(OffsetDateTime::unix_timestamp);
        bundle.order.acme_account_id = Some(acme_account_id.to_owned());
        bundle.order.profile = spec.name.clone();
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
            details: serde_json::json!({"validation": "dv", "names": names, "source": "acme", "profile": spec.name}),
        }];
        if bundle.order.status == OrderStatus::Ready {
            events.extend(transition_event(
                now,
                &caller.actor,
                &bundle.order.id,
                Transition::Validated,
                serde_json::json!({}),
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
        opened_by(acme_account_id, self.get(caller, order_id).await?)
    }

    /// The order of a challenge a client answers (a challenge POST that is
    /// not POST-as-GET), if this ACME account opened it: a view kept here
    /// in which the order and the challenge are still `pending` is
    /// enough, even where other instances serve the same database, since
    /// nothing is answered from it. The validation's result is committed
    /// only while the challenge is still `processing`, or `pending` under
    /// a pending authorization and order, and the answer is read again
    /// or comes from that commit ([`Orders::respond_in`]); a stale view
    /// costs at most one more validation of the same challenge (whose
    /// result is recorded only if no other was). Any other
    /// order is read, as [`Orders::get_acme`] does.
    pub async fn acme_to_answer(
        &self,
        caller: &Caller,
        acme_account_id: &str,
        order_id: &str,
        challenge_id: &str,
    ) -> Result<OrderBundle, WorkflowError> {
        let pending = |v: &OrderBundle| {
            v.order.status == OrderStatus::Pending
                && v.authorizations
                    .iter()
                    .flat_map(|a| a.challenges.iter())
                    .any(|c| c.id == challenge_id && c.status == ChallengeStatus::Pending)
        };
        match self.seen_acme(caller, acme_account_id, order_id, pending) {
            Some(view) => Ok(view),
            None => self.get_acme(caller, acme_account_id, order_id).await,
        }
    }

    /// An authorization of an ACME order this ACME account opened (`None`
    /// if the order has no such authorization). One that is valid or
    /// invalid with no challenge `processing` never changes again (no
    /// challenge of a settled authorization can be claimed, and only a
    /// claimed one gets a result), so a view of it this instance wrote or
    /// read a moment ago answers, even where other instances serve the
    /// same database; any other is read with its order, as
    /// [`Orders::get_acme`] does.
    pub async fn acme_authorization(
        &self,
        caller: &Caller,
        acme_account_id: &str,
        order_id: &str,
        authorization_id: &str,
    ) -> Result<Option<AuthorizationBundle>, WorkflowError> {
        let find = |bundle: OrderBundle| {
            bundle
                .authorizations
                .into_iter()
                .find(|a| a.authorization.id == authorization_id)
        };
        let settled = |v: &OrderBundle| {
            v.authorizations.iter().any(|a| {
                a.authorization.id == authorization_id
                    && a.authorization.status != AuthorizationStatus::Pending
                    && a.challenges
                        .iter()
                        .all(|c| c.status != ChallengeStatus::Processing)
            })
        };
        let bundle = match self.seen_acme(caller, acme_account_id, order_id, settled) {
            Some(view) => view,
            None => self.get_acme(caller, acme_account_id, order_id).await?,
        };
        Ok(find(bundle))
    }
}
