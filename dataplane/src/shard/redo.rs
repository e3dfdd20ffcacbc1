//! What a shard does with the broker's answers about its status events: an acknowledgement
//! finishes the dispatch message the event resolves; a refusal queues the event to be produced
//! again after a back-off ([`Redo`]).

use std::time::Duration;

use dialer_domain::messages::StatusEvent;

/// A status event waiting to go out, and the dispatch message (partition, offset) it finishes
/// (outcome events; `None` for `started`).
pub(crate) type Outgoing = (StatusEvent, Option<(i32, i64)>);

/// A broker acknowledgement (or refusal) of an event that finishes a dispatch message.
pub(crate) struct Ack {
    pub partition: i32,
    pub offset: i64,
    pub ok: bool,
    /// The attempt the event resolves (outcome events), for the journal's `D` record.
    pub attempt: Option<crate::journal::Attempt>,
    /// The event, when the broker refused it: produced again.
    pub refused: Option<StatusEvent>,
}

/// Status events the broker did not take, produced again after a back-off that doubles while
/// produces keep failing (a broker-wide condition) and resets at the first success. Bounded:
/// while [`MAX`] wait, the shard takes no new messages.
pub(crate) struct Redo {
    pub events: Vec<Outgoing>,
    /// When the next round is due.
    pub at: Option<tokio::time::Instant>,
    wait: Duration,
    /// Rounds of produces again since the last delivery.
    rounds: u32,
    first: Duration,
    longest: Duration,
    capacity: usize,
}

impl Redo {
    /// Back-offs from `first`, doubling up to `longest`; at most `capacity` events wait.
    pub fn new(first: Duration, longest: Duration, capacity: usize) -> Redo {
        Redo { events: Vec::new(), at: None, wait: first, rounds: 0, first, longest, capacity }
    }

    pub fn push(&mut self, ev: StatusEvent, track: Option<(i32, i64)>) {
        metrics::counter!("dialer_status_events_reproduced_total").increment(1);
        self.events.push((ev, track));
        if self.at.is_none() {
            self.at = Some(tokio::time::Instant::now() + self.wait);
            self.wait = (self.wait * 2).min(self.longest);
        }
    }

    pub fn delivered(&mut self) {
        self.wait = self.first;
        self.rounds = 0;
    }

    /// The events due again, for the next emission; whether the producer looks stuck (several
    /// rounds without a single delivery).
    pub fn due(&mut self, into: &mut Vec<Outgoing>) -> bool {
        self.at = None;
        self.rounds += 1;
        into.append(&mut self.events);
        self.rounds.is_multiple_of(4)
    }

    pub fn full(&self) -> bool {
        self.events.len() >= self.capacity
    }
}

#[cfg(test)]
mod tests {
    use dialer_domain::messages::EventKind;
    use dialer_testkit::fixtures::Dispatch;

    use super::*;
    use crate::shard::calls::event;

    const FIRST: Duration = Duration::from_millis(100);
    const MAX: usize = 10_000;

    fn redo() -> Redo {
        Redo::new(FIRST, Duration::from_secs(5), MAX)
    }

    fn ev(n: u128) -> StatusEvent {
        let msg = Dispatch::call(n).build();
        event(&msg, EventKind::Completed, 0, 1)
    }

    #[test]
    fn refused_events_wait_a_doubling_back_off_that_resets_once_one_is_delivered() {
        let mut r = redo();
        let t0 = tokio::time::Instant::now();
        r.push(ev(1), Some((0, 10)));
        r.push(ev(2), Some((0, 11)));
        let first = r.at.expect("a round is due") - t0;
        assert!(first >= FIRST && first < FIRST * 2, "{first:?}");
        let mut out = Vec::new();
        let mut stuck = Vec::new();
        for round in 0..8u128 {
            stuck.push(r.due(&mut out));
            assert_eq!(out.len() as u128, 2 + round, "every waiting event goes out again, in order");
            assert!(r.events.is_empty() && r.at.is_none());
            let t = tokio::time::Instant::now();
            r.push(ev(100 + round), None);
            let wait = r.at.expect("due") - t;
            assert!(wait >= FIRST * 2, "round {round}: the back-off grows: {wait:?}");
            assert!(wait <= Duration::from_secs(5) + Duration::from_millis(50), "capped: {wait:?}");
        }
        assert_eq!(out[0].1, Some((0, 10)), "the message an event finishes travels with it");
        assert_eq!(stuck, [false, false, false, true, false, false, false, true], "a new producer every 4 rounds");
        r.delivered();
        let _ = r.due(&mut out);
        let t = tokio::time::Instant::now();
        r.push(ev(999), None);
        assert!(r.at.expect("due") - t < FIRST * 2, "a delivery resets the back-off");
    }

    #[test]
    fn the_shard_stops_taking_messages_while_too_many_events_wait() {
        let mut r = redo();
        for n in 0..MAX as u128 - 1 {
            r.push(ev(n), None);
        }
        assert!(!r.full());
        r.push(ev(u128::MAX), None);
        assert!(r.full(), "bounded: no new message is taken until some are delivered");
    }
}
