//! The attempt journal: a durable "attempt started" record written before a call is placed, so
//! that no (call id, attempt) is dialed twice across a crash, a restart or a redelivered message.
//!
//! - **Group commit**: a shard appends the `S` records of every call it is about to start in
//!   one loop turn, then makes them durable with one `fdatasync` per touched file, then dials.
//!   The cost is one write + one sync per batch, not per dial.
//! - **Resolution**: an attempt's `D` record is appended once its outcome event is acknowledged
//!   (never before: a crash between the two must leave the attempt unresolved). On restart the
//!   files are replayed. A redelivered message whose attempt is started but unresolved is not
//!   dialed again: the shard reports it as failed with reason `unknown_outcome` (retryable), and
//!   the campaign's retry policy decides. One whose attempt is resolved is not dialed either: its
//!   outcome was delivered already, only the offset commit was lost. Resolved attempts are
//!   remembered (with their message's offset and deadline) until the partition's committed
//!   offset passes them *and* their message's deadline has passed (plus
//!   [`KEEP_PAST_DEADLINE_MS`] for clock steps): a control plane may publish an attempt's
//!   message a second time (it could not confirm the first: see the scheduler's republishing),
//!   at a later offset but with the same deadline, and the data plane dials nothing past it.
//! - **Layout**: one file per dispatch partition (`p{N}.journal` under the journal directory), so
//!   that whichever shard of the host owns a partition after a restart or rebalance reads its
//!   history. At a rebalance a revoked partition is *released* by its old owner (pending
//!   records written, the file not touched again) and loaded by its new one; if it comes
//!   straight back, the shard's own calls still in progress stay `InFlight`. A file is
//!   compacted (rewritten with only unresolved attempts) when loaded and when it has
//!   grown past a threshold.
//! - **One owner per file**: a shard uses a partition's file only while it holds the
//!   partition's lock file (`p{N}.lock`, an exclusive `flock`), from first use until it
//!   releases the partition (or its process dies: the kernel lets go). A consumer group can give
//!   a partition to a new member while the old one has not yet seen the rebalance (it lost the
//!   broker for longer than the session timeout, say) and still dials what it fetched; the new
//!   owner then finds the lock held ([`Seen::Elsewhere`]) and dials nothing of the partition
//!   until the old owner lets go, after which it reads every attempt the old owner started.
//!
//! - **I/O**: with io_uring (tuning `journal.io`, default `auto`), a group commit is one system
//!   call for every touched file: each file's write is linked to its `fdatasync`, and the files'
//!   syncs run in parallel in the kernel. Without it (an old kernel, io_uring disabled, or
//!   `io = "std"`), a write and an `fdatasync` per file, one after the other.
//!
//! Records are text lines, `S <uuid> <attempt> <offset> <deadline>` and `D …` alike (the
//! deadline in Unix milliseconds, 0 for none; files written before it have no deadline field);
//! a torn last line (a crash mid-write) is ignored, which is safe because its sync never
//! returned.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

/// One attempt: (call id, attempt number).
pub type Attempt = (Uuid, u32);

/// A resolved attempt is remembered this long past its message's deadline: the data plane
/// refuses a message past its deadline by its own clock, which a clock step could move back.
pub const KEEP_PAST_DEADLINE_MS: u64 = 60_000;

/// The message that carried an attempt: its offset in the partition and its deadline (Unix
/// milliseconds, 0 for none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Msg {
    pub offset: i64,
    pub deadline_ms: u64,
}

impl Msg {
    pub fn new(offset: i64, deadline_ms: u64) -> Msg {
        Msg { offset, deadline_ms }
    }

    /// Until when (Unix ms) a resolved attempt of this message must be remembered, whatever
    /// the commits: 0 for a message with no deadline (the commits alone decide).
    fn keep_until(&self) -> u64 {
        if self.deadline_ms == 0 { 0 } else { self.deadline_ms.saturating_add(KEEP_PAST_DEADLINE_MS) }
    }
}

/// A journal record: an attempt and the message that carried it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    Started(Attempt, Msg),
    Done(Attempt, Msg),
    /// The start before it was taken back undialled (the journal could not make it durable):
    /// the attempt is as if never started, and a later message of it may start it.
    Withdrawn(Attempt, Msg),
}

impl Record {
    /// The record as one line (with its newline).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (tag, (id, attempt), m) = match self {
            Record::Started(a, m) => ('S', a, m),
            Record::Done(a, m) => ('D', a, m),
            Record::Withdrawn(a, m) => ('W', a, m),
        };
        let _ = writeln!(out, "{tag} {} {attempt} {} {}", id.as_hyphenated(), m.offset, m.deadline_ms);
    }

    /// Parses one line (without its newline); `None` for a torn or foreign line. A line with
    /// no deadline (written before it was recorded) has none.
    pub fn decode(line: &str) -> Option<Record> {
        let mut parts = line.split(' ');
        let tag = parts.next()?;
        let id = Uuid::parse_str(parts.next()?).ok()?;
        let attempt = parts.next()?.parse().ok()?;
        let offset = parts.next()?.parse().ok()?;
        let deadline_ms = match parts.next() {
            Some(d) => d.parse().ok()?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        let m = Msg { offset, deadline_ms };
        match tag {
            "S" => Some(Record::Started((id, attempt), m)),
            "D" => Some(Record::Done((id, attempt), m)),
            "W" => Some(Record::Withdrawn((id, attempt), m)),
            _ => None,
        }
    }
}

/// What the journal knows of an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Never started here: dial it.
    No,
    /// Started, no outcome recorded: report `unknown_outcome`, do not dial.
    Unresolved,
    /// Started by this journal's shard and still in progress: the message came again (a
    /// rebalance handed its partition back, or the broker redelivered it). Skip it: the call in
    /// progress finishes the message.
    InFlight,
    /// Started and its outcome delivered: skip the redelivered message.
    Resolved,
    /// Another shard holds the partition's file (its previous owner has not let go yet): the
    /// message waits, undialled, until it does.
    Elsewhere,
}

/// Attempt → the message that carried it.
pub type Attempts = HashMap<Attempt, Msg>;

/// Replays records: attempts started and not done, and attempts done.
pub fn replay(records: impl IntoIterator<Item = Record>) -> (Attempts, Attempts) {
    let (mut open, mut done) = (HashMap::new(), HashMap::new());
    for r in records {
        match r {
            Record::Started(a, o) => {
                open.insert(a, o);
            }
            Record::Done(a, o) => {
                open.remove(&a);
                done.insert(a, o);
            }
            Record::Withdrawn(a, _) => {
                open.remove(&a);
            }
        }
    }
    (open, done)
}

/// The journal files (`p{N}.journal`) in `dir`.
fn journal_files(dir: &Path) -> Result<Vec<PathBuf>, JournalError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let path = e.map_err(io_err(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with('p') && name.ends_with(".journal") {
            out.push(path);
        }
    }
    Ok(out)
}

/// Every attempt the journal files in `dir` record as started, resolved or not: what the
/// process that wrote them may have dialled. Read before any shard loads (and compacts) them.
pub fn dialled_attempts(dir: &Path) -> Result<std::collections::HashSet<Attempt>, JournalError> {
    let mut out = std::collections::HashSet::new();
    for path in journal_files(dir)? {
        let f = File::open(&path).map_err(io_err(&path))?;
        for line in BufReader::new(f).lines() {
            match Record::decode(&line.map_err(io_err(&path))?) {
                Some(Record::Started(a, _) | Record::Done(a, _)) => {
                    out.insert(a);
                }
                Some(Record::Withdrawn(a, _)) => {
                    out.remove(&a);
                }
                None => {}
            }
        }
    }
    Ok(out)
}

/// Attempts started and never resolved in the partitions no running shard holds (their lock
/// free): the calls a killed process may have left up at the carrier, which nobody hangs up.
/// Read at a data plane's start, before its shards take any partition.
pub fn orphans(dir: &Path) -> Result<usize, JournalError> {
    let mut n = 0;
    for path in journal_files(dir)? {
        let lock_path = path.with_extension("lock");
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        let f = File::open(&path).map_err(io_err(&path))?;
        let records = BufReader::new(f).lines().map_while(Result::ok).filter_map(|l| Record::decode(&l));
        n += replay(records).0.len();
    }
    Ok(n)
}

/// Removes the journal files in `dir`: for the embedded mode, once its recovery at start has
/// resolved every attempt they hold in the store (their attempt numbers are used up).
pub fn retire(dir: &Path) -> Result<(), JournalError> {
    for path in journal_files(dir)? {
        std::fs::remove_file(&path).map_err(io_err(&path))?;
    }
    Ok(())
}

/// Why the journal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}; check the directory (tuning journal.dir) exists and is writable")]
    Io { path: String, source: io::Error },
    #[error("journal: io_uring cannot be set up ({0}); set tuning journal.io = \"auto\" or \"std\"")]
    Uring(#[source] io::Error),
    #[error("journal: partition {0} is held by another shard; nothing of it may be dialled here until it lets go")]
    Held(i32),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.display().to_string(), source }
}

/// Rewrites the file when this many records were appended since the last compaction, unless
/// [`Journal::compact_after`] says otherwise (tuning `journal.compact_after`).
const COMPACT_AFTER: usize = 200_000;

/// One io_uring instance and the unsafe part of using it, kept small.
#[allow(unsafe_code)]
mod uring {
    use std::io;
    use std::os::fd::RawFd;

    use io_uring::{IoUring, opcode, squeue, types};

    /// Entries in the submission queue (two per file: write, then sync).
    const ENTRIES: u32 = 64;

    pub struct Ring(IoUring, bool);

    /// What became of one file in [`Ring::append_all`].
    #[derive(Debug)]
    pub struct Outcome {
        /// Bytes written (may be short), or the write's error.
        pub written: io::Result<usize>,
        /// The linked sync: `None` without sync; cancelled when the write fell short.
        pub synced: Option<io::Result<()>>,
    }

    impl Ring {
        pub fn new() -> io::Result<Ring> {
            IoUring::new(ENTRIES).map(|r| Ring(r, false))
        }

        /// Appends `buf` to each file (opened with `O_APPEND`) and, with `sync`, runs an
        /// `fdatasync` linked after its write; one `io_uring_enter` per 32 files. A short write
        /// breaks the link (its sync is cancelled): the caller finishes that file itself.
        pub fn append_all(&mut self, files: &[(RawFd, &[u8])], sync: bool) -> Vec<Outcome> {
            let mut out: Vec<Outcome> = (0..files.len()).map(|_| Outcome { written: Ok(0), synced: None }).collect();
            let per = if sync { 2 } else { 1 };
            let chunk = ENTRIES as usize / per;
            for (c, group) in files.chunks(chunk).enumerate() {
                let base = c * chunk;
                {
                    let mut sq = self.0.submission();
                    for (i, (fd, buf)) in group.iter().enumerate() {
                        let tag = ((base + i) as u64) << 1;
                        let len = buf.len().min(u32::MAX as usize) as u32;
                        let write = opcode::Write::new(types::Fd(*fd), buf.as_ptr(), len).offset(u64::MAX).build();
                        let write = if sync { write.flags(squeue::Flags::IO_LINK) } else { write }.user_data(tag);
                        // SAFETY: the buffer and the descriptor outlive the operation: this
                        // function waits for every completion it submitted before returning.
                        // The queue has room: at most ENTRIES entries per round, all reaped.
                        unsafe { sq.push(&write) }.expect("submission queue sized for the group");
                        if sync {
                            let fsync = opcode::Fsync::new(types::Fd(*fd))
                                .flags(types::FsyncFlags::DATASYNC)
                                .build()
                                .user_data(tag | 1);
                            // SAFETY: as above; no buffer.
                            unsafe { sq.push(&fsync) }.expect("submission queue sized for the group");
                        }
                    }
                }
                let want = group.len() * per;
                let mut got = 0;
                while got < want {
                    match self.0.submit_and_wait(want - got) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) if got == 0 && self.0.submission().len() == want => {
                            // Nothing reached the kernel: report, and start over with a new ring.
                            for o in &mut out[base..base + group.len()] {
                                o.written = Err(io::Error::new(e.kind(), e.to_string()));
                            }
                            self.reset_after_failed_enter();
                            break;
                        }
                        Err(_) => {
                            // Submitted (some of it): the kernel holds the buffers until the
                            // completions come, so wait for them.
                            std::thread::sleep(std::time::Duration::from_millis(1));
                            continue;
                        }
                    }
                    for cqe in self.0.completion() {
                        got += 1;
                        let (idx, is_sync) = ((cqe.user_data() >> 1) as usize, cqe.user_data() & 1 == 1);
                        let res = cqe.result();
                        let o = &mut out[idx];
                        match (is_sync, res < 0) {
                            (false, false) => o.written = Ok(res as usize),
                            (false, true) => o.written = Err(io::Error::from_raw_os_error(-res)),
                            (true, false) => o.synced = Some(Ok(())),
                            (true, true) => o.synced = Some(Err(io::Error::from_raw_os_error(-res))),
                        }
                    }
                }
            }
            out
        }

        /// Replaces a ring whose submission could not be entered (its queued entries must never
        /// reach the kernel): the next commit starts clean, or the ring is marked broken.
        fn reset_after_failed_enter(&mut self) {
            match IoUring::new(ENTRIES) {
                Ok(r) => self.0 = r,
                Err(_) => self.1 = true,
            }
        }

        /// True when the ring must not be used again (the journal falls back to plain calls).
        pub fn broken(&self) -> bool {
            self.1
        }
    }
}

/// The I/O a journal uses for its group commits: io_uring for commits touching at least
/// `min_files` files (with one file there is nothing to run in parallel, and plain calls are a
/// little faster: `bench journal --partitions 1`).
enum Io {
    Std,
    Uring { ring: Box<uring::Ring>, min_files: usize },
}

struct PartitionJournal {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    /// Started, no outcome yet.
    open: Attempts,
    /// Outcome delivered; kept until the message's offset is committed and its deadline past.
    done: Attempts,
    /// The resolved attempts in the order they were resolved, with when each may be forgotten
    /// ([`Msg::keep_until`]): [`Journal::committed`] forgets from the front.
    forget: VecDeque<(u64, Attempt)>,
    /// The open attempts this shard started itself (not loaded from the file).
    mine: std::collections::HashSet<Attempt>,
    appended: usize,
    dirty: bool,
}

impl PartitionJournal {
    fn load(path: PathBuf) -> Result<PartitionJournal, JournalError> {
        let (open, done) = match std::fs::read(&path) {
            Ok(bytes) => replay(whole_lines(&bytes).filter_map(Record::decode)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (HashMap::new(), HashMap::new()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let file = compact(&path, &open, &done)?;
        let mut forget: Vec<(u64, Attempt)> = done.iter().map(|(a, m)| (m.keep_until(), *a)).collect();
        forget.sort_unstable();
        Ok(PartitionJournal {
            path,
            file,
            buf: Vec::with_capacity(64 * 1024),
            open,
            done,
            forget: forget.into(),
            mine: Default::default(),
            appended: 0,
            dirty: false,
        })
    }

    /// Forgets, oldest first, the resolved attempts whose message is below `committed` and
    /// past its deadline: no redelivery and no second message can bring them back. In the
    /// order they were resolved: one still kept holds back those resolved after it (for at most
    /// the spread of deadlines, which the scheduler's `dispatch_ttl` bounds).
    fn forget(&mut self, committed: i64, now_ms: u64) {
        while let Some(&(until, a)) = self.forget.front() {
            let Some(m) = self.done.get(&a) else {
                self.forget.pop_front();
                continue;
            };
            if until > now_ms || m.offset >= committed {
                return;
            }
            self.done.remove(&a);
            self.forget.pop_front();
        }
    }
}

/// The complete lines of a file: a last line without its newline is torn (a crash mid-write;
/// its sync never returned) and left out, so that a cut number is never read as a smaller one.
fn whole_lines(bytes: &[u8]) -> impl Iterator<Item = &str> {
    let end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    bytes[..end].split(|b| *b == b'\n').filter(|l| !l.is_empty()).filter_map(|l| std::str::from_utf8(l).ok())
}

/// Writes the open attempts as `S` records and the done ones as `D` records to a temporary
/// file, syncs it and renames it over `path`; returns `path` opened for appending.
fn compact(path: &Path, open: &Attempts, done: &Attempts) -> Result<File, JournalError> {
    let tmp = path.with_extension("journal.tmp");
    let mut buf = Vec::with_capacity((open.len() + done.len()) * 48);
    for (a, o) in open {
        Record::Started(*a, *o).encode(&mut buf);
    }
    for (a, o) in done {
        Record::Done(*a, *o).encode(&mut buf);
    }
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(&buf).map_err(io_err(&tmp))?;
    f.sync_data().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
    }
    OpenOptions::new().append(true).open(path).map_err(io_err(path))
}

/// Writes what is left of a file's buffer and syncs it, with plain system calls.
fn finish_plain(p: &mut PartitionJournal, sync: bool) -> Result<(), JournalError> {
    let before = p.file.metadata().map_err(io_err(&p.path))?.len();
    if let Err(e) = p.file.write_all(&p.buf) {
        // A write cut short (a full disk) leaves part of a record: take it back, so that the
        // whole buffer, written again later, does not follow a torn line that would swallow
        // its first record.
        let _ = p.file.set_len(before);
        return Err(io_err(&p.path)(e));
    }
    p.buf.clear();
    if sync {
        p.file.sync_data().map_err(io_err(&p.path))?;
    }
    Ok(())
}

/// One shard's journal: the files of the partitions it has seen, loaded on first use.
///
/// With consumer-group assignment a partition can move: [`Journal::revoked`] marks the
/// partitions a rebalance took away (their state is kept: they may come straight back), and
/// [`Journal::assigned`] then keeps those that came back and *releases* the others — their
/// pending records are written, their state dropped, and the file is never touched again by
/// this shard (its new owner loads and compacts it) until the partition is assigned back, when
/// the file is loaded afresh.
pub struct Journal {
    dir: PathBuf,
    sync: bool,
    compact_after: usize,
    parts: HashMap<i32, PartitionJournal>,
    io: Io,
    /// Attempts this shard is dialing on partitions it released (their outcomes are not
    /// journaled here; the partition's new owner reports them `unknown_outcome`).
    dialing: HashMap<i32, std::collections::HashSet<Attempt>>,
    /// The lock files of the partitions this shard owns (see "One owner per file").
    locks: HashMap<i32, File>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .field("partitions", &self.parts.len())
            .field("io", &self.io_name())
            .finish()
    }
}

impl Journal {
    /// A journal in `dir` (created if missing). `sync` = false skips `fdatasync` (benchmarks of
    /// the write path only; a crash may then lose the last records).
    pub fn open(dir: &Path, sync: bool) -> Result<Journal, JournalError> {
        Journal::open_with(dir, sync, crate::tuning::JournalIo::Std)
    }

    /// [`Journal::open`] with the I/O to use: `Auto` falls back to plain system calls where
    /// io_uring cannot be set up; `IoUring` insists.
    pub fn open_with(dir: &Path, sync: bool, io: crate::tuning::JournalIo) -> Result<Journal, JournalError> {
        use crate::tuning::JournalIo;
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let io = match io {
            JournalIo::Std => Io::Std,
            JournalIo::IoUring => {
                let ring = uring::Ring::new().map_err(JournalError::Uring)?;
                Io::Uring { ring: Box::new(ring), min_files: 1 }
            }
            JournalIo::Auto => match uring::Ring::new() {
                Ok(ring) => Io::Uring { ring: Box::new(ring), min_files: 2 },
                Err(e) => {
                    tracing::info!(error = %e, "journal: io_uring unavailable, using plain write + fdatasync");
                    Io::Std
                }
            },
        };
        Ok(Journal {
            dir: dir.to_path_buf(),
            sync,
            compact_after: COMPACT_AFTER,
            parts: HashMap::new(),
            io,
            dialing: HashMap::new(),
            locks: HashMap::new(),
        })
    }

    /// Rewrites a partition's file after `records` appends since its last rewrite.
    pub fn compact_after(mut self, records: usize) -> Journal {
        self.compact_after = records.max(1);
        self
    }

    /// `io_uring` or `std`: what the group commits use.
    pub fn io_name(&self) -> &'static str {
        match self.io {
            Io::Std => "std",
            Io::Uring { .. } => "io_uring",
        }
    }

    /// Takes the partition's lock file unless this shard holds it already; `Ok(false)` while
    /// another shard (of this process or another) holds it.
    pub fn own(&mut self, partition: i32) -> Result<bool, JournalError> {
        if self.locks.contains_key(&partition) {
            return Ok(true);
        }
        let path = self.dir.join(format!("p{partition}.lock"));
        let f = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_err(&path))?;
        match f.try_lock() {
            Ok(()) => {
                self.locks.insert(partition, f);
                Ok(true)
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
        }
    }

    fn part(&mut self, partition: i32) -> Result<&mut PartitionJournal, JournalError> {
        if !self.own(partition)? {
            return Err(JournalError::Held(partition));
        }
        if !self.parts.contains_key(&partition) {
            let mut p = PartitionJournal::load(self.dir.join(format!("p{partition}.journal")))?;
            p.mine = self.dialing.remove(&partition).unwrap_or_default();
            if !p.open.is_empty() {
                tracing::warn!(
                    partition,
                    attempts = p.open.len(),
                    "journal: attempts started before a restart without a recorded outcome; they will be reported as unknown_outcome, not dialed again"
                );
            }
            self.parts.insert(partition, p);
        }
        Ok(self.parts.get_mut(&partition).expect("just inserted"))
    }

    /// What the journal knows of attempt `a` of `partition`.
    pub fn seen(&mut self, partition: i32, a: Attempt) -> Result<Seen, JournalError> {
        let p = match self.part(partition) {
            Err(JournalError::Held(_)) => return Ok(Seen::Elsewhere),
            p => p?,
        };
        Ok(if p.mine.contains(&a) {
            Seen::InFlight
        } else if p.open.contains_key(&a) {
            Seen::Unresolved
        } else if p.done.contains_key(&a) {
            Seen::Resolved
        } else {
            Seen::No
        })
    }

    /// Queues the `S` record of an attempt about to be dialed (durable at [`Journal::commit`]).
    pub fn started(&mut self, partition: i32, a: Attempt, m: Msg) -> Result<(), JournalError> {
        let p = self.part(partition)?;
        Record::Started(a, m).encode(&mut p.buf);
        p.open.insert(a, m);
        p.mine.insert(a);
        p.appended += 1;
        p.dirty = true;
        Ok(())
    }

    /// Takes back the start of `a`, queued by [`Journal::started`] but not made durable (the
    /// commit failed): the call is not dialled. A `W` record follows its `S` record, so neither
    /// this shard nor a restarted one takes the attempt for started (a restart that finds the `S`
    /// without it, the `W` unwritten, reports `unknown_outcome`: a full disk never turns into a
    /// second dial), and a later message of it starts it again.
    pub fn withdraw(&mut self, partition: i32, a: Attempt) -> Result<(), JournalError> {
        let p = self.part(partition)?;
        p.mine.remove(&a);
        if let Some(m) = p.open.remove(&a) {
            Record::Withdrawn(a, m).encode(&mut p.buf);
            p.appended += 1;
            p.dirty = true;
        }
        Ok(())
    }

    /// The offset of the message that started `a` while it is open: a message of it at another
    /// offset is a second one (a republished claim), not the same one redelivered.
    pub fn started_offset(&self, partition: i32, a: Attempt) -> Option<i64> {
        self.parts.get(&partition).and_then(|p| p.open.get(&a)).map(|m| m.offset)
    }

    /// Queues the `D` record of an attempt whose outcome is acknowledged.
    pub fn done(&mut self, partition: i32, a: Attempt) -> Result<(), JournalError> {
        if !self.locks.contains_key(&partition) {
            // Released: the new owner has the file; it reports the attempt `unknown_outcome` if
            // the message reaches it (the outcome delivered here is then the one that counts).
            if let Some(d) = self.dialing.get_mut(&partition) {
                d.remove(&a);
            }
            return Ok(());
        }
        let p = self.part(partition)?;
        p.mine.remove(&a);
        if let Some(m) = p.open.remove(&a) {
            Record::Done(a, m).encode(&mut p.buf);
            p.done.insert(a, m);
            p.forget.push_back((m.keep_until(), a));
            p.appended += 1;
            p.dirty = true;
        }
        Ok(())
    }

    /// Forgets resolved attempts of messages below `committed` (the partition's committed
    /// offset) whose deadline is past at `now_ms`: neither a redelivery nor a second message of
    /// them can be dialled any more.
    pub fn committed(&mut self, partition: i32, committed: i64, now_ms: u64) {
        if let Some(p) = self.parts.get_mut(&partition) {
            p.forget(committed, now_ms);
        }
    }

    /// A rebalance took these partitions away: they are released (their pending records
    /// written, then their lock let go), so that their next owner reads every attempt this
    /// shard started. The attempts this shard is still dialing are remembered: if a partition
    /// comes back, their redelivered messages are `InFlight`, not `Unresolved`.
    pub fn revoked(&mut self, partitions: &[i32]) -> Result<(), JournalError> {
        let mut written = Ok(());
        for p in partitions {
            if let Some(mut part) = self.parts.remove(p) {
                if !part.buf.is_empty() {
                    written = written.and(finish_plain(&mut part, self.sync));
                }
                self.dialing.entry(*p).or_default().extend(part.mine);
            }
            // Let go even when the write failed: the records not written were never synced,
            // so no call of them was dialled.
            self.locks.remove(p);
        }
        written
    }

    /// Forgets every resolved attempt (an in-process bus: nothing is ever redelivered).
    pub fn forget_resolved(&mut self) {
        for p in self.parts.values_mut() {
            p.done.clear();
            p.forget.clear();
        }
    }

    /// Writes every queued record and syncs each touched file once (the group commit).
    pub fn commit(&mut self) -> Result<(), JournalError> {
        let dirty_files = self.parts.values().filter(|p| p.dirty).count();
        if let Io::Uring { ring, min_files } = &mut self.io
            && dirty_files >= *min_files
        {
            use std::os::fd::AsRawFd;
            let mut dirty: Vec<&mut PartitionJournal> = self.parts.values_mut().filter(|p| p.dirty).collect();
            let files: Vec<(std::os::fd::RawFd, &[u8])> =
                dirty.iter().map(|p| (p.file.as_raw_fd(), p.buf.as_slice())).collect();
            let results = ring.append_all(&files, self.sync);
            let broken = ring.broken();
            for (p, o) in dirty.iter_mut().zip(results) {
                let n = o.written.map_err(io_err(&p.path))?;
                if n < p.buf.len() {
                    // A short write (its sync was cancelled): finish the file the plain way.
                    p.buf.drain(..n);
                    finish_plain(p, self.sync)?;
                } else {
                    if let Some(Err(e)) = o.synced {
                        return Err(io_err(&p.path)(e));
                    }
                    p.buf.clear();
                }
            }
            if broken {
                tracing::warn!("journal: io_uring failed; using plain write + fdatasync from now on");
                self.io = Io::Std;
            }
        }
        for p in self.parts.values_mut().filter(|p| p.dirty) {
            if !p.buf.is_empty() {
                finish_plain(p, self.sync)?;
            }
            p.dirty = false;
            // Never more often than the file's live records: a rewrite's cost stays a constant
            // per append however many resolved attempts wait for their deadline.
            if p.appended > self.compact_after.max(2 * (p.open.len() + p.done.len())) {
                p.file = compact(&p.path, &p.open, &p.done)?;
                p.appended = 0;
            }
        }
        Ok(())
    }

    /// Attempts started and unresolved, over the loaded partitions.
    pub fn open_attempts(&self) -> usize {
        self.parts.values().map(|p| p.open.len()).sum()
    }

    /// Tests: `partition`'s records go to `path` from now on (`/dev/full`: every write fails
    /// for want of space, as on a full disk).
    #[cfg(test)]
    pub(crate) fn write_to(&mut self, partition: i32, path: &Path) -> Result<(), JournalError> {
        let p = self.part(partition)?;
        p.file = OpenOptions::new().append(true).open(path).map_err(io_err(path))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(n: u128, attempt: u32) -> Attempt {
        (Uuid::from_u128(n), attempt)
    }

    /// A message at `offset` with no deadline.
    fn m(offset: i64) -> Msg {
        Msg::new(offset, 0)
    }

    #[test]
    fn a_withdrawn_start_is_as_if_never_started_here_and_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(dir.path(), true).expect("open");
        j.started(0, a(1, 1), m(10)).expect("started");
        j.started(0, a(2, 1), m(11)).expect("started");
        j.commit().expect("commit");
        j.withdraw(0, a(1, 1)).expect("withdrawn");
        j.commit().expect("commit");
        assert_eq!(j.seen(0, a(1, 1)).expect("seen"), Seen::No, "a later message of it may start it");
        assert_eq!(j.seen(0, a(2, 1)).expect("seen"), Seen::InFlight);
        let dialled = dialled_attempts(dir.path()).expect("read");
        assert_eq!(dialled, [a(2, 1)].into_iter().collect(), "the withdrawn start was never dialled");
        drop(j);
        let mut again = Journal::open(dir.path(), true).expect("reopen");
        assert_eq!(again.seen(0, a(1, 1)).expect("seen"), Seen::No);
        assert_eq!(again.seen(0, a(2, 1)).expect("seen"), Seen::Unresolved);
        // Started again after the withdrawal: started for good.
        again.started(0, a(1, 1), m(12)).expect("started");
        again.commit().expect("commit");
        drop(again);
        let bytes = std::fs::read(dir.path().join("p0.journal")).expect("read");
        let (open, _) = replay(whole_lines(&bytes).filter_map(Record::decode));
        assert_eq!(open.keys().copied().collect::<std::collections::HashSet<_>>(), [a(1, 1), a(2, 1)].into());
    }

    #[test]
    fn a_write_refused_for_want_of_space_keeps_its_records_and_the_withdrawal_follows_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(dir.path(), true).expect("open");
        j.started(0, a(1, 1), m(10)).expect("started");
        j.write_to(0, Path::new("/dev/full")).expect("/dev/full");
        assert!(j.commit().is_err(), "no space");
        j.withdraw(0, a(1, 1)).expect("withdrawn");
        j.write_to(0, &dir.path().join("p0.journal")).expect("the file again");
        j.commit().expect("commit");
        let text = std::fs::read_to_string(dir.path().join("p0.journal")).expect("read");
        let records: Vec<Record> = text.lines().filter_map(Record::decode).collect();
        assert_eq!(records, vec![Record::Started(a(1, 1), m(10)), Record::Withdrawn(a(1, 1), m(10))]);
        assert_eq!(text.lines().count(), 2, "no torn line");
    }

    #[test]
    fn records_round_trip_and_torn_lines_are_ignored() {
        let mut buf = Vec::new();
        Record::Started(a(7, 2), m(40)).encode(&mut buf);
        Record::Done(a(7, 2), m(40)).encode(&mut buf);
        let text = String::from_utf8(buf).expect("utf8");
        let recs: Vec<_> = text.lines().filter_map(Record::decode).collect();
        assert_eq!(recs, vec![Record::Started(a(7, 2), m(40)), Record::Done(a(7, 2), m(40))]);
        assert_eq!(Record::decode("S 00000000-0000-0000-0000-0000000"), None, "torn");
        assert_eq!(Record::decode("S 00000000-0000-0000-0000-000000000007 1"), None, "torn");
        assert_eq!(Record::decode("X 00000000-0000-0000-0000-000000000007 1 4"), None);
        assert_eq!(Record::decode("S 00000000-0000-0000-0000-000000000007 1 9 9 9"), None);
        assert_eq!(
            Record::decode("D 00000000-0000-0000-0000-000000000007 1 9 1700000000000"),
            Some(Record::Done(a(7, 1), Msg::new(9, 1_700_000_000_000))),
            "with its message's deadline"
        );
        assert_eq!(
            Record::decode("D 00000000-0000-0000-0000-000000000007 1 9"),
            Some(Record::Done(a(7, 1), m(9))),
            "a line written before deadlines were recorded has none"
        );
    }

    /// A crash cut the last line after a digit of its deadline: the line is not read at all
    /// (read as a number it would be an earlier deadline, and the attempt forgotten too soon).
    #[test]
    fn a_torn_last_line_is_not_read_as_a_shorter_number() {
        let text =
            "S 00000000-0000-0000-0000-000000000001 1 5 1700000000000\nD 00000000-0000-0000-0000-000000000001 1 5 17";
        let recs: Vec<Record> = whole_lines(text.as_bytes()).filter_map(Record::decode).collect();
        assert_eq!(recs, vec![Record::Started(a(1, 1), Msg::new(5, 1_700_000_000_000))]);
        assert_eq!(whole_lines(b"no newline at all").count(), 0);
    }

    /// A control plane that could not confirm a claim's message publishes it again, at a later
    /// offset, with the same deadline: the attempt's outcome must still be known when that second
    /// message comes, however far the partition's commits have gone, until the deadline is past
    /// (and a clock step's margin), across a restart and a compaction too.
    #[test]
    fn a_resolved_attempt_is_remembered_until_its_deadline_not_only_its_offset() {
        let dir = tempfile::tempdir().expect("tmp");
        let deadline = 1_700_000_000_000u64;
        let mut j = Journal::open(dir.path(), true).expect("open").compact_after(1);
        j.started(0, a(1, 1), Msg::new(10, deadline)).expect("started");
        j.started(0, a(2, 1), m(11)).expect("started");
        j.commit().expect("commit");
        assert_eq!(j.started_offset(0, a(1, 1)), Some(10));
        j.done(0, a(2, 1)).expect("done");
        j.done(0, a(1, 1)).expect("done");
        j.commit().expect("commit (and a compaction: compact_after 1)");
        j.committed(0, 500, deadline);
        assert_eq!(j.seen(0, a(1, 1)).expect("seen"), Seen::Resolved, "offset committed, deadline not past");
        assert_eq!(j.seen(0, a(2, 1)).expect("seen"), Seen::No, "no deadline: the commit alone decides");
        drop(j);
        let mut j = Journal::open(dir.path(), true).expect("reopen");
        j.committed(0, 500, deadline + KEEP_PAST_DEADLINE_MS - 1);
        assert_eq!(j.seen(0, a(1, 1)).expect("seen"), Seen::Resolved, "the deadline survived the restart");
        j.committed(0, 5, deadline + KEEP_PAST_DEADLINE_MS);
        assert_eq!(j.seen(0, a(1, 1)).expect("seen"), Seen::Resolved, "deadline past, offset not committed");
        j.committed(0, 12, deadline + KEEP_PAST_DEADLINE_MS);
        assert_eq!(j.seen(0, a(1, 1)).expect("seen"), Seen::No, "both past: forgotten");
        assert_eq!(j.started_offset(0, a(1, 1)), None);
    }

    #[test]
    fn replay_separates_open_and_done_attempts() {
        let (open, done) = replay([
            Record::Started(a(1, 1), m(1)),
            Record::Started(a(2, 1), m(2)),
            Record::Done(a(1, 1), m(1)),
            Record::Started(a(1, 2), m(3)),
        ]);
        assert_eq!(open, HashMap::from([(a(2, 1), m(2)), (a(1, 2), m(3))]));
        assert_eq!(done, HashMap::from([(a(1, 1), m(1))]));
    }

    /// What a data plane counts at start as calls a killed process may have left up: the
    /// unresolved attempts of partitions no live shard holds, not those of a live one's.
    #[test]
    fn orphans_are_the_unresolved_attempts_of_partitions_no_live_shard_holds() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut killed = Journal::open(dir.path(), true).expect("open");
        killed.started(0, a(1, 1), m(1)).expect("started");
        killed.started(0, a(2, 1), m(2)).expect("started");
        killed.started(0, a(3, 1), m(3)).expect("started");
        killed.commit().expect("commit");
        killed.done(0, a(2, 1)).expect("an outcome acknowledged");
        killed.withdraw(0, a(3, 1)).expect("a start withdrawn");
        killed.commit().expect("commit");
        let mut live = Journal::open(dir.path(), true).expect("open");
        live.started(1, a(4, 1), m(4)).expect("started");
        live.commit().expect("commit");
        drop(killed);
        assert_eq!(orphans(dir.path()).expect("orphans"), 1, "only attempt 1 of partition 0; partition 1 is live");
        drop(live);
        assert_eq!(orphans(dir.path()).expect("orphans"), 2, "its owner gone, partition 1's open attempt counts too");
        let mut next = Journal::open(dir.path(), true).expect("open");
        assert_eq!(next.seen(0, a(1, 1)).expect("seen"), Seen::Unresolved, "counting took no lock for good");
    }

    #[test]
    fn a_reopened_journal_knows_open_and_resolved_attempts() {
        reopened_journal(crate::tuning::JournalIo::Std);
    }

    #[test]
    fn a_reopened_journal_knows_open_and_resolved_attempts_io_uring() {
        reopened_journal(crate::tuning::JournalIo::IoUring);
    }

    /// A rebalance: a partition that comes straight back keeps this shard's calls in progress
    /// `InFlight`, not `Unresolved`; one that goes elsewhere is written out and not touched
    /// again (its next owner sees the started attempts) until its owner lets go.
    #[test]
    fn rebalances_keep_or_release_partitions() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut j = Journal::open(dir.path(), true).expect("open");
        j.started(0, a(1, 1), m(10)).expect("started");
        j.started(1, a(2, 1), m(20)).expect("started");
        j.commit().expect("commit");
        assert_eq!(j.seen(0, a(1, 1)).expect("seen"), Seen::InFlight, "this shard is dialing it");
        // Eager rebalance: everything revoked (and released), partition 0 comes back, 1 goes
        // elsewhere.
        j.done(1, a(2, 1)).expect("an outcome acknowledged before the rebalance");
        j.revoked(&[0, 1]).expect("revoked");
        assert_eq!(j.seen(0, a(1, 1)).expect("seen"), Seen::InFlight, "still dialing it, across the rebalance");
        j.done(1, a(9, 1)).expect("outcomes of a released partition are dropped, not an error");
        // The new owner of partition 1 sees what was written before the release.
        let mut other = Journal::open(dir.path(), true).expect("open");
        assert_eq!(other.seen(1, a(2, 1)).expect("seen"), Seen::Resolved, "the outcome was written at release");
        assert_eq!(j.seen(1, a(2, 1)).expect("seen"), Seen::Elsewhere, "partition 1 is the other shard's now");
        assert!(matches!(j.started(1, a(4, 1), m(22)), Err(JournalError::Held(1))), "nothing of it may start here");
        other.started(1, a(3, 1), m(21)).expect("started");
        other.commit().expect("commit");
        // Partition 1 comes back once the other shard let go: loaded afresh, with its records.
        drop(other);
        assert_eq!(j.seen(1, a(3, 1)).expect("seen"), Seen::Unresolved, "started by the other owner");
        j.done(0, a(1, 1)).expect("done");
        assert_eq!(j.seen(0, a(1, 1)).expect("seen"), Seen::Resolved);
    }

    /// Two shards (of one process or two) never use one partition's file at once: the second
    /// waits for the first to release the partition, or to die, then reads what it started.
    #[test]
    fn a_partition_s_file_has_one_owner_at_a_time() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut first = Journal::open(dir.path(), true).expect("open");
        let mut second = Journal::open(dir.path(), true).expect("open");
        first.started(3, a(1, 1), m(5)).expect("started");
        first.commit().expect("commit");
        assert_eq!(second.seen(3, a(1, 1)).expect("seen"), Seen::Elsewhere, "held by the first");
        assert!(!second.own(3).expect("own"));
        assert!(second.own(4).expect("own"), "other partitions are free");
        assert_eq!(first.seen(4, a(2, 1)).expect("seen"), Seen::Elsewhere, "and then the second's");
        // A revocation lets go.
        first.revoked(&[3]).expect("revoked");
        assert_eq!(second.seen(3, a(1, 1)).expect("seen"), Seen::Unresolved, "started by the first");
        // A shard that dies lets go too (the kernel drops its locks).
        drop(second);
        assert_eq!(first.seen(4, a(2, 1)).expect("seen"), Seen::No);
    }

    /// Many partitions and large batches through one io_uring submission per commit, files read
    /// back with plain reads: every record is there, in order, once.
    #[test]
    fn io_uring_commits_write_every_record_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut j = Journal::open_with(dir.path(), true, crate::tuning::JournalIo::IoUring).expect("io_uring");
        assert_eq!(j.io_name(), "io_uring");
        for round in 0..20u32 {
            for p in 0..40 {
                for k in 0..50u32 {
                    let n = u128::from(round * 100_000 + (p as u32) * 1000 + k);
                    j.started(p, a(n, 1), m(i64::from(round * 50 + k))).expect("started");
                }
            }
            j.commit().expect("commit");
        }
        for p in 0..40 {
            let text = std::fs::read_to_string(dir.path().join(format!("p{p}.journal"))).expect("read");
            let recs: Vec<Record> = text.lines().map(|l| Record::decode(l).expect("whole lines only")).collect();
            assert_eq!(recs.len(), 20 * 50, "partition {p}");
            let offsets: Vec<i64> = recs
                .iter()
                .map(|r| match r {
                    Record::Started(_, o) | Record::Done(_, o) | Record::Withdrawn(_, o) => o.offset,
                })
                .collect();
            assert!(offsets.windows(2).all(|w| w[0] < w[1]), "in order, no duplicate");
        }
    }

    fn reopened_journal(io: crate::tuning::JournalIo) {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut j = Journal::open_with(dir.path(), true, io).expect("open");
            for i in 0..100 {
                j.started(i % 3, a(i as u128, 1), m(i64::from(i))).expect("started");
            }
            j.commit().expect("commit");
            for i in 0..90 {
                j.done(i % 3, a(i as u128, 1)).expect("done");
            }
            j.commit().expect("commit");
            // A crash: records queued after the last commit are lost.
            j.started(0, a(1000, 1), m(1000)).expect("started");
        }
        let mut j = Journal::open_with(dir.path(), true, io).expect("reopen");
        for i in 0..100 {
            let want = if i >= 90 { Seen::Unresolved } else { Seen::Resolved };
            assert_eq!(j.seen(i % 3, a(i as u128, 1)).expect("read"), want, "attempt {i}");
        }
        assert_eq!(j.seen(0, a(1000, 1)).expect("read"), Seen::No, "never made durable, never dialed");
        assert_eq!(j.open_attempts(), 10);
        // An attempt of another number of the same call is a different attempt.
        assert_eq!(j.seen(0, a(90, 2)).expect("read"), Seen::No);
        // Once the committed offset passes them, resolved attempts are forgotten.
        for p in 0..3 {
            j.committed(p, 95, 0);
        }
        assert_eq!(j.seen(0, a(3, 1)).expect("read"), Seen::No);
        assert_eq!(j.seen(1, a(94, 1)).expect("read"), Seen::Unresolved, "open attempts stay until resolved");
    }
}
