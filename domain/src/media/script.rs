//! What an answered call with a media plan does, as a pure state machine: the data plane feeds
//! it the callee's audio (20 ms frames), keys and clock ticks, and does what it answers (play a
//! prompt, hang up). Timing is in ms since the answer.
//!
//! ```text
//! answer ─ detection? ─no──────────────────────────────► person prompt (× repeat) ─► keys ─► hang up
//!             │yes                                          ▲  a key: opt out / end
//!             ├─ human / not sure ──────────────────────────┘
//!             └─ machine ─ voicemail_prompt? ─no─► hang up
//!                               │yes
//!                               └─ beep ended (or 3 s of silence, or 30 s) ─► voicemail prompt ─► hang up
//! ```

use serde::{Deserialize, Serialize};

use super::amd::{Amd, AnsweredBy};
use super::plan::{KeyAction, MediaPlan};
use super::tone::{Beep, BeepDetector};

/// A message later than this after a person's greeting ended is an abandoned call (47 CFR
/// 64.1200(a)(7)).
pub const ABANDON_AFTER_MS: u32 = 2000;
/// A machine without a beep: the voicemail starts after this much silence…
pub const VOICEMAIL_SILENCE_MS: u32 = 3000;
/// …or this long after the machine was detected, whatever it does.
pub const VOICEMAIL_WAIT_MS: u32 = 30_000;
/// The shortest tone taken for a beep.
pub const BEEP_MIN_MS: u32 = 120;

/// Which prompt to play.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Play {
    Person,
    Voicemail,
}

/// What the data plane does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// Start playing (from the start; replaces what plays).
    Play(Play),
    /// Hang up: the result is final.
    Hangup,
}

/// What the media of one attempt came to (in its outcome event, the call's attempts, webhooks).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MediaResult {
    /// Who answered: `human`, `machine`, or `unknown` (no detection, or it was not sure).
    pub answered_by: Option<AnsweredBy>,
    /// Detection's reason (`human`, `initial_silence`, `max_words`, `long_greeting`, `long_word`,
    /// `too_long`, `key`) and when it decided (ms after the answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amd_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amd_ms: Option<u32>,
    /// A voicemail message was played to its end.
    #[serde(default)]
    pub voicemail_left: bool,
    /// What started the voicemail message (`beep`, `silence` or `timeout`), and when (ms after
    /// the answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voicemail_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voicemail_started_ms: Option<u32>,
    /// The key that ended the call, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtmf: Option<String>,
    /// The key was the opt-out key: the number is on the do-not-call list (`opt_out_list`:
    /// the campaign's or the global one).
    #[serde(default)]
    pub opted_out: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_out_list: Option<super::plan::OptOutList>,
    /// When the person's message started and when their greeting ended (ms after the answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_started_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub greeting_end_ms: Option<u32>,
    /// A person answered and their message started more than 2 s after their greeting ended,
    /// or never.
    #[serde(default)]
    pub abandoned: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Detecting,
    Person { plays_left: u8 },
    Listening { until_ms: u32 },
    AwaitingBeep { since_ms: u32 },
    Voicemail,
    Over,
}

/// One answered call's media script.
#[derive(Clone, Debug)]
pub struct Script {
    plan: MediaPlan,
    state: State,
    amd: Option<Amd>,
    beep: BeepDetector,
    last_voice_ms: u32,
    result: MediaResult,
}

impl Script {
    /// The script of a call answered now, and its first step.
    pub fn start(plan: &MediaPlan) -> (Script, Step) {
        let amd = plan.amd.map(Amd::new);
        let threshold = plan.amd.unwrap_or_default().silence_threshold;
        let mut s = Script {
            plan: plan.clone(),
            state: State::Detecting,
            amd,
            beep: BeepDetector::new(BEEP_MIN_MS, threshold),
            last_voice_ms: 0,
            result: MediaResult::default(),
        };
        if s.amd.is_some() {
            return (s, Step::Continue);
        }
        s.result.answered_by = Some(AnsweredBy::Unknown);
        let step = s.person(0);
        (s, step)
    }

    /// A frame of the callee's audio, ending at `now_ms`.
    pub fn audio(&mut self, frame: &[i16], now_ms: u32) -> Step {
        match self.state {
            State::Detecting => {
                let Some(d) = self.amd.as_mut().and_then(|a| a.frame(frame)) else { return Step::Continue };
                self.result.answered_by = Some(d.answered_by);
                self.result.amd_reason = Some(d.reason.to_string());
                // Detection counts audio time; the result is on the call's clock.
                self.result.amd_ms = Some(now_ms);
                self.result.greeting_end_ms = d.greeting_end_ms.map(|g| now_ms.saturating_sub(d.at_ms - g));
                match d.answered_by {
                    AnsweredBy::Machine => self.machine(now_ms),
                    _ => self.person(now_ms),
                }
            }
            State::AwaitingBeep { since_ms } => self.awaiting_beep(frame, since_ms, now_ms),
            _ => Step::Continue,
        }
    }

    fn awaiting_beep(&mut self, frame: &[i16], since_ms: u32, now_ms: u32) -> Step {
        if self.amd.as_ref().is_some_and(|a| a.is_voice(frame)) {
            self.last_voice_ms = now_ms;
        }
        if let Beep::Ended { .. } = self.beep.frame(frame) {
            return self.voicemail("beep", now_ms);
        }
        if now_ms.saturating_sub(self.last_voice_ms) >= VOICEMAIL_SILENCE_MS {
            return self.voicemail("silence", now_ms);
        }
        if now_ms.saturating_sub(since_ms) >= VOICEMAIL_WAIT_MS {
            return self.voicemail("timeout", now_ms);
        }
        Step::Continue
    }

    /// A key pressed at `now_ms`.
    pub fn key(&mut self, key: char, now_ms: u32) -> Step {
        if matches!(self.state, State::Voicemail | State::Over | State::AwaitingBeep { .. }) {
            return Step::Continue;
        }
        let Some(action) = self.plan.action(key) else { return Step::Continue };
        if self.state == State::Detecting {
            // Only a person presses keys.
            self.result.answered_by = Some(AnsweredBy::Human);
            self.result.amd_reason = Some("key".into());
            self.result.amd_ms = Some(now_ms);
        }
        self.result.dtmf = Some(key.to_string());
        self.result.opted_out = action == KeyAction::OptOut;
        self.result.opt_out_list = self.result.opted_out.then_some(self.plan.opt_out_list);
        self.over()
    }

    /// The prompt playing came to its end at `now_ms`.
    pub fn played_out(&mut self, now_ms: u32) -> Step {
        match self.state {
            State::Person { plays_left } if plays_left > 1 => {
                self.state = State::Person { plays_left: plays_left - 1 };
                Step::Play(Play::Person)
            }
            State::Person { .. } if self.plan.keys.is_empty() || self.plan.key_timeout_ms == 0 => self.over(),
            State::Person { .. } => {
                self.state = State::Listening { until_ms: now_ms + self.plan.key_timeout_ms };
                Step::Continue
            }
            State::Voicemail => {
                self.result.voicemail_left = true;
                self.over()
            }
            _ => Step::Continue,
        }
    }

    /// The clock at `now_ms` (every 20 ms): the end of listening for keys.
    pub fn tick(&mut self, now_ms: u32) -> Step {
        match self.state {
            State::Listening { until_ms } if now_ms >= until_ms => self.over(),
            _ => Step::Continue,
        }
    }

    fn person(&mut self, now_ms: u32) -> Step {
        if self.plan.prompt.is_none() {
            return self.over();
        }
        self.result.message_started_ms = Some(now_ms);
        self.state = State::Person { plays_left: self.plan.repeat.max(1) };
        Step::Play(Play::Person)
    }

    fn machine(&mut self, now_ms: u32) -> Step {
        if self.plan.voicemail_prompt.is_none() {
            return self.over();
        }
        self.last_voice_ms = now_ms;
        self.state = State::AwaitingBeep { since_ms: now_ms };
        Step::Continue
    }

    fn voicemail(&mut self, after: &str, now_ms: u32) -> Step {
        self.result.voicemail_after = Some(after.into());
        self.result.voicemail_started_ms = Some(now_ms);
        self.state = State::Voicemail;
        Step::Play(Play::Voicemail)
    }

    fn over(&mut self) -> Step {
        self.state = State::Over;
        Step::Hangup
    }

    /// Whether the script needs its 20 ms clock now ([`Script::tick`], and silence for
    /// detection when no audio comes): while it detects, waits for the beep or listens for keys;
    /// not while a prompt plays (its end comes as [`Script::played_out`]) nor once over.
    pub fn needs_clock(&self) -> bool {
        matches!(self.state, State::Detecting | State::AwaitingBeep { .. } | State::Listening { .. })
    }

    /// Whether what comes on the call's port matters now: audio while it detects or waits for
    /// the beep, keys while it listens for them (during its prompt too). A call reads its port
    /// only then.
    pub fn hears(&self) -> bool {
        match self.state {
            State::Person { .. } => !self.plan.keys.is_empty(),
            _ => self.needs_clock(),
        }
    }

    /// Whether the script is over (it hung up).
    pub fn is_over(&self) -> bool {
        self.state == State::Over
    }

    /// The result, for a call that ended now (by the script or the far end's hang-up).
    pub fn result(&self) -> MediaResult {
        let mut r = self.result.clone();
        r.abandoned = r.answered_by == Some(AnsweredBy::Human)
            && match (r.message_started_ms, r.greeting_end_ms) {
                (None, _) => true,
                (Some(start), Some(end)) => start.saturating_sub(end) > ABANDON_AFTER_MS,
                (Some(_), None) => false,
            };
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::AmdParams;
    use uuid::Uuid;

    fn plan(amd: bool, voicemail: bool) -> MediaPlan {
        let mut keys = std::collections::BTreeMap::new();
        keys.insert("9".to_string(), KeyAction::OptOut);
        keys.insert("1".to_string(), KeyAction::End);
        MediaPlan {
            prompt: Some(Uuid::from_u128(1)),
            voicemail_prompt: voicemail.then(|| Uuid::from_u128(2)),
            amd: amd.then(AmdParams::default),
            keys,
            repeat: 2,
            key_timeout_ms: 1000,
            opt_out_list: Default::default(),
        }
    }

    fn frame(voice: bool) -> Vec<i16> {
        (0..160).map(|i| if voice { ((i % 40) as i16 - 20) * 400 } else { 0 }).collect()
    }

    fn tone() -> Vec<i16> {
        (0..160).map(|i| (8000.0 * (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 8000.0).sin()) as i16).collect()
    }

    /// Feeds `ms` of voice or silence from `t`; the first step that is not `Continue`.
    fn feed(s: &mut Script, t: &mut u32, voice: bool, ms: u32) -> Option<(u32, Step)> {
        for _ in 0..ms / 20 {
            *t += 20;
            let step = s.audio(&frame(voice), *t);
            if step != Step::Continue {
                return Some((*t, step));
            }
        }
        None
    }

    #[test]
    fn a_person_hears_the_message_within_a_second_of_their_hello_and_opts_out() {
        let (mut s, first) = Script::start(&plan(true, true));
        assert_eq!(first, Step::Continue, "listening first");
        assert!(s.needs_clock(), "detection hears silence by the clock");
        let mut t = 0;
        assert_eq!(feed(&mut s, &mut t, false, 300), None);
        assert_eq!(feed(&mut s, &mut t, true, 500), None);
        assert_eq!(feed(&mut s, &mut t, false, 2000), Some((1600, Step::Play(Play::Person))));
        assert_eq!(s.key('5', 2000), Step::Continue, "a key the plan does not name is ignored");
        assert_eq!(s.key('9', 2100), Step::Hangup);
        let r = s.result();
        assert_eq!((r.answered_by, r.amd_reason.as_deref()), (Some(AnsweredBy::Human), Some("human")));
        assert_eq!((r.greeting_end_ms, r.message_started_ms), (Some(800), Some(1600)));
        assert_eq!((r.dtmf.as_deref(), r.opted_out, r.abandoned), (Some("9"), true, false));
    }

    #[test]
    fn the_prompt_repeats_then_keys_are_awaited_then_the_call_ends() {
        let (mut s, first) = Script::start(&plan(false, false));
        assert_eq!(first, Step::Play(Play::Person), "no detection: the message at once");
        assert!(!s.needs_clock(), "a prompt playing needs no clock: its end is told");
        assert!(s.hears(), "but keys are heard while it plays");
        assert_eq!(s.played_out(3000), Step::Play(Play::Person), "repeat = 2");
        assert_eq!(s.played_out(6000), Step::Continue, "then listening for a key");
        assert!(s.needs_clock(), "listening ends by the clock");
        assert_eq!(s.tick(6500), Step::Continue);
        assert_eq!(s.tick(7000), Step::Hangup, "key_timeout_ms = 1000");
        assert!(!s.needs_clock() && !s.hears(), "over");
        let r = s.result();
        assert_eq!((r.answered_by, r.dtmf, r.abandoned), (Some(AnsweredBy::Unknown), None, false));
        let (s, _) = Script::start(&MediaPlan { keys: Default::default(), ..plan(false, false) });
        assert!(!s.hears(), "a prompt without keys hears nothing: its port is not read");
        let (mut s, _) = Script::start(&plan(false, false));
        assert_eq!(s.key('1', 500), Step::Hangup);
        assert_eq!((s.result().dtmf.as_deref(), s.result().opted_out), (Some("1"), false));
    }

    #[test]
    fn a_machine_gets_the_voicemail_after_its_beep() {
        let (mut s, _) = Script::start(&plan(true, true));
        let mut t = 0;
        assert_eq!(feed(&mut s, &mut t, true, 2000), None, "a long greeting: a machine, then its beep awaited");
        assert_eq!(s.result().answered_by, Some(AnsweredBy::Machine));
        assert_eq!(feed(&mut s, &mut t, false, 400), None);
        let mut steps = Vec::new();
        for _ in 0..10 {
            t += 20;
            steps.push(s.audio(&tone(), t));
        }
        assert!(steps.iter().all(|s| *s == Step::Continue), "not during the beep");
        t += 20;
        assert_eq!(s.audio(&frame(false), t), Step::Play(Play::Voicemail), "as the beep ends");
        assert_eq!(s.key('9', t + 100), Step::Continue, "a machine's keys are not a person's");
        assert_eq!(s.played_out(t + 5000), Step::Hangup);
        let r = s.result();
        assert_eq!((r.voicemail_left, r.voicemail_after.as_deref(), r.abandoned), (true, Some("beep"), false));
        assert_eq!(r.voicemail_started_ms, Some(t), "the frame after the beep's last");
    }

    #[test]
    fn a_machine_without_a_beep_or_a_voicemail_prompt() {
        let (mut s, _) = Script::start(&plan(true, true));
        let mut t = 0;
        feed(&mut s, &mut t, true, 2000);
        assert_eq!(
            feed(&mut s, &mut t, false, 5000),
            Some((2000 + 3000, Step::Play(Play::Voicemail))),
            "3 s after the greeting ended"
        );
        assert_eq!(s.result().voicemail_after.as_deref(), Some("silence"));
        let (mut s, _) = Script::start(&plan(true, false));
        let mut t = 0;
        assert_eq!(feed(&mut s, &mut t, true, 2000), Some((1500, Step::Hangup)), "no voicemail prompt: hang up");
    }

    #[test]
    fn a_person_answering_a_voicemail_only_campaign_is_an_abandoned_call() {
        let mut p = plan(true, true);
        p.prompt = None;
        p.keys.clear();
        let (mut s, _) = Script::start(&p);
        let mut t = 0;
        feed(&mut s, &mut t, true, 400);
        assert_eq!(feed(&mut s, &mut t, false, 1000), Some((1200, Step::Hangup)), "nothing to say to a person");
        let r = s.result();
        assert_eq!((r.answered_by, r.message_started_ms, r.abandoned), (Some(AnsweredBy::Human), None, true));
    }
}
