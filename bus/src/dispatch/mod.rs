//! The dispatch topic: the scheduler publishes calls to dial, each shard reads its partitions.
//!
//! Both ends are traits with one implementation per transport, so the scheduler and the shard
//! never match on the transport:
//! - [`DispatchSink`] (the scheduler's end): [`KafkaDispatchSink`], [`MemoryDispatchSink`];
//! - [`DispatchSource`] (a shard's end): [`KafkaDispatchSource`], [`MemoryDispatchSource`].
//!
//! Guarantees: a publish answers which messages were certainly not taken (only those may be
//! given back: a delivered one will be dialled) and how many are in doubt; a source commits only
//! offsets of finished messages ([`crate::offsets`]), and only the broker's confirmed commits
//! count as committed.

mod kafka;
mod memory;

use dialer_domain::messages::DispatchMessage;

pub use kafka::{KafkaDispatchSink, KafkaDispatchSource};
pub use memory::{MemoryDispatchSink, MemoryDispatchSource};

use crate::kafka::{BrokerError, Moved};

/// One dispatch message as a shard receives it.
#[derive(Debug)]
pub struct Delivery {
    pub partition: i32,
    pub offset: i64,
    pub msg: Result<DispatchMessage, Malformed>,
}

/// A message that could not be read: why, and its bytes (kept for the dead-letter topic).
#[derive(Debug)]
pub struct Malformed {
    pub reason: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// The scheduler's end of the dispatch topic.
pub trait DispatchSink: Send + Sync + std::fmt::Debug {
    /// Whether a claim can outlive, unpublished, the process that claimed it: a broker shared by
    /// processes (the claimer may die between the claim's commit and the acknowledgement), so
    /// the scheduler publishes old unconfirmed claims again. Not the in-process bus: it dies
    /// with its claimer, and the embedded mode's recovery at start settles what it held.
    const MAY_STRAND_CLAIMS: bool;

    /// Publishes all messages; returns once each is acknowledged (Kafka: by the broker), or with
    /// the indices of those that were not.
    fn publish_all(&self, msgs: Vec<DispatchMessage>) -> impl Future<Output = Result<(), NotPublished>> + Send;

    /// Publishes each message to every partition (opt-outs every shard must know of).
    fn broadcast(&self, msgs: &[DispatchMessage]) -> impl Future<Output = Result<(), PublishError>> + Send;
}

/// Messages of a batch that the bus did not take (by index in the batch), and why: only these
/// may be given back; the others were delivered and will be dialled.
#[derive(Debug, thiserror::Error)]
#[error("{} dispatch messages not taken, {in_doubt} in doubt: {reason}", .unacked.len())]
pub struct NotPublished {
    /// Certainly not delivered: may be given back.
    pub unacked: Vec<usize>,
    /// Failed in a way that may still have delivered them (a timeout): they stay queued, and
    /// the reaper resolves them once they cannot be up any more.
    pub in_doubt: usize,
    pub reason: PublishError,
}

/// Why the bus did not take a dispatch message.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    BusClosed(#[from] crate::BusClosed),
    #[error("the broker did not take it: {0}; check bus.brokers and the broker's health")]
    Broker(#[from] BrokerError),
}

/// What a commit left committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Committed {
    /// The source keeps no offsets (in-process: nothing is read again after a restart).
    Untracked,
    /// Each partition's last committed offset.
    Points(Vec<(i32, i64)>),
}

/// Why a fetch of dispatch messages failed (the shard backs off and fetches again).
#[derive(Debug, thiserror::Error)]
#[error("dispatch fetch failed: {0}; check bus.brokers and that the broker runs")]
pub struct FetchError(#[from] BrokerError);

/// A shard's end of the dispatch topic. The shard is generic over it (no dynamic dispatch on
/// the dial path), and tests drive a shard with a source of their own (rebalances, commit
/// points) without a broker.
#[allow(async_fn_in_trait)] // shards are single-threaded: the futures need not be `Send`
pub trait DispatchSource {
    /// Waits for at least one delivery, then takes what else is ready, up to `max`; `Ok(false)`
    /// once the source is closed for good.
    async fn recv(&mut self, out: &mut Vec<Delivery>, max: usize) -> Result<bool, FetchError>;
    /// What consumer-group rebalances did since the last call, in order. Every delivery of a
    /// [`DispatchSource::recv`] comes after the rebalances taken before it: take them first.
    fn take_moved(&mut self) -> Vec<Moved>;
    /// The message is finished: its offset may be committed.
    fn done(&mut self, partition: i32, offset: i64);
    /// Stop fetching `partition` (too many of its messages wait in the shard). A pause lasts
    /// until [`DispatchSource::resume`] or until the partition is revoked: assigned again, it
    /// is fetched.
    fn pause(&mut self, partition: i32);
    fn resume(&mut self, partition: i32);
    /// Commits what is finished (asynchronously).
    fn commit(&mut self) -> Committed;
    /// Commits what is finished and waits for the broker (graceful stop).
    fn commit_sync(&mut self);
    /// The topic unreadable messages came from, for their dead letters; `None` when they
    /// cannot be dead-lettered (in-process).
    fn dead_letter_origin(&self) -> Option<&str>;
}
