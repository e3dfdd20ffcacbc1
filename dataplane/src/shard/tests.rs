//! The shard's loop without a broker: a source of the tests' own (rebalances, pauses, commit
//! points), the in-process sink, a lease over the in-process limiter, and calls that wait on
//! futures ([`OverNetwork`]: the path a real provider takes).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use dialer_limiter::{Backend, LeaseDriver, LocalBackend};
use uuid::Uuid;

use dialer_bus::offsets::CommitPoints;
use dialer_bus::status::MemoryStatusSink;
use dialer_testkit::fixtures::Dispatch;
use tokio::sync::mpsc;

use super::*;
use crate::ProviderSettings;
use crate::provider::{CallFuture, MockProvider, OverNetwork, Tracker};

/// What happened, in order, as the tests' source and provider saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Placed(Uuid),
    Ended(Uuid),
    Done(i32, i64),
    Revoked(Vec<i32>),
    Paused(i32),
    Resumed(i32),
    Commit(Vec<(i32, i64)>),
    /// Another shard let go of a partition's journal (see the test that uses it).
    LetGo(i32),
}

type Log = Rc<RefCell<Vec<Step>>>;

/// A dispatch source of batches given in advance, with rebalances handed out after a given
/// batch, and real commit points.
struct Script {
    batches: VecDeque<Vec<Delivery>>,
    /// Once this many calls were placed, these partitions are revoked (noted between fetches,
    /// as a consumer's poll notes a rebalance).
    revoke_after: Option<(usize, Vec<i32>)>,
    moved: Vec<Moved>,
    offsets: CommitPoints,
    log: Log,
    /// A pause before each batch but the first.
    gap: Duration,
    /// When the next batch may come (kept across a cancelled `recv`).
    next_at: Option<tokio::time::Instant>,
}

impl DispatchSource for Script {
    async fn recv(&mut self, out: &mut Vec<Delivery>, _max: usize) -> Result<bool, FetchError> {
        if self.batches.is_empty() {
            // Like a consumer with nothing to read: never returns.
            return std::future::pending().await;
        }
        if let Some(at) = self.next_at {
            tokio::time::sleep_until(at).await;
        }
        self.next_at = Some(tokio::time::Instant::now() + self.gap);
        let batch = self.batches.pop_front().expect("not empty");
        for d in &batch {
            self.offsets.received(d.partition, d.offset);
        }
        out.extend(batch);
        Ok(true)
    }

    fn take_moved(&mut self) -> Vec<Moved> {
        let placed = self.log.borrow().iter().filter(|s| matches!(s, Step::Placed(_))).count();
        if let Some((after, ps)) = self.revoke_after.take_if(|(after, _)| placed >= *after) {
            debug_assert!(placed >= after);
            self.moved.push(Moved::Revoked(ps));
        }
        let moved = std::mem::take(&mut self.moved);
        for m in &moved {
            if let Moved::Revoked(ps) = m {
                self.offsets.revoked(ps);
                self.log.borrow_mut().push(Step::Revoked(ps.clone()));
            }
        }
        moved
    }

    fn done(&mut self, partition: i32, offset: i64) {
        self.log.borrow_mut().push(Step::Done(partition, offset));
        self.offsets.done(partition, offset);
    }

    fn pause(&mut self, partition: i32) {
        self.log.borrow_mut().push(Step::Paused(partition));
    }

    fn resume(&mut self, partition: i32) {
        self.log.borrow_mut().push(Step::Resumed(partition));
    }

    fn commit(&mut self) -> Committed {
        let due = self.offsets.due();
        if !due.is_empty() {
            self.offsets.committed(&due);
            let mut sorted = due;
            sorted.sort_unstable();
            self.log.borrow_mut().push(Step::Commit(sorted));
        }
        Committed::Points(self.offsets.committed_points())
    }

    fn commit_sync(&mut self) {
        let _ = self.commit();
    }

    fn dead_letter_origin(&self) -> Option<&str> {
        Some("dispatch")
    }
}

/// The mock's calls as futures, each placement and end logged.
struct Logged {
    inner: OverNetwork<MockProvider>,
    log: Log,
}

impl Provider for Logged {
    fn place_call(&self, msg: &DispatchMessage) -> CallFuture {
        let (log, id) = (self.log.clone(), msg.call_id);
        log.borrow_mut().push(Step::Placed(id));
        let call = self.inner.place_call(msg);
        Box::pin(async move {
            let outcome = call.await;
            log.borrow_mut().push(Step::Ended(id));
            outcome
        })
    }
}

const CAMPAIGN: u128 = 7;

/// Call `n` of partition `n % partitions`, at offset `n / partitions`.
fn delivery(n: u128, partitions: i32, cap: u32) -> Delivery {
    let msg = Dispatch::call(n).campaign(Uuid::from_u128(CAMPAIGN)).cap(cap).build();

    let partition = (n % partitions as u128) as i32;
    Delivery { partition, offset: (n / partitions as u128) as i64, msg: Ok(msg) }
}

struct Run {
    report: ShardReport,
    log: Vec<Step>,
    events: Vec<StatusEvent>,
    tracker: Arc<Tracker>,
}

/// Runs a shard over `script` until `expect_outcomes` outcome events are out (0: until none
/// comes for half a second).
async fn run(script: Script, tuning: Tuning, cap: u32, expect_outcomes: usize) -> Run {
    run_with(script, tuning, cap, expect_outcomes, None, (1, 15)).await
}

/// [`run`] with an attempt journal, and calls of `call_ms` (shortest, longest).
async fn run_with(
    script: Script,
    tuning: Tuning,
    cap: u32,
    expect_outcomes: usize,
    journal: Option<Journal>,
    call_ms: (u64, u64),
) -> Run {
    let log = script.log.clone();
    let tracker = Tracker::new(1000);
    tracker.set_campaign_cap(Uuid::from_u128(CAMPAIGN), cap);
    let mock = ProviderSettings {
        min_call: Duration::from_millis(call_ms.0),
        max_call: Duration::from_millis(call_ms.1),
        max_ring: Duration::ZERO,
        ..ProviderSettings::default()
    };
    let provider = Logged { inner: OverNetwork(MockProvider::new(mock, tracker.clone(), 0)), log: log.clone() };
    let backend = Backend::Local(Arc::new(LocalBackend::default()));
    let (driver, lease) = LeaseDriver::new(backend, "test".into(), tuning.lease.clone(), 1000);
    let (stop_driver, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let driver = tokio::task::spawn_local(driver.run(async move {
        let _ = stop_rx.await;
    }));
    let (tx, mut rx) = mpsc::channel(100_000);
    let health = Arc::new(Health::new(1));
    let cfg = ShardConfig { index: 0, tuning, per_campaign_ceiling: 1000, health };
    let (stop, stop_shard) = watch::channel(false);
    let shard = tokio::task::spawn_local(
        Shard::new(cfg, script, MemoryStatusSink(tx), lease, provider, journal).run(stop_shard),
    );
    let mut events = Vec::new();
    let mut outcomes = 0;
    loop {
        let wait = if expect_outcomes == 0 { Duration::from_millis(500) } else { Duration::from_secs(20) };
        let ev = match tokio::time::timeout(wait, rx.recv()).await {
            Ok(ev) => ev.expect("open"),
            Err(_) if expect_outcomes == 0 => break,
            Err(_) => panic!("only {outcomes} of {expect_outcomes} outcomes came"),
        };
        outcomes += usize::from(ev.kind != EventKind::Started);
        events.push(ev);
        if expect_outcomes > 0 && outcomes >= expect_outcomes {
            break;
        }
    }
    stop.send(true).expect("shard runs");
    let report = shard.await.expect("shard");
    let _ = stop_driver.send(());
    let _ = driver.await;
    while let Ok(ev) = rx.try_recv() {
        events.push(ev);
    }
    let log = log.borrow().clone();
    Run { report, log, events, tracker }
}

fn script(batches: Vec<Vec<Delivery>>, revoke_after: Option<(usize, Vec<i32>)>) -> Script {
    Script {
        batches: batches.into(),
        revoke_after,
        moved: Vec::new(),
        offsets: CommitPoints::default(),
        log: Rc::default(),
        gap: Duration::ZERO,
        next_at: None,
    }
}

fn tuning() -> Tuning {
    let mut t = Tuning::default();
    t.kafka.commit_every_ms = 5;
    t.lease.refresh_every = Duration::from_millis(50);
    t.buffers.pause_partition_at = 100;
    t.buffers.resume_partition_at = 50;
    t
}

fn local<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    tokio::task::LocalSet::new().block_on(&rt, f)
}

#[test]
fn calls_that_wait_on_futures_are_each_dialled_once_within_the_cap_and_finish_their_messages() {
    local(async {
        let n = 600u128;
        let batches = vec![(0..n).map(|i| delivery(i, 4, 20)).collect()];
        let r = run(script(batches, None), tuning(), 20, n as usize).await;
        let placed: Vec<Uuid> =
            r.log.iter().filter_map(|s| if let Step::Placed(c) = s { Some(*c) } else { None }).collect();
        assert_eq!(placed.len(), n as usize, "every message dialled");
        assert_eq!(placed.iter().collect::<HashSet<_>>().len(), n as usize, "none twice");
        assert_eq!(r.tracker.violations(), 0, "the cap held");
        assert_eq!(r.tracker.campaign_max(Uuid::from_u128(CAMPAIGN)), 20, "the cap was used");
        assert_eq!(r.report.dialed, n as u64);
        let mut outcome_of: HashMap<Uuid, usize> = HashMap::new();
        for ev in r.events.iter().filter(|e| e.kind != EventKind::Started) {
            *outcome_of.entry(ev.call_id).or_default() += 1;
        }
        assert!(outcome_of.len() == n as usize && outcome_of.values().all(|k| *k == 1), "one outcome per call");
        // The last commit of each partition is past its last message: all finished.
        let mut last: HashMap<i32, i64> = HashMap::new();
        for s in &r.log {
            if let Step::Commit(points) = s {
                last.extend(points.iter().copied());
            }
        }
        assert_eq!(last, (0..4).map(|p| (p, n as i64 / 4)).collect::<HashMap<_, _>>());
    });
}

#[test]
fn a_message_is_finished_only_after_its_call_ended_and_commits_never_pass_an_unfinished_one() {
    local(async {
        let n = 400u128;
        let batches = vec![(0..n).map(|i| delivery(i, 1, 10)).collect()];
        let r = run(script(batches, None), tuning(), 10, n as usize).await;
        let mut ended: HashSet<i64> = HashSet::new();
        let mut done: HashSet<i64> = HashSet::new();
        let (mut commits, mut ended_order) = (0, Vec::new());
        for s in &r.log {
            match s {
                Step::Ended(c) => {
                    ended.insert(c.as_u128() as i64);
                    ended_order.push(c.as_u128() as i64);
                }
                Step::Done(_, o) => {
                    assert!(ended.contains(o), "message {o} finished before its call ended");
                    assert!(done.insert(*o), "message {o} finished twice");
                }
                Step::Commit(points) => {
                    commits += 1;
                    let point = points[0].1;
                    assert!((0..point).all(|o| done.contains(&o)), "commit {point} passes an unfinished message");
                }
                _ => {}
            }
        }
        assert_eq!(done.len(), n as usize, "every message finished once, by its outcome (not its start)");
        assert!(commits > 1, "commits follow the calls as they end, not only at the stop: {commits}");
        assert!(
            !ended_order.windows(2).all(|w| w[0] < w[1]),
            "calls ended in offset order: the commit check proves nothing"
        );
    });
}

#[test]
fn a_revoked_partition_s_waiting_messages_are_not_dialled_and_the_others_are() {
    local(async {
        let (n, cap) = (300u128, 5);
        let batches = vec![(0..n).map(|i| delivery(i, 2, cap)).collect()];
        // The rebalance comes once 20 calls were placed, while most still wait.
        let r = run(script(batches, Some((20, vec![1]))), tuning(), cap, 0).await;
        let at = r.log.iter().position(|s| matches!(s, Step::Revoked(_))).expect("the rebalance was taken");
        let on_1 = |s: &Step| matches!(s, Step::Placed(c) if c.as_u128() % 2 == 1);
        assert!(r.log[..at].iter().any(on_1), "partition 1 dialled before its revocation");
        assert!(!r.log[at..].iter().any(on_1), "nothing of partition 1 dialled after its revocation");
        let placed_on_0 = r.log.iter().filter(|s| matches!(s, Step::Placed(c) if c.as_u128() % 2 == 0)).count();
        assert_eq!(placed_on_0, n as usize / 2, "the kept partition's messages are all dialled");
        assert!(r.report.dialed < n as u64, "the revoked partition's waiting messages were dropped");
        assert_eq!(r.tracker.violations(), 0);
    });
}

#[test]
fn a_partition_with_too_many_waiting_messages_is_paused_then_resumed() {
    local(async {
        let (n, cap) = (300u128, 10);
        let batches = vec![(0..n).map(|i| delivery(i, 1, cap)).collect()];
        let r = run(script(batches, None), tuning(), cap, n as usize).await;
        let paused = r.log.iter().position(|s| *s == Step::Paused(0)).expect("300 waiting > pause_partition_at 100");
        let resumed = r.log.iter().position(|s| *s == Step::Resumed(0)).expect("resumed at 50");
        assert!(paused < resumed);
        let placed_before_resume = r.log[..resumed].iter().filter(|s| matches!(s, Step::Placed(_))).count();
        assert!((250..260).contains(&placed_before_resume), "resumed once 50 waited: {placed_before_resume}");
    });
}

/// A consumer group gave this shard partition 0 while its previous owner (another shard's
/// journal, holding the partition's lock) had not let go yet: nothing of partition 0 is dialled
/// until it does, partition 1 dials meanwhile; then every message of partition 0 is dialled
/// except the attempt the previous owner started, which is reported `unknown_outcome`.
#[test]
fn a_partition_whose_journal_another_shard_holds_is_not_dialled_until_it_lets_go() {
    local(async {
        let dir = tempfile::tempdir().expect("tmp");
        let mut previous = Journal::open(dir.path(), true).expect("open");
        let started_there = (Uuid::from_u128(0), 1);
        previous.started(0, started_there, crate::journal::Msg::new(0, 0)).expect("started");
        previous.commit().expect("commit");
        let journal = Journal::open(dir.path(), true).expect("open");
        let (n, cap) = (40u128, 5);
        let s = script(vec![(0..n).map(|i| delivery(i, 2, cap)).collect()], None);
        let log = s.log.clone();
        let let_go = tokio::task::spawn_local(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            previous.revoked(&[0]).expect("released");
            log.borrow_mut().push(Step::LetGo(0));
        });
        let r = run_with(s, tuning(), cap, n as usize, Some(journal), (1, 15)).await;
        let_go.await.expect("let go");
        let at = r.log.iter().position(|s| *s == Step::LetGo(0)).expect("let go");
        let on = |p: u128| move |s: &&Step| matches!(s, Step::Placed(c) if c.as_u128() % 2 == p);
        assert_eq!(r.log[..at].iter().filter(on(0)).count(), 0, "nothing of partition 0 before the let-go");
        assert_eq!(r.log[..at].iter().filter(on(1)).count(), n as usize / 2, "partition 1 did not wait");
        assert!(r.log[..at].contains(&Step::Paused(0)), "the held partition is not fetched meanwhile");
        assert!(r.log[at..].contains(&Step::Resumed(0)), "and fetched again after");
        let placed_0: HashSet<Uuid> =
            r.log[at..].iter().filter_map(|s| if let Step::Placed(c) = s { Some(*c) } else { None }).collect();
        let expect: HashSet<Uuid> = (2..n).step_by(2).map(Uuid::from_u128).collect();
        assert_eq!(placed_0, expect, "each other message of partition 0 dialled once, after the let-go");
        let unknown: Vec<&StatusEvent> =
            r.events.iter().filter(|e| e.reason.as_deref() == Some("unknown_outcome")).collect();
        assert_eq!(unknown.len(), 1, "one unknown outcome: {unknown:?}");
        assert_eq!(
            (unknown[0].call_id, unknown[0].attempt),
            started_there,
            "the attempt started by the previous owner"
        );
        assert_eq!(r.report.held_back, 1);
    });
}

/// The journal's disk is full (`/dev/full`): no start can be made durable, so none is dialled,
/// none is reported failed (its attempt would be used up); each message waits in the shard and
/// tries again every second until its deadline passes, then it is reported expired (which gives
/// the attempt back) and finished.
#[test]
fn starts_the_journal_cannot_record_wait_undialled_and_expire_at_their_deadline() {
    local(async {
        let dir = tempfile::tempdir().expect("tmp");
        let mut journal = Journal::open(dir.path(), true).expect("open");
        journal.write_to(0, std::path::Path::new("/dev/full")).expect("/dev/full");
        let (n, cap) = (10u128, 5);
        let deadline = now_ms() + 2_500;
        let batch: Vec<Delivery> = (0..n)
            .map(|i| {
                let msg = Dispatch::call(i).campaign(Uuid::from_u128(CAMPAIGN)).cap(cap).deadline_ms(deadline).build();
                Delivery { partition: 0, offset: i as i64, msg: Ok(msg) }
            })
            .collect();
        let r = run_with(script(vec![batch], None), tuning(), cap, n as usize, Some(journal), (1, 15)).await;
        assert!(!r.log.iter().any(|s| matches!(s, Step::Placed(_))), "nothing dialled");
        let outcomes: Vec<&StatusEvent> = r.events.iter().filter(|e| e.kind != EventKind::Started).collect();
        assert!(outcomes.iter().all(|e| e.kind == EventKind::Expired), "expired, none failed: {outcomes:?}");
        let expired: HashSet<Uuid> = outcomes.iter().map(|e| e.call_id).collect();
        assert_eq!(expired, (0..n).map(Uuid::from_u128).collect(), "each message once");
        assert!(r.report.journal_held >= 2 * n as u64, "tried again while it waited: {}", r.report.journal_held);
        assert!(r.report.journal_held <= 4 * n as u64, "about once a second: {}", r.report.journal_held);
    });
}

/// A campaign that used its whole turn and has more to start gets its next turn at once, not
/// at the shard's next event: with calls that outlast the test and no tick due, every message
/// starts (in turns of `quantum`), not only the first turn's.
#[test]
fn a_campaign_with_more_to_start_gets_its_next_turn_without_waiting_for_an_event() {
    local(async {
        let (n, cap) = (200u128, 1000);
        let mut t = tuning();
        t.buffers.quantum = 16;
        t.kafka.commit_every_ms = 60_000;
        t.timings.heartbeat_ms = 60_000;
        t.shutdown.grace_ms = 100;
        let batches = vec![(0..n).map(|i| delivery(i, 1, cap)).collect()];
        let r = run_with(script(batches, None), t, cap, 0, None, (3_000, 3_000)).await;
        let placed = r.log.iter().filter(|s| matches!(s, Step::Placed(_))).count();
        assert_eq!(placed, n as usize, "every message started within the quiet half second, 16 per turn");
    });
}

/// A control plane that could not confirm a claim's messages publishes them again (same
/// attempt, same deadline, later offsets). A second message that waits beside the first, and a
/// third that comes after the first was dialled, resolved and committed past, are never dialled:
/// each call is placed once, and every message's offset is finished once, so the commits pass
/// them all.
#[test]
fn a_republished_message_is_never_dialled_a_second_time_and_every_offset_is_finished() {
    local(async {
        let dir = tempfile::tempdir().expect("tmp");
        let journal = Journal::open(dir.path(), true).expect("open");
        let (n, cap) = (40u128, 5);
        let deadline = now_ms() + 600_000;
        let message = |call: u128, offset: u128| {
            let msg = Dispatch::call(call).campaign(Uuid::from_u128(CAMPAIGN)).cap(cap).deadline_ms(deadline).build();
            Delivery { partition: 0, offset: offset as i64, msg: Ok(msg) }
        };
        let first: Vec<Delivery> = (0..n).flat_map(|i| [message(i, i), message(i, n + i)]).collect();
        let again: Vec<Delivery> = (0..n).map(|i| message(i, 2 * n + i)).collect();
        let mut s = script(vec![first, again], None);
        s.gap = Duration::from_millis(200);
        let r = run_with(s, tuning(), cap, 0, Some(journal), (1, 15)).await;
        let mut placed: HashMap<Uuid, usize> = HashMap::new();
        for s in &r.log {
            if let Step::Placed(c) = s {
                *placed.entry(*c).or_default() += 1;
            }
        }
        assert_eq!(placed.len(), n as usize, "every call dialled");
        assert!(placed.values().all(|k| *k == 1), "none twice: {placed:?}");
        let mut done: HashMap<i64, usize> = HashMap::new();
        for s in &r.log {
            if let Step::Done(_, o) = s {
                *done.entry(*o).or_default() += 1;
            }
        }
        assert_eq!(done.len(), 3 * n as usize, "every message finished");
        assert!(done.values().all(|k| *k == 1), "each once");
        let last = r.log.iter().rev().find_map(|s| if let Step::Commit(p) = s { Some(p.clone()) } else { None });
        assert_eq!(last, Some(vec![(0, 3 * n as i64)]), "the commits passed every message");
        assert_eq!(r.report.duplicates, n as u64, "the second messages, found before or at their start");
        assert_eq!(r.report.redelivered_done, n as u64, "the third ones, after the first was resolved");
        let outcomes = r.events.iter().filter(|e| e.kind != EventKind::Started).count();
        assert_eq!(outcomes, n as usize, "one outcome per call");
    });
}
