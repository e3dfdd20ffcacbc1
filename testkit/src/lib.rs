//! The shared test harness: starts the real servers the dialer talks to (PostgreSQL, Redis,
//! Apache Kafka, Apache Cassandra) on free ports of 127.0.0.1, in temporary directories, once per
//! test process where start-up is slow, and hands each test its own database, key prefix, topics
//! or keyspace. Tests and benches use the same code. A server whose binaries are missing
//! is an error whose message names the command that installs it; tests turn it into a failure,
//! never a skip. Each server is watched by a tiny shell process that stops it and deletes its
//! directory when the test process exits, however it exits.
//!
//! Environment: `DIALER_TEST_POSTGRES_URL` (a server URL without a database name, e.g.
//! `postgres://postgres@127.0.0.1:5432`) uses an existing server instead of starting one.

pub mod audio;
pub mod fixtures;
mod jvm;
pub mod receiver;
pub mod sip;
pub mod topics;

pub use jvm::{Cassandra, JAVA_INSTALL, Kafka, SERVERS_INSTALL, cassandra, kafka};

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Why a server could not be provided (or a peer did not answer as expected).
#[derive(Clone, Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{what} not found: {hint}")]
    Missing { what: String, hint: String },
    #[error("{what} did not start: {detail}")]
    Start { what: String, detail: String },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{what} did not finish within {timeout:?}; its errors: {detail}")]
    Timeout { what: String, timeout: Duration, detail: String },
    #[error("{what} wrote no {expected}: {detail}")]
    Output { what: String, expected: &'static str, detail: String },
}

/// A free TCP port on 127.0.0.1 (bound and released), never one this process handed out before.
pub fn free_port() -> u16 {
    unique_port(|| {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port on 127.0.0.1")
    })
}

/// Draws ports from `draw` until one this process has not handed out yet. A released port can be
/// drawn again, and tests start servers side by side: two of them must never be given one port.
pub(crate) fn unique_port(draw: impl Fn() -> u16) -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = draw();
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// A short unique name for databases, key prefixes and topics.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// Starts a watchdog that kills `pid` (and its process group) and removes `dir` once this
/// process is gone. It ends as soon as `pid` is gone first (killed or restarted by the harness,
/// which still owns `dir`), taking what is left of its group with it: a run that restarts a
/// server many times must not gather a polling shell per restart.
fn watch(pid: u32, dir: &Path) {
    watch_with(std::process::id(), pid, &format!("rm -rf '{}'", dir.display()));
}

/// Ends process `pid` (SIGINT, then SIGKILL 5 s later) once this process is gone, killed or
/// interrupted before it could: a bench's own child processes (the dialer's, started from its
/// binary) do not outlive it. Like the servers' watchdog, it ends as soon as `pid` does.
pub fn end_with_this_process(pid: u32) {
    watch_with(std::process::id(), pid, "true");
}

/// Ends `pid` once process `owner` is gone, then runs the shell command `then`.
fn watch_with(owner: u32, pid: u32, then: &str) {
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do \
         kill -0 {pid} 2>/dev/null || {{ kill -KILL -- -{pid} 2>/dev/null; exit 0; }}; sleep 0.5; done; \
         kill -INT -- -{pid} 2>/dev/null || kill -INT {pid} 2>/dev/null; \
         for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 {pid} 2>/dev/null || break; sleep 0.5; done; \
         kill -KILL -- -{pid} 2>/dev/null; kill -KILL {pid} 2>/dev/null; {then}",
        me = owner,
    );
    let shell = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    // Reaped when it ends: a run that restarts processes hundreds of times gathers no zombies.
    if let Ok(mut shell) = shell {
        std::thread::spawn(move || shell.wait());
    }
}

/// Refuses to start a server where the temp directory has less than `need_mib` free: a server
/// on a full disk fails late and vaguely (Cassandra's log stays empty), so say it first.
fn ensure_room(what: &str, need_mib: u64) -> Result<(), HarnessError> {
    let dir = std::env::temp_dir();
    let Ok(out) = Command::new("df").arg("-Pk").arg(&dir).output() else { return Ok(()) };
    let text = String::from_utf8_lossy(&out.stdout);
    let free_kib = text.lines().nth(1).and_then(|l| l.split_whitespace().nth(3)).and_then(|n| n.parse::<u64>().ok());
    match free_kib {
        Some(kib) if kib / 1024 < need_mib => Err(HarnessError::Start {
            what: what.into(),
            detail: format!(
                "only {} MiB free under {} and it needs {need_mib} MiB: free disk space \
                 (scripts/prune_cache.py trims the build cache; leftover dialer-* directories there can go)",
                kib / 1024,
                dir.display()
            ),
        }),
        _ => Ok(()),
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<String, HarnessError> {
    let out = cmd.output().map_err(|e| HarnessError::Command { what: what.into(), detail: e.to_string() })?;
    if !out.status.success() {
        return Err(HarnessError::Command {
            what: what.into(),
            detail: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A server process started by the harness: watched (stopped when the test process exits),
/// killed on demand and on drop.
#[derive(Debug, Default)]
struct Managed {
    child: std::sync::Mutex<Option<std::process::Child>>,
}

impl Managed {
    /// Spawns `cmd`, watches it, and waits until `port` accepts connections; on failure the
    /// error carries the server's log file, if it has one.
    fn start(
        &self,
        cmd: &mut Command,
        what: &str,
        port: u16,
        dir: &Path,
        log: Option<&Path>,
        timeout: Duration,
    ) -> Result<(), HarnessError> {
        let child = cmd.stdin(Stdio::null()).process_group(0).spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                HarnessError::Missing { what: what.into(), hint: install_hint(what).into() }
            }
            _ => HarnessError::Start { what: what.into(), detail: e.to_string() },
        })?;
        watch(child.id(), dir);
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        if !wait_for_port(port, timeout) {
            let detail = log
                .and_then(|l| std::fs::read_to_string(l).ok())
                .filter(|text| !text.trim().is_empty())
                .unwrap_or_else(|| format!("port {port} never opened within {timeout:?} and its log is empty"));
            return Err(HarnessError::Start { what: what.into(), detail });
        }
        Ok(())
    }

    /// Kills the server and its process group (the processes it forked: kamailio's workers
    /// would otherwise outlive the test, re-parented to init).
    fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let group = format!("-{}", c.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.kill();
    }
}

fn install_hint(what: &str) -> &'static str {
    match what {
        "redis-server" => REDIS_INSTALL,
        "kafka" | "cassandra" => jvm::JAVA_INSTALL,
        _ => PG_INSTALL,
    }
}

fn euid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// uid and gid of a system user, from /etc/passwd.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name)).then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))).flatten()
    })
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

const PG_INSTALL: &str = "install it with: apt-get install -y postgresql";

/// A PostgreSQL server for this test process.
#[derive(Debug)]
pub struct Postgres {
    /// `postgres://postgres@127.0.0.1:PORT` (no database).
    pub base_url: String,
    bin: Option<PathBuf>,
    server: Option<std::sync::Mutex<PgServer>>,
    _dir: Option<tempfile::TempDir>,
}

/// How to (re)start a harness-owned PostgreSQL server.
#[derive(Debug)]
struct PgServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    ids: Option<(u32, u32)>,
    child: Option<std::process::Child>,
    /// fsync and synchronous commit on, as in production (fault runs); off for speed in tests.
    durable: bool,
}

impl PgServer {
    fn spawn(&mut self) -> Result<(), HarnessError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))
            .map_err(|e| HarnessError::Start { what: "PostgreSQL".into(), detail: e.to_string() })?;
        let mut server = Command::new(self.bin.join("postgres"));
        server
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=400", "-c", "shared_buffers=256MB"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .process_group(0);
        if !self.durable {
            server.args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]);
        }
        if let Some((uid, gid)) = self.ids {
            server.uid(uid).gid(gid);
        }
        let child =
            server.spawn().map_err(|e| HarnessError::Start { what: "PostgreSQL".into(), detail: e.to_string() })?;
        watch(child.id(), &self.dir);
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
                return Err(HarnessError::Start { what: "PostgreSQL".into(), detail: log });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server the way a crash would (immediate shutdown: no checkpoint, clients cut).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-QUIT", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }
}

fn pg_bin_dir() -> Result<PathBuf, HarnessError> {
    if let Ok(d) = std::env::var("PG_BIN") {
        let d = PathBuf::from(d);
        if d.join("postgres").exists() && d.join("initdb").exists() {
            return Ok(d);
        }
        return Err(HarnessError::Missing {
            what: format!("PostgreSQL server binaries in PG_BIN={}", d.display()),
            hint: PG_INSTALL.into(),
        });
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("postgres").exists()).collect()
        })
        .unwrap_or_default();
    dirs.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0)
    });
    dirs.pop().ok_or_else(|| HarnessError::Missing {
        what: "PostgreSQL server binaries (/usr/lib/postgresql/*/bin/postgres)".into(),
        hint: PG_INSTALL.into(),
    })
}

impl Postgres {
    /// The process-wide server, started on first use.
    pub fn shared() -> Result<&'static Postgres, HarnessError> {
        static PG: OnceLock<Result<Postgres, HarnessError>> = OnceLock::new();
        PG.get_or_init(Postgres::start).as_ref().map_err(Clone::clone)
    }

    /// A server of the caller's own (fault runs restart it), never `DIALER_TEST_POSTGRES_URL`'s.
    /// Durable (fsync, synchronous commit): a crash loses no committed transaction.
    pub fn own() -> Result<Postgres, HarnessError> {
        Postgres::start_inner(false)
    }

    /// Stops the server as a crash would and starts it again on the same port and data.
    pub fn restart(&self) -> Result<(), HarnessError> {
        let Some(s) = &self.server else {
            return Err(HarnessError::Start {
                what: "PostgreSQL".into(),
                detail: "an external server (DIALER_TEST_POSTGRES_URL) cannot be restarted".into(),
            });
        };
        let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
        s.stop();
        s.spawn()
    }

    fn start() -> Result<Postgres, HarnessError> {
        Postgres::start_inner(true)
    }

    fn start_inner(external_ok: bool) -> Result<Postgres, HarnessError> {
        if let (true, Ok(url)) = (external_ok, std::env::var("DIALER_TEST_POSTGRES_URL")) {
            return Ok(Postgres {
                base_url: url.trim_end_matches('/').to_string(),
                bin: None,
                server: None,
                _dir: None,
            });
        }
        let bin = pg_bin_dir()?;
        ensure_room("PostgreSQL", 512)?;
        let dir = tempfile::Builder::new()
            .prefix("dialer-pg-")
            .tempdir()
            .map_err(|e| HarnessError::Start { what: "PostgreSQL".into(), detail: format!("temp dir: {e}") })?;
        let data = dir.path().join("data");
        let ids = if euid_is_root() {
            // initdb and postgres refuse to run as root: run them as the `postgres` user.
            let ids = user_ids("postgres").ok_or_else(|| HarnessError::Missing {
                what: "the `postgres` system user (tests run as root)".into(),
                hint: PG_INSTALL.into(),
            })?;
            run(Command::new("chown").arg("-R").arg(format!("{}:{}", ids.0, ids.1)).arg(dir.path()), "chown")?;
            Some(ids)
        } else {
            None
        };
        let as_user = |c: &mut Command| {
            if let Some((uid, gid)) = ids {
                c.uid(uid).gid(gid);
            }
        };
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.args(["-D"]).arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        as_user(&mut initdb);
        run(&mut initdb, "initdb")?;
        let port = free_port();
        let mut server =
            PgServer { bin: bin.clone(), dir: dir.path().to_path_buf(), port, ids, child: None, durable: !external_ok };
        server.spawn()?;
        let base_url = format!("postgres://postgres@127.0.0.1:{port}");
        Ok(Postgres { base_url, bin: Some(bin), server: Some(std::sync::Mutex::new(server)), _dir: Some(dir) })
    }

    /// A new, empty database; returns its URL.
    pub fn create_database(&self) -> Result<String, HarnessError> {
        let name = unique_name("t");
        let psql = self.bin.as_ref().map(|b| b.join("psql")).unwrap_or_else(|| PathBuf::from("psql"));
        run(
            Command::new(psql).arg(format!("{}/postgres", self.base_url)).args([
                "-q",
                "-c",
                &format!("CREATE DATABASE {name}"),
            ]),
            "CREATE DATABASE",
        )?;
        Ok(format!("{}/{name}", self.base_url))
    }
}

/// A fresh database on the shared test server, or a panic naming what to install.
pub fn postgres_database() -> String {
    Postgres::shared()
        .and_then(Postgres::create_database)
        .unwrap_or_else(|e| panic!("test PostgreSQL unavailable: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `end_with_this_process` does for a bench's dialer processes, with a stand-in for the
    /// bench: the watched process outlives nothing it should.
    #[test]
    fn a_watched_process_ends_when_its_owner_does_and_not_before() {
        let spawn = |secs: &str| Command::new("sleep").arg(secs).spawn().expect("sleep");
        let (mut owner, mut watched) = (spawn("30"), spawn("60"));
        watch_with(owner.id(), watched.id(), "true");
        std::thread::sleep(Duration::from_millis(1200));
        assert!(watched.try_wait().expect("wait").is_none(), "the watched process runs while its owner does");
        let _ = owner.kill();
        let _ = owner.wait();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while watched.try_wait().expect("wait").is_none() {
            assert!(std::time::Instant::now() < deadline, "the watched process outlived its owner by 10 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn each_database_is_new() {
        let a = postgres_database();
        let b = postgres_database();
        assert_ne!(a, b);
        assert!(a.starts_with("postgres://postgres@127.0.0.1:"));
    }

    #[test]
    fn free_ports_are_bindable() {
        let p = free_port();
        assert!(TcpListener::bind(("127.0.0.1", p)).is_ok());
    }

    #[test]
    fn a_port_is_handed_out_once_even_when_drawn_again() {
        // A draw that repeats itself, as bind(0) may once a port is released.
        let draws = std::sync::Mutex::new(vec![40_003u16, 40_002, 40_002, 40_001, 40_001, 40_001].into_iter());
        let next = || draws.lock().expect("draws").next_back().expect("a draw left");
        let handed: Vec<u16> = (0..3).map(|_| unique_port(next)).collect();
        assert_eq!(handed, vec![40_001, 40_002, 40_003]);
    }

    #[test]
    fn a_server_is_refused_with_a_reason_when_the_disk_has_no_room() {
        let e = ensure_room("cassandra", u64::MAX / 2048).expect_err("no disk is that large");
        let text = e.to_string();
        assert!(text.starts_with("cassandra did not start: only "), "{text}");
        assert!(text.contains("free disk space"), "{text}");
        ensure_room("cassandra", 1).expect("a MiB is free");
    }
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

const REDIS_INSTALL: &str = "install it with: apt-get install -y redis-server redis-tools";

/// A `redis-server` on a free port, without persistence. Tests that kill and restart Redis start
/// their own; others share [`RedisServer::shared`] and keep apart by key prefix.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    process: Managed,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// The process-wide server, started on first use.
    pub fn shared() -> Result<&'static RedisServer, HarnessError> {
        static REDIS: OnceLock<Result<RedisServer, HarnessError>> = OnceLock::new();
        REDIS.get_or_init(RedisServer::start).as_ref().map_err(Clone::clone)
    }

    /// A server of its own (stopped on drop).
    pub fn start() -> Result<RedisServer, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("dialer-redis-")
            .tempdir()
            .map_err(|e| HarnessError::Start { what: "redis-server".into(), detail: e.to_string() })?;
        let s = RedisServer { port: free_port(), dir, process: Managed::default() };
        s.launch()?;
        Ok(s)
    }

    fn launch(&self) -> Result<(), HarnessError> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.process.start(&mut cmd, "redis-server", self.port, self.dir.path(), None, Duration::from_secs(20))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the server (its data is lost: there is no persistence).
    pub fn kill(&self) {
        self.process.kill();
    }

    /// Starts it again on the same port.
    pub fn restart(&self) -> Result<(), HarnessError> {
        self.kill();
        self.launch()
    }
}

/// A unique key prefix with its own Cluster hash tag, e.g. `{t_0192…}:`.
pub fn redis_prefix() -> String {
    format!("{{{}}}:", unique_name("t"))
}

/// The shared Redis, or a panic naming what to install.
pub fn redis() -> &'static RedisServer {
    RedisServer::shared().unwrap_or_else(|e| panic!("test Redis unavailable: {e}"))
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
