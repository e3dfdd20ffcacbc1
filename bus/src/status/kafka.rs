//! The status topic's ends on Apache Kafka: one idempotent producer per shard
//! ([`KafkaStatusSink`]) and the recorders' consumers ([`KafkaStatusSource`]), which also produce
//! dead letters.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use dialer_domain::messages::StatusEvent;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::Producer as _;
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use uuid::Uuid;

use super::{Sent, StatusSink, StatusSource};
use crate::dispatch::{FetchError, Malformed};
use crate::kafka::{BrokerError, ClientSettings, MeteredConsumer, MeteredProducer, Producer};
use crate::kafka::{dead_letter_record, produce_error, produces_to};

/// How long a shard waits before queueing again into a full producer queue.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(1);
/// How long a recorder's produce waits for room in the producer's queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// A recorder's first wait before producing a refused dead letter again (doubled up to 5 s).
const RETRY_FIRST: Duration = Duration::from_millis(100);

/// The broker's answer for one record a shard produced: `true` once acknowledged.
pub struct KafkaAck(DeliveryFuture);

impl std::fmt::Debug for KafkaAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KafkaAck")
    }
}

impl Future for KafkaAck {
    type Output = bool;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        Pin::new(&mut self.0).poll(cx).map(|r| matches!(r, Ok(Ok(_))))
    }
}

/// The status-event producer of one shard (idempotent, batched by `linger.ms`).
#[derive(Clone)]
pub struct KafkaStatusSink {
    producer: MeteredProducer,
    clients: ClientSettings,
    client_id: String,
    topic: String,
    dead_letter_topic: String,
}

impl std::fmt::Debug for KafkaStatusSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaStatusSink").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl KafkaStatusSink {
    /// Shard `shard`'s producer of `topic`; unreadable dispatch messages go to
    /// `dead_letter_topic`.
    pub fn new(
        clients: &ClientSettings,
        topic: &str,
        dead_letter_topic: &str,
        shard: usize,
    ) -> Result<KafkaStatusSink, BrokerError> {
        let client_id = format!("dialer-shard-{shard}-events");
        let producer = clients.producer(&client_id)?.0;
        produces_to(topic);
        produces_to(dead_letter_topic);
        Ok(KafkaStatusSink {
            producer,
            clients: clients.clone(),
            client_id,
            topic: topic.to_string(),
            dead_letter_topic: dead_letter_topic.to_string(),
        })
    }

    /// Queues the record `make` builds, waiting while the producer's queue is full.
    async fn queue<'a, K, P>(
        &self,
        topic: &str,
        make: impl Fn() -> FutureRecord<'a, K, P>,
    ) -> Result<KafkaAck, BrokerError>
    where
        K: rdkafka::message::ToBytes + ?Sized + 'a,
        P: rdkafka::message::ToBytes + ?Sized + 'a,
    {
        loop {
            match self.producer.send_result(make()) {
                Ok(f) => return Ok(KafkaAck(f)),
                Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                }
                Err((e, _)) => {
                    produce_error(topic);
                    return Err(e.into());
                }
            }
        }
    }
}

impl StatusSink for KafkaStatusSink {
    type Ack = KafkaAck;

    async fn send(&mut self, ev: StatusEvent) -> Sent<KafkaAck> {
        let payload = ev.encode();
        let key = *ev.call_id.as_bytes();
        let queued = self.queue(&self.topic, || FutureRecord::to(&self.topic).key(&key[..]).payload(&payload)).await;
        match queued {
            Ok(ack) => Sent::Pending(ack, ev),
            Err(e) => Sent::Refused(ev, e),
        }
    }

    async fn dead_letter(&mut self, bad: &Malformed, origin: &str) -> Result<KafkaAck, BrokerError> {
        let topic = &self.dead_letter_topic;
        self.queue(topic, || dead_letter_record(topic, bad, origin, "malformed_dispatch")).await
    }

    /// An idempotent producer whose delivery state became uncertain (messages timed out in
    /// flight) may stop for good with a fatal error, or keep being refused by a broker that lost
    /// its sequence state; then a new producer takes its place.
    fn heal(&mut self, stuck: bool) {
        match self.producer.client().fatal_error() {
            Some((code, reason)) => {
                tracing::warn!(?code, %reason, "status producer failed fatally; starting a new one")
            }
            None if stuck => tracing::warn!("status producer keeps failing; starting a new one"),
            None => return,
        }
        match self.clients.producer(&self.client_id) {
            Ok(p) => self.producer = p.0,
            Err(e) => tracing::error!(error = %e, "status producer cannot be recreated; retrying later"),
        }
    }

    fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

/// A recorder's consumer of the status topic, and the producer of its dead letters. It keeps
/// what it read since the last [`StatusSource::written`]: the offsets to commit and the
/// unreadable events to dead-letter first.
pub struct KafkaStatusSource {
    consumer: MeteredConsumer,
    topic: String,
    dead_letters: Producer,
    dead_letter_topic: String,
    read: Read,
}

/// What a recorder's source read since its batch was last written.
#[derive(Default)]
struct Read {
    offsets: Vec<(i32, i64)>,
    malformed: Vec<(i32, i64, Malformed)>,
}

impl std::fmt::Debug for KafkaStatusSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KafkaStatusSource({})", self.topic)
    }
}

impl KafkaStatusSource {
    /// `workers` sources on the status `topic` for the recorders of one process, each its own
    /// consumer in `group`. The broker splits the topic's partitions between them; a call's
    /// events (keyed by its id) all go to one partition, so to one recorder, in order. Dead
    /// letters go to `dead_letter_topic` through `producer`.
    pub fn group(
        clients: &ClientSettings,
        (client_id, group, topic): (&str, &str, &str),
        (producer, dead_letter_topic): (&Producer, &str),
        workers: usize,
        instance_id: &str,
    ) -> Result<Vec<KafkaStatusSource>, BrokerError> {
        produces_to(dead_letter_topic);
        (0..workers.max(1))
            .map(|i| {
                let member = (!instance_id.is_empty()).then(|| format!("{instance_id}-recorder-{i}"));
                let consumer = clients.consumer(&format!("{client_id}-{i}"), group, member.as_deref())?;
                consumer.subscribe(&[topic])?;
                Ok(KafkaStatusSource {
                    consumer,
                    topic: topic.to_string(),
                    dead_letters: producer.clone(),
                    dead_letter_topic: dead_letter_topic.to_string(),
                    read: Read::default(),
                })
            })
            .collect()
    }

    /// Takes one message: its offset to commit later, its event, or its bytes to dead-letter.
    fn take(read: &mut Read, m: &BorrowedMessage<'_>, out: &mut Vec<StatusEvent>) {
        read.offsets.push((m.partition(), m.offset()));
        match StatusEvent::decode(m.payload().unwrap_or_default()) {
            Ok(e) => out.push(e),
            Err(e) => {
                metrics::counter!("dialer_recorder_malformed_total").increment(1);
                tracing::warn!(partition = m.partition(), offset = m.offset(), error = %e, "malformed status event: sent to the dead-letter topic");
                let bad = Malformed {
                    reason: e.to_string(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                };
                read.malformed.push((m.partition(), m.offset(), bad));
            }
        }
    }

    /// Sends an unreadable status event to the dead-letter topic (bytes unchanged, reason and
    /// origin in headers), retrying until the broker takes it.
    async fn dead_letter_malformed(&self, (partition, offset, bad): &(i32, i64, Malformed)) {
        let origin = format!("{}/{partition}/{offset}", self.topic);
        let dlq = &self.dead_letter_topic;
        let mut wait = RETRY_FIRST;
        loop {
            let rec = dead_letter_record(dlq, bad, &origin, "malformed_status");
            match self.dead_letters.0.send(rec, QUEUE_TIMEOUT).await {
                Ok(_) => return,
                Err((e, _)) => {
                    produce_error(dlq);
                    tracing::warn!(error = %e, "dead-letter record not produced; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Commits one past the highest offset read of each partition (asynchronously: a commit
    /// lost in a rebalance only makes written events come again, which the store ignores).
    fn commit(&mut self) {
        let mut next: HashMap<i32, i64> = HashMap::new();
        for (p, o) in self.read.offsets.drain(..) {
            let e = next.entry(p).or_insert(o + 1);
            *e = (*e).max(o + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in next {
            let _ = tpl.add_partition_offset(&self.topic, p, Offset::Offset(o));
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::warn!(error = %e, "status offsets not committed; events will be redelivered (harmless)");
        }
    }
}

impl StatusSource for KafkaStatusSource {
    async fn recv(&mut self, out: &mut Vec<StatusEvent>, _max: usize) -> Result<bool, FetchError> {
        let m = self.consumer.recv().await.map_err(BrokerError::from)?;
        Self::take(&mut self.read, &m, out);
        Ok(true)
    }

    async fn fill(&mut self, out: &mut Vec<StatusEvent>, max: usize, until: tokio::time::Instant) {
        while out.len() + self.read.malformed.len() < max {
            match tokio::time::timeout_at(until, self.consumer.recv()).await {
                Ok(Ok(m)) => Self::take(&mut self.read, &m, out),
                _ => break,
            }
        }
    }

    fn close(&mut self) -> bool {
        false
    }

    async fn written(&mut self) {
        let malformed = std::mem::take(&mut self.read.malformed);
        for m in &malformed {
            self.dead_letter_malformed(m).await;
        }
        self.commit();
    }

    /// Produced all at once and awaited together: one at a time, each waiting for its
    /// acknowledgement, a batch with many dead letters would hold the recorder for a broker
    /// round trip per letter.
    async fn dead_letter(&self, letters: &[(Uuid, String)]) {
        let mut waiting: Vec<&(Uuid, String)> = letters.iter().collect();
        let mut wait = RETRY_FIRST;
        let topic = &self.dead_letter_topic;
        while !waiting.is_empty() {
            let sends = waiting.iter().map(|(call, body)| {
                self.dead_letters
                    .0
                    .send(FutureRecord::to(topic).key(call.as_bytes().as_slice()).payload(body), QUEUE_TIMEOUT)
            });
            let results = futures::future::join_all(sends).await;
            let mut refused = Vec::new();
            for (letter, result) in waiting.into_iter().zip(results) {
                if let Err((err, _)) = result {
                    produce_error(topic);
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
