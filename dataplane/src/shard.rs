//! One shard: a single-threaded loop that takes dispatch messages from its partitions, queues
//! them per campaign, starts calls as its lease cache hands out tokens, and emits status events.
//!
//! - **No head-of-line blocking**: each campaign has its own queue; a campaign without tokens is
//!   parked (not polled) until one of its calls ends or its lease allows more (a grant or a
//!   higher fair share), while other campaigns keep dialing. Campaigns take turns of at most
//!   `quantum` starts. Each dial tells the lease how many of the campaign's calls wait here: the
//!   demand the limiter divides the caps by.
//! - **Bounded memory**: at most `max_queued_per_shard` messages wait; a partition is paused at
//!   `pause_partition_at` waiting messages and resumed at `resume_partition_at`.
//! - **At-least-once**: a message's offset is finished when its outcome event is acknowledged
//!   by the broker (Kafka) or handed to the recorder's channel (in-process); commits never pass
//!   an unfinished message.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dialer_domain::messages::{DispatchMessage, EventKind, SCHEMA_VERSION, StatusEvent};
use dialer_limiter::{Ask, LeaseHandle, effective_campaign_cap};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::bus::Delivery;
use crate::health::Health;
use crate::kafka::{KafkaSink, KafkaSource};
use crate::provider::{CallOutcome, Placed, Provider};
use crate::tuning::Tuning;

/// The shard's own maps (campaign queues, partition counts) hash with foldhash: SipHash showed
/// up at ~5 % of a shard's time in `perf` of `bench dataplane`.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// Where a shard's dispatch messages come from.
#[derive(Debug)]
pub enum Source {
    Memory(mpsc::Receiver<Delivery>),
    Kafka(Box<KafkaSource>),
}

/// Where a shard's status events go.
#[derive(Debug)]
pub enum Sink {
    Memory(mpsc::Sender<StatusEvent>),
    Kafka(KafkaSink),
}

/// What a shard did, returned when it stops.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardReport {
    pub shard: u16,
    pub received: u64,
    pub dialed: u64,
    pub outcomes: u64,
    pub expired: u64,
    pub malformed: u64,
    /// Redelivered attempts the journal showed as started without an outcome: reported as
    /// `unknown_outcome`, not dialed again.
    pub unknown_outcome: u64,
    /// Redelivered messages whose attempt the journal showed as dialed and resolved: skipped.
    pub redelivered_done: u64,
    /// Messages received again while this shard was dialing their attempt (a rebalance gave
    /// their partition back): skipped, the call in progress finishes them.
    pub redelivered_in_flight: u64,
    /// Messages received but not finished when the shard stopped (redelivered after restart).
    pub unfinished: u64,
}

/// Settings a shard runs with.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub index: u16,
    pub tuning: Tuning,
    /// `TELEPHONY_PER_CAMPAIGN_MAX_CONCURRENCY`: no campaign gets more, whatever its messages say.
    pub per_campaign_ceiling: u32,
    /// Where this shard reports its health (its own slot of the data plane's [`Health`]).
    pub health: std::sync::Arc<Health>,
}

type LocalBoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T>>>;

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

struct Waiting {
    msg: DispatchMessage,
    partition: i32,
    offset: i64,
    received: Instant,
}

struct Finished {
    w: Waiting,
    started_ms: u64,
    outcome: CallOutcome,
}

/// A call whose end the provider told in advance ([`crate::provider::Placed::Scheduled`]), in
/// the shard's timer heap: no future and no timer per call (`perf` of `bench dataplane` had
/// ~35 % of a shard in `FuturesUnordered` wake-ups and tokio timers with one of each per call).
struct ScheduledCall {
    ends: tokio::time::Instant,
    seq: u64,
    w: Waiting,
    started_ms: u64,
    outcome: CallOutcome,
    _end: crate::provider::CallEnd,
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
struct CallTask {
    call: crate::provider::CallFuture,
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

#[derive(Default)]
struct Queues {
    by_campaign: FastMap<Uuid, VecDeque<Waiting>>,
    /// Campaigns with waiting calls that may be able to start one.
    ready: VecDeque<Uuid>,
    in_ready: FastSet<Uuid>,
    /// Campaigns with waiting calls but no token: woken by a call end or a lease update.
    parked: FastSet<Uuid>,
    /// Not due yet, by `not_before_ms`.
    delayed: BinaryHeap<Reverse<(u64, u64)>>,
    delayed_msgs: FastMap<u64, Waiting>,
    seq: u64,
    len: usize,
    per_partition: FastMap<i32, usize>,
}

impl Queues {
    fn push(&mut self, w: Waiting, now_ms: u64) {
        self.len += 1;
        *self.per_partition.entry(w.partition).or_default() += 1;
        if w.msg.not_before_ms > now_ms {
            self.seq += 1;
            self.delayed.push(Reverse((w.msg.not_before_ms, self.seq)));
            self.delayed_msgs.insert(self.seq, w);
        } else {
            self.enqueue(w);
        }
    }

    fn enqueue(&mut self, w: Waiting) {
        let c = w.msg.campaign_id;
        self.by_campaign.entry(c).or_default().push_back(w);
        if !self.parked.contains(&c) && self.in_ready.insert(c) {
            self.ready.push_back(c);
        }
    }

    /// Moves delayed messages that are due into their campaign queues.
    fn release_due(&mut self, now_ms: u64) {
        while let Some(Reverse((t, seq))) = self.delayed.peek().copied() {
            if t > now_ms {
                break;
            }
            self.delayed.pop();
            if let Some(w) = self.delayed_msgs.remove(&seq) {
                self.enqueue(w);
            }
        }
    }

    fn next_due(&self) -> Option<u64> {
        self.delayed.peek().map(|Reverse((t, _))| *t)
    }

    fn wake(&mut self, c: Uuid) {
        if self.parked.remove(&c) && self.in_ready.insert(c) {
            self.ready.push_back(c);
        }
    }

    fn wake_all(&mut self) {
        for c in std::mem::take(&mut self.parked) {
            if self.in_ready.insert(c) {
                self.ready.push_back(c);
            }
        }
    }

    /// Drops every waiting message of `partition` (a rebalance took it away: its next owner
    /// reads them again from the committed offset); returns how many.
    fn purge_partition(&mut self, partition: i32, lease: &LeaseHandle) -> usize {
        let mut n = 0;
        for (c, queue) in self.by_campaign.iter_mut() {
            let before = queue.len();
            queue.retain(|w| w.partition != partition);
            n += before - queue.len();
            if queue.len() < before {
                lease.set_waiting(*c, queue.len().try_into().unwrap_or(u32::MAX));
            }
        }
        self.by_campaign.retain(|_, q| !q.is_empty());
        let before = self.delayed_msgs.len();
        self.delayed_msgs.retain(|_, w| w.partition != partition);
        n += before - self.delayed_msgs.len();
        self.len -= n;
        self.per_partition.remove(&partition);
        n
    }

    /// One message left the waiting state; returns the partition's remaining count.
    fn taken(&mut self, partition: i32) -> usize {
        self.len -= 1;
        let n = self.per_partition.entry(partition).or_default();
        *n = n.saturating_sub(1);
        *n
    }
}

fn event(msg: &DispatchMessage, kind: EventKind, shard: u16, at_ms: u64) -> StatusEvent {
    StatusEvent {
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
    }
}

pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn outcome_event(f: &Finished, shard: u16, now: u64) -> StatusEvent {
    match &f.outcome {
        CallOutcome::Completed { answered_after, duration } => StatusEvent {
            started_at_ms: Some(f.started_ms),
            answered_at_ms: Some(f.started_ms + answered_after.as_millis() as u64),
            duration_ms: Some(duration.as_millis() as u64),
            ..event(&f.w.msg, EventKind::Completed, shard, now)
        },
        CallOutcome::Failed { reason, retryable, after } => StatusEvent {
            started_at_ms: Some(f.started_ms),
            duration_ms: Some(after.as_millis() as u64),
            reason: Some((*reason).to_string()),
            retryable: Some(*retryable),
            ..event(&f.w.msg, EventKind::Failed, shard, now)
        },
    }
}

/// What a shard does when calls end (futures or timer heap alike): the token goes back, the
/// campaign may dial again, the outcome is counted and its event queued.
struct Ended<'a> {
    lease: &'a LeaseHandle,
    q: &'a mut Queues,
    outcomes: &'a mut OutcomeCounters,
    events: &'a mut Vec<(StatusEvent, Option<(i32, i64)>)>,
    shard: u16,
    ended_ms: u64,
}

impl Ended<'_> {
    fn finish(&mut self, f: Finished) {
        let c = f.w.msg.campaign_id;
        self.lease.release(c);
        self.q.wake(c);
        self.outcomes.count(&f.outcome);
        self.events.push((outcome_event(&f, self.shard, self.ended_ms), Some((f.w.partition, f.w.offset))));
    }
}

/// A broker acknowledgement (or refusal) of an event that finishes a dispatch message.
struct Ack {
    partition: i32,
    offset: i64,
    ok: bool,
    /// The attempt the event resolves (outcome events), for the journal's `D` record.
    attempt: Option<crate::journal::Attempt>,
    /// The event, when the broker refused it: produced again.
    refused: Option<StatusEvent>,
}

/// Status events the broker did not take, produced again after a back-off that doubles while
/// produces keep failing (a broker-wide condition) and resets at the first success. Bounded:
/// while [`Redo::MAX`] wait, the shard takes no new messages.
struct Redo {
    events: Vec<(StatusEvent, Option<(i32, i64)>)>,
    at: Option<tokio::time::Instant>,
    wait: Duration,
    /// Rounds of produces again since the last delivery.
    rounds: u32,
}

impl Redo {
    const MAX: usize = 10_000;
    const FIRST: Duration = Duration::from_millis(100);

    fn new() -> Redo {
        Redo { events: Vec::new(), at: None, wait: Redo::FIRST, rounds: 0 }
    }

    fn push(&mut self, ev: StatusEvent, track: Option<(i32, i64)>) {
        metrics::counter!("dialer_status_events_reproduced_total").increment(1);
        self.events.push((ev, track));
        if self.at.is_none() {
            self.at = Some(tokio::time::Instant::now() + self.wait);
            self.wait = (self.wait * 2).min(Duration::from_secs(5));
        }
    }

    fn delivered(&mut self) {
        self.wait = Redo::FIRST;
        self.rounds = 0;
    }

    /// The events due again, for the next emission; whether the producer looks stuck (several
    /// rounds without a single delivery).
    fn due(&mut self, into: &mut Vec<(StatusEvent, Option<(i32, i64)>)>) -> bool {
        self.at = None;
        self.rounds += 1;
        into.append(&mut self.events);
        self.rounds.is_multiple_of(4)
    }

    fn full(&self) -> bool {
        self.events.len() >= Redo::MAX
    }
}

fn journal_done(journal: &mut Option<crate::journal::Journal>, partition: i32, a: crate::journal::Attempt, shard: u16) {
    if let Some(j) = journal
        && let Err(e) = j.done(partition, a)
    {
        tracing::error!(shard, error = %e, "journal write failed");
    }
}

/// `dialer_call_outcomes_total` by outcome (and failure reason, a small fixed set from the
/// provider), with the counters looked up once per shard rather than once per call.
struct OutcomeCounters {
    completed: metrics::Counter,
    expired: metrics::Counter,
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
    fn count(&mut self, o: &CallOutcome) {
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

/// Runs a shard until `shutdown` turns true and its calls in progress end (or the grace
/// period passes).
pub async fn run_shard<P: Provider>(
    cfg: ShardConfig,
    mut source: Source,
    mut sink: Sink,
    lease: LeaseHandle,
    provider: P,
    mut journal: Option<crate::journal::Journal>,
    mut shutdown: watch::Receiver<bool>,
) -> ShardReport {
    let t = &cfg.tuning;
    let shard = cfg.index;
    let mut report = ShardReport { shard, ..Default::default() };
    let mut q = Queues::default();
    let mut calls: FuturesUnordered<CallTask> = FuturesUnordered::new();
    let mut scheduled: BinaryHeap<ScheduledCall> = BinaryHeap::new();
    let mut scheduled_seq = 0u64;
    let mut acks: FuturesUnordered<LocalBoxFuture<Ack>> = FuturesUnordered::new();
    let mut redo = Redo::new();
    let mut to_start: Vec<Waiting> = Vec::with_capacity(1024);
    let mut placing: Vec<(Duration, Waiting, CallOutcome, crate::provider::CallEnd)> = Vec::with_capacity(1024);
    let mut paused: HashSet<i32> = HashSet::new();
    let mut batch: Vec<Delivery> = Vec::with_capacity(1024);
    let mut events: Vec<(StatusEvent, Option<(i32, i64)>)> = Vec::with_capacity(1024);
    let mut commit_tick = tokio::time::interval(Duration::from_millis(t.kafka.commit_every_ms));
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    let mut stop_deadline: Option<tokio::time::Instant> = None;
    let mut source_open = true;
    let latency = metrics::histogram!("dialer_dispatch_to_dial_seconds");
    let dials = metrics::counter!("dialer_dials_total");
    let shard_label = shard.to_string();
    let busy_gauge = metrics::gauge!("dialer_shard_busy_ratio", "shard" => shard_label.clone());
    let in_flight_gauge = metrics::gauge!("dialer_shard_calls_in_progress", "shard" => shard_label.clone());
    let waiting_gauge = metrics::gauge!("dialer_shard_messages_waiting", "shard" => shard_label.clone());
    let fail_closed_gauge = metrics::gauge!("dialer_shard_fail_closed", "shard" => shard_label);
    let mut outcomes = OutcomeCounters::default();
    let health = cfg.health.clone();
    let my_health = || health.shard(usize::from(shard));
    let runtime = tokio::runtime::Handle::current().metrics();
    let mut busy_mark = (Instant::now(), runtime.worker_total_busy_duration(0));
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    my_health().running(now_ms());

    loop {
        // A consumer-group rebalance (noted during the last `recv`, on this thread): nothing of
        // a revoked partition is dialed from here on; its journal file is released unless the
        // partition came straight back.
        if let Source::Kafka(k) = &mut source {
            for moved in k.take_moved() {
                match moved {
                    crate::kafka::Moved::Revoked(ps) => {
                        for p in &ps {
                            let n = q.purge_partition(*p, &lease);
                            paused.remove(p);
                            tracing::info!(
                                shard,
                                partition = p,
                                dropped = n,
                                "partition revoked: its waiting messages are left to its next owner"
                            );
                        }
                        if let Some(j) = &mut journal {
                            j.revoked(&ps);
                        }
                    }
                    crate::kafka::Moved::Assigned(ps) => {
                        if let Some(j) = &mut journal
                            && let Err(e) = j.assigned(&ps)
                        {
                            tracing::error!(shard, error = %e, "journal: released partition not written");
                        }
                    }
                }
            }
        }
        // Start every call that can start now, campaign by campaign.
        let now = now_ms();
        q.release_due(now);
        let mut turns = q.ready.len();
        let mut left: Vec<i32> = Vec::new();
        while turns > 0 {
            turns -= 1;
            let Some(c) = q.ready.pop_front() else { break };
            q.in_ready.remove(&c);
            let mut started = 0;
            let mut parked = false;
            if let Some(queue) = q.by_campaign.get_mut(&c) {
                while started < t.buffers.quantum {
                    let Some(front) = queue.front() else { break };
                    if front.msg.deadline_ms != 0 && front.msg.deadline_ms < now {
                        let w = queue.pop_front().expect("front exists");
                        report.expired += 1;
                        outcomes.expired.increment(1);
                        let mut ev = event(&w.msg, EventKind::Expired, shard, now);
                        ev.retryable = Some(true);
                        ev.reason = Some("deadline passed before dialing".into());
                        events.push((ev, Some((w.partition, w.offset))));
                        left.push(w.partition);
                        continue;
                    }
                    let ask = Ask {
                        cap: effective_campaign_cap(front.msg.campaign_cap, cfg.per_campaign_ceiling),
                        weight: front.msg.campaign_weight,
                        queued: queue.len().try_into().unwrap_or(u32::MAX),
                    };
                    if !lease.try_acquire(c, ask) {
                        parked = true;
                        break;
                    }
                    let w = queue.pop_front().expect("front exists");
                    left.push(w.partition);
                    started += 1;
                    to_start.push(w);
                }
                if queue.is_empty() {
                    q.by_campaign.remove(&c);
                    lease.set_waiting(c, 0);
                } else if parked {
                    q.parked.insert(c);
                } else {
                    q.in_ready.insert(c);
                    q.ready.push_back(c);
                }
            }
        }
        // Make the starts durable in one group commit, then dial.
        if !to_start.is_empty() {
            let durable = match &mut journal {
                None => Ok(()),
                Some(j) => to_start
                    .iter()
                    .try_for_each(|w| j.started(w.partition, (w.msg.call_id, w.msg.attempt), w.offset))
                    .and_then(|()| j.commit()),
            };
            my_health().set_journal_failing(durable.is_err());
            if let Err(e) = durable {
                tracing::error!(shard, error = %e, calls = to_start.len(), "journal write failed: these calls are not dialed and are reported as failed (retryable)");
                for w in to_start.drain(..) {
                    lease.release(w.msg.campaign_id);
                    let mut ev = event(&w.msg, EventKind::Failed, shard, now);
                    ev.reason = Some("journal_unavailable".into());
                    ev.retryable = Some(true);
                    events.push((ev, Some((w.partition, w.offset))));
                }
            }
            // One clock read per batch of starts, not per dial.
            let (dial_instant, dial_us) = (Instant::now(), now_us());
            dials.increment(to_start.len() as u64);
            for w in to_start.drain(..) {
                report.dialed += 1;
                latency.record(dial_instant.saturating_duration_since(w.received).as_secs_f64());
                let mut started_ev = event(&w.msg, EventKind::Started, shard, now);
                if w.msg.enqueued_at_us > 0 {
                    started_ev.dispatch_latency_us = Some(dial_us.saturating_sub(w.msg.enqueued_at_us));
                }
                events.push((started_ev, None));
                let placed = {
                    let _dial =
                        tracing::debug_span!("dial", shard, campaign = %w.msg.campaign_id, attempt = w.msg.attempt)
                            .entered();
                    provider.place(&w.msg)
                };
                match placed {
                    Placed::Pending(call) => calls.push(CallTask { call, w: Some(w), started_ms: now }),
                    Placed::Scheduled { after, outcome, end } => placing.push((after, w, outcome, end)),
                }
            }
            // Scheduled calls end `after` from a clock read once the batch is placed, not before:
            // never earlier than the provider's own view of the call (its ledger's planned end),
            // so a token is never back before the carrier sees the call down.
            let placed_at = tokio::time::Instant::now();
            for (after, w, outcome, end) in placing.drain(..) {
                scheduled_seq += 1;
                scheduled.push(ScheduledCall {
                    ends: placed_at + after,
                    seq: scheduled_seq,
                    w,
                    started_ms: now,
                    outcome,
                    _end: end,
                });
            }
        }
        // Messages that left the queues no longer count against their partitions.
        for p in left.drain(..) {
            if q.taken(p) <= t.buffers.resume_partition_at
                && paused.remove(&p)
                && let Source::Kafka(k) = &source
            {
                k.resume(p);
            }
        }

        // Emit queued events.
        for (ev, track) in events.drain(..) {
            let attempt = (ev.call_id, ev.attempt);
            match &sink {
                Sink::Memory(tx) => {
                    let sent = tx.send(ev).await.is_ok();
                    if !sent {
                        tracing::error!(shard, "status channel closed; stopping");
                        stopping = true;
                    }
                    if let Some((p, o)) = track {
                        if sent {
                            journal_done(&mut journal, p, attempt, shard);
                        }
                        if let Source::Kafka(k) = &mut source {
                            k.done(p, o);
                        }
                    }
                }
                Sink::Kafka(k) => match k.send(&ev).await {
                    Ok(delivery) => {
                        if let Some((p, o)) = track {
                            acks.push(Box::pin(async move {
                                let ok = matches!(delivery.await, Ok(Ok(_)));
                                Ack {
                                    partition: p,
                                    offset: o,
                                    ok,
                                    attempt: Some(attempt),
                                    refused: (!ok).then_some(ev),
                                }
                            }));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(shard, error = %e, "status event not produced; producing it again after a back-off");
                        redo.push(ev, track);
                    }
                },
            }
            if track.is_some() {
                report.outcomes += 1;
            }
        }

        if stopping && calls.is_empty() && scheduled.is_empty() && acks.is_empty() && redo.events.is_empty() {
            break;
        }
        if stop_deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            tracing::warn!(shard, calls = calls.len() + scheduled.len(), "grace period over with calls in progress");
            break;
        }
        let next_end = scheduled.peek().map(|c| c.ends);
        let can_take = source_open && !stopping && q.len < t.buffers.max_queued_per_shard && !redo.full();
        let due = q.next_due().map(|t| tokio::time::Instant::now() + Duration::from_millis(t.saturating_sub(now_ms())));
        let parked_any = !q.parked.is_empty();
        tokio::select! {
            biased;
            changed = shutdown.changed(), if !stopping => {
                if changed.is_err() || *shutdown.borrow() {
                    stopping = true;
                    stop_deadline = Some(tokio::time::Instant::now() + Duration::from_millis(t.shutdown.grace_ms));
                }
            }
            Some(f) = calls.next(), if !calls.is_empty() => {
                // One clock read for the calls that ended together.
                let ended_ms = now_ms();
                let mut ended = Ended { lease: &lease, q: &mut q, outcomes: &mut outcomes, events: &mut events, shard, ended_ms };
                ended.finish(f);
                // Drain what else has ended, so events go out in batches.
                while let Some(Some(f)) = calls.next().now_or_never_opt() {
                    ended.finish(f);
                }
            }
            _ = sleep_until_opt(next_end), if next_end.is_some() => {
                let (ended_ms, now) = (now_ms(), tokio::time::Instant::now());
                let mut ended = Ended { lease: &lease, q: &mut q, outcomes: &mut outcomes, events: &mut events, shard, ended_ms };
                while scheduled.peek().is_some_and(|c| c.ends <= now) {
                    let Some(ScheduledCall { w, started_ms, outcome, _end, .. }) = scheduled.pop() else { break };
                    drop(_end); // the call is down before its outcome is reported
                    ended.finish(Finished { w, started_ms, outcome });
                }
            }
            Some(Ack { partition: p, offset: o, ok, attempt, refused }) = acks.next(), if !acks.is_empty() => {
                my_health().set_sink_failing(!ok);
                if ok && let Some(a) = attempt {
                    journal_done(&mut journal, p, a, shard);
                    redo.delivered();
                }
                if let Source::Kafka(k) = &mut source && ok {
                    k.done(p, o)
                }
                if let Some(ev) = refused {
                    // Not acknowledged: produced again (the message is finished once it is).
                    tracing::warn!(shard, partition = p, offset = o, "outcome not acknowledged; producing it again after a back-off");
                    redo.push(ev, Some((p, o)));
                }
            }
            _ = sleep_until_opt(redo.at), if redo.at.is_some() => {
                let stuck = redo.due(&mut events);
                if let Sink::Kafka(k) = &mut sink {
                    k.heal(stuck);
                }
            }
            r = recv(&mut source, &mut batch, 1024), if can_take => {
                match r {
                    Ok(true) => my_health().set_source_failing(false),
                    Ok(false) => source_open = false,
                    Err(e) => {
                        my_health().set_source_failing(true);
                        tracing::warn!(shard, error = %e, "dispatch fetch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                let now = now_ms();
                let received = Instant::now();
                for d in batch.drain(..) {
                    report.received += 1;
                    match d.msg {
                        Ok(msg) => {
                            use crate::journal::Seen;
                            let seen = match &mut journal {
                                Some(j) => j.seen(d.partition, (msg.call_id, msg.attempt)).unwrap_or_else(|e| {
                                    // Cannot tell: do not dial; the retry policy decides.
                                    tracing::error!(shard, error = %e, "journal unreadable");
                                    Seen::Unresolved
                                }),
                                None => Seen::No,
                            };
                            if seen == Seen::InFlight {
                                // This shard is dialing it: the call in progress finishes it.
                                report.redelivered_in_flight += 1;
                                continue;
                            }
                            if seen == Seen::Resolved {
                                // Dialed, and its outcome delivered, before a restart: only the
                                // offset commit was lost. Nothing to do but finish the message.
                                report.redelivered_done += 1;
                                if let Source::Kafka(k) = &mut source {
                                    k.done(d.partition, d.offset);
                                }
                                continue;
                            }
                            if seen == Seen::Unresolved {
                                report.unknown_outcome += 1;
                                metrics::counter!("dialer_unknown_outcomes_total").increment(1);
                                tracing::warn!(shard, call = %msg.call_id, attempt = msg.attempt, "attempt started before a restart with no recorded outcome: reported as unknown_outcome, not dialed again");
                                let mut ev = event(&msg, EventKind::Failed, shard, now);
                                ev.reason = Some("unknown_outcome".into());
                                ev.retryable = Some(true);
                                events.push((ev, Some((d.partition, d.offset))));
                                continue;
                            }
                            q.push(Waiting { msg, partition: d.partition, offset: d.offset, received }, now);
                            let n = q.per_partition.get(&d.partition).copied().unwrap_or(0);
                            if n >= t.buffers.pause_partition_at
                                && paused.insert(d.partition)
                                && let Source::Kafka(k) = &source
                            {
                                k.pause(d.partition);
                            }
                        }
                        Err(bad) => {
                            report.malformed += 1;
                            metrics::counter!("dialer_dispatch_malformed_total").increment(1);
                            tracing::warn!(shard, partition = d.partition, offset = d.offset, reason = %bad.reason, "malformed dispatch message: sent to the dead-letter topic");
                            match (&mut source, &sink) {
                                (Source::Kafka(k), Sink::Kafka(out)) => {
                                    match out.dead_letter(&bad, k.topic(), d.partition, d.offset).await {
                                        Ok(delivery) => {
                                            let (p, o) = (d.partition, d.offset);
                                            acks.push(Box::pin(async move {
                                                Ack { partition: p, offset: o, ok: matches!(delivery.await, Ok(Ok(_))), attempt: None, refused: None }
                                            }));
                                        }
                                        // Not finished: the message is read again after a restart.
                                        Err(e) => tracing::error!(shard, error = %e, "dead-letter record not produced"),
                                    }
                                }
                                (Source::Kafka(k), Sink::Memory(_)) => k.done(d.partition, d.offset),
                                (Source::Memory(_), _) => {}
                            }
                        }
                    }
                }
            }
            // A parked campaign waits for one of its calls to end or for its lease to allow more
            // (a grant, a higher fair share): no polling.
            _ = lease.updated(), if parked_any => q.wake_all(),
            _ = sleep_until_opt(due), if due.is_some() => {}
            _ = commit_tick.tick() => {
                match (&mut source, &mut journal) {
                    (Source::Kafka(k), Some(j)) => {
                        k.commit();
                        for (p, point) in k.committed_points() {
                            j.committed(p, point);
                        }
                    }
                    (Source::Kafka(k), None) => k.commit(),
                    (Source::Memory(_), Some(j)) => j.forget_resolved(),
                    (Source::Memory(_), None) => {}
                }
                if let Some(j) = &mut journal && let Err(e) = j.commit() {
                    tracing::error!(shard, error = %e, "journal write failed");
                    my_health().set_journal_failing(true);
                }
            }
            _ = heartbeat.tick() => {
                let now = Instant::now();
                let busy = runtime.worker_total_busy_duration(0);
                let wall = now.duration_since(busy_mark.0).as_secs_f64();
                if wall > 0.0 {
                    busy_gauge.set((busy.saturating_sub(busy_mark.1).as_secs_f64() / wall).min(1.0));
                }
                busy_mark = (now, busy);
                in_flight_gauge.set((calls.len() + scheduled.len()) as f64);
                waiting_gauge.set(q.len as f64);
                let closed = lease.fail_closed();
                fail_closed_gauge.set(if closed { 1.0 } else { 0.0 });
                my_health().set_fail_closed(closed);
                my_health().running(now_ms());
            }
            _ = std::future::ready(()), if !source_open && calls.is_empty() && scheduled.is_empty() && acks.is_empty() && q.len == 0 => break,
        }
    }
    report.unfinished = q.len as u64 + calls.len() as u64 + scheduled.len() as u64;
    if let Sink::Kafka(k) = &sink {
        k.flush(Duration::from_secs(5));
    }
    // Wait for acks still in flight so that their offsets are committed.
    while let Some(Ack { partition: p, offset: o, ok, attempt, .. }) = acks.next().await {
        if ok && let Some(a) = attempt {
            journal_done(&mut journal, p, a, shard);
        }
        if let (true, Source::Kafka(k)) = (ok, &mut source) {
            k.done(p, o);
        }
    }
    if let Some(j) = &mut journal
        && let Err(e) = j.commit()
    {
        tracing::error!(shard, error = %e, "final journal write failed");
    }
    if let Source::Kafka(k) = &mut source {
        k.commit_sync();
    }
    my_health().stopped();
    report
}

async fn recv(source: &mut Source, out: &mut Vec<Delivery>, max: usize) -> Result<bool, String> {
    match source {
        Source::Memory(rx) => Ok(rx.recv_many(out, max).await > 0),
        Source::Kafka(k) => k.recv_batch(out, max).await.map(|()| true).map_err(|e| e.to_string()),
    }
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// `now_or_never` for a stream's next item.
trait NowOrNever: futures::Future + Sized {
    fn now_or_never_opt(self) -> Option<Self::Output> {
        futures::FutureExt::now_or_never(self)
    }
}
impl<F: futures::Future> NowOrNever for F {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u128) -> StatusEvent {
        let msg = DispatchMessage {
            v: SCHEMA_VERSION,
            call_id: uuid::Uuid::from_u128(n),
            attempt: 1,
            campaign_id: uuid::Uuid::from_u128(7),
            phone_number: "+15555550100".into(),
            campaign_cap: 10,
            campaign_weight: 1,
            not_before_ms: 0,
            deadline_ms: 0,
            enqueued_at_us: 0,
        };
        event(&msg, EventKind::Completed, 0, 1)
    }

    #[test]
    fn refused_events_wait_a_doubling_back_off_that_resets_once_one_is_delivered() {
        let mut r = Redo::new();
        let t0 = tokio::time::Instant::now();
        r.push(ev(1), Some((0, 10)));
        r.push(ev(2), Some((0, 11)));
        let first = r.at.expect("a round is due") - t0;
        assert!(first >= Redo::FIRST && first < Redo::FIRST * 2, "{first:?}");
        let mut out = Vec::new();
        let mut stuck = Vec::new();
        for round in 0..8u128 {
            stuck.push(r.due(&mut out));
            assert_eq!(out.len() as u128, 2 + round, "every waiting event goes out again, in order");
            assert!(r.events.is_empty() && r.at.is_none());
            let t = tokio::time::Instant::now();
            r.push(ev(100 + round), None);
            let wait = r.at.expect("due") - t;
            assert!(wait >= Redo::FIRST * 2, "round {round}: the back-off grows: {wait:?}");
            assert!(wait <= Duration::from_secs(5) + Duration::from_millis(50), "capped: {wait:?}");
        }
        assert_eq!(out[0].1, Some((0, 10)), "the message an event finishes travels with it");
        assert_eq!(stuck, [false, false, false, true, false, false, false, true], "a new producer every 4 rounds");
        r.delivered();
        let _ = r.due(&mut out);
        let t = tokio::time::Instant::now();
        r.push(ev(999), None);
        assert!(r.at.expect("due") - t < Redo::FIRST * 2, "a delivery resets the back-off");
    }

    #[test]
    fn the_shard_stops_taking_messages_while_too_many_events_wait() {
        let mut r = Redo::new();
        for n in 0..Redo::MAX as u128 - 1 {
            r.push(ev(n), None);
        }
        assert!(!r.full());
        r.push(ev(u128::MAX), None);
        assert!(r.full(), "bounded: no new message is taken until some are delivered");
    }
}
