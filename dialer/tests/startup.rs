//! A control plane started while a server it needs is down (restarting, as in `bench chaos`)
//! waits for it and then serves, instead of exiting: its supervisor may not restart it again.

mod procs;

use std::time::{Duration, Instant};

#[test]
fn a_control_plane_started_while_redis_is_down_waits_for_it_and_serves() {
    let redis = dialer_testkit::RedisServer::start().unwrap_or_else(|e| panic!("redis-server is needed: {e}"));
    redis.kill();
    let dir = tempfile::tempdir().expect("dir");
    let api = dialer_testkit::free_port();
    let config = dir.path().join("dialer.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nlisten = \"127.0.0.1:{api}\"\n[store]\nurl = \"{db}\"\n\
             [limits]\nredis_url = \"{redis}\"\nredis_key_prefix = \"{prefix}\"\n",
            db = dialer_testkit::postgres_database(),
            redis = redis.url(),
            prefix = dialer_testkit::redis_prefix(),
        ),
    )
    .expect("config");
    let args = ["--config".to_string(), config.display().to_string(), "control-plane".into()];
    let mut cp = procs::spawn(dir.path(), "control-plane", &args);
    let log = || std::fs::read_to_string(dir.path().join("control-plane.log")).unwrap_or_default();
    let t0 = Instant::now();
    while !log().contains("the limiter's Redis is not answering yet") {
        assert!(cp.0.try_wait().expect("wait").is_none(), "the control plane exited: {}", log());
        assert!(t0.elapsed() < Duration::from_secs(60), "no word of the wait: {}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(cp.0.try_wait().expect("wait").is_none(), "the control plane gave up at once: {}", log());
    assert!(std::net::TcpStream::connect(("127.0.0.1", api)).is_err(), "serving without its limiter");
    redis.restart().unwrap_or_else(|e| panic!("redis-server restarts: {e}"));
    assert!(dialer_testkit::wait_for_port(api, Duration::from_secs(30)), "not serving once Redis was back: {}", log());
    let (status, body) = procs::http(api, "GET", "/readyz", None);
    assert_eq!(status, 200, "ready once Redis answers: {body}");
}
