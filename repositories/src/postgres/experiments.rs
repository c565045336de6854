//! The admin view of experiments: create with arms, read, list, status
//! changes (with the weight history row a start writes), arm edits while a
//! draft, weight history, and the algorithms arms may point at.
//!
//! Every change that depends on the current status runs in one transaction
//! holding the experiment's row lock, so two admins (or an admin and the
//! reweighting loop) cannot interleave a start with an arm edit.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use domain::experiment::{Arm, Experiment, ExperimentStatus, WeightHistoryEntry, WeightPeriod};
use domain::ValidationError;
use sqlx::{PgPool, Postgres, Transaction};

use super::reweight::{build, ArmRow, ExperimentRow};
use super::Db;
use crate::{RepoError, RepoResult};

/// A stored experiment: the validated domain value and what only storage knows.
#[derive(Debug, Clone)]
pub struct ExperimentRecord {
    pub experiment: Experiment,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub stopped_at: Option<DateTime<Utc>>,
    pub last_reweight_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct Row {
    key: String,
    description: String,
    status: String,
    salt: String,
    hash_version: i16,
    coverage: f64,
    policy: String,
    metric: String,
    min_weight: f64,
    reweight_interval_s: i32,
    burn_in_users: i32,
    exploration_s: i32,
    top_two: bool,
    outcome_window_days: Option<i16>,
    analysis: String,
    sequential_tuning: f64,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    stopped_at: Option<DateTime<Utc>>,
    last_reweight_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "key, description, status, salt, hash_version, coverage, policy, metric, \
                       min_weight, reweight_interval_s, burn_in_users, exploration_s, top_two, \
                       outcome_window_days, analysis, sequential_tuning, created_at, started_at, \
                       stopped_at, last_reweight_at";

fn record(row: Row, arms: &[&ArmRow]) -> RepoResult<ExperimentRecord> {
    let as_reweight = ExperimentRow {
        key: row.key.clone(),
        salt: row.salt,
        hash_version: row.hash_version,
        coverage: row.coverage,
        status: row.status,
        policy: row.policy,
        metric: row.metric,
        min_weight: row.min_weight,
        reweight_interval_s: row.reweight_interval_s,
        burn_in_users: row.burn_in_users,
        exploration_s: row.exploration_s,
        top_two: row.top_two,
        outcome_window_days: row.outcome_window_days,
        analysis: row.analysis,
        sequential_tuning: row.sequential_tuning,
        last_reweight_at: row.last_reweight_at.unwrap_or(row.created_at),
        started_at: row.started_at,
    };
    let experiment = build(&as_reweight, arms)
        .map_err(|e| RepoError::Corrupt(format!("experiment {}: {e}", row.key)))?;
    Ok(ExperimentRecord {
        experiment,
        description: row.description,
        created_at: row.created_at,
        started_at: row.started_at,
        stopped_at: row.stopped_at,
        last_reweight_at: row.last_reweight_at,
    })
}

async fn arms_of<'e, E>(executor: E, keys: &[&str]) -> RepoResult<Vec<ArmRow>>
where
    E: sqlx::PgExecutor<'e>,
{
    Ok(sqlx::query_as(
        "SELECT experiment_key, arm_key, algorithm_key, weight, is_control FROM arms \
         WHERE experiment_key = ANY($1) ORDER BY experiment_key, position, arm_key",
    )
    .bind(keys)
    .fetch_all(executor)
    .await?)
}

fn assemble(rows: Vec<Row>, arms: &[ArmRow]) -> RepoResult<Vec<ExperimentRecord>> {
    rows.into_iter()
        .map(|row| {
            let own: Vec<&ArmRow> = arms
                .iter()
                .filter(|a| a.experiment_key == row.key)
                .collect();
            record(row, &own)
        })
        .collect()
}

async fn insert_arms(
    tx: &mut Transaction<'_, Postgres>,
    key: &str,
    arms: &[Arm],
) -> RepoResult<()> {
    let keys: Vec<&str> = arms.iter().map(|a| a.key.as_str()).collect();
    let algorithms: Vec<&str> = arms.iter().map(|a| a.algorithm.as_str()).collect();
    let weights: Vec<f64> = arms.iter().map(|a| a.weight).collect();
    let controls: Vec<bool> = arms.iter().map(|a| a.is_control).collect();
    // Position keeps the arms in bucket order, which defines the hash ranges.
    sqlx::query(
        "INSERT INTO arms (experiment_key, arm_key, algorithm_key, weight, is_control, position) \
         SELECT $1, a, g, w, c, (o - 1)::int \
         FROM unnest($2::text[], $3::text[], $4::float8[], $5::bool[]) WITH ORDINALITY AS t (a, g, w, c, o)",
    )
    .bind(key)
    .bind(&keys)
    .bind(&algorithms)
    .bind(&weights)
    .bind(&controls)
    .execute(&mut **tx)
    .await
    .map_err(foreign_key_as_conflict)?;
    Ok(())
}

/// An algorithm deleted between the caller's check and the insert.
fn foreign_key_as_conflict(e: sqlx::Error) -> RepoError {
    if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("23503") {
        RepoError::Conflict("an arm names an algorithm that does not exist".into())
    } else {
        e.into()
    }
}

/// Store a new experiment with its arms; `Conflict` when the key is taken.
async fn create(
    pool: &PgPool,
    experiment: &Experiment,
    description: &str,
) -> RepoResult<ExperimentRecord> {
    let spec = experiment.spec();
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO experiments (key, description, status, salt, hash_version, coverage, policy, \
                                  metric, min_weight, reweight_interval_s, burn_in_users, \
                                  exploration_s, top_two, outcome_window_days, analysis, \
                                  sequential_tuning) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(spec.key.as_str())
    .bind(description)
    .bind(spec.status.as_str())
    .bind(&spec.salt)
    .bind(i16::from(spec.hash_version.number()))
    .bind(spec.coverage)
    .bind(spec.policy.as_str())
    .bind(spec.metric.as_str())
    .bind(spec.min_weight)
    .bind(i32::try_from(spec.reweight_interval_s).unwrap_or(i32::MAX))
    .bind(i32::try_from(spec.bandit.burn_in_users).unwrap_or(i32::MAX))
    .bind(i32::try_from(spec.bandit.exploration_s).unwrap_or(i32::MAX))
    .bind(spec.bandit.top_two)
    .bind(
        spec.outcome_window_days
            .map(|d| i16::try_from(d).unwrap_or(i16::MAX)),
    )
    .bind(spec.analysis.name())
    .bind(spec.analysis.tuning())
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(RepoError::Conflict(format!(
            "experiment {} already exists",
            spec.key
        )));
    }
    insert_arms(&mut tx, spec.key.as_str(), &spec.arms).await?;
    let created = lock(&mut tx, spec.key.as_str())
        .await?
        .ok_or_else(|| RepoError::Corrupt(format!("experiment {} vanished", spec.key)))?;
    tx.commit().await?;
    Ok(created)
}

/// Read and row-lock one experiment inside `tx`.
async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    key: &str,
) -> RepoResult<Option<ExperimentRecord>> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM experiments WHERE key = $1 FOR UPDATE"
    ))
    .bind(key)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let arms = arms_of(&mut **tx, &[key]).await?;
    let own: Vec<&ArmRow> = arms.iter().collect();
    record(row, &own).map(Some)
}

async fn get(pool: &PgPool, key: &str) -> RepoResult<Option<ExperimentRecord>> {
    let row: Option<Row> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM experiments WHERE key = $1"))
            .bind(key)
            .fetch_optional(pool)
            .await?;
    let Some(row) = row else { return Ok(None) };
    let arms = arms_of(pool, &[key]).await?;
    let own: Vec<&ArmRow> = arms.iter().collect();
    record(row, &own).map(Some)
}

/// Experiments newest first, optionally of one status; one extra row tells
/// whether another page exists.
async fn list(
    pool: &PgPool,
    status: Option<ExperimentStatus>,
    limit: u32,
    offset: u32,
) -> RepoResult<(Vec<ExperimentRecord>, bool)> {
    let mut rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM experiments WHERE ($1::text IS NULL OR status = $1) \
         ORDER BY created_at DESC, key LIMIT $2 OFFSET $3"
    ))
    .bind(status.map(ExperimentStatus::as_str))
    .bind(i64::from(limit) + 1)
    .bind(i64::from(offset))
    .fetch_all(pool)
    .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    let arms = arms_of(pool, &keys).await?;
    Ok((assemble(rows, &arms)?, more))
}

/// Outcome of a status change or an arm edit of an existing experiment.
#[derive(Debug)]
pub enum Change {
    /// Applied (and committed).
    Done(ExperimentRecord),
    /// Already in the requested state; nothing was written.
    Unchanged(ExperimentRecord),
    /// Not allowed from the experiment's current status.
    Refused {
        status: ExperimentStatus,
        reason: String,
    },
    /// The edit does not validate against the stored experiment.
    Invalid(ValidationError),
}

/// Move an experiment to `next`. Starting stamps `started_at`, records the
/// starting weights in `weight_history` (reason `start`) and resets the
/// reweight clock so the bandit first acts one interval after traffic begins;
/// stopping stamps `stopped_at`. `None` when the experiment does not exist.
async fn set_status(
    pool: &PgPool,
    key: &str,
    next: ExperimentStatus,
) -> RepoResult<Option<Change>> {
    let mut tx = pool.begin().await?;
    let Some(current) = lock(&mut tx, key).await? else {
        return Ok(None);
    };
    let status = current.experiment.status();
    if status == next {
        return Ok(Some(Change::Unchanged(current)));
    }
    if !status.can_transition_to(next) {
        return Ok(Some(Change::Refused {
            status,
            reason: format!("cannot move from {status} to {next}"),
        }));
    }
    match next {
        ExperimentStatus::Running => {
            sqlx::query(
                "UPDATE experiments SET status = 'running', started_at = now(), \
                 last_reweight_at = now() WHERE key = $1",
            )
            .bind(key)
            .execute(&mut *tx)
            .await?;
            let arms = current.experiment.arms();
            let arm_keys: Vec<&str> = arms.iter().map(|a| a.key.as_str()).collect();
            let weights: Vec<f64> = arms.iter().map(|a| a.weight).collect();
            sqlx::query(
                "INSERT INTO weight_history (experiment_key, arm_key, weight, reason) \
                 SELECT $1, a, w, 'start' FROM unnest($2::text[], $3::float8[]) AS t (a, w)",
            )
            .bind(key)
            .bind(&arm_keys)
            .bind(&weights)
            .execute(&mut *tx)
            .await?;
        }
        ExperimentStatus::Stopped => {
            sqlx::query(
                "UPDATE experiments SET status = 'stopped', stopped_at = now() WHERE key = $1",
            )
            .bind(key)
            .execute(&mut *tx)
            .await?;
        }
        ExperimentStatus::Draft => {
            // No transition leads back to draft; `can_transition_to` refused it above.
            return Ok(Some(Change::Refused {
                status,
                reason: format!("cannot move from {status} to draft"),
            }));
        }
    }
    let updated = lock(&mut tx, key)
        .await?
        .ok_or_else(|| RepoError::Corrupt(format!("experiment {key} vanished")))?;
    tx.commit().await?;
    Ok(Some(Change::Done(updated)))
}

/// Replace the arms of a draft experiment. The new experiment is validated
/// against the locked current row (its salt, coverage, floor), so the check
/// and the write see the same state; anything but a draft is `Refused`
/// (its users have been assigned by the current arms).
async fn replace_arms(pool: &PgPool, key: &str, arms: Vec<Arm>) -> RepoResult<Option<Change>> {
    let mut tx = pool.begin().await?;
    let Some(current) = lock(&mut tx, key).await? else {
        return Ok(None);
    };
    let status = current.experiment.status();
    if status != ExperimentStatus::Draft {
        return Ok(Some(Change::Refused {
            status,
            reason: format!("arms of a {status} experiment cannot change; only a draft's can"),
        }));
    }
    let mut spec = current.experiment.spec().clone();
    spec.arms = arms;
    let next = match Experiment::new(spec) {
        Ok(next) => next,
        Err(e) => return Ok(Some(Change::Invalid(e))),
    };
    sqlx::query("DELETE FROM arms WHERE experiment_key = $1")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    insert_arms(&mut tx, key, next.arms()).await?;
    let updated = lock(&mut tx, key)
        .await?
        .ok_or_else(|| RepoError::Corrupt(format!("experiment {key} vanished")))?;
    tx.commit().await?;
    Ok(Some(Change::Done(updated)))
}

/// One row of `weight_history`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct WeightRow {
    pub arm_key: String,
    pub weight: f64,
    pub computed_at: DateTime<Utc>,
    pub reason: String,
    pub posterior: Option<serde_json::Value>,
}

/// The weight history's newest `limit` snapshots (a snapshot = the rows of one
/// `computed_at` and reason), newest first, arms in bucket order.
async fn weight_history(pool: &PgPool, key: &str, limit: u32) -> RepoResult<Vec<WeightRow>> {
    Ok(sqlx::query_as(
        "WITH snapshots AS ( \
             SELECT DISTINCT computed_at, reason FROM weight_history WHERE experiment_key = $1 \
             ORDER BY computed_at DESC LIMIT $2) \
         SELECT h.arm_key, h.weight, h.computed_at, h.reason, h.posterior \
         FROM weight_history h JOIN snapshots s USING (computed_at, reason) \
         LEFT JOIN arms a ON a.experiment_key = h.experiment_key AND a.arm_key = h.arm_key \
         WHERE h.experiment_key = $1 \
         ORDER BY h.computed_at DESC, a.position NULLS LAST, h.arm_key",
    )
    .bind(key)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?)
}

/// An experiment's periods of constant weights, oldest first.
async fn weight_periods(pool: &PgPool, key: &str) -> RepoResult<Vec<WeightPeriod>> {
    let history: Vec<WeightHistoryEntry> = super::reweight::history_of(pool, &[key])
        .await?
        .into_iter()
        .map(|(_, entry)| entry)
        .collect();
    Ok(domain::experiment::weight_periods(&history))
}

/// A recommendation algorithm arms can serve, with its active model if any.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AlgorithmRecord {
    pub key: String,
    pub kind: String,
    pub description: String,
    pub params: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub active_model_version: Option<String>,
}

async fn algorithms(pool: &PgPool) -> RepoResult<Vec<AlgorithmRecord>> {
    Ok(sqlx::query_as(
        "SELECT a.key, a.kind, a.description, a.params, a.created_at, m.version AS active_model_version \
         FROM algorithms a LEFT JOIN models m ON m.algorithm_key = a.key AND m.status = 'active' \
         ORDER BY a.key",
    )
    .fetch_all(pool)
    .await?)
}

/// Which of `keys` name existing algorithms.
async fn existing_algorithms(pool: &PgPool, keys: &[&str]) -> RepoResult<HashSet<String>> {
    let found: Vec<String> = sqlx::query_scalar("SELECT key FROM algorithms WHERE key = ANY($1)")
        .bind(keys)
        .fetch_all(pool)
        .await?;
    Ok(found.into_iter().collect())
}

/// An experiment as its results name it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ResultsExperiment {
    pub key: String,
    pub status: String,
    pub policy: String,
    pub metric: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub outcome_window_days: Option<i16>,
    pub analysis: String,
    pub sequential_tuning: f64,
}

impl ResultsExperiment {
    /// The stored analysis as the domain's; the column's CHECK admits only
    /// the two methods, so an error means the schema and this code disagree.
    pub fn analysis(&self) -> Result<domain::stats::Analysis, ValidationError> {
        super::reweight::analysis_of(&self.analysis, self.sequential_tuning)
    }
}

/// An arm as its results show it, in display order.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ResultsArm {
    pub arm_key: String,
    pub algorithm_key: String,
    pub weight: f64,
    pub is_control: bool,
}

/// One arm's weight from one reweight (or the start), oldest first.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WeightChangeRow {
    pub arm_key: String,
    pub weight: f64,
    pub computed_at: DateTime<Utc>,
    pub reason: String,
}

/// What PostgreSQL holds for one experiment's results: the experiment, its
/// arms, its weight periods and every weight it has had.
#[derive(Debug, Clone)]
pub struct ResultsContext {
    pub experiment: ResultsExperiment,
    pub arms: Vec<ResultsArm>,
    pub periods: Vec<WeightPeriod>,
    pub history: Vec<WeightChangeRow>,
}

async fn results_context(pool: &PgPool, key: &str) -> RepoResult<Option<ResultsContext>> {
    let experiment = sqlx::query_as::<_, ResultsExperiment>(
        "SELECT key, status, policy, metric, created_at, started_at, outcome_window_days, \
                analysis, sequential_tuning FROM experiments WHERE key = $1",
    )
    .bind(key)
    .fetch_optional(pool);
    let arms = sqlx::query_as::<_, ResultsArm>(
        "SELECT arm_key, algorithm_key, weight, is_control FROM arms \
         WHERE experiment_key = $1 ORDER BY position, arm_key",
    )
    .bind(key)
    .fetch_all(pool);
    let history = sqlx::query_as::<_, WeightChangeRow>(
        "SELECT arm_key, weight, computed_at, reason FROM weight_history \
         WHERE experiment_key = $1 ORDER BY computed_at, arm_key",
    )
    .bind(key)
    .fetch_all(pool);
    // Three round trips at once: the results route waits on the slowest only.
    let (experiment, arms, history, periods) = tokio::try_join!(
        async { experiment.await.map_err(RepoError::from) },
        async { arms.await.map_err(RepoError::from) },
        async { history.await.map_err(RepoError::from) },
        weight_periods(pool, key),
    )?;
    Ok(experiment.map(|experiment| ResultsContext {
        experiment,
        arms,
        periods,
        history,
    }))
}

/// Key, status, policy and metric of the newest `limit` experiments.
async fn summaries(pool: &PgPool, limit: i64) -> RepoResult<Vec<(String, String, String, String)>> {
    Ok(sqlx::query_as(
        "SELECT key, status, policy, metric FROM experiments ORDER BY created_at DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Experiments, their arms and weights, and the algorithms arms may use.
#[derive(Debug, Clone)]
pub struct Experiments {
    db: Db,
}

impl Experiments {
    pub fn new(pool: PgPool, timeout: std::time::Duration) -> Self {
        Self {
            db: Db::new(pool, timeout),
        }
    }

    pub async fn create(
        &self,
        experiment: &Experiment,
        description: &str,
    ) -> RepoResult<ExperimentRecord> {
        self.db
            .bounded(
                "postgres create experiment",
                create(&self.db.pool, experiment, description),
            )
            .await
    }

    pub async fn get(&self, key: &str) -> RepoResult<Option<ExperimentRecord>> {
        self.db
            .bounded("postgres get experiment", get(&self.db.pool, key))
            .await
    }

    pub async fn list(
        &self,
        status: Option<ExperimentStatus>,
        limit: u32,
        offset: u32,
    ) -> RepoResult<(Vec<ExperimentRecord>, bool)> {
        self.db
            .bounded(
                "postgres list experiments",
                list(&self.db.pool, status, limit, offset),
            )
            .await
    }

    pub async fn set_status(
        &self,
        key: &str,
        next: ExperimentStatus,
    ) -> RepoResult<Option<Change>> {
        self.db
            .bounded(
                "postgres set experiment status",
                set_status(&self.db.pool, key, next),
            )
            .await
    }

    pub async fn replace_arms(&self, key: &str, arms: Vec<Arm>) -> RepoResult<Option<Change>> {
        self.db
            .bounded(
                "postgres replace arms",
                replace_arms(&self.db.pool, key, arms),
            )
            .await
    }

    pub async fn weight_history(&self, key: &str, limit: u32) -> RepoResult<Vec<WeightRow>> {
        self.db
            .bounded(
                "postgres weight history",
                weight_history(&self.db.pool, key, limit),
            )
            .await
    }

    pub async fn weight_periods(&self, key: &str) -> RepoResult<Vec<WeightPeriod>> {
        self.db
            .bounded(
                "postgres weight periods",
                weight_periods(&self.db.pool, key),
            )
            .await
    }

    /// The experiment, arms, periods and weights its results need; `None`
    /// when there is no such experiment.
    pub async fn results_context(&self, key: &str) -> RepoResult<Option<ResultsContext>> {
        self.db
            .bounded(
                "postgres results context",
                results_context(&self.db.pool, key),
            )
            .await
    }

    pub async fn summaries(&self, limit: u32) -> RepoResult<Vec<(String, String, String, String)>> {
        self.db
            .bounded(
                "postgres experiment summaries",
                summaries(&self.db.pool, i64::from(limit)),
            )
            .await
    }

    pub async fn algorithms(&self) -> RepoResult<Vec<AlgorithmRecord>> {
        self.db
            .bounded("postgres algorithms", algorithms(&self.db.pool))
            .await
    }

    pub async fn existing_algorithms(&self, keys: &[&str]) -> RepoResult<HashSet<String>> {
        self.db
            .bounded(
                "postgres existing algorithms",
                existing_algorithms(&self.db.pool, keys),
            )
            .await
    }
}
