//! The beep of a voicemail greeting: a steady pure tone (typically 400–2000 Hz) of at least
//! the script's minimum (120 ms). A frame is tonal when one frequency (Goertzel, 25 Hz steps
//! over 300–2100 Hz) holds 80 % of its energy (`bench amd` counts speech taken for a beep); a beep is a run of tonal frames at one frequency, and it is over when
//! a frame is not. Speech spreads its energy over harmonics and moves in pitch: not tonal.

/// Frequencies tried, Hz.
const LOW: u32 = 300;
const HIGH: u32 = 2100;
const STEP: u32 = 25;
/// Share of the frame's energy the best frequency must hold.
const PURITY: f32 = 0.8;

/// A detector over one call's 20 ms frames (8 kHz).
#[derive(Clone, Debug)]
pub struct BeepDetector {
    /// Goertzel coefficients `2 cos(2π f / 8000)` per frequency.
    coeffs: Vec<(u32, f32)>,
    min_ms: u32,
    silence_threshold: u32,
    run_ms: u32,
    run_hz: u32,
}

/// What a frame told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beep {
    /// No beep (yet).
    None,
    /// A tone is sounding (`hz`, for `ms` so far).
    Sounding { hz: u32, ms: u32 },
    /// A tone of at least the minimum length just ended: the recording has started.
    Ended { hz: u32, ms: u32 },
}

impl BeepDetector {
    pub fn new(min_ms: u32, silence_threshold: u32) -> BeepDetector {
        let coeffs = (LOW..=HIGH)
            .step_by(STEP as usize)
            .map(|f| (f, 2.0 * (2.0 * std::f32::consts::PI * f as f32 / 8000.0).cos()))
            .collect();
        BeepDetector { coeffs, min_ms, silence_threshold, run_ms: 0, run_hz: 0 }
    }

    /// The frequency holding most of `samples`' energy, if it holds at least [`PURITY`] of it
    /// and the frame is not silence.
    pub fn tone_of(&self, samples: &[i16]) -> Option<u32> {
        let n = samples.len();
        let mean_abs = samples.iter().map(|s| u64::from(s.unsigned_abs())).sum::<u64>() / n.max(1) as u64;
        if n == 0 || mean_abs < u64::from(self.silence_threshold) {
            return None;
        }
        let energy: f32 = samples.iter().map(|s| (*s as f32) * (*s as f32)).sum();
        let (hz, power) =
            self.coeffs.iter().map(|&(f, c)| (f, goertzel(samples, c))).max_by(|a, b| a.1.total_cmp(&b.1))?;
        // A pure tone's Goertzel power is (N/2) × its energy.
        (power / (n as f32 / 2.0) >= PURITY * energy).then_some(hz)
    }

    /// Takes one frame.
    pub fn frame(&mut self, samples: &[i16]) -> Beep {
        let ms = (samples.len() as u32).div_ceil(8);
        match self.tone_of(samples) {
            Some(hz) if self.run_ms > 0 && hz.abs_diff(self.run_hz) <= STEP => {
                self.run_ms += ms;
                Beep::Sounding { hz: self.run_hz, ms: self.run_ms }
            }
            Some(hz) => {
                self.run_ms = ms;
                self.run_hz = hz;
                Beep::Sounding { hz, ms }
            }
            None => {
                let (hz, ran) = (self.run_hz, std::mem::take(&mut self.run_ms));
                if ran >= self.min_ms { Beep::Ended { hz, ms: ran } } else { Beep::None }
            }
        }
    }
}

fn goertzel(samples: &[i16], coeff: f32) -> f32 {
    let (mut s1, mut s2) = (0f32, 0f32);
    for x in samples {
        let s0 = *x as f32 + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(hz: f32, ms: u32, amp: f32, offset: usize) -> Vec<i16> {
        (0..ms as usize * 8)
            .map(|i| (amp * (2.0 * std::f32::consts::PI * hz * (i + offset) as f32 / 8000.0).sin()) as i16)
            .collect()
    }

    /// A voiced vowel: a 140 Hz fundamental with falling harmonics and a drifting pitch.
    fn vowel(ms: u32, offset: usize) -> Vec<i16> {
        (0..ms as usize * 8)
            .map(|i| {
                let t = (i + offset) as f32 / 8000.0;
                let f0 = 140.0 + 15.0 * (t * 3.0).sin();
                (1..12).map(|h| 6000.0 / h as f32 * (2.0 * std::f32::consts::PI * f0 * h as f32 * t).sin()).sum::<f32>()
                    as i16
            })
            .collect()
    }

    fn run(d: &mut BeepDetector, audio: &[i16]) -> Vec<Beep> {
        audio.chunks(160).map(|f| d.frame(f)).collect()
    }

    #[test]
    fn a_beep_is_found_where_it_ends_at_any_frequency_between_bins() {
        for hz in [440.0, 850.0, 1000.0, 1012.5, 1400.0, 2000.0] {
            let mut d = BeepDetector::new(80, 256);
            let mut audio = vowel(1000, 0);
            audio.extend(sine(hz, 300, 8000.0, 0));
            audio.extend(vec![0; 800]);
            let beeps = run(&mut d, &audio);
            let ended: Vec<(usize, Beep)> =
                beeps.iter().copied().enumerate().filter(|(_, b)| matches!(b, Beep::Ended { .. })).collect();
            assert_eq!(ended.len(), 1, "{hz} Hz: one beep: {beeps:?}");
            let (frame, Beep::Ended { hz: found, ms }) = ended[0] else { unreachable!() };
            assert_eq!(frame, 65, "{hz} Hz: ended in the first frame after it (1000 ms + 300 ms)");
            assert!((found as f32 - hz).abs() <= 25.0, "{hz} Hz found as {found}");
            assert_eq!(ms, 300);
        }
    }

    #[test]
    fn speech_and_short_tones_are_not_beeps() {
        let mut d = BeepDetector::new(80, 256);
        let beeps = run(&mut d, &vowel(3000, 0));
        assert!(beeps.iter().all(|b| !matches!(b, Beep::Ended { .. })), "a vowel is not a beep");
        let mut audio = sine(1000.0, 40, 8000.0, 0);
        audio.extend(vec![0; 400]);
        assert!(run(&mut d, &audio).iter().all(|b| !matches!(b, Beep::Ended { .. })), "40 ms is a click");
    }
}
