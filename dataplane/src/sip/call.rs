//! One call as a UAC runs it (RFC 3261): the INVITE client transaction (Timer A retransmits,
//! Timer B gives up, provisional responses, digest challenges, non-2xx ACK), the ring timeout's
//! CANCEL (only after a provisional response), the dialog once answered (ACK for every 2xx, the
//! far end's BYE/OPTIONS/re-INVITE/UPDATE/NOTIFY answered, REFER to hand the call on), and the
//! BYE at the maximum call length (Timer E retransmits, Timer F gives up). The call's channel
//! and concurrency token are held until the dialog is over.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use dialer_domain::media::{MediaPlan, MediaResult, Play, Script, Step};
use dialer_domain::messages::DispatchMessage;
use dialer_domain::outcome::{Outcome, SipContext, SipVerdict, classify_sip, parse_retry_after};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::digest::Challenge;
use super::media::{FRAME, Heard, PortPool, RtpStream};
use super::message::{self, Message, Start, uri_of};
use super::prompts::{Prompt, Prompts};
use super::transport::Lingering;
use super::trunk::{self, Trunk};
use crate::ProviderSettings;
use crate::provider::CallOutcome;
use dialer_domain::messages::SipDetail;

/// A shard's user agent: its socket, trunks and live dialogs (shard-local, behind an `Rc`).
#[derive(Debug)]
pub struct Uac {
    pub local: SocketAddr,
    pub(super) socket: tokio::net::UdpSocket,
    settings: ProviderSettings,
    trunks: Vec<Rc<Trunk>>,
    pub(super) dialogs: RefCell<HashMap<String, mpsc::Sender<Message>>>,
    pub(super) lingering: RefCell<Lingering>,
    pub(super) stop: Notify,
    /// Makes Call-IDs, tags and branches unique: this shard, this process, a counter.
    prefix: String,
    counter: Cell<u64>,
    /// The shard's RTP ports and prompts (calls with a media plan).
    ports: Rc<PortPool>,
    prompts: Prompts,
    /// The shard's media clock: every RTP packet of its calls goes out from it.
    pub(super) pacer: Rc<super::pacer::Pacer>,
}

impl Uac {
    /// The shard's part of each trunk, in the settings' order.
    pub(super) fn trunks(&self) -> &[Rc<Trunk>] {
        &self.trunks
    }

    /// The shard's UAC: `proxies` are the trunks' resolved proxy addresses, in order.
    pub(super) fn new(
        settings: ProviderSettings,
        proxies: &[SocketAddr],
        socket: tokio::net::UdpSocket,
        (shard, shards): (usize, usize),
    ) -> std::io::Result<Rc<Uac>> {
        let local = socket.local_addr()?;
        let trunks = settings
            .trunks
            .iter()
            .zip(proxies)
            .map(|(t, addr)| Rc::new(Trunk::new(t.clone(), *addr, shard, shards, settings.cps_margin)))
            .collect();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Ok(Rc::new(Uac {
            local,
            socket,
            trunks,
            dialogs: RefCell::default(),
            lingering: RefCell::default(),
            stop: Notify::new(),
            prefix: format!("{:x}{:x}s{shard}", std::process::id(), nanos & 0xffff_ffff),
            counter: Cell::new(0),
            ports: PortPool::new(settings.rtp_port_min, settings.rtp_port_max, shard, shards),
            prompts: Prompts::new(&settings.prompts_url, settings.prompts_api_key.clone()),
            pacer: super::pacer::Pacer::new(),
            settings,
        }))
    }

    /// A fresh token for tags, branches and Call-IDs.
    pub(super) fn tag(&self) -> String {
        let n = self.counter.get() + 1;
        self.counter.set(n);
        format!("{}n{n:x}", self.prefix)
    }

    pub(super) async fn send(&self, bytes: &[u8], to: SocketAddr) {
        if let Err(e) = self.socket.send_to(bytes, to).await {
            tracing::debug!(error = %e, %to, "SIP datagram not sent");
        }
    }

    /// The SDP offer: audio to `media` (the call's RTP stream, or the campaign's media
    /// endpoint), else the provider's, else discard.
    fn sdp(&self, session: &str, media: Option<SocketAddr>) -> String {
        let media = media.or(self.settings.media).unwrap_or_else(|| SocketAddr::new(self.local.ip(), 9));
        super::sdp::offer(session, media)
    }
}

/// What a call with a media plan brings to its dialog: its RTP stream, bound before the INVITE
/// (its port is in the offer), and its prompts, loaded before dialling (so a person's message
/// never waits on a fetch).
struct Media {
    plan: MediaPlan,
    stream: RtpStream,
    person: Option<Prompt>,
    voicemail: Option<Prompt>,
}

impl Media {
    /// `None` for a call without a media plan; `Err` (why, as the attempt's reason) when its
    /// prompts or an RTP port cannot be had: the call is not dialled.
    async fn prepare(uac: &Uac, msg: &DispatchMessage) -> Result<Option<Media>, NoMedia> {
        let Some(plan) = msg.telephony.as_deref().and_then(|t| t.media.clone()) else { return Ok(None) };
        let load = |id: Option<uuid::Uuid>| async move {
            match id {
                Some(id) => uac.prompts.get(id).await.map(Some),
                None => Ok(None),
            }
        };
        let person = load(plan.prompt).await?;
        let voicemail = load(plan.voicemail_prompt).await?;
        let stream = RtpStream::bind(uac.local.ip(), &uac.ports).await?;
        Ok(Some(Media { plan, stream, person, voicemail }))
    }
}

/// Why a call's media cannot be had (the call is not dialled).
#[derive(Debug, thiserror::Error)]
enum NoMedia {
    #[error(transparent)]
    Prompt(#[from] super::prompts::PromptError),
    #[error(transparent)]
    Port(#[from] super::media::RtpError),
}

/// How a call ended, as the far end's signalling tells it.
#[derive(Debug)]
enum End {
    /// Answered at `answered`, over at `over`; what its media plan came to.
    Talked { answered: Instant, over: Instant, media: Option<Box<MediaResult>> },
    /// Not answered: the verdict on the final response (`code` None: none came).
    NotAnswered { code: Option<u16>, phrase: String, verdict: SipVerdict },
}

/// Places one attempt: picks a trunk, waits for a channel and a CPS slot there, runs the call.
/// A trunk at fault (credentials, refusal) is taken out and the attempt goes to the next one.
pub async fn place(uac: Rc<Uac>, msg: DispatchMessage) -> CallOutcome {
    let t0 = Instant::now();
    let mut media = match Media::prepare(&uac, &msg).await {
        Ok(m) => m,
        Err(why) => {
            tracing::warn!(call = %msg.call_id, reason = %why, "call not dialled: its media cannot be played");
            return failed(Outcome::Failed, true, t0, None, &why.to_string(), None);
        }
    };
    let mut excluded = Vec::new();
    loop {
        let Some(i) = trunk::pick(&uac.trunks, &excluded, Instant::now()) else {
            return failed(Outcome::Failed, true, t0, None, "no trunk in service", None);
        };
        let trunk = uac.trunks[i].clone();
        let _channel = trunk.channel().await;
        trunk.pace().await;
        trunk.metrics.attempts.increment(1);
        let end = Dialog::new(&uac, &trunk, &msg, media.as_mut()).run().await;
        let s = &uac.settings;
        match end {
            End::Talked { answered, over, media } => {
                trunk.metrics.response(Some(200));
                trunk.metrics.answers.increment(1);
                trunk.worked();
                return CallOutcome::Completed { answered_after: answered - t0, duration: over - t0, media };
            }
            End::NotAnswered { code, phrase, verdict } => {
                trunk.metrics.response(code);
                let (outcome, retryable, trunk_fault, retry_after) = match verdict {
                    SipVerdict::Ended { outcome, retryable, trunk_fault, retry_after } => {
                        (outcome, retryable, trunk_fault, retry_after)
                    }
                    _ => (Outcome::Failed, false, true, None),
                };
                if trunk_fault || (outcome == Outcome::Failed && retryable) {
                    trunk.failed(trunk_fault, s.trunk_failures, s.trunk_backoff, Instant::now());
                } else {
                    trunk.worked();
                }
                if trunk_fault {
                    excluded.push(i);
                    if trunk::pick(&uac.trunks, &excluded, Instant::now()).is_some() {
                        continue;
                    }
                }
                // A trunk's fault is not the lead's: the attempt may be retried.
                return failed(outcome, retryable || trunk_fault, t0, code, &phrase, retry_after);
            }
        }
    }
}

fn failed(
    outcome: Outcome,
    retryable: bool,
    t0: Instant,
    code: Option<u16>,
    phrase: &str,
    retry_after: Option<Duration>,
) -> CallOutcome {
    CallOutcome::Failed {
        reason: outcome.as_str(),
        retryable,
        after: t0.elapsed(),
        sip: Some(Box::new(SipDetail {
            code,
            phrase: phrase.to_string(),
            retry_after_ms: retry_after.map(|d| d.as_millis() as u64),
        })),
    }
}

/// One INVITE dialog on one trunk, registered with the reader by Call-ID while it lives.
struct Dialog<'a> {
    uac: &'a Uac,
    trunk: &'a Trunk,
    rx: mpsc::Receiver<Message>,
    call_id: String,
    from: String,
    to: String,
    ruri: String,
    contact: String,
    cseq: u32,
    branch: String,
    /// `(Proxy-)Authorization` header of the INVITE, after a challenge.
    auth: Option<(&'static str, String)>,
    /// Learned from the 2xx: the far end's To (with tag), target and route set.
    remote_to: String,
    target: String,
    route: Vec<String>,
    /// The last ACK sent, re-sent for retransmitted final responses (also after the call).
    ack: Option<Vec<u8>>,
    /// The campaign's settings where it has them, else the provider's.
    ring_timeout: Duration,
    /// When the ring timeout's CANCEL is due: counted from the INVITE that rings (the one with
    /// credentials, after a challenge).
    ring_deadline: Instant,
    media: Option<SocketAddr>,
    refer_to: Option<String>,
    /// A NOTIFY reported the REFER's final answer.
    transferred: Cell<bool>,
    /// The call's media plan, stream and prompts, if its campaign has a plan.
    rtp: Option<&'a mut Media>,
}

impl Drop for Dialog<'_> {
    fn drop(&mut self) {
        self.uac.dialogs.borrow_mut().remove(&self.call_id);
        if let Some(ack) = self.ack.take() {
            let until = Instant::now() + self.uac.settings.t1 * 64;
            self.uac.lingering.borrow_mut().insert(self.call_id.clone(), ack, self.trunk.addr, until);
        }
    }
}

/// Where the INVITE transaction left the call.
enum Invited {
    /// A 2xx; `true` when it crossed our CANCEL (answered as the ring timeout fired).
    Answered(Box<Message>, bool),
    NotAnswered(End),
}

impl<'a> Dialog<'a> {
    fn new(uac: &'a Uac, trunk: &'a Trunk, msg: &DispatchMessage, mut rtp: Option<&'a mut Media>) -> Dialog<'a> {
        let s = &trunk.s;
        if let Some(m) = rtp.as_deref_mut() {
            m.stream.set_symmetric(s.rtp_symmetric);
        }
        let t = msg.telephony.as_deref();
        let domain = if s.domain.is_empty() { trunk.addr.to_string() } else { s.domain.clone() };
        let call_id = format!("{}.{}.{}@{}", msg.call_id.simple(), msg.attempt, uac.tag(), uac.local.ip());
        let user = trunk.caller_id(t.and_then(|t| t.caller_id.as_deref()));
        let from = format!("<sip:{user}@{}>;tag={}", s.from_domain, uac.tag());
        let ruri = format!("sip:{}@{domain}", msg.phone_number);
        let (tx, rx) = mpsc::channel(16);
        uac.dialogs.borrow_mut().insert(call_id.clone(), tx);
        Dialog {
            uac,
            trunk,
            rx,
            call_id,
            from,
            to: format!("<{ruri}>"),
            contact: format!("<sip:{}@{}>", s.from_user, uac.local),
            ruri,
            cseq: 1,
            branch: format!("z9hG4bK{}", uac.tag()),
            auth: None,
            remote_to: String::new(),
            target: String::new(),
            route: Vec::new(),
            ack: None,
            transferred: Cell::new(false),
            ring_timeout: t.and_then(|t| t.ring_timeout_ms).map_or(uac.settings.ring_timeout, Duration::from_millis),
            ring_deadline: Instant::now(),
            media: match &rtp {
                Some(m) => Some(m.stream.local()),
                None => t.and_then(|t| t.media_endpoint.as_deref()).and_then(|m| m.parse().ok()),
            },
            refer_to: t.and_then(|t| t.refer_to.clone()).or_else(|| uac.settings.refer_to.clone()),
            rtp,
        }
    }

    async fn run(mut self) -> End {
        let (ok, cancelled) = match self.invite().await {
            Invited::NotAnswered(end) => return end,
            Invited::Answered(ok, cancelled) => (ok, cancelled),
        };
        let answered = Instant::now();
        self.confirm(&ok).await;
        let mut media = None;
        if cancelled {
            // The answer crossed our CANCEL (RFC 3261 §9.1): ACK it and hang up at once.
            self.bye().await;
        } else if self.rtp.is_some() {
            media = Some(Box::new(self.play(answered, &ok.body).await));
        } else if let Some(uri) = self.refer_to.clone() {
            self.refer(&uri, answered).await;
        } else {
            self.talk(answered).await;
        }
        End::Talked { answered, over: Instant::now(), media }
    }

    async fn send(&self, bytes: &[u8]) {
        self.uac.send(bytes, self.trunk.addr).await;
    }

    fn via(&self, branch: &str) -> String {
        format!("SIP/2.0/UDP {};branch={branch};rport", self.uac.local)
    }

    fn invite_bytes(&self) -> Vec<u8> {
        let (via, cseq) = (self.via(&self.branch), format!("{} INVITE", self.cseq));
        let mut h = vec![
            ("Via", via.as_str()),
            ("Max-Forwards", "70"),
            ("From", self.from.as_str()),
            ("To", self.to.as_str()),
            ("Call-ID", self.call_id.as_str()),
            ("CSeq", cseq.as_str()),
            ("Contact", self.contact.as_str()),
            ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY, UPDATE"),
            ("Content-Type", "application/sdp"),
        ];
        if let Some((name, value)) = &self.auth {
            h.push((name, value.as_str()));
        }
        message::write(&format!("INVITE {} SIP/2.0", self.ruri), &h, &self.uac.sdp(&self.cseq.to_string(), self.media))
    }

    /// CANCEL or the ACK of a non-2xx: same branch and CSeq number as the INVITE.
    fn same_transaction(&self, method: &str, to: &str) -> Vec<u8> {
        let (via, cseq) = (self.via(&self.branch), format!("{} {method}", self.cseq));
        let h = [
            ("Via", via.as_str()),
            ("Max-Forwards", "70"),
            ("From", self.from.as_str()),
            ("To", to),
            ("Call-ID", self.call_id.as_str()),
            ("CSeq", cseq.as_str()),
        ];
        message::write(&format!("{method} {} SIP/2.0", self.ruri), &h, "")
    }

    /// A request inside the confirmed dialog (ACK of a 2xx, BYE, REFER), with a new branch.
    fn in_dialog(&self, method: &str, cseq: u32, extra: &[(&str, &str)]) -> Vec<u8> {
        let (via, cseq) = (self.via(&format!("z9hG4bK{}", self.uac.tag())), format!("{cseq} {method}"));
        let mut h = vec![("Via", via.as_str()), ("Max-Forwards", "70")];
        h.extend(self.route.iter().map(|r| ("Route", r.as_str())));
        h.extend([("From", self.from.as_str()), ("To", self.remote_to.as_str()), ("Call-ID", self.call_id.as_str())]);
        h.push(("CSeq", cseq.as_str()));
        h.extend_from_slice(extra);
        message::write(&format!("{method} {} SIP/2.0", self.target), &h, "")
    }

    /// The INVITE client transaction, through any digest challenge, until a 2xx or an end.
    async fn invite(&mut self) -> Invited {
        let t1 = self.uac.settings.t1;
        self.ring_deadline = Instant::now() + self.ring_timeout;
        let mut ctx = SipContext::default();
        let mut tx = Retransmit::invite(t1);
        let mut cancel: Option<Retransmit> = None;
        self.send(&self.invite_bytes()).await;
        loop {
            let wake = match &cancel {
                Some(c) => c.wake(c.answered),
                None if ctx.provisional => self.ring_deadline,
                None => tx.wake(false),
            };
            let m = tokio::select! {
                m = self.rx.recv() => m,
                _ = tokio::time::sleep_until(wake) => None,
            };
            let now = Instant::now();
            if let Some(m) = m {
                if let Some(done) = self.on_invite_message(m, &mut ctx, &mut tx, &mut cancel).await {
                    return done;
                }
            } else if let Some(c) = cancel.as_mut() {
                if c.gave_up(now) {
                    return timed_out(ctx);
                }
                if c.due(now) && !c.answered {
                    self.send(&self.same_transaction("CANCEL", &self.to)).await;
                }
            } else if !ctx.provisional && tx.gave_up(now) {
                return timed_out(ctx);
            } else if !ctx.provisional && tx.due(now) {
                // Nothing came back: the far end may have lost every copy so far (it was down),
                // and then counts this one as a new call. It takes a CPS slot like one, or a far
                // end back from an outage would get the retransmissions of every INVITE sent
                // meanwhile at once (the fault run saw 566 in a second on a 525-CPS trunk).
                self.trunk.pace().await;
                self.send(&self.invite_bytes()).await;
            }
            if ctx.provisional && cancel.is_none() && Instant::now() >= self.ring_deadline {
                ctx.cancelled = true;
                cancel = Some(Retransmit::non_invite(t1));
                self.send(&self.same_transaction("CANCEL", &self.to)).await;
            }
        }
    }

    /// One message during the INVITE transaction; `Some` when the transaction is over.
    async fn on_invite_message(
        &mut self,
        m: Message,
        ctx: &mut SipContext,
        tx: &mut Retransmit,
        cancel: &mut Option<Retransmit>,
    ) -> Option<Invited> {
        let code = match &m.start {
            Some(Start::Response { code, .. }) => *code,
            Some(Start::Request { .. }) => {
                self.answer_request(&m).await;
                return None;
            }
            None => return None,
        };
        if m.cseq_method == "CANCEL" {
            if let Some(c) = cancel.as_mut() {
                c.answered = true;
            }
            return None;
        }
        if m.cseq_method != "INVITE" || m.cseq != self.cseq {
            return None;
        }
        if code < 200 {
            ctx.provisional = true;
            return None;
        }
        if code < 300 {
            return Some(Invited::Answered(Box::new(m), ctx.cancelled));
        }
        let ack = self.same_transaction("ACK", &m.to);
        self.send(&ack).await;
        self.ack = Some(ack);
        let retry_after = m.retry_after.as_deref().and_then(parse_retry_after);
        match classify_sip(Some(code), *ctx, retry_after) {
            SipVerdict::Authenticate if self.authorize(&m) => {
                ctx.authenticated = true;
                ctx.provisional = false;
                // Carriers count INVITEs, not calls: the one with credentials takes a slot too.
                self.trunk.pace().await;
                self.ring_deadline = Instant::now() + self.ring_timeout;
                *tx = Retransmit::invite(self.uac.settings.t1);
                self.send(&self.invite_bytes()).await;
                None
            }
            SipVerdict::Authenticate => {
                let verdict = classify_sip(Some(code), SipContext { authenticated: true, ..*ctx }, retry_after);
                Some(Invited::NotAnswered(End::NotAnswered { code: Some(code), phrase: phrase(&m), verdict }))
            }
            verdict => Some(Invited::NotAnswered(End::NotAnswered { code: Some(code), phrase: phrase(&m), verdict })),
        }
    }

    /// Answers a 401/407 challenge: new CSeq and branch, same Call-ID and From tag.
    fn authorize(&mut self, m: &Message) -> bool {
        let Some(auth) = self.credentials(m, "INVITE", &self.ruri) else { return false };
        self.auth = Some(auth);
        self.cseq += 1;
        self.branch = format!("z9hG4bK{}", self.uac.tag());
        true
    }

    /// The `(Proxy-)Authorization` header answering `m`'s challenge for `method uri`, when the
    /// trunk has credentials and the challenge is one we can answer.
    fn credentials(&self, m: &Message, method: &str, uri: &str) -> Option<(&'static str, String)> {
        let s = &self.trunk.s;
        let (proxy, value) = m.challenge.as_ref()?;
        let c = Challenge::parse(value)?;
        if s.username.is_empty() {
            return None;
        }
        let header = if *proxy { "Proxy-Authorization" } else { "Authorization" };
        Some((header, c.answer(&s.username, &s.password, method, uri, &self.uac.tag())))
    }

    /// ACKs the 2xx and learns the dialog: the far end's tag, target and route set.
    async fn confirm(&mut self, ok: &Message) {
        self.remote_to = ok.to.clone();
        self.target = ok.contact.as_deref().map_or_else(|| self.ruri.clone(), |c| uri_of(c).to_string());
        self.route = ok.record_route.iter().rev().cloned().collect();
        let ack = self.in_dialog("ACK", self.cseq, &[]);
        self.send(&ack).await;
        self.ack = Some(ack);
    }

    /// Answers a request of the far end: BYE, OPTIONS, re-INVITE/UPDATE (with the same SDP),
    /// NOTIFY, INFO: 200; ACK: nothing; anything else 501.
    async fn answer_request(&self, m: &Message) -> bool {
        let method = m.method().unwrap_or("");
        if method == "NOTIFY" && sipfrag_final(&m.body) {
            self.transferred.set(true);
        }
        let sdp = self.uac.sdp("1", self.media);
        let contact = [("Contact", self.contact.as_str()), ("Content-Type", "application/sdp")];
        let bytes = match method {
            "ACK" => return false,
            "INVITE" | "UPDATE" => message::response_to(m, 200, "OK", "dialer", &contact, &sdp),
            "BYE" | "OPTIONS" | "NOTIFY" | "INFO" => message::response_to(m, 200, "OK", "dialer", &[], ""),
            _ => message::response_to(m, 501, "Not Implemented", "dialer", &[], ""),
        };
        self.send(&bytes).await;
        method == "BYE"
    }

    /// The answered call until the far end's BYE or our BYE at the maximum call length.
    async fn talk(&mut self, answered: Instant) {
        let deadline = answered + self.uac.settings.max_call;
        loop {
            let m = tokio::select! {
                m = self.rx.recv() => m,
                _ = tokio::time::sleep_until(deadline) => None,
            };
            match m {
                Some(m) if self.on_dialog_message(&m).await => return,
                Some(_) => {}
                None => return self.bye().await,
            }
        }
    }

    /// A message of the confirmed dialog; true when the far end hung up.
    async fn on_dialog_message(&self, m: &Message) -> bool {
        match &m.start {
            Some(Start::Request { .. }) => self.answer_request(m).await,
            Some(Start::Response { code, .. }) if *code < 300 && m.cseq_method == "INVITE" => {
                if let Some(ack) = &self.ack {
                    self.send(ack).await;
                }
                false
            }
            _ => false,
        }
    }

    /// The answered call with a media plan: its script plays prompts and listens (audio every
    /// 20 ms, keys, the far end's re-INVITEs) until it hangs up, the far end does, or the
    /// maximum call length passes. What the media came to.
    async fn play(&mut self, answered: Instant, answer_sdp: &str) -> MediaResult {
        let Some(m) = self.rtp.as_deref_mut() else { return MediaResult::default() };
        // Early media (a 183's ringback or announcement) is not the callee: detection hears
        // only what comes after the answer.
        let early = m.stream.discard_pending();
        if early > 0 {
            tracing::debug!(packets = early, "early media before the answer discarded");
        }
        match super::sdp::remote(answer_sdp) {
            Ok(r) => m.stream.set_remote(r),
            Err(e) => tracing::warn!(error = %e, "the answer's SDP has no usable audio: nothing is heard or played"),
        }
        let (mut script, first) = Script::start(&m.plan);
        // From the answer the shard's pacer sends the stream's packets; this call wakes only
        // for its SIP messages, a prompt's end and, while the script listens (detection, the
        // beep, keys), a 20 ms clock that reads what came on the port.
        m.stream.start(&self.uac.pacer, answered.into_std());
        let mut over = perform(first, m);
        let mut tick = tokio::time::interval_at(answered, FRAME_TIME);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // One timer for the whole call (not one per turn of the loop).
        let deadline = tokio::time::sleep_until(answered + self.uac.settings.max_call);
        tokio::pin!(deadline);
        let mut ears = Ears { listening: true, last_audio: answered };
        while !over {
            let m = self.rtp.as_deref_mut().expect("a media call");
            ears.follow(&script, &mut m.stream);
            let event = tokio::select! {
                msg = self.rx.recv() => Event::Sip(msg.map(Box::new)),
                () = played_out(m.stream.paced()) => Event::PlayedOut,
                _ = tick.tick(), if ears.listening => Event::Tick,
                _ = &mut deadline => Event::Sip(None),
            };
            let now_ms = answered.elapsed().as_millis() as u32;
            let step = match event {
                Event::Sip(Some(msg)) => {
                    if self.media_request(&msg).await {
                        return script.result();
                    }
                    Step::Continue
                }
                Event::Sip(None) => break,
                Event::PlayedOut => script.played_out(now_ms),
                Event::Tick => ears.hear(&mut script, &mut m.stream, now_ms),
            };
            over = perform(step, self.rtp.as_deref_mut().expect("a media call"));
        }
        self.bye().await;
        script.result()
    }

    /// A request of the far end during a media call: a re-INVITE or UPDATE may move or hold
    /// the stream (its SDP); true when the far end hung up.
    async fn media_request(&mut self, msg: &Message) -> bool {
        if matches!(msg.method(), Some("INVITE" | "UPDATE"))
            && let (Some(m), Ok(r)) = (self.rtp.as_deref_mut(), super::sdp::remote(&msg.body))
        {
            m.stream.set_remote(r);
        }
        self.on_dialog_message(msg).await
    }

    /// Sends a request in the dialog and waits for its final response, answering one digest
    /// challenge (carriers challenge BYE and REFER too); a far-end BYE meanwhile is answered.
    /// The final code (None on Timer F) and whether the far end hung up.
    async fn request(&mut self, method: &str, extra: &[(&str, &str)]) -> (Option<u16>, bool) {
        let (mut hung_up, mut answered_challenge) = (false, false);
        let mut headers: Vec<(&str, String)> = extra.iter().map(|(n, v)| (*n, v.to_string())).collect();
        loop {
            let (last, h) = self.transaction(method, &headers).await;
            hung_up |= h;
            let code = last.as_ref().and_then(Message::code);
            let challenged = matches!(code, Some(401 | 407)) && !answered_challenge && !hung_up;
            let target = self.target.clone();
            match last.filter(|_| challenged).and_then(|m| self.credentials(&m, method, &target)) {
                Some((name, value)) => {
                    answered_challenge = true;
                    headers.push((name, value));
                }
                None => return (code, hung_up),
            }
        }
    }

    /// One non-INVITE client transaction in the dialog (new CSeq): Timer E retransmits, Timer F
    /// gives up. Its final response (None on Timer F) and whether the far end hung up meanwhile.
    async fn transaction(&mut self, method: &str, headers: &[(&str, String)]) -> (Option<Message>, bool) {
        self.cseq += 1;
        let extra: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let bytes = self.in_dialog(method, self.cseq, &extra);
        let mut tx = Retransmit::non_invite(self.uac.settings.t1);
        let mut hung_up = false;
        self.send(&bytes).await;
        loop {
            let m = tokio::select! {
                m = self.rx.recv() => m,
                _ = tokio::time::sleep_until(tx.wake(false)) => None,
            };
            match m {
                Some(m) if m.code().is_some_and(|c| c >= 200) && m.cseq == self.cseq => return (Some(m), hung_up),
                Some(m) => hung_up |= self.on_dialog_message(&m).await,
                None if tx.gave_up(Instant::now()) => return (None, hung_up),
                None => {
                    if tx.due(Instant::now()) {
                        self.send(&bytes).await;
                    }
                }
            }
        }
    }

    async fn bye(&mut self) {
        let (code, _) = self.request("BYE", &[]).await;
        if code.is_none() {
            tracing::debug!(trunk = %self.trunk.s.name, "BYE not answered within Timer F");
        }
    }

    /// Hands the call on with REFER (RFC 3515): waits for the NOTIFY that reports the transfer's
    /// final answer (or Timer F), then leaves the call with BYE.
    async fn refer(&mut self, uri: &str, answered: Instant) {
        let refer_to = format!("<{uri}>");
        let by = self.from.split(';').next().unwrap_or("").to_string();
        let (code, hung_up) = self.request("REFER", &[("Refer-To", &refer_to), ("Referred-By", &by)]).await;
        if hung_up {
            return;
        }
        if code.is_some_and(|c| c < 300) {
            let deadline = Instant::now() + self.uac.settings.t1 * 64;
            while !self.transferred.get() {
                let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.rx.recv()).await else { break };
                if self.on_dialog_message(&m).await {
                    return;
                }
            }
        } else {
            tracing::warn!(code = ?code, "REFER refused; keeping the call until the maximum call length");
            return self.talk(answered).await;
        }
        self.bye().await;
    }
}

/// One RTP packet's worth of time.
const FRAME_TIME: Duration = Duration::from_millis(20);

/// No audio for this long: the far end is silent (detection hears silence each packet time).
const SILENT_AFTER: Duration = Duration::from_millis(70);

/// What woke a media call.
enum Event {
    Sip(Option<Box<Message>>),
    PlayedOut,
    Tick,
}

/// Does what the script said (a prompt to play goes to the pacer); true when it hung up.
fn perform(step: Step, m: &Media) -> bool {
    match step {
        Step::Continue => false,
        Step::Play(which) => {
            let prompt = match which {
                Play::Person => m.person.as_ref(),
                Play::Voicemail => m.voicemail.as_ref(),
            };
            if let Some(p) = m.stream.paced() {
                p.play(prompt.cloned());
            }
            false
        }
        Step::Hangup => true,
    }
}

/// Until the prompt playing has played out (never, before the stream started).
async fn played_out(paced: Option<&super::pacer::Paced>) {
    match paced {
        Some(p) => p.played_out().await,
        None => std::future::pending().await,
    }
}

/// Datagrams read from a stream's port at one tick at most (320 ms of audio): more is a
/// flood, left to the socket's buffer (the kernel drops what does not fit).
const READS_PER_TICK: usize = 16;

/// What a media call hears: its port is read on a 20 ms clock while the script hears
/// ([`Script::hears`]: detection, the beep, keys), and not at all otherwise.
struct Ears {
    listening: bool,
    /// When audio last came: detection hears silence only after a gap in the far end's audio
    /// (e.g. silence suppression), never for a packet that is merely late (that would break a
    /// beep in two and start the voicemail before it ended).
    last_audio: Instant,
}

impl Ears {
    /// Starts or stops listening as the script does; what waited on the port while it did not
    /// listen is stale and dropped.
    fn follow(&mut self, script: &Script, stream: &mut RtpStream) {
        let wants = script.hears();
        if wants && !self.listening {
            stream.discard_pending();
        }
        self.listening = wants;
    }

    /// One tick: what came on the port since the last one, in order, then the clock (silence
    /// for detection after a gap, the end of listening for keys).
    fn hear(&mut self, script: &mut Script, stream: &mut RtpStream, now_ms: u32) -> Step {
        for _ in 0..READS_PER_TICK {
            let step = match stream.hear() {
                None => break,
                Some(Heard::Audio) => {
                    self.last_audio = Instant::now();
                    script.audio(&stream.frame, now_ms)
                }
                Some(Heard::Key(k)) => script.key(k, now_ms),
                Some(Heard::Nothing) => Step::Continue,
            };
            if step != Step::Continue {
                return step;
            }
        }
        if self.last_audio.elapsed() > SILENT_AFTER {
            let step = script.audio(&[0; FRAME], now_ms);
            if step != Step::Continue {
                return step;
            }
        }
        script.tick(now_ms)
    }
}

/// Whether a NOTIFY's `message/sipfrag` body reports a final response (`SIP/2.0 2xx…6xx`).
fn sipfrag_final(body: &str) -> bool {
    let code = body.trim_start().strip_prefix("SIP/2.0 ").and_then(|r| r.get(..3)).and_then(|c| c.parse::<u16>().ok());
    code.is_some_and(|c| c >= 200)
}

fn phrase(m: &Message) -> String {
    match &m.start {
        Some(Start::Response { reason, .. }) => reason.clone(),
        _ => String::new(),
    }
}

fn timed_out(ctx: SipContext) -> Invited {
    let verdict = classify_sip(None, ctx, None);
    Invited::NotAnswered(End::NotAnswered { code: None, phrase: "no response".into(), verdict })
}

/// Retransmission timers of a client transaction over UDP: an INVITE doubles its interval
/// from T1 (Timer A) until Timer B, a non-INVITE request doubles up to T2 = 4 s (Timer E)
/// until Timer F; both give up at 64 × T1.
struct Retransmit {
    next: Instant,
    interval: Duration,
    cap: Duration,
    give_up: Instant,
    /// A non-INVITE request got a final response (a CANCEL's 200).
    answered: bool,
}

impl Retransmit {
    fn invite(t1: Duration) -> Retransmit {
        Retransmit::new(t1, Duration::MAX)
    }

    fn non_invite(t1: Duration) -> Retransmit {
        Retransmit::new(t1, Duration::from_secs(4).max(t1))
    }

    fn new(t1: Duration, cap: Duration) -> Retransmit {
        let now = Instant::now();
        Retransmit { next: now + t1, interval: t1, cap, give_up: now + t1 * 64, answered: false }
    }

    /// The next instant this transaction needs attention (only Timer B/F once retransmits stop).
    fn wake(&self, quiet: bool) -> Instant {
        if quiet { self.give_up } else { self.next.min(self.give_up) }
    }

    fn gave_up(&self, now: Instant) -> bool {
        now >= self.give_up
    }

    /// Whether a retransmission is due now (and schedules the next).
    fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.interval = (self.interval * 2).min(self.cap);
        self.next = now + self.interval;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sipfrag_finals() {
        assert!(sipfrag_final("SIP/2.0 200 OK\r\n"));
        assert!(sipfrag_final("SIP/2.0 503 Service Unavailable"));
        assert!(!sipfrag_final("SIP/2.0 100 Trying"));
        assert!(!sipfrag_final(""));
    }

    #[tokio::test(start_paused = true)]
    async fn retransmit_timers_follow_rfc3261() {
        let t1 = Duration::from_millis(500);
        let start = Instant::now();
        let mut a = Retransmit::invite(t1);
        let mut sent = Vec::new();
        while !a.gave_up(Instant::now()) {
            tokio::time::sleep_until(a.wake(false)).await;
            if a.due(Instant::now()) {
                sent.push((Instant::now() - start).as_millis());
            }
        }
        assert_eq!(sent, [500, 1500, 3500, 7500, 15500, 31500], "Timer A doubles until Timer B at 32 s");
        assert_eq!(Instant::now() - start, Duration::from_secs(32));
        let start = Instant::now();
        let mut e = Retransmit::non_invite(t1);
        let mut sent = Vec::new();
        while !e.gave_up(Instant::now()) {
            tokio::time::sleep_until(e.wake(false)).await;
            if e.due(Instant::now()) {
                sent.push((Instant::now() - start).as_millis());
            }
        }
        assert_eq!(&sent[..6], [500, 1500, 3500, 7500, 11500, 15500], "Timer E caps at T2 = 4 s");
    }
}
