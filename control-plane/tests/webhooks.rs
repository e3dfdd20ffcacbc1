//! The event log and webhook delivery at the store, on both stores: events are written
//! by the transactions that change calls and campaigns (none for a change that did not commit,
//! none twice for a redelivered outcome), numbered without a gap, each stream in its order; two
//! replicas on one PostgreSQL share an endpoint's concurrency and never send one event twice; the
//! webhook API refuses bad input naming the field; pruning keeps what a delivery needs.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use dialer_api::webhooks::CreateWebhookRequest;
use dialer_control_plane::webhooks::{Deliverer, Summary, WebhookSettings, run_sequencer};
use dialer_domain::CampaignAction;
use dialer_domain::messages::EventKind;
use dialer_store::LoggedEvent;
use dialer_testkit::receiver::{Mode, Receiver};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use dialer_testkit::both_stores;
use dialer_testkit::fixtures::{Backend, campaign, event, store};

fn body(e: &LoggedEvent) -> Value {
    serde_json::from_str(&e.body).expect("JSON")
}

/// Each stream's event types in log order.
fn streams(log: &[LoggedEvent]) -> BTreeMap<String, Vec<(u64, String)>> {
    let mut out: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for e in log {
        let b = body(e);
        let stream = b.get("call_id").unwrap_or(&b["campaign_id"]).as_str().expect("stream").to_string();
        out.entry(stream).or_default().push((b["sequence"].as_u64().expect("sequence"), e.kind.clone()));
    }
    out
}

async fn events_follow_the_changes_that_commit(b: Backend) {
    let (s, _dir) = store(b).await;
    let (c, claimed) = started_campaign(&s, "log", 3).await;
    assert_eq!(claimed.len(), 3);
    let (a, f, q) = (&claimed[0], &claimed[1], &claimed[2]);
    let batch = vec![
        event(c.id, a, EventKind::Started),
        event(c.id, a, EventKind::Completed),
        event(c.id, f, EventKind::Started),
        event(c.id, f, EventKind::Failed),
    ];
    s.record_events(&batch, &mut || 0.5, None).await.expect("recorded");
    // The same batch again (a redelivery) changes nothing and logs nothing.
    s.record_events(&batch, &mut || 0.5, None).await.expect("recorded again");
    // A refused change logs nothing: starting a running campaign.
    assert!(s.transition(c.id, CampaignAction::Start).await.is_err());
    s.transition(c.id, CampaignAction::Complete).await.expect("completed");
    let n = s.sequence_events(1000).await.expect("sequenced");
    let log = s.read_events(0, None, 1000).await.expect("log");
    assert_eq!(
        log.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=log.len() as i64).collect::<Vec<_>>(),
        "positions 1..n"
    );
    assert_eq!(n.events, log.len() as u64);
    let by = streams(&log);
    let kinds = |id: uuid::Uuid| by[&id.to_string()].iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>();
    assert_eq!(kinds(a.id), ["call.queued", "call.started", "call.answered", "call.completed"]);
    // f failed with a retry due; the completion cancelled it: its end is a final `failed`.
    assert_eq!(kinds(f.id), ["call.queued", "call.started", "call.failed", "call.failed"]);
    // q was queued and never reported: the completion leaves it to the reaper, nothing more yet.
    assert_eq!(kinds(q.id), ["call.queued"]);
    assert_eq!(kinds(c.id), ["campaign.status_changed", "campaign.status_changed", "campaign.completed"]);
    for (stream, evs) in &by {
        let seqs: Vec<u64> = evs.iter().map(|(n, _)| *n).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{stream}: numbered 1..n in log order");
    }
    let last_f = log.iter().rev().find(|e| body(e)["call_id"] == json!(f.id)).map(body).expect("f's end");
    assert_eq!(
        (last_f["data"]["final"].as_bool(), last_f["data"]["outcome"].as_str()),
        (Some(true), Some("cancelled"))
    );
    let retry =
        log.iter().map(body).find(|e| e["call_id"] == json!(f.id) && e["type"] == "call.failed").expect("the retry");
    assert_eq!((retry["data"]["final"].as_bool(), retry["data"]["outcome"].as_str()), (Some(false), Some("busy")));
    assert!(retry["data"]["next_attempt_at"].is_string(), "{retry}");
    // Nothing new: the sequencer numbers nothing twice.
    assert_eq!(s.sequence_events(1000).await.expect("sequenced").events, 0);
}

async fn a_skipped_call_logs_its_reason_and_a_held_one_logs_nothing(b: Backend) {
    let (s, _dir) = store(b).await;
    let c = campaign(&s, "skips", 3, 10, json!([])).await;
    s.transition(c.id, CampaignAction::Start).await.expect("started");
    let q = dialer_store::CallQuery { limit: 10, ..Default::default() };
    let numbers: Vec<String> =
        s.list_calls(c.id, &q).await.expect("calls").iter().map(|c| c.phone_number.clone()).collect();
    let entry =
        dialer_domain::dnc::DncEntry { phone_number: numbers[0].clone(), reason: None, source: None, expires_at: None };
    s.dnc_add(c.id, &[entry], true).await.expect("dnc");
    // The numbers map to no zone; the fallback zone is in a blackout today: held, but for the
    // opted-out number (skipped first).
    let now = chrono::Utc::now();
    let rules = dialer_domain::rules::CallingRules {
        fallback_zones: vec!["UTC".into()],
        blackout_dates: vec![now.date_naive()],
        ..Default::default()
    };
    let rules = rules.compile("calling_rules").expect("rules");
    let deadline = now + chrono::TimeDelta::minutes(5);
    let zones: Vec<_> = s.pending_zones(c.id).await.expect("zones").into_iter().map(|z| (z, deadline)).collect();
    let screened = s.claim_calls(c.id, 10, now, &zones, &rules).await.expect("claimed");
    assert_eq!((screened.skipped.len(), screened.held.len(), screened.dial.len()), (1, 2, 0));
    // The held calls, claimed later with the rules off: their first event is number 1.
    let later = s.claim_due(c.id, 10, now + chrono::TimeDelta::days(3)).await.expect("claimed");
    assert_eq!(later.len(), 2);
    s.sequence_events(100).await.expect("sequenced");
    let log: Vec<Value> = s.read_events(0, Some(c.id), 100).await.expect("log").iter().map(body).collect();
    let calls: Vec<(&str, u64)> = log
        .iter()
        .filter(|e| e.get("call_id").is_some())
        .map(|e| (e["type"].as_str().expect("type"), e["sequence"].as_u64().expect("sequence")))
        .collect();
    assert_eq!(calls, [("call.skipped", 1), ("call.queued", 1), ("call.queued", 1)], "{log:?}");
    let skipped = log.iter().find(|e| e["type"] == "call.skipped").expect("skipped");
    assert_eq!(
        (skipped["data"]["reason"].as_str(), skipped["data"]["phone_number"].as_str()),
        (Some("dnc"), Some(numbers[0].as_str()))
    );
}

/// A started campaign of `targets` calls, all claimed (each logged its `queued`).
async fn started_campaign(
    s: &dialer_control_plane::Store,
    name: &str,
    targets: usize,
) -> (dialer_api::views::Campaign, Vec<dialer_store::ClaimedCall>) {
    let c = campaign(s, name, targets, 10, json!([])).await;
    s.transition(c.id, CampaignAction::Start).await.expect("started");
    let claimed = s.claim_due(c.id, targets, chrono::Utc::now()).await.expect("claimed");
    assert_eq!(claimed.len(), targets);
    (c, claimed)
}

/// An endpoint at a port nothing listens on (these tests answer for it), of this concurrency and
/// a rate of 10,000/s, or the defaults.
async fn unreachable_endpoint(
    s: &dialer_control_plane::Store,
    concurrency: Option<i64>,
) -> dialer_api::webhooks::Webhook {
    let req = CreateWebhookRequest {
        url: "http://127.0.0.1:9/hook".into(),
        max_concurrency: concurrency,
        rate_per_sec: concurrency.map(|_| 10_000),
        ..Default::default()
    };
    s.create_webhook(&req.validate().expect("valid"), "secret-0123456789abcdef").await.expect("endpoint")
}

/// An endpoint's health: failed answers counted in a row from the first (`failing_since`), a
/// delivered one clears them and is its `last_success_at`; a lease that ran out counts as
/// neither.
async fn an_endpoints_failures_are_counted_in_a_row_and_a_success_clears_them(b: Backend) {
    use dialer_domain::events::{Answer, Next};
    use dialer_store::Finished;
    let (s, _dir) = store(b).await;
    let w = unreachable_endpoint(&s, Some(10)).await;
    assert_eq!(w.health, dialer_api::webhooks::EndpointHealth::default(), "new: no answer yet");
    let (c, claimed) = started_campaign(&s, "health", 1).await;
    s.record_events(&[event(c.id, &claimed[0], EventKind::Started)], &mut || 0.5, None).await.expect("recorded");
    s.sequence_events(100).await.expect("sequenced");
    let lease = chrono::Utc::now() + chrono::TimeDelta::seconds(60);
    let due = chrono::Utc::now() - chrono::TimeDelta::seconds(1);
    let answer = |d: &dialer_store::ClaimedDelivery, code: u16, next: Next| Finished {
        delivery: d.clone(),
        answer: Answer::Status(code),
        next,
    };
    let first = s.claim_deliveries(w.id, 10, lease).await.expect("claim").deliveries;
    assert_eq!(first.len(), 2, "{first:?}");
    s.finish_deliveries(&first.iter().map(|d| answer(d, 500, Next::Retry(due))).collect::<Vec<_>>())
        .await
        .expect("answers");
    let h = s.get_webhook(w.id).await.expect("endpoint").health;
    assert_eq!((h.failures_in_a_row, h.last_success_at, h.flagged), (2, None, false), "{h:?}");
    let since = h.failing_since.expect("failing since the first failure");
    let again = s.claim_deliveries(w.id, 10, lease).await.expect("claim").deliveries;
    assert_eq!(again.len(), 2, "retries due: {again:?}");
    s.finish_deliveries(&[answer(&again[0], 503, Next::Retry(due))]).await.expect("answer");
    let h = s.get_webhook(w.id).await.expect("endpoint").health;
    assert_eq!((h.failures_in_a_row, h.failing_since), (3, Some(since)), "counted on from the first: {h:?}");
    s.finish_deliveries(&[answer(&again[1], 200, Next::Delivered)]).await.expect("answer");
    let h = s.get_webhook(w.id).await.expect("endpoint").health;
    assert_eq!((h.failures_in_a_row, h.failing_since), (0, None), "{h:?}");
    assert!(h.last_success_at.is_some_and(|t| t >= since));
    let active = s.active_endpoints().await.expect("active");
    assert_eq!(active.iter().find(|e| e.id == w.id).map(|e| e.health), Some(h), "the deliverer reads it too");
}

/// The leases: a claim holds an endpoint's slot until its answer or its lease's end; an expired
/// lease is claimed again as the next attempt, and the first attempt's late answer is dropped.
async fn an_expired_lease_is_claimed_again_and_its_late_answer_is_dropped(b: Backend) {
    use dialer_domain::events::{Answer, Next};
    use dialer_store::Finished;
    let (s, _dir) = store(b).await;
    let w = unreachable_endpoint(&s, Some(2)).await;
    let (c, claimed) = started_campaign(&s, "leases", 1).await;
    s.record_events(&[event(c.id, &claimed[0], EventKind::Started)], &mut || 0.5, None).await.expect("recorded");
    s.sequence_events(100).await.expect("sequenced");
    let past = chrono::Utc::now() - chrono::TimeDelta::seconds(1);
    let first = s.claim_deliveries(w.id, 10, past).await.expect("claim").deliveries;
    // Two streams' heads (the campaign's start, the call's queued); the call's started waits.
    let heads = |c: &[dialer_store::ClaimedDelivery]| c.iter().map(|d| (d.seq, d.attempts)).collect::<Vec<_>>();
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(first.iter().all(|d| d.attempts == 1 && d.stream_seq == 1), "{first:?}");
    assert_eq!(s.delivery_counts().await.expect("counts").sending, 2);
    assert!(
        s.claim_deliveries(w.id, 10, past).await.expect("claim").deliveries.is_empty(),
        "the concurrency of 2 is taken"
    );
    assert_eq!(s.reclaim_expired_deliveries().await.expect("reclaimed"), 2);
    let later = chrono::Utc::now() + chrono::TimeDelta::seconds(60);
    let second = s.claim_deliveries(w.id, 10, later).await.expect("claim").deliveries;
    assert_eq!(heads(&second), first.iter().map(|d| (d.seq, 2)).collect::<Vec<_>>(), "the same heads, as attempt 2");
    let ok = |d: &dialer_store::ClaimedDelivery| Finished {
        delivery: d.clone(),
        answer: Answer::Status(200),
        next: Next::Delivered,
    };
    s.finish_deliveries(&first.iter().map(ok).collect::<Vec<_>>()).await.expect("late answers");
    let counts = s.delivery_counts().await.expect("counts");
    assert_eq!((counts.pending, counts.sending), (1, 2), "the first attempt's late answers are dropped");
    s.finish_deliveries(&second.iter().map(ok).collect::<Vec<_>>()).await.expect("answers");
    let counts = s.delivery_counts().await.expect("counts");
    assert_eq!((counts.pending, counts.sending), (1, 0));
    let third = s.claim_deliveries(w.id, 10, later).await.expect("claim").deliveries;
    assert_eq!(
        third.iter().map(|d| (d.stream_seq, d.attempts)).collect::<Vec<_>>(),
        [(2, 1)],
        "the call's started, now its head"
    );
}

/// A late answer of an attempt whose lease expired, written in the same batch as the answer of
/// the attempt that replaced it, is dropped: the delivered event stays delivered.
async fn a_late_answer_beside_the_next_attempts_answer_is_dropped(b: Backend) {
    use dialer_domain::events::{Answer, Next};
    use dialer_store::Finished;
    let (s, _dir) = store(b).await;
    let w = unreachable_endpoint(&s, Some(1)).await;
    let (_, calls) = started_campaign(&s, "late", 1).await;
    s.sequence_events(100).await.expect("sequenced");
    let past = chrono::Utc::now() - chrono::TimeDelta::seconds(1);
    let first = s.claim_deliveries(w.id, 10, past).await.expect("claim").deliveries;
    assert_eq!(s.reclaim_expired_deliveries().await.expect("reclaimed"), 1);
    let later = chrono::Utc::now() + chrono::TimeDelta::seconds(60);
    let second = s.claim_deliveries(w.id, 10, later).await.expect("claim").deliveries;
    assert_eq!(positions(&second), positions(&first), "the campaign's start again");
    let retry = Next::Retry(chrono::Utc::now() + chrono::TimeDelta::hours(1));
    let late = Finished { delivery: first[0].clone(), answer: Answer::Status(500), next: retry };
    let ok = Finished { delivery: second[0].clone(), answer: Answer::Status(200), next: Next::Delivered };
    s.finish_deliveries(&[ok, late]).await.expect("answers");
    let counts = s.delivery_counts().await.expect("counts");
    assert_eq!((counts.pending, counts.sending), (1, 0), "only the call's queued, not read yet");
    let next = s.claim_deliveries(w.id, 10, later).await.expect("claim").deliveries;
    assert_eq!(positions(&next), [(calls[0].id, 1)]);
    assert!(s.dead_letters(w.id, 0, 10).await.expect("dead letters").is_empty());
}

/// Pruning: an event older than the cut goes once no delivery needs it (delivered, or its
/// endpoint deleted); a dead letter's events stay, and so do newer events, numbered or not; each
/// call removes at most its bound of each.
async fn pruning_forgets_old_events_only_once_no_delivery_needs_them(b: Backend) {
    use dialer_domain::events::{Answer, Next};
    use dialer_store::Finished;
    let (s, _dir) = store(b).await;
    let w = unreachable_endpoint(&s, Some(100)).await;
    let (c, calls) = started_campaign(&s, "prune", 2).await;
    let started: Vec<_> = calls.iter().map(|k| event(c.id, k, EventKind::Started)).collect();
    s.record_events(&started, &mut || 0.5, None).await.expect("recorded");
    s.sequence_events(100).await.expect("sequenced");
    let old = s.read_events(0, None, 100).await.expect("log");
    assert_eq!(old.len(), 5, "the campaign's start, two calls queued and started");
    let future = chrono::Utc::now() + chrono::TimeDelta::hours(1);
    assert_eq!(s.prune_events(future, 100).await.expect("pruned"), 0, "the endpoint has read none of them yet");
    // Every head answered until none is left: the first call's stream goes to the dead-letter
    // store (its later event with it), everything else is delivered.
    let dead = calls[0].id;
    let at = chrono::Utc::now() + chrono::TimeDelta::seconds(60);
    loop {
        let claimed = s.claim_deliveries(w.id, 100, at).await.expect("claim").deliveries;
        if claimed.is_empty() {
            break;
        }
        let answers = claimed.into_iter().map(|d| {
            let next = if d.stream_id == dead { Next::Dead } else { Next::Delivered };
            Finished { answer: Answer::Status(if next == Next::Dead { 500 } else { 200 }), next, delivery: d }
        });
        s.finish_deliveries(&answers.collect::<Vec<_>>()).await.expect("answers");
    }
    assert_eq!(s.dead_letters(w.id, 0, 100).await.expect("dead letters").len(), 2);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.record_events(&[event(c.id, &calls[1], EventKind::Completed)], &mut || 0.5, None).await.expect("recorded");
    let newer = s.sequence_events(100).await.expect("sequenced").events;
    assert!(newer > 0);
    // Two more (answered, completed), left unnumbered (as while nobody reads the log).
    s.record_events(&[event(c.id, &calls[0], EventKind::Completed)], &mut || 0.5, None).await.expect("recorded");

    assert_eq!(s.prune_events(cut, 1).await.expect("pruned"), 1, "at most its bound");
    assert_eq!(s.prune_events(cut, 100).await.expect("pruned"), 2, "the rest of the delivered old events");
    assert_eq!(s.prune_events(cut, 100).await.expect("pruned"), 0);
    let kept: Vec<i64> = s.read_events(0, None, 100).await.expect("log").iter().map(|e| e.seq).collect();
    let dead_seqs: Vec<i64> = old.iter().filter(|e| body(e)["call_id"] == json!(dead)).map(|e| e.seq).collect();
    let newer_seqs: Vec<i64> = (old.len() as i64 + 1..=old.len() as i64 + newer as i64).collect();
    assert_eq!(kept, [dead_seqs.clone(), newer_seqs].concat(), "the dead letters' events and the newer ones");
    assert_eq!(s.log_bounds().await.expect("bounds").0, dead_seqs[0]);
    assert_eq!(s.dead_letters(w.id, 0, 100).await.expect("dead letters").len(), 2, "still replayable");

    // Once its endpoint is gone nothing needs them; the unnumbered events go too.
    assert!(s.delete_webhook(w.id).await.expect("deleted"));
    let later = chrono::Utc::now() + chrono::TimeDelta::hours(1);
    assert_eq!(s.prune_events(later, 100).await.expect("pruned"), kept.len() as u64 + 2);
    assert!(s.read_events(0, None, 100).await.expect("log").is_empty());
    assert_eq!(s.sequence_events(100).await.expect("sequenced").events, 0, "the unnumbered ones are gone");
}

/// A database of this backend with the migrations before `version` applied.
enum OldDb {
    Pg(sqlx::PgPool),
    Lite(sqlx::SqlitePool),
}

/// Runs one statement with these binds on an [`OldDb`].
macro_rules! exec {
    ($db:expr, $sql:expr $(, $bind:expr)*) => {
        match &$db {
            OldDb::Pg(p) => sqlx::query($sql)$(.bind($bind))*.execute(p).await.map(drop).expect($sql),
            OldDb::Lite(p) => sqlx::query($sql)$(.bind($bind))*.execute(p).await.map(drop).expect($sql),
        }
    };
}

/// A fresh database with the migrations before `version` applied: its URL (opening the store
/// there applies the rest), its directory (SQLite) and a pool.
async fn migrated_before(b: Backend, version: i64) -> (String, Option<tempfile::TempDir>, OldDb) {
    let (url, dir) = match b {
        Backend::Postgres => (dialer_testkit::postgres_database(), None),
        Backend::Sqlite => {
            let d = tempfile::tempdir().expect("tmp");
            (format!("sqlite://{}", d.path().join("t.db").display()), Some(d))
        }
    };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations").join(match b {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    });
    let mut before = sqlx::migrate::Migrator::new(path).await.expect("migrations");
    before.migrations = before.migrations.iter().filter(|m| m.version < version).cloned().collect::<Vec<_>>().into();
    let db = match b {
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&url).await.expect("pool");
            before.run(&pool).await.expect("the earlier migrations");
            OldDb::Pg(pool)
        }
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&format!("{url}?mode=rwc")).await.expect("pool");
            before.run(&pool).await.expect("the earlier migrations");
            OldDb::Lite(pool)
        }
    };
    (url, dir, db)
}

/// Migration 0013 (the inbox) on a log holding numbered and unnumbered events: the numbered keep
/// their numbers and bodies, the unnumbered are numbered after them, in their order.
async fn the_inbox_migration_keeps_the_log_and_numbers_what_was_waiting(b: Backend) {
    let (url, _dir, db) = migrated_before(b, 13).await;
    let (c, call) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    // Two numbered events, two waiting (NULL): the later of its stream was inserted first.
    let rows = "INSERT INTO events (seq, campaign_id, stream_id, stream_seq, kind, body, created_at) VALUES \
                (1, $1, $2, 1, 'call.queued', 'one', $3), (2, $1, $2, 2, 'call.started', 'two', $3), \
                (NULL, $1, $2, 4, 'call.completed', 'four', $3), (NULL, $1, $2, 3, 'call.answered', 'three', $3)";
    exec!(db, rows, c, call, chrono::Utc::now());
    exec!(db, "UPDATE event_sequencer SET next_seq = 3");
    let s = dialer_testkit::fixtures::open(&url).await;
    assert_eq!(s.log_bounds().await.expect("bounds"), (1, 2));
    assert_eq!(s.sequence_events(100).await.expect("sequenced").events, 2);
    let log: Vec<(i64, String)> =
        s.read_events(0, None, 100).await.expect("log").into_iter().map(|e| (e.seq, e.body)).collect();
    let want = [(1, "one"), (2, "two"), (3, "three"), (4, "four")].map(|(n, b)| (n, b.to_string()));
    assert_eq!(log, want, "kept, then the waiting ones in their stream's order");
}

/// The envelope migration (0022 on PostgreSQL, 0021 on SQLite): events written before it keep
/// their whole bodies, the one waiting in the inbox too; an event written after stores its data
/// and the id apart, and reads back whole: the same envelope, the data inside.
async fn events_written_before_the_envelope_columns_read_back_as_they_were(b: Backend) {
    let version = match b {
        Backend::Postgres => 22,
        Backend::Sqlite => 21,
    };
    let (url, _dir, db) = migrated_before(b, version).await;
    let (c, call, now) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7(), chrono::Utc::now());
    let old = r#"{"campaign_id":"c","data":{"attempt":1},"id":"old","sequence":1,"type":"call.queued"}"#;
    exec!(
        db,
        "INSERT INTO events (seq, campaign_id, stream_id, stream_seq, kind, body, created_at) \
         VALUES (1, $1, $2, 1, 'call.queued', $3, $4)",
        c,
        call,
        old,
        now
    );
    exec!(
        db,
        "INSERT INTO event_inbox (campaign_id, stream_id, stream_seq, kind, body, created_at) \
         VALUES ($1, $2, 2, 'call.started', 'waiting', $3)",
        c,
        call,
        now
    );
    exec!(db, "UPDATE event_sequencer SET next_seq = 2");
    let s = dialer_testkit::fixtures::open(&url).await;
    let (campaign, _) = started_campaign(&s, "after", 1).await;
    s.sequence_events(100).await.expect("sequenced");
    let log = s.read_events(0, None, 100).await.expect("log");
    assert_eq!(log[0].body, old, "a whole body stays whole");
    assert_eq!(log[1].body, "waiting", "so does the one that waited in the inbox");
    let later: Vec<Value> = log[2..].iter().map(body).collect();
    assert!(later.len() >= 2, "the new campaign's start and its call's queued: {later:?}");
    for (e, b) in log[2..].iter().zip(&later) {
        assert_eq!(b["type"], e.kind.as_str(), "the type in the envelope");
        assert_eq!(b["campaign_id"], json!(campaign.id));
        assert!(b["id"].as_str().is_some_and(|id| id.len() == 36), "the event's id: {b}");
        assert!(b["data"].is_object() && b["sequence"].as_u64().is_some() && b["created_at"].is_string());
    }
    let queued = later.iter().find(|b| b["type"] == "call.queued").expect("the call's queued");
    assert_eq!(queued["data"]["attempt"], 1, "its data inside the envelope");
    assert!(queued["call_id"].is_string(), "a call's event names its call");
}

/// The packed inbox (0025 on PostgreSQL, 0024 on SQLite): the events waiting in the inbox before
/// it keep their order, ids and data byte for byte; after it, a transaction's events are one
/// inbox row (the claim of three calls: their three `call.queued` events), numbered after them.
async fn the_packed_inbox_keeps_what_was_waiting_and_takes_a_row_per_transaction(b: Backend) {
    let version = match b {
        Backend::Postgres => 25,
        Backend::Sqlite => 24,
    };
    let (url, _dir, db) = migrated_before(b, version).await;
    let (c, x, y, id) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7(), uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let waiting = "INSERT INTO event_inbox (campaign_id, stream_id, stream_seq, kind, body, created_at, event_id) VALUES \
                   ($1, $2, 1, 'call.queued', '{\"attempt\":1,\"note\":\"é \\\"q\\\"\"}', $4, $5), \
                   ($1, $3, 1, 'call.queued', 'a whole old body', $4, NULL), \
                   ($1, $2, 2, 'call.started', '{}', $4, NULL)";
    exec!(db, waiting, c, x, y, chrono::Utc::now(), id);
    let s = dialer_testkit::fixtures::open(&url).await;
    let (campaign, _) = started_campaign(&s, "packed", 3).await;
    let rows: Vec<i32> = match &db {
        OldDb::Pg(p) => sqlx::query_scalar("SELECT n_events FROM event_inbox ORDER BY n").fetch_all(p).await,
        OldDb::Lite(p) => sqlx::query_scalar("SELECT n_events FROM event_inbox ORDER BY n").fetch_all(p).await,
    }
    .expect("inbox rows");
    assert_eq!(rows[..3], [1, 1, 1], "one row for each event that was waiting");
    assert!(rows[3..].contains(&3), "the claim's three events in one row: {rows:?}");
    let numbered = s.sequence_events(1000).await.expect("sequenced").events;
    assert_eq!(numbered, rows.iter().sum::<i32>() as u64);
    let log = s.read_events(0, None, 100).await.expect("log");
    let first = body(&log[0]);
    assert_eq!(
        (first["id"].as_str(), first["call_id"].as_str()),
        (Some(id.to_string().as_str()), Some(x.to_string().as_str()))
    );
    assert_eq!(first["data"], json!({"attempt": 1, "note": "é \"q\""}), "its data, escapes and all");
    assert_eq!(log[1].body, "a whole old body");
    assert_eq!((log[2].kind.as_str(), log[2].body.as_str()), ("call.started", "{}"), "in their order");
    let queued = log[3..].iter().filter(|e| e.kind == "call.queued" && body(e)["campaign_id"] == json!(campaign.id));
    assert_eq!(queued.count(), 3, "then the new campaign's events");
}

/// Migration 0014 (lazy fan-out) with deliveries under way: an endpoint's cursor starts at the
/// log's head, so nothing the eager fan-out had handled goes again, and the lease being sent is
/// kept: its answer counts, and its call's later event goes after it.
async fn the_cursor_migration_starts_endpoints_at_the_head_and_keeps_what_was_under_way(b: Backend) {
    use dialer_domain::events::{Answer, Next};
    use dialer_store::{ClaimedDelivery, Finished};
    let (url, _dir, db) = migrated_before(b, 14).await;
    let (c, x, y, w) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7(), uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let at = chrono::Utc::now();
    let events = "INSERT INTO events (seq, campaign_id, stream_id, stream_seq, kind, body, created_at) VALUES \
                  (1, $1, $2, 1, 'call.queued', '{}', $4), (2, $1, $2, 2, 'call.started', '{}', $4), \
                  (3, $1, $3, 1, 'call.queued', '{}', $4)";
    exec!(db, events, c, x, y, at);
    exec!(db, "UPDATE event_sequencer SET next_seq = 4");
    let endpoint = "INSERT INTO webhook_endpoints (id, url, secret, event_types, enabled, max_concurrency, rate_per_sec, \
                    rate_tokens, rate_at, created_at, updated_at, in_flight) \
                    VALUES ($1, 'http://127.0.0.1:9/hook', 'secret-0123456789abcdef', '', true, 10, 1000, 1000, $2, $2, $2, 1)";
    exec!(db, endpoint, w, at);
    // Call x's queued is being sent and its started waits; call y's queued was delivered.
    let rows = "INSERT INTO webhook_deliveries (endpoint_id, seq, stream_id, stream_seq, state, attempts, next_attempt_at) \
                VALUES ($1, 1, $2, 1, 'pending', 0, $3), ($1, 2, $2, 2, 'pending', 0, $3)";
    exec!(db, rows, w, x, at);
    let lease =
        "INSERT INTO webhook_leases (endpoint_id, seq, attempt, claimed_at, lease_until) VALUES ($1, 1, 1, $2, $3)";
    exec!(db, lease, w, at, at + chrono::TimeDelta::hours(1));
    let s = dialer_testkit::fixtures::open(&url).await;
    let until = at + chrono::TimeDelta::hours(2);
    let none = s.claim_deliveries(w, 10, until).await.expect("claim").deliveries;
    assert!(none.is_empty(), "x's started waits for its queued; y's queued went before: {none:?}");
    let sent = ClaimedDelivery {
        endpoint_id: w,
        seq: 1,
        stream_id: x,
        stream_seq: 1,
        attempts: 1,
        window_start: at,
        created_at: at,
        body: "{}".into(),
    };
    s.finish_deliveries(&[Finished { delivery: sent, answer: Answer::Status(200), next: Next::Delivered }])
        .await
        .expect("answer");
    let next = s.claim_deliveries(w, 10, until).await.expect("claim").deliveries;
    assert_eq!(positions(&next), [(x, 2)], "the answer of the lease kept counted");
}

/// A stream with a dead letter: its events logged later join it in the dead-letter store when
/// the endpoint reads them (they would otherwise wait for ever behind it); other streams' do not.
async fn an_event_behind_a_dead_letter_joins_it_when_read(b: Backend) {
    use dialer_domain::events::{Answer, Next};
    use dialer_store::Finished;
    let (s, _dir) = store(b).await;
    let w = unreachable_endpoint(&s, None).await;
    let (c, calls) = started_campaign(&s, "behind", 2).await;
    s.sequence_events(100).await.expect("sequenced");
    let at = chrono::Utc::now() + chrono::TimeDelta::seconds(60);
    let heads = s.claim_deliveries(w.id, 100, at).await.expect("claim").deliveries;
    let dead = heads.iter().find(|d| d.stream_id == calls[0].id).expect("call 0's queued").clone();
    let gave_up = Finished { delivery: dead, answer: Answer::Status(503), next: Next::Dead };
    s.finish_deliveries(&[gave_up]).await.expect("answer");
    assert_eq!(s.dead_letters(w.id, 0, 100).await.expect("dead letters").len(), 1);
    let both: Vec<_> = calls.iter().map(|k| event(c.id, k, EventKind::Started)).collect();
    s.record_events(&both, &mut || 0.5, None).await.expect("recorded");
    s.sequence_events(100).await.expect("sequenced");
    let claimed = s.claim_deliveries(w.id, 100, at).await.expect("claim").deliveries;
    assert!(claimed.is_empty(), "one started is buried, the other waits behind its queued: {claimed:?}");
    let dead: Vec<(uuid::Uuid, i32)> = s
        .dead_letters(w.id, 0, 100)
        .await
        .expect("dead letters")
        .iter()
        .map(|d| {
            let call = d.event["call_id"].as_str().expect("call").parse().expect("id");
            (call, d.event["sequence"].as_i64().expect("sequence") as i32)
        })
        .collect();
    assert_eq!(dead, [(calls[0].id, 1), (calls[0].id, 2)], "call 0's started joined its queued");
    let counts = s.delivery_counts().await.expect("counts");
    // Still being sent: the campaign's start and call 1's queued; call 1's started waits behind it.
    assert_eq!((counts.dead, counts.pending, counts.sending), (2, 1, 2));
}

/// The (call or campaign, stream position) of claimed deliveries, in log order.
fn positions(claimed: &[dialer_store::ClaimedDelivery]) -> Vec<(uuid::Uuid, i32)> {
    claimed.iter().map(|d| (d.stream_id, d.stream_seq)).collect()
}

/// Answers every claimed delivery 200.
async fn deliver_all(s: &dialer_control_plane::Store, claimed: &[dialer_store::ClaimedDelivery]) {
    use dialer_domain::events::{Answer, Next};
    use dialer_store::Finished;
    let ok = |d: &dialer_store::ClaimedDelivery| Finished {
        delivery: d.clone(),
        answer: Answer::Status(200),
        next: Next::Delivered,
    };
    s.finish_deliveries(&claimed.iter().map(ok).collect::<Vec<_>>()).await.expect("answers");
}

/// Lazy fan-out and pausing: what a paused endpoint had not read of the log yet waits for it in
/// delivery rows and goes once it is resumed; what was logged while it was paused is not its;
/// what is logged after it resumes is.
async fn a_paused_endpoint_keeps_what_it_had_not_read_and_resumes_at_the_head(b: Backend) {
    use dialer_api::webhooks::UpdateWebhookRequest;
    let (s, _dir) = store(b).await;
    let w = unreachable_endpoint(&s, Some(10)).await;
    let (c, calls) = started_campaign(&s, "paused", 1).await;
    s.sequence_events(100).await.expect("sequenced");
    let pause = UpdateWebhookRequest { enabled: Some(false), ..Default::default() };
    s.update_webhook(w.id, &pause).await.expect("paused");
    assert_eq!(s.delivery_counts().await.expect("counts").pending, 2, "the campaign's start and the call's queued");
    s.record_events(&[event(c.id, &calls[0], EventKind::Started)], &mut || 0.5, None).await.expect("recorded");
    s.sequence_events(100).await.expect("sequenced");
    let at = chrono::Utc::now() + chrono::TimeDelta::seconds(60);
    assert!(s.claim_deliveries(w.id, 100, at).await.expect("claim").deliveries.is_empty(), "paused");
    let resume = UpdateWebhookRequest { enabled: Some(true), ..Default::default() };
    s.update_webhook(w.id, &resume).await.expect("resumed");
    let first = s.claim_deliveries(w.id, 100, at).await.expect("claim").deliveries;
    assert_eq!(positions(&first), [(c.id, 1), (calls[0].id, 1)], "what it had not read when paused");
    deliver_all(&s, &first).await;
    assert!(
        s.claim_deliveries(w.id, 100, at).await.expect("claim").deliveries.is_empty(),
        "the started logged while paused"
    );
    s.record_events(&[event(c.id, &calls[0], EventKind::Completed)], &mut || 0.5, None).await.expect("recorded");
    s.sequence_events(100).await.expect("sequenced");
    let after = s.claim_deliveries(w.id, 100, at).await.expect("claim").deliveries;
    // Logged after it resumed: the call's answered and completed, one at a time.
    assert_eq!(positions(&after), [(calls[0].id, 3)], "the answered goes first");
    let counts = s.delivery_counts().await.expect("counts");
    assert_eq!((counts.pending, counts.sending, counts.dead), (1, 1, 0), "its completed waits in a row");
}

/// A 410 from the first event the endpoint was sent: the endpoint is disabled, and the events it
/// had not read of the log yet join the dead-letter store with it; what is logged afterwards is
/// not its. Re-enabled and replayed, every dead letter goes, each call's in order.
async fn a_410_buries_what_the_endpoint_had_not_read_and_replay_sends_it(b: Backend) {
    use dialer_api::webhooks::UpdateWebhookRequest;
    use dialer_domain::events::{Answer, Next};
    use dialer_store::Finished;
    let (s, _dir) = store(b).await;
    let w = unreachable_endpoint(&s, Some(1)).await;
    let (c, calls) = started_campaign(&s, "gone", 2).await;
    s.sequence_events(100).await.expect("sequenced");
    let at = chrono::Utc::now() + chrono::TimeDelta::seconds(60);
    let first = s.claim_deliveries(w.id, 100, at).await.expect("claim").deliveries;
    assert_eq!(positions(&first), [(c.id, 1)], "a concurrency of one");
    let gone = Finished { delivery: first[0].clone(), answer: Answer::Status(410), next: Next::Gone };
    s.finish_deliveries(&[gone]).await.expect("answer");
    assert!(!s.get_webhook(w.id).await.expect("endpoint").enabled);
    s.record_events(&[event(c.id, &calls[0], EventKind::Started)], &mut || 0.5, None).await.expect("recorded");
    s.sequence_events(100).await.expect("sequenced");
    let dead: Vec<(i64, Option<i32>)> =
        s.dead_letters(w.id, 0, 100).await.expect("dead letters").iter().map(|d| (d.seq, d.last_status_code)).collect();
    assert_eq!(dead.len(), 3, "the 410 and both calls' queued, not what came later: {dead:?}");
    assert_eq!(dead[0], (first[0].seq, Some(410)));
    assert_eq!(s.delivery_counts().await.expect("counts").pending, 0);
    s.update_webhook(w.id, &UpdateWebhookRequest { enabled: Some(true), ..Default::default() }).await.expect("enabled");
    assert_eq!(s.replay_dead_letters(w.id, None).await.expect("replayed"), 3);
    let mut sent = Vec::new();
    loop {
        let claimed = s.claim_deliveries(w.id, 100, at).await.expect("claim").deliveries;
        if claimed.is_empty() {
            break;
        }
        deliver_all(&s, &claimed).await;
        sent.extend(claimed.iter().map(|d| d.seq));
    }
    assert_eq!(sent, dead.iter().map(|d| d.0).collect::<Vec<_>>(), "every dead letter once, in log order");
}

/// Lazy fan-out beside other traffic: an endpoint of one campaign reads past thousands of other
/// campaigns' events in one claim, and its queue depth counts only its own.
async fn an_endpoint_of_one_campaign_reads_past_others_traffic_in_one_claim(b: Backend) {
    let (s, _dir) = store(b).await;
    let mine = campaign(&s, "mine", 1, 10, json!([])).await;
    let req = CreateWebhookRequest {
        url: "http://127.0.0.1:9/hook".into(),
        campaign_id: Some(mine.id),
        max_concurrency: Some(10),
        rate_per_sec: Some(10_000),
        ..Default::default()
    };
    let w = s.create_webhook(&req.validate().expect("valid"), "secret-0123456789abcdef").await.expect("endpoint");
    started_campaign(&s, "others", 3000).await;
    s.transition(mine.id, CampaignAction::Start).await.expect("started");
    let call = s.claim_due(mine.id, 1, chrono::Utc::now()).await.expect("claimed")[0].id;
    while s.sequence_events(1000).await.expect("sequenced").events > 0 {}
    assert_eq!(s.delivery_counts().await.expect("counts").pending, 2, "its own two events");
    let at = chrono::Utc::now() + chrono::TimeDelta::seconds(60);
    let claimed = s.claim_deliveries(w.id, 10, at).await.expect("claim").deliveries;
    assert_eq!(positions(&claimed), [(mine.id, 1), (call, 1)], "behind 3,001 events of the other campaign");
    assert_eq!(s.delivery_counts().await.expect("counts").pending, 0);
}

both_stores!(
    events_follow_the_changes_that_commit,
    an_endpoints_failures_are_counted_in_a_row_and_a_success_clears_them,
    a_skipped_call_logs_its_reason_and_a_held_one_logs_nothing,
    an_expired_lease_is_claimed_again_and_its_late_answer_is_dropped,
    a_late_answer_beside_the_next_attempts_answer_is_dropped,
    pruning_forgets_old_events_only_once_no_delivery_needs_them,
    the_inbox_migration_keeps_the_log_and_numbers_what_was_waiting,
    the_packed_inbox_keeps_what_was_waiting_and_takes_a_row_per_transaction,
    the_cursor_migration_starts_endpoints_at_the_head_and_keeps_what_was_under_way,
    events_written_before_the_envelope_columns_read_back_as_they_were,
    an_event_behind_a_dead_letter_joins_it_when_read,
    a_paused_endpoint_keeps_what_it_had_not_read_and_resumes_at_the_head,
    a_410_buries_what_the_endpoint_had_not_read_and_replay_sends_it,
    an_endpoint_of_one_campaign_reads_past_others_traffic_in_one_claim
);

fn settings() -> WebhookSettings {
    WebhookSettings {
        timeout: Duration::from_secs(5),
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        retry_window: Duration::from_secs(60),
        claim_batch: 16,
        poll: Duration::from_millis(20),
        // The receivers of these tests listen on loopback.
        allow_private_targets: Some(true),
        ..WebhookSettings::default()
    }
}

/// A replica's deliverer and sequencer on its own connection pool, until `stop`.
async fn replica(url: &str, stop: tokio::sync::watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
    let s = dialer_testkit::fixtures::open(url).await;
    let wake = Arc::new(tokio::sync::Notify::new());
    let summary = Arc::new(Summary::default());
    let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let d = Deliverer {
        store: s.clone(),
        settings: settings(),
        client: Deliverer::client(&settings()).expect("client"),
        summary: summary.clone(),
        secrets: Default::default(),
    };
    vec![
        tokio::spawn(run_sequencer(s, Duration::from_millis(20), wake.clone(), None, summary, until(stop.clone()))),
        tokio::spawn(d.run(wake, until(stop))),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_an_endpoints_concurrency_and_send_each_event_once() {
    let url = dialer_testkit::postgres_database();
    let s = dialer_testkit::fixtures::open(&url).await;
    let rx = Receiver::start(Mode::Slow(Duration::from_millis(20)), 1);
    let req = CreateWebhookRequest {
        url: rx.url("/r"),
        max_concurrency: Some(4),
        rate_per_sec: Some(10_000),
        ..Default::default()
    };
    s.create_webhook(&req.validate().expect("valid"), "secret-0123456789abcdef").await.expect("endpoint");
    let c = campaign(&s, "replicas", 100, 100, json!([])).await;
    s.transition(c.id, CampaignAction::Start).await.expect("started");
    let claimed = s.claim_due(c.id, 100, chrono::Utc::now()).await.expect("claimed");
    let outcomes: Vec<_> = claimed
        .iter()
        .flat_map(|k| [event(c.id, k, EventKind::Started), event(c.id, k, EventKind::Completed)])
        .collect();
    s.record_events(&outcomes, &mut || 0.5, None).await.expect("recorded");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = replica(&url, stopped.clone()).await;
    tasks.extend(replica(&url, stopped).await);
    // 100 calls × 4 events + the start.
    let want = 401;
    let t0 = std::time::Instant::now();
    while rx.count() < want && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let ids: Vec<String> = rx
        .received()
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).expect("json")["id"].to_string())
        .collect();
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), distinct.len()), (want, want), "each event sent once by the two replicas together");
    assert!(rx.peak_concurrency() <= 4, "the endpoint's concurrency held across replicas: {}", rx.peak_concurrency());
    assert!(rx.peak_concurrency() >= 2, "both replicas' sends overlapped: {}", rx.peak_concurrency());
    assert_eq!(s.delivery_counts().await.expect("counts").pending, 0);
}

async fn call(
    router: &axum::Router,
    method: Method,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = match body {
        Some(v) => b.header(header::CONTENT_TYPE, "application/json").body(Body::from(v.to_string())),
        None => b.body(Body::empty()),
    };
    let resp = router.clone().oneshot(req.expect("request")).await.expect("answer");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn the_webhook_api_refuses_bad_input_naming_the_field(b: Backend) {
    let (s, _dir) = store(b).await;
    let router = dialer_control_plane::app(&Default::default(), s.clone());
    let post = |body: Value| call(&router, Method::POST, "/api/v1/webhooks", Some(body), &[]);
    for (body, field) in [
        (json!({"url": "ftp://x"}), "url"),
        (json!({"url": "http://h", "event_types": ["call.done"]}), "event_types[0]"),
        (json!({"url": "http://h", "secret": "short"}), "secret"),
        (json!({"url": "http://h", "max_concurrency": 0}), "max_concurrency"),
        (json!({"url": "http://h", "campaign_id": uuid::Uuid::now_v7()}), "campaign_id"),
        (json!({"url": "http://h", "colour": "red"}), "colour"),
        (json!({"url": "http://:8080/hook"}), "url"),
        (json!({"url": "http://example.com:80a/hook"}), "url"),
        (json!({"url": "http://169.254.169.254/latest/meta-data/"}), "url"),
        (json!({"url": "http://localhost:8080/hook"}), "url"),
        (json!({"url": "http://[::1]:8080/hook"}), "url"),
    ] {
        let (st, v) = post(body.clone()).await;
        assert!(st.is_client_error(), "{body}: {st} {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
    let (st, w) = post(json!({"url": "https://example.com/hook", "event_types": ["call.completed"]})).await;
    assert_eq!(st, StatusCode::CREATED, "{w}");
    assert!(w["secret"].as_str().is_some_and(|s| s.starts_with("whsec_")), "a generated secret, shown once: {w}");
    let id = w["id"].as_str().expect("id");
    let (st, got) = call(&router, Method::GET, &format!("/api/v1/webhooks/{id}"), None, &[]).await;
    assert_eq!((st, got.get("secret")), (StatusCode::OK, None), "no secret on a read: {got}");
    let (st, v) =
        call(&router, Method::PATCH, &format!("/api/v1/webhooks/{id}"), Some(json!({"rate_per_sec": 0})), &[]).await;
    assert_eq!((st, v["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("rate_per_sec")), "{v}");
    let (st, v) =
        call(&router, Method::PATCH, &format!("/api/v1/webhooks/{id}"), Some(json!({"url": "http://other/h"})), &[])
            .await;
    assert_eq!(
        (st, v["url"].as_str(), v["event_types"].clone()),
        (StatusCode::OK, Some("http://other/h"), json!(["call.completed"]))
    );
    let (st, v) =
        call(&router, Method::GET, &format!("/api/v1/webhooks/{id}/dead-letters?after_seq=-1"), None, &[]).await;
    assert_eq!((st, v["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("after_seq")), "{v}");
    let (st, v) = call(
        &router,
        Method::POST,
        &format!("/api/v1/webhooks/{id}/dead-letters/replay"),
        Some(json!({"seqs": "all"})),
        &[],
    )
    .await;
    assert!(st.is_client_error() && v["error"]["field"] == "seqs", "{st} {v}");
    let (st, v) = call(&router, Method::GET, "/api/v1/events", None, &[("last-event-id", "abc")]).await;
    assert_eq!((st, v["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("Last-Event-ID")), "{v}");
    let (st, v) =
        call(&router, Method::GET, &format!("/api/v1/campaigns/{}/events", uuid::Uuid::now_v7()), None, &[]).await;
    assert!(st.is_client_error(), "{st} {v}");
    assert_eq!(
        call(&router, Method::DELETE, &format!("/api/v1/webhooks/{id}"), None, &[]).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(call(&router, Method::GET, &format!("/api/v1/webhooks/{id}"), None, &[]).await.0, StatusCode::NOT_FOUND);
}

/// Deliveries under the default policy: endpoints on loopback (registered before the policy,
/// or a name re-pointed since: nothing stops them in the store) get nothing, by address or by
/// name; the same endpoints under `allow_private_targets` get every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_nothing_is_delivered_to_loopback_by_address_or_by_name() {
    let url = dialer_testkit::postgres_database();
    let s = dialer_testkit::fixtures::open(&url).await;
    let (by_address, by_name) = (Receiver::start(Mode::Ok, 1), Receiver::start(Mode::Ok, 2));
    for u in [by_address.url("/hook"), by_name.url("/hook").replace("127.0.0.1", "localhost")] {
        let req = CreateWebhookRequest { url: u, rate_per_sec: Some(10_000), ..Default::default() };
        s.create_webhook(&req.validate().expect("valid"), "secret-0123456789abcdef").await.expect("endpoint");
    }
    let c = campaign(&s, "targets", 1, 1, json!([])).await;
    s.transition(c.id, CampaignAction::Start).await.expect("started");
    let run = |allow: Option<bool>| {
        let s = s.clone();
        async move {
            let settings = WebhookSettings { allow_private_targets: allow, ..settings() };
            let summary = Arc::new(Summary::default());
            let wake = Arc::new(tokio::sync::Notify::new());
            let d = Deliverer {
                store: s.clone(),
                settings: settings.clone(),
                client: Deliverer::client(&settings).expect("client"),
                summary: summary.clone(),
                secrets: Default::default(),
            };
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|v| *v).await;
            };
            let seq = tokio::spawn(run_sequencer(
                s,
                Duration::from_millis(20),
                wake.clone(),
                None,
                summary.clone(),
                until(stopped.clone()),
            ));
            let del = tokio::spawn(d.run(wake, until(stopped)));
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let _ = stop.send(true);
            let _ = (seq.await, del.await);
            summary
        }
    };
    let denied = run(None).await;
    assert_eq!((by_address.count(), by_name.count()), (0, 0), "nothing reached the loopback receivers");
    let retried = denied.retried.load(std::sync::atomic::Ordering::Relaxed);
    assert!(retried >= 2, "each endpoint's delivery failed and waits to be retried: {retried}");
    assert_eq!(denied.delivered.load(std::sync::atomic::Ordering::Relaxed), 0);
    // Allowed: the waiting deliveries go to both, once their retry is due.
    run(Some(true)).await;
    assert!(by_address.count() >= 1 && by_name.count() >= 1, "{} {}", by_address.count(), by_name.count());
}

/// `api.max_webhooks`: the next endpoint is refused with the limit named, and nothing written.
async fn endpoints_over_the_limit_are_refused_and_nothing_is_written(b: Backend) {
    let (s, _dir) = store(b).await;
    let api = dialer_control_plane::ApiSettings { max_webhooks: 2, ..Default::default() };
    let router = dialer_control_plane::app(&api, s.clone());
    for i in 0..2 {
        let (st, w) = call(
            &router,
            Method::POST,
            "/api/v1/webhooks",
            Some(json!({"url": format!("https://example.com/{i}")})),
            &[],
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{w}");
    }
    let (st, v) =
        call(&router, Method::POST, "/api/v1/webhooks", Some(json!({"url": "https://example.com/2"})), &[]).await;
    assert_eq!((st, v["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("too_many_webhooks")), "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("api.max_webhooks")), "{v}");
    assert_eq!(s.list_webhooks().await.expect("list").len(), 2, "nothing written");
}

mod api {
    use super::*;
    both_stores!(
        the_webhook_api_refuses_bad_input_naming_the_field,
        endpoints_over_the_limit_are_refused_and_nothing_is_written
    );
}
