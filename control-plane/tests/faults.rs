//! Failure paths of the control plane, each with the fault injected: calls abandoned by a lost
//! dispatch or outcome are reaped only once they cannot be up, and exactly once even when a late
//! real event races the reaper; a partly failed publish gives back only what the bus did not
//! take; one campaign's store error does not stop the others, nor does one whose claim waits on
//! a lock hold up the others of its tick; many small campaigns are claimed in a few claims, each
//! to its budget; claims follow the injected clock;
//! an event the store refuses is isolated and the rest of its batch recorded.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dialer_api::campaigns::CreateCampaignRequest;
use dialer_api::views::Call;
use dialer_bus::MemoryBus;
use dialer_control_plane::Store;
use dialer_control_plane::reaper::{Reaper, ReaperConfig};
use dialer_control_plane::recorder::Recorder;
use dialer_control_plane::scheduler::{ManualClock, Scheduler, SchedulerSettings};
use dialer_domain::campaign::{CallStatus, CampaignAction};
use dialer_domain::lifecycle::UNKNOWN_OUTCOME;
use dialer_domain::messages::EventKind;
use dialer_store::{CallQuery, ClaimedCall};
use rand::SeedableRng;
use serde_json::json;
use uuid::Uuid;

use dialer_testkit::both_stores;
use dialer_testkit::fixtures::{Backend, campaign, event, store};

async fn assert_consistent(s: &Store, id: Uuid) {
    assert_eq!(
        s.stats(id).await.expect("stats"),
        s.recount_stats(id).await.expect("recount"),
        "stats differ from rows"
    );
}

async fn calls(s: &Store, id: Uuid) -> Vec<Call> {
    s.list_calls(id, &CallQuery { limit: 1000, ..Default::default() }).await.expect("calls")
}

fn reaper(s: &Store, clock: Arc<ManualClock>, batch: usize) -> Reaper {
    Reaper {
        store: s.clone(),
        clock,
        cfg: ReaperConfig {
            every: Duration::from_secs(1),
            dispatch_ttl: Duration::from_secs(60),
            longest_call: Duration::from_secs(10),
            grace: Duration::from_secs(5),
            batch,
        },
        timeline: None,
        seed: 1,
    }
}

async fn started(s: &Store, campaign: Uuid, calls: &[ClaimedCall]) {
    let evs: Vec<_> = calls.iter().map(|k| event(campaign, k, EventKind::Started)).collect();
    s.record_events(&evs, &mut || 0.5, None).await.expect("started");
}

/// Queued calls wait `dispatch_ttl + longest call + grace` after their claim, calls in progress
/// `longest call + grace` after their start; then each is `unknown_outcome` (attempt used, retry
/// by policy), and the real outcome arriving late changes nothing.
async fn abandoned_calls_are_reaped_only_after_their_latest_end(b: Backend) {
    let (s, _d) = store(b).await;
    let c = campaign(&s, "reap", 6, 10, json!([])).await;
    s.transition(c.id, CampaignAction::Start).await.expect("start");
    let t0 = Utc::now();
    let claimed = s.claim_due(c.id, 6, t0).await.expect("claim");
    started(&s, c.id, &claimed[..3]).await;
    let clock = ManualClock::new(t0);
    let r = reaper(&s, clock.clone(), 2);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let sec = chrono::Duration::seconds;
    clock.set(t0 + sec(13));
    assert_eq!(r.sweep(&mut rng).await.expect("sweep").applied, 0, "calls in progress may still be up");
    clock.set(t0 + sec(17));
    let rep = r.sweep(&mut rng).await.expect("sweep");
    assert_eq!((rep.in_progress, rep.queued, rep.applied), (3, 0, 3), "only the calls in progress: {rep:?}");
    clock.set(t0 + sec(74));
    assert_eq!(r.sweep(&mut rng).await.expect("sweep").applied, 0, "a queued call may be dialled up to its deadline");
    clock.set(t0 + sec(77));
    let rep = r.sweep(&mut rng).await.expect("sweep");
    assert_eq!((rep.in_progress, rep.queued, rep.applied), (0, 3, 3), "{rep:?}");
    for k in calls(&s, c.id).await {
        assert_eq!(k.status, CallStatus::Pending, "{k:?}");
        assert_eq!((k.attempt_count, k.last_error.as_deref()), (1, Some(UNKNOWN_OUTCOME)), "{k:?}");
        assert!(k.next_attempt_at.is_some(), "the retry policy scheduled it: {k:?}");
        let detail = s.get_call(k.id).await.expect("call");
        assert_eq!(detail.attempts.last().map(|a| a.outcome.as_str()), Some("failed"), "the timeline has it");
    }
    assert_consistent(&s, c.id).await;
    let late: Vec<_> = claimed.iter().map(|k| event(c.id, k, EventKind::Completed)).collect();
    let r2 = s.record_events(&late, &mut || 0.5, None).await.expect("late events");
    assert_eq!((r2.applied, r2.ignored), (0, 6), "an event of a resolved attempt changes nothing");
    assert_consistent(&s, c.id).await;
    assert_eq!(r.sweep(&mut rng).await.expect("sweep").applied, 0, "nothing left to reap");
}

/// The reaper and a recorder resolving the same calls at once: each call is resolved once
/// (completed or unknown_outcome, never both counted), and the aggregates equal the rows.
async fn a_reaper_racing_late_outcomes_resolves_each_call_once(b: Backend) {
    let (s, _d) = store(b).await;
    let c = campaign(&s, "reap-race", 400, 100, json!([])).await;
    s.transition(c.id, CampaignAction::Start).await.expect("start");
    let claimed = s.claim_due(c.id, 400, Utc::now()).await.expect("claim");
    started(&s, c.id, &claimed).await;
    let done: Vec<_> = claimed.iter().map(|k| event(c.id, k, EventKind::Completed)).collect();
    let rs = s.clone();
    let recorder = tokio::spawn(async move {
        let mut applied = 0;
        for chunk in done.chunks(40) {
            applied += rs.record_events(chunk, &mut || 0.5, None).await.expect("outcomes").applied;
        }
        applied
    });
    let r = reaper(&s, ManualClock::new(Utc::now() + chrono::Duration::hours(1)), 25);
    let reaped = r.sweep(&mut rand::rngs::StdRng::seed_from_u64(2)).await.expect("sweep").applied;
    let recorded = recorder.await.expect("recorder");
    assert_eq!(reaped + recorded, 400, "each call resolved exactly once (reaped {reaped}, recorded {recorded})");
    let rows = calls(&s, c.id).await;
    let completed = rows.iter().filter(|k| k.status == CallStatus::Completed).count() as u64;
    let retried = rows.iter().filter(|k| k.last_error.as_deref() == Some(UNKNOWN_OUTCOME)).count() as u64;
    assert_eq!((completed, retried), (recorded, reaped));
    assert_consistent(&s, c.id).await;
}

/// Two shards, one of which is gone: its messages are not taken, the others are delivered.
/// Exactly the calls not taken go back to pending (attempt undone); the delivered stay queued.
async fn a_partly_failed_publish_gives_back_only_what_was_not_taken(b: Backend) {
    let (s, _d) = store(b).await;
    let c = campaign(&s, "partial", 40, 100, json!([])).await;
    s.transition(c.id, CampaignAction::Start).await.expect("start");
    let mut ends = MemoryBus::open(2, 8, 1000, 1000);
    let bus = ends.dispatch.0.clone();
    drop(ends.shard_sources.pop());
    let sched = Scheduler {
        clock: ManualClock::new(Utc::now()),
        ..dialer_testkit::fixtures::scheduler(s.clone(), dialer_bus::dispatch::MemoryDispatchSink(bus))
    };
    let rep = sched.tick().await.expect("tick");
    let mut delivered = HashSet::new();
    while let Ok(d) = ends.shard_sources[0].0.try_recv() {
        delivered.insert(d.msg.expect("readable").call_id);
    }
    assert!(!delivered.is_empty() && delivered.len() < 40, "both shards had calls: {}", delivered.len());
    assert_eq!(rep.dispatched, delivered.len());
    for k in calls(&s, c.id).await {
        if delivered.contains(&k.id) {
            assert_eq!((k.status, k.attempt_count), (CallStatus::Queued, 1), "delivered: stays queued");
        } else {
            assert_eq!((k.status, k.attempt_count), (CallStatus::Pending, 0), "not taken: given back");
        }
    }
    assert_consistent(&s, c.id).await;
}

/// A campaign whose claim fails in the store (a trigger refuses its rows) does not keep the
/// campaigns after it from being dispatched in the same tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_campaigns_store_error_does_not_stop_the_others() {
    let (s, _d) = store(Backend::Sqlite).await;
    let bad = campaign(&s, "bad", 5, 10, json!([])).await;
    let good = campaign(&s, "good-one", 5, 10, json!([])).await;
    assert!(bad.id < good.id, "the failing campaign comes first in the tick");
    for id in [bad.id, good.id] {
        s.transition(id, CampaignAction::Start).await.expect("start");
    }
    let dialer_store::Pool::Sqlite(pool) = s.pool() else { unreachable!() };
    let hex: String = bad.id.as_bytes().iter().map(|b| format!("{b:02X}")).collect();
    sqlx::query(&format!(
        "CREATE TRIGGER refuse BEFORE UPDATE ON calls WHEN OLD.campaign_id = X'{hex}' \
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    ))
    .execute(pool)
    .await
    .expect("trigger");
    let ends = MemoryBus::open(1, 8, 1000, 1000);
    let bus = ends.dispatch.0.clone();
    let sched = Scheduler {
        clock: ManualClock::new(Utc::now()),
        ..dialer_testkit::fixtures::scheduler(s.clone(), dialer_bus::dispatch::MemoryDispatchSink(bus))
    };
    let rep = sched.tick().await.expect("the tick goes on");
    assert_eq!(rep.dispatched, 5, "the good campaign was dispatched: {rep:?}");
    assert_eq!(s.stats(good.id).await.expect("stats").queued_calls, 5);
    assert_eq!(s.stats(bad.id).await.expect("stats").pending_calls, 5, "the bad one's claim rolled back");
}

/// The scheduler claims by its clock: a retry due in an hour is claimed by a clock two hours
/// ahead, and its message's deadline counts from that clock.
async fn claims_follow_the_injected_clock(b: Backend) {
    let (s, _d) = store(b).await;
    let req: CreateCampaignRequest = serde_json::from_value(json!({
        "name": "clock", "max_concurrent_calls": 5,
        "retry_policy": {"max_attempts": 3, "base_delay": "1h", "max_delay": "2h", "jitter": 0.0},
        "targets": [{"phone_number": "+15550000001"}]
    }))
    .expect("request");
    let c = s.create_campaign(&req.validate(10).expect("valid")).await.expect("created");
    s.transition(c.id, CampaignAction::Start).await.expect("start");
    let claimed = s.claim_due(c.id, 1, Utc::now()).await.expect("claim");
    let failed = [event(c.id, &claimed[0], EventKind::Started), event(c.id, &claimed[0], EventKind::Failed)];
    s.record_events(&failed, &mut || 0.5, None).await.expect("failed");
    let mut ends = MemoryBus::open(1, 8, 1000, 1000);
    let bus = ends.dispatch.0.clone();
    let at = Utc::now() + chrono::Duration::hours(2);
    let sched = Scheduler {
        clock: ManualClock::new(at),
        ..dialer_testkit::fixtures::scheduler(s.clone(), dialer_bus::dispatch::MemoryDispatchSink(bus))
    };
    assert_eq!(sched.tick().await.expect("tick").dispatched, 1, "the retry is due by the scheduler's clock");
    let m = ends.shard_sources[0].0.try_recv().expect("dispatched").msg.expect("readable");
    assert_eq!(m.attempt, 2);
    let ttl_ms = SchedulerSettings::default().dispatch_ttl.as_millis() as u64;
    assert_eq!(m.deadline_ms, at.timestamp_millis() as u64 + ttl_ms, "the deadline counts from the clock");
}

/// PostgreSQL refuses a NUL character in text: a batch holding such an event fails as a whole.
/// The recorder splits it until that event is alone, dead-letters it, and writes the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_store_refuses_is_isolated_and_the_rest_recorded() {
    let (s, _d) = store(Backend::Postgres).await;
    let c = campaign(&s, "poison", 20, 100, json!([])).await;
    s.transition(c.id, CampaignAction::Start).await.expect("start");
    let claimed = s.claim_due(c.id, 20, Utc::now()).await.expect("claim");
    let (tx, rx) = tokio::sync::mpsc::channel(100);
    for k in &claimed {
        tx.send(event(c.id, k, EventKind::Started)).await.expect("send");
    }
    for (i, k) in claimed.iter().enumerate() {
        let mut e = event(c.id, k, EventKind::Failed);
        if i == 7 {
            e.reason = Some("busy\0".into());
        }
        tx.send(e).await.expect("send");
    }
    drop(tx);
    let rec = Recorder {
        store: s.clone(),
        source: dialer_bus::status::MemoryStatusSource(rx),
        batch_max: 100,
        linger: Duration::ZERO,
        seed: 1,
        timeline: None,
    };
    tokio::time::timeout(Duration::from_secs(60), rec.run(std::future::pending::<()>()))
        .await
        .expect("the recorder got past the event it cannot write");
    for k in calls(&s, c.id).await {
        let want = if k.id == claimed[7].id { CallStatus::InProgress } else { CallStatus::Pending };
        assert_eq!(k.status, want, "{k:?}");
    }
    assert_consistent(&s, c.id).await;
}

/// `max_batch` bounds one claim, not the dial rate: a campaign that could take more than a
/// batch is claimed again at once, not an `interval` later (an hour here), each call once.
async fn a_campaign_bound_by_max_batch_is_claimed_again_at_once(b: Backend) {
    let (s, _d) = store(b).await;
    let c = campaign(&s, "batches", 100, 100, json!([])).await;
    s.transition(c.id, CampaignAction::Start).await.expect("start");
    let mut ends = MemoryBus::open(1, 8, 1000, 1000);
    let bus = ends.dispatch.0.clone();
    let sched = Scheduler {
        clock: ManualClock::new(Utc::now()),
        settings: SchedulerSettings { max_batch: 10, interval: Duration::from_secs(3600), ..Default::default() },
        ..dialer_testkit::fixtures::scheduler(s.clone(), dialer_bus::dispatch::MemoryDispatchSink(bus))
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(sched.run(async move {
        let _ = stopped.await;
    }));
    let mut seen = HashSet::new();
    let rx = &mut ends.shard_sources[0].0;
    while seen.len() < 100 {
        let d = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of 100 dispatched: the next batch waited for the interval", seen.len()))
            .expect("bus open");
        assert!(seen.insert(d.msg.expect("readable").call_id), "a call dispatched twice");
    }
    let _ = stop.send(());
    running.await.expect("scheduler stops");
    assert!(rx.try_recv().is_err(), "nothing more than the 100 calls");
    assert_eq!(s.stats(c.id).await.expect("stats").queued_calls, 100);
    assert_consistent(&s, c.id).await;
}

/// The campaigns of a tick are claimed side by side (`claim_concurrency`): a campaign whose
/// claim waits (its row locked by a transition in progress) does not hold up the others, which
/// are dispatched while it waits; it is dispatched once it is let go, in the same tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_whose_claim_waits_does_not_hold_up_the_others_in_its_tick() {
    let (s, _d) = store(Backend::Postgres).await;
    let mut ids = Vec::new();
    for k in 0..6 {
        let c = campaign(&s, &format!("side-by-side-{k}"), 4, 10, json!([])).await;
        s.transition(c.id, CampaignAction::Start).await.expect("start");
        ids.push(c.id);
    }
    ids.sort();
    let dialer_store::Pool::Postgres(pool) = s.pool() else { unreachable!() };
    let mut lock = pool.begin().await.expect("begin");
    sqlx::query("SELECT id FROM campaigns WHERE id = $1 FOR UPDATE")
        .bind(ids[0])
        .execute(&mut *lock)
        .await
        .expect("lock");
    let mut ends = MemoryBus::open(1, 8, 1000, 1000);
    let bus = ends.dispatch.0.clone();
    let sched = Scheduler {
        clock: ManualClock::new(Utc::now()),
        settings: SchedulerSettings { claim_concurrency: 8, ..Default::default() },
        ..dialer_testkit::fixtures::scheduler(s.clone(), dialer_bus::dispatch::MemoryDispatchSink(bus))
    };
    let tick = tokio::spawn(async move { sched.tick().await });
    let rx = &mut ends.shard_sources[0].0;
    let mut others = HashSet::new();
    while others.len() < 5 * 4 {
        let d = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("{} of 20 calls of the other campaigns dispatched while the first waited", others.len())
            })
            .expect("bus open")
            .msg
            .expect("readable");
        assert_ne!(d.campaign_id, ids[0], "the locked campaign was claimed through its lock");
        assert!(others.insert(d.call_id), "a call dispatched twice");
    }
    assert!(!tick.is_finished(), "the tick waits for the locked campaign");
    lock.rollback().await.expect("let go");
    let rep =
        tokio::time::timeout(Duration::from_secs(20), tick).await.expect("tick ends").expect("joins").expect("tick");
    assert_eq!(rep.dispatched, 6 * 4, "{rep:?}");
    let mut first = 0;
    while let Ok(d) = rx.try_recv() {
        assert_eq!(d.msg.expect("readable").campaign_id, ids[0]);
        first += 1;
    }
    assert_eq!(first, 4, "the first campaign dispatched once let go");
    for id in ids {
        assert_consistent(&s, id).await;
    }
}

/// A tick of many small campaigns claims them in a few groups (each one transaction), not one
/// claim each, and each campaign still gets its own budget: 2 × its cap of calls, its calls and
/// no other's.
async fn many_small_campaigns_are_claimed_in_a_few_claims_each_to_its_budget(b: Backend) {
    let (s, _d) = store(b).await;
    let mut ids = HashSet::new();
    for k in 0..120 {
        let c = campaign(&s, &format!("small-{k}"), 5, 2, json!([])).await;
        s.transition(c.id, CampaignAction::Start).await.expect("start");
        ids.insert(c.id);
    }
    let mut ends = MemoryBus::open(1, 8, 10_000, 1000);
    let bus = ends.dispatch.0.clone();
    let sched = Scheduler {
        clock: ManualClock::new(Utc::now()),
        settings: SchedulerSettings { claim_concurrency: 4, ..Default::default() },
        ..dialer_testkit::fixtures::scheduler(s.clone(), dialer_bus::dispatch::MemoryDispatchSink(bus))
    };
    let rep = sched.tick().await.expect("tick");
    assert_eq!((rep.dispatched, rep.claims), (120 * 4, 4), "{rep:?}");
    let mut per_campaign: std::collections::HashMap<Uuid, HashSet<Uuid>> = Default::default();
    while let Ok(d) = ends.shard_sources[0].0.try_recv() {
        let m = d.msg.expect("readable");
        assert!(per_campaign.entry(m.campaign_id).or_default().insert(m.call_id), "a call dispatched twice");
    }
    assert_eq!(per_campaign.len(), 120);
    for id in ids {
        let queued: HashSet<Uuid> =
            calls(&s, id).await.into_iter().filter(|k| k.status == CallStatus::Queued).map(|k| k.id).collect();
        assert_eq!(per_campaign[&id], queued, "its own 4 calls, each queued");
        assert_eq!(queued.len(), 4);
        assert_consistent(&s, id).await;
    }
}

/// A sink on a shared broker (a claim can outlive its claimer unpublished) that keeps what it is
/// asked to publish and either takes it or answers "in doubt" (a timeout: maybe delivered).
#[derive(Debug, Default)]
struct Broker {
    asked: std::sync::Mutex<Vec<dialer_domain::messages::DispatchMessage>>,
    times_out: bool,
}

impl dialer_bus::dispatch::DispatchSink for Broker {
    const MAY_STRAND_CLAIMS: bool = true;

    async fn publish_all(
        &self,
        msgs: Vec<dialer_domain::messages::DispatchMessage>,
    ) -> Result<(), dialer_bus::dispatch::NotPublished> {
        let n = msgs.len();
        self.asked.lock().expect("lock").extend(msgs);
        if !self.times_out {
            return Ok(());
        }
        let reason = dialer_bus::dispatch::PublishError::BusClosed(dialer_bus::BusClosed);
        Err(dialer_bus::dispatch::NotPublished { unacked: vec![], in_doubt: n, reason })
    }

    async fn broadcast(
        &self,
        _: &[dialer_domain::messages::DispatchMessage],
    ) -> Result<(), dialer_bus::dispatch::PublishError> {
        Ok(())
    }
}

impl Broker {
    /// (call, attempt, deadline, claimed at) of each message asked since the last look.
    fn take(&self) -> Vec<(Uuid, u32, u64, u64)> {
        let mut asked = std::mem::take(&mut *self.asked.lock().expect("lock"));
        asked.sort_by_key(|m| m.call_id);
        asked.iter().map(|m| (m.call_id, m.attempt, m.deadline_ms, m.enqueued_at_us)).collect()
    }
}

/// A claim whose messages are in doubt (the broker timed out) stays queued, and another replica
/// publishes it again `republish_after` later: the same calls, attempts, deadlines and claim
/// time; once per `republish_after` (not every tick); only calls still queued (not those the
/// data plane reported started); never past the deadline. Nothing is claimed twice meanwhile.
async fn a_claim_whose_messages_were_never_confirmed_is_published_again_as_it_was(b: Backend) {
    let (s, _d) = store(b).await;
    let c = campaign(&s, "republish", 20, 20, json!([])).await;
    s.transition(c.id, CampaignAction::Start).await.expect("start");
    let t0 = chrono::SubsecRound::trunc_subsecs(Utc::now(), 3);
    let sec = chrono::Duration::seconds;
    let first = Scheduler {
        clock: ManualClock::new(t0),
        ..dialer_testkit::fixtures::scheduler(s.clone(), Broker { times_out: true, ..Broker::default() })
    };
    first.tick().await.expect("tick");
    let claimed = first.sink.take();
    assert_eq!(claimed.len(), 20);
    assert!(calls(&s, c.id).await.iter().all(|k| k.status == CallStatus::Queued), "in doubt: not given back");
    let clock = ManualClock::new(t0 + sec(29));
    // A longer dispatch_ttl than the claimer's: only the claims' own deadline stops them below.
    let settings = SchedulerSettings { dispatch_ttl: Duration::from_secs(600), ..SchedulerSettings::default() };
    // Its publishes time out (in doubt) too, so the claims stay unconfirmed.
    let other = Scheduler {
        clock: clock.clone(),
        settings: settings.clone(),
        ..dialer_testkit::fixtures::scheduler(s.clone(), Broker { times_out: true, ..Broker::default() })
    };
    let rep = other.tick().await.expect("tick");
    assert_eq!((rep.dispatched, rep.republished), (0, 0), "too recent to be stranded; the queued calls hold the cap");
    clock.set(t0 + sec(31));
    other.tick().await.expect("tick");
    assert_eq!(other.sink.take(), claimed, "the same calls, attempts, deadlines and claim time");
    clock.set(t0 + sec(40));
    other.tick().await.expect("tick");
    assert!(other.sink.take().is_empty(), "not again before republish_after");
    let some: Vec<ClaimedCall> = calls(&s, c.id)
        .await
        .iter()
        .take(5)
        .map(|k| ClaimedCall {
            id: k.id,
            phone_number: k.phone_number.clone(),
            attempt: 1,
            zone: String::new(),
            event_seq: 0,
            deadline: t0,
        })
        .collect();
    started(&s, c.id, &some).await;
    clock.set(t0 + sec(62));
    assert_eq!(other.tick().await.expect("tick").dispatched, 0);
    let again: HashSet<Uuid> = other.sink.take().iter().map(|m| m.0).collect();
    assert_eq!(again.len(), 15, "again, in doubt again: the calls reported started are not");
    assert!(some.iter().all(|k| !again.contains(&k.id)));
    // A republisher whose publish the broker acknowledges: the claims are confirmed, not again.
    let acked = Scheduler {
        clock: clock.clone(),
        settings,
        ..dialer_testkit::fixtures::scheduler(s.clone(), Broker::default())
    };
    clock.set(t0 + sec(93));
    assert_eq!(acked.tick().await.expect("tick").republished, 15);
    clock.set(t0 + sec(124));
    assert_eq!(acked.tick().await.expect("tick").republished, 0, "acknowledged: in the topic, not published again");
    other.tick().await.expect("tick");
    assert!(other.sink.take().is_empty(), "by no replica");
    // Unconfirmed, they are published again until their deadline, not after it.
    unconfirm(&s).await;
    clock.set(t0 + sec(290));
    other.tick().await.expect("tick");
    assert_eq!(other.sink.take().len(), 15, "unconfirmed, before the deadline");
    unconfirm(&s).await;
    clock.set(t0 + sec(301));
    other.tick().await.expect("tick");
    assert!(other.sink.take().is_empty(), "past their deadline (the claimer's dispatch_ttl, 300 s)");
    assert_consistent(&s, c.id).await;
}

/// Forgets every queued call's confirmation and republishing mark, as if none had been published again.
async fn unconfirm(s: &Store) {
    let sql = "UPDATE calls SET republish_at = NULL WHERE status = 'queued'";
    match s.pool() {
        dialer_store::Pool::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        dialer_store::Pool::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
    }
    .expect("unconfirmed");
}

both_stores!(
    a_claim_whose_messages_were_never_confirmed_is_published_again_as_it_was,
    a_campaign_bound_by_max_batch_is_claimed_again_at_once,
    abandoned_calls_are_reaped_only_after_their_latest_end,
    a_reaper_racing_late_outcomes_resolves_each_call_once,
    a_partly_failed_publish_gives_back_only_what_was_not_taken,
    claims_follow_the_injected_clock,
    many_small_campaigns_are_claimed_in_a_few_claims_each_to_its_budget,
);
