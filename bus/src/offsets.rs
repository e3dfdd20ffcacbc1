//! Which offsets of a partition may be committed: at-least-once means committing only up to the
//! first message whose outcome event the broker has not acknowledged yet.

use std::collections::{BTreeSet, HashMap};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionOffsets {
    pending: BTreeSet<i64>,
    /// One past the highest offset received.
    next: Option<i64>,
    committed: Option<i64>,
}

impl PartitionOffsets {
    /// A message at `offset` was taken in.
    pub fn received(&mut self, offset: i64) {
        self.pending.insert(offset);
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// The message at `offset` is finished (its outcome is acknowledged, or it was skipped).
    pub fn done(&mut self, offset: i64) {
        self.pending.remove(&offset);
    }

    /// The offset to commit (the next one to read after a restart), if it moved since the
    /// last [`PartitionOffsets::committed`].
    pub fn commit_point(&self) -> Option<i64> {
        let point = self.pending.first().copied().or(self.next)?;
        (Some(point) != self.committed).then_some(point)
    }

    /// The broker confirmed a commit at `point` (confirmations may come out of order: the
    /// highest counts).
    pub fn committed(&mut self, point: i64) {
        self.committed = Some(self.committed.map_or(point, |c| c.max(point)));
    }

    /// The last offset committed (`None` before the first commit).
    pub fn committed_offset(&self) -> Option<i64> {
        self.committed
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// The commit points of every partition a consumer reads: what it received, what is finished,
/// what was committed. A revoked partition is forgotten (its next owner reads its unfinished
/// messages again from the committed offset).
#[derive(Clone, Debug, Default)]
pub struct CommitPoints {
    parts: HashMap<i32, PartitionOffsets>,
}

impl CommitPoints {
    pub fn received(&mut self, partition: i32, offset: i64) {
        self.parts.entry(partition).or_default().received(offset);
    }

    /// The message is finished; a partition revoked since it was received is not tracked again.
    pub fn done(&mut self, partition: i32, offset: i64) {
        if let Some(p) = self.parts.get_mut(&partition) {
            p.done(offset);
        }
    }

    pub fn revoked(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.parts.remove(p);
        }
    }

    /// The points that moved since the last commit, to commit now.
    pub fn due(&self) -> Vec<(i32, i64)> {
        self.parts.iter().filter_map(|(p, o)| o.commit_point().map(|point| (*p, point))).collect()
    }

    /// The broker took these points.
    pub fn committed(&mut self, points: &[(i32, i64)]) {
        for (p, point) in points {
            if let Some(o) = self.parts.get_mut(p) {
                o.committed(*point);
            }
        }
    }

    /// Each partition's last committed offset (the next message to read after a restart).
    pub fn committed_points(&self) -> Vec<(i32, i64)> {
        self.parts.iter().filter_map(|(p, o)| o.committed_offset().map(|c| (*p, c))).collect()
    }

    /// Messages received and not finished.
    pub fn pending(&self) -> usize {
        self.parts.values().map(PartitionOffsets::pending).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_below_the_first_unfinished_message() {
        let mut p = PartitionOffsets::default();
        assert_eq!(p.commit_point(), None);
        for o in 10..15 {
            p.received(o);
        }
        assert_eq!(p.commit_point(), Some(10));
        p.done(11);
        p.done(12);
        assert_eq!(p.commit_point(), Some(10), "10 is still in progress");
        p.done(10);
        assert_eq!(p.commit_point(), Some(13));
        p.committed(13);
        assert_eq!(p.commit_point(), None, "nothing new to commit");
        p.done(13);
        p.done(14);
        assert_eq!(p.commit_point(), Some(15), "all done: commit past the last");
        assert_eq!(p.pending(), 0);
    }

    #[test]
    fn each_partition_commits_on_its_own_and_a_revoked_one_is_forgotten() {
        let mut c = CommitPoints::default();
        for o in 0..4 {
            c.received(0, o);
            c.received(1, 100 + o);
        }
        c.done(0, 0);
        c.done(0, 1);
        c.done(1, 101);
        let mut due = c.due();
        due.sort_unstable();
        assert_eq!(due, vec![(0, 2), (1, 100)], "each below its first unfinished message");
        c.committed(&due);
        assert!(c.due().is_empty(), "nothing moved since");
        assert_eq!(c.pending(), 5);
        c.revoked(&[1]);
        assert_eq!(c.pending(), 2, "the revoked partition's messages are its next owner's");
        c.done(1, 100);
        assert!(c.due().is_empty(), "a late finish of a revoked partition commits nothing");
        assert_eq!(c.committed_points(), vec![(0, 2)]);
        c.received(1, 102);
        assert_eq!(c.due(), vec![(1, 102)], "a partition that comes back starts where it is read again");
    }
}
