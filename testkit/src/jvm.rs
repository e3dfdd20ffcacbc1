//! The servers that run on the JVM: Apache Kafka (KRaft, one combined broker + controller) and
//! Apache Cassandra. Their jars come from Maven Central (`testkit/servers/*/pom.xml`, fetched
//! by `scripts/servers.sh` into `~/.cache/dialer/servers/NAME/libs`); each starts on free ports
//! in a temp dir with a small heap, is ready when it answers its own protocol (a Kafka
//! metadata request, a CQL `OPTIONS`), and is stopped by PID.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{HarnessError, Managed, free_port};

/// How the servers' jars get here.
pub const SERVERS_INSTALL: &str = "fetch them with: ./scripts/servers.sh (Maven: \
     mvn dependency:copy-dependencies of testkit/servers/NAME/pom.xml into ~/.cache/dialer/servers/NAME/libs; \
     ./scripts/test.sh does it)";
/// How Java gets here.
pub const JAVA_INSTALL: &str = "install it with: apt-get install -y openjdk-17-jre-headless";

/// `DIALER_SERVERS` or `~/.cache/dialer/servers`.
fn servers_dir() -> PathBuf {
    std::env::var_os("DIALER_SERVERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/dialer/servers"))
}

/// The jars of `name` (`kafka`, `cassandra`), or what to run to fetch them.
fn libs(name: &str) -> Result<PathBuf, HarnessError> {
    let dir = servers_dir().join(name).join("libs");
    let has_jars = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(Result::ok).any(|e| e.path().extension().is_some_and(|x| x == "jar")))
        .unwrap_or(false);
    if has_jars {
        Ok(dir)
    } else {
        Err(HarnessError::Missing {
            what: format!("the {name} jars in {}", dir.display()),
            hint: SERVERS_INSTALL.into(),
        })
    }
}

/// `java`: `$JAVA_HOME/bin/java`, else the one on PATH (Java 17; Cassandra 5.0 refuses newer).
fn java() -> Result<PathBuf, HarnessError> {
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        let j = PathBuf::from(home).join("bin/java");
        if j.exists() {
            return Ok(j);
        }
    }
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("java"))
        .find(|p| p.exists())
        .ok_or_else(|| HarnessError::Missing { what: "java".into(), hint: JAVA_INSTALL.into() })
}

fn temp_dir(prefix: &str, what: &str) -> Result<tempfile::TempDir, HarnessError> {
    crate::ensure_room(what, 2048)?;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| HarnessError::Start { what: what.into(), detail: format!("temp dir: {e}") })
}

fn write(path: &Path, text: &str, what: &str) -> Result<(), HarnessError> {
    std::fs::write(path, text).map_err(|e| HarnessError::Start { what: what.into(), detail: e.to_string() })
}

fn log_file(path: &Path, what: &str) -> Result<std::fs::File, HarnessError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| HarnessError::Start { what: what.into(), detail: e.to_string() })
}

/// The last lines of a server's log, for an error message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Apache Kafka
// ---------------------------------------------------------------------------------------------

/// An Apache Kafka 4.1 server (KRaft, combined broker + controller) on free ports.
#[derive(Debug)]
pub struct Kafka {
    pub port: u16,
    controller_port: u16,
    libs: PathBuf,
    process: Managed,
    dir: tempfile::TempDir,
}

impl Kafka {
    /// A server of its own (stopped on drop; fault runs kill and restart it).
    pub fn start() -> Result<Kafka, HarnessError> {
        let libs = libs("kafka")?;
        let dir = temp_dir("dialer-kafka-", "kafka")?;
        let k = Kafka { port: free_port(), controller_port: free_port(), libs, dir, process: Managed::default() };
        k.configure()?;
        k.launch()?;
        Ok(k)
    }

    /// The process-wide server, started on first use (tests keep apart by topic and group).
    pub fn shared() -> Result<&'static Kafka, HarnessError> {
        static K: OnceLock<Result<Kafka, HarnessError>> = OnceLock::new();
        K.get_or_init(Kafka::start).as_ref().map_err(Clone::clone)
    }

    /// Writes `server.properties` and the log configuration, and formats the log directory.
    fn configure(&self) -> Result<(), HarnessError> {
        let d = self.dir.path();
        let (port, cport) = (self.port, self.controller_port);
        let props = format!(
            "process.roles=broker,controller\nnode.id=1\ncontroller.quorum.voters=1@127.0.0.1:{cport}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port}\ncontroller.listener.names=CONTROLLER\n\
             listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\nlog.dirs={logs}\n\
             offsets.topic.replication.factor=1\noffsets.topic.num.partitions=4\n\
             transaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n\
             share.coordinator.state.topic.replication.factor=1\nshare.coordinator.state.topic.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\nnum.partitions=1\nauto.create.topics.enable=true\n\
             num.network.threads=2\nnum.io.threads=2\n",
            logs = d.join("data").display()
        );
        write(&d.join("server.properties"), &props, "kafka")?;
        let log4j = "status = warn\nappender.f.type = File\nappender.f.name = f\n\
             appender.f.fileName = kafka-server.log\nappender.f.layout.type = PatternLayout\n\
             appender.f.layout.pattern = [%d] %p %m (%c)%n\nrootLogger.level = warn\nrootLogger.appenderRef.f.ref = f\n";
        write(&d.join("log4j2.properties"), log4j, "kafka")?;
        let out = Command::new(java()?)
            .arg("-cp")
            .arg(format!("{}/*", self.libs.display()))
            .args(["kafka.tools.StorageTool", "format", "-t", &cluster_id(), "-c"])
            .arg(d.join("server.properties"))
            .current_dir(d)
            .output()
            .map_err(|e| HarnessError::Start { what: "kafka".into(), detail: format!("StorageTool: {e}") })?;
        if !out.status.success() {
            let detail = format!(
                "StorageTool format: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return Err(HarnessError::Start { what: "kafka".into(), detail });
        }
        Ok(())
    }

    fn launch(&self) -> Result<(), HarnessError> {
        let d = self.dir.path();
        let log = d.join("kafka.out");
        let out = log_file(&log, "kafka")?;
        let mut cmd = Command::new(java()?);
        cmd.args(["-Xms512m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true"])
            .arg(format!("-Dlog4j2.configurationFile={}", d.join("log4j2.properties").display()))
            .arg("-cp")
            .arg(format!("{}/*", self.libs.display()))
            .arg("kafka.Kafka")
            .arg(d.join("server.properties"))
            .current_dir(d)
            .stdout(Stdio::from(
                out.try_clone().map_err(|e| HarnessError::Start { what: "kafka".into(), detail: e.to_string() })?,
            ))
            .stderr(Stdio::from(out));
        self.process.start(&mut cmd, "kafka", self.port, d, Some(&log), Duration::from_secs(60))?;
        self.wait_metadata(Duration::from_secs(60))
    }

    /// Ready when a metadata request (API key 3, v1) gets an answer naming this broker, and a
    /// group coordinator is found (the first such request creates the offsets topic, seconds on
    /// a new broker: consumers of the tests would otherwise wait for it under load).
    fn wait_metadata(&self, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if metadata_answers(self.port) && coordinator_found(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let detail = tail(&self.dir.path().join("kafka-server.log")) + &tail(&self.dir.path().join("kafka.out"));
        Err(HarnessError::Start { what: "kafka".into(), detail: format!("no metadata answer: {detail}") })
    }

    /// `127.0.0.1:PORT` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Bytes in the log segments of the topics whose names start with `prefix`: what producers
    /// wrote to them, as the broker stores it (segments are not preallocated).
    pub fn log_bytes(&self, prefix: &str) -> u64 {
        let partitions = std::fs::read_dir(self.dir.path().join("data")).into_iter().flatten().flatten();
        partitions
            .filter(|p| p.file_name().to_string_lossy().starts_with(prefix))
            .flat_map(|p| std::fs::read_dir(p.path()).into_iter().flatten().flatten())
            .filter(|f| f.path().extension().is_some_and(|x| x == "log"))
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    /// SIGKILLs the server (its log stays: a restart finds the committed data).
    pub fn kill(&self) {
        self.process.kill();
    }

    /// Starts it again on the same ports and log directory.
    pub fn restart(&self) -> Result<(), HarnessError> {
        self.kill();
        self.launch()
    }
}

/// A new KRaft cluster id: a UUID in URL-safe base64 without padding (22 characters).
fn cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    // 128 bits, padded with 4 zero bits to 22 six-bit digits.
    let bits = u128::from(uuid::Uuid::now_v7().as_u128() as u64) << 64 | u128::from(std::process::id()) << 32 | 0x9e37;
    let wide = [(bits >> 64) as u64, bits as u64];
    let mut out = String::with_capacity(22);
    for i in 0..22 {
        let at = i * 6; // bit offset from the top of 132 bits (128 + 4 padding)
        let digit = (0..6).fold(0usize, |d, k| {
            let b = at + k;
            let bit = if b < 128 { (wide[b / 64] >> (63 - b % 64)) & 1 } else { 0 };
            d << 1 | bit as usize
        });
        out.push(ALPHABET[digit] as char);
    }
    out
}

/// Sends a Kafka metadata request (v1, all topics) and reads a complete answer.
fn metadata_answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let client = b"dialer-testkit";
    // api_key 3 (Metadata), api_version 1, correlation id 7, client id; topics: null (-1).
    let mut body = vec![0, 3, 0, 1, 0, 0, 0, 7];
    body.extend_from_slice(&(client.len() as i16).to_be_bytes());
    body.extend_from_slice(client);
    body.extend_from_slice(&(-1i32).to_be_bytes());
    let mut req = (body.len() as i32).to_be_bytes().to_vec();
    req.extend_from_slice(&body);
    if s.write_all(&req).is_err() {
        return false;
    }
    let mut len = [0u8; 4];
    if s.read_exact(&mut len).is_err() {
        return false;
    }
    let mut answer = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
    // The answer starts with our correlation id and lists at least one broker.
    s.read_exact(&mut answer).is_ok() && answer.len() > 8 && answer[..4] == [0, 0, 0, 7] && answer[4..8] != [0, 0, 0, 0]
}

/// Sends a FindCoordinator request (API key 10, v0) for a group and reads whether the broker
/// named one (error code 0).
fn coordinator_found(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let (client, group) = (b"dialer-testkit".as_slice(), b"dialer-testkit-warmup".as_slice());
    let mut body = vec![0, 10, 0, 0, 0, 0, 0, 9];
    for field in [client, group] {
        body.extend_from_slice(&(field.len() as i16).to_be_bytes());
        body.extend_from_slice(field);
    }
    let mut req = (body.len() as i32).to_be_bytes().to_vec();
    req.extend_from_slice(&body);
    if s.write_all(&req).is_err() {
        return false;
    }
    let mut len = [0u8; 4];
    if s.read_exact(&mut len).is_err() {
        return false;
    }
    let mut answer = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
    // correlation id 9, then the error code.
    s.read_exact(&mut answer).is_ok() && answer.len() >= 6 && answer[..4] == [0, 0, 0, 9] && answer[4..6] == [0, 0]
}

/// The shared Kafka, or a panic naming what to install.
pub fn kafka() -> &'static Kafka {
    Kafka::shared().unwrap_or_else(|e| panic!("test Kafka unavailable: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Apache Cassandra
// ---------------------------------------------------------------------------------------------

/// Cassandra's own JVM flags for Java 17 (`conf/jvm17-server.options`): without the module
/// exports and opens it fails in `FileUtils` with `IllegalAccessException`.
const CASSANDRA_JVM17: &[&str] = &[
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports",
    "java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports",
    "java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports",
    "java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports",
    "java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports",
    "java.sql/java.sql=ALL-UNNAMED",
    "--add-exports",
    "java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports",
    "jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports",
    "jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports",
    "jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens",
    "jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens",
    "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.io=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens",
    "jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.util=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
];

/// An Apache Cassandra 5.0 node on free ports (one token, no gossip wait).
#[derive(Debug)]
pub struct Cassandra {
    pub port: u16,
    storage_port: u16,
    libs: PathBuf,
    process: Managed,
    dir: tempfile::TempDir,
    /// The commit log synced before a write is acknowledged (`commitlog_sync: group`) and the
    /// system tables synced (the schema), so a SIGKILL loses nothing acknowledged; else
    /// Cassandra's default commit log (periodic, every 10 s) and unsynced system tables.
    durable: bool,
}

impl Cassandra {
    /// A node of its own (stopped on drop), with Cassandra's default periodic commit log.
    pub fn start() -> Result<Cassandra, HarnessError> {
        Cassandra::start_with(false)
    }

    /// A node whose acknowledged writes survive a SIGKILL (a single node has no replica to
    /// recover them from): for runs that kill it.
    pub fn start_durable() -> Result<Cassandra, HarnessError> {
        Cassandra::start_with(true)
    }

    fn start_with(durable: bool) -> Result<Cassandra, HarnessError> {
        let libs = libs("cassandra")?;
        let dir = temp_dir("dialer-cassandra-", "cassandra")?;
        let c =
            Cassandra { port: free_port(), storage_port: free_port(), libs, dir, process: Managed::default(), durable };
        c.configure()?;
        c.launch()?;
        Ok(c)
    }

    /// SIGKILLs the node (its data and commit log stay: a restart replays them).
    pub fn kill(&self) {
        self.process.kill();
    }

    /// Starts it again on the same ports and directories.
    pub fn restart(&self) -> Result<(), HarnessError> {
        self.kill();
        self.launch()
    }

    /// The process-wide node, started on first use (tests keep apart by keyspace).
    pub fn shared() -> Result<&'static Cassandra, HarnessError> {
        static C: OnceLock<Result<Cassandra, HarnessError>> = OnceLock::new();
        C.get_or_init(Cassandra::start).as_ref().map_err(Clone::clone)
    }

    fn configure(&self) -> Result<(), HarnessError> {
        let d = self.dir.path();
        let yaml = format!(
            "cluster_name: dialer-test\nnum_tokens: 1\npartitioner: org.apache.cassandra.dht.Murmur3Partitioner\n\
             endpoint_snitch: SimpleSnitch\n{sync}\n\
             seed_provider:\n  - class_name: org.apache.cassandra.locator.SimpleSeedProvider\n    parameters:\n\
             \x20     - seeds: \"127.0.0.1:{sp}\"\n\
             listen_address: 127.0.0.1\nrpc_address: 127.0.0.1\nstorage_port: {sp}\nnative_transport_port: {np}\n\
             start_native_transport: true\nauto_snapshot: false\nconcurrent_reads: 4\nconcurrent_writes: {writes}\n\
             concurrent_counter_writes: 4\ncompaction_throughput: 0MiB/s\n\
             data_file_directories:\n  - {data}\ncommitlog_directory: {commit}\n\
             saved_caches_directory: {caches}\nhints_directory: {hints}\n",
            sync = if self.durable {
                "commitlog_sync: group\ncommitlog_sync_group_window: 15ms"
            } else {
                "commitlog_sync: periodic\ncommitlog_sync_period: 10000ms"
            },
            // A durable write holds its mutation thread until the group's sync (up to 15 ms): with
            // 4 threads the node took ~270 writes a second, and the recorders spent their whole
            // batch time waiting on the timeline (`dialer_timeline_write_seconds`). Cassandra's
            // default is 32; the threads wait, they do not compute.
            writes = if self.durable { 32 } else { 4 },
            sp = self.storage_port,
            np = self.port,
            data = d.join("data").display(),
            commit = d.join("commitlog").display(),
            caches = d.join("saved_caches").display(),
            hints = d.join("hints").display(),
        );
        write(&d.join("cassandra.yaml"), &yaml, "cassandra")?;
        let logback = "<configuration><appender name=\"F\" class=\"ch.qos.logback.core.FileAppender\">\
             <file>cassandra-server.log</file><encoder><pattern>%d %-5level [%thread] %logger{20} %msg%n</pattern>\
             </encoder></appender><root level=\"INFO\"><appender-ref ref=\"F\"/></root></configuration>";
        write(&d.join("logback.xml"), logback, "cassandra")
    }

    fn launch(&self) -> Result<(), HarnessError> {
        let d = self.dir.path();
        let log = d.join("cassandra.out");
        let out = log_file(&log, "cassandra")?;
        let err = |e: std::io::Error| HarnessError::Start { what: "cassandra".into(), detail: e.to_string() };
        let mut cmd = Command::new(java()?);
        cmd.args(["-Xms1g", "-Xmx1g", "-Xss512k", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=300"])
            .args(CASSANDRA_JVM17)
            .arg(format!("-Dcassandra.config=file://{}", d.join("cassandra.yaml").display()))
            .arg(format!("-Dcassandra.storagedir={}", d.display()))
            .arg(format!("-Dlogback.configurationFile={}", d.join("logback.xml").display()))
            .args([
                "-Dcassandra-foreground=yes",
                "-Dcassandra.skip_wait_for_gossip_to_settle=0",
                "-Dcassandra.jmx.local.port=0",
            ])
            // Faster schema changes (no fsync of the system tables): a SIGKILL may then lose a
            // keyspace just created, so a node that is killed keeps them.
            .args((!self.durable).then_some("-Dcassandra.unsafesystem=true"))
            .arg("-cp")
            .arg(format!("{}/*", self.libs.display()))
            .arg("org.apache.cassandra.service.CassandraDaemon")
            .env("MALLOC_ARENA_MAX", "4")
            .current_dir(d)
            .stdout(Stdio::from(out.try_clone().map_err(err)?))
            .stderr(Stdio::from(out));
        self.process.start(&mut cmd, "cassandra", self.port, d, Some(&log), Duration::from_secs(180))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if cql_answers(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let detail = tail(&d.join("cassandra-server.log"));
        Err(HarnessError::Start { what: "cassandra".into(), detail: format!("no CQL answer: {detail}") })
    }

    /// `127.0.0.1:PORT`, a contact point for the CQL driver.
    pub fn node(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Sends a CQL v4 `OPTIONS` frame and expects `SUPPORTED`.
fn cql_answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    // version 4 request, no flags, stream 1, opcode OPTIONS (5), no body.
    if s.write_all(&[0x04, 0, 0, 1, 0x05, 0, 0, 0, 0]).is_err() {
        return false;
    }
    let mut head = [0u8; 9];
    s.read_exact(&mut head).is_ok() && head[0] == 0x84 && head[4] == 0x06
}

/// The shared Cassandra, or a panic naming what to install.
pub fn cassandra() -> &'static Cassandra {
    Cassandra::shared().unwrap_or_else(|e| panic!("test Cassandra unavailable: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_starts_answers_metadata_and_comes_back_after_a_kill() {
        let k = Kafka::start().expect("kafka");
        assert!(metadata_answers(k.port));
        k.kill();
        assert!(!metadata_answers(k.port), "killed");
        k.restart().expect("restart");
        assert!(metadata_answers(k.port));
    }

    #[test]
    fn cassandra_starts_and_answers_cql() {
        let t0 = Instant::now();
        let c = cassandra();
        assert!(cql_answers(c.port), "CQL OPTIONS answered after {:?}", t0.elapsed());
    }

    #[test]
    fn cluster_ids_are_22_url_safe_characters() {
        let id = cluster_id();
        assert_eq!(id.len(), 22);
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{id}");
    }
}
