//! A shard's waiting messages: one queue per campaign, a ready ring of campaigns that may start
//! a call, the parked campaigns that wait for a token, and the messages not due yet. Pure: the
//! lease is reached through [`Tokens`], so everything here is unit-tested without I/O.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::Instant;

use dialer_domain::messages::DispatchMessage;
use dialer_limiter::{Ask, LeaseHandle, effective_campaign_cap};
use uuid::Uuid;

/// The shard's own maps (campaign queues, partition counts) hash with foldhash: their keys are
/// ours, not an attacker's, so SipHash's cost on every dial buys nothing.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// A dispatch message waiting in the shard.
pub(crate) struct Waiting {
    pub msg: DispatchMessage,
    pub partition: i32,
    pub offset: i64,
    pub received: Instant,
}

/// The shard's side of its lease: a token for a campaign's next call, and how many of the
/// campaign's calls wait here (the demand the limiter divides the caps by).
pub(crate) trait Tokens {
    fn try_acquire(&self, campaign: Uuid, ask: Ask) -> bool;
    fn set_waiting(&self, campaign: Uuid, waiting: u32);
}

impl Tokens for LeaseHandle {
    fn try_acquire(&self, campaign: Uuid, ask: Ask) -> bool {
        LeaseHandle::try_acquire(self, campaign, ask)
    }

    fn set_waiting(&self, campaign: Uuid, waiting: u32) {
        LeaseHandle::set_waiting(self, campaign, waiting);
    }
}

/// What one round of turns took out of the queues.
#[derive(Default)]
pub(crate) struct Taken {
    /// Calls that got a token: to journal and dial.
    pub started: Vec<Waiting>,
    /// Messages whose deadline passed before their turn: reported expired, never dialled.
    pub expired: Vec<Waiting>,
    /// The partition of every message that left (for the pause/resume accounting).
    pub left: Vec<i32>,
}

#[derive(Default)]
pub(crate) struct Queues {
    by_campaign: FastMap<Uuid, VecDeque<Waiting>>,
    /// Campaigns with waiting calls that may be able to start one.
    ready: VecDeque<Uuid>,
    in_ready: FastSet<Uuid>,
    /// Campaigns with waiting calls but no token: woken by a call end or a lease update.
    parked: FastSet<Uuid>,
    /// Not due yet, by `not_before_ms`.
    delayed: BinaryHeap<Reverse<(u64, u64)>>,
    delayed_msgs: FastMap<u64, Waiting>,
    seq: u64,
    len: usize,
    per_partition: FastMap<i32, usize>,
}

impl Queues {
    /// Messages waiting (due or not).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Messages of `partition` waiting.
    pub fn of_partition(&self, partition: i32) -> usize {
        self.per_partition.get(&partition).copied().unwrap_or(0)
    }

    pub fn any_parked(&self) -> bool {
        !self.parked.is_empty()
    }

    /// Some campaign used its whole turn and has more to start (it was not refused a token).
    pub fn any_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    pub fn push(&mut self, w: Waiting, now_ms: u64) {
        self.len += 1;
        *self.per_partition.entry(w.partition).or_default() += 1;
        if w.msg.not_before_ms > now_ms {
            self.seq += 1;
            self.delayed.push(Reverse((w.msg.not_before_ms, self.seq)));
            self.delayed_msgs.insert(self.seq, w);
        } else {
            self.enqueue(w);
        }
    }

    fn enqueue(&mut self, w: Waiting) {
        let c = w.msg.campaign_id;
        self.by_campaign.entry(c).or_default().push_back(w);
        if !self.parked.contains(&c) && self.in_ready.insert(c) {
            self.ready.push_back(c);
        }
    }

    /// Moves delayed messages that are due into their campaign queues.
    pub fn release_due(&mut self, now_ms: u64) {
        while let Some(Reverse((t, seq))) = self.delayed.peek().copied() {
            if t > now_ms {
                break;
            }
            self.delayed.pop();
            if let Some(w) = self.delayed_msgs.remove(&seq) {
                self.enqueue(w);
            }
        }
    }

    /// When the next delayed message is due (wall-clock ms).
    pub fn next_due(&self) -> Option<u64> {
        self.delayed.peek().map(|Reverse((t, _))| *t)
    }

    /// One of `c`'s calls ended: it may start another.
    pub fn wake(&mut self, c: Uuid) {
        if self.parked.remove(&c) && self.in_ready.insert(c) {
            self.ready.push_back(c);
        }
    }

    /// The lease changed: every parked campaign tries again.
    pub fn wake_all(&mut self) {
        for c in std::mem::take(&mut self.parked) {
            if self.in_ready.insert(c) {
                self.ready.push_back(c);
            }
        }
    }

    /// Gives every ready campaign one turn, in order: its expired messages leave, then up to
    /// `quantum` calls start while its lease hands out tokens; a campaign refused a token is
    /// parked, one with more to start goes to the back of the ring.
    pub fn take_turns(&mut self, now_ms: u64, quantum: usize, ceiling: u32, tokens: &impl Tokens, out: &mut Taken) {
        for _ in 0..self.ready.len() {
            let Some(c) = self.ready.pop_front() else { break };
            self.in_ready.remove(&c);
            self.take_turn(c, now_ms, quantum, ceiling, tokens, out);
        }
    }

    fn take_turn(&mut self, c: Uuid, now_ms: u64, quantum: usize, ceiling: u32, tokens: &impl Tokens, out: &mut Taken) {
        let Some(queue) = self.by_campaign.get_mut(&c) else { return };
        let (mut started, mut parked) = (0, false);
        while started < quantum {
            let Some(front) = queue.front() else { break };
            if front.msg.deadline_ms != 0 && front.msg.deadline_ms < now_ms {
                let w = queue.pop_front().expect("front exists");
                out.left.push(w.partition);
                out.expired.push(w);
                continue;
            }
            let ask = Ask {
                cap: effective_campaign_cap(front.msg.campaign_cap, ceiling),
                weight: front.msg.campaign_weight,
                queued: queue.len().try_into().unwrap_or(u32::MAX),
            };
            if !tokens.try_acquire(c, ask) {
                parked = true;
                break;
            }
            let w = queue.pop_front().expect("front exists");
            out.left.push(w.partition);
            out.started.push(w);
            started += 1;
        }
        if queue.is_empty() {
            self.by_campaign.remove(&c);
            tokens.set_waiting(c, 0);
        } else if parked {
            self.parked.insert(c);
        } else {
            self.in_ready.insert(c);
            self.ready.push_back(c);
        }
    }

    /// Drops every waiting message of `partition` (a rebalance took it away: its next owner
    /// reads them again from the committed offset); returns how many.
    pub fn purge_partition(&mut self, partition: i32, tokens: &impl Tokens) -> usize {
        let mut n = 0;
        for (c, queue) in self.by_campaign.iter_mut() {
            let before = queue.len();
            queue.retain(|w| w.partition != partition);
            n += before - queue.len();
            if queue.len() < before {
                tokens.set_waiting(*c, queue.len().try_into().unwrap_or(u32::MAX));
            }
        }
        self.by_campaign.retain(|_, q| !q.is_empty());
        let before = self.delayed_msgs.len();
        self.delayed_msgs.retain(|_, w| w.partition != partition);
        n += before - self.delayed_msgs.len();
        self.len -= n;
        self.per_partition.remove(&partition);
        n
    }

    /// One message left the waiting state; returns the partition's remaining count.
    pub fn taken(&mut self, partition: i32) -> usize {
        self.len -= 1;
        let n = self.per_partition.entry(partition).or_default();
        *n = n.saturating_sub(1);
        *n
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use dialer_testkit::fixtures::Dispatch;

    use super::*;

    /// A lease that grants each campaign a fixed number of tokens, and records the demand.
    #[derive(Default)]
    struct Grants {
        left: RefCell<HashMap<Uuid, u32>>,
        asked: RefCell<Vec<(Uuid, Ask)>>,
        waiting: RefCell<HashMap<Uuid, u32>>,
    }

    impl Grants {
        fn give(&self, c: Uuid, n: u32) {
            *self.left.borrow_mut().entry(c).or_default() += n;
        }
    }

    impl Tokens for Grants {
        fn try_acquire(&self, c: Uuid, ask: Ask) -> bool {
            self.asked.borrow_mut().push((c, ask));
            let mut left = self.left.borrow_mut();
            let n = left.entry(c).or_default();
            if *n == 0 {
                return false;
            }
            *n -= 1;
            true
        }

        fn set_waiting(&self, c: Uuid, waiting: u32) {
            self.waiting.borrow_mut().insert(c, waiting);
        }
    }

    fn camp(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn msg(campaign: u128, call: u128, partition: i32, deadline_ms: u64, not_before_ms: u64) -> Waiting {
        Waiting {
            msg: Dispatch::call(call)
                .campaign(camp(campaign))
                .cap(500)
                .weight(2)
                .deadline_ms(deadline_ms)
                .not_before_ms(not_before_ms)
                .build(),
            partition,
            offset: call as i64,
            received: Instant::now(),
        }
    }

    fn calls(ws: &[Waiting]) -> Vec<u128> {
        ws.iter().map(|w| w.msg.call_id.as_u128()).collect()
    }

    #[test]
    fn campaigns_take_turns_of_at_most_a_quantum() {
        let mut q = Queues::default();
        for i in 0..5 {
            q.push(msg(1, 100 + i, 0, 0, 0), 0);
            q.push(msg(2, 200 + i, 1, 0, 0), 0);
        }
        let g = Grants::default();
        g.give(camp(1), 100);
        g.give(camp(2), 100);
        let mut out = Taken::default();
        q.take_turns(0, 2, 1000, &g, &mut out);
        assert_eq!(calls(&out.started), vec![100, 101, 200, 201], "two each, in turn");
        q.take_turns(0, 2, 1000, &g, &mut out);
        assert_eq!(calls(&out.started)[4..], [102, 103, 202, 203]);
        q.take_turns(0, 2, 1000, &g, &mut out);
        assert_eq!(out.started.len(), 10);
        assert_eq!(out.left.len(), 10);
        assert_eq!(g.waiting.borrow().get(&camp(1)), Some(&0), "an emptied queue tells the lease");
        let (_, ask) = g.asked.borrow()[0];
        assert_eq!((ask.cap, ask.weight, ask.queued), (500, 2, 5), "the ask carries cap, weight, demand");
    }

    #[test]
    fn the_operator_ceiling_bounds_the_cap_a_message_asks_for() {
        let mut q = Queues::default();
        q.push(msg(1, 1, 0, 0, 0), 0);
        let g = Grants::default();
        g.give(camp(1), 1);
        q.take_turns(0, 8, 100, &g, &mut Taken::default());
        assert_eq!(g.asked.borrow()[0].1.cap, 100, "min(campaign cap 500, ceiling 100)");
    }

    #[test]
    fn a_campaign_without_a_token_is_parked_until_woken_and_others_go_on() {
        let mut q = Queues::default();
        for i in 0..3 {
            q.push(msg(1, 100 + i, 0, 0, 0), 0);
            q.push(msg(2, 200 + i, 0, 0, 0), 0);
        }
        let g = Grants::default();
        g.give(camp(1), 1);
        g.give(camp(2), 3);
        let mut out = Taken::default();
        q.take_turns(0, 64, 1000, &g, &mut out);
        assert_eq!(calls(&out.started), vec![100, 200, 201, 202], "no head-of-line blocking");
        assert!(q.any_parked());
        let asks = g.asked.borrow().len();
        q.take_turns(0, 64, 1000, &g, &mut out);
        assert_eq!(g.asked.borrow().len(), asks, "a parked campaign is not polled");
        g.give(camp(1), 1);
        q.wake(camp(1));
        q.take_turns(0, 64, 1000, &g, &mut out);
        assert_eq!(calls(&out.started)[4..], [101], "a call end wakes its campaign");
        g.give(camp(1), 5);
        q.wake_all();
        q.take_turns(0, 64, 1000, &g, &mut out);
        assert_eq!(calls(&out.started)[5..], [102], "a lease update wakes every parked campaign");
        assert_eq!(q.len(), 6, "len counts until taken() is called");
        for w in &out.started {
            q.taken(w.partition);
        }
        assert_eq!((q.len(), q.of_partition(0)), (0, 0));
    }

    #[test]
    fn expired_messages_leave_without_a_token_and_delayed_ones_wait_for_their_time() {
        let mut q = Queues::default();
        q.push(msg(1, 1, 0, 50, 0), 100);
        q.push(msg(1, 2, 0, 0, 0), 100);
        q.push(msg(1, 3, 0, 0, 500), 100);
        assert_eq!(q.next_due(), Some(500));
        let g = Grants::default();
        g.give(camp(1), 10);
        let mut out = Taken::default();
        q.take_turns(100, 64, 1000, &g, &mut out);
        assert_eq!((calls(&out.expired), calls(&out.started)), (vec![1], vec![2]), "past its deadline: expired");
        q.release_due(499);
        q.take_turns(499, 64, 1000, &g, &mut out);
        assert_eq!(out.started.len(), 1, "not due before its time");
        q.release_due(500);
        q.take_turns(500, 64, 1000, &g, &mut out);
        assert_eq!(calls(&out.started), vec![2, 3]);
        assert_eq!(g.asked.borrow().len(), 2, "an expired message takes no token");
    }

    #[test]
    fn a_revoked_partition_s_messages_are_dropped_due_or_not() {
        let mut q = Queues::default();
        q.push(msg(1, 1, 0, 0, 0), 0);
        q.push(msg(1, 2, 1, 0, 0), 0);
        q.push(msg(1, 3, 1, 0, 900), 0);
        q.push(msg(2, 4, 1, 0, 0), 0);
        let g = Grants::default();
        assert_eq!(q.purge_partition(1, &g), 3);
        assert_eq!((q.len(), q.of_partition(1), q.of_partition(0)), (1, 0, 1));
        assert_eq!(g.waiting.borrow().get(&camp(1)), Some(&1), "the lease learns the smaller demand");
        g.give(camp(1), 10);
        g.give(camp(2), 10);
        let mut out = Taken::default();
        q.release_due(1000);
        q.take_turns(1000, 64, 1000, &g, &mut out);
        assert_eq!(calls(&out.started), vec![1], "nothing of the revoked partition starts");
    }
}
