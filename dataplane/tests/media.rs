//! Media on answered calls against sipp as the far end (`testkit/sip/media.xml`): it answers
//! with PCMU and streams what a person or an answering machine says (made now with espeak-ng
//! and sox) and presses keys with the RFC 4733 packets Debian's sip-tester ships. Each call's
//! detection, key, opt-out and voicemail timing are checked one by one. The prompts come over
//! HTTP, as from the control plane's API.

use std::collections::HashMap;
use std::time::Duration;

use dialer_dataplane::Provider;
use dialer_dataplane::provider::CallOutcome;
use dialer_dataplane::sip::{SipProvider, TrunkSettings};
use dialer_dataplane::{ProviderKind, ProviderSettings};
use dialer_domain::media::{AmdParams, AnsweredBy, KeyAction, MediaPlan, MediaResult};
use dialer_domain::messages::DispatchMessage;
use dialer_domain::settings::Telephony;
use dialer_testkit::audio;
use dialer_testkit::fixtures::Dispatch;
use dialer_testkit::sip::{MEDIA_SCENARIO, Sipp};

mod prompts_server;
use uuid::Uuid;

const PERSON_PROMPT: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
const VOICEMAIL_PROMPT: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002);

fn plan() -> MediaPlan {
    MediaPlan {
        prompt: Some(PERSON_PROMPT),
        voicemail_prompt: Some(VOICEMAIL_PROMPT),
        amd: Some(AmdParams::default()),
        keys: [("9".to_string(), KeyAction::OptOut), ("1".to_string(), KeyAction::End)].into(),
        repeat: 1,
        key_timeout_ms: 1500,
        opt_out_list: Default::default(),
    }
}

fn msg(number: &str) -> DispatchMessage {
    let mut m = Dispatch::call(0).id(Uuid::now_v7()).number(number).build();
    m.telephony = Some(Box::new(Telephony { media: Some(plan()), ..Telephony::default() }));
    m
}

fn settings(far: std::net::SocketAddr, prompts_url: String) -> ProviderSettings {
    ProviderSettings {
        kind: ProviderKind::Sip,
        trunks: vec![TrunkSettings {
            name: "sipp".into(),
            proxy: far.to_string(),
            max_channels: 100,
            max_cps: 0,
            ..TrunkSettings::default()
        }],
        ring_timeout: Duration::from_secs(5),
        max_call: Duration::from_secs(40),
        t1: Duration::from_millis(200),
        rtp_port_min: 42_000,
        rtp_port_max: 42_999,
        prompts_url,
        ..ProviderSettings::default()
    }
}

fn need<T>(e: dialer_testkit::HarnessError) -> T {
    panic!("espeak-ng and sox are needed for this test: {e}")
}

fn media(o: &CallOutcome) -> MediaResult {
    match o {
        CallOutcome::Completed { media: Some(m), .. } => (**m).clone(),
        other => panic!("an answered call with a media result, not {other:?}"),
    }
}

#[test]
fn people_are_told_machines_get_the_voicemail_after_the_beep_and_keys_count() {
    let dir = tempfile::tempdir().expect("dir");
    let person = audio::person(dir.path(), "en-us", 8000).unwrap_or_else(need);
    let machine = audio::machine(dir.path(), "en-us").unwrap_or_else(need);
    let reminder = "This is a reminder of your appointment tomorrow at ten. Press nine to stop these calls.";
    let prompts = HashMap::from([
        (PERSON_PROMPT, audio::prompt(dir.path(), "person", reminder).unwrap_or_else(need)),
        (VOICEMAIL_PROMPT, audio::prompt(dir.path(), "voicemail", "Please call us back.").unwrap_or_else(need)),
    ]);
    let scenario = MEDIA_SCENARIO
        .replace("{PERSON}", &person.path.display().to_string())
        .replace("{MACHINE}", &machine.path.display().to_string());
    let far = Sipp::uas_with(&scenario, 6, 0).unwrap_or_else(|e| panic!("sipp is needed for this test: {e}"));
    let s = settings(far.addr(), prompts_server::serve(prompts));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let outcomes = tokio::task::LocalSet::new().block_on(&rt, async {
        let p = SipProvider::start(s, 0, 1).await.expect("provider starts");
        let numbers = ["+15550000300", "+15550000301", "+15550000302", "+15550000303", "+15550000304", "+15550000305"];
        futures::future::join_all(numbers.iter().map(|n| p.place_call(&msg(n)))).await
    });
    let report = far.finish(Duration::from_secs(30));
    let [opt_out, end, silent, vm, early, held] = [0, 1, 2, 3, 4, 5].map(|i| media(&outcomes[i]));
    for (name, m) in [("300", &opt_out), ("301", &end), ("302", &silent), ("304", &early), ("305", &held)] {
        assert_eq!(m.answered_by, Some(AnsweredBy::Human), "{name}: a person said hello: {m:?}");
        let (end, start) = (m.greeting_end_ms.expect("greeting end"), m.message_started_ms.expect("message"));
        assert!(start > end && start - end <= 2000, "{name}: message {start} ms, greeting ended {end} ms: {m:?}");
        assert!(!m.abandoned, "{name}");
    }
    assert_eq!((opt_out.dtmf.as_deref(), opt_out.opted_out), (Some("9"), true), "{opt_out:?}");
    assert_eq!((end.dtmf.as_deref(), end.opted_out), (Some("1"), false), "{end:?}");
    assert_eq!((silent.dtmf.as_deref(), silent.opted_out), (None, false), "{silent:?}");
    assert_eq!(vm.answered_by, Some(AnsweredBy::Machine), "{vm:?}");
    assert!(vm.voicemail_left, "the voicemail played to its end: {vm:?}");
    assert_eq!(vm.voicemail_after.as_deref(), Some("beep"), "{vm:?}");
    let started = vm.voicemail_started_ms.expect("voicemail start");
    let beep_end = machine.beep_end_ms.expect("a beep");
    assert!(
        started >= beep_end && started <= beep_end + 400,
        "voicemail at {started} ms, beep ended at {beep_end} ms: {vm:?}"
    );
    // A 183 with SDP (early media) was not the answer. (What arrives before the answer is
    // discarded, not heard as the callee: `sip::media`'s unit test.)
    match &outcomes[4] {
        CallOutcome::Completed { answered_after, .. } => {
            assert!(*answered_after >= Duration::from_secs(2), "answered at the 200, not the 183: {answered_after:?}")
        }
        other => panic!("{other:?}"),
    }
    // On hold and back: both re-INVITEs answered 200 (sipp's scenario fails a call otherwise).
    assert_eq!(held.dtmf, None);
    let log = far.invite_log();
    assert!(
        log.contains("hold answered") && log.contains("resume answered"),
        "both re-INVITEs answered 200 with our SDP: {log}"
    );
    // sipp saw every call end (it counts a BYE that comes while it plays a key's packets as a
    // failed call: the dialer hangs up on the key, as it must).
    let report = report.unwrap_or_else(|e| panic!("sipp's report: {e}"));
    assert_eq!(report.successful + report.failed, 6, "{}", far.errors());
}
