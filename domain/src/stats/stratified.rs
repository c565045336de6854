//! Lift when arm weights changed during the run.
//!
//! Pooling all traffic compares a treatment that got most of its users late
//! with a control that got them early; if the metric drifts over time the
//! pooled difference measures the drift (Simpson's paradox). Comparing arms
//! only within periods of constant weights, then combining, removes that.

use serde::{Deserialize, Serialize};

use super::{compare, estimate, normal, ArmCounts, Interval, Metric};
use crate::ValidationError;

/// Control and treatment counts for one period during which weights stayed fixed.
///
/// Ideally a period holds the users *assigned* during it (a cohort), since
/// sticky assignment keeps earlier users in their arm after weights change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PeriodCounts {
    /// The control arm in this period.
    pub control: ArmCounts,
    /// The treatment arm in this period.
    pub treatment: ArmCounts,
}

/// How within-period differences are averaged, since the two answer slightly different questions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weighting {
    /// Weights 1/var_k: the most precise estimate if the true lift is constant over time.
    InverseVariance,
    /// Weights 1/var⁰_k, var⁰_k = s²_k·(1/n_c + 1/n_t) with s²_k the per-user
    /// variance of the period's two arms pooled: as precise as
    /// `InverseVariance`, but the weight does not move with the difference.
    /// With unequal arms the smaller arm's own variance estimate moves with its
    /// mean (skewed per-user outcomes: a high rate brings a high variance), so
    /// 1/var_k down-weights the periods in which the larger arm happened to
    /// come out behind and biases the combined lift towards it.
    InversePooledVariance,
    /// Weights ∝ users in the period: the traffic-weighted average lift, robust if it drifts.
    Users,
}

impl Weighting {
    /// Stable identifier reported in `StratifiedLift::method`.
    pub fn method_name(self) -> &'static str {
        match self {
            Weighting::InverseVariance => "stratified_inverse_variance",
            Weighting::InversePooledVariance => "stratified_inverse_pooled_variance",
            Weighting::Users => "stratified_user_weighted",
        }
    }
}

/// Combined treatment − control difference over weight periods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StratifiedLift {
    /// How the periods were combined, e.g. `stratified_inverse_variance`.
    pub method: String,
    /// Combined absolute lift (treatment − control).
    pub estimate: Option<f64>,
    /// Standard error of `estimate`.
    pub std_error: Option<f64>,
    /// 95% normal interval for `estimate`.
    pub ci: Option<Interval>,
    /// Two-sided z-test p-value for a zero lift.
    pub p_value: Option<f64>,
    /// P(treatment > control) under the same normal model, flat prior.
    pub chance_to_beat: Option<f64>,
    /// Periods that contributed.
    pub periods_used: usize,
    /// Periods left out because a difference or its variance was undefined
    /// (an empty arm; or, for the inverse-variance weightings, zero variance).
    pub periods_skipped: usize,
}

/// Combine within-period lifts of `metric` across periods of constant weights.
///
/// Each period's difference d_k has variance v_k = var_t + var_c; with weights
/// w_k the estimate is Σw_k·d_k / Σw_k and its variance Σw_k²·v_k / (Σw_k)²
/// (which is 1/Σ(1/v_k) for inverse-variance weights).
pub fn stratified_lift(
    metric: Metric,
    periods: &[PeriodCounts],
    weighting: Weighting,
) -> Result<StratifiedLift, ValidationError> {
    let mut sum_w = 0.0;
    let mut sum_wd = 0.0;
    let mut sum_w2v = 0.0;
    let mut used = 0usize;
    for (k, p) in periods.iter().enumerate() {
        let c =
            estimate(metric, &p.control).map_err(|e| e.within(format!("periods[{k}].control")))?;
        let t = estimate(metric, &p.treatment)
            .map_err(|e| e.within(format!("periods[{k}].treatment")))?;
        let cmp = compare(&c, &t);
        let (Some(d), Some(se)) = (cmp.abs_lift, cmp.abs_std_error) else {
            continue;
        };
        let v = se * se;
        let w = match weighting {
            Weighting::InverseVariance if v > 0.0 => 1.0 / v,
            Weighting::InverseVariance => continue,
            Weighting::InversePooledVariance => {
                match pooled_difference_variance(metric, p)
                    .map_err(|e| e.within(format!("periods[{k}]")))?
                {
                    Some(v0) if v0 > 0.0 && v > 0.0 => 1.0 / v0,
                    _ => continue,
                }
            }
            Weighting::Users => p.control.users as f64 + p.treatment.users as f64,
        };
        sum_w += w;
        sum_wd += w * d;
        sum_w2v += w * w * v;
        used += 1;
    }

    let mut out = StratifiedLift {
        method: weighting.method_name().to_string(),
        estimate: None,
        std_error: None,
        ci: None,
        p_value: None,
        chance_to_beat: None,
        periods_used: used,
        periods_skipped: periods.len() - used,
    };
    if used == 0 || sum_w <= 0.0 || !sum_w.is_finite() {
        return Ok(out);
    }
    let est = sum_wd / sum_w;
    let se = (sum_w2v / (sum_w * sum_w)).sqrt();
    if !est.is_finite() || !se.is_finite() {
        return Ok(out);
    }
    out.estimate = Some(est);
    out.std_error = Some(se);
    out.ci = Some(Interval::normal_95(est, se));
    if se > 0.0 {
        out.p_value = Some(normal::two_sided_p(est / se));
        out.chance_to_beat = Some(normal::cdf(est / se));
    }
    Ok(out)
}

/// The variance the period's difference would have if both arms had the
/// per-user variance of their users pooled: s²·(1/n_c + 1/n_t).
fn pooled_difference_variance(
    metric: Metric,
    p: &PeriodCounts,
) -> Result<Option<f64>, ValidationError> {
    let (nc, nt) = (p.control.users as f64, p.treatment.users as f64);
    if nc == 0.0 || nt == 0.0 {
        return Ok(None);
    }
    let pooled = estimate(metric, &p.control.merged(&p.treatment))?;
    Ok(pooled
        .variance
        .map(|v| v * (nc + nt) * (1.0 / nc + 1.0 / nt)))
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, SeedableRng};
    use rand_distr::{Binomial, Distribution};

    use super::*;
    use crate::stats::{compare, estimate_conversion};

    /// Users per period, treatment share per period, and a base rate rising
    /// over time that both arms share: the classic Simpson set-up.
    const USERS: u64 = 10_000;
    const SHARES: [f64; 4] = [0.5, 0.7, 0.8, 0.9];
    const RATES: [f64; 4] = [0.05, 0.08, 0.11, 0.14];

    fn conv(users: u64, conversions: u64) -> ArmCounts {
        ArmCounts {
            users,
            conversions,
            ..ArmCounts::default()
        }
    }

    /// Expected counts, rounded; every product here is an integer, so both arms are exactly equal.
    fn deterministic_periods() -> Vec<PeriodCounts> {
        SHARES
            .iter()
            .zip(RATES)
            .map(|(&share, rate)| {
                let nt = (USERS as f64 * share).round() as u64;
                let nc = USERS - nt;
                PeriodCounts {
                    control: conv(nc, (nc as f64 * rate).round() as u64),
                    treatment: conv(nt, (nt as f64 * rate).round() as u64),
                }
            })
            .collect()
    }

    fn pooled(periods: &[PeriodCounts]) -> crate::stats::Comparison {
        let (c, t) = periods
            .iter()
            .fold((ArmCounts::default(), ArmCounts::default()), |(c, t), p| {
                (c.merged(&p.control), t.merged(&p.treatment))
            });
        compare(
            &estimate_conversion(&c).unwrap(),
            &estimate_conversion(&t).unwrap(),
        )
    }

    #[test]
    fn stats_stratified_removes_simpsons_paradox_deterministic() {
        let periods = deterministic_periods();
        let naive = pooled(&periods);
        let naive_ci = naive.abs_ci.unwrap();
        assert!(
            naive_ci.low > 0.0,
            "pooled lift should be spuriously positive: {naive:?}"
        );

        for w in [Weighting::InverseVariance, Weighting::Users] {
            let s = stratified_lift(Metric::Conversion, &periods, w).unwrap();
            assert_eq!(s.periods_used, 4);
            assert!(s.ci.unwrap().contains(0.0), "{s:?}");
            assert!(s.estimate.unwrap().abs() < 1e-12);
            assert_eq!(s.method, w.method_name());
        }
    }

    #[test]
    fn stats_stratified_removes_simpsons_paradox_simulated() {
        let mut rng = StdRng::seed_from_u64(20240601);
        let periods: Vec<PeriodCounts> = SHARES
            .iter()
            .zip(RATES)
            .map(|(&share, rate)| {
                let nt = (USERS as f64 * share).round() as u64;
                let nc = USERS - nt;
                let draw = |n: u64, rng: &mut StdRng| Binomial::new(n, rate).unwrap().sample(rng);
                let cc = draw(nc, &mut rng);
                let tc = draw(nt, &mut rng);
                PeriodCounts {
                    control: conv(nc, cc),
                    treatment: conv(nt, tc),
                }
            })
            .collect();
        // One random draw: a 95% interval misses 0 one time in twenty even
        // when nothing is wrong, so ask the stratified test only for
        // p > 0.001 (calibration at 5% is the A/A simulation's job) and the
        // pooled one for a decisive, and false, discovery.
        let naive = pooled(&periods);
        assert!(naive.abs_ci.unwrap().low > 0.0);
        assert!(naive.p_value.unwrap() < 1e-6, "{naive:?}");
        for w in [Weighting::InverseVariance, Weighting::Users] {
            let s = stratified_lift(Metric::Conversion, &periods, w).unwrap();
            assert!(s.p_value.unwrap() > 0.001, "{s:?}");
        }
    }

    #[test]
    fn stats_stratified_matches_hand_computation() {
        let periods = [
            PeriodCounts {
                control: conv(1000, 100),
                treatment: conv(1000, 130),
            },
            PeriodCounts {
                control: conv(400, 30),
                treatment: conv(1600, 150),
            },
        ];
        let v = |p: f64, n: f64| p * (1.0 - p) / n;
        let (d1, v1) = (0.03, v(0.1, 1000.0) + v(0.13, 1000.0));
        let (d2, v2) = (
            150.0 / 1600.0 - 0.075,
            v(0.075, 400.0) + v(150.0 / 1600.0, 1600.0),
        );

        let iv = stratified_lift(Metric::Conversion, &periods, Weighting::InverseVariance).unwrap();
        let expected = (d1 / v1 + d2 / v2) / (1.0 / v1 + 1.0 / v2);
        assert!((iv.estimate.unwrap() - expected).abs() < 1e-14);
        assert!((iv.std_error.unwrap() - (1.0 / (1.0 / v1 + 1.0 / v2)).sqrt()).abs() < 1e-14);

        let uw = stratified_lift(Metric::Conversion, &periods, Weighting::Users).unwrap();
        assert!((uw.estimate.unwrap() - (d1 + d2) / 2.0).abs() < 1e-14);
        assert!((uw.std_error.unwrap() - ((v1 + v2) / 4.0).sqrt()).abs() < 1e-14);
    }

    #[test]
    fn stats_stratified_skips_empty_periods_and_reports_errors() {
        let periods = [
            PeriodCounts::default(),
            PeriodCounts {
                control: conv(1000, 100),
                treatment: conv(1000, 110),
            },
            PeriodCounts {
                control: conv(10, 0),
                treatment: conv(10, 0),
            },
        ];
        let s = stratified_lift(Metric::Conversion, &periods, Weighting::InverseVariance).unwrap();
        assert_eq!((s.periods_used, s.periods_skipped), (1, 2));
        let s = stratified_lift(Metric::Conversion, &periods, Weighting::Users).unwrap();
        assert_eq!((s.periods_used, s.periods_skipped), (2, 1));

        let none = stratified_lift(Metric::Ctr, &[], Weighting::Users).unwrap();
        assert_eq!(none.estimate, None);
        assert_eq!(none.ci, None);

        let bad = [PeriodCounts {
            control: conv(1, 2),
            treatment: conv(1, 0),
        }];
        let e = stratified_lift(Metric::Conversion, &bad, Weighting::Users).unwrap_err();
        assert_eq!(e.field, "periods[0].control.conversions");
    }

    #[test]
    fn stats_stratified_pooled_variance_weights_match_hand_computation() {
        let periods = [
            PeriodCounts {
                control: conv(1000, 100),
                treatment: conv(1000, 130),
            },
            PeriodCounts {
                control: conv(400, 30),
                treatment: conv(1600, 150),
            },
        ];
        let v = |p: f64, n: f64| p * (1.0 - p) / n;
        let (d1, v1) = (0.03, v(0.1, 1000.0) + v(0.13, 1000.0));
        let (d2, v2) = (
            150.0 / 1600.0 - 0.075,
            v(0.075, 400.0) + v(150.0 / 1600.0, 1600.0),
        );
        // Weights from each period's pooled rate over both arms.
        let (p1, p2) = (230.0 / 2000.0, 180.0 / 2000.0);
        let w1 = 1.0 / (p1 * (1.0 - p1) * (1.0 / 1000.0 + 1.0 / 1000.0));
        let w2 = 1.0 / (p2 * (1.0 - p2) * (1.0 / 400.0 + 1.0 / 1600.0));
        let s = stratified_lift(
            Metric::Conversion,
            &periods,
            Weighting::InversePooledVariance,
        )
        .unwrap();
        let expected = (w1 * d1 + w2 * d2) / (w1 + w2);
        let se = ((w1 * w1 * v1 + w2 * w2 * v2) / ((w1 + w2) * (w1 + w2))).sqrt();
        assert!((s.estimate.unwrap() - expected).abs() < 1e-12, "{s:?}");
        assert!((s.std_error.unwrap() - se).abs() < 1e-12, "{s:?}");
        assert_eq!(s.method, "stratified_inverse_pooled_variance");
    }
}
