//! The shard's media clock: every RTP packet of the shard's calls goes out from here. Each
//! stream keeps its own 20 ms slots (from its answer); the streams are kept in 20 buckets by
//! the millisecond their slots fall on, and the clock, once a millisecond while any stream is
//! live, writes the due bucket's packets into one batch and hands the whole batch to the kernel
//! at once (one io_uring submission for every socket in it; a `sendto` each where io_uring
//! cannot be set up). A call does not wake for its packets: it tells the pacer what to play
//! and hears back when a prompt has played out.
//!
//! Shard-local (`Rc`, `RefCell`): no lock, nothing shared across cores. Buffers are sized when
//! a stream is added, never per packet.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use dialer_domain::media::g711::Law;
use dialer_domain::media::rtp;
use tokio::sync::Notify;

use super::media::{FRAME, Lateness};
use super::prompts::Prompt;

/// One RTP packet of G.711 at 20 ms: the header and 160 samples.
pub const PACKET: usize = rtp::HEADER + FRAME;
/// The packet time.
pub const PTIME: Duration = Duration::from_millis(20);
/// Buckets of the clock: one per millisecond of the packet time.
const PHASES: u64 = 20;

/// The shard's media clock (see the module's documentation).
pub struct Pacer {
    inner: RefCell<Inner>,
    lateness: Lateness,
    /// A stream was added while the clock slept (it sleeps while no stream is live).
    wake: Notify,
    stop: Notify,
    live: Cell<usize>,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer").field("live", &self.live.get()).finish()
    }
}

struct Inner {
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Per millisecond of the packet time: the streams whose slots fall on it (key,
    /// generation; a removed stream's entry is dropped when its bucket next comes round).
    wheel: Vec<Vec<(usize, u32)>>,
    epoch: Instant,
    /// The next millisecond (since `epoch`) whose bucket is due.
    next_ms: u64,
    batch: send::Batch,
    sender: send::Sender,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    out: Option<Out>,
}

/// Where a stream's packets go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Where the socket is connected: the kernel keeps the route, no lookup per packet.
    Connected,
    /// To this address, looked up per packet (the socket is not connected).
    To(SocketAddr),
}

/// A stream's destination as the pacer keeps it: ready for the kernel.
enum Dest {
    Connected,
    To(send::Addr),
}

impl Dest {
    /// The address a send names (`None`: the socket's own).
    fn addr(&self) -> Option<&send::Addr> {
        match self {
            Dest::Connected => None,
            Dest::To(a) => Some(a),
        }
    }
}

/// What the pacer holds of one stream.
struct Out {
    fd: RawFd,
    /// Where to send (`None`: nowhere yet, or the far end holds the call).
    to: Option<Dest>,
    law: Law,
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    /// The slot of the next packet.
    next: Instant,
    playing: Option<(Prompt, usize)>,
    marker: bool,
    played_out: bool,
    waker: Option<Waker>,
}

impl Out {
    /// The next 20 ms of the stream: written into `buf`, or only counted (no route).
    fn packet(&mut self, buf: Option<&mut [u8; PACKET]>) {
        let law = self.law;
        let mut body = [0u8; FRAME];
        let silence = law.encode(0);
        match &mut self.playing {
            Some((prompt, at)) => {
                let audio = prompt.encoded(law);
                let end = (*at + FRAME).min(audio.len());
                body[..end - *at].copy_from_slice(&audio[*at..end]);
                body[end - *at..].fill(silence);
                *at = end;
                if end >= audio.len() {
                    self.playing = None;
                    self.played_out = true;
                    if let Some(w) = self.waker.take() {
                        w.wake();
                    }
                }
            }
            None => body.fill(silence),
        }
        if let Some(buf) = buf {
            rtp::write_header(&mut buf[..], law.payload_type(), self.marker, self.seq, self.timestamp, self.ssrc);
            buf[rtp::HEADER..].copy_from_slice(&body);
            self.marker = false;
            self.seq = self.seq.wrapping_add(1);
        }
        self.timestamp = self.timestamp.wrapping_add(FRAME as u32);
    }

    /// Takes the slot of the packet sent now and moves to the next: a stream more than a
    /// packet time behind (the shard stalled) skips the slots it missed rather than bursting
    /// them (its timestamps show the gap).
    fn take_slot(&mut self, now: Instant) {
        while self.next + PTIME <= now {
            self.next += PTIME;
            self.timestamp = self.timestamp.wrapping_add(FRAME as u32);
        }
        self.next += PTIME;
    }
}

/// The bucket of a slot: the millisecond (since `epoch`) at or after it, modulo the phases.
fn bucket(epoch: Instant, slot: Instant) -> usize {
    // In nanoseconds: rounded from microseconds, a slot a few nanoseconds past a millisecond
    // would land in that millisecond's bucket, be found not yet due, and wait a whole round.
    let ns = slot.saturating_duration_since(epoch).as_nanos();
    (ns.div_ceil(1_000_000) % u128::from(PHASES)) as usize
}

impl Pacer {
    /// A shard's clock; sends with io_uring where the kernel allows it.
    pub fn new() -> Rc<Pacer> {
        let sender = send::Sender::new();
        tracing::debug!(io = sender.name(), "RTP pacer");
        Rc::new(Pacer {
            inner: RefCell::new(Inner {
                slots: Vec::new(),
                free: Vec::new(),
                wheel: (0..PHASES).map(|_| Vec::new()).collect(),
                epoch: Instant::now(),
                next_ms: 0,
                batch: send::Batch::default(),
                sender,
            }),
            lateness: Lateness::default(),
            wake: Notify::new(),
            stop: Notify::new(),
            live: Cell::new(0),
        })
    }

    /// How late packets went out after their slots (packets per 0.1 ms).
    pub fn lateness(&self) -> Vec<u64> {
        self.lateness.snapshot()
    }

    /// `io_uring` or `sendto`: how a batch reaches the kernel.
    pub fn io_name(&self) -> &'static str {
        self.inner.borrow().sender.name()
    }

    /// Ends [`Pacer::run`].
    pub fn stop(&self) {
        self.stop.notify_one();
    }

    /// Adds a stream sending from `fd`, its first slot at `first`. Sends nothing until
    /// [`Paced::route`] says where.
    pub fn add(self: &Rc<Self>, fd: RawFd, first: Instant, (ssrc, seq, timestamp): (u32, u16, u32)) -> Paced {
        let mut inner = self.inner.borrow_mut();
        let key = match inner.free.pop() {
            Some(k) => k,
            None => {
                inner.slots.push(Slot::default());
                inner.slots.len() - 1
            }
        };
        let out = Out {
            fd,
            to: None,
            law: Law::Ulaw,
            ssrc,
            seq,
            timestamp,
            next: first,
            playing: None,
            marker: false,
            played_out: false,
            waker: None,
        };
        let slot = &mut inner.slots[key];
        slot.generation = slot.generation.wrapping_add(1);
        slot.out = Some(out);
        let generation = slot.generation;
        inner.sender.register(key, fd);
        let b = bucket(inner.epoch, first);
        inner.wheel[b].push((key, generation));
        let live = self.live.get() + 1;
        // A round sends at most one packet per live stream (after a stall it visits every
        // bucket once): the batch holds that many, sized here, not per packet.
        inner.batch.reserve(live);
        self.live.set(live);
        self.wake.notify_one();
        Paced { pacer: self.clone(), key }
    }

    fn with<R>(&self, key: usize, f: impl FnOnce(&mut Out) -> R) -> Option<R> {
        self.inner.borrow_mut().slots.get_mut(key).and_then(|s| s.out.as_mut()).map(f)
    }

    fn remove(&self, key: usize) {
        let mut inner = self.inner.borrow_mut();
        if inner.slots.get_mut(key).and_then(|s| s.out.take()).is_some() {
            // Before the call closes its socket: a registered file would keep it (and its
            // port) open.
            inner.sender.unregister(key);
            inner.free.push(key);
            self.live.set(self.live.get().saturating_sub(1));
        }
    }

    /// The clock: once a millisecond while a stream is live, sends what is due; asleep
    /// otherwise. Ends at [`Pacer::stop`].
    pub async fn run(self: Rc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            if self.live.get() == 0 {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = self.stop.notified() => return,
                }
                tick.reset_immediately();
                continue;
            }
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.stop.notified() => return,
            }
            self.send_due(Instant::now());
        }
    }

    /// Sends every packet due at `now` in one batch, and records how late each went out.
    pub fn send_due(&self, now: Instant) {
        let mut inner = self.inner.borrow_mut();
        let Inner { slots, wheel, epoch, next_ms, batch, sender, .. } = &mut *inner;
        let now_ms = now.saturating_duration_since(*epoch).as_millis() as u64;
        // After a stall, every bucket once (each stream sends one packet and skips ahead).
        let first = (*next_ms).max(now_ms.saturating_sub(PHASES - 1));
        for ms in first..=now_ms {
            let streams = &mut wheel[(ms % PHASES) as usize];
            let mut i = 0;
            while i < streams.len() {
                let (key, generation) = streams[i];
                let Some(out) = slots.get_mut(key).filter(|s| s.generation == generation).and_then(|s| s.out.as_mut())
                else {
                    streams.swap_remove(i);
                    continue;
                };
                i += 1;
                if out.next > now {
                    continue;
                }
                // Lateness counts from the first slot that was due, skipped ones included.
                let due = out.next;
                out.take_slot(now);
                let buf = out.to.as_ref().and_then(|to| batch.push((key, out.fd), to.addr(), due));
                // (A full batch cannot happen: it holds a packet per live stream.)
                out.packet(buf);
            }
        }
        *next_ms = now_ms + 1;
        if batch.is_empty() {
            return;
        }
        let failed = sender.flush(batch);
        let sent_at = Instant::now();
        let mut late = 0u64;
        for slot in batch.slots() {
            let behind = sent_at.saturating_duration_since(*slot);
            late += u64::from(behind > PTIME);
            self.lateness.record(behind);
        }
        metrics::counter!("dialer_rtp_packets_sent_total").increment((batch.len() - failed) as u64);
        metrics::counter!("dialer_rtp_late_packets_total").increment(late);
        if failed > 0 {
            metrics::counter!("dialer_rtp_send_errors_total").increment(failed as u64);
        }
        batch.clear();
    }
}

/// A stream's place in the pacer; removed when dropped.
pub struct Paced {
    pacer: Rc<Pacer>,
    key: usize,
}

impl std::fmt::Debug for Paced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paced").field("key", &self.key).finish()
    }
}

impl Paced {
    /// Where the packets go, in which law (`None`: send nothing, e.g. on hold).
    pub fn route(&self, to: Option<Route>, law: Law) {
        self.pacer.with(self.key, |o| {
            o.to = to.map(|r| match r {
                Route::Connected => Dest::Connected,
                Route::To(a) => Dest::To(send::Addr::from(a)),
            });
            o.law = law;
        });
    }

    /// Plays `prompt` from its start (its first packet marked), or silence.
    pub fn play(&self, prompt: Option<Prompt>) {
        self.pacer.with(self.key, |o| {
            o.marker = prompt.is_some();
            o.playing = prompt.map(|p| (p, 0));
            o.played_out = false;
        });
    }

    /// Ready once the prompt playing has played out (once per prompt).
    pub fn poll_played_out(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.pacer
            .with(self.key, |o| {
                if std::mem::take(&mut o.played_out) {
                    return Poll::Ready(());
                }
                o.waker = Some(cx.waker().clone());
                Poll::Pending
            })
            .unwrap_or(Poll::Pending)
    }

    pub async fn played_out(&self) {
        std::future::poll_fn(|cx| self.poll_played_out(cx)).await
    }
}

impl Drop for Paced {
    fn drop(&mut self) {
        self.pacer.remove(self.key);
    }
}

/// Handing a batch of datagrams to the kernel; the unsafe part, kept small.
#[allow(unsafe_code)]
mod send {
    use std::net::SocketAddr;
    use std::os::fd::RawFd;
    use std::time::Instant;

    use io_uring::{IoUring, opcode, squeue, types};

    use super::PACKET;

    /// Entries in the submission queue; a larger batch goes in several submissions.
    const ENTRIES: usize = 256;

    /// A destination as the kernel takes it.
    #[derive(Clone, Copy)]
    pub struct Addr {
        raw: libc::sockaddr_in6,
        len: libc::socklen_t,
    }

    impl From<SocketAddr> for Addr {
        fn from(a: SocketAddr) -> Addr {
            // SAFETY: sockaddr_in6 is plain old data; all zeros is a valid value.
            let mut raw: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            let len = match a {
                SocketAddr::V4(v4) => {
                    let sin = libc::sockaddr_in {
                        sin_family: libc::AF_INET as libc::sa_family_t,
                        sin_port: v4.port().to_be(),
                        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                        sin_zero: [0; 8],
                    };
                    // SAFETY: a sockaddr_in (16 bytes) fits in the sockaddr_in6 (28 bytes) it
                    // is written to; both are plain old data and the write is unaligned-safe.
                    unsafe { std::ptr::write_unaligned((&raw mut raw).cast::<libc::sockaddr_in>(), sin) };
                    std::mem::size_of::<libc::sockaddr_in>()
                }
                SocketAddr::V6(v6) => {
                    raw.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                    raw.sin6_port = v6.port().to_be();
                    raw.sin6_addr = libc::in6_addr { s6_addr: v6.ip().octets() };
                    raw.sin6_flowinfo = v6.flowinfo();
                    raw.sin6_scope_id = v6.scope_id();
                    std::mem::size_of::<libc::sockaddr_in6>()
                }
            };
            Addr { raw, len: len as libc::socklen_t }
        }
    }

    /// The packets of one round: their streams, bytes, destinations and slots, in vectors
    /// sized ahead (pushing past the capacity drops the packet rather than allocate).
    #[derive(Default)]
    pub struct Batch {
        /// The stream's key in the pacer (its place in the ring's file table) and its socket.
        socks: Vec<(usize, RawFd)>,
        bufs: Vec<[u8; PACKET]>,
        /// `None`: where the socket is connected.
        addrs: Vec<Option<Addr>>,
        slots: Vec<Instant>,
    }

    impl Batch {
        pub fn reserve(&mut self, packets: usize) {
            if packets > self.bufs.capacity() {
                let more = packets * 2 - self.bufs.len();
                self.socks.reserve(more);
                self.bufs.reserve(more);
                self.addrs.reserve(more);
                self.slots.reserve(more);
            }
        }

        /// Room for one more packet, or `None` when full (the packet is not sent).
        pub fn push(&mut self, sock: (usize, RawFd), to: Option<&Addr>, slot: Instant) -> Option<&mut [u8; PACKET]> {
            if self.bufs.len() == self.bufs.capacity() {
                return None;
            }
            self.socks.push(sock);
            self.addrs.push(to.copied());
            self.slots.push(slot);
            self.bufs.push([0; PACKET]);
            self.bufs.last_mut()
        }

        pub fn len(&self) -> usize {
            self.bufs.len()
        }

        pub fn is_empty(&self) -> bool {
            self.bufs.is_empty()
        }

        pub fn slots(&self) -> &[Instant] {
            &self.slots
        }

        pub fn clear(&mut self) {
            self.socks.clear();
            self.bufs.clear();
            self.addrs.clear();
            self.slots.clear();
        }
    }

    /// io_uring where it can be set up, else a `sendto` per packet.
    pub struct Sender {
        ring: Option<IoUring>,
        /// The sockets registered with the ring, by stream key (-1: none): the kernel then
        /// takes a send's socket from the ring's table instead of looking its descriptor up
        /// (`fget`) for every packet. Empty when the table cannot be had (the descriptors
        /// are used).
        files: Vec<RawFd>,
        /// The table was refused once: not asked again (a table made later would lack the
        /// sockets of the streams already live).
        refused: bool,
    }

    impl Sender {
        pub fn new() -> Sender {
            Sender { ring: ring(), files: Vec::new(), refused: false }
        }

        pub fn name(&self) -> &'static str {
            if self.ring.is_some() { "io_uring" } else { "sendto" }
        }

        /// Whether the ring's file table holds the sockets.
        pub fn fixed(&self) -> bool {
            !self.files.is_empty()
        }

        /// Puts stream `key`'s socket in the ring's file table, growing the table (doubling)
        /// when the key is past its end; on any refusal (an old kernel, the descriptor limit)
        /// the table is dropped and every send names its descriptor.
        pub fn register(&mut self, key: usize, fd: RawFd) {
            let Some(ring) = self.ring.as_ref().filter(|_| !self.refused) else { return };
            let held = key < self.files.len() || grow(ring, &mut self.files, key).is_ok();
            let held = held && {
                self.files[key] = fd;
                ring.submitter().register_files_update(key as u32, &[fd]).is_ok()
            };
            if !held {
                self.drop_table();
            }
        }

        /// Takes stream `key`'s socket out of the table (the ring no longer holds it open).
        pub fn unregister(&mut self, key: usize) {
            let Some(ring) = &self.ring else { return };
            if key < self.files.len() {
                self.files[key] = -1;
                if ring.submitter().register_files_update(key as u32, &[-1]).is_err() {
                    self.drop_table();
                }
            }
        }

        fn drop_table(&mut self) {
            if let Some(ring) = &self.ring
                && !self.files.is_empty()
            {
                let _ = ring.submitter().unregister_files();
            }
            self.files = Vec::new();
            self.refused = true;
        }

        /// Sends every packet of the batch; how many failed (a full socket buffer, a closed
        /// route: the packet is lost, as on the wire).
        pub fn flush(&mut self, batch: &mut Batch) -> usize {
            let Batch { socks, bufs, addrs, .. } = batch;
            let fixed = self.fixed();
            let submitted = match &mut self.ring {
                Some(ring) => submit(ring, fixed, socks, bufs, addrs),
                None => Err(()),
            };
            // Without a ring, or one that could not be entered (nothing reached the kernel):
            // plain calls, from now on.
            submitted.unwrap_or_else(|()| {
                self.drop_table();
                self.ring = None;
                plain(socks, bufs, addrs)
            })
        }
    }

    /// Grows the ring's file table to hold `key` (twice its size, at least 64, at most the
    /// process's descriptor limit), keeping the sockets it holds.
    fn grow(ring: &IoUring, files: &mut Vec<RawFd>, key: usize) -> std::io::Result<()> {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes the struct it is given.
        let limit = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
            0 => usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX),
            _ => usize::MAX,
        };
        let size = (key + 1).next_power_of_two().max(64).min(limit);
        if key >= size {
            return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
        }
        if !files.is_empty() {
            ring.submitter().unregister_files()?;
        }
        files.resize(size, -1);
        ring.submitter().register_files(files)
    }

    /// A ring only this thread submits to, its completions reaped only when it waits for them
    /// (no interrupting task work); a plain ring on kernels before 6.1.
    fn ring() -> Option<IoUring> {
        let entries = ENTRIES as u32;
        IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries)
            .or_else(|_| IoUring::new(entries))
            .ok()
    }

    fn plain(socks: &[(usize, RawFd)], bufs: &[[u8; PACKET]], addrs: &[Option<Addr>]) -> usize {
        let mut failed = 0;
        for (((_, fd), buf), to) in socks.iter().zip(bufs).zip(addrs) {
            let (addr, len) = match to {
                Some(to) => ((&raw const to.raw).cast(), to.len),
                None => (std::ptr::null(), 0),
            };
            // SAFETY: the buffer and the address live in the batch, alive for this call.
            let r = unsafe { libc::sendto(*fd, buf.as_ptr().cast(), PACKET, libc::MSG_DONTWAIT, addr, len) };
            failed += usize::from(r < 0);
        }
        failed
    }

    /// One `send` for a packet: from the ring's file table or the descriptor, to its
    /// destination or where the socket is connected.
    fn entry(fixed: bool, (key, fd): (usize, RawFd), buf: &[u8; PACKET], to: Option<&Addr>) -> squeue::Entry {
        let send = match fixed {
            true => opcode::Send::new(types::Fixed(key as u32), buf.as_ptr(), PACKET as u32),
            false => opcode::Send::new(types::Fd(fd), buf.as_ptr(), PACKET as u32),
        };
        let send = match to {
            Some(to) => send.dest_addr((&raw const to.raw).cast()).dest_addr_len(to.len),
            None => send,
        };
        send.flags(libc::MSG_DONTWAIT).build()
    }

    /// One submission per `ENTRIES` packets, each waited for; how many failed, or `Err` when
    /// the ring could not be entered with nothing submitted.
    fn submit(
        ring: &mut IoUring,
        fixed: bool,
        socks: &[(usize, RawFd)],
        bufs: &[[u8; PACKET]],
        addrs: &[Option<Addr>],
    ) -> Result<usize, ()> {
        let mut failed = 0;
        for ((socks, bufs), addrs) in socks.chunks(ENTRIES).zip(bufs.chunks(ENTRIES)).zip(addrs.chunks(ENTRIES)) {
            {
                let mut sq = ring.submission();
                for (i, ((sock, buf), to)) in socks.iter().zip(bufs).zip(addrs).enumerate() {
                    let e = entry(fixed, *sock, buf, to.as_ref());
                    // SAFETY: the buffer and address live in the batch, which is not touched
                    // until every completion of this chunk is reaped below. The queue has
                    // room: at most ENTRIES per chunk, all reaped.
                    unsafe { sq.push(&e.user_data(i as u64)) }.map_err(|_| ())?;
                }
            }
            let mut got = 0;
            while got < socks.len() {
                match ring.submit_and_wait(socks.len() - got) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) if got == 0 && ring.submission().len() == socks.len() => return Err(()),
                    // Submitted: the kernel holds the buffers until the completions come.
                    Err(_) => std::thread::sleep(std::time::Duration::from_micros(100)),
                }
                for cqe in ring.completion() {
                    got += 1;
                    failed += usize::from(cqe.result() < 0);
                }
            }
        }
        Ok(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::fd::AsRawFd;

    /// A far end that reads the packets waiting for it as they come (a socket buffer holds
    /// only a few hundred): per SSRC, (seq, timestamp, marker, first payload byte).
    struct Far(std::net::UdpSocket, std::cell::RefCell<Heard>);

    /// Per SSRC: (seq, timestamp, marker, first payload byte) of each packet, in order.
    type Heard = HashMap<u32, Vec<(u16, u32, bool, u8)>>;

    impl Far {
        fn new() -> Far {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("far end");
            s.set_nonblocking(true).expect("nonblocking");
            Far(s, Default::default())
        }

        fn addr(&self) -> SocketAddr {
            self.0.local_addr().expect("addr")
        }

        /// Reads what is waiting.
        fn drain(&self) {
            let mut buf = [0u8; 1500];
            while let Ok(n) = self.0.recv(&mut buf) {
                let p = rtp::parse(&buf[..n]).expect("an RTP packet");
                assert_eq!(p.payload.len(), FRAME);
                self.1.borrow_mut().entry(p.ssrc).or_default().push((p.seq, p.timestamp, p.marker, p.payload[0]));
            }
        }

        /// Everything read so far (and waiting now); forgets it.
        fn read(&self) -> Heard {
            std::thread::sleep(Duration::from_millis(5));
            self.drain();
            std::mem::take(&mut *self.1.borrow_mut())
        }
    }

    fn sockets(n: usize) -> Vec<std::net::UdpSocket> {
        (0..n).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind")).collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A stream per socket to `far`, SSRC = its index, first slots `step_us` apart from the
    /// pacer's epoch, starting at (seq, timestamp).
    fn spread(
        pacer: &Rc<Pacer>,
        socks: &[std::net::UdpSocket],
        far: &Far,
        step_us: u64,
        start: (u16, u32),
    ) -> Vec<Paced> {
        let t0 = pacer.inner.borrow().epoch;
        let streams = socks.iter().enumerate().map(|(i, s)| {
            let p =
                pacer.add(s.as_raw_fd(), t0 + Duration::from_micros(step_us * i as u64), (i as u32, start.0, start.1));
            p.route(Some(Route::To(far.addr())), Law::Ulaw);
            p
        });
        streams.collect()
    }

    #[test]
    fn streams_of_every_phase_send_one_packet_a_slot_in_sequence() {
        let (pacer, far) = (Pacer::new(), Far::new());
        let t0 = pacer.inner.borrow().epoch;
        let socks = sockets(40);
        // First slots spread over a packet time, half a millisecond apart.
        let streams = spread(&pacer, &socks, &far, 500, (100, 8000));
        for t in 0..=200 {
            pacer.send_due(t0 + ms(t));
            far.drain();
        }
        let got = far.read();
        assert_eq!(got.len(), 40, "every stream sent");
        for (ssrc, packets) in &got {
            // Slots from t0 + 0..19.5 ms up to 200 ms: ten or eleven of them.
            let want = (200_000 - 500 * u64::from(*ssrc)) / 20_000 + 1;
            assert_eq!(packets.len() as u64, want, "stream {ssrc}: one packet per slot");
            for (k, (seq, ts, marker, byte)) in packets.iter().enumerate() {
                assert_eq!((*seq, *ts), (100 + k as u16, 8000 + 160 * k as u32), "stream {ssrc}: in sequence");
                assert!(!marker);
                assert_eq!(*byte, Law::Ulaw.encode(0), "silence until told to play");
            }
        }
        drop(streams);
        assert_eq!(pacer.live.get(), 0);
        let lateness: u64 = pacer.lateness().iter().sum();
        assert_eq!(lateness, got.values().map(|p| p.len() as u64).sum::<u64>(), "each packet's lateness recorded");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_prompt_plays_in_order_with_its_marker_and_tells_its_end_once() {
        let (pacer, far) = (Pacer::new(), Far::new());
        let t0 = pacer.inner.borrow().epoch;
        let sock = sockets(1).remove(0);
        let p = pacer.add(sock.as_raw_fd(), t0, (7, 0, 0));
        p.route(Some(Route::To(far.addr())), Law::Alaw);
        // Three and a half frames: 1000, 2000, 3000, then 4000 and silence.
        let samples: Vec<i16> = (0..FRAME * 7 / 2).map(|i| 1000 * (1 + (i / FRAME) as i16)).collect();
        p.play(Some(Prompt::new(&samples)));
        let ended = std::cell::Cell::new(0);
        let mut t = 1;
        while t < 100 {
            pacer.send_due(t0 + ms(t));
            far.drain();
            let waker = futures::task::noop_waker();
            if p.poll_played_out(&mut Context::from_waker(&waker)).is_ready() {
                ended.set(ended.get() + 1);
            }
            t += 1;
        }
        assert_eq!(ended.get(), 1, "played out once");
        let got = far.read().remove(&7).expect("packets");
        let bytes: Vec<u8> = got.iter().map(|g| g.3).collect();
        let a = |v: i16| Law::Alaw.encode(v);
        assert_eq!(bytes, [a(1000), a(2000), a(3000), a(4000), a(0)], "the prompt, then silence");
        assert_eq!(got.iter().map(|g| g.2).collect::<Vec<_>>(), [true, false, false, false, false], "marked first");
    }

    #[test]
    fn a_slot_just_past_a_millisecond_goes_out_at_the_next_one_not_a_round_later() {
        let (pacer, far) = (Pacer::new(), Far::new());
        let t0 = pacer.inner.borrow().epoch;
        let sock = sockets(1).remove(0);
        let p = pacer.add(sock.as_raw_fd(), t0 + ms(5) + Duration::from_nanos(300), (3, 0, 0));
        p.route(Some(Route::To(far.addr())), Law::Ulaw);
        pacer.send_due(t0 + ms(5) + Duration::from_nanos(100));
        pacer.send_due(t0 + ms(6) + Duration::from_nanos(100));
        let got = far.read().remove(&3).expect("sent at 6 ms");
        assert_eq!(got.len(), 1);
        let late: u64 = pacer.lateness()[200..].iter().sum();
        assert_eq!(late, 0, "not a packet time late");
    }

    #[test]
    fn a_stalled_shard_skips_the_slots_it_missed_instead_of_bursting_them() {
        let (pacer, far) = (Pacer::new(), Far::new());
        let t0 = pacer.inner.borrow().epoch;
        let sock = sockets(1).remove(0);
        let p = pacer.add(sock.as_raw_fd(), t0 + ms(5), (9, 0, 0));
        p.route(Some(Route::To(far.addr())), Law::Ulaw);
        pacer.send_due(t0 + ms(5));
        // Nothing for 100 ms: one packet, the timestamps showing the four missed slots.
        pacer.send_due(t0 + ms(105));
        pacer.send_due(t0 + ms(106));
        pacer.send_due(t0 + ms(125));
        let got = far.read().remove(&9).expect("packets");
        let seen: Vec<(u16, u32)> = got.iter().map(|g| (g.0, g.1)).collect();
        assert_eq!(seen, [(0, 0), (1, 800), (2, 960)]);
    }

    #[test]
    fn after_a_stall_every_stream_of_every_bucket_sends_in_one_round() {
        let (pacer, far) = (Pacer::new(), Far::new());
        let t0 = pacer.inner.borrow().epoch;
        let socks = sockets(100);
        let streams = spread(&pacer, &socks, &far, 200, (0, 0));
        // One round after 60 ms of nothing: a packet from each of the 100 streams, none lost
        // to a batch sized for one bucket.
        pacer.send_due(t0 + ms(60));
        let got = far.read();
        assert_eq!(got.len(), 100);
        assert!(got.values().all(|p| p.len() == 1));
        let (fixed, io) = (pacer.inner.borrow().sender.fixed(), pacer.io_name());
        assert_eq!(fixed, io == "io_uring", "the file table grew past 64, every stream sent from it");
        drop(streams);
    }

    #[test]
    fn a_connected_stream_sends_without_an_address_and_a_removed_one_lets_its_socket_close() {
        let (pacer, far) = (Pacer::new(), Far::new());
        let t0 = pacer.inner.borrow().epoch;
        let sock = sockets(1).remove(0);
        sock.connect(far.addr()).expect("connect");
        let port = sock.local_addr().expect("addr");
        let p = pacer.add(sock.as_raw_fd(), t0, (4, 0, 0));
        p.route(Some(Route::Connected), Law::Ulaw);
        pacer.send_due(t0 + ms(1));
        assert_eq!(far.read().remove(&4).map(|g| g.len()), Some(1), "sent where the socket is connected");
        // The ring's file table no longer holds the socket once the stream is removed: closing
        // it frees the port.
        drop(p);
        drop(sock);
        std::net::UdpSocket::bind(port).expect("the port is free again");
    }

    #[test]
    fn a_held_or_removed_stream_sends_nothing_and_its_slot_is_reused() {
        let (pacer, far) = (Pacer::new(), Far::new());
        let t0 = pacer.inner.borrow().epoch;
        let socks = sockets(2);
        let a = pacer.add(socks[0].as_raw_fd(), t0, (1, 0, 0));
        a.route(None, Law::Ulaw);
        pacer.send_due(t0 + ms(1));
        pacer.send_due(t0 + ms(21));
        a.route(Some(Route::To(far.addr())), Law::Ulaw);
        pacer.send_due(t0 + ms(41));
        let got = far.read().remove(&1).expect("after the hold");
        assert_eq!(got.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(), [(0, 320)], "time ran on while held");
        drop(a);
        let b = pacer.add(socks[1].as_raw_fd(), t0 + ms(50), (2, 0, 0));
        assert_eq!(b.key, 0, "the slot is reused");
        b.route(Some(Route::To(far.addr())), Law::Ulaw);
        for t in 42..=90 {
            pacer.send_due(t0 + ms(t));
            far.drain();
        }
        let got = far.read();
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), [2], "only the live stream");
        assert_eq!(got[&2].len(), 3);
    }
}
