//! CRL publishing: generation (entries streamed from the database into the
//! encoder, published under the store's lock with the next CRL number),
//! scheduling (within seconds of a revocation, debounced, and before
//! nextUpdate), and the served copies, which every instance refreshes from
//! the database — never from local disk — so all serve the newest.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::watch;

use super::{Authority, Clash, WorkflowError};
use crate::config::CrlSection;
use crate::pki::crl::{CrlBuilder, CrlEntry, CrlScope, CrlSpec, RevocationReason};
use crate::pki::{CaCertificate, KeySigner};
use crate::store::{AuditEvent, CrlMark, CrlRecord, NewCrl, RevokedScan};

/// How often each instance looks for newer CRLs in the database and checks
/// whether one is due.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Revocations at most this much older than a base CRL's thisUpdate are
/// repeated in its deltas, covering commits that were in flight while the
/// base was read and clock differences between instances.
pub const DELTA_OVERLAP_SECS: i64 = 300;

/// Which CRL of an issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CrlKind {
    /// Every revoked certificate of the issuer.
    Complete,
    /// Revocations since the complete CRL.
    Delta,
    /// One partition (1-based).
    Partition(u32),
}

impl CrlKind {
    /// The kind of a stored CRL.
    pub fn of(record: &CrlRecord) -> Self {
        Self::from_record(record.partition, record.delta)
    }

    fn from_record(partition: i64, delta: bool) -> Self {
        match (partition, delta) {
            (0, true) => CrlKind::Delta,
            (0, false) => CrlKind::Complete,
            (p, _) => CrlKind::Partition(p as u32),
        }
    }

    fn partition(self) -> i64 {
        match self {
            CrlKind::Partition(p) => i64::from(p),
            _ => 0,
        }
    }

    /// The file name it is served as (`<issuer>.crl`, `<issuer>-delta.crl`,
    /// `<issuer>-p<N>.crl`).
    pub fn file_name(self, issuer_id: &str) -> String {
        match self {
            CrlKind::Complete => format!("{issuer_id}.crl"),
            CrlKind::Delta => format!("{issuer_id}-delta.crl"),
            CrlKind::Partition(p) => format!("{issuer_id}-p{p}.crl"),
        }
    }
}

/// A CRL as served: pre-encoded, with its validators.
#[derive(Debug, Clone)]
pub struct ServedCrl {
    /// DER.
    pub der: Bytes,
    /// Its issuer.
    pub issuer_id: String,
    /// Which CRL.
    pub kind: CrlKind,
    /// CRL number.
    pub number: i64,
    /// thisUpdate (Unix seconds; also Last-Modified).
    pub this_update: i64,
    /// nextUpdate (Unix seconds).
    pub next_update: i64,
    /// Number of entries.
    pub entries: i64,
    /// Strong ETag (quoted).
    pub etag: String,
    /// The audit sequence number its entries were read at: it lists every
    /// revocation recorded at or before it.
    pub snapshot_seq: i64,
}

/// Publishes and serves the CRLs of the issuing intermediate (and the
/// root's, which only the operator can sign).
pub struct CrlPublisher {
    authority: Arc<Authority>,
    config: CrlSection,
    served: RwLock<HashMap<String, Arc<ServedCrl>>>,
    generating: tokio::sync::Mutex<()>,
}

/// What one generation did.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The CRL published, or the fresher one that made ours unnecessary
    /// (its `der` is empty: the DER is in `der`).
    pub record: CrlRecord,
    /// The DER, shared with the served copy.
    pub der: Bytes,
    /// Whether this call published it.
    pub published: bool,
    /// How long reading, encoding, signing and storing took.
    pub elapsed: Duration,
}

impl CrlPublisher {
    /// A publisher for `authority` with `[crl]` settings.
    pub fn new(authority: Arc<Authority>, config: CrlSection) -> Arc<Self> {
        Arc::new(CrlPublisher {
            authority,
            config,
            served: RwLock::new(HashMap::new()),
            generating: tokio::sync::Mutex::new(()),
        })
    }

    /// The `[crl]` settings.
    pub fn config(&self) -> &CrlSection {
        &self.config
    }

    /// The served copy of a CRL file (`int-….crl`, `root.crl`, …).
    pub fn served(&self, file: &str) -> Option<Arc<ServedCrl>> {
        self.served.read().ok()?.get(file).cloned()
    }

    /// Whether `file` is a name this publisher could serve (so an unknown
    /// name never costs a database query).
    pub fn could_serve(&self, file: &str) -> bool {
        let Some(stem) = file.strip_suffix(".crl") else {
            return false;
        };
        if stem == self.authority.root().id() {
            return true;
        }
        self.authority.issuers().any(|issuer| {
            let id = issuer.certificate().id();
            let (partitions, delta) = self.plan(id);
            match stem.strip_prefix(id) {
                Some("") => true,
                Some("-delta") => delta,
                // Only partitions certificates are spread over: any other
                // number is a 404 without a database read.
                Some(rest) => rest
                    .strip_prefix("-p")
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_some_and(|p| p >= 1 && p <= partitions),
                None => false,
            }
        })
    }

    /// How many partitions an issuer's certificates are spread over, and
    /// whether it publishes a delta: what this CA's intermediates (current
    /// and rotated) name in their certificates; one complete CRL for an
    /// imported CA.
    fn plan(&self, issuer_id: &str) -> (u32, bool) {
        let imported = self.authority.retired().iter().any(|r| {
            r.kind == super::Retirement::Imported && r.issuer.certificate().id() == issuer_id
        });
        if imported {
            (0, false)
        } else {
            (self.authority.crl_partitions(), self.config.delta)
        }
    }

    /// The issuers whose CRLs this instance publishes now: the current
    /// one, and each retired one until its last certificate expires.
    fn publishing(&self, now: i64) -> Vec<String> {
        let mut ids = vec![self.authority.issuer().certificate().id().to_owned()];
        ids.extend(
            self.authority
                .retired()
                .iter()
                .filter(|r| r.serves_until >= now)
                .map(|r| r.issuer.certificate().id().to_owned()),
        );
        ids
    }

    /// Every served CRL, by file name.
    pub fn all_served(&self) -> Vec<Arc<ServedCrl>> {
        let mut all: Vec<_> = self
            .served
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        all.sort_by(|a, b| (&a.issuer_id, a.kind).cmp(&(&b.issuer_id, b.kind)));
        all
    }

    /// Loads the newest CRLs from the database into the served copies
    /// (fetching the DER only of those that changed).
    pub async fn refresh(&self) -> Result<(), WorkflowError> {
        let store = self.authority.store();
        for head in store.crl_heads().await? {
            let kind = CrlKind::from_record(head.partition, head.delta);
            let file = kind.file_name(&head.issuer_id);
            let current = self.served(&file).map(|s| s.number);
            if current.is_some_and(|n| n >= head.number) {
                continue;
            }
            let der = store.crl_der(&head).await?;
            self.install(&head, Bytes::from(der));
        }
        Ok(())
    }

    fn install(&self, head: &CrlRecord, der: Bytes) {
        let kind = CrlKind::from_record(head.partition, head.delta);
        let file = kind.file_name(&head.issuer_id);
        let served = Arc::new(ServedCrl {
            der,
            issuer_id: head.issuer_id.clone(),
            kind,
            number: head.number,
            this_update: head.this_update,
            next_update: head.next_update,
            entries: head.entries,
            etag: format!("\"{}-{}\"", file.trim_end_matches(".crl"), head.number),
            snapshot_seq: head.snapshot_seq,
        });
        if let Ok(mut map) = self.served.write() {
            let newer = map.get(&file).is_none_or(|s| s.number < head.number);
            if newer {
                map.insert(file, served);
            }
        }
    }

    /// Every CRL the current intermediate publishes: the complete one,
    /// each partition, and the delta when `crl.delta` is on.
    pub fn every_kind(&self) -> Vec<CrlKind> {
        self.every_kind_of(self.authority.issuer().certificate().id())
    }

    /// Every CRL issuer `issuer_id` publishes.
    pub fn every_kind_of(&self, issuer_id: &str) -> Vec<CrlKind> {
        let (partitions, delta) = self.plan(issuer_id);
        let mut kinds = vec![CrlKind::Complete];
        kinds.extend((1..=partitions).map(CrlKind::Partition));
        if delta {
            kinds.push(CrlKind::Delta);
        }
        kinds
    }

    /// Generates and publishes every CRL of every publishing issuer now,
    /// audited as `actor`; stops at the first failure.
    pub async fn generate_every_by(&self, actor: &str) -> Result<Vec<Generated>, WorkflowError> {
        let mut done = Vec::new();
        for id in self.publishing(OffsetDateTime::now_utc().unix_timestamp()) {
            for kind in self.every_kind_of(&id) {
                done.push(self.generate_for(&id, kind, actor).await?);
            }
        }
        Ok(done)
    }

    /// Generates and publishes the CRLs a revocation of a certificate of
    /// `issuer_id` in `partition` changes (that partition, the complete
    /// CRL, the delta), audited as `actor`.
    pub async fn generate_after_revocation(
        &self,
        issuer_id: &str,
        partition: i64,
        actor: &str,
    ) -> Result<Vec<Generated>, WorkflowError> {
        let (_, delta) = self.plan(issuer_id);
        // The partition first: it is what the certificate names.
        let mut kinds = Vec::new();
        if let Ok(p @ 1..) = u32::try_from(partition) {
            kinds.push(CrlKind::Partition(p));
        }
        kinds.push(CrlKind::Complete);
        if delta {
            kinds.push(CrlKind::Delta);
        }
        let mut done = Vec::new();
        for kind in kinds {
            done.push(self.generate_for(issuer_id, kind, actor).await?);
        }
        Ok(done)
    }

    /// Generates and publishes one CRL of the issuing intermediate now (as
    /// the service itself, `system`, in the audit log).
    pub async fn generate(&self, kind: CrlKind) -> Result<Generated, WorkflowError> {
        self.generate_by(kind, "system").await
    }

    /// Like [`CrlPublisher::generate`], audited as `actor`.
    pub async fn generate_by(
        &self,
        kind: CrlKind,
        actor: &str,
    ) -> Result<Generated, WorkflowError> {
        let id = self.authority.issuer().certificate().id().to_owned();
        self.generate_for(&id, kind, actor).await
    }

    /// Generates and publishes one CRL of issuer `issuer_id` (current or
    /// retired) now, audited as `actor`.
    pub async fn generate_for(
        &self,
        issuer_id: &str,
        kind: CrlKind,
        actor: &str,
    ) -> Result<Generated, WorkflowError> {
        let _one_at_a_time = self.generating.lock().await;
        let issuer = self
            .authority
            .issuer_by_id(issuer_id)
            .ok_or_else(|| WorkflowError::from(Clash::CrlUnreadable(kind.file_name(issuer_id))))?;
        let (partitions, delta) = self.plan(issuer_id);
        let validity = match kind {
            CrlKind::Delta => {
                time::Duration::minutes(2 * i64::from(self.config.delta_every_minutes))
            }
            _ => time::Duration::hours(i64::from(self.config.validity_hours)),
        };
        let urls = issuer.urls();
        // The issuer's CRL lists only what no partition holds (and says
        // so in an issuingDistributionPoint), when configured that way.
        let only_unpartitioned = partitions > 0 && !self.config.complete_with_partitions;
        let (scope, revoked_since) = match kind {
            CrlKind::Complete if only_unpartitioned => (
                CrlScope::Partition {
                    url: urls.crl_partition(0),
                },
                None,
            ),
            CrlKind::Complete => (
                CrlScope::Complete {
                    delta_url: delta.then(|| urls.crl_delta()),
                },
                None,
            ),
            CrlKind::Partition(p) => (
                CrlScope::Partition {
                    url: urls.crl_partition(p),
                },
                None,
            ),
            CrlKind::Delta => {
                let base = self.current_base(issuer_id).await?;
                (
                    CrlScope::Delta {
                        base: base.number as u64,
                    },
                    Some(base.this_update - DELTA_OVERLAP_SECS),
                )
            }
        };
        let partition = match kind {
            CrlKind::Partition(p) => Some(i64::from(p)),
            CrlKind::Complete if only_unpartitioned => Some(0),
            _ => None,
        };
        let g = self
            .generate_with(
                issuer.certificate(),
                issuer.key().as_ref(),
                kind,
                scope,
                validity,
                partition,
                revoked_since,
                actor,
            )
            .await?;
        self.install(&g.record, g.der.clone());
        Ok(g)
    }

    /// Generates the root's CRL, signed with the root key (which the
    /// operator unlocks for this; the service never holds it).
    pub async fn generate_root(
        &self,
        root_key: &dyn KeySigner,
        actor: &str,
    ) -> Result<Generated, WorkflowError> {
        let _one_at_a_time = self.generating.lock().await;
        let root = self.authority.root().clone();
        let g = self
            .generate_with(
                &root,
                root_key,
                CrlKind::Complete,
                CrlScope::Complete { delta_url: None },
                time::Duration::days(i64::from(self.config.root_validity_days)),
                None,
                None,
                actor,
            )
            .await?;
        self.install(&g.record, g.der.clone());
        Ok(g)
    }

    /// Publishes a root CRL signed where the root key is kept (`hallmark
    /// root crl`): it must be signed by this CA's root, carry a CRL number
    /// above the last root CRL published here, and not be expired. Every
    /// instance then serves it from the database.
    pub async fn import_root(&self, der: &[u8], actor: &str) -> Result<Generated, WorkflowError> {
        let bad = |why: String| WorkflowError::from(Clash::BadRootCrl(why));
        let _one_at_a_time = self.generating.lock().await;
        let started = std::time::Instant::now();
        let root = self.authority.root().clone();
        let (rest, crl) = x509_parser::parse_x509_crl(der)
            .map_err(|e| bad(format!("could not be parsed: {e}")))?;
        if !rest.is_empty() {
            return Err(bad("has trailing bytes".into()));
        }
        let (_, root_x509) = x509_parser::parse_x509_certificate(root.der())
            .map_err(|e| bad(format!("cannot be checked: the root does not parse: {e}")))?;
        if crl.issuer().as_raw() != root.subject_raw()
            || crl.verify_signature(root_x509.public_key()).is_err()
        {
            return Err(bad(format!(
                "is not signed by this CA's root {}",
                root.subject()
            )));
        }
        let number = crl
            .crl_number()
            .and_then(|n| i64::try_from(n.clone()).ok())
            .ok_or_else(|| bad("has no CRL number (or one too large)".into()))?;
        let now = OffsetDateTime::now_utc();
        let this_update = crl.last_update().to_datetime();
        let next_update = crl
            .next_update()
            .map(|t| t.to_datetime())
            .ok_or_else(|| bad("has no nextUpdate".into()))?;
        if next_update <= now {
            return Err(bad(format!("expired at {next_update}")));
        }
        if this_update > now + time::Duration::minutes(5) {
            return Err(bad(format!(
                "is dated {this_update}, in the future; check the clocks"
            )));
        }
        let entries = crl.iter_revoked_certificates().count() as i64;
        // The snapshot it is published at: now, as for a CRL made here.
        let scan = RevokedScan {
            issuer_id: root.id().to_owned(),
            partition: None,
            revoked_since: Some(i64::MAX),
            not_after_from: now.unix_timestamp(),
        };
        let snapshot_seq = self
            .authority
            .store()
            .scan_revoked(&scan, &mut |_| {})
            .await?;
        let new = NewCrl {
            issuer_id: root.id().to_owned(),
            partition: 0,
            delta: false,
            this_update: this_update.unix_timestamp(),
            next_update: next_update.unix_timestamp(),
            snapshot_seq,
            entries,
            number: Some(number),
        };
        let event = AuditEvent {
            at: now,
            actor: actor.to_owned(),
            action: "crl.import".into(),
            subject: CrlKind::Complete.file_name(root.id()),
            details: serde_json::json!({
                "entries": entries,
                "this_update": new.this_update,
                "next_update": new.next_update,
                "sha256": hex::encode(ring::digest::digest(&ring::digest::SHA256, der)),
            }),
        };
        let record = self
            .authority
            .store()
            .publish_crl(&new, &mut |_| Ok(der.to_vec()), event)
            .await?
            .ok_or_else(|| {
                bad("lost to a root CRL published meanwhile; run the import again".into())
            })?;
        let der = Bytes::from(der.to_vec());
        self.install(&record, der.clone());
        Ok(Generated {
            record,
            der,
            published: true,
            elapsed: started.elapsed(),
        })
    }

    /// The complete CRL deltas refer to, generating one if there is none.
    async fn current_base(&self, id: &str) -> Result<CrlRecord, WorkflowError> {
        let heads = self.authority.store().crl_heads().await?;
        if let Some(base) = heads
            .into_iter()
            .find(|h| h.issuer_id == id && h.partition == 0 && !h.delta)
        {
            return Ok(base);
        }
        Err(Clash::DeltaWithoutBase.into())
    }

    #[allow(clippy::too_many_arguments)]
    async fn generate_with(
        &self,
        ca: &CaCertificate,
        key: &dyn KeySigner,
        kind: CrlKind,
        scope: CrlScope,
        validity: time::Duration,
        partition: Option<i64>,
        revoked_since: Option<i64>,
        actor: &str,
    ) -> Result<Generated, WorkflowError> {
        let started = std::time::Instant::now();
        let now = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or(OffsetDateTime::now_utc());
        let next_update = (now + validity).min(ca.not_after());
        let spec = CrlSpec {
            issuer: ca,
            this_update: now,
            next_update,
            scope,
        };
        let mut builder = CrlBuilder::new(&spec, key);
        if let Some(previous) = self.served(&kind.file_name(ca.id())) {
            // The next CRL is about as large as the last one.
            builder.reserve_bytes(previous.der.len() + previous.der.len() / 50 + 65_536);
        }
        let scan = RevokedScan {
            issuer_id: ca.id().to_owned(),
            partition,
            revoked_since,
            not_after_from: now.unix_timestamp(),
        };
        let mut bad_time = None;
        let snapshot_seq = self
            .authority
            .store()
            .scan_revoked(&scan, &mut |row| {
                let at = OffsetDateTime::from_unix_timestamp(row.revoked_at);
                let invalidity = row
                    .invalidity_date
                    .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
                match at {
                    Ok(revoked_at) => builder.push(&CrlEntry {
                        serial: row.serial.as_bytes(),
                        revoked_at,
                        reason: RevocationReason::from_code(row.reason)
                            .unwrap_or(RevocationReason::Unspecified),
                        invalidity_date: invalidity,
                    }),
                    Err(_) => bad_time = Some(row.serial),
                }
            })
            .await?;
        if let Some(serial) = bad_time {
            return Err(WorkflowError::Store(crate::store::StoreError::Corrupt(
                format!("certificate {serial} has an impossible revocation time"),
            )));
        }
        let entries = builder.len() as i64;
        let new = NewCrl {
            issuer_id: ca.id().to_owned(),
            partition: kind.partition(),
            delta: kind == CrlKind::Delta,
            this_update: now.unix_timestamp(),
            next_update: next_update.unix_timestamp(),
            snapshot_seq,
            entries,
            number: None,
        };
        let event = AuditEvent {
            at: now,
            actor: actor.to_owned(),
            action: "crl.publish".into(),
            subject: kind.file_name(ca.id()),
            details: serde_json::json!({
                "entries": entries,
                "this_update": new.this_update,
                "next_update": new.next_update,
                "snapshot_seq": snapshot_seq,
            }),
        };
        let mut builder = Some(builder);
        let published = self
            .authority
            .store()
            .publish_crl(
                &new,
                &mut |number| {
                    let b = builder
                        .take()
                        .ok_or_else(|| "the CRL was already signed".to_owned())?;
                    b.finish(number as u64, key).map_err(|e| e.to_string())
                },
                event,
            )
            .await?;
        let elapsed = started.elapsed();
        match published {
            Some(mut record) => {
                let der = Bytes::from(std::mem::take(&mut record.der));
                let scope = match kind {
                    _ if ca.id() == "root" => "root",
                    CrlKind::Complete => "complete",
                    CrlKind::Delta => "delta",
                    CrlKind::Partition(_) => "partition",
                };
                crate::metrics::METRICS
                    .crl_generation
                    .observe(&[scope], elapsed);
                tracing::info!(
                    crl = %kind.file_name(ca.id()),
                    number = record.number,
                    entries,
                    bytes = der.len(),
                    ms = elapsed.as_millis() as u64,
                    "published a CRL"
                );
                Ok(Generated {
                    record,
                    der,
                    published: true,
                    elapsed,
                })
            }
            None => {
                // A fresher one exists: serve that.
                self.refresh().await?;
                let file = kind.file_name(ca.id());
                let served = self
                    .served(&file)
                    .ok_or_else(|| WorkflowError::from(Clash::CrlUnreadable(file.clone())))?;
                Ok(Generated {
                    record: CrlRecord {
                        issuer_id: served.issuer_id.clone(),
                        partition: kind.partition(),
                        delta: kind == CrlKind::Delta,
                        number: served.number,
                        this_update: served.this_update,
                        next_update: served.next_update,
                        entries: served.entries,
                        snapshot_seq,
                        der: Vec::new(),
                    },
                    der: served.der.clone(),
                    published: false,
                    elapsed,
                })
            }
        }
    }

    /// The CRLs of issuer `id` that are due: missing, older than
    /// `regenerate_every_hours` (deltas: `delta_every_minutes`), or within
    /// a tenth of their validity of nextUpdate.
    fn due(&self, id: &str, now: i64) -> Vec<CrlKind> {
        self.every_kind_of(id)
            .into_iter()
            .filter(|kind| {
                let every = match kind {
                    CrlKind::Delta => i64::from(self.config.delta_every_minutes) * 60,
                    _ => i64::from(self.config.regenerate_every_hours) * 3600,
                };
                match self.served(&kind.file_name(id)) {
                    None => true,
                    Some(s) => {
                        let margin = (s.next_update - s.this_update) / 10;
                        now - s.this_update >= every || s.next_update - now <= margin
                    }
                }
            })
            .collect()
    }

    async fn generate_logged(&self, id: &str, kind: CrlKind) {
        if let Err(e) = self.generate_for(id, kind, "system").await {
            tracing::error!(crl = %kind.file_name(id), error = %e, "generating a CRL failed; will retry");
        }
    }

    /// The intermediate's CRLs that miss a revocation recorded in the
    /// database (by any instance or process: the durable marks), and were
    /// last published at least `debounce_secs` ago — so a burst of
    /// revocations makes one CRL per scope per `debounce_secs`, and the
    /// first revocation after a quiet spell one at once.
    fn stale(&self, id: &str, marks: &[CrlMark], now: i64) -> Vec<CrlKind> {
        let debounce = i64::from(self.config.debounce_secs);
        let (_, delta) = self.plan(id);
        let mut kinds = Vec::new();
        for mark in marks.iter().filter(|m| m.issuer_id == id) {
            let scopes = match u32::try_from(mark.partition) {
                Ok(0) if delta => vec![CrlKind::Complete, CrlKind::Delta],
                Ok(0) => vec![CrlKind::Complete],
                Ok(p) => vec![CrlKind::Partition(p)],
                Err(_) => Vec::new(),
            };
            for kind in scopes {
                let behind = match self.served(&kind.file_name(id)) {
                    None => true,
                    Some(s) => s.snapshot_seq < mark.seq && now - s.this_update >= debounce,
                };
                if behind {
                    kinds.push(kind);
                }
            }
        }
        kinds
    }

    /// One poll: load the newest CRLs, learn of revocations made anywhere
    /// (which also drops cached OCSP answers), then regenerate what misses
    /// a revocation and what is due by age.
    pub async fn poll_once(&self) -> Result<(), WorkflowError> {
        self.refresh().await?;
        let marks = self.authority.store().crl_marks().await?;
        if let Some(newest) = marks.iter().map(|m| m.seq).max() {
            self.authority.saw_revocation_marks(newest);
        }
        let now = OffsetDateTime::now_utc().unix_timestamp();
        for id in self.publishing(now) {
            let mut kinds = self.stale(&id, &marks, now);
            kinds.extend(self.due(&id, now));
            // Once each: partitions first (small, and what a revocation's
            // certificate names), then the complete CRL, then the delta
            // that refers to it.
            kinds.sort_by_key(|kind| match kind {
                CrlKind::Partition(p) => (0, *p),
                CrlKind::Complete => (1, 0),
                CrlKind::Delta => (2, 0),
            });
            kinds.dedup();
            for kind in kinds {
                self.generate_logged(&id, kind).await;
            }
        }
        Ok(())
    }

    /// Runs until `shutdown`: every [`POLL_INTERVAL`] (and at once after a
    /// revocation through this process) runs [`CrlPublisher::poll_once`].
    /// Nothing about what is stale lives only in memory: a revocation
    /// whose process died before its CRL was published is picked up by
    /// the next poll of any instance.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut revocations = self.authority.revocations();
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                changed = revocations.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = tick.tick() => {}
            }
            if let Err(e) = self.poll_once().await {
                tracing::warn!(error = %e, "checking the CRLs failed; will retry");
            }
            // The poll itself moves the revocation count when it sees a new
            // mark (for the OCSP cache); that is not a reason to poll again.
            // A revocation made meanwhile waits at most for the next tick.
            revocations.borrow_and_update();
        }
    }
}
