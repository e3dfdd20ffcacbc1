//! The status topic's ends on the in-process bus: one bounded channel from the shards to the
//! recorder.

use std::time::Duration;

use dialer_domain::messages::StatusEvent;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Sent, StatusSink, StatusSource};
use crate::dispatch::{FetchError, Malformed};
use crate::kafka::BrokerError;

/// A shard's end on the in-process bus. An event is handed over without a future when the
/// channel has room: a future per event copies the event into it, a cost on every dial.
#[derive(Clone, Debug)]
pub struct MemoryStatusSink(pub mpsc::Sender<StatusEvent>);

impl StatusSink for MemoryStatusSink {
    /// Never awaited: the in-process bus answers at once.
    type Ack = std::future::Ready<bool>;

    async fn send(&mut self, ev: StatusEvent) -> Sent<Self::Ack> {
        let sent = match self.0.try_send(ev) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(ev)) => self.0.send(ev).await.is_ok(),
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        };
        if sent { Sent::Handed } else { Sent::Closed }
    }

    /// There is no dead-letter topic in-process: the message is finished as it is.
    async fn dead_letter(&mut self, _bad: &Malformed, _origin: &str) -> Result<Self::Ack, BrokerError> {
        Ok(std::future::ready(true))
    }

    fn heal(&mut self, _stuck: bool) {}

    fn flush(&self, _timeout: Duration) {}
}

/// The recorder's end on the in-process bus.
#[derive(Debug)]
pub struct MemoryStatusSource(pub mpsc::Receiver<StatusEvent>);

impl StatusSource for MemoryStatusSource {
    async fn recv(&mut self, out: &mut Vec<StatusEvent>, max: usize) -> Result<bool, FetchError> {
        Ok(self.0.recv_many(out, max).await > 0)
    }

    async fn fill(&mut self, _out: &mut Vec<StatusEvent>, _max: usize, _until: tokio::time::Instant) {}

    fn close(&mut self) -> bool {
        self.0.close();
        true
    }

    async fn written(&mut self) {}

    async fn dead_letter(&self, _letters: &[(Uuid, String)]) {}
}
