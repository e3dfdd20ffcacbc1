//! A second, independent user agent with a media stack: Debian's baresip answers the dialer's
//! call, says "Hello?" (its audio source, a file made with espeak-ng) and records what it hears
//! (its sndfile filter). The recording holds the campaign's prompt, as long as the prompt (within
//! 5 %) and shaped like it (envelope correlation), and baresip's "Hello?" reached detection.

use std::time::Duration;

use dialer_dataplane::Provider;
use dialer_dataplane::provider::CallOutcome;
use dialer_dataplane::sip::{SipProvider, TrunkSettings};
use dialer_dataplane::{ProviderKind, ProviderSettings};
use dialer_domain::media::{AmdParams, AnsweredBy, MediaPlan, wav};
use dialer_domain::settings::Telephony;
use dialer_testkit::audio;
use dialer_testkit::fixtures::Dispatch;
use uuid::Uuid;

mod prompts_server;

/// RMS per 20 ms frame.
fn envelope(samples: &[i16]) -> Vec<f64> {
    samples
        .chunks(160)
        .map(|f| (f.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / f.len() as f64).sqrt())
        .collect()
}

/// The frames between the first and the last that are not silence.
fn active(env: &[f64]) -> std::ops::Range<usize> {
    let loud = |x: &f64| *x > 200.0;
    let first = env.iter().position(loud).unwrap_or(0);
    let last = env.iter().rposition(loud).unwrap_or(0);
    first..last + 1
}

/// Pearson correlation of `a` against `b` at the best offset of `b` into `a`.
fn best_correlation(a: &[f64], b: &[f64]) -> f64 {
    let corr = |x: &[f64], y: &[f64]| {
        let n = x.len() as f64;
        let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
        let cov: f64 = x.iter().zip(y).map(|(p, q)| (p - mx) * (q - my)).sum();
        let (vx, vy): (f64, f64) = (x.iter().map(|p| (p - mx).powi(2)).sum(), y.iter().map(|q| (q - my).powi(2)).sum());
        cov / (vx.sqrt() * vy.sqrt()).max(1e-9)
    };
    (0..=a.len().saturating_sub(b.len())).map(|o| corr(&a[o..o + b.len()], b)).fold(f64::MIN, f64::max)
}

/// Both laws: baresip offers only one in its answer, and hears the prompt only if the dialer
/// sends in the answer's codec.
#[test]
fn baresip_hears_the_prompt_and_its_hello_reaches_detection() {
    hears_the_prompt("PCMU");
    hears_the_prompt("PCMA");
}

fn hears_the_prompt(codec: &str) {
    let dir = tempfile::tempdir().expect("dir");
    let need = |e: dialer_testkit::HarnessError| -> ! { panic!("espeak-ng and sox are needed for this test: {e}") };
    let (lead, hello, tail) = (dir.path().join("l.wav"), dir.path().join("h.wav"), dir.path().join("t.wav"));
    audio::silence(300, &lead).unwrap_or_else(|e| need(e));
    audio::speech("Hello?", "en-us", 170, &hello).unwrap_or_else(|e| need(e));
    audio::silence(20_000, &tail).unwrap_or_else(|e| need(e));
    let source = dir.path().join("hello.wav");
    audio::concat(&[lead, hello, tail], false, &source).unwrap_or_else(|e| need(e));
    let text = "This is a reminder from your clinic: your appointment is tomorrow at ten in the morning.";
    let prompt_wav = audio::prompt(dir.path(), "p", text).unwrap_or_else(|e| need(e));
    let prompt_id = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00b1);
    let url = prompts_server::serve([(prompt_id, prompt_wav.clone())].into());
    let far = dialer_testkit::sip::Baresip::answer("+15550000777", codec, &source)
        .unwrap_or_else(|e| panic!("baresip is needed: {e}"));
    let s = ProviderSettings {
        kind: ProviderKind::Sip,
        trunks: vec![TrunkSettings {
            name: "baresip".into(),
            proxy: far.addr().to_string(),
            max_channels: 10,
            max_cps: 0,
            ..TrunkSettings::default()
        }],
        ring_timeout: Duration::from_secs(5),
        max_call: Duration::from_secs(30),
        rtp_port_min: 43_000,
        rtp_port_max: 43_099,
        prompts_url: url,
        ..ProviderSettings::default()
    };
    let plan = MediaPlan {
        prompt: Some(prompt_id),
        amd: Some(AmdParams::default()),
        repeat: 1,
        key_timeout_ms: 0,
        ..MediaPlan::default()
    };
    let mut msg = Dispatch::call(0).id(Uuid::now_v7()).number("+15550000777").build();
    msg.telephony = Some(Box::new(Telephony { media: Some(plan), ..Telephony::default() }));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let outcome = tokio::task::LocalSet::new().block_on(&rt, async {
        let p = SipProvider::start(s, 0, 1).await.expect("provider starts");
        p.place_call(&msg).await
    });
    std::thread::sleep(Duration::from_millis(500));
    far.stop();
    let log = far.log();
    let media = match &outcome {
        CallOutcome::Completed { media: Some(m), .. } => m.clone(),
        other => panic!("baresip answered: {other:?}\n{log}"),
    };
    assert_eq!(media.answered_by, Some(AnsweredBy::Human), "baresip's hello reached detection: {media:?}\n{log}");
    // What baresip heard: the decoded stream its sndfile filter dumped.
    let heard = far.heard().unwrap_or_else(|| panic!("baresip dumped no decoded audio\n{log}"));
    let heard = audio::to_pcm(&heard, dir.path()).unwrap_or_else(|e| need(e));
    let heard = wav::parse(&std::fs::read(heard).expect("read")).expect("a WAV file").samples;
    let prompt = wav::parse(&prompt_wav).expect("prompt").samples;
    let (he, pe) = (envelope(&heard), envelope(&prompt));
    let (h, p) = (active(&he), active(&pe));
    let (h_ms, p_ms) = (h.len() as f64 * 20.0, p.len() as f64 * 20.0);
    assert!((h_ms - p_ms).abs() <= 0.05 * p_ms, "{codec}: heard {h_ms} ms of audio, the prompt has {p_ms} ms");
    let c = best_correlation(&he[h.clone()], &pe[p]);
    eprintln!("{codec}: baresip heard {h_ms} ms of the {p_ms} ms prompt; envelope correlation {c:.3}; {media:?}");
    assert!(c > 0.8, "{codec}: what baresip heard is shaped like the prompt: correlation {c:.3}");
}
