//! RTP packets (RFC 3550) as the media path reads and writes them, and RFC 4733 telephone
//! events (DTMF) in them. Reading borrows from the datagram: no allocation per packet.

/// The fixed header's length.
pub const HEADER: usize = 12;

/// One received RTP packet, borrowing its datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub payload_type: u8,
    pub marker: bool,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: &'a [u8],
}

/// Reads an RTP packet (version 2; CSRCs, a header extension and padding skipped). `None` for
/// anything else (RTCP on the same port, STUN, garbage).
pub fn parse(d: &[u8]) -> Option<Packet<'_>> {
    if d.len() < HEADER || d[0] >> 6 != 2 {
        return None;
    }
    let (padding, extension, csrcs) = (d[0] & 0x20 != 0, d[0] & 0x10 != 0, usize::from(d[0] & 0x0f));
    let payload_type = d[1] & 0x7f;
    // RTCP shares the version bits: its packet types 200–204 read as payload types 72–76.
    if (72..=76).contains(&payload_type) {
        return None;
    }
    let mut start = HEADER + 4 * csrcs;
    if extension {
        let words = usize::from(u16::from_be_bytes([*d.get(start + 2)?, *d.get(start + 3)?]));
        start += 4 + 4 * words;
    }
    let mut end = d.len();
    if padding {
        end = end.checked_sub(usize::from(*d.last()?))?;
    }
    Some(Packet {
        payload_type,
        marker: d[1] & 0x80 != 0,
        seq: u16::from_be_bytes([d[2], d[3]]),
        timestamp: u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
        ssrc: u32::from_be_bytes([d[8], d[9], d[10], d[11]]),
        payload: d.get(start..end)?,
    })
}

/// Writes a packet's header into `out[..12]` (the payload follows it in the same buffer).
pub fn write_header(out: &mut [u8], payload_type: u8, marker: bool, seq: u16, timestamp: u32, ssrc: u32) {
    out[0] = 0x80;
    out[1] = payload_type | if marker { 0x80 } else { 0 };
    out[2..4].copy_from_slice(&seq.to_be_bytes());
    out[4..8].copy_from_slice(&timestamp.to_be_bytes());
    out[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

/// An RFC 4733 telephone event (the payload of a `telephone-event` packet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// 0–9, 10 = `*`, 11 = `#`, 12–15 = A–D.
    pub code: u8,
    pub end: bool,
    pub duration: u16,
}

impl Event {
    pub fn parse(payload: &[u8]) -> Option<Event> {
        if payload.len() < 4 {
            return None;
        }
        Some(Event {
            code: payload[0],
            end: payload[1] & 0x80 != 0,
            duration: u16::from_be_bytes([payload[2], payload[3]]),
        })
    }

    /// The key, as a campaign names it (`0`–`9`, `*`, `#`, `A`–`D`).
    pub fn key(&self) -> Option<char> {
        match self.code {
            0..=9 => Some(char::from(b'0' + self.code)),
            10 => Some('*'),
            11 => Some('#'),
            12..=15 => Some(char::from(b'A' + self.code - 12)),
            _ => None,
        }
    }
}

/// Keys pressed, from a stream of telephone-event packets: one key per event (an event is
/// sent many times — updates, then three copies of its end — all with one RTP timestamp).
#[derive(Clone, Debug, Default)]
pub struct Keys {
    last: Option<u32>,
}

impl Keys {
    /// The key of a packet that starts a new event (its timestamp not seen just before).
    pub fn packet(&mut self, p: &Packet<'_>) -> Option<char> {
        let e = Event::parse(p.payload)?;
        if self.last == Some(p.timestamp) {
            return None;
        }
        self.last = Some(p.timestamp);
        e.key()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(pt: u8, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
        let mut d = vec![0; HEADER];
        write_header(&mut d, pt, false, seq, ts, 0xdead_beef);
        d.extend_from_slice(payload);
        d
    }

    #[test]
    fn written_packets_read_back_and_rtcp_is_not_rtp() {
        let d = packet(0, 7, 160, &[0xff; 160]);
        let p = parse(&d).expect("rtp");
        assert_eq!((p.payload_type, p.seq, p.timestamp, p.ssrc, p.payload.len()), (0, 7, 160, 0xdead_beef, 160));
        let rtcp_sr = [0x80, 200, 0, 6, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse(&rtcp_sr), None);
        assert_eq!(parse(b"\x00\x01 stun"), None);
        // CSRC, extension and padding are skipped.
        let mut d = vec![0x80 | 0x20 | 0x10 | 1, 8, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2];
        d.extend_from_slice(&[9, 9, 9, 9]); // one CSRC
        d.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]); // extension of one word
        d.extend_from_slice(&[0xd5, 0xd5, 0, 0, 3]); // payload, then 3 bytes of padding
        assert_eq!(parse(&d).map(|p| p.payload), Some(&[0xd5, 0xd5][..]));
    }

    #[test]
    fn one_key_per_event_whatever_its_repeats() {
        let mut keys = Keys::default();
        let mut got = Vec::new();
        for (ts, code, end) in
            [(800, 9, false), (800, 9, false), (800, 9, true), (800, 9, true), (1600, 11, false), (1600, 11, true)]
        {
            let d = packet(101, 1, ts, &[code, if end { 0x8a } else { 0x0a }, 0, 160]);
            got.extend(keys.packet(&parse(&d).expect("rtp")));
        }
        assert_eq!(got, ['9', '#']);
    }
}
