//! A call's RTP stream (RFC 3550, G.711 at 20 ms): the shard's RTP ports, one per call with
//! media; what it sends goes through the shard's [`Pacer`] (one batch per millisecond for all
//! calls, no allocation per packet); symmetric RTP (the far end's first packet fixes where we
//! send and the only source we hear), or, on a trunk that turns it off, the SDP's address; RTCP
//! and other traffic on the port ignored; RFC 4733 keys read from `telephone-event` packets.
//!
//! Once the far end's address is settled (latched, or the SDP's when not latching) the socket
//! is connected to it: the kernel keeps the route instead of looking it up for every packet,
//! and drops what other sources send.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use dialer_domain::media::g711::Law;
use dialer_domain::media::rtp::{self, Keys};

use super::pacer::{Paced, Pacer, Route};
use super::sdp::{DTMF_PT, Remote};

/// Samples in one 20 ms packet at 8 kHz.
pub const FRAME: usize = 160;

/// The RTP ports of one shard: the even ports of `[min, max]` whose half is `shard` modulo
/// `shards` (so the shards of every process on a host never share one).
#[derive(Debug)]
pub struct PortPool {
    free: RefCell<VecDeque<u16>>,
}

impl PortPool {
    pub fn new(min: u16, max: u16, shard: usize, shards: usize) -> Rc<PortPool> {
        let free =
            (min..=max).filter(|p| p % 2 == 0 && usize::from(p / 2) % shards.max(1) == shard % shards.max(1)).collect();
        Rc::new(PortPool { free: RefCell::new(free) })
    }

    pub fn available(&self) -> usize {
        self.free.borrow().len()
    }
}

/// How late the shard's RTP packets went out after their 20 ms slot: 0.1 ms buckets up to
/// 100 ms, and one beyond (shard-local, one increment a packet).
#[derive(Debug)]
pub struct Lateness {
    buckets: RefCell<Vec<u64>>,
}

/// Buckets of [`Lateness`]: 0.1 ms each, the last for anything later.
pub const LATENESS_BUCKETS: usize = 1001;

impl Default for Lateness {
    fn default() -> Self {
        Lateness { buckets: RefCell::new(vec![0; LATENESS_BUCKETS]) }
    }
}

impl Lateness {
    pub fn record(&self, late: std::time::Duration) {
        let i = ((late.as_micros() / 100) as usize).min(LATENESS_BUCKETS - 1);
        self.buckets.borrow_mut()[i] += 1;
    }

    /// Packets per 0.1 ms of lateness.
    pub fn snapshot(&self) -> Vec<u64> {
        self.buckets.borrow().clone()
    }
}

/// A port taken from the pool, given back when dropped.
#[derive(Debug)]
struct Lease {
    port: u16,
    pool: Rc<PortPool>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.free.borrow_mut().push_back(self.port);
    }
}

/// Why a call has no RTP stream: it is not dialled (failed, retryable).
#[derive(Debug, thiserror::Error)]
pub enum RtpError {
    #[error("no free RTP port in provider.rtp_port_min..rtp_port_max for this shard; widen the range")]
    NoPort,
}

/// A non-blocking socket on `addr`, not registered with the runtime: a call reads it on its
/// 20 ms clock (see [`RtpStream::hear`]). A socket in the runtime's epoll set costs the shard
/// a wake-up callback for every packet it sends (the kernel signals write space as each one
/// leaves), whatever the interest registered.
fn nonblocking(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// What a datagram on the stream's port was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// A packet of audio, decoded into [`RtpStream::frame`].
    Audio,
    Key(char),
    /// Not ours to use (RTCP, another payload type, another source, a repeat of an event).
    Nothing,
}

/// One call's RTP stream: its port (what it hears) and, once answered, its place in the
/// shard's [`Pacer`] (what it sends).
#[derive(Debug)]
pub struct RtpStream {
    /// Dropped before the socket: the pacer never sends from a closed descriptor.
    paced: Option<Paced>,
    /// Non-blocking, read on the call's clock; what it sends goes out through the pacer.
    socket: std::net::UdpSocket,
    _port: Lease,
    remote: Option<Remote>,
    /// Send where the far end's audio comes from (symmetric RTP), not to the SDP's address.
    symmetric: bool,
    /// The far end's source, fixed by its first packet (symmetric RTP).
    latched: Option<SocketAddr>,
    /// Where the socket is connected.
    connected: Cell<Option<SocketAddr>>,
    pub inbuf: Box<[u8; 1500]>,
    /// The last audio packet, decoded.
    pub frame: Vec<i16>,
    keys: Keys,
}

impl RtpStream {
    /// Binds a port of the pool on `ip` (a port another program holds is skipped).
    pub async fn bind(ip: IpAddr, pool: &Rc<PortPool>) -> Result<RtpStream, RtpError> {
        for _ in 0..pool.available() {
            let Some(port) = pool.free.borrow_mut().pop_front() else { break };
            let lease = Lease { port, pool: pool.clone() };
            if let Ok(socket) = nonblocking(SocketAddr::new(ip, port)) {
                return Ok(RtpStream {
                    paced: None,
                    socket,
                    _port: lease,
                    remote: None,
                    symmetric: true,
                    latched: None,
                    connected: Cell::new(None),
                    inbuf: Box::new([0; 1500]),
                    frame: Vec::with_capacity(1500),
                    keys: Keys::default(),
                });
            }
        }
        Err(RtpError::NoPort)
    }

    pub fn local(&self) -> SocketAddr {
        self.socket.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Starts sending (silence until told to play), its first packet in the slot `first`:
    /// the call is answered.
    pub fn start(&mut self, pacer: &Rc<Pacer>, first: Instant) {
        let r: u64 = rand::random();
        let header = (r as u32, (r >> 32) as u16, (r >> 48) as u32 * FRAME as u32);
        self.paced = Some(pacer.add(self.socket.as_raw_fd(), first, header));
        self.route();
    }

    /// The stream's place in the pacer, once started.
    pub fn paced(&self) -> Option<&Paced> {
        self.paced.as_ref()
    }

    /// Whether to send where the far end's audio comes from (the default) or to its SDP's
    /// address (the trunk's `rtp_symmetric`); set before the call is answered.
    pub fn set_symmetric(&mut self, on: bool) {
        self.symmetric = on;
    }

    /// Tells the pacer where to send: the latched source, else the SDP's address; nowhere
    /// while the far end holds the call or refused the stream. A settled address (latched,
    /// or the SDP's when not latching) is sent to through a connected socket.
    fn route(&self) {
        let Some(to) =
            self.remote.filter(|r| r.direction.we_send() && r.addr.port() != 0).map(|r| self.latched.unwrap_or(r.addr))
        else {
            return self.tell_pacer(None);
        };
        let settled = !self.symmetric || self.latched.is_some();
        let route = if settled && self.connect(to) { Route::Connected } else { Route::To(to) };
        self.tell_pacer(Some(route));
    }

    fn tell_pacer(&self, route: Option<Route>) {
        if let Some(p) = &self.paced {
            p.route(route, self.law());
        }
    }

    /// Connects the socket to `to` (once per address); false if the kernel refuses (the
    /// packets then name their destination).
    fn connect(&self, to: SocketAddr) -> bool {
        if self.connected.get() == Some(to) {
            return true;
        }
        match self.socket.connect(to) {
            Ok(()) => {
                self.connected.set(Some(to));
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, %to, "RTP socket not connected: its packets name their destination");
                false
            }
        }
    }

    /// The far end's stream, from its SDP (the answer, or a re-INVITE's offer).
    pub fn set_remote(&mut self, r: Remote) {
        self.remote = Some(r);
        self.route();
    }

    /// The call's codec (PCMU until the far end's SDP says otherwise).
    pub fn law(&self) -> Law {
        self.remote.map_or(Law::Ulaw, |r| r.law)
    }

    /// Drops every datagram waiting on the port (what came before the answer); how many.
    pub fn discard_pending(&mut self) -> usize {
        let mut n = 0;
        while self.socket.recv_from(&mut self.inbuf[..]).is_ok() {
            n += 1;
        }
        n
    }

    /// The next datagram waiting on the port, read (`None`: none waits).
    pub fn hear(&mut self) -> Option<Heard> {
        let (n, from) = self.socket.recv_from(&mut self.inbuf[..]).ok()?;
        Some(self.received(n, from))
    }

    /// Reads a datagram of `n` bytes from `from` (in [`RtpStream::inbuf`]).
    fn received(&mut self, n: usize, from: SocketAddr) -> Heard {
        let Some(p) = rtp::parse(&self.inbuf[..n]) else { return Heard::Nothing };
        match self.latched {
            // Not latching: only the SDP's address is heard (the kernel drops the rest once the
            // socket is connected; this holds where it could not be).
            _ if !self.symmetric => {
                if self.remote.is_none_or(|r| r.addr != from) {
                    return Heard::Nothing;
                }
            }
            Some(l) if l != from => return Heard::Nothing,
            Some(_) => {}
            None => {
                self.latched = Some(from);
                self.route();
            }
        }
        let dtmf = self.remote.and_then(|r| r.dtmf_pt).unwrap_or(DTMF_PT);
        if p.payload_type == dtmf {
            return self.keys.packet(&p).map_or(Heard::Nothing, Heard::Key);
        }
        let Some(law) = Law::from_payload_type(p.payload_type) else { return Heard::Nothing };
        law.decode_all(p.payload, &mut self.frame);
        Heard::Audio
    }
}

#[cfg(test)]
mod tests {
    use super::super::pacer::PTIME;
    use super::super::prompts::Prompt;
    use super::*;

    /// The next datagram the stream hears, read as a call does: polled.
    async fn heard(s: &mut RtpStream) -> Heard {
        for _ in 0..100 {
            if let Some(h) = s.hear() {
                return h;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("nothing heard in 500 ms");
    }

    #[test]
    fn shards_split_the_even_ports() {
        let a = PortPool::new(20000, 20019, 0, 2);
        let b = PortPool::new(20000, 20019, 1, 2);
        assert_eq!(a.free.borrow().iter().copied().collect::<Vec<_>>(), [20000, 20004, 20008, 20012, 20016]);
        assert_eq!(b.free.borrow().iter().copied().collect::<Vec<_>>(), [20002, 20006, 20010, 20014, 20018]);
    }

    #[tokio::test]
    async fn a_stream_sends_g711_and_hears_its_far_end_only() {
        let pool = PortPool::new(41000, 41099, 0, 1);
        let mut s = RtpStream::bind(IpAddr::from([127, 0, 0, 1]), &pool).await.expect("a port");
        assert_eq!(pool.available(), 49, "one port leased");
        let far = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("far end");
        let sdp = format!(
            "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio {} RTP/AVP 8 96\r\na=rtpmap:96 telephone-event/8000\r\n",
            far.local_addr().unwrap().port()
        );
        s.set_remote(super::super::sdp::remote(&sdp).expect("sdp"));
        let pacer = Pacer::new();
        let t0 = Instant::now();
        s.start(&pacer, t0);
        let paced = s.paced().expect("started");
        paced.play(Some(Prompt::new(&[1000; FRAME])));
        let ms = std::time::Duration::from_millis(1);
        pacer.send_due(t0 + ms);
        let mut buf = [0u8; 1500];
        let (n, from) = far.recv_from(&mut buf).await.expect("a packet");
        let p = rtp::parse(&buf[..n]).expect("rtp");
        assert_eq!((p.payload_type, p.marker, p.payload.len()), (8, true, FRAME), "PCMA, as answered");
        assert_eq!(Law::Alaw.decode(p.payload[0]), 1008);
        // The far end answers from its port: audio decoded, a key read once.
        let mut pkt = vec![0; rtp::HEADER];
        rtp::write_header(&mut pkt, 8, false, 1, 160, 7);
        pkt.extend_from_slice(&[0xd5; FRAME]);
        far.send_to(&pkt, from).await.expect("send");
        assert_eq!(heard(&mut s).await, Heard::Audio);
        assert_eq!(s.frame, vec![8; FRAME]);
        rtp::write_header(&mut pkt, 96, false, 2, 320, 7);
        pkt.truncate(rtp::HEADER);
        pkt.extend_from_slice(&[9, 0x0a, 0, 160]);
        far.send_to(&pkt, from).await.expect("send");
        assert_eq!(heard(&mut s).await, Heard::Key('9'));
        // Latched, the socket is connected: another source is not heard, and the packets go
        // where the far end's audio came from.
        let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("stranger");
        stranger.send_to(&pkt, from).await.expect("send");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(s.hear(), None, "the stranger's packet is not heard");
        assert_eq!(s.connected.get(), Some(far.local_addr().unwrap()));
        pacer.send_due(t0 + PTIME + ms);
        let (_, to_far) = far.recv_from(&mut buf).await.expect("a packet on the connected socket");
        assert_eq!(to_far, from);
        // On hold (the far end's re-INVITE says sendonly): nothing is sent.
        let held = format!(
            "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio {} RTP/AVP 8\r\na=sendonly\r\n",
            far.local_addr().unwrap().port()
        );
        s.set_remote(super::super::sdp::remote(&held).expect("sdp"));
        pacer.send_due(t0 + PTIME * 2 + ms);
        pacer.send_due(t0 + PTIME * 3 + ms);
        let got = tokio::time::timeout(std::time::Duration::from_millis(100), far.recv_from(&mut buf)).await;
        assert!(got.is_err(), "no packet while the far end holds the call");
        // What waits on the port before the answer (early media) is discarded.
        far.send_to(&pkt, from).await.expect("send");
        far.send_to(&pkt, from).await.expect("send");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(s.discard_pending(), 2);
        drop(s);
        assert_eq!(pool.available(), 50, "the port is given back");
    }

    #[tokio::test]
    async fn not_latching_the_socket_is_connected_to_the_sdp_address_at_the_answer() {
        let pool = PortPool::new(41100, 41199, 0, 1);
        let mut s = RtpStream::bind(IpAddr::from([127, 0, 0, 1]), &pool).await.expect("a port");
        s.set_symmetric(false);
        let far = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("far end");
        let pacer = Pacer::new();
        let t0 = Instant::now();
        s.start(&pacer, t0);
        assert_eq!(s.connected.get(), None, "nowhere to send before the answer");
        let sdp = format!("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio {} RTP/AVP 0\r\n", far.local_addr().unwrap().port());
        s.set_remote(super::super::sdp::remote(&sdp).expect("sdp"));
        assert_eq!(s.connected.get(), Some(far.local_addr().unwrap()), "connected at the answer");
        pacer.send_due(t0 + std::time::Duration::from_millis(1));
        let mut buf = [0u8; 1500];
        let (n, from) = far.recv_from(&mut buf).await.expect("a packet");
        assert_eq!(rtp::parse(&buf[..n]).expect("rtp").payload_type, 0);
        // Audio from another address is not heard (nor latched to); the far end's is.
        let mut pkt = vec![0; rtp::HEADER];
        rtp::write_header(&mut pkt, 0, false, 1, 160, 7);
        pkt.extend_from_slice(&[0xff; FRAME]);
        let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("stranger");
        stranger.send_to(&pkt, from).await.expect("send");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(s.hear(), None, "the stranger's packet is not heard");
        far.send_to(&pkt, from).await.expect("send");
        assert_eq!(heard(&mut s).await, Heard::Audio);
        assert_eq!(s.latched, None, "nothing latched");
    }
}
