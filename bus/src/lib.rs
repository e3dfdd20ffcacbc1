//! Message transport below both planes: each topic's two ends, over Apache Kafka or the
//! in-process bus, behind one trait per end. The scheduler, the shards and the recorder take
//! their ends as values and never match on the transport; rdkafka is a dependency of this crate
//! only.
//!
//! - [`dispatch`]: the dispatch topic (scheduler → shards): [`dispatch::DispatchSink`],
//!   [`dispatch::DispatchSource`].
//! - [`status`]: the status topic (shards → recorders): [`status::StatusSink`],
//!   [`status::StatusSource`].
//! - [`kafka`]: every Kafka client of the product, built by one [`kafka::ClientSettings`] from
//!   [`kafka::KafkaTuning`] and metered through one client context (consumer lag, client
//!   errors, rebalances); dead-letter records; topic creation; the broker's readiness check.
//! - [`memory`]: the in-process bus of the embedded mode, the same shape as the topics
//!   (partitions, offsets, one reader per shard) over bounded channels.
//! - [`settings`]: the `[bus]` settings (transport, brokers, topics).
//! - [`offsets`]: which offsets may be committed (pure).
//! - [`partitions`]: which shard owns which partition under static assignment.
//! - [`time`]: the wall clock as both planes stamp messages.
//! - [`metrics`]: this crate's metric catalogue.
//!
//! The planes never depend on each other: they meet here and in the message schemas.

pub mod dispatch;
pub mod kafka;
pub mod memory;
pub mod metrics;
pub mod offsets;
pub mod partitions;
pub mod settings;
pub mod status;
pub mod time;

pub use memory::{BusClosed, MemoryBus, MemoryBusEnds};
pub use settings::{BusKind, BusSettings};
