//! `hallmark status`: what an operator checks first — the issuers and how
//! long they have, the certificates and orders by state, whether the CRLs
//! are fresh, the database and the audit log — with the problems named, so
//! a monitoring script can run it and alert on a non-zero exit.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Config;
use crate::store::{IssuerKind, Store};
use crate::workflow::crl::CrlKind;
use crate::workflow::rfc3339;

/// An issuer with fewer days than this left is a problem: rotate it.
pub const ISSUER_WARN_DAYS: i64 = 30;

/// Everything `hallmark status` reports.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The hallmark version.
    pub version: &'static str,
    /// The data directory.
    pub data_dir: String,
    /// The database.
    pub database: Database,
    /// The CA certificates the store knows, root first.
    pub issuers: Vec<IssuerStatus>,
    /// Certificate counts.
    pub certificates: Counts,
    /// Orders by state.
    pub orders: BTreeMap<String, i64>,
    /// The newest CRL of every scope.
    pub crls: Vec<CrlStatus>,
    /// The audit log's head.
    pub audit: Audit,
    /// What needs an operator, one sentence each; empty when all is well.
    pub problems: Vec<String>,
}

/// The database.
#[derive(Debug, Serialize)]
pub struct Database {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// Its URL, password hidden.
    pub url: String,
}

/// One CA certificate.
#[derive(Debug, Serialize)]
pub struct IssuerStatus {
    /// `root` or `int-…`.
    pub id: String,
    /// `root`, `intermediate` (the one that issues) or `retired` (a
    /// rotated intermediate or an imported CA: CRLs and OCSP only).
    pub kind: &'static str,
    /// For a retired issuer: until when it answers for its certificates
    /// (the last one's notAfter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serves_until: Option<String>,
    /// Its subject.
    pub subject: String,
    /// When it expires.
    pub not_after: String,
    /// Whole days left (negative once expired).
    pub days_left: i64,
}

/// Certificate counts.
#[derive(Debug, Serialize)]
pub struct Counts {
    /// Every certificate on record.
    pub total: i64,
    /// Of them, revoked.
    pub revoked: i64,
    /// Unrevoked, expiring within 30 days.
    pub expiring_within_30_days: i64,
    /// Issued in the last 24 hours.
    pub issued_last_24_hours: i64,
}

/// One published CRL.
#[derive(Debug, Serialize)]
pub struct CrlStatus {
    /// The file it is served as.
    pub file: String,
    /// Its CRL number.
    pub number: i64,
    /// Entries.
    pub entries: i64,
    /// thisUpdate.
    pub this_update: String,
    /// nextUpdate.
    pub next_update: String,
    /// Whether nextUpdate is still ahead.
    pub fresh: bool,
}

/// The audit log.
#[derive(Debug, Serialize)]
pub struct Audit {
    /// The last sequence number (the number of records).
    pub records: i64,
    /// The last record's hash (hex).
    pub head: String,
}

/// Gathers the status of the CA `config` describes from its `store` at
/// `now` (Unix seconds).
pub async fn gather(config: &Config, store: &dyn Store, now: i64) -> anyhow::Result<Status> {
    let mut problems = Vec::new();
    let mut issuers: Vec<IssuerStatus> = Vec::new();
    // Retired issuers whose certificates have all expired publish nothing
    // any more: neither their end nor their CRLs are a problem.
    let mut done_with = Vec::new();
    for i in store.issuers().await? {
        let retired = i.kind == IssuerKind::Intermediate && !i.active;
        let serves_until = if retired {
            let until = store.issuer_last_expiry(&i.id).await?.unwrap_or(0);
            if until < now {
                done_with.push(i.id.clone());
            }
            Some(rfc3339(until))
        } else {
            None
        };
        issuers.push(IssuerStatus {
            kind: match i.kind {
                IssuerKind::Root => "root",
                IssuerKind::Intermediate if retired => "retired",
                IssuerKind::Intermediate => "intermediate",
            },
            subject: i.subject,
            not_after: rfc3339(i.not_after),
            days_left: (i.not_after - now).div_euclid(86_400),
            serves_until,
            id: i.id,
        });
    }
    issuers.sort_by_key(|i| {
        (
            match i.kind {
                "root" => 0,
                "intermediate" => 1,
                _ => 2,
            },
            i.id.clone(),
        )
    });
    if issuers.is_empty() {
        problems
            .push("the database knows no CA yet: run `hallmark init` or `hallmark serve`".into());
    }
    for i in issuers.iter().filter(|i| i.kind != "retired") {
        if i.days_left < 0 {
            problems.push(format!("{} expired on {}", i.id, i.not_after));
        } else if i.days_left < ISSUER_WARN_DAYS {
            problems.push(format!(
                "{} expires in {} days ({}); make its successor now",
                i.id, i.days_left, i.not_after
            ));
        }
    }

    let overview = store.overview(now).await?;
    let orders = overview
        .orders_by_status
        .iter()
        .map(|(s, n)| (s.as_str().to_owned(), *n))
        .collect();

    let mut heads = store.crl_heads().await?;
    heads.sort_by_key(|h| (h.issuer_id.clone(), h.delta, h.partition));
    let crls: Vec<CrlStatus> = heads
        .iter()
        .map(|h| CrlStatus {
            file: CrlKind::of(h).file_name(&h.issuer_id),
            number: h.number,
            entries: h.entries,
            this_update: rfc3339(h.this_update),
            next_update: rfc3339(h.next_update),
            fresh: h.next_update > now,
        })
        .collect();
    let finished = |file: &str| {
        done_with.iter().any(|id| {
            file.strip_prefix(id.as_str())
                .is_some_and(|r| r.starts_with(['.', '-']))
        })
    };
    for c in crls.iter().filter(|c| !c.fresh && !finished(&c.file)) {
        problems.push(format!(
            "{} is past its nextUpdate ({}): relying parties treat it as stale; is any instance running?",
            c.file, c.next_update
        ));
    }
    for h in heads
        .iter()
        .filter(|h| h.issuer_id == "root" && h.next_update > now)
    {
        if h.next_update - now < ISSUER_WARN_DAYS * 86_400 {
            problems.push(format!(
                "root.crl runs out on {}: sign the next with `hallmark crl generate --root` (or `hallmark root crl` where the root is kept, then `hallmark crl import`)",
                rfc3339(h.next_update)
            ));
        }
    }
    for i in issuers.iter().filter(|i| !done_with.contains(&i.id)) {
        let complete = format!("{}.crl", i.id);
        if !crls.iter().any(|c| c.file == complete) {
            let how = if i.kind == "root" {
                "`hallmark crl generate --root`, or `hallmark crl import` from the offline root"
            } else {
                "`hallmark crl generate`, or start `hallmark serve`"
            };
            problems.push(format!("no CRL has been published for {}: run {how}", i.id));
        }
    }

    let (seq, head) = store.audit_head().await?;
    Ok(Status {
        version: env!("CARGO_PKG_VERSION"),
        data_dir: config.data_dir.display().to_string(),
        database: Database {
            backend: store.backend(),
            url: crate::store::redact_url(&config.database_url),
        },
        issuers,
        certificates: Counts {
            total: overview.certificates,
            revoked: overview.revoked,
            expiring_within_30_days: overview.expiring_soon,
            issued_last_24_hours: overview.issued_recently,
        },
        orders,
        crls,
        audit: Audit {
            records: seq,
            head: hex::encode(head),
        },
        problems,
    })
}

impl Status {
    /// The status as an operator reads it.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "hallmark {} · data {} · database {} ({})",
            self.version, self.data_dir, self.database.backend, self.database.url
        );
        let _ = writeln!(out, "issuers:");
        for i in &self.issuers {
            let _ = writeln!(
                out,
                "  {:<14} {:<12} until {} ({} days)  {}",
                i.id, i.kind, i.not_after, i.days_left, i.subject
            );
            if let Some(until) = &i.serves_until {
                let _ = writeln!(
                    out,
                    "  {:<14} {:<12} no longer issues; CRLs and OCSP until {until}",
                    "", ""
                );
            }
        }
        let c = &self.certificates;
        let _ = writeln!(
            out,
            "certificates: {} ({} revoked), {} expiring within 30 days, {} issued in the last 24 hours",
            c.total, c.revoked, c.expiring_within_30_days, c.issued_last_24_hours
        );
        let orders: Vec<String> = self
            .orders
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "orders: {}",
            if orders.is_empty() {
                "none".into()
            } else {
                orders.join(", ")
            }
        );
        let _ = writeln!(out, "CRLs:");
        for c in &self.crls {
            let _ = writeln!(
                out,
                "  {:<24} number {}, {} entries, next update {}{}",
                c.file,
                c.number,
                c.entries,
                c.next_update,
                if c.fresh { "" } else { "  STALE" }
            );
        }
        let _ = writeln!(
            out,
            "audit log: {} records, head {}",
            self.audit.records, self.audit.head
        );
        if self.problems.is_empty() {
            let _ = writeln!(out, "no problems");
        } else {
            let _ = writeln!(out, "problems:");
            for p in &self.problems {
                let _ = writeln!(out, "  - {p}");
            }
        }
        out
    }
}
