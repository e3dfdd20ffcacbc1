//! The dispatch topic's ends on the in-process bus.

use std::sync::Arc;

use dialer_domain::messages::DispatchMessage;
use tokio::sync::mpsc;

use super::{Committed, Delivery, DispatchSink, DispatchSource, FetchError, NotPublished, PublishError};
use crate::kafka::Moved;
use crate::memory::MemoryBus;

/// The scheduler's end on the in-process bus: a publish waits while a shard's channel is full.
#[derive(Clone, Debug)]
pub struct MemoryDispatchSink(pub Arc<MemoryBus>);

impl DispatchSink for MemoryDispatchSink {
    const MAY_STRAND_CLAIMS: bool = false;

    async fn publish_all(&self, msgs: Vec<DispatchMessage>) -> Result<(), NotPublished> {
        let mut unacked = Vec::new();
        for (i, m) in msgs.into_iter().enumerate() {
            if self.0.publish(m).await.is_err() {
                unacked.push(i);
            }
        }
        if unacked.is_empty() {
            return Ok(());
        }
        Err(NotPublished { unacked, in_doubt: 0, reason: crate::BusClosed.into() })
    }

    async fn broadcast(&self, msgs: &[DispatchMessage]) -> Result<(), PublishError> {
        for m in msgs {
            self.0.publish_everywhere(m).await?;
        }
        Ok(())
    }
}

/// A shard's end on the in-process bus: messages are never read again, so there is nothing to
/// commit, pause or rebalance.
#[derive(Debug)]
pub struct MemoryDispatchSource(pub mpsc::Receiver<Delivery>);

impl DispatchSource for MemoryDispatchSource {
    async fn recv(&mut self, out: &mut Vec<Delivery>, max: usize) -> Result<bool, FetchError> {
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
