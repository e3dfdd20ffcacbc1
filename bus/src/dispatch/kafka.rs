//! The dispatch topic's ends on Apache Kafka: the scheduler's producer ([`KafkaDispatchSink`])
//! and one consumer per shard ([`KafkaDispatchSource`]).
//!
//! One consumer per shard (rather than one consumer whose partition queues are split across
//! shards) keeps every shard independent: its fetches, pauses and commits touch no other core,
//! and group membership maps partitions to shards with no extra routing. The cost is one
//! broker connection set per shard, which is small next to the fetch traffic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dialer_domain::messages::DispatchMessage;
use futures::FutureExt;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::{Committed, Delivery, DispatchSink, DispatchSource, FetchError, Malformed, NotPublished, PublishError};
use crate::kafka::{
    Assignment, BrokerError, ClientSettings, MeteredConsumer, Moved, Producer, possibly_delivered, produce_error,
};
use crate::offsets::CommitPoints;

/// How long a produce waits for room in the producer's queue before it counts as failed.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// The scheduler's end on Kafka: messages keyed by call id (one call's messages in one
/// partition, in order), each publish awaited until the broker acknowledges it.
#[derive(Clone)]
pub struct KafkaDispatchSink {
    producer: Producer,
    topic: String,
}

impl std::fmt::Debug for KafkaDispatchSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KafkaDispatchSink({})", self.topic)
    }
}

impl KafkaDispatchSink {
    pub fn new(producer: Producer, topic: &str) -> KafkaDispatchSink {
        crate::kafka::produces_to(topic);
        KafkaDispatchSink { producer, topic: topic.to_string() }
    }

    /// How many partitions the topic has now. A topic the metadata does not show yet (just
    /// created, or an error) has no partition to send to: an error, so that the caller tries
    /// again rather than counting an opt-out as announced that no shard received.
    async fn partitions(&self) -> Result<i32, BrokerError> {
        let (p, t) = (self.producer.0.clone(), self.topic.clone());
        let probe = move || {
            use rdkafka::producer::Producer as _;
            let md = p.client().fetch_metadata(Some(&t), Duration::from_secs(5))?;
            match md.topics().first().filter(|t| t.error().is_none()).map_or(0, |t| t.partitions().len()) {
                0 => Err(KafkaError::MetadataFetch(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)),
                n => Ok(n as i32),
            }
        };
        Ok(tokio::task::spawn_blocking(probe).await.unwrap_or(Err(KafkaError::Canceled))?)
    }
}

impl DispatchSink for KafkaDispatchSink {
    const MAY_STRAND_CLAIMS: bool = true;

    async fn publish_all(&self, msgs: Vec<DispatchMessage>) -> Result<(), NotPublished> {
        let encoded: Vec<(Vec<u8>, [u8; 16])> = msgs.iter().map(|m| (m.encode(), *m.call_id.as_bytes())).collect();
        let topic = &self.topic;
        let acks = encoded.iter().map(|(payload, key)| {
            self.producer.0.send(FutureRecord::to(topic).key(&key[..]).payload(payload), QUEUE_TIMEOUT)
        });
        let (mut unacked, mut in_doubt, mut last) = (Vec::new(), 0, None);
        for (i, r) in futures::future::join_all(acks).await.into_iter().enumerate() {
            if let Err((e, _)) = r {
                produce_error(topic);
                if possibly_delivered(&e) {
                    in_doubt += 1;
                } else {
                    unacked.push(i);
                }
                last = Some(e);
            }
        }
        match last {
            None => Ok(()),
            Some(e) => Err(NotPublished { unacked, in_doubt, reason: BrokerError::from(e).into() }),
        }
    }

    async fn broadcast(&self, msgs: &[DispatchMessage]) -> Result<(), PublishError> {
        let partitions = self.partitions().await?;
        let encoded: Vec<Vec<u8>> = msgs.iter().map(DispatchMessage::encode).collect();
        let mut acks = Vec::new();
        for payload in &encoded {
            for part in 0..partitions {
                let r = FutureRecord::<(), _>::to(&self.topic).partition(part).payload(payload);
                acks.push(self.producer.0.send(r, QUEUE_TIMEOUT));
            }
        }
        for r in futures::future::join_all(acks).await {
            r.map_err(|(e, _)| BrokerError::from(e))?;
        }
        Ok(())
    }
}

/// A shard's consumer of the dispatch topic, with the commit points of its partitions.
pub struct KafkaDispatchSource {
    consumer: Arc<MeteredConsumer>,
    topic: String,
    offsets: CommitPoints,
    /// Commits the broker confirmed (a synchronous commit on a blocking thread, so the shard's
    /// loop never waits for the broker), taken in at the next commit tick.
    confirmed: Arc<Mutex<Vec<(i32, i64)>>>,
    /// The point each partition was last committed to by this source, held for the whole of a
    /// commit: commits go out one at a time and never backwards (see [`Forward`]).
    forward: Arc<Mutex<Forward>>,
    /// A commit is on its way: the next waits for its answer.
    committing: Arc<AtomicBool>,
    /// Rebalances served since the owner last took them ([`DispatchSource::take_moved`]).
    moved: Vec<Moved>,
    /// A message fetched after a rebalance the owner has not taken yet: the next fetch's first.
    after_rebalance: Option<Delivery>,
}

impl std::fmt::Debug for KafkaDispatchSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDispatchSource").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl KafkaDispatchSource {
    /// A consumer of `topic` in `group` for global shard `shard` of `shards` (static assignment
    /// reads its partitions of `partitions`; group assignment subscribes).
    pub fn new(
        clients: &ClientSettings,
        topic: &str,
        group: &str,
        assignment: Assignment,
        partitions: i32,
        (shard, shards): (usize, usize),
    ) -> Result<KafkaDispatchSource, BrokerError> {
        let consumer = clients.consumer(&format!("dialer-shard-{shard}"), group, None)?;
        match assignment {
            Assignment::Group => consumer.subscribe(&[topic])?,
            Assignment::Static => {
                let mut tpl = TopicPartitionList::new();
                for p in crate::partitions::partitions_of_shard(shard, shards, partitions) {
                    tpl.add_partition_offset(topic, p, Offset::Stored)?;
                }
                consumer.assign(&tpl)?;
            }
        }
        Ok(KafkaDispatchSource {
            consumer: Arc::new(consumer),
            topic: topic.to_string(),
            offsets: CommitPoints::default(),
            confirmed: Arc::default(),
            forward: Arc::default(),
            committing: Arc::default(),
            moved: Vec::new(),
            after_rebalance: None,
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

    /// Messages received and not finished.
    pub fn pending(&self) -> usize {
        self.offsets.pending()
    }
}

/// The offsets a source committed last, per partition. A commit runs with this held, so a
/// shard's commits reach the broker one at a time, and a point at or behind the last one is
/// not sent again. Without it the periodic commit (on a blocking thread) could run after the
/// final one of a graceful stop and take the group's offsets back: the messages in between
/// would be delivered again after the restart, and without a journal dialled twice.
#[derive(Debug, Default)]
struct Forward {
    last: std::collections::HashMap<i32, i64>,
}

impl Forward {
    /// Commits the points of `due` ahead of the last ones (synchronously); the points the broker
    /// confirmed.
    fn commit(
        &mut self,
        consumer: &MeteredConsumer,
        topic: &str,
        due: &[(i32, i64)],
    ) -> Result<Vec<(i32, i64)>, KafkaError> {
        let ahead: Vec<(i32, i64)> =
            due.iter().copied().filter(|(p, o)| self.last.get(p).is_none_or(|last| o > last)).collect();
        if ahead.is_empty() {
            return Ok(Vec::new());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, point) in &ahead {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*point))?;
        }
        consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync)?;
        self.last.extend(ahead.iter().copied());
        Ok(ahead)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes the rebalances the consumer's last poll served into `moved`; true if there were any.
/// A revoked partition's offsets are forgotten at once, before any message fetched after the
/// rebalance counts as received. An assigned partition is fetched whatever its pause state:
/// librdkafka keeps a partition paused across a rebalance that gives it back, and its owner
/// forgot the pause when the partition was revoked.
fn note_moved(consumer: &MeteredConsumer, topic: &str, offsets: &mut CommitPoints, moved: &mut Vec<Moved>) -> bool {
    let taken = consumer.context().take_moved();
    for m in &taken {
        match m {
            Moved::Revoked(ps) => offsets.revoked(ps),
            Moved::Assigned(ps) => {
                let mut tpl = TopicPartitionList::new();
                ps.iter().for_each(|p| _ = tpl.add_partition(topic, *p));
                if let Err(e) = consumer.resume(&tpl) {
                    tracing::warn!(partitions = ?ps, error = %e, "could not resume assigned partitions");
                }
            }
        }
    }
    let any = !taken.is_empty();
    moved.extend(taken);
    any
}

impl DispatchSource for KafkaDispatchSource {
    /// Waits for at least one message, then takes what else is ready, up to `max`. A batch
    /// never spans a rebalance: the message fetched after one waits for the next call, so that
    /// its owner takes the rebalance ([`DispatchSource::take_moved`]) first. (Otherwise, under
    /// the eager assignor, a partition revoked and assigned straight back had the first
    /// messages it fetched again dropped with the revoked ones, and the later offsets
    /// committed past them: unread for good.)
    async fn recv(&mut self, out: &mut Vec<Delivery>, max: usize) -> Result<bool, FetchError> {
        let first = match self.after_rebalance.take() {
            Some(d) => d,
            None => {
                let m = self.consumer.recv().await.map_err(BrokerError::from)?;
                let rebalanced = note_moved(&self.consumer, &self.topic, &mut self.offsets, &mut self.moved);
                let d = Self::delivery(&mut self.offsets, &m);
                if rebalanced {
                    self.after_rebalance = Some(d);
                    return Ok(true);
                }
                d
            }
        };
        out.push(first);
        while out.len() < max {
            let Some(next) = self.consumer.recv().now_or_never() else { break };
            let m = next.map_err(BrokerError::from)?;
            let rebalanced = note_moved(&self.consumer, &self.topic, &mut self.offsets, &mut self.moved);
            let d = Self::delivery(&mut self.offsets, &m);
            if rebalanced {
                self.after_rebalance = Some(d);
                break;
            }
            out.push(d);
        }
        Ok(true)
    }

    /// What rebalances did since the last call, in order. A revoked partition's offsets are
    /// forgotten (it is never committed by this consumer again; if it comes back, its messages
    /// come again from the committed offset).
    fn take_moved(&mut self) -> Vec<Moved> {
        note_moved(&self.consumer, &self.topic, &mut self.offsets, &mut self.moved);
        std::mem::take(&mut self.moved)
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
    /// knows their attempts. (An asynchronous commit taken for done would let the journal
    /// forget attempts whose messages a broker restart then delivers again: dialled twice.)
    fn commit(&mut self) -> Committed {
        let confirmed = std::mem::take(&mut *lock(&self.confirmed));
        self.offsets.committed(&confirmed);
        let due = self.offsets.due();
        if !due.is_empty() && !self.committing.swap(true, Ordering::AcqRel) {
            let (consumer, topic, forward) = (self.consumer.clone(), self.topic.clone(), self.forward.clone());
            let (sink, flag) = (self.confirmed.clone(), self.committing.clone());
            tokio::task::spawn_blocking(move || {
                match lock(&forward).commit(&consumer, &topic, &due) {
                    Ok(done) => lock(&sink).extend(done),
                    Err(e) => tracing::warn!(error = %e, "offset commit failed; will retry"),
                }
                flag.store(false, Ordering::Release);
            });
        }
        Committed::Points(self.offsets.committed_points())
    }

    /// Commits synchronously (graceful shutdown), after any commit still on its way, which
    /// then cannot take the offsets back behind this one.
    fn commit_sync(&mut self) {
        let due = self.offsets.due();
        if due.is_empty() {
            return;
        }
        match lock(&self.forward).commit(&self.consumer, &self.topic, &due) {
            Ok(done) => self.offsets.committed(&done),
            Err(e) => tracing::warn!(error = %e, "final offset commit failed"),
        }
    }

    fn dead_letter_origin(&self) -> Option<&str> {
        Some(&self.topic)
    }
}
