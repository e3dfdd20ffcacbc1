//! Raw access to a test broker's topics, beside the product's own clients: what a test writes
//! that the product must cope with (unreadable messages, messages on chosen partitions), and
//! what it reads back to check the product (every record, its partition, key and headers).
//! Plain rdkafka clients, not the product's: a test should not trust the code it checks.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// One record as a test reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// The header's value as text (empty when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).to_string())
            .unwrap_or_default()
    }

    fn of(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
        let headers = m
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect())
            .unwrap_or_default();
        Record {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers,
        }
    }
}

/// One record a test writes: to a partition of its choice (else by key), with a key or none.
#[derive(Clone, Debug, Default)]
pub struct Outgoing {
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

impl Outgoing {
    pub fn to_partition(partition: i32, payload: Vec<u8>) -> Outgoing {
        Outgoing { partition: Some(partition), key: None, payload }
    }
}

/// Writes `records` to `topic` in order and waits until the broker has them all.
pub fn produce(brokers: &str, topic: &str, records: &[Outgoing]) {
    let p: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "5").create().expect("test producer");
    for r in records {
        let mut rec = FutureRecord::<[u8], [u8]>::to(topic).payload(&r.payload[..]);
        if let Some(k) = &r.key {
            rec = rec.key(&k[..]);
        }
        if let Some(part) = r.partition {
            rec = rec.partition(part);
        }
        p.send_result(rec).map_err(|(e, _)| e).expect("record queued");
    }
    p.flush(Duration::from_secs(30)).expect("records flushed to the broker");
}

/// A read from the broker failed.
#[derive(Debug, thiserror::Error)]
#[error("reading the topic failed: {0}")]
pub struct ReadError(#[source] rdkafka::error::KafkaError);

/// A reader of one topic.
pub struct TopicReader {
    consumer: StreamConsumer,
}

impl std::fmt::Debug for TopicReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TopicReader")
    }
}

impl TopicReader {
    fn consumer(brokers: &str) -> StreamConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", crate::unique_name("reader"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("test consumer")
    }

    /// Reads `topic` from its start as a member of a new consumer group.
    pub fn subscribe(brokers: &str, topic: &str) -> TopicReader {
        let consumer = Self::consumer(brokers);
        consumer.subscribe(&[topic]).expect("subscribe");
        TopicReader { consumer }
    }

    /// Reads each of the topic's `partitions` from its start by assignment: no group to join, so
    /// a slow group coordinator on a loaded machine (CI once saw 60 s pass with no message)
    /// cannot hide the messages.
    pub fn from_start(brokers: &str, topic: &str, partitions: i32) -> TopicReader {
        let consumer = Self::consumer(brokers);
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment.add_partition_offset(topic, p, Offset::Beginning).expect("offset");
        }
        consumer.assign(&assignment).expect("assign");
        TopicReader { consumer }
    }

    /// The next record within `timeout`: `None` on a timeout, `Some(Err)` on a read error.
    pub async fn next(&self, timeout: Duration) -> Option<Result<Record, ReadError>> {
        match tokio::time::timeout(timeout, self.consumer.recv()).await {
            Ok(Ok(m)) => Some(Ok(Record::of(&m))),
            Ok(Err(e)) => Some(Err(ReadError(e))),
            Err(_) => None,
        }
    }
}

/// The offsets `group` committed on each of `topic`'s `partitions` (0 where none).
pub fn committed_offsets(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: StreamConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", group).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
    committed.elements().iter().map(|e| e.offset().to_raw().unwrap_or(0).max(0)).collect()
}
