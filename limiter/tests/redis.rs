//! The limiter against a real redis-server from the shared harness: the Lua scripts match the
//! pure model, caps hold under concurrent holders that crash, dead holders' tokens come back
//! after their TTL (and only theirs), Redis restarts fail closed and recover, drift is corrected.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dialer_limiter::model::{PoolState, SyncRequest};
use dialer_limiter::{Ask, Backend, LeaseDriver, LeaseSettings, LocalBackend, RedisBackend};
use dialer_testkit::{RedisServer, redis, redis_prefix};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

async fn backend(url: &str) -> RedisBackend {
    RedisBackend::connect(url, &redis_prefix(), Duration::from_millis(500)).await.expect("connect to test Redis")
}

fn c(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn ask(cap: u32) -> Ask {
    Ask { cap, weight: 1, queued: 1 }
}

#[tokio::test]
async fn script_matches_the_model() {
    let r = backend(&redis().url()).await;
    let mut model = PoolState::default();
    let mut rng = StdRng::seed_from_u64(7);
    let mut gens: HashMap<&str, u64> = HashMap::new();
    let base = 1_790_000_000_000_000u64; // microseconds since the epoch, as drivers use
    let holders = ["a", "b", "c"];
    // Pool epochs each holder last saw, from the script and from the model (their values differ:
    // the script's come from Redis's clock).
    let mut epochs: HashMap<&str, (u64, u64)> = HashMap::new();
    for step in 0..500 {
        if step % 125 == 124 {
            // Redis loses everything (restarted without persistence); so does the model.
            use fred::interfaces::KeysInterface;
            let mut keys: Vec<String> = [
                "global:concurrency",
                "leases",
                "lease_expiry",
                "campaigns",
                "epoch",
                "recovery",
                "fair",
                "fair:claims",
            ]
            .iter()
            .map(|k| format!("{}sem:{k}", r.prefix()))
            .collect();
            keys.extend((1..5).map(|n| format!("{}sem:campaign:{}:concurrency", r.prefix(), c(n))));
            r.client().del::<(), _>(keys).await.expect("del");
            model.lose_everything();
        }
        let h = holders[rng.random_range(0..holders.len())];
        let n = rng.random_range(1..4);
        let mut reqs = Vec::new();
        let mut used = std::collections::HashSet::new();
        for _ in 0..n {
            let camp = c(rng.random_range(1..5));
            if !used.insert(camp) {
                continue;
            }
            let g = gens.entry(h).or_insert(base);
            // Mostly fresh updates, sometimes a duplicate or a stale one.
            let generation = match rng.random_range(0..10) {
                0 => g.saturating_sub(1),
                1 => *g,
                _ => {
                    *g += 1;
                    *g
                }
            };
            let want = rng.random_range(0..30);
            let in_use = rng.random_range(0..=want + 3);
            reqs.push(SyncRequest {
                campaign: camp,
                want,
                generation,
                campaign_cap: rng.random_range(5..40),
                in_use,
                // Demand: calls in progress plus some waiting, sometimes above the want.
                demand: in_use + rng.random_range(0..40),
                weight: rng.random_range(1..4),
            });
        }
        let (re, me) = epochs.get(h).copied().unwrap_or((0, 0));
        let got = r.sync(h, Duration::from_secs(600), 60, re, &reqs).await.expect("sync");
        let want = model.sync(0, h, 600_000, 60, me, &reqs);
        assert_eq!((&got.items, got.recovering), (&want.items, want.recovering), "step {step}: {reqs:?}");
        epochs.insert(h, (got.epoch, want.epoch));
        let u = r.usage(c(1)).await.expect("usage");
        assert_eq!((u.global, u.campaign), (model.global(), model.campaign(c(1))), "step {step}");
        assert_eq!(kept_claims(&r).await, counted_claims(&r).await, "step {step}: the kept sum of claims drifted");
    }
}

/// The sum of the claims the pool keeps beside its fair hash.
async fn kept_claims(r: &RedisBackend) -> Option<f64> {
    use fred::interfaces::KeysInterface;
    let v: Option<i64> = r.client().get(format!("{}sem:fair:claims", r.prefix())).await.expect("get");
    v.map(|v| v as f64)
}

/// The same sum counted from the fair hash's entries (`demand:want:cap:weight`).
async fn counted_claims(r: &RedisBackend) -> Option<f64> {
    use fred::interfaces::HashesInterface;
    let all: HashMap<String, String> = r.client().hgetall(format!("{}sem:fair", r.prefix())).await.expect("hgetall");
    let sum = all
        .values()
        .map(|v| {
            let f: Vec<f64> = v.split(':').map(|x| x.parse().expect("a number")).collect();
            dialer_limiter::fair::claim(&dialer_limiter::fair::CampaignDemand {
                demand: f[0],
                want: f[1],
                cap: f[2],
                weight: f[3],
            })
        })
        .sum();
    Some(sum)
}

#[tokio::test]
async fn keys_follow_the_operator_guide() {
    let r = backend(&redis().url()).await;
    r.sync(
        "h",
        Duration::from_secs(60),
        100,
        0,
        &[SyncRequest { campaign: c(9), want: 3, generation: 1, campaign_cap: 10, in_use: 0, demand: 3, weight: 1 }],
    )
    .await
    .expect("sync");
    use fred::interfaces::KeysInterface;
    let g: Option<i64> = r.client().get(format!("{}sem:global:concurrency", r.prefix())).await.expect("get");
    let k: Option<i64> = r.client().get(format!("{}sem:campaign:{}:concurrency", r.prefix(), c(9))).await.expect("get");
    assert_eq!((g, k), (Some(3), Some(3)));
}

#[tokio::test]
async fn dead_holder_tokens_come_back_after_ttl_and_only_theirs() {
    let r = backend(&redis().url()).await;
    let req = |want, generation| {
        [SyncRequest { campaign: c(1), want, generation, campaign_cap: 100, in_use: 0, demand: want, weight: 1 }]
    };
    r.sync("dead", Duration::from_millis(800), 100, 0, &req(7, 1)).await.expect("sync");
    r.sync("alive", Duration::from_secs(60), 100, 0, &req(5, 1)).await.expect("sync");
    assert_eq!(r.usage(c(1)).await.expect("usage").campaign, 12);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let reply = r.sync("alive", Duration::from_secs(60), 100, 0, &req(5, 2)).await.expect("sync");
    assert_eq!(reply.reaped, 7);
    let u = r.usage(c(1)).await.expect("usage");
    assert_eq!((u.global, u.campaign), (5, 5), "only the dead holder's tokens were reclaimed");
    // A late give-back from the reaped holder cannot push the count below the truth.
    r.sync("dead", Duration::from_millis(800), 100, 0, &req(0, 2)).await.expect("sync");
    assert_eq!(r.usage(c(1)).await.expect("usage").global, 5);
}

#[tokio::test]
async fn reconcile_corrects_drift_and_live_limits_apply() {
    for b in [Backend::Redis(backend(&redis().url()).await), Backend::Local(Arc::new(LocalBackend::default()))] {
        let req = |camp, want, generation| SyncRequest {
            campaign: camp,
            want,
            generation,
            campaign_cap: 50,
            in_use: 0,
            demand: want,
            weight: 1,
        };
        b.set_campaign_limit(c(2), Some(4)).await.expect("limit");
        let reply =
            b.sync("h", Duration::from_secs(60), 100, 0, &[req(c(1), 10, 1), req(c(2), 10, 2)]).await.expect("sync");
        assert_eq!((reply.items[1].held, reply.items[1].cap), (4, 4), "live campaign override wins");
        b.set_global_limit(Some(15)).await.expect("limit");
        let reply = b.sync("h2", Duration::from_secs(60), 100, 0, &[req(c(3), 10, 1)]).await.expect("sync");
        assert_eq!(reply.items[0].held, 1, "live global override wins");
        match &b {
            Backend::Redis(r) => r.skew_global(7).await.expect("skew"),
            Backend::Local(l) => l.skew_global(7),
        }
        let fixed = b.reconcile().await.expect("reconcile");
        assert_eq!(fixed.global_drift, 7);
        assert_eq!(b.usage(c(1)).await.expect("usage").global, 15);
        assert_eq!(b.reconcile().await.expect("reconcile").global_drift, 0);
    }
}

/// Calls in progress as an independent observer sees them, per campaign and in all.
#[derive(Default)]
struct Tracker {
    global: AtomicI64,
    max_global: AtomicI64,
    campaigns: Mutex<HashMap<Uuid, (i64, i64)>>,
}

impl Tracker {
    fn start(&self, camp: Uuid) {
        let g = self.global.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_global.fetch_max(g, Ordering::SeqCst);
        let mut m = self.campaigns.lock().expect("lock");
        let e = m.entry(camp).or_default();
        e.0 += 1;
        e.1 = e.1.max(e.0);
    }
    fn end(&self, camp: Uuid) {
        self.global.fetch_sub(1, Ordering::SeqCst);
        self.campaigns.lock().expect("lock").entry(camp).or_default().0 -= 1;
    }
}

/// One simulated core: a current-thread runtime with a lease driver and random calls.
#[allow(clippy::too_many_arguments)]
fn spawn_core(
    backend: Backend,
    holder: String,
    settings: LeaseSettings,
    global_cap: u32,
    caps: Vec<(Uuid, u32)>,
    tracker: Arc<Tracker>,
    stop: Arc<AtomicBool>,
    crash: Arc<AtomicBool>,
    seed: u64,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let (driver, handle) = LeaseDriver::new(backend, holder, settings, global_cap);
            let driver = driver.with_tick(Duration::from_millis(5));
            let stop2 = stop.clone();
            let crash2 = crash.clone();
            let drv = tokio::task::spawn_local(async move {
                let s = stop2.clone();
                let c = crash2.clone();
                let done = async move {
                    while !s.load(Ordering::SeqCst) && !c.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                };
                driver.run(done).await;
            });
            let mut rng = StdRng::seed_from_u64(seed);
            let mut live: Vec<(Uuid, Instant)> = Vec::new();
            let mut dials = 0u64;
            while !stop.load(Ordering::SeqCst) {
                if crash.load(Ordering::SeqCst) {
                    // The process died: its calls end with it, its leases are never given back.
                    for (camp, _) in live.drain(..) {
                        tracker.end(camp);
                    }
                    drv.abort();
                    return dials;
                }
                let now = Instant::now();
                live.retain(|(camp, until)| {
                    if *until <= now {
                        tracker.end(*camp);
                        handle.release(*camp);
                        false
                    } else {
                        true
                    }
                });
                for _ in 0..8 {
                    let (camp, cap) = caps[rng.random_range(0..caps.len())];
                    if handle.try_acquire(camp, ask(cap)) {
                        tracker.start(camp);
                        dials += 1;
                        live.push((camp, now + Duration::from_millis(rng.random_range(1..30))));
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            for (camp, _) in live.drain(..) {
                tracker.end(camp);
                handle.release(camp);
            }
            let _ = drv.await;
            dials
        })
    })
}

async fn caps_hold_under_crashing_holders(backend: Backend) {
    let caps: Vec<(Uuid, u32)> = (1..=6).map(|i| (c(i), 5 + 4 * i as u32)).collect();
    let global_cap = 60;
    let settings = LeaseSettings {
        batch: 8,
        low_water: 2,
        ttl: Duration::from_millis(1500),
        renew_every: Duration::from_millis(400),
        refresh_every: Duration::from_millis(100),
        idle_give_back: Duration::from_millis(300),
        retry_after: Duration::from_millis(50),
    };
    let tracker = Arc::new(Tracker::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut cores = Vec::new();
    let mut crashes = Vec::new();
    for i in 0..6 {
        let crash = Arc::new(AtomicBool::new(false));
        crashes.push(crash.clone());
        cores.push(spawn_core(
            backend.clone(),
            format!("core-{i}"),
            settings.clone(),
            global_cap,
            caps.clone(),
            tracker.clone(),
            stop.clone(),
            crash,
            i,
        ));
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    crashes[0].store(true, Ordering::SeqCst);
    crashes[1].store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::SeqCst);
    let dials: u64 = cores.into_iter().map(|h| h.join().expect("core thread")).sum();
    assert!(dials > 1000, "only {dials} dials");
    assert!(tracker.max_global.load(Ordering::SeqCst) <= i64::from(global_cap), "global cap exceeded");
    let mut dialed = 0;
    for (camp, cap) in &caps {
        let max = tracker.campaigns.lock().expect("lock").get(camp).map_or(0, |e| e.1);
        assert!(max <= i64::from(*cap), "campaign {camp} reached {max} > cap {cap}");
        dialed += usize::from(max > 0);
    }
    // The global cap (60) binds below the campaigns' sum (114): every campaign gets its share.
    assert_eq!(dialed, 6, "only {dialed} of 6 campaigns dialed under the binding global cap");
    // The survivors gave everything back; the crashed holders' leases expire and are reaped.
    tokio::time::sleep(settings.ttl + Duration::from_millis(200)).await;
    let fixed = backend.reconcile().await.expect("reconcile");
    assert_eq!(fixed.global_drift, 0, "counters matched the leases");
    let u = backend.usage(c(1)).await.expect("usage");
    assert_eq!(u.global, 0, "nothing leaked");
    for (camp, _) in &caps {
        assert_eq!(backend.usage(*camp).await.expect("usage").campaign, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_hold_under_crashing_holders_redis() {
    caps_hold_under_crashing_holders(Backend::Redis(backend(&redis().url()).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_hold_under_crashing_holders_local() {
    caps_hold_under_crashing_holders(Backend::Local(Arc::new(LocalBackend::default()))).await;
}

/// Runs `test` on one core's runtime (a `LocalSet`, as a shard) with an own redis-server that
/// it may kill and restart, and lease settings with a short TTL (1.5 s, renewed every 0.5 s).
fn with_own_redis<F, Fut>(idle_give_back: Duration, retry_after: Duration, test: F)
where
    F: FnOnce(Arc<RedisServer>, Backend, LeaseSettings) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let server = Arc::new(RedisServer::start().expect("own redis-server"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let b = Backend::Redis(backend(&server.url()).await);
        let settings = LeaseSettings {
            batch: 10,
            low_water: 3,
            ttl: Duration::from_millis(1500),
            renew_every: Duration::from_millis(500),
            refresh_every: Duration::from_millis(100),
            idle_give_back,
            retry_after,
        };
        test(server, b, settings).await
    });
}

/// Redis is SIGKILLed under a core holding a lease, then restarted empty on the same port.
#[test]
fn redis_restart_fails_closed_then_recovers() {
    with_own_redis(Duration::from_secs(60), Duration::from_millis(100), |server, b, settings| async move {
        let (driver, h) = LeaseDriver::new(b.clone(), "core".into(), settings, 1000);
        tokio::task::spawn_local(driver.with_tick(Duration::from_millis(10)).run(std::future::pending::<()>()));
        let camp = c(1);
        let mut in_use = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while in_use < 5 {
            assert!(Instant::now() < deadline, "no tokens while Redis is up");
            if h.try_acquire(camp, ask(20)) {
                in_use += 1;
            } else {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        // Redis dies. The lease in hand still serves until it expires…
        let s = server.clone();
        tokio::task::spawn_blocking(move || s.kill()).await.expect("kill");
        assert!(h.try_acquire(camp, ask(20)), "the unexpired lease keeps serving");
        in_use += 1;
        // …then nothing more is handed out (fail-closed).
        tokio::time::sleep(Duration::from_millis(1700)).await;
        let t = Instant::now();
        let mut granted_while_down = 0;
        while t.elapsed() < Duration::from_millis(800) {
            if h.try_acquire(camp, ask(20)) {
                granted_while_down += 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(granted_while_down, 0, "tokens handed out with Redis down and the lease expired");

        // Redis comes back empty: the core re-establishes its lease, in-use tokens included.
        let s = server.clone();
        tokio::task::spawn_blocking(move || s.restart()).await.expect("join").expect("restart");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !h.try_acquire(camp, ask(20)) {
            assert!(Instant::now() < deadline, "did not recover after Redis came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        in_use += 1;
        let u = b.usage(camp).await.expect("usage");
        assert!(u.campaign >= in_use, "Redis counts the calls still in progress after recovery: {u:?} < {in_use}");
        assert!(u.campaign <= 20 && u.global == u.campaign, "{u:?}");
    });
}

/// Redis restarts empty while two cores have the campaign's cap full of calls: no core may be
/// granted that room again while the other's calls are up (they re-register them first).
#[test]
fn redis_losing_its_data_exceeds_no_cap() {
    with_own_redis(Duration::from_millis(200), Duration::from_millis(50), |server, b, settings| async move {
        let (cap, camp) = (10u32, c(1));
        let mut cores = Vec::new();
        for name in ["a", "b"] {
            let (driver, h) = LeaseDriver::new(b.clone(), name.into(), settings.clone(), 1000);
            tokio::task::spawn_local(driver.with_tick(Duration::from_millis(10)).run(std::future::pending::<()>()));
            cores.push(h);
        }
        // a takes 6 calls (and gives its spare tokens back once idle), then b the other 4: the cap
        // is full.
        for (h, n) in cores.iter().zip([6, 4]) {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut got = 0;
            while got < n {
                assert!(Instant::now() < deadline, "no tokens while Redis is up");
                if h.try_acquire(camp, ask(cap)) {
                    got += 1;
                } else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        assert_eq!(b.usage(camp).await.expect("usage").campaign, 10);

        // Redis restarts empty, well within the leases' TTL.
        let s = server.clone();
        tokio::task::spawn_blocking(move || s.restart()).await.expect("join").expect("restart");

        // Both cores press for more for two TTLs: neither may start an 11th call.
        let mut in_use = [6u32, 4u32];
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(3000) {
            for (i, h) in cores.iter().enumerate() {
                if h.try_acquire(camp, ask(cap)) {
                    in_use[i] += 1;
                }
            }
            assert!(in_use[0] + in_use[1] <= cap, "cap exceeded after Redis lost its data: {in_use:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let u = b.usage(camp).await.expect("usage");
        assert_eq!(u.campaign, 10, "Redis counts the calls re-registered by both cores: {u:?}");

        // a's calls end; after the window b may use the room.
        for _ in 0..in_use[0] {
            cores[0].release(camp);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cores[1].try_acquire(camp, ask(cap)) {
            assert!(Instant::now() < deadline, "b never got the room a gave back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

/// A core with endless work in each of its campaigns `(id, cap, weight)`: it starts a call of
/// `call` whenever its lease allows, telling the lease that 100 more wait.
#[allow(clippy::too_many_arguments)]
fn spawn_busy_core(
    backend: Backend,
    holder: String,
    settings: LeaseSettings,
    global_cap: u32,
    campaigns: Vec<(Uuid, u32, u32)>,
    call: Duration,
    tracker: Arc<Tracker>,
    crash: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let (driver, handle) = LeaseDriver::new(backend, holder, settings, global_cap);
            let drv = tokio::task::spawn_local(driver.with_tick(Duration::from_millis(5)).run(std::future::pending()));
            let mut live: Vec<(Uuid, Instant)> = Vec::new();
            while !crash.load(Ordering::SeqCst) {
                let now = Instant::now();
                live.retain(|(camp, until)| {
                    let up = *until > now;
                    if !up {
                        tracker.end(*camp);
                        handle.release(*camp);
                    }
                    up
                });
                for &(camp, cap, weight) in &campaigns {
                    while handle.try_acquire(camp, Ask { cap, weight, queued: 100 }) {
                        tracker.start(camp);
                        live.push((camp, now + call));
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // The process died: its calls end with it, its leases are never given back.
            for (camp, _) in live.drain(..) {
                tracker.end(camp);
            }
            drv.abort();
        })
    })
}

/// Each campaign's calls in progress, averaged over samples every 5 ms for `over`.
async fn average_in_progress(tracker: &Tracker, campaigns: &[Uuid], over: Duration) -> Vec<f64> {
    let mut sums = vec![0i64; campaigns.len()];
    let mut samples = 0;
    let t = Instant::now();
    while t.elapsed() < over {
        let m = tracker.campaigns.lock().expect("lock").clone();
        for (sum, camp) in sums.iter_mut().zip(campaigns) {
            *sum += m.get(camp).map_or(0, |e| e.0);
        }
        samples += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sums.iter().map(|s| *s as f64 / f64::from(samples)).collect()
}

fn assert_near(got: &[f64], want: &[f64], what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 0.1 * w.max(1.0),
            "{what}: campaign {i} averaged {g:.1} calls, fair share {w} (all: {got:.1?})"
        );
    }
}

/// Three cores, four campaigns, a binding global cap of 200: campaign 1 has weight 2, campaign
/// 2 a cap of 30. Max-min fair shares: 30 for campaign 2, then 170 split 2:1:1 (85, 42.5, 42.5).
/// When the core that alone dials campaign 4 dies, its share goes to the others once its lease
/// has expired: campaign 1 reaches its cap of 100, campaign 3 gets the remaining 70.
async fn fair_shares_under_a_binding_global_cap(backend: Backend) {
    let settings = LeaseSettings {
        batch: 8,
        low_water: 2,
        ttl: Duration::from_millis(1500),
        renew_every: Duration::from_millis(500),
        refresh_every: Duration::from_millis(100),
        idle_give_back: Duration::from_millis(300),
        retry_after: Duration::from_millis(50),
    };
    let (c1, c2, c3, c4) = ((c(1), 100, 2), (c(2), 30, 1), (c(3), 100, 1), (c(4), 100, 1));
    let ids = [c1.0, c2.0, c3.0, c4.0];
    let tracker = Arc::new(Tracker::default());
    let crashes: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let plans = [vec![c1, c2], vec![c2, c3], vec![c3, c4]];
    let cores: Vec<_> = plans
        .iter()
        .enumerate()
        .map(|(i, campaigns)| {
            let (b, t, crash) = (backend.clone(), tracker.clone(), crashes[i].clone());
            let call = Duration::from_millis(50);
            spawn_busy_core(b, format!("fair-{i}"), settings.clone(), 200, campaigns.clone(), call, t, crash)
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = average_in_progress(&tracker, &ids, Duration::from_secs(2)).await;
    assert_near(&got, &[85.0, 30.0, 42.5, 42.5], "three cores");
    crashes[2].store(true, Ordering::SeqCst);
    tokio::time::sleep(settings.ttl + Duration::from_millis(1000)).await;
    let got = average_in_progress(&tracker, &ids, Duration::from_secs(2)).await;
    assert_near(&got, &[100.0, 30.0, 70.0, 0.0], "after core 2 died and its lease expired");
    for crash in &crashes {
        crash.store(true, Ordering::SeqCst);
    }
    for core in cores {
        core.join().expect("core thread");
    }
    assert!(tracker.max_global.load(Ordering::SeqCst) <= 200, "global cap exceeded");
    let m = tracker.campaigns.lock().expect("lock").clone();
    assert!(m[&c(2)].1 <= 30 && m[&c(1)].1 <= 100 && m[&c(3)].1 <= 100, "a campaign cap was exceeded: {m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_shares_under_a_binding_global_cap_redis() {
    fair_shares_under_a_binding_global_cap(Backend::Redis(backend(&redis().url()).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_shares_under_a_binding_global_cap_local() {
    fair_shares_under_a_binding_global_cap(Backend::Local(Arc::new(LocalBackend::default()))).await;
}

/// A live cap change (`dialer limits --campaign ID --cap N`) reaches a busy core within a refresh
/// interval plus the length of the calls above the new cap: measured, lowered then raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_cap_changes_converge_within_a_refresh() {
    let r = backend(&redis().url()).await;
    let b = Backend::Redis(r);
    let refresh = Duration::from_millis(100);
    let call = Duration::from_millis(50);
    let settings = LeaseSettings {
        batch: 8,
        low_water: 2,
        ttl: Duration::from_millis(1500),
        renew_every: Duration::from_millis(500),
        refresh_every: refresh,
        idle_give_back: Duration::from_millis(300),
        retry_after: Duration::from_millis(50),
    };
    let tracker = Arc::new(Tracker::default());
    let crash = Arc::new(AtomicBool::new(false));
    let core = spawn_busy_core(
        b.clone(),
        "live".into(),
        settings,
        1000,
        vec![(c(1), 40, 1)],
        call,
        tracker.clone(),
        crash.clone(),
    );
    let in_progress = || tracker.campaigns.lock().expect("lock").get(&c(1)).map_or(0, |e| e.0);
    // When `pred` first held and then kept holding for three call lengths (calls of one length
    // end together, so a single sample can catch them all down for an instant).
    let settled = |pred: &dyn Fn(i64) -> bool| {
        let t = Instant::now();
        let mut since: Option<Duration> = None;
        loop {
            let now = t.elapsed();
            assert!(now < Duration::from_secs(5), "no convergence within 5 s: {} calls", in_progress());
            match (pred(in_progress()), since) {
                (true, Some(s)) if now - s >= call * 3 => return s,
                (true, None) => since = Some(now),
                (false, _) => since = None,
                _ => {}
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    };
    settled(&|n| n == 40);
    b.set_campaign_limit(c(1), Some(10)).await.expect("limit");
    let lowered = settled(&|n| n <= 10);
    b.set_campaign_limit(c(1), Some(30)).await.expect("limit");
    let raised = settled(&|n| (21..=30).contains(&n));
    crash.store(true, Ordering::SeqCst);
    core.join().expect("core");
    eprintln!("live cap 40 → 10 reached in {lowered:?}, 10 → 30 in {raised:?} (refresh {refresh:?}, calls {call:?})");
    let bound = refresh + call + Duration::from_millis(150);
    assert!(lowered <= bound && raised <= bound, "lowered in {lowered:?}, raised in {raised:?}: over {bound:?}");
}
