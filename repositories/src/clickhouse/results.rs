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
#[derive(Debug, Clone, Default, PartialEq, Deserialize, ::clickhouse::Row)]
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

impl ArmUserTotals {
    /// The domain's counts of this arm.
    pub fn counts(&self) -> ArmCounts {
        ArmCounts {
            users: self.users,
            impressions: self.impressions,
            clicks: self.clicks,
            conversions: self.converting_users,
            sum_clicks_sq: self.sum_clicks_sq,
            sum_impressions_sq: self.sum_impressions_sq,
            sum_clicks_impressions: self.sum_clicks_impressions,
        }
    }
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

/// Negative feedback (dislikes, "not interested") credited to one arm.
#[derive(Debug, Clone, PartialEq, Deserialize, ::clickhouse::Row)]
pub struct ArmNegatives {
    pub arm_key: String,
    pub dislikes: u64,
    pub not_interested: u64,
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

    /// Dislikes and "not interested" per arm over the window.
    pub async fn arm_negatives(
        &self,
        experiment: &str,
        window: DayWindow,
    ) -> RepoResult<Vec<ArmNegatives>> {
        let (from, to) = window.bounds();
        let query = self
            .client()
            .query(
                "SELECT arm_key, sum(dislikes) AS dislikes, sum(not_interested) AS not_interested \
                 FROM arm_negative_daily WHERE experiment_key = ? AND day >= toDate(?) AND day <= toDate(?) \
                 GROUP BY arm_key ORDER BY arm_key",
            )
            .bind(experiment)
            .bind(from)
            .bind(to);
        crate::error::with_timeout(
            "clickhouse arm negatives",
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

/// One (period, arm) cohort: the users first exposed in the period, with
/// their sums (over their whole exposure, or their outcome window).
#[derive(Debug, Clone, PartialEq, Deserialize, ::clickhouse::Row)]
pub struct CohortTotals {
    pub period: u64,
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

impl CohortTotals {
    /// The domain's counts of this cohort.
    pub fn counts(&self) -> ArmCounts {
        ArmCounts {
            users: self.users,
            impressions: self.impressions,
            clicks: self.clicks,
            conversions: self.converting_users,
            sum_clicks_sq: self.sum_clicks_sq,
            sum_impressions_sq: self.sum_impressions_sq,
            sum_clicks_impressions: self.sum_clicks_impressions,
        }
    }
}

/// Per-arm totals from the cohorts, summed over periods: the whole run's
/// totals when the cohorts cover every user and their whole exposure, so the
/// results need not read `arm_user` a second time.
pub fn arm_totals_of(cohorts: &[CohortTotals]) -> Vec<ArmUserTotals> {
    let mut totals: Vec<ArmUserTotals> = Vec::new();
    for c in cohorts {
        let index = match totals.iter().position(|t| t.arm_key == c.arm_key) {
            Some(index) => index,
            None => {
                totals.push(ArmUserTotals {
                    arm_key: c.arm_key.clone(),
                    ..ArmUserTotals::default()
                });
                totals.len() - 1
            }
        };
        let t = &mut totals[index];
        t.users += c.users;
        t.impressions += c.impressions;
        t.clicks += c.clicks;
        t.converting_users += c.converting_users;
        t.conversion_events += c.conversion_events;
        t.views += c.views;
        t.likes += c.likes;
        t.sum_clicks_sq += c.sum_clicks_sq;
        t.sum_impressions_sq += c.sum_impressions_sq;
        t.sum_clicks_impressions += c.sum_clicks_impressions;
    }
    totals.sort_by(|a, b| a.arm_key.cmp(&b.arm_key));
    totals
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

/// The SQL of a user's period from their first exposure `first`: how many
/// starts after the first one are at or before it, one `(first >= ?)` term
/// per start. 18.16 mishandles a lambda (`arrayCount(s -> s <= first, ..)`)
/// over columns of these subqueries ("Unknown identifier"), so no array.
fn period_expression(starts: usize) -> String {
    if starts <= 1 {
        return "0".to_owned();
    }
    vec!["(first >= ?)"; starts - 1].join(" + ")
}

impl Analytics {
    /// Per (period, arm), the users first exposed in that period with their
    /// sums: over each user's whole exposure, one row per user of
    /// `arm_user_cohort` (sums and first exposure together) collapsed by
    /// FINAL (which must read a summed column: 18.16's FINAL over key
    /// columns alone returns no rows). With an outcome window, the per-day sums of `arm_user_daily`
    /// on days before the first day + window, joined to the first exposures
    /// of `arm_user_first` (keyed by a 64-bit hash of arm and user: 18.16
    /// returns no rows from a JOIN whose left side reads FINAL, and joins on
    /// one integer far faster than on two strings). One row per cohort comes
    /// back however many users.
    pub async fn cohort_totals(
        &self,
        experiment: &ExperimentKey,
        starts: &[DateTime<Utc>],
        window: CohortWindow,
    ) -> RepoResult<Vec<CohortTotals>> {
        let starts = start_seconds(starts);
        let from = bound_seconds(window.first_exposed_from, 0);
        let before = bound_seconds(window.first_exposed_before, u32::MAX);
        // Over the whole run no bound applies, and ClickHouse need not
        // finalize every user's first exposure twice to test it.
        let bounded = window.first_exposed_from.is_some() || window.first_exposed_before.is_some();
        let bound = if bounded {
            " AND first >= ? AND first < ?"
        } else {
            ""
        };
        let per_user = match window.outcome_window_days {
            None => format!(
                "SELECT arm_key, impressions AS i, clicks AS c, conversions AS cv, views AS v, \
                   likes AS l, toUInt32(finalizeAggregation(first_seen)) AS first \
                 FROM arm_user_cohort FINAL WHERE experiment_key = ?{bound}"
            ),
            Some(_) => "SELECT k, any(arm_key) AS arm_key, sum(impressions) AS i, sum(clicks) AS c, \
                       sum(conversions) AS cv, sum(views) AS v, sum(likes) AS l, any(f1) AS first \
                     FROM (SELECT cityHash64(arm_key, user_id) AS k, arm_key, day, impressions, clicks, \
                                  conversions, views, likes \
                           FROM arm_user_daily WHERE experiment_key = ?) \
                     ANY INNER JOIN ( \
                       SELECT cityHash64(arm_key, user_id) AS k, toUInt32(finalizeAggregation(first_seen)) AS f1 \
                       FROM arm_user_first FINAL WHERE experiment_key = ?) USING (k) \
                     WHERE day < toDate(toDateTime(f1)) + ? \
                     GROUP BY k{having}"
                .replace("{having}", &bound.replacen(" AND", " HAVING", 1)),
        };
        let sql = format!(
            "SELECT toUInt64({period}) AS period, arm_key, count() AS users, sum(i) AS impressions, \
               sum(c) AS clicks, sum(cv > 0) AS converting_users, sum(cv) AS conversion_events, \
               sum(v) AS views, sum(l) AS likes, sum(c * c) AS sum_clicks_sq, \
               sum(i * i) AS sum_impressions_sq, sum(c * i) AS sum_clicks_impressions \
             FROM ({per_user}) GROUP BY period, arm_key ORDER BY period, arm_key",
            period = period_expression(starts.len()),
        );
        let mut query = self
            .client()
            .query(&sql)
            // One term per weight period, so a long-running bandit's query
            // can pass 18.16's default of 256 KiB; and no predicate pushdown
            // into the UNION, which 18.16 gets wrong.
            .with_setting("max_query_size", "4194304")
            .with_setting("enable_optimize_predicate_expression", "0");
        for start in starts.iter().skip(1) {
            query = query.bind(*start);
        }
        query = query.bind(experiment.as_str());
        if let Some(days) = window.outcome_window_days {
            query = query.bind(experiment.as_str()).bind(u32::from(days));
        }
        if bounded {
            query = query.bind(from).bind(before);
        }
        crate::error::with_timeout("clickhouse cohorts", self.timeout(), query.fetch_all()).await
    }
}

#[async_trait]
impl CohortSource for Analytics {
    async fn cohort_counts(
        &self,
        experiment: &ExperimentKey,
        starts: &[DateTime<Utc>],
        window: CohortWindow,
    ) -> Result<Vec<CohortCounts>, StoreError> {
        let rows = self.cohort_totals(experiment, starts, window).await?;
        rows.into_iter()
            .map(|r| {
                let counts = r.counts();
                let arm = ArmKey::parse(r.arm_key).map_err(|e| {
                    StoreError::new("clickhouse", false, format!("cohort row: {e}"))
                })?;
                Ok(CohortCounts {
                    period: usize::try_from(r.period).unwrap_or(usize::MAX),
                    arm,
                    counts,
                })
            })
            .collect()
    }
}
