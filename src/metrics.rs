//! Prometheus counters and histograms, kept in memory and written out in
//! the text exposition format by `/metrics`.
//!
//! Every label's values come from a bounded set — route templates (never
//! raw paths), profile names from the configuration, challenge types,
//! revocation reasons, OCSP statuses — so no series is made per request,
//! name or serial.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// A counter family: one `u64` per set of label values.
pub struct Counter {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl Counter {
    /// A family called `name` with these label names.
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        Counter {
            name,
            help,
            labels,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds one to the series with these label values (in `labels` order).
    pub fn inc(&self, values: &[&str]) {
        self.add(values, 1);
    }

    /// Adds `n` to the series with these label values.
    pub fn add(&self, values: &[&str], n: u64) {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        let mut map = self.values.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(key).or_insert(0) += n;
    }

    /// The series' value (for tests).
    pub fn get(&self, values: &[&str]) -> u64 {
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        let map = self.values.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&key).copied().unwrap_or(0)
    }

    /// Writes the family in the text format.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} counter", self.name);
        let map = self.values.lock().unwrap_or_else(|e| e.into_inner());
        for (values, n) in map.iter() {
            let _ = writeln!(
                out,
                "{}{} {n}",
                self.name,
                label_set(self.labels, values, None)
            );
        }
    }
}

/// The histogram buckets, in seconds: from a cached OCSP answer to a slow
/// validation.
pub const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default, Clone)]
struct Observations {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// A histogram family of durations.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Vec<String>, Observations>>,
}

impl Histogram {
    /// A family called `name` (ending `_seconds`) with these label names.
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        Histogram {
            name,
            help,
            labels,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records one duration in the series with these label values.
    pub fn observe(&self, values: &[&str], took: Duration) {
        let secs = took.as_secs_f64();
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        let mut map = self.values.lock().unwrap_or_else(|e| e.into_inner());
        let o = map.entry(key).or_default();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            o.buckets[i] += 1;
        }
        o.count += 1;
        o.sum += secs;
    }

    /// How many durations the series holds (for tests).
    pub fn count(&self, values: &[&str]) -> u64 {
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        let map = self.values.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&key).map_or(0, |o| o.count)
    }

    /// The total of the durations the series holds, in seconds (for
    /// tests and the benchmarks' probes).
    pub fn sum(&self, values: &[&str]) -> f64 {
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        let map = self.values.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&key).map_or(0.0, |o| o.sum)
    }

    /// Writes the family in the text format (cumulative buckets).
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        let map = self.values.lock().unwrap_or_else(|e| e.into_inner());
        for (values, o) in map.iter() {
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += o.buckets[i];
                let _ = writeln!(
                    out,
                    "{}_bucket{} {cumulative}",
                    self.name,
                    label_set(self.labels, values, Some(&bound.to_string()))
                );
            }
            let _ = writeln!(
                out,
                "{}_bucket{} {}",
                self.name,
                label_set(self.labels, values, Some("+Inf")),
                o.count
            );
            let labels = label_set(self.labels, values, None);
            let _ = writeln!(out, "{}_sum{labels} {}", self.name, o.sum);
            let _ = writeln!(out, "{}_count{labels} {}", self.name, o.count);
        }
    }
}

/// `{a="x",b="y"}` (with `le` last for a bucket), or nothing when there are
/// no labels.
fn label_set(names: &[&str], values: &[String], le: Option<&str>) -> String {
    let mut parts: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// A label value escaped as the text format asks (backslash, quote,
/// newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Everything this process counts.
pub struct Metrics {
    /// HTTPS requests by route template, method and status.
    pub http_requests: Counter,
    /// HTTPS request latency by route template.
    pub http_duration: Histogram,
    /// Certificates issued by profile and key algorithm.
    pub issued: Counter,
    /// Certificates revoked by reason.
    pub revoked: Counter,
    /// Challenge validations by type and result.
    pub validations: Counter,
    /// Challenge validation time by type.
    pub validation_duration: Histogram,
    /// OCSP answers by status (good, revoked, unknown, unauthorized,
    /// malformed).
    pub ocsp: Counter,
    /// OCSP answers served from the cache.
    pub ocsp_cache_hits: Counter,
    /// CRL generation time by scope (complete, partition, delta, root).
    pub crl_generation: Histogram,
    /// Audit records written, by action: every state change (order
    /// transitions `order.ready`, `order.valid`, …; issuances,
    /// revocations, sign-ins).
    pub audit_events: Counter,
    /// Database errors by kind.
    pub database_errors: Counter,
    /// Webhook delivery attempts by event and result.
    pub webhook_deliveries: Counter,
    /// Group commits by queue (`workflow`, `nonces`).
    pub store_commits: Counter,
    /// Writes those commits carried, by queue: divided by the commits,
    /// the mean batch size.
    pub store_batched_writes: Counter,
    /// Time one group commit took (statements and the commit), by queue.
    pub store_commit_duration: Histogram,
    /// Workflow batches tried as one statement after the known audit
    /// head, by result: `committed`, or `retried` the
    /// ordinary way because the head had moved.
    pub store_one_statement_commits: Counter,
}

impl Metrics {
    /// Empty counters.
    pub const fn new() -> Self {
        Metrics {
            http_requests: Counter::new(
                "hallmark_http_requests_total",
                "HTTPS requests answered, by route template, method and status code.",
                &["route", "method", "status"],
            ),
            http_duration: Histogram::new(
                "hallmark_http_request_duration_seconds",
                "Time to answer an HTTPS request, by route template.",
                &["route"],
            ),
            issued: Counter::new(
                "hallmark_certificates_issued_by_profile_total",
                "Certificates this process issued, by profile and subject key algorithm.",
                &["profile", "key"],
            ),
            revoked: Counter::new(
                "hallmark_certificates_revoked_total",
                "Certificates this process revoked, by RFC 5280 reason.",
                &["reason"],
            ),
            validations: Counter::new(
                "hallmark_validations_total",
                "Challenge validations finished, by challenge type and result (valid, invalid).",
                &["type", "result"],
            ),
            validation_duration: Histogram::new(
                "hallmark_validation_duration_seconds",
                "Time one challenge validation took, by challenge type.",
                &["type"],
            ),
            ocsp: Counter::new(
                "hallmark_ocsp_responses_total",
                "OCSP answers, by certificate status or error.",
                &["status"],
            ),
            ocsp_cache_hits: Counter::new(
                "hallmark_ocsp_cache_hits_total",
                "OCSP answers served from the in-memory cache (ocsp.cache_secs) instead of signed anew.",
                &[],
            ),
            crl_generation: Histogram::new(
                "hallmark_crl_generation_duration_seconds",
                "Time to build and sign one CRL, by scope.",
                &["scope"],
            ),
            audit_events: Counter::new(
                "hallmark_audit_events_total",
                "Audit records written, by action: order transitions (order.ready, order.valid, order.invalid, order.awaiting_approval, …), issuances, revocations, sign-ins.",
                &["action"],
            ),
            database_errors: Counter::new(
                "hallmark_database_errors_total",
                "Database errors, by kind (unavailable, pool_timeout, disk_full, conflict, other).",
                &["kind"],
            ),
            webhook_deliveries: Counter::new(
                "hallmark_webhook_deliveries_total",
                "Webhook delivery attempts, by event and result (delivered, failed).",
                &["event", "result"],
            ),
            store_commits: Counter::new(
                "hallmark_store_commits_total",
                "Group commits of queued writes, by queue (workflow: orders and issuances; nonces: used ACME nonces).",
                &["queue"],
            ),
            store_batched_writes: Counter::new(
                "hallmark_store_batched_writes_total",
                "Writes carried by those group commits, by queue; divided by hallmark_store_commits_total, the mean batch.",
                &["queue"],
            ),
            store_one_statement_commits: Counter::new(
                "hallmark_store_one_statement_commits_total",
                "Workflow batches tried as one statement after the audit head the writer knew, by result: committed, or retried the ordinary way because another writer had moved the head.",
                &["result"],
            ),
            store_commit_duration: Histogram::new(
                "hallmark_store_commit_duration_seconds",
                "Time one group commit took, its statements and the durable commit, by queue.",
                &["queue"],
            ),
        }
    }

    /// Writes every family.
    pub fn render(&self, out: &mut String) {
        self.http_requests.render(out);
        self.http_duration.render(out);
        self.issued.render(out);
        self.revoked.render(out);
        self.validations.render(out);
        self.validation_duration.render(out);
        self.ocsp.render(out);
        self.ocsp_cache_hits.render(out);
        self.crl_generation.render(out);
        self.audit_events.render(out);
        self.database_errors.render(out);
        self.webhook_deliveries.render(out);
        self.store_commits.render(out);
        self.store_batched_writes.render(out);
        self.store_one_statement_commits.render(out);
        self.store_commit_duration.render(out);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// This process's metrics: one set, as Prometheus scrapes one process.
pub static METRICS: Metrics = Metrics::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_the_text_format() {
        let c = Counter::new("t_total", "A test.", &["route", "status"]);
        c.inc(&["/a/{id}", "200"]);
        c.inc(&["/a/{id}", "200"]);
        c.inc(&["say \"hi\"\n", "500"]);
        let mut out = String::new();
        c.render(&mut out);
        assert!(out.contains("# TYPE t_total counter"), "{out}");
        assert!(
            out.contains("t_total{route=\"/a/{id}\",status=\"200\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("t_total{route=\"say \\\"hi\\\"\\n\",status=\"500\"} 1"),
            "{out}"
        );

        let h = Histogram::new("t_seconds", "A test.", &["route"]);
        h.observe(&["/x"], Duration::from_millis(3));
        h.observe(&["/x"], Duration::from_secs(20));
        let mut out = String::new();
        h.render(&mut out);
        assert!(
            out.contains("t_seconds_bucket{route=\"/x\",le=\"0.001\"} 0"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{route=\"/x\",le=\"0.005\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{route=\"/x\",le=\"10\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{route=\"/x\",le=\"+Inf\"} 2"),
            "{out}"
        );
        assert!(out.contains("t_seconds_count{route=\"/x\"} 2"), "{out}");
    }
}
