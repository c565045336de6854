//! Per-arm metric estimates from aggregate counts.

use serde::{Deserialize, Serialize};

use super::Interval;
use crate::ValidationError;

/// What ClickHouse aggregates give us for one arm (over one period or the
/// whole run), enough for both the conversion and the CTR ratio metric.
///
/// The three sums of squares are over users (each user's own click and
/// impression totals), which is what lets the CTR variance account for
/// heavy users instead of pretending every impression is independent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ArmCounts {
    /// Distinct users assigned to the arm who were seen at least once.
    pub users: u64,
    /// Total impressions (Σ over users of impressions).
    pub impressions: u64,
    /// Total attributed clicks (Σ over users of clicks).
    pub clicks: u64,
    /// Distinct users with at least one conversion.
    pub conversions: u64,
    /// Σ over users of clicks², for the CTR variance.
    #[serde(default)]
    pub sum_clicks_sq: u64,
    /// Σ over users of impressions², for the CTR variance.
    #[serde(default)]
    pub sum_impressions_sq: u64,
    /// Σ over users of clicks × impressions, for the CTR covariance term.
    #[serde(default)]
    pub sum_clicks_impressions: u64,
}

impl ArmCounts {
    /// Add another block of the same arm's counts (e.g. two days), saturating
    /// rather than panicking, since sums this large would be nonsense anyway.
    pub fn merged(&self, other: &ArmCounts) -> ArmCounts {
        ArmCounts {
            users: self.users.saturating_add(other.users),
            impressions: self.impressions.saturating_add(other.impressions),
            clicks: self.clicks.saturating_add(other.clicks),
            conversions: self.conversions.saturating_add(other.conversions),
            sum_clicks_sq: self.sum_clicks_sq.saturating_add(other.sum_clicks_sq),
            sum_impressions_sq: self
                .sum_impressions_sq
                .saturating_add(other.sum_impressions_sq),
            sum_clicks_impressions: self
                .sum_clicks_impressions
                .saturating_add(other.sum_clicks_impressions),
        }
    }
}

/// Which per-user metric an experiment is judged on; mirrors `experiments.metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Clicks per impression, as a ratio of per-user sums (delta method).
    Ctr,
    /// Share of users who converted at least once.
    Conversion,
}

/// A metric's point estimate with its sampling uncertainty, at 95% (normal).
///
/// Fields are `None` when the data cannot define them (no users, no
/// impressions, a single user for a sample variance), so a freshly started
/// experiment serialises as `null`s instead of NaN.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricEstimate {
    /// Users the estimate is based on.
    pub n: u64,
    /// Point estimate (a proportion or a ratio).
    pub mean: Option<f64>,
    /// Sampling variance of `mean`.
    pub variance: Option<f64>,
    /// √variance.
    pub std_error: Option<f64>,
    /// Lower end of the 95% normal interval (not clamped to [0, 1]).
    pub ci_low: Option<f64>,
    /// Upper end of the 95% normal interval (not clamped to [0, 1]).
    pub ci_high: Option<f64>,
}

impl MetricEstimate {
    /// Fill in the derived fields once, so every metric reports them the same way.
    fn from_parts(n: u64, mean: Option<f64>, variance: Option<f64>) -> Self {
        let mean = mean.filter(|m| m.is_finite());
        let variance = variance.filter(|v| v.is_finite() && *v >= 0.0);
        let std_error = variance.map(f64::sqrt);
        let ci = mean
            .zip(std_error)
            .map(|(m, se)| Interval::normal_95(m, se));
        Self {
            n,
            mean,
            variance,
            std_error,
            ci_low: ci.map(|c| c.low),
            ci_high: ci.map(|c| c.high),
        }
    }

    /// The 95% interval as one value, when it is defined.
    pub fn ci(&self) -> Option<Interval> {
        self.ci_low
            .zip(self.ci_high)
            .map(|(low, high)| Interval { low, high })
    }
}

/// Estimate `metric` for one arm, so callers can dispatch on the experiment's setting.
pub fn estimate(metric: Metric, counts: &ArmCounts) -> Result<MetricEstimate, ValidationError> {
    match metric {
        Metric::Ctr => estimate_ctr(counts),
        Metric::Conversion => estimate_conversion(counts),
    }
}

/// Conversion rate = converting users / users, with the binomial variance p(1−p)/n.
pub fn estimate_conversion(counts: &ArmCounts) -> Result<MetricEstimate, ValidationError> {
    if counts.conversions > counts.users {
        return Err(ValidationError::new(
            "conversions",
            format!(
                "{} converting users exceeds {} users",
                counts.conversions, counts.users
            ),
        ));
    }
    if counts.users == 0 {
        return Ok(MetricEstimate::from_parts(0, None, None));
    }
    let n = counts.users as f64;
    let p = counts.conversions as f64 / n;
    Ok(MetricEstimate::from_parts(
        counts.users,
        Some(p),
        Some(p * (1.0 - p) / n),
    ))
}

/// CTR as Σclicks / Σimpressions with users as the unit of randomisation.
///
/// The variance is the delta method for a ratio of means,
/// var(R) ≈ (s_cc − 2R·s_ci + R²·s_ii) / (n·μ_i²), which is algebraically the
/// formula in `docs/statistics.md`; treating impressions as independent
/// Bernoulli trials would understate it whenever users differ.
pub fn estimate_ctr(counts: &ArmCounts) -> Result<MetricEstimate, ValidationError> {
    validate_ctr(counts)?;
    let n_users = counts.users;
    if n_users == 0 || counts.impressions == 0 {
        return Ok(MetricEstimate::from_parts(n_users, None, None));
    }
    let n = n_users as f64;
    let ratio = counts.clicks as f64 / counts.impressions as f64;
    if n_users < 2 {
        return Ok(MetricEstimate::from_parts(n_users, Some(ratio), None));
    }
    let s_cc = sample_cov(n_users, counts.clicks, counts.clicks, counts.sum_clicks_sq);
    let s_ii = sample_cov(
        n_users,
        counts.impressions,
        counts.impressions,
        counts.sum_impressions_sq,
    );
    let s_ci = sample_cov(
        n_users,
        counts.clicks,
        counts.impressions,
        counts.sum_clicks_impressions,
    );
    let mean_imps = counts.impressions as f64 / n;
    let residual_var = s_cc - 2.0 * ratio * s_ci + ratio * ratio * s_ii;
    // A valid covariance matrix makes this a variance (≥ 0); allow rounding
    // noise, but a clearly negative value means the sums do not belong together.
    let scale = s_cc + ratio * ratio * s_ii;
    if residual_var < -1e-9 * scale.max(f64::MIN_POSITIVE) {
        return Err(ValidationError::new(
            "sum_clicks_impressions",
            "inconsistent with the other per-user sums (implies a negative variance)",
        ));
    }
    let variance = residual_var.max(0.0) / (n * mean_imps * mean_imps);
    Ok(MetricEstimate::from_parts(
        n_users,
        Some(ratio),
        Some(variance),
    ))
}

/// Reject sums no real set of users could produce, so a mis-wired query
/// surfaces as an error instead of a confident but meaningless interval.
fn validate_ctr(c: &ArmCounts) -> Result<(), ValidationError> {
    if c.users == 0 && (c.impressions > 0 || c.clicks > 0) {
        return Err(ValidationError::new(
            "users",
            "is 0 but clicks or impressions are not",
        ));
    }
    // Per-user totals are non-negative integers, so x² ≥ x user by user.
    if c.sum_clicks_sq < c.clicks {
        return Err(ValidationError::new(
            "sum_clicks_sq",
            "must be at least the click total (x² ≥ x per user)",
        ));
    }
    if c.sum_impressions_sq < c.impressions {
        return Err(ValidationError::new(
            "sum_impressions_sq",
            "must be at least the impression total (x² ≥ x per user)",
        ));
    }
    if centered_sum(c.users, c.clicks, c.clicks, c.sum_clicks_sq) < 0.0 {
        return Err(ValidationError::new(
            "sum_clicks_sq",
            "too small for the click total over this many users",
        ));
    }
    if centered_sum(c.users, c.impressions, c.impressions, c.sum_impressions_sq) < 0.0 {
        return Err(ValidationError::new(
            "sum_impressions_sq",
            "too small for the impression total over this many users",
        ));
    }
    Ok(())
}

/// n·Σxy − Σx·Σy, exactly in i128 when it fits, because the textbook
/// one-pass formula otherwise loses most digits to cancellation.
fn centered_sum(n: u64, sum_x: u64, sum_y: u64, sum_xy: u64) -> f64 {
    let exact = i128::from(n)
        .checked_mul(i128::from(sum_xy))
        .zip(i128::from(sum_x).checked_mul(i128::from(sum_y)))
        .and_then(|(a, b)| a.checked_sub(b));
    match exact {
        Some(v) => v as f64,
        None => n as f64 * sum_xy as f64 - sum_x as f64 * sum_y as f64,
    }
}

/// Sample covariance (denominator n − 1) from sums; caller guarantees n ≥ 2.
fn sample_cov(n: u64, sum_x: u64, sum_y: u64, sum_xy: u64) -> f64 {
    let nf = n as f64;
    centered_sum(n, sum_x, sum_y, sum_xy) / (nf * (nf - 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sufficient statistics for explicit per-user (clicks, impressions).
    fn arm(users: &[(u64, u64)]) -> ArmCounts {
        let mut c = ArmCounts {
            users: users.len() as u64,
            ..ArmCounts::default()
        };
        for &(k, i) in users {
            c.clicks += k;
            c.impressions += i;
            c.sum_clicks_sq += k * k;
            c.sum_impressions_sq += i * i;
            c.sum_clicks_impressions += k * i;
        }
        c
    }

    #[test]
    fn stats_conversion_basic() {
        let e = estimate_conversion(&ArmCounts {
            users: 1000,
            conversions: 100,
            ..ArmCounts::default()
        })
        .unwrap();
        assert_eq!(e.mean, Some(0.1));
        assert!((e.variance.unwrap() - 0.09 / 1000.0).abs() < 1e-15);
        let ci = e.ci().unwrap();
        assert!(ci.low < 0.1 && ci.high > 0.1);
    }

    #[test]
    fn stats_zero_users_give_nones_not_nan() {
        let empty = ArmCounts::default();
        for m in [Metric::Ctr, Metric::Conversion] {
            let e = estimate(m, &empty).unwrap();
            assert_eq!(e.n, 0);
            assert_eq!(e.mean, None);
            assert_eq!(e.ci_low, None);
        }
        let json = serde_json::to_string(&estimate_ctr(&empty).unwrap()).unwrap();
        assert!(json.contains("\"mean\":null"));
    }

    #[test]
    fn stats_single_user_has_mean_but_no_variance() {
        let e = estimate_ctr(&arm(&[(1, 4)])).unwrap();
        assert_eq!(e.mean, Some(0.25));
        assert_eq!(e.variance, None);
    }

    #[test]
    fn stats_users_without_impressions_leave_ctr_undefined() {
        let e = estimate_ctr(&arm(&[(0, 0), (0, 0)])).unwrap();
        assert_eq!(e.n, 2);
        assert_eq!(e.mean, None);
    }

    #[test]
    fn stats_ctr_matches_hand_computed_delta_method() {
        let users = [(1, 5), (0, 3), (2, 4), (0, 10), (3, 6)];
        let e = estimate_ctr(&arm(&users)).unwrap();
        let n = users.len() as f64;
        let c: Vec<f64> = users.iter().map(|u| u.0 as f64).collect();
        let i: Vec<f64> = users.iter().map(|u| u.1 as f64).collect();
        let mc = c.iter().sum::<f64>() / n;
        let mi = i.iter().sum::<f64>() / n;
        let cov = |a: &[f64], ma: f64, b: &[f64], mb: f64| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - ma) * (y - mb))
                .sum::<f64>()
                / (n - 1.0)
        };
        let (scc, sii, sci) = (
            cov(&c, mc, &c, mc),
            cov(&i, mi, &i, mi),
            cov(&c, mc, &i, mi),
        );
        let expected =
            (scc / mi.powi(2) - 2.0 * mc * sci / mi.powi(3) + mc.powi(2) * sii / mi.powi(4)) / n;
        assert!((e.mean.unwrap() - 6.0 / 28.0).abs() < 1e-15);
        assert!((e.variance.unwrap() - expected).abs() < 1e-15);
    }

    #[test]
    fn stats_constant_ctr_per_user_has_zero_variance() {
        // Every user clicks exactly a quarter of what they see: no sampling noise in R.
        let e = estimate_ctr(&arm(&[(1, 4), (2, 8), (3, 12)])).unwrap();
        assert_eq!(e.mean, Some(0.25));
        assert!(e.variance.unwrap().abs() < 1e-18);
    }

    #[test]
    fn stats_inconsistent_sums_are_validation_errors() {
        let bad_conv = ArmCounts {
            users: 3,
            conversions: 4,
            ..ArmCounts::default()
        };
        assert_eq!(
            estimate_conversion(&bad_conv).unwrap_err().field,
            "conversions"
        );

        let mut missing_sq = arm(&[(1, 4), (2, 5)]);
        missing_sq.sum_clicks_sq = 0;
        assert_eq!(
            estimate_ctr(&missing_sq).unwrap_err().field,
            "sum_clicks_sq"
        );

        let mut bad_cross = arm(&[(0, 1), (5, 9)]);
        bad_cross.sum_clicks_impressions = 1000;
        assert_eq!(
            estimate_ctr(&bad_cross).unwrap_err().field,
            "sum_clicks_impressions"
        );

        let ghost = ArmCounts {
            impressions: 3,
            sum_impressions_sq: 9,
            ..ArmCounts::default()
        };
        assert_eq!(estimate_ctr(&ghost).unwrap_err().field, "users");
    }

    #[test]
    fn stats_merged_adds_fieldwise_and_saturates() {
        let a = arm(&[(1, 2)]);
        let b = arm(&[(3, 4)]);
        assert_eq!(a.merged(&b), arm(&[(1, 2), (3, 4)]));
        let huge = ArmCounts {
            users: u64::MAX,
            ..ArmCounts::default()
        };
        assert_eq!(huge.merged(&huge).users, u64::MAX);
    }

    #[test]
    fn stats_huge_counts_do_not_panic() {
        let c = ArmCounts {
            users: u64::MAX,
            impressions: u64::MAX,
            clicks: u64::MAX / 2,
            conversions: 0,
            sum_clicks_sq: u64::MAX,
            sum_impressions_sq: u64::MAX,
            sum_clicks_impressions: u64::MAX,
        };
        let _ = estimate_ctr(&c);
        let _ = estimate_conversion(&c);
    }
}
