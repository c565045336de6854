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
    pearson(observed, &expected, active.saturating_sub(1))
}

/// The sample-ratio check of an experiment whose weights changed: over all
/// periods together and within each period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CohortSrm {
    /// χ² of users per arm against Σ_k (users first exposed in period k × the
    /// arm's weight in k), df = arms − 1. With weights that differ between
    /// periods the test is conservative (each period's counts vary less than
    /// one multinomial of the pooled share would), so it never alarms too often.
    pub overall: SrmCheck,
    /// The same test within each period, on the users first exposed in it;
    /// `None` for a period whose weights cannot be checked (fewer than two
    /// arms with weight), in period order.
    pub by_period: Vec<Option<SrmCheck>>,
    /// The level each per-period test is held to: [`SRM_ALPHA`] split evenly
    /// over the overall and the per-period tests (Bonferroni), so that the
    /// whole check alarms at most about 2·SRM_ALPHA of the time when nothing is wrong.
    pub period_alpha: f64,
    /// The overall test or any per-period test failed: results should not be
    /// trusted until the mismatch is explained.
    pub mismatch: bool,
}

/// Sample-ratio check across periods of different weights.
///
/// `observed[k][a]` is the number of users of arm `a` first exposed in period
/// `k` and `weights[k][a]` the arm's weight then. An arm that received users
/// in a period in which its weight was 0 is a mismatch (not an error): it is
/// exactly the assignment bug the check exists to catch.
pub fn cohort_sample_ratio(
    observed: &[Vec<u64>],
    weights: &[Vec<f64>],
) -> Result<CohortSrm, ValidationError> {
    if observed.len() != weights.len() {
        return Err(ValidationError::new(
            "weights",
            format!(
                "has {} periods but there are {} observed periods",
                weights.len(),
                observed.len()
            ),
        ));
    }
    let arms = observed.first().map_or(0, Vec::len);
    if arms < 2 {
        return Err(ValidationError::new("observed", "needs at least two arms"));
    }
    let mut total_observed = vec![0u64; arms];
    let mut total_expected = vec![0f64; arms];
    let mut by_period = Vec::with_capacity(observed.len());
    let mut users_outside_weights = false;
    let tested_periods = observed.len().max(1) as f64;
    let period_alpha = SRM_ALPHA / (1.0 + tested_periods);
    for (k, (obs, w)) in observed.iter().zip(weights).enumerate() {
        let field = |e: ValidationError| e.within(format!("periods[{k}]"));
        if obs.len() != arms || w.len() != arms {
            return Err(field(ValidationError::new(
                "observed",
                format!("every period needs {arms} arms"),
            )));
        }
        let n: u64 = obs.iter().fold(0u64, |s, &o| s.saturating_add(o));
        let weight_sum: f64 = w.iter().sum();
        for (a, (&o, &wa)) in obs.iter().zip(w).enumerate() {
            if !wa.is_finite() || wa < 0.0 {
                return Err(field(ValidationError::new(
                    format!("weights[{a}]"),
                    "must be a finite number ≥ 0",
                )));
            }
            total_observed[a] = total_observed[a].saturating_add(o);
            if weight_sum > 0.0 {
                total_expected[a] += n as f64 * wa / weight_sum;
            }
            if wa == 0.0 && o > 0 {
                users_outside_weights = true;
            }
        }
        let testable = w.iter().filter(|x| **x > 0.0).count() >= 2
            && !obs.iter().zip(w).any(|(&o, &wa)| wa == 0.0 && o > 0);
        by_period.push(if testable {
            let mut check = sample_ratio_mismatch(obs, w).map_err(field)?;
            check.mismatch = check.p_value < period_alpha;
            Some(check)
        } else {
            None
        });
    }
    let active = total_expected.iter().filter(|e| **e > 0.0).count() as u64;
    let overall = pearson(&total_observed, &total_expected, active.saturating_sub(1))?;
    let mismatch =
        users_outside_weights || overall.mismatch || by_period.iter().flatten().any(|c| c.mismatch);
    Ok(CohortSrm {
        overall,
        by_period,
        period_alpha,
        mismatch,
    })
}

/// Pearson χ² of `observed` against already-scaled `expected` counts with
/// `df` degrees of freedom; nothing to test (no users, or df 0) passes, and
/// an arm expected to get nobody but observed with users makes the statistic
/// infinite.
fn pearson(observed: &[u64], expected: &[f64], df: u64) -> Result<SrmCheck, ValidationError> {
    let total: u64 = observed.iter().fold(0u64, |s, &o| s.saturating_add(o));
    if total == 0 || df == 0 {
        return Ok(SrmCheck {
            statistic: 0.0,
            df,
            p_value: 1.0,
            mismatch: false,
            expected: expected.to_vec(),
        });
    }
    if observed
        .iter()
        .zip(expected)
        .any(|(&o, &e)| e <= 0.0 && o > 0)
    {
        return Ok(SrmCheck {
            statistic: f64::INFINITY,
            df,
            p_value: 0.0,
            mismatch: true,
            expected: expected.to_vec(),
        });
    }
    let statistic: f64 = observed
        .iter()
        .zip(expected)
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
        expected: expected.to_vec(),
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

    #[test]
    fn stats_cohort_srm_sums_expectations_over_periods() {
        // 1,000 users at 50/50, then 1,000 at 10/90: 600 and 1,400 expected.
        let observed = vec![vec![500, 500], vec![100, 900]];
        let weights = vec![vec![0.5, 0.5], vec![0.1, 0.9]];
        let r = cohort_sample_ratio(&observed, &weights).unwrap();
        assert_eq!(r.overall.expected, vec![600.0, 1400.0]);
        assert_eq!(r.overall.statistic, 0.0);
        assert_eq!(r.by_period.len(), 2);
        assert!(!r.mismatch);
        assert!((r.period_alpha - SRM_ALPHA / 3.0).abs() < 1e-15);

        // The pooled split (600/1400 = 30/70) is met, but period 2 is off.
        let skewed = vec![vec![400, 600], vec![200, 800]];
        let r = cohort_sample_ratio(&skewed, &weights).unwrap();
        assert_eq!(r.overall.statistic, 0.0);
        assert!(r.by_period[0].as_ref().unwrap().mismatch);
        assert!(r.mismatch);
    }

    #[test]
    fn stats_cohort_srm_users_in_a_closed_arm_are_a_mismatch() {
        let observed = vec![vec![500, 500], vec![3, 997]];
        let weights = vec![vec![0.5, 0.5], vec![0.0, 1.0]];
        let r = cohort_sample_ratio(&observed, &weights).unwrap();
        assert!(r.by_period[1].is_none());
        assert!(r.mismatch);
        let clean = vec![vec![500, 500], vec![0, 1000]];
        assert!(!cohort_sample_ratio(&clean, &weights).unwrap().mismatch);
        assert!(cohort_sample_ratio(&[vec![1, 2]], &[]).is_err());
        assert!(cohort_sample_ratio(&[vec![1]], &[vec![1.0]]).is_err());
    }
}
