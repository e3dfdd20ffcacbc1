//! Message transport below both planes: what the scheduler, the data plane's shards and the
//! recorder use to exchange the versioned messages of [`dialer_domain::messages`].
//!
//! - [`kafka`]: every Kafka client of the product, built by one [`kafka::ClientSettings`] from
//!   configuration and metered through one client context (consumer lag, client errors,
//!   rebalances); dead-letter records; topic creation; whether a failed produce may have landed.
//! - [`memory`]: the in-process bus of the embedded mode, the same shape as the topics
//!   (partitions, offsets, one reader per shard) over bounded channels.
//! - [`partitions`]: which shard owns which partition under static assignment.
//! - [`time`]: the wall clock as both planes stamp messages.
//! - [`metrics`]: this crate's metric catalogue.
//!
//! The planes never depend on each other: they meet here and in the message schemas.

pub mod kafka;
pub mod memory;
pub mod metrics;
pub mod partitions;
pub mod time;

pub use memory::{BusClosed, Delivery, Malformed, MemoryBus, MemoryBusEnds};
