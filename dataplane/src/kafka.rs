//! The shards' Kafka ends: one consumer ([`KafkaSource`]) and one idempotent producer
//! ([`KafkaSink`]) per shard, built by [`dialer_bus::kafka::ClientSettings`] from the tuning.
//!
//! One consumer per shard (rather than one consumer whose partition queues are split across
//! shards) keeps every shard independent: its fetches, pauses and commits touch no other core,
//! and group membership maps partitions to shards with no extra routing. The cost is one
//! broker connection set per shard, which is small next to the fetch traffic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dialer_bus::kafka::{ClientSettings, MeteredConsumer, MeteredProducer, Moved, dead_letter_record, produce_error};
use dialer_bus::{Delivery, Malformed};
use dialer_domain::messages::{DispatchMessage, StatusEvent};
use futures::FutureExt;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer as _;
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::offsets::CommitPoints;
use crate::source::{Committed, DispatchSource, SourceError};
use crate::tuning::{Assignment, KafkaTuning};

/// Where a shard's Kafka traffic goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaTopics {
    pub brokers: String,
    pub dispatch_topic: String,
    pub status_topic: String,
    /// Consumer group (offsets are committed to it in both assignment modes).
    pub group_id: String,
    /// Where unreadable dispatch messages go, with the reason in headers (`dialer-reason`,
    /// `dialer-source`); the recorder sends calls that failed for good to the same topic.
    pub dead_letter_topic: String,
}

impl KafkaTuning {
    /// The client settings of a shard's consumer and producer on `brokers`.
    pub fn client_settings(&self, brokers: &str) -> ClientSettings {
        ClientSettings {
            brokers: brokers.to_string(),
            linger_ms: self.linger_ms,
            batch_num_messages: self.batch_num_messages,
            message_timeout_ms: self.message_timeout_ms,
            fetch_min_bytes: self.fetch_min_bytes,
            fetch_wait_max_ms: self.fetch_wait_max_ms,
            queued_max_messages_kbytes: self.queued_max_messages_kbytes,
            assignment_strategy: match self.assignor {
                crate::tuning::Assignor::Eager => "range,roundrobin",
                crate::tuning::Assignor::CooperativeSticky => "cooperative-sticky",
            },
            session_timeout_ms: self.session_timeout_ms,
            compression: self.compression.as_str(),
        }
    }
}

/// A shard's consumer of the dispatch topic, with the commit points of its partitions.
pub struct KafkaSource {
    consumer: Arc<MeteredConsumer>,
    topic: String,
    offsets: CommitPoints,
    /// Commits the broker confirmed (a synchronous commit on a blocking thread, so the shard's
    /// loop never waits for the broker), taken in at the next commit tick.
    confirmed: Arc<Mutex<Vec<(i32, i64)>>>,
    /// A commit is on its way: the next waits for its answer.
    committing: Arc<AtomicBool>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// A consumer for global shard `shard` of `shards` (static assignment reads its partitions
    /// of `partitions`; group assignment subscribes).
    pub fn new(
        t: &KafkaTopics,
        k: &KafkaTuning,
        assignment: Assignment,
        partitions: i32,
        (shard, shards): (usize, usize),
    ) -> Result<KafkaSource, KafkaError> {
        let consumer = k.client_settings(&t.brokers).consumer(&format!("dialer-shard-{shard}"), &t.group_id)?;
        match assignment {
            Assignment::Group => consumer.subscribe(&[&t.dispatch_topic])?,
            Assignment::Static => {
                let mut tpl = TopicPartitionList::new();
                for p in dialer_bus::partitions::partitions_of_shard(shard, shards, partitions) {
                    tpl.add_partition_offset(&t.dispatch_topic, p, Offset::Stored)?;
                }
                consumer.assign(&tpl)?;
            }
        }
        Ok(KafkaSource {
            consumer: Arc::new(consumer),
            topic: t.dispatch_topic.clone(),
            offsets: CommitPoints::default(),
            confirmed: Arc::default(),
            committing: Arc::default(),
        })
    }

    fn delivery(offsets: &mut CommitPoints, m: &rdkafka::message::BorrowedMessage<'_>) -> Delivery {
        let (partition, offset) = (m.partition(), m.offset());
        offsets.received(partition, offset);
        let payload = m.payload().unwrap_or_default();
        let msg = DispatchMessage::decode(payload).map_err(|e| Malformed {
            reason: e.to_string(),
            key: m.key().map(<[u8]>::to_vec),
            payload: payload.to_vec(),
        });
        Delivery { partition, offset, msg }
    }

    fn tpl(&self, p: i32) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, p);
        tpl
    }

    fn commit_tpl(&self, points: &[(i32, i64)]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (p, point) in points {
            let _ = tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*point));
        }
        tpl
    }

    /// Messages received and not finished.
    pub fn pending(&self) -> usize {
        self.offsets.pending()
    }
}

impl DispatchSource for KafkaSource {
    /// Waits for at least one message, then takes what else is ready, up to `max`.
    async fn recv(&mut self, out: &mut Vec<Delivery>, max: usize) -> Result<bool, SourceError> {
        let first = self.consumer.recv().await?;
        out.push(Self::delivery(&mut self.offsets, &first));
        drop(first);
        while out.len() < max {
            let Some(next) = self.consumer.recv().now_or_never() else { break };
            let m = next?;
            out.push(Self::delivery(&mut self.offsets, &m));
        }
        Ok(true)
    }

    /// A revoked partition's offsets are forgotten (it is never committed by this consumer
    /// again; if it comes back, its messages come again from the committed offset).
    fn take_moved(&mut self) -> Vec<Moved> {
        let moved = self.consumer.context().take_moved();
        for m in &moved {
            if let Moved::Revoked(ps) = m {
                self.offsets.revoked(ps);
            }
        }
        moved
    }

    fn done(&mut self, partition: i32, offset: i64) {
        self.offsets.done(partition, offset);
    }

    fn pause(&mut self, partition: i32) {
        if let Err(e) = self.consumer.pause(&self.tpl(partition)) {
            tracing::warn!(partition, error = %e, "could not pause partition");
        }
    }

    fn resume(&mut self, partition: i32) {
        if let Err(e) = self.consumer.resume(&self.tpl(partition)) {
            tracing::warn!(partition, error = %e, "could not resume partition");
        }
    }

    /// Takes in the commits the broker confirmed, and commits every partition whose commit
    /// point moved, on a blocking thread. Only confirmed points count as committed (they let
    /// the journal forget resolved attempts): a commit that fails (a rebalance, a broker
    /// restart) leaves the messages to come again from the older offset, and the journal still
    /// knows their attempts. (An asynchronous commit taken for done let a broker restart in
    /// `bench chaos --assignment group` dial three attempts twice.)
    fn commit(&mut self) -> Committed {
        let confirmed = std::mem::take(&mut *self.confirmed.lock().unwrap_or_else(|p| p.into_inner()));
        self.offsets.committed(&confirmed);
        let due = self.offsets.due();
        if !due.is_empty() && !self.committing.swap(true, Ordering::AcqRel) {
            let tpl = self.commit_tpl(&due);
            let (consumer, sink, flag) = (self.consumer.clone(), self.confirmed.clone(), self.committing.clone());
            tokio::task::spawn_blocking(move || {
                match consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync) {
                    Ok(()) => sink.lock().unwrap_or_else(|p| p.into_inner()).extend(due),
                    Err(e) => tracing::warn!(error = %e, "offset commit failed; will retry"),
                }
                flag.store(false, Ordering::Release);
            });
        }
        Committed::Points(self.offsets.committed_points())
    }

    /// Commits synchronously (graceful shutdown).
    fn commit_sync(&mut self) {
        let due = self.offsets.due();
        if due.is_empty() {
            return;
        }
        match self.consumer.commit(&self.commit_tpl(&due), rdkafka::consumer::CommitMode::Sync) {
            Ok(()) => self.offsets.committed(&due),
            Err(e) => tracing::warn!(error = %e, "final offset commit failed"),
        }
    }

    fn dead_letter_origin(&self) -> Option<&str> {
        Some(&self.topic)
    }
}

/// The status-event producer of one shard (idempotent, batched by `linger.ms`).
#[derive(Clone)]
pub struct KafkaSink {
    producer: MeteredProducer,
    settings: ClientSettings,
    client_id: String,
    topic: String,
    dead_letter_topic: String,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink").field("topic", &self.topic).finish_non_exhaustive()
    }
}

/// How long a shard waits before queueing again into a full producer queue.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(1);

impl KafkaSink {
    pub fn new(t: &KafkaTopics, k: &KafkaTuning, shard: usize) -> Result<KafkaSink, KafkaError> {
        let settings = k.client_settings(&t.brokers);
        let client_id = format!("dialer-shard-{shard}-events");
        let producer = settings.producer(&client_id)?;
        let (topic, dead_letter_topic) = (t.status_topic.clone(), t.dead_letter_topic.clone());
        dialer_bus::kafka::produces_to(&topic);
        dialer_bus::kafka::produces_to(&dead_letter_topic);
        Ok(KafkaSink { producer, settings, client_id, topic, dead_letter_topic })
    }

    /// An idempotent producer whose delivery state became uncertain (messages timed out in
    /// flight) may stop for good with a fatal error, or keep being refused by a broker that lost
    /// its sequence state; after a fatal error, or `stuck`, a new producer (a new producer id)
    /// takes its place, so that the events waiting to be produced again get through.
    pub fn heal(&mut self, stuck: bool) {
        match self.producer.client().fatal_error() {
            Some((code, reason)) => {
                tracing::warn!(?code, %reason, "status producer failed fatally; starting a new one")
            }
            None if stuck => tracing::warn!("status producer keeps failing; starting a new one"),
            None => return,
        }
        match self.settings.producer(&self.client_id) {
            Ok(p) => self.producer = p,
            Err(e) => tracing::error!(error = %e, "status producer cannot be recreated; retrying later"),
        }
    }

    /// Queues an event (keyed by call id, so one call's events stay in order), waiting while
    /// the producer's queue is full.
    pub async fn send(&self, ev: &StatusEvent) -> Result<DeliveryFuture, KafkaError> {
        let payload = ev.encode();
        let key = ev.call_id.as_bytes().to_vec();
        self.queue(&self.topic, || FutureRecord::to(&self.topic).key(&key).payload(&payload)).await
    }

    /// Queues an unreadable dispatch message for the dead-letter topic, its bytes unchanged and
    /// the reason and origin in headers.
    pub async fn dead_letter(
        &self,
        m: &Malformed,
        source_topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<DeliveryFuture, KafkaError> {
        let origin = format!("{source_topic}/{partition}/{offset}");
        let topic = &self.dead_letter_topic;
        self.queue(topic, || dead_letter_record(topic, m, &origin, "malformed_dispatch")).await
    }

    /// Queues the record `make` builds, waiting while the producer's queue is full.
    async fn queue<'a, K, P>(
        &self,
        topic: &str,
        make: impl Fn() -> FutureRecord<'a, K, P>,
    ) -> Result<DeliveryFuture, KafkaError>
    where
        K: rdkafka::message::ToBytes + ?Sized + 'a,
        P: rdkafka::message::ToBytes + ?Sized + 'a,
    {
        loop {
            match self.producer.send_result(make()) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                }
                Err((e, _)) => {
                    produce_error(topic);
                    return Err(e);
                }
            }
        }
    }

    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}
