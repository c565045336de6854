//! The reweighting loop's view of experiments: a race-free lease on the ones
//! due, and the write of new weights with their history.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::experiment::{
    weight_periods, Arm, BanditSettings, Experiment, ExperimentSpec, ExperimentStatus, HashVersion,
    Metric, Policy, Reweight, WeightHistoryEntry,
};
use domain::ids::{AlgorithmKey, ArmKey, ExperimentKey};
use domain::ports::pipeline::{LeasedExperiment, ReweightRepository, StoreError};
use domain::stats::Analysis;
use domain::ValidationError;
use sqlx::PgPool;

use crate::RepoError;

/// Experiments and arms in PostgreSQL, for the bandit.
#[derive(Clone)]
pub struct PgReweightRepository {
    pool: PgPool,
    timeout: Duration,
}

impl PgReweightRepository {
    pub fn new(pool: PgPool, timeout: Duration) -> Self {
        Self { pool, timeout }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ExperimentRow {
    pub(crate) key: String,
    pub(crate) salt: String,
    pub(crate) hash_version: i16,
    pub(crate) coverage: f64,
    pub(crate) status: String,
    pub(crate) policy: String,
    pub(crate) metric: String,
    pub(crate) min_weight: f64,
    pub(crate) reweight_interval_s: i32,
    pub(crate) burn_in_users: i32,
    pub(crate) exploration_s: i32,
    pub(crate) top_two: bool,
    pub(crate) outcome_window_days: Option<i16>,
    pub(crate) analysis: String,
    pub(crate) sequential_tuning: f64,
    pub(crate) last_reweight_at: DateTime<Utc>,
    pub(crate) started_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct ArmRow {
    pub(crate) experiment_key: String,
    pub(crate) arm_key: String,
    pub(crate) algorithm_key: String,
    pub(crate) weight: f64,
    pub(crate) is_control: bool,
}

/// The stored analysis columns as the domain's [`Analysis`].
pub(crate) fn analysis_of(method: &str, tuning: f64) -> Result<Analysis, ValidationError> {
    match method {
        "sequential" => Ok(Analysis::Sequential { tuning }),
        "fixed_horizon" => Ok(Analysis::FixedHorizon),
        other => Err(ValidationError::new(
            "analysis",
            format!("unknown analysis {other:?}"),
        )),
    }
}

pub(crate) fn build(row: &ExperimentRow, arms: &[&ArmRow]) -> Result<Experiment, ValidationError> {
    let arms = arms
        .iter()
        .map(|a| {
            Ok(Arm {
                key: ArmKey::parse(a.arm_key.clone())?,
                algorithm: AlgorithmKey::parse(a.algorithm_key.clone())?,
                weight: a.weight,
                is_control: a.is_control,
            })
        })
        .collect::<Result<Vec<_>, ValidationError>>()?;
    // Stored weights went through float arithmetic; renormalise so a sum of
    // 0.9999999999 is not rejected as invalid.
    let total: f64 = arms.iter().map(|a| a.weight).sum();
    let arms = if total > 0.0 {
        arms.into_iter()
            .map(|a| Arm {
                weight: a.weight / total,
                ..a
            })
            .collect()
    } else {
        arms
    };
    Experiment::new(ExperimentSpec {
        key: ExperimentKey::parse(row.key.clone())?,
        salt: row.salt.clone(),
        hash_version: HashVersion::parse(i64::from(row.hash_version))?,
        coverage: row.coverage,
        status: ExperimentStatus::parse(&row.status)?,
        policy: Policy::parse(&row.policy)?,
        metric: Metric::parse(&row.metric)?,
        min_weight: row.min_weight,
        reweight_interval_s: u32::try_from(row.reweight_interval_s).unwrap_or(1),
        bandit: BanditSettings {
            burn_in_users: u32::try_from(row.burn_in_users).unwrap_or(0),
            exploration_s: u32::try_from(row.exploration_s).unwrap_or(0),
            top_two: row.top_two,
        },
        outcome_window_days: row
            .outcome_window_days
            .map(|d| u16::try_from(d).unwrap_or(1)),
        analysis: analysis_of(&row.analysis, row.sequential_tuning)?,
        arms,
    })
}

#[async_trait]
impl ReweightRepository for PgReweightRepository {
    async fn lease_due(&self) -> Result<Vec<LeasedExperiment>, StoreError> {
        let fut = async {
            // One UPDATE both selects and leases: concurrent workers each get a
            // disjoint set, and an experiment leased now is not due again for
            // a whole interval whatever happens to this worker.
            let rows: Vec<ExperimentRow> = sqlx::query_as(
                "UPDATE experiments SET last_reweight_at = now() \
                 WHERE status = 'running' AND policy = 'thompson' \
                   AND (last_reweight_at IS NULL \
                        OR last_reweight_at <= now() - make_interval(secs => reweight_interval_s)) \
                 RETURNING key, salt, hash_version, coverage, status, policy, metric, min_weight, \
                           reweight_interval_s, burn_in_users, exploration_s, top_two, \
                           outcome_window_days, analysis, sequential_tuning, last_reweight_at, started_at",
            )
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                return Ok::<_, RepoError>(Vec::new());
            }
            let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
            let arms: Vec<ArmRow> = sqlx::query_as(
                "SELECT experiment_key, arm_key, algorithm_key, weight, is_control FROM arms \
                 WHERE experiment_key = ANY($1) ORDER BY experiment_key, position, arm_key",
            )
            .bind(&keys)
            .fetch_all(&self.pool)
            .await?;
            let history = history_of(&self.pool, &keys).await?;
            let mut leased = Vec::new();
            for row in &rows {
                let own: Vec<&ArmRow> = arms
                    .iter()
                    .filter(|a| a.experiment_key == row.key)
                    .collect();
                match build(row, &own) {
                    Ok(experiment) => {
                        let own: Vec<WeightHistoryEntry> = history
                            .iter()
                            .filter(|(key, _)| *key == row.key)
                            .map(|(_, entry)| entry.clone())
                            .collect();
                        leased.push(LeasedExperiment {
                            experiment,
                            leased_at: row.last_reweight_at,
                            started_at: row.started_at,
                            periods: weight_periods(&own),
                        })
                    }
                    Err(e) => {
                        tracing::error!(experiment = %row.key, error = %e, "stored experiment is invalid; not reweighting it")
                    }
                }
            }
            Ok(leased)
        };
        Ok(crate::error::with_timeout("postgres reweight lease", self.timeout, fut).await?)
    }

    async fn record_weights(
        &self,
        experiment: &ExperimentKey,
        reweight: &Reweight,
        reason: &str,
    ) -> Result<(), StoreError> {
        let arms: Vec<String> = reweight
            .weights
            .iter()
            .map(|(a, _)| a.to_string())
            .collect();
        let weights: Vec<f64> = reweight.weights.iter().map(|(_, w)| *w).collect();
        let posteriors: Vec<serde_json::Value> = reweight
            .weights
            .iter()
            .map(|(arm, _)| {
                let p = reweight.posteriors.iter().find(|p| &p.arm == arm);
                serde_json::json!({
                    "users": p.map(|p| p.users),
                    "mean": p.map(|p| p.mean),
                    "std_error": p.map(|p| p.std_error),
                    "prob_best": p.map(|p| p.prob_best),
                    "model": "gaussian_per_user",
                    "method": reweight.method,
                    "draws": reweight.draws,
                    "seed": reweight.seed,
                    "policy": reweight.policy,
                    "top_two": reweight.top_two,
                    "periods_used": reweight.periods_used,
                    "held": reweight.held,
                })
            })
            .collect();
        let fut = async {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "INSERT INTO weight_history (experiment_key, arm_key, weight, reason, posterior) \
                 SELECT $1, a, w, $4, p FROM unnest($2::text[], $3::float8[], $5::jsonb[]) AS t(a, w, p)",
            )
            .bind(experiment.as_str())
            .bind(&arms)
            .bind(&weights)
            .bind(reason)
            .bind(&posteriors)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE arms SET weight = t.w FROM unnest($2::text[], $3::float8[]) AS t(a, w) \
                 WHERE arms.experiment_key = $1 AND arms.arm_key = t.a",
            )
            .bind(experiment.as_str())
            .bind(&arms)
            .bind(&weights)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, RepoError>(())
        };
        Ok(crate::error::with_timeout("postgres record weights", self.timeout, fut).await?)
    }
}

#[derive(sqlx::FromRow)]
struct HistoryRow {
    experiment_key: String,
    arm_key: String,
    weight: f64,
    computed_at: DateTime<Utc>,
    reason: String,
}

/// The whole weight history of `keys`, oldest first, as (experiment, entry).
pub(crate) async fn history_of<'e, E>(
    executor: E,
    keys: &[&str],
) -> Result<Vec<(String, WeightHistoryEntry)>, RepoError>
where
    E: sqlx::PgExecutor<'e>,
{
    let rows: Vec<HistoryRow> = sqlx::query_as(
        "SELECT experiment_key, arm_key, weight, computed_at, reason FROM weight_history \
         WHERE experiment_key = ANY($1) ORDER BY experiment_key, computed_at, id",
    )
    .bind(keys)
    .fetch_all(executor)
    .await?;
    rows.into_iter()
        .map(|r| {
            let arm = ArmKey::parse(r.arm_key).map_err(|e| {
                RepoError::Corrupt(format!("weight_history of {}: {e}", r.experiment_key))
            })?;
            Ok((
                r.experiment_key,
                WeightHistoryEntry {
                    arm,
                    weight: r.weight,
                    computed_at: r.computed_at,
                    reason: r.reason,
                },
            ))
        })
        .collect()
}
