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
//!   remembered (with their message's offset) until the partition's committed offset passes
//!   them, after which no redelivery can bring them back.
//! - **Layout**: one file per dispatch partition (`p{N}.journal` under the journal directory), so
//!   that whichever shard of the host owns a partition after a restart or rebalance reads its
//!   history. A file is compacted (rewritten with only unresolved attempts) when loaded and when
//!   it has grown past a threshold.
//!
//! Records are text lines, `S <uuid> <attempt> <offset>` and `D <uuid> <attempt> <offset>`; a
//! torn last line (a crash mid-write) is ignored, which is safe because its sync never returned.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

/// One attempt: (call id, attempt number).
pub type Attempt = (Uuid, u32);

/// A journal record: an attempt and the offset of the message that carried it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    Started(Attempt, i64),
    Done(Attempt, i64),
}

impl Record {
    /// The record as one line (with its newline).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (tag, (id, attempt), offset) = match self {
            Record::Started(a, o) => ('S', a, o),
            Record::Done(a, o) => ('D', a, o),
        };
        let _ = writeln!(out, "{tag} {} {attempt} {offset}", id.as_hyphenated());
    }

    /// Parses one line (without its newline); `None` for a torn or foreign line.
    pub fn decode(line: &str) -> Option<Record> {
        let mut parts = line.split(' ');
        let tag = parts.next()?;
        let id = Uuid::parse_str(parts.next()?).ok()?;
        let attempt = parts.next()?.parse().ok()?;
        let offset = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        match tag {
            "S" => Some(Record::Started((id, attempt), offset)),
            "D" => Some(Record::Done((id, attempt), offset)),
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
    /// Started and its outcome delivered: skip the redelivered message.
    Resolved,
}

/// Attempt → offset of its message.
pub type Attempts = HashMap<Attempt, i64>;

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
        }
    }
    (open, done)
}

/// Why the journal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}; check the directory (tuning journal.dir) exists and is writable")]
    Io { path: String, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.display().to_string(), source }
}

/// Rewrites the file when this many records were appended since the last compaction.
const COMPACT_AFTER: usize = 200_000;

struct PartitionJournal {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    /// Started, no outcome yet.
    open: Attempts,
    /// Outcome delivered, the message's offset maybe not committed yet.
    done: Attempts,
    appended: usize,
    dirty: bool,
}

impl PartitionJournal {
    fn load(path: PathBuf) -> Result<PartitionJournal, JournalError> {
        let (open, done) = match File::open(&path) {
            Ok(f) => replay(BufReader::new(f).lines().map_while(Result::ok).filter_map(|l| Record::decode(&l))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (HashMap::new(), HashMap::new()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let file = compact(&path, &open, &done)?;
        Ok(PartitionJournal { path, file, buf: Vec::with_capacity(64 * 1024), open, done, appended: 0, dirty: false })
    }
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

/// One shard's journal: the files of the partitions it has seen, loaded on first use.
pub struct Journal {
    dir: PathBuf,
    sync: bool,
    parts: HashMap<i32, PartitionJournal>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("dir", &self.dir).field("partitions", &self.parts.len()).finish()
    }
}

impl Journal {
    /// A journal in `dir` (created if missing). `sync` = false skips `fdatasync` (benchmarks of
    /// the write path only; a crash may then lose the last records).
    pub fn open(dir: &Path, sync: bool) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        Ok(Journal { dir: dir.to_path_buf(), sync, parts: HashMap::new() })
    }

    fn part(&mut self, partition: i32) -> Result<&mut PartitionJournal, JournalError> {
        if !self.parts.contains_key(&partition) {
            let p = PartitionJournal::load(self.dir.join(format!("p{partition}.journal")))?;
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
        let p = self.part(partition)?;
        Ok(if p.open.contains_key(&a) {
            Seen::Unresolved
        } else if p.done.contains_key(&a) {
            Seen::Resolved
        } else {
            Seen::No
        })
    }

    /// Queues the `S` record of an attempt about to be dialed (durable at [`Journal::commit`]).
    pub fn started(&mut self, partition: i32, a: Attempt, offset: i64) -> Result<(), JournalError> {
        let p = self.part(partition)?;
        Record::Started(a, offset).encode(&mut p.buf);
        p.open.insert(a, offset);
        p.appended += 1;
        p.dirty = true;
        Ok(())
    }

    /// Queues the `D` record of an attempt whose outcome is acknowledged.
    pub fn done(&mut self, partition: i32, a: Attempt) -> Result<(), JournalError> {
        let p = self.part(partition)?;
        if let Some(offset) = p.open.remove(&a) {
            Record::Done(a, offset).encode(&mut p.buf);
            p.done.insert(a, offset);
            p.appended += 1;
            p.dirty = true;
        }
        Ok(())
    }

    /// Forgets resolved attempts of messages below `committed` (the partition's committed
    /// offset): they can no longer be redelivered.
    pub fn committed(&mut self, partition: i32, committed: i64) {
        if let Some(p) = self.parts.get_mut(&partition) {
            p.done.retain(|_, o| *o >= committed);
        }
    }

    /// Forgets every resolved attempt (an in-process bus: nothing is ever redelivered).
    pub fn forget_resolved(&mut self) {
        for p in self.parts.values_mut() {
            p.done.clear();
        }
    }

    /// Writes every queued record and syncs each touched file once (the group commit).
    pub fn commit(&mut self) -> Result<(), JournalError> {
        for p in self.parts.values_mut().filter(|p| p.dirty) {
            p.file.write_all(&p.buf).map_err(io_err(&p.path))?;
            p.buf.clear();
            if self.sync {
                p.file.sync_data().map_err(io_err(&p.path))?;
            }
            p.dirty = false;
            if p.appended > COMPACT_AFTER {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(n: u128, attempt: u32) -> Attempt {
        (Uuid::from_u128(n), attempt)
    }

    #[test]
    fn records_round_trip_and_torn_lines_are_ignored() {
        let mut buf = Vec::new();
        Record::Started(a(7, 2), 40).encode(&mut buf);
        Record::Done(a(7, 2), 40).encode(&mut buf);
        let text = String::from_utf8(buf).expect("utf8");
        let recs: Vec<_> = text.lines().filter_map(Record::decode).collect();
        assert_eq!(recs, vec![Record::Started(a(7, 2), 40), Record::Done(a(7, 2), 40)]);
        assert_eq!(Record::decode("S 00000000-0000-0000-0000-0000000"), None, "torn");
        assert_eq!(Record::decode("S 00000000-0000-0000-0000-000000000007 1"), None, "torn");
        assert_eq!(Record::decode("X 00000000-0000-0000-0000-000000000007 1 4"), None);
        assert_eq!(Record::decode("S 00000000-0000-0000-0000-000000000007 1 9 9"), None);
    }

    #[test]
    fn replay_separates_open_and_done_attempts() {
        let (open, done) = replay([
            Record::Started(a(1, 1), 1),
            Record::Started(a(2, 1), 2),
            Record::Done(a(1, 1), 1),
            Record::Started(a(1, 2), 3),
        ]);
        assert_eq!(open, HashMap::from([(a(2, 1), 2), (a(1, 2), 3)]));
        assert_eq!(done, HashMap::from([(a(1, 1), 1)]));
    }

    #[test]
    fn a_reopened_journal_knows_open_and_resolved_attempts() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut j = Journal::open(dir.path(), true).expect("open");
            for i in 0..100 {
                j.started(i % 3, a(i as u128, 1), i64::from(i)).expect("started");
            }
            j.commit().expect("commit");
            for i in 0..90 {
                j.done(i % 3, a(i as u128, 1)).expect("done");
            }
            j.commit().expect("commit");
            // A crash: records queued after the last commit are lost.
            j.started(0, a(1000, 1), 1000).expect("started");
        }
        let mut j = Journal::open(dir.path(), true).expect("reopen");
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
            j.committed(p, 95);
        }
        assert_eq!(j.seen(0, a(3, 1)).expect("read"), Seen::No);
        assert_eq!(j.seen(1, a(94, 1)).expect("read"), Seen::Unresolved, "open attempts stay until resolved");
    }
}
