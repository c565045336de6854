//! The reweighting loop's view of experiments: a race-free lease on the ones
//! due, and the write of new weights with their history.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::experiment::{
    Arm, Experiment, ExperimentSpec, ExperimentStatus, HashVersion, Metric, Policy, Reweight,
};
use domain::ids::{AlgorithmKey, ArmKey, ExperimentKey};
use domain::ports::pipeline::{LeasedExperiment, ReweightRepository, StoreError};
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
    pub(crate) last_reweight_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct ArmRow {
    pub(crate) experiment_key: String,
    pub(crate) arm_key: String,
    pub(crate) algorithm_key: String,
    pub(crate) weight: f64,
    pub(crate) is_control: bool,
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
                           reweight_interval_s, last_reweight_at",
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
            let mut leased = Vec::new();
            for row in &rows {
                let own: Vec<&ArmRow> = arms
                    .iter()
                    .filter(|a| a.experiment_key == row.key)
                    .collect();
                match build(row, &own) {
                    Ok(experiment) => leased.push(LeasedExperiment {
                        experiment,
                        leased_at: row.last_reweight_at,
                    }),
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
                    "alpha": p.map(|p| p.alpha),
                    "beta": p.map(|p| p.beta),
                    "mean": p.map(|p| p.mean),
                    "prob_best": p.map(|p| p.prob_best),
                    "method": reweight.method,
                    "draws": reweight.draws,
                    "seed": reweight.seed,
                    "policy": reweight.policy,
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
