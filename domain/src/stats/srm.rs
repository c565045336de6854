//! Sample-ratio mismatch: is the traffic split what the weights promised?

use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF};

use crate::ValidationError;

/// p-value below which we flag a mismatch; strict because the check runs on
/// every results view and a false alarm would teach people to ignore it.
pub const SRM_ALPHA: f64 = 0.001;

/// Result of the chi-square goodness-of-fit test of users per arm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SrmCheck {
    /// Pearson χ² = Σ (observed − expected)² / expected.
    pub statistic: f64,
    /// Degrees of freedom: arms with positive weight − 1.
    pub df: u64,
    /// P(χ²_df ≥ statistic).
    pub p_value: f64,
    /// `p_value < SRM_ALPHA`: results should not be trusted until explained.
    pub mismatch: bool,
    /// Users each arm should have had given the total and the weights, in input order.
    pub expected: Vec<f64>,
}

/// Chi-square test of observed users per arm against the weights they were assigned under.
///
/// Weights need not sum to 1. An arm with weight 0 and no users is left out
/// of the test; one with weight 0 *and* users is an error, because those
/// weights cannot be the ones the users were assigned under (with changing
/// weights, pass the traffic-weighted average, or check each period).
pub fn sample_ratio_mismatch(
    observed: &[u64],
    expected_weights: &[f64],
) -> Result<SrmCheck, ValidationError> {
    if observed.len() != expected_weights.len() {
        return Err(ValidationError::new(
            "expected_weights",
            format!(
                "has {} entries but there are {} observed arms",
                expected_weights.len(),
                observed.len()
            ),
        ));
    }
    if observed.len() < 2 {
        return Err(ValidationError::new("observed", "needs at least two arms"));
    }
    for (i, w) in expected_weights.iter().enumerate() {
        if !w.is_finite() || *w < 0.0 {
            return Err(ValidationError::new(
                format!("expected_weights[{i}]"),
                "must be a finite number ≥ 0",
            ));
        }
    }
    let weight_sum: f64 = expected_weights.iter().sum();
    if weight_sum <= 0.0 || !weight_sum.is_finite() {
        return Err(ValidationError::new(
            "expected_weights",
            "must have a positive, finite sum",
        ));
    }
    for (i, (&o, &w)) in observed.iter().zip(expected_weights).enumerate() {
        if w == 0.0 && o > 0 {
            return Err(ValidationError::new(
                format!("observed[{i}]"),
                "arm has users but an expected weight of 0",
            ));
        }
    }

    // u128 so the total cannot overflow however many arms are summed.
    let total = observed.iter().map(|&o| u128::from(o)).sum::<u128>() as f64;
    let expected: Vec<f64> = expected_weights
        .iter()
        .map(|w| total * w / weight_sum)
        .collect();
    let active = expected_weights.iter().filter(|w| **w > 0.0).count() as u64;
    let df = active.saturating_sub(1);
    if total == 0.0 || df == 0 {
        // Nothing to test yet, or only one arm can receive traffic.
        return Ok(SrmCheck {
            statistic: 0.0,
            df,
            p_value: 1.0,
            mismatch: false,
            expected,
        });
    }
    let statistic: f64 = observed
        .iter()
        .zip(&expected)
        .filter(|(_, e)| **e > 0.0)
        .map(|(&o, &e)| (o as f64 - e).powi(2) / e)
        .sum();
    let chi2 = ChiSquared::new(df as f64)
        .map_err(|e| ValidationError::new("observed", format!("chi-square setup: {e}")))?;
    let p_value = chi2.sf(statistic).clamp(0.0, 1.0);
    Ok(SrmCheck {
        statistic,
        df,
        p_value,
        mismatch: p_value < SRM_ALPHA,
        expected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_srm_balanced_split_passes() {
        let r = sample_ratio_mismatch(&[5000, 5000], &[0.5, 0.5]).unwrap();
        assert_eq!(r.statistic, 0.0);
        assert_eq!(r.df, 1);
        assert!((r.p_value - 1.0).abs() < 1e-12);
        assert!(!r.mismatch);
    }

    #[test]
    fn stats_srm_flags_a_broken_split() {
        // 50/50 promised, 5200/4800 delivered: χ² = 16, p ≈ 6.3e-5.
        let r = sample_ratio_mismatch(&[5200, 4800], &[1.0, 1.0]).unwrap();
        assert!((r.statistic - 16.0).abs() < 1e-9);
        assert!(r.p_value < SRM_ALPHA);
        assert!(r.mismatch);
    }

    #[test]
    fn stats_srm_zero_users_is_not_a_mismatch() {
        let r = sample_ratio_mismatch(&[0, 0, 0], &[0.2, 0.3, 0.5]).unwrap();
        assert_eq!(r.p_value, 1.0);
        assert!(!r.mismatch);
        assert_eq!(r.df, 2);
    }

    #[test]
    fn stats_srm_zero_weight_arms() {
        let r = sample_ratio_mismatch(&[100, 0, 95], &[0.5, 0.0, 0.5]).unwrap();
        assert_eq!(r.df, 1);
        assert!(!r.mismatch);
        let e = sample_ratio_mismatch(&[100, 3, 95], &[0.5, 0.0, 0.5]).unwrap_err();
        assert_eq!(e.field, "observed[1]");
        let one = sample_ratio_mismatch(&[100, 0], &[1.0, 0.0]).unwrap();
        assert_eq!((one.df, one.p_value), (0, 1.0));
    }

    #[test]
    fn stats_srm_rejects_bad_input() {
        assert!(sample_ratio_mismatch(&[1, 2], &[0.5]).is_err());
        assert!(sample_ratio_mismatch(&[1], &[1.0]).is_err());
        assert!(sample_ratio_mismatch(&[], &[]).is_err());
        assert_eq!(
            sample_ratio_mismatch(&[1, 2], &[0.5, f64::NAN])
                .unwrap_err()
                .field,
            "expected_weights[1]"
        );
        assert!(sample_ratio_mismatch(&[1, 2], &[0.5, -0.1]).is_err());
        assert!(sample_ratio_mismatch(&[1, 2], &[0.0, 0.0]).is_err());
        assert!(sample_ratio_mismatch(&[1, 2], &[f64::MAX, f64::MAX]).is_err());
        assert!(sample_ratio_mismatch(&[u64::MAX, u64::MAX], &[1.0, 1.0]).is_ok());
    }
}
