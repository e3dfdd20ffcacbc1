//! The Kafka clients against a real broker from the shared harness.

use std::time::{Duration, Instant};

use dialer_bus::dispatch::{Committed, DispatchSource, KafkaDispatchSource};
use dialer_bus::kafka::{Assignment, ClientSettings};
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
