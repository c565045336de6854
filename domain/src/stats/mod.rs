//! Statistics for experiment results.
//!
//! Everything here works from per-arm aggregates (counts and sums of squares)
//! rather than raw events, because that is what ClickHouse can hand back
//! cheaply; `docs/statistics.md` gives the formulas and when to trust them.

mod compare;
mod estimate;
mod multiple;
pub(crate) mod normal;
mod power;
mod sequential;
mod srm;
mod stratified;

#[cfg(test)]
mod aa_tests;

pub use compare::{compare, Comparison};
pub use estimate::{
    estimate, estimate_conversion, estimate_ctr, ArmCounts, Metric, MetricEstimate,
};
pub use multiple::{benjamini_hochberg, holm};
pub use power::{power, Power, DEFAULT_TARGET_REL};
pub use sequential::{
    half_width as sequential_half_width, mixture_rho, sequential_lift, Analysis, SequentialLift,
    DEFAULT_TUNING,
};
pub use srm::{cohort_sample_ratio, sample_ratio_mismatch, CohortSrm, SrmCheck, SRM_ALPHA};
pub use stratified::{stratified_lift, PeriodCounts, StratifiedLift, Weighting};

use serde::{Deserialize, Serialize};

/// Two-sided 95% standard-normal quantile, fixed so every interval in the
/// crate uses the same level and reference tools reproduce it exactly.
pub const Z_95: f64 = 1.959_963_984_540_054;

/// A closed interval, so JSON shows `{ "low", "high" }` instead of a bare pair.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
}

impl Interval {
    /// The symmetric normal interval `centre ± Z_95·std_error`, used everywhere we report a CI.
    pub fn normal_95(centre: f64, std_error: f64) -> Self {
        Self {
            low: centre - Z_95 * std_error,
            high: centre + Z_95 * std_error,
        }
    }

    /// Whether `x` lies inside, so tests and dashboards can ask "does the CI cover 0?".
    pub fn contains(&self, x: f64) -> bool {
        self.low <= x && x <= self.high
    }
}
