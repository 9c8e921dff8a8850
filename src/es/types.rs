//! Shapes of Elasticsearch answers the tool reads, as documented and as checked against the
//! test node (see tests/es_node.rs).

use serde::{Deserialize, Serialize};

/// One node's identity and version, from `GET _nodes/_all/_none`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureState {
    pub feature_name: String,
    #[serde(default)]
    pub indices: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStats {
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub successful: u64,
}

/// One snapshot as `GET _snapshot/<repo>/...` describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub snapshot: String,
    pub uuid: String,
    #[serde(default)]
    pub repository: Option<String>,
    /// The Elasticsearch version that took the snapshot.
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub indices: Vec<String>,
    #[serde(default)]
    pub include_global_state: Option<bool>,
    #[serde(default)]
    pub feature_states: Vec<FeatureState>,
    pub state: String,
    #[serde(default)]
    pub start_time_in_millis: Option<i64>,
    #[serde(default)]
    pub end_time_in_millis: Option<i64>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub shards: Option<ShardStats>,
}

impl SnapshotInfo {
    pub fn kibana_feature_state(&self) -> Option<&FeatureState> {
        self.feature_states
            .iter()
            .find(|f| f.feature_name == "kibana")
    }
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct SnapshotList {
    #[serde(default)]
    pub snapshots: Vec<SnapshotInfo>,
    #[serde(default)]
    pub next: Option<String>,
}

/// What a completed restore reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreReport {
    pub snapshot: String,
    #[serde(default)]
    pub indices: Vec<String>,
    pub shards: ShardStats,
    /// Health of the restored indices after the restore (green or yellow).
    #[serde(default)]
    pub health: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RestoreReply {
    pub snapshot: RestoreSnapshot,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RestoreSnapshot {
    pub snapshot: String,
    #[serde(default)]
    pub indices: Vec<String>,
    pub shards: ShardStats,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    #[serde(default)]
    pub timed_out: bool,
    #[serde(default)]
    pub unassigned_shards: u64,
}

/// A document as read, with the sequence number and primary term a compare-and-set needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned<T> {
    pub id: String,
    pub seq_no: i64,
    pub primary_term: i64,
    pub source: T,
}

/// Where a successful write left the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    pub seq_no: i64,
    pub primary_term: i64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct GetReply<T> {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(default)]
    pub found: bool,
    #[serde(rename = "_seq_no", default)]
    pub seq_no: Option<i64>,
    #[serde(rename = "_primary_term", default)]
    pub primary_term: Option<i64>,
    #[serde(rename = "_source")]
    pub source: Option<T>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WriteReply {
    #[serde(rename = "_seq_no")]
    pub seq_no: i64,
    #[serde(rename = "_primary_term")]
    pub primary_term: i64,
}

/// One shard recovery from `_recovery` (the shape the leader's judgement reads).
pub use crate::fleet::recovery::ShardRecovery;
