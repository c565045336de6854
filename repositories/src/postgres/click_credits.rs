//! Clicks credited per (served list, movie), so a list's clicks are capped.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use domain::ports::pipeline::{ClickCredit, ClickCredits, StoreError};
use sqlx::PgPool;
use uuid::Uuid;

use super::Db;

/// How often the rows of expired lists are pruned (at most; by whichever
/// call comes due first).
const PRUNE_EVERY_S: i64 = 600;

/// [`ClickCredits`] in PostgreSQL: the truth shared by every worker, as the
/// ingest ledger is.
#[derive(Debug, Clone)]
pub struct PgClickCredits {
    db: Db,
    /// Credits older than this belong to lists that can no longer be
    /// clicked (the served lists' lifetime).
    retention: Duration,
    last_pruned: Arc<AtomicI64>,
}

impl PgClickCredits {
    pub fn new(pool: PgPool, timeout: Duration, retention: Duration) -> Self {
        Self {
            db: Db::new(pool, timeout),
            retention,
            last_pruned: Arc::new(AtomicI64::new(0)),
        }
    }

    async fn prune_if_due(&self) -> Result<(), StoreError> {
        let now = Utc::now().timestamp();
        let last = self.last_pruned.load(Ordering::Relaxed);
        if now - last < PRUNE_EVERY_S
            || self
                .last_pruned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return Ok(());
        }
        let retention_s = i64::try_from(self.retention.as_secs()).unwrap_or(i64::MAX);
        let pruned = self
            .db
            .bounded(
                "postgres prune click credits",
                sqlx::query(
                    "DELETE FROM click_credits WHERE credited_at < now() - make_interval(secs => $1)",
                )
                .bind(retention_s as f64)
                .execute(&self.db.pool),
            )
            .await?;
        tracing::debug!(
            rows = pruned.rows_affected(),
            "pruned click credits of expired lists"
        );
        Ok(())
    }
}

#[async_trait]
impl ClickCredits for PgClickCredits {
    async fn admit(&self, clicks: &[ClickCredit], cap: u32) -> Result<Vec<bool>, StoreError> {
        if clicks.is_empty() {
            return Ok(Vec::new());
        }
        let requests: Vec<Uuid> = clicks.iter().map(|c| c.request_id.as_uuid()).collect();
        let movies: Vec<i64> = clicks.iter().map(|c| c.movie_id.get()).collect();
        let events: Vec<Uuid> = clicks.iter().map(|c| c.event_id.as_uuid()).collect();
        // Two statements: a data-modifying CTE's rows are invisible to its
        // own SELECT. The insert commits first, so the ranks below count
        // every click any worker credited before.
        self.db
            .bounded(
                "postgres credit clicks",
                sqlx::query(
                    "INSERT INTO click_credits (request_id, movie_id, event_id) \
                     SELECT * FROM unnest($1::uuid[], $2::int8[], $3::uuid[]) \
                     ON CONFLICT (event_id) DO NOTHING",
                )
                .bind(&requests)
                .bind(&movies)
                .bind(&events)
                .execute(&self.db.pool),
            )
            .await?;
        let ranks: Vec<(Uuid, i64)> = self
            .db
            .bounded(
                "postgres rank click credits",
                sqlx::query_as(
                    "SELECT event_id, rank FROM ( \
                       SELECT event_id, row_number() OVER (PARTITION BY request_id, movie_id ORDER BY seq) AS rank \
                       FROM click_credits \
                       WHERE (request_id, movie_id) IN (SELECT * FROM unnest($1::uuid[], $2::int8[]))) ranked \
                     WHERE event_id = ANY($3)",
                )
                .bind(&requests)
                .bind(&movies)
                .bind(&events)
                .fetch_all(&self.db.pool),
            )
            .await?;
        if let Err(e) = self.prune_if_due().await {
            tracing::warn!(error = %e, "could not prune click credits; retrying later");
        }
        let ranks: std::collections::HashMap<Uuid, i64> = ranks.into_iter().collect();
        // An id without a rank was pruned between the statements: its list
        // has expired, so it is not credited.
        Ok(events
            .iter()
            .map(|id| ranks.get(id).is_some_and(|&r| r <= i64::from(cap)))
            .collect())
    }
}
