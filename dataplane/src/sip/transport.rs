//! A shard's SIP socket reader: parses each datagram and hands it to the call it belongs to (by
//! Call-ID, through the call's small bounded channel: a full channel drops the datagram, as the
//! network may, and the peer's retransmission brings it again). What belongs to no live call is
//! answered here: a retransmitted final response of an ended call is ACKed again (for 64 × T1),
//! OPTIONS gets 200, any other request 481.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;

use tokio::time::Instant;

use super::call::Uac;
use super::message::{self, Message, Start};

/// ACKs of ended calls, kept for retransmitted final responses (RFC 3261 Timer D; and the 2xx
/// a lost ACK makes the far end repeat).
#[derive(Debug, Default)]
pub struct Lingering {
    acks: HashMap<String, (Vec<u8>, SocketAddr)>,
    expiry: VecDeque<(Instant, String)>,
}

impl Lingering {
    pub fn insert(&mut self, call_id: String, ack: Vec<u8>, to: SocketAddr, until: Instant) {
        let now = Instant::now();
        while self.expiry.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, id)) = self.expiry.pop_front() {
                self.acks.remove(&id);
            }
        }
        self.expiry.push_back((until, call_id.clone()));
        self.acks.insert(call_id, (ack, to));
    }

    fn get(&self, call_id: &str) -> Option<&(Vec<u8>, SocketAddr)> {
        self.acks.get(call_id)
    }
}

/// Reads the shard's socket until the provider is dropped.
pub async fn read_loop(uac: Rc<Uac>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let got = tokio::select! {
            r = uac.socket.recv_from(&mut buf) => r,
            _ = uac.stop.notified() => return,
        };
        let (n, from) = match got {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "SIP socket read failed");
                continue;
            }
        };
        match Message::parse(&buf[..n]) {
            Ok(m) => route(&uac, m, from).await,
            Err(e) => {
                metrics::counter!("dialer_sip_unreadable_total").increment(1);
                tracing::debug!(error = %e, %from, "unreadable SIP datagram dropped");
            }
        }
    }
}

async fn route(uac: &Uac, m: Message, from: SocketAddr) {
    if let Some(tx) = uac.dialogs.borrow().get(&m.call_id) {
        let _ = tx.try_send(m);
        return;
    }
    let reply = match &m.start {
        Some(Start::Response { .. }) if m.cseq_method == "INVITE" => {
            uac.lingering.borrow().get(&m.call_id).map(|(ack, to)| (ack.clone(), *to))
        }
        Some(Start::Request { method, .. }) if method == "OPTIONS" => {
            let allow = [("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY, UPDATE")];
            Some((message::response_to(&m, 200, "OK", &uac.tag(), &allow, ""), from))
        }
        Some(Start::Request { method, .. }) if method != "ACK" => {
            Some((message::response_to(&m, 481, "Call/Transaction Does Not Exist", &uac.tag(), &[], ""), from))
        }
        _ => None,
    };
    if let Some((bytes, to)) = reply {
        uac.send(&bytes, to).await;
    }
}
