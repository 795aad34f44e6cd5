//! Group commit for issuances: concurrent `insert_certificate` calls queue
//! here, and one writer task commits everything queued in one transaction,
//! so N concurrent issuances cost one fsync instead of N. If a batch fails,
//! its items are retried one by one so one bad item cannot fail the others.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{Issuance, Result, StoreError};

/// Most items committed in one transaction.
const MAX_BATCH: usize = 256;

/// One issuance waiting to be committed.
pub(crate) type Item = Issuance;

struct Job {
    item: Item,
    reply: oneshot::Sender<Result<()>>,
}

/// The queue in front of the writer task.
pub(crate) struct Batcher {
    queue: mpsc::Sender<Job>,
}

impl Batcher {
    /// Starts the writer task; `commit` writes a batch in one transaction.
    pub(crate) fn spawn<F, Fut>(commit: F) -> Self
    where
        F: Fn(Arc<Vec<Item>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let (queue, mut rx) = mpsc::channel::<Job>(MAX_BATCH * 4);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut jobs = vec![first];
                while jobs.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                let (items, replies): (Vec<Item>, Vec<_>) =
                    jobs.into_iter().map(|j| (j.item, j.reply)).unzip();
                let items = Arc::new(items);
                match commit(items.clone()).await {
                    Ok(()) => {
                        for reply in replies {
                            let _ = reply.send(Ok(()));
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
                            let _ = reply.send(commit(single).await);
                        }
                    }
                }
            }
        });
        Batcher { queue }
    }

    /// Queues one issuance and waits until it is durably committed.
    pub(crate) async fn submit(&self, item: Item) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Job { item, reply })
            .await
            .map_err(|_| StoreError::Database("the store's writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Database("the store's writer has stopped".into()))?
    }
}
