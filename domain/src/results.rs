//! An experiment's results report, computed from per-arm aggregates.
//!
//! Pure: the api reads the aggregates from ClickHouse and PostgreSQL and hands
//! them here, so every number in the JSON, the CSV and the dashboard comes from
//! the same tested functions in [`crate::stats`].

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::ids::{AlgorithmKey, ArmKey};
use crate::stats::{
    compare, estimate, sample_ratio_mismatch, stratified_lift, ArmCounts, Comparison, Metric,
    MetricEstimate, PeriodCounts, SrmCheck, StratifiedLift, Weighting,
};
use crate::ValidationError;

/// Totals of one arm over the report window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmTotals {
    pub arm: ArmKey,
    pub algorithm: AlgorithmKey,
    pub is_control: bool,
    /// Weight in force now.
    pub weight: f64,
    pub counts: ArmCounts,
    pub views: u64,
    pub likes: u64,
    /// Conversion events (a user may convert more than once; `counts.conversions` counts users).
    pub conversion_events: u64,
    /// Sum and count of event values (e.g. watch time), for the mean.
    pub value_sum: f64,
    pub value_count: u64,
    /// Clicks per served position (0-based), ascending by position.
    pub clicks_by_position: Vec<(i16, u64)>,
}

/// One arm's counts on one day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DailyCounts {
    pub day: NaiveDate,
    pub arm: ArmKey,
    pub counts: ArmCounts,
}

/// Everything the report needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultsInput {
    pub metric: Metric,
    pub arms: Vec<ArmTotals>,
    pub daily: Vec<DailyCounts>,
    /// Whether the weights changed during the window (an adaptive policy moved them).
    pub weights_changed: bool,
}

/// One arm's row of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmReport {
    pub arm: ArmKey,
    pub algorithm: AlgorithmKey,
    pub is_control: bool,
    pub weight: f64,
    pub users: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub conversions: u64,
    pub conversion_events: u64,
    pub views: u64,
    pub likes: u64,
    pub ctr: MetricEstimate,
    pub conversion: MetricEstimate,
    pub views_per_user: Option<f64>,
    pub likes_per_user: Option<f64>,
    pub mean_value: Option<f64>,
    pub clicks_by_position: Vec<PositionClicks>,
}

/// Clicks at one served position.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PositionClicks {
    pub position: i16,
    pub clicks: u64,
}

/// A non-control arm against the control, on the experiment's metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmComparison {
    pub arm: ArmKey,
    pub control: ArmKey,
    pub metric: Metric,
    /// Pooled over the window (biased if weights changed while the metric drifted).
    pub pooled: Comparison,
    /// Arms compared within each day, then combined; present when weights changed.
    pub stratified: Option<StratifiedLift>,
}

/// The daily series point of one arm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DailyPoint {
    pub day: NaiveDate,
    pub arm: ArmKey,
    /// Users active that day; only read (and present) when weights changed and
    /// the report stratifies by day.
    pub users: Option<u64>,
    pub impressions: u64,
    pub clicks: u64,
    pub conversions: u64,
    pub ctr: Option<f64>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultsReport {
    pub metric: Metric,
    /// How lifts should be read: `pooled` when weights never changed, otherwise
    /// `stratified_inverse_variance` (days as strata; see docs/statistics.md).
    pub method: String,
    pub arms: Vec<ArmReport>,
    pub comparisons: Vec<ArmComparison>,
    /// Sample-ratio check against the weights; `None` when weights changed
    /// (the expected split is then not one set of weights).
    pub srm: Option<SrmCheck>,
    pub daily: Vec<DailyPoint>,
}

fn per_user(total: u64, users: u64) -> Option<f64> {
    (users > 0).then(|| total as f64 / users as f64)
}

/// Build the report; fails only on counts no real traffic could produce.
pub fn build_report(input: &ResultsInput) -> Result<ResultsReport, ValidationError> {
    let mut arms = Vec::with_capacity(input.arms.len());
    for (i, totals) in input.arms.iter().enumerate() {
        let field = |e: ValidationError| e.within(format!("arms[{i}]"));
        let c = &totals.counts;
        arms.push(ArmReport {
            arm: totals.arm.clone(),
            algorithm: totals.algorithm.clone(),
            is_control: totals.is_control,
            weight: totals.weight,
            users: c.users,
            impressions: c.impressions,
            clicks: c.clicks,
            conversions: c.conversions,
            conversion_events: totals.conversion_events,
            views: totals.views,
            likes: totals.likes,
            ctr: estimate(Metric::Ctr, c).map_err(field)?,
            conversion: estimate(Metric::Conversion, c).map_err(field)?,
            views_per_user: per_user(totals.views, c.users),
            likes_per_user: per_user(totals.likes, c.users),
            mean_value: (totals.value_count > 0)
                .then(|| totals.value_sum / totals.value_count as f64),
            clicks_by_position: totals
                .clicks_by_position
                .iter()
                .map(|&(position, clicks)| PositionClicks { position, clicks })
                .collect(),
        });
    }

    let control = input
        .arms
        .iter()
        .find(|a| a.is_control)
        .ok_or_else(|| ValidationError::new("arms", "no control arm"))?;
    let control_estimate = estimate(input.metric, &control.counts)?;
    let mut comparisons = Vec::new();
    for treatment in input.arms.iter().filter(|a| !a.is_control) {
        let pooled = compare(
            &control_estimate,
            &estimate(input.metric, &treatment.counts)?,
        );
        let stratified = if input.weights_changed {
            let periods = daily_periods(&input.daily, &control.arm, &treatment.arm);
            Some(stratified_lift(
                input.metric,
                &periods,
                Weighting::InverseVariance,
            )?)
        } else {
            None
        };
        comparisons.push(ArmComparison {
            arm: treatment.arm.clone(),
            control: control.arm.clone(),
            metric: input.metric,
            pooled,
            stratified,
        });
    }

    let srm = if input.weights_changed {
        None
    } else {
        let observed: Vec<u64> = input.arms.iter().map(|a| a.counts.users).collect();
        let weights: Vec<f64> = input.arms.iter().map(|a| a.weight).collect();
        Some(sample_ratio_mismatch(&observed, &weights)?)
    };

    let daily = input
        .daily
        .iter()
        .map(|d| DailyPoint {
            day: d.day,
            arm: d.arm.clone(),
            users: (d.counts.users > 0).then_some(d.counts.users),
            impressions: d.counts.impressions,
            clicks: d.counts.clicks,
            conversions: d.counts.conversions,
            ctr: (d.counts.impressions > 0)
                .then(|| d.counts.clicks as f64 / d.counts.impressions as f64),
        })
        .collect();

    Ok(ResultsReport {
        metric: input.metric,
        method: if input.weights_changed {
            Weighting::InverseVariance.method_name().to_owned()
        } else {
            "pooled".to_owned()
        },
        arms,
        comparisons,
        srm,
        daily,
    })
}

/// Days on which both arms had traffic, as strata for [`stratified_lift`].
fn daily_periods(daily: &[DailyCounts], control: &ArmKey, treatment: &ArmKey) -> Vec<PeriodCounts> {
    let mut days: Vec<NaiveDate> = daily.iter().map(|d| d.day).collect();
    days.sort();
    days.dedup();
    days.into_iter()
        .filter_map(|day| {
            let find = |arm: &ArmKey| {
                daily
                    .iter()
                    .find(|d| d.day == day && &d.arm == arm)
                    .map(|d| d.counts)
            };
            Some(PeriodCounts {
                control: find(control)?,
                treatment: find(treatment)?,
            })
        })
        .collect()
}

/// The per-arm table as CSV (header + one row per arm), for spreadsheets.
pub fn arms_csv(report: &ResultsReport) -> String {
    fn opt(v: Option<f64>) -> String {
        v.map(|x| x.to_string()).unwrap_or_default()
    }
    let mut out = String::from(
        "arm,algorithm,is_control,weight,users,impressions,clicks,conversions,ctr,ctr_ci_low,ctr_ci_high,\
         conversion_rate,conversion_ci_low,conversion_ci_high,abs_lift,abs_lift_ci_low,abs_lift_ci_high,\
         rel_lift,p_value,chance_to_beat_control,expected_loss,\
         stratified_abs_lift,stratified_ci_low,stratified_ci_high,stratified_p_value,stratified_chance_to_beat\n",
    );
    for arm in &report.arms {
        let compared = report.comparisons.iter().find(|c| c.arm == arm.arm);
        let comparison = compared.map(|c| &c.pooled);
        let stratified = compared.and_then(|c| c.stratified.as_ref());
        let cols = [
            arm.arm.to_string(),
            arm.algorithm.to_string(),
            arm.is_control.to_string(),
            arm.weight.to_string(),
            arm.users.to_string(),
            arm.impressions.to_string(),
            arm.clicks.to_string(),
            arm.conversions.to_string(),
            opt(arm.ctr.mean),
            opt(arm.ctr.ci_low),
            opt(arm.ctr.ci_high),
            opt(arm.conversion.mean),
            opt(arm.conversion.ci_low),
            opt(arm.conversion.ci_high),
            opt(comparison.and_then(|c| c.abs_lift)),
            opt(comparison.and_then(|c| c.abs_ci.map(|i| i.low))),
            opt(comparison.and_then(|c| c.abs_ci.map(|i| i.high))),
            opt(comparison.and_then(|c| c.rel_lift)),
            opt(comparison.and_then(|c| c.p_value)),
            opt(comparison.and_then(|c| c.chance_to_beat)),
            opt(comparison.and_then(|c| c.expected_loss)),
            opt(stratified.and_then(|s| s.estimate)),
            opt(stratified.and_then(|s| s.ci.map(|i| i.low))),
            opt(stratified.and_then(|s| s.ci.map(|i| i.high))),
            opt(stratified.and_then(|s| s.p_value)),
            opt(stratified.and_then(|s| s.chance_to_beat)),
        ];
        out.push_str(&cols.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every user saw 10 impressions; `clickers` of them clicked once.
    fn arm(key: &str, control: bool, users: u64, clickers: u64) -> ArmTotals {
        ArmTotals {
            arm: ArmKey::parse(key).unwrap(),
            algorithm: AlgorithmKey::parse("als").unwrap(),
            is_control: control,
            weight: 0.5,
            counts: ArmCounts {
                users,
                impressions: 10 * users,
                clicks: clickers,
                conversions: clickers / 2,
                sum_clicks_sq: clickers,
                sum_impressions_sq: 100 * users,
                sum_clicks_impressions: 10 * clickers,
            },
            views: 10,
            likes: 5,
            conversion_events: clickers / 2,
            value_sum: 100.0,
            value_count: 4,
            clicks_by_position: vec![(0, 3), (1, 1)],
        }
    }

    #[test]
    fn report_matches_the_stats_functions_and_flags_srm() {
        let input = ResultsInput {
            metric: Metric::Ctr,
            arms: vec![arm("a", true, 1000, 500), arm("b", false, 1300, 780)],
            daily: vec![],
            weights_changed: false,
        };
        let report = build_report(&input).unwrap();
        assert_eq!(report.method, "pooled");
        let expected = estimate(Metric::Ctr, &input.arms[1].counts).unwrap();
        assert_eq!(report.arms[1].ctr, expected);
        assert_eq!(report.arms[0].mean_value, Some(25.0));
        assert!(
            report.srm.as_ref().unwrap().mismatch,
            "1000 vs 1300 at 50/50 is a sample-ratio mismatch"
        );
        let csv = arms_csv(&report);
        assert_eq!(csv.lines().count(), 3);
        assert!(csv
            .lines()
            .nth(2)
            .unwrap()
            .starts_with("b,als,false,0.5,1300,13000,780,"));
    }

    #[test]
    fn changed_weights_switch_to_the_stratified_method() {
        let day = |d: u32| NaiveDate::from_ymd_opt(2026, 1, d).unwrap();
        let a = arm("a", true, 1000, 500);
        let b = arm("b", false, 1000, 500);
        let daily = vec![
            DailyCounts {
                day: day(1),
                arm: a.arm.clone(),
                counts: a.counts,
            },
            DailyCounts {
                day: day(1),
                arm: b.arm.clone(),
                counts: b.counts,
            },
        ];
        let input = ResultsInput {
            metric: Metric::Ctr,
            arms: vec![a, b],
            daily,
            weights_changed: true,
        };
        let report = build_report(&input).unwrap();
        assert_eq!(report.method, "stratified_inverse_variance");
        assert!(report.srm.is_none());
        assert_eq!(
            report.comparisons[0]
                .stratified
                .as_ref()
                .unwrap()
                .periods_used,
            1
        );
    }
}
