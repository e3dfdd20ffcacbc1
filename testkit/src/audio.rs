//! Test audio made at test time with Debian's `espeak-ng` (speech) and `sox` (8 kHz, silence,
//! tones, G.711): what a person or an answering machine says when they answer, and the prompts
//! the dialer plays. Synthetic, and said to be.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::HarnessError;

pub const AUDIO_INSTALL: &str = "install them with: apt-get install -y espeak-ng sox";

fn run(cmd: &mut Command, what: &str) -> Result<(), HarnessError> {
    let out = cmd.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => HarnessError::Missing { what: what.into(), hint: AUDIO_INSTALL.into() },
        _ => HarnessError::Command { what: what.into(), detail: e.to_string() },
    })?;
    if !out.status.success() {
        return Err(HarnessError::Command { what: what.into(), detail: String::from_utf8_lossy(&out.stderr).into() });
    }
    Ok(())
}

const PCM: [&str; 8] = ["-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer"];

/// `text` spoken by espeak-ng (`voice`, `speed` words a minute), as 8 kHz 16-bit mono WAV at
/// `out`.
pub fn speech(text: &str, voice: &str, speed: u32, out: &Path) -> Result<(), HarnessError> {
    let raw = out.with_extension("espeak.wav");
    run(
        Command::new("espeak-ng").args(["-v", voice, "-s", &speed.to_string(), "-w"]).arg(&raw).arg(text),
        "espeak-ng",
    )?;
    run(Command::new("sox").arg(&raw).args(PCM).arg(out), "sox")?;
    let _ = std::fs::remove_file(raw);
    Ok(())
}

/// `ms` of silence.
pub fn silence(ms: u32, out: &Path) -> Result<(), HarnessError> {
    run(Command::new("sox").args(["-n"]).args(PCM).arg(out).args(["trim", "0", &secs(ms)]), "sox")
}

/// A sine tone of `hz` for `ms` at half scale.
pub fn tone(hz: u32, ms: u32, out: &Path) -> Result<(), HarnessError> {
    let synth = ["synth", &secs(ms), "sine", &hz.to_string(), "vol", "0.5"];
    run(Command::new("sox").args(["-n"]).args(PCM).arg(out).args(synth), "sox")
}

/// White noise of `ms` at `vol` (of full scale).
pub fn noise(ms: u32, vol: f32, out: &Path) -> Result<(), HarnessError> {
    let synth = ["synth", &secs(ms), "whitenoise", "vol", &format!("{vol}")];
    run(Command::new("sox").args(["-n"]).args(PCM).arg(out).args(synth), "sox")
}

/// `a` and `b` mixed (summed, each at full volume) into `out`, as long as the longer.
pub fn mix(a: &Path, b: &Path, out: &Path) -> Result<(), HarnessError> {
    run(Command::new("sox").args(["-m", "-v", "1"]).arg(a).args(["-v", "1"]).arg(b).args(PCM).arg(out), "sox")
}

/// `parts` one after the other into `out` (8 kHz 16-bit PCM, or µ-law when `ulaw`).
pub fn concat(parts: &[PathBuf], ulaw: bool, out: &Path) -> Result<(), HarnessError> {
    let mut cmd = Command::new("sox");
    cmd.args(parts);
    if ulaw {
        cmd.args(["-r", "8000", "-c", "1", "-e", "u-law"]);
    }
    run(cmd.arg(out), "sox")
}

/// `path` (any WAV sox reads) as 8 kHz 16-bit mono PCM, written into `dir`; its path.
pub fn to_pcm(path: &Path, dir: &Path) -> Result<PathBuf, HarnessError> {
    let out =
        dir.join(format!("pcm-{}", path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()));
    run(Command::new("sox").arg(path).args(PCM).arg(&out), "sox")?;
    Ok(out)
}

/// A file's length in ms (sox's count of samples at 8 kHz).
pub fn duration_ms(path: &Path) -> Result<u32, HarnessError> {
    let out = Command::new("soxi")
        .arg("-s")
        .arg(path)
        .output()
        .map_err(|e| HarnessError::Missing { what: "soxi".into(), hint: format!("{AUDIO_INSTALL} ({e})") })?;
    let samples: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|_| HarnessError::Output {
        what: "soxi".into(),
        expected: "a sample count",
        detail: String::from_utf8_lossy(&out.stderr).into(),
    })?;
    Ok((samples * 1000 / 8000) as u32)
}

fn secs(ms: u32) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// What a far end sends when it answers, as µ-law WAV for sipp's `rtp_stream`.
#[derive(Debug)]
pub struct Greeting {
    pub path: PathBuf,
    /// Where its speech ends, and (a machine's) where its beep ends, in ms from the start.
    pub speech_end_ms: u32,
    pub beep_end_ms: Option<u32>,
}

/// A person: 300 ms of silence, "Hello?", then `after_ms` of silence.
pub fn person(dir: &Path, voice: &str, after_ms: u32) -> Result<Greeting, HarnessError> {
    let (lead, hello, tail) = (dir.join("p-lead.wav"), dir.join("p-hello.wav"), dir.join("p-tail.wav"));
    silence(300, &lead)?;
    speech("Hello?", voice, 170, &hello)?;
    silence(after_ms, &tail)?;
    let path = dir.join(format!("person-{voice}.wav"));
    concat(&[lead, hello.clone(), tail], true, &path)?;
    Ok(Greeting { speech_end_ms: 300 + duration_ms(&hello)?, beep_end_ms: None, path })
}

/// An answering machine: its greeting, 400 ms, a 1 kHz beep of 500 ms, then 10 s of silence.
pub fn machine(dir: &Path, voice: &str) -> Result<Greeting, HarnessError> {
    let text = "Hi, you have reached the voicemail of Alex Morgan. I can't take your call right now. \
                Please leave your name and number after the tone.";
    let (greeting, gap, beep, tail) =
        (dir.join("m-greeting.wav"), dir.join("m-gap.wav"), dir.join("m-beep.wav"), dir.join("m-tail.wav"));
    speech(text, voice, 165, &greeting)?;
    silence(400, &gap)?;
    tone(1000, 500, &beep)?;
    silence(10_000, &tail)?;
    let path = dir.join(format!("machine-{voice}.wav"));
    concat(&[greeting.clone(), gap, beep, tail], true, &path)?;
    let speech_end_ms = duration_ms(&greeting)?;
    Ok(Greeting { speech_end_ms, beep_end_ms: Some(speech_end_ms + 900), path })
}

/// A prompt the dialer plays: `text` spoken, as 8 kHz 16-bit PCM WAV bytes.
pub fn prompt(dir: &Path, name: &str, text: &str) -> Result<Vec<u8>, HarnessError> {
    let path = dir.join(format!("prompt-{name}.wav"));
    speech(text, "en-us", 160, &path)?;
    std::fs::read(&path).map_err(|e| HarnessError::Command { what: "reading a prompt".into(), detail: e.to_string() })
}
