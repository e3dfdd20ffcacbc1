//! The live stream: `GET /api/v1/events` and `GET /api/v1/campaigns/{id}/events` as
//! Server-Sent Events.
//!
//! One tail per process ([`LiveHub::run`]) reads newly numbered events from the log and
//! broadcasts them on a bounded channel; each client first reads the log after its
//! `Last-Event-ID` (the history the log still holds), then follows the broadcast from where the
//! history ended. A client that falls more than the channel's capacity behind is told so and
//! dropped (it reconnects with its last id and resumes from the log): nothing waits for it, least
//! of all the recorder. Each event's SSE `id` is its log position; periodic `stats` messages carry
//! no id, so a reconnect resumes from the last event.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::response::sse::Event;
use tokio::sync::{Notify, broadcast};
use uuid::Uuid;

use dialer_store::{LoggedEvent, Store};

/// Events read from the log per query (history pages and the tail's batches).
const PAGE: usize = 500;

/// The process's tail of the event log.
#[derive(Debug)]
pub struct LiveHub {
    store: Store,
    tx: broadcast::Sender<Arc<LoggedEvent>>,
    /// The last position broadcast.
    head: AtomicI64,
    wake: Notify,
    /// How often clients get a stats snapshot.
    pub stats_every: Duration,
}

impl LiveHub {
    /// A hub whose clients may fall `capacity` events behind before they are dropped.
    pub fn new(store: Store, capacity: usize, stats_every: Duration) -> Arc<LiveHub> {
        let (tx, _) = broadcast::channel(capacity.max(16));
        Arc::new(LiveHub { store, tx, head: AtomicI64::new(-1), wake: Notify::new(), stats_every })
    }

    /// The sequencer of this process numbered events: read them now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LoggedEvent>> {
        self.tx.subscribe()
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Follows the log until `shutdown`: at start from its end, then every batch numbered (by any
    /// replica: polled every `poll`, at once when this process's sequencer wakes it).
    pub async fn run(self: Arc<Self>, poll: Duration, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.tail().await {
                tracing::warn!(error = %e, "reading the event log for the live stream failed; will retry");
            }
            metrics::gauge!("dialer_live_clients").set(self.clients() as f64);
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    async fn tail(&self) -> Result<(), crate::StoreError> {
        let mut head = self.head.load(Ordering::Acquire);
        if head < 0 {
            head = self.store.log_bounds().await?.1;
            self.head.store(head, Ordering::Release);
        }
        loop {
            let page = self.store.read_events(head, None, PAGE).await?;
            for e in &page {
                head = e.seq;
                // No receiver is not an error: nobody is listening.
                let _ = self.tx.send(Arc::new(e.clone()));
            }
            self.head.store(head, Ordering::Release);
            if page.len() < PAGE {
                return Ok(());
            }
        }
    }
}

/// An event as an SSE message: `id` its position, `event` its type, `data` its body.
pub fn sse_event(e: &LoggedEvent) -> Event {
    Event::default().id(e.seq.to_string()).event(&e.kind).data(&e.body)
}

/// Where a client is: reading history after `after`, or following the broadcast.
#[derive(Debug)]
pub struct Client {
    pub hub: Arc<LiveHub>,
    pub store: Store,
    pub campaign: Option<Uuid>,
    /// The last position sent.
    pub after: i64,
    pub rx: broadcast::Receiver<Arc<LoggedEvent>>,
    pub history: bool,
    pub pending: std::collections::VecDeque<Event>,
    pub stats: tokio::time::Interval,
    pub done: bool,
}

impl Client {
    /// A client of `campaign` (or all) resuming after `last_id` (`None`: from now). Subscribes
    /// before it reads history, so nothing falls between the two.
    pub async fn start(
        hub: Arc<LiveHub>,
        store: Store,
        campaign: Option<Uuid>,
        last_id: Option<i64>,
    ) -> Result<Client, crate::StoreError> {
        let rx = hub.subscribe();
        let (first, last) = store.log_bounds().await?;
        let mut pending = std::collections::VecDeque::new();
        let after = match last_id {
            None => last,
            Some(id) => {
                if id + 1 < first {
                    let gap = serde_json::json!({"from": id + 1, "to": first - 1, "reason": "older than the history the log keeps (events.keep_hours)"});
                    pending.push_back(Event::default().event("gap").data(gap.to_string()));
                }
                id.min(last)
            }
        };
        let mut stats = tokio::time::interval(hub.stats_every);
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Client { hub, store, campaign, after, rx, history: true, pending, stats, done: false })
    }

    fn wants(&self, e: &LoggedEvent) -> bool {
        e.seq > self.after && self.campaign.is_none_or(|c| c == e.campaign_id)
    }

    /// The next message, or `None` when the stream ends (the client fell behind).
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if self.done {
                return None;
            }
            if self.history {
                self.read_history().await;
                continue;
            }
            self.follow().await;
        }
    }

    /// A page of the log after the last position sent; the end of history once a page is short.
    async fn read_history(&mut self) {
        match self.store.read_events(self.after, self.campaign, PAGE).await {
            Ok(page) => {
                self.history = page.len() == PAGE;
                for e in page {
                    self.after = e.seq;
                    self.pending.push_back(sse_event(&e));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading history for a live-stream client failed; closing it");
                self.done = true;
            }
        }
    }

    /// The next broadcast event this client wants, or a stats snapshot when it is due.
    async fn follow(&mut self) {
        let got = tokio::select! {
            got = self.rx.recv() => Some(got),
            _ = self.stats.tick() => None,
        };
        match got {
            Some(Ok(e)) if self.wants(&e) => {
                self.after = e.seq;
                self.pending.push_back(sse_event(&e));
            }
            Some(Ok(_)) => {}
            Some(Err(broadcast::error::RecvError::Lagged(n))) => {
                metrics::counter!("dialer_live_dropped_total").increment(1);
                let why = serde_json::json!({"reason": "too slow: reconnect with Last-Event-ID to resume", "missed": n, "last_event_id": self.after});
                self.pending.push_back(Event::default().event("dropped").data(why.to_string()));
                self.done = true;
            }
            Some(Err(broadcast::error::RecvError::Closed)) => self.done = true,
            None => {
                if let Some(s) = self.snapshot().await {
                    self.pending.push_back(Event::default().event("stats").data(s.to_string()));
                }
            }
        }
    }

    /// The campaign's stats, or the in-progress campaigns' live counts.
    async fn snapshot(&self) -> Option<serde_json::Value> {
        let at = chrono::Utc::now();
        match self.campaign {
            Some(id) => self.store.stats(id).await.ok().map(|s| serde_json::json!({"at": at, "stats": s})),
            None => {
                let active = self.store.active_campaigns().await.ok()?;
                let list: Vec<_> = active
                    .iter()
                    .take(100)
                    .map(|c| serde_json::json!({"campaign_id": c.id, "pending": c.pending, "queued": c.queued, "in_progress": c.in_progress}))
                    .collect();
                Some(serde_json::json!({"at": at, "campaigns_in_progress": active.len(), "campaigns": list}))
            }
        }
    }
}
