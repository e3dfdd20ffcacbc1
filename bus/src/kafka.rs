//! Every Kafka client of the product (rdkafka, a dependency of this crate only): one
//! [`ClientSettings`] builds their configuration from the product's settings, one
//! [`MetricsContext`] meters them, and the helpers both topics share (dead letters, topic
//! creation, produce errors, readiness) live here. The topics' ends are in [`crate::dispatch`]
//! and [`crate::status`].

use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::dispatch::Malformed;

/// A Kafka client's failure (the broker refused, timed out or is unreachable), with
/// librdkafka's error as its source.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BrokerError(#[from] KafkaError);

/// The Kafka clients' settings a process is tuned with (the data plane's `[kafka]` tuning
/// section; the control plane runs [`KafkaTuning::control_plane`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaTuning {
    /// A fetch returns once this many bytes are ready…
    pub fetch_min_bytes: u32,
    /// …or after this long.
    pub fetch_wait_max_ms: u32,
    /// How long a producer waits to fill a batch (`linger.ms`).
    pub linger_ms: u32,
    /// Most messages in one produce request (`batch.num.messages`).
    pub batch_num_messages: u32,
    /// librdkafka's per-consumer prefetch bound.
    pub queued_max_messages_kbytes: u32,
    /// Offsets are committed at most this often.
    pub commit_every_ms: u64,
    /// How long the producer tries to deliver a message before reporting it failed
    /// (librdkafka `message.timeout.ms`); a shard then produces its status event again, with
    /// back-off.
    pub message_timeout_ms: u32,
    /// With group assignment: how the group spreads partitions over its members.
    pub assignor: Assignor,
    /// With group assignment: how long the group waits for a silent member (a killed process)
    /// before its partitions go to the others (librdkafka `session.timeout.ms`; the broker
    /// allows 6000–300000 by default).
    pub session_timeout_ms: u32,
    /// How producers compress their batches. Off by default: on one 2-core machine the CPU
    /// costs more than the bytes save (`tuning/README.md`); over a network that is the bound,
    /// `lz4`.
    pub compression: Compression,
}

impl Default for KafkaTuning {
    fn default() -> Self {
        KafkaTuning {
            fetch_min_bytes: 1,
            fetch_wait_max_ms: 5,
            linger_ms: 5,
            batch_num_messages: 10_000,
            queued_max_messages_kbytes: 65_536,
            commit_every_ms: 200,
            message_timeout_ms: 30_000,
            assignor: Assignor::Eager,
            session_timeout_ms: 45_000,
            compression: Compression::None,
        }
    }
}

impl KafkaTuning {
    /// The control plane's clients: librdkafka's fetch wait and delivery timeout (its
    /// scheduler waits for each publish's acknowledgement and gives back what timed out).
    pub fn control_plane() -> KafkaTuning {
        KafkaTuning { fetch_wait_max_ms: 500, message_timeout_ms: 300_000, ..KafkaTuning::default() }
    }
}

/// How a consumer group spreads the dispatch partitions (see [`KafkaTuning::assignor`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Assignor {
    /// Every rebalance revokes every partition of every member, then assigns them all.
    #[default]
    Eager,
    /// Only the partitions that move are revoked; the others keep being read.
    CooperativeSticky,
}

impl Assignor {
    /// librdkafka's `partition.assignment.strategy`.
    fn strategy(self) -> &'static str {
        match self {
            Assignor::Eager => "range,roundrobin",
            Assignor::CooperativeSticky => "cooperative-sticky",
        }
    }
}

/// A producer's batch compression (librdkafka `compression.type`; no zstd as built here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    None,
    Lz4,
    Snappy,
    Gzip,
}

impl Compression {
    /// librdkafka's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Snappy => "snappy",
            Compression::Gzip => "gzip",
        }
    }
}

/// How the dispatch topic's partitions reach the shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Assignment {
    /// Each shard is a member of the consumer group; the broker spreads partitions.
    Group,
    /// Shard `i` of `n` reads the partitions `p` with `p % n == i` (of `shards.partitions`),
    /// committing to the group's offsets without joining it.
    Static,
}

/// The settings every Kafka client of one process is built with: the brokers (`bus.brokers`,
/// `KAFKA_BROKERS`) and the process's [`KafkaTuning`].
#[derive(Clone, Debug, PartialEq)]
pub struct ClientSettings {
    pub brokers: String,
    pub tuning: KafkaTuning,
}

impl ClientSettings {
    /// The control plane's clients of `brokers` ([`KafkaTuning::control_plane`]).
    pub fn new(brokers: &str) -> ClientSettings {
        ClientSettings { brokers: brokers.to_string(), tuning: KafkaTuning::control_plane() }
    }

    /// What every client sets: the brokers, its name, statistics for the lag gauges, and no
    /// Nagle (it holds small requests until the previous one is acknowledged: with delayed
    /// ACKs, tens of milliseconds on a quiet link).
    fn base(&self, client_id: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id)
            .set("socket.nagle.disable", "true")
            .set("statistics.interval.ms", STATS_INTERVAL_MS);
        c
    }

    /// An idempotent producer's configuration (no duplicates or reordering from its retries).
    fn producer_config(&self, client_id: &str) -> ClientConfig {
        let t = &self.tuning;
        let mut c = self.base(client_id);
        c.set("enable.idempotence", "true")
            .set("linger.ms", t.linger_ms.to_string())
            .set("batch.num.messages", t.batch_num_messages.to_string())
            .set("queue.buffering.max.messages", "1000000")
            .set("message.timeout.ms", t.message_timeout_ms.to_string())
            .set("compression.type", t.compression.as_str());
        c
    }

    /// A consumer of `group` that commits by hand (at-least-once: only what is finished) and
    /// starts a new group at the earliest message; a static member of it with `instance`.
    fn consumer_config(&self, client_id: &str, group: &str, instance: Option<&str>) -> ClientConfig {
        let t = &self.tuning;
        let mut c = self.base(client_id);
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("fetch.min.bytes", t.fetch_min_bytes.to_string())
            .set("fetch.wait.max.ms", t.fetch_wait_max_ms.to_string())
            .set("queued.max.messages.kbytes", t.queued_max_messages_kbytes.to_string())
            .set("partition.assignment.strategy", t.assignor.strategy())
            .set("session.timeout.ms", t.session_timeout_ms.to_string());
        if let Some(id) = instance {
            c.set("group.instance.id", id);
        }
        c
    }

    /// A metered producer, shared by what one process produces (clone it).
    pub fn producer(&self, client_id: &str) -> Result<Producer, BrokerError> {
        Ok(Producer(self.producer_config(client_id).create_with_context(MetricsContext::default())?))
    }

    /// A metered consumer from [`ClientSettings::consumer_config`].
    pub(crate) fn consumer(
        &self,
        client_id: &str,
        group: &str,
        instance: Option<&str>,
    ) -> Result<MeteredConsumer, BrokerError> {
        Ok(self.consumer_config(client_id, group, instance).create_with_context(MetricsContext::default())?)
    }
}

/// A metered idempotent producer; clones share one client.
#[derive(Clone)]
pub struct Producer(pub(crate) MeteredProducer);

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Producer")
    }
}

/// The rdkafka client context of every consumer and producer of the product: turns librdkafka's
/// statistics (every `statistics.interval.ms`) into `dialer_kafka_consumer_lag{topic,partition}`
/// for the partitions this client fetches, logs client errors through `tracing`, and notes the
/// partitions a consumer-group rebalance takes away or gives (for the consumer's owner to act on).
#[derive(Clone, Debug, Default)]
pub struct MetricsContext {
    /// Filled by the rebalance callback, which librdkafka runs inside the consumer's poll (on
    /// the polling thread); drained by the consumer's owner with [`MetricsContext::take_moved`].
    moved: std::sync::Arc<std::sync::Mutex<Vec<Moved>>>,
    /// Set with each rebalance noted: the owner checks it per message without taking the lock.
    noted: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl MetricsContext {
    /// What rebalances did since the last call, in order.
    pub fn take_moved(&self) -> Vec<Moved> {
        if !self.noted.swap(false, std::sync::atomic::Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *self.moved.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A consumer-group rebalance, as the consumer's owner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Moved {
    /// These partitions are no longer this consumer's (they may come straight back).
    Revoked(Vec<i32>),
    /// These partitions are this consumer's from now on (eager: all of them; cooperative: the
    /// ones added).
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
        self.noted.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// The consumer type used everywhere (lag metrics through [`MetricsContext`]).
pub(crate) type MeteredConsumer = StreamConsumer<MetricsContext>;
/// The producer type used everywhere.
pub(crate) type MeteredProducer = FutureProducer<MetricsContext>;

/// How often librdkafka reports statistics (consumer lag), in milliseconds.
pub const STATS_INTERVAL_MS: &str = "5000";

/// Counts one failed produce (queueing refused or delivery not acknowledged) for `topic`.
pub(crate) fn produce_error(topic: &str) {
    metrics::counter!("dialer_kafka_produce_errors_total", "topic" => topic.to_string()).increment(1);
}

/// Starts `dialer_kafka_produce_errors_total{topic}` at zero for a topic a process produces to,
/// so that its rate is defined (and alerting works) before the first error.
pub(crate) fn produces_to(topic: &str) {
    metrics::counter!("dialer_kafka_produce_errors_total", "topic" => topic.to_string()).increment(0);
}

/// Whether a failed produce may still have reached the log (the broker may have written it and
/// the acknowledgement was lost): a timeout or a broken connection, as opposed to a refusal.
pub(crate) fn possibly_delivered(e: &KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as C;
    match e {
        KafkaError::MessageProduction(code) => matches!(
            code,
            C::MessageTimedOut
                | C::RequestTimedOut
                | C::OperationTimedOut
                | C::NetworkException
                | C::BrokerTransportFailure
                | C::AllBrokersDown
        ),
        _ => true,
    }
}

/// The dead-letter record of an unreadable message: its key and bytes unchanged, the reason,
/// origin (`topic/partition/offset`) and kind (`malformed_dispatch`, `malformed_status`) in the
/// headers `dialer-reason`, `dialer-source`, `dialer-kind`.
pub(crate) fn dead_letter_record<'a>(
    topic: &'a str,
    m: &'a Malformed,
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
pub async fn ensure_topics(brokers: &str, topics: &[(&str, i32)]) -> Result<(), BrokerError> {
    let specs: Vec<TopicSpec> =
        topics.iter().map(|(n, p)| TopicSpec { name: n.to_string(), partitions: *p, replication: 1 }).collect();
    create_topics(brokers, &specs).await
}

/// How many partitions `topic` has (metadata request).
pub async fn partition_count(brokers: &str, topic: &str) -> Result<i32, BrokerError> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    let probe = move || -> Result<i32, KafkaError> {
        let c: rdkafka::consumer::BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).create()?;
        let md = c.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        Ok(md.topics().first().map_or(0, |t| t.partitions().len() as i32))
    };
    Ok(tokio::task::spawn_blocking(probe).await.unwrap_or(Err(KafkaError::Canceled))?)
}

/// Creates the topics that do not exist yet (an existing topic is left as it is).
pub async fn create_topics(brokers: &str, topics: &[TopicSpec]) -> Result<(), BrokerError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let new: Vec<NewTopic<'_>> =
        topics.iter().map(|t| NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(t.replication))).collect();
    for r in admin.create_topics(&new, &AdminOptions::new()).await? {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => {
                tracing::error!(topic = t, "topic creation failed");
                return Err(KafkaError::AdminOp(e).into());
            }
        }
    }
    Ok(())
}

/// What to check when the broker does not answer.
const BROKER_HINT: &str = "check bus.brokers and that the broker runs";

/// `/readyz`'s broker check: the broker answers a metadata request for `topic`.
pub fn ready_check(producer: &Producer, topic: &str) -> dialer_telemetry::ReadyCheck {
    let (producer, topic) = (producer.0.clone(), topic.to_string());
    dialer_telemetry::ReadyCheck::new("kafka", move || {
        let (p, t) = (producer.clone(), topic.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                use rdkafka::producer::Producer;
                p.client().fetch_metadata(Some(&t), dialer_telemetry::CHECK_TIMEOUT).map(|_| ()).map_err(|e| {
                    dialer_telemetry::CheckError::Unreachable { what: "broker", hint: BROKER_HINT, source: Box::new(e) }
                })
            })
            .await
            .map_err(|e| dialer_telemetry::CheckError::Unreachable {
                what: "broker",
                hint: BROKER_HINT,
                source: Box::new(e),
            })?
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_is_metered_and_consumers_commit_by_hand() {
        let tuning = KafkaTuning { linger_ms: 2, fetch_wait_max_ms: 7, ..KafkaTuning::default() };
        let s = ClientSettings { brokers: "b:9092".into(), tuning };
        let p = s.producer_config("p");
        assert_eq!(p.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("linger.ms"), Some("2"));
        assert_eq!(p.get("statistics.interval.ms"), Some(STATS_INTERVAL_MS));
        let c = s.consumer_config("c", "g", None);
        assert_eq!(c.get("group.id"), Some("g"));
        assert_eq!(c.get("group.instance.id"), None, "dynamic membership unless named");
        assert_eq!(
            s.consumer_config("c", "g", Some("cp-1-recorder-0")).get("group.instance.id"),
            Some("cp-1-recorder-0")
        );
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("fetch.wait.max.ms"), Some("7"));
        assert_eq!(c.get("socket.nagle.disable"), Some("true"));
    }

    #[test]
    fn only_timeouts_and_broken_connections_may_have_delivered() {
        use rdkafka::types::RDKafkaErrorCode as C;
        assert!(possibly_delivered(&KafkaError::MessageProduction(C::MessageTimedOut)));
        assert!(possibly_delivered(&KafkaError::MessageProduction(C::AllBrokersDown)));
        assert!(!possibly_delivered(&KafkaError::MessageProduction(C::MessageSizeTooLarge)));
        assert!(!possibly_delivered(&KafkaError::MessageProduction(C::TopicAuthorizationFailed)));
    }
}
