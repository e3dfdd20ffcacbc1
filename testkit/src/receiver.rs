//! A real HTTP receiver for webhook tests and `bench webhooks`: HTTP/1.1 with
//! keep-alive on a free port, a thread per connection, every request logged with its headers and
//! body and what it was answered. Its [`Mode`] makes it fail a share of requests the ways real
//! receivers fail: a 500, no answer until the sender's timeout, the connection dropped mid-request,
//! or one status for everything (503 while "down", 410 "gone"). Failures are drawn from a seeded
//! generator, so a run can be repeated.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the receiver answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// 200 to everything.
    Ok,
    /// This status to everything.
    Always(u16),
    /// 200 to everything, each after this long (a slow receiver).
    Slow(Duration),
    /// A share of requests fails, split evenly between a 500, a hang of `hang` (then the
    /// connection is closed unanswered) and a connection closed before the answer.
    Flaky { share: f64, hang: Duration },
}

/// What a request got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answered {
    Status(u16),
    /// Held until `hang`, then closed with no answer.
    Hung,
    /// Closed with no answer.
    Dropped,
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub answered: Answered,
}

#[derive(Debug)]
struct Shared {
    mode: Mutex<Mode>,
    log: Mutex<Vec<Received>>,
    rng: AtomicU64,
    stop: AtomicBool,
    /// Requests in progress now, and the most at once.
    busy: AtomicU64,
    peak: AtomicU64,
}

/// A running receiver; stops accepting when dropped.
#[derive(Debug)]
pub struct Receiver {
    pub port: u16,
    shared: Arc<Shared>,
}

impl Receiver {
    /// Starts on a free loopback port.
    pub fn start(mode: Mode, seed: u64) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("address").port();
        let shared = Arc::new(Shared {
            mode: Mutex::new(mode),
            log: Mutex::default(),
            rng: AtomicU64::new(seed | 1),
            stop: AtomicBool::new(false),
            busy: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(c) = conn {
                    let s = s.clone();
                    std::thread::spawn(move || serve(c, &s));
                }
            }
        });
        Receiver { port, shared }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The requests from the `start`-th on (a reader that keeps up with a long log copies only
    /// what is new, holding the log's lock briefly: the receiver records nothing meanwhile).
    pub fn received_from(&self, start: usize) -> Vec<Received> {
        let log = self.shared.log.lock().unwrap_or_else(|p| p.into_inner());
        log.get(start..).map(<[Received]>::to_vec).unwrap_or_default()
    }

    pub fn count(&self) -> usize {
        self.shared.log.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The most requests it held at once.
    pub fn peak_concurrency(&self) -> u64 {
        self.shared.peak.load(Ordering::Relaxed)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// xorshift64*: a uniform sample in [0, 1).
fn sample(rng: &AtomicU64) -> f64 {
    let mut x = rng.load(Ordering::Relaxed);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng.store(x, Ordering::Relaxed);
    (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
}

/// Requests of one connection until it closes.
fn serve(conn: TcpStream, s: &Shared) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone the socket"));
    let mut conn = conn;
    while let Some((headers, body)) = read_request(&mut reader) {
        let now = s.busy.fetch_add(1, Ordering::Relaxed) + 1;
        s.peak.fetch_max(now, Ordering::Relaxed);
        let answered = decide(s);
        s.log.lock().unwrap_or_else(|p| p.into_inner()).push(Received { at: Instant::now(), headers, body, answered });
        let keep = answer(&mut conn, answered, s);
        s.busy.fetch_sub(1, Ordering::Relaxed);
        if !keep {
            let _ = conn.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

fn decide(s: &Shared) -> Answered {
    let mode = s.mode.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match mode {
        Mode::Ok => Answered::Status(200),
        Mode::Always(code) => Answered::Status(code),
        Mode::Slow(d) => {
            std::thread::sleep(d);
            Answered::Status(200)
        }
        Mode::Flaky { share, .. } => {
            let u = sample(&s.rng);
            if u >= share {
                Answered::Status(200)
            } else if u < share / 3.0 {
                Answered::Status(500)
            } else if u < share * 2.0 / 3.0 {
                Answered::Hung
            } else {
                Answered::Dropped
            }
        }
    }
}

/// Writes the answer; `false`: close the connection.
fn answer(conn: &mut TcpStream, a: Answered, s: &Shared) -> bool {
    match a {
        Answered::Status(code) => {
            let body = if (200..300).contains(&code) { "ok" } else { "no" };
            let head = format!(
                "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(head.as_bytes()).is_ok()
        }
        Answered::Hung => {
            let hang = match &*s.mode.lock().unwrap_or_else(|p| p.into_inner()) {
                Mode::Flaky { hang, .. } => *hang,
                _ => Duration::ZERO,
            };
            std::thread::sleep(hang);
            false
        }
        Answered::Dropped => false,
    }
}

/// One request: headers (lower-cased names) and body; `None` when the connection closed.
fn read_request(r: &mut BufReader<TcpStream>) -> Option<(HashMap<String, String>, Vec<u8>)> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = HashMap::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((headers, body))
}
