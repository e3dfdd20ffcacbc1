//! A large list on PostgreSQL loads on several connections at once, each part in its own
//! transaction, the campaign's row last (`dialer_store::campaigns::create_campaign_in_parts`):
//! the campaign appears whole or not at all, a failed load leaves no row behind, and the reaper
//! deletes a load whose process died mid-way. SQLite loads in one transaction (its writers take
//! turns), which `api.rs` covers on both stores.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{TimeDelta, Utc};
use dialer_control_plane::Store;
use dialer_control_plane::reaper::{Reaper, ReaperConfig};
use dialer_control_plane::scheduler::{ManualClock, SchedulerSettings};
use dialer_store::campaigns::{self, LOAD_ABANDONED_AFTER, LOAD_PART_MIN_TARGETS};
use dialer_store::{Conflict, Pool, StoreError};
use dialer_testkit::fixtures::{self, Backend};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::json;
use uuid::Uuid;

const LONGEST: std::time::Duration = std::time::Duration::from_secs(10);

fn pg(store: &Store) -> &sqlx::PgPool {
    match store.pool() {
        Pool::Postgres(p) => p,
        Pool::Sqlite(_) => panic!("these tests run on PostgreSQL"),
    }
}

async fn count(store: &Store, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pg(store)).await.expect(sql)
}

/// Rows of every table a load writes (calls, targets, unfinished loads, campaigns).
async fn rows(store: &Store) -> [i64; 4] {
    [
        count(store, "SELECT count(*) FROM calls").await,
        count(store, "SELECT count(*) FROM campaign_targets").await,
        count(store, "SELECT count(*) FROM target_loads").await,
        count(store, "SELECT count(*) FROM campaigns").await,
    ]
}

/// 100,000 targets load in four parts while a reader lists the campaigns and counts the call rows:
/// it sees the parts' rows arrive while no campaign is listed, and once the campaign is listed
/// every one of its calls is there. Then each number has one target and one pending call, the
/// calls' ids in list order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_loaded_in_parts_appears_whole_or_not_at_all() {
    let (store, _) = fixtures::store(Backend::Postgres).await;
    let n = 4 * LOAD_PART_MIN_TARGETS;
    let c = fixtures::new_campaign("parts", n, 10, json!([]));
    let done = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(watch(store.clone(), n as i64, done.clone()));
    let created = store.create_campaign(&c).await.expect("created");
    done.store(true, Ordering::SeqCst);
    let seen_partial = reader.await.expect("reader");
    assert!(seen_partial > 0, "the reader never saw a part loaded before the campaign appeared");

    assert_eq!(created.target_count, n as i64);
    let stats = store.stats(created.id).await.expect("stats");
    assert_eq!(stats, store.recount_stats(created.id).await.expect("recount"), "stats equal the rows");
    assert_eq!((stats.total_calls, stats.pending_calls), (n as i64, n as i64));
    let list: Vec<&str> = c.targets.iter().map(|t| t.phone_number.as_str()).collect();
    let by_call_id: Vec<String> =
        sqlx::query_scalar("SELECT phone_number FROM calls WHERE campaign_id = $1 AND status = 'pending' ORDER BY id")
            .bind(created.id)
            .fetch_all(pg(&store))
            .await
            .expect("calls");
    assert!(by_call_id == list, "one pending call per number, in list order (the order claims take them)");
    let mut targets: Vec<String> =
        sqlx::query_scalar("SELECT phone_number FROM campaign_targets WHERE campaign_id = $1")
            .bind(created.id)
            .fetch_all(pg(&store))
            .await
            .expect("targets");
    targets.sort_unstable();
    let mut wanted = list.clone();
    wanted.sort_unstable();
    assert!(targets == wanted, "one target row per number");
    assert_eq!(count(&store, "SELECT count(*) FROM target_loads").await, 0, "the load's row is removed with it");
}

/// Lists the campaigns, then counts the call rows, until `done`: a listed campaign must have all
/// `n` calls (the count runs after the listing). Returns how often it saw rows loaded while no
/// campaign was listed.
async fn watch(store: Store, n: i64, done: Arc<AtomicBool>) -> u32 {
    let mut seen_partial = 0;
    while !done.load(Ordering::SeqCst) {
        let listed = store.list_campaigns(None, 10).await.expect("list");
        let calls = count(&store, "SELECT count(*) FROM calls").await;
        match listed.as_slice() {
            [] if calls > 0 => seen_partial += 1,
            [] => {}
            [c] => assert_eq!(calls, n, "campaign {} listed with {calls} of its {n} calls", c.id),
            more => panic!("{} campaigns listed", more.len()),
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    seen_partial
}

/// A part that fails (a number PostgreSQL refuses: a NUL byte) fails the create after the other
/// parts committed: their rows are deleted, no campaign appears, and the name stays free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_part_leaves_no_row_and_the_name_free() {
    let (store, _) = fixtures::store(Backend::Postgres).await;
    let mut c = fixtures::new_campaign("fails", 3 * LOAD_PART_MIN_TARGETS, 10, json!([]));
    let last = c.targets.len() - 1;
    c.targets[last].phone_number.push('\0');
    let e = campaigns::create_campaign_in_parts(pg(&store), &c, 3).await.expect_err("a NUL byte is refused");
    assert!(e.is_refusal(), "{e:?}");
    assert_eq!(rows(&store).await, [0, 0, 0, 0], "calls, targets, loads, campaigns after the failed load");

    c.targets[last].phone_number.pop();
    let created = campaigns::create_campaign_in_parts(pg(&store), &c, 3).await.expect("the name is free");
    assert_eq!(created.target_count, c.targets.len() as i64);
    let n = c.targets.len() as i64;
    assert_eq!(rows(&store).await, [n, n, 0, 1]);
}

/// A load whose process died (begun, a part loaded, never finished) is deleted by the reaper's
/// sweep once [`LOAD_ABANDONED_AFTER`] has passed, not before; a load still running when that
/// happens fails at its end instead of showing a campaign without those rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_deletes_a_load_that_never_finished() {
    let (store, _) = fixtures::store(Backend::Postgres).await;
    let c = fixtures::new_campaign("abandoned", 1000, 10, json!([]));
    let (id, at) = (Uuid::now_v7(), Utc::now());
    campaigns::begin_load(pg(&store), id, at).await.expect("begun");
    let ids = campaigns::call_ids(600);
    campaigns::load_part(pg(&store), id, &c.targets[..600], &ids, at).await.expect("a part");

    let clock = ManualClock::new(at + TimeDelta::seconds(LOAD_ABANDONED_AFTER.as_secs() as i64 - 1));
    let reaper = Reaper::new(store.clone(), None, ReaperConfig::new(&SchedulerSettings::default(), LONGEST), 1);
    let reaper = Reaper { clock: clock.clone(), ..reaper };
    let mut rng = StdRng::seed_from_u64(1);
    assert_eq!(reaper.sweep(&mut rng).await.expect("sweep").abandoned_loads, 0, "a load not yet abandoned is kept");
    assert_eq!(rows(&store).await, [600, 600, 1, 0]);

    clock.set(at + TimeDelta::seconds(LOAD_ABANDONED_AFTER.as_secs() as i64 + 1));
    assert_eq!(reaper.sweep(&mut rng).await.expect("sweep").abandoned_loads, 1);
    assert_eq!(rows(&store).await, [0, 0, 0, 0], "calls, targets, loads, campaigns after the sweep");

    let e =
        campaigns::finish_load(pg(&store), id, &c.settings, 600, 600, at).await.expect_err("the load was discarded");
    assert!(matches!(e, StoreError::Conflict(Conflict::LoadAbandoned(_))), "{e:?}");
    assert_eq!(rows(&store).await, [0, 0, 0, 0], "no campaign shown without its rows");
}
