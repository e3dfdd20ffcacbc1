//! Webhooks and the live stream with the real `dialer up` and real HTTP receivers
//! (`dialer_testkit::receiver`): every event of a campaign reaches a receiver that fails a share of
//! requests (500s, hangs past the timeout, dropped connections), through a SIGKILL of the process,
//! de-duplicated by id, each call's events in sequence order and signed; a 410 disables its
//! endpoint; an endpoint down past the retry window ends in the dead-letter store and replays in
//! order under a rotated secret; an SSE client follows a running campaign and resumes after
//! `Last-Event-ID` without a gap.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use dialer_testkit::receiver::{Answered, Mode, Received, Receiver};
use serde_json::{Value, json};

mod procs;
use procs::{Proc, http_json as http, spawn, spawn_with_env};

const SECRET: &str = "test-secret-0123456789";

fn config(dir: &Path, retry_window_sec: u64) -> String {
    let path = dir.join("dialer.toml");
    let text = format!(
        "[provider]\nmin_call_ms = 50\nmax_call_ms = 400\nmax_ring_ms = 50\n\
         [scheduler]\ninterval_ms = 100\nreap_every_ms = 1000\n\
         [events]\npoll_ms = 50\nlive_stats_every_ms = 500\n\
         [webhooks]\ntimeout_ms = 400\nretry_base_ms = 50\nretry_max_ms = 500\nretry_window_sec = {retry_window_sec}\npoll_ms = 50\n"
    );
    std::fs::write(&path, text).expect("config");
    path.display().to_string()
}

/// `dialer up` on `dir/data`; its API port.
fn up(dir: &Path, config: &str, run: u32) -> (Proc, u16) {
    let port = dialer_testkit::free_port();
    let args = [
        "--config",
        config,
        "up",
        "--data-dir",
        &dir.join("data").display().to_string(),
        "--listen",
        &format!("127.0.0.1:{port}"),
    ];
    let p = spawn(dir, &format!("up-{run}"), &args.map(String::from));
    assert!(dialer_testkit::wait_for_port(port, Duration::from_secs(30)), "dialer up did not listen");
    (p, port)
}

fn register(port: u16, url: &str, extra: Value) -> String {
    let mut body = json!({"url": url, "secret": SECRET});
    body.as_object_mut().expect("object").extend(extra.as_object().cloned().unwrap_or_default());
    let (s, w) = http(port, "POST", "/api/v1/webhooks", Some(&body));
    assert_eq!(s, 201, "{w}");
    assert_eq!(w["secret"], SECRET, "the create answer shows the secret");
    w["id"].as_str().expect("id").to_string()
}

fn campaign(port: u16, name: &str, targets: usize) -> String {
    let targets: Vec<Value> = (0..targets).map(|i| json!({"phone_number": format!("+1202555{i:04}")})).collect();
    let body = json!({
        "name": name, "max_concurrent_calls": 100, "targets": targets,
        "retry_policy": {"max_attempts": 3, "base_delay": "100ms", "max_delay": "300ms"}
    });
    let (s, c) = http(port, "POST", "/api/v1/campaigns", Some(&body));
    assert_eq!(s, 201, "{c}");
    let id = c["id"].as_str().expect("id").to_string();
    assert_eq!(http(port, "POST", &format!("/api/v1/campaigns/{id}/start"), None).0, 200);
    id
}

/// Every call of a campaign: id → (status, attempt_count).
fn calls(port: u16, campaign: &str) -> HashMap<String, (String, u64)> {
    let mut out = HashMap::new();
    let mut after = String::new();
    loop {
        let (s, page) = http(port, "GET", &format!("/api/v1/campaigns/{campaign}/calls?limit=500{after}"), None);
        assert_eq!(s, 200, "{page}");
        let list = page["calls"].as_array().expect("calls");
        for c in list {
            out.insert(
                c["id"].as_str().expect("id").into(),
                (c["status"].as_str().expect("status").into(), c["attempt_count"].as_u64().expect("n")),
            );
        }
        match page["next_page_token"].as_str() {
            Some(n) if !list.is_empty() => after = format!("&page_token={n}"),
            _ => return out,
        }
    }
}

fn wait_completed(port: u16, id: &str, timeout: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if http(port, "GET", &format!("/api/v1/campaigns/{id}"), None).1["status"] == "completed" {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("campaign {id} did not complete within {timeout:?}");
}

/// A request's event, its signature checked.
fn event(r: &Received) -> Value {
    let sig = r.headers.get("dialer-signature").expect("a signature header");
    let now = chrono::Utc::now().timestamp();
    dialer_api::signature::verify(sig, &r.body, SECRET, now, 600).unwrap_or_else(|e| panic!("signature {sig}: {e}"));
    serde_json::from_slice(&r.body).expect("a JSON body")
}

/// Events per stream (call or campaign), first arrivals only (de-duplicated by id), in arrival order.
fn by_stream(log: &[Received]) -> BTreeMap<String, Vec<Value>> {
    let mut seen = HashSet::new();
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in log {
        let e = event(r);
        if seen.insert(e["id"].as_str().expect("id").to_string()) {
            let stream = e.get("call_id").unwrap_or(&e["campaign_id"]).as_str().expect("stream").to_string();
            out.entry(stream).or_default().push(e);
        }
    }
    out
}

/// Whether a call's events are whole: 1..=n with no gap, ending in the terminal event its row says.
fn whole(events: &[Value], status: &str, attempts: u64) -> Result<(), String> {
    let seqs: Vec<u64> = events.iter().map(|e| e["sequence"].as_u64().expect("sequence")).collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    if sorted != (1..=seqs.len() as u64).collect::<Vec<_>>() {
        return Err(format!("sequence numbers {sorted:?} are not 1..n"));
    }
    if seqs != sorted {
        return Err(format!("first arrivals out of order: {seqs:?}"));
    }
    let Some(last) = events.iter().max_by_key(|e| e["sequence"].as_u64()) else {
        return Err("no event yet".into());
    };
    let want = match status {
        "completed" => "call.completed",
        "failed" => "call.failed",
        "skipped" => "call.skipped",
        s => return Err(format!("the call is still {s}")),
    };
    if last["type"] != want || last["data"]["final"] != true {
        return Err(format!("last event {last} is not a final {want}"));
    }
    let queued: HashSet<u64> = events
        .iter()
        .filter(|e| e["type"] == "call.queued")
        .map(|e| e["data"]["attempt"].as_u64().expect("attempt"))
        .collect();
    if queued != (1..=attempts).collect::<HashSet<_>>() {
        return Err(format!("queued attempts {queued:?}, the row counts {attempts}"));
    }
    Ok(())
}

/// Waits until every call of the campaign has its whole stream at the receiver.
fn wait_whole(port: u16, campaign: &str, rx: &Receiver, timeout: Duration) -> BTreeMap<String, Vec<Value>> {
    let rows = calls(port, campaign);
    let t0 = Instant::now();
    loop {
        let streams = by_stream(&rx.received());
        let broken: Vec<String> = rows
            .iter()
            .filter_map(|(id, (status, n))| {
                whole(streams.get(id).map(Vec::as_slice).unwrap_or(&[]), status, *n).err().map(|e| format!("{id}: {e}"))
            })
            .take(3)
            .collect();
        if broken.is_empty() {
            return streams;
        }
        assert!(
            t0.elapsed() < timeout,
            "{} calls incomplete at the receiver after {timeout:?}, e.g. {broken:?}",
            broken.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// No request of a stream's event `k` came before one of its event `k - 1` (the sender holds a
/// stream's later events until the earlier ones are delivered).
fn assert_sent_in_stream_order(log: &[Received]) {
    let mut sent: HashSet<(String, u64)> = HashSet::new();
    for r in log {
        let e = event(r);
        let stream = e.get("call_id").unwrap_or(&e["campaign_id"]).as_str().expect("stream").to_string();
        let k = e["sequence"].as_u64().expect("sequence");
        assert!(
            k == 1 || sent.contains(&(stream.clone(), k - 1)),
            "{stream}: event {k} was sent before event {}",
            k - 1
        );
        sent.insert((stream, k));
    }
}

#[test]
fn every_event_of_a_1000_call_campaign_arrives_in_order_and_signed_through_failures_and_a_sigkill() {
    let dir = tempfile::tempdir().expect("tmp");
    let flaky = Receiver::start(Mode::Flaky { share: 0.3, hang: Duration::from_millis(700) }, 7);
    let gone = Receiver::start(Mode::Always(410), 1);
    let cfg = config(dir.path(), 600);
    let (mut p, port) = up(dir.path(), &cfg, 1);
    let a = register(port, &flaky.url("/hooks"), json!({"max_concurrency": 32, "rate_per_sec": 2000}));
    let b = register(port, &gone.url("/gone"), json!({"event_types": ["call.completed"], "max_concurrency": 4}));
    let id = campaign(port, "webhooks", 1000);
    // Kill the process while deliveries are in flight, then start it again on the same data.
    let t0 = Instant::now();
    while flaky.count() < 800 && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    p.kill9();
    let at_kill = flaky.count();
    let (_p, port) = up(dir.path(), &cfg, 2);
    wait_completed(port, &id, Duration::from_secs(180));
    let mut streams = wait_whole(port, &id, &flaky, Duration::from_secs(180));
    // The campaign's own stream ends with `campaign.completed`, logged once every call is
    // terminal: it may arrive after the calls' last events, which is all `wait_whole` waits for.
    let t0 = Instant::now();
    while streams.get(&id).map_or(0, Vec::len) < 3 && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
        streams = by_stream(&flaky.received());
    }
    let log = flaky.received();
    assert!(log.len() > at_kill, "deliveries went on after the restart");
    let events: usize = streams.values().map(Vec::len).sum();
    eprintln!("{} requests ({at_kill} before the SIGKILL) for {events} events of {} streams", log.len(), streams.len());
    assert_sent_in_stream_order(&log);
    let count = |a: Answered| log.iter().filter(|r| r.answered == a).count();
    for a in [Answered::Status(500), Answered::Hung, Answered::Dropped] {
        assert!(count(a) > 20, "the receiver failed requests with {a:?}: {}", count(a));
    }
    assert!(
        log.iter().any(|r| r.headers.get("dialer-delivery-attempt").is_some_and(|n| n != "1")),
        "failures were retried"
    );
    // The campaign's own stream: started, completed, then the final stats, equal to the API's.
    let own: Vec<&str> = streams[&id].iter().map(|e| e["type"].as_str().expect("type")).collect();
    assert_eq!(own, ["campaign.status_changed", "campaign.status_changed", "campaign.completed"], "{:?}", streams[&id]);
    let (_, mut stats) = http(port, "GET", &format!("/api/v1/campaigns/{id}/stats"), None);
    stats.as_object_mut().expect("stats").remove("waiting"); // why pending calls wait: none are
    assert_eq!(streams[&id][2]["data"]["stats"], stats);
    // The 410: that endpoint is disabled after its first requests; what it did not take is dead.
    assert!(
        gone.count() >= 1 && gone.count() <= 4,
        "{} requests to a gone endpoint (its concurrency is 4)",
        gone.count()
    );
    let (_, w) = http(port, "GET", &format!("/api/v1/webhooks/{b}"), None);
    assert_eq!((w["enabled"].as_bool(), w.get("secret")), (Some(false), None), "{w}");
    assert!(w["disabled_reason"].as_str().is_some_and(|r| r.contains("410")), "{w}");
    let (_, dead) = http(port, "GET", &format!("/api/v1/webhooks/{b}/dead-letters?limit=1000"), None);
    assert!(!dead["dead_letters"].as_array().expect("list").is_empty(), "{dead}");
    let (_, dead_a) = http(port, "GET", &format!("/api/v1/webhooks/{a}/dead-letters"), None);
    assert_eq!(dead_a["dead_letters"], json!([]), "nothing of the flaky endpoint died within the window");
}

#[test]
fn an_endpoint_down_past_the_retry_window_ends_in_dead_letters_and_replays_in_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start(Mode::Always(503), 3);
    let cfg = config(dir.path(), 2);
    let (_p, port) = up(dir.path(), &cfg, 1);
    let hook = register(port, &rx.url("/down"), json!({}));
    let id = campaign(port, "down", 40);
    wait_completed(port, &id, Duration::from_secs(60));
    // Every event dies once its window is over (or behind one of its call's that did): the store
    // holds them all once the queue is empty (the gauge is refreshed every 5 s) and the count no
    // longer moves.
    let t0 = Instant::now();
    let mut before = 0;
    let dead = loop {
        std::thread::sleep(Duration::from_secs(6));
        let (_, s) = http(port, "GET", "/metrics/summary", None);
        let (_, d) = http(port, "GET", &format!("/api/v1/webhooks/{hook}/dead-letters?limit=1000"), None);
        let dead = d["dead_letters"].as_array().expect("list").clone();
        if s["queue_depth"] == 0 && !dead.is_empty() && dead.len() == before {
            break dead;
        }
        before = dead.len();
        assert!(t0.elapsed() < Duration::from_secs(90), "deliveries still queued: {s}");
    };
    assert!(dead.iter().all(|d| d["event"]["id"].is_string() && d["last_error"].is_string()), "{dead:?}");
    assert!(dead.iter().any(|d| d["last_status_code"] == 503));
    let before = rx.count();
    // The receiver is back, with a new secret: the old one still signs during the rotation.
    let (s, rotated) = http(
        port,
        "POST",
        &format!("/api/v1/webhooks/{hook}/rotate-secret"),
        Some(&json!({"secret": "rotated-secret-0123456789"})),
    );
    assert_eq!(s, 200, "{rotated}");
    rx.set_mode(Mode::Ok);
    let (s, r) = http(port, "POST", &format!("/api/v1/webhooks/{hook}/dead-letters/replay"), None);
    assert_eq!((s, r["replayed"].as_u64()), (200, Some(dead.len() as u64)), "{r}");
    wait_whole(port, &id, &rx, Duration::from_secs(60));
    let replayed = &rx.received()[before..];
    assert_sent_in_stream_order(replayed);
    for r in replayed {
        let sig = &r.headers["dialer-signature"];
        let t = chrono::Utc::now().timestamp();
        dialer_api::signature::verify(sig, &r.body, "rotated-secret-0123456789", t, 600).expect("the new secret signs");
        assert_eq!(sig.matches("v1=").count(), 2, "both secrets sign during the rotation: {sig}");
    }
    let (_, d) = http(port, "GET", &format!("/api/v1/webhooks/{hook}/dead-letters"), None);
    assert_eq!(d["dead_letters"], json!([]));
}

/// A minimal SSE client over HTTP/1.1 (chunked): each message's fields.
struct Sse {
    reader: BufReader<TcpStream>,
    buf: String,
}

impl Sse {
    fn connect(port: u16, path: &str, last_id: Option<u64>) -> Sse {
        Sse::open(port, path, last_id).unwrap_or_else(|refused| panic!("{refused}"))
    }

    /// The stream, or the status line and headers of a refusal.
    fn open(port: u16, path: &str, last_id: Option<u64>) -> Result<Sse, String> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let resume = last_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n{resume}\r\n")
            .expect("request");
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        reader.read_line(&mut line).expect("status");
        let (ok, mut head) = (line.contains(" 200 "), line.clone());
        while line != "\r\n" {
            line.clear();
            reader.read_line(&mut line).expect("header");
            head.push_str(&line);
        }
        if !ok {
            let mut body = vec![0; 512];
            let n = reader.read(&mut body).unwrap_or(0);
            return Err(head + &String::from_utf8_lossy(&body[..n]));
        }
        Ok(Sse { reader, buf: String::new() })
    }

    /// The next message: its `event`, `id` and `data` (comments and keep-alives skipped).
    fn next(&mut self) -> (String, Option<u64>, String) {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let msg: String = self.buf.drain(..end + 2).collect();
                let field = |name: &str| msg.lines().find_map(|l| l.strip_prefix(name)).map(str::to_string);
                if let Some(data) = field("data: ") {
                    return (field("event: ").unwrap_or_default(), field("id: ").and_then(|i| i.parse().ok()), data);
                }
                continue;
            }
            let mut size = String::new();
            self.reader.read_line(&mut size).expect("chunk size");
            let n = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
            let mut chunk = vec![0; n + 2];
            self.reader.read_exact(&mut chunk).expect("chunk");
            self.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    }
}

/// The stored secrets of every endpoint in `dir`'s embedded database.
fn stored_secrets(dir: &Path) -> Vec<(String, Option<String>)> {
    let url = format!("sqlite://{}", dir.join("data").join("dialer.db").display());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let s = dialer_testkit::fixtures::open(&url).await;
        s.webhook_secrets().await.expect("secrets").into_iter().map(|(_, a, b)| (a, b)).collect()
    })
}

/// `dialer up` on `dir`'s data with `DIALER_SECRETS_KEY` = `key` (none: unset); its port.
fn up_with_key(dir: &Path, config: &str, run: u32, key: Option<&str>) -> (Proc, u16) {
    let port = dialer_testkit::free_port();
    let args = ["--config", config, "up", "--data-dir", &dir.join("data").display().to_string(), "--listen"]
        .map(String::from)
        .into_iter()
        .chain([format!("127.0.0.1:{port}")])
        .collect::<Vec<_>>();
    let env: Vec<(&str, String)> = key.map(|k| ("DIALER_SECRETS_KEY", k.to_string())).into_iter().collect();
    (spawn_with_env(dir, &format!("up-{run}"), &args, &env), port)
}

#[test]
fn with_a_secrets_key_the_database_holds_no_secret_and_deliveries_are_still_signed() {
    let dir = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start(Mode::Ok, 3);
    let cfg = config(dir.path(), 600);
    let key = "5e".repeat(32);
    let (mut p, port) = up_with_key(dir.path(), &cfg, 1, Some(&key));
    assert!(dialer_testkit::wait_for_port(port, Duration::from_secs(30)), "dialer up did not listen");
    let hook = register(port, &rx.url("/hook"), json!({}));
    let id = campaign(port, "sealed", 5);
    wait_completed(port, &id, Duration::from_secs(60));
    let t0 = Instant::now();
    while rx.count() < 10 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(rx.count() >= 10, "{} deliveries", rx.count());
    rx.received().iter().for_each(|r| drop(event(r)));
    let (s, rotated) = http(port, "POST", &format!("/api/v1/webhooks/{hook}/rotate-secret"), None);
    assert_eq!(s, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().expect("the new secret, shown once").to_string();
    let stored = stored_secrets(dir.path());
    assert_eq!(stored.len(), 1);
    let (secret, previous) = &stored[0];
    assert!(secret.starts_with("sealed:v1:") && !secret.contains(&new_secret), "{secret}");
    let previous = previous.as_deref().expect("the previous secret, kept while the rotation lasts");
    assert!(previous.starts_with("sealed:v1:") && !previous.contains(SECRET), "{previous}");
    p.signal("TERM");
    let _ = p.0.wait();
    // The same data without the key, or with another one: refused at start, saying why.
    for (run, other) in [(2, None), (3, Some("a1".repeat(32)))] {
        let (mut q, _) = up_with_key(dir.path(), &cfg, run, other.as_deref());
        let t0 = Instant::now();
        let status = loop {
            match q.0.try_wait().expect("status") {
                Some(status) => break status,
                None if t0.elapsed() < Duration::from_secs(30) => std::thread::sleep(Duration::from_millis(100)),
                None => panic!("dialer up started with secrets it cannot open (run {run})"),
            }
        };
        assert!(!status.success(), "dialer up started with secrets it cannot open");
        let log = std::fs::read_to_string(dir.path().join(format!("up-{run}.log"))).expect("log");
        assert!(log.contains("DIALER_SECRETS_KEY"), "{log}");
    }
}

#[test]
fn a_key_holds_at_most_its_streams_and_a_closed_one_gives_its_place_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config(dir.path(), 600);
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).expect("config") + "[api]\nmax_streams_per_key = 2\n")
        .expect("config");
    let (_p, port) = up(dir.path(), &cfg, 1);
    // A running campaign keeps the streams writing, so a closed one is noticed soon.
    campaign(port, "streams", 200);
    let first = Sse::connect(port, "/api/v1/events", None);
    let _second = Sse::connect(port, "/api/v1/events", None);
    let refused = Sse::open(port, "/api/v1/events", None).err().expect("a third stream is refused");
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    assert!(refused.contains("too_many_streams") && refused.contains("api.max_streams_per_key"), "{refused}");
    drop(first);
    let t0 = Instant::now();
    let reopened = loop {
        match Sse::open(port, "/api/v1/events", None) {
            Ok(s) => break s,
            Err(e) if t0.elapsed() < Duration::from_secs(30) => {
                assert!(e.starts_with("HTTP/1.1 429"), "{e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("the closed stream's place never came back: {e}"),
        }
    };
    drop(reopened);
}

#[test]
fn the_live_stream_follows_a_running_campaign_and_resumes_after_last_event_id_without_a_gap() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config(dir.path(), 600);
    let (_p, port) = up(dir.path(), &cfg, 1);
    let id = campaign(port, "live", 300);
    let path = format!("/api/v1/campaigns/{id}/events?last_event_id=0");
    let mut first = Sse::connect(port, &path, None);
    let mut ids: Vec<(u64, String, Value)> = Vec::new();
    let mut stats = 0;
    while ids.len() < 200 {
        let (kind, eid, data) = first.next();
        match eid {
            Some(n) => ids.push((n, kind, serde_json::from_str(&data).expect("json"))),
            None => {
                assert_eq!(kind, "stats", "{data}");
                stats += 1;
            }
        }
    }
    drop(first);
    std::thread::sleep(Duration::from_secs(1));
    let last = ids.last().expect("events").0;
    let mut second = Sse::connect(port, &format!("/api/v1/campaigns/{id}/events"), Some(last));
    loop {
        let (kind, eid, data) = second.next();
        match eid {
            Some(n) => ids.push((n, kind.clone(), serde_json::from_str(&data).expect("json"))),
            None => stats += u32::from(kind == "stats"),
        }
        if kind == "campaign.completed" {
            let body: Value = serde_json::from_str(&data).expect("json");
            assert_eq!(body["data"]["stats"]["total_calls"], 300);
            break;
        }
    }
    // One campaign in this process: its events are the whole log, numbered 1, 2, … with no gap.
    let seqs: Vec<u64> = ids.iter().map(|(n, _, _)| *n).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "ids across the reconnect are consecutive");
    assert!(stats >= 1, "stats snapshots arrive");
    let ended: HashSet<&str> = ids
        .iter()
        .filter(|(_, _, e)| e["data"]["final"] == true)
        .filter_map(|(_, _, e)| e["call_id"].as_str())
        .collect();
    assert_eq!(ended.len(), 300, "every call's end was streamed");
}
