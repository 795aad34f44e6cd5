//! The overview page: orders by status, issuance per day, CRL health.

use super::*;

/// One bar of the issuance chart.
pub struct Bar {
    /// Day label (`11-24`).
    pub label: String,
    /// Certificates that day.
    pub count: i64,
    /// x of the bar (SVG units).
    pub x: i64,
    /// Height (SVG units, of 100).
    pub height: i64,
}

/// One CRL line.
pub struct CrlLine {
    /// File name.
    pub file: String,
    /// Number.
    pub number: i64,
    /// Entries.
    pub entries: i64,
    /// thisUpdate.
    pub this_update: When,
    /// nextUpdate.
    pub next_update: When,
}

#[derive(Template)]
#[template(path = "admin/overview.html")]
pub(super) struct OverviewPage {
    chrome: Chrome,
    orders: Vec<(OrderStatus, i64)>,
    pending: i64,
    issued_recently: i64,
    expiring_soon: i64,
    certificates: i64,
    revoked: i64,
    bars: Vec<Bar>,
    max_per_day: i64,
    crls: Vec<CrlLine>,
}

pub(super) fn crl_lines(state: &AppState) -> Vec<CrlLine> {
    state
        .crls
        .all_served()
        .into_iter()
        .map(|c| CrlLine {
            file: c.kind.file_name(&c.issuer_id),
            number: c.number,
            entries: c.entries,
            this_update: when(c.this_update),
            next_update: when(c.next_update),
        })
        .collect()
}

pub(super) async fn overview(
    State(state): State<Arc<AppState>>,
    who: Admin,
    headers: HeaderMap,
) -> Page {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let o = state.authority.reads().overview(now).await?;
    let today = now / 86_400;
    let per_day: HashMap<i64, i64> = o.issued_per_day.iter().copied().collect();
    let max_per_day = per_day.values().copied().max().unwrap_or(0).max(1);
    let bars = (0..30)
        .map(|i| {
            let day = today - 29 + i;
            let count = per_day.get(&day).copied().unwrap_or(0);
            let label = time::OffsetDateTime::from_unix_timestamp(day * 86_400)
                .map(|t| format!("{:02}-{:02}", u8::from(t.month()), t.day()))
                .unwrap_or_default();
            Bar {
                label,
                count,
                x: i * 10,
                height: count * 100 / max_per_day,
            }
        })
        .collect();
    let pending = o
        .orders_by_status
        .iter()
        .find(|(s, _)| *s == OrderStatus::AwaitingApproval)
        .map(|(_, n)| *n)
        .unwrap_or(0);
    let page = render(&OverviewPage {
        chrome: chrome(&who, &headers, "overview"),
        orders: o.orders_by_status,
        pending,
        issued_recently: o.issued_recently,
        expiring_soon: o.expiring_soon,
        certificates: o.certificates,
        revoked: o.revoked,
        bars,
        max_per_day,
        crls: crl_lines(&state),
    });
    Ok(with_flash_cleared(&headers, page))
}
