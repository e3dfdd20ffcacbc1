//! The status topic: each shard emits its calls' status events, the recorders read them.
//!
//! Both ends are traits with one implementation per transport, so the shard and the recorder
//! never match on the transport:
//! - [`StatusSink`] (a shard's end): [`KafkaStatusSink`], [`MemoryStatusSink`];
//! - [`StatusSource`] (a recorder's end): [`KafkaStatusSource`], [`MemoryStatusSource`].
//!
//! Guarantees: an event is finished only once its reader has it (in-process: the recorder's
//! channel took it) or the broker acknowledged it (Kafka); a refused event comes back to be
//! produced again; a recorder's offsets are committed only after its batch is written, and an
//! unreadable event goes to the dead-letter topic before its offset is committed.

mod kafka;
mod memory;

use std::time::Duration;

use dialer_domain::messages::StatusEvent;
use uuid::Uuid;

pub use kafka::{KafkaAck, KafkaStatusSink, KafkaStatusSource};
pub use memory::{MemoryStatusSink, MemoryStatusSource};

use crate::dispatch::{FetchError, Malformed};
use crate::kafka::BrokerError;

/// What became of an event handed to a [`StatusSink`].
#[derive(Debug)]
pub enum Sent<A> {
    /// The reader has it (in-process): it is finished now.
    Handed,
    /// The broker answers later through the acknowledgement (`true`: it has the event); the
    /// event comes back with it, to be produced again if the answer is no.
    Pending(A, StatusEvent),
    /// Not taken: produce it again after a back-off.
    Refused(StatusEvent, BrokerError),
    /// The reader is gone for good (the in-process recorder stopped): the shard stops.
    Closed,
}

/// A shard's end of the status topic (one per shard; single-threaded).
#[allow(async_fn_in_trait)] // shards are single-threaded: the futures need not be `Send`
pub trait StatusSink {
    /// The broker's answer for one record: `true` once it has it.
    type Ack: Future<Output = bool> + Unpin + 'static;

    /// Hands an event over (keyed by call id, so one call's events stay in order), waiting
    /// while the transport's queue is full.
    async fn send(&mut self, ev: StatusEvent) -> Sent<Self::Ack>;

    /// Sends an unreadable dispatch message read at `origin` (`topic/partition/offset`) to the
    /// dead-letter topic, its bytes unchanged and the reason in headers.
    async fn dead_letter(&mut self, bad: &Malformed, origin: &str) -> Result<Self::Ack, BrokerError>;

    /// After a fatal producer error, or while events keep being refused (`stuck`), starts a new
    /// producer (a new producer id) so that the events waiting to be produced again get through.
    fn heal(&mut self, stuck: bool);

    /// Waits up to `timeout` for what is queued to reach the broker (graceful stop).
    fn flush(&self, timeout: Duration);
}

/// A recorder's end of the status topic.
pub trait StatusSource: Send + std::fmt::Debug {
    /// Waits for at least one event, then takes what else is ready, up to `max`; `Ok(false)`
    /// once the source is closed and drained.
    fn recv(&mut self, out: &mut Vec<StatusEvent>, max: usize)
    -> impl Future<Output = Result<bool, FetchError>> + Send;

    /// Takes more events into `out`, up to `max`, until `until` (a batch from the broker waits
    /// to fill up; the in-process source takes only what [`StatusSource::recv`] found).
    fn fill(
        &mut self,
        out: &mut Vec<StatusEvent>,
        max: usize,
        until: tokio::time::Instant,
    ) -> impl Future<Output = ()> + Send;

    /// Stop taking new events. `true`: what was sent before is still read (in-process, the
    /// recorder drains it); `false`: stop now (Kafka: the broker keeps what was not committed).
    fn close(&mut self) -> bool;

    /// The events read since the last call are written: unreadable ones go to the dead-letter
    /// topic (retried until the broker has them), then the offsets are committed.
    fn written(&mut self) -> impl Future<Output = ()> + Send;

    /// Calls that failed for good, to the dead-letter topic (keyed by call id, `body` as the
    /// payload), all at once, retried until each is acknowledged. In-process: nowhere (the
    /// event log has them).
    fn dead_letter(&self, letters: &[(Uuid, String)]) -> impl Future<Output = ()> + Send;
}
