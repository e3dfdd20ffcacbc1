//! Recording: a batch of status events applied in one transaction ([`crate::record`] decides
//! what changes: call rows, the timeline, stats deltas, events), the calls locked in id order.

use std::collections::HashMap;

use dialer_domain::campaign::CallStatus;
use dialer_domain::lifecycle::{self, CallState};
use dialer_domain::messages::StatusEvent;
use sqlx::QueryBuilder;
use uuid::Uuid;

use crate::calls::ms_to_time;
use crate::campaigns::load_campaigns;
use crate::dialect::{CallWrite, Dialect, PushArg, PushList, QueryExt, RowExt, Tx};
use crate::model::RecordReport;
use crate::record::{Delta, Known, TimelineEntry};
use crate::{CHUNK_ROWS, Corrupt, LOOKUP_CHUNK, StoreError, now, sorted_unique};

/// Records a batch of status events in one transaction: the campaigns read `FOR
/// SHARE` first (a campaign being completed is either completed before this batch
/// reads it or after it commits), the calls locked in id order, the changes decided
/// ([`crate::record::decide`]), then calls, timeline and stats written.
#[tracing::instrument(name = "store.record_events", level = "debug", skip_all)]
pub async fn record_events<D: Dialect>(
    pool: &sqlx::Pool<D>,
    events: &[StatusEvent],
    samples: &mut (dyn FnMut() -> f64 + Send),
    cql: Option<&crate::timeline::CqlTimeline>,
    retry_not_before_ms: u64,
) -> Result<RecordReport, StoreError> {
    if events.is_empty() {
        return Ok(RecordReport::default());
    }
    let now_ms = chrono::Utc::now().timestamp_millis() as u64;
    let mut tx = D::begin(pool).await?;
    let mut known = Known::default();
    let campaigns = sorted_unique(events.iter().map(|e| e.campaign_id));
    load_campaigns::<D>(&mut tx, &campaigns, &mut known.policies, &mut known.completed).await?;
    (known.calls, known.streams) = lock_calls(&mut tx, &sorted_unique(events.iter().map(|e| e.call_id))).await?;
    // An event naming another campaign than its call's: the call's campaign rules.
    let others = sorted_unique(known.calls.values().map(|(c, _)| *c).filter(|c| !known.policies.contains_key(c)));
    load_campaigns::<D>(&mut tx, &others, &mut known.policies, &mut known.completed).await?;
    let d = crate::record::decide(events, &mut known, now_ms, retry_not_before_ms, samples);
    write_calls(&mut tx, &d.changed, &d.event_seqs).await?;
    write_timeline(&mut tx, cql, &d.timeline).await?;
    write_stats(&mut tx, &d.deltas).await?;
    write_opt_outs(&mut tx, events, &known).await?;
    crate::events::log::append::<D>(&mut tx, &d.events).await?;
    tx.commit().await?;
    Ok(d.report)
}

/// Numbers whose callee pressed the opt-out key: on the campaign's (or the global) do-not-call
/// list in the same transaction as the attempt, so no opt-out is recorded without its entry;
/// the scheduler announces them to every shard like any other opt-out.
async fn write_opt_outs<D: Dialect>(tx: &mut Tx<D>, events: &[StatusEvent], known: &Known) -> Result<(), StoreError> {
    use dialer_domain::media::OptOutList;
    let at = now();
    let opt_outs: Vec<(Uuid, &str)> = events
        .iter()
        .filter_map(|e| {
            let m = e.media.as_ref().filter(|m| m.opted_out)?;
            let (campaign, _) = known.calls.get(&e.call_id)?;
            let (number, _) = known.streams.get(&e.call_id)?;
            let list = match m.opt_out_list.unwrap_or_default() {
                OptOutList::Campaign => *campaign,
                OptOutList::Global => dialer_domain::dnc::GLOBAL_LIST,
            };
            Some((list, number.as_str()))
        })
        .collect();
    for chunk in opt_outs.chunks(CHUNK_ROWS / 8) {
        let mut q = QueryBuilder::<D>::new(
            "INSERT INTO dnc_entries (campaign_id, phone_number, reason, source, expires_at, created_at, announced) ",
        );
        q.push_values(chunk, |mut b, (list, number)| {
            let no_expiry: Option<chrono::DateTime<chrono::Utc>> = None;
            b.push_arg(*list)
                .push_arg(*number)
                .push_arg("opt_out")
                .push_arg("keypress")
                .push_arg(no_expiry)
                .push_arg(at)
                .push_arg(false);
        });
        q.push(
            " ON CONFLICT (campaign_id, phone_number) DO UPDATE SET reason = excluded.reason, \
             source = excluded.source, expires_at = NULL, announced = false",
        );
        q.build().run(&mut **tx).await?;
    }
    Ok(())
}

/// The batch's calls, locked in id order: the reaper and a recorder resolving the
/// same call serialize (the second sees the first's answer), and never deadlock.
async fn lock_calls<D: Dialect>(
    tx: &mut Tx<D>,
    call_ids: &[Uuid],
) -> Result<(HashMap<Uuid, (Uuid, CallState)>, HashMap<Uuid, (String, u32)>), StoreError> {
    let mut states = HashMap::new();
    let mut streams = HashMap::new();
    for chunk in call_ids.chunks(LOOKUP_CHUNK) {
        for r in D::lock_calls(&mut **tx, chunk).await? {
            let s: String = r.col("status")?;
            let state = CallState {
                status: CallStatus::parse(&s)
                    .ok_or_else(|| StoreError::from(Corrupt::Value { what: "call status", value: s.clone() }))?,
                attempt_count: r.col::<i32>("attempt_count")? as u32,
                retry_delay_ms: r.col::<Option<i64>>("retry_delay_ms")?.map(|v| v.max(0) as u64),
            };
            states.insert(r.col("id")?, (r.col("campaign_id")?, state));
            streams.insert(r.col("id")?, (r.col("phone_number")?, r.col::<i32>("event_seq")? as u32));
        }
    }
    Ok((states, streams))
}

async fn write_calls<D: Dialect>(
    tx: &mut Tx<D>,
    changed: &HashMap<Uuid, (Uuid, lifecycle::Change)>,
    event_seqs: &HashMap<Uuid, u32>,
) -> Result<(), StoreError> {
    let rows: Vec<CallWrite> = changed
        .iter()
        .map(|(id, (cid, c))| CallWrite {
            campaign_id: *cid,
            id: *id,
            status: c.status.as_str(),
            attempt_count: c.attempt_count as i32,
            next_attempt_at: c.next_attempt_at_ms.map(ms_to_time),
            retry_delay_ms: c.retry_delay_ms.map(|v| v as i64),
            last_error: c.last_error.clone(),
            event_seq: event_seqs.get(id).map(|s| *s as i32),
        })
        .collect();
    D::write_calls(&mut **tx, &rows, now()).await
}

/// The batch's calls locked in id order, by multi-row `IN` lists (SQLite's [`Dialect::lock_calls`]).
pub(crate) async fn lock_calls_listed<D: Dialect>(
    conn: &mut D::Connection,
    ids: &[Uuid],
) -> Result<Vec<D::Row>, StoreError> {
    let mut q = QueryBuilder::<D>::new(
        "SELECT campaign_id, id, status, attempt_count, retry_delay_ms, phone_number, event_seq FROM calls WHERE id IN (",
    );
    q.push_list(ids.iter().copied());
    q.push(") ORDER BY id");
    q.push(D::FOR_UPDATE);
    Ok(q.build().rows(conn).await?)
}

/// The recorder's call rows by multi-row `VALUES` (SQLite's [`Dialect::write_calls`]).
pub(crate) async fn write_calls_listed<D: Dialect>(
    conn: &mut D::Connection,
    rows: &[CallWrite],
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), StoreError> {
    for chunk in rows.chunks(CHUNK_ROWS / 4) {
        let mut q = QueryBuilder::<D>::new("WITH v(cid, id, status, attempts, next_at, delay, err, eseq) AS (");
        q.push_values(chunk, |mut b, r| {
            b.push_arg(r.campaign_id)
                .push_arg(r.id)
                .push_arg(r.status)
                .push_arg(r.attempt_count)
                .push_arg(r.next_attempt_at)
                .push_arg(r.retry_delay_ms)
                .push_arg(r.last_error.clone())
                .push_arg(r.event_seq);
        });
        q.push(")");
        q.push(CALLS_SET);
        q.push_arg(at);
        q.push(" FROM v WHERE calls.campaign_id = v.cid AND calls.id = v.id");
        q.build().run(&mut *conn).await?;
    }
    Ok(())
}

/// What the recorder sets on a call from its batch's row `v` (then `updated_at`'s value).
pub(crate) const CALLS_SET: &str = " UPDATE calls SET status = v.status, attempt_count = v.attempts, \
    next_attempt_at = v.next_at, hold = NULL, retry_delay_ms = v.delay, last_error = v.err, \
    event_seq = COALESCE(v.eseq, calls.event_seq), updated_at = ";

/// The timeline: on the CQL store (before the commit, so a failure retries the whole
/// batch), or in the SQL table.
async fn write_timeline<D: Dialect>(
    tx: &mut Tx<D>,
    cql: Option<&crate::timeline::CqlTimeline>,
    timeline: &HashMap<(Uuid, u32), TimelineEntry<'_>>,
) -> Result<(), StoreError> {
    let rows: Vec<crate::timeline::TimelineRow> =
        timeline.values().map(|(cid, e, outcome)| timeline_row(*cid, e, outcome)).collect();
    match cql {
        Some(cql) => cql.write(&rows).await.map_err(StoreError::Timeline),
        None => D::upsert_attempts(&mut **tx, &rows).await,
    }
}

/// How an attempt's row merges a later event: a started event does not overwrite an outcome;
/// each field keeps what it had unless the later event brings it (the start time: the first).
pub(crate) const ATTEMPT_MERGE: &str = " ON CONFLICT (campaign_id, call_id, attempt) DO UPDATE SET \
    outcome = CASE WHEN excluded.outcome = 'started' THEN call_attempts.outcome ELSE excluded.outcome END, \
    started_at = COALESCE(call_attempts.started_at, excluded.started_at), \
    answered_at = COALESCE(excluded.answered_at, call_attempts.answered_at), \
    ended_at = COALESCE(excluded.ended_at, call_attempts.ended_at), \
    duration_ms = COALESCE(excluded.duration_ms, call_attempts.duration_ms), \
    reason = COALESCE(excluded.reason, call_attempts.reason), \
    retryable = COALESCE(excluded.retryable, call_attempts.retryable), \
    sip_code = COALESCE(excluded.sip_code, call_attempts.sip_code), \
    sip_reason = COALESCE(excluded.sip_reason, call_attempts.sip_reason), \
    media = COALESCE(excluded.media, call_attempts.media)";

/// The insert of attempt rows, their columns in the order both dialects write them.
pub(crate) const ATTEMPT_INSERT: &str = "INSERT INTO call_attempts (campaign_id, call_id, attempt, outcome, \
    started_at, answered_at, ended_at, duration_ms, reason, retryable, sip_code, sip_reason, media) ";

/// Attempt rows by multi-row `VALUES` (SQLite's [`Dialect::upsert_attempts`]).
pub(crate) async fn upsert_attempts_listed<D: Dialect>(
    conn: &mut D::Connection,
    rows: &[crate::timeline::TimelineRow],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(CHUNK_ROWS / 5) {
        let mut q = QueryBuilder::<D>::new(ATTEMPT_INSERT);
        q.push_values(chunk, |mut b, r| {
            b.push_arg(r.campaign_id)
                .push_arg(r.call_id)
                .push_arg(r.attempt as i32)
                .push_arg(r.outcome.as_str())
                .push_arg(r.started_at_ms.map(ms_to_time))
                .push_arg(r.answered_at_ms.map(ms_to_time))
                .push_arg(r.ended_at_ms.map(ms_to_time))
                .push_arg(r.duration_ms.map(|v| v as i64))
                .push_arg(r.reason.clone())
                .push_arg(r.retryable)
                .push_arg(r.sip_code.map(i32::from))
                .push_arg(r.sip_reason.clone())
                .push_arg(r.media.clone());
        });
        q.push(ATTEMPT_MERGE);
        q.build().run(&mut *conn).await?;
    }
    Ok(())
}

/// The aggregates: the batch's stats rows locked in campaign-id order (two recorders
/// never deadlock), then moved in one statement per chunk, not one per campaign: a
/// batch of events of many campaigns would be a round trip per campaign, with the first
/// rows locked all the while.
async fn write_stats<D: Dialect>(
    tx: &mut Tx<D>,
    deltas: &std::collections::BTreeMap<Uuid, Delta>,
) -> Result<(), StoreError> {
    let rows: Vec<(&Uuid, &Delta)> = deltas.iter().collect();
    for chunk in rows.chunks(CHUNK_ROWS / 16) {
        let ids: Vec<Uuid> = chunk.iter().map(|(id, _)| **id).collect();
        crate::stats::lock_stats::<D>(&mut **tx, &ids).await?;
        let mut q = QueryBuilder::<D>::new(
            "WITH v(cid, p, q, ip, c, f, a, r, f_busy, f_no_answer, f_rejected, f_invalid, f_failed, f_unknown, \
             m_human, m_machine, m_unknown, m_voicemail, m_opted_out, m_abandoned) AS (",
        );
        q.push_values(chunk, |mut b, (id, d)| {
            b.push_arg(**id)
                .push_arg(d.pending)
                .push_arg(d.queued)
                .push_arg(d.in_progress)
                .push_arg(d.completed)
                .push_arg(d.failed)
                .push_arg(d.attempts)
                .push_arg(d.retries);
            for n in d.failed_by.into_iter().chain(d.media) {
                b.push_arg(n);
            }
        });
        q.push(
            ") UPDATE campaign_stats SET pending_calls = pending_calls + v.p, queued_calls = queued_calls + v.q, \
             in_progress_calls = in_progress_calls + v.ip, completed_calls = completed_calls + v.c, \
             failed_calls = failed_calls + v.f, attempts_total = attempts_total + v.a, \
             retries_attempted = retries_attempted + v.r, failed_busy = failed_busy + v.f_busy, \
             failed_no_answer = failed_no_answer + v.f_no_answer, failed_rejected = failed_rejected + v.f_rejected, \
             failed_invalid_number = failed_invalid_number + v.f_invalid, failed_failed = failed_failed + v.f_failed, \
             failed_unknown_outcome = failed_unknown_outcome + v.f_unknown, \
             answered_human = answered_human + v.m_human, answered_machine = answered_machine + v.m_machine, \
             answered_unknown = answered_unknown + v.m_unknown, voicemail_left = voicemail_left + v.m_voicemail, \
             opted_out = opted_out + v.m_opted_out, abandoned = abandoned + v.m_abandoned \
             FROM v WHERE campaign_stats.campaign_id = v.cid",
        );
        q.build().run(&mut **tx).await?;
    }
    Ok(())
}

/// An attempt's timeline row from the event that says most about it.
fn timeline_row(
    campaign_id: uuid::Uuid,
    e: &dialer_domain::messages::StatusEvent,
    outcome: &str,
) -> crate::timeline::TimelineRow {
    use dialer_domain::messages::EventKind;
    crate::timeline::TimelineRow {
        campaign_id,
        call_id: e.call_id,
        attempt: e.attempt,
        outcome: outcome.to_string(),
        started_at_ms: e.started_at_ms.or((e.kind == EventKind::Started).then_some(e.at_ms)),
        answered_at_ms: e.answered_at_ms,
        ended_at_ms: (e.kind != EventKind::Started).then_some(e.at_ms),
        duration_ms: e.duration_ms,
        reason: e.reason.clone(),
        retryable: e.retryable,
        sip_code: e.sip.as_ref().and_then(|s| s.code),
        sip_reason: e.sip.as_ref().map(|s| s.phrase.clone()),
        media: e.media.as_ref().and_then(|m| serde_json::to_string(m).ok()),
    }
}
