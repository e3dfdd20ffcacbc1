//! The SIP provider: a UAC per shard placing calls over SIP trunks (RFC 3261, UDP, signalling
//! only: the SDP offer names a media endpoint, the dialer sends no RTP).
//!
//! Each shard owns one UDP socket, its dialogs and its share of every trunk's channels and calls
//! per second: no lock and no shared state across cores. [`SipProvider::start`] binds the socket
//! and spawns the shard-local reader ([`transport`]), which routes what arrives to the call it
//! belongs to by Call-ID; each call is a future ([`call`]) that runs its INVITE transaction,
//! dialog and teardown and ends with the attempt's outcome.

pub mod call;
pub mod digest;
pub mod message;
pub mod transport;
pub mod trunk;

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use dialer_domain::messages::DispatchMessage;

use crate::provider::{CallFuture, Provider};
pub use trunk::TrunkSettings;

/// The SIP provider's settings (from `[provider]` and `[[provider.trunks]]`).
#[derive(Clone, Debug, PartialEq)]
pub struct SipSettings {
    pub trunks: Vec<TrunkSettings>,
    /// Address the shards' UDP sockets bind to (each shard its own port).
    pub bind_ip: IpAddr,
    /// Ring timeout: CANCEL after this long without an answer (`no_answer`).
    pub ring_timeout: Duration,
    /// Longest talk time: BYE after this long answered.
    pub max_call: Duration,
    /// RFC 3261 T1 (round-trip estimate, 500 ms); Timer B and F are 64 × T1.
    pub t1: Duration,
    /// Where answered calls' audio goes: the RTP address named in the SDP offer (an IVR or
    /// media server); `None` = this host, port 9 (discard).
    pub media: Option<SocketAddr>,
    /// Hand answered calls on with REFER to this SIP URI (IVR, queue, agent); `None` = keep them.
    pub refer_to: Option<String>,
    /// Consecutive failures (5xx, timeouts) that take a trunk out of rotation.
    pub trunk_failures: u32,
    /// First back-off of a failed trunk (doubled at each failure after it, up to 16 ×).
    pub trunk_backoff: Duration,
    /// How much longer than a second the CPS window is: a trunk's `max_cps` INVITEs go out over
    /// 1 s + this, so the jitter between our send and the carrier's count (scheduling, network)
    /// up to this much never shows the carrier more than `max_cps` in a second.
    pub cps_margin: Duration,
}

impl Default for SipSettings {
    fn default() -> Self {
        SipSettings {
            trunks: Vec::new(),
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            ring_timeout: Duration::from_secs(30),
            max_call: Duration::from_secs(3600),
            t1: Duration::from_millis(500),
            media: None,
            refer_to: None,
            trunk_failures: 3,
            trunk_backoff: Duration::from_secs(30),
            cps_margin: Duration::from_millis(100),
        }
    }
}

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
    #[error(
        "trunk {trunk}: max_cps {cps} is below the {shards} shards of the data plane(s); each shard \
         paces its own whole share of the trunk's calls per second (raise max_cps or lower shards.count)"
    )]
    TooFewCps { trunk: String, cps: u32, shards: usize },
    #[error("cannot bind a SIP socket on {addr}: {source}; set provider.sip_bind to an address of this host")]
    Bind { addr: SocketAddr, source: std::io::Error },
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
    pub async fn start(settings: SipSettings, shard: usize, shards: usize) -> Result<SipProvider, SipError> {
        if settings.trunks.is_empty() {
            return Err(SipError::NoTrunks);
        }
        for t in &settings.trunks {
            if (t.max_channels as usize) < shards {
                return Err(SipError::TooFewChannels { trunk: t.name.clone(), channels: t.max_channels, shards });
            }
            if t.max_cps != 0 && (t.max_cps as usize) < shards {
                return Err(SipError::TooFewCps { trunk: t.name.clone(), cps: t.max_cps, shards });
            }
        }
        let addr = SocketAddr::new(settings.bind_ip, 0);
        let socket = tokio::net::UdpSocket::bind(addr).await.map_err(|source| SipError::Bind { addr, source })?;
        let uac = call::Uac::new(settings, socket, shard, shards).map_err(|source| SipError::Bind { addr, source })?;
        tokio::task::spawn_local(transport::read_loop(uac.clone()));
        Ok(SipProvider { uac })
    }

    /// The shard's SIP address (its Contact and Via).
    pub fn local_addr(&self) -> SocketAddr {
        self.uac.local
    }
}

impl Drop for SipProvider {
    fn drop(&mut self) {
        self.uac.stop.notify_one();
    }
}

impl Provider for SipProvider {
    fn place_call(&self, msg: &DispatchMessage) -> CallFuture {
        Box::pin(call::place(self.uac.clone(), msg.clone()))
    }
}
