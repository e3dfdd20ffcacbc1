//! Trunks as one shard sees them: its share of each trunk's channels and calls per second, the
//! trunk's health (out of rotation for a back-off after it fails), and the choice of a trunk for
//! a call (best priority among healthy trunks, weighted round robin inside it). Shard-local: no
//! atomics, no locks.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// One SIP trunk (`[[provider.trunks]]`).
#[derive(Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrunkSettings {
    /// Unique name (metrics label, logs).
    pub name: String,
    /// The carrier's SIP proxy, `host:port` (UDP), resolved once at start; every request of a
    /// call goes there.
    pub proxy: String,
    /// The domain of the Request-URI and To (`sip:<number>@<domain>`); the proxy's address if
    /// empty.
    pub domain: String,
    /// Digest username (401 and 407); empty = the trunk does not authenticate.
    pub username: String,
    /// The environment variable holding the password (never the password itself).
    pub password_env: String,
    /// The password, read from `password_env` at start (never in a file).
    #[serde(skip)]
    pub password: String,
    /// From: `sip:<from_user>@<from_domain>` unless the call has a caller ID.
    pub from_user: String,
    pub from_domain: String,
    /// Caller ID (E.164) presented when the campaign sets none (or one this trunk does not allow);
    /// empty = `from_user`.
    pub caller_id: String,
    /// Prefixes of the caller IDs a campaign may present on this trunk (e.g. `+1500555`, or the
    /// full numbers the carrier verified); empty = any.
    pub allowed_caller_ids: Vec<String>,
    /// Calls up at once on this trunk, across every shard and process.
    pub max_channels: u32,
    /// New calls (INVITEs) per second on this trunk, across every shard and process; 0 = no
    /// limit. Every INVITE counts, the second one of a call whose first was challenged (401,
    /// 407) included. Split over the shards in whole calls; below one per shard, the shards
    /// take turns (see [`Pacing`]).
    pub max_cps: u32,
    /// Lower = preferred; trunks of the next priority take calls only when these are all down.
    pub priority: u32,
    /// Share of calls among trunks of one priority.
    pub weight: u32,
    /// Symmetric RTP: send a call's audio where the far end's comes from (its first packet),
    /// for far ends behind NAT; `false`: to the address in its SDP (a carrier's SBC), the socket
    /// connected at the answer.
    pub rtp_symmetric: bool,
}

impl Default for TrunkSettings {
    fn default() -> Self {
        TrunkSettings {
            name: String::new(),
            proxy: String::new(),
            domain: String::new(),
            username: String::new(),
            password_env: String::new(),
            password: String::new(),
            from_user: "dialer".into(),
            from_domain: "localhost".into(),
            caller_id: String::new(),
            allowed_caller_ids: Vec::new(),
            max_channels: 100,
            max_cps: 10,
            priority: 1,
            weight: 1,
            rtp_symmetric: true,
        }
    }
}

impl TrunkSettings {
    /// The proxy's address (resolved now).
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        use std::net::ToSocketAddrs;
        self.proxy.to_socket_addrs().ok()?.next()
    }
}

impl std::fmt::Debug for TrunkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrunkSettings")
            .field("name", &self.name)
            .field("proxy", &self.proxy)
            .field("username", &self.username)
            .field("password_env", &self.password_env)
            .field("password", &"<redacted>")
            .field("max_channels", &self.max_channels)
            .field("max_cps", &self.max_cps)
            .finish_non_exhaustive()
    }
}

/// This shard's part of `total` when split over `shards` (the remainder to the first ones).
pub fn share(total: u32, shard: usize, shards: usize) -> u32 {
    let n = shards.max(1) as u32;
    total / n + u32::from((shard as u32) < total % n)
}

/// How many of `orphans` calls (a killed process's, perhaps still up) each shard of this process
/// holds on a trunk of `max_channels`: `shards` are the shards' places among all (index, count),
/// filled in order up to each one's share. Together they hold them all while this process's
/// shares can; no shard holds more than its share, so the trunk's calls never pass
/// `max_channels`: the killed process's were within these same shares.
pub fn orphan_holds(orphans: u32, max_channels: u32, shards: &[(usize, usize)]) -> Vec<u32> {
    let mut left = orphans;
    shards
        .iter()
        .map(|&(shard, n)| {
            let held = left.min(share(max_channels, shard, n));
            left -= held;
            held
        })
        .collect()
}

/// A trunk on one shard.
#[derive(Debug)]
pub struct Trunk {
    pub s: TrunkSettings,
    /// The proxy's address, resolved at start.
    pub addr: SocketAddr,
    channels: u32,
    in_use: Cell<u32>,
    freed: Notify,
    /// Time between two INVITEs of this shard on this trunk (1 / its CPS share).
    interval: Duration,
    next_slot: Cell<Instant>,
    /// When this shard's last `cps share` INVITEs on the trunk went out (a ring): a new one waits
    /// until the oldest is a second old, so no second holds more than the share.
    sent: std::cell::RefCell<std::collections::VecDeque<Instant>>,
    /// A second plus the margin.
    window: Duration,
    cps_share: usize,
    /// Fewer calls per second than shards: this shard's turns.
    turns: Option<Turns>,
    failures: Cell<u32>,
    down_until: Cell<Option<Instant>>,
    backoff: Cell<Duration>,
    current: Cell<i64>,
    pub metrics: TrunkMetrics,
}

/// Per-trunk metrics (labels: trunk name and shard; the code family is bounded by SIP codes).
#[derive(Debug)]
pub struct TrunkMetrics {
    pub attempts: metrics::Counter,
    pub answers: metrics::Counter,
    channels: metrics::Gauge,
    healthy: metrics::Gauge,
    name: String,
    /// `dialer_sip_responses_total` by code, looked up once per code rather than once per call.
    responses: std::cell::RefCell<std::collections::HashMap<Option<u16>, metrics::Counter>>,
}

impl TrunkMetrics {
    fn new(name: &str, shard: usize) -> TrunkMetrics {
        let (t, s) = (name.to_string(), shard.to_string());
        let m = TrunkMetrics {
            attempts: metrics::counter!("dialer_sip_attempts_total", "trunk" => t.clone()),
            answers: metrics::counter!("dialer_sip_answers_total", "trunk" => t.clone()),
            channels: metrics::gauge!("dialer_sip_channels_in_use", "trunk" => t.clone(), "shard" => s.clone()),
            healthy: metrics::gauge!("dialer_sip_trunk_healthy", "trunk" => t.clone(), "shard" => s.clone()),
            name: t,
            responses: Default::default(),
        };
        m.healthy.set(1.0);
        m
    }

    /// Counts a final response (or `timeout` when none came).
    pub fn response(&self, code: Option<u16>) {
        self.responses
            .borrow_mut()
            .entry(code)
            .or_insert_with(|| {
                let label = code.map_or_else(|| "timeout".to_string(), |c| c.to_string());
                metrics::counter!("dialer_sip_responses_total", "trunk" => self.name.clone(), "code" => label)
            })
            .increment(1);
    }
}

/// A channel of a trunk, held for the call's whole life (given back when dropped).
#[derive(Debug)]
pub struct Channel(Rc<Trunk>);

impl Drop for Channel {
    fn drop(&mut self) {
        let t = &self.0;
        t.in_use.set(t.in_use.get() - 1);
        t.metrics.channels.set(f64::from(t.in_use.get()));
        t.freed.notify_one();
    }
}

impl Trunk {
    /// This shard's part of trunk `s`; `margin` widens the CPS window beyond a second, for the
    /// jitter between our send and the carrier's count.
    pub fn new(s: TrunkSettings, addr: SocketAddr, shard: usize, shards: usize, margin: Duration) -> Trunk {
        let window = Duration::from_secs(1) + margin;
        let turns =
            (s.max_cps > 0 && (s.max_cps as usize) < shards).then(|| Turns::new(window, s.max_cps, shard, shards));
        let cps = if turns.is_some() { 1 } else { share(s.max_cps, shard, shards) };
        let interval = if cps > 0 { window / cps } else { Duration::ZERO };
        let metrics = TrunkMetrics::new(&s.name, shard);
        Trunk {
            addr,
            channels: share(s.max_channels, shard, shards),
            in_use: Cell::new(0),
            freed: Notify::new(),
            interval,
            next_slot: Cell::new(Instant::now()),
            sent: Default::default(),
            window,
            cps_share: cps as usize,
            turns,
            failures: Cell::new(0),
            down_until: Cell::new(None),
            backoff: Cell::new(Duration::ZERO),
            current: Cell::new(0),
            metrics,
            s,
        }
    }

    /// The From user of a call: the campaign's caller ID where this trunk allows it, else the
    /// trunk's own, else its `from_user`.
    pub fn caller_id<'a>(&'a self, campaign: Option<&'a str>) -> &'a str {
        let allowed = |c: &str| {
            self.s.allowed_caller_ids.is_empty() || self.s.allowed_caller_ids.iter().any(|p| c.starts_with(p.as_str()))
        };
        match campaign {
            Some(c) if allowed(c) => c,
            Some(_) => {
                metrics::counter!("dialer_sip_caller_id_refused_total", "trunk" => self.s.name.clone()).increment(1);
                self.own_caller_id()
            }
            None => self.own_caller_id(),
        }
    }

    fn own_caller_id(&self) -> &str {
        if self.s.caller_id.is_empty() { &self.s.from_user } else { &self.s.caller_id }
    }

    pub fn healthy(&self, now: Instant) -> bool {
        self.down_until.get().is_none_or(|t| t <= now)
    }

    fn has_room(&self) -> bool {
        self.in_use.get() < self.channels
    }

    /// Takes `n` of this shard's channels at once, free or not, for calls this shard did not
    /// place (see [`orphan_holds`]): new calls wait until they are given back.
    pub fn seize(self: &Rc<Self>, n: u32) -> Vec<Channel> {
        self.in_use.set(self.in_use.get() + n);
        self.metrics.channels.set(f64::from(self.in_use.get()));
        (0..n).map(|_| Channel(self.clone())).collect()
    }

    /// Waits for one of this shard's channels on the trunk.
    pub async fn channel(self: &Rc<Self>) -> Channel {
        while !self.has_room() {
            self.freed.notified().await;
        }
        self.in_use.set(self.in_use.get() + 1);
        self.metrics.channels.set(f64::from(self.in_use.get()));
        Channel(self.clone())
    }

    /// Waits for this shard's next INVITE slot on the trunk: evenly spaced at its CPS share over
    /// the window (a second plus the margin), and never more than the share within a window.
    pub async fn pace(&self) {
        if self.cps_share == 0 {
            return;
        }
        if let Some(turns) = &self.turns {
            let slot = turns.next(self.next_slot.get(), Instant::now(), unix_ns());
            self.next_slot.set(slot + turns.period / 2);
            return tokio::time::sleep_until(slot).await;
        }
        let now = Instant::now();
        let slot = {
            let mut sent = self.sent.borrow_mut();
            let window = if sent.len() >= self.cps_share { sent.pop_front().map(|t| t + self.window) } else { None };
            let slot = self.next_slot.get().max(now).max(window.unwrap_or(now));
            sent.push_back(slot);
            slot
        };
        self.next_slot.set(slot + self.interval);
        if slot > now {
            tokio::time::sleep_until(slot).await;
        }
    }

    /// A call got through (any final response from the far end but a trunk fault).
    pub fn worked(&self) {
        self.failures.set(0);
        self.backoff.set(Duration::ZERO);
    }

    /// A failure: a trunk fault takes it out at once, other failures after `threshold` in a row.
    /// Failures while it is out are the calls that were up or ringing when it went: the same
    /// outage, counted once (before, each doubled the back-off, and a 6 s outage with a hundred
    /// calls on the trunk took it out for 16 × `trunk_backoff_ms`). A failure after it came
    /// back doubles it.
    pub fn failed(&self, trunk_fault: bool, threshold: u32, first_backoff: Duration, now: Instant) {
        if !self.healthy(now) {
            return;
        }
        let n = self.failures.get() + 1;
        self.failures.set(n);
        if !trunk_fault && n < threshold {
            return;
        }
        let b = match self.backoff.get() {
            d if d.is_zero() => first_backoff,
            d => (d * 2).min(first_backoff * 16),
        };
        self.backoff.set(b);
        self.failures.set(0);
        self.down_until.set(Some(now + b));
        self.metrics.healthy.set(0.0);
        tracing::warn!(trunk = %self.s.name, backoff_s = b.as_secs_f64(), "SIP trunk taken out of rotation");
    }

    fn back_in(&self, now: Instant) {
        if self.down_until.get().is_some_and(|t| t <= now) {
            self.down_until.set(None);
            self.metrics.healthy.set(1.0);
        }
    }
}

/// A trunk with fewer calls per second than shards (`max_cps` 10 on a 16-shard host): the
/// trunk's INVITE slots are evenly spaced, `window / max_cps` apart on the wall clock, and
/// taken by the shards in turn (slot `k` is shard `k mod shards`'s). No second then holds more
/// than `max_cps` INVITEs whichever shards send them, and every shard gets its fair part
/// without talking to the others (the hosts' clocks agree within the margin).
#[derive(Clone, Copy, Debug)]
pub struct Turns {
    /// Between two slots of this shard: `shards × window / max_cps`.
    period: Duration,
    /// This shard's first slot after each period's start: `shard × window / max_cps`.
    phase: Duration,
}

impl Turns {
    pub fn new(window: Duration, max_cps: u32, shard: usize, shards: usize) -> Turns {
        let slot = window / max_cps.max(1);
        Turns { period: slot * shards as u32, phase: slot * shard as u32 }
    }

    /// This shard's first slot at or after `not_before` (and now), as an [`Instant`], given the
    /// wall clock `unix_ns` read at `now`.
    pub fn next(&self, not_before: Instant, now: Instant, unix_ns: u128) -> Instant {
        let from = unix_ns + not_before.saturating_duration_since(now).as_nanos();
        let (period, phase) = (self.period.as_nanos().max(1), self.phase.as_nanos());
        let k = (from + period - 1).saturating_sub(phase) / period;
        let mut slot = k * period + phase;
        if slot < from {
            slot += period;
        }
        now + Duration::from_nanos((slot - unix_ns) as u64)
    }
}

fn unix_ns() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// Picks the trunk for the next call among `trunks` (skipping `exclude`): the best priority
/// with a healthy trunk, a trunk with a free channel first, smooth weighted round robin
/// (nginx's) among equals. `None` when every trunk is out of rotation.
pub fn pick(trunks: &[Rc<Trunk>], exclude: &[usize], now: Instant) -> Option<usize> {
    let live: Vec<usize> = (0..trunks.len())
        .filter(|i| !exclude.contains(i))
        .filter(|&i| {
            trunks[i].back_in(now);
            trunks[i].healthy(now)
        })
        .collect();
    let best = live.iter().map(|&i| trunks[i].s.priority).min()?;
    let tier: Vec<usize> = live.into_iter().filter(|&i| trunks[i].s.priority == best).collect();
    let with_room: Vec<usize> = tier.iter().copied().filter(|&i| trunks[i].has_room()).collect();
    let among = if with_room.is_empty() { tier } else { with_room };
    let total: i64 = among.iter().map(|&i| i64::from(trunks[i].s.weight.max(1))).sum();
    for &i in &among {
        let t = &trunks[i];
        t.current.set(t.current.get() + i64::from(t.s.weight.max(1)));
    }
    let chosen = *among.iter().max_by_key(|&&i| (trunks[i].current.get(), std::cmp::Reverse(i)))?;
    trunks[chosen].current.set(trunks[chosen].current.get() - total);
    Some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(name: &str, priority: u32, weight: u32, channels: u32) -> Rc<Trunk> {
        Rc::new(Trunk::new(
            TrunkSettings {
                name: name.into(),
                proxy: "127.0.0.1:5060".into(),
                from_domain: "example.com".into(),
                allowed_caller_ids: vec!["+1500".into()],
                max_channels: channels,
                max_cps: 0,
                priority,
                weight,
                ..TrunkSettings::default()
            },
            "127.0.0.1:5060".parse().unwrap(),
            0,
            1,
            Duration::ZERO,
        ))
    }

    #[test]
    fn a_campaigns_caller_id_only_where_the_trunk_allows_it() {
        let t = trunk("a", 1, 1, 1);
        assert_eq!(t.caller_id(Some("+15005550006")), "+15005550006");
        assert_eq!(t.caller_id(Some("+4930123456")), "dialer", "not allowed: the trunk's own (from_user)");
        assert_eq!(t.caller_id(None), "dialer");
    }

    #[test]
    fn shares_split_the_remainder_to_the_first_shards() {
        assert_eq!((0..3).map(|i| share(10, i, 3)).collect::<Vec<_>>(), [4, 3, 3]);
        assert_eq!((0..4).map(|i| share(4, i, 4)).sum::<u32>(), 4);
    }

    #[test]
    fn fewer_calls_per_second_than_shards_are_taken_in_turns() {
        // 16 shards on a 10-CPS trunk: every shard dials, and no second holds more than 10.
        let (shards, window) = (16, Duration::from_secs(1));
        let now = Instant::now();
        let start_ns = 1_700_000_000_123_456_789u128;
        let mut sent: Vec<u128> = Vec::new();
        for shard in 0..shards {
            let turns = Turns::new(window, 10, shard, shards);
            let mut next = now;
            for _ in 0..20 {
                let slot = turns.next(next, now, start_ns);
                let at = start_ns + (slot - now).as_nanos();
                assert_eq!((at % 1_600_000_000), (shard as u128) * 100_000_000, "shard {shard}'s turn");
                sent.push(at);
                next = slot + turns.period / 2;
            }
        }
        sent.sort_unstable();
        let busiest = (0..sent.len())
            .map(|i| sent[i..].iter().take_while(|t| **t < sent[i] + 1_000_000_000).count())
            .max()
            .unwrap_or(0);
        assert_eq!(busiest, 10, "at most max_cps INVITEs in any second, over all shards");
        assert!(sent.windows(2).all(|w| w[1] - w[0] == 100_000_000), "slots evenly spaced, none shared");
    }

    #[tokio::test(start_paused = true)]
    async fn weighted_round_robin_by_priority_and_health() {
        let ts = vec![trunk("a", 1, 3, 10), trunk("b", 1, 1, 10), trunk("backup", 2, 1, 10)];
        let now = Instant::now();
        let picks: Vec<usize> = (0..8).map(|_| pick(&ts, &[], now).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6, "{picks:?}");
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 2, "{picks:?}");
        ts[0].failed(true, 3, Duration::from_secs(30), now);
        assert_eq!(pick(&ts, &[], now), Some(1), "a trunk fault takes a trunk out at once");
        assert_eq!(pick(&ts, &[1], now), Some(2), "the next priority when the first is out");
        for _ in 0..2 {
            ts[1].failed(false, 3, Duration::from_secs(30), now);
        }
        assert_eq!(pick(&ts, &[], now), Some(1), "two 5xx of three allowed: still in");
        ts[1].failed(false, 3, Duration::from_secs(30), now);
        assert_eq!(pick(&ts, &[], now), Some(2));
        ts[2].failed(true, 3, Duration::from_secs(30), now);
        assert_eq!(pick(&ts, &[], now), None, "every trunk out");
        ts[0].failed(true, 3, Duration::from_secs(30), now + Duration::from_secs(10));
        assert_eq!(ts[0].backoff.get(), Duration::from_secs(30), "calls failing while it is out: the same outage");
        let back = now + Duration::from_secs(31);
        assert_eq!(pick(&ts, &[], back), Some(0), "back after the back-off");
        ts[0].failed(true, 3, Duration::from_secs(30), back);
        assert_eq!(ts[0].backoff.get(), Duration::from_secs(60), "failing again once back: the back-off doubles");
        assert_eq!(pick(&ts, &[], back + Duration::from_secs(59)), Some(1));
        assert_eq!(pick(&ts, &[], back + Duration::from_secs(61)), Some(0));
    }

    #[test]
    fn orphans_fill_this_processs_shards_in_order_within_their_shares() {
        // 10 channels over 4 shards in all (3, 3, 2, 2); this process has shards 2 and 3.
        let mine = [(2, 4), (3, 4)];
        assert_eq!(orphan_holds(3, 10, &mine), [2, 1]);
        assert_eq!(orphan_holds(0, 10, &mine), [0, 0]);
        assert_eq!(orphan_holds(9, 10, &mine), [2, 2], "never past a shard's share");
    }

    #[tokio::test(start_paused = true)]
    async fn seized_channels_are_taken_whatever_is_free_and_given_back_when_dropped() {
        let t = trunk("a", 1, 1, 2);
        let c = t.channel().await;
        let held = t.seize(2);
        assert_eq!(t.in_use.get(), 3, "seized past the share");
        drop(c);
        let waiting = tokio::time::timeout(Duration::from_secs(1), t.channel()).await;
        assert!(waiting.is_err(), "a new call waits while the seized channels are held");
        drop(held);
        let _c =
            tokio::time::timeout(Duration::from_secs(1), t.channel()).await.expect("free once they are given back");
        assert_eq!(t.in_use.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn channels_wait_and_pacing_spaces_invites() {
        let t = trunk("a", 1, 1, 1);
        let c = t.channel().await;
        let second = tokio::time::timeout(Duration::from_secs(1), t.channel()).await;
        assert!(second.is_err(), "the only channel is taken: a second call waits");
        drop(c);
        assert!(t.has_room(), "a dropped channel is given back");
        let _c = tokio::time::timeout(Duration::from_secs(1), t.channel()).await.expect("a free channel at once");
        let mut settings = t.s.clone();
        settings.max_cps = 20;
        let paced = Trunk::new(settings.clone(), t.addr, 1, 2, Duration::ZERO);
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..12 {
            paced.pace().await;
            at.push((Instant::now() - start).as_millis());
        }
        assert_eq!(at[..4], [0, 100, 200, 300], "shard 1 of 2 on a 20-CPS trunk: 10 INVITEs a second, evenly");
        assert_eq!(at[10..], [1000, 1100], "and never 11 within a second");
        let margin = Trunk::new(settings, t.addr, 1, 2, Duration::from_millis(100));
        let start = Instant::now();
        for _ in 0..11 {
            margin.pace().await;
        }
        assert_eq!(Instant::now() - start, Duration::from_millis(1100), "a 100 ms margin: 10 per 1.1 s");
    }
}
