//! The attempt journal: a durable "attempt started" record written before a call is placed, so
//! that no (call id, attempt) is dialed twice across a crash, a restart or a redelivered message.
//!
//! - **Group commit**: a shard appends the `S` records of every call it is about to start in
//!   one loop turn, then makes them durable with one `fdatasync` per touched file, then dials.
//!   The cost is one write + one sync per batch, not per dial.
//! - **Resolution**: an attempt's `D` record is appended once its outcome event is acknowledged
//!   (never before: a crash between the two must leave the attempt unresolved). On restart the
//!   files are replayed; a redelivered message whose attempt is started but unresolved is not
//!   dialed again: the shard reports it as failed with reason `unknown_outcome` (retryable), and
//!   the campaign's retry policy decides.
//! - **Layout**: one file per dispatch partition (`p{N}.journal` under the journal directory), so
//!   that whichever shard of the host owns a partition after a restart or rebalance reads its
//!   history. A file is compacted (rewritten with only unresolved attempts) when loaded and when
//!   it has grown past a threshold.
//!
//! Records are text lines, `S <uuid> <attempt>` and `D <uuid> <attempt>`; a torn last line (a
//! crash mid-write) is ignored, which is safe because its sync never returned.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

/// One attempt: (call id, attempt number).
pub type Attempt = (Uuid, u32);

/// A journal record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    Started(Attempt),
    Done(Attempt),
}

impl Record {
    /// The record as one line (with its newline).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (tag, (id, attempt)) = match self {
            Record::Started(a) => ('S', a),
            Record::Done(a) => ('D', a),
        };
        let _ = writeln!(out, "{tag} {} {attempt}", id.as_hyphenated());
    }

    /// Parses one line (without its newline); `None` for a torn or foreign line.
    pub fn decode(line: &str) -> Option<Record> {
        let mut parts = line.split(' ');
        let tag = parts.next()?;
        let id = Uuid::parse_str(parts.next()?).ok()?;
        let attempt = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        match tag {
            "S" => Some(Record::Started((id, attempt))),
            "D" => Some(Record::Done((id, attempt))),
            _ => None,
        }
    }
}

/// Replays records: the attempts started and not done.
pub fn unresolved(records: impl IntoIterator<Item = Record>) -> HashSet<Attempt> {
    let mut open = HashSet::new();
    for r in records {
        match r {
            Record::Started(a) => {
                open.insert(a);
            }
            Record::Done(a) => {
                open.remove(&a);
            }
        }
    }
    open
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
    open: HashSet<Attempt>,
    appended: usize,
    dirty: bool,
}

impl PartitionJournal {
    fn load(path: PathBuf) -> Result<PartitionJournal, JournalError> {
        let open = match File::open(&path) {
            Ok(f) => unresolved(BufReader::new(f).lines().map_while(Result::ok).filter_map(|l| Record::decode(&l))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => HashSet::new(),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let file = compact(&path, &open)?;
        Ok(PartitionJournal { path, file, buf: Vec::with_capacity(64 * 1024), open, appended: 0, dirty: false })
    }
}

/// Writes `open` as `S` records to a temporary file, syncs it and renames it over `path`;
/// returns `path` opened for appending.
fn compact(path: &Path, open: &HashSet<Attempt>) -> Result<File, JournalError> {
    let tmp = path.with_extension("journal.tmp");
    let mut buf = Vec::with_capacity(open.len() * 48);
    for a in open {
        Record::Started(*a).encode(&mut buf);
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

    /// True when `a` was started (durably) and has no recorded outcome: do not dial it again.
    pub fn is_unresolved(&mut self, partition: i32, a: Attempt) -> Result<bool, JournalError> {
        Ok(self.part(partition)?.open.contains(&a))
    }

    /// Queues the `S` record of an attempt about to be dialed (durable at [`Journal::commit`]).
    pub fn started(&mut self, partition: i32, a: Attempt) -> Result<(), JournalError> {
        let p = self.part(partition)?;
        Record::Started(a).encode(&mut p.buf);
        p.open.insert(a);
        p.dirty = true;
        Ok(())
    }

    /// Queues the `D` record of an attempt whose outcome is acknowledged.
    pub fn done(&mut self, partition: i32, a: Attempt) -> Result<(), JournalError> {
        let p = self.part(partition)?;
        if p.open.remove(&a) {
            Record::Done(a).encode(&mut p.buf);
            p.dirty = true;
        }
        Ok(())
    }

    /// Writes every queued record and syncs each touched file once (the group commit).
    pub fn commit(&mut self) -> Result<(), JournalError> {
        for p in self.parts.values_mut().filter(|p| p.dirty) {
            p.file.write_all(&p.buf).map_err(io_err(&p.path))?;
            p.appended += p.buf.len() / 40;
            p.buf.clear();
            if self.sync {
                p.file.sync_data().map_err(io_err(&p.path))?;
            }
            p.dirty = false;
            if p.appended > COMPACT_AFTER {
                p.file = compact(&p.path, &p.open)?;
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
        Record::Started(a(7, 2)).encode(&mut buf);
        Record::Done(a(7, 2)).encode(&mut buf);
        let text = String::from_utf8(buf).expect("utf8");
        let recs: Vec<_> = text.lines().filter_map(Record::decode).collect();
        assert_eq!(recs, vec![Record::Started(a(7, 2)), Record::Done(a(7, 2))]);
        assert_eq!(Record::decode("S 00000000-0000-0000-0000-0000000"), None, "torn");
        assert_eq!(Record::decode("X 00000000-0000-0000-0000-000000000007 1"), None);
        assert_eq!(Record::decode("S 00000000-0000-0000-0000-000000000007 1 9"), None);
    }

    #[test]
    fn replay_keeps_started_without_done() {
        let open = unresolved([
            Record::Started(a(1, 1)),
            Record::Started(a(2, 1)),
            Record::Done(a(1, 1)),
            Record::Started(a(1, 2)),
            Record::Done(a(3, 1)),
        ]);
        assert_eq!(open, HashSet::from([a(2, 1), a(1, 2)]));
    }

    #[test]
    fn a_reopened_journal_knows_unresolved_attempts_and_compacts() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut j = Journal::open(dir.path(), true).expect("open");
            for i in 0..100 {
                j.started(i % 3, a(i as u128, 1)).expect("started");
            }
            j.commit().expect("commit");
            for i in 0..90 {
                j.done(i % 3, a(i as u128, 1)).expect("done");
            }
            j.commit().expect("commit");
            // A crash: records queued after the last commit are lost.
            j.started(0, a(1000, 1)).expect("started");
        }
        let mut j = Journal::open(dir.path(), true).expect("reopen");
        for i in 0..100 {
            assert_eq!(j.is_unresolved(i % 3, a(i as u128, 1)).expect("read"), i >= 90, "attempt {i}");
        }
        assert!(!j.is_unresolved(0, a(1000, 1)).expect("read"), "never made durable, never dialed");
        assert_eq!(j.open_attempts(), 10);
        let size: u64 =
            (0..3).map(|p| std::fs::metadata(dir.path().join(format!("p{p}.journal"))).expect("f").len()).sum();
        assert!(size < 10 * 48, "compacted on load to the open attempts: {size} bytes");
        // An attempt of another number of the same call is a different attempt.
        assert!(!j.is_unresolved(0, a(90, 2)).expect("read"));
    }
}
