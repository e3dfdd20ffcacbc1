//! `bench csv`: a campaign created from a CSV list of N rows, streamed over loopback HTTP to a
//! real `dialer up` on SQLite or a durable PostgreSQL (fsync and synchronous commit on), as an
//! operator's upload. The list is generated as it is sent (numbers written three national ways,
//! one row in `--bad-every` unusable, one in `--duplicate-every` a repeat), the upload timed
//! from its first byte to the answer, and the server's resident memory sampled from /proc
//! during it (its peak is what a list of this length costs the process).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::chaos::{Proc, dialer_bin};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Rows in the list.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// One row in this many has an unusable number (reported by line, not written); 0: none.
    #[arg(long, default_value_t = 1000)]
    bad_every: usize,
    /// One row in this many repeats the row before's number (merged); 0: none.
    #[arg(long, default_value_t = 1000)]
    duplicate_every: usize,
    #[command(flatten)]
    db: crate::StoreChoice,
    /// The `dialer` binary (default: next to this one).
    #[arg(long)]
    dialer: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
}

const BOUNDARY: &str = "bench-csv-boundary";
/// Rows per chunk sent.
const CHUNK_ROWS: usize = 2_000;

/// What row `i` is.
#[derive(Clone, Copy, PartialEq)]
enum Row {
    Good,
    Bad,
    Duplicate,
}

fn kind(a: &Args, i: usize) -> Row {
    if a.bad_every > 0 && i % a.bad_every == a.bad_every - 1 {
        Row::Bad
    } else if a.duplicate_every > 0 && i % a.duplicate_every == a.duplicate_every / 2 && i > 0 {
        Row::Duplicate
    } else {
        Row::Good
    }
}

/// Row `i` of the list: a number written one of three national ways, a name, a ZIP code.
fn row(a: &Args, i: usize, out: &mut String) {
    use std::fmt::Write;
    let n = 2_000_000_000
        + match kind(a, i) {
            Row::Duplicate => i - 1,
            _ => i,
        };
    let (area, exchange, line) = (n / 10_000_000, n / 10_000 % 1000, n % 10_000);
    let _ = match (kind(a, i), i % 3) {
        (Row::Bad, _) => writeln!(out, "n/a,Row {i},94103"),
        (_, 0) => writeln!(out, "({area}) {exchange:03}-{line:04},Row {i},94103"),
        (_, 1) => writeln!(out, "{area}.{exchange:03}.{line:04},Row {i},10001"),
        _ => writeln!(out, "+1 {area} {exchange:03} {line:04},\"Row {i}, Jr.\",60601"),
    };
}

/// The multipart body, generated as it is sent; `sent` counts the rows handed out.
fn body(
    a: Arc<Args>,
    sent: Arc<AtomicU64>,
) -> StreamBody<impl futures::Stream<Item = Result<Frame<Bytes>, std::io::Error>>> {
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"campaign\"\r\nContent-Type: application/json\r\n\r\n{}\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"targets\"; filename=\"list.csv\"\r\nContent-Type: text/csv\r\n\r\n\
         phone,name,postal_code\n",
        json!({"name": format!("bench-csv-{}", std::process::id()), "max_concurrent_calls": 100})
    );
    let chunks = futures::stream::unfold(Some(0usize), move |next| {
        let (a, sent, head) = (a.clone(), sent.clone(), head.clone());
        async move {
            let start = next?;
            let mut s = if start == 0 { head } else { String::new() };
            let end = (start + CHUNK_ROWS).min(a.rows);
            for i in start..end {
                row(&a, i, &mut s);
            }
            sent.store(end as u64, Ordering::Relaxed);
            if end == a.rows {
                s.push_str(&format!("\r\n--{BOUNDARY}--\r\n"));
            }
            let next = (end < a.rows).then_some(end);
            Some((Ok(Frame::data(Bytes::from(s))), next))
        }
    });
    StreamBody::new(chunks)
}

/// A process's resident memory, from /proc: (VmRSS, VmHWM) in MiB.
fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse::<f64>().ok()
    };
    Some((kib("VmRSS:")? / 1024.0, kib("VmHWM:")? / 1024.0))
}

/// Samples the server's RSS every 20 ms until `done`; the highest seen.
fn sample_rss(pid: u32, done: Arc<AtomicBool>) -> std::thread::JoinHandle<f64> {
    std::thread::spawn(move || {
        let mut peak: f64 = 0.0;
        while !done.load(Ordering::Relaxed) {
            if let Some((rss, _)) = rss_mib(pid) {
                peak = peak.max(rss);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    })
}

/// Starts `dialer up` on the store; (process, API port, work dir guard).
async fn start_dialer(a: &Args, url: &str) -> Result<(Proc, u16, tempfile::TempDir)> {
    let w = tempfile::tempdir()?;
    let port = dialer_testkit::free_port();
    let config = w.path().join("dialer.toml");
    std::fs::write(
        &config,
        format!("[api]\nlisten = \"127.0.0.1:{port}\"\nmax_body_bytes = 1073741824\n[store]\nurl = \"{url}\"\n"),
    )?;
    let data = w.path().join("data").display().to_string();
    let mut p = Proc {
        name: "up".into(),
        cmd: vec!["--config".into(), config.display().to_string(), "up".into(), "--data-dir".into(), data],
        env: Vec::new(),
        log: w.path().join("up.log"),
        child: None,
    };
    p.spawn(&dialer_bin(a.dialer.as_ref())?)?;
    if !dialer_testkit::wait_for_port(port, Duration::from_secs(60)) {
        bail!("dialer up did not listen; its log: {}", std::fs::read_to_string(w.path().join("up.log"))?);
    }
    Ok((p, port, w))
}

/// Sends the list; (status, answer, seconds).
async fn upload(a: Arc<Args>, port: u16, sent: Arc<AtomicU64>) -> Result<(StatusCode, Value, f64)> {
    let addr = format!("127.0.0.1:{port}");
    let stream = TcpStream::connect(&addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/campaigns")
        .header(hyper::header::HOST, &addr)
        .header(hyper::header::CONTENT_TYPE, format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(body(a, sent))?;
    let t0 = Instant::now();
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), t0.elapsed().as_secs_f64()))
}

pub async fn run(a: Args) -> Result<()> {
    if a.rows == 0 {
        bail!("--rows must be at least 1");
    }
    let (url, _dir) = a.db.database()?;
    let (mut up, port, _work) = start_dialer(&a, &url).await?;
    let pid = up.child.as_ref().map(|c| c.id()).context("dialer up is not running")?;
    let (rss_before, _) = rss_mib(pid).context("reading the server's memory from /proc")?;
    let a = Arc::new(a);
    let expected = (0..a.rows).filter(|i| kind(&a, *i) == Row::Good).count() as u64;
    println!(
        "bench csv: {} rows ({} usable) to dialer up on {} (nproc {})…",
        a.rows,
        expected,
        a.db.store,
        crate::cores()
    );

    let sent = Arc::new(AtomicU64::new(0));
    let bar = ProgressBar::new(a.rows as u64).with_style(
        ProgressStyle::with_template("upload {bar:40} {pos}/{len} rows {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let done = Arc::new(AtomicBool::new(false));
    let sampler = sample_rss(pid, done.clone());
    let uploading = tokio::spawn(upload(a.clone(), port, sent.clone()));
    while !uploading.is_finished() {
        bar.set_position(sent.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish_and_clear();
    let (status, answer, secs) = uploading.await??;
    done.store(true, Ordering::Relaxed);
    let peak_rss = sampler.join().unwrap_or(0.0);
    let (_, hwm) = rss_mib(pid).unwrap_or((0.0, 0.0));
    up.stop();
    if status != StatusCode::CREATED {
        bail!("the upload answered {status}: {answer}");
    }
    let accepted = answer["import"]["accepted"].as_u64().unwrap_or(0);
    if accepted != expected || answer["target_count"].as_u64() != Some(expected) {
        bail!("{expected} usable rows, but: {}", answer["import"]);
    }
    report(&a, secs, accepted, &answer["import"], (rss_before, peak_rss, hwm))
}

fn report(a: &Args, secs: f64, accepted: u64, import: &Value, (before, peak, hwm): (f64, f64, f64)) -> Result<()> {
    let rows_per_sec = a.rows as f64 / secs;
    println!("{:<40} {:>12}", "figure", "value");
    println!("{:<40} {:>12}", "rows", a.rows);
    println!("{:<40} {:>12}", "accepted", accepted);
    println!("{:<40} {:>12}", "rejected (by line)", import["rejected_total"]);
    println!("{:<40} {:>12}", "duplicates merged", import["duplicates_merged"]);
    println!("{:<40} {:>12.2}", "upload to answer, s", secs);
    println!("{:<40} {:>12.0}", "rows/s", rows_per_sec);
    println!("{:<40} {:>12.1}", "server RSS before, MiB", before);
    println!("{:<40} {:>12.1}", "server peak RSS during upload, MiB", peak);
    println!("{:<40} {:>12.1}", "server VmHWM (lifetime peak), MiB", hwm);
    println!("{:<40} {:>12}", "cores (nproc)", crate::cores());
    let out = json!({
        "scenario": "csv",
        "settings": {"rows": a.rows, "bad_every": a.bad_every, "duplicate_every": a.duplicate_every, "store": a.db.store},
        "cores": crate::cores(),
        "duration_s": secs,
        "rows_per_sec": rows_per_sec,
        "accepted": accepted,
        "rejected": import["rejected_total"],
        "duplicates_merged": import["duplicates_merged"],
        "rss_before_mib": before,
        "peak_rss_mib": peak,
        "vm_hwm_mib": hwm,
    });
    crate::write_json(a.json.as_deref(), &out)
}
