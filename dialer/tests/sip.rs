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

fn start_up(dir: &Path, sipp: std::net::SocketAddr, port: u16) -> Up {
    let config = dir.join("dialer.toml");
    std::fs::write(
        &config,
        format!(
            "[limits]\nglobal_max_concurrency = 1000\nper_campaign_max_concurrency = 1000\n\
             [scheduler]\ninterval_ms = 200\n\
             [provider]\nkind = \"sip\"\nring_timeout_ms = 5000\nmax_call_ms = 10000\n\
             [[provider.trunks]]\nname = \"sipp\"\nproxy = \"{sipp}\"\nmax_channels = {CHANNELS}\nmax_cps = {CPS}\n"
        ),
    )
    .expect("config");
    let log = std::fs::File::create(dir.join("up.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_dialer"))
        .args(["--config", &config.display().to_string(), "up", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "info")
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
    let _up = start_up(dir.path(), far.addr(), port);
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
