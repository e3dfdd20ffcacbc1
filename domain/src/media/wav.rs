//! Prompts as operators upload them: a WAV file (RIFF) holding 8 kHz mono audio, either 16-bit
//! linear PCM or G.711 (µ-law, A-law). Anything else is refused with what to send instead.

use super::g711::Law;

/// The one sample rate of telephone audio (G.711).
pub const RATE: u32 = 8_000;

/// Why a WAV file is not a usable prompt; each says what to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavError {
    #[error("not a WAV file (no RIFF/WAVE header): send a .wav file, 8 kHz mono, 16-bit PCM or G.711")]
    NotWav,
    #[error("the WAV file has no {0} chunk (truncated?): send the whole file")]
    MissingChunk(&'static str),
    #[error(
        "audio format {0} is not supported: send 16-bit PCM (1), A-law (6) or µ-law (7), e.g. `sox in.wav -r 8000 -c 1 -b 16 -e signed-integer out.wav`"
    )]
    Format(u16),
    #[error("{0} channels: send mono (1 channel), e.g. `sox in.wav -c 1 out.wav`")]
    Channels(u16),
    #[error("sample rate {0} Hz: send 8000 Hz, e.g. `sox in.wav -r 8000 out.wav`")]
    Rate(u32),
    #[error("{bits}-bit samples for format {format}: PCM must be 16-bit, G.711 8-bit")]
    Bits { format: u16, bits: u16 },
    #[error("the audio is empty: send at least 100 ms of audio")]
    Empty,
    #[error("the audio is {0} s long: send at most {max} s", max = MAX_SECONDS)]
    TooLong(u64),
}

/// The longest prompt accepted (a voicemail drop or a notice; longer audio is not a prompt).
pub const MAX_SECONDS: u64 = 300;

/// A prompt's audio: linear 16-bit samples at 8 kHz.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audio {
    pub samples: Vec<i16>,
}

impl Audio {
    pub fn duration_ms(&self) -> u64 {
        self.samples.len() as u64 * 1000 / u64::from(RATE)
    }

    /// A WAV file (16-bit PCM, 8 kHz, mono) holding this audio.
    pub fn to_wav(&self) -> Vec<u8> {
        let data_len = (self.samples.len() * 2) as u32;
        let mut w = Vec::with_capacity(44 + data_len as usize);
        w.extend_from_slice(b"RIFF");
        w.extend_from_slice(&(36 + data_len).to_le_bytes());
        w.extend_from_slice(b"WAVEfmt ");
        w.extend_from_slice(&16u32.to_le_bytes());
        w.extend_from_slice(&1u16.to_le_bytes());
        w.extend_from_slice(&1u16.to_le_bytes());
        w.extend_from_slice(&RATE.to_le_bytes());
        w.extend_from_slice(&(RATE * 2).to_le_bytes());
        w.extend_from_slice(&2u16.to_le_bytes());
        w.extend_from_slice(&16u16.to_le_bytes());
        w.extend_from_slice(b"data");
        w.extend_from_slice(&data_len.to_le_bytes());
        for s in &self.samples {
            w.extend_from_slice(&s.to_le_bytes());
        }
        w
    }
}

/// Reads a WAV file: its `fmt ` chunk must say 8 kHz mono 16-bit PCM, A-law or µ-law; other
/// chunks (LIST, fact) are skipped.
pub fn parse(bytes: &[u8]) -> Result<Audio, WavError> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWav);
    }
    let mut fmt: Option<(u16, u16, u32, u16)> = None;
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]) as usize;
        let body = &bytes[at + 8..(at + 8).saturating_add(len).min(bytes.len())];
        match id {
            b"fmt " if body.len() >= 16 => {
                let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
                let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
                fmt = Some((u16_at(0), u16_at(2), rate, u16_at(14)));
            }
            b"data" => return samples(fmt.ok_or(WavError::MissingChunk("fmt"))?, body),
            _ => {}
        }
        at = at + 8 + len + (len & 1);
    }
    Err(WavError::MissingChunk(if fmt.is_some() { "data" } else { "fmt" }))
}

fn samples((format, channels, rate, bits): (u16, u16, u32, u16), data: &[u8]) -> Result<Audio, WavError> {
    // WAVE_FORMAT_EXTENSIBLE (0xfffe) is refused too: its subformat is rarely G.711.
    let law = match format {
        1 => None,
        6 => Some(Law::Alaw),
        7 => Some(Law::Ulaw),
        other => return Err(WavError::Format(other)),
    };
    if channels != 1 {
        return Err(WavError::Channels(channels));
    }
    if rate != RATE {
        return Err(WavError::Rate(rate));
    }
    let samples: Vec<i16> = match (law, bits) {
        (None, 16) => data.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect(),
        (Some(law), 8) => data.iter().map(|b| law.decode(*b)).collect(),
        _ => return Err(WavError::Bits { format, bits }),
    };
    let audio = Audio { samples };
    match audio.duration_ms() {
        0..100 => Err(WavError::Empty),
        ms if ms > MAX_SECONDS * 1000 => Err(WavError::TooLong(ms / 1000)),
        _ => Ok(audio),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(format: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
        let mut w = Vec::new();
        w.extend_from_slice(b"RIFF");
        w.extend_from_slice(&(4 + 8 + 16 + 8 + 26 + 8 + data.len() as u32).to_le_bytes());
        w.extend_from_slice(b"WAVE");
        w.extend_from_slice(b"LIST");
        w.extend_from_slice(&25u32.to_le_bytes());
        w.extend_from_slice(&[b'x'; 25]);
        w.push(0); // pad byte of an odd-sized chunk
        w.extend_from_slice(b"fmt ");
        w.extend_from_slice(&16u32.to_le_bytes());
        w.extend_from_slice(&format.to_le_bytes());
        w.extend_from_slice(&channels.to_le_bytes());
        w.extend_from_slice(&rate.to_le_bytes());
        w.extend_from_slice(&(rate * u32::from(bits / 8)).to_le_bytes());
        w.extend_from_slice(&(bits / 8).to_le_bytes());
        w.extend_from_slice(&bits.to_le_bytes());
        w.extend_from_slice(b"data");
        w.extend_from_slice(&(data.len() as u32).to_le_bytes());
        w.extend_from_slice(data);
        w
    }

    #[test]
    fn pcm_and_g711_files_read_and_others_are_refused_with_what_to_send() {
        let pcm: Vec<u8> = (0..1600i16).flat_map(|i| (i * 10).to_le_bytes()).collect();
        let a = parse(&wav(1, 1, 8000, 16, &pcm)).expect("16-bit PCM");
        assert_eq!((a.samples.len(), a.samples[5], a.duration_ms()), (1600, 50, 200));
        let ulaw = vec![0xffu8; 800];
        assert_eq!(parse(&wav(7, 1, 8000, 8, &ulaw)).expect("µ-law").samples, vec![0; 800]);
        let alaw = vec![0xd5u8; 800];
        assert_eq!(parse(&wav(6, 1, 8000, 8, &alaw)).expect("A-law").samples, vec![8; 800]);
        assert_eq!(parse(&wav(1, 2, 8000, 16, &pcm)), Err(WavError::Channels(2)));
        assert_eq!(parse(&wav(1, 1, 44_100, 16, &pcm)), Err(WavError::Rate(44_100)));
        assert_eq!(parse(&wav(3, 1, 8000, 32, &pcm)), Err(WavError::Format(3)));
        assert_eq!(parse(&wav(1, 1, 8000, 8, &pcm)), Err(WavError::Bits { format: 1, bits: 8 }));
        assert_eq!(parse(&wav(1, 1, 8000, 16, &pcm[..100])), Err(WavError::Empty));
        assert_eq!(parse(b"ID3\x03 an mp3"), Err(WavError::NotWav));
        assert_eq!(parse(&wav(1, 1, 8000, 16, &pcm)[..40]), Err(WavError::MissingChunk("fmt")));
        assert!(WavError::Rate(44_100).to_string().contains("sox"), "says how to convert");
    }

    #[test]
    fn audio_written_as_wav_reads_back() {
        let a = Audio { samples: (0..8000).map(|i| ((i * 37) % 2000 - 1000) as i16).collect() };
        assert_eq!(parse(&a.to_wav()), Ok(a));
    }
}
