//! The distributed mode end to end with real servers from the harness: PostgreSQL (store),
//! Apache Kafka (dispatch, status and dead-letter topics), Redis (limiter). The scheduler publishes to
//! Kafka, the data plane (2 shards) dials under Redis leases, the recorder consumes the status
//! topic; every target reaches a terminal state, stats equal the rows, each attempt is dialed
//! once, caps hold.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dialer_bus::BusSettings;
use dialer_bus::dispatch::{DispatchSink, KafkaDispatchSink};
use dialer_bus::kafka::ClientSettings;
use dialer_bus::status::KafkaStatusSource;
use dialer_control_plane::recorder::Recorder;
use dialer_control_plane::scheduler::{Scheduler, SchedulerSettings};

use dialer_api::campaigns::CreateCampaignRequest;
use dialer_dataplane::{Assignment, BusChoice, Dataplane, DataplaneOptions, LimiterChoice, ProviderSettings, Tuning};
use dialer_domain::campaign::CampaignAction;
use dialer_testkit::topics::{Outgoing, TopicReader};
use dialer_testkit::{kafka, redis, redis_prefix, unique_name};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_complete_over_kafka_redis_and_postgres() {
    let store = dialer_testkit::fixtures::open(&dialer_testkit::postgres_database()).await;
    let topics = test_topics("e2e").await;
    let dead_letter = topics.dead_letter_topic.clone();
    // An unreadable status event: the recorder must dead-letter it and go on.
    let junk = Outgoing { partition: None, key: Some(b"junk".to_vec()), payload: b"{\"v\":1,\"kind\":".to_vec() };
    dialer_testkit::topics::produce(&topics.brokers, &topics.status_topic, &[junk]);

    let mut ids = vec![];
    for (i, targets) in [120usize, 80].into_iter().enumerate() {
        let t: Vec<_> = (0..targets).map(|k| json!({"phone_number": format!("+1888{i}{k:06}")})).collect();
        let req: CreateCampaignRequest = serde_json::from_value(json!({
            "name": format!("dist-{i}"), "max_concurrent_calls": 8,
            "retry_policy": {"max_attempts": 3, "base_delay": "20ms", "max_delay": "100ms"},
            "targets": t
        }))
        .expect("request");
        let c = store.create_campaign(&req.validate(10_000).expect("valid")).await.expect("created");
        store.transition(c.id, CampaignAction::Start).await.expect("start");
        ids.push((c.id, targets as i64));
    }

    let ledger = tempfile::tempdir().expect("ledger dir");
    let tracker = ledger_tracker(12, ledger.path());
    for (id, _) in &ids {
        tracker.set_campaign_cap(*id, 8);
    }
    let dp = start_dataplane(&topics, 12, tracker.clone(), None);

    let clients = ClientSettings::new(&topics.brokers);
    let producer = clients.producer("test-control-plane").expect("producer");
    let sched = Scheduler {
        settings: SchedulerSettings { interval: Duration::from_millis(100), ..Default::default() },
        ..dialer_testkit::fixtures::scheduler(
            store.clone(),
            KafkaDispatchSink::new(producer.clone(), &topics.dispatch_topic),
        )
    };
    let rec = recorder(&store, &clients, &topics, &producer);
    let campaigns: Vec<uuid::Uuid> = ids.iter().map(|(id, _)| *id).collect();
    run_to_completion(sched, rec, dp, &store, &campaigns, Duration::from_secs(150)).await;

    for (id, targets) in &ids {
        let st = store.stats(*id).await.expect("stats");
        assert_eq!(st, store.recount_stats(*id).await.expect("recount"), "stats equal the rows");
        assert_eq!(st.completed_calls + st.failed_calls, *targets);
    }
    dialer_testkit::fixtures::assert_each_attempt_dialled_once(&store, &campaigns, ledger.path()).await;

    // The junk status event is in the dead-letter topic with its reason.
    let dlq = TopicReader::from_start(&topics.brokers, &dead_letter, 1);
    // Read the whole dead-letter topic: the junk event, and each call that failed for good.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut junk, mut finals) = (None, Vec::new());
    while Instant::now() < deadline {
        let Some(Ok(m)) = dlq.next(Duration::from_secs(3)).await else {
            if junk.is_some() {
                break;
            }
            continue;
        };
        if m.header("dialer-kind") == "malformed_status" {
            junk = Some((m.payload.clone(), m.header("dialer-reason")));
        } else {
            let body: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON");
            finals.push(body["event"]["call_id"].as_str().expect("call id").parse::<uuid::Uuid>().expect("uuid"));
        }
    }
    // Each call that failed for good has its dead letter (a batch's are produced together).
    let mut failed = HashSet::new();
    for id in &campaigns {
        let q = dialer_store::CallQuery {
            status: Some(dialer_domain::CallStatus::Failed),
            limit: 10_000,
            ..Default::default()
        };
        failed.extend(store.list_calls(*id, &q).await.expect("failed calls").into_iter().map(|c| c.id));
    }
    assert!(!failed.is_empty(), "the mock fails some calls for good, so this proves something");
    assert_eq!(finals.iter().copied().collect::<HashSet<_>>(), failed, "one dead letter per call failed for good");
    let (payload, reason) = junk.expect("the malformed status event reached the dead-letter topic");
    assert_eq!(payload, b"{\"v\":1,\"kind\":");
    assert!(!reason.is_empty(), "a reason is given");
    assert_eq!(tracker.violations(), 0, "caps held");
    assert!(tracker.global().max() <= 12);
}

/// Topics of the test's own on the harness's broker (4 dispatch and status partitions), created.
async fn test_topics(prefix: &str) -> BusSettings {
    let n = unique_name(prefix);
    let topics = BusSettings {
        brokers: kafka().bootstrap(),
        dispatch_topic: format!("{n}.dispatch"),
        status_topic: format!("{n}.status"),
        group_id: format!("{n}-dp"),
        dead_letter_topic: format!("{n}.dead_letter"),
        ..BusSettings::default()
    };
    dialer_bus::kafka::ensure_topics(
        &topics.brokers,
        &[(&topics.dispatch_topic, 4), (&topics.status_topic, 4), (&topics.dead_letter_topic, 1)],
    )
    .await
    .expect("topics");
    topics
}

/// A data plane of 2 shards (static assignment, 4 partitions) on the harness's Redis, mock calls
/// of 5–20 ms placed through `tracker`, with an attempt journal in `journal` if given.
fn start_dataplane(
    topics: &BusSettings,
    global_cap: u32,
    tracker: Arc<dialer_dataplane::Tracker>,
    journal: Option<&std::path::Path>,
) -> Dataplane {
    let mut tuning = Tuning::default();
    tuning.shards.count = 2;
    tuning.shards.partitions = 4;
    tuning.shards.assignment = Assignment::Static;
    tuning.lease.batch = 8;
    tuning.lease.low_water = 2;
    tuning.lease.idle_give_back = Duration::from_millis(300);
    tuning.kafka.commit_every_ms = 100;
    tuning.journal.dir = journal.map(|d| d.display().to_string()).unwrap_or_default();
    Dataplane::start(DataplaneOptions {
        tuning,
        bus: BusChoice::Kafka(topics.clone()),
        limiter: LimiterChoice::Redis { url: redis().url(), prefix: redis_prefix() },
        global_cap,
        per_campaign_ceiling: 100,
        provider: ProviderSettings {
            min_call: Duration::from_millis(5),
            max_call: Duration::from_millis(20),
            max_ring: Duration::ZERO,
            ..ProviderSettings::default()
        },
        tracker,
        instance: unique_name("dp"),
        left_up: 0,
    })
    .expect("data plane")
}

/// A recorder of the status topic: one consumer in the recorders' group, dead letters through
/// `producer`.
fn recorder(
    store: &dialer_store::Store,
    clients: &ClientSettings,
    topics: &BusSettings,
    producer: &dialer_bus::kafka::Producer,
) -> Recorder<KafkaStatusSource> {
    let mut sources = KafkaStatusSource::group(
        clients,
        ("test-recorder", &topics.recorder_group(), &topics.status_topic),
        (producer, &topics.dead_letter_topic),
        1,
        "",
    )
    .expect("consumer");
    Recorder {
        store: store.clone(),
        source: sources.remove(0),
        batch_max: 500,
        linger: Duration::from_millis(20),
        seed: 3,
        timeline: None,
    }
}

/// Runs the scheduler and the recorder until every campaign of `ids` completes (failing after
/// `within`), then stops them and the data plane.
async fn run_to_completion<S: DispatchSink + 'static>(
    sched: Scheduler<S>,
    rec: Recorder<KafkaStatusSource>,
    dp: Dataplane,
    store: &dialer_store::Store,
    ids: &[uuid::Uuid],
    within: Duration,
) {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let t1 = tokio::spawn(sched.run(wait(rx.clone())));
    let t2 = tokio::spawn(rec.run(wait(rx)));
    let deadline = Instant::now() + within;
    for id in ids {
        while store.get_campaign(*id).await.expect("campaign").status.as_str() != "completed" {
            assert!(Instant::now() < deadline, "not completed: {:?}", store.stats(*id).await);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let _ = stop.send(true);
    let _ = t1.await;
    let _ = t2.await;
    dp.shutdown();
    tokio::task::spawn_blocking(move || dp.join()).await.expect("join").expect("shards");
}

/// A provider tracker that also writes its ledger (every call placed, one line each) to a file
/// in `dir`, so that the test checks dials per (call, attempt) rather than by totals.
fn ledger_tracker(global_cap: u32, dir: &std::path::Path) -> Arc<dialer_dataplane::Tracker> {
    dialer_dataplane::Tracker::with_ledger(global_cap, &dir.join("ledger")).expect("ledger")
}

/// An opt-out reaches every shard over Kafka: the scheduler's broadcast writes the `suppress`
/// message to every partition of the dispatch topic (each shard reads only its own partitions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opt_out_is_broadcast_to_every_dispatch_partition() {
    let n = unique_name("optout");
    let brokers = kafka().bootstrap();
    let topic = format!("{n}.dispatch");
    dialer_bus::kafka::ensure_topics(&brokers, &[(&topic, 5)]).await.expect("topic");
    let producer = ClientSettings::new(&brokers).producer("test").expect("producer");
    let sink = KafkaDispatchSink::new(producer, &topic);
    let s = dialer_store::Suppression {
        list: dialer_domain::dnc::GLOBAL_LIST,
        phone_number: "+12125550100".into(),
        expires_at: None,
    };
    let now = chrono::Utc::now();
    let msg = dialer_control_plane::calling_rules::suppress_message(&s, now, Duration::from_secs(300));
    // As the scheduler does, again until the broker takes it: a topic just created may not be in
    // the metadata yet, and then the broadcast refuses rather than sending to no partition.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = sink.broadcast(std::slice::from_ref(&msg)).await {
        assert!(Instant::now() < deadline, "broadcast: {e}");
        eprintln!("broadcast refused ({e}); again");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let consumer = TopicReader::from_start(&brokers, &topic, 5);
    let mut partitions = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_error = None;
    while partitions.len() < 5 && Instant::now() < deadline {
        let m = match consumer.next(Duration::from_secs(5)).await {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                last_error = Some(e);
                continue;
            }
            None => continue,
        };
        let got = dialer_domain::messages::DispatchMessage::decode(&m.payload).expect("readable");
        assert_eq!(got.kind, dialer_domain::messages::DispatchKind::Suppress);
        assert_eq!((got.phone_number.as_str(), got.campaign_id), ("+12125550100", uuid::Uuid::nil()));
        assert_eq!(got.deadline_ms, (now + chrono::Duration::seconds(300)).timestamp_millis() as u64);
        assert!(partitions.insert(m.partition), "partition {} got it twice", m.partition);
    }
    assert_eq!(
        partitions,
        (0..5).collect::<HashSet<i32>>(),
        "every partition has the opt-out; last read error: {last_error:?}"
    );
}

/// A sink that hands the first `deliver` messages of each batch to Kafka and then answers "in
/// doubt" for the whole batch: a control plane that died between its claim's commit and the
/// broker's acknowledgement, with part of its messages out.
#[derive(Debug)]
struct DiesMidPublish {
    kafka: KafkaDispatchSink,
    deliver: usize,
}

impl DispatchSink for DiesMidPublish {
    const MAY_STRAND_CLAIMS: bool = true;

    async fn publish_all(
        &self,
        mut msgs: Vec<dialer_domain::messages::DispatchMessage>,
    ) -> Result<(), dialer_bus::dispatch::NotPublished> {
        let n = msgs.len();
        msgs.truncate(self.deliver);
        self.kafka.publish_all(msgs).await.expect("the first messages reach the broker");
        let reason = dialer_bus::dispatch::PublishError::BusClosed(dialer_bus::BusClosed);
        Err(dialer_bus::dispatch::NotPublished { unacked: vec![], in_doubt: n, reason })
    }

    async fn broadcast(
        &self,
        msgs: &[dialer_domain::messages::DispatchMessage],
    ) -> Result<(), dialer_bus::dispatch::PublishError> {
        self.kafka.broadcast(msgs).await
    }
}

/// A control plane dies mid-publish: its claim committed, half of its messages reached Kafka,
/// none was acknowledged. Another control plane publishes the whole claim again a second later
/// (same attempts and deadlines), before any data plane read the first messages: half the calls
/// then have two messages in the topic. Every call is dialled exactly once (the shards' journals
/// drop the second message) and the campaign completes, with no reaper running (without the
/// republish, the calls whose messages never left would stay queued for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_stranded_mid_publish_is_published_again_and_each_call_dialled_once() {
    let store = dialer_testkit::fixtures::open(&dialer_testkit::postgres_database()).await;
    let topics = test_topics("strand").await;
    let t: Vec<_> = (0..40).map(|k| json!({"phone_number": format!("+1888{k:07}")})).collect();
    let req: CreateCampaignRequest = serde_json::from_value(json!({
        "name": "stranded", "max_concurrent_calls": 20,
        "retry_policy": {"max_attempts": 1},
        "targets": t
    }))
    .expect("request");
    let c = store.create_campaign(&req.validate(10_000).expect("valid")).await.expect("created");
    store.transition(c.id, CampaignAction::Start).await.expect("start");

    let clients = ClientSettings::new(&topics.brokers);
    let producer = clients.producer("test-control-plane").expect("producer");
    let kafka_sink = || KafkaDispatchSink::new(producer.clone(), &topics.dispatch_topic);
    // The control plane that dies: 40 calls claimed (cap 20 × inflight factor 2), 20 messages out.
    let dying = dialer_testkit::fixtures::scheduler(store.clone(), DiesMidPublish { kafka: kafka_sink(), deliver: 20 });
    dying.tick().await.expect("claimed");
    assert_eq!(store.stats(c.id).await.expect("stats").queued_calls, 40, "claimed, none acknowledged");

    let settings = SchedulerSettings {
        interval: Duration::from_millis(100),
        republish_after: Duration::from_secs(1),
        ..Default::default()
    };
    let sched = Scheduler { settings, ..dialer_testkit::fixtures::scheduler(store.clone(), kafka_sink()) };
    let until = Instant::now() + Duration::from_secs(30);
    let mut republished = 0;
    while republished < 40 {
        assert!(Instant::now() < until, "only {republished} of 40 published again");
        republished += sched.tick().await.expect("tick").republished;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let journal = tempfile::tempdir().expect("journal dir");
    let ledger = tempfile::tempdir().expect("ledger dir");
    let tracker = ledger_tracker(20, ledger.path());
    tracker.set_campaign_cap(c.id, 20);
    let dp = start_dataplane(&topics, 20, tracker.clone(), Some(journal.path()));
    let rec = recorder(&store, &clients, &topics, &producer);
    run_to_completion(sched, rec, dp, &store, &[c.id], Duration::from_secs(90)).await;

    let st = store.stats(c.id).await.expect("stats");
    assert_eq!(st, store.recount_stats(c.id).await.expect("recount"), "stats equal the rows");
    assert_eq!((st.completed_calls + st.failed_calls, st.attempts_total), (40, 40), "one attempt each");
    dialer_testkit::fixtures::assert_each_attempt_dialled_once(&store, &[c.id], ledger.path()).await;
    let dispatched = TopicReader::from_start(&topics.brokers, &topics.dispatch_topic, 4);
    let mut messages = 0;
    while dispatched.next(Duration::from_secs(3)).await.is_some() {
        messages += 1;
    }
    assert_eq!(messages, 60, "20 calls had two messages each, 20 one: the duplicates were there to drop");
    assert_eq!(tracker.violations(), 0, "caps held");
}
