//! SDP (RFC 4566) as the UAC offers and reads it: one audio stream, PCMU and PCMA at 20 ms and
//! RFC 4733 `telephone-event`; the answer's first G.711 payload type is the call's codec, its
//! connection address and port where RTP goes, its direction whether to send (hold).

use std::net::{IpAddr, SocketAddr};

use dialer_domain::media::g711::Law;

/// The payload type we offer `telephone-event` at.
pub const DTMF_PT: u8 = 101;

/// Our offer (or answer to a re-INVITE): audio at `media`; `session` is the o= version.
pub fn offer(session: &str, media: SocketAddr) -> String {
    let family = if media.is_ipv4() { "IP4" } else { "IP6" };
    let ip = media.ip();
    format!(
        "v=0\r\no=dialer {session} 1 IN {family} {ip}\r\ns=dialer\r\nc=IN {family} {ip}\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 0 8 {DTMF_PT}\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:{DTMF_PT} telephone-event/8000\r\na=fmtp:{DTMF_PT} 0-16\r\na=ptime:20\r\na=sendrecv\r\n",
        media.port()
    )
}

/// Which way the far end lets audio flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    /// It only sends (it put us on hold): we do not send.
    SendOnly,
    /// It only receives.
    RecvOnly,
    Inactive,
}

impl Direction {
    /// Whether we may send to it.
    pub fn we_send(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

/// The far end's audio stream, from its SDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remote {
    /// Where to send RTP (`c=` and `m=`; port 0 = the stream was refused).
    pub addr: SocketAddr,
    pub law: Law,
    /// Its `telephone-event` payload type, if it named one.
    pub dtmf_pt: Option<u8>,
    pub direction: Direction,
}

/// Why an SDP body gives no audio stream we can use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("no SDP body")]
    Empty,
    #[error("no audio stream (m=audio)")]
    NoAudio,
    #[error("no connection address (c=)")]
    NoAddress,
    #[error("no codec in common (neither PCMU nor PCMA)")]
    NoCodec,
}

/// Reads the first audio stream of an SDP body.
pub fn remote(body: &str) -> Result<Remote, SdpError> {
    if body.trim().is_empty() {
        return Err(SdpError::Empty);
    }
    let (mut session_ip, mut media_ip, mut port, mut pts) = (None, None, None, Vec::new());
    let (mut in_audio, mut seen_media, mut dtmf_pt) = (false, false, None);
    let (mut direction, mut media_direction) = (Direction::SendRecv, None);
    for line in body.lines().map(str::trim) {
        let Some((kind, value)) = line.split_once('=') else { continue };
        match kind {
            "m" => {
                let audio_first = !seen_media && value.starts_with("audio ");
                seen_media |= value.starts_with("audio ");
                in_audio = audio_first;
                if in_audio {
                    let mut f = value.split_whitespace().skip(1);
                    port = f.next().and_then(|p| p.parse::<u16>().ok());
                    pts = f.skip(1).filter_map(|p| p.parse::<u8>().ok()).collect();
                }
            }
            "c" => {
                let ip = value.split_whitespace().nth(2).and_then(|a| a.split('/').next()?.parse::<IpAddr>().ok());
                if in_audio {
                    media_ip = ip
                } else if !seen_media {
                    session_ip = ip
                }
            }
            "a" if in_audio || !seen_media => {
                let d = match value {
                    "sendrecv" => Some(Direction::SendRecv),
                    "sendonly" => Some(Direction::SendOnly),
                    "recvonly" => Some(Direction::RecvOnly),
                    "inactive" => Some(Direction::Inactive),
                    _ => None,
                };
                match d {
                    Some(d) if in_audio => media_direction = Some(d),
                    Some(d) => direction = d,
                    None if in_audio => dtmf_pt = dtmf_pt.or_else(|| telephone_event(value)),
                    None => {}
                }
            }
            _ => {}
        }
    }
    let port = port.ok_or(SdpError::NoAudio)?;
    let ip = media_ip.or(session_ip).ok_or(SdpError::NoAddress)?;
    let law = pts.iter().find_map(|pt| Law::from_payload_type(*pt)).ok_or(SdpError::NoCodec)?;
    let mut direction = media_direction.unwrap_or(direction);
    // RFC 3264's old hold: a connection address of 0.0.0.0.
    if ip.is_unspecified() {
        direction = Direction::Inactive;
    }
    Ok(Remote { addr: SocketAddr::new(ip, port), law, dtmf_pt, direction })
}

/// The payload type of an `rtpmap:<pt> telephone-event/8000` attribute.
fn telephone_event(attr: &str) -> Option<u8> {
    let rest = attr.strip_prefix("rtpmap:")?;
    let (pt, codec) = rest.split_once(' ')?;
    codec.to_ascii_lowercase().starts_with("telephone-event/8000").then(|| pt.parse().ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_offer_reads_back() {
        let o = offer("1", "10.0.0.5:20002".parse().unwrap());
        let r = remote(&o).expect("audio");
        assert_eq!(
            r,
            Remote {
                addr: "10.0.0.5:20002".parse().unwrap(),
                law: Law::Ulaw,
                dtmf_pt: Some(101),
                direction: Direction::SendRecv
            }
        );
    }

    #[test]
    fn answers_as_carriers_write_them() {
        // sipp's answer: session-level c=, PCMA first, its own telephone-event number.
        let a = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                 m=audio 6000 RTP/AVP 8 96\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:96 telephone-event/8000\r\n";
        let r = remote(a).expect("audio");
        assert_eq!((r.addr.port(), r.law, r.dtmf_pt, r.direction), (6000, Law::Alaw, Some(96), Direction::SendRecv));
        // A video stream before the audio, media-level c=, hold by direction and by 0.0.0.0.
        let b = "v=0\r\nc=IN IP4 192.0.2.1\r\nm=video 5000 RTP/AVP 96\r\nc=IN IP4 192.0.2.9\r\nm=audio 7000 RTP/AVP 0\r\n\
                 c=IN IP4 198.51.100.7\r\na=sendonly\r\n";
        let r = remote(b).expect("audio");
        assert_eq!((r.addr, r.law, r.dtmf_pt), ("198.51.100.7:7000".parse().unwrap(), Law::Ulaw, None));
        assert!(!r.direction.we_send(), "they hold us: we stop sending");
        let held = remote("v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 7000 RTP/AVP 0\r\n").expect("audio");
        assert_eq!(held.direction, Direction::Inactive);
        assert_eq!(remote(""), Err(SdpError::Empty));
        assert_eq!(remote("v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 7000 RTP/AVP 18\r\n"), Err(SdpError::NoCodec));
        assert_eq!(remote("v=0\r\nm=audio 7000 RTP/AVP 0\r\n"), Err(SdpError::NoAddress));
    }
}
