//! The request queue, a request's detail, approve and reject.

use super::*;
use crate::store::{AuthorizationStatus, ChallengeKind, ChallengeStatus};

/// An order row.
pub struct OrderRow {
    /// Id.
    pub id: String,
    /// Status.
    pub status: String,
    /// DV or OV.
    pub validation: String,
    /// Account id.
    pub account: String,
    /// Names from the CSR.
    pub names: String,
    /// Organisation name (OV).
    pub organization: String,
    /// Created.
    pub created: When,
}

#[derive(Template)]
#[template(path = "admin/requests.html")]
pub(super) struct RequestsPage {
    chrome: Chrome,
    status: String,
    statuses: Vec<&'static str>,
    rows: Vec<OrderRow>,
    next: Option<String>,
}

pub(super) fn csr_names(der: Option<&[u8]>) -> String {
    // Orders hold only CSRs that passed intake, so parsing verifies again.
    der.and_then(|d| Csr::parse(d).ok())
        .map(|c| {
            c.identifiers()
                .iter()
                .map(|i| i.value())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

pub(super) fn parse_before(b: Option<&String>) -> Option<(i64, String)> {
    b.and_then(|b| b.split_once('.'))
        .and_then(|(at, id)| Some((at.parse().ok()?, id.to_owned())))
}

pub(super) async fn requests(
    State(state): State<Arc<AppState>>,
    who: Admin,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Page {
    let status_name = q
        .get("status")
        .cloned()
        .unwrap_or_else(|| "awaiting_approval".into());
    let status = status_name.parse::<OrderStatus>().ok();
    let orders = state
        .authority
        .reads()
        .orders(&OrderQuery {
            account_id: None,
            status,
            before: parse_before(q.get("before")),
            limit: PAGE,
        })
        .await?;
    let next = (orders.len() as i64 == PAGE)
        .then(|| orders.last().map(|o| format!("{}.{}", o.created_at, o.id)))
        .flatten();
    let rows = orders
        .into_iter()
        .map(|o| OrderRow {
            names: csr_names(o.csr_der.as_deref()),
            organization: o.organization.map(|org| org.name).unwrap_or_default(),
            id: o.id,
            status: o.status.as_str().into(),
            validation: o.validation.as_str().to_uppercase(),
            account: o.account_id,
            created: when(o.created_at),
        })
        .collect();
    let mut statuses = vec!["all"];
    statuses.extend(OrderStatus::ALL.iter().map(|s| s.as_str()));
    let page = render(&RequestsPage {
        chrome: chrome(&who, &headers, "requests"),
        status: if status.is_some() {
            status_name
        } else {
            "all".into()
        },
        statuses,
        rows,
        next,
    });
    Ok(with_flash_cleared(&headers, page))
}

/// One identifier's validation, as the detail page shows it.
pub struct AuthzLine {
    /// The identifier.
    pub identifier: String,
    /// Its status.
    pub status: AuthorizationStatus,
    /// Each challenge: type, status, error.
    pub challenges: Vec<(ChallengeKind, ChallengeStatus, String)>,
}

#[derive(Template)]
#[template(path = "admin/request.html")]
pub(super) struct RequestPage {
    chrome: Chrome,
    id: String,
    status: String,
    validation: String,
    account: String,
    account_name: String,
    created: When,
    csr_subject: String,
    csr_names: Vec<String>,
    csr_key: String,
    csr_signature: String,
    profile: String,
    /// What the profile makes (empty if it is no longer configured).
    profile_description: String,
    organization: Vec<(&'static str, String)>,
    authorizations: Vec<AuthzLine>,
    error: String,
    rejection_reason: String,
    approval_reason: String,
    certificate: Option<String>,
    awaiting: bool,
}

pub(super) async fn request_detail(
    State(state): State<Arc<AppState>>,
    who: Admin,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Page {
    let store = state.authority.reads();
    let bundle = match store.order(&id).await {
        Err(StoreError::NotFound) => return Err(PageError::NotFound("such request")),
        found => found?,
    };
    let o = &bundle.order;
    let csr = o.csr_der.as_deref().and_then(|d| Csr::parse(d).ok());
    let organization = o
        .organization
        .iter()
        .flat_map(|org| {
            [
                ("Organisation", Some(&org.name)),
                ("Locality", org.locality.as_ref()),
                ("State", org.state.as_ref()),
                ("Country", org.country.as_ref()),
            ]
        })
        .filter_map(|(label, value)| Some((label, value?.clone())))
        .collect();
    let account_name = store
        .accounts()
        .await
        .ok()
        .and_then(|all| all.into_iter().find(|a| a.id == o.account_id))
        .map(|a| a.name)
        .unwrap_or_default();
    let page = render(&RequestPage {
        chrome: chrome(&who, &headers, "requests"),
        id: o.id.clone(),
        status: o.status.as_str().into(),
        validation: o.validation.as_str().to_uppercase(),
        account: o.account_id.clone(),
        account_name,
        created: when(o.created_at),
        csr_subject: csr
            .as_ref()
            .map(|c| c.subject().to_owned())
            .unwrap_or_default(),
        csr_names: csr
            .as_ref()
            .map(|c| c.identifiers().iter().map(|i| i.value()).collect())
            .unwrap_or_default(),
        csr_key: csr.as_ref().map(|c| c.key().describe()).unwrap_or_default(),
        csr_signature: csr
            .as_ref()
            .map(|c| c.signature_algorithm().to_owned())
            .unwrap_or_default(),
        profile: o.profile.clone(),
        profile_description: state
            .authority
            .policy()
            .profile(&o.profile)
            .map(|p| p.description.clone())
            .unwrap_or_default(),
        organization,
        authorizations: bundle
            .authorizations
            .iter()
            .map(|a| AuthzLine {
                identifier: a.authorization.identifier_value.clone(),
                status: a.authorization.status,
                challenges: a
                    .challenges
                    .iter()
                    .map(|c| {
                        (
                            c.kind,
                            c.status,
                            c.error
                                .as_ref()
                                .map(|e| e.detail.clone())
                                .unwrap_or_default(),
                        )
                    })
                    .collect(),
            })
            .collect(),
        error: o
            .error
            .as_ref()
            .map(|e| e.detail.clone())
            .unwrap_or_default(),
        rejection_reason: o.rejection_reason.clone().unwrap_or_default(),
        approval_reason: o.approval_reason.clone().unwrap_or_default(),
        certificate: o.certificate_serial.clone(),
        awaiting: o.status == OrderStatus::AwaitingApproval,
    });
    Ok(with_flash_cleared(&headers, page))
}

/// The dashboard user as a caller of the workflow: the account they
/// belong to if they are linked to one (so they never approve that
/// account's orders and revoke as it may), else themselves. The same
/// rules then hold as for API keys of the same role.
pub(super) fn reviewer(who: &Admin) -> Caller {
    Caller {
        account_id: who
            .0
            .user
            .account_id
            .clone()
            .unwrap_or_else(|| who.0.actor()),
        name: who.0.user.username.clone(),
        role: if who.0.role >= UserRole::Admin {
            Role::Admin
        } else {
            Role::Reviewer
        },
        actor: who.0.actor(),
    }
}

/// Back to `to` with a flash saying why the workflow refused (after
/// `doing`, e.g. "Not approved"); a store or CA failure is an error page.
pub(super) fn refused(to: &str, doing: &str, e: WorkflowError) -> Page {
    match e {
        WorkflowError::Store(e) => Err(e.into()),
        WorkflowError::Ca(e) => Err(PageError::internal(e)),
        other => Ok(redirect_with(to, &format!("{doing}: {other}"))),
    }
}

pub(super) async fn approve(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Act { who, form, .. }: Act<Reviewers, ReviewForm>,
) -> Page {
    let back = format!("/admin/requests/{id}");
    let reason = form.reason.as_deref();
    match state
        .orders
        .approve(&reviewer(&who), &id, None, reason)
        .await
    {
        Ok(b) => Ok(redirect_with(
            &back,
            &format!(
                "Approved. Certificate {} was issued.",
                b.order.certificate_serial.unwrap_or_default()
            ),
        )),
        Err(e) => refused(&back, "Not approved", e),
    }
}

pub(super) async fn reject(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Act { who, form, .. }: Act<Reviewers, ReviewForm>,
) -> Page {
    let back = format!("/admin/requests/{id}");
    let reason = form.reason.as_deref().unwrap_or("");
    match state.orders.reject(&reviewer(&who), &id, reason).await {
        Ok(_) => Ok(redirect_with(
            &back,
            "Rejected. The requester sees your reason.",
        )),
        Err(e) => refused(&back, "Not rejected", e),
    }
}

/// The approve and reject forms.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct ReviewForm {
    /// Why: kept on the order and in the audit record (required to reject).
    reason: Option<String>,
}
