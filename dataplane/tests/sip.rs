//! The SIP provider against real SIP software: sipp as the far end (its behaviour chosen by the
//! dialled number, `testkit/sip/uas.xml`) and kamailio as a carrier's proxy challenging with 407.
//! Each test runs the provider's shards the way the data plane does: a current-thread runtime
//! and a `LocalSet`.

use std::time::Duration;

use dialer_dataplane::Provider;
use dialer_dataplane::provider::CallOutcome;
use dialer_dataplane::sip::{SipProvider, TrunkSettings};
use dialer_dataplane::{ProviderKind, ProviderSettings};
use dialer_domain::messages::DispatchMessage;
use dialer_testkit::fixtures::Dispatch;
use dialer_testkit::sip::{Kamailio, Sipp};
use uuid::Uuid;

fn trunk(name: &str, proxy: std::net::SocketAddr, user: &str, password: &str) -> TrunkSettings {
    TrunkSettings {
        name: name.into(),
        proxy: proxy.to_string(),
        domain: "carrier.test".into(),
        username: user.into(),
        password: password.into(),
        from_domain: "dialer.test".into(),
        caller_id: "+15005550006".into(),
        max_channels: 1000,
        max_cps: 0,
        ..TrunkSettings::default()
    }
}

fn settings(trunks: Vec<TrunkSettings>) -> ProviderSettings {
    ProviderSettings {
        kind: ProviderKind::Sip,
        trunks,
        ring_timeout: Duration::from_millis(1000),
        max_call: Duration::from_millis(800),
        t1: Duration::from_millis(100),
        ..ProviderSettings::default()
    }
}

fn msg(number: &str) -> DispatchMessage {
    Dispatch::call(0).id(Uuid::now_v7()).number(number).build()
}

/// Runs `f` on a current-thread runtime inside a `LocalSet`, as a shard does.
fn on_shard<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    tokio::task::LocalSet::new().block_on(&rt, f)
}

fn sipp(calls: u64, hold_ms: u64) -> Sipp {
    Sipp::uas(calls, hold_ms).unwrap_or_else(|e| panic!("sipp is needed for this test: {e}"))
}

/// `(reason, retryable, SIP code, Retry-After ms)` of a failed call; panics on an answered one.
fn failure(o: &CallOutcome) -> (&'static str, bool, Option<u16>, Option<u64>) {
    match o {
        CallOutcome::Failed { reason, retryable, sip, .. } => {
            let sip = sip.as_ref().expect("a SIP outcome carries the final response");
            (reason, *retryable, sip.code, sip.retry_after_ms)
        }
        CallOutcome::Completed { .. } => panic!("expected a failure, got {o:?}"),
    }
}

/// Talk time of an answered call.
fn talked(o: &CallOutcome) -> Duration {
    match o {
        CallOutcome::Completed { answered_after, duration, .. } => *duration - *answered_after,
        CallOutcome::Failed { .. } => panic!("expected an answered call, got {o:?}"),
    }
}

#[test]
fn each_far_end_answer_maps_to_its_outcome_and_retry_decision() {
    let far = sipp(11, 300);
    let outcomes = on_shard(async {
        let s = settings(vec![trunk("sipp", far.addr(), "dialer", "secret-401")]);
        let p = SipProvider::start(s.clone(), 0, 1).await.expect("provider starts");
        let refer = ProviderSettings { refer_to: Some("sip:queue@ivr.test".into()), ..s };
        let r = SipProvider::start(refer, 0, 1).await.expect("provider starts");
        let numbers = ["200", "201", "486", "480", "487", "503", "404", "401", "203", "204"];
        let mut calls: Vec<_> = numbers.iter().map(|n| p.place_call(&msg(&format!("+1555000{n}")))).collect();
        calls.push(r.place_call(&msg("+1555000202")));
        futures::future::join_all(calls).await
    });
    let [far_bye, our_bye, busy, unavailable, cancelled, overloaded, not_found, challenged, asked, crossed, referred] =
        <[CallOutcome; 11]>::try_from(outcomes).expect("eleven outcomes");
    let t = talked(&far_bye);
    assert!(t >= Duration::from_millis(250) && t < Duration::from_millis(800), "far end hung up after ~300 ms: {t:?}");
    assert!(talked(&our_bye) >= Duration::from_millis(800), "our BYE at the maximum call length");
    assert_eq!(failure(&busy), ("busy", true, Some(486), None));
    assert_eq!(failure(&unavailable), ("no_answer", true, Some(480), None));
    assert_eq!(failure(&cancelled), ("no_answer", true, Some(487), None), "ring timeout → CANCEL → 487");
    match &cancelled {
        CallOutcome::Failed { after, .. } => {
            assert!(*after >= Duration::from_millis(1000), "rang for the ring timeout")
        }
        CallOutcome::Completed { .. } => unreachable!(),
    }
    assert_eq!(failure(&overloaded), ("failed", true, Some(503), Some(120_000)), "503 keeps Retry-After");
    assert_eq!(failure(&not_found), ("invalid_number", false, Some(404), None));
    assert!(talked(&challenged) >= Duration::from_millis(800), "401 answered with digest credentials, then talked");
    let t = talked(&referred);
    assert!(
        t < Duration::from_millis(800),
        "REFER accepted (202, NOTIFY 200): we leave at once, not after {t:?}; {}",
        far.errors()
    );
    let t = talked(&asked);
    assert!(t < Duration::from_millis(800), "OPTIONS and re-INVITE answered 200 (with our SDP), then their BYE: {t:?}");
    let t = talked(&crossed);
    assert!(t < Duration::from_millis(300), "a 200 that crossed our CANCEL: ACK, then BYE at once, not after {t:?}");
    let report = far.finish(Duration::from_secs(20)).expect("sipp's report");
    assert_eq!((report.successful, report.failed), (11, 0), "every call ran its scenario to the end: {}", far.errors());
}

#[test]
fn a_wrong_password_fails_the_trunk_not_the_lead() {
    let far = sipp(0, 300);
    on_shard(async {
        let bad = trunk("bad", far.addr(), "dialer", "wrong");
        let p = SipProvider::start(settings(vec![bad.clone()]), 0, 1).await.expect("provider starts");
        let o = p.place_call(&msg("+1555000401")).await;
        assert_eq!(failure(&o), ("failed", true, Some(403), None), "refused credentials: retryable for the lead");
        let o = p.place_call(&msg("+1555000201")).await;
        let (reason, retryable, code, _) = failure(&o);
        assert_eq!((reason, retryable, code), ("failed", true, None), "the trunk is out of rotation");
        // With a good trunk behind it, calls go there instead.
        let good = TrunkSettings { priority: 2, ..trunk("good", far.addr(), "dialer", "secret-401") };
        let p = SipProvider::start(settings(vec![bad, good]), 0, 1).await.expect("provider starts");
        let o = p.place_call(&msg("+1555000401")).await;
        assert!(talked(&o) >= Duration::from_millis(800), "failed over to the good trunk within the attempt");
    });
}

#[test]
fn kamailio_challenges_with_407_and_right_credentials_get_through() {
    // sipp sees two calls: the answered one and the busy one (the wrong password never passes).
    let far = sipp(2, 300);
    let proxy = Kamailio::start(far.addr(), "carrier-pw").unwrap_or_else(|e| panic!("kamailio is needed: {e}"));
    on_shard(async {
        let good = trunk("carrier", proxy.addr(), "acme", "carrier-pw");
        let p = SipProvider::start(settings(vec![good]), 0, 1).await.expect("provider starts");
        let (answered, busy) = tokio::join!(p.place_call(&msg("+1555000201")), p.place_call(&msg("+1555000486")));
        assert!(talked(&answered) >= Duration::from_millis(800), "answered through the proxy, BYE record-routed");
        assert_eq!(failure(&busy), ("busy", true, Some(486), None));
        let bad = trunk("carrier", proxy.addr(), "acme", "nope");
        let p = SipProvider::start(settings(vec![bad]), 0, 1).await.expect("provider starts");
        let o = p.place_call(&msg("+1555000201")).await;
        assert_eq!(failure(&o), ("failed", true, Some(407), None), "a second 407: the trunk's fault");
    });
    let r = far.finish(Duration::from_secs(20)).expect("sipp's report");
    assert_eq!((r.successful, r.failed), (2, 0), "our BYE answered kamailio's 407 and reached sipp: {}", far.errors());
}

#[test]
fn channels_and_calls_per_second_hold_at_the_far_end() {
    const CALLS: u64 = 300;
    let far = sipp(CALLS, 300);
    let mut s = settings(vec![TrunkSettings { max_channels: 12, max_cps: 40, ..trunk("t", far.addr(), "", "") }]);
    s.max_call = Duration::from_secs(10);
    on_shard(async {
        // Two shards of one data plane, each with its share of the trunk.
        let a = SipProvider::start(s.clone(), 0, 2).await.expect("shard 0");
        let b = SipProvider::start(s.clone(), 1, 2).await.expect("shard 1");
        let calls = (0..CALLS).map(|i| if i % 2 == 0 { &a } else { &b }).map(|p| p.place_call(&msg("+1555000200")));
        let outcomes = futures::future::join_all(calls).await;
        let answered = outcomes.iter().filter(|o| matches!(o, CallOutcome::Completed { .. })).count();
        assert_eq!(answered as u64, CALLS, "every call answered");
    });
    let r = far.finish(Duration::from_secs(30)).expect("sipp's report");
    assert!(r.peak <= 12, "sipp saw {} calls up at once on a trunk of 12 channels", r.peak);
    assert!(r.peak >= 8, "the channels were in use: peak {}", r.peak);
    assert_eq!(r.invites_ms.len() as u64, CALLS);
    let cps = r.max_invites_per_second();
    assert!(cps <= 40, "{cps} INVITEs within one second on a 40-CPS trunk");
}

/// Carriers count INVITEs: a call whose first INVITE is challenged (401) sends a second, with
/// credentials, and that one takes a slot of the trunk's calls per second too.
#[test]
fn challenged_invites_are_paced_like_the_first() {
    const CALLS: u64 = 16;
    let far = sipp(CALLS, 100);
    let mut s = settings(vec![TrunkSettings { max_cps: 4, ..trunk("t", far.addr(), "dialer", "secret-401") }]);
    s.max_call = Duration::from_secs(5);
    on_shard(async {
        let p = SipProvider::start(s, 0, 1).await.expect("provider starts");
        let calls = (0..CALLS).map(|_| p.place_call(&msg("+1555000401")));
        let outcomes = futures::future::join_all(calls).await;
        assert!(outcomes.iter().all(|o| matches!(o, CallOutcome::Completed { .. })), "every call answered");
    });
    let r = far.finish(Duration::from_secs(30)).expect("sipp's report");
    assert_eq!(r.invites_ms.len() as u64, 2 * CALLS, "two INVITEs a call: {}", far.invite_log());
    let cps = r.max_invites_per_second();
    assert!(cps <= 4, "{cps} INVITEs within one second on a 4-CPS trunk, retries with credentials counted");
}

/// A host with more shards than the trunk's calls per second (16 shards, `max_cps` 10, the
/// default): every shard dials, in turns, and the trunk never sees more than 10 a second.
#[test]
fn more_shards_than_calls_per_second_take_turns() {
    const SHARDS: usize = 16;
    let far = sipp(SHARDS as u64 * 2, 50);
    let s = settings(vec![TrunkSettings { max_cps: 10, ..trunk("t", far.addr(), "", "") }]);
    on_shard(async {
        let mut shards = Vec::new();
        for i in 0..SHARDS {
            shards.push(SipProvider::start(s.clone(), i, SHARDS).await.expect("a shard with a turn starts"));
        }
        let calls = shards.iter().flat_map(|p| [p.place_call(&msg("+1555000200")), p.place_call(&msg("+1555000200"))]);
        let outcomes = futures::future::join_all(calls).await;
        assert!(outcomes.iter().all(|o| matches!(o, CallOutcome::Completed { .. })), "every shard's calls answered");
    });
    let r = far.finish(Duration::from_secs(30)).expect("sipp's report");
    assert_eq!(r.invites_ms.len(), SHARDS * 2);
    let cps = r.max_invites_per_second();
    assert!(cps <= 10, "{cps} INVITEs within one second from 16 shards on a 10-CPS trunk");
}

/// kamailio forks workers: when the test drops it, they go too (they used to outlive the test
/// command, re-parented to init).
#[test]
fn kamailio_and_its_workers_are_gone_once_dropped() {
    let far = sipp(0, 100);
    let k = Kamailio::start(far.addr(), "secret").unwrap_or_else(|e| panic!("kamailio is needed for this test: {e}"));
    // kamailio's command line names its config file (the harness's watchdog names only the dir).
    let dir = k.dir().join("kamailio.cfg").display().to_string();
    let running = dialer_testkit::sip::processes_naming(&dir);
    assert!(running.len() > 1, "kamailio and its workers run: {running:?}");
    drop(k);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut left = dialer_testkit::sip::processes_naming(&dir);
    while !left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = dialer_testkit::sip::processes_naming(&dir);
    }
    assert!(left.is_empty(), "kamailio processes left running: {left:?}");
}
