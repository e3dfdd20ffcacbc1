//! The call timeline on a CQL server: the in-memory kassandra server (kassandra-tester) by
//! default, or a real ScyllaDB/Cassandra when `SCYLLA_URI=host:port` is set. Kassandra checks the
//! statements and the round trip of rows; ordering by clustering key and TTLs are only checked
//! against a real server (see ../shared/INFRA.md).

use std::net::SocketAddr;

use chrono::Utc;
use dialer_control_plane::timeline::{CqlTimeline, TimelineRow};
use dialer_control_plane::{Config, open_store};
use dialer_domain::campaign::CampaignAction;
use dialer_domain::messages::{EventKind, StatusEvent};
use dialer_domain::validate::CreateCampaignRequest;
use serde_json::json;
use uuid::Uuid;

async fn exercise(node: String) {
    let ks = format!("t_{}", Uuid::now_v7().simple());
    let t = CqlTimeline::connect(&[node], &ks, 1).await.expect("timeline connects and migrates");
    let call = Uuid::now_v7();
    let campaign = Uuid::now_v7();
    let row = |attempt, outcome: &str| TimelineRow {
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
    };
    t.write(&[row(1, "started")]).await.expect("write");
    t.write(&[row(1, "failed"), row(2, "started")]).await.expect("write");
    t.write(&[row(2, "completed")]).await.expect("write");
    t.write(&[row(2, "completed")]).await.expect("rewriting is harmless");
    let got = t.attempts(call).await.expect("read");
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].attempt, got[0].outcome.as_str(), got[0].reason.as_deref()), (1, "failed", Some("busy")));
    assert_eq!((got[1].attempt, got[1].outcome.as_str(), got[1].duration_ms), (2, "completed", Some(3000)));
    assert!(got[1].answered_at.is_some() && got[1].started_at.is_some());
    assert!(t.attempts(Uuid::now_v7()).await.expect("read").is_empty());

    // The recorder path: events applied to a store write their attempts to the CQL timeline.
    let dir = tempfile::tempdir().expect("tmp");
    let store = open_store(&Config::default(), &format!("sqlite://{}", dir.path().join("t.db").display()))
        .await
        .expect("store");
    let req: CreateCampaignRequest =
        serde_json::from_value(json!({"name": "cql", "targets": [{"phone_number": "+15550001111"}]})).expect("req");
    let c = store.create_campaign(&req.validate(10).expect("valid")).await.expect("campaign");
    store.transition(c.id, CampaignAction::Start).await.expect("start");
    let claimed = store.claim_calls(c.id, 1, Utc::now()).await.expect("claim");
    let k = &claimed[0];
    let ev = |kind| StatusEvent {
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

#[tokio::test]
async fn timeline_on_cql() {
    if let Ok(node) = std::env::var("SCYLLA_URI") {
        exercise(node).await;
        return;
    }
    let tester = kassandra_tester::KassandraTester::new(kassandra_tester::kassandra::session::KassandraSession::new());
    // Errors returned by the closure are dropped by kassandra-tester: `exercise` asserts inside.
    tester
        .in_scope(|addr: SocketAddr| async move {
            exercise(addr.to_string()).await;
            Ok::<(), ()>(())
        })
        .await
        .expect("kassandra ran");
}
