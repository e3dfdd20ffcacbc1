//! Where a shard's dispatch messages come from: the [`DispatchSource`] a shard reads, commits
//! and pauses, over Kafka ([`crate::kafka::KafkaSource`]) or the in-process bus
//! ([`MemorySource`]). The shard is generic over it (no dynamic dispatch on the dial path), and
//! tests drive a shard with a source of their own (rebalances, commit points) without a broker.

use dialer_bus::Delivery;
use dialer_bus::kafka::Moved;
use tokio::sync::mpsc;

/// Why a fetch of dispatch messages failed (the shard backs off and fetches again).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("dispatch fetch failed: {0}; check bus.brokers and that the broker runs")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// What a commit left committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Committed {
    /// The source keeps no offsets (in-process: nothing is read again after a restart).
    Untracked,
    /// Each partition's last committed offset.
    Points(Vec<(i32, i64)>),
}

/// A shard's source of dispatch messages.
#[allow(async_fn_in_trait)] // shards are single-threaded: the futures need not be `Send`
pub trait DispatchSource {
    /// Waits for at least one delivery, then takes what else is ready, up to `max`; `Ok(false)`
    /// once the source is closed for good.
    async fn recv(&mut self, out: &mut Vec<Delivery>, max: usize) -> Result<bool, SourceError>;
    /// What consumer-group rebalances did since the last call, in order.
    fn take_moved(&mut self) -> Vec<Moved>;
    /// The message is finished: its offset may be committed.
    fn done(&mut self, partition: i32, offset: i64);
    /// Stop fetching `partition` (too many of its messages wait in the shard).
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

/// The in-process bus's side of a shard: messages are never read again, so there is nothing to
/// commit, pause or rebalance.
#[derive(Debug)]
pub struct MemorySource(pub mpsc::Receiver<Delivery>);

impl DispatchSource for MemorySource {
    async fn recv(&mut self, out: &mut Vec<Delivery>, max: usize) -> Result<bool, SourceError> {
        Ok(self.0.recv_many(out, max).await > 0)
    }

    fn take_moved(&mut self) -> Vec<Moved> {
        Vec::new()
    }

    fn done(&mut self, _partition: i32, _offset: i64) {}

    fn pause(&mut self, _partition: i32) {}

    fn resume(&mut self, _partition: i32) {}

    fn commit(&mut self) -> Committed {
        Committed::Untracked
    }

    fn commit_sync(&mut self) {}

    fn dead_letter_origin(&self) -> Option<&str> {
        None
    }
}
