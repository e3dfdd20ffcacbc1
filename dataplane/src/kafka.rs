//! Kafka in and out (rdkafka): one consumer and one idempotent producer per shard.
//!
//! One consumer per shard (rather than one consumer whose partition queues are split across
//! shards) keeps every shard independent: its fetches, pauses and commits touch no other core,
//! and group membership maps partitions to shards with no extra routing. The cost is one
//! broker connection set per shard, which is small next to the fetch traffic.

use std::collections::HashMap;
use std::time::Duration;

use dialer_domain::messages::{DispatchMessage, StatusEvent};
use futures::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer as _;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::bus::Delivery;
use crate::offsets::PartitionOffsets;
use crate::tuning::{Assignment, KafkaTuning, partitions_of_shard};

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

/// The rdkafka client context of every consumer and producer of the product: turns librdkafka's
/// statistics (every `statistics.interval.ms`) into `dialer_kafka_consumer_lag{topic,partition}`
/// for the partitions this client fetches, logs client errors through `tracing`, and notes the
/// partitions a consumer-group rebalance takes away or gives (for the shard to act on).
#[derive(Clone, Debug, Default)]
pub struct MetricsContext {
    /// Filled by the rebalance callback, which librdkafka runs inside the consumer's poll (on
    /// the shard's own thread, within `recv`); drained by the shard before it dials again.
    moved: std::sync::Arc<std::sync::Mutex<Vec<Moved>>>,
}

/// A consumer-group rebalance, as the shard sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Moved {
    /// These partitions are no longer this consumer's (they may come straight back).
    Revoked(Vec<i32>),
    /// This consumer's partitions from now on.
    Assigned(Vec<i32>),
}

impl ClientContext for MetricsContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (p, part) in &t.partitions {
                // Partition -1 is librdkafka's internal "unassigned" queue; a lag of -1 is unknown.
                if *p < 0 || part.consumer_lag < 0 || part.fetch_state == "none" {
                    continue;
                }
                metrics::gauge!("dialer_kafka_consumer_lag", "topic" => topic.clone(), "partition" => p.to_string())
                    .set(part.consumer_lag as f64);
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        metrics::counter!("dialer_kafka_client_errors_total").increment(1);
        tracing::warn!(error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for MetricsContext {
    fn pre_rebalance(&self, _consumer: &rdkafka::consumer::BaseConsumer<Self>, r: &rdkafka::consumer::Rebalance<'_>) {
        use rdkafka::consumer::Rebalance;
        let parts = |tpl: &TopicPartitionList| tpl.elements().iter().map(|e| e.partition()).collect::<Vec<i32>>();
        let moved = match r {
            Rebalance::Revoke(tpl) => Moved::Revoked(parts(tpl)),
            Rebalance::Assign(tpl) => Moved::Assigned(parts(tpl)),
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "consumer group rebalance failed");
                return;
            }
        };
        tracing::info!(?moved, "consumer group rebalance");
        self.moved.lock().unwrap_or_else(|p| p.into_inner()).push(moved);
    }
}

/// The consumer type used everywhere (lag metrics through [`MetricsContext`]).
pub type MeteredConsumer = StreamConsumer<MetricsContext>;
/// The producer type used everywhere.
pub type MeteredProducer = FutureProducer<MetricsContext>;

/// How often librdkafka reports statistics (consumer lag), in milliseconds.
pub const STATS_INTERVAL_MS: &str = "5000";

/// Counts one failed produce (queueing refused or delivery not acknowledged) for `topic`.
pub fn produce_error(topic: &str) {
    metrics::counter!("dialer_kafka_produce_errors_total", "topic" => topic.to_string()).increment(1);
}

/// A consumer with the product's context, from `config` (statistics enabled).
pub fn metered_consumer(config: &mut ClientConfig) -> Result<MeteredConsumer, KafkaError> {
    config.set("statistics.interval.ms", STATS_INTERVAL_MS).create_with_context(MetricsContext::default())
}

/// A producer with the product's context, from `config`.
pub fn metered_producer(config: &ClientConfig) -> Result<MeteredProducer, KafkaError> {
    config.create_with_context(MetricsContext::default())
}

pub struct KafkaSource {
    consumer: MeteredConsumer,
    topic: String,
    offsets: HashMap<i32, PartitionOffsets>,
}

impl KafkaSource {
    /// The dispatch topic this source reads.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// A consumer for shard `shard` of `shards`.
    pub fn new(
        t: &KafkaTopics,
        k: &KafkaTuning,
        assignment: Assignment,
        partitions: i32,
        shard: usize,
        shards: usize,
    ) -> Result<KafkaSource, KafkaError> {
        let consumer = metered_consumer(
            ClientConfig::new()
                .set("bootstrap.servers", &t.brokers)
                .set("group.id", &t.group_id)
                .set("client.id", format!("dialer-shard-{shard}"))
                // Nagle's algorithm holds small requests back until the previous one is
                // acknowledged: with delayed ACKs, tens of milliseconds on a quiet link.
                .set("socket.nagle.disable", "true")
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set("enable.partition.eof", "false")
                .set("fetch.min.bytes", k.fetch_min_bytes.to_string())
                .set("fetch.wait.max.ms", k.fetch_wait_max_ms.to_string())
                .set("queued.max.messages.kbytes", k.queued_max_messages_kbytes.to_string()),
        )?;
        match assignment {
            Assignment::Group => consumer.subscribe(&[&t.dispatch_topic])?,
            Assignment::Static => {
                let mut tpl = TopicPartitionList::new();
                for p in partitions_of_shard(shard, shards, partitions) {
                    tpl.add_partition_offset(&t.dispatch_topic, p, Offset::Stored)?;
                }
                consumer.assign(&tpl)?;
            }
        }
        Ok(KafkaSource { consumer, topic: t.dispatch_topic.clone(), offsets: HashMap::new() })
    }

    fn delivery(offsets: &mut HashMap<i32, PartitionOffsets>, m: &rdkafka::message::BorrowedMessage<'_>) -> Delivery {
        let (partition, offset) = (m.partition(), m.offset());
        offsets.entry(partition).or_default().received(offset);
        let payload = m.payload().unwrap_or_default();
        let msg = DispatchMessage::decode(payload).map_err(|e| crate::bus::Malformed {
            reason: e.to_string(),
            key: m.key().map(<[u8]>::to_vec),
            payload: payload.to_vec(),
        });
        Delivery { partition, offset, msg }
    }

    /// Waits for at least one message, then takes what else is ready, up to `max`.
    pub async fn recv_batch(&mut self, out: &mut Vec<Delivery>, max: usize) -> Result<(), KafkaError> {
        let first = self.consumer.recv().await?;
        out.push(Self::delivery(&mut self.offsets, &first));
        drop(first);
        while out.len() < max {
            let Some(next) = self.consumer.recv().now_or_never() else { break };
            let m = next?;
            out.push(Self::delivery(&mut self.offsets, &m));
        }
        Ok(())
    }

    /// What rebalances did since the last call, in order. A revoked partition's offsets are
    /// forgotten (it is never committed by this consumer again; if it comes back, its messages
    /// come again from the committed offset).
    pub fn take_moved(&mut self) -> Vec<Moved> {
        let moved = std::mem::take(&mut *self.consumer.context().moved.lock().unwrap_or_else(|p| p.into_inner()));
        for m in &moved {
            if let Moved::Revoked(ps) = m {
                for p in ps {
                    self.offsets.remove(p);
                }
            }
        }
        moved
    }

    pub fn done(&mut self, partition: i32, offset: i64) {
        self.offsets.entry(partition).or_default().done(offset);
    }

    fn tpl(&self, p: i32) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, p);
        tpl
    }

    pub fn pause(&self, partition: i32) {
        if let Err(e) = self.consumer.pause(&self.tpl(partition)) {
            tracing::warn!(partition, error = %e, "could not pause partition");
        }
    }

    pub fn resume(&self, partition: i32) {
        if let Err(e) = self.consumer.resume(&self.tpl(partition)) {
            tracing::warn!(partition, error = %e, "could not resume partition");
        }
    }

    /// Commits every partition whose commit point moved.
    pub fn commit(&mut self) {
        let mut tpl = TopicPartitionList::new();
        let mut points = Vec::new();
        for (p, o) in &self.offsets {
            if let Some(point) = o.commit_point()
                && tpl.add_partition_offset(&self.topic, *p, Offset::Offset(point)).is_ok()
            {
                points.push((*p, point));
            }
        }
        if points.is_empty() {
            return;
        }
        match self.consumer.commit(&tpl, rdkafka::consumer::CommitMode::Async) {
            Ok(()) => {
                for (p, point) in points {
                    if let Some(o) = self.offsets.get_mut(&p) {
                        o.committed(point);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "offset commit failed; will retry"),
        }
    }

    /// Commits synchronously (graceful shutdown).
    pub fn commit_sync(&mut self) {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &self.offsets {
            if let Some(point) = o.commit_point() {
                let _ = tpl.add_partition_offset(&self.topic, *p, Offset::Offset(point));
            }
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        {
            tracing::warn!(error = %e, "final offset commit failed");
        }
    }

    /// Each partition's last committed offset (the next message to read after a restart).
    pub fn committed_points(&self) -> Vec<(i32, i64)> {
        self.offsets.iter().filter_map(|(p, o)| o.committed_offset().map(|c| (*p, c))).collect()
    }

    /// Messages received and not finished.
    pub fn pending(&self) -> usize {
        self.offsets.values().map(PartitionOffsets::pending).sum()
    }
}

/// The status-event producer of one shard (idempotent, batched by `linger.ms`).
#[derive(Clone)]
pub struct KafkaSink {
    producer: MeteredProducer,
    config: ClientConfig,
    topic: String,
    dead_letter_topic: String,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl KafkaSink {
    pub fn new(t: &KafkaTopics, k: &KafkaTuning, shard: usize) -> Result<KafkaSink, KafkaError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &t.brokers)
            .set("client.id", format!("dialer-shard-{shard}-events"))
            .set("socket.nagle.disable", "true")
            .set("enable.idempotence", "true")
            .set("linger.ms", k.linger_ms.to_string())
            .set("batch.num.messages", k.batch_num_messages.to_string())
            .set("queue.buffering.max.messages", "1000000")
            .set("message.timeout.ms", k.message_timeout_ms.to_string());
        let producer = metered_producer(&config)?;
        let (topic, dead_letter_topic) = (t.status_topic.clone(), t.dead_letter_topic.clone());
        Ok(KafkaSink { producer, config, topic, dead_letter_topic })
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
        match metered_producer(&self.config) {
            Ok(p) => self.producer = p,
            Err(e) => tracing::error!(error = %e, "status producer cannot be recreated; retrying later"),
        }
    }

    /// Queues an event (keyed by call id, so one call's events stay in order), waiting while
    /// the producer's queue is full.
    pub async fn send(&self, ev: &StatusEvent) -> Result<DeliveryFuture, KafkaError> {
        let payload = ev.encode();
        let key = ev.call_id.as_bytes().to_vec();
        loop {
            let rec = FutureRecord::to(&self.topic).key(&key).payload(&payload);
            match self.producer.send_result(rec) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => {
                    produce_error(&self.topic);
                    return Err(e);
                }
            }
        }
    }

    /// Queues an unreadable dispatch message for the dead-letter topic, its bytes unchanged and
    /// the reason and origin in headers.
    pub async fn dead_letter(
        &self,
        m: &crate::bus::Malformed,
        source_topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<DeliveryFuture, KafkaError> {
        let origin = format!("{source_topic}/{partition}/{offset}");
        loop {
            let rec = dead_letter_record(&self.dead_letter_topic, m, &origin, "malformed_dispatch");
            match self.producer.send_result(rec) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => {
                    produce_error(&self.dead_letter_topic);
                    return Err(e);
                }
            }
        }
    }

    pub fn flush(&self, timeout: Duration) {
        use rdkafka::producer::Producer;
        let _ = self.producer.flush(timeout);
    }
}

/// The dead-letter record of an unreadable message: its key and bytes unchanged, the reason,
/// origin (`topic/partition/offset`) and kind (`malformed_dispatch`, `malformed_status`) in the
/// headers `dialer-reason`, `dialer-source`, `dialer-kind`.
pub fn dead_letter_record<'a>(
    topic: &'a str,
    m: &'a crate::bus::Malformed,
    origin: &str,
    kind: &str,
) -> FutureRecord<'a, [u8], [u8]> {
    use rdkafka::message::{Header, OwnedHeaders};
    let headers = OwnedHeaders::new()
        .insert(Header { key: "dialer-reason", value: Some(m.reason.as_bytes()) })
        .insert(Header { key: "dialer-source", value: Some(origin.as_bytes()) })
        .insert(Header { key: "dialer-kind", value: Some(kind.as_bytes()) });
    let rec = FutureRecord::<[u8], [u8]>::to(topic).payload(&m.payload).headers(headers);
    match &m.key {
        Some(k) => rec.key(k),
        None => rec,
    }
}

/// A topic as the product creates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
}

/// Creates the topics if they do not exist, with one replica (tests and benches).
pub async fn ensure_topics(brokers: &str, topics: &[(&str, i32)]) -> Result<(), KafkaError> {
    let specs: Vec<TopicSpec> =
        topics.iter().map(|(n, p)| TopicSpec { name: n.to_string(), partitions: *p, replication: 1 }).collect();
    create_topics(brokers, &specs).await
}

/// How many partitions `topic` has (metadata request).
pub async fn partition_count(brokers: &str, topic: &str) -> Result<i32, KafkaError> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    let probe = move || -> Result<i32, KafkaError> {
        let c: rdkafka::consumer::BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).create()?;
        let md = c.fetch_metadata(Some(&topic), std::time::Duration::from_secs(10))?;
        Ok(md.topics().first().map_or(0, |t| t.partitions().len() as i32))
    };
    tokio::task::spawn_blocking(probe).await.unwrap_or(Err(KafkaError::Canceled))
}

/// Creates the topics that do not exist yet (an existing topic is left as it is).
pub async fn create_topics(brokers: &str, topics: &[TopicSpec]) -> Result<(), KafkaError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let new: Vec<NewTopic<'_>> =
        topics.iter().map(|t| NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(t.replication))).collect();
    for r in admin.create_topics(&new, &AdminOptions::new()).await? {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => {
                return Err(KafkaError::AdminOp(e))
                    .inspect_err(|_| tracing::error!(topic = t, "topic creation failed"));
            }
        }
    }
    Ok(())
}
