use chrono::{TimeZone, Utc};
use uuid::Uuid;

use super::*;
use serde_json::json;

fn at(s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + s, 0).single().expect("a time")
}

#[test]
fn a_body_carries_id_type_sequence_and_the_call_only_for_call_events() {
    let (campaign, call) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let e = NewEvent::new(EventType::CallFailed, campaign, call, 3, at(0), json!({"outcome": "busy"}));
    let v: Value = serde_json::from_str(&e.body()).expect("JSON");
    assert_eq!(v["id"], json!(e.id));
    assert_eq!((v["type"].as_str(), v["sequence"].as_u64()), (Some("call.failed"), Some(3)));
    assert_eq!(v["call_id"], json!(call));
    assert_eq!(v["data"]["outcome"], "busy");
    let c = NewEvent::new(EventType::CampaignCompleted, campaign, campaign, 1, at(0), json!({}));
    let v: Value = serde_json::from_str(&c.body()).expect("JSON");
    assert!(v.get("call_id").is_none(), "a campaign's event names no call");
    assert_ne!(e.id, NewEvent::new(EventType::CallFailed, campaign, call, 3, at(0), json!({})).id, "ids are unique");
}

#[test]
fn the_envelope_is_the_bytes_serde_json_writes_for_the_whole_object() {
    let (campaign, call) = (Uuid::from_u128(7), Uuid::from_u128(8));
    let at =
        Utc.timestamp_millis_opt(1_700_000_000_123).single().expect("a time") + chrono::Duration::microseconds(456);
    let data = json!({"outcome": "busy", "attempt": 2, "reason": "a \"quoted\" reason"});
    for stream in [call, campaign] {
        let e = NewEvent::new(EventType::CallFailed, campaign, stream, 5, at, data.clone());
        let mut whole = json!({"id": e.id, "type": "call.failed", "sequence": 5,
            "created_at": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "campaign_id": campaign, "data": data});
        if stream != campaign {
            whole["call_id"] = json!(call);
        }
        assert_eq!(e.body(), whole.to_string(), "as the body was when stored whole");
    }
}

#[test]
fn every_type_parses_back() {
    for t in EventType::ALL {
        assert_eq!(EventType::parse(t.as_str()), Some(t));
    }
    assert_eq!(EventType::parse("call.exploded"), None);
}

#[test]
fn a_subscription_filters_by_type_and_campaign() {
    let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let all = Subscription { types: vec![], campaign: None };
    assert!(all.wants(EventType::CallQueued, a));
    let some = Subscription { types: vec![EventType::CallCompleted], campaign: Some(a) };
    assert!(some.wants(EventType::CallCompleted, a));
    assert!(!some.wants(EventType::CallCompleted, b), "another campaign");
    assert!(!some.wants(EventType::CallFailed, a), "another type");
}

#[test]
fn a_batch_is_numbered_in_arrival_order_but_each_stream_in_its_own_order() {
    let (x, y) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let u = |stream, stream_seq| Unsequenced { stream, stream_seq };
    // x's 2 arrived before its 1 (equal clocks); y is in between.
    let batch = [u(x, 2), u(y, 5), u(x, 1), u(x, 3)];
    let order = log_order(&batch);
    assert_eq!(order, vec![2, 1, 0, 3]);
    let xs: Vec<u32> = order.iter().filter(|&&i| batch[i].stream == x).map(|&i| batch[i].stream_seq).collect();
    assert_eq!(xs, vec![1, 2, 3]);
}

#[test]
fn delays_grow_exponentially_with_jitter_up_to_the_cap() {
    let s =
        RetrySchedule { base: Duration::from_secs(1), max: Duration::from_secs(60), window: Duration::from_secs(3600) };
    assert_eq!(s.delay_with(1, 0.0), Duration::from_millis(500));
    assert_eq!(s.delay_with(1, 1.0), Duration::from_secs(1));
    assert_eq!(s.delay_with(4, 1.0), Duration::from_secs(8));
    assert_eq!(s.delay_with(30, 1.0), Duration::from_secs(60), "capped");
    assert_eq!(s.delay_with(200, 0.0), Duration::from_secs(30), "no overflow");
}

#[test]
fn answers_decide_delivered_retry_dead_or_gone() {
    let s =
        RetrySchedule { base: Duration::from_secs(1), max: Duration::from_secs(60), window: Duration::from_secs(100) };
    assert_eq!(s.next(&Answer::Status(204), 1, at(0), at(0), 0.5), Next::Delivered);
    assert_eq!(s.next(&Answer::Status(410), 1, at(0), at(0), 0.5), Next::Gone);
    for a in [
        Answer::Status(500),
        Answer::Status(429),
        Answer::Status(404),
        Answer::Timeout,
        Answer::Connection("reset".into()),
    ] {
        assert_eq!(s.next(&a, 1, at(0), at(0), 1.0), Next::Retry(at(1)), "{a:?} is retried");
    }
    assert_eq!(
        s.next(&Answer::Status(500), 9, at(0), at(90), 1.0),
        Next::Retry(at(100)),
        "the last try at the window's end"
    );
    assert_eq!(s.next(&Answer::Status(500), 10, at(0), at(100), 1.0), Next::Dead);
    assert_eq!(Answer::Status(503).label(), "503");
    assert_eq!(Answer::Timeout.error().as_deref(), Some("timeout"));
    assert_eq!(Answer::Status(200).error(), None);
}

mod take_from_log {
    use std::collections::HashSet;

    use super::*;

    fn ids() -> [Uuid; 4] {
        [Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3), Uuid::from_u128(4)]
    }

    fn unread(events: &[(i64, Uuid, bool)]) -> Vec<Unread> {
        events.iter().map(|&(seq, stream, wanted)| Unread { seq, stream, wanted }).collect()
    }

    #[test]
    fn a_streams_later_events_wait_behind_the_one_leased() {
        let [a, b, ..] = ids();
        let got =
            take_from_log(&unread(&[(1, a, true), (2, b, true), (3, a, true)]), &HashSet::new(), &HashSet::new(), 10);
        assert_eq!(got, FromLog { leased: vec![1, 2], queued: vec![3], buried: vec![], cursor: Some(3) });
    }

    #[test]
    fn a_busy_stream_queues_a_dead_one_buries_and_unwanted_events_are_passed_over() {
        let [a, b, c, d] = ids();
        let events = unread(&[(5, a, true), (6, b, true), (7, c, false), (8, d, true)]);
        let got = take_from_log(&events, &HashSet::from([a]), &HashSet::from([b]), 10);
        assert_eq!(got, FromLog { leased: vec![8], queued: vec![5], buried: vec![6], cursor: Some(8) });
    }

    #[test]
    fn the_cursor_stops_before_the_first_event_beyond_capacity() {
        let [a, b, c, _] = ids();
        // The third stream's event needs a lease and none is left: it and what follows stay unread.
        let events = unread(&[(1, a, true), (2, a, true), (3, b, true), (4, c, true), (5, a, true)]);
        let got = take_from_log(&events, &HashSet::new(), &HashSet::new(), 2);
        assert_eq!(got, FromLog { leased: vec![1, 3], queued: vec![2], buried: vec![], cursor: Some(3) });
        let none = take_from_log(&events, &HashSet::new(), &HashSet::new(), 0);
        assert_eq!(none, FromLog::default(), "nothing handled, the cursor stays");
    }

    #[test]
    fn unwanted_events_alone_still_move_the_cursor() {
        let [a, ..] = ids();
        let got = take_from_log(&unread(&[(1, a, false), (2, a, false)]), &HashSet::new(), &HashSet::new(), 0);
        assert_eq!(got, FromLog { cursor: Some(2), ..Default::default() });
    }
}
