//! The worker's periodic jobs: bandit reweighting, hot movies, consumer lag.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;

use domain::experiment::{reweight, BanditEvidence, ReweightOutcome};
use domain::ports::pipeline::{
    CohortSource, CohortWindow, LeasedExperiment, PublishedWeights, ReweightRepository, StoreError,
    WeightsPublisher,
};
use domain::stats::ArmCounts;
use repositories::clickhouse::Analytics;
use repositories::redis::RedisStore;
use tokio_util::sync::CancellationToken;

use crate::consumer::EventConsumer;

/// Run `tick` every `every` until shutdown (first run immediately).
async fn every<F, Fut>(every: Duration, shutdown: CancellationToken, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => tick().await,
        }
    }
}

/// Reweights running Thompson-sampling experiments from their users' sums by
/// cohort of first exposure (ClickHouse); each experiment at most once per
/// its own interval across all workers (the lease is taken in PostgreSQL).
pub struct Reweighter {
    pub repo: Arc<dyn ReweightRepository>,
    pub cohorts: Arc<dyn CohortSource>,
    pub publisher: Arc<dyn WeightsPublisher>,
}

impl Reweighter {
    pub async fn run(self, tick: Duration, shutdown: CancellationToken) {
        every(tick, shutdown, || async {
            match self.repo.lease_due().await {
                Ok(due) => {
                    for leased in due {
                        let key = leased.experiment.key().clone();
                        let outcome = match self.reweight_one(&leased).await {
                            Ok(outcome) => outcome,
                            Err(e) => {
                                tracing::warn!(experiment = %key, error = %e, "reweight failed; next try after the interval");
                                "error"
                            }
                        };
                        metrics::counter!("marquee_worker_reweight_runs_total", "outcome" => outcome)
                            .increment(1);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not look for experiments to reweight"),
            }
        })
        .await
    }

    async fn reweight_one(&self, leased: &LeasedExperiment) -> Result<&'static str, StoreError> {
        let experiment = &leased.experiment;
        let starts: Vec<_> = leased.periods.iter().map(|p| p.start).collect();
        let rows = self
            .cohorts
            .cohort_counts(experiment.key(), &starts, CohortWindow::default())
            .await?;
        let arms = experiment.arms();
        let mut cells = vec![vec![ArmCounts::default(); arms.len()]; leased.periods.len().max(1)];
        for row in rows {
            // Users of an arm the experiment no longer has cannot inform its weights.
            let Some(a) = experiment.arm_index(&row.arm) else {
                continue;
            };
            if let Some(cell) = cells.get_mut(row.period).and_then(|r| r.get_mut(a)) {
                *cell = cell.merged(&row.counts);
            }
        }
        let running_s = leased
            .started_at
            .map_or(0, |s| (leased.leased_at - s).num_seconds().max(0) as u64);
        // A fresh seed per run; it is kept in the history so the run can be replayed.
        let seed: u64 = rand::random();
        let evidence = BanditEvidence {
            cohorts: &cells,
            running_s,
        };
        let result = match reweight(experiment, evidence, seed)
            .map_err(|e| StoreError::new("domain", false, format!("reweight: {e}")))?
        {
            ReweightOutcome::Reweighted(result) => result,
            ReweightOutcome::BurnIn(burn_in) => {
                tracing::info!(
                    experiment = %experiment.key(),
                    fewest_users = burn_in.fewest_users,
                    burn_in_users = burn_in.burn_in_users,
                    running_s = burn_in.running_s,
                    exploration_s = burn_in.exploration_s,
                    "bandit still in burn-in; weights unchanged"
                );
                return Ok("burn_in");
            }
        };
        let reason = experiment.policy().as_str();
        self.repo
            .record_weights(experiment.key(), &result, reason)
            .await?;
        if !result.held {
            self.publisher
                .publish(&PublishedWeights::from_reweight(
                    experiment.key(),
                    &result,
                    reason,
                ))
                .await?;
        }
        tracing::info!(
            experiment = %experiment.key(),
            held = result.held,
            weights = ?result.weights.iter().map(|(a, w)| format!("{a}={w:.3}")).collect::<Vec<_>>(),
            posteriors = ?result.posteriors.iter().map(|p| format!("{}: n={} mean={:.5} se={:.5} p_best={:.3}", p.arm, p.users, p.mean, p.std_error, p.prob_best)).collect::<Vec<_>>(),
            periods_used = result.periods_used,
            "reweighted"
        );
        Ok(if result.held { "held" } else { "ok" })
    }
}

/// Copies the most interacted-with movies of the recent window into Redis.
pub async fn hot_movies_loop(
    analytics: Analytics,
    redis: RedisStore,
    interval: Duration,
    window_s: u64,
    limit: u64,
    shutdown: CancellationToken,
) {
    every(interval, shutdown, || async {
        let result = async {
            let scored = analytics.hot_movies(window_s, limit).await?;
            redis.replace_hot_movies(&scored).await?;
            Ok::<_, repositories::RepoError>(scored.len())
        }
        .await;
        match result {
            Ok(n) => {
                metrics::counter!("marquee_worker_hot_movies_refresh_total", "outcome" => "ok")
                    .increment(1);
                tracing::debug!(movies = n, "hot movies refreshed");
            }
            Err(e) => {
                metrics::counter!("marquee_worker_hot_movies_refresh_total", "outcome" => "error")
                    .increment(1);
                tracing::warn!(error = %e, "hot movies refresh failed");
            }
        }
    })
    .await
}

/// Publishes the lag (high watermark minus committed offset) of every
/// assigned partition, and watches for orphaned partitions.
///
/// Orphans: a broker's group coordinator can leave a partition assigned to a
/// member that died or hangs (seen with Tansu: after a SIGKILL the survivor
/// was handed an empty assignment and no rebalance followed; with three
/// workers joining mid-stream, one member was left holding two partitions it
/// never consumed, and nothing moved them after it was killed). When a
/// partition this worker does not own has lag and its committed offset has
/// not moved for `orphan_after`, while this worker itself is not held up by
/// a store (its partitions are not paused: an outage of a shared store stalls
/// every worker alike, and rejoining would not help), nobody is consuming it:
/// rejoin the group so the coordinator assigns it again. In a healthy group
/// the owner commits after every batch and this never fires.
pub async fn lag_loop(
    consumer: Weak<EventConsumer>,
    topic: String,
    interval: Duration,
    orphan_after: Duration,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    // partition -> (committed offset last seen, since when unchanged)
    let stalled: Arc<std::sync::Mutex<HashMap<i32, (i64, Instant)>>> = Arc::default();
    every(interval, shutdown, || async {
        let Some(consumer) = consumer.upgrade() else {
            return;
        };
        let topic = topic.clone();
        let stalled = stalled.clone();
        let result = tokio::task::spawn_blocking(move || {
            let owned: std::collections::HashSet<i32> = consumer
                .assignment()
                .map(|a| a.elements().iter().map(|e| e.partition()).collect())
                .unwrap_or_default();
            let held_up = consumer
                .context()
                .paused
                .load(std::sync::atomic::Ordering::SeqCst);
            let offsets = repositories::kafka::group_offsets(&consumer, &topic, timeout)?;
            let now = Instant::now();
            let mut lags = Vec::new();
            let mut orphaned = Vec::new();
            if let Ok(mut s) = stalled.lock() {
                for (partition, committed, high) in offsets {
                    if owned.contains(&partition) {
                        lags.push((partition, (high - committed).max(0)));
                        s.remove(&partition);
                        continue;
                    }
                    if committed >= high {
                        s.remove(&partition);
                        continue;
                    }
                    let entry = s.entry(partition).or_insert((committed, now));
                    if entry.0 != committed {
                        *entry = (committed, now);
                    } else if now.duration_since(entry.1) >= orphan_after {
                        orphaned.push(partition);
                    }
                }
                if held_up {
                    // Judge others only while this worker runs freely.
                    s.clear();
                    orphaned.clear();
                }
                if !orphaned.is_empty() {
                    s.clear();
                }
            }
            if !orphaned.is_empty() {
                tracing::warn!(?orphaned, owned = owned.len(), "partitions with lag are consumed by nobody; rejoining the consumer group");
                metrics::counter!("marquee_worker_group_rejoins_total").increment(1);
                consumer.unsubscribe();
                consumer.subscribe(&[topic.as_str()])?;
            }
            Ok::<_, repositories::RepoError>(Some(lags))
        })
        .await;
        match result {
            Ok(Ok(Some(lags))) => {
                for (partition, lag) in lags {
                    metrics::gauge!("marquee_worker_consumer_lag", "partition" => partition.to_string())
                        .set(lag as f64);
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "consumer lag unavailable"),
            Err(e) => tracing::debug!(error = %e, "consumer lag task failed"),
        }
    })
    .await
}
