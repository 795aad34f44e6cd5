//! The audit log, filtered and paged.

use super::*;

/// An audit row.
pub struct AuditRow {
    /// Sequence number.
    pub seq: i64,
    /// When.
    pub at: When,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// To what.
    pub subject: String,
    /// Details (JSON).
    pub details: String,
}

#[derive(Template)]
#[template(path = "admin/audit.html")]
pub(super) struct AuditPage {
    chrome: Chrome,
    actor: String,
    action: String,
    subject: String,
    rows: Vec<AuditRow>,
    next: Option<i64>,
}

pub(super) async fn audit(
    State(state): State<Arc<AppState>>,
    who: Admin,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Page {
    let get = |k: &str| {
        q.get(k)
            .map(|v| v.trim().chars().take(200).collect::<String>())
            .filter(|v| !v.is_empty())
    };
    let query = AuditQuery {
        actor: get("actor"),
        action: get("action"),
        subject: get("subject"),
        before: q.get("before").and_then(|b| b.parse().ok()),
        limit: PAGE,
    };
    let records = state.authority.reads().audit_search(&query).await?;
    let next = (records.len() as i64 == PAGE)
        .then(|| records.last().map(|r| r.seq))
        .flatten();
    let page = render(&AuditPage {
        chrome: chrome(&who, &headers, "audit"),
        actor: query.actor.unwrap_or_default(),
        action: query.action.unwrap_or_default(),
        subject: query.subject.unwrap_or_default(),
        rows: records
            .into_iter()
            .map(|r| AuditRow {
                seq: r.seq,
                at: when(r.at),
                actor: r.actor,
                action: r.action,
                subject: r.subject,
                details: r.details,
            })
            .collect(),
        next,
    });
    Ok(with_flash_cleared(&headers, page))
}
