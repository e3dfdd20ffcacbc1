//! The mock provider's media: for a campaign with `telephony.media`, an answered call draws who
//! answered (a person 60 %, a machine 35 %, not sure 5 % with detection; unknown without) and,
//! for a person, a key (the opt-out key 5 %, another named key 15 %), then runs the real media
//! script on synthetic audio of that kind, so `dialer up` shows the same results, timings and
//! abandoned calls a SIP trunk would.

use dialer_domain::media::{AnsweredBy, KeyAction, MediaPlan, MediaResult, Play, Script, Step};
use rand::Rng;

const FRAME: usize = 160;

fn voice() -> [i16; FRAME] {
    std::array::from_fn(|i| ((i % 40) as i16 - 20) * 400)
}

fn tone() -> [i16; FRAME] {
    std::array::from_fn(|i| (8000.0 * (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 8000.0).sin()) as i16)
}

/// What the call's media came to, drawn from `rng`.
pub fn draw(plan: &MediaPlan, rng: &mut impl Rng) -> MediaResult {
    let who = match (plan.amd.is_some(), rng.random_range(0..100)) {
        (false, _) => AnsweredBy::Unknown,
        (true, 0..60) => AnsweredBy::Human,
        (true, 60..95) => AnsweredBy::Machine,
        (true, _) => AnsweredBy::Unknown,
    };
    let (silence, voice, tone) = ([0i16; FRAME], voice(), tone());
    // 20 ms frames of what the callee sends.
    let greeting: Vec<&[i16]> = match who {
        AnsweredBy::Human => {
            [&silence; 15].into_iter().chain([&voice; 25]).chain([&silence; 100]).map(|f| &f[..]).collect()
        }
        AnsweredBy::Machine => [&voice; 150]
            .into_iter()
            .chain([&silence; 20])
            .chain([&tone; 20])
            .chain([&silence; 50])
            .map(|f| &f[..])
            .collect(),
        AnsweredBy::Unknown => [&voice; 3].into_iter().chain([&silence; 2]).cycle().take(400).map(|f| &f[..]).collect(),
    };
    let (mut script, mut step) = Script::start(plan);
    let mut t = 0;
    let mut frames = greeting.into_iter();
    while step == Step::Continue {
        let Some(f) = frames.next() else { break };
        t += 20;
        step = script.audio(f, t);
    }
    if step == Step::Play(Play::Person) && who == AnsweredBy::Human {
        let key = match rng.random_range(0..100) {
            0..5 => key_for(plan, KeyAction::OptOut),
            5..20 => key_for(plan, KeyAction::End),
            _ => None,
        };
        if let Some(k) = key {
            script.key(k, t + 2000);
        }
    }
    while matches!(step, Step::Play(_)) {
        t += 5000;
        step = script.played_out(t);
    }
    if step == Step::Continue {
        script.tick(t + u32::from(plan.key_timeout_ms > 0) * plan.key_timeout_ms);
    }
    script.result()
}

fn key_for(plan: &MediaPlan, action: KeyAction) -> Option<char> {
    plan.keys.iter().find(|(_, a)| **a == action).and_then(|(k, _)| k.chars().next())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn draws_follow_the_shares_and_the_script() {
        let plan: MediaPlan = serde_json::from_value(serde_json::json!({
            "prompt": "01900000-0000-7000-8000-000000000001",
            "voicemail_prompt": "01900000-0000-7000-8000-000000000002",
            "amd": {}, "keys": {"9": "opt_out", "1": "end"}
        }))
        .expect("plan");
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let results: Vec<MediaResult> = (0..2000).map(|_| draw(&plan, &mut rng)).collect();
        let share = |f: &dyn Fn(&MediaResult) -> bool| results.iter().filter(|r| f(r)).count() as f64 / 2000.0;
        let human = share(&|r| r.answered_by == Some(AnsweredBy::Human));
        assert!((human - 0.6).abs() < 0.03, "people {human}");
        let vm = share(&|r| r.voicemail_left);
        assert!((vm - 0.35).abs() < 0.03, "voicemails {vm}");
        assert!(results.iter().filter(|r| r.voicemail_left).all(|r| r.voicemail_after.as_deref() == Some("beep")));
        let opted = share(&|r| r.opted_out);
        assert!((opted - 0.6 * 0.05).abs() < 0.01, "opt-outs {opted}");
        assert!(results.iter().filter(|r| r.opted_out).all(|r| r.dtmf.as_deref() == Some("9")));
        assert!(results.iter().all(|r| !r.abandoned), "the message starts within 2 s of every greeting");
    }
}
