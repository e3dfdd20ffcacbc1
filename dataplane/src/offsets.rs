//! Which offsets of a partition may be committed: at-least-once means committing only up to the
//! first message whose outcome event the broker has not acknowledged yet.

use std::collections::BTreeSet;

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

    pub fn committed(&mut self, point: i64) {
        self.committed = Some(point);
    }

    /// The last offset committed (`None` before the first commit).
    pub fn committed_offset(&self) -> Option<i64> {
        self.committed
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
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
}
