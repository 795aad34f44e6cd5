//! Group commit: concurrent writes queue here, and one writer (a thread
//! of its own, see [`run_on_own_thread`]) commits everything queued in
//! one transaction, so N concurrent writes cost one transaction (and on
//! the durable queue one fsync) instead of N.
//! If a batch fails, its items are retried one by one so one bad item
//! cannot fail the others.
//!
//! Two queues use it: the durable writes of the order workflow
//! ([`Write`]: issuances, new orders, order moves, challenge claims and
//! results) and the record of used ACME nonces ([`UsedNonce`], committed
//! without a disk flush).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{
    AuditEvent, ChallengeOutcome, Issuance, OrderBundle, OrderStatus, OrderUpdate, Result,
    StoreError, Transition,
};

/// Most items committed in one transaction.
const MAX_BATCH: usize = 256;

/// Runs a writer loop on a thread of its own, with a single-threaded
/// runtime, until its queue closes.
///
/// The writer is the one serial step of every write: each statement of a
/// batch is a round trip to the database (SQLite's worker thread or
/// PostgreSQL's socket), and each answer wakes the writer. On the
/// request runtime that wakeup waited in the run queue behind the
/// requests' TLS and signing work (measured: the writer was busy 94 % of
/// the time at 64 clients while SQLite itself used 13 % of a core); on
/// its own thread the kernel schedules it as soon as the answer comes.
/// If its runtime or thread cannot be made, the loop runs on the current
/// runtime instead (slower, never lost). With `sockets` the runtime has
/// tokio's I/O driver (PostgreSQL's connections); without it (SQLite's
/// are sqlx's threads, reached over channels) it parks on a futex rather
/// than in `epoll_wait`, and each answer wakes it with one system call
/// instead of an eventfd write, a wake from `epoll_wait` and a read.
fn run_on_own_thread<F>(name: &'static str, sockets: bool, writer: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let request_runtime = tokio::runtime::Handle::current();
    // The loop is handed over once the thread runs, so it is still here
    // to fall back on if the thread cannot start.
    let (handover, receive) = std::sync::mpsc::channel::<F>();
    let started = std::thread::Builder::new()
        .name(format!("{name}-writer"))
        .spawn(move || {
            let Ok(writer) = receive.recv() else { return };
            if !sockets {
                // SQLite's: on one core with its connection's thread.
                super::affinity::pin_current_thread();
            }
            let mut builder = tokio::runtime::Builder::new_current_thread();
            if sockets {
                builder.enable_all();
            } else {
                builder.enable_time();
            }
            match builder.build() {
                Ok(runtime) => runtime.block_on(writer),
                Err(e) => share(&request_runtime, name, &e, writer),
            }
        });
    match started {
        Ok(_) => {
            let _ = handover.send(writer);
        }
        Err(e) => share(&tokio::runtime::Handle::current(), name, &e, writer),
    }
}

/// Runs the writer loop on `runtime` (the request runtime), when it can
/// have no thread of its own.
fn share<F>(runtime: &tokio::runtime::Handle, name: &'static str, error: &std::io::Error, writer: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    tracing::warn!(queue = name, %error, "no thread of its own for the store's writer; it shares the request runtime");
    runtime.spawn(writer);
}

/// A durable write of the order workflow.
#[derive(Debug, Clone)]
pub(crate) enum Write {
    /// A certificate with its audit records and its order's part.
    Issue(Box<Issuance>),
    /// A new order with its authorizations and challenges.
    Open {
        bundle: Box<OrderBundle>,
        events: Vec<AuditEvent>,
    },
    /// An order transition (already checked legal); its events are
    /// recorded only if it moved.
    Move {
        order_id: String,
        transition: Transition,
        update: Box<OrderUpdate>,
        at: i64,
        events: Vec<AuditEvent>,
    },
    /// A challenge claimed for validation, if it, its authorization and
    /// its order are all still pending; its event is recorded only then.
    Claim {
        challenge_id: String,
        order_id: String,
        at: i64,
        event: AuditEvent,
    },
    /// A validation's result; nothing is written if the challenge was no
    /// longer `processing`, and `on_order_change` only if the order moved.
    Finish {
        outcome: Box<ChallengeOutcome>,
        events: Vec<AuditEvent>,
        on_order_change: Vec<AuditEvent>,
    },
}

/// What one [`Write`] did once its batch committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Done {
    /// Written as asked (a new order, an issuance).
    Written,
    /// A guarded change (an order move, a claim, an issuance completing
    /// its order): whether it happened.
    Moved(bool),
    /// A validation's result, recorded: the order's new status if it
    /// moved, and whether the result made its own claim
    /// ([`super::ChallengeOutcome::claim`]).
    Finished {
        order: Option<OrderStatus>,
        claimed: bool,
    },
    /// A validation's result, not recorded: the challenge was no longer
    /// `processing` (another attempt's result came first).
    NotProcessing,
}

impl Write {
    /// Whether it only adds rows or is an issuance that completes its
    /// order: a batch of such writes can be one statement that fails
    /// whole if an order had moved on (then committed the ordinary way).
    pub(crate) fn adds_or_completes(&self) -> bool {
        matches!(self, Write::Open { .. } | Write::Issue(_))
    }

    /// The audit records to write with this write, given what it did.
    pub(crate) fn events(&self, done: Done) -> impl Iterator<Item = &AuditEvent> {
        let none: &[AuditEvent] = &[];
        let (always, on_change): (&[AuditEvent], &[AuditEvent]) = match (self, done) {
            (Write::Issue(_), Done::Moved(false)) => (none, none),
            (Write::Issue(issuance), _) => (&issuance.events, none),
            (Write::Open { events, .. }, _) | (Write::Move { events, .. }, Done::Moved(true)) => {
                (events, none)
            }
            (Write::Claim { event, .. }, Done::Moved(true)) => (std::slice::from_ref(event), none),
            (
                Write::Finish {
                    events,
                    on_order_change,
                    ..
                },
                Done::Finished { order, .. },
            ) => (
                events,
                if order.is_some() {
                    on_order_change
                } else {
                    none
                },
            ),
            _ => (none, none),
        };
        // A result that made its own claim records the claim's event first.
        let claim = match (self, done) {
            (Write::Finish { outcome, .. }, Done::Finished { claimed: true, .. }) => {
                outcome.claim.as_ref()
            }
            _ => None,
        };
        claim.into_iter().chain(always).chain(on_change)
    }
}

/// A used ACME nonce to record; the outcome says whether it was fresh.
#[derive(Debug, Clone)]
pub struct UsedNonce {
    pub nonce: String,
    pub expires_at: i64,
}

struct Job<I, O> {
    item: I,
    reply: oneshot::Sender<Result<O>>,
}

/// The queue in front of a writer: items `I`, each answered with an
/// outcome `O` once its batch committed.
pub(crate) struct Batcher<I, O> {
    queue: mpsc::Sender<Job<I, O>>,
}

impl<I, O> Batcher<I, O>
where
    I: Clone + Send + Sync + 'static,
    O: Send + 'static,
{
    /// Starts the writer; `commit` writes a batch in one transaction
    /// and gives one outcome per item, in order. `name` is the queue's
    /// label in the metrics; `sockets`, whether `commit` talks to the
    /// database over sockets ([`run_on_own_thread`]).
    pub(crate) fn spawn<F, Fut>(name: &'static str, sockets: bool, commit: F) -> Self
    where
        F: Fn(Arc<Vec<I>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>>> + Send + 'static,
    {
        let (queue, mut rx) = mpsc::channel::<Job<I, O>>(MAX_BATCH * 4);
        let writer = async move {
            while let Some(first) = rx.recv().await {
                let mut jobs = vec![first];
                while jobs.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                let (items, replies): (Vec<I>, Vec<_>) =
                    jobs.into_iter().map(|j| (j.item, j.reply)).unzip();
                let items = Arc::new(items);
                let started = std::time::Instant::now();
                let committed = commit(items.clone()).await;
                let metrics = &crate::metrics::METRICS;
                metrics
                    .store_commit_duration
                    .observe(&[name], started.elapsed());
                metrics.store_commits.inc(&[name]);
                metrics
                    .store_batched_writes
                    .add(&[name], items.len() as u64);
                match committed {
                    Ok(outcomes) if outcomes.len() == replies.len() => {
                        for (reply, outcome) in replies.into_iter().zip(outcomes) {
                            let _ = reply.send(Ok(outcome));
                        }
                    }
                    Ok(_) => {
                        for reply in replies {
                            let _ = reply.send(Err(StoreError::Database(
                                "a batch gave the wrong number of outcomes".into(),
                            )));
                        }
                    }
                    Err(e) if replies.len() == 1 => {
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                    Err(_) => {
                        for (item, reply) in items.iter().zip(replies) {
                            let single = Arc::new(vec![item.clone()]);
                            let outcome = commit(single).await.and_then(|mut o| {
                                o.pop().ok_or_else(|| {
                                    StoreError::Database("a batch gave no outcome".into())
                                })
                            });
                            let _ = reply.send(outcome);
                        }
                    }
                }
            }
        };
        run_on_own_thread(name, sockets, writer);
        Batcher { queue }
    }

    /// Queues one item and waits until it is committed; its outcome.
    pub(crate) async fn submit(&self, item: I) -> Result<O> {
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Job { item, reply })
            .await
            .map_err(|_| StoreError::Database("the store's writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Database("the store's writer has stopped".into()))?
    }
}
