//! The Redis backend (fred): the pool semantics of [`crate::model`] as Lua scripts, loaded once
//! and run by SHA (reloaded by themselves after a Redis restart flushed the script cache).
//!
//! Keys, under a configurable prefix whose `{hash tag}` keeps them in one Cluster slot (default
//! `{dialer}:`): `sem:global:concurrency` (tokens held in all), `sem:global:limit` (live override
//! of the global cap), `sem:campaign:<id>:concurrency`, `sem:campaign:<id>:limit`, `sem:leases`
//! (hash `holder|campaign` → `count:generation`), `sem:lease_expiry` (sorted set by expiry),
//! `sem:campaigns` (campaigns seen, for reconciliation), `sem:fair` (hash campaign →
//! `demand:want:cap:weight` summed over its live leases, for fair shares), `sem:fair:claims` (the sum
//! of every campaign's claim on the global cap, so a sync knows without reading `sem:fair` whether
//! the cap binds; dropped by a reconcile, counted again when missing), `sem:epoch` (the pool's epoch, to tell a
//! Redis that lost its data) and `sem:recovery` (exists during the recovery window after a loss).

use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::config::{Config, ConnectionConfig, PerformanceConfig, ReconnectPolicy};
use fred::types::scripts::Script;
use uuid::Uuid;

use crate::model::{SyncItem, SyncReply, SyncRequest};
use crate::{LimiterError, Reconciled, Usage};

const REAP_LUA: &str = include_str!("reap.lua");
const SYNC_LUA: &str = include_str!("sync.lua");
const RECONCILE_LUA: &str = include_str!("reconcile.lua");
/// Expired leases reaped per sync call at most (reconciliation reaps the rest).
const REAP_PER_SYNC: u32 = 64;

/// Default key prefix: `{dialer}` is the Cluster hash tag.
pub const DEFAULT_PREFIX: &str = "{dialer}:";

#[derive(Clone)]
pub struct RedisBackend {
    client: Client,
    sync: Arc<Script>,
    reconcile: Arc<Script>,
    prefix: Arc<str>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

fn unavailable(e: fred::error::Error) -> LimiterError {
    LimiterError::Unavailable(e)
}

impl RedisBackend {
    /// Connects to `url` (`redis://HOST:PORT[/DB]`) and loads the scripts. Commands time out
    /// after `timeout`, so a dead Redis fails updates fast (fail-closed) while the client keeps
    /// reconnecting in the background.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<RedisBackend, LimiterError> {
        let config = Config::from_url(url)
            .map_err(|e| LimiterError::Config { key: "redis_url", reason: format!("{url:?}: {e}") })?;
        let perf = PerformanceConfig { default_command_timeout: timeout, ..Default::default() };
        let conn = ConnectionConfig {
            connection_timeout: timeout,
            internal_command_timeout: timeout,
            max_command_attempts: 1,
            ..Default::default()
        };
        let client = Client::new(config, Some(perf), Some(conn), Some(ReconnectPolicy::new_constant(0, 100)));
        client.init().await.map_err(unavailable)?;
        let backend = RedisBackend {
            client,
            sync: Arc::new(Script::from_lua(format!("{REAP_LUA}\n{SYNC_LUA}"))),
            reconcile: Arc::new(Script::from_lua(format!("{REAP_LUA}\n{RECONCILE_LUA}"))),
            prefix: prefix.into(),
        };
        backend.sync.load(&backend.client).await.map_err(unavailable)?;
        backend.reconcile.load(&backend.client).await.map_err(unavailable)?;
        Ok(backend)
    }

    /// The underlying client (benches read `INFO commandstats` through it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}sem:{suffix}", self.prefix)
    }

    fn campaign_key(&self, c: Uuid, suffix: &str) -> String {
        format!("{}sem:campaign:{c}:{suffix}", self.prefix)
    }

    pub async fn sync(
        &self,
        holder: &str,
        ttl: Duration,
        global_cap: u32,
        epoch: u64,
        reqs: &[SyncRequest],
    ) -> Result<SyncReply, LimiterError> {
        let keys = vec![
            self.key("global:concurrency"),
            self.key("global:limit"),
            self.key("leases"),
            self.key("lease_expiry"),
            self.key("campaigns"),
            self.key("epoch"),
            self.key("recovery"),
            self.key("fair"),
        ];
        let mut args: Vec<String> = Vec::with_capacity(6 + 8 * reqs.len());
        args.extend([
            self.prefix.to_string(),
            holder.to_string(),
            ttl.as_millis().to_string(),
            global_cap.to_string(),
            REAP_PER_SYNC.to_string(),
            epoch.to_string(),
        ]);
        for r in reqs {
            args.extend([
                r.campaign.to_string(),
                r.want.to_string(),
                r.generation.to_string(),
                r.campaign_cap.to_string(),
                r.in_use.to_string(),
                r.demand.to_string(),
                r.weight.to_string(),
                // Computed here, once per request, rather than by a byte loop in the script,
                // which runs on Redis's single thread.
                crate::fair::dither(&format!("{holder}|{}", r.campaign)).to_string(),
            ]);
        }
        let out: Vec<i64> = self.sync.evalsha_with_reload(&self.client, keys, args).await.map_err(unavailable)?;
        if out.len() != 3 * reqs.len() + 3 {
            return Err(LimiterError::Protocol { script: "sync", values: out });
        }
        let (triples, tail) = out.split_at(3 * reqs.len());
        let items = triples
            .chunks_exact(3)
            .map(|p| SyncItem { held: p[0].max(0) as u32, cap: p[1].max(0) as u32, target: p[2].max(0) as u32 })
            .collect();
        Ok(SyncReply { items, reaped: tail[0].max(0) as u32, epoch: tail[1].max(0) as u64, recovering: tail[2] == 1 })
    }

    pub async fn reconcile(&self) -> Result<Reconciled, LimiterError> {
        let keys = vec![
            self.key("global:concurrency"),
            self.key("leases"),
            self.key("lease_expiry"),
            self.key("campaigns"),
            self.key("fair"),
        ];
        let out: Vec<i64> = self
            .reconcile
            .evalsha_with_reload(&self.client, keys, vec![self.prefix.to_string()])
            .await
            .map_err(unavailable)?;
        match out.as_slice() {
            [g, c, r] => Ok(Reconciled { global_drift: *g, campaign_drift: *c, reaped_tokens: *r }),
            _ => Err(LimiterError::Protocol { script: "reconcile", values: out }),
        }
    }

    pub async fn usage(&self, campaign: Uuid) -> Result<Usage, LimiterError> {
        let (g, c): (Option<i64>, Option<i64>) = self
            .client
            .mget(vec![self.key("global:concurrency"), self.campaign_key(campaign, "concurrency")])
            .await
            .map_err(unavailable)?;
        Ok(Usage { global: g.unwrap_or(0), campaign: c.unwrap_or(0) })
    }

    /// Sets or clears a live cap override (global when `campaign` is `None`).
    pub async fn set_limit(&self, campaign: Option<Uuid>, limit: Option<u32>) -> Result<(), LimiterError> {
        let key = match campaign {
            Some(c) => self.campaign_key(c, "limit"),
            None => self.key("global:limit"),
        };
        match limit {
            Some(l) => self.client.set::<(), _, _>(key, l, None, None, false).await,
            None => self.client.del::<(), _>(key).await,
        }
        .map_err(unavailable)
    }

    /// Checks that Redis answers (readiness probes).
    pub async fn ping(&self) -> Result<(), LimiterError> {
        self.client.ping::<String>(None).await.map(|_| ()).map_err(unavailable)
    }

    /// Adds `by` to the global counter (tests of reconciliation).
    #[doc(hidden)]
    pub async fn skew_global(&self, by: i64) -> Result<(), LimiterError> {
        self.client.incr_by::<(), _>(self.key("global:concurrency"), by).await.map_err(unavailable)
    }
}
