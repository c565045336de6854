//! What the recommendations path reads from PostgreSQL: experiments to cache,
//! the catalog to cache, users' sticky arms and histories, and the batched
//! write of new assignments (never on the request path itself).

use std::collections::HashMap;
use std::time::Duration;

use domain::experiment::Experiment;
use domain::ids::{ArmKey, ExperimentKey, MovieId, UserId};
use domain::recommend::{CatalogEntry, ScoredItem};
use sqlx::PgPool;

use super::reweight::{build, ArmRow, ExperimentRow};
use crate::error::with_timeout;
use crate::{RepoError, RepoResult};

/// Most recent views (and, separately, likes) a user's seen-filter holds:
/// bounds the query and the cached context for users with long histories.
pub const SEEN_LIMIT: i64 = 1000;

/// PostgreSQL reads and writes of the serving path, each bounded by `timeout`.
#[derive(Clone)]
pub struct PgServing {
    pool: PgPool,
    timeout: Duration,
}

/// One user's state that decides their list: their recorded arm and what they saw.
#[derive(Debug, Clone, Default)]
pub struct UserContext {
    pub sticky_arm: Option<ArmKey>,
    /// A set: every request filters its candidates through it.
    pub seen: domain::serving::MovieSet,
}

/// A new assignment to record for sticky bucketing.
#[derive(Debug, Clone)]
pub struct NewAssignment {
    pub experiment: ExperimentKey,
    pub user_id: UserId,
    pub arm: ArmKey,
}

impl PgServing {
    pub fn new(pool: PgPool, timeout: Duration) -> Self {
        Self { pool, timeout }
    }

    /// Every experiment with its arms, whatever its status: the api serves
    /// running ones and needs to know the others exist (a stopped experiment
    /// is not a 404). Rows that no longer validate are skipped with a log line.
    pub async fn experiments(&self) -> RepoResult<Vec<Experiment>> {
        let fut = async {
            let rows: Vec<ExperimentRow> = sqlx::query_as(
                "SELECT key, salt, hash_version, coverage, status, policy, metric, min_weight, \
                        reweight_interval_s, burn_in_users, exploration_s, top_two, outcome_window_days, \
                        analysis, sequential_tuning, COALESCE(last_reweight_at, created_at) AS last_reweight_at, started_at \
                 FROM experiments",
            )
            .fetch_all(&self.pool)
            .await?;
            let arms: Vec<ArmRow> = sqlx::query_as(
                "SELECT experiment_key, arm_key, algorithm_key, weight, is_control FROM arms \
                 ORDER BY experiment_key, position, arm_key",
            )
            .fetch_all(&self.pool)
            .await?;
            Ok::<_, RepoError>((rows, arms))
        };
        let (rows, arms) = with_timeout("postgres experiments", self.timeout, fut).await?;
        let mut by_experiment: HashMap<&str, Vec<&ArmRow>> = HashMap::new();
        for arm in &arms {
            by_experiment
                .entry(&arm.experiment_key)
                .or_default()
                .push(arm);
        }
        Ok(rows
            .iter()
            .filter_map(|row| {
                let arms = by_experiment.get(row.key.as_str()).cloned().unwrap_or_default();
                match build(row, &arms) {
                    Ok(experiment) => Some(experiment),
                    Err(e) => {
                        tracing::warn!(experiment = %row.key, error = %e, "skipping an experiment that does not validate");
                        None
                    }
                }
            })
            .collect())
    }

    /// The whole catalog (movies are few: tens of thousands at most).
    pub async fn catalog(&self) -> RepoResult<Vec<CatalogEntry>> {
        let rows: Vec<(i64, String, Option<i32>, Vec<String>)> = with_timeout(
            "postgres catalog",
            self.timeout,
            sqlx::query_as("SELECT id, title, year, genres FROM movies ORDER BY id")
                .fetch_all(&self.pool),
        )
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, title, year, genres)| {
                Some(CatalogEntry {
                    movie_id: MovieId::parse(id).ok()?,
                    title,
                    year,
                    genres,
                })
            })
            .collect())
    }

    /// Movies with the most views and likes in the last `window`: the list
    /// served when Redis (and with it `hot:movies`) is unavailable.
    pub async fn popular(&self, window: Duration, limit: usize) -> RepoResult<Vec<ScoredItem>> {
        let rows: Vec<(i64, i64)> = with_timeout(
            "postgres popular",
            self.timeout,
            sqlx::query_as(
                "SELECT movie_id, count(*) AS n FROM ( \
                     SELECT movie_id FROM views WHERE ts > now() - make_interval(secs => $1) \
                     UNION ALL \
                     SELECT movie_id FROM likes WHERE ts > now() - make_interval(secs => $1)) i \
                 GROUP BY movie_id ORDER BY n DESC, movie_id LIMIT $2",
            )
            .bind(window.as_secs_f64())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool),
        )
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, n)| {
                Some(ScoredItem {
                    movie_id: MovieId::parse(id).ok()?,
                    score: n as f32,
                })
            })
            .collect())
    }

    /// Each user's recorded arm in `experiment` (if any) and the movies they
    /// viewed or liked most recently (at most [`SEEN_LIMIT`] of each), in the
    /// order given (a user listed twice is answered twice). One statement for
    /// all: PostgreSQL's cost per statement, not per user, is most of such a
    /// read, so the serving path sends the users whose reads queued up
    /// meanwhile together. One round trip on the `(user_id, ts DESC)` indexes
    /// and the assignments key.
    pub async fn user_contexts(
        &self,
        experiment: Option<&ExperimentKey>,
        users: &[UserId],
    ) -> RepoResult<Vec<UserContext>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = users.iter().map(UserId::as_str).collect();
        let rows: Vec<(i64, Option<String>, Vec<i64>)> = with_timeout(
            "postgres user contexts",
            self.timeout,
            sqlx::query_as(
                "SELECT u.i, \
                        (SELECT arm_key FROM assignments WHERE experiment_key = $1 AND user_id = u.user_id), \
                        ARRAY((SELECT movie_id FROM views WHERE user_id = u.user_id ORDER BY ts DESC LIMIT $3) \
                              UNION (SELECT movie_id FROM likes WHERE user_id = u.user_id ORDER BY ts DESC LIMIT $3) \
                              UNION (SELECT movie_id FROM negative_feedback WHERE user_id = u.user_id \
                                     ORDER BY ts DESC LIMIT $3)) \
                 FROM unnest($2::text[]) WITH ORDINALITY AS u(user_id, i)",
            )
            .bind(experiment.map(ExperimentKey::as_str))
            .bind(&names)
            .bind(SEEN_LIMIT)
            .fetch_all(&self.pool),
        )
        .await?;
        let mut contexts = vec![UserContext::default(); users.len()];
        for (ordinal, sticky_arm, seen) in rows {
            // WITH ORDINALITY counts from 1.
            let slot = usize::try_from(ordinal - 1)
                .ok()
                .and_then(|i| contexts.get_mut(i))
                .ok_or_else(|| {
                    RepoError::Corrupt(format!("user context row {ordinal} of {}", users.len()))
                })?;
            *slot = UserContext {
                sticky_arm: sticky_arm.and_then(|a| ArmKey::parse(a).ok()),
                seen: seen
                    .into_iter()
                    .filter_map(|m| MovieId::parse(m).ok())
                    .collect(),
            };
        }
        Ok(contexts)
    }

    /// Record assignments in one statement; an existing row wins (first arm sticks).
    pub async fn record_assignments(&self, batch: &[NewAssignment]) -> RepoResult<u64> {
        if batch.is_empty() {
            return Ok(0);
        }
        let experiments: Vec<&str> = batch.iter().map(|a| a.experiment.as_str()).collect();
        let users: Vec<&str> = batch.iter().map(|a| a.user_id.as_str()).collect();
        let arms: Vec<&str> = batch.iter().map(|a| a.arm.as_str()).collect();
        let done = with_timeout(
            "postgres record assignments",
            self.timeout,
            sqlx::query(
                "INSERT INTO assignments (experiment_key, user_id, arm_key) \
                 SELECT e, u, a FROM UNNEST($1::text[], $2::text[], $3::text[]) AS t(e, u, a) \
                 WHERE EXISTS (SELECT 1 FROM experiments WHERE key = e) \
                 ON CONFLICT (experiment_key, user_id) DO NOTHING",
            )
            .bind(&experiments)
            .bind(&users)
            .bind(&arms)
            .execute(&self.pool),
        )
        .await?;
        Ok(done.rows_affected())
    }
}
