//! The whole product placing real SIP calls: the real `dialer up` with `provider.kind = "sip"`
//! (scheduler → in-process bus → data plane shards → SIP trunk) against sipp as the carrier's
//! far end. The offered load (thousands of calls queued at once) is far above the trunk's
//! channels and calls per second; sipp's own counters prove neither was exceeded.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod procs;
use procs::http_json as http;

const TARGETS: u64 = 2000;
const CHANNELS: u64 = 30;
const CPS: usize = 50;

struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `dialer up` on `dir/data` with one SIP trunk to `sipp`; `provider` adds `[provider]` keys.
fn start_up(dir: &Path, sipp: std::net::SocketAddr, port: u16, provider: &str, run: u32) -> Up {
    start_up_trunk(dir, sipp, port, provider, run, (CHANNELS, CPS), None)
}

/// [`start_up`] with a trunk of `channels` and `cps` of its own, and `shards` shards (the
/// machine's cores when `None`): a trunk's channels are split over the shards, and a campaign
/// is dialled by the shard its partitions fall to.
fn start_up_trunk(
    dir: &Path,
    sipp: std::net::SocketAddr,
    port: u16,
    provider: &str,
    run: u32,
    (channels, cps): (u64, usize),
    shards: Option<usize>,
) -> Up {
    let config = dir.join("dialer.toml");
    std::fs::write(
        &config,
        format!(
            "[limits]\nglobal_max_concurrency = 1000\nper_campaign_max_concurrency = 1000\n\
             [scheduler]\ninterval_ms = 200\nreap_every_ms = 1000\n\
             [provider]\nkind = \"sip\"\n{provider}\n\
             [[provider.trunks]]\nname = \"sipp\"\nproxy = \"{sipp}\"\nmax_channels = {channels}\nmax_cps = {cps}\n"
        ),
    )
    .expect("config");
    let log = std::fs::File::create(dir.join(format!("up-{run}.log"))).expect("log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dialer"));
    if let Some(n) = shards {
        let tuning = dir.join("tuning.toml");
        std::fs::write(&tuning, format!("[shards]\ncount = {n}\npartitions = 4\n")).expect("tuning");
        cmd.env("DIALER_TUNING", tuning);
    }
    let child = cmd
        .args(["--config", &config.display().to_string(), "up", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "info")
        // Test numbers (+1555…) map to no zone: recipient windows would hold them by time of day.
        .env("DIALER_CALLING_RULES_ENABLED", "false")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("dialer up starts");
    let up = Up(child);
    assert!(dialer_testkit::wait_for_port(port, Duration::from_secs(30)), "dialer up did not listen");
    up
}

#[test]
fn thousands_of_calls_through_the_full_path_stay_within_the_trunks_channels_and_cps() {
    let far = dialer_testkit::sip::Sipp::uas(TARGETS, 500).unwrap_or_else(|e| panic!("sipp is needed: {e}"));
    let dir = tempfile::tempdir().expect("dir");
    let port = dialer_testkit::free_port();
    let _up = start_up(dir.path(), far.addr(), port, "ring_timeout_ms = 5000\nmax_call_ms = 10000", 1);
    // Every number ends in 200: sipp answers and hangs up after 500 ms.
    let targets: Vec<Value> = (0..TARGETS).map(|i| json!({"phone_number": format!("+1555{i:04}200")})).collect();
    let (s, c) = http(
        port,
        "POST",
        "/api/v1/campaigns",
        Some(&json!({"name": "sip", "max_concurrent_calls": 500, "targets": targets})),
    );
    assert_eq!(s, 201, "{c}");
    let id = c["id"].as_str().expect("id").to_string();
    assert_eq!(http(port, "POST", &format!("/api/v1/campaigns/{id}/start"), None).0, 200);
    let t0 = Instant::now();
    loop {
        let (_, c) = http(port, "GET", &format!("/api/v1/campaigns/{id}"), None);
        if c["status"] == "completed" {
            break;
        }
        let (_, st) = http(port, "GET", &format!("/api/v1/campaigns/{id}/stats"), None);
        assert!(t0.elapsed() < Duration::from_secs(180), "campaign not completed: {st}; {}", far.errors());
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, st) = http(port, "GET", &format!("/api/v1/campaigns/{id}/stats"), None);
    assert_eq!(st["completed_calls"], TARGETS, "every call answered and recorded: {st}");
    assert_eq!(st["attempts_total"], TARGETS, "one attempt each, none dialled twice: {st}");
    let r = far.finish(Duration::from_secs(30)).expect("sipp's report");
    assert_eq!(r.invites_ms.len() as u64, TARGETS, "sipp received one INVITE per call");
    let attempts: std::collections::HashSet<String> =
        far.invite_call_ids().iter().map(|id| id.split('.').take(2).collect::<Vec<_>>().join(".")).collect();
    assert_eq!(attempts.len() as u64, TARGETS, "each call's one attempt INVITEd once (Call-ID = call.attempt.…)");
    assert_eq!((r.successful, r.failed), (TARGETS, 0), "{}", far.errors());
    assert!(r.peak <= CHANNELS, "sipp saw {} calls up at once on a trunk of {CHANNELS} channels", r.peak);
    let cps = r.max_invites_per_second();
    assert!(cps <= CPS, "{cps} INVITEs within one second on a {CPS}-CPS trunk");
    assert!(
        cps >= CPS * 3 / 4 && r.peak >= CHANNELS / 2,
        "the trunk's limits were the bound: {cps} CPS, peak {}",
        r.peak
    );
}

fn campaign(port: u16, numbers: &[String], retry: Value) -> String {
    campaign_with(port, "sip-outcomes", numbers, retry, json!({}))
}

fn campaign_with(port: u16, name: &str, numbers: &[String], retry: Value, telephony: Value) -> String {
    let targets: Vec<Value> = numbers.iter().map(|n| json!({"phone_number": n})).collect();
    let body = json!({"name": name, "max_concurrent_calls": 20, "targets": targets, "retry_policy": retry,
                      "telephony": telephony});
    let (s, c) = http(port, "POST", "/api/v1/campaigns", Some(&body));
    assert_eq!(s, 201, "{c}");
    let id = c["id"].as_str().expect("id").to_string();
    assert_eq!(http(port, "POST", &format!("/api/v1/campaigns/{id}/start"), None).0, 200);
    id
}

/// The calls of a campaign by number.
fn calls_by_number(port: u16, id: &str) -> std::collections::HashMap<String, Value> {
    let (_, page) = http(port, "GET", &format!("/api/v1/campaigns/{id}/calls?limit=1000"), None);
    let calls = page["calls"].as_array().expect("calls").clone();
    calls.into_iter().map(|c| (c["phone_number"].as_str().expect("number").to_string(), c)).collect()
}

fn attempts(port: u16, call: &Value) -> Vec<Value> {
    let (_, d) = http(port, "GET", &format!("/api/v1/calls/{}", call["id"].as_str().expect("id")), None);
    d["attempts"].as_array().expect("attempts").clone()
}

#[test]
fn each_attempt_keeps_its_sip_answer_and_retries_follow_the_outcome() {
    let far = dialer_testkit::sip::Sipp::uas(0, 200).unwrap_or_else(|e| panic!("sipp is needed: {e}"));
    let dir = tempfile::tempdir().expect("dir");
    let port = dialer_testkit::free_port();
    let _up = start_up(dir.path(), far.addr(), port, "ring_timeout_ms = 1000\nmax_call_ms = 5000\nsip_t1_ms = 100", 1);
    let numbers: Vec<String> = ["200", "486", "404", "503", "487"].iter().map(|c| format!("+1555000{c}")).collect();
    let retry = json!({"max_attempts": 2, "base_delay": "100ms", "max_delay": "200ms", "jitter": 0.0});
    let id = campaign(port, &numbers, retry);
    let t0 = Instant::now();
    let settled = |c: &std::collections::HashMap<String, Value>| {
        let done = |n: &str, status: &str| c.get(&format!("+1555000{n}")).is_some_and(|v| v["status"] == status);
        done("200", "completed") && done("486", "failed") && done("404", "failed") && done("487", "failed")
    };
    let calls = loop {
        let calls = calls_by_number(port, &id);
        if settled(&calls) {
            break calls;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "calls not settled: {calls:?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let sip = |a: &Value| {
        (a["reason"].as_str().map(str::to_string), a["sip_code"].as_u64(), a["sip_reason"].as_str().map(str::to_string))
    };
    let of = |n: &str| attempts(port, &calls[&format!("+1555000{n}")]);
    assert_eq!(of("200").len(), 1);
    let busy = of("486");
    assert_eq!(busy.len(), 2, "busy is retried: {busy:?}");
    for a in &busy {
        assert_eq!(sip(a), (Some("busy".into()), Some(486), Some("Busy Here".into())), "{a}");
    }
    let invalid = of("404");
    assert_eq!(invalid.len(), 1, "invalid_number is final: {invalid:?}");
    assert_eq!(sip(&invalid[0]), (Some("invalid_number".into()), Some(404), Some("Not Found".into())));
    let cancelled = of("487");
    assert_eq!(cancelled.len(), 2, "no_answer is retried: {cancelled:?}");
    assert_eq!(sip(&cancelled[0]), (Some("no_answer".into()), Some(487), Some("Request Terminated".into())));
    // 503 with Retry-After: 120 — the retry waits two minutes, not the 100 ms backoff.
    let overloaded = &calls["+1555000503"];
    let first = of("503");
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(sip(&first[0]), (Some("failed".into()), Some(503), Some("Service Unavailable".into())));
    assert_eq!(overloaded["status"], "pending", "{overloaded}");
    let ended = chrono::DateTime::parse_from_rfc3339(first[0]["ended_at"].as_str().expect("ended")).expect("time");
    let next =
        chrono::DateTime::parse_from_rfc3339(overloaded["next_attempt_at"].as_str().expect("next")).expect("time");
    assert!(next - ended >= chrono::TimeDelta::seconds(119), "retry at {next}, {ended} + Retry-After 120 s");
}

#[test]
fn a_sigkilled_dialer_with_calls_up_never_dials_an_attempt_twice_and_resolves_them() {
    const N: usize = 60;
    let far = dialer_testkit::sip::Sipp::uas(0, 3000).unwrap_or_else(|e| panic!("sipp is needed: {e}"));
    let dir = tempfile::tempdir().expect("dir");
    let port = dialer_testkit::free_port();
    let provider = "ring_timeout_ms = 1000\nmax_call_ms = 4000\nsip_t1_ms = 100";
    let mut up = start_up(dir.path(), far.addr(), port, provider, 1);
    let numbers: Vec<String> = (0..N).map(|i| format!("+1555{i:04}200")).collect();
    let retry = json!({"max_attempts": 3, "base_delay": "100ms", "max_delay": "200ms"});
    let id = campaign(port, &numbers, retry);
    let t0 = Instant::now();
    while far.invite_call_ids().len() < 20 {
        assert!(t0.elapsed() < Duration::from_secs(30), "no calls reached sipp");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Calls are up (each talks 3 s): the process dies with them.
    let _ = up.0.kill();
    let _ = up.0.wait();
    let before = far.invite_call_ids().len();
    let _up = start_up(dir.path(), far.addr(), port, provider, 2);
    let t0 = Instant::now();
    loop {
        let (_, c) = http(port, "GET", &format!("/api/v1/campaigns/{id}"), None);
        if c["status"] == "completed" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "campaign not completed after the restart: {c}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut seen = std::collections::HashSet::new();
    for call_id in far.invite_call_ids() {
        // The dialer's Call-ID is <call>.<attempt>.<unique>@host.
        let mut parts = call_id.split('.');
        let attempt = (parts.next().expect("call").to_string(), parts.next().expect("attempt").to_string());
        assert!(seen.insert(attempt.clone()), "attempt {attempt:?} was dialled twice");
    }
    let calls = calls_by_number(port, &id);
    assert_eq!(calls.len(), N);
    let mut resolved = 0;
    for c in calls.values() {
        assert_eq!(c["status"], "completed", "every call ends answered (a retry after an unknown outcome): {c}");
        let a = attempts(port, c);
        resolved += usize::from(a.iter().any(|a| a["reason"] == "unknown_outcome"));
    }
    assert!(before >= 20 && resolved >= 1, "{resolved} attempts were up when the dialer died and got resolved");
}

/// A dialer killed with calls up hangs up none of them. Started again, it holds their trunk
/// channels until the longest call has passed (as the limiter holds their campaigns' tokens),
/// so the carrier never sees more calls up than the trunk's channels: two campaigns of 20 on a
/// 30-channel trunk split over two shards, the process dies with calls up, and its successor's
/// first calls wait for the channels the dead one's calls may still hold. It tells the hold
/// apart only when the campaigns fall to both shards (34 up without it); on one shard the
/// limiter's hold of the dead run's tokens alone suffices. The ledger is sipp's log: each call
/// from its INVITE to its hang-up.
#[test]
fn a_restarted_dialer_holds_the_trunk_channels_of_the_calls_its_killed_run_left_up() {
    let scenario = dialer_testkit::sip::trunk_scenario(10, 4000, 4000);
    let far = dialer_testkit::sip::Sipp::uas_at(&scenario, dialer_testkit::sip::free_udp_port())
        .unwrap_or_else(|e| panic!("sipp is needed: {e}"));
    let dir = tempfile::tempdir().expect("dir");
    let port = dialer_testkit::free_port();
    let provider = "ring_timeout_ms = 1000\nmax_call_ms = 6000\nsip_t1_ms = 100";
    // Two shards, 15 channels each: where the campaigns fall to both (their partitions), the
    // limiter's hold alone let the restarted run's shares take 34 calls up at sipp; where they
    // fall to one, its 15 channels bound them and the limiter's hold suffices.
    let up_once = |run| start_up_trunk(dir.path(), far.addr(), port, provider, run, (CHANNELS, CPS), Some(2));
    let mut up = up_once(1);
    let retry = json!({"max_attempts": 3, "base_delay": "100ms", "max_delay": "200ms"});
    let mut ids = Vec::new();
    for (k, name) in ["a", "b"].iter().enumerate() {
        let numbers: Vec<String> = (0..40).map(|i| format!("+1555{k}{i:03}200")).collect();
        ids.push(campaign_with(port, name, &numbers, retry.clone(), json!({})));
    }
    let t0 = Instant::now();
    while up_at(&far.invite_log(), u64::MAX) < CHANNELS as i64 / 2 {
        assert!(t0.elapsed() < Duration::from_secs(30), "the trunk's channels never filled: {}", far.invite_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = up.0.kill();
    let _ = up.0.wait();
    let killed_at =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_micros() as u64;
    let _up = up_once(2);
    for id in &ids {
        let t0 = Instant::now();
        while http(port, "GET", &format!("/api/v1/campaigns/{id}"), None).1["status"] != "completed" {
            assert!(t0.elapsed() < Duration::from_secs(120), "campaign {id} not completed after the restart");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let log = far.invite_log();
    let left_up = up_at(&log, killed_at);
    assert!(left_up >= CHANNELS as i64 / 2, "the killed run left {left_up} calls up: too few to show anything");
    let peak = dialer_testkit::sip::channels_peak(&log);
    assert!(peak <= CHANNELS as i64, "sipp had {peak} calls up at once on a trunk of {CHANNELS} channels");
}

/// A far end down for a while, then back on its port: the INVITEs the dialer kept sending
/// meanwhile got no answer and are retransmitted; each takes a slot of the trunk's calls per
/// second, so the far end back never sees more new calls in a second than the trunk allows
/// (before, the retransmissions of every INVITE sent during the outage arrived at once).
#[test]
fn a_far_end_back_from_an_outage_sees_no_more_calls_a_second_than_the_trunk_allows() {
    let scenario = dialer_testkit::sip::trunk_scenario(10, 100, 200);
    let port = dialer_testkit::sip::free_udp_port();
    let far = dialer_testkit::sip::Sipp::uas_at(&scenario, port).unwrap_or_else(|e| panic!("sipp is needed: {e}"));
    let dir = tempfile::tempdir().expect("dir");
    let api = dialer_testkit::free_port();
    let provider = "ring_timeout_ms = 1000\nmax_call_ms = 2000\nsip_t1_ms = 100";
    // More channels than calls a second: a whole second's worth of INVITEs may be unanswered.
    const CPS: usize = 20;
    let _up = start_up_trunk(dir.path(), far.addr(), api, provider, 1, (60, CPS), None);
    let targets: Vec<Value> = (0..300).map(|i| json!({"phone_number": format!("+1555{i:04}200")})).collect();
    let retry = json!({"max_attempts": 5, "base_delay": "100ms", "max_delay": "200ms"});
    let body = json!({"name": "outage", "max_concurrent_calls": 60, "targets": targets, "retry_policy": retry});
    let (status, c) = http(api, "POST", "/api/v1/campaigns", Some(&body));
    assert_eq!(status, 201, "{c}");
    let id = c["id"].as_str().expect("id").to_string();
    assert_eq!(http(api, "POST", &format!("/api/v1/campaigns/{id}/start"), None).0, 200);
    std::thread::sleep(Duration::from_secs(3));
    far.kill();
    std::thread::sleep(Duration::from_secs(3));
    let back = dialer_testkit::sip::Sipp::uas_at(&scenario, port).expect("the far end again on its port");
    let t0 = Instant::now();
    while http(api, "GET", &format!("/api/v1/campaigns/{id}"), None).1["status"] != "completed" {
        assert!(t0.elapsed() < Duration::from_secs(120), "campaign not completed");
        std::thread::sleep(Duration::from_millis(500));
    }
    for (which, log) in [("before the outage", far.invite_log()), ("back", back.invite_log())] {
        let mut seen = std::collections::HashSet::new();
        let times: Vec<u64> = dialer_testkit::sip::far_end_lines(&log)
            .map(|l| l.expect("the far end's log"))
            .filter(|l| l.what == "invite" && seen.insert(l.call_id))
            .map(|l| l.at_us / 1000)
            .collect();
        assert!(times.len() > 30, "the far end {which} took calls: {}", times.len());
        let busiest = dialer_testkit::sip::most_within(times, 1000);
        assert!(busiest <= CPS, "the far end {which} got {busiest} new calls within a second on a {CPS}-CPS trunk");
    }
}

/// Calls up at the far end at `at` (µs since the epoch).
fn up_at(log: &str, at: u64) -> i64 {
    dialer_testkit::sip::channel_steps(log).into_iter().filter(|&(t, _)| t <= at).map(|(_, d)| d).sum::<i64>().max(0)
}

#[test]
fn a_campaign_sets_its_caller_id_ring_timeout_referral_and_what_it_retries() {
    let far = dialer_testkit::sip::Sipp::uas(0, 200).unwrap_or_else(|e| panic!("sipp is needed: {e}"));
    let dir = tempfile::tempdir().expect("dir");
    let port = dialer_testkit::free_port();
    let _up = start_up(dir.path(), far.addr(), port, "ring_timeout_ms = 20000\nmax_call_ms = 5000\nsip_t1_ms = 100", 1);
    let numbers: Vec<String> = ["202", "487", "486"].iter().map(|c| format!("+1555000{c}")).collect();
    let retry = json!({"max_attempts": 3, "base_delay": "100ms", "max_delay": "200ms", "retry_on": ["no_answer"]});
    let telephony = json!({"caller_id": "+15005550099", "ring_timeout_ms": 1000, "refer_to": "sip:queue@ivr.test"});
    let id = campaign_with(port, "sip-campaign", &numbers, retry, telephony);
    let (_, c) = http(port, "GET", &format!("/api/v1/campaigns/{id}"), None);
    assert_eq!(c["telephony"]["refer_to"], "sip:queue@ivr.test", "{c}");
    assert_eq!(c["retry_policy"]["retry_on"], json!(["no_answer"]), "{c}");
    let t0 = Instant::now();
    let calls = loop {
        let calls = calls_by_number(port, &id);
        let terminal = calls.values().filter(|c| c["status"] == "completed" || c["status"] == "failed").count();
        if terminal == numbers.len() {
            break calls;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "calls not settled: {calls:?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let referred = &calls["+1555000202"];
    assert_eq!(referred["status"], "completed", "{referred}");
    let talked = attempts(port, referred)[0]["duration_ms"].as_i64().expect("duration");
    assert!(talked < 5000, "REFER from the campaign's telephony, not the maximum call length: {talked} ms");
    let rang = attempts(port, &calls["+1555000487"]);
    assert_eq!(rang.len(), 3, "no_answer is in retry_on: {rang:?}");
    for a in &rang {
        let d = a["duration_ms"].as_i64().expect("duration");
        assert!((1000..20_000).contains(&d), "the campaign's 1 s ring timeout, not the provider's 20 s: {d} ms");
    }
    let busy = attempts(port, &calls["+1555000486"]);
    assert_eq!(busy.len(), 1, "busy is not in retry_on: {busy:?}");
    let log = far.invite_log();
    assert!(
        log.contains("sip:+15005550099@") && !log.contains("sip:dialer@"),
        "the campaign's caller ID in From: {log}"
    );
    assert!(far.errors().is_empty(), "sipp saw every call as its scenario expects: {}", far.errors());
}

#[test]
fn dialer_dataplane_places_sip_calls_over_kafka_with_the_trunks_metrics() {
    const N: u64 = 100;
    let far = dialer_testkit::sip::Sipp::uas(N, 100).unwrap_or_else(|e| panic!("sipp is needed: {e}"));
    let dir = tempfile::tempdir().expect("dir");
    let (api, admin) = (dialer_testkit::free_port(), dialer_testkit::free_port());
    let name = dialer_testkit::unique_name("sip");
    let config = dir.path().join("dialer.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nlisten = \"127.0.0.1:{api}\"\n[store]\nurl = \"{db}\"\n\
             [limits]\nglobal_max_concurrency = 100\nper_campaign_max_concurrency = 100\n\
             redis_url = \"{redis}\"\nredis_key_prefix = \"{prefix}\"\n\
             [bus]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ndispatch_topic = \"{name}.dispatch\"\n\
             status_topic = \"{name}.status\"\ndead_letter_topic = \"{name}.dlq\"\ngroup_id = \"{name}\"\n\
             dispatch_partitions = 2\nstatus_partitions = 2\n[scheduler]\ninterval_ms = 200\n\
             [provider]\nkind = \"sip\"\nmax_call_ms = 5000\n\
             [[provider.trunks]]\nname = \"sipp\"\nproxy = \"{sipp}\"\nmax_channels = 10\nmax_cps = 20\n",
            db = dialer_testkit::postgres_database(),
            redis = dialer_testkit::redis().url(),
            prefix = dialer_testkit::redis_prefix(),
            brokers = dialer_testkit::kafka().bootstrap(),
            sipp = far.addr(),
        ),
    )
    .expect("config");
    let tuning = dir.path().join("tuning.toml");
    std::fs::write(&tuning, "[shards]\ncount = 2\nassignment = \"static\"\npartitions = 2\n").expect("tuning");
    let config = config.display().to_string();
    let _cp = procs::spawn(dir.path(), "control-plane", &["--config".into(), config.clone(), "control-plane".into()]);
    assert!(dialer_testkit::wait_for_port(api, Duration::from_secs(60)), "the control plane did not listen");
    let dp_args = [
        "--config".to_string(),
        config,
        "dataplane".into(),
        "--tuning".into(),
        tuning.display().to_string(),
        "--admin".into(),
        format!("127.0.0.1:{admin}"),
        "--journal-dir".into(),
        dir.path().join("journal").display().to_string(),
    ];
    let _dp = procs::spawn(dir.path(), "dataplane", &dp_args);
    assert!(dialer_testkit::wait_for_port(admin, Duration::from_secs(60)), "the data plane did not listen");
    let numbers: Vec<String> = (0..N).map(|i| format!("+1555{i:04}200")).collect();
    let id = campaign(api, &numbers, json!({"max_attempts": 1}));
    let t0 = Instant::now();
    loop {
        let (_, c) = http(api, "GET", &format!("/api/v1/campaigns/{id}"), None);
        if c["status"] == "completed" {
            break;
        }
        let logs = dir.path().display();
        assert!(t0.elapsed() < Duration::from_secs(120), "campaign not completed: {c}; logs in {logs}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, st) = http(api, "GET", &format!("/api/v1/campaigns/{id}/stats"), None);
    assert_eq!(st["completed_calls"], N, "every call answered through the data plane's SIP trunk: {st}");
    let (_, metrics) = procs::http(admin, "GET", "/metrics", None);
    let attempts: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("dialer_sip_attempts_total{") && l.contains("trunk=\"sipp\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(attempts as u64, N, "the trunk's attempts on the data plane's /metrics");
    let r = far.finish(Duration::from_secs(30)).expect("sipp's report");
    assert!(r.peak <= 10 && r.max_invites_per_second() <= 20, "trunk limits across the data plane's 2 shards: {r:?}");
}

/// `dialer up` with the given config text (no sipp needed: it must not get far).
fn up_with(dir: &Path, config: &str, port: u16, tuning: Option<&Path>) -> Child {
    let path = dir.join("dialer.toml");
    std::fs::write(&path, config).expect("config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dialer"));
    if let Some(t) = tuning {
        cmd.env("DIALER_TUNING", t);
    }
    cmd.args(["--config", &path.display().to_string(), "up", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dialer up starts")
}

/// A trunk with fewer channels than shards cannot give each shard one: `dialer up` refuses to
/// start (non-zero exit, the trunk, the key and the reason), rather than running and never dialling.
#[test]
fn a_trunk_with_fewer_channels_than_shards_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("dir");
    let tuning = dir.path().join("three.toml");
    std::fs::write(&tuning, "[shards]\ncount = 3\npartitions = 8\n").expect("tuning");
    let config = "[provider]\nkind = \"sip\"\n\
                  [[provider.trunks]]\nname = \"tiny\"\nproxy = \"127.0.0.1:5060\"\nmax_channels = 1\n";
    let child = up_with(dir.path(), config, dialer_testkit::free_port(), Some(&tuning));
    let out = wait_exit(child, Duration::from_secs(30));
    assert!(!out.status.success(), "dialer up must not run with a trunk it cannot use");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("trunk tiny: max_channels 1 is below the 3 shards"), "the key and the reason: {err}");
}

/// A shard that stops on its own (here: its SIP socket cannot be bound on an address of
/// another host) says why at once in the log, and `/healthz` fails naming it.
#[test]
fn a_shard_that_stops_logs_why_at_once_and_fails_healthz() {
    let dir = tempfile::tempdir().expect("dir");
    let port = dialer_testkit::free_port();
    let config = "[provider]\nkind = \"sip\"\nsip_bind = \"192.0.2.1\"\n\
                  [[provider.trunks]]\nname = \"t\"\nproxy = \"127.0.0.1:5060\"\n";
    let mut child = up_with(dir.path(), config, port, None);
    assert!(dialer_testkit::wait_for_port(port, Duration::from_secs(30)), "dialer up did not listen");
    let deadline = Instant::now() + Duration::from_secs(20);
    let (code, body) = loop {
        let (code, body) = http(port, "GET", "/healthz", None);
        if code != 200 || Instant::now() > deadline {
            break (code, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    assert_eq!(code, 503, "a stopped shard fails liveness: {body}");
    let why = body["dependencies"]["shards_alive"]["error"].as_str().unwrap_or_default();
    assert!(why.contains("cannot bind a SIP socket on 192.0.2.1"), "/healthz names the shard and why: {body}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("shard stopped") && log.contains("192.0.2.1"), "logged when it stopped: {log}");
}

fn wait_exit(mut child: Child, timeout: Duration) -> std::process::Output {
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("output")
}

/// The whole product with media: prompts uploaded through the API, a campaign whose answered
/// calls detect who answered, play the reminder to people (9 opts out, 1 ends) and leave a
/// voicemail after the beep; sipp answers as a person pressing 9, a person pressing 1, a person
/// pressing nothing and an answering machine. Each call's attempt carries its own result, the
/// opt-out is on the campaign's do-not-call list, the stats count them.
#[test]
fn a_campaign_with_a_message_a_voicemail_drop_and_a_keypress_opt_out() {
    let dir = tempfile::tempdir().expect("dir");
    let need = |e: dialer_testkit::HarnessError| -> ! { panic!("espeak-ng and sox are needed: {e}") };
    let person = dialer_testkit::audio::person(dir.path(), "en-us", 8000).unwrap_or_else(|e| need(e));
    let machine = dialer_testkit::audio::machine(dir.path(), "en-us").unwrap_or_else(|e| need(e));
    let reminder = dialer_testkit::audio::prompt(
        dir.path(),
        "reminder",
        "Your appointment is tomorrow at ten. Press nine to stop these calls.",
    )
    .unwrap_or_else(|e| need(e));
    let voicemail = dialer_testkit::audio::prompt(dir.path(), "vm", "Please call us back about your appointment.")
        .unwrap_or_else(|e| need(e));
    let scenario = dialer_testkit::sip::MEDIA_SCENARIO
        .replace("{PERSON}", &person.path.display().to_string())
        .replace("{MACHINE}", &machine.path.display().to_string());
    let far = dialer_testkit::sip::Sipp::uas_with(&scenario, 4, 0).unwrap_or_else(|e| panic!("sipp is needed: {e}"));
    let port = dialer_testkit::free_port();
    let _up = start_up(dir.path(), far.addr(), port, "ring_timeout_ms = 5000\nmax_call_ms = 60000", 1);
    let upload = |wav: &[u8], name: &str| {
        let (s, p) = procs::post_bytes(port, &format!("/api/v1/prompts?name={name}"), "audio/wav", wav);
        assert_eq!(s, 201, "{p}");
        p["id"].as_str().expect("id").to_string()
    };
    let (prompt, vm) = (upload(&reminder, "reminder"), upload(&voicemail, "voicemail"));
    let media = json!({"prompt": prompt, "voicemail_prompt": vm, "amd": {}, "keys": {"9": "opt_out", "1": "end"},
                       "key_timeout_ms": 1500});
    let numbers: Vec<String> = ["300", "301", "302", "303"].iter().map(|c| format!("+1555010{c}")).collect();
    let id = campaign_with(port, "media", &numbers, json!({"max_attempts": 1}), json!({"media": media}));
    let t0 = Instant::now();
    loop {
        let (_, c) = http(port, "GET", &format!("/api/v1/campaigns/{id}"), None);
        if c["status"] == "completed" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(90), "campaign still {}: {}", c["status"], far.errors());
        std::thread::sleep(Duration::from_millis(300));
    }
    let calls = calls_by_number(port, &id);
    let media_of = |n: &str| attempts(port, &calls[&format!("+1555010{n}")])[0]["media"].clone();
    let (opt_out, end, silent, machine_media) = (media_of("300"), media_of("301"), media_of("302"), media_of("303"));
    for m in [&opt_out, &end, &silent] {
        assert_eq!(m["answered_by"], "human", "{m}");
        let (g, s) =
            (m["greeting_end_ms"].as_u64().expect("greeting"), m["message_started_ms"].as_u64().expect("message"));
        assert!(s > g && s - g <= 2000, "the message within 2 s of the greeting: {m}");
    }
    assert_eq!((opt_out["dtmf"].as_str(), opt_out["opted_out"].as_bool()), (Some("9"), Some(true)), "{opt_out}");
    assert_eq!((end["dtmf"].as_str(), end["opted_out"].as_bool()), (Some("1"), Some(false)), "{end}");
    assert_eq!(silent.get("dtmf"), None, "{silent}");
    assert_eq!(
        (machine_media["answered_by"].as_str(), machine_media["voicemail_left"].as_bool()),
        (Some("machine"), Some(true))
    );
    assert_eq!(machine_media["voicemail_after"], "beep", "{machine_media}");
    let (s, dnc) = http(port, "GET", &format!("/api/v1/campaigns/{id}/dnc/%2B1555010300"), None);
    assert_eq!((s, dnc["source"].as_str()), (200, Some("keypress")), "the opt-out is on the campaign's list: {dnc}");
    assert_eq!(http(port, "GET", &format!("/api/v1/campaigns/{id}/dnc/%2B1555010301"), None).0, 404);
    let (_, stats) = http(port, "GET", &format!("/api/v1/campaigns/{id}/stats"), None);
    let m = &stats["media"];
    assert_eq!((m["answered_human"].as_i64(), m["answered_machine"].as_i64()), (Some(3), Some(1)), "{stats}");
    assert_eq!(
        (m["voicemail_left"].as_i64(), m["opted_out"].as_i64(), m["abandoned"].as_i64()),
        (Some(1), Some(1), Some(0))
    );
    assert!(far.finish(Duration::from_secs(20)).is_ok(), "sipp ran every call to its end: {}", far.errors());
}
