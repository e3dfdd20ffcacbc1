//! `bench chaos --sip`: the data planes place their calls through the SIP provider against two
//! trunks of the run's own, each a sipp far end on a port of its own (`testkit/sip/trunk.xml`:
//! rings up to `--ring-ms`, talks `--call-ms`, hangs up), their channels and calls per second
//! capped (`--trunk-channels`, `--trunk-cps`). Faults: `sip-kill` SIGKILLs a trunk's sipp with
//! its calls up and starts it again on the same port `--sip-down-s` later; `sip-503` puts a sipp
//! answering 503 (`testkit/sip/refuse.xml`) in its place for `--sip-503-s`. Each kind of fault takes
//! the trunks in turn, one outage at a time.
//!
//! The audit's ledger is the far ends' own logs, on their wall clock: each INVITE (its Call-ID
//! names the dialer's call and attempt), each answer, each hang-up. The answered legs are the
//! run's ledger of calls placed (an attempt answered on two Call-IDs is a duplicate there); the
//! trunks' own audit: no trunk over its channels at any instant (a call holds a channel from its
//! INVITE to its hang-up, or to its far end's death) or over its calls per second in any second.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use dialer_testkit::sip::{
    FarEndLine, REFUSE_SCENARIO, Sipp, channel_peak, far_end_lines, free_udp_port, most_within, trunk_scenario,
};
use serde_json::json;
use uuid::Uuid;

/// The `--sip` part of `bench chaos`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct SipArgs {
    /// Place the calls through the SIP provider against two sipp trunks (faults `sip-kill`,
    /// `sip-503`), audited from the far ends' logs.
    #[arg(long)]
    pub sip: bool,
    /// Channels of each trunk (default: half of `--global-cap`: both trunks together hold the
    /// global cap, one alone binds).
    #[arg(long, default_value_t = 0)]
    pub trunk_channels: u32,
    /// Calls per second of each trunk (default: three quarters of `--global-cap`).
    #[arg(long, default_value_t = 0)]
    pub trunk_cps: u32,
    /// A trunk's far end is SIGKILLed this often (fault `sip-kill`), the trunks in turn.
    #[arg(long, default_value_t = 20)]
    pub sip_kill_every_s: u64,
    /// How long a killed far end stays down.
    #[arg(long, default_value_t = 4)]
    pub sip_down_s: u64,
    /// A trunk answers 503 to every call this often (fault `sip-503`), the trunks in turn.
    #[arg(long, default_value_t = 20)]
    pub sip_503_every_s: u64,
    /// How long a trunk answers 503.
    #[arg(long, default_value_t = 6)]
    pub sip_503_s: u64,
}

impl SipArgs {
    pub fn channels(&self, global_cap: u32) -> u32 {
        if self.trunk_channels > 0 { self.trunk_channels } else { global_cap.div_ceil(2) }
    }

    pub fn cps(&self, global_cap: u32) -> u32 {
        if self.trunk_cps > 0 { self.trunk_cps } else { (global_cap * 3).div_ceil(4) }
    }
}

/// A far end of a trunk, and when it stopped (µs since the epoch; `None` while it runs).
struct FarEnd {
    sipp: Sipp,
    refusing: bool,
    stopped_us: Option<u64>,
}

/// One trunk: its port, and every far end it had (the audit reads all their logs).
struct Trunk {
    name: String,
    port: u16,
    far_ends: Vec<FarEnd>,
}

impl Trunk {
    fn current(&mut self) -> Option<&mut FarEnd> {
        self.far_ends.last_mut().filter(|f| f.stopped_us.is_none())
    }

    /// Stops the running far end (SIGKILL), noting when.
    fn stop(&mut self) {
        if let Some(f) = self.current() {
            f.sipp.kill();
            f.stopped_us = Some(now_us());
        }
    }

    fn start(&mut self, scenario: &str, refusing: bool) -> Result<()> {
        let sipp = Sipp::uas_at(scenario, self.port).map_err(|e| anyhow!("trunk {}: {e}", self.name))?;
        self.far_ends.push(FarEnd { sipp, refusing, stopped_us: None });
        Ok(())
    }
}

/// An outage under way: which trunk, and when its answering far end comes back.
struct Outage {
    trunk: usize,
    back: Instant,
}

/// The run's trunks and their faults.
pub struct Trunks {
    args: SipArgs,
    trunks: Vec<Trunk>,
    /// The answering scenario, its ring and talk times filled in.
    scenario: String,
    /// The longest an answered call may talk (its hang-up when the far end's log lacks it).
    longest_ms: u64,
    /// The far ends' longest ring.
    ring_ms: u64,
    channels: u32,
    cps: u32,
    next_kill: Instant,
    next_refusal: Instant,
    outage: Option<Outage>,
    pub kills: u64,
    pub refusals: u64,
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

impl Trunks {
    /// Starts both trunks' far ends; `call_ms` and `ring_ms` as the mock provider's.
    pub fn start(args: &SipArgs, global_cap: u32, (min_ms, max_ms): (u64, u64), ring_ms: u64) -> Result<Trunks> {
        let scenario = trunk_scenario(ring_ms, min_ms, max_ms);
        let mut trunks = Vec::new();
        for k in 0..2 {
            let mut t = Trunk { name: format!("trunk-{k}"), port: free_udp_port(), far_ends: Vec::new() };
            t.start(&scenario, false)?;
            trunks.push(t);
        }
        let now = Instant::now();
        Ok(Trunks {
            args: args.clone(),
            trunks,
            scenario,
            longest_ms: ring_ms + max_ms,
            ring_ms,
            channels: args.channels(global_cap),
            cps: args.cps(global_cap),
            next_kill: now + Duration::from_secs(args.sip_kill_every_s),
            next_refusal: now + Duration::from_secs(args.sip_503_every_s),
            outage: None,
            kills: 0,
            refusals: 0,
        })
    }

    /// The data planes' `[provider]` section: the SIP provider, both trunks of equal priority
    /// and weight; the dialer never hangs up first (the far end does, by `--call-ms`). Timers
    /// sized for loopback far ends (T1 100 ms, a 2 s ring timeout, talk a second past the far
    /// end's longest), so the longest call is ~17 s: a killed data plane's lease and the trunk
    /// channels a restarted one holds for its calls last that long (instead of 99 s at the
    /// defaults, which with a kill every few seconds would hold the caps all the time).
    pub fn provider_config(&self) -> String {
        let mut out = format!(
            "[provider]\nkind = \"sip\"\nmax_call_ms = {}\nring_timeout_ms = {}\nsip_t1_ms = 100\n",
            self.longest_ms + 1000,
            2000 + self.ring_ms
        );
        for t in &self.trunks {
            out.push_str(&format!(
                "[[provider.trunks]]\nname = \"{}\"\nproxy = \"127.0.0.1:{}\"\nfrom_user = \"dialer\"\n\
                 from_domain = \"dialer.test\"\nmax_channels = {}\nmax_cps = {}\n",
                t.name, t.port, self.channels, self.cps
            ));
        }
        out
    }

    /// The fault due now, if any: an outage ends, or a far end is killed or starts refusing.
    pub fn fault(&mut self, kill: bool, refuse: bool, now: Instant) -> Result<Option<String>> {
        if let Some(o) = &self.outage {
            if now < o.back {
                return Ok(None);
            }
            let k = o.trunk;
            self.outage = None;
            return self.restore(k).map(Some);
        }
        if kill && now >= self.next_kill {
            self.next_kill = now + Duration::from_secs(self.args.sip_kill_every_s);
            // Each kind of fault takes the trunks in turn on its own (one turn for both made the
            // kills, alternating with the refusals, fall to one trunk and the refusals to the other).
            let k = self.kills as usize % self.trunks.len();
            self.kills += 1;
            self.trunks[k].stop();
            self.outage = Some(Outage { trunk: k, back: now + Duration::from_secs(self.args.sip_down_s) });
            return Ok(Some(format!("SIGKILL {}'s far end for {} s", self.trunks[k].name, self.args.sip_down_s)));
        }
        if refuse && now >= self.next_refusal {
            self.next_refusal = now + Duration::from_secs(self.args.sip_503_every_s);
            let k = (self.refusals as usize + 1) % self.trunks.len();
            self.refusals += 1;
            let t = &mut self.trunks[k];
            t.stop();
            t.start(REFUSE_SCENARIO, true)?;
            self.outage = Some(Outage { trunk: k, back: now + Duration::from_secs(self.args.sip_503_s) });
            return Ok(Some(format!("{} answering 503 for {} s", self.trunks[k].name, self.args.sip_503_s)));
        }
        Ok(None)
    }

    /// Trunk `k`'s answering far end started again (after a kill, or in a refusing one's place).
    fn restore(&mut self, k: usize) -> Result<String> {
        let t = &mut self.trunks[k];
        t.stop();
        t.start(&self.scenario, false)?;
        Ok(format!("{} answering again", t.name))
    }

    /// Brings a trunk out of its outage for the drain.
    pub fn end_faults(&mut self) -> Result<()> {
        if let Some(o) = self.outage.take() {
            self.restore(o.trunk)?;
        }
        Ok(())
    }

    /// Every INVITE the far ends logged, as legs of the dialer's attempts.
    pub fn legs(&self) -> Result<Vec<Leg>> {
        let mut out = Vec::new();
        for (k, t) in self.trunks.iter().enumerate() {
            for f in &t.far_ends {
                let log = std::fs::read_to_string(f.sipp.dir().join("invites.log")).unwrap_or_default();
                let bound = |invite_us: u64| {
                    let planned = invite_us + self.longest_ms * 1000 + 1_000_000;
                    f.stopped_us.map_or(planned, |s| s.min(planned))
                };
                out.extend(parse_log(&log, k, f.refusing, bound)?);
            }
        }
        Ok(out)
    }

    /// The per-trunk audit: peaks against the caps, and the legs each trunk saw.
    pub fn audit(&self, legs: &[Leg]) -> SipAudit {
        let mut a = SipAudit::default();
        for (k, t) in self.trunks.iter().enumerate() {
            let mine: Vec<&Leg> = legs.iter().filter(|l| l.trunk == k).collect();
            let channels = channel_peak(mine.iter().filter(|l| !l.refused).map(|l| (l.invite_us, l.end_us)));
            let cps = most_within(mine.iter().map(|l| l.invite_us).collect(), 1_000_000);
            a.over_channels += u64::from(channels > i64::from(self.channels));
            a.over_cps += u64::from(cps > self.cps as usize);
            a.trunks.push(json!({
                "trunk": t.name, "invites": mine.len(),
                "answered": mine.iter().filter(|l| l.answered).count(),
                "refused_503": mine.iter().filter(|l| l.refused).count(),
                "far_ends_started": t.far_ends.len(),
                "channels_cap": self.channels, "channels_peak": channels,
                "cps_cap": self.cps, "cps_peak": cps,
            }));
        }
        a
    }

    /// Where the far ends' logs are kept after a failed run.
    pub fn keep_logs(&self, dir: &Path) {
        for t in &self.trunks {
            for (i, f) in t.far_ends.iter().enumerate() {
                let _ = std::fs::copy(f.sipp.dir().join("invites.log"), dir.join(format!("{}-{i}.log", t.name)));
            }
        }
    }
}

/// What the trunks' ledgers show.
#[derive(Debug, Default)]
pub struct SipAudit {
    pub trunks: Vec<serde_json::Value>,
    /// Trunks whose channels were exceeded at some instant, or calls per second in some second.
    pub over_channels: u64,
    pub over_cps: u64,
}

impl SipAudit {
    pub fn clean(&self) -> bool {
        self.over_channels == 0 && self.over_cps == 0
    }
}

/// One INVITE a far end received: the attempt it carried (from its Call-ID), when, and how it
/// went; `end_us` is its hang-up, or when its far end died, or its latest possible end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leg {
    pub trunk: usize,
    pub call: Uuid,
    pub attempt: u32,
    pub invite_us: u64,
    pub end_us: u64,
    pub answered: bool,
    pub refused: bool,
}

/// The dialer's call and attempt from its Call-ID (`<call, simple>.<attempt>.<token>@<host>`).
fn attempt_of(call_id: &str) -> Option<(Uuid, u32)> {
    let mut parts = call_id.split('.');
    let call = Uuid::try_parse(parts.next()?).ok()?;
    Some((call, parts.next()?.parse().ok()?))
}

/// A far end's log ([`far_end_lines`]) as legs; `bound` gives the end of a call whose hang-up
/// is not in the log.
fn parse_log(log: &str, trunk: usize, refusing: bool, bound: impl Fn(u64) -> u64) -> Result<Vec<Leg>> {
    let mut legs: HashMap<String, Leg> = HashMap::new();
    let mut ends: HashMap<String, u64> = HashMap::new();
    for line in far_end_lines(log) {
        let FarEndLine { what, at_us, call_id } = line.map_err(|e| anyhow!(e))?;
        match what {
            "invite" | "refused" => {
                let (call, attempt) =
                    attempt_of(call_id).ok_or_else(|| anyhow!("far end's log: Call-ID {call_id:?}"))?;
                let leg = Leg {
                    trunk,
                    call,
                    attempt,
                    invite_us: at_us,
                    end_us: if refusing { at_us } else { bound(at_us) },
                    answered: false,
                    refused: refusing,
                };
                legs.entry(call_id.to_string()).or_insert(leg);
            }
            "answer" => {
                if let Some(l) = legs.get_mut(call_id) {
                    l.answered = true;
                }
            }
            "end" => {
                ends.insert(call_id.to_string(), at_us);
            }
            _ => {}
        }
    }
    for (id, end) in ends {
        if let Some(l) = legs.get_mut(&id) {
            l.end_us = end;
        }
    }
    Ok(legs.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_far_ends_log_gives_each_attempt_its_leg_and_a_dead_far_end_ends_its_calls() {
        let call = Uuid::from_u128(7);
        let id = |attempt: u32, token: &str| format!("{}.{attempt}.{token}@127.0.0.1", call.simple());
        let log = format!(
            "invite 2026-12-07\t14:22:13.0\t100.000000 {a}\nanswer 2026-12-07\t14:22:13.1\t100.100000 {a}\n\
             end 2026-12-07\t14:22:13.5\t100.500000 {a}\ninvite 2026-12-07\t14:22:14.0\t101.000000 {b}\n",
            a = id(1, "x"),
            b = id(2, "y"),
        );
        let mut legs = parse_log(&log, 1, false, |_| 101_250_000).expect("parsed");
        legs.sort_by_key(|l| l.attempt);
        assert_eq!(
            legs.iter().map(|l| (l.attempt, l.invite_us, l.end_us, l.answered)).collect::<Vec<_>>(),
            vec![(1, 100_000_000, 100_500_000, true), (2, 101_000_000, 101_250_000, false)]
        );
        assert!(legs.iter().all(|l| l.call == call && l.trunk == 1));
    }
}
