//! The data plane through a real Apache Kafka broker with the Redis
//! limiter, from the shared harness: every dispatch message gets exactly one outcome event,
//! offsets are committed up to the end, a stop/restart resumes without loss, caps hold.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dialer_bus::BusSettings;
use dialer_dataplane::{
    Assignment, Assignor, BusChoice, Dataplane, DataplaneOptions, LimiterChoice, ProviderSettings, Tracker, Tuning,
};
use dialer_domain::messages::{DispatchMessage, EventKind, StatusEvent};
use dialer_testkit::fixtures::Dispatch;
use dialer_testkit::topics::{Outgoing, TopicReader, committed_offsets};
use dialer_testkit::{kafka, redis, redis_prefix, unique_name};
use uuid::Uuid;

const PARTITIONS: i32 = 4;

fn topics() -> BusSettings {
    let n = unique_name("dp");
    BusSettings {
        brokers: kafka().bootstrap(),
        dispatch_topic: format!("{n}.dispatch"),
        status_topic: format!("{n}.status"),
        group_id: format!("{n}-group"),
        dead_letter_topic: format!("{n}.dead_letter"),
        ..BusSettings::default()
    }
}

fn tuning(assignment: Assignment) -> Tuning {
    let mut t = Tuning::default();
    t.shards.count = 2;
    t.shards.partitions = PARTITIONS;
    t.shards.assignment = assignment;
    t.lease.batch = 16;
    t.lease.low_water = 4;
    t.lease.idle_give_back = Duration::from_millis(500);
    t.kafka.commit_every_ms = 100;
    t.shutdown.grace_ms = 10_000;
    t
}

fn start(t: &BusSettings, tuning: Tuning, tracker: Arc<Tracker>, prefix: &str, global_cap: u32) -> Dataplane {
    Dataplane::start(DataplaneOptions {
        tuning,
        bus: BusChoice::Kafka(t.clone()),
        limiter: LimiterChoice::Redis { url: redis().url(), prefix: prefix.into() },
        global_cap,
        per_campaign_ceiling: 1000,
        provider: ProviderSettings {
            min_call: Duration::from_millis(2),
            max_call: Duration::from_millis(10),
            max_ring: Duration::ZERO,
            ..ProviderSettings::default()
        },
        tracker,
        instance: unique_name("dp"),
        left_up: 0,
    })
    .expect("data plane starts")
}

fn msg(call: u128, campaign: Uuid, cap: u32) -> DispatchMessage {
    Dispatch::call(call).campaign(campaign).cap(cap).build()
}

async fn produce(t: &BusSettings, msgs: &[DispatchMessage]) {
    let records: Vec<Outgoing> =
        msgs.iter().enumerate().map(|(i, m)| Outgoing::to_partition((i as i32) % PARTITIONS, m.encode())).collect();
    dialer_testkit::topics::produce(&t.brokers, &t.dispatch_topic, &records);
}

fn status_reader(t: &BusSettings) -> TopicReader {
    TopicReader::subscribe(&t.brokers, &t.status_topic)
}

/// Reads status events until `outcomes` outcome events arrived, or `timeout`.
async fn read_outcomes(c: &TopicReader, outcomes: usize, timeout: Duration, all: &mut Vec<StatusEvent>) {
    let deadline = Instant::now() + timeout;
    let mut n = all.iter().filter(|e| e.kind.is_outcome()).count();
    while n < outcomes && Instant::now() < deadline {
        if let Some(Ok(m)) = c.next(Duration::from_millis(500)).await {
            let e = StatusEvent::decode(&m.payload).expect("status events decode");
            n += usize::from(e.kind.is_outcome());
            all.push(e);
        }
    }
}

/// Reads status events until `n` distinct calls have an outcome (a call may have two across a
/// rebalance: its own and the new owner's `unknown_outcome`), or `timeout`; the calls that ended.
async fn read_until_every_call_ended(
    c: &TopicReader,
    n: usize,
    timeout: Duration,
    events: &mut Vec<StatusEvent>,
) -> std::collections::HashSet<Uuid> {
    let deadline = Instant::now() + timeout;
    let mut ended = std::collections::HashSet::new();
    while ended.len() < n && Instant::now() < deadline {
        let seen = events.iter().filter(|e| e.kind.is_outcome()).count();
        read_outcomes(c, seen + 1, Duration::from_secs(2), events).await;
        ended.extend(events.iter().filter(|e| e.kind.is_outcome()).map(|e| e.call_id));
    }
    ended
}

fn committed_total(t: &BusSettings) -> i64 {
    committed_offsets(&t.brokers, &t.group_id, &t.dispatch_topic, PARTITIONS).iter().sum()
}

async fn ensure(t: &BusSettings) {
    dialer_bus::kafka::ensure_topics(&t.brokers, &[(&t.dispatch_topic, PARTITIONS), (&t.status_topic, PARTITIONS)])
        .await
        .expect("topics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_one_outcome_offsets_committed_and_restart_resumes() {
    let t = topics();
    ensure(&t).await;
    let campaigns: Vec<Uuid> = (1..=5).map(Uuid::from_u128).collect();
    let first: Vec<DispatchMessage> = (0..1500u128).map(|i| msg(i, campaigns[(i % 5) as usize], 50)).collect();
    produce(&t, &first).await;
    let tracker = Tracker::new(10_000);
    let prefix = redis_prefix();
    let dp = start(&t, tuning(Assignment::Static), tracker.clone(), &prefix, 10_000);
    let reader = status_reader(&t);
    let mut events = Vec::new();
    read_outcomes(&reader, 1500, Duration::from_secs(90), &mut events).await;
    dp.shutdown();
    let reports = tokio::task::spawn_blocking(move || dp.join()).await.expect("join").expect("reports");
    assert_eq!(reports.iter().map(|r| r.dialed).sum::<u64>(), 1500);
    assert_eq!(committed_total(&t), 1500, "offsets committed up to the end");

    // A second batch; stop the data plane while it works through it, start a new one.
    let second: Vec<DispatchMessage> = (1500..3000u128).map(|i| msg(i, campaigns[(i % 5) as usize], 50)).collect();
    produce(&t, &second).await;
    let dp = start(&t, tuning(Assignment::Static), tracker.clone(), &prefix, 10_000);
    read_outcomes(&reader, 1500 + 300, Duration::from_secs(60), &mut events).await;
    dp.shutdown();
    tokio::task::spawn_blocking(move || dp.join()).await.expect("join").expect("reports");
    let dp = start(&t, tuning(Assignment::Static), tracker.clone(), &prefix, 10_000);
    read_outcomes(&reader, 3000, Duration::from_secs(90), &mut events).await;
    dp.shutdown();
    tokio::task::spawn_blocking(move || dp.join()).await.expect("join").expect("reports");

    let mut outcomes: HashMap<Uuid, usize> = HashMap::new();
    let mut started: HashMap<Uuid, usize> = HashMap::new();
    for e in &events {
        let m = if e.kind == EventKind::Started { &mut started } else { &mut outcomes };
        *m.entry(e.call_id).or_default() += 1;
    }
    assert_eq!(outcomes.len(), 3000, "no message lost across the restart");
    let dup: Vec<_> = outcomes.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "a graceful stop finishes what it started: {} calls had two outcomes", dup.len());
    assert!(started.values().all(|n| *n == 1), "no call dialed twice");
    assert_eq!(committed_total(&t), 3000);
    assert_eq!(tracker.violations(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_hold_through_kafka_and_redis() {
    let t = topics();
    ensure(&t).await;
    let capped = Uuid::from_u128(77);
    let other = Uuid::from_u128(78);
    let msgs: Vec<DispatchMessage> = (0..600u128)
        .map(|i| if i % 3 == 0 { msg(10_000 + i, capped, 3) } else { msg(10_000 + i, other, 20) })
        .collect();
    produce(&t, &msgs).await;
    let tracker = Tracker::new(15);
    tracker.set_campaign_cap(capped, 3);
    tracker.set_campaign_cap(other, 20);
    let dp = start(&t, tuning(Assignment::Group), tracker.clone(), &redis_prefix(), 15);
    let reader = status_reader(&t);
    let mut events = Vec::new();
    read_outcomes(&reader, 600, Duration::from_secs(120), &mut events).await;
    dp.shutdown();
    tokio::task::spawn_blocking(move || dp.join()).await.expect("join").expect("reports");
    assert_eq!(events.iter().filter(|e| e.kind.is_outcome()).count(), 600);
    assert!(tracker.campaign_max(capped) <= 3, "capped campaign reached {}", tracker.campaign_max(capped));
    assert!(tracker.global().max() <= 15, "global cap: {}", tracker.global().max());
    assert_eq!(tracker.violations(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_go_to_the_dead_letter_topic_and_the_shard_goes_on() {
    let t = topics();
    dialer_bus::kafka::ensure_topics(
        &t.brokers,
        &[(&t.dispatch_topic, PARTITIONS), (&t.status_topic, PARTITIONS), (&t.dead_letter_topic, 1)],
    )
    .await
    .expect("topics");
    // Good, garbage, good, a future schema version, good: all on partition 0, in that order.
    let campaign = Uuid::from_u128(900);
    let mut future = serde_json::to_value(msg(902, campaign, 5)).expect("json");
    future["v"] = 99.into();
    let payloads: Vec<Vec<u8>> = vec![
        msg(901, campaign, 5).encode(),
        b"\x00not json at all".to_vec(),
        msg(903, campaign, 5).encode(),
        future.to_string().into_bytes(),
        msg(905, campaign, 5).encode(),
    ];
    let records: Vec<Outgoing> = payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| Outgoing {
            partition: Some(0),
            key: Some(format!("k{i}").into_bytes()),
            payload: payload.clone(),
        })
        .collect();
    dialer_testkit::topics::produce(&t.brokers, &t.dispatch_topic, &records);

    let tracker = Tracker::new(100);
    let dp = start(&t, tuning(Assignment::Static), tracker.clone(), &redis_prefix(), 100);
    let health = dp.health();
    let reader = status_reader(&t);
    let mut events = Vec::new();
    read_outcomes(&reader, 3, Duration::from_secs(60), &mut events).await;
    assert!(health.ready(dialer_bus::time::now_ms()), "shards ready: {:?}", health.status(0));

    // The dead-letter topic holds both bad messages, bytes unchanged, with reason and origin.
    let dlq = TopicReader::subscribe(&t.brokers, &t.dead_letter_topic);
    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while dead.len() < 2 && Instant::now() < deadline {
        if let Some(Ok(m)) = dlq.next(Duration::from_millis(500)).await {
            dead.push((m.key.clone(), Some(m.payload.clone()), m.header("dialer-reason"), m.header("dialer-source")));
        }
    }
    dp.shutdown();
    let reports = tokio::task::spawn_blocking(move || dp.join()).await.expect("join").expect("reports");
    assert_eq!(dead.len(), 2, "both malformed messages dead-lettered: {dead:?}");
    assert_eq!(dead[0].0.as_deref(), Some(&b"k1"[..]));
    assert_eq!(dead[0].1.as_deref(), Some(&payloads[1][..]), "bytes unchanged");
    assert!(!dead[0].2.is_empty(), "a reason is given");
    assert_eq!(dead[0].3, format!("{}/0/1", t.dispatch_topic));
    assert!(dead[1].2.contains("99"), "the reason names the unknown version: {}", dead[1].2);
    assert_eq!(reports.iter().map(|r| r.malformed).sum::<u64>(), 2);
    assert_eq!(reports.iter().map(|r| r.dialed).sum::<u64>(), 3, "the good messages around them were dialed");
    assert_eq!(committed_total(&t), 5, "offsets pass the dead-lettered messages");
    assert!(!health.ready(dialer_bus::time::now_ms()), "stopped shards are not ready");
}

/// Consumer-group assignment: a second data plane joins while the first has hundreds of
/// messages waiting (3,000 calls of 60–140 ms at a cap of 20: ~15 s of work, time for the
/// group to rebalance even on a loaded machine), and the group moves partitions to it. The
/// first stops dialing what it had waiting of the partitions it lost (their new owner reads
/// them again), keeps finishing the calls it had started, and the journal (one directory, as
/// for the processes of one host) shows the new owner what was started: no attempt is dialed
/// twice, every call gets an outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eager_rebalance_dials_no_attempt_twice() {
    a_rebalance_dials_no_attempt_twice(Assignor::Eager).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cooperative_sticky_rebalance_dials_no_attempt_twice() {
    a_rebalance_dials_no_attempt_twice(Assignor::CooperativeSticky).await;
}

async fn a_rebalance_dials_no_attempt_twice(assignor: Assignor) {
    let t = topics();
    ensure(&t).await;
    let campaign = Uuid::from_u128(6060);
    let n = 3000usize;
    let msgs: Vec<DispatchMessage> = (0..n as u128).map(|i| msg(60_000 + i, campaign, 20)).collect();
    produce(&t, &msgs).await;
    let dir = tempfile::tempdir().expect("tmp");
    let mut tu = tuning(Assignment::Group);
    tu.shards.count = 1;
    tu.kafka.assignor = assignor;
    tu.journal.dir = dir.path().display().to_string();
    let tracker = Tracker::new(1000);
    tracker.set_campaign_cap(campaign, 20);
    let prefix = redis_prefix();
    let slow = |tracker: Arc<Tracker>| {
        Dataplane::start(DataplaneOptions {
            tuning: tu.clone(),
            bus: BusChoice::Kafka(t.clone()),
            limiter: LimiterChoice::Redis { url: redis().url(), prefix: prefix.clone() },
            global_cap: 1000,
            per_campaign_ceiling: 1000,
            provider: ProviderSettings {
                min_call: Duration::from_millis(60),
                max_call: Duration::from_millis(140),
                max_ring: Duration::ZERO,
                ..ProviderSettings::default()
            },
            tracker,
            instance: unique_name("dp"),
            left_up: 0,
        })
        .expect("data plane starts")
    };
    let a = slow(tracker.clone());
    let reader = status_reader(&t);
    let mut events = Vec::new();
    read_outcomes(&reader, 100, Duration::from_secs(60), &mut events).await;
    let b = slow(tracker.clone());
    // Until every call has an outcome (a call that was in progress on a moved partition may
    // get two: its own and the new owner's `unknown_outcome`).
    let ended = read_until_every_call_ended(&reader, n, Duration::from_secs(120), &mut events).await;
    a.shutdown();
    b.shutdown();
    let ra = tokio::task::spawn_blocking(move || a.join()).await.expect("join").expect("reports");
    let rb = tokio::task::spawn_blocking(move || b.join()).await.expect("join").expect("reports");
    // Events produced while the readers stopped are read too.
    read_outcomes(&reader, usize::MAX, Duration::from_secs(3), &mut events).await;

    let (da, db) = (ra.iter().map(|r| r.dialed).sum::<u64>(), rb.iter().map(|r| r.dialed).sum::<u64>());
    assert!(da > 0 && db > 0, "the group moved partitions to the second data plane: {da} / {db} dialed");
    let mut started: HashMap<Uuid, usize> = HashMap::new();
    for e in events.iter().filter(|e| e.kind == EventKind::Started) {
        *started.entry(e.call_id).or_default() += 1;
    }
    let twice: Vec<_> = started.iter().filter(|(_, k)| **k > 1).collect();
    assert!(twice.is_empty(), "{} attempts dialed twice across the rebalance: {twice:?}", twice.len());
    assert_eq!(tracker.calls() as usize, started.len(), "the provider saw each started attempt once");
    assert_eq!(ended.len(), n, "every call got an outcome");
    assert_eq!(tracker.violations(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_started_before_a_crash_is_not_dialed_again() {
    let t = topics();
    ensure(&t).await;
    let campaign = Uuid::from_u128(4242);
    let msgs: Vec<DispatchMessage> = (0..40u128).map(|i| msg(50_000 + i, campaign, 10)).collect();
    produce(&t, &msgs).await;
    // The journal of a data plane that crashed after durably starting calls 50_000..50_010
    // (attempt 1) and before their outcomes were acknowledged: their messages are redelivered.
    let dir = tempfile::tempdir().expect("tmp");
    {
        let mut j = dialer_dataplane::journal::Journal::open(dir.path(), true).expect("journal");
        for (i, m) in msgs.iter().enumerate().take(10) {
            j.started((i as i32) % PARTITIONS, (m.call_id, 1), dialer_dataplane::journal::Msg::new(0, 0))
                .expect("started");
        }
        // Attempt 2 of another call: a different attempt, which must be dialed.
        j.started(10 % PARTITIONS, (msgs[10].call_id, 2), dialer_dataplane::journal::Msg::new(0, 0)).expect("started");
        j.commit().expect("commit");
    }
    let mut tuning = tuning(Assignment::Static);
    tuning.journal.dir = dir.path().display().to_string();
    let tracker = Tracker::new(1000);
    let dp = start(&t, tuning.clone(), tracker.clone(), &redis_prefix(), 1000);
    let reader = status_reader(&t);
    let mut events = Vec::new();
    read_outcomes(&reader, 40, Duration::from_secs(60), &mut events).await;
    dp.shutdown();
    let reports = tokio::task::spawn_blocking(move || dp.join()).await.expect("join").expect("reports");

    assert_eq!(tracker.calls(), 30, "the 10 journalled attempts are not dialed again");
    assert_eq!(reports.iter().map(|r| r.unknown_outcome).sum::<u64>(), 10);
    for m in &msgs[..10] {
        let mine: Vec<_> = events.iter().filter(|e| e.call_id == m.call_id).collect();
        assert_eq!(mine.len(), 1, "one event, no `started`: {mine:?}");
        assert_eq!(mine[0].kind, EventKind::Failed);
        assert_eq!(mine[0].reason.as_deref(), Some("unknown_outcome"));
        assert_eq!(mine[0].retryable, Some(true), "the retry policy decides");
    }
    for m in &msgs[10..] {
        assert!(events.iter().any(|e| e.call_id == m.call_id && e.kind == EventKind::Started), "{} dialed", m.call_id);
    }
    // Every attempt is resolved now: a new data plane finds nothing open.
    let mut j = dialer_dataplane::journal::Journal::open(dir.path(), true).expect("journal");
    for (i, m) in msgs.iter().enumerate() {
        assert_ne!(
            j.seen((i as i32) % PARTITIONS, (m.call_id, 1)).expect("read"),
            dialer_dataplane::journal::Seen::Unresolved,
            "call {i} resolved"
        );
    }
    assert_eq!(committed_total(&t), 40);
}

/// The broker is SIGKILLed while calls are in progress and comes back seconds later: outcome
/// events the broker did not acknowledge are produced again (with back-off, a new producer when
/// the old one is stuck), so every call gets its outcome, none is dialled twice, and the
/// offsets end committed. A broker of the test's own (it is killed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_survive_a_broker_killed_and_restarted() {
    let broker = dialer_testkit::Kafka::start().expect("a Kafka of its own");
    let mut t = topics();
    t.brokers = broker.bootstrap();
    ensure(&t).await;
    let campaign = Uuid::from_u128(7070);
    let n = 400usize;
    let msgs: Vec<DispatchMessage> = (0..n as u128).map(|i| msg(70_000 + i, campaign, 40)).collect();
    produce(&t, &msgs).await;
    let dir = tempfile::tempdir().expect("tmp");
    let mut tu = tuning(Assignment::Static);
    tu.journal.dir = dir.path().display().to_string();
    tu.kafka.message_timeout_ms = 2_000;
    let tracker = Tracker::new(1000);
    let dp = Dataplane::start(DataplaneOptions {
        tuning: tu,
        bus: BusChoice::Kafka(t.clone()),
        limiter: LimiterChoice::Redis { url: redis().url(), prefix: redis_prefix() },
        global_cap: 1000,
        per_campaign_ceiling: 1000,
        provider: ProviderSettings {
            min_call: Duration::from_millis(100),
            max_call: Duration::from_millis(400),
            max_ring: Duration::ZERO,
            ..ProviderSettings::default()
        },
        tracker: tracker.clone(),
        instance: unique_name("dp"),
        left_up: 0,
    })
    .expect("data plane starts");
    // Let calls get going, then take the broker away while some are in progress.
    let t0 = Instant::now();
    while tracker.calls() < 100 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no dials");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    broker.restart().expect("the broker comes back");
    let reader = status_reader(&t);
    let mut events: Vec<StatusEvent> = Vec::new();
    let ended = read_until_every_call_ended(&reader, n, Duration::from_secs(120), &mut events).await;
    dp.shutdown();
    let reports = tokio::task::spawn_blocking(move || dp.join()).await.expect("join").expect("reports");
    assert_eq!(ended.len(), n, "every call got its outcome through the broker's absence");
    let reproduced: u64 = reports.iter().map(|r| r.reproduced).sum();
    assert!(reproduced > 0, "the broker's absence made the shards produce events again: {reports:?}");
    let mut started: HashMap<Uuid, usize> = HashMap::new();
    for e in events.iter().filter(|e| e.kind == EventKind::Started) {
        *started.entry(e.call_id).or_default() += 1;
    }
    assert_eq!(tracker.calls() as usize, n, "each message dialled once: {reports:?}");
    assert!(started.values().all(|k| *k == 1), "a `started` event per attempt");
    assert_eq!(tracker.violations(), 0);
}
