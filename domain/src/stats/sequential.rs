//! Always-valid confidence sequences, so an analyst may look every day.
//!
//! A 95% interval computed at one planned sample size covers the truth 95%
//! of the time at that size; checked after every batch of users and acted
//! on at the first look that excludes zero, it rejects a true null far more
//! often (the simulation in `domain/tests/simulation.rs` measures it). A
//! confidence sequence covers the truth at every sample size at once with
//! probability 1 − α, so stopping whenever it excludes zero keeps the error
//! rate at α.
//!
//! The boundary is the normal mixture of Howard, Ramdas, McAuliffe and
//! Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence
//! sequences" (2021), in the asymptotic form of Waudby-Smith et al., "Time-
//! uniform central limit theory and asymptotic confidence sequences" (2023,
//! eq. 14), as GrowthBook's gbstats applies it to A/B estimates: for an
//! estimate with variance v after n units, with s² = n·v,
//!
//! ```text
//! half-width = √s² · √( 2(nρ² + 1) / (n²ρ²) · ln( √(nρ² + 1) / α ) )
//! ρ = √( (−2 ln α + ln(1 − 2 ln α)) / N* )
//! ```
//!
//! N* (the tuning parameter) is the sample size at which the sequence is
//! tightest; GrowthBook's default, 5,000, is ours.

use serde::{Deserialize, Serialize};

use super::Interval;

/// GrowthBook's default N*.
pub const DEFAULT_TUNING: f64 = 5_000.0;

/// How an experiment's results are read.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Analysis {
    /// Confidence sequences valid at every look (the default).
    Sequential {
        /// N*: the total units (users of both arms) at which the sequence is tightest.
        tuning: f64,
    },
    /// One planned look: the fixed-horizon intervals and p-values.
    FixedHorizon,
}

impl Default for Analysis {
    fn default() -> Self {
        Self::Sequential {
            tuning: DEFAULT_TUNING,
        }
    }
}

impl Analysis {
    /// N* for the confidence sequences, which are reported whatever the analysis.
    pub fn tuning(self) -> f64 {
        match self {
            Self::Sequential { tuning } => tuning,
            Self::FixedHorizon => DEFAULT_TUNING,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sequential { .. } => "sequential",
            Self::FixedHorizon => "fixed_horizon",
        }
    }
}

/// ρ of the normal mixture for level `alpha` and tuning `tuning` (N*).
pub fn mixture_rho(alpha: f64, tuning: f64) -> f64 {
    let l = -2.0 * alpha.ln();
    ((l + (l + 1.0).ln()) / tuning).sqrt()
}

/// Half-width of the (1 − `alpha`) confidence sequence around an estimate
/// whose variance is `variance` after `n` units; `None` when undefined.
pub fn half_width(variance: f64, n: f64, alpha: f64, tuning: f64) -> Option<f64> {
    if !(variance.is_finite() && variance >= 0.0 && n >= 1.0 && alpha > 0.0 && alpha < 1.0)
        || !(tuning.is_finite() && tuning > 0.0)
    {
        return None;
    }
    let rho2 = mixture_rho(alpha, tuning).powi(2);
    let m = n * rho2 + 1.0;
    let s2 = variance * n;
    let width = (s2 * 2.0 * m / (n * n * rho2) * (m.sqrt() / alpha).ln()).sqrt();
    width.is_finite().then_some(width)
}

/// A lift read through confidence sequences.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SequentialLift {
    /// Units (users of both arms) the sequence is at.
    pub n: u64,
    /// N* the sequence was tuned for.
    pub tuning: f64,
    /// 95% confidence sequence for the absolute lift.
    pub abs_ci: Option<Interval>,
    /// 95% confidence sequence for the relative lift (delta-method variance).
    pub rel_ci: Option<Interval>,
    /// Whether `abs_ci` excludes zero: a decision that stays valid however
    /// often the results were looked at.
    pub significant: bool,
}

/// The 95% sequences around `abs` (± its standard error) and `rel`, after `n` units.
pub fn sequential_lift(
    abs: Option<(f64, f64)>,
    rel: Option<(f64, f64)>,
    n: u64,
    tuning: f64,
) -> SequentialLift {
    let interval = |(estimate, std_error): (f64, f64)| {
        half_width(std_error * std_error, n as f64, 0.05, tuning).map(|h| Interval {
            low: estimate - h,
            high: estimate + h,
        })
    };
    let abs_ci = abs.and_then(interval);
    SequentialLift {
        n,
        tuning,
        abs_ci,
        rel_ci: rel.and_then(interval),
        significant: abs_ci.is_some_and(|ci| !ci.contains(0.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Z_95;

    #[test]
    fn the_sequence_is_wider_than_the_fixed_interval_and_tightest_near_the_tuning() {
        let se = |n: f64| (0.25 / n).sqrt();
        for n in [100.0, 1_000.0, 5_000.0, 50_000.0, 1e6] {
            let h = half_width(se(n).powi(2), n, 0.05, DEFAULT_TUNING).unwrap();
            assert!(h > Z_95 * se(n), "n = {n}");
        }
        // Relative to the fixed interval, the price is smallest around N*.
        let ratio = |n: f64| half_width(se(n).powi(2), n, 0.05, DEFAULT_TUNING).unwrap() / se(n);
        assert!(ratio(5_000.0) < ratio(100.0));
        assert!(ratio(5_000.0) < ratio(1e7));
    }

    #[test]
    fn undefined_inputs_give_no_interval() {
        assert_eq!(half_width(f64::NAN, 10.0, 0.05, 5_000.0), None);
        assert_eq!(half_width(1.0, 0.0, 0.05, 5_000.0), None);
        assert_eq!(half_width(1.0, 10.0, 0.05, 0.0), None);
        let lift = sequential_lift(None, None, 0, DEFAULT_TUNING);
        assert!(!lift.significant);
    }

    #[test]
    fn a_hand_computed_value() {
        // α = 0.05, N* = 5000: ρ² = (5.9915 + ln 6.9915) / 5000.
        let l = -2.0 * 0.05f64.ln();
        let rho2 = (l + (l + 1.0).ln()) / 5_000.0;
        let n = 2_000.0;
        let v = 1e-4;
        let expected = (v * n * 2.0 * (n * rho2 + 1.0) / (n * n * rho2)
            * ((n * rho2 + 1.0).sqrt() / 0.05).ln())
        .sqrt();
        assert!((half_width(v, n, 0.05, 5_000.0).unwrap() - expected).abs() < 1e-15);
    }
}
