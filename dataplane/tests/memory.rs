//! The data plane on the in-process bus with the in-process limiter: every message gets exactly
//! one outcome, caps hold at the far end, a capped campaign does not hold up another, and a
//! graceful stop finishes what it started.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dialer_bus::MemoryBus;
use dialer_dataplane::{BusChoice, Dataplane, DataplaneOptions, LimiterChoice, ProviderSettings, Tracker, Tuning};
use dialer_domain::messages::{DispatchMessage, EventKind, StatusEvent};
use dialer_limiter::LocalBackend;
use dialer_testkit::fixtures::Dispatch;
use tokio::sync::mpsc;
use uuid::Uuid;

fn msg(call: u128, campaign: Uuid, cap: u32) -> DispatchMessage {
    Dispatch::call(call).campaign(campaign).cap(cap).number(&format!("+1555{:07}", call % 10_000_000)).build()
}

fn tuning(shards: usize) -> Tuning {
    let mut t = Tuning::default();
    t.shards.count = shards;
    t.shards.partitions = 8;
    t.lease.idle_give_back = Duration::from_millis(500);
    t.lease.batch = 16;
    t.lease.low_water = 4;
    t.shutdown.grace_ms = 5_000;
    t
}

struct Running {
    bus: Arc<MemoryBus>,
    events: mpsc::Receiver<StatusEvent>,
    dp: Dataplane,
    tracker: Arc<Tracker>,
    limiter: Arc<LocalBackend>,
}

fn start(shards: usize, global_cap: u32, mock: ProviderSettings) -> Running {
    let t = tuning(shards);
    let ends = MemoryBus::open(shards, t.shards.partitions, 10_000, 100_000);
    let bus = ends.dispatch.0.clone();
    let tracker = Tracker::new(global_cap);
    let limiter = Arc::new(LocalBackend::default());
    let dp = Dataplane::start(DataplaneOptions {
        tuning: t,
        bus: BusChoice::Memory { sources: ends.shard_sources, status: ends.status_sink },
        limiter: LimiterChoice::Local(limiter.clone()),
        global_cap,
        per_campaign_ceiling: 1_000,
        provider: mock,
        tracker: tracker.clone(),
        instance: "test".into(),
        left_up: 0,
    })
    .expect("data plane starts");
    Running { bus, events: ends.status_source.0, dp, tracker, limiter }
}

fn fast_calls(ms: u64) -> ProviderSettings {
    ProviderSettings {
        min_call: Duration::from_millis(ms),
        max_call: Duration::from_millis(ms * 2),
        max_ring: Duration::ZERO,
        ..ProviderSettings::default()
    }
}

/// Collects events until `outcomes` outcome events arrived (or the timeout).
async fn collect(events: &mut mpsc::Receiver<StatusEvent>, outcomes: usize, timeout: Duration) -> Vec<StatusEvent> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut n = 0;
    while n < outcomes {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(e)) => {
                n += usize::from(e.kind.is_outcome());
                out.push(e);
            }
            _ => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_gets_exactly_one_outcome() {
    let mut r = start(2, 10_000, fast_calls(1));
    let campaigns: Vec<Uuid> = (1..=10).map(Uuid::from_u128).collect();
    let n = 5_000u128;
    for i in 0..n {
        r.bus.publish(msg(i, campaigns[(i % 10) as usize], 100)).await.expect("publish");
    }
    let events = collect(&mut r.events, n as usize, Duration::from_secs(60)).await;
    let mut started: HashMap<Uuid, usize> = HashMap::new();
    let mut outcomes: HashMap<Uuid, usize> = HashMap::new();
    for e in &events {
        let m = if e.kind == EventKind::Started { &mut started } else { &mut outcomes };
        *m.entry(e.call_id).or_default() += 1;
        if e.kind == EventKind::Completed {
            assert!(e.answered_at_ms.is_some() && e.duration_ms.is_some());
        }
        if e.kind == EventKind::Failed {
            assert!(e.reason.is_some() && e.retryable.is_some());
        }
    }
    assert_eq!(outcomes.len(), n as usize, "every message has an outcome");
    assert!(outcomes.values().all(|c| *c == 1), "exactly one outcome per message");
    assert!(started.values().all(|c| *c == 1), "dialed once");
    assert_eq!(started.len(), n as usize);
    assert_eq!(r.tracker.calls(), n as u64);
    assert_eq!(r.tracker.violations(), 0);
    let shards_used: std::collections::HashSet<u16> = events.iter().map(|e| e.shard).collect();
    assert_eq!(shards_used.len(), 2, "both shards dialed");
    r.dp.shutdown();
    let reports = tokio::task::spawn_blocking(move || r.dp.join()).await.expect("join").expect("reports");
    assert_eq!(reports.iter().map(|s| s.dialed).sum::<u64>(), n as u64);
    assert_eq!(reports.iter().map(|s| s.unfinished).sum::<u64>(), 0);
    // Leases were given back on the way out.
    assert_eq!(r.limiter.usage(campaigns[0]).global, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_hold_and_a_capped_campaign_does_not_hold_up_another() {
    let global_cap = 40;
    let mut r = start(2, global_cap, fast_calls(20));
    let slow = Uuid::from_u128(1);
    let fast = Uuid::from_u128(2);
    r.tracker.set_campaign_cap(slow, 2);
    r.tracker.set_campaign_cap(fast, 30);
    // The slow campaign's 100 calls, capped at 2, need at least 1 s; interleaved in the same
    // partitions, the other campaign's 300 calls must not wait behind them.
    for i in 0..400u128 {
        let m = if i % 4 == 0 { msg(i, slow, 2) } else { msg(i, fast, 30) };
        r.bus.publish(m).await.expect("publish");
    }
    let t0 = Instant::now();
    let mut fast_done = 0;
    let mut slow_done = 0;
    let mut fast_finished_at = None;
    let mut slow_finished_at = None;
    while fast_done < 300 || slow_done < 100 {
        let e = tokio::time::timeout(Duration::from_secs(30), r.events.recv())
            .await
            .expect("events keep coming")
            .expect("open");
        if e.kind.is_outcome() {
            if e.campaign_id == fast {
                fast_done += 1;
                if fast_done == 300 {
                    fast_finished_at = Some(t0.elapsed());
                    assert!(
                        slow_done < 60,
                        "the fast campaign waited behind the slow one: slow had {slow_done}/100 done"
                    );
                }
            } else {
                slow_done += 1;
                if slow_done == 100 {
                    slow_finished_at = Some(t0.elapsed());
                }
            }
        }
    }
    let fast_at = fast_finished_at.expect("fast campaign finished");
    let slow_at = slow_finished_at.expect("slow campaign finished");
    assert!(fast_at < slow_at, "the slow campaign finished last: fast at {fast_at:?}, slow at {slow_at:?}");
    assert!(r.tracker.campaign_max(slow) <= 2, "slow campaign cap: {}", r.tracker.campaign_max(slow));
    assert!(r.tracker.campaign_max(fast) <= 30);
    assert!(r.tracker.global().max() <= i64::from(global_cap));
    assert_eq!(r.tracker.violations(), 0);
    assert!(r.tracker.campaign_max(fast) > 2, "the fast campaign used its room");
    r.dp.shutdown();
    tokio::task::spawn_blocking(move || r.dp.join()).await.expect("join").expect("reports");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_before_and_deadline_are_honoured() {
    let mut r = start(1, 100, fast_calls(1));
    let now = dialer_bus::time::now_ms();
    let mut later = msg(1, Uuid::from_u128(1), 10);
    later.not_before_ms = now + 400;
    let mut stale = msg(2, Uuid::from_u128(1), 10);
    stale.deadline_ms = now.saturating_sub(1);
    r.bus.publish(later).await.expect("publish");
    r.bus.publish(stale).await.expect("publish");
    let events = collect(&mut r.events, 2, Duration::from_secs(10)).await;
    let expired = events.iter().find(|e| e.call_id == Uuid::from_u128(2)).expect("event for the stale call");
    assert_eq!(expired.kind, EventKind::Expired);
    let started =
        events.iter().find(|e| e.call_id == Uuid::from_u128(1) && e.kind == EventKind::Started).expect("started");
    assert!(started.at_ms >= now + 400, "dialed before its not-before time");
    r.dp.shutdown();
    tokio::task::spawn_blocking(move || r.dp.join()).await.expect("join").expect("reports");
}
