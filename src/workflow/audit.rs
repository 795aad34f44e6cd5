//! Verifying the hash-chained audit log (`hallmark audit verify`).

use crate::store::{audit_hash, Store, StoreError};

/// Records read per page while verifying.
const PAGE: i64 = 1000;

/// Where the audit chain is broken.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A sequence number is missing (a record was removed).
    #[error("audit record {expected} is missing (found {found} next)")]
    Gap {
        /// Expected seq.
        expected: i64,
        /// Found seq.
        found: i64,
    },
    /// A record does not point at the hash of the one before.
    #[error("audit record {0} does not follow from the record before it")]
    BrokenLink(i64),
    /// A record's content does not match its hash (it was edited).
    #[error("audit record {0} was altered: its hash does not match its content")]
    Altered(i64),
    /// Records after the last one found were removed.
    #[error("the audit log ends at record {found} but its head says {head}: records were removed")]
    Truncated {
        /// Last record found.
        found: i64,
        /// Last record according to the head.
        head: i64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The outcome of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSummary {
    /// Records checked.
    pub records: i64,
    /// Hash of the last record (hex).
    pub head: String,
}

/// Reads the whole audit log in pages and checks every link of the chain.
pub async fn verify(store: &dyn Store) -> Result<AuditSummary, AuditError> {
    // Read the head first: records appended while verifying only extend it.
    let (head_seq, head_hash) = store.audit_head().await?;
    let mut prev = vec![0u8; 32];
    let mut last = 0i64;
    loop {
        let page = store.audit_page(last, PAGE).await?;
        if page.is_empty() {
            break;
        }
        for r in page {
            if r.seq != last + 1 {
                return Err(AuditError::Gap {
                    expected: last + 1,
                    found: r.seq,
                });
            }
            if r.prev_hash != prev {
                return Err(AuditError::BrokenLink(r.seq));
            }
            let h = audit_hash(
                &r.prev_hash,
                r.seq,
                r.at,
                &r.actor,
                &r.action,
                &r.subject,
                &r.details,
            );
            if h != r.hash {
                return Err(AuditError::Altered(r.seq));
            }
            prev = r.hash;
            last = r.seq;
        }
    }
    if last < head_seq {
        return Err(AuditError::Truncated {
            found: last,
            head: head_seq,
        });
    }
    if last == head_seq && head_seq > 0 && prev != head_hash {
        return Err(AuditError::Altered(last));
    }
    Ok(AuditSummary {
        records: last,
        head: hex::encode(prev),
    })
}
