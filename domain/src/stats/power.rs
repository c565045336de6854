//! How large a lift the experiment can see yet, and how long until it can
//! see the one the team cares about.
//!
//! Fixed-horizon power of the two-sided z-test at α = 0.05 and power 0.8:
//! the minimum detectable effect is (z₀.₉₇₅ + z₀.₈)·SE, and since SE falls as
//! 1/√n, a target effect δ becomes detectable at n·((z₀.₉₇₅ + z₀.₈)·SE / δ)²
//! units. Days follow from the users per day seen so far (new users arrive
//! at the current rate, the variance per user stays as measured).

use serde::{Deserialize, Serialize};

use super::Z_95;

/// z of 80% power.
const Z_80: f64 = 0.841_621_233_572_914_3;

/// The default target: a 5% relative lift.
pub const DEFAULT_TARGET_REL: f64 = 0.05;

/// Minimum detectable effect now and the wait for the target one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Power {
    /// Absolute lift detectable with 80% power at α = 0.05, at the users seen so far.
    pub mde_abs: Option<f64>,
    /// The same relative to the control mean.
    pub mde_rel: Option<f64>,
    /// The relative lift the wait below is for.
    pub target_rel: f64,
    /// Users (both arms) at which `target_rel` becomes detectable.
    pub users_needed: Option<u64>,
    /// Days from now until then at the current traffic; 0 when already detectable.
    pub days_to_target: Option<f64>,
}

/// Power of a comparison whose lift has standard error `std_error` after
/// `users` units, against a control mean `control_mean`, with `users_per_day`
/// new units a day (if known).
pub fn power(
    std_error: Option<f64>,
    control_mean: Option<f64>,
    users: u64,
    users_per_day: Option<f64>,
    target_rel: f64,
) -> Power {
    let mut out = Power {
        mde_abs: None,
        mde_rel: None,
        target_rel,
        users_needed: None,
        days_to_target: None,
    };
    let Some(se) = std_error.filter(|s| s.is_finite() && *s > 0.0) else {
        return out;
    };
    let mde = (Z_95 + Z_80) * se;
    out.mde_abs = Some(mde);
    let Some(control) = control_mean.filter(|c| c.is_finite() && *c != 0.0) else {
        return out;
    };
    out.mde_rel = Some(mde / control.abs());
    let target_abs = target_rel.abs() * control.abs();
    if users == 0 || target_abs.is_nan() || target_abs <= 0.0 {
        return out;
    }
    let needed = users as f64 * (mde / target_abs).powi(2);
    if needed.is_finite() && needed < u64::MAX as f64 {
        out.users_needed = Some(needed.ceil() as u64);
        out.days_to_target = users_per_day
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(|rate| ((needed - users as f64) / rate).max(0.0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_times_the_users_halve_the_mde() {
        let now = power(Some(0.002), Some(0.05), 10_000, Some(1_000.0), 0.05);
        let mde = now.mde_abs.unwrap();
        assert!((mde - 2.801_585_218 * 0.002).abs() < 1e-9);
        assert!((now.mde_rel.unwrap() - mde / 0.05).abs() < 1e-12);
        // Target 0.0025 absolute: (mde / 0.0025)² × 10,000 users.
        let needed = 10_000.0 * (mde / 0.0025f64).powi(2);
        assert_eq!(now.users_needed, Some(needed.ceil() as u64));
        let days = now.days_to_target.unwrap();
        assert!((days - (needed - 10_000.0) / 1_000.0).abs() < 1e-9);
    }

    #[test]
    fn already_detectable_is_zero_days_and_undefined_inputs_give_nones() {
        let big = power(Some(1e-5), Some(0.05), 10_000, Some(100.0), 0.05);
        assert_eq!(big.days_to_target, Some(0.0));
        let none = power(None, Some(0.05), 10, Some(1.0), 0.05);
        assert_eq!((none.mde_abs, none.users_needed), (None, None));
        let zero_control = power(Some(0.01), Some(0.0), 10, Some(1.0), 0.05);
        assert!(zero_control.mde_abs.is_some() && zero_control.mde_rel.is_none());
        let no_rate = power(Some(0.01), Some(0.1), 10, None, 0.05);
        assert!(no_rate.users_needed.is_some() && no_rate.days_to_target.is_none());
    }
}
