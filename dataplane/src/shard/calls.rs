//! A shard's calls in progress: those whose end only the provider's future knows
//! ([`Placed::Pending`], a call that waits on the network) and those whose end the provider
//! told in advance ([`Placed::Scheduled`], kept in the shard's own timer heap); and the status
//! events a call's life produces.

use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use dialer_domain::messages::{DispatchMessage, EventKind, SCHEMA_VERSION, StatusEvent};
use futures::stream::FuturesUnordered;

use crate::provider::{CallEnd, CallFuture, CallOutcome};
use crate::shard::queues::Waiting;

/// A call that ended, with the message it dialled.
pub(crate) struct Finished {
    pub w: Waiting,
    pub started_ms: u64,
    pub outcome: CallOutcome,
}

/// A call whose end the provider told in advance, in the shard's timer heap: no future and no
/// timer per call, whose wake-ups would cost more than the dial itself.
struct ScheduledCall {
    ends: tokio::time::Instant,
    seq: u64,
    started_ms: u64,
    w: Waiting,
    outcome: CallOutcome,
    /// Dropped when the call ends: the provider's view of the call goes down first.
    end: CallEnd,
}

impl PartialEq for ScheduledCall {
    fn eq(&self, other: &Self) -> bool {
        (self.ends, self.seq) == (other.ends, other.seq)
    }
}

impl Eq for ScheduledCall {}

impl PartialOrd for ScheduledCall {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ScheduledCall {
    /// Reversed: `BinaryHeap` is a max-heap, the earliest end must come first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.ends, other.seq).cmp(&(self.ends, self.seq))
    }
}

/// A call in progress with what the shard needs when it ends: the provider's future plus the
/// message, without a second allocation per dial.
pub(crate) struct CallTask {
    call: CallFuture,
    w: Option<Waiting>,
    started_ms: u64,
}

impl std::future::Future for CallTask {
    type Output = Finished;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Finished> {
        let this = &mut *self;
        match this.call.as_mut().poll(cx) {
            std::task::Poll::Ready(outcome) => std::task::Poll::Ready(Finished {
                w: this.w.take().expect("a finished call is not polled again"),
                started_ms: this.started_ms,
                outcome,
            }),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

/// A scheduled call being placed: its length, message, outcome and end marker.
pub(crate) type Placing = (Duration, Waiting, CallOutcome, CallEnd);

/// Every call a shard has placed and not yet seen end.
#[derive(Default)]
pub(crate) struct Calls {
    /// Calls that end when their future resolves.
    pub pending: FuturesUnordered<CallTask>,
    /// Calls that end at a known time, earliest first (`seq` breaks ties in placing order).
    scheduled: BinaryHeap<ScheduledCall>,
    seq: u64,
}

impl Calls {
    pub fn len(&self) -> usize {
        self.pending.len() + self.scheduled.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.scheduled.is_empty()
    }

    /// A call that waits on its future.
    pub fn wait_on(&mut self, call: CallFuture, w: Waiting, started_ms: u64) {
        self.pending.push(CallTask { call, w: Some(w), started_ms });
    }

    /// Puts the batch just placed in the timer heap. Each ends `after` from a clock read once
    /// the batch is placed, not before: never earlier than the provider's own view of the call
    /// (its ledger's planned end), so a token is never back before the carrier sees the call
    /// down.
    pub fn schedule(&mut self, placing: &mut Vec<Placing>, started_ms: u64) {
        let placed_at = tokio::time::Instant::now();
        for (after, w, outcome, end) in placing.drain(..) {
            self.seq += 1;
            self.scheduled.push(ScheduledCall { ends: placed_at + after, seq: self.seq, started_ms, w, outcome, end });
        }
    }

    /// When the earliest scheduled call ends.
    pub fn next_end(&self) -> Option<tokio::time::Instant> {
        self.scheduled.peek().map(|c| c.ends)
    }

    /// A scheduled call that has ended by `now`, its provider's view already down.
    pub fn pop_ended(&mut self, now: tokio::time::Instant) -> Option<Finished> {
        if self.scheduled.peek()?.ends > now {
            return None;
        }
        let c = self.scheduled.pop()?;
        drop(c.end); // the call is down before its outcome is reported
        Some(Finished { w: c.w, started_ms: c.started_ms, outcome: c.outcome })
    }
}

/// A status event of `msg`'s attempt, without the kind's details.
pub(crate) fn event(msg: &DispatchMessage, kind: EventKind, shard: u16, at_ms: u64) -> StatusEvent {
    StatusEvent {
        media: None,
        v: SCHEMA_VERSION,
        call_id: msg.call_id,
        attempt: msg.attempt,
        campaign_id: msg.campaign_id,
        kind,
        at_ms,
        started_at_ms: None,
        answered_at_ms: None,
        duration_ms: None,
        reason: None,
        retryable: None,
        shard,
        dispatch_latency_us: None,
        sip: None,
    }
}

/// A `failed` event that the retry policy may retry (`reason` says why the attempt failed).
pub(crate) fn retryable_failure(
    msg: &DispatchMessage,
    kind: EventKind,
    reason: &str,
    shard: u16,
    at_ms: u64,
) -> StatusEvent {
    StatusEvent { reason: Some(reason.to_string()), retryable: Some(true), ..event(msg, kind, shard, at_ms) }
}

/// The outcome event of an ended call.
pub(crate) fn outcome_event(f: &Finished, shard: u16, now: u64) -> StatusEvent {
    match &f.outcome {
        CallOutcome::Completed { answered_after, duration, media } => StatusEvent {
            media: media.clone(),
            started_at_ms: Some(f.started_ms),
            answered_at_ms: Some(f.started_ms + answered_after.as_millis() as u64),
            duration_ms: Some(duration.as_millis() as u64),
            ..event(&f.w.msg, EventKind::Completed, shard, now)
        },
        CallOutcome::Failed { reason, retryable, after, sip } => StatusEvent {
            started_at_ms: Some(f.started_ms),
            duration_ms: Some(after.as_millis() as u64),
            reason: Some((*reason).to_string()),
            retryable: Some(*retryable),
            sip: sip.clone(),
            ..event(&f.w.msg, EventKind::Failed, shard, now)
        },
    }
}

/// `dialer_call_outcomes_total` by outcome (and failure reason, a small fixed set from the
/// provider), with the counters looked up once per shard rather than once per call.
pub(crate) struct OutcomeCounters {
    pub expired: metrics::Counter,
    completed: metrics::Counter,
    failed: HashMap<(&'static str, bool), metrics::Counter>,
}

impl Default for OutcomeCounters {
    fn default() -> Self {
        OutcomeCounters {
            completed: metrics::counter!("dialer_call_outcomes_total", "outcome" => "completed", "reason" => ""),
            expired: metrics::counter!("dialer_call_outcomes_total", "outcome" => "expired", "reason" => "deadline"),
            failed: HashMap::new(),
        }
    }
}

impl OutcomeCounters {
    pub fn count(&mut self, o: &CallOutcome) {
        match o {
            CallOutcome::Completed { .. } => self.completed.increment(1),
            CallOutcome::Failed { reason, retryable, .. } => self
                .failed
                .entry((reason, *retryable))
                .or_insert_with(|| {
                    let outcome = if *retryable { "failed_retryable" } else { "failed" };
                    metrics::counter!("dialer_call_outcomes_total", "outcome" => outcome, "reason" => *reason)
                })
                .increment(1),
        }
    }
}
