//! Answering-machine detection on the callee's first seconds of audio, after Asterisk's
//! `app_amd`: frames of 20 ms are voice or silence by their mean amplitude; runs of voice make
//! words; the greeting's shape decides.
//!
//! - silence for `initial_silence_ms` before anyone speaks: **machine** (`initial_silence`);
//! - a word longer than `maximum_word_ms`: **machine** (`long_word`);
//! - `maximum_words` words: **machine** (`max_words`);
//! - voice adding up to `greeting_ms`: **machine** (`long_greeting`);
//! - a short greeting then `after_greeting_silence_ms` of silence: **human** (`human`), the
//!   person said "Hello?" and waits for an answer;
//! - nothing decided within `total_analysis_ms`: **not sure** (`too_long`).
//!
//! A decision is a pure function of the frames: the same audio gives the same answer.

use serde::{Deserialize, Serialize};

/// Who answered, as detection decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AnsweredBy {
    Human,
    Machine,
    Unknown,
}

impl AnsweredBy {
    pub fn as_str(self) -> &'static str {
        match self {
            AnsweredBy::Human => "human",
            AnsweredBy::Machine => "machine",
            AnsweredBy::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<AnsweredBy> {
        match s {
            "human" => Some(AnsweredBy::Human),
            "machine" => Some(AnsweredBy::Machine),
            "unknown" => Some(AnsweredBy::Unknown),
            _ => None,
        }
    }
}

/// Detection's parameters (a campaign's `telephony.media.amd`), Asterisk's names and defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct AmdParams {
    /// Silence before the greeting that makes a machine.
    pub initial_silence_ms: u32,
    /// Voice in all that makes a machine's greeting.
    pub greeting_ms: u32,
    /// Silence after a greeting that makes a person (they wait for an answer). At most 1.5 s:
    /// their message must start within 2 s of their greeting's end (47 CFR 64.1200(a)(7)).
    pub after_greeting_silence_ms: u32,
    /// Detection gives up (`unknown`) after this long.
    pub total_analysis_ms: u32,
    /// Voice shorter than this is noise, not a word.
    pub min_word_ms: u32,
    /// Silence that ends a word.
    pub between_words_silence_ms: u32,
    /// Words that make a machine.
    pub maximum_words: u32,
    /// One word longer than this makes a machine.
    pub maximum_word_ms: u32,
    /// Mean absolute amplitude (of 32767) below which a frame is silence.
    pub silence_threshold: u32,
}

impl Default for AmdParams {
    fn default() -> Self {
        AmdParams {
            initial_silence_ms: 2500,
            greeting_ms: 1500,
            after_greeting_silence_ms: 800,
            total_analysis_ms: 5000,
            min_word_ms: 100,
            between_words_silence_ms: 50,
            maximum_words: 3,
            maximum_word_ms: 5000,
            silence_threshold: 256,
        }
    }
}

impl AmdParams {
    /// Each parameter within its range; the error names the field (under `prefix`).
    pub fn check(&self, prefix: &str) -> Result<(), crate::field::FieldError> {
        let ranges: [(&str, u32, u32, u32); 9] = [
            ("initial_silence_ms", self.initial_silence_ms, 500, 10_000),
            ("greeting_ms", self.greeting_ms, 500, 10_000),
            ("after_greeting_silence_ms", self.after_greeting_silence_ms, 200, 1_500),
            ("total_analysis_ms", self.total_analysis_ms, 1_000, 15_000),
            ("min_word_ms", self.min_word_ms, 20, 1_000),
            ("between_words_silence_ms", self.between_words_silence_ms, 20, 1_000),
            ("maximum_words", self.maximum_words, 1, 20),
            ("maximum_word_ms", self.maximum_word_ms, 500, 10_000),
            ("silence_threshold", self.silence_threshold, 1, 10_000),
        ];
        for (name, v, lo, hi) in ranges {
            if !(lo..=hi).contains(&v) {
                return Err(crate::field::FieldError::new(
                    format!("{prefix}.{name}"),
                    format!("must be between {lo} and {hi}"),
                ));
            }
        }
        Ok(())
    }
}

/// What detection decided, and when (ms of audio since the answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub answered_by: AnsweredBy,
    /// Why: `human`, `initial_silence`, `long_word`, `max_words`, `long_greeting`, `too_long`.
    pub reason: &'static str,
    pub at_ms: u32,
    /// When the greeting's last voice ended (a person's: the 2-second clock of a message
    /// starts there).
    pub greeting_end_ms: Option<u32>,
}

/// Detection over one call's audio, frame by frame.
#[derive(Clone, Debug)]
pub struct Amd {
    p: AmdParams,
    total_ms: u32,
    /// A first word was heard (the greeting started).
    greeting: bool,
    voice_ms: u32,
    word_ms: u32,
    in_word: bool,
    words: u32,
    silence_ms: u32,
    last_voice_end_ms: Option<u32>,
    decided: Option<Decision>,
}

impl Amd {
    pub fn new(p: AmdParams) -> Amd {
        Amd {
            p,
            total_ms: 0,
            greeting: false,
            voice_ms: 0,
            word_ms: 0,
            in_word: false,
            words: 0,
            silence_ms: 0,
            last_voice_end_ms: None,
            decided: None,
        }
    }

    /// Whether a frame is voice: its mean absolute amplitude at or above the threshold.
    pub fn is_voice(&self, samples: &[i16]) -> bool {
        let sum: u64 = samples.iter().map(|s| u64::from(s.unsigned_abs())).sum();
        sum >= u64::from(self.p.silence_threshold) * samples.len().max(1) as u64
    }

    /// Takes one frame of 8 kHz audio (any length; 20 ms = 160 samples); the decision once
    /// made (the same one for every later frame).
    pub fn frame(&mut self, samples: &[i16]) -> Option<Decision> {
        if self.decided.is_some() {
            return self.decided;
        }
        let ms = (samples.len() as u32).div_ceil(8);
        self.total_ms += ms;
        let d = if self.is_voice(samples) { self.voice(ms) } else { self.silence(ms) };
        let d = d.or_else(|| {
            (self.total_ms >= self.p.total_analysis_ms).then(|| self.decide(AnsweredBy::Unknown, "too_long"))
        });
        self.decided = d;
        d
    }

    fn voice(&mut self, ms: u32) -> Option<Decision> {
        self.silence_ms = 0;
        self.voice_ms += ms;
        self.word_ms += ms;
        if !self.in_word && self.word_ms >= self.p.min_word_ms {
            self.in_word = true;
            self.words += 1;
            self.greeting = true;
        }
        self.last_voice_end_ms = Some(self.total_ms);
        if self.word_ms >= self.p.maximum_word_ms {
            return Some(self.decide(AnsweredBy::Machine, "long_word"));
        }
        if self.words >= self.p.maximum_words {
            return Some(self.decide(AnsweredBy::Machine, "max_words"));
        }
        if self.voice_ms >= self.p.greeting_ms {
            return Some(self.decide(AnsweredBy::Machine, "long_greeting"));
        }
        None
    }

    fn silence(&mut self, ms: u32) -> Option<Decision> {
        self.silence_ms += ms;
        if self.silence_ms >= self.p.between_words_silence_ms {
            self.in_word = false;
            self.word_ms = 0;
        }
        if !self.greeting && self.silence_ms >= self.p.initial_silence_ms {
            return Some(self.decide(AnsweredBy::Machine, "initial_silence"));
        }
        if self.greeting && self.silence_ms >= self.p.after_greeting_silence_ms {
            return Some(self.decide(AnsweredBy::Human, "human"));
        }
        None
    }

    fn decide(&self, answered_by: AnsweredBy, reason: &'static str) -> Decision {
        Decision { answered_by, reason, at_ms: self.total_ms, greeting_end_ms: self.last_voice_end_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20 ms frames: `voice` a loud 200 Hz-ish buzz, else near silence.
    fn frames(pattern: &[(bool, u32)]) -> Vec<Vec<i16>> {
        let mut out = Vec::new();
        for &(voice, ms) in pattern {
            for f in 0..ms / 20 {
                out.push(
                    (0..160)
                        .map(|i| if voice { (((i + f) % 40) as i16 - 20) * 400 } else { ((i % 3) as i16 - 1) * 20 })
                        .collect(),
                );
            }
        }
        out
    }

    fn run(pattern: &[(bool, u32)]) -> Option<Decision> {
        let mut amd = Amd::new(AmdParams::default());
        frames(pattern).iter().find_map(|f| amd.frame(f))
    }

    #[test]
    fn a_short_hello_then_silence_is_a_person() {
        let d = run(&[(false, 400), (true, 500), (false, 2000)]).expect("decided");
        assert_eq!((d.answered_by, d.reason), (AnsweredBy::Human, "human"));
        assert_eq!(d.greeting_end_ms, Some(900));
        assert_eq!(d.at_ms, 900 + 800, "after 800 ms of silence following the greeting");
    }

    #[test]
    fn machines_by_each_rule() {
        let long = run(&[(false, 200), (true, 1600), (false, 1000)]).expect("decided");
        assert_eq!((long.answered_by, long.reason, long.at_ms), (AnsweredBy::Machine, "long_greeting", 1700));
        let words = run(&[(true, 300), (false, 100), (true, 300), (false, 100), (true, 300), (false, 1000)]);
        assert_eq!(words.map(|d| (d.answered_by, d.reason)), Some((AnsweredBy::Machine, "max_words")));
        let silent = run(&[(false, 3000)]).expect("decided");
        assert_eq!((silent.answered_by, silent.reason, silent.at_ms), (AnsweredBy::Machine, "initial_silence", 2500));
    }

    #[test]
    fn noise_too_short_for_a_word_and_no_decision_in_time() {
        // 40 ms blips are noise, not words: the silence after them is still initial silence.
        let d = run(&[(true, 40), (false, 2500)]).expect("decided");
        assert_eq!((d.reason, d.at_ms), ("initial_silence", 2540), "a blip is not a greeting");
        let mut p = AmdParams { total_analysis_ms: 1000, ..AmdParams::default() };
        p.greeting_ms = 5000;
        let mut amd = Amd::new(p);
        let d = frames(&[(true, 60), (false, 40)].repeat(20)).iter().find_map(|f| amd.frame(f)).expect("decided");
        assert_eq!((d.answered_by, d.reason, d.at_ms), (AnsweredBy::Unknown, "too_long", 1000));
    }

    #[test]
    fn parameters_are_checked_by_name() {
        assert!(AmdParams::default().check("telephony.media.amd").is_ok());
        let e = AmdParams { greeting_ms: 50, ..AmdParams::default() }.check("telephony.media.amd").unwrap_err();
        assert_eq!(e.field, "telephony.media.amd.greeting_ms");
    }
}
