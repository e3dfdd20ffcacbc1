//! Campaigns: their settings and business hours, the state machine's moves, the scheduler's
//! view of the active ones, and completion (with what it cancels).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dialer_api::campaigns::UpdateCampaignRequest;
use dialer_api::views::{Campaign, Timestamps};
use dialer_domain::FieldError;
use dialer_domain::campaign::{CampaignAction, CampaignStatus};
use dialer_domain::hours::Window;
use dialer_domain::retry::RetryPolicy;
use dialer_domain::settings::{CampaignSettings, NewCampaign, NewTarget};
use serde_json::{Value, json};
use sqlx::QueryBuilder;
use sqlx::types::Json;
use uuid::Uuid;

use crate::calls::insert_pending_calls;
use crate::dialect::ms;
use crate::dialect::{Bind, Dialect, PushArg, PushList, QueryExt, RowExt};
use crate::model::ActiveCampaign;
use crate::record::CANCELLED;
use crate::stats::{add_pending, read_stats};
use crate::{CHUNK_ROWS, LOOKUP_CHUNK, is_unique_violation};
use crate::{Conflict, Corrupt, StoreError, now};

pub(crate) const CAMPAIGN_COLUMNS: &str = "id, name, description, time_zone, max_concurrent_calls, weight, retry_max_attempts, \
     retry_base_delay_ms, retry_max_delay_ms, retry_jitter, status, target_count, created_at, updated_at, \
     started_at, completed_at, retry_on, telephony, calling_rules";

fn settings_from_row<R: RowExt>(row: &R, hours: Vec<Window>) -> Result<CampaignSettings, StoreError> {
    Ok(CampaignSettings {
        name: row.col("name")?,
        description: row.col("description")?,
        time_zone: row.col("time_zone")?,
        max_concurrent_calls: row.col::<i32>("max_concurrent_calls")? as u32,
        weight: row.col::<i32>("weight")? as u32,
        retry_policy: RetryPolicy {
            max_attempts: row.col::<i32>("retry_max_attempts")? as u32,
            base_delay: Duration::from_millis(row.col::<i64>("retry_base_delay_ms")? as u64),
            max_delay: Duration::from_millis(row.col::<i64>("retry_max_delay_ms")? as u64),
            jitter: row.col("retry_jitter")?,
            retry_on: dialer_domain::outcome::OutcomeSet::from_csv(&row.col::<String>("retry_on")?),
        },
        business_hours: hours,
        telephony: telephony_from(row.col("telephony")?)?,
        calling_rules: rules_from(row.col("calling_rules")?)?,
    })
}

fn rules_json(r: &Option<dialer_domain::rules::CallingRules>) -> Option<String> {
    r.as_ref().map(|r| serde_json::to_string(r).unwrap_or_default())
}

fn rules_from(json: Option<String>) -> Result<Option<dialer_domain::rules::CallingRules>, StoreError> {
    json.map(|j| {
        serde_json::from_str(&j)
            .map_err(|source| StoreError::from(Corrupt::Json { what: "campaign calling_rules", source }))
    })
    .transpose()
}

/// NULL for the provider's settings, else the JSON of the campaign's own.
fn telephony_json(t: &dialer_domain::settings::Telephony) -> Option<String> {
    (!t.is_empty()).then(|| serde_json::to_string(t).unwrap_or_default())
}

fn telephony_from(json: Option<String>) -> Result<dialer_domain::settings::Telephony, StoreError> {
    json.map_or(Ok(Default::default()), |j| {
        serde_json::from_str(&j)
            .map_err(|source| StoreError::from(Corrupt::Json { what: "campaign telephony", source }))
    })
}

pub(crate) fn campaign_status<R: RowExt>(row: &R) -> Result<CampaignStatus, StoreError> {
    let s: String = row.col("status")?;
    CampaignStatus::parse(&s)
        .ok_or_else(|| StoreError::from(Corrupt::Value { what: "campaign status", value: s.clone() }))
}

fn campaign_from_row<R: RowExt>(row: &R, hours: Vec<Window>) -> Result<Campaign, StoreError> {
    let settings = settings_from_row(row, hours)?;
    Ok(Campaign::new(
        row.col("id")?,
        &settings,
        campaign_status(row)?,
        row.col("target_count")?,
        Timestamps {
            created_at: row.col("created_at")?,
            updated_at: row.col("updated_at")?,
            started_at: row.col("started_at")?,
            completed_at: row.col("completed_at")?,
        },
    ))
}

/// Business hours of several campaigns, in position order.
async fn load_hours<D: Dialect>(
    conn: &mut D::Connection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<Window>>, StoreError> {
    let mut out: HashMap<Uuid, Vec<Window>> = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let mut q = QueryBuilder::<D>::new(
        "SELECT campaign_id, day_of_week, start_minute, end_minute FROM campaign_business_hours WHERE campaign_id IN (",
    );
    q.push_list(ids.iter().copied());
    q.push(") ORDER BY campaign_id, position");
    for row in q.build().rows(&mut *conn).await? {
        out.entry(row.col("campaign_id")?).or_default().push(Window {
            day_of_week: row.col::<i32>("day_of_week")? as u8,
            start: row.col::<i32>("start_minute")? as u16,
            end: row.col::<i32>("end_minute")? as u16,
        });
    }
    Ok(out)
}

async fn insert_hours<D: Dialect>(conn: &mut D::Connection, id: Uuid, hours: &[Window]) -> Result<(), StoreError> {
    if hours.is_empty() {
        return Ok(());
    }
    let mut q = QueryBuilder::<D>::new(
        "INSERT INTO campaign_business_hours (campaign_id, position, day_of_week, start_minute, end_minute) ",
    );
    q.push_values(hours.iter().enumerate(), |mut b, (i, w)| {
        b.push_arg(id)
            .push_arg(i as i32)
            .push_arg(i32::from(w.day_of_week))
            .push_arg(i32::from(w.start))
            .push_arg(i32::from(w.end));
    });
    q.build().run(&mut *conn).await?;
    Ok(())
}

pub(crate) async fn insert_event<D: Dialect>(
    conn: &mut D::Connection,
    id: Uuid,
    kind: &str,
    detail: Value,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query::<D>("INSERT INTO campaign_events (campaign_id, kind, detail, at) VALUES ($1, $2, $3, $4)")
        .arg(id)
        .arg(kind)
        .arg(Json(detail))
        .arg(at)
        .run(&mut *conn)
        .await?;
    Ok(())
}

/// The campaign's status, for writes that need it open.
/// A campaign's status, read `FOR SHARE` where rows lock: a status change (pause,
/// complete) waits for this transaction, and this one sees a change that committed.
pub(crate) async fn locked_status<D: Dialect>(
    conn: &mut D::Connection,
    id: Uuid,
) -> Result<Option<CampaignStatus>, StoreError> {
    sqlx::query::<D>(&format!("SELECT status FROM campaigns WHERE id = $1{}", D::FOR_SHARE))
        .arg(id)
        .maybe_row(&mut *conn)
        .await?
        .map(|r| campaign_status(&r))
        .transpose()
}

/// The status of a campaign that takes new calls (locked, see [`locked_status`]).
pub(crate) async fn open_status<D: Dialect>(conn: &mut D::Connection, id: Uuid) -> Result<CampaignStatus, StoreError> {
    let status = locked_status::<D>(conn, id).await?.ok_or(StoreError::NotFound("campaign"))?;
    if status == CampaignStatus::Completed {
        return Err(StoreError::from(Conflict::CampaignCompleted));
    }
    Ok(status)
}

/// One round trip: the campaign's row repeated once per business-hours window.
async fn fetch_campaign<D: Dialect>(conn: &mut D::Connection, id: Uuid) -> Result<Campaign, StoreError> {
    let rows = sqlx::query::<D>(&format!(
        "SELECT {CAMPAIGN_COLUMNS}, day_of_week, start_minute, end_minute FROM campaigns \
         LEFT JOIN campaign_business_hours ON campaign_id = id WHERE id = $1 ORDER BY position"
    ))
    .arg(id)
    .rows(&mut *conn)
    .await?;
    let first = rows.first().ok_or(StoreError::NotFound("campaign"))?;
    let mut hours = Vec::with_capacity(rows.len());
    for row in &rows {
        if let Some(day) = row.col::<Option<i32>>("day_of_week")? {
            hours.push(Window {
                day_of_week: day as u8,
                start: row.col::<i32>("start_minute")? as u16,
                end: row.col::<i32>("end_minute")? as u16,
            });
        }
    }
    campaign_from_row(first, hours)
}

#[tracing::instrument(name = "store.create_campaign", level = "debug", skip_all)]
pub async fn create_campaign<D: Dialect>(pool: &sqlx::Pool<D>, c: &NewCampaign) -> Result<Campaign, StoreError> {
    let parts = load_parts::<D>(pool, c.targets.len());
    if parts > 1 {
        return create_campaign_in_parts(pool, c, parts).await;
    }
    let at = now();
    let mut tx = D::begin(pool).await?;
    let id = insert_campaign::<D>(&mut tx, Uuid::now_v7(), &c.settings, c.targets.len(), at).await?;
    let created = D::register_targets(&mut tx, id, &c.targets, &call_ids(c.targets.len()), at).await?;
    let campaign = targets_registered::<D>(&mut tx, id, created, at).await?;
    tx.commit().await?;
    Ok(campaign)
}

/// Targets a part of a campaign loaded by several connections carries at least: a smaller list
/// loads in one transaction (a part's transaction and commit would cost more than it saves).
pub const LOAD_PART_MIN_TARGETS: usize = 25_000;
/// Connections that load one campaign's targets at most.
const LOAD_PARTS_MAX: u32 = 4;
/// A load not finished this long after it began is taken for abandoned (its process killed):
/// the reaper deletes its rows, and the load itself, if it was still running, fails.
pub const LOAD_ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// How many connections load `targets` targets at once: one per [`LOAD_PART_MIN_TARGETS`], at
/// most a quarter of the pool's connections and [`LOAD_PARTS_MAX`]; one where writers take
/// turns (SQLite).
fn load_parts<D: Dialect>(pool: &sqlx::Pool<D>, targets: usize) -> usize {
    if !D::ROW_LOCKS {
        return 1;
    }
    let by_pool = (pool.options().get_max_connections() / 4).clamp(1, LOAD_PARTS_MAX) as usize;
    (targets / LOAD_PART_MIN_TARGETS).clamp(1, by_pool)
}

/// Creates a campaign whose targets `parts` connections load at once, each part in its own
/// transaction, the campaign's row last: until it commits nothing reads the rows loaded (every
/// reader starts from a campaign), so the campaign appears whole or not at all. PostgreSQL only
/// (on SQLite the parts would take turns). A failed load deletes what it wrote; a load whose
/// process died is deleted by the reaper ([`discard_abandoned_loads`]).
pub async fn create_campaign_in_parts<D: Dialect>(
    pool: &sqlx::Pool<D>,
    c: &NewCampaign,
    parts: usize,
) -> Result<Campaign, StoreError> {
    let batches = c.targets.chunks(LOAD_BATCH_TARGETS).map(|b| ImportBatch::Targets(b.to_vec()));
    let batches = futures::stream::iter(batches.chain(std::iter::once(ImportBatch::Commit)));
    load_in_parts(pool, &c.settings, batches, parts).await
}

/// Creates a campaign from `batches` (a list given whole, or a CSV list as it is read), each
/// batch loaded in a transaction of its own as it arrives, up to `parts` at once, the campaign's
/// row last.
async fn load_in_parts<D: Dialect>(
    pool: &sqlx::Pool<D>,
    settings: &CampaignSettings,
    batches: impl futures::Stream<Item = ImportBatch> + Unpin,
    parts: usize,
) -> Result<Campaign, StoreError> {
    ensure_name_free::<D>(pool, &settings.name).await?;
    let (id, at) = (Uuid::now_v7(), now());
    begin_load::<D>(pool, id, at).await?;
    // `batches` goes with the load: a reader's next batch finds it over.
    let loaded = load_batches(pool, id, batches, parts, at).await;
    let result = match loaded {
        Ok((targets, created)) => finish_load::<D>(pool, id, settings, targets, created, at).await,
        Err(e) => Err(e),
    };
    discard_if_failed(pool, id, result).await
}

/// Loads each batch as it arrives, up to `parts` at once, until the list's end; returns the
/// targets and the calls created.
async fn load_batches<D: Dialect>(
    pool: &sqlx::Pool<D>,
    id: Uuid,
    mut batches: impl futures::Stream<Item = ImportBatch> + Unpin,
    parts: usize,
    at: DateTime<Utc>,
) -> Result<(usize, u64), StoreError> {
    use futures::StreamExt;
    let (mut loader, mut targets) = (Loader::new(pool, id, parts, at), 0);
    loop {
        match batches.next().await {
            Some(ImportBatch::Targets(batch)) => {
                targets += batch.len();
                if !loader.add(batch).await {
                    break;
                }
            }
            Some(ImportBatch::Commit) => break,
            None => {
                let e = FieldError::new("targets", "the list was not read to its end: nothing was written");
                loader.failed.get_or_insert(e.into());
                break;
            }
        }
    }
    Ok((targets, loader.finish().await?))
}

/// Targets a batch of a list given whole carries when it loads in parts.
const LOAD_BATCH_TARGETS: usize = 10_000;

/// The parts of one load in flight: each batch a task loading it in its own transaction (its
/// own connection and thread), at most `parts` at once.
struct Loader<D: Dialect> {
    pool: sqlx::Pool<D>,
    id: Uuid,
    parts: usize,
    at: DateTime<Utc>,
    loading: tokio::task::JoinSet<Result<u64, StoreError>>,
    created: u64,
    failed: Option<StoreError>,
}

impl<D: Dialect> Loader<D> {
    fn new(pool: &sqlx::Pool<D>, id: Uuid, parts: usize, at: DateTime<Utc>) -> Self {
        let loading = tokio::task::JoinSet::new();
        Loader { pool: pool.clone(), id, parts: parts.max(1), at, loading, created: 0, failed: None }
    }

    /// Starts loading `batch` once a part is free (its calls' ids taken now: in list order);
    /// `false` once a part has failed (the load is over).
    async fn add(&mut self, batch: Vec<NewTarget>) -> bool {
        while let Some(done) = self.loading.try_join_next() {
            self.tally(done);
        }
        while self.loading.len() >= self.parts
            && let Some(done) = self.loading.join_next().await
        {
            self.tally(done);
        }
        if self.failed.is_some() {
            return false;
        }
        let (pool, id, at, ids) = (self.pool.clone(), self.id, self.at, call_ids(batch.len()));
        self.loading.spawn(async move { load_part::<D>(&pool, id, &batch, &ids, at).await });
        true
    }

    /// Waits for every part to end (commit or roll back: a part still committing could commit
    /// after the clean-up of a failed load); the calls created, or the first failure.
    async fn finish(mut self) -> Result<u64, StoreError> {
        while let Some(done) = self.loading.join_next().await {
            self.tally(done);
        }
        self.failed.map_or(Ok(self.created), Err)
    }

    fn tally(&mut self, done: Result<Result<u64, StoreError>, tokio::task::JoinError>) {
        match done {
            Ok(Ok(n)) => self.created += n,
            Ok(Err(e)) => {
                self.failed.get_or_insert(e);
            }
            Err(_) => {
                self.failed.get_or_insert(Corrupt::Broken("a part of the list's load panicked").into());
            }
        }
    }
}

/// `result` of load `id`; when it failed, the load's rows are deleted first.
async fn discard_if_failed<D: Dialect>(
    pool: &sqlx::Pool<D>,
    id: Uuid,
    result: Result<Campaign, StoreError>,
) -> Result<Campaign, StoreError> {
    if result.is_err()
        && let Err(e) = discard_load::<D>(pool, id).await
    {
        tracing::warn!(campaign = %id, error = %e, "could not delete a failed load's rows; the reaper will");
    }
    result
}

/// New calls' ids, one per target in list order: claims take a campaign's due calls in id
/// order, so its list is dialled from the top, however many connections loaded it.
pub fn call_ids(n: usize) -> Vec<Uuid> {
    (0..n).map(|_| Uuid::now_v7()).collect()
}

/// Refuses a name taken already (before loading anything; the campaign's insert checks again).
async fn ensure_name_free<D: Dialect>(pool: &sqlx::Pool<D>, name: &str) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    let taken = sqlx::query::<D>("SELECT id FROM campaigns WHERE name_key = $1")
        .arg(name.to_lowercase())
        .maybe_row(&mut *conn)
        .await?;
    match taken {
        Some(_) => Err(Conflict::NameTaken(name.to_string()).into()),
        None => Ok(()),
    }
}

/// Records that campaign `id`'s targets are being loaded (so that the reaper can find them).
pub async fn begin_load<D: Dialect>(pool: &sqlx::Pool<D>, id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    sqlx::query::<D>("INSERT INTO target_loads (campaign_id, started_at) VALUES ($1, $2)")
        .arg(id)
        .arg(at)
        .run(&mut *conn)
        .await?;
    Ok(())
}

/// Loads one part of campaign `id`'s targets, its calls' ids `call_ids`, in a transaction of its
/// own; returns its calls.
pub async fn load_part<D: Dialect>(
    pool: &sqlx::Pool<D>,
    id: Uuid,
    part: &[NewTarget],
    call_ids: &[Uuid],
    at: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let mut tx = D::begin(pool).await?;
    let created = D::register_targets(&mut tx, id, part, call_ids, at).await?;
    tx.commit().await?;
    Ok(created)
}

/// Makes a loaded campaign appear: its row, stats and `created` event, in the transaction that
/// ends its load. Fails if the reaper took the load for abandoned meanwhile (the first statement
/// takes the load's row, so the reaper and this wait for each other and one of them wins).
pub async fn finish_load<D: Dialect>(
    pool: &sqlx::Pool<D>,
    id: Uuid,
    settings: &CampaignSettings,
    targets: usize,
    created: u64,
    at: DateTime<Utc>,
) -> Result<Campaign, StoreError> {
    let mut tx = D::begin(pool).await?;
    if !take_load::<D>(&mut tx, id).await? {
        return Err(Conflict::LoadAbandoned(LOAD_ABANDONED_AFTER.as_secs() / 60).into());
    }
    insert_campaign::<D>(&mut tx, id, settings, targets, at).await?;
    let campaign = targets_registered::<D>(&mut tx, id, created, at).await?;
    tx.commit().await?;
    Ok(campaign)
}

/// Deletes the load's row; `false` if there was none (the load was finished or discarded).
async fn take_load<D: Dialect>(conn: &mut D::Connection, id: Uuid) -> Result<bool, StoreError> {
    let taken = sqlx::query::<D>("DELETE FROM target_loads WHERE campaign_id = $1").arg(id).run(&mut *conn).await?;
    Ok(taken > 0)
}

/// Deletes an unfinished load's rows. Nothing if its load row is gone: the load was finished
/// (the campaign is visible and keeps its rows) or discarded already.
async fn discard_load<D: Dialect>(pool: &sqlx::Pool<D>, id: Uuid) -> Result<bool, StoreError> {
    let mut tx = D::begin(pool).await?;
    if !take_load::<D>(&mut tx, id).await? {
        return Ok(false);
    }
    for table in ["calls", "campaign_targets"] {
        sqlx::query::<D>(&format!("DELETE FROM {table} WHERE campaign_id = $1")).arg(id).run(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Deletes the rows of every load begun before `before` and not finished (its process died
/// mid-load); returns how many loads.
#[tracing::instrument(name = "store.discard_abandoned_loads", level = "debug", skip_all)]
pub async fn discard_abandoned_loads<D: Dialect>(
    pool: &sqlx::Pool<D>,
    before: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let ids: Vec<Uuid> = {
        let mut conn = pool.acquire().await?;
        let rows = sqlx::query::<D>("SELECT campaign_id FROM target_loads WHERE started_at < $1")
            .arg(before)
            .rows(&mut *conn)
            .await?;
        rows.iter().map(|r| r.col("campaign_id")).collect::<Result<_, _>>()?
    };
    let mut discarded = 0;
    for id in ids {
        if discard_load::<D>(pool, id).await? {
            tracing::warn!(campaign = %id, "deleted the targets of a campaign whose load never finished (its process stopped mid-load); the campaign was never visible: create it again");
            discarded += 1;
        }
    }
    Ok(discarded)
}

/// What a list being read sends [`import_campaign`]: its targets as they are read, then
/// whether to keep them.
#[derive(Debug)]
pub enum ImportBatch {
    Targets(Vec<NewTarget>),
    /// The list was read to its end: the campaign and its targets are committed.
    Commit,
}

/// Creates a campaign whose targets arrive in batches (a CSV list as it is read), all or
/// nothing: committed on [`ImportBatch::Commit`]; when `batches` closes without it (the list
/// turned out unreadable, the client went away) nothing is left written. One transaction, or on
/// PostgreSQL one per batch, several at once, the campaign's row last ([`load_in_parts`]).
#[tracing::instrument(name = "store.import_campaign", level = "debug", skip_all)]
pub async fn import_campaign<D: Dialect>(
    pool: &sqlx::Pool<D>,
    settings: &CampaignSettings,
    mut batches: tokio::sync::mpsc::Receiver<ImportBatch>,
) -> Result<Campaign, StoreError> {
    let parts = load_parts::<D>(pool, usize::MAX);
    if parts > 1 {
        let batches = futures::stream::poll_fn(move |cx| batches.poll_recv(cx));
        return load_in_parts(pool, settings, batches, parts).await;
    }
    let at = now();
    let mut tx = D::begin(pool).await?;
    let id = insert_campaign::<D>(&mut tx, Uuid::now_v7(), settings, 0, at).await?;
    let (mut targets, mut created) = (0i64, 0);
    loop {
        match batches.recv().await {
            Some(ImportBatch::Targets(batch)) => {
                created += D::register_targets(&mut tx, id, &batch, &call_ids(batch.len()), at).await?;
                targets += batch.len() as i64;
            }
            Some(ImportBatch::Commit) => break,
            None => {
                return Err(FieldError::new("targets", "the list was not read to its end: nothing was written").into());
            }
        }
    }
    sqlx::query::<D>("UPDATE campaigns SET target_count = $1 WHERE id = $2")
        .arg(targets)
        .arg(id)
        .run(&mut **tx)
        .await?;
    let campaign = targets_registered::<D>(&mut tx, id, created, at).await?;
    tx.commit().await?;
    Ok(campaign)
}

/// Inserts campaign `id`'s row (status pending), its business hours and its stats row.
async fn insert_campaign<D: Dialect>(
    conn: &mut D::Connection,
    id: Uuid,
    s: &CampaignSettings,
    target_count: usize,
    at: DateTime<Utc>,
) -> Result<Uuid, StoreError> {
    let inserted = sqlx::query::<D>(
        "INSERT INTO campaigns (id, name, name_key, description, time_zone, max_concurrent_calls, \
         retry_max_attempts, retry_base_delay_ms, retry_max_delay_ms, retry_jitter, status, target_count, \
         created_at, updated_at, weight, retry_on, telephony, calling_rules) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14, $15, $16, $17)",
    )
    .arg(id)
    .arg(&s.name)
    .arg(s.name.to_lowercase())
    .arg(&s.description)
    .arg(&s.time_zone)
    .arg(s.max_concurrent_calls as i32)
    .arg(s.retry_policy.max_attempts as i32)
    .arg(ms(s.retry_policy.base_delay))
    .arg(ms(s.retry_policy.max_delay))
    .arg(s.retry_policy.jitter)
    .arg(CampaignStatus::Pending.as_str())
    .arg(target_count as i64)
    .arg(at)
    .arg(s.weight as i32)
    .arg(s.retry_policy.retry_on.to_csv())
    .arg(telephony_json(&s.telephony))
    .arg(rules_json(&s.calling_rules))
    .run(&mut *conn)
    .await;
    match inserted {
        Err(e) if is_unique_violation(&e) => {
            return Err(StoreError::from(Conflict::NameTaken(s.name.clone())));
        }
        r => r?,
    };
    insert_hours::<D>(conn, id, &s.business_hours).await?;
    sqlx::query::<D>("INSERT INTO campaign_stats (campaign_id) VALUES ($1)").arg(id).run(&mut *conn).await?;
    Ok(id)
}

/// Registers targets with the campaign, each with a pending call; returns the calls created
/// (multi-row `INSERT`s: SQLite's [`Dialect::register_targets`]).
pub(crate) async fn insert_targets<D: Dialect>(
    conn: &mut D::Connection,
    id: Uuid,
    targets: &[NewTarget],
    call_ids: &[Uuid],
    at: DateTime<Utc>,
) -> Result<u64, StoreError> {
    for chunk in targets.chunks(CHUNK_ROWS) {
        let mut q =
            QueryBuilder::<D>::new("INSERT INTO campaign_targets (campaign_id, phone_number, metadata, created_at) ");
        q.push_values(chunk, |mut b, t| {
            b.push_arg(id).push_arg(&t.phone_number).push_arg(Json(&t.metadata)).push_arg(at);
        });
        q.build().run(&mut *conn).await?;
    }
    let rows: Vec<(Uuid, &str, &Value)> =
        targets.iter().zip(call_ids).map(|(t, c)| (*c, t.phone_number.as_str(), &t.metadata)).collect();
    insert_pending_calls::<D>(conn, id, &rows, at).await
}

/// The targets are in: the pending count, the `created` event, and the campaign as it reads now.
async fn targets_registered<D: Dialect>(
    conn: &mut D::Connection,
    id: Uuid,
    created: u64,
    at: DateTime<Utc>,
) -> Result<Campaign, StoreError> {
    add_pending::<D>(conn, id, created).await?;
    insert_event::<D>(conn, id, "created", json!({"targets": created}), at).await?;
    fetch_campaign::<D>(conn, id).await
}

#[tracing::instrument(name = "store.get_campaign", level = "debug", skip_all)]
pub async fn get_campaign<D: Dialect>(pool: &sqlx::Pool<D>, id: Uuid) -> Result<Campaign, StoreError> {
    let mut conn = pool.acquire().await?;
    fetch_campaign::<D>(&mut conn, id).await
}

#[tracing::instrument(name = "store.list_campaigns", level = "debug", skip_all)]
pub async fn list_campaigns<D: Dialect>(
    pool: &sqlx::Pool<D>,
    after: Option<Uuid>,
    limit: u32,
) -> Result<Vec<Campaign>, StoreError> {
    let mut conn = pool.acquire().await?;
    let mut q = QueryBuilder::<D>::new(format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns"));
    if let Some(a) = after {
        q.push(" WHERE id > ").push_arg(a);
    }
    q.push(" ORDER BY id LIMIT ").push_arg(i64::from(limit));
    let rows = q.build().rows(&mut *conn).await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.col("id")).collect::<Result<_, _>>()?;
    let mut hours = load_hours::<D>(&mut conn, &ids).await?;
    rows.iter().zip(&ids).map(|(r, id)| campaign_from_row(r, hours.remove(id).unwrap_or_default())).collect()
}

#[tracing::instrument(name = "store.update_campaign", level = "debug", skip_all)]
pub async fn update_campaign<D: Dialect>(
    pool: &sqlx::Pool<D>,
    id: Uuid,
    patch: &UpdateCampaignRequest,
) -> Result<Campaign, StoreError> {
    let mut tx = D::begin(pool).await?;
    let row = sqlx::query::<D>(&format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id = $1"))
        .arg(id)
        .maybe_row(&mut **tx)
        .await?
        .ok_or(StoreError::NotFound("campaign"))?;
    let hours = load_hours::<D>(&mut tx, &[id]).await?.remove(&id).unwrap_or_default();
    let settings = settings_from_row(&row, hours)?;
    let next: CampaignSettings = patch.apply(&settings).map_err(StoreError::Invalid)?;
    let at = now();
    let updated = sqlx::query::<D>(
        "UPDATE campaigns SET name = $1, name_key = $2, description = $3, time_zone = $4, \
         max_concurrent_calls = $5, retry_max_attempts = $6, retry_base_delay_ms = $7, \
         retry_max_delay_ms = $8, retry_jitter = $9, updated_at = $10, weight = $12, retry_on = $13, \
         telephony = $14, calling_rules = $15 WHERE id = $11",
    )
    .arg(&next.name)
    .arg(next.name.to_lowercase())
    .arg(&next.description)
    .arg(&next.time_zone)
    .arg(next.max_concurrent_calls as i32)
    .arg(next.retry_policy.max_attempts as i32)
    .arg(ms(next.retry_policy.base_delay))
    .arg(ms(next.retry_policy.max_delay))
    .arg(next.retry_policy.jitter)
    .arg(at)
    .arg(id)
    .arg(next.weight as i32)
    .arg(next.retry_policy.retry_on.to_csv())
    .arg(telephony_json(&next.telephony))
    .arg(rules_json(&next.calling_rules))
    .run(&mut **tx)
    .await;
    match updated {
        Err(e) if is_unique_violation(&e) => {
            return Err(StoreError::from(Conflict::NameTaken(next.name.clone())));
        }
        r => r?,
    };
    if next.business_hours != settings.business_hours {
        sqlx::query::<D>("DELETE FROM campaign_business_hours WHERE campaign_id = $1").arg(id).run(&mut **tx).await?;
        insert_hours::<D>(&mut tx, id, &next.business_hours).await?;
    }
    let changed: Vec<&str> = [
        ("name", patch.name.is_some()),
        ("description", patch.description.is_some()),
        ("time_zone", patch.time_zone.is_some()),
        ("max_concurrent_calls", patch.max_concurrent_calls.is_some()),
        ("weight", patch.weight.is_some()),
        ("retry_policy", patch.retry_policy.is_some()),
        ("business_hours", patch.business_hours.is_some()),
        ("telephony", patch.telephony.is_some()),
        ("calling_rules", patch.calling_rules.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    insert_event::<D>(&mut tx, id, "updated", json!({"fields": changed}), at).await?;
    let campaign = fetch_campaign::<D>(&mut tx, id).await?;
    tx.commit().await?;
    Ok(campaign)
}

#[tracing::instrument(name = "store.transition", level = "debug", skip_all)]
pub async fn transition<D: Dialect>(
    pool: &sqlx::Pool<D>,
    id: Uuid,
    action: CampaignAction,
) -> Result<Campaign, StoreError> {
    let sources = CampaignStatus::sources(action);
    let next = sources.first().map(|s| s.apply(action)).transpose()?.unwrap_or(CampaignStatus::Completed);
    let at = now();
    let mut tx = D::begin(pool).await?;
    let mut q = QueryBuilder::<D>::new("UPDATE campaigns SET status = ");
    q.push_arg(next.as_str()).push(", updated_at = ").push_arg(at);
    // Two events for a completion (the change, then the final stats), one otherwise.
    q.push(", event_seq = event_seq + ").push_arg(if next == CampaignStatus::Completed { 2i32 } else { 1 });
    match next {
        CampaignStatus::InProgress => {
            q.push(", started_at = COALESCE(started_at, ").push_arg(at).push(")");
        }
        CampaignStatus::Completed => {
            q.push(", completed_at = ").push_arg(at);
        }
        _ => {}
    }
    q.push(" WHERE id = ").push_arg(id).push(" AND status IN (");
    q.push_list(sources.iter().map(|s| s.as_str()));
    q.push(")");
    if q.build().run(&mut **tx).await? == 0 {
        let current = fetch_campaign::<D>(&mut tx, id).await?;
        return Err(match current.status.apply(action) {
            Err(e) => e.into(),
            Ok(_) => StoreError::from(Conflict::CampaignChanged),
        });
    }
    let mut cancelled = 0u64;
    if next == CampaignStatus::Completed {
        cancelled = cancel_pending::<D>(&mut tx, id, at).await?;
    }
    let detail = json!({"status": next.as_str(), "cancelled_calls": cancelled});
    insert_event::<D>(&mut tx, id, action.as_str(), detail.clone(), at).await?;
    log_campaign::<D>(&mut tx, id, action.as_str(), next, detail, at).await?;
    let campaign = fetch_campaign::<D>(&mut tx, id).await?;
    tx.commit().await?;
    Ok(campaign)
}

/// Complete stops everything: the calls of a just-completed campaign still waiting are
/// cancelled. Runs after the campaign row's update, in its transaction: writers that
/// read the campaign `FOR SHARE` have committed by then and their calls are seen.
async fn cancel_pending<D: Dialect>(conn: &mut D::Connection, id: Uuid, at: DateTime<Utc>) -> Result<u64, StoreError> {
    let rows = sqlx::query::<D>(
        "UPDATE calls SET status = 'failed', last_error = $1, next_attempt_at = NULL, updated_at = $2, \
         event_seq = event_seq + 1 WHERE campaign_id = $3 AND status = 'pending' \
         RETURNING id, phone_number, attempt_count, event_seq",
    )
    .arg(CANCELLED)
    .arg(at)
    .arg(id)
    .rows(&mut *conn)
    .await?;
    let cancelled = rows.len() as u64;
    if cancelled > 0 {
        sqlx::query::<D>(
            "UPDATE campaign_stats SET pending_calls = pending_calls - $1, failed_calls = failed_calls + $1 \
             WHERE campaign_id = $2",
        )
        .arg(cancelled as i64)
        .arg(id)
        .run(&mut *conn)
        .await?;
    }
    let mut events = Vec::with_capacity(rows.len());
    for r in &rows {
        let stream = crate::outbox::CallStream {
            campaign: id,
            call: r.col("id")?,
            phone_number: r.col("phone_number")?,
            seq: r.col::<i32>("event_seq")? as u32,
        };
        crate::outbox::cancelled(stream, r.col::<i32>("attempt_count")? as u32, at, &mut events);
    }
    crate::events::log::append::<D>(conn, &events).await?;
    Ok(cancelled)
}

/// Logs a campaign's status change (and, completed, its final stats) in its transaction.
async fn log_campaign<D: Dialect>(
    conn: &mut D::Connection,
    id: Uuid,
    action: &str,
    status: CampaignStatus,
    detail: Value,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let seq: i32 = sqlx::query::<D>("SELECT event_seq FROM campaigns WHERE id = $1").arg(id).scalar(&mut *conn).await?;
    let stats = if status == CampaignStatus::Completed {
        Some(
            serde_json::to_value(read_stats::<D>(conn, id).await?)
                .map_err(|source| StoreError::from(Corrupt::Json { what: "campaign stats", source }))?,
        )
    } else {
        None
    };
    let events = crate::outbox::campaign_changed(id, seq as u32, action, status.as_str(), detail, stats, at);
    crate::events::log::append::<D>(conn, &events).await
}

/// Completes in-progress campaigns whose every call is terminal; returns their ids. A
/// call created meanwhile (the totals were read before it) is cancelled with them.
#[tracing::instrument(name = "store.complete_finished", level = "debug", skip_all)]
pub async fn complete_finished<D: Dialect>(pool: &sqlx::Pool<D>) -> Result<Vec<Uuid>, StoreError> {
    let at = now();
    let mut tx = D::begin(pool).await?;
    let ids: Vec<Uuid> = sqlx::query::<D>(
        "UPDATE campaigns SET status = 'completed', completed_at = $1, updated_at = $1, event_seq = event_seq + 2 \
         WHERE status = 'in_progress' AND id IN (SELECT campaign_id FROM campaign_stats \
         WHERE pending_calls = 0 AND queued_calls = 0 AND in_progress_calls = 0) RETURNING id",
    )
    .arg(at)
    .scalars(&mut **tx)
    .await?;
    for id in &ids {
        let cancelled = cancel_pending::<D>(&mut tx, *id, at).await?;
        let detail =
            json!({"status": "completed", "by": "scheduler: every call is terminal", "cancelled_calls": cancelled});
        insert_event::<D>(&mut tx, *id, "complete", detail.clone(), at).await?;
        log_campaign::<D>(&mut tx, *id, "complete", CampaignStatus::Completed, detail, at).await?;
    }
    tx.commit().await?;
    Ok(ids)
}

/// Reads the retry policy and completion of campaigns, `FOR SHARE` where rows lock.
pub(crate) async fn load_campaigns<D: Dialect>(
    conn: &mut D::Connection,
    ids: &[Uuid],
    policies: &mut HashMap<Uuid, RetryPolicy>,
    completed: &mut std::collections::HashSet<Uuid>,
) -> Result<(), StoreError> {
    for chunk in ids.chunks(LOOKUP_CHUNK) {
        let mut q = QueryBuilder::<D>::new(format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id IN ("));
        q.push_list(chunk.iter().copied());
        q.push(") ORDER BY id");
        q.push(D::FOR_SHARE);
        for r in q.build().rows(&mut *conn).await? {
            let id: Uuid = r.col("id")?;
            if campaign_status(&r)? == CampaignStatus::Completed {
                completed.insert(id);
            }
            policies.insert(id, settings_from_row(&r, vec![])?.retry_policy);
        }
    }
    Ok(())
}

/// In-progress campaigns with their schedule, cap and live counts.
#[tracing::instrument(name = "store.active_campaigns", level = "debug", skip_all)]
pub async fn active_campaigns<D: Dialect>(pool: &sqlx::Pool<D>) -> Result<Vec<ActiveCampaign>, StoreError> {
    let mut conn = pool.acquire().await?;
    let rows = sqlx::query::<D>(
        "SELECT c.id, c.time_zone, c.max_concurrent_calls, c.weight, c.telephony, c.calling_rules, s.pending_calls, s.queued_calls, \
         s.in_progress_calls, s.answered_human, s.abandoned \
         FROM campaigns c JOIN campaign_stats s ON s.campaign_id = c.id WHERE c.status = 'in_progress' ORDER BY c.id",
    )
    .rows(&mut *conn)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.col("id")).collect::<Result<_, _>>()?;
    let mut hours = load_hours::<D>(&mut conn, &ids).await?;
    rows.iter()
        .zip(&ids)
        .map(|(r, id)| {
            Ok(ActiveCampaign {
                id: *id,
                time_zone: r.col("time_zone")?,
                business_hours: hours.remove(id).unwrap_or_default(),
                max_concurrent_calls: r.col::<i32>("max_concurrent_calls")? as u32,
                weight: r.col::<i32>("weight")? as u32,
                telephony: telephony_from(r.col("telephony")?)?,
                calling_rules: rules_from(r.col("calling_rules")?)?,
                pending: r.col("pending_calls")?,
                queued: r.col("queued_calls")?,
                in_progress: r.col("in_progress_calls")?,
                answered_human: r.col("answered_human")?,
                abandoned: r.col("abandoned")?,
            })
        })
        .collect()
}
