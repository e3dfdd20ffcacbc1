//! Real `dialer` processes for the tests that run the product as operators do: spawned with
//! their log in the test's directory, killed when the test ends; one HTTP/1.1 request helper.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// A process of the product, killed when the test ends.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `dialer ARGS`, its log in `dir/NAME.log`.
pub fn spawn(dir: &Path, name: &str, args: &[String]) -> Proc {
    spawn_with_env(dir, name, args, &[])
}

/// `dialer ARGS` with more environment.
pub fn spawn_with_env(dir: &Path, name: &str, args: &[String], env: &[(&str, String)]) -> Proc {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_dialer"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "info")
        // Test numbers (+1555…) map to no zone: recipient windows would hold them by time of day.
        .env("DIALER_CALLING_RULES_ENABLED", "false")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("dialer starts");
    Proc(child)
}

/// One HTTP/1.1 request; the status and the body.
pub fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    request(port, method, path, body, "")
}

/// One HTTP/1.1 request with the API key `key`; the status and the body as JSON.
pub fn http_key(port: u16, key: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let (status, text) = request(port, method, path, body, &format!("Authorization: Bearer {key}\r\n"));
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// One HTTP/1.1 request with `headers` (each line ending in CRLF) added.
fn request(port: u16, method: &str, path: &str, body: Option<&Value>, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{headers}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status line");
    (status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// A POST of raw bytes with `content_type`; the status and the body as JSON.
pub fn post_bytes(port: u16, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).and_then(|()| s.write_all(body)).expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status line");
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// One HTTP/1.1 request; the status and the body as JSON (`null` when it is not JSON).
pub fn http_json(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let (status, text) = http(port, method, path, body);
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The calls a mock provider placed, from its ledger file (`DIALER_PROVIDER_LEDGER`): (call,
/// attempt, start µs, planned end µs); none when the file does not exist.
pub fn ledger(path: &Path) -> Vec<(String, u32, u64, u64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            (f[0].to_string(), f[1].parse().expect("attempt"), f[3].parse().expect("start"), f[4].parse().expect("end"))
        })
        .collect()
}

impl Proc {
    /// SIGKILL: no shutdown, no flush, as a crash or an OOM kill.
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.0.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{name} {}", self.0.id());
    }
}
