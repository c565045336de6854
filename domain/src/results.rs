//! An experiment's results report, computed from per-arm aggregates.
//!
//! Pure: the api reads the aggregates from ClickHouse and PostgreSQL and hands
//! them here, so every number in the JSON, the CSV and the dashboard comes from
//! the same tested functions in [`crate::stats`].

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::experiment::WeightPeriod;
use crate::ids::{AlgorithmKey, ArmKey};
use crate::stats::{
    benjamini_hochberg, cohort_sample_ratio, compare, estimate, holm, power, sample_ratio_mismatch,
    sequential_half_width, sequential_lift, stratified_lift, Analysis, ArmCounts, Comparison,
    Interval, Metric, MetricEstimate, PeriodCounts, Power, SequentialLift, SrmCheck,
    StratifiedLift, Weighting, DEFAULT_TARGET_REL,
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
    /// Negative feedback credited to the arm: dislikes and "not interested".
    pub dislikes: u64,
    pub not_interested: u64,
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

/// One arm's cohort in one weight period: the users first exposed while that
/// period's weights were in force, with their outcomes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CohortCounts {
    /// Index into [`ResultsInput::periods`].
    pub period: usize,
    pub arm: ArmKey,
    pub counts: ArmCounts,
}

/// Everything the report needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultsInput {
    pub metric: Metric,
    pub arms: Vec<ArmTotals>,
    pub daily: Vec<DailyCounts>,
    /// Periods of constant weights, oldest first ([`crate::experiment::weight_periods`]).
    /// More than one means the weights changed and the cohort method applies.
    pub periods: Vec<WeightPeriod>,
    /// Users per period and arm, by first exposure, with their outcomes.
    pub cohorts: Vec<CohortCounts>,
    /// Days after first exposure over which a user's outcome is summed;
    /// `None` for the whole exposure. Reported, not applied: the store applies it.
    pub outcome_window_days: Option<u16>,
    /// How lifts are to be read: through confidence sequences (the default)
    /// or at one planned look.
    pub analysis: Analysis,
    /// Days the experiment has run, for the power line's days to target;
    /// `None` when unknown (never started).
    pub running_days: Option<f64>,
}

impl ResultsInput {
    /// Whether the weights changed during the run (an adaptive policy or an edit moved them).
    pub fn weights_changed(&self) -> bool {
        self.periods.len() > 1
    }
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
    pub dislikes: u64,
    pub not_interested: u64,
    /// (dislikes + not interested) per user: a guardrail an arm that serves
    /// unwanted movies fails.
    pub negatives_per_user: Option<f64>,
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
    /// Arms compared within each cohort of first exposure, then combined;
    /// present when weights changed.
    pub cohort: Option<CohortLift>,
    /// The headline lift (cohort once weights changed, else pooled) through
    /// always-valid confidence sequences; the relative sequence for the
    /// pooled lift only.
    pub sequential: SequentialLift,
    /// Whether the headline lift is significant under the experiment's
    /// analysis: its confidence sequence excludes zero (sequential), or its
    /// p-value is under 0.05 (fixed horizon).
    pub significant: bool,
    /// Minimum detectable effect of the headline lift at the users so far,
    /// and the days until a 5% relative lift becomes detectable.
    pub power: Power,
    /// The headline p-value adjusted by Holm–Bonferroni across the
    /// treatment arms (equal to the raw one with a single treatment).
    pub p_value_holm: Option<f64>,
    /// This arm's test on each metric (the experiment's own, as the headline,
    /// and the other, pooled), with Benjamini–Hochberg across them.
    pub metrics: Vec<MetricTest>,
}

/// One metric's test of a treatment against control.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricTest {
    pub metric: Metric,
    pub p_value: Option<f64>,
    /// Adjusted by Benjamini–Hochberg across this arm's metrics.
    pub p_value_bh: Option<f64>,
}

/// The cohort (assignment-period) lift of one treatment against control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CohortLift {
    /// Periods combined by inverse variance (each period's variance from its
    /// two arms' users pooled, so the weights do not follow the difference;
    /// see [`Weighting::InversePooledVariance`]): the method's headline estimate.
    pub combined: StratifiedLift,
    /// The same periods weighted by their users: the traffic-weighted average
    /// lift, the one to read if the lift itself changes over time.
    pub users_weighted: StratifiedLift,
    /// Each period's own difference, in period order.
    pub by_period: Vec<PeriodLift>,
}

/// The within-period difference of one cohort.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PeriodLift {
    /// Index into [`ResultsReport::periods`].
    pub period: usize,
    pub control_users: u64,
    pub treatment_users: u64,
    /// treatment − control within the cohort.
    pub abs_lift: Option<f64>,
    pub std_error: Option<f64>,
    pub ci: Option<Interval>,
    pub p_value: Option<f64>,
}

/// One period of constant weights as the report shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeriodReport {
    pub index: usize,
    pub start: DateTime<Utc>,
    pub reason: String,
    /// Each arm's weight in the period, in the report's arm order.
    pub weights: Vec<f64>,
    /// Users first exposed in the period, per arm, in the report's arm order.
    pub users: Vec<u64>,
    /// The sample-ratio check of this period's cohort; `None` when it cannot
    /// be tested (fewer than two arms with weight, or users in a closed arm,
    /// which the overall verdict counts as a mismatch).
    pub srm: Option<SrmCheck>,
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
    /// `cohort_inverse_variance` (cohorts of first exposure per weight period
    /// as strata; see docs/statistics.md).
    pub method: String,
    /// Days after first exposure a user's outcome is summed over in the
    /// cohort method; `None` for the whole exposure.
    pub outcome_window_days: Option<u16>,
    /// `{"method": "sequential", "tuning": N*}` or `{"method": "fixed_horizon"}`:
    /// which intervals decide each comparison's `significant`.
    pub analysis: Analysis,
    pub arms: Vec<ArmReport>,
    pub comparisons: Vec<ArmComparison>,
    /// Sample-ratio check: users per arm against the weights they were
    /// assigned under (summed over periods when weights changed). `mismatch`
    /// is the verdict of the whole check, this test and every period's.
    pub srm: Option<SrmCheck>,
    /// Periods of constant weights with their cohorts and per-period SRM.
    pub periods: Vec<PeriodReport>,
    /// What makes the numbers above untrustworthy, in words for the page.
    pub warnings: Vec<String>,
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
            dislikes: totals.dislikes,
            not_interested: totals.not_interested,
            negatives_per_user: per_user(totals.dislikes + totals.not_interested, c.users),
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
    let arm_keys: Vec<&ArmKey> = input.arms.iter().map(|a| &a.arm).collect();
    let cohort_cells = cohort_grid(input, &arm_keys)?;
    // Each treatment's pooled and cohort lifts, and its headline: the cohort
    // lift once weights changed, else the pooled one.
    let mut lifts = Vec::new();
    for treatment in input.arms.iter().filter(|a| !a.is_control) {
        let pooled = compare(
            &control_estimate,
            &estimate(input.metric, &treatment.counts)?,
        );
        let cohort = if input.weights_changed() {
            let c = arm_position(&arm_keys, &control.arm);
            let t = arm_position(&arm_keys, &treatment.arm);
            Some(cohort_lift(input.metric, &cohort_cells, c, t)?)
        } else {
            None
        };
        let headline = Headline::of(&cohort, &pooled);
        lifts.push((treatment, pooled, cohort, headline));
    }
    // Several treatments are decided at the family's level (see `decide`).
    let raw: Vec<Option<f64>> = lifts.iter().map(|(.., h)| h.p_value).collect();
    let holm_adjusted = holm(&raw);
    let treatments = lifts.len().max(1);
    let mut comparisons = Vec::with_capacity(lifts.len());
    for ((treatment, pooled, cohort, headline), p_value_holm) in
        lifts.into_iter().zip(holm_adjusted)
    {
        let users = control.counts.users + treatment.counts.users;
        let sequential = sequential_lift(
            headline.estimate.zip(headline.std_error),
            // The relative sequence for the pooled lift only.
            cohort
                .is_none()
                .then(|| pooled.rel_lift.zip(pooled.rel_std_error))
                .flatten(),
            users,
            input.analysis.tuning(),
        );
        let users_per_day = input
            .running_days
            .filter(|d| *d > 0.0)
            .map(|d| users as f64 / d);
        let power = power(
            headline.std_error,
            control_estimate.mean,
            users,
            users_per_day,
            DEFAULT_TARGET_REL,
        );
        let metrics = metric_tests(
            input.metric,
            headline.p_value,
            &control.counts,
            &treatment.counts,
        )?;
        comparisons.push(ArmComparison {
            arm: treatment.arm.clone(),
            control: control.arm.clone(),
            metric: input.metric,
            significant: decide(
                input.analysis,
                &headline,
                &sequential,
                treatments,
                p_value_holm,
            ),
            pooled,
            cohort,
            sequential,
            power,
            p_value_holm,
            metrics,
        });
    }

    let mut warnings = Vec::new();
    let (srm, periods) = if input.periods.is_empty() {
        // Not started through the API (no history): check against the weights now.
        let observed: Vec<u64> = input.arms.iter().map(|a| a.counts.users).collect();
        let weights: Vec<f64> = input.arms.iter().map(|a| a.weight).collect();
        (
            Some(sample_ratio_mismatch(&observed, &weights)?),
            Vec::new(),
        )
    } else {
        let observed: Vec<Vec<u64>> = cohort_cells
            .iter()
            .map(|row| row.iter().map(|c| c.users).collect())
            .collect();
        let weights: Vec<Vec<f64>> = input
            .periods
            .iter()
            .map(|p| arm_keys.iter().map(|a| p.weight_of(a)).collect())
            .collect();
        let check = cohort_sample_ratio(&observed, &weights).map_err(|e| e.within("cohorts"))?;
        let periods = input
            .periods
            .iter()
            .zip(observed.into_iter().zip(weights))
            .zip(check.by_period)
            .enumerate()
            .map(|(index, ((period, (users, weights)), srm))| PeriodReport {
                index,
                start: period.start,
                reason: period.reason.clone(),
                weights,
                users,
                srm,
            })
            .collect();
        let mut overall = check.overall;
        overall.mismatch = check.mismatch;
        (Some(overall), periods)
    };
    if srm.as_ref().is_some_and(|s| s.mismatch) {
        warnings.push(
            "sample-ratio mismatch: the users per arm do not match the weights they were \
             assigned under, so assignment or logging is broken and no lift here can be trusted"
                .to_owned(),
        );
    }

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
        method: if input.weights_changed() {
            COHORT_METHOD.to_owned()
        } else {
            "pooled".to_owned()
        },
        outcome_window_days: input.outcome_window_days,
        analysis: input.analysis,
        arms,
        comparisons,
        srm,
        periods,
        warnings,
        daily,
    })
}

/// The lift a comparison is read by: the cohort lift once weights changed,
/// else the pooled one.
struct Headline {
    estimate: Option<f64>,
    std_error: Option<f64>,
    /// Fixed-horizon two-sided p-value.
    p_value: Option<f64>,
}

impl Headline {
    fn of(cohort: &Option<CohortLift>, pooled: &Comparison) -> Self {
        match cohort {
            Some(c) => Self {
                estimate: c.combined.estimate,
                std_error: c.combined.std_error,
                p_value: c.combined.p_value,
            },
            None => Self {
                estimate: pooled.abs_lift,
                std_error: pooled.abs_std_error,
                p_value: pooled.p_value,
            },
        }
    }
}

/// Both metrics' tests for one arm: the primary as the headline tests it,
/// the other pooled; Benjamini–Hochberg across the two.
fn metric_tests(
    primary: Metric,
    primary_p: Option<f64>,
    control: &ArmCounts,
    treatment: &ArmCounts,
) -> Result<Vec<MetricTest>, ValidationError> {
    let mut tests = vec![MetricTest {
        metric: primary,
        p_value: primary_p,
        p_value_bh: None,
    }];
    for other in [Metric::Ctr, Metric::Conversion] {
        if other != primary {
            let p = compare(&estimate(other, control)?, &estimate(other, treatment)?).p_value;
            tests.push(MetricTest {
                metric: other,
                p_value: p,
                p_value_bh: None,
            });
        }
    }
    let raw: Vec<Option<f64>> = tests.iter().map(|t| t.p_value).collect();
    for (t, adjusted) in tests.iter_mut().zip(benjamini_hochberg(&raw)) {
        t.p_value_bh = adjusted;
    }
    Ok(tests)
}

/// Whether a comparison is significant under `analysis`, with `arms`
/// treatments decided at the family's level: by the Holm-adjusted p-value
/// for a fixed horizon; for the sequential analysis by the confidence
/// sequence, at α/`arms` when there are several (a Bonferroni split: Holm's
/// step-down needs p-values the sequences do not give). The reported 95%
/// sequences stay as they are.
fn decide(
    analysis: Analysis,
    headline: &Headline,
    sequential: &SequentialLift,
    arms: usize,
    p_value_holm: Option<f64>,
) -> bool {
    match analysis {
        Analysis::FixedHorizon => p_value_holm.is_some_and(|p| p < 0.05),
        Analysis::Sequential { tuning } if arms > 1 => headline
            .estimate
            .zip(headline.std_error)
            .is_some_and(|(e, se)| {
                sequential_half_width(se * se, sequential.n as f64, 0.05 / arms as f64, tuning)
                    .is_some_and(|h| e.abs() > h)
            }),
        Analysis::Sequential { .. } => sequential.significant,
    }
}

/// The report's `method` once weights changed.
pub const COHORT_METHOD: &str = "cohort_inverse_variance";

fn arm_position(arms: &[&ArmKey], arm: &ArmKey) -> usize {
    arms.iter().position(|a| *a == arm).unwrap_or(usize::MAX)
}

/// `cells[k][a]`: the cohort of period k in arm a (zero where nobody came).
fn cohort_grid(
    input: &ResultsInput,
    arms: &[&ArmKey],
) -> Result<Vec<Vec<ArmCounts>>, ValidationError> {
    let mut cells = vec![vec![ArmCounts::default(); arms.len()]; input.periods.len()];
    for (i, cohort) in input.cohorts.iter().enumerate() {
        let a = arm_position(arms, &cohort.arm);
        let cell = cells
            .get_mut(cohort.period)
            .and_then(|row| row.get_mut(a))
            .ok_or_else(|| {
                ValidationError::new(
                    format!("cohorts[{i}]"),
                    format!(
                        "period {} / arm {} is not one of the experiment's",
                        cohort.period, cohort.arm
                    ),
                )
            })?;
        *cell = cell.merged(&cohort.counts);
    }
    Ok(cells)
}

/// Compare two arms within each period's cohort, then combine the periods.
fn cohort_lift(
    metric: Metric,
    cells: &[Vec<ArmCounts>],
    control: usize,
    treatment: usize,
) -> Result<CohortLift, ValidationError> {
    let periods: Vec<PeriodCounts> = cells
        .iter()
        .map(|row| PeriodCounts {
            control: row.get(control).copied().unwrap_or_default(),
            treatment: row.get(treatment).copied().unwrap_or_default(),
        })
        .collect();
    let mut by_period = Vec::with_capacity(periods.len());
    for (k, p) in periods.iter().enumerate() {
        let field = |e: ValidationError| e.within(format!("cohorts.periods[{k}]"));
        let cmp = compare(
            &estimate(metric, &p.control).map_err(field)?,
            &estimate(metric, &p.treatment).map_err(field)?,
        );
        by_period.push(PeriodLift {
            period: k,
            control_users: p.control.users,
            treatment_users: p.treatment.users,
            abs_lift: cmp.abs_lift,
            std_error: cmp.abs_std_error,
            ci: cmp.abs_ci,
            p_value: cmp.p_value,
        });
    }
    Ok(CohortLift {
        combined: stratified_lift(metric, &periods, Weighting::InversePooledVariance)?,
        users_weighted: stratified_lift(metric, &periods, Weighting::Users)?,
        by_period,
    })
}

/// The per-arm table as CSV (header + one row per arm), for spreadsheets.
/// Written by the csv crate, so an arm key holding `,` or `"` stays one field.
pub fn arms_csv(report: &ResultsReport) -> String {
    fn opt(v: Option<f64>) -> String {
        v.map(|x| x.to_string()).unwrap_or_default()
    }
    const HEADER: [&str; 26] = [
        "arm",
        "algorithm",
        "is_control",
        "weight",
        "users",
        "impressions",
        "clicks",
        "conversions",
        "ctr",
        "ctr_ci_low",
        "ctr_ci_high",
        "conversion_rate",
        "conversion_ci_low",
        "conversion_ci_high",
        "abs_lift",
        "abs_lift_ci_low",
        "abs_lift_ci_high",
        "rel_lift",
        "p_value",
        "chance_to_beat_control",
        "expected_loss",
        "cohort_abs_lift",
        "cohort_ci_low",
        "cohort_ci_high",
        "cohort_p_value",
        "cohort_chance_to_beat",
    ];
    let mut out = csv::Writer::from_writer(Vec::new());
    let mut rows: Vec<[String; 26]> = Vec::with_capacity(report.arms.len());
    for arm in &report.arms {
        let compared = report.comparisons.iter().find(|c| c.arm == arm.arm);
        let comparison = compared.map(|c| &c.pooled);
        let cohort = compared.and_then(|c| c.cohort.as_ref().map(|l| &l.combined));
        rows.push([
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
            opt(cohort.and_then(|s| s.estimate)),
            opt(cohort.and_then(|s| s.ci.map(|i| i.low))),
            opt(cohort.and_then(|s| s.ci.map(|i| i.high))),
            opt(cohort.and_then(|s| s.p_value)),
            opt(cohort.and_then(|s| s.chance_to_beat)),
        ]);
    }
    // Writing into a Vec cannot fail for I/O; a csv error here would be a bug
    // in the writer, and an empty export says so better than a panic.
    let written = out
        .write_record(HEADER)
        .and_then(|()| rows.iter().try_for_each(|r| out.write_record(r)));
    match (written, out.into_inner()) {
        (Ok(()), Ok(bytes)) => String::from_utf8(bytes).unwrap_or_default(),
        _ => String::new(),
    }
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
            dislikes: 2,
            not_interested: 1,
            clicks_by_position: vec![(0, 3), (1, 1)],
        }
    }

    #[test]
    fn several_treatments_are_decided_on_holm_adjusted_p_values() {
        let input = ResultsInput {
            metric: Metric::Ctr,
            arms: vec![
                arm("control", true, 1000, 50),
                arm("a", false, 1000, 70),
                arm("b", false, 1000, 62),
            ],
            daily: vec![],
            periods: vec![],
            cohorts: vec![],
            outcome_window_days: None,
            analysis: Analysis::FixedHorizon,
            running_days: Some(10.0),
        };
        let report = build_report(&input).unwrap();
        let raw: Vec<Option<f64>> = report
            .comparisons
            .iter()
            .map(|c| c.pooled.p_value)
            .collect();
        let adjusted = holm(&raw);
        for (c, adjusted) in report.comparisons.iter().zip(&adjusted) {
            assert_eq!(c.p_value_holm, *adjusted);
            assert_eq!(c.significant, adjusted.unwrap() < 0.05);
            assert!(c.p_value_holm.unwrap() >= c.pooled.p_value.unwrap());
            // Both metrics, the primary first, BH across them.
            assert_eq!(c.metrics.len(), 2);
            assert_eq!(c.metrics[0].metric, Metric::Ctr);
            let bh = benjamini_hochberg(&[c.metrics[0].p_value, c.metrics[1].p_value]);
            assert_eq!(vec![c.metrics[0].p_value_bh, c.metrics[1].p_value_bh], bh);
            assert!(c.power.mde_abs.is_some() && c.power.days_to_target.is_some());
        }
        assert_eq!(report.analysis, Analysis::FixedHorizon);
    }

    #[test]
    fn report_matches_the_stats_functions_and_flags_srm() {
        let input = ResultsInput {
            metric: Metric::Ctr,
            arms: vec![arm("a", true, 1000, 500), arm("b", false, 1300, 780)],
            daily: vec![],
            periods: vec![],
            cohorts: vec![],
            outcome_window_days: None,
            analysis: Analysis::default(),
            running_days: None,
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
    fn changed_weights_switch_to_the_cohort_method() {
        let at = |s| DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(s);
        let a = arm("a", true, 1000, 500);
        let b = arm("b", false, 1000, 500);
        let key = |k: &str| ArmKey::parse(k).unwrap();
        let periods = vec![
            WeightPeriod {
                start: at(0),
                reason: "start".into(),
                weights: vec![(key("a"), 0.5), (key("b"), 0.5)],
            },
            WeightPeriod {
                start: at(3600),
                reason: "thompson".into(),
                weights: vec![(key("a"), 0.2), (key("b"), 0.8)],
            },
        ];
        let half = arm("x", true, 500, 250).counts;
        let fifth = arm("x", true, 200, 100).counts;
        let four_fifths = arm("x", true, 800, 400).counts;
        let cohorts = vec![
            CohortCounts {
                period: 0,
                arm: key("a"),
                counts: half,
            },
            CohortCounts {
                period: 0,
                arm: key("b"),
                counts: half,
            },
            CohortCounts {
                period: 1,
                arm: key("a"),
                counts: fifth,
            },
            CohortCounts {
                period: 1,
                arm: key("b"),
                counts: four_fifths,
            },
        ];
        let input = ResultsInput {
            metric: Metric::Ctr,
            arms: vec![a, b],
            daily: vec![],
            periods,
            cohorts,
            outcome_window_days: Some(7),
            analysis: Analysis::default(),
            running_days: None,
        };
        let report = build_report(&input).unwrap();
        assert_eq!(report.method, COHORT_METHOD);
        assert_eq!(report.outcome_window_days, Some(7));
        let srm = report.srm.as_ref().unwrap();
        assert_eq!(srm.expected, vec![700.0, 1300.0]);
        assert!(!srm.mismatch, "{srm:?}");
        assert!(report.warnings.is_empty());
        assert_eq!(report.periods.len(), 2);
        assert_eq!(report.periods[1].users, vec![200, 800]);
        assert_eq!(report.periods[1].weights, vec![0.2, 0.8]);
        let cohort = report.comparisons[0].cohort.as_ref().unwrap();
        assert_eq!(cohort.combined.periods_used, 2);
        assert_eq!(cohort.by_period[1].treatment_users, 800);
        assert!(cohort.combined.estimate.unwrap().abs() < 1e-12);

        // Half of period 1's treatment users lost: the check fires and warns.
        let mut broken = input.clone();
        broken.cohorts[3].counts = fifth;
        let report = build_report(&broken).unwrap();
        assert!(report.srm.as_ref().unwrap().mismatch);
        assert_eq!(report.warnings.len(), 1);

        let mut stray = input;
        stray.cohorts[0].period = 5;
        assert_eq!(build_report(&stray).unwrap_err().field, "cohorts[0]");
    }

    #[test]
    fn csv_keeps_an_arm_key_with_commas_and_quotes_in_one_field() {
        let mut odd = arm("a", true, 1000, 500);
        odd.arm = ArmKey::parse("odd,\"arm\"").unwrap();
        let input = ResultsInput {
            metric: Metric::Ctr,
            arms: vec![odd, arm("b", false, 1000, 520)],
            daily: vec![],
            periods: vec![],
            cohorts: vec![],
            outcome_window_days: None,
            analysis: Analysis::default(),
            running_days: None,
        };
        let report = build_report(&input).unwrap();
        let csv = arms_csv(&report);
        let mut reader = csv::Reader::from_reader(csv.as_bytes());
        let header = reader.headers().unwrap().clone();
        let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(&rows[0][0], "odd,\"arm\"");
        assert_eq!(rows[0].len(), header.len());
        assert_eq!(&rows[1][4], "1000");
    }
}
