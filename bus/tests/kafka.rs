//! The Kafka clients against a real broker from the shared harness.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dialer_bus::dispatch::{Committed, DispatchSource, KafkaDispatchSource};
use dialer_bus::kafka::{Assignment, Assignor, ClientSettings, Moved};
use dialer_testkit::topics::Outgoing;

/// Every consumer is metered: `dialer_kafka_consumer_lag{topic,partition}` comes from
/// librdkafka's statistics for the partitions it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_lag_per_partition_is_exported() {
    let handle = dialer_telemetry::install(&[dialer_bus::metrics::describe]).expect("recorder installed");
    let brokers = dialer_testkit::kafka().bootstrap();
    let topic = dialer_testkit::unique_name("lag");
    dialer_bus::kafka::ensure_topics(&brokers, &[(&topic, 1)]).await.expect("topic");
    let records: Vec<Outgoing> = (0..10).map(|i| Outgoing::to_partition(0, format!("m{i}").into_bytes())).collect();
    dialer_testkit::topics::produce(&brokers, &topic, &records);
    let clients = ClientSettings::new(&brokers);
    let group = dialer_testkit::unique_name("lag");
    let mut source =
        KafkaDispatchSource::new(&clients, &topic, &group, Assignment::Static, 1, (0, 1)).expect("consumer");
    let mut got = Vec::new();
    let first = tokio::time::timeout(Duration::from_secs(30), source.recv(&mut got, 1)).await;
    assert!(matches!(first, Ok(Ok(true))), "a message: {first:?}");
    source.done(got[0].partition, got[0].offset);
    // Statistics arrive every 5 s; poll the consumer meanwhile so callbacks run.
    let needle = format!("topic=\"{topic}\"");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = source.commit();
        let _ = tokio::time::timeout(Duration::from_millis(200), source.recv(&mut Vec::new(), 1)).await;
        let text = handle.render();
        if let Some(line) = text.lines().find(|l| l.starts_with("dialer_kafka_consumer_lag{") && l.contains(&needle)) {
            assert!(line.contains("partition=\"0\""), "{line}");
            let v: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a value");
            assert!((0.0..=10.0).contains(&v), "lag within the topic's size: {line}");
            break;
        }
        assert!(Instant::now() < deadline, "no consumer lag for {topic} in:\n{text}");
    }
    assert!(matches!(source.commit(), Committed::Points(_)));
}

/// A shard's commit counts only once the broker confirms it (only then may the journal forget
/// the attempts below it): a commit that fails (a rebalance, a broker restart) is never taken
/// for done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_commits_the_broker_confirmed_count() {
    const PARTITIONS: i32 = 4;
    let brokers = dialer_testkit::kafka().bootstrap();
    let topic = dialer_testkit::unique_name("commits");
    dialer_bus::kafka::ensure_topics(&brokers, &[(&topic, PARTITIONS)]).await.expect("topic");
    let records: Vec<Outgoing> =
        (0..8).map(|i| Outgoing::to_partition(i % PARTITIONS, format!("m{i}").into_bytes())).collect();
    dialer_testkit::topics::produce(&brokers, &topic, &records);
    let clients = ClientSettings::new(&brokers);
    let group = dialer_testkit::unique_name("commits");
    let mut source =
        KafkaDispatchSource::new(&clients, &topic, &group, Assignment::Static, PARTITIONS, (0, 1)).expect("source");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 8 {
        assert!(Instant::now() < deadline, "only {} of 8 messages read", got.len());
        // A new broker answers NotCoordinator at first; the shard retries the same way.
        let _ = tokio::time::timeout(Duration::from_secs(1), source.recv(&mut got, 100)).await;
    }
    let committed = |c: Committed| match c {
        Committed::Points(mut p) => {
            p.sort_unstable();
            p
        }
        Committed::Untracked => panic!("a Kafka source tracks offsets"),
    };
    // Nothing finished: the points to commit are the first offsets; none counts before the
    // broker confirmed it.
    assert!(committed(source.commit()).is_empty(), "asked, not yet confirmed");
    for d in got.iter().filter(|d| d.partition == 0) {
        source.done(0, d.offset);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut points = committed(source.commit());
    while points.first() != Some(&(0, 2)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        points = committed(source.commit());
    }
    assert_eq!(points.first(), Some(&(0, 2)), "partition 0 confirmed past its two finished messages: {points:?}");
    assert!(points[1..].iter().all(|(_, o)| *o == 0), "the others at their first unfinished message: {points:?}");
}

/// A graceful stop's final commit is the last word: the periodic commit (on a blocking thread)
/// that was still waiting to run when the shard stopped cannot take the group's offsets back
/// behind it (they would bring finished messages again after the restart: dialled twice
/// without a journal). The runtime has one blocking thread, kept busy, so the periodic commit
/// runs after the final one, as it did on a loaded machine.
#[test]
fn a_late_periodic_commit_never_takes_the_final_commit_back() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let brokers = dialer_testkit::kafka().bootstrap();
        let topic = dialer_testkit::unique_name("final-commit");
        dialer_bus::kafka::ensure_topics(&brokers, &[(&topic, 1)]).await.expect("topic");
        let records: Vec<Outgoing> = (0..10).map(|i| Outgoing::to_partition(0, format!("m{i}").into_bytes())).collect();
        dialer_testkit::topics::produce(&brokers, &topic, &records);
        let group = dialer_testkit::unique_name("final-commit");
        let clients = ClientSettings::new(&brokers);
        let mut source =
            KafkaDispatchSource::new(&clients, &topic, &group, Assignment::Static, 1, (0, 1)).expect("source");
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < 10 {
            assert!(Instant::now() < deadline, "only {} of 10 messages read", got.len());
            let _ = tokio::time::timeout(Duration::from_secs(1), source.recv(&mut got, 100)).await;
        }
        // The group's coordinator answers: the first message's commit is confirmed.
        source.done(0, 0);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(source.commit(), Committed::Points(p) if p == [(0, 1)]) {
            assert!(Instant::now() < deadline, "the first commit was never confirmed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The blocking thread is busy: the periodic commit of offset 5 waits behind it.
        let busy = tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(1500)));
        (1..5).for_each(|o| source.done(0, o));
        let _ = source.commit();
        (5..10).for_each(|o| source.done(0, o));
        source.commit_sync();
        busy.await.expect("busy");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let committed = dialer_testkit::topics::committed_offsets(&brokers, &group, &topic, 1);
        assert_eq!(committed, [10], "the final commit stands; the late periodic one did not take it back to 5");
    });
}

/// A member of a consumer group driven the way a shard drives its source: first the
/// rebalances (a revoked partition's waiting messages are dropped, left to its next owner),
/// then what waits is finished, then a fetch waits.
struct Member {
    source: KafkaDispatchSource,
    waiting: Vec<(i32, i64)>,
    owned: BTreeSet<i32>,
    rebalances: usize,
    finished: BTreeSet<(i32, i64)>,
}

impl Member {
    fn join(brokers: &str, topic: &str, group: &str, name: &str) -> Member {
        let mut clients = ClientSettings::new(brokers);
        clients.tuning.assignor = Assignor::Eager;
        clients.tuning.session_timeout_ms = 6_000;
        let source = KafkaDispatchSource::new(&clients, topic, group, Assignment::Group, 4, (0, 1)).expect(name);
        Member { source, waiting: Vec::new(), owned: BTreeSet::new(), rebalances: 0, finished: BTreeSet::new() }
    }

    /// One round of the loop, its fetch waiting at most `wait`.
    async fn step(&mut self, finish: bool, wait: Duration) {
        for moved in self.source.take_moved() {
            self.rebalances += 1;
            match moved {
                Moved::Revoked(ps) => {
                    self.waiting.retain(|(p, _)| !ps.contains(p));
                    ps.iter().for_each(|p| _ = self.owned.remove(p));
                }
                Moved::Assigned(ps) => self.owned.extend(ps),
            }
        }
        if finish {
            for (p, o) in self.waiting.drain(..) {
                self.source.done(p, o);
                self.finished.insert((p, o));
            }
            let _ = self.source.commit();
        }
        let mut got = Vec::new();
        let _ = tokio::time::timeout(wait, self.source.recv(&mut got, 100)).await;
        self.waiting.extend(got.iter().map(|d| (d.partition, d.offset)));
    }
}

/// An eager rebalance revokes every partition and assigns them again, often to the member
/// that had them. The messages a member fetches after it (from the committed offsets) come
/// after the rebalance is taken, so none is dropped with the revoked partition's waiting
/// ones (which would leave it unread for good: the later offsets commit past it); and a
/// partition the member had paused is read again once it is assigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eager_rebalance_loses_no_message_and_leaves_no_partition_paused() {
    let brokers = dialer_testkit::kafka().bootstrap();
    let topic = dialer_testkit::unique_name("eager");
    let group = dialer_testkit::unique_name("eager");
    dialer_bus::kafka::ensure_topics(&brokers, &[(&topic, 4)]).await.expect("topic");
    let batch = |from: usize| -> Vec<Outgoing> {
        (from..from + 40).map(|i| Outgoing::to_partition((i % 4) as i32, format!("m{i}").into_bytes())).collect()
    };
    dialer_testkit::topics::produce(&brokers, &topic, &batch(0));
    let all = |offsets: std::ops::Range<i64>| -> BTreeSet<(i32, i64)> {
        (0..4).flat_map(|p| offsets.clone().map(move |o| (p, o))).collect()
    };

    // a fetches every message and finishes none of them yet.
    let mut a = Member::join(&brokers, &topic, &group, "a");
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.waiting.len() < 40 {
        assert!(Instant::now() < deadline, "a fetched {} of 40", a.waiting.len());
        a.step(false, Duration::from_millis(200)).await;
    }
    // b joins: every partition is revoked and assigned again. Each message is finished by
    // whichever member owns its partition after the rebalance.
    let mut b = Member::join(&brokers, &topic, &group, "b");
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.finished.union(&b.finished).count() < 40 || b.owned.is_empty() {
        let done: BTreeSet<_> = a.finished.union(&b.finished).copied().collect();
        let lost: Vec<_> = all(0..10).difference(&done).copied().collect();
        assert!(Instant::now() < deadline, "never finished after the rebalance: {lost:?}");
        // Both fetch at once, for long: a's rebalance (revoked, joined again, assigned) and
        // its first messages after it come within one fetch, as in a busy shard's loop.
        // a finishes nothing before its partitions are revoked: they all wait for their owner.
        let revoked = a.rebalances >= 2;
        tokio::join!(a.step(revoked, Duration::from_secs(2)), b.step(true, Duration::from_secs(2)));
    }
    assert!(a.rebalances >= 2, "a saw its partitions revoked and assigned again");

    // a pauses what it owns; b leaves; a is assigned all four again and reads every one.
    for p in a.owned.clone() {
        a.source.pause(p);
    }
    drop(b);
    dialer_testkit::topics::produce(&brokers, &topic, &batch(40));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !a.finished.is_superset(&all(10..20)) {
        let unread: Vec<_> =
            all(10..20).difference(&a.finished).map(|(p, _)| *p).collect::<BTreeSet<_>>().into_iter().collect();
        assert!(Instant::now() < deadline, "a never read partitions {unread:?} again (owns {:?})", a.owned);
        a.step(true, Duration::from_millis(200)).await;
    }
}

/// Reads status events from `sources` (a process's recorders) until `want` came or `within`
/// passed; returns their call ids.
async fn read_status(
    sources: &mut [dialer_bus::status::KafkaStatusSource],
    want: usize,
    within: Duration,
) -> BTreeSet<uuid::Uuid> {
    use dialer_bus::status::StatusSource;
    let deadline = Instant::now() + within;
    let mut got = BTreeSet::new();
    while got.len() < want && Instant::now() < deadline {
        for s in sources.iter_mut() {
            let mut out = Vec::new();
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), s.recv(&mut out, 100)).await {
                got.extend(out.iter().map(|e| e.call_id));
            }
        }
    }
    got
}

/// A status event of call `i`.
fn status(i: u128) -> Vec<u8> {
    dialer_domain::messages::StatusEvent {
        v: 1,
        call_id: uuid::Uuid::from_u128(i),
        attempt: 1,
        campaign_id: uuid::Uuid::from_u128(1),
        kind: dialer_domain::messages::EventKind::Completed,
        at_ms: 1,
        started_at_ms: Some(1),
        answered_at_ms: Some(2),
        duration_ms: Some(3),
        reason: None,
        retryable: None,
        shard: 0,
        dispatch_latency_us: None,
        sip: None,
        media: None,
    }
    .encode()
}

/// A control plane with `bus.instance_id` joins the recorders' group as static members: killed
/// (its consumers never leave the group) and started again under the same name, its recorders
/// read every partition at once; under another name, nothing until the session of the members
/// it replaces times out (10 s here). Without it, control planes killed more often than the
/// session timeout starved the recorders (the 30-minute fault run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_plane_s_recorders_take_their_partitions_back_at_once() {
    let brokers = dialer_testkit::kafka().bootstrap();
    let topic = dialer_testkit::unique_name("static");
    let dead = format!("{topic}.dead");
    dialer_bus::kafka::ensure_topics(&brokers, &[(&topic, 4), (&dead, 1)]).await.expect("topics");
    let mut clients = ClientSettings::new(&brokers);
    clients.tuning.session_timeout_ms = 10_000;
    let producer = clients.producer("test").expect("producer");
    let (same, other) = (dialer_testkit::unique_name("same"), dialer_testkit::unique_name("other"));
    let start = |group: &str, id: &str| {
        dialer_bus::status::KafkaStatusSource::group(&clients, ("rec", group, &topic), (&producer, &dead), 2, id)
            .expect("consumers")
    };
    let produce = |from: u128| {
        let records: Vec<Outgoing> =
            (from..from + 40).map(|i| Outgoing::to_partition((i % 4) as i32, status(i))).collect();
        dialer_testkit::topics::produce(&brokers, &topic, &records);
    };
    produce(0);
    for group in [&same, &other] {
        let mut first = start(group, "cp-a");
        assert_eq!(read_status(&mut first, 40, Duration::from_secs(60)).await.len(), 40, "the first members read all");
        drop(first); // static members do not leave the group: as if the process were killed
    }
    produce(100);
    let t = Instant::now();
    let mut again = start(&same, "cp-a");
    let got = read_status(&mut again, 40, Duration::from_secs(8)).await;
    assert_eq!(got.len(), 40, "the same name reads every partition at once (read {} in {:?})", got.len(), t.elapsed());
    let mut replaced = start(&other, "cp-b");
    let early = read_status(&mut replaced, 40, Duration::from_secs(4)).await;
    assert!(early.is_empty(), "another name waits for the old members' session: read {}", early.len());
}
