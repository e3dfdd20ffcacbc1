//! Campaigns dial end to end in one process (store + scheduler + in-process bus + data plane +
//! recorder), on both stores: everything reaches a terminal state, stats equal the rows, no
//! attempt is dialed twice, business hours gate dispatch, pause/resume/complete behave, two
//! scheduler replicas never queue a call twice, and redelivered events change nothing.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dialer_api::views::Campaign;
use dialer_bus::MemoryBus;
use dialer_control_plane::Store;
use dialer_control_plane::recorder::Recorder;
use dialer_control_plane::scheduler::{Clock, ManualClock, Scheduler, SchedulerSettings, SystemClock};
use dialer_dataplane::{BusChoice, Dataplane, DataplaneOptions, LimiterChoice, ProviderSettings, Tracker, Tuning};
use dialer_domain::campaign::CampaignAction;
use dialer_domain::messages::EventKind;
use dialer_limiter::LocalBackend;
use serde_json::json;
use uuid::Uuid;

use dialer_testkit::both_stores;
use dialer_testkit::fixtures::{Backend, campaign, event, store};

struct Pipeline {
    store: Store,
    tracker: Arc<Tracker>,
    /// Holds the provider's ledger (every call placed).
    ledger: tempfile::TempDir,
    dp: Option<Dataplane>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn mock(ms: u64) -> ProviderSettings {
    ProviderSettings {
        min_call: Duration::from_millis(ms),
        max_call: Duration::from_millis(ms * 3),
        max_ring: Duration::ZERO,
        ..ProviderSettings::default()
    }
}

fn start(store: &Store, clock: Arc<dyn Clock>, call_ms: u64) -> Pipeline {
    let mut t = Tuning::default();
    t.shards.count = 2;
    t.lease.idle_give_back = Duration::from_millis(300);
    let ends = MemoryBus::open(2, t.shards.partitions, 10_000, 10_000);
    let bus = ends.dispatch.0.clone();
    let ledger = tempfile::tempdir().expect("ledger dir");
    let tracker = ledger_tracker(10_000, ledger.path());
    let dp = Dataplane::start(DataplaneOptions {
        tuning: t,
        bus: BusChoice::Memory { sources: ends.shard_sources, status: ends.status_sink },
        limiter: LimiterChoice::Local(Arc::new(LocalBackend::default())),
        global_cap: 10_000,
        per_campaign_ceiling: 100,
        provider: mock(call_ms),
        tracker: tracker.clone(),
        instance: "pipeline-test".into(),
        left_up: 0,
    })
    .expect("data plane");
    let (stop, rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let sched = Scheduler {
        clock,
        settings: SchedulerSettings { interval: Duration::from_millis(50), ..Default::default() },
        ..dialer_testkit::fixtures::scheduler(store.clone(), dialer_bus::dispatch::MemoryDispatchSink(bus))
    };
    let rec = Recorder {
        store: store.clone(),
        source: dialer_bus::status::MemoryStatusSource(ends.status_source.0),
        batch_max: 500,
        linger: std::time::Duration::from_millis(20),
        seed: 7,
        timeline: None,
    };
    let tasks = vec![tokio::spawn(sched.run(wait(rx.clone()))), tokio::spawn(rec.run(wait(rx)))];
    Pipeline { store: store.clone(), tracker, ledger, dp: Some(dp), stop, tasks }
}

impl Pipeline {
    async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(dp) = self.dp.take() {
            dp.shutdown();
            tokio::task::spawn_blocking(move || dp.join()).await.expect("join").expect("shards");
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }

    async fn wait_status(&self, id: Uuid, status: &str, timeout: Duration) -> Campaign {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.store.get_campaign(id).await.expect("campaign");
            if c.status.as_str() == status {
                return c;
            }
            let s = self.store.stats(id).await.expect("stats");
            assert!(Instant::now() < deadline, "campaign {id} still {} after {timeout:?}: {s:?}", c.status);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn assert_consistent(s: &Store, id: Uuid) -> dialer_api::views::CampaignStats {
    let stats = s.stats(id).await.expect("stats");
    assert_eq!(stats, s.recount_stats(id).await.expect("recount"), "stats differ from the call rows");
    stats
}

async fn campaigns_run_to_completion(b: Backend) {
    let (s, _d) = store(b).await;
    let p = start(&s, Arc::new(SystemClock), 5);
    let mut ids = vec![];
    for (i, n) in [150usize, 100, 50].into_iter().enumerate() {
        let c = campaign(&s, &format!("run{i}"), n, 10 + 10 * i as u32, json!([])).await;
        s.transition(c.id, CampaignAction::Start).await.expect("start");
        ids.push((c.id, n as i64));
    }
    for (id, n) in &ids {
        p.wait_status(*id, "completed", Duration::from_secs(90)).await;
        let st = assert_consistent(&s, *id).await;
        assert_eq!(st.total_calls, *n);
        assert_eq!(st.completed_calls + st.failed_calls, *n, "every target reached a terminal state");
        assert!(st.failed_calls > 0 && st.retries_attempted > 0, "the mock's failures were retried: {st:?}");
        assert!(st.attempts_total >= *n);
    }
    let campaigns: Vec<Uuid> = ids.iter().map(|(id, _)| *id).collect();
    dialer_testkit::fixtures::assert_each_attempt_dialled_once(&s, &campaigns, p.ledger.path()).await;
    assert_eq!(p.tracker.violations(), 0);
    // The timeline shows the attempts.
    let calls =
        s.list_calls(ids[0].0, &dialer_store::CallQuery { limit: 1000, ..Default::default() }).await.expect("calls");
    let retried = calls.iter().find(|c| c.attempt_count > 1).expect("a retried call");
    let detail = s.get_call(retried.id).await.expect("call");
    assert_eq!(detail.attempts.len() as u32, retried.attempt_count);
    assert!(detail.attempts.iter().all(|a| a.started_at.is_some() && a.ended_at.is_some()));
    p.stop().await;
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("instant").with_timezone(&Utc)
}

async fn business_hours_gate_dispatch(b: Backend) {
    let (s, _d) = store(b).await;
    // Monday 09:00–18:00 New York. 2026-11-23 is a Monday; 13:00Z is 08:00 local.
    let c = campaign(&s, "hours", 20, 5, json!([{"day_of_week": 1, "start": "09:00", "end": "18:00"}])).await;
    s.transition(c.id, CampaignAction::Start).await.expect("start");
    let mut ends = MemoryBus::open(1, 1, 1000, 10);
    let bus = ends.dispatch.0.clone();
    let clock = ManualClock::new(at("2026-11-23T13:00:00Z"));
    let sched = Scheduler {
        clock: clock.clone(),
        ..dialer_testkit::fixtures::scheduler(s.clone(), dialer_bus::dispatch::MemoryDispatchSink(bus))
    };
    let r = sched.tick().await.expect("tick");
    assert_eq!((r.campaigns_closed, r.dispatched), (1, 0), "closed window dials nothing");
    clock.set(at("2026-11-23T14:00:00Z"));
    let r = sched.tick().await.expect("tick");
    assert_eq!(r.campaigns_open, 1);
    assert_eq!(r.dispatched, 10, "opening the window starts dispatch, at most 2 × cap");
    let mut got = vec![];
    ends.shard_sources[0].0.recv_many(&mut got, 100).await;
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|d| d.msg.as_ref().is_ok_and(|m| m.campaign_cap == 5 && m.attempt == 1)));
    let r = sched.tick().await.expect("tick");
    assert_eq!(r.dispatched, 0, "never more than 2 × cap queued");
    let st = assert_consistent(&s, c.id).await;
    assert_eq!((st.queued_calls, st.pending_calls, st.attempts_total), (10, 10, 10));
    // Saturday: closed again.
    clock.set(at("2026-11-28T15:00:00Z"));
    assert_eq!(sched.tick().await.expect("tick").campaigns_closed, 1);
}

async fn pause_resume_complete(b: Backend) {
    let (s, _d) = store(b).await;
    let p = start(&s, Arc::new(SystemClock), 100);
    let c = campaign(&s, "pause", 60, 5, json!([])).await;
    s.transition(c.id, CampaignAction::Start).await.expect("start");
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.transition(c.id, CampaignAction::Pause).await.expect("pause");
    tokio::time::sleep(Duration::from_millis(150)).await; // one tick for the scheduler to notice
    let frozen = s.stats(c.id).await.expect("stats").attempts_total;
    assert!(frozen > 0, "dialing had begun");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = assert_consistent(&s, c.id).await;
    assert_eq!(later.attempts_total, frozen, "no new dispatch while paused");
    assert_eq!((later.queued_calls, later.in_progress_calls), (0, 0), "calls already dialing finished");
    s.transition(c.id, CampaignAction::Start).await.expect("resume");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(s.stats(c.id).await.expect("stats").attempts_total > frozen, "resume continues");
    s.transition(c.id, CampaignAction::Complete).await.expect("complete");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let done = assert_consistent(&s, c.id).await;
    assert_eq!(done.pending_calls, 0, "complete stops everything: nothing left waiting");
    assert_eq!((done.queued_calls, done.in_progress_calls), (0, 0));
    assert_eq!(done.completed_calls + done.failed_calls, 60);
    p.stop().await;
}

async fn two_scheduler_replicas_never_queue_a_call_twice(b: Backend) {
    let (s, _d) = store(b).await;
    let c = campaign(&s, "replicas", 3000, 100, json!([])).await;
    s.transition(c.id, CampaignAction::Start).await.expect("start");
    let mut ends = MemoryBus::open(1, 1, 100_000, 10);
    let bus = ends.dispatch.0.clone();
    let mk = || Scheduler {
        settings: SchedulerSettings { inflight_factor: 1000, max_batch: 97, ..Default::default() },
        ..dialer_testkit::fixtures::scheduler(s.clone(), dialer_bus::dispatch::MemoryDispatchSink(bus.clone()))
    };
    let (a, bb) = (mk(), mk());
    let ta = tokio::spawn(async move {
        for _ in 0..40 {
            a.tick().await.expect("tick");
        }
    });
    let tb = tokio::spawn(async move {
        for _ in 0..40 {
            bb.tick().await.expect("tick");
        }
    });
    ta.await.expect("a");
    tb.await.expect("b");
    let mut got = vec![];
    while ends.shard_sources[0].0.recv_many(&mut got, 10_000).await > 0 && got.len() < 3000 {}
    let ids: HashSet<Uuid> = got.iter().map(|d| d.msg.as_ref().expect("ok").call_id).collect();
    assert_eq!(got.len(), 3000, "every call dispatched");
    assert_eq!(ids.len(), 3000, "no call queued twice");
    let st = assert_consistent(&s, c.id).await;
    assert_eq!((st.queued_calls, st.pending_calls), (3000, 0));
}

/// The status event a data plane would send for a claimed call (failures retryable, "busy").
async fn redelivered_events_change_nothing(b: Backend) {
    let (s, _d) = store(b).await;
    let c = campaign(&s, "idem", 5, 5, json!([])).await;
    s.transition(c.id, CampaignAction::Start).await.expect("start");
    let claimed = s.claim_due(c.id, 5, Utc::now()).await.expect("claim");
    let ev = |k: &dialer_store::ClaimedCall, kind: EventKind| event(c.id, k, kind);
    let mut events = vec![];
    for (i, k) in claimed.iter().enumerate() {
        events.push(ev(k, EventKind::Started));
        events.push(ev(k, if i % 2 == 0 { EventKind::Completed } else { EventKind::Failed }));
    }
    let mut u = || 0.5;
    let first = s.record_events(&events, &mut u, None).await.expect("record");
    assert_eq!(first.applied, 10);
    let after_first = assert_consistent(&s, c.id).await;
    let again = s.record_events(&events, &mut u, None).await.expect("record again");
    assert_eq!((again.applied, again.ignored), (0, 10), "a redelivered batch changes nothing");
    assert_eq!(assert_consistent(&s, c.id).await, after_first);
    assert_eq!((after_first.completed_calls, after_first.pending_calls), (3, 2), "failures wait for their retry");
    let failed = claimed[1].id;
    let detail = s.get_call(failed).await.expect("call");
    assert_eq!(detail.attempts.len(), 1);
    assert_eq!(detail.attempts[0].outcome, "failed");
    assert!(detail.call.next_attempt_at.is_some() && detail.call.last_error.as_deref() == Some("busy"));
}

/// Completing a campaign while its outcomes are recorded, new calls are created, numbers are
/// re-queued and calls are claimed leaves nothing waiting: each writer either sees the campaign completed or commits
/// before the completion, which then cancels what it left pending.
async fn completing_races_leave_nothing_waiting(b: Backend) {
    let (s, _d) = store(b).await;
    let ev = event;
    for round in 0..24u64 {
        let c = campaign(&s, &format!("race{round:02}"), 60, 100, json!([])).await;
        s.transition(c.id, CampaignAction::Start).await.expect("start");
        let claimed = s.claim_due(c.id, 40, Utc::now()).await.expect("claim");
        assert_eq!(claimed.len(), 40);
        let mut u = || 0.5;
        let started: Vec<_> = claimed.iter().map(|k| ev(c.id, k, EventKind::Started)).collect();
        s.record_events(&started, &mut u, None).await.expect("started");
        // Ten calls end, so their numbers can be called again.
        let done: Vec<_> = claimed[..10].iter().map(|k| ev(c.id, k, EventKind::Completed)).collect();
        s.record_events(&done, &mut u, None).await.expect("completed");
        let numbers: Vec<String> = {
            let ids: HashSet<Uuid> = claimed[..10].iter().map(|k| k.id).collect();
            let calls = s
                .list_calls(c.id, &dialer_store::CallQuery { limit: 1000, ..Default::default() })
                .await
                .expect("calls");
            calls.into_iter().filter(|k| ids.contains(&k.id)).map(|k| k.phone_number).collect()
        };
        let failures: Vec<_> = claimed[10..].iter().map(|k| ev(c.id, k, EventKind::Failed)).collect();
        let lag = Duration::from_micros(round * 300 % 4000);
        let (rs, cs, ks, ws, qs) = (s.clone(), s.clone(), s.clone(), s.clone(), s.clone());
        let requeue: Vec<(String, Option<serde_json::Value>)> = numbers.iter().map(|n| (n.clone(), None)).collect();
        let recorder = tokio::spawn(async move {
            let mut u = || 0.5;
            for chunk in failures.chunks(6) {
                rs.record_events(chunk, &mut u, None).await.expect("failures");
            }
        });
        // Half the numbers one by one, half in one batch (the group commit of POST /calls).
        let creator = tokio::spawn(async move {
            use dialer_store::{NewCall, StoreError};
            let (alone, batched) = numbers.split_at(numbers.len() / 2);
            let batch: Vec<NewCall> = batched
                .iter()
                .map(|n| NewCall { campaign_id: c.id, phone_number: n.clone(), metadata: None })
                .collect();
            let mut answers = Vec::new();
            for n in alone {
                answers.push(cs.create_call(c.id, n, None).await);
            }
            answers.extend(cs.create_calls(&batch).await.expect("the batch runs"));
            for a in answers {
                match a {
                    Ok(_) | Err(StoreError::Conflict(_)) => {}
                    Err(e) => panic!("create call: {e}"),
                }
            }
        });
        let requeuer = tokio::spawn(async move {
            match qs.queue_targets(c.id, &requeue).await {
                Ok(_) | Err(dialer_store::StoreError::Conflict(_)) => {}
                Err(e) => panic!("re-queue: {e}"),
            }
        });
        let claimer = tokio::spawn(async move {
            for _ in 0..5 {
                ks.claim_due(c.id, 3, Utc::now()).await.expect("claim");
            }
        });
        tokio::time::sleep(lag).await;
        ws.transition(c.id, CampaignAction::Complete).await.expect("complete");
        for t in [recorder, creator, requeuer, claimer] {
            t.await.expect("writer");
        }
        let st = assert_consistent(&s, c.id).await;
        assert_eq!(st.pending_calls, 0, "round {round}: a call waits in a completed campaign: {st:?}");
        assert!(s.claim_due(c.id, 100, Utc::now()).await.expect("claim").is_empty(), "nothing claimed once completed");
    }
}

/// A number opted out while its call waits in a shard for a token (the campaign's one token is
/// held by a long call) is never dialled: the scheduler announces the opt-out to every shard
/// within a tick, the shard reports the waiting call expired, and its next claim skips it (`dnc`).
async fn a_number_opted_out_while_its_call_is_queued_is_never_dialled(b: Backend) {
    let (s, _d) = store(b).await;
    let p = start(&s, Arc::new(SystemClock), 1500);
    let c = campaign(&s, "opt-out", 2, 1, json!([])).await;
    s.transition(c.id, CampaignAction::Start).await.expect("start");
    let q = dialer_store::CallQuery { limit: 10, ..Default::default() };
    let deadline = Instant::now() + Duration::from_secs(20);
    let waiting = loop {
        let calls = s.list_calls(c.id, &q).await.expect("calls");
        let live = calls.iter().filter(|k| k.status.as_str() == "in_progress").count();
        if live == 1
            && let Some(w) = calls.iter().find(|k| k.status.as_str() == "queued")
        {
            break w.clone();
        }
        assert!(Instant::now() < deadline, "never one call up and one queued: {calls:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let entry = dialer_domain::dnc::DncEntry {
        phone_number: waiting.phone_number.clone(),
        reason: Some("opt_out".into()),
        source: None,
        expires_at: None,
    };
    s.dnc_add(dialer_domain::dnc::GLOBAL_LIST, &[entry], true).await.expect("opt-out");
    p.wait_status(c.id, "completed", Duration::from_secs(60)).await;
    let call = s.get_call(waiting.id).await.expect("call").call;
    assert_eq!((call.status.as_str(), call.last_error.as_deref()), ("skipped", Some("dnc")));
    let ledger = std::fs::read_to_string(p.ledger.path().join("ledger")).expect("ledger");
    assert!(!ledger.contains(&waiting.id.to_string()), "the opted-out call was dialled:\n{ledger}");
    let st = assert_consistent(&s, c.id).await;
    assert_eq!((st.skipped_by_reason.dnc, st.completed_calls + st.failed_calls), (1, 1), "{st:?}");
    p.stop().await;
}

both_stores!(
    a_number_opted_out_while_its_call_is_queued_is_never_dialled,
    campaigns_run_to_completion,
    business_hours_gate_dispatch,
    pause_resume_complete,
    two_scheduler_replicas_never_queue_a_call_twice,
    redelivered_events_change_nothing,
    completing_races_leave_nothing_waiting,
);

/// A provider tracker that also writes its ledger (every call placed, one line each) to a file
/// in `dir`, so that the test checks dials per (call, attempt) rather than by totals.
fn ledger_tracker(global_cap: u32, dir: &std::path::Path) -> Arc<dialer_dataplane::Tracker> {
    dialer_dataplane::Tracker::with_ledger(global_cap, &dir.join("ledger")).expect("ledger")
}
