//! The call timeline on Apache Cassandra 5.0 from the harness (or the ScyllaDB/Cassandra node
//! `SCYLLA_URI=host:port` names): the round trip of rows, the recorder's path, the clustering
//! order (attempts come back in order however they were written), range reads on the clustering
//! key, paging over thousands of attempts, and TTLs (rows expire).

use chrono::Utc;
use dialer_api::campaigns::CreateCampaignRequest;
use dialer_domain::campaign::CampaignAction;
use dialer_domain::messages::{EventKind, StatusEvent};
use dialer_store::timeline::{CqlTimeline, TimelineRow};
use serde_json::json;
use uuid::Uuid;

fn node() -> String {
    std::env::var("SCYLLA_URI").unwrap_or_else(|_| dialer_testkit::cassandra().node())
}

async fn timeline() -> CqlTimeline {
    let ks = format!("t_{}", Uuid::now_v7().simple());
    CqlTimeline::connect(&[node()], &ks, 1).await.expect("timeline connects and migrates")
}

fn row(campaign: Uuid, call: Uuid, attempt: u32, outcome: &str) -> TimelineRow {
    TimelineRow {
        campaign_id: campaign,
        call_id: call,
        attempt,
        outcome: outcome.into(),
        started_at_ms: Some(1_790_000_000_000 + u64::from(attempt)),
        answered_at_ms: (outcome == "completed").then_some(1_790_000_000_500),
        ended_at_ms: (outcome != "started").then_some(1_790_000_003_000),
        duration_ms: (outcome != "started").then_some(3000),
        reason: (outcome == "failed").then(|| "busy".to_string()),
        retryable: (outcome == "failed").then_some(true),
        sip_code: (outcome == "failed").then_some(486),
        sip_reason: (outcome == "failed").then(|| "Busy Here".to_string()),
        media: (outcome == "completed").then(|| r#"{"answered_by":"machine","voicemail_left":true}"#.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_come_back_in_clustering_order_in_ranges_and_pages() {
    let t = timeline().await;
    let (campaign, call) = (Uuid::now_v7(), Uuid::now_v7());
    // 2,500 attempts written in a shuffled order (a bijection of 1..=2500), in several batches.
    let n = 2_500u32;
    let order: Vec<u32> = (0..n).map(|i| (i * 977) % n + 1).collect();
    for chunk in order.chunks(700) {
        let rows: Vec<TimelineRow> = chunk.iter().map(|a| row(campaign, call, *a, "failed")).collect();
        t.write(&rows).await.expect("write");
    }
    let all = t.attempts(call).await.expect("read all");
    assert_eq!(all.len(), n as usize, "every attempt, over several pages of 1,000");
    assert!(all.iter().enumerate().all(|(i, a)| a.attempt == i as u32 + 1), "in clustering order, as stored");
    let page = t.attempts_from(call, 1_200, 50).await.expect("range");
    assert_eq!(page.iter().map(|a| a.attempt).collect::<Vec<_>>(), (1_200..1_250).collect::<Vec<_>>());
    let tail = t.attempts_from(call, 2_490, 50).await.expect("range");
    assert_eq!(tail.len(), 11, "a range past the end stops at the last attempt");
    assert!(t.attempts_from(Uuid::now_v7(), 1, 10).await.expect("range").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_expire_after_the_timeline_ttl() {
    let t = timeline().await.with_ttl(std::time::Duration::from_secs(2));
    let (campaign, call) = (Uuid::now_v7(), Uuid::now_v7());
    t.write(&[row(campaign, call, 1, "completed")]).await.expect("write");
    assert_eq!(t.attempts(call).await.expect("read").len(), 1, "there before it expires");
    let kept = timeline().await;
    let forever = Uuid::now_v7();
    kept.write(&[row(campaign, forever, 1, "completed")]).await.expect("write");
    tokio::time::sleep(std::time::Duration::from_millis(3_500)).await;
    assert!(t.attempts(call).await.expect("read").is_empty(), "expired after its TTL");
    assert_eq!(kept.attempts(forever).await.expect("read").len(), 1, "no TTL: kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_on_cql() {
    let ks = format!("t_{}", Uuid::now_v7().simple());
    let node = node();
    let t = CqlTimeline::connect(&[node], &ks, 1).await.expect("timeline connects and migrates");
    let call = Uuid::now_v7();
    let campaign = Uuid::now_v7();
    let row = |attempt, outcome: &str| row(campaign, call, attempt, outcome);
    t.write(&[row(1, "started")]).await.expect("write");
    t.write(&[row(1, "failed"), row(2, "started")]).await.expect("write");
    t.write(&[row(2, "completed")]).await.expect("write");
    t.write(&[row(2, "completed")]).await.expect("rewriting is harmless");
    let got = t.attempts(call).await.expect("read");
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].attempt, got[0].outcome.as_str(), got[0].reason.as_deref()), (1, "failed", Some("busy")));
    assert_eq!(
        (got[0].sip_code, got[0].sip_reason.as_deref()),
        (Some(486), Some("Busy Here")),
        "the SIP answer is kept"
    );
    assert_eq!((got[1].attempt, got[1].outcome.as_str(), got[1].duration_ms), (2, "completed", Some(3000)));
    let media = got[1].media.as_ref().expect("the attempt's media");
    assert_eq!((media.answered_by, media.voicemail_left), (Some(dialer_domain::media::AnsweredBy::Machine), true));
    assert_eq!(got[0].media, None);
    assert!(got[1].answered_at.is_some() && got[1].started_at.is_some());
    assert!(t.attempts(Uuid::now_v7()).await.expect("read").is_empty());

    // The recorder path: events applied to a store write their attempts to the CQL timeline.
    let dir = tempfile::tempdir().expect("tmp");
    let store = dialer_testkit::fixtures::open(&format!("sqlite://{}", dir.path().join("t.db").display())).await;
    let req: CreateCampaignRequest =
        serde_json::from_value(json!({"name": "cql", "targets": [{"phone_number": "+15550001111"}]})).expect("req");
    let c = store.create_campaign(&req.validate(10).expect("valid")).await.expect("campaign");
    store.transition(c.id, CampaignAction::Start).await.expect("start");
    let claimed = store.claim_due(c.id, 1, Utc::now()).await.expect("claim");
    let k = &claimed[0];
    let ev = |kind| StatusEvent {
        media: None,
        v: 1,
        call_id: k.id,
        attempt: k.attempt,
        campaign_id: c.id,
        kind,
        at_ms: 1_790_000_001_000,
        started_at_ms: Some(1_790_000_000_000),
        answered_at_ms: (kind == EventKind::Completed).then_some(1_790_000_000_100),
        duration_ms: (kind == EventKind::Completed).then_some(900),
        reason: None,
        retryable: None,
        shard: 0,
        dispatch_latency_us: None,
        sip: None,
    };
    let mut u = || 0.5;
    let r = store
        .record_events(&[ev(EventKind::Started), ev(EventKind::Completed)], &mut u, Some(&t))
        .await
        .expect("record");
    assert_eq!(r.applied, 2);
    let attempts = t.attempts(k.id).await.expect("read");
    assert_eq!(attempts.len(), 1);
    assert_eq!((attempts[0].outcome.as_str(), attempts[0].duration_ms), ("completed", Some(900)));
    assert!(
        store.get_call(k.id).await.expect("call").attempts.is_empty(),
        "not written to SQL when CQL is the timeline"
    );
}
