//! What differs between the two databases, and the few primitives the store's plain code needs
//! from sqlx, behind one small trait: [`Dialect`], implemented for [`Postgres`] and [`Sqlite`].
//!
//! The store's functions are generic over `D: Dialect` and written once. sqlx's own methods
//! (`bind`, `execute`, `try_get`) cannot be called on a generic database (their bounds name
//! each value type and argument buffer of the database), so binding, running and reading go
//! through the dialect, with extension traits that read like sqlx ([`Bind`], [`QueryExt`],
//! [`PushArg`], [`PushList`], [`RowExt`]):
//! `sqlx::query::<D>(SQL).arg(id).run(&mut **tx)`, `q.push_list(ids.iter().copied())`, `row.col::<i64>("n")`.
//!
//! The differences ([`postgres`], [`sqlite`]): how a write transaction begins (SQLite `BEGIN IMMEDIATE`, so two writers
//! never deadlock upgrading a read lock), row locks (`FOR UPDATE`/`FOR SHARE`/`SKIP LOCKED`, which
//! SQLite does without: it has one writer at a time), how a claim passes its ids, whether a
//! statement may use a writing CTE, and the bulk writes of the event log and the recorder (calls,
//! attempt rows, the recipient's ledger: arrays with `UNNEST` on PostgreSQL, one statement of a
//! few parameters whatever the batch; multi-row `VALUES` on SQLite, which has no arrays).

use std::time::Duration;

use futures::stream::BoxStream;
use sqlx::query::Query;
use sqlx::query_builder::Separated;
use sqlx::{Database, Decode, Encode, Postgres, QueryBuilder, Row, Sqlite, Type};

mod postgres;
mod sqlite;

use chrono::{DateTime, Utc};
use dialer_domain::settings::NewTarget;
use uuid::Uuid;

use crate::StoreError;
use crate::events::InboxEvent;

/// A claimed delivery and its event: seq, stream, stream_seq, attempts before this one,
/// window_start, body (stored: see [`crate::events::body_of`]), created_at, event_id,
/// campaign_id, kind.
pub type ClaimedRow = (i64, Uuid, i32, i32, Option<DateTime<Utc>>, String, DateTime<Utc>, Option<Uuid>, Uuid, String);

/// A value the store binds: one both databases encode.
pub trait Arg<'q>: Encode<'q, Postgres> + Type<Postgres> + Encode<'q, Sqlite> + Type<Sqlite> + Send + 'q {}

impl<'q, T> Arg<'q> for T where T: Encode<'q, Postgres> + Type<Postgres> + Encode<'q, Sqlite> + Type<Sqlite> + Send + 'q {}

/// A value the store reads: one both databases decode.
pub trait Col:
    for<'r> Decode<'r, Postgres> + Type<Postgres> + for<'r> Decode<'r, Sqlite> + Type<Sqlite> + Send
{
}

impl<T> Col for T where
    T: for<'r> Decode<'r, Postgres> + Type<Postgres> + for<'r> Decode<'r, Sqlite> + Type<Sqlite> + Send
{
}

/// A statement with its arguments, on database `D`: `'q` the statement's text (or, from a query
/// builder, its borrow of the builder), `'a` what the arguments borrow.
pub type Q<'q, 'a, D> = Query<'q, D, <D as Database>::Arguments<'a>>;

/// The database-specific part of the store.
pub trait Dialect: Database + Sized {
    /// How a write transaction begins.
    const BEGIN: &'static str;
    /// Appended to a claim's id look-up: concurrent claimers skip each other's rows.
    const SKIP_LOCKED: &'static str;
    /// Around a claim's id look-up: `= ANY (ARRAY(…))` on PostgreSQL (an init plan: an
    /// `IN (SELECT …)` semi-join can claim more than its limit), `IN (…)` on SQLite.
    const CLAIM_IN: (&'static str, &'static str);
    /// Appended to reads whose rows a change must wait for (` FOR SHARE`; nothing on SQLite).
    const FOR_SHARE: &'static str;
    /// Appended to reads of rows the transaction changes next (` FOR UPDATE`; nothing on SQLite).
    const FOR_UPDATE: &'static str;
    /// Whether a statement may change rows in a CTE (`WITH x AS (UPDATE … RETURNING …)`).
    const WRITING_CTES: bool;
    /// Whether rows lock (PostgreSQL): writers of different rows run side by side.
    const ROW_LOCKS: bool;
    /// PostgreSQL: its planner settings (`SET LOCAL`), `ANALYZE`, `ctid` and arrays apply.
    const IS_POSTGRES: bool;

    /// Begins a write transaction, once this process's other writers of the database are done
    /// (SQLite: [`crate::pool`]'s write gate; PostgreSQL locks rows and needs none).
    fn begin(pool: &sqlx::Pool<Self>) -> impl Future<Output = Result<Tx<Self>, StoreError>> + Send;

    fn bind<'q, T: Arg<'q>>(q: Q<'q, 'q, Self>, v: T) -> Q<'q, 'q, Self>;
    fn push_bind<'q, T: Arg<'q>>(qb: &mut QueryBuilder<'q, Self>, v: T);
    fn push_bind_separated<'qb, 'q, S: std::fmt::Display, T: Arg<'q>>(sep: &mut Separated<'qb, 'q, Self, S>, v: T);
    fn get<T: Col>(row: &Self::Row, column: &str) -> Result<T, sqlx::Error>;
    fn get_at<T: Col>(row: &Self::Row, index: usize) -> Result<T, sqlx::Error>;

    /// Runs a statement; the rows it changed.
    fn execute<'c, 'q: 'c, 'a: 'q>(
        q: Q<'q, 'a, Self>,
        c: &'c mut Self::Connection,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'c;
    fn fetch_all<'c, 'q: 'c, 'a: 'q>(
        q: Q<'q, 'a, Self>,
        c: &'c mut Self::Connection,
    ) -> impl Future<Output = Result<Vec<Self::Row>, sqlx::Error>> + Send + 'c;
    fn fetch_optional<'c, 'q: 'c, 'a: 'q>(
        q: Q<'q, 'a, Self>,
        c: &'c mut Self::Connection,
    ) -> impl Future<Output = Result<Option<Self::Row>, sqlx::Error>> + Send + 'c;
    /// The rows one at a time, as the database sends them (memory stays flat).
    fn fetch<'c, 'q: 'c, 'a: 'q>(
        q: Q<'q, 'a, Self>,
        c: &'c mut Self::Connection,
    ) -> BoxStream<'c, Result<Self::Row, sqlx::Error>>;
    /// Numbered events, (seq, event), into the log.
    fn insert_events<'c>(
        c: &'c mut Self::Connection,
        numbered: &'c [(i64, &'c InboxEvent<'c>)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'c;
    /// New delivery rows of one endpoint, (seq, stream, stream_seq): pending and due at `at`, or
    /// dead for `buried` (the reason).
    fn insert_deliveries<'c>(
        c: &'c mut Self::Connection,
        endpoint: Uuid,
        rows: &'c [(i64, Uuid, i32)],
        at: DateTime<Utc>,
        buried: Option<&'c str>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'c;
    /// The claimed deliveries of an endpoint with their events.
    fn claimed_rows<'c>(
        c: &'c mut Self::Connection,
        endpoint: Uuid,
        seqs: &'c [i64],
    ) -> impl Future<Output = Result<Vec<ClaimedRow>, StoreError>> + Send + 'c;
    /// Deletes the leases of these attempts (endpoint, seq, attempt); those that were still held.
    fn release_leases<'c>(
        c: &'c mut Self::Connection,
        attempts: &'c [(Uuid, i64, i32)],
    ) -> impl Future<Output = Result<Vec<(Uuid, i64, i32)>, StoreError>> + Send + 'c;
    /// Deletes delivered deliveries (endpoint, seq), by key.
    fn delete_delivered<'c>(
        c: &'c mut Self::Connection,
        rows: &'c [(Uuid, i64)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'c;
    /// Registers new, distinct targets of a campaign (created in this transaction or loaded in
    /// parts before its row), each with a pending call (id `call_ids[i]`, its zone key): no
    /// conflict to resolve (PostgreSQL: `COPY`). Returns the calls created.
    fn register_targets<'c>(
        c: &'c mut Self::Connection,
        campaign_id: Uuid,
        targets: &'c [NewTarget],
        call_ids: &'c [Uuid],
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send + 'c;
    /// The recorder's batch of calls, read and locked (PostgreSQL: `FOR UPDATE`) in id order:
    /// `campaign_id, id, status, attempt_count, retry_delay_ms, phone_number, event_seq`.
    fn lock_calls<'c>(
        c: &'c mut Self::Connection,
        ids: &'c [Uuid],
    ) -> impl Future<Output = Result<Vec<Self::Row>, StoreError>> + Send + 'c;
    /// The recorder's changes to call rows, written at `at`.
    fn write_calls<'c>(
        c: &'c mut Self::Connection,
        rows: &'c [CallWrite],
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'c;
    /// Attempt rows of the SQL timeline, inserted or merged into the attempt's row (a started
    /// event does not overwrite an outcome; a later field fills what is missing).
    fn upsert_attempts<'c>(
        c: &'c mut Self::Connection,
        rows: &'c [crate::timeline::TimelineRow],
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'c;
    /// The recipient's ledger of attempts: a row per claimed call (with its campaign), dialled
    /// at `at` (a row already there is kept).
    fn insert_contacts<'c>(
        c: &'c mut Self::Connection,
        calls: &'c [(Uuid, &'c crate::model::ClaimedCall)],
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'c;
    /// A claim's step for several campaigns: each ask's due calls (`retries`: due at `at`; else
    /// new ones) queued, with their campaigns. PostgreSQL: one statement; SQLite: one per ask.
    fn claim_round<'c>(
        c: &'c mut Self::Connection,
        retries: bool,
        asks: &'c [ClaimAsk<'c>],
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<(Uuid, crate::model::ClaimedCall)>, StoreError>> + Send + 'c;
}

/// A campaign's ask in one step of a claim ([`Dialect::claim_round`]).
#[derive(Clone, Copy, Debug)]
pub struct ClaimAsk<'a> {
    pub campaign_id: Uuid,
    pub zone: &'a str,
    /// Most calls to take (more than 0).
    pub limit: usize,
    /// The message deadline the taken calls keep.
    pub deadline: DateTime<Utc>,
}

/// A call row as the recorder leaves it.
#[derive(Debug)]
pub struct CallWrite {
    pub campaign_id: Uuid,
    pub id: Uuid,
    pub status: &'static str,
    pub attempt_count: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub retry_delay_ms: Option<i64>,
    pub last_error: Option<String>,
    /// The call's last event number, when this batch logged one.
    pub event_seq: Option<i32>,
}

/// A write transaction, holding the write gate where the dialect has one.
pub struct Tx<D: Dialect> {
    inner: sqlx::Transaction<'static, D>,
    _gate: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<D: Dialect> std::fmt::Debug for Tx<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tx({})", <D as Database>::NAME)
    }
}

impl<D: Dialect> Tx<D> {
    pub(crate) fn new(inner: sqlx::Transaction<'static, D>, gate: Option<tokio::sync::OwnedMutexGuard<()>>) -> Tx<D> {
        Tx { inner, _gate: gate }
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.inner.commit().await
    }
}

impl<D: Dialect> std::ops::Deref for Tx<D> {
    type Target = sqlx::Transaction<'static, D>;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl<D: Dialect> std::ops::DerefMut for Tx<D> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

/// Binding through the dialect: `query::<D>(SQL).arg(x)`.
pub trait Bind<'q>: Sized {
    /// Binds the next `$n`.
    fn arg<T: Arg<'q>>(self, v: T) -> Self;
}

impl<'q, D: Dialect> Bind<'q> for Q<'q, 'q, D> {
    fn arg<T: Arg<'q>>(self, v: T) -> Self {
        D::bind(self, v)
    }
}

/// sqlx's statement methods, through the dialect: `query::<D>(SQL).arg(x).rows(conn)`.
pub trait QueryExt<'q, 'a, D: Dialect>: Sized + Send + 'q {
    /// Runs it; the rows it changed.
    fn run<'c>(self, c: &'c mut D::Connection) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'c
    where
        'q: 'c;
    fn rows<'c>(self, c: &'c mut D::Connection) -> impl Future<Output = Result<Vec<D::Row>, sqlx::Error>> + Send + 'c
    where
        'q: 'c;
    fn maybe_row<'c>(
        self,
        c: &'c mut D::Connection,
    ) -> impl Future<Output = Result<Option<D::Row>, sqlx::Error>> + Send + 'c
    where
        'q: 'c;
    /// The rows one at a time, as the database sends them.
    fn stream<'c>(self, c: &'c mut D::Connection) -> BoxStream<'c, Result<D::Row, sqlx::Error>>
    where
        'q: 'c;
    /// Exactly one row (`RowNotFound` otherwise).
    fn row<'c>(self, c: &'c mut D::Connection) -> impl Future<Output = Result<D::Row, sqlx::Error>> + Send + 'c
    where
        'q: 'c,
    {
        let one = self.maybe_row(c);
        async move { one.await?.ok_or(sqlx::Error::RowNotFound) }
    }
    /// The first column of exactly one row.
    fn scalar<'c, T: Col>(self, c: &'c mut D::Connection) -> impl Future<Output = Result<T, sqlx::Error>> + Send + 'c
    where
        'q: 'c,
    {
        let one = self.row(c);
        async move { one.await?.at(0) }
    }
    /// The first column of the row, if one came.
    fn maybe_scalar<'c, T: Col>(
        self,
        c: &'c mut D::Connection,
    ) -> impl Future<Output = Result<Option<T>, sqlx::Error>> + Send + 'c
    where
        'q: 'c,
    {
        let one = self.maybe_row(c);
        async move { one.await?.map(|r| r.at(0)).transpose() }
    }
    /// The first column of every row.
    fn scalars<'c, T: Col>(
        self,
        c: &'c mut D::Connection,
    ) -> impl Future<Output = Result<Vec<T>, sqlx::Error>> + Send + 'c
    where
        'q: 'c,
    {
        let all = self.rows(c);
        async move { all.await?.iter().map(|r| r.at(0)).collect() }
    }
    /// Every row as a tuple of its columns ([`FromCols`]).
    fn tuples<'c, T: FromCols>(
        self,
        c: &'c mut D::Connection,
    ) -> impl Future<Output = Result<Vec<T>, sqlx::Error>> + Send + 'c
    where
        'q: 'c,
    {
        let all = self.rows(c);
        async move { tuples(&all.await?) }
    }
}

impl<'q, 'a: 'q, D: Dialect> QueryExt<'q, 'a, D> for Q<'q, 'a, D> {
    fn run<'c>(self, c: &'c mut D::Connection) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'c
    where
        'q: 'c,
    {
        D::execute(self, c)
    }

    fn rows<'c>(self, c: &'c mut D::Connection) -> impl Future<Output = Result<Vec<D::Row>, sqlx::Error>> + Send + 'c
    where
        'q: 'c,
    {
        D::fetch_all(self, c)
    }

    fn maybe_row<'c>(
        self,
        c: &'c mut D::Connection,
    ) -> impl Future<Output = Result<Option<D::Row>, sqlx::Error>> + Send + 'c
    where
        'q: 'c,
    {
        D::fetch_optional(self, c)
    }

    fn stream<'c>(self, c: &'c mut D::Connection) -> BoxStream<'c, Result<D::Row, sqlx::Error>>
    where
        'q: 'c,
    {
        D::fetch(self, c)
    }
}

/// `push_bind` through the dialect, on a query builder and on its separated lists.
pub trait PushArg<'q> {
    fn push_arg<T: Arg<'q>>(&mut self, v: T) -> &mut Self;
}

impl<'q, D: Dialect> PushArg<'q> for QueryBuilder<'q, D> {
    fn push_arg<T: Arg<'q>>(&mut self, v: T) -> &mut Self {
        D::push_bind(self, v);
        self
    }
}

impl<'qb, 'q, D: Dialect, S: std::fmt::Display> PushArg<'q> for Separated<'qb, 'q, D, S> {
    fn push_arg<T: Arg<'q>>(&mut self, v: T) -> &mut Self {
        D::push_bind_separated(self, v);
        self
    }
}

/// Values as the arguments of a list, separated by commas: the inside of `IN (…)`.
pub trait PushList<'q> {
    fn push_list<T: Arg<'q>>(&mut self, values: impl IntoIterator<Item = T>) -> &mut Self;
}

impl<'q, D: Dialect> PushList<'q> for QueryBuilder<'q, D> {
    fn push_list<T: Arg<'q>>(&mut self, values: impl IntoIterator<Item = T>) -> &mut Self {
        let mut sep = self.separated(", ");
        for v in values {
            sep.push_arg(v);
        }
        self
    }
}

/// A row's columns through the dialect: `row.col::<i64>("n")`, `row.at::<i64>(0)`.
pub trait RowExt {
    fn col<T: Col>(&self, column: &str) -> Result<T, sqlx::Error>;
    fn at<T: Col>(&self, index: usize) -> Result<T, sqlx::Error>;
}

impl<R: Row> RowExt for R
where
    R::Database: Dialect + Database<Row = R>,
{
    fn col<T: Col>(&self, column: &str) -> Result<T, sqlx::Error> {
        <R::Database as Dialect>::get(self, column)
    }

    fn at<T: Col>(&self, index: usize) -> Result<T, sqlx::Error> {
        <R::Database as Dialect>::get_at(self, index)
    }
}

/// A row read as a tuple of its columns in order.
pub trait FromCols: Sized + Send {
    fn from_cols<R: RowExt>(row: &R) -> Result<Self, sqlx::Error>;
}

impl<A: Col, B: Col> FromCols for (A, B) {
    fn from_cols<R: RowExt>(r: &R) -> Result<Self, sqlx::Error> {
        Ok((r.at(0)?, r.at(1)?))
    }
}

impl<A: Col, B: Col, C: Col> FromCols for (A, B, C) {
    fn from_cols<R: RowExt>(r: &R) -> Result<Self, sqlx::Error> {
        Ok((r.at(0)?, r.at(1)?, r.at(2)?))
    }
}

impl<A: Col, B: Col, C: Col, E: Col> FromCols for (A, B, C, E) {
    fn from_cols<R: RowExt>(r: &R) -> Result<Self, sqlx::Error> {
        Ok((r.at(0)?, r.at(1)?, r.at(2)?, r.at(3)?))
    }
}

impl<A: Col, B: Col, C: Col, E: Col, F: Col> FromCols for (A, B, C, E, F) {
    fn from_cols<R: RowExt>(r: &R) -> Result<Self, sqlx::Error> {
        Ok((r.at(0)?, r.at(1)?, r.at(2)?, r.at(3)?, r.at(4)?))
    }
}

impl<A: Col, B: Col, C: Col, E: Col, F: Col, G: Col> FromCols for (A, B, C, E, F, G) {
    fn from_cols<R: RowExt>(r: &R) -> Result<Self, sqlx::Error> {
        Ok((r.at(0)?, r.at(1)?, r.at(2)?, r.at(3)?, r.at(4)?, r.at(5)?))
    }
}

impl<A: Col, B: Col, C: Col, E: Col, F: Col, G: Col, H: Col> FromCols for (A, B, C, E, F, G, H) {
    fn from_cols<R: RowExt>(r: &R) -> Result<Self, sqlx::Error> {
        Ok((r.at(0)?, r.at(1)?, r.at(2)?, r.at(3)?, r.at(4)?, r.at(5)?, r.at(6)?))
    }
}

/// Each row as a tuple ([`FromCols`]).
pub fn tuples<T: FromCols, R: RowExt>(rows: &[R]) -> Result<Vec<T>, sqlx::Error> {
    rows.iter().map(T::from_cols).collect()
}

/// Milliseconds of a duration as the store keeps them.
pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
