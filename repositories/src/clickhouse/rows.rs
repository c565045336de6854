//! Row structs in the column order of `migrations/clickhouse`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One row of `events`. Absent values use sentinels (empty string, 0, -1)
/// because 18.16's Nullable columns cost more and the aggregates filter on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ::clickhouse::Row)]
pub struct EventRow {
    #[serde(with = "::clickhouse::serde::uuid")]
    pub event_id: Uuid,
    /// Seconds since the Unix epoch (ClickHouse `DateTime`).
    pub ts: u32,
    #[serde(rename = "type")]
    pub kind: String,
    pub user_id: String,
    pub movie_id: u64,
    pub experiment_key: String,
    pub arm_key: String,
    pub algorithm_key: String,
    pub model_version: String,
    pub request_id: String,
    pub position: i16,
    pub value: f64,
    pub item_count: u16,
    #[serde(with = "::clickhouse::serde::uuid")]
    pub batch_id: Uuid,
    pub ingested_at: u32,
}
