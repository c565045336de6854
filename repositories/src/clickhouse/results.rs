//! Reads of the per-arm aggregates behind experiment results and the bandit.
//!
//! Only the materialized-view tables are read (arm_daily, arm_user_daily,
//! arm_position_daily): the cost of a results request grows with users and
//! days, never with raw events.

use chrono::NaiveDate;
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
