//! What the worker's pipeline writes to and reads from ClickHouse: batches of
//! events (with their batch id, for crash recovery) and the hot movies.

use async_trait::async_trait;
use domain::events::EventKind;
use domain::ports::pipeline::{BatchId, EventStore, StoreError, StoredEvent};
use serde::Deserialize;

use super::{Analytics, EventRow};
use crate::RepoResult;

/// The rows of one event: one per attribution, or one unattributed row.
pub fn event_rows(batch: BatchId, event: &StoredEvent, ingested_at: u32) -> Vec<EventRow> {
    let e = &event.event;
    let base = EventRow {
        event_id: e.id.as_uuid(),
        ts: u32::try_from(e.ts.timestamp()).unwrap_or(0),
        kind: e.kind.as_str().to_owned(),
        user_id: e.user_id.to_string(),
        movie_id: e
            .movie_id
            .map(|m| u64::try_from(m.get()).unwrap_or(0))
            .unwrap_or(0),
        experiment_key: String::new(),
        arm_key: String::new(),
        algorithm_key: String::new(),
        model_version: event.model_version.clone().unwrap_or_default(),
        request_id: e.request_id.map(|r| r.to_string()).unwrap_or_default(),
        position: -1,
        value: e.value.unwrap_or(0.0),
        item_count: e
            .impression
            .as_ref()
            .map(|i| u16::try_from(i.items.len()).unwrap_or(u16::MAX))
            .unwrap_or(0),
        batch_id: batch.as_uuid(),
        ingested_at,
    };
    if event.attributions.is_empty() {
        return vec![base];
    }
    event
        .attributions
        .iter()
        .map(|a| EventRow {
            experiment_key: a.experiment.to_string(),
            arm_key: a.arm.to_string(),
            algorithm_key: a.algorithm.to_string(),
            position: match (e.kind, a.position) {
                (EventKind::Impression, _) | (_, None) => -1,
                (_, Some(p)) => i16::try_from(p).unwrap_or(i16::MAX),
            },
            ..base.clone()
        })
        .collect()
}

#[derive(Debug, Deserialize, ::clickhouse::Row)]
struct MovieScore {
    movie_id: u64,
    score: u64,
}

impl Analytics {
    /// The `limit` movies with the most interactions over the last `window_s` seconds.
    pub async fn hot_movies(&self, window_s: u64, limit: u64) -> RepoResult<Vec<(i64, f64)>> {
        let query = self
            .client()
            .query(
                "SELECT movie_id, sum(interactions) AS score FROM movie_hourly \
                 WHERE hour >= toStartOfHour(now() - ?) \
                 GROUP BY movie_id ORDER BY score DESC, movie_id LIMIT ?",
            )
            .bind(window_s)
            .bind(limit);
        let rows: Vec<MovieScore> =
            crate::error::with_timeout("clickhouse hot movies", self.timeout(), query.fetch_all())
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| i64::try_from(r.movie_id).ok().map(|m| (m, r.score as f64)))
            .collect())
    }

    /// Rows of `batch` in `events` (0 or the whole batch: one insert is one part).
    pub async fn batch_row_count(&self, batch: BatchId) -> RepoResult<u64> {
        let query = self
            .client()
            .query("SELECT count() FROM events WHERE batch_id = toUUID(?)")
            .bind(batch.as_uuid().to_string());
        crate::error::with_timeout("clickhouse batch probe", self.timeout(), query.fetch_one())
            .await
    }
}

#[async_trait]
impl EventStore for Analytics {
    async fn insert_batch(&self, batch: BatchId, events: &[StoredEvent]) -> Result<(), StoreError> {
        let now = u32::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
        let rows: Vec<EventRow> = events
            .iter()
            .flat_map(|e| event_rows(batch, e, now))
            .collect();
        Ok(self
            .insert_events_as(&rows, Some(&insert_query_id(batch)))
            .await?)
    }

    async fn batch_present(&self, batch: BatchId) -> Result<bool, StoreError> {
        Ok(self.batch_row_count(batch).await? > 0)
    }

    async fn batch_in_flight(&self, batch: BatchId) -> Result<bool, StoreError> {
        Ok(self.query_running(&insert_query_id(batch)).await?)
    }
}

/// The server-side query id of a batch's insert: what `batch_in_flight` looks
/// for in `system.processes`, so both must spell it the same way.
fn insert_query_id(batch: BatchId) -> String {
    batch.as_uuid().to_string()
}
