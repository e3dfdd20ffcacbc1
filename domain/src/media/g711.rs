//! G.711 (ITU-T): µ-law (PCMU, payload type 0) and A-law (PCMA, payload type 8), 8 kHz, one
//! byte a sample, to and from 16-bit linear PCM. Encoding is the reference algorithm; decoding
//! is a 256-entry table built at compile time.

/// A G.711 law.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Law {
    Ulaw,
    Alaw,
}

impl Law {
    /// The RTP/AVP static payload type (RFC 3551).
    pub fn payload_type(self) -> u8 {
        match self {
            Law::Ulaw => 0,
            Law::Alaw => 8,
        }
    }

    pub fn from_payload_type(pt: u8) -> Option<Law> {
        match pt {
            0 => Some(Law::Ulaw),
            8 => Some(Law::Alaw),
            _ => None,
        }
    }

    pub fn encode(self, sample: i16) -> u8 {
        match self {
            Law::Ulaw => ulaw_encode(sample),
            Law::Alaw => alaw_encode(sample),
        }
    }

    pub fn decode(self, byte: u8) -> i16 {
        match self {
            Law::Ulaw => ULAW_DECODE[byte as usize],
            Law::Alaw => ALAW_DECODE[byte as usize],
        }
    }

    /// Encodes `pcm` into `out` (cleared first).
    pub fn encode_all(self, pcm: &[i16], out: &mut Vec<u8>) {
        out.clear();
        out.extend(pcm.iter().map(|s| self.encode(*s)));
    }

    /// Decodes `bytes` into `out` (cleared first).
    pub fn decode_all(self, bytes: &[u8], out: &mut Vec<i16>) {
        out.clear();
        out.extend(bytes.iter().map(|b| self.decode(*b)));
    }
}

const BIAS: i32 = 0x84;
const CLIP: i32 = 32_635;

fn ulaw_encode(sample: i16) -> u8 {
    let mut s = i32::from(sample);
    let sign = if s < 0 { 0x80 } else { 0 };
    if s < 0 {
        s = -s;
    }
    s = s.min(CLIP) + BIAS;
    let exponent = (7 - (s << 17).leading_zeros().min(7)) as i32;
    let exponent = exponent.clamp(0, 7);
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

const fn ulaw_decode(byte: u8) -> i16 {
    let b = !byte;
    let sign = b & 0x80;
    let exponent = ((b >> 4) & 0x07) as i32;
    let mantissa = (b & 0x0f) as i32;
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    if sign != 0 { -magnitude as i16 } else { magnitude as i16 }
}

fn alaw_encode(sample: i16) -> u8 {
    let mut s = i32::from(sample);
    let sign = if s >= 0 { 0x80 } else { 0 };
    if s < 0 {
        s = -s - 1;
    }
    s = s.min(0x7fff);
    let byte = if s < 256 {
        (s >> 4) as u8
    } else {
        let exponent = (31 - (s as u32).leading_zeros()) as i32 - 7;
        let mantissa = (s >> (exponent + 3)) & 0x0f;
        ((exponent << 4) | mantissa) as u8
    };
    (byte | sign) ^ 0x55
}

const fn alaw_decode(byte: u8) -> i16 {
    let b = byte ^ 0x55;
    let exponent = ((b >> 4) & 0x07) as i32;
    let mantissa = (b & 0x0f) as i32;
    let magnitude = if exponent == 0 { (mantissa << 4) + 8 } else { ((mantissa << 4) + 0x108) << (exponent - 1) };
    if b & 0x80 != 0 { magnitude as i16 } else { -magnitude as i16 }
}

const fn table(alaw: bool) -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if alaw { alaw_decode(i as u8) } else { ulaw_decode(i as u8) };
        i += 1;
    }
    t
}

static ULAW_DECODE: [i16; 256] = table(false);
static ALAW_DECODE: [i16; 256] = table(true);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_code_points() {
        // Silence and full scale as the ITU tables give them.
        assert_eq!(Law::Ulaw.encode(0), 0xff);
        assert_eq!(Law::Ulaw.decode(0xff), 0);
        assert_eq!(Law::Ulaw.decode(0x00), -32_124);
        assert_eq!(Law::Ulaw.decode(0x80), 32_124);
        assert_eq!(Law::Alaw.encode(0), 0xd5);
        assert_eq!(Law::Alaw.decode(0xd5), 8);
        assert_eq!(Law::Alaw.decode(0x2a), -32_256);
        assert_eq!(Law::Alaw.decode(0xaa), 32_256);
    }

    #[test]
    fn every_code_decodes_and_encodes_back_to_itself() {
        for law in [Law::Ulaw, Law::Alaw] {
            for b in 0..=255u8 {
                let s = law.decode(b);
                let again = law.encode(s);
                // µ-law has two zeros (0x7f, 0xff): both decode to 0, which encodes as 0xff.
                if law == Law::Ulaw && b == 0x7f {
                    assert_eq!(again, 0xff);
                    continue;
                }
                assert_eq!(again, b, "{law:?} code {b:#04x} → {s} → {again:#04x}");
            }
        }
    }

    #[test]
    fn quantisation_error_stays_within_the_segment_step() {
        for law in [Law::Ulaw, Law::Alaw] {
            for s in (-32_000i32..32_000).step_by(7) {
                let back = i32::from(law.decode(law.encode(s as i16)));
                let step = (s.abs() / 16).max(16);
                assert!((back - s).abs() <= step, "{law:?}: {s} → {back}");
            }
        }
    }
}
