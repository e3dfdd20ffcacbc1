use super::*;
use crate::recipient::zone_key;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("test instant").with_timezone(&Utc)
}

fn key(n: &str) -> String {
    zone_key(n, &serde_json::json!({}))
}

fn rules() -> Rules {
    CallingRules::default().compile("calling_rules").expect("defaults compile")
}

fn open(r: &Rules, n: &str, at: &str) -> bool {
    matches!(r.gate(&key(n), utc(at)), Gate::Open { .. })
}

const NY: &str = "+12125550100";
const CHICAGO: &str = "+13125550100";
const PHOENIX: &str = "+16025550100";
const LA: &str = "+12135550100";
const HONOLULU: &str = "+18085550100";

#[test]
fn each_city_opens_at_eight_local_the_day_before_and_the_day_of_the_spring_dst_change() {
    let r = rules();
    // Saturday 2026-03-07, standard time everywhere.
    for (n, closed, opened) in [
        (NY, "2026-03-07T12:59:00Z", "2026-03-07T13:00:00Z"),
        (CHICAGO, "2026-03-07T13:59:00Z", "2026-03-07T14:00:00Z"),
        (PHOENIX, "2026-03-07T14:59:00Z", "2026-03-07T15:00:00Z"),
        (LA, "2026-03-07T15:59:00Z", "2026-03-07T16:00:00Z"),
        (HONOLULU, "2026-03-07T17:59:00Z", "2026-03-07T18:00:00Z"),
    ] {
        assert!(!open(&r, n, closed), "{n} at {closed}");
        assert!(open(&r, n, opened), "{n} at {opened}");
    }
    // Sunday 2026-03-08: the mainland springs forward (not Arizona, not Hawaii): an hour earlier in UTC.
    for (n, closed, opened) in [
        (NY, "2026-03-08T11:59:00Z", "2026-03-08T12:00:00Z"),
        (CHICAGO, "2026-03-08T12:59:00Z", "2026-03-08T13:00:00Z"),
        (PHOENIX, "2026-03-08T14:59:00Z", "2026-03-08T15:00:00Z"),
        (LA, "2026-03-08T14:59:00Z", "2026-03-08T15:00:00Z"),
        (HONOLULU, "2026-03-08T17:59:00Z", "2026-03-08T18:00:00Z"),
    ] {
        assert!(!open(&r, n, closed), "{n} at {closed}");
        assert!(open(&r, n, opened), "{n} at {opened}");
    }
}

#[test]
fn each_city_closes_at_nine_local_and_says_so_in_advance() {
    let r = rules();
    for (n, at, until) in [
        (NY, "2026-03-08T20:00:00Z", "2026-03-09T01:00:00Z"),
        (CHICAGO, "2026-03-08T20:00:00Z", "2026-03-09T02:00:00Z"),
        (PHOENIX, "2026-03-08T20:00:00Z", "2026-03-09T04:00:00Z"),
        (LA, "2026-03-08T20:00:00Z", "2026-03-09T04:00:00Z"),
        (HONOLULU, "2026-03-08T20:00:00Z", "2026-03-09T07:00:00Z"),
        // Fall back (2026-11-01): New York's 21:00 is 02:00Z again.
        (NY, "2026-11-01T20:00:00Z", "2026-11-02T02:00:00Z"),
    ] {
        assert_eq!(r.gate(&key(n), utc(at)), Gate::Open { until: Some(utc(until)) }, "{n} at {at}");
        assert_eq!(r.gate(&key(n), utc(until)), Gate::Closed(HoldRule::Window), "{n} at {until}");
    }
}

#[test]
fn a_sweep_across_both_dst_changes_opens_exactly_between_eight_and_nine_local() {
    let r = rules();
    for (n, tz) in [
        (NY, chrono_tz::America::New_York),
        (CHICAGO, chrono_tz::America::Chicago),
        (PHOENIX, chrono_tz::America::Phoenix),
        (LA, chrono_tz::America::Los_Angeles),
        (HONOLULU, chrono_tz::Pacific::Honolulu),
    ] {
        for start in [utc("2026-03-07T00:00:00Z"), utc("2026-10-31T00:00:00Z")] {
            for step in 0..(72 * 4) {
                let t = start + ChronoDuration::minutes(15 * step);
                let hour = t.with_timezone(&tz).hour();
                let want = (8..21).contains(&hour);
                assert_eq!(matches!(r.gate(&key(n), t), Gate::Open { .. }), want, "{n} at {t} ({hour}h local)");
            }
        }
    }
}

#[test]
fn florida_closes_at_eight_and_a_number_spanning_zones_needs_both_open() {
    let r = rules();
    // 19:59 and 20:00 EST in Miami, open until 21:00 in New York.
    assert!(open(&r, "+13055550100", "2026-11-24T00:59:00Z"));
    assert!(!open(&r, "+13055550100", "2026-11-24T01:00:00Z"));
    assert!(open(&r, NY, "2026-11-24T01:00:00Z"));
    // A Florida panhandle number on Central time closes at 20:00 Central (02:00Z).
    assert_eq!(
        r.gate(&key("+18502000100"), utc("2026-11-23T20:00:00Z")),
        Gate::Open { until: Some(utc("2026-11-24T02:00:00Z")) }
    );
    // 605 spans Central and Mountain: opens at 08:00 Mountain (15:00Z), closes at 21:00 Central (03:00Z).
    assert!(!open(&r, "+16055550100", "2026-11-23T14:59:00Z"));
    assert!(open(&r, "+16055550100", "2026-11-23T15:00:00Z"));
    assert_eq!(
        r.gate(&key("+16055550100"), utc("2026-11-23T15:00:00Z")),
        Gate::Open { until: Some(utc("2026-11-24T03:00:00Z")) }
    );
}

#[test]
fn unknown_numbers_use_the_fallback_overlap_or_are_skipped_without_one() {
    let r = rules();
    // Open in every US zone from Hawaii's 08:00 (18:00Z) to New York's 21:00 (02:00Z), in winter.
    assert!(!open(&r, "+19995550100", "2026-11-23T17:59:00Z"));
    assert!(open(&r, "+19995550100", "2026-11-23T18:00:00Z"));
    assert!(!open(&r, "+19995550100", "2026-11-24T02:00:00Z"));
    let none = CallingRules { fallback_zones: vec![], ..CallingRules::default() }.compile("r").expect("compiles");
    assert_eq!(none.gate("", utc("2026-11-23T20:00:00Z")), Gate::Skip(SkipReason::NoZone));
    let off = CallingRules { window: None, ..CallingRules::default() }.compile("r").expect("compiles");
    assert_eq!(off.gate("", utc("2026-11-23T04:00:00Z")), Gate::Open { until: None }, "windows off");
}

#[test]
fn blackout_dates_are_the_recipients_local_dates() {
    let r = CallingRules {
        blackout_dates: vec![NaiveDate::from_ymd_opt(2026, 12, 25).expect("date")],
        ..CallingRules::default()
    }
    .compile("r")
    .expect("compiles");
    assert_eq!(r.gate(&key(NY), utc("2026-12-25T18:00:00Z")), Gate::Closed(HoldRule::Blackout));
    assert!(matches!(r.gate(&key(NY), utc("2026-12-26T18:00:00Z")), Gate::Open { .. }));
    // 02:00Z on the 26th is still the 25th (16:00) in Honolulu.
    assert_eq!(r.gate(&key(HONOLULU), utc("2026-12-26T02:00:00Z")), Gate::Closed(HoldRule::Blackout));
}

#[test]
fn attempt_limits_hold_a_number_until_an_attempt_ages_out_or_its_next_local_day() {
    let now = utc("2026-11-23T20:00:00Z"); // 15:00 in New York
    let h = |hours: i64| now - ChronoDuration::hours(hours);
    let r = CallingRules { max_attempts_per_24h: Some(3), ..CallingRules::default() }.compile("r").expect("compiles");
    assert_eq!(r.attempt_hold(&key(NY), &[h(23), h(2)], now), None, "two of three");
    assert_eq!(r.attempt_hold(&key(NY), &[h(1), h(23), h(2)], now), Some(h(23) + ChronoDuration::hours(24)));
    assert_eq!(r.attempt_hold(&key(NY), &[h(25), h(2), h(1)], now), None, "one aged out");
    // Two per calendar day in New York: held until local midnight (05:00Z).
    let d = CallingRules { max_attempts_per_day: Some(2), ..CallingRules::default() }.compile("r").expect("compiles");
    assert_eq!(d.attempt_hold(&key(NY), &[h(6), h(5)], now), Some(utc("2026-11-24T05:00:00Z")));
    assert_eq!(d.attempt_hold(&key(NY), &[h(16), h(5)], now), None, "the first was yesterday, local time");
    // Florida's own limit applies to Florida numbers only.
    let mut fl = CallingRules::default();
    fl.regions.get_mut("FL").expect("FL").max_attempts_per_24h = Some(1);
    let fl = fl.compile("r").expect("compiles");
    assert!(fl.attempt_hold(&key("+13055550100"), &[h(3)], now).is_some());
    assert_eq!(fl.attempt_hold(&key(NY), &[h(3)], now), None);
}

#[test]
fn a_claimed_call_is_skipped_held_or_dialled() {
    let now = utc("2026-11-23T20:00:00Z");
    let r = CallingRules { max_attempts_per_24h: Some(1), ..CallingRules::default() }.compile("r").expect("compiles");
    assert_eq!(r.verdict(&key(NY), true, &[], now), Verdict::Skip(SkipReason::Dnc));
    assert_eq!(r.verdict(&key(NY), false, &[], now), Verdict::Dial);
    let earlier = now - ChronoDuration::hours(1);
    assert_eq!(
        r.verdict(&key(NY), false, &[earlier], now),
        Verdict::Hold { until: earlier + ChronoDuration::hours(24), rule: HoldRule::AttemptLimit }
    );
    assert!(matches!(
        r.verdict(&key(HONOLULU), false, &[], utc("2026-11-23T10:00:00Z")),
        Verdict::Hold { rule: HoldRule::Window, .. }
    ));
}

#[test]
fn bad_rules_are_refused_naming_the_field() {
    let bad = |f: fn(&mut CallingRules)| {
        let mut r = CallingRules::default();
        f(&mut r);
        r.compile("calling_rules").expect_err("refused").field
    };
    assert_eq!(
        bad(|r| r.window = Some(HourRange { start: "8:00".into(), end: "21:00".into() })),
        "calling_rules.window.start"
    );
    assert_eq!(
        bad(|r| r.window = Some(HourRange { start: "21:00".into(), end: "08:00".into() })),
        "calling_rules.window.end"
    );
    assert_eq!(bad(|r| r.fallback_zones = vec!["Mars/Base".into()]), "calling_rules.fallback_zones[0]");
    assert_eq!(bad(|r| r.max_attempts_per_day = Some(0)), "calling_rules.max_attempts_per_day");
    assert_eq!(
        bad(|r| {
            r.regions.insert("Florida".into(), RegionRule::default());
        }),
        "calling_rules.regions.Florida"
    );
}

#[test]
fn a_closed_zone_says_when_it_opens_next() {
    let r = rules();
    let opens = |n: &str, at: &str| r.opens_at(&key(n), utc(at));
    // 12:35Z is 07:35 in New York (EST): opens at 08:00 local, 13:00Z; open at 13:00Z already.
    assert_eq!(opens(NY, "2026-11-23T12:35:00Z"), Some(utc("2026-11-23T13:00:00Z")));
    assert_eq!(opens(NY, "2026-11-23T13:00:00Z"), None, "open now");
    // After 21:00 local: the next morning.
    assert_eq!(opens(LA, "2026-11-24T05:30:00Z"), Some(utc("2026-11-24T16:00:00Z")));
    // +1555 maps nowhere: the fallback needs Hawaii open too (08:00 HST = 18:00Z).
    assert_eq!(opens("+15555550100", "2026-12-06T12:35:00Z"), Some(utc("2026-12-06T18:00:00Z")));
    // A blackout day opens at the first window of the next day.
    let xmas = CallingRules {
        blackout_dates: vec![NaiveDate::from_ymd_opt(2026, 12, 25).expect("date")],
        ..CallingRules::default()
    }
    .compile("r")
    .expect("compiles");
    assert_eq!(xmas.opens_at(&key(NY), utc("2026-12-25T18:00:00Z")), Some(utc("2026-12-26T13:00:00Z")));
    for at in ["2026-12-25T18:00:00Z", "2026-11-24T05:30:00Z", "2026-03-08T06:59:00Z"] {
        let t = xmas.opens_at(&key(CHICAGO), utc(at)).expect("opens");
        assert!(matches!(xmas.gate(&key(CHICAGO), t), Gate::Open { .. }), "open at {t}");
        let before = t - ChronoDuration::minutes(1);
        assert!(before <= utc(at) || matches!(xmas.gate(&key(CHICAGO), before), Gate::Closed(_)), "the first: {t}");
    }
}
