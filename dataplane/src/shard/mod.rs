//! One shard: a single-threaded loop that takes dispatch messages from its partitions, queues
//! them per campaign, starts calls as its lease cache hands out tokens, and emits status events.
//!
//! [`Shard::run`] reads as a dial's life: take rebalances, start what may start (expiring what
//! is late, lease permitting), journal then dial, give drained partitions back to the fetcher,
//! flush the events; then wait for the next thing to happen (a call ends, the broker answers,
//! messages arrive, the lease changes, a tick) and handle it.
//!
//! - **No head-of-line blocking**: each campaign has its own queue; a campaign without tokens is
//!   parked (not polled) until one of its calls ends or its lease allows more (a grant or a
//!   higher fair share), while other campaigns keep dialing. Campaigns take turns of at most
//!   `quantum` starts. Each dial tells the lease how many of the campaign's calls wait here: the
//!   demand the limiter divides the caps by ([`queues`]).
//! - **Bounded memory**: at most `max_queued_per_shard` messages wait; a partition is paused at
//!   `pause_partition_at` waiting messages and resumed at `resume_partition_at`; at most
//!   `max_reproduce` refused events wait to be produced again ([`redo`]).
//! - **At-least-once**: a message's offset is finished when its outcome event is acknowledged
//!   by the broker (Kafka) or handed to the recorder's channel (in-process); commits never pass
//!   an unfinished message ([`crate::offsets`]).
//! - **No double dial**: a start is journaled (group commit) before the call is placed; a
//!   redelivered attempt the journal knows is never dialled again ([`crate::journal`]).

mod calls;
mod queues;
mod redo;
mod suppress;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dialer_bus::dispatch::{Committed, Delivery, DispatchSource, FetchError, Malformed};
use dialer_bus::kafka::Moved;
use dialer_bus::status::{Sent, StatusSink};
use dialer_bus::time::{now_ms, now_us};
use dialer_domain::messages::{DispatchKind, DispatchMessage, EventKind, StatusEvent};
use dialer_limiter::LeaseHandle;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;
use uuid::Uuid;

use crate::health::{Health, ShardHealth};
use crate::journal::{Journal, Msg, Seen};
use crate::provider::{Placed, Provider};
use crate::tuning::Tuning;
use calls::{Calls, Finished, OutcomeCounters, Placing, event, outcome_event, retryable_failure};
use queues::{Queues, Taken, Waiting};
use redo::{Ack, Outgoing, Redo};

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
    /// Second messages of an attempt (a control plane published its claim again, unable to
    /// confirm the first), at another offset: finished, never dialled a second time.
    pub duplicates: u64,
    /// Messages received but not finished when the shard stopped (redelivered after restart).
    pub unfinished: u64,
    /// Status events the broker did not take, produced again.
    pub reproduced: u64,
    /// Times a partition's messages had to wait for another shard to let go of its journal.
    pub held_back: u64,
    /// Starts the journal could not record (a full disk): held in the shard, not dialled.
    pub journal_held: u64,
}

/// Settings a shard runs with.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub index: u16,
    pub tuning: Tuning,
    /// `TELEPHONY_PER_CAMPAIGN_MAX_CONCURRENCY`: no campaign gets more, whatever its messages say.
    pub per_campaign_ceiling: u32,
    /// Where this shard reports its health (its own slot of the data plane's [`Health`]).
    pub health: Arc<Health>,
}

type LocalBoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T>>>;

/// What woke the shard.
enum Wake {
    /// The stop signal changed (true: stop taking messages, finish the calls).
    Shutdown(bool),
    /// A call waiting on its provider's future ended.
    Ended(Finished),
    /// Scheduled calls reached their end.
    TimersDue,
    /// The broker answered for an outcome event (or a dead letter).
    Acked(Ack),
    /// Refused events are due to be produced again.
    RedoDue,
    /// A fetch returned (`Ok(false)`: the source closed).
    Received(Result<bool, FetchError>),
    /// The lease changed: parked campaigns try again.
    LeaseUpdated,
    /// A delayed message became due (taken at the top of the loop).
    MessagesDue,
    /// Nothing else happened and a campaign that used its whole turn has more to start: the
    /// next turns come at once (after the runtime's other tasks had theirs), not at the next
    /// event. (Without this, a shard started one quantum per event: a 1M-target campaign
    /// waited in the shards with tokens to spare, at 0.19 of their cores.)
    MoreToStart,
    CommitTick,
    Heartbeat,
    /// The source is closed and everything is finished.
    Drained,
}

/// The shard's meters, looked up once.
struct Meters {
    latency: metrics::Histogram,
    dials: metrics::Counter,
    busy: metrics::Gauge,
    in_flight: metrics::Gauge,
    waiting: metrics::Gauge,
    fail_closed: metrics::Gauge,
    outcomes: OutcomeCounters,
    /// The runtime's busy time at the last heartbeat.
    busy_mark: (Instant, Duration),
}

impl Meters {
    fn new(shard: u16) -> Meters {
        let label = shard.to_string();
        let busy_since = tokio::runtime::Handle::current().metrics().worker_total_busy_duration(0);
        Meters {
            latency: metrics::histogram!("dialer_dispatch_to_dial_seconds"),
            dials: metrics::counter!("dialer_dials_total"),
            busy: metrics::gauge!("dialer_shard_busy_ratio", "shard" => label.clone()),
            in_flight: metrics::gauge!("dialer_shard_calls_in_progress", "shard" => label.clone()),
            waiting: metrics::gauge!("dialer_shard_messages_waiting", "shard" => label.clone()),
            fail_closed: metrics::gauge!("dialer_shard_fail_closed", "shard" => label),
            outcomes: OutcomeCounters::default(),
            busy_mark: (Instant::now(), busy_since),
        }
    }

    /// Sets the busy ratio of the shard's core since the last call.
    fn busy_ratio(&mut self) {
        let now = Instant::now();
        let busy = tokio::runtime::Handle::current().metrics().worker_total_busy_duration(0);
        let wall = now.duration_since(self.busy_mark.0).as_secs_f64();
        if wall > 0.0 {
            self.busy.set((busy.saturating_sub(self.busy_mark.1).as_secs_f64() / wall).min(1.0));
        }
        self.busy_mark = (now, busy);
    }
}

/// Reusable buffers of the loop (no allocation per round).
#[derive(Default)]
struct Scratch {
    taken: Taken,
    placing: Vec<Placing>,
    batch: Vec<Delivery>,
    /// Duplicate starts of a round: (campaign, partition, offset).
    duplicates: Vec<(Uuid, i32, i64)>,
}

/// One shard: its source and sink, lease, provider, journal, and the calls in between.
pub struct Shard<P: Provider, S: DispatchSource, K: StatusSink> {
    index: u16,
    tuning: Tuning,
    ceiling: u32,
    health: Arc<Health>,
    source: S,
    sink: K,
    lease: LeaseHandle,
    provider: P,
    journal: Option<Journal>,
    queues: Queues,
    calls: Calls,
    acks: FuturesUnordered<LocalBoxFuture<Ack>>,
    redo: Redo,
    /// Partitions paused because too many of their messages wait here.
    paused: HashSet<i32>,
    /// Messages of partitions whose journal another shard still holds (their previous owner
    /// has not let go yet): kept here undialled, their partition paused, until it does.
    held: std::collections::BTreeMap<i32, Vec<Waiting>>,
    /// Opt-outs announced since the dispatch TTL: calls to these numbers are not dialled.
    suppressed: suppress::Suppressions,
    /// Events to emit at the end of this round.
    events: Vec<Outgoing>,
    scratch: Scratch,
    meters: Meters,
    report: ShardReport,
    stopping: bool,
    stop_deadline: Option<tokio::time::Instant>,
    source_open: bool,
}

impl<P: Provider, S: DispatchSource, K: StatusSink> std::fmt::Debug for Shard<P, S, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("index", &self.index).field("report", &self.report).finish_non_exhaustive()
    }
}

impl<P: Provider, S: DispatchSource, K: StatusSink> Shard<P, S, K> {
    /// A shard; call from inside its own single-threaded runtime.
    pub fn new(
        cfg: ShardConfig,
        source: S,
        sink: K,
        lease: LeaseHandle,
        provider: P,
        journal: Option<Journal>,
    ) -> Shard<P, S, K> {
        let t = &cfg.tuning.timings;
        let redo = Redo::new(
            Duration::from_millis(t.reproduce_first_ms),
            Duration::from_millis(t.reproduce_max_ms),
            cfg.tuning.buffers.max_reproduce,
        );
        Shard {
            index: cfg.index,
            ceiling: cfg.per_campaign_ceiling,
            health: cfg.health,
            source,
            sink,
            lease,
            provider,
            journal,
            queues: Queues::default(),
            calls: Calls::default(),
            acks: FuturesUnordered::new(),
            redo,
            paused: HashSet::new(),
            held: Default::default(),
            suppressed: suppress::Suppressions::new(SUPPRESSIONS_MAX),
            events: Vec::with_capacity(1024),
            scratch: Scratch::default(),
            meters: Meters::new(cfg.index),
            report: ShardReport { shard: cfg.index, ..Default::default() },
            stopping: false,
            stop_deadline: None,
            source_open: true,
            tuning: cfg.tuning,
        }
    }

    fn my_health(&self) -> &ShardHealth {
        self.health.shard(usize::from(self.index))
    }

    /// Runs until `shutdown` turns true and the calls in progress end (or the grace period
    /// passes), or until the source closes and everything is finished.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> ShardReport {
        let mut ticks = Ticks::new(&self.tuning);
        self.my_health().running(now_ms());
        loop {
            self.take_rebalances();
            self.start_calls(now_ms());
            self.flush_events().await;
            if self.finished_stopping() {
                break;
            }
            let wake = self.wait(&mut shutdown, &mut ticks).await;
            if !self.handle(wake).await {
                break;
            }
        }
        self.finish().await
    }

    /// A consumer-group rebalance (noted during the last fetch, on this thread): nothing of a
    /// revoked partition is dialled from here on, and its journal file is released at once
    /// (its next owner waits for that; see [`crate::journal`]).
    fn take_rebalances(&mut self) {
        for moved in self.source.take_moved() {
            self.rebalanced(moved);
        }
    }

    fn rebalanced(&mut self, moved: Moved) {
        match moved {
            Moved::Revoked(ps) => {
                for p in &ps {
                    let held = self.held.remove(p).map_or(0, |h| h.len());
                    let dropped = self.queues.purge_partition(*p, &self.lease) + held;
                    self.paused.remove(p);
                    tracing::info!(
                        shard = self.index,
                        partition = p,
                        dropped,
                        "partition revoked: its waiting messages are left to its next owner"
                    );
                }
                if let Some(j) = &mut self.journal
                    && let Err(e) = j.revoked(&ps)
                {
                    tracing::error!(shard = self.index, error = %e, "journal: released partition not written");
                }
            }
            Moved::Assigned(_) => {}
        }
    }

    /// Starts every call that may start now, campaign by campaign: late messages expire, the
    /// others start while the lease hands out tokens; the starts are journaled, then dialled.
    fn start_calls(&mut self, now: u64) {
        let mut taken = std::mem::take(&mut self.scratch.taken);
        self.queues.release_due(now);
        self.queues.take_turns(now, self.tuning.buffers.quantum, self.ceiling, &self.lease, &mut taken);
        self.expire(&mut taken.expired, now);
        self.drop_suppressed(&mut taken.started, now);
        if !taken.started.is_empty() {
            self.journal_starts(&mut taken.started, now);
            self.dial(&mut taken.started, now);
        }
        self.left_queues(&mut taken.left);
        self.scratch.taken = taken;
    }

    fn expire(&mut self, expired: &mut Vec<Waiting>, now: u64) {
        for w in expired.drain(..) {
            self.report.expired += 1;
            self.meters.outcomes.expired.increment(1);
            let ev = retryable_failure(&w.msg, EventKind::Expired, "deadline passed before dialing", self.index, now);
            self.events.push((ev, Some((w.partition, w.offset))));
        }
    }

    /// Calls to numbers opted out since they were dispatched are not dialled: their tokens go
    /// back and they are reported expired (`dnc`), so their next claim skips them.
    fn drop_suppressed(&mut self, starts: &mut Vec<Waiting>, now: u64) {
        if self.suppressed.is_empty() {
            return;
        }
        starts.retain(|w| {
            if !self.suppressed.blocks(&w.msg.phone_number, w.msg.campaign_id, now) {
                return true;
            }
            self.lease.release(w.msg.campaign_id);
            self.queues.wake(w.msg.campaign_id);
            metrics::counter!("dialer_dataplane_suppressed_total").increment(1);
            let ev = retryable_failure(&w.msg, EventKind::Expired, "dnc: opted out while queued", self.index, now);
            self.events.push((ev, Some((w.partition, w.offset))));
            false
        });
    }

    /// Makes the starts durable in one group commit. Calls the journal cannot record are not
    /// dialled and keep their attempt: they are held ([`Shard::hold_unrecorded`]) until it
    /// writes again.
    fn journal_starts(&mut self, starts: &mut Vec<Waiting>, now: u64) {
        let durable = self.record_starts(starts);
        self.my_health().set_journal_failing(durable.is_err());
        if let Err(e) = durable {
            tracing::error!(shard = self.index, error = %e, calls = starts.len(), "journal write failed: these calls are not dialed; they wait in the shard until the journal can be written again or their deadline passes");
            self.hold_unrecorded(starts, now);
        }
    }

    /// Starts the journal could not make durable: each is withdrawn from the journal, its token
    /// goes back, and its message waits [`JOURNAL_RETRY_MS`] in its queue before it tries again
    /// (its deadline passing meanwhile reports it expired, which gives its attempt back). A start
    /// the journal cannot even withdraw is reported failed (retryable, `journal_unavailable`): its
    /// `S` record would take a later start of it for a second message.
    fn hold_unrecorded(&mut self, starts: &mut Vec<Waiting>, now: u64) {
        for mut w in starts.drain(..) {
            self.lease.release(w.msg.campaign_id);
            let attempt = (w.msg.call_id, w.msg.attempt);
            let withdrawn = self.journal.as_mut().map_or(Ok(()), |j| j.withdraw(w.partition, attempt));
            if let Err(e) = withdrawn {
                tracing::error!(shard = self.index, error = %e, call = %w.msg.call_id, "journal: a start not dialed could not be withdrawn; reported failed");
                let ev = retryable_failure(&w.msg, EventKind::Failed, "journal_unavailable", self.index, now);
                self.events.push((ev, Some((w.partition, w.offset))));
                continue;
            }
            self.report.journal_held += 1;
            metrics::counter!("dialer_dataplane_journal_held_total").increment(1);
            w.msg.not_before_ms = now + JOURNAL_RETRY_MS;
            self.queues.push(w, now);
        }
    }

    /// Queues each start's `S` record and commits them. A start whose attempt the journal knows
    /// by now (two messages of one attempt waited side by side: a republished claim) is a
    /// duplicate: its token goes back and its message is finished, undialled.
    fn record_starts(&mut self, starts: &mut Vec<Waiting>) -> Result<(), crate::journal::JournalError> {
        let Some(j) = &mut self.journal else { return Ok(()) };
        let mut recorded = Ok(());
        let mut duplicates = std::mem::take(&mut self.scratch.duplicates);
        starts.retain(|w| {
            let a = (w.msg.call_id, w.msg.attempt);
            match recorded.is_ok().then(|| j.seen(w.partition, a)) {
                Some(Ok(Seen::InFlight | Seen::Resolved | Seen::Unresolved)) => {
                    duplicates.push((w.msg.campaign_id, w.partition, w.offset));
                    false
                }
                Some(Err(e)) => {
                    recorded = Err(e);
                    true
                }
                Some(Ok(_)) => {
                    recorded = j.started(w.partition, a, Msg::new(w.offset, w.msg.deadline_ms));
                    true
                }
                None => true,
            }
        });
        let durable = recorded.and_then(|()| j.commit());
        for (campaign, partition, offset) in duplicates.drain(..) {
            self.lease.release(campaign);
            self.queues.wake(campaign);
            self.duplicate(partition, offset);
        }
        self.scratch.duplicates = duplicates;
        durable
    }

    /// Places the calls: a `started` event each, then the provider; one clock read per batch.
    fn dial(&mut self, starts: &mut Vec<Waiting>, now: u64) {
        let (dial_instant, dial_us) = (Instant::now(), now_us());
        self.meters.dials.increment(starts.len() as u64);
        for w in starts.drain(..) {
            self.report.dialed += 1;
            self.meters.latency.record(dial_instant.saturating_duration_since(w.received).as_secs_f64());
            self.events.push((started_event(&w.msg, self.index, now, dial_us), None));
            match self.place(&w.msg) {
                Placed::Pending(call) => self.calls.wait_on(call, w, now),
                Placed::Scheduled { after, outcome, end } => self.scratch.placing.push((after, w, outcome, end)),
            }
        }
        self.calls.schedule(&mut self.scratch.placing, now);
    }

    fn place(&self, msg: &DispatchMessage) -> Placed {
        let _dial =
            tracing::debug_span!("dial", shard = self.index, campaign = %msg.campaign_id, attempt = msg.attempt)
                .entered();
        self.provider.place(msg)
    }

    /// Messages that left the queues no longer count against their partitions; a paused
    /// partition drained enough is fetched again.
    fn left_queues(&mut self, left: &mut Vec<i32>) {
        for p in left.drain(..) {
            if self.queues.taken(p) <= self.tuning.buffers.resume_partition_at && self.paused.remove(&p) {
                self.source.resume(p);
            }
        }
    }

    /// Emits the events of this round. An outcome finishes its message once the recorder's
    /// channel has it (in-process) or the broker acknowledges it (Kafka); a refused event is
    /// produced again. (The in-process path waits only when the channel is full: a future per
    /// event would copy every event once more.)
    async fn flush_events(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        for (ev, track) in events.drain(..) {
            let attempt = (ev.call_id, ev.attempt);
            self.report.outcomes += u64::from(track.is_some());
            match self.sink.send(ev).await {
                Sent::Handed => self.handed_over(true, track, attempt),
                Sent::Closed => self.handed_over(false, track, attempt),
                Sent::Pending(ack, ev) => self.await_ack(ack, ev, track, attempt),
                Sent::Refused(ev, e) => {
                    tracing::warn!(shard = self.index, error = %e, "status event not produced; producing it again after a back-off");
                    self.report.reproduced += 1;
                    self.redo.push(ev, track);
                }
            }
        }
        self.events = events;
    }

    /// The recorder's channel has the event (or is gone: the shard stops).
    fn handed_over(&mut self, sent: bool, track: Option<(i32, i64)>, attempt: crate::journal::Attempt) {
        if !sent {
            tracing::error!(shard = self.index, "status channel closed; stopping");
            self.stopping = true;
        }
        if let Some((p, o)) = track {
            if sent {
                journal_done(&mut self.journal, p, attempt, self.index);
            }
            self.source.done(p, o);
        }
    }

    /// An outcome event the broker took: its acknowledgement finishes its message.
    fn await_ack(&mut self, ack: K::Ack, ev: StatusEvent, track: Option<(i32, i64)>, attempt: crate::journal::Attempt) {
        let Some((partition, offset)) = track else { return };
        self.acks.push(Box::pin(async move {
            let ok = ack.await;
            Ack { partition, offset, ok, attempt: Some(attempt), refused: (!ok).then_some(ev) }
        }));
    }

    /// Stopping, and nothing is left to finish; or the grace period is over.
    fn finished_stopping(&self) -> bool {
        if self.stopping && self.calls.is_empty() && self.acks.is_empty() && self.redo.events.is_empty() {
            return true;
        }
        if self.stop_deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            tracing::warn!(shard = self.index, calls = self.calls.len(), "grace period over with calls in progress");
            return true;
        }
        false
    }

    /// Waits for the next thing to happen. Fetches only while there is room (waiting messages,
    /// events to produce again) and the shard is not stopping.
    async fn wait(&mut self, shutdown: &mut watch::Receiver<bool>, ticks: &mut Ticks) -> Wake {
        let next_end = self.calls.next_end();
        let can_take = self.source_open
            && !self.stopping
            && self.queues.len() < self.tuning.buffers.max_queued_per_shard
            && !self.redo.full();
        let due = self
            .queues
            .next_due()
            .map(|t| tokio::time::Instant::now() + Duration::from_millis(t.saturating_sub(now_ms())));
        let (parked, ready) = (self.queues.any_parked(), self.queues.any_ready());
        let drained = !self.source_open && self.calls.is_empty() && self.acks.is_empty() && self.queues.len() == 0;
        let fetch_max = self.tuning.buffers.fetch_batch;
        tokio::select! {
            biased;
            changed = shutdown.changed(), if !self.stopping => Wake::Shutdown(changed.is_err() || *shutdown.borrow()),
            Some(f) = self.calls.pending.next(), if !self.calls.pending.is_empty() => Wake::Ended(f),
            _ = sleep_until_opt(next_end), if next_end.is_some() => Wake::TimersDue,
            Some(ack) = self.acks.next(), if !self.acks.is_empty() => Wake::Acked(ack),
            _ = sleep_until_opt(self.redo.at), if self.redo.at.is_some() => Wake::RedoDue,
            r = self.source.recv(&mut self.scratch.batch, fetch_max), if can_take => Wake::Received(r),
            // A parked campaign waits for one of its calls to end or for its lease to allow
            // more (a grant, a higher fair share): no polling.
            _ = self.lease.updated(), if parked => Wake::LeaseUpdated,
            _ = sleep_until_opt(due), if due.is_some() => Wake::MessagesDue,
            _ = tokio::task::yield_now(), if ready && !self.stopping => Wake::MoreToStart,
            _ = ticks.commit.tick() => Wake::CommitTick,
            _ = ticks.heartbeat.tick() => Wake::Heartbeat,
            _ = std::future::ready(()), if drained => Wake::Drained,
        }
    }

    /// Handles what woke the shard; false when the loop is over.
    async fn handle(&mut self, wake: Wake) -> bool {
        match wake {
            Wake::Shutdown(stop) => self.shutdown(stop),
            Wake::Ended(f) => self.calls_ended(f),
            Wake::TimersDue => self.scheduled_ended(),
            Wake::Acked(ack) => self.acked(ack),
            Wake::RedoDue => self.produce_again(),
            Wake::Received(r) => self.received(r).await,
            Wake::LeaseUpdated => self.queues.wake_all(),
            Wake::MessagesDue | Wake::MoreToStart => {}
            Wake::CommitTick => {
                self.take_back();
                self.commit();
            }
            Wake::Heartbeat => self.heartbeat(),
            Wake::Drained => return false,
        }
        true
    }

    fn shutdown(&mut self, stop: bool) {
        if stop {
            self.stopping = true;
            self.stop_deadline =
                Some(tokio::time::Instant::now() + Duration::from_millis(self.tuning.shutdown.grace_ms));
        }
    }

    /// A call ended: its token goes back, its campaign may dial again, its outcome is counted
    /// and its event queued.
    fn call_ended(&mut self, f: Finished, ended_ms: u64) {
        let c = f.w.msg.campaign_id;
        self.lease.release(c);
        self.queues.wake(c);
        self.meters.outcomes.count(&f.outcome);
        self.events.push((outcome_event(&f, self.index, ended_ms), Some((f.w.partition, f.w.offset))));
    }

    /// A call waiting on its future ended; so did whichever others are ready (events go out in
    /// batches, with one clock read).
    fn calls_ended(&mut self, first: Finished) {
        let ended_ms = now_ms();
        self.call_ended(first, ended_ms);
        while let Some(Some(f)) = futures::FutureExt::now_or_never(self.calls.pending.next()) {
            self.call_ended(f, ended_ms);
        }
    }

    fn scheduled_ended(&mut self) {
        let (ended_ms, now) = (now_ms(), tokio::time::Instant::now());
        while let Some(f) = self.calls.pop_ended(now) {
            self.call_ended(f, ended_ms);
        }
    }

    /// The broker answered for an event that finishes a message: the attempt is resolved in
    /// the journal and the message finished; a refused event is produced again.
    fn acked(&mut self, Ack { partition, offset, ok, attempt, refused }: Ack) {
        self.my_health().set_sink_failing(!ok);
        if ok {
            if let Some(a) = attempt {
                journal_done(&mut self.journal, partition, a, self.index);
                self.redo.delivered();
            }
            self.source.done(partition, offset);
        }
        if let Some(ev) = refused {
            tracing::warn!(
                shard = self.index,
                partition,
                offset,
                "outcome not acknowledged; producing it again after a back-off"
            );
            self.report.reproduced += 1;
            self.redo.push(ev, Some((partition, offset)));
        }
    }

    /// Refused events go out again this round; a producer that looks stuck is replaced.
    fn produce_again(&mut self) {
        let stuck = self.redo.due(&mut self.events);
        self.sink.heal(stuck);
    }

    /// A fetch returned: its messages are admitted (or dead-lettered).
    async fn received(&mut self, r: Result<bool, FetchError>) {
        match r {
            Ok(true) => self.my_health().set_source_failing(false),
            Ok(false) => self.source_open = false,
            Err(e) => {
                self.my_health().set_source_failing(true);
                tracing::warn!(shard = self.index, error = %e, "dispatch fetch failed; retrying");
                tokio::time::sleep(Duration::from_millis(self.tuning.timings.fetch_retry_ms)).await;
            }
        }
        let (now, received) = (now_ms(), Instant::now());
        let mut batch = std::mem::take(&mut self.scratch.batch);
        for d in batch.drain(..) {
            self.report.received += 1;
            match d.msg {
                Ok(msg) => self.admit(msg, d.partition, d.offset, now, received),
                Err(bad) => self.malformed(&bad, d.partition, d.offset).await,
            }
        }
        self.scratch.batch = batch;
    }

    /// A readable message: queued to dial, unless the journal knows its attempt or another
    /// shard holds its partition's journal.
    fn admit(&mut self, msg: DispatchMessage, partition: i32, offset: i64, now: u64, received: Instant) {
        if msg.kind == DispatchKind::Suppress {
            self.suppressed.add(&msg.phone_number, msg.campaign_id, msg.deadline_ms, now);
            self.source.done(partition, offset);
            return;
        }
        if let Some(held) = self.held.get_mut(&partition) {
            held.push(Waiting { msg, partition, offset, received });
            return;
        }
        match self.seen(partition, &msg) {
            // This shard is dialing it: the call in progress finishes its message; a second
            // message of it (another offset) is finished here.
            Seen::InFlight if self.started_offset(partition, &msg).is_some_and(|o| o != offset) => {
                self.duplicate(partition, offset)
            }
            Seen::InFlight => self.report.redelivered_in_flight += 1,
            // Dialled, and its outcome delivered, before a restart: only the offset commit was
            // lost. Nothing to do but finish the message.
            Seen::Resolved => {
                self.report.redelivered_done += 1;
                self.source.done(partition, offset);
            }
            Seen::Unresolved => self.unknown_outcome(&msg, partition, offset, now),
            Seen::No => self.enqueue(Waiting { msg, partition, offset, received }, now),
            Seen::Elsewhere => self.hold(Waiting { msg, partition, offset, received }),
        }
    }

    /// The first message of a partition whose journal another shard holds: the partition is
    /// paused and its messages wait, undialled, until that shard lets go ([`Shard::take_back`]).
    fn hold(&mut self, w: Waiting) {
        let p = w.partition;
        tracing::warn!(
            shard = self.index,
            partition = p,
            "partition's journal is held by another shard (its previous owner has not seen the rebalance yet): nothing of it is dialled until it lets go"
        );
        self.report.held_back += 1;
        if !self.paused.contains(&p) {
            self.source.pause(p);
        }
        self.held.insert(p, vec![w]);
    }

    /// Partitions whose previous owner let go of their journal: their messages are admitted
    /// (the journal now shows every attempt it started) and the partition fetched again.
    fn take_back(&mut self) {
        let Some(j) = &mut self.journal else { return };
        let mut free = Vec::new();
        for &p in self.held.keys() {
            match j.own(p) {
                Ok(true) => free.push(p),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(shard = self.index, partition = p, error = %e, "journal lock unreadable; trying again next tick")
                }
            }
        }
        let now = now_ms();
        for p in free {
            let waiting = self.held.remove(&p).unwrap_or_default();
            tracing::info!(
                shard = self.index,
                partition = p,
                messages = waiting.len(),
                "partition's journal let go by its previous owner: its messages are admitted"
            );
            if !self.paused.contains(&p) {
                self.source.resume(p);
            }
            for w in waiting {
                self.admit(w.msg, w.partition, w.offset, now, w.received);
            }
        }
    }

    fn started_offset(&self, partition: i32, msg: &DispatchMessage) -> Option<i64> {
        self.journal.as_ref()?.started_offset(partition, (msg.call_id, msg.attempt))
    }

    /// A second message of an attempt this shard dialled or is dialling: finished, not dialled.
    fn duplicate(&mut self, partition: i32, offset: i64) {
        self.report.duplicates += 1;
        metrics::counter!("dialer_dataplane_duplicates_total").increment(1);
        self.source.done(partition, offset);
    }

    fn seen(&mut self, partition: i32, msg: &DispatchMessage) -> Seen {
        let Some(j) = &mut self.journal else { return Seen::No };
        j.seen(partition, (msg.call_id, msg.attempt)).unwrap_or_else(|e| {
            // Cannot tell: do not dial; the retry policy decides.
            tracing::error!(shard = self.index, error = %e, "journal unreadable");
            Seen::Unresolved
        })
    }

    /// An attempt started before a restart with no recorded outcome: reported as
    /// `unknown_outcome` (retryable), never dialled again.
    fn unknown_outcome(&mut self, msg: &DispatchMessage, partition: i32, offset: i64, now: u64) {
        self.report.unknown_outcome += 1;
        metrics::counter!("dialer_unknown_outcomes_total").increment(1);
        tracing::warn!(shard = self.index, call = %msg.call_id, attempt = msg.attempt, "attempt started before a restart with no recorded outcome: reported as unknown_outcome, not dialed again");
        let ev = retryable_failure(msg, EventKind::Failed, "unknown_outcome", self.index, now);
        self.events.push((ev, Some((partition, offset))));
    }

    /// Queues a message; its partition is paused when too many of its messages wait.
    fn enqueue(&mut self, w: Waiting, now: u64) {
        let p = w.partition;
        self.queues.push(w, now);
        if self.queues.of_partition(p) >= self.tuning.buffers.pause_partition_at && self.paused.insert(p) {
            self.source.pause(p);
        }
    }

    /// An unreadable message goes to the dead-letter topic (it is finished once the broker
    /// has it); the in-process bus has none, so it is finished at once.
    async fn malformed(&mut self, bad: &Malformed, partition: i32, offset: i64) {
        self.report.malformed += 1;
        metrics::counter!("dialer_dispatch_malformed_total").increment(1);
        tracing::warn!(shard = self.index, partition, offset, reason = %bad.reason, "malformed dispatch message: sent to the dead-letter topic");
        let Some(topic) = self.source.dead_letter_origin() else {
            self.source.done(partition, offset);
            return;
        };
        let origin = format!("{topic}/{partition}/{offset}");
        match self.sink.dead_letter(bad, &origin).await {
            Ok(ack) => self
                .acks
                .push(Box::pin(async move { Ack { partition, offset, ok: ack.await, attempt: None, refused: None } })),
            // Not finished: the message is read again after a restart.
            Err(e) => tracing::error!(shard = self.index, error = %e, "dead-letter record not produced"),
        }
    }

    /// Commits what is finished, and the journal learns which attempts no redelivery can bring
    /// back.
    fn commit(&mut self) {
        let committed = self.source.commit();
        let Some(j) = &mut self.journal else { return };
        match committed {
            Committed::Points(points) => {
                let now = now_ms();
                for (p, point) in points {
                    j.committed(p, point, now);
                }
            }
            Committed::Untracked => j.forget_resolved(),
        }
        if let Err(e) = j.commit() {
            tracing::error!(shard = self.index, error = %e, "journal write failed");
            self.my_health().set_journal_failing(true);
        }
    }

    /// The health heartbeat and the shard's gauges.
    fn heartbeat(&mut self) {
        // Parked campaigns try again at least once a heartbeat: tokens that came back without a
        // wake (starts the journal could not record) are never left idle while messages wait.
        self.queues.wake_all();
        self.meters.busy_ratio();
        self.meters.in_flight.set(self.calls.len() as f64);
        self.meters.waiting.set(self.queues.len() as f64);
        let closed = self.lease.fail_closed();
        self.meters.fail_closed.set(if closed { 1.0 } else { 0.0 });
        self.my_health().set_fail_closed(closed);
        self.my_health().running(now_ms());
    }

    /// After the loop: flush the producer, wait for the acknowledgements in flight so their
    /// offsets are committed, write the journal, commit.
    async fn finish(mut self) -> ShardReport {
        let held: usize = self.held.values().map(Vec::len).sum();
        self.report.unfinished = (self.queues.len() + self.calls.len() + held) as u64;
        self.sink.flush(Duration::from_secs(5));
        while let Some(Ack { partition, offset, ok, attempt, .. }) = self.acks.next().await {
            if ok {
                if let Some(a) = attempt {
                    journal_done(&mut self.journal, partition, a, self.index);
                }
                self.source.done(partition, offset);
            }
        }
        if let Some(j) = &mut self.journal
            && let Err(e) = j.commit()
        {
            tracing::error!(shard = self.index, error = %e, "final journal write failed");
        }
        self.source.commit_sync();
        self.my_health().stopped();
        self.report
    }
}

/// The shard's commit and heartbeat intervals.
struct Ticks {
    commit: tokio::time::Interval,
    heartbeat: tokio::time::Interval,
}

impl Ticks {
    fn new(t: &Tuning) -> Ticks {
        let every = |ms: u64| {
            let mut i = tokio::time::interval(Duration::from_millis(ms));
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        };
        Ticks { commit: every(t.kafka.commit_every_ms), heartbeat: every(t.timings.heartbeat_ms) }
    }
}

/// Opt-outs a shard remembers: the scheduler announces at most 1,000 per tick, each kept for the
/// dispatch TTL (5 minutes by default), so 300,000 at 1 tick/s; beyond, the soonest to lapse goes.
const SUPPRESSIONS_MAX: usize = 500_000;

/// How long a start the journal could not record waits before it tries again.
const JOURNAL_RETRY_MS: u64 = 1_000;

fn started_event(msg: &DispatchMessage, shard: u16, now: u64, dial_us: u64) -> StatusEvent {
    let mut ev = event(msg, EventKind::Started, shard, now);
    if msg.enqueued_at_us > 0 {
        ev.dispatch_latency_us = Some(dial_us.saturating_sub(msg.enqueued_at_us));
    }
    ev
}

fn journal_done(journal: &mut Option<Journal>, partition: i32, a: crate::journal::Attempt, shard: u16) {
    if let Some(j) = journal
        && let Err(e) = j.done(partition, a)
    {
        tracing::error!(shard, error = %e, "journal write failed");
    }
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
