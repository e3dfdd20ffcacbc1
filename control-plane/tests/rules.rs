//! The recipient's calling rules against both stores: with a fixed clock, numbers in New York,
//! Chicago, Phoenix, Los Angeles and Honolulu are dispatched only inside their own 08:00–21:00,
//! the day before and the day of the spring DST change (each city's first dispatch moves by the
//! hour its clocks moved, and only theirs); do-not-call entries (global, per campaign, expired)
//! skip exactly their numbers; a contact-attempt limit holds a number across two campaigns, and
//! one claim for many campaigns screens each by its own rules and lists.

use std::collections::HashMap;

use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use dialer_api::campaigns::CreateCampaignRequest;
use dialer_api::views::Campaign;
use dialer_bus::MemoryBus;
use dialer_control_plane::Store;
use dialer_control_plane::scheduler::{ManualClock, Scheduler};
use dialer_domain::campaign::CampaignAction;
use dialer_domain::dnc::{DncEntry, GLOBAL_LIST};
use dialer_domain::messages::{DispatchKind, EventKind};
use dialer_domain::rules::CallingRules;
use dialer_store::ClaimedCall;
use serde_json::json;

use dialer_testkit::both_stores;
use dialer_testkit::fixtures::{Backend, event, store};

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("instant").with_timezone(&Utc)
}

const CITIES: [(&str, &str, Tz); 5] = [
    ("212", "New York", chrono_tz::America::New_York),
    ("312", "Chicago", chrono_tz::America::Chicago),
    ("602", "Phoenix", chrono_tz::America::Phoenix),
    ("213", "Los Angeles", chrono_tz::America::Los_Angeles),
    ("808", "Honolulu", chrono_tz::Pacific::Honolulu),
];

async fn create(s: &Store, name: &str, numbers: &[String], rules: Option<serde_json::Value>) -> Campaign {
    let targets: Vec<_> = numbers.iter().map(|n| json!({"phone_number": n})).collect();
    let mut body = json!({"name": name, "max_concurrent_calls": 8, "targets": targets});
    if let Some(r) = rules {
        body["calling_rules"] = r;
    }
    let req: CreateCampaignRequest = serde_json::from_value(body).expect("request");
    let c = s.create_campaign(&req.validate(1000).expect("valid")).await.expect("created");
    s.transition(c.id, CampaignAction::Start).await.expect("start");
    c
}

fn city_numbers(tag: u32) -> Vec<String> {
    CITIES.iter().flat_map(|(area, _, _)| (0..8).map(move |i| format!("+1{area}555{tag}{i:03}"))).collect()
}

fn tz_of(number: &str) -> (&'static str, Tz) {
    let (_, city, tz) = CITIES.iter().find(|(area, _, _)| number[2..5] == **area).expect("a city's number");
    (city, *tz)
}

/// Steps a scheduler (default calling rules) every 15 minutes over `hours` from `from`,
/// completing each dispatched call at once; returns each city's first dispatch instant and
/// checks every dispatch against its number's window and its deadline against the close.
async fn sweep(s: &Store, from: DateTime<Utc>, hours: i64) -> HashMap<&'static str, DateTime<Utc>> {
    let clock = ManualClock::new(from);
    let mut ends = MemoryBus::open(1, 4, 100_000, 1000);
    let bus = ends.dispatch.0.clone();
    let sched = Scheduler {
        clock: clock.clone(),
        calling_rules: CallingRules::default(),
        ..dialer_testkit::fixtures::scheduler(s.clone(), dialer_bus::dispatch::MemoryDispatchSink(bus))
    };
    let mut first: HashMap<&'static str, DateTime<Utc>> = HashMap::new();
    for step in 0..(hours * 4) {
        let now = from + ChronoDuration::minutes(15 * step);
        clock.set(now);
        sched.tick().await.expect("tick");
        let mut events = Vec::new();
        while let Ok(d) = ends.shard_sources[0].0.try_recv() {
            let m = d.msg.expect("readable");
            if m.kind == DispatchKind::Suppress {
                continue;
            }
            let (city, tz) = tz_of(&m.phone_number);
            let local = now.with_timezone(&tz);
            assert!((8..21).contains(&local.hour()), "{city} dialled at {local} ({now})");
            let close = tz
                .from_local_datetime(&local.date_naive().and_hms_opt(21, 0, 0).expect("21:00"))
                .earliest()
                .expect("close");
            assert!(m.deadline_ms as i64 <= close.timestamp_millis(), "{city}: deadline past 21:00 local");
            first.entry(city).or_insert(now);
            let k = ClaimedCall {
                id: m.call_id,
                phone_number: m.phone_number.clone(),
                attempt: m.attempt,
                zone: String::new(),
                event_seq: 0,
                deadline: now,
            };
            events.push(event(m.campaign_id, &k, EventKind::Started));
            events.push(event(m.campaign_id, &k, EventKind::Completed));
        }
        s.record_events(&events, &mut || 0.5, None).await.expect("recorded");
    }
    first
}

async fn each_city_is_dialled_only_in_its_own_window_across_the_dst_change(b: Backend) {
    let (s, _dir) = store(b).await;
    // Saturday 2026-03-07, standard time everywhere.
    let before = create(&s, "before-dst", &city_numbers(1), None).await;
    // From 07:00Z, when every one of them is closed (Honolulu closes at 07:00Z).
    let first = sweep(&s, utc("2026-03-07T07:00:00Z"), 24).await;
    let want_before = [
        ("New York", "13:00"),
        ("Chicago", "14:00"),
        ("Phoenix", "15:00"),
        ("Los Angeles", "16:00"),
        ("Honolulu", "18:00"),
    ];
    for (city, hhmm) in want_before {
        assert_eq!(first[city], utc(&format!("2026-03-07T{hhmm}:00Z")), "{city}, the day before");
    }
    let st = s.stats(before.id).await.expect("stats");
    assert_eq!((st.completed_calls, st.pending_calls), (40, 0), "every call dialled: {st:?}");
    // Sunday 2026-03-08: New York, Chicago and Los Angeles spring forward; Phoenix and Honolulu do not.
    let on = create(&s, "dst-day", &city_numbers(2), None).await;
    // New York changes at 07:00Z, Chicago at 08:00Z, Los Angeles at 10:00Z.
    let first = sweep(&s, utc("2026-03-08T07:00:00Z"), 24).await;
    let want_on = [
        ("New York", "12:00"),
        ("Chicago", "13:00"),
        ("Phoenix", "15:00"),
        ("Los Angeles", "15:00"),
        ("Honolulu", "18:00"),
    ];
    for (city, hhmm) in want_on {
        assert_eq!(first[city], utc(&format!("2026-03-08T{hhmm}:00Z")), "{city}, the day of the change");
    }
    let st = s.stats(on.id).await.expect("stats");
    assert_eq!((st.completed_calls, st.pending_calls), (40, 0), "every call dialled: {st:?}");
    assert_eq!(st, s.recount_stats(on.id).await.expect("recount"));
}

async fn do_not_call_entries_skip_exactly_their_numbers(b: Backend) {
    let (s, _dir) = store(b).await;
    let numbers: Vec<String> = (0..5).map(|i| format!("+1212555{i:04}")).collect();
    let c = create(&s, "dnc", &numbers, Some(json!({"enabled": false}))).await;
    let entry = |n: &str, expires: Option<DateTime<Utc>>| DncEntry {
        phone_number: n.into(),
        reason: Some("opt_out".into()),
        source: Some("test".into()),
        expires_at: expires,
    };
    s.dnc_add(GLOBAL_LIST, &[entry(&numbers[0], None)], true).await.expect("global");
    let later = Utc::now() + ChronoDuration::days(1);
    let gone = Utc::now() - ChronoDuration::days(1);
    s.dnc_add(c.id, &[entry(&numbers[1], Some(later)), entry(&numbers[2], Some(gone))], false)
        .await
        .expect("campaign list");
    assert_eq!(s.dnc_check(c.id, &numbers[0]).await.expect("check"), Some(GLOBAL_LIST));
    assert_eq!(s.dnc_check(c.id, &numbers[1]).await.expect("check"), Some(c.id));
    assert_eq!(s.dnc_check(c.id, &numbers[2]).await.expect("check"), None, "expired");
    let dialled: Vec<String> =
        s.claim_due(c.id, 10, Utc::now()).await.expect("claim").into_iter().map(|k| k.phone_number).collect();
    assert_eq!(dialled.len(), 3);
    assert!(!dialled.contains(&numbers[0]) && !dialled.contains(&numbers[1]), "{dialled:?}");
    let q = dialer_store::CallQuery { limit: 100, ..Default::default() };
    for call in s.list_calls(c.id, &q).await.expect("calls") {
        let skipped = call.phone_number == numbers[0] || call.phone_number == numbers[1];
        assert_eq!(call.status.as_str(), if skipped { "skipped" } else { "queued" }, "{}", call.phone_number);
        if skipped {
            assert_eq!(call.last_error.as_deref(), Some("dnc"));
            let detail = s.get_call(call.id).await.expect("call");
            assert_eq!(detail.attempts.len(), 1);
            assert_eq!(
                (detail.attempts[0].outcome.as_str(), detail.attempts[0].reason.as_deref()),
                ("skipped", Some("dnc"))
            );
        }
    }
    let st = s.stats(c.id).await.expect("stats");
    assert_eq!((st.skipped_calls, st.skipped_by_reason.dnc, st.queued_calls, st.attempts_total), (2, 2, 3, 3));
    assert_eq!(st, s.recount_stats(c.id).await.expect("recount"));
    // Announced entries are handed out once.
    let pending = s.unannounced(10).await.expect("unannounced");
    assert_eq!(pending.iter().map(|p| p.phone_number.as_str()).collect::<Vec<_>>(), vec![numbers[0].as_str()]);
    s.mark_announced(&pending).await.expect("marked");
    assert!(s.unannounced(10).await.expect("unannounced").is_empty());
    assert!(s.dnc_remove(GLOBAL_LIST, &numbers[0]).await.expect("removed"));
    assert_eq!(s.dnc_check(c.id, &numbers[0]).await.expect("check"), None);
}

async fn an_attempt_limit_holds_a_number_across_two_campaigns(b: Backend) {
    let (s, _dir) = store(b).await;
    let numbers: Vec<String> = (0..3).map(|i| format!("+1212555{i:04}")).collect();
    let a = create(&s, "limit-a", &numbers, None).await;
    let bb = create(&s, "limit-b", &numbers, None).await;
    let rules = CallingRules { enabled: false, max_attempts_per_24h: Some(1), ..CallingRules::default() }
        .compile("r")
        .expect("rules");
    let claim = |id, at| {
        let s = s.clone();
        let rules = rules.clone();
        async move {
            let deadline = at + ChronoDuration::minutes(5);
            let zones: Vec<_> = s.pending_zones(id).await.expect("zones").into_iter().map(|z| (z, deadline)).collect();
            s.claim_calls(id, 10, at, &zones, &rules).await.expect("claim")
        }
    };
    let t0 = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    assert_eq!(claim(a.id, t0).await.dial.len(), 3, "campaign A dials each number once");
    let b1 = claim(bb.id, t0 + ChronoDuration::hours(1)).await;
    assert_eq!((b1.dial.len(), b1.held.len()), (0, 3), "campaign B is held: each number had its one attempt");
    for (_, until, _) in &b1.held {
        assert_eq!(*until, t0 + ChronoDuration::hours(24));
    }
    // Each held call keeps the rule it waits by, which the API shows as its hold.
    let query = dialer_store::CallQuery { after: None, status: None, limit: 10 };
    for call in s.list_calls(bb.id, &query).await.expect("calls") {
        assert_eq!(call.held_for.as_deref(), Some("attempt_limit"), "{call:?}");
        assert_eq!(call.next_attempt_at, Some(t0 + ChronoDuration::hours(24)));
    }
    let st = s.stats(bb.id).await.expect("stats");
    assert_eq!((st.pending_calls, st.attempts_total, st.failed_calls), (3, 0, 0), "held, not failed: {st:?}");
    assert_eq!(st, s.recount_stats(bb.id).await.expect("recount"));
    assert!(claim(bb.id, t0 + ChronoDuration::hours(23)).await.dial.is_empty(), "not due before 24 hours");
    assert_eq!(claim(bb.id, t0 + ChronoDuration::hours(24) + ChronoDuration::seconds(1)).await.dial.len(), 3);
    // 26 hours on, A's three attempts are older than any limit looks back (25 h), B's are not;
    // each prune takes at most its bound.
    let later = t0 + ChronoDuration::hours(26);
    assert_eq!(s.prune_attempts(later, 2).await.expect("prune"), 2);
    assert_eq!(s.prune_attempts(later, 2).await.expect("prune"), 1);
    assert_eq!(s.prune_attempts(later, 2).await.expect("prune"), 0, "B's attempts are kept");
}

/// One claim for several campaigns (the scheduler's group) gives each what a claim of its own
/// would, in the jobs' order: its budget, its own do-not-call list and the global one, its own
/// attempt limit counting the attempts of campaigns claimed before it in the same claim; a
/// campaign paused since it was listed gets nothing.
async fn one_claim_for_many_campaigns_screens_each_by_its_own_rules_and_lists(b: Backend) {
    let (s, _dir) = store(b).await;
    let numbers: Vec<String> = (0..4).map(|i| format!("+1212555{i:04}")).collect();
    let shared: Vec<String> = (4..7).map(|i| format!("+1212555{i:04}")).collect();
    let off = Some(json!({"enabled": false}));
    let a = create(&s, "many-a", &numbers, off.clone()).await;
    let bb = create(&s, "many-b", &numbers, off.clone()).await;
    let paused = create(&s, "many-paused", &numbers, off.clone()).await;
    s.transition(paused.id, CampaignAction::Pause).await.expect("pause");
    let d = create(&s, "many-d", &shared, None).await;
    let e = create(&s, "many-e", &shared, None).await;
    let entry = |n: &str| DncEntry { phone_number: n.into(), reason: None, source: None, expires_at: None };
    s.dnc_add(GLOBAL_LIST, &[entry(&numbers[0])], false).await.expect("global");
    s.dnc_add(a.id, &[entry(&numbers[1])], false).await.expect("A's list");
    let rules_off = CallingRules::off().compile("r").expect("rules");
    let limited = CallingRules { enabled: false, max_attempts_per_24h: Some(1), ..CallingRules::default() }
        .compile("r")
        .expect("rules");
    let at = Utc::now();
    let ids = [a.id, bb.id, paused.id, d.id, e.id];
    let zones: Vec<Vec<(String, DateTime<Utc>)>> = s
        .pending_zones_of(&ids)
        .await
        .expect("zones")
        .into_iter()
        .map(|zs| zs.into_iter().map(|z| (z, at + ChronoDuration::minutes(5))).collect())
        .collect();
    assert!(zones.iter().all(|z| z.len() == 1), "one zone each: {zones:?}");
    let job = |i: usize, n, rules| dialer_store::ClaimJob { campaign_id: ids[i], n, zones: &zones[i], rules };
    let jobs = [
        job(0, 10, &rules_off),
        job(1, 2, &rules_off),
        job(2, 10, &rules_off),
        job(3, 10, &limited),
        job(4, 10, &limited),
    ];
    let got = s.claim_many(&jobs, at).await.expect("claim");
    let phones = |cs: &[ClaimedCall]| cs.iter().map(|c| c.phone_number.clone()).collect::<Vec<_>>();
    let skipped =
        |i: usize| got[i].skipped.iter().map(|(c, r)| (c.phone_number.clone(), r.as_str())).collect::<Vec<_>>();
    assert_eq!(phones(&got[0].dial), numbers[2..].to_vec(), "A: not its own list's nor the global one's");
    assert_eq!(skipped(0), vec![(numbers[0].clone(), "dnc"), (numbers[1].clone(), "dnc")]);
    assert_eq!(phones(&got[1].dial), vec![numbers[1].clone()], "B: its budget of 2, A's list not its own");
    assert_eq!(skipped(1), vec![(numbers[0].clone(), "dnc")]);
    assert_eq!(got[2], dialer_store::Screened::default(), "the paused campaign");
    assert_eq!(phones(&got[3].dial), shared, "D dials each number once");
    assert_eq!((got[4].dial.len(), got[4].held.len()), (0, 3), "E is held by D's attempts in the same claim");
    let paused_stats = s.stats(paused.id).await.expect("stats");
    assert_eq!((paused_stats.pending_calls, paused_stats.queued_calls), (4, 0));
    for (i, (queued, skipped, pending)) in
        [(2, 2, 0), (1, 1, 2), (0, 0, 4), (3, 0, 0), (0, 0, 3)].into_iter().enumerate()
    {
        let st = s.stats(ids[i]).await.expect("stats");
        assert_eq!(
            (st.queued_calls, st.skipped_calls, st.pending_calls),
            (queued, skipped, pending),
            "campaign {i}: {st:?}"
        );
        assert_eq!(st, s.recount_stats(ids[i]).await.expect("recount"), "campaign {i}");
    }
}

both_stores!(
    each_city_is_dialled_only_in_its_own_window_across_the_dst_change,
    do_not_call_entries_skip_exactly_their_numbers,
    an_attempt_limit_holds_a_number_across_two_campaigns,
    one_claim_for_many_campaigns_screens_each_by_its_own_rules_and_lists,
);
