//! The recorder: consumes status events in batches and applies them to the store (call rows,
//! timeline, aggregates) in one transaction per batch; retries are decided there by the
//! campaign's policy; final failures go to the dead-letter topic with their reason. A batch that
//! cannot be written is retried, never dropped: offsets are committed only after it is written.

use std::time::Duration;

use dialer_bus::kafka::{ClientSettings, MeteredConsumer, MeteredProducer};
use dialer_domain::messages::StatusEvent;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::store::{Store, StoreError};

/// Where status events come from.
pub enum EventSource {
    Memory(mpsc::Receiver<StatusEvent>),
    Kafka { consumer: MeteredConsumer, topic: String, dead_letter: (MeteredProducer, String) },
}

impl EventSource {
    /// `workers` sources on the status `topic` for the recorders of one process
    /// (`scheduler.recorder_workers`), each its own consumer in `group`. The broker splits the
    /// topic's partitions between them; a call's events (keyed by its id) all go to one
    /// partition, so to one recorder, in order. Their transactions overlap as those of several
    /// control-plane replicas do: each locks its calls in id order and the stats rows in campaign
    /// order, so they wait on each other only for a campaign's stats row, at the end.
    pub fn kafka(
        clients: &ClientSettings,
        client_id: &str,
        group: &str,
        topic: &str,
        dead_letter: &(MeteredProducer, String),
        workers: usize,
    ) -> Result<Vec<EventSource>, KafkaError> {
        (0..workers.max(1))
            .map(|i| {
                let consumer = clients.consumer(&format!("{client_id}-{i}"), group)?;
                consumer.subscribe(&[topic])?;
                Ok(EventSource::Kafka { consumer, topic: topic.to_string(), dead_letter: dead_letter.clone() })
            })
            .collect()
    }
}

impl std::fmt::Debug for EventSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventSource::Memory(_) => f.write_str("EventSource::Memory"),
            EventSource::Kafka { topic, .. } => write!(f, "EventSource::Kafka({topic})"),
        }
    }
}

#[derive(Debug)]
pub struct Recorder {
    pub store: Store,
    pub source: EventSource,
    pub batch_max: usize,
    /// From the broker: how long a batch waits for more events once it has its first, while
    /// it holds fewer than `batch_max` (`scheduler.recorder_linger_ms`). Each batch is a
    /// transaction with its round trips and its commit's WAL flush: batches of what happened to
    /// be fetched kept the recorder at small batches, the bound of `bench e2e`.
    pub linger: Duration,
    pub seed: u64,
    /// The CQL timeline, when configured (else the SQL table).
    pub timeline: Option<crate::timeline::CqlTimeline>,
}

impl Recorder {
    /// Runs until `shutdown` resolves and no more events wait (in-process), or until shutdown.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut batch: Vec<StatusEvent> = Vec::with_capacity(self.batch_max);
        let mut offsets: Vec<(i32, i64)> = Vec::new();
        let mut malformed: Vec<(i32, i64, dialer_bus::Malformed)> = Vec::new();
        let mut stopping = false;
        loop {
            batch.clear();
            offsets.clear();
            malformed.clear();
            match &mut self.source {
                EventSource::Memory(rx) => {
                    tokio::select! {
                        n = rx.recv_many(&mut batch, self.batch_max) => if n == 0 { return },
                        _ = &mut shutdown, if !stopping => { stopping = true; rx.close(); continue; }
                    }
                }
                EventSource::Kafka { consumer, .. } => {
                    let first = tokio::select! {
                        m = consumer.recv() => m,
                        _ = &mut shutdown => return,
                    };
                    let mut push = |m: &rdkafka::message::BorrowedMessage<'_>| {
                        offsets.push((m.partition(), m.offset()));
                        match StatusEvent::decode(m.payload().unwrap_or_default()) {
                            Ok(e) => batch.push(e),
                            Err(e) => {
                                metrics::counter!("dialer_recorder_malformed_total").increment(1);
                                tracing::warn!(partition = m.partition(), offset = m.offset(), error = %e, "malformed status event: sent to the dead-letter topic");
                                malformed.push((
                                    m.partition(),
                                    m.offset(),
                                    dialer_bus::Malformed {
                                        reason: e.to_string(),
                                        key: m.key().map(<[u8]>::to_vec),
                                        payload: m.payload().unwrap_or_default().to_vec(),
                                    },
                                ));
                            }
                        }
                    };
                    match first {
                        Ok(m) => push(&m),
                        Err(e) => {
                            tracing::warn!(error = %e, "status fetch failed; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    }
                    let until = tokio::time::Instant::now() + self.linger;
                    for _ in 1..self.batch_max {
                        match tokio::time::timeout_at(until, consumer.recv()).await {
                            Ok(Ok(m)) => push(&m),
                            _ => break,
                        }
                    }
                }
            }
            self.write(&batch, &mut rng).await;
            if let EventSource::Kafka { consumer, topic, dead_letter: (p, dlq) } = &self.source {
                for m in &malformed {
                    dead_letter_malformed(p, dlq, topic, m).await;
                }
                commit(consumer, topic, &offsets);
            }
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
                    let letters: Vec<(&StatusEvent, String)> = r
                        .dead_letters
                        .iter()
                        .map(|(e, why)| {
                            tracing::info!(call = %e.call_id, attempt = e.attempt, reason = %why, "call failed for good");
                            (e, serde_json::json!({"event": e, "reason": why}).to_string())
                        })
                        .collect();
                    self.dead_letter(&letters).await;
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
        self.dead_letter(&[(e, body)]).await;
    }

    /// Produces a batch's dead letters, all at once, retrying those the broker did not take
    /// until it has them all (the batch's offsets are committed only afterwards). One at a time,
    /// each waiting for its acknowledgement, they had held the recorder to a third of its pace
    /// (`bench e2e`: 6 % of the mock's outcomes fail for good). The in-process mode has no
    /// dead-letter topic: the log has them.
    async fn dead_letter(&self, letters: &[(&StatusEvent, String)]) {
        let EventSource::Kafka { dead_letter: (p, topic), .. } = &self.source else {
            return;
        };
        let mut waiting: Vec<&(&StatusEvent, String)> = letters.iter().collect();
        let mut wait = Duration::from_millis(100);
        while !waiting.is_empty() {
            let sends = waiting.iter().map(|(e, body)| {
                p.send(
                    FutureRecord::to(topic).key(e.call_id.as_bytes().as_slice()).payload(body),
                    Duration::from_secs(5),
                )
            });
            let results = futures::future::join_all(sends).await;
            let mut refused = Vec::new();
            for (letter, result) in waiting.into_iter().zip(results) {
                if let Err((err, _)) = result {
                    dialer_bus::kafka::produce_error(topic);
                    tracing::warn!(error = %err, "dead-letter record not produced; retrying");
                    refused.push(letter);
                }
            }
            waiting = refused;
            if !waiting.is_empty() {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Refusals by a reachable store after which a batch is split (or its one event dead-lettered).
const REFUSALS: u32 = 3;

fn commit(consumer: &MeteredConsumer, topic: &str, offsets: &[(i32, i64)]) {
    let mut next: std::collections::HashMap<i32, i64> = std::collections::HashMap::new();
    for (p, o) in offsets {
        let e = next.entry(*p).or_insert(o + 1);
        *e = (*e).max(o + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in next {
        let _ = tpl.add_partition_offset(topic, p, Offset::Offset(o));
    }
    if tpl.count() > 0
        && let Err(e) = consumer.commit(&tpl, CommitMode::Async)
    {
        tracing::warn!(error = %e, "status offsets not committed; events will be redelivered (harmless)");
    }
}

/// Sends an unreadable status event to the dead-letter topic (bytes unchanged, reason and origin
/// in headers), retrying until the broker takes it: its offset is committed only afterwards.
async fn dead_letter_malformed(
    p: &MeteredProducer,
    dlq: &str,
    source: &str,
    (partition, offset, m): &(i32, i64, dialer_bus::Malformed),
) {
    let origin = format!("{source}/{partition}/{offset}");
    let mut wait = Duration::from_millis(100);
    loop {
        let rec = dialer_bus::kafka::dead_letter_record(dlq, m, &origin, "malformed_status");
        match p.send(rec, Duration::from_secs(5)).await {
            Ok(_) => return,
            Err((e, _)) => {
                dialer_bus::kafka::produce_error(dlq);
                tracing::warn!(error = %e, "dead-letter record not produced; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}
