//! `bench media`: one data-plane shard (a current-thread runtime, as in production) holding
//! thousands of answered calls at once, each playing a prompt over its own RTP stream. sipp is
//! the far end's signalling (the tests' UAS: it answers and waits for our BYE); its SDP names a
//! receiver of ours on the other core, which reads every packet and measures, per stream, how
//! far each arrival strays from the stream's 20 ms grid: a ledger apart from the shard's own.
//! Reports the calls up at once, how late packets went out after their slot (p50, p99, max,
//! share later than one ptime), the arrivals, and the shard thread's CPU per concurrent stream
//! (µs of CPU per second of stream; on loopback it includes the kernel's delivery of each
//! packet to the receiver, which a NIC would spare the sending core).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dialer_dataplane::Provider;
use dialer_dataplane::provider::CallOutcome;
use dialer_dataplane::sip::{SipProvider, TrunkSettings};
use dialer_dataplane::{ProviderKind, ProviderSettings};
use dialer_domain::media::{MediaPlan, wav};
use dialer_domain::settings::Telephony;
use dialer_testkit::fixtures::Dispatch;
use dialer_testkit::sip::Sipp;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Calls up at once (each one RTP stream).
    #[arg(long, default_value_t = 5000)]
    calls: u32,
    /// New calls per second while ramping up.
    #[arg(long, default_value_t = 500)]
    ramp: u32,
    /// Length of the prompt each call plays (then it hangs up).
    #[arg(long, default_value = "45s", value_parser = dialer_domain::duration::parse)]
    prompt: Duration,
    /// The trunk's `rtp_symmetric`: send to where the far end's audio comes from (latched from
    /// its first packet; the bench's far end sends none, so every packet names its destination)
    /// instead of the SDP's address through a socket connected at the answer (a carrier's SBC,
    /// the bench's default).
    #[arg(long)]
    rtp_symmetric: bool,
    /// Pin the shard to this CPU (as the tuning's `shards.cpus` does) and the receiver to the
    /// next one; unpinned by default, as the tuning's default.
    #[arg(long)]
    cpu: Option<usize>,
    #[arg(long)]
    json: Option<PathBuf>,
}

const PROMPT: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0b01);

/// A prompt of `len`: a 400 Hz tone with a slow swell, as 8 kHz 16-bit WAV.
fn prompt(len: Duration) -> Vec<u8> {
    let n = (len.as_millis() as usize) * 8;
    let samples = (0..n)
        .map(|i| {
            let t = i as f32 / 8000.0;
            (6000.0 * (1.0 + (t * 0.5).sin()) * (2.0 * std::f32::consts::PI * 400.0 * t).sin()) as i16
        })
        .collect();
    wav::Audio { samples }.to_wav()
}

/// Serves the prompt as the control plane's API does; the base URL.
fn serve(wav: Vec<u8>) -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async move {
            let app = axum::Router::new()
                .route("/api/v1/prompts/{id}/audio", axum::routing::get(move || std::future::ready(wav.clone())));
            if let Ok(l) = tokio::net::TcpListener::from_std(listener) {
                let _ = axum::serve(l, app).await;
            }
        });
    });
    Ok(format!("http://{addr}"))
}

fn settings(a: &Args, far: std::net::SocketAddr, url: String) -> ProviderSettings {
    let trunk = TrunkSettings {
        name: "sipp".into(),
        proxy: far.to_string(),
        max_channels: u32::MAX,
        max_cps: 0,
        rtp_symmetric: a.rtp_symmetric,
        ..TrunkSettings::default()
    };
    ProviderSettings {
        kind: ProviderKind::Sip,
        trunks: vec![trunk],
        max_call: a.prompt + Duration::from_secs(60),
        rtp_port_min: 20_000,
        rtp_port_max: 20_000 + 4 * a.calls.min(11_000) as u16,
        prompts_url: url,
        ..ProviderSettings::default()
    }
}

fn msg(i: u32) -> dialer_domain::messages::DispatchMessage {
    let plan = MediaPlan { prompt: Some(PROMPT), repeat: 1, key_timeout_ms: 0, ..MediaPlan::default() };
    let mut m = Dispatch::call(0).id(Uuid::now_v7()).number(&format!("+1555{:07}201", i)).build();
    m.telephony = Some(Box::new(Telephony { media: Some(plan), ..Telephony::default() }));
    m
}

/// CPU seconds of the calling thread (the shard's).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let f: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The quantile `q` of the lateness histogram (0.1 ms buckets), in ms.
fn quantile(h: &[u64], q: f64) -> f64 {
    let total: u64 = h.iter().sum();
    let want = (total as f64 * q).ceil() as u64;
    let mut seen = 0;
    for (i, n) in h.iter().enumerate() {
        seen += n;
        if seen >= want.max(1) {
            return (i + 1) as f64 / 10.0;
        }
    }
    0.0
}

/// The far end's receiver: reads every RTP packet and, per stream (SSRC), how far each
/// arrival strays from the stream's 20 ms grid (its RTP timestamps). The grid is anchored on
/// the stream's earliest arrival against it (no packet arrives before it was sent), so a
/// receiver that fell behind for a moment shows as stray, never as an early grid.
struct Receiver {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Per packet: SSRC, RTP timestamp, arrival.
    done: std::thread::JoinHandle<Vec<(u32, u32, Duration)>>,
}

impl Receiver {
    fn start(expect: usize, cpu: Option<usize>) -> Result<Receiver> {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
        // Read what is waiting, then sleep a moment: a receiver blocked in recv would be
        // woken by the kernel for each packet, in the sending shard's time.
        sock.set_nonblocking(true)?;
        stamped::enable(&sock)?;
        let port = sock.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let done = std::thread::spawn(move || {
            pin(cpu);
            let mut seen = Vec::with_capacity(expect);
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                // The kernel's time of arrival: on loopback, when the packet left the shard.
                let Some((n, at)) = stamped::recv(&sock, &mut buf) else {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                };
                if let Some(p) = dialer_domain::media::rtp::parse(&buf[..n]) {
                    seen.push((p.ssrc, p.timestamp, at));
                }
            }
            seen
        });
        Ok(Receiver { port, stop, done })
    }

    /// Over `window` (arrivals since the Unix epoch): the packets read, the slots between each
    /// stream's first and last that never came (skipped or lost), and the stray of each
    /// arrival off its stream's grid (0.1 ms buckets).
    fn finish(self, window: (Duration, Duration)) -> (u64, u64, Vec<u64>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut seen = self.done.join().unwrap_or_default();
        seen.retain(|(_, _, at)| *at >= window.0 && *at <= window.1);
        // Per stream: the first timestamp seen, the earliest arrival against the grid (the RTP
        // timestamp: slots skipped after a stall keep their place on it), the last timestamp
        // and the packets.
        let mut streams: std::collections::HashMap<u32, (u32, Duration, u32, u64)> = Default::default();
        let on_grid =
            |ts: u32, ts0: u32, at: Duration| at.saturating_sub(Duration::from_micros(125) * ts.wrapping_sub(ts0));
        for (ssrc, ts, at) in &seen {
            let a = streams.entry(*ssrc).or_insert((*ts, *at, *ts, 0));
            a.1 = a.1.min(on_grid(*ts, a.0, *at));
            a.2 = *ts;
            a.3 += 1;
        }
        let missing = streams
            .values()
            .map(|(ts0, _, last, n)| u64::from(last.wrapping_sub(*ts0) / 160 + 1).saturating_sub(*n))
            .sum();
        let mut stray = vec![0u64; 1001];
        for (ssrc, ts, at) in &seen {
            let (ts0, base, ..) = streams[ssrc];
            let off = on_grid(*ts, ts0, *at).saturating_sub(base);
            stray[((off.as_micros() / 100) as usize).min(1000)] += 1;
        }
        (seen.len() as u64, missing, stray)
    }
}

/// Datagrams with the kernel's receive time (`SO_TIMESTAMPNS`): a receiver that reads late
/// still knows when each packet came. The unsafe part, kept small.
#[allow(unsafe_code)]
mod stamped {
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    /// Kernel timestamps on, and a receive buffer for a quarter second of packets (the
    /// receiver sleeps between reads; as root past `net.core.rmem_max`).
    pub fn enable(sock: &std::net::UdpSocket) -> std::io::Result<()> {
        set(sock, libc::SO_TIMESTAMPNS, 1)?;
        let buffer = 64 << 20;
        set(sock, libc::SO_RCVBUFFORCE, buffer).or_else(|_| set(sock, libc::SO_RCVBUF, buffer))
    }

    fn set(sock: &std::net::UdpSocket, option: libc::c_int, value: libc::c_int) -> std::io::Result<()> {
        // SAFETY: a valid socket, and an int option of the size given.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&raw const value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    }

    /// One datagram and its arrival (since the Unix epoch), or `None` when none waits.
    pub fn recv(sock: &std::net::UdpSocket, buf: &mut [u8]) -> Option<(usize, Duration)> {
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let mut control = [0u64; 8];
        // SAFETY: msghdr is plain old data; zeroed is an empty header, filled in below with
        // buffers that outlive the call.
        let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
        h.msg_iov = &raw mut iov;
        h.msg_iovlen = 1;
        h.msg_control = control.as_mut_ptr().cast();
        h.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: as above.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut h, libc::MSG_DONTWAIT) };
        if n < 0 {
            return None;
        }
        // SAFETY: the kernel filled `control` with well-formed control messages; CMSG_* walk
        // them within `msg_controllen`.
        let at = unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&raw const h);
            let mut at = None;
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                    at = Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
                }
                c = libc::CMSG_NXTHDR(&raw const h, c);
            }
            at
        };
        Some((n as usize, at.unwrap_or_default()))
    }
}

/// What the shard measured over the steady window (every call up).
struct Steady {
    up: usize,
    window_s: f64,
    /// The window on the wall clock, for the receiver.
    window: (Duration, Duration),
    cpu_s: f64,
    lateness: Vec<u64>,
    completed: u64,
    failed: u64,
}

/// Now, since the Unix epoch (the receiver's kernel timestamps are on this clock).
/// Pins the calling thread to `cpu`, if given.
fn pin(cpu: Option<usize>) {
    if let Some(id) = cpu
        && !core_affinity::set_for_current(core_affinity::CoreId { id })
    {
        eprintln!("note: could not pin a thread to CPU {id}");
    }
}

fn wall() -> Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

fn run_shard(a: &Args, far: std::net::SocketAddr, url: String) -> Result<Steady> {
    pin(a.cpu);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    tokio::task::LocalSet::new().block_on(&rt, async {
        let p = SipProvider::start(settings(a, far, url), 0, 1).await?;
        let pb = ProgressBar::new(u64::from(a.calls)).with_style(
            ProgressStyle::with_template("calls up {bar:40} {pos}/{len}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let mut live = futures::stream::FuturesUnordered::new();
        let (t0, interval) = (Instant::now(), Duration::from_secs(1) / a.ramp.max(1));
        let mut placed = 0u32;
        while placed < a.calls {
            let due = t0 + interval * placed;
            tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
            while placed < a.calls && t0 + interval * placed <= Instant::now() {
                // Each call runs on its own task, as the shard polls its calls while more start.
                live.push(tokio::task::spawn_local(p.place_call(&msg(placed))));
                placed += 1;
                pb.set_position(u64::from(placed));
            }
        }
        pb.finish_and_clear();
        // Every call is placed and, a few seconds on, answered: the steady window.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (cpu0, w0, late0) = (cpu_seconds(), Instant::now(), p.rtp_lateness());
        let wall0 = wall();
        let steady_end = t0 + a.prompt - Duration::from_secs(2);
        let (mut completed, mut failed) = (0u64, 0u64);
        let ended = |o: CallOutcome, c: &mut u64, f: &mut u64| match o {
            CallOutcome::Completed { .. } => *c += 1,
            CallOutcome::Failed { reason, sip, .. } => {
                *f += 1;
                if *f <= 5 {
                    eprintln!("note: a call failed: {reason} {sip:?}");
                }
            }
        };
        let window = tokio::time::sleep_until(tokio::time::Instant::from_std(steady_end.max(Instant::now())));
        tokio::pin!(window);
        loop {
            tokio::select! {
                _ = &mut window => break,
                Some(Ok(o)) = live.next() => ended(o, &mut completed, &mut failed),
            }
        }
        let (cpu_s, window_s) = (cpu_seconds() - cpu0, w0.elapsed().as_secs_f64());
        let window = (wall0, wall());
        let late1 = p.rtp_lateness();
        let up = live.len();
        while let Some(o) = live.next().await {
            ended(o?, &mut completed, &mut failed);
        }
        let lateness = late1.iter().zip(&late0).map(|(b, a)| b - a).collect();
        Ok(Steady { up, window_s, window, cpu_s, lateness, completed, failed })
    })
}

pub fn run(a: Args) -> Result<()> {
    let url = serve(prompt(a.prompt))?;
    // sipp answers with our receiver's port as its audio: one sipp thread could not read
    // 250,000 packets a second and answer INVITEs too.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let other = a.cpu.map(|c| (c + 1) % cpus);
    let receiver = Receiver::start(a.calls as usize * 50 * (a.prompt.as_secs() as usize + 5), other)?;
    let audio = format!("m=audio {} RTP/AVP 0", receiver.port);
    let scenario = dialer_testkit::sip::UAS_SCENARIO.replace("m=audio [media_port] RTP/AVP 0", &audio);
    let far = Sipp::uas_with(&scenario, 0, 0)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("starting sipp (apt-get install -y sip-tester)")?;
    let s = run_shard(&a, far.addr(), url)?;
    let (arrived, missing, stray) = receiver.finish(s.window);
    if s.failed > 0 {
        let errors = far.errors();
        eprintln!("note: sipp's errors: {}", &errors[..errors.len().min(1500)]);
    }
    far.stop(Duration::from_secs(1));
    let packets: u64 = s.lateness.iter().sum();
    let late: u64 = s.lateness[200..].iter().sum();
    let (p50, p99, max) = (quantile(&s.lateness, 0.5), quantile(&s.lateness, 0.99), quantile(&s.lateness, 1.0));
    let per_stream = s.cpu_s * 1e6 / (s.up.max(1) as f64 * s.window_s);
    println!(
        "bench media: {} calls placed at {}/s, each playing a {:?} prompt (PCMU, 20 ms); one shard ({}); rtp_symmetric = {}",
        a.calls,
        a.ramp,
        a.prompt,
        a.cpu.map_or("unpinned".to_string(), |c| format!("on CPU {c}, the receiver on CPU {}", other.unwrap_or(0))),
        a.rtp_symmetric
    );
    println!(
        "| calls up at once | packets (steady {:.0} s) | send lateness p50 | p99 | max | later than 20 ms | shard CPU | per stream |",
        s.window_s
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {packets} | {p50:.1} ms | {p99:.1} ms | {max:.1} ms | {late} | {:.0} % of a core | {per_stream:.1} µs/s |",
        s.up,
        100.0 * s.cpu_s / s.window_s
    );
    println!(
        "receiver: {arrived} packets in the window ({:.2} % of those sent), {missing} slots missing (skipped or lost), arrival off the stream's 20 ms grid p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        100.0 * arrived as f64 / packets.max(1) as f64,
        quantile(&stray, 0.5),
        quantile(&stray, 0.99),
        quantile(&stray, 1.0)
    );
    println!("calls completed {}, failed {}", s.completed, s.failed);
    if let Some(path) = &a.json {
        let v = json!({"calls": a.calls, "rtp_symmetric": a.rtp_symmetric, "up": s.up, "packets": packets, "lateness_p50_ms": p50, "lateness_p99_ms": p99,
                       "lateness_max_ms": max, "late_packets": late, "cpu_share": s.cpu_s / s.window_s,
                       "cpu_us_per_stream_second": per_stream, "completed": s.completed, "failed": s.failed,
                       "received": arrived, "missing": missing, "arrival_stray_p99_ms": quantile(&stray, 0.99),
                       "arrival_stray_max_ms": quantile(&stray, 1.0)});
        std::fs::write(path, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}
