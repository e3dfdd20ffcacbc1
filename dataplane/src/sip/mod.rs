//! The SIP provider: a UAC per shard placing calls over SIP trunks (RFC 3261, UDP). A call whose
//! campaign has a media plan (`telephony.media`) gets its own RTP stream ([`media`]) playing
//! prompts ([`prompts`]) and listening (detection, keys); other calls are signalling only, their
//! SDP naming the campaign's media endpoint or a discard port.
//!
//! Each shard owns one UDP socket, its dialogs and its share of every trunk's channels and calls
//! per second: no lock and no shared state across cores. [`SipProvider::start`] binds the socket
//! and spawns the shard-local reader ([`transport`]), which routes what arrives to the call it
//! belongs to by Call-ID; each call is a future ([`call`]) that runs its INVITE transaction,
//! dialog and teardown and ends with the attempt's outcome.

pub mod call;
pub mod digest;
pub mod media;
pub mod message;
pub mod pacer;
pub mod prompts;
pub mod sdp;
pub mod transport;
pub mod trunk;

use std::net::SocketAddr;
use std::rc::Rc;

use dialer_domain::messages::DispatchMessage;

use crate::ProviderSettings;
use crate::provider::{CallFuture, Provider};
pub use trunk::TrunkSettings;

/// Why the SIP provider cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SipError {
    #[error("provider.trunks is empty: configure at least one [[provider.trunks]]")]
    NoTrunks,
    #[error(
        "trunk {trunk}: max_channels {channels} is below the {shards} shards of the data plane(s); \
         each shard needs one channel at least (raise max_channels or lower shards.count)"
    )]
    TooFewChannels { trunk: String, channels: u32, shards: usize },
    #[error("cannot bind a SIP socket on {addr}: {source}; set provider.sip_bind to an address of this host")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(
        "trunk {trunk}: cannot resolve its proxy {proxy:?}; give a reachable host:port, e.g. sip.carrier.example:5060"
    )]
    Unresolvable { trunk: String, proxy: String },
}

/// Checks the trunks against `shards` (every shard of every process of the data plane) before
/// any starts: at least one trunk, a channel per shard on each, a proxy that resolves. The
/// proxies' addresses, in the trunks' order. (A trunk with fewer calls per second than shards
/// is fine: the shards take turns, see [`trunk::Turns`].)
pub fn check(settings: &ProviderSettings, shards: usize) -> Result<Vec<SocketAddr>, SipError> {
    if settings.trunks.is_empty() {
        return Err(SipError::NoTrunks);
    }
    for t in &settings.trunks {
        if (t.max_channels as usize) < shards {
            return Err(SipError::TooFewChannels { trunk: t.name.clone(), channels: t.max_channels, shards });
        }
    }
    settings
        .trunks
        .iter()
        .map(|t| t.proxy_addr().ok_or_else(|| SipError::Unresolvable { trunk: t.name.clone(), proxy: t.proxy.clone() }))
        .collect()
}

/// One shard's SIP user agent (client side).
pub struct SipProvider {
    uac: Rc<call::Uac>,
}

impl std::fmt::Debug for SipProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipProvider").field("local", &self.uac.local).finish()
    }
}

impl SipProvider {
    /// Binds the shard's socket and starts its reader on the current `LocalSet`. `shard` is the
    /// shard's index among `shards` in all (every process of the data plane), which fixes its
    /// share of each trunk's channels and calls per second.
    pub async fn start(settings: ProviderSettings, shard: usize, shards: usize) -> Result<SipProvider, SipError> {
        let proxies = check(&settings, shards)?;
        let addr = SocketAddr::new(settings.bind_ip, 0);
        let socket = tokio::net::UdpSocket::bind(addr).await.map_err(|source| SipError::Bind { addr, source })?;
        let uac = call::Uac::new(settings, &proxies, socket, (shard, shards))
            .map_err(|source| SipError::Bind { addr, source })?;
        tokio::task::spawn_local(transport::read_loop(uac.clone()));
        tokio::task::spawn_local(uac.pacer.clone().run());
        Ok(SipProvider { uac })
    }

    /// Holds `per_trunk[t]` channels of trunk `t` until `until` for calls a killed process may
    /// have left up (the journal's unresolved attempts; which trunk each went out on is not
    /// recorded, so every trunk holds them).
    pub fn hold_orphans(&self, per_trunk: &[u32], until: tokio::time::Instant) {
        let held: Vec<trunk::Channel> =
            self.uac.trunks().iter().zip(per_trunk).flat_map(|(t, &n)| t.seize(n)).collect();
        if held.is_empty() {
            return;
        }
        tracing::warn!(
            channels = ?per_trunk,
            for_s = until.saturating_duration_since(tokio::time::Instant::now()).as_secs(),
            "trunk channels held for calls a killed data plane may have left up (journal attempts without an outcome), until the longest call has passed"
        );
        tokio::task::spawn_local(async move {
            tokio::time::sleep_until(until).await;
            drop(held);
        });
    }

    /// How late this shard's RTP packets went out after their slots (packets per 0.1 ms,
    /// the last bucket for 100 ms and more).
    pub fn rtp_lateness(&self) -> Vec<u64> {
        self.uac.pacer.lateness()
    }

    /// The shard's SIP address (its Contact and Via).
    pub fn local_addr(&self) -> SocketAddr {
        self.uac.local
    }
}

impl Drop for SipProvider {
    fn drop(&mut self) {
        self.uac.stop.notify_one();
        self.uac.pacer.stop();
    }
}

impl Provider for SipProvider {
    fn place_call(&self, msg: &DispatchMessage) -> CallFuture {
        Box::pin(call::place(self.uac.clone(), msg.clone()))
    }
}
