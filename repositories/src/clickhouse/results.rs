//! Reads of the per-arm aggregates behind experiment results and the bandit.
//!
//! Only the materialized-view tables are read (arm_daily, arm_user_daily,
//! arm_position_daily): the cost of a results request grows with users and
//! days, never with raw events.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use domain::ids::{ArmKey, ExperimentKey};
use domain::ports::pipeline::{CohortSource, CohortWindow, StoreError};
use domain::results::CohortCounts;
use domain::stats::ArmCounts;
use serde::Deserialize;

use super::Analytics;
use crate::RepoResult;

/// Per-arm totals over a window, with per-user sums of squares.
#[derive(Debug, Clone, PartialEq, Deserialize, ::clickhouse::Row)]
pub struct ArmUserTotals {
    pub arm_key: String,
    pub users: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub converting_users: u64,
    pub conversion_events: u64,
    pub views: u64,
    pub likes: u64,
    pub sum_clicks_sq: u64,
    pub sum_impressions_sq: u64,
    pub sum_clicks_impressions: u64,
}

/// One arm's per-day totals with per-user sums of squares (users active that day).
#[derive(Debug, Clone, PartialEq, Deserialize, ::clickhouse::Row)]
pub struct ArmDayTotals {
    /// Days since 1970-01-01 (ClickHouse `Date`).
    pub day: u16,
    pub arm_key: String,
    pub users: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub converting_users: u64,
    pub sum_clicks_sq: u64,
    pub sum_impressions_sq: u64,
    pub sum_clicks_impressions: u64,
}

/// Clicks at one served position of one arm.
#[derive(Debug, Clone, PartialEq, Deserialize, ::clickhouse::Row)]
pub struct ArmPositionClicks {
    pub arm_key: String,
    pub position: i16,
    pub clicks: u64,
}

/// Sum and count of event values (watch time and the like) of one arm.
#[derive(Debug, Clone, PartialEq, Deserialize, ::clickhouse::Row)]
pub struct ArmValues {
    pub arm_key: String,
    pub value_sum: f64,
    pub value_count: u64,
}

/// Inclusive day window of a results request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayWindow {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

/// One arm's per-day counts from `arm_daily` (no per-user sums: the cheap daily series).
#[derive(Debug, Clone, PartialEq, Deserialize, ::clickhouse::Row)]
pub struct ArmDayCounts {
    /// Days since 1970-01-01 (ClickHouse `Date`).
    pub day: u16,
    pub arm_key: String,
    pub users: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub converting_users: u64,
}

impl DayWindow {
    fn bounds(&self) -> (String, String) {
        (
            self.from.format("%Y-%m-%d").to_string(),
            self.to.format("%Y-%m-%d").to_string(),
        )
    }
}

/// Convert a ClickHouse `Date` (days since the epoch) to a calendar date.
pub fn date_from_days(days: u16) -> NaiveDate {
    NaiveDate::default() + chrono::Days::new(u64::from(days))
}

impl Analytics {
    /// Per-arm totals: per-user sums first, then per-arm sums of those.
    pub async fn arm_totals(
        &self,
        experiment: &str,
        window: DayWindow,
    ) -> RepoResult<Vec<ArmUserTotals>> {
        let (from, to) = window.bounds();
        let query = self
            .client()
            .query(
                "SELECT arm_key, count() AS users, sum(i) AS impressions, sum(c) AS clicks, \
                   sum(cv > 0) AS converting_users, sum(cv) AS conversion_events, sum(v) AS views, sum(l) AS likes, \
                   sum(c * c) AS sum_clicks_sq, sum(i * i) AS sum_impressions_sq, sum(c * i) AS sum_clicks_impressions \
                 FROM ( \
                   SELECT arm_key, user_id, sum(impressions) AS i, sum(clicks) AS c, sum(conversions) AS cv, \
                          sum(views) AS v, sum(likes) AS l \
                   FROM arm_user_daily \
                   WHERE experiment_key = ? AND day >= toDate(?) AND day <= toDate(?) \
                   GROUP BY arm_key, user_id) \
                 GROUP BY arm_key ORDER BY arm_key",
            )
            .bind(experiment)
            .bind(from)
            .bind(to);
        crate::error::with_timeout("clickhouse arm totals", self.timeout(), query.fetch_all()).await
    }

    /// Per-arm, per-day totals for the daily series and day-stratified lifts.
    pub async fn arm_daily_totals(
        &self,
        experiment: &str,
        window: DayWindow,
    ) -> RepoResult<Vec<ArmDayTotals>> {
        let (from, to) = window.bounds();
        let query = self
            .client()
            .query(
                "SELECT day, arm_key, count() AS users, sum(i) AS impressions, sum(c) AS clicks, \
                   sum(cv > 0) AS converting_users, \
                   sum(c * c) AS sum_clicks_sq, sum(i * i) AS sum_impressions_sq, sum(c * i) AS sum_clicks_impressions \
                 FROM ( \
                   SELECT day, arm_key, user_id, sum(impressions) AS i, sum(clicks) AS c, sum(conversions) AS cv \
                   FROM arm_user_daily \
                   WHERE experiment_key = ? AND day >= toDate(?) AND day <= toDate(?) \
                   GROUP BY day, arm_key, user_id) \
                 GROUP BY day, arm_key ORDER BY day, arm_key",
            )
            .bind(experiment)
            .bind(from)
            .bind(to);
        crate::error::with_timeout("clickhouse daily totals", self.timeout(), query.fetch_all())
            .await
    }

    /// Clicks per served position, per arm.
    pub async fn arm_position_clicks(
        &self,
        experiment: &str,
        window: DayWindow,
    ) -> RepoResult<Vec<ArmPositionClicks>> {
        let (from, to) = window.bounds();
        let query = self
            .client()
            .query(
                "SELECT arm_key, position, sum(clicks) AS clicks FROM arm_position_daily \
                 WHERE experiment_key = ? AND day >= toDate(?) AND day <= toDate(?) \
                 GROUP BY arm_key, position ORDER BY arm_key, position",
            )
            .bind(experiment)
            .bind(from)
            .bind(to);
        crate::error::with_timeout(
            "clickhouse position clicks",
            self.timeout(),
            query.fetch_all(),
        )
        .await
    }

    /// Event value sums per arm (for the mean watch time and the like).
    pub async fn arm_values(
        &self,
        experiment: &str,
        window: DayWindow,
    ) -> RepoResult<Vec<ArmValues>> {
        let (from, to) = window.bounds();
        let query = self
            .client()
            .query(
                "SELECT arm_key, sumMerge(value_sum) AS value_sum, sumMerge(value_count) AS value_count \
                 FROM arm_daily WHERE experiment_key = ? AND day >= toDate(?) AND day <= toDate(?) \
                 GROUP BY arm_key ORDER BY arm_key",
            )
            .bind(experiment)
            .bind(from)
            .bind(to);
        crate::error::with_timeout("clickhouse arm values", self.timeout(), query.fetch_all()).await
    }
}

impl Analytics {
    /// Per-arm totals over the whole run from `arm_user` (one row per user, not per
    /// user-day). Rows are read by position, so the aliases only avoid clashing with columns. FINAL lets ClickHouse collapse each user's rows with the table's
    /// own summing merge, several times faster here than an explicit GROUP BY user.
    pub async fn arm_totals_whole_run(&self, experiment: &str) -> RepoResult<Vec<ArmUserTotals>> {
        let query = self
            .client()
            .query(
                "SELECT arm_key, count() AS n_users, sum(impressions) AS n_impressions, sum(clicks) AS n_clicks, \
                   sum(conversions > 0) AS n_converting_users, sum(conversions) AS n_conversion_events, \
                   sum(views) AS n_views, sum(likes) AS n_likes, sum(clicks * clicks) AS s_cc, \
                   sum(impressions * impressions) AS s_ii, sum(clicks * impressions) AS s_ci \
                 FROM arm_user FINAL WHERE experiment_key = ? GROUP BY arm_key ORDER BY arm_key",
            )
            .bind(experiment);
        crate::error::with_timeout("clickhouse arm totals", self.timeout(), query.fetch_all()).await
    }

    /// Per-arm, per-day counts from `arm_daily`, for the daily series. Sums only:
    /// merging the exact distinct-user states of every day costs more than the
    /// rest of a results request, so `users` is 0 (unknown) and conversions are events.
    pub async fn arm_daily_counts(
        &self,
        experiment: &str,
        window: DayWindow,
    ) -> RepoResult<Vec<ArmDayCounts>> {
        let (from, to) = window.bounds();
        let query = self
            .client()
            .query(
                "SELECT day, arm_key, toUInt64(0) AS users, sumMerge(impressions) AS impressions, \
                   sumMerge(clicks) AS clicks, sumMerge(conversions) AS converting_users \
                 FROM arm_daily WHERE experiment_key = ? AND day >= toDate(?) AND day <= toDate(?) \
                 GROUP BY day, arm_key ORDER BY day, arm_key",
            )
            .bind(experiment)
            .bind(from)
            .bind(to);
        crate::error::with_timeout("clickhouse daily counts", self.timeout(), query.fetch_all())
            .await
    }
}

/// One (period, arm) cohort as the cohort query returns it.
#[derive(Debug, Clone, PartialEq, Deserialize, ::clickhouse::Row)]
struct CohortRow {
    period: u64,
    arm_key: String,
    users: u64,
    impressions: u64,
    clicks: u64,
    converting_users: u64,
    sum_clicks_sq: u64,
    sum_impressions_sq: u64,
    sum_clicks_impressions: u64,
}

/// Period starts as whole seconds, for comparison with ClickHouse `DateTime`.
/// A start inside a second is rounded up: the first exposure of a user who
/// arrived in that second is stored without its fraction, so it counts in
/// the period before (both sides of the change are within one second).
fn start_seconds(starts: &[DateTime<Utc>]) -> Vec<u32> {
    starts
        .iter()
        .map(|s| {
            let ceil = s.timestamp() + i64::from(s.timestamp_subsec_nanos() > 0);
            u32::try_from(ceil.max(0)).unwrap_or(u32::MAX)
        })
        .collect()
}

fn bound_seconds(t: Option<DateTime<Utc>>, default: u32) -> u32 {
    t.map_or(default, |t| {
        u32::try_from(t.timestamp().max(0)).unwrap_or(u32::MAX)
    })
}

#[async_trait]
impl CohortSource for Analytics {
    /// Each user's first exposure (arm_user_first) joined to their sums:
    /// whole-run sums from `arm_user`, or with an outcome window the
    /// per-day sums of `arm_user_daily` on days before first day + window.
    /// The period of a first exposure f is the number of starts ≤ f, less one
    /// (never below 0), computed in the query so that one row per cohort
    /// comes back however many users there are.
    async fn cohort_counts(
        &self,
        experiment: &ExperimentKey,
        starts: &[DateTime<Utc>],
        window: CohortWindow,
    ) -> Result<Vec<CohortCounts>, StoreError> {
        // No history yet (an experiment not started through the API): one
        // period holding everyone; an empty array literal has no type in 18.16.
        let mut starts = start_seconds(starts);
        if starts.is_empty() {
            starts.push(0);
        }
        let from = bound_seconds(window.first_exposed_from, 0);
        let before = bound_seconds(window.first_exposed_before, u32::MAX);
        let firsts = "SELECT arm_key, user_id, \
                 greatest(arrayCount(s -> s <= toUInt32(minMerge(first_seen)), ?), 1) - 1 AS period, \
                 minMerge(first_seen) AS first \
               FROM arm_user_first WHERE experiment_key = ? GROUP BY arm_key, user_id \
               HAVING toUInt32(first) >= ? AND toUInt32(first) < ?";
        let per_user = match window.outcome_window_days {
            None => format!(
                "SELECT arm_key, user_id, period, i, c, cv FROM ( \
                   SELECT arm_key, user_id, sum(impressions) AS i, sum(clicks) AS c, sum(conversions) AS cv \
                   FROM arm_user WHERE experiment_key = ? GROUP BY arm_key, user_id) \
                 ANY INNER JOIN ({firsts}) USING (arm_key, user_id)"
            ),
            Some(_) => format!(
                "SELECT arm_key, user_id, any(period) AS period, sum(impressions) AS i, sum(clicks) AS c, \
                   sum(conversions) AS cv \
                 FROM (SELECT arm_key, user_id, day, impressions, clicks, conversions FROM arm_user_daily \
                       WHERE experiment_key = ?) \
                 ANY INNER JOIN ({firsts}) USING (arm_key, user_id) \
                 WHERE day < toDate(first) + ? GROUP BY arm_key, user_id"
            ),
        };
        let sql = format!(
            "SELECT toUInt64(period) AS period, arm_key, count() AS users, sum(i) AS impressions, \
               sum(c) AS clicks, sum(cv > 0) AS converting_users, sum(c * c) AS sum_clicks_sq, \
               sum(i * i) AS sum_impressions_sq, sum(c * i) AS sum_clicks_impressions \
             FROM ({per_user}) GROUP BY period, arm_key ORDER BY period, arm_key"
        );
        let mut query = self
            .client()
            .query(&sql)
            .bind(experiment.as_str())
            .bind(&starts)
            .bind(experiment.as_str())
            .bind(from)
            .bind(before);
        if let Some(days) = window.outcome_window_days {
            query = query.bind(u32::from(days));
        }
        let rows: Vec<CohortRow> =
            crate::error::with_timeout("clickhouse cohorts", self.timeout(), query.fetch_all())
                .await?;
        rows.into_iter()
            .map(|r| {
                let arm = ArmKey::parse(r.arm_key).map_err(|e| {
                    StoreError::new("clickhouse", false, format!("cohort row: {e}"))
                })?;
                Ok(CohortCounts {
                    period: usize::try_from(r.period).unwrap_or(usize::MAX),
                    arm,
                    counts: ArmCounts {
                        users: r.users,
                        impressions: r.impressions,
                        clicks: r.clicks,
                        conversions: r.converting_users,
                        sum_clicks_sq: r.sum_clicks_sq,
                        sum_impressions_sq: r.sum_impressions_sq,
                        sum_clicks_impressions: r.sum_clicks_impressions,
                    },
                })
            })
            .collect()
    }
}
