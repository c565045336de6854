//! The event pipeline's Redis ports (dedup fast path, attribution of served
//! lists, published weights, hot movies) and the mapping of adapter errors
//! onto the domain's [`StoreError`].

use async_trait::async_trait;
use deadpool_redis::redis;
use domain::ids::{EventId, RequestId};
use domain::ports::pipeline::{
    AttributionStore, DedupCache, PublishedWeights, ServedList, StoreError, WeightsPublisher,
};

use crate::redis::RedisStore;
use crate::{RepoError, RepoResult};

impl From<RepoError> for StoreError {
    fn from(e: RepoError) -> Self {
        let store = match &e {
            RepoError::Postgres(_) | RepoError::PostgresMigration(_) => "postgres",
            RepoError::Redis(_) | RepoError::RedisPool(_) => "redis",
            RepoError::Kafka(_) => "kafka",
            RepoError::ClickHouse(_) => "clickhouse",
            RepoError::S3(_) => "s3",
            RepoError::Timeout { what, .. } => ["postgres", "redis", "kafka", "clickhouse", "s3"]
                .into_iter()
                .find(|s| what.starts_with(s))
                .unwrap_or("store"),
            _ => "store",
        };
        StoreError::new(store, e.is_transient(), e.to_string())
    }
}

/// Keys per Redis round trip: large batches are split so one command never
/// carries megabytes.
const CHUNK: usize = 5_000;

impl RedisStore {
    async fn mget(&self, keys: &[String]) -> RepoResult<Vec<Option<String>>> {
        let mut out = Vec::with_capacity(keys.len());
        if keys.is_empty() {
            return Ok(out);
        }
        let mut conn = self.conn().await?;
        for chunk in keys.chunks(CHUNK) {
            let mut cmd = redis::cmd("MGET");
            cmd.arg(chunk);
            let fut = cmd.query_async::<Vec<Option<String>>>(&mut conn);
            out.extend(crate::error::with_timeout("redis mget", self.timeout(), fut).await?);
        }
        Ok(out)
    }

    async fn set_many(&self, entries: &[(String, String)], ttl_s: u64) -> RepoResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        for chunk in entries.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            for (key, value) in chunk {
                pipe.set_ex(key, value, ttl_s).ignore();
            }
            let fut = pipe.query_async::<()>(&mut conn);
            crate::error::with_timeout("redis set", self.timeout(), fut).await?;
        }
        Ok(())
    }

    /// Replace the hot-movies sorted set in one step: build it under a key of
    /// this caller's own, then RENAME over the live one, so readers never see
    /// a half-written set and two workers never mix their writes.
    pub async fn replace_hot_movies(&self, scored: &[(i64, f64)]) -> RepoResult<()> {
        let live = self.keys.hot_movies();
        let mut conn = self.conn().await?;
        let fut = async {
            if scored.is_empty() {
                redis::cmd("DEL")
                    .arg(&live)
                    .query_async::<()>(&mut conn)
                    .await?;
                return Ok(());
            }
            let temp = format!("{live}:tmp:{}", uuid::Uuid::new_v4().simple());
            let items: Vec<(f64, i64)> = scored.iter().map(|&(m, s)| (s, m)).collect();
            let mut pipe = redis::pipe();
            pipe.atomic()
                .zadd_multiple(&temp, &items)
                .ignore()
                .rename(&temp, &live)
                .ignore();
            pipe.query_async::<()>(&mut conn).await
        };
        crate::error::with_timeout("redis hot movies", self.timeout(), fut).await
    }
}

#[async_trait]
impl DedupCache for RedisStore {
    async fn seen(&self, ids: &[EventId]) -> Result<Vec<bool>, StoreError> {
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.keys.dedup(&id.to_string()))
            .collect();
        Ok(self
            .mget(&keys)
            .await?
            .into_iter()
            .map(|v| v.is_some())
            .collect())
    }

    async fn mark(&self, ids: &[EventId], ttl_s: u64) -> Result<(), StoreError> {
        let entries: Vec<(String, String)> = ids
            .iter()
            .map(|id| (self.keys.dedup(&id.to_string()), "1".to_owned()))
            .collect();
        Ok(self.set_many(&entries, ttl_s).await?)
    }
}

#[async_trait]
impl AttributionStore for RedisStore {
    async fn put(&self, lists: &[(RequestId, ServedList)], ttl_s: u64) -> Result<(), StoreError> {
        let mut entries = Vec::with_capacity(lists.len());
        for (id, list) in lists {
            let json = serde_json::to_string(list).map_err(|e| {
                StoreError::new("redis", false, format!("encoding a served list: {e}"))
            })?;
            entries.push((self.keys.attribution(&id.to_string()), json));
        }
        Ok(self.set_many(&entries, ttl_s).await?)
    }

    async fn get_many(&self, ids: &[RequestId]) -> Result<Vec<Option<ServedList>>, StoreError> {
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.keys.attribution(&id.to_string()))
            .collect();
        let values = self.mget(&keys).await?;
        Ok(values
            .into_iter()
            .map(|v| {
                // An entry that no longer parses (an older format) is as good as expired.
                v.and_then(|json| serde_json::from_str::<ServedList>(&json).ok())
            })
            .collect())
    }
}

#[async_trait]
impl WeightsPublisher for RedisStore {
    async fn publish(&self, weights: &PublishedWeights) -> Result<(), StoreError> {
        let json = serde_json::to_string(weights)
            .map_err(|e| StoreError::new("redis", false, format!("encoding weights: {e}")))?;
        let experiment = weights.experiment.as_str();
        Ok(self
            .set_and_publish(
                "redis publish weights",
                &self.keys.weights(experiment),
                &json,
                &self.keys.weights_channel(),
                experiment,
            )
            .await?)
    }
}
