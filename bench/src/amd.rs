//! `bench amd`: answering-machine detection on a labelled set of synthetic clips, the
//! confusion matrix and the time to decision.
//!
//! The clips are made by this command (and kept in `--clips`, made again only when missing)
//! with espeak-ng voices at several speeds and sox noise levels: people say a short greeting
//! ("Hello?", "Hi, this is Sam.") after a random pause and then wait; answering machines say
//! a voicemail greeting, then beep at one of several pitches. It is synthetic speech, not
//! recordings of people: a figure from it says how the detector treats the shapes of greetings,
//! not how it does on a real carrier's calls.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use dialer_domain::media::amd::{Amd, AmdParams, AnsweredBy};
use dialer_domain::media::tone::{Beep, BeepDetector};
use dialer_domain::media::wav;
use dialer_testkit::audio;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the clips are kept (made again only when missing).
    #[arg(long, default_value_os_t = default_dir())]
    pub clips: PathBuf,
    /// Clips of people.
    #[arg(long, default_value_t = 120)]
    pub people: usize,
    /// Clips of answering machines.
    #[arg(long, default_value_t = 120)]
    pub machines: usize,
    /// The draws of voices, speeds, texts and noise.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the results (JSON) here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn default_dir() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into())).join(".cache/dialer/amd-clips")
}

const VOICES: [&str; 6] = ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us+f3"];
const SPEEDS: [u32; 4] = [130, 155, 175, 200];
/// White noise under the speech (of full scale): none, a quiet line, a noisy one.
const NOISE: [f32; 3] = [0.0, 0.002, 0.006];
const PEOPLE: [&str; 10] = [
    "Hello?",
    "Hello.",
    "Hi!",
    "Yeah?",
    "Hello, who's this?",
    "Hi, this is Sam.",
    "Yes, hello?",
    "Good morning.",
    "Hello, Jones residence.",
    "Speaking.",
];
const MACHINES: [&str; 6] = [
    "Hi, you've reached Alex. I can't come to the phone right now. Please leave a message after the beep.",
    "The person you are calling is not available. At the tone, please record your message.",
    "Hello, this is Jordan. Leave your name and number and I'll call you back.",
    "You have reached the voicemail box of five five five, zero one two three. Please leave a message.",
    "Thanks for calling. We're away right now, so leave a message after the tone.",
    "Hey, it's Chris. Leave a message.",
];
const BEEPS: [u32; 4] = [440, 850, 1000, 1400];

/// One labelled clip.
struct Clip {
    path: PathBuf,
    machine: bool,
    voice: &'static str,
    speed: u32,
    noise: f32,
}

/// Makes (or finds) the clips.
fn clips(a: &Args) -> Result<Vec<Clip>> {
    std::fs::create_dir_all(&a.clips).with_context(|| format!("creating {}", a.clips.display()))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let pb = bar((a.people + a.machines) as u64, "clips");
    let mut out = Vec::new();
    for i in 0..a.people + a.machines {
        let machine = i >= a.people;
        let voice = VOICES[rng.random_range(0..VOICES.len())];
        let speed = SPEEDS[rng.random_range(0..SPEEDS.len())];
        let noise = NOISE[rng.random_range(0..NOISE.len())];
        let text = if machine {
            MACHINES[rng.random_range(0..MACHINES.len())]
        } else {
            PEOPLE[rng.random_range(0..PEOPLE.len())]
        };
        let (lead, beep) = (rng.random_range(100..700), BEEPS[rng.random_range(0..BEEPS.len())]);
        let path = a.clips.join(format!("{}-{i:04}-s{}.wav", if machine { "machine" } else { "person" }, a.seed));
        if !path.exists() {
            make(&path, machine, text, voice, speed, noise, lead, beep)
                .with_context(|| format!("making {}", path.display()))?;
        }
        out.push(Clip { path, machine, voice, speed, noise });
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn make(
    path: &Path,
    machine: bool,
    text: &str,
    voice: &str,
    speed: u32,
    noise: f32,
    lead: u32,
    beep: u32,
) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let part = |n: &str| tmp.path().join(n);
    audio::silence(lead, &part("lead.wav"))?;
    audio::speech(text, voice, speed, &part("speech.wav"))?;
    let mut parts = vec![part("lead.wav"), part("speech.wav")];
    if machine {
        audio::silence(300, &part("gap.wav"))?;
        audio::tone(beep, 400, &part("beep.wav"))?;
        parts.extend([part("gap.wav"), part("beep.wav")]);
    }
    audio::silence(4000, &part("tail.wav"))?;
    parts.push(part("tail.wav"));
    if noise == 0.0 {
        audio::concat(&parts, false, path)?;
    } else {
        audio::concat(&parts, false, &part("clean.wav"))?;
        let ms = audio::duration_ms(&part("clean.wav"))?;
        audio::noise(ms, noise, &part("noise.wav"))?;
        audio::mix(&part("clean.wav"), &part("noise.wav"), path)?;
    }
    Ok(())
}

/// The beep detector over a machine clip from its start: when it first says a beep ended (ms),
/// if it does.
fn first_beep(samples: &[i16], threshold: u32) -> Option<u32> {
    let mut d = BeepDetector::new(dialer_domain::media::script::BEEP_MIN_MS, threshold);
    samples
        .chunks(160)
        .enumerate()
        .find_map(|(i, f)| matches!(d.frame(f), Beep::Ended { .. }).then_some((i as u32 + 1) * 20))
}

/// Detection over a clip, then silence (the callee waits): the decision and when.
fn detect(samples: &[i16], p: AmdParams) -> (AnsweredBy, &'static str, u32) {
    let mut amd = Amd::new(p);
    let silence = [0i16; 160];
    let frames = samples.chunks(160).chain(std::iter::repeat(&silence[..]));
    for f in frames.take(2000) {
        if let Some(d) = amd.frame(f) {
            return (d.answered_by, d.reason, d.at_ms);
        }
    }
    (AnsweredBy::Unknown, "none", 0)
}

pub fn run(a: Args) -> Result<()> {
    let clips = clips(&a).context("making the clips (needs espeak-ng and sox: apt-get install -y espeak-ng sox)")?;
    let p = AmdParams::default();
    let mut matrix = [[0usize; 3]; 2];
    let mut person_ms = Vec::new();
    let mut misses = Vec::new();
    let (mut beeps_right, mut beeps_early, mut beeps_missed) = (0, 0, 0);
    for c in &clips {
        let bytes = std::fs::read(&c.path)?;
        let audio = wav::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", c.path.display()))?;
        let (who, reason, at) = detect(&audio.samples, p);
        if c.machine {
            // The clip ends with 4 s of silence after its 400 ms beep.
            let beep_end = (audio.samples.len() as u32 / 8).saturating_sub(4000);
            match first_beep(&audio.samples, p.silence_threshold) {
                Some(t) if t + 20 < beep_end => beeps_early += 1,
                Some(t) if t <= beep_end + 60 => beeps_right += 1,
                _ => beeps_missed += 1,
            }
        }
        let col = match who {
            AnsweredBy::Human => 0,
            AnsweredBy::Machine => 1,
            AnsweredBy::Unknown => 2,
        };
        matrix[usize::from(c.machine)][col] += 1;
        if !c.machine && who == AnsweredBy::Human {
            person_ms.push(at);
        }
        let right = if c.machine { who == AnsweredBy::Machine } else { who == AnsweredBy::Human };
        if !right {
            misses.push(json!({"clip": c.path.file_name().map(|n| n.to_string_lossy().to_string()), "voice": c.voice,
                               "speed": c.speed, "noise": c.noise, "decided": who.as_str(), "reason": reason, "at_ms": at}));
        }
    }
    person_ms.sort_unstable();
    let median = person_ms.get(person_ms.len() / 2).copied().unwrap_or(0);
    let p90 = person_ms.get(person_ms.len() * 9 / 10).copied().unwrap_or(0);
    let share = |row: [usize; 3], i: usize| row[i] as f64 / row.iter().sum::<usize>().max(1) as f64;
    println!(
        "AMD on {} synthetic clips (espeak-ng, {} voices, {} speeds, {} noise levels; default parameters)\n",
        clips.len(),
        VOICES.len(),
        SPEEDS.len(),
        NOISE.len()
    );
    println!("| truth \\ decided | human | machine | unknown | right |");
    println!("|---|---|---|---|---|");
    for (name, row, right) in [("person", matrix[0], 0), ("machine", matrix[1], 1)] {
        println!("| {name} | {} | {} | {} | {:.1} % |", row[0], row[1], row[2], 100.0 * share(row, right));
    }
    println!("\npeople: decided after {median} ms (median), {p90} ms (p90), from the answer");
    println!(
        "beeps (machines, the detector run from the answer): {beeps_right} found as they ended, {beeps_early} taken early (speech), {beeps_missed} missed"
    );
    let result = json!({
        "clips": clips.len(), "seed": a.seed, "matrix": {"person": matrix[0], "machine": matrix[1]},
        "people_right": share(matrix[0], 0), "machines_right": share(matrix[1], 1),
        "person_decision_ms": {"median": median, "p90": p90}, "misses": misses,
        "beeps": {"right": beeps_right, "early": beeps_early, "missed": beeps_missed},
    });
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)?;
    }
    Ok(())
}

fn bar(n: u64, what: &str) -> ProgressBar {
    ProgressBar::new(n).with_style(
        ProgressStyle::with_template(&format!("{what:<6} {{bar:40}} {{pos}}/{{len}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    )
}
