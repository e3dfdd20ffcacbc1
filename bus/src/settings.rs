//! The bus's settings (`[bus]`): which transport, the brokers, the topics and how they are
//! created. Read and layered by the binary; this crate owns the type and its defaults.

use serde::{Deserialize, Serialize};

use crate::kafka::TopicSpec;

/// Which bus carries the messages between the planes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusKind {
    /// In-process (`dialer up` always uses it; a control plane with it serves the API only).
    #[default]
    Memory,
    /// Apache Kafka or a compatible broker (`bus.brokers`).
    Kafka,
}

/// A name that is not one of a setting's known values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not one of {known}")]
pub struct UnknownValue {
    pub value: String,
    pub known: &'static str,
}

impl std::str::FromStr for BusKind {
    type Err = UnknownValue;
    fn from_str(v: &str) -> Result<BusKind, UnknownValue> {
        match v.trim() {
            "memory" => Ok(BusKind::Memory),
            "kafka" => Ok(BusKind::Kafka),
            _ => Err(UnknownValue { value: v.to_string(), known: "\"memory\", \"kafka\"" }),
        }
    }
}

/// The message bus between the planes (`[bus]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusSettings {
    /// `kafka` (distributed) or `memory` (in-process; `dialer up` always uses it).
    pub kind: BusKind,
    /// `KAFKA_BROKERS`: bootstrap servers, e.g. `127.0.0.1:9092`.
    pub brokers: String,
    pub dispatch_topic: String,
    pub status_topic: String,
    /// Where unreadable messages go, with the reason in headers (`dialer-reason`,
    /// `dialer-source`), and the calls that failed for good.
    pub dead_letter_topic: String,
    /// Consumer group of the data plane (offsets are kept under it in both assignment modes);
    /// the recorders' group is this with `-recorder` appended.
    pub group_id: String,
    /// Partitions of the status and dead-letter topics when they are created.
    pub status_partitions: i32,
    /// Partitions of the dispatch topic when it is created: at least the data plane's shards in
    /// all (with static assignment, exactly its tuning's `shards.partitions`).
    pub dispatch_partitions: i32,
    /// Replication factor of every topic the product creates (3 on a production cluster).
    pub replication_factor: i32,
    /// `DIALER_BUS_INSTANCE_ID`: this control plane's stable name among its replicas (a
    /// StatefulSet's pod name, say), unique to it. Its recorders then join their group as static
    /// members (`group.instance.id` = `{instance_id}-recorder-{i}`): restarted, it takes its
    /// status partitions back at once, without a rebalance, instead of leaving them to the member
    /// it replaces until that one's session times out (45 s), which under repeated restarts starved
    /// the recorders. Empty (the default): dynamic membership. A static member that stops for good
    /// keeps its partitions until its session times out.
    pub instance_id: String,
}

impl Default for BusSettings {
    fn default() -> Self {
        BusSettings {
            kind: BusKind::Memory,
            brokers: "127.0.0.1:9092".into(),
            dispatch_topic: "dialer.dispatch".into(),
            status_topic: "dialer.status".into(),
            dead_letter_topic: "dialer.dead_letter".into(),
            group_id: "dialer-dataplane".into(),
            status_partitions: 8,
            dispatch_partitions: 8,
            replication_factor: 1,
            instance_id: String::new(),
        }
    }
}

impl BusSettings {
    /// Every topic the product uses, as it creates them: the one place their partition counts
    /// and replication factor come from (the control plane and the data plane both create them,
    /// whichever starts first).
    pub fn topics(&self) -> Vec<TopicSpec> {
        let spec = |name: &str, partitions: i32| TopicSpec {
            name: name.to_string(),
            partitions,
            replication: self.replication_factor,
        };
        vec![
            spec(&self.dispatch_topic, self.dispatch_partitions),
            spec(&self.status_topic, self.status_partitions),
            spec(&self.dead_letter_topic, self.status_partitions),
        ]
    }

    /// The recorders' consumer group.
    pub fn recorder_group(&self) -> String {
        format!("{}-recorder", self.group_id)
    }
}
