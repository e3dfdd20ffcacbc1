//! The recorder: consumes status events in batches and applies them to the store (call rows,
//! timeline, aggregates) in one transaction per batch; retries are decided there by the
//! campaign's policy; final failures go to the dead-letter topic with their reason. A batch that
//! cannot be written is retried, never dropped: offsets are committed only after it is written.

use std::time::Duration;

use dialer_bus::status::StatusSource;
use dialer_domain::messages::StatusEvent;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use dialer_store::{Store, StoreError};

/// One recorder, reading status events from its source `S`.
#[derive(Debug)]
pub struct Recorder<S: StatusSource> {
    pub store: Store,
    pub source: S,
    pub batch_max: usize,
    /// From the broker: how long a batch waits for more events once it has its first, while
    /// it holds fewer than `batch_max` (`scheduler.recorder_linger_ms`). Each batch is a
    /// transaction with its round trips and its commit's WAL flush, so a batch of whatever
    /// happened to be fetched would pay them for a handful of events.
    pub linger: Duration,
    pub seed: u64,
    /// The CQL timeline, when configured (else the SQL table).
    pub timeline: Option<dialer_store::timeline::CqlTimeline>,
}

impl<S: StatusSource> Recorder<S> {
    /// A recorder with `[scheduler]`'s batch size and linger; `seed` for the retries' jitter.
    pub fn new(
        store: Store,
        source: S,
        settings: &crate::scheduler::SchedulerSettings,
        seed: u64,
        timeline: Option<dialer_store::timeline::CqlTimeline>,
    ) -> Recorder<S> {
        Recorder {
            store,
            source,
            batch_max: settings.recorder_batch_max,
            linger: settings.recorder_linger,
            seed,
            timeline,
        }
    }

    /// Runs until `shutdown` resolves (and, in-process, until no more events wait).
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut batch: Vec<StatusEvent> = Vec::with_capacity(self.batch_max);
        let mut stopping = false;
        loop {
            batch.clear();
            let received = tokio::select! {
                r = self.source.recv(&mut batch, self.batch_max) => r,
                _ = &mut shutdown, if !stopping => {
                    stopping = true;
                    if self.source.close() { continue } else { return }
                }
            };
            match received {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "status fetch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            let until = tokio::time::Instant::now() + self.linger;
            self.source.fill(&mut batch, self.batch_max, until).await;
            self.write(&batch, &mut rng).await;
            self.source.written().await;
        }
    }

    /// Writes one batch. A batch the store keeps refusing while it answers pings holds an event
    /// it cannot take (a poison event): the batch is split in halves, in order, until that event
    /// is alone; it is dead-lettered with the store's reason and the rest is written. While the
    /// store is down, the batch waits whole.
    #[tracing::instrument(name = "recorder_batch", skip_all, fields(events = batch.len()))]
    async fn write(&self, batch: &[StatusEvent], rng: &mut StdRng) {
        let mut parts: Vec<&[StatusEvent]> = vec![batch];
        while let Some(part) = parts.pop() {
            if part.is_empty() {
                continue;
            }
            match self.write_part(part, rng).await {
                Ok(()) => {}
                Err(e) if part.len() == 1 => self.poison(&part[0], &e).await,
                Err(_) => {
                    let (first, second) = part.split_at(part.len() / 2);
                    parts.push(second);
                    parts.push(first);
                }
            }
        }
    }

    /// Writes `part`, retrying with back-off while the store is unreachable or busy; `Err` once
    /// the store, answering, has refused the part's data [`REFUSALS`] times.
    async fn write_part(&self, part: &[StatusEvent], rng: &mut StdRng) -> Result<(), StoreError> {
        let mut wait = Duration::from_millis(100);
        let mut refusals = 0;
        loop {
            let t = std::time::Instant::now();
            let mut samples = || rng.random::<f64>();
            let e = match self.store.record_events(part, &mut samples, self.timeline.as_ref()).await {
                Ok(r) => {
                    metrics::histogram!("dialer_recorder_batch_seconds").record(t.elapsed().as_secs_f64());
                    metrics::counter!("dialer_recorder_events_total").increment(part.len() as u64);
                    metrics::counter!("dialer_retries_scheduled_total").increment(r.retries_scheduled);
                    metrics::counter!("dialer_dead_letters_total").increment(r.dead_letters.len() as u64);
                    count_media(&r.media);
                    let letters: Vec<(uuid::Uuid, String)> = r
                        .dead_letters
                        .iter()
                        .map(|(e, why)| {
                            tracing::info!(call = %e.call_id, attempt = e.attempt, reason = %why, "call failed for good");
                            (e.call_id, serde_json::json!({"event": e, "reason": why}).to_string())
                        })
                        .collect();
                    self.source.dead_letter(&letters).await;
                    return Ok(());
                }
                Err(e) => e,
            };
            if e.is_refusal() && self.store.ping().await.is_ok() {
                refusals += 1;
                if refusals >= REFUSALS {
                    return Err(e);
                }
            }
            tracing::warn!(error = %e, events = part.len(), "recording failed; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// An event the store refuses: dead-lettered with the reason, so that the rest goes on.
    async fn poison(&self, e: &StatusEvent, err: &StoreError) {
        metrics::counter!("dialer_recorder_unrecordable_total").increment(1);
        tracing::error!(call = %e.call_id, attempt = e.attempt, error = %err, "status event the store refuses: sent to the dead-letter topic, the rest of its batch is written");
        let body = serde_json::json!({"event": e, "reason": format!("unrecordable: {err}")}).to_string();
        self.source.dead_letter(&[(e.call_id, body)]).await;
    }
}

/// Refusals by a reachable store after which a batch is split (or its one event dead-lettered).
const REFUSALS: u32 = 3;

/// The recorded outcomes' media, as counters (rates over any window, e.g. the 30 days of
/// 47 CFR 64.1200(a)(7)'s abandoned share).
fn count_media(m: &[u64; 6]) {
    for (i, who) in ["human", "machine", "unknown"].into_iter().enumerate() {
        if m[i] > 0 {
            metrics::counter!("dialer_calls_answered_by_total", "answered_by" => who).increment(m[i]);
        }
    }
    metrics::counter!("dialer_voicemails_left_total").increment(m[3]);
    metrics::counter!("dialer_dnc_keypress_opt_outs_total").increment(m[4]);
    metrics::counter!("dialer_calls_abandoned_total").increment(m[5]);
}
