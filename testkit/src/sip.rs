//! Real SIP peers for the SIP provider's tests and `bench sip`: sipp as the far end (the UAS
//! scenario `testkit/sip/uas.xml`, its behaviour chosen by the dialled number) and kamailio as a
//! carrier's proxy in front of it (`testkit/sip/kamailio.cfg`: 407 challenges, record-route).
//! Both on free UDP ports of 127.0.0.1, in temporary directories, watched like the other servers.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{HarnessError, Managed};

pub const SIPP_INSTALL: &str = "install it with: apt-get install -y sip-tester";
pub const KAMAILIO_INSTALL: &str = "install it with: apt-get install -y kamailio";

/// The UAS scenario (see its header for the numbers it understands).
pub const UAS_SCENARIO: &str = include_str!("../sip/uas.xml");
/// The fault run's trunk (`testkit/sip/trunk.xml`): answers every call; `{RING_MS}`,
/// `{MIN_MS}` and `{MAX_MS}` bound its ring and talk times.
pub const TRUNK_SCENARIO: &str = include_str!("../sip/trunk.xml");
/// A trunk refusing every call with 503 (`testkit/sip/refuse.xml`).
pub const REFUSE_SCENARIO: &str = include_str!("../sip/refuse.xml");
/// The media tests' far end (`testkit/sip/media.xml`): `{PERSON}` and `{MACHINE}` name the
/// audio files it streams.
pub const MEDIA_SCENARIO: &str = include_str!("../sip/media.xml");
const KAMAILIO_CFG: &str = include_str!("../sip/kamailio.cfg");

/// A free UDP port on 127.0.0.1 (bound and released).
pub fn free_udp_port() -> u16 {
    crate::unique_port(|| {
        UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).expect("no free UDP port")
    })
}

/// The inodes of the UDP sockets bound to `port` on 127.0.0.1 (from `/proc/net/udp`).
fn udp_inodes(port: u16) -> Vec<String> {
    let needle = format!("0100007F:{port:04X}");
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.get(1) == Some(&needle.as_str()))
        .filter_map(|f| f.get(9).map(|i| i.to_string()))
        .collect()
}

/// Whether process `pid` itself holds a UDP socket on `port`: something else bound there (a
/// port drawn free and taken before the peer bound it) must not pass for the peer.
fn holds_udp(pid: u32, port: u16) -> bool {
    let inodes = udp_inodes(port);
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().filter_map(|fd| std::fs::read_link(fd.path()).ok()).any(|target| {
        let target = target.to_string_lossy();
        inodes.iter().any(|i| target == format!("socket:[{i}]"))
    })
}

/// Waits until the managed process holds `port`; false when it exits or the time is up.
fn wait_udp(process: &Managed, port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let mut child = process.child.lock().unwrap_or_else(|p| p.into_inner());
        let Some(c) = child.as_mut() else { return false };
        if matches!(c.try_wait(), Ok(Some(_))) {
            return false;
        }
        if holds_udp(c.id(), port) {
            return true;
        }
        drop(child);
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Spawns a peer in a process group of its own (kamailio forks workers: they go with it).
fn spawn(cmd: &mut Command, what: &str, hint: &str, dir: &Path, process: &Managed) -> Result<(), HarnessError> {
    use std::os::unix::process::CommandExt;
    let child = cmd.stdin(Stdio::null()).process_group(0).spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => HarnessError::Missing { what: what.into(), hint: hint.into() },
        _ => HarnessError::Start { what: what.into(), detail: e.to_string() },
    })?;
    crate::watch(child.id(), dir);
    *process.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
    Ok(())
}

/// sipp running the UAS scenario.
#[derive(Debug)]
pub struct Sipp {
    pub port: u16,
    dir: tempfile::TempDir,
    process: Managed,
}

impl Sipp {
    /// Starts sipp as the far end. `calls`: sipp exits after this many calls and writes its
    /// final screen (for [`Sipp::finish`]; 0 = runs until dropped). `hold_ms`: how long a
    /// "200" number talks before the far end hangs up.
    pub fn uas(calls: u64, hold_ms: u64) -> Result<Sipp, HarnessError> {
        Sipp::uas_with(UAS_SCENARIO, calls, hold_ms)
    }

    /// sipp running `scenario` (a UAS) instead of the default one.
    pub fn uas_with(scenario: &str, calls: u64, hold_ms: u64) -> Result<Sipp, HarnessError> {
        let mut tries = 0;
        loop {
            match Sipp::start_uas(scenario, calls, hold_ms) {
                Err(HarnessError::Start { .. }) if tries < 2 => tries += 1,
                other => return other,
            }
        }
    }

    /// sipp running `scenario` on `port` (a trunk's far end started again where the dialer
    /// sends its calls), running until dropped or killed.
    pub fn uas_at(scenario: &str, port: u16) -> Result<Sipp, HarnessError> {
        Sipp::start_at(scenario, 0, 0, port)
    }

    /// One try on freshly drawn ports: fails when sipp exits or another process holds its port.
    fn start_uas(text: &str, calls: u64, hold_ms: u64) -> Result<Sipp, HarnessError> {
        Sipp::start_at(text, calls, hold_ms, free_udp_port())
    }

    fn start_at(text: &str, calls: u64, hold_ms: u64, port: u16) -> Result<Sipp, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("dialer-sipp-")
            .tempdir()
            .map_err(|e| HarnessError::Start { what: "sipp".into(), detail: e.to_string() })?;
        let scenario = dir.path().join("uas.xml");
        std::fs::write(&scenario, text)
            .map_err(|e| HarnessError::Start { what: "sipp".into(), detail: e.to_string() })?;
        let s = Sipp { port, dir, process: Managed::default() };
        let p = |n: u16| n.to_string();
        let mut cmd = Command::new("sipp");
        cmd.current_dir(s.dir.path())
            .arg("-sf")
            .arg(&scenario)
            .args(["-i", "127.0.0.1", "-p", &p(s.port), "-mp", &p(free_udp_port()), "-ci", "127.0.0.1"])
            .args(["-cp", &p(free_udp_port()), "-nostdin", "-d", &hold_ms.to_string()])
            .args(["-max_socket", "60000", "-trace_screen", "-screen_file", "screen.log"])
            .args(["-trace_logs", "-log_file", "invites.log", "-trace_err", "-error_file", "errors.log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if calls > 0 {
            cmd.args(["-m", &calls.to_string()]);
        }
        spawn(&mut cmd, "sipp", SIPP_INSTALL, s.dir.path(), &s.process)?;
        if !wait_udp(&s.process, s.port, Duration::from_secs(10)) {
            let detail = format!("port {} not bound by sipp; its errors: {}", s.port, s.errors());
            return Err(HarnessError::Start { what: "sipp".into(), detail });
        }
        Ok(s)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// SIGKILLs sipp (its calls up go with it; its logs stay until it is dropped).
    pub fn kill(&self) {
        self.process.kill();
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// sipp's error log (unexpected messages, scenario failures).
    pub fn errors(&self) -> String {
        self.read("errors.log")
    }

    /// Waits up to `wait` for sipp to exit after its `calls` (it never does when some were
    /// lost: overload), kills it if it has not, and reports what it logged: the INVITEs always,
    /// the final screen's counters only when it exited by itself (else zero).
    pub fn stop(&self, wait: Duration) -> SippReport {
        match self.finish(wait) {
            Ok(r) => r,
            Err(_) => {
                self.process.kill();
                SippReport::parse(&self.read("screen.log"), &self.read("invites.log")).unwrap_or(SippReport {
                    peak: 0,
                    successful: 0,
                    failed: 0,
                    invites_ms: SippReport::invites(&self.read("invites.log")),
                })
            }
        }
    }

    /// Waits for sipp to exit after its `calls` and returns its final report.
    pub fn finish(&self, timeout: Duration) -> Result<SippReport, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = {
                let mut child = self.process.child.lock().unwrap_or_else(|p| p.into_inner());
                child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
            };
            if exited {
                break;
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout { what: "sipp".into(), timeout, detail: self.errors() });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        SippReport::parse(&self.read("screen.log"), &self.read("invites.log"))
    }

    /// The Call-IDs of the INVITEs sipp has received so far (its log, read now), one per
    /// INVITE: a Call-ID twice is a retransmission or a challenge's second INVITE.
    pub fn invite_call_ids(&self) -> Vec<String> {
        self.read("invites.log")
            .lines()
            .filter_map(|l| l.strip_prefix("invite ")?.split_whitespace().nth(2).map(str::to_string))
            .collect()
    }

    /// sipp's INVITE log as it stands: `invite <ms> <code> <Call-ID> <From>` per INVITE.
    pub fn invite_log(&self) -> String {
        self.read("invites.log")
    }

    /// The directory holding sipp's logs.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

/// What sipp saw, from its own screen and its INVITE log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SippReport {
    /// "Peak was N calls": the most calls up at once.
    pub peak: u64,
    /// Calls sipp counted as successful and failed (its scenario's view).
    pub successful: u64,
    pub failed: u64,
    /// sipp's clock (ms) at each INVITE received.
    pub invites_ms: Vec<u64>,
}

impl SippReport {
    fn parse(screen: &str, invites: &str) -> Result<SippReport, HarnessError> {
        let number_after = |key: &str| -> Option<u64> {
            let at = screen.rfind(key)? + key.len();
            screen[at..].split_whitespace().find_map(|w| w.trim_matches('|').parse().ok())
        };
        let peak = number_after("Peak was").ok_or_else(|| HarnessError::Output {
            what: "sipp".into(),
            expected: "\"Peak was\" in its screen",
            detail: screen.to_string(),
        })?;
        let invites_ms = SippReport::invites(invites);
        // The cumulative column: the last number on the counter's (last) line.
        let cumulative = |key: &str| -> u64 {
            let line = screen.lines().rfind(|l| l.trim_start().starts_with(key)).unwrap_or("");
            line.split_whitespace().filter_map(|w| w.parse().ok()).next_back().unwrap_or(0)
        };
        Ok(SippReport {
            peak,
            successful: cumulative("Successful call"),
            failed: cumulative("Failed call"),
            invites_ms,
        })
    }

    fn invites(log: &str) -> Vec<u64> {
        log.lines().filter_map(|l| l.strip_prefix("invite ")?.split_whitespace().next()?.parse().ok()).collect()
    }

    /// Parses a screen file sipp wrote at exit (a UAC's too).
    pub fn from_screen(screen: &Path) -> Result<SippReport, HarnessError> {
        SippReport::parse(&std::fs::read_to_string(screen).unwrap_or_default(), "")
    }

    /// The most INVITEs within any one second (a sliding window over sipp's own clock).
    pub fn max_invites_per_second(&self) -> usize {
        most_within(self.invites_ms.clone(), 1000)
    }
}

/// [`TRUNK_SCENARIO`] ringing `ring_ms` and talking `min_ms`–`max_ms` (uniform).
pub fn trunk_scenario(ring_ms: u64, min_ms: u64, max_ms: u64) -> String {
    TRUNK_SCENARIO
        .replace("{RING_MS}", &ring_ms.to_string())
        .replace("{MIN_MS}", &min_ms.to_string())
        .replace("{MAX_MS}", &max_ms.to_string())
}

/// One line of a far end's log (`sip/trunk.xml`: `<what> <date> <time> <epoch s.µs> <Call-ID>`,
/// `what` one of `invite` (each INVITE received, retransmissions too), `answer`, `end` and
/// `refused`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FarEndLine<'a> {
    pub what: &'a str,
    /// Microseconds since the epoch.
    pub at_us: u64,
    pub call_id: &'a str,
}

/// The lines of a far end's log; a line of another shape (one being written) is skipped, one
/// whose time does not parse is an error naming it.
pub fn far_end_lines(log: &str) -> impl Iterator<Item = Result<FarEndLine<'_>, String>> {
    log.lines().filter_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [what, _, _, at, call_id] = f[..] else { return None };
        Some(match at.parse::<f64>() {
            Ok(secs) => Ok(FarEndLine { what, at_us: (secs * 1e6) as u64, call_id }),
            Err(_) => Err(format!("far end's log: bad time in {line:?}")),
        })
    })
}

/// The far end's channels over time: (µs since the epoch, +1 at a call's first INVITE or -1 at
/// its hang-up), in time order, hang-ups first at one instant.
pub fn channel_steps(log: &str) -> Vec<(u64, i64)> {
    let mut seen = std::collections::HashSet::new();
    let mut steps: Vec<(u64, i64)> = far_end_lines(log)
        .filter_map(Result::ok)
        .filter_map(|l| match l.what {
            "invite" if seen.insert(l.call_id) => Some((l.at_us, 1)),
            "end" => Some((l.at_us, -1)),
            _ => None,
        })
        .collect();
    steps.sort_unstable();
    steps
}

/// The most calls up at once at the far end whose log is `log`.
pub fn channels_peak(log: &str) -> i64 {
    let mut up = 0i64;
    channel_steps(log)
        .into_iter()
        .map(|(_, d)| {
            up += d;
            up
        })
        .max()
        .unwrap_or(0)
        .max(0)
}

/// The most of `intervals` (start, end) overlapping at once, ends before starts at one instant
/// (a carrier's channels: a call ending frees its channel for one starting then).
pub fn channel_peak(intervals: impl Iterator<Item = (u64, u64)>) -> i64 {
    let mut edges: Vec<(u64, i8)> = intervals.flat_map(|(s, e)| [(s, 1), (e, -1)]).collect();
    edges.sort_unstable();
    let (mut up, mut peak) = (0i64, 0i64);
    for (_, d) in edges {
        up += i64::from(d);
        peak = peak.max(up);
    }
    peak
}

/// The most of `times` within any `window` (a sliding window: a carrier's calls per second).
pub fn most_within(mut times: Vec<u64>, window: u64) -> usize {
    times.sort_unstable();
    let (mut lo, mut best) = (0, 0);
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= window {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// kamailio as a carrier's proxy in front of `upstream`, challenging INVITEs with 407.
#[derive(Debug)]
pub struct Kamailio {
    pub port: u16,
    dir: tempfile::TempDir,
    process: Managed,
}

impl Kamailio {
    pub fn start(upstream: SocketAddr, password: &str) -> Result<Kamailio, HarnessError> {
        let err = |e: std::io::Error| HarnessError::Start { what: "kamailio".into(), detail: e.to_string() };
        let dir = tempfile::Builder::new().prefix("dialer-kamailio-").tempdir().map_err(err)?;
        let k = Kamailio { port: free_udp_port(), dir, process: Managed::default() };
        let cfg = KAMAILIO_CFG
            .replace("@LISTEN@", &format!("127.0.0.1:{}", k.port))
            .replace("@UPSTREAM@", &upstream.to_string())
            .replace("@PASSWORD@", password);
        let path = k.dir.path().join("kamailio.cfg");
        std::fs::write(&path, cfg).map_err(err)?;
        let log = std::fs::File::create(k.dir.path().join("kamailio.log")).map_err(err)?;
        let bin = if Path::new("/usr/sbin/kamailio").exists() { "/usr/sbin/kamailio" } else { "kamailio" };
        let mut cmd = Command::new(bin);
        cmd.arg("-f")
            .arg(&path)
            .args(["-DD", "-E", "-m", "32", "-M", "4", "-Y"])
            .arg(k.dir.path())
            .stdout(Stdio::null())
            .stderr(log);
        spawn(&mut cmd, "kamailio", KAMAILIO_INSTALL, k.dir.path(), &k.process)?;
        if !wait_udp(&k.process, k.port, Duration::from_secs(10)) {
            let detail = std::fs::read_to_string(k.dir.path().join("kamailio.log")).unwrap_or_default();
            return Err(HarnessError::Start { what: "kamailio".into(), detail });
        }
        Ok(k)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its directory (its processes' command lines name it).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

/// The processes whose command line mentions `needle` (from `/proc`).
pub fn processes_naming(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains(needle)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sipps_screen_and_invite_log() {
        let screen = "  0 calls                                 Peak was 17 calls, after 1 s\n\
                      Successful call        |        0                  |       40\n\
                      Failed call            |        0                  |        2\n";
        let invites = "invite 1000 200\ninvite 1500 486\ninvite 1999 200\ninvite 2000 auth\ninvite 2600 200\n";
        let r = SippReport::parse(screen, invites).expect("parses");
        assert_eq!((r.peak, r.successful, r.failed), (17, 40, 2));
        assert_eq!(r.max_invites_per_second(), 3, "1000, 1500, 1999 are within one second; 2000 is not with 1000");
        assert!(SippReport::parse("nothing", "").is_err());
    }

    #[test]
    fn a_far_ends_log_gives_its_channels_as_a_carrier_counts_them() {
        let log = "invite 2026-12-07\t14:22:13.0\t100.000000 a@x\nanswer 2026-12-07\t14:22:13.1\t100.100000 a@x\n\
                   invite 2026-12-07\t14:22:13.2\t100.200000 a@x\ninvite 2026-12-07\t14:22:13.5\t100.500000 b@x\n\
                   end 2026-12-07\t14:22:13.5\t100.500000 a@x\nend 2026-12-07\t14:22:14.0\t101.000000 b@x\ninvite 2026";
        let lines: Vec<_> = far_end_lines(log).collect::<Result<_, _>>().expect("parsed");
        assert_eq!(lines.len(), 6, "the line being written is skipped");
        assert_eq!(lines[1], FarEndLine { what: "answer", at_us: 100_100_000, call_id: "a@x" });
        // a's retransmitted INVITE is not a second call; b starts as a ends: one channel.
        assert_eq!(channel_steps(log), vec![(100_000_000, 1), (100_500_000, -1), (100_500_000, 1), (101_000_000, -1)]);
        assert_eq!(channels_peak(log), 1);
        assert!(far_end_lines("invite d t soon a@x").next().expect("a line").is_err());
        // Back to back: one channel; overlapping: two.
        assert_eq!(channel_peak([(0, 10), (10, 20)].into_iter()), 1);
        assert_eq!(channel_peak([(0, 10), (5, 20), (9, 12)].into_iter()), 3);
        assert_eq!(most_within(vec![0, 400_000, 999_999, 1_000_000], 1_000_000), 3);
    }

    #[test]
    fn a_port_counts_as_a_peers_only_when_that_process_holds_it() {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = socket.local_addr().expect("addr").port();
        assert!(holds_udp(std::process::id(), port), "this process holds its own socket");
        let mut other = Command::new("sleep").arg("5").spawn().expect("sleep");
        assert!(!holds_udp(other.id(), port), "another process does not pass for the holder");
        drop(socket);
        assert!(!holds_udp(std::process::id(), port), "a released port is held by nobody");
        let _ = other.kill();
        let _ = other.wait();
    }
}

pub const BARESIP_INSTALL: &str = "install it with: apt-get install -y baresip";

/// baresip, a SIP user agent with a media stack, answering calls to `user` at once with only
/// `codec` (`PCMU` or `PCMA`) in its SDP: it sends
/// `source` (8 kHz 16-bit WAV) as its audio and dumps what it hears (`dump-…-dec.wav`) into
/// [`Baresip::recordings`].
#[derive(Debug)]
pub struct Baresip {
    pub port: u16,
    dir: tempfile::TempDir,
    process: Managed,
}

impl Baresip {
    /// A baresip answering every call as `user` with `codec`, sending `source`. baresip also
    /// listens for SIP over TCP on its port and TLS on the next one, which a free UDP port does
    /// not promise: a start that finds one taken tries again on other ports.
    pub fn answer(user: &str, codec: &str, source: &Path) -> Result<Baresip, HarnessError> {
        let mut tries = 0;
        loop {
            match Baresip::start(user, codec, source) {
                Err(HarnessError::Start { detail, .. }) if detail.contains("Address already in use") && tries < 4 => {
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    fn start(user: &str, codec: &str, source: &Path) -> Result<Baresip, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("dialer-baresip-")
            .tempdir()
            .map_err(|e| HarnessError::Start { what: "baresip".into(), detail: e.to_string() })?;
        let b = Baresip { port: free_udp_port(), dir, process: Managed::default() };
        let (conf, rec) = (b.dir.path().join("conf"), b.recordings());
        for d in [&conf, &rec] {
            std::fs::create_dir_all(d)
                .map_err(|e| HarnessError::Start { what: "baresip".into(), detail: e.to_string() })?;
        }
        let rtp = free_udp_port();
        let config = format!(
            "poll_method epoll\nsip_listen 127.0.0.1:{}\naudio_player aubridge,nil\naudio_source aufile,{}\n\
             audio_alert aubridge,nil\nmodule_path /usr/lib/baresip/modules\nmodule g711.so\nmodule aufile.so\n\
             module aubridge.so\nmodule sndfile.so\nmodule account.so\nsnd_path {}\nrtp_ports {rtp}-{}\n",
            b.port,
            source.display(),
            rec.display(),
            rtp.saturating_add(20),
        );
        let accounts = format!("<sip:{user}@127.0.0.1>;regint=0;answermode=auto;audio_codecs={codec}\n");
        let write = |name: &str, text: &str| {
            std::fs::write(conf.join(name), text)
                .map_err(|e| HarnessError::Start { what: "baresip".into(), detail: e.to_string() })
        };
        write("config", &config)?;
        write("accounts", &accounts)?;
        let log = std::fs::File::create(b.dir.path().join("baresip.log"))
            .map_err(|e| HarnessError::Start { what: "baresip".into(), detail: e.to_string() })?;
        let mut cmd = Command::new("baresip");
        cmd.arg("-f").arg(&conf).stdout(
            log.try_clone().map_err(|e| HarnessError::Start { what: "baresip".into(), detail: e.to_string() })?,
        );
        cmd.stderr(log);
        spawn(&mut cmd, "baresip", BARESIP_INSTALL, b.dir.path(), &b.process)?;
        if !wait_udp(&b.process, b.port, Duration::from_secs(10)) {
            return Err(HarnessError::Start { what: "baresip".into(), detail: b.log() });
        }
        Ok(b)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Where it dumps what it hears and sends.
    pub fn recordings(&self) -> PathBuf {
        self.dir.path().join("rec")
    }

    /// The decoded audio it heard (the first call's), once it wrote it.
    pub fn heard(&self) -> Option<PathBuf> {
        std::fs::read_dir(self.recordings())
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("baresip.log")).unwrap_or_default()
    }

    /// Stops it (its recordings are complete once it has exited).
    pub fn stop(&self) {
        self.process.kill();
    }
}
