//! Standard-normal helpers, in one place so every test statistic agrees on
//! the same implementation (statrs' erfc: about 1e-10 relative error, also in
//! the far tails, which is ample for p-values and intervals).

use statrs::distribution::{Continuous, ContinuousCDF, Normal};

/// Φ(x).
pub(crate) fn cdf(x: f64) -> f64 {
    Normal::standard().cdf(x)
}

/// 1 − Φ(x), computed directly so tiny p-values do not round to zero.
pub(crate) fn sf(x: f64) -> f64 {
    Normal::standard().sf(x)
}

/// φ(x).
pub(crate) fn pdf(x: f64) -> f64 {
    Normal::standard().pdf(x)
}

/// Two-sided p-value of a z statistic.
pub(crate) fn two_sided_p(z: f64) -> f64 {
    (2.0 * sf(z.abs())).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Z_95;

    #[test]
    fn z_95_is_the_975_quantile() {
        assert!((cdf(Z_95) - 0.975).abs() < 1e-9);
        assert!((two_sided_p(Z_95) - 0.05).abs() < 1e-9);
    }

    #[test]
    fn tails_do_not_underflow_early() {
        assert!(sf(8.0) > 0.0);
        assert!(two_sided_p(-8.0) > 0.0);
        assert!((cdf(0.0) - 0.5).abs() < 1e-15);
        assert!((pdf(0.0) - 0.398_942_280_401_432_7).abs() < 1e-15);
    }
}
