//! Treatment versus control: lifts, intervals, p-value and Bayesian summaries.

use serde::{Deserialize, Serialize};

use super::{normal, Interval, MetricEstimate};

/// Everything a results page shows for one treatment arm against control.
///
/// Higher is better for every metric we track, so "beat" means a larger
/// mean. Fields are `None` when an input estimate lacks what they need.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// treatment − control.
    pub abs_lift: Option<f64>,
    /// Standard error of `abs_lift`: √(var_t + var_c), arms being independent.
    pub abs_std_error: Option<f64>,
    /// 95% normal (Welch-type, unpooled) interval for `abs_lift`.
    pub abs_ci: Option<Interval>,
    /// treatment / control − 1; `None` when the control mean is 0.
    pub rel_lift: Option<f64>,
    /// 95% delta-method interval for `rel_lift`.
    pub rel_ci: Option<Interval>,
    /// Delta-method standard error of `rel_lift`.
    pub rel_std_error: Option<f64>,
    /// Two-sided z-test p-value for `abs_lift` = 0; `None` when both variances are 0.
    pub p_value: Option<f64>,
    /// P(treatment > control) under the normal approximation to the difference.
    pub chance_to_beat: Option<f64>,
    /// E[max(control − treatment, 0)]: what shipping treatment costs if it is worse.
    pub expected_loss: Option<f64>,
}

/// Compare a treatment estimate against the control estimate.
///
/// All inferences use the same normal model D ~ N(t − c, var_t + var_c),
/// read as a sampling distribution (CI, p-value) or, under a flat prior, as
/// a posterior (chance to beat, expected loss).
pub fn compare(control: &MetricEstimate, treatment: &MetricEstimate) -> Comparison {
    let mut out = Comparison {
        abs_lift: None,
        abs_std_error: None,
        abs_ci: None,
        rel_lift: None,
        rel_ci: None,
        rel_std_error: None,
        p_value: None,
        chance_to_beat: None,
        expected_loss: None,
    };
    let (Some(c), Some(t)) = (finite(control.mean), finite(treatment.mean)) else {
        return out;
    };
    let delta = t - c;
    out.abs_lift = Some(delta);

    let var_c = finite(control.variance).filter(|v| *v >= 0.0);
    let var_t = finite(treatment.variance).filter(|v| *v >= 0.0);

    if let (Some(var_c), Some(var_t)) = (var_c, var_t) {
        let se = (var_c + var_t).sqrt();
        out.abs_std_error = Some(se);
        out.abs_ci = Some(Interval::normal_95(delta, se));
        if se > 0.0 {
            let z = delta / se;
            out.p_value = Some(normal::two_sided_p(z));
            out.chance_to_beat = Some(normal::cdf(z));
            // E[max(−D, 0)] for D ~ N(δ, σ²) = σφ(δ/σ) − δ(1 − Φ(δ/σ)); the
            // two terms nearly cancel for large z, so clamp rounding below 0.
            out.expected_loss = Some((se * normal::pdf(z) - delta * normal::sf(z)).max(0.0));
        } else {
            // No sampling noise left: the loss is known exactly, but a test
            // statistic would be 0/0 or ±∞, which is no evidence worth reporting.
            out.expected_loss = Some((-delta).max(0.0));
        }
        if c != 0.0 {
            let ratio = t / c;
            let var_rel = var_t / (c * c) + t * t * var_c / (c * c * c * c);
            out.rel_std_error = finite(Some(var_rel)).map(f64::sqrt);
            out.rel_ci = out
                .rel_std_error
                .map(|se| Interval::normal_95(ratio - 1.0, se));
        }
    }
    if c != 0.0 {
        out.rel_lift = finite(Some(t / c - 1.0));
    }
    out
}

/// Drop non-finite values, so hand-built estimates with NaN cannot leak NaN out.
fn finite(x: Option<f64>) -> Option<f64> {
    x.filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{estimate_conversion, ArmCounts};

    fn est(mean: f64, variance: f64) -> MetricEstimate {
        MetricEstimate {
            n: 100,
            mean: Some(mean),
            variance: Some(variance),
            std_error: Some(variance.sqrt()),
            ci_low: None,
            ci_high: None,
        }
    }

    #[test]
    fn stats_compare_equal_arms() {
        let r = compare(&est(0.1, 1e-4), &est(0.1, 1e-4));
        assert_eq!(r.abs_lift, Some(0.0));
        assert!((r.p_value.unwrap() - 1.0).abs() < 1e-12);
        assert!((r.chance_to_beat.unwrap() - 0.5).abs() < 1e-12);
        let sigma = (2e-4f64).sqrt();
        let expected = sigma / (2.0 * std::f64::consts::PI).sqrt();
        assert!((r.expected_loss.unwrap() - expected).abs() < 1e-12);
        assert!(r.abs_ci.unwrap().contains(0.0));
        assert!(r.rel_ci.unwrap().contains(0.0));
    }

    #[test]
    fn stats_compare_clear_winner_and_loser() {
        let win = compare(&est(0.10, 1e-6), &est(0.12, 1e-6));
        assert!(win.p_value.unwrap() < 1e-30);
        assert!(win.chance_to_beat.unwrap() > 0.999_999);
        assert!(win.expected_loss.unwrap() < 1e-12);
        assert!((win.rel_lift.unwrap() - 0.2).abs() < 1e-12);

        let lose = compare(&est(0.12, 1e-6), &est(0.10, 1e-6));
        assert!(lose.chance_to_beat.unwrap() < 1e-6);
        assert!((lose.expected_loss.unwrap() - 0.02).abs() < 1e-9);
    }

    #[test]
    fn stats_compare_undefined_inputs_give_nones() {
        let empty = estimate_conversion(&ArmCounts::default()).unwrap();
        let some = est(0.1, 1e-4);
        let r = compare(&empty, &some);
        assert_eq!(r.abs_lift, None);
        assert_eq!(r.p_value, None);
        let r = compare(&some, &empty);
        assert_eq!(r.chance_to_beat, None);
    }

    #[test]
    fn stats_compare_zero_variance_and_zero_control() {
        let zero = estimate_conversion(&ArmCounts {
            users: 50,
            ..ArmCounts::default()
        })
        .unwrap();
        let r = compare(&zero, &zero);
        assert_eq!(r.abs_lift, Some(0.0));
        assert_eq!(r.p_value, None);
        assert_eq!(r.chance_to_beat, None);
        assert_eq!(r.expected_loss, Some(0.0));
        assert_eq!(r.rel_lift, None);
        assert_eq!(r.rel_ci, None);
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains("NaN"));
    }

    #[test]
    fn stats_compare_nan_inputs_are_ignored() {
        let r = compare(&est(f64::NAN, 1.0), &est(0.1, 1.0));
        assert_eq!(r.abs_lift, None);
        let r = compare(&est(0.1, f64::NAN), &est(0.1, 1.0));
        assert_eq!(r.abs_lift, Some(0.0));
        assert_eq!(r.p_value, None);
    }
}
