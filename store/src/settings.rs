//! The store's settings: `[store]` (the database) and `[timeline]` (the call timeline's CQL
//! store). Read and layered by the binary; this crate owns the types and their defaults.

use serde::{Deserialize, Serialize};

/// The database (`[store]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// `postgres://…` or `sqlite://PATH` (`DATABASE_URL`); empty = a SQLite file in the data
    /// directory (`dialer up`).
    pub url: String,
    /// Pooled connections.
    pub max_connections: u32,
    /// Seconds to wait for a free connection before answering 503.
    pub acquire_timeout_sec: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings { url: String::new(), max_connections: 16, acquire_timeout_sec: 5 }
    }
}

/// Where the call-attempt timeline lives (`[timeline]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimelineSettings {
    /// CQL nodes (`host:port`, ScyllaDB or Cassandra); empty = the SQL `call_attempts` table.
    /// `SCYLLA_HOST` + `SCYLLA_PORT` set one node.
    pub cql_nodes: Vec<String>,
    /// `SCYLLA_KEYSPACE`.
    pub keyspace: String,
    pub replication_factor: u32,
    /// Days an attempt's row is kept on the CQL store (its TTL; the store drops it itself);
    /// 0 = for ever. Operators keep call records as long as their regulator asks (often 2–5
    /// years) and no longer.
    pub ttl_days: u32,
}

impl Default for TimelineSettings {
    fn default() -> Self {
        TimelineSettings { cql_nodes: vec![], keyspace: "dialer".into(), replication_factor: 1, ttl_days: 0 }
    }
}
