//! Group commit for `POST /api/v1/calls` on PostgreSQL.
//!
//! Each request would otherwise be its own statement and commit, and PostgreSQL's per-statement
//! work (planning, locking the campaign row, updating its stats row, committing) bounds the
//! endpoint. Requests go into a bounded queue; a few workers each take what is waiting (up to
//! [`MAX_BATCH`]) and create those calls in one statement ([`Store::create_calls`]). Nothing
//! waits for a batch to fill: an idle server answers a lone request at once, and batches grow
//! only while the database is busy. Each request still gets its own answer (201, 200, 404, 409
//! or 422). A batch that fails as a whole is redone one request at a time, so one bad item
//! never fails the others. SQLite (one writer) takes the requests directly.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use crate::model::{CallAnswer, NewCall};
use crate::{Store, StoreError};

/// Requests one batch takes at most.
pub const MAX_BATCH: usize = 128;
/// Batches in flight at once (each holds one pooled connection while it runs).
pub const WORKERS: usize = 2;
/// Requests waiting for a worker at most; beyond that, a request waits to be queued.
pub const QUEUE: usize = 4096;

type Job = (NewCall, oneshot::Sender<CallAnswer>);

/// Creates calls through the batch workers (started on first use, stopped when the last clone
/// is dropped).
#[derive(Clone, Debug)]
pub struct CallBatcher {
    store: Store,
    queue: Arc<OnceLock<mpsc::Sender<Job>>>,
}

impl CallBatcher {
    pub fn new(store: Store) -> Self {
        CallBatcher { store, queue: Arc::new(OnceLock::new()) }
    }

    /// [`Store::create_call`], batched with concurrent requests on PostgreSQL.
    pub async fn create_call(&self, call: NewCall) -> CallAnswer {
        if self.store.kind() == crate::StoreKind::Sqlite {
            return self.store.create_call(call.campaign_id, &call.phone_number, call.metadata.as_ref()).await;
        }
        let queue = self.queue.get_or_init(|| start(self.store.clone()));
        let (reply, answer) = oneshot::channel();
        queue.send((call, reply)).await.map_err(|_| StoreError::Unavailable(sqlx::Error::WorkerCrashed))?;
        // A worker drops a reply only if it panicked.
        answer.await.map_err(|_| StoreError::Unavailable(sqlx::Error::WorkerCrashed))?
    }
}

fn start(store: Store) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..WORKERS {
        tokio::spawn(work(store.clone(), rx.clone()));
    }
    tx
}

async fn work(store: Store, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    loop {
        // One worker waits on the queue at a time; it takes all that is waiting.
        if rx.lock().await.recv_many(&mut jobs, MAX_BATCH).await == 0 {
            return; // every sender is gone
        }
        while !jobs.is_empty() {
            let (now, later) = split_repeats(std::mem::take(&mut jobs));
            run(&store, now).await;
            jobs = later;
        }
    }
}

/// The first request of each (campaign, number) and the rest, which go in a later batch (one
/// statement cannot see the call it inserts, so a repeat there could not be answered with it).
fn split_repeats(jobs: Vec<Job>) -> (Vec<Job>, Vec<Job>) {
    let mut seen: HashSet<(Uuid, String)> = HashSet::with_capacity(jobs.len());
    jobs.into_iter().partition(|(c, _)| seen.insert((c.campaign_id, c.phone_number.clone())))
}

async fn run(store: &Store, jobs: Vec<Job>) {
    metrics::counter!("dialer_api_call_batches_total").increment(1);
    metrics::counter!("dialer_api_call_batch_requests_total").increment(jobs.len() as u64);
    let (calls, replies): (Vec<NewCall>, Vec<_>) = jobs.into_iter().unzip();
    match store.create_calls(&calls).await {
        Ok(answers) => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer); // the client may have gone
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, n = calls.len(), "a batch of new calls failed; doing them one by one");
            for (call, reply) in calls.into_iter().zip(replies) {
                let answer = store.create_call(call.campaign_id, &call.phone_number, call.metadata.as_ref()).await;
                let _ = reply.send(answer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_wait_for_a_later_batch() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let job = |c: Uuid, n: &str| {
            (NewCall { campaign_id: c, phone_number: n.into(), metadata: None }, oneshot::channel().0)
        };
        let jobs = vec![job(a, "+1"), job(a, "+2"), job(a, "+1"), job(b, "+1"), job(a, "+1")];
        let (now, later) = split_repeats(jobs);
        let pairs = |v: &[Job]| v.iter().map(|(c, _)| (c.campaign_id, c.phone_number.clone())).collect::<Vec<_>>();
        assert_eq!(pairs(&now), vec![(a, "+1".into()), (a, "+2".into()), (b, "+1".into())]);
        assert_eq!(pairs(&later), vec![(a, "+1".into()), (a, "+1".into())]);
        let (now, later) = split_repeats(later);
        assert_eq!((now.len(), later.len()), (1, 1));
    }
}
