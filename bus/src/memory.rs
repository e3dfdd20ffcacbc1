//! The in-process bus of the embedded mode: the same shape as the Kafka topics (partitions,
//! offsets, one reader per shard), with bounded channels instead of a broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use dialer_domain::messages::DispatchMessage;
use tokio::sync::mpsc;

use crate::dispatch::{Delivery, MemoryDispatchSink, MemoryDispatchSource};
use crate::partitions::shard_of_partition;
use crate::status::{MemoryStatusSink, MemoryStatusSource};

/// The dispatch side of the in-process bus.
#[derive(Debug)]
pub struct MemoryBus {
    shards: Vec<mpsc::Sender<Delivery>>,
    partitions: i32,
    offsets: Vec<AtomicI64>,
}

/// The ends of both topics on one in-process bus: the scheduler's, one dispatch source per
/// shard, the shards' status sink (cloned per shard) and the recorder's source.
#[derive(Debug)]
pub struct MemoryBusEnds {
    pub dispatch: MemoryDispatchSink,
    pub shard_sources: Vec<MemoryDispatchSource>,
    pub status_sink: MemoryStatusSink,
    pub status_source: MemoryStatusSource,
}

impl MemoryBus {
    /// A bus of `partitions` partitions over `shards` shards; each shard's channel holds at most
    /// `capacity` messages and the status channel `event_capacity` events (bounded: a slow
    /// reader slows the writer, memory stays flat).
    pub fn open(shards: usize, partitions: i32, capacity: usize, event_capacity: usize) -> MemoryBusEnds {
        let (mut txs, mut sources) = (Vec::new(), Vec::new());
        for _ in 0..shards {
            let (tx, rx) = mpsc::channel(capacity.max(1));
            txs.push(tx);
            sources.push(MemoryDispatchSource(rx));
        }
        let (events_tx, events) = mpsc::channel(event_capacity.max(1));
        let bus = MemoryBus { shards: txs, partitions, offsets: (0..partitions).map(|_| AtomicI64::new(0)).collect() };
        MemoryBusEnds {
            dispatch: MemoryDispatchSink(Arc::new(bus)),
            shard_sources: sources,
            status_sink: MemoryStatusSink(events_tx),
            status_source: MemoryStatusSource(events),
        }
    }

    /// The partition of a call: spread by call id, as the Kafka producer keys it.
    pub fn partition_of(&self, msg: &DispatchMessage) -> i32 {
        (msg.call_id.as_u128() % self.partitions as u128) as i32
    }

    fn delivery(&self, msg: DispatchMessage) -> (usize, Delivery) {
        let partition = self.partition_of(&msg);
        let offset = self.offsets[partition as usize].fetch_add(1, Ordering::Relaxed);
        (shard_of_partition(partition, self.shards.len()), Delivery { partition, offset, msg: Ok(msg) })
    }

    /// Publishes, waiting while the shard's channel is full; fails only when the data plane
    /// has stopped (its receivers are gone).
    pub async fn publish(&self, msg: DispatchMessage) -> Result<(), BusClosed> {
        let (shard, d) = self.delivery(msg);
        self.shards[shard].send(d).await.map_err(|_| BusClosed)
    }
}

impl MemoryBus {
    /// Publishes a copy of `msg` on every partition (an opt-out every shard must know of).
    pub async fn publish_everywhere(&self, msg: &DispatchMessage) -> Result<(), BusClosed> {
        for partition in 0..self.partitions {
            let offset = self.offsets[partition as usize].fetch_add(1, Ordering::Relaxed);
            let d = Delivery { partition, offset, msg: Ok(msg.clone()) };
            self.shards[shard_of_partition(partition, self.shards.len())].send(d).await.map_err(|_| BusClosed)?;
        }
        Ok(())
    }
}

/// The in-process bus's readers are gone: the data plane has stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the in-process bus is closed: the data plane has stopped")]
pub struct BusClosed;
