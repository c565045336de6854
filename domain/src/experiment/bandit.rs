//! Bandit reweighting: turn per-arm successes and trials into new arm weights.
//!
//! `ThompsonSampling` sets each arm's weight to its posterior probability of
//! being the best arm (Bernoulli metric, Beta(1, 1) prior), then lifts every
//! arm to the experiment's `min_weight` floor so no arm starves of data and
//! the comparison against control stays estimable. The result carries the
//! posteriors and the seed, so a weight history entry can be reproduced.

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};

use super::types::{Experiment, Policy};
use crate::ids::ArmKey;
use crate::ValidationError;

/// Monte Carlo draws per reweight unless told otherwise; the estimate of a
/// probability near 0.5 then has a standard error of 0.005.
pub const DEFAULT_DRAWS: u32 = 10_000;

/// Fewest draws accepted; fewer would make the weights visibly noisy.
pub const MIN_DRAWS: u32 = 10_000;

/// Above this many summation terms the exact two-arm integral gives way to
/// Monte Carlo, bounding the cost (~10 ms) of pathological counts.
const MAX_EXACT_TERMS: f64 = 2_000_000.0;

/// Observed outcome counts of one arm, e.g. clicks and impressions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmStats {
    /// The arm counted.
    pub arm: ArmKey,
    /// Successful trials (clicks, converting users); at most `trials`.
    pub successes: u64,
    /// Trials (impressions, exposed users).
    pub trials: u64,
}

/// One arm's posterior at reweight time, kept in `weight_history.posterior`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PosteriorSnapshot {
    /// The arm described.
    pub arm: ArmKey,
    /// Beta alpha: 1 + successes.
    pub alpha: f64,
    /// Beta beta: 1 + failures.
    pub beta: f64,
    /// Posterior mean of the success rate.
    pub mean: f64,
    /// Posterior probability that this arm has the highest rate.
    pub prob_best: f64,
}

/// How `prob_best` was computed, so a reader knows whether `draws` matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbBestMethod {
    /// Closed-form integral, used for two arms with moderate counts.
    Exact,
    /// Counting winners over `draws` joint posterior samples.
    MonteCarlo,
}

/// Outcome of one reweight: the new weights plus what justified them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reweight {
    /// New weights in the experiment's arm order; they sum to 1.
    pub weights: Vec<(ArmKey, f64)>,
    /// Each arm's posterior, in the same order.
    pub posteriors: Vec<PosteriorSnapshot>,
    /// Monte Carlo draws used (0 when `method` is exact).
    pub draws: u32,
    /// RNG seed, so the Monte Carlo estimate can be reproduced.
    pub seed: u64,
    /// The policy that produced `weights`.
    pub policy: Policy,
    /// How `prob_best` was computed.
    pub method: ProbBestMethod,
}

impl Reweight {
    /// The weights alone, in arm order, as [`Experiment::with_weights`] takes them.
    pub fn weight_values(&self) -> Vec<f64> {
        self.weights.iter().map(|(_, w)| *w).collect()
    }
}

/// Reweight `experiment` from `stats` with [`DEFAULT_DRAWS`]; see [`reweight_with_draws`].
pub fn reweight(
    experiment: &Experiment,
    stats: &[ArmStats],
    seed: u64,
) -> Result<Reweight, ValidationError> {
    reweight_with_draws(experiment, stats, seed, DEFAULT_DRAWS)
}

/// New weights for `experiment` under its policy. `stats` are matched to arms
/// by key; an arm without stats has seen no data yet and keeps the flat prior.
/// `Fixed` keeps the configured weights (posteriors are still reported);
/// `ThompsonSampling` uses P(best) floored at `min_weight`. Deterministic for
/// a given seed (and `rand` version, which fixes `StdRng`'s algorithm).
pub fn reweight_with_draws(
    experiment: &Experiment,
    stats: &[ArmStats],
    seed: u64,
    draws: u32,
) -> Result<Reweight, ValidationError> {
    if draws < MIN_DRAWS {
        return Err(ValidationError::new(
            "draws",
            format!("must be at least {MIN_DRAWS}"),
        ));
    }
    let arms = experiment.arms();
    let mut counts: Vec<Option<(u64, u64)>> = vec![None; arms.len()];
    for (i, s) in stats.iter().enumerate() {
        if s.successes > s.trials {
            return Err(ValidationError::new(
                format!("stats[{i}].successes"),
                "must not exceed trials",
            ));
        }
        let slot = experiment
            .arm_index(&s.arm)
            .and_then(|idx| counts.get_mut(idx))
            .ok_or_else(|| {
                ValidationError::new(
                    format!("stats[{i}].arm"),
                    format!("{} is not an arm of {}", s.arm, experiment.key()),
                )
            })?;
        if slot.is_some() {
            return Err(ValidationError::new(
                format!("stats[{i}].arm"),
                format!("duplicate stats for arm {}", s.arm),
            ));
        }
        *slot = Some((s.successes, s.trials));
    }

    let params: Vec<(f64, f64)> = counts
        .iter()
        .map(|c| {
            let (s, t) = c.unwrap_or((0, 0));
            (1.0 + s as f64, 1.0 + (t - s) as f64)
        })
        .collect();

    let (prob_best, method) = prob_best(&params, seed, draws)?;

    let weights = match experiment.policy() {
        Policy::Fixed => experiment.weights(),
        Policy::ThompsonSampling => apply_floor(&prob_best, experiment.min_weight())?,
    };

    let posteriors = arms
        .iter()
        .zip(&params)
        .zip(&prob_best)
        .map(|((arm, &(alpha, beta)), &p)| PosteriorSnapshot {
            arm: arm.key.clone(),
            alpha,
            beta,
            mean: alpha / (alpha + beta),
            prob_best: p,
        })
        .collect();

    Ok(Reweight {
        weights: arms.iter().map(|a| a.key.clone()).zip(weights).collect(),
        posteriors,
        draws: match method {
            ProbBestMethod::Exact => 0,
            ProbBestMethod::MonteCarlo => draws,
        },
        seed,
        policy: experiment.policy(),
        method,
    })
}

/// P(arm i has the highest rate) under independent Beta(alpha, beta)
/// posteriors: exact for two arms when cheap, Monte Carlo otherwise.
pub fn prob_best(
    params: &[(f64, f64)],
    seed: u64,
    draws: u32,
) -> Result<(Vec<f64>, ProbBestMethod), ValidationError> {
    for (i, &(a, b)) in params.iter().enumerate() {
        if !(a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite()) {
            return Err(ValidationError::new(
                format!("params[{i}]"),
                "Beta parameters must be finite and positive",
            ));
        }
    }
    if let [(a1, b1), (a2, b2)] = *params {
        if let Some(p2) = prob_second_beats_first(a1, b1, a2, b2) {
            return Ok((vec![1.0 - p2, p2], ProbBestMethod::Exact));
        }
    }
    if draws == 0 {
        return Err(ValidationError::new("draws", "must be positive"));
    }
    Ok((
        monte_carlo_prob_best(params, seed, draws)?,
        ProbBestMethod::MonteCarlo,
    ))
}

fn monte_carlo_prob_best(
    params: &[(f64, f64)],
    seed: u64,
    draws: u32,
) -> Result<Vec<f64>, ValidationError> {
    let dists = params
        .iter()
        .enumerate()
        .map(|(i, &(a, b))| {
            Beta::new(a, b).map_err(|e| ValidationError::new(format!("params[{i}]"), e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut wins = vec![0u32; params.len()];
    for _ in 0..draws {
        let mut best = 0;
        let mut best_value = f64::NEG_INFINITY;
        for (i, d) in dists.iter().enumerate() {
            let v = d.sample(&mut rng);
            if v > best_value {
                best = i;
                best_value = v;
            }
        }
        if let Some(w) = wins.get_mut(best) {
            *w += 1;
        }
    }
    Ok(wins
        .iter()
        .map(|&w| f64::from(w) / f64::from(draws))
        .collect())
}

/// P(X2 > X1) for X1 ~ Beta(a1, b1), X2 ~ Beta(a2, b2) with integer
/// parameters, or `None` when the sum would be too long (then sample).
///
/// Uses Evan Miller's closed form, summing over whichever of the four
/// parameters is smallest; the two swaps are `P(X2 > X1) = 1 - P(X1 > X2)`
/// and `X > Y <=> 1 - X < 1 - Y` with `1 - X ~ Beta(b, a)`.
fn prob_second_beats_first(a1: f64, b1: f64, a2: f64, b2: f64) -> Option<f64> {
    let smallest = a1.min(b1).min(a2).min(b2);
    if smallest > MAX_EXACT_TERMS || [a1, b1, a2, b2].iter().any(|x| x.fract() != 0.0) {
        return None;
    }
    let p = if smallest == a2 {
        miller_sum(a1, b1, a2, b2)
    } else if smallest == a1 {
        1.0 - miller_sum(a2, b2, a1, b1)
    } else if smallest == b1 {
        // P(X2 > X1) = P(1-X1 > 1-X2): "second" is 1-X1 ~ Beta(b1, a1).
        miller_sum(b2, a2, b1, a1)
    } else {
        1.0 - miller_sum(b1, a1, b2, a2)
    };
    Some(p.clamp(0.0, 1.0))
}

/// `sum_{i<a2} B(a1+i, b1+b2) / ((b2+i) B(1+i, b2) B(a1, b1))`, i.e.
/// P(Beta(a2,b2) > Beta(a1,b1)), term by term via the ratio of consecutive
/// terms and with rescaling, so large counts neither overflow nor underflow.
fn miller_sum(a1: f64, b1: f64, a2: f64, b2: f64) -> f64 {
    use statrs::function::beta::ln_beta;
    // The first term is B(a1, b1+b2) / B(a1, b1), as b2 * B(1, b2) = 1.
    let mut log_scale = ln_beta(a1, b1 + b2) - ln_beta(a1, b1);
    let mut term = 1.0;
    let mut sum = 0.0;
    let n = a2 as u64;
    for i in 0..n {
        sum += term;
        let x = i as f64;
        term *= (a1 + x) * (b2 + x) / ((a1 + b1 + b2 + x) * (x + 1.0));
        if term > 1e100 {
            term *= 1e-100;
            sum *= 1e-100;
            log_scale += 100.0 * std::f64::consts::LN_10;
        }
    }
    if sum <= 0.0 {
        return 0.0;
    }
    (log_scale + sum.ln()).exp()
}

/// Lift every weight to at least `floor` and scale the others to fill the
/// rest, so the result sums to 1. Arms pushed to the floor stay there and the
/// rest are rescaled until no rescaled arm falls below the floor: a single
/// clip-and-renormalise pass could push a previously fine arm under it.
pub fn apply_floor(weights: &[f64], floor: f64) -> Result<Vec<f64>, ValidationError> {
    let n = weights.len();
    if n == 0 {
        return Err(ValidationError::new("weights", "must not be empty"));
    }
    if !(floor >= 0.0 && floor * n as f64 <= 1.0 + 1e-12) {
        return Err(ValidationError::new(
            "min_weight",
            format!("must be in [0, 1/{n}]"),
        ));
    }
    if let Some(i) = weights.iter().position(|w| !(w.is_finite() && *w >= 0.0)) {
        return Err(ValidationError::new(
            format!("weights[{i}]"),
            "must be a finite, non-negative number",
        ));
    }
    let mut out = weights.to_vec();
    let mut pinned = vec![false; n];
    // Each round pins at least one more arm or stops, so n rounds suffice.
    for _ in 0..=n {
        let n_pinned = pinned.iter().filter(|&&p| p).count();
        let free = n - n_pinned;
        if free == 0 {
            break;
        }
        let remaining = (1.0 - floor * n_pinned as f64).max(0.0);
        let free_sum: f64 = out
            .iter()
            .zip(&pinned)
            .filter(|(_, &p)| !p)
            .map(|(w, _)| w)
            .sum();
        for (w, &p) in out.iter_mut().zip(&pinned) {
            if !p {
                *w = if free_sum > 0.0 {
                    *w / free_sum * remaining
                } else {
                    remaining / free as f64
                };
            }
        }
        let mut changed = false;
        for (w, p) in out.iter_mut().zip(pinned.iter_mut()) {
            if !*p && *w < floor {
                *w = floor;
                *p = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::types::tests::spec_with;
    use rand_distr::Binomial;

    fn thompson(weights: &[f64], min_weight: f64) -> Experiment {
        let mut s = spec_with("bandit", weights);
        s.min_weight = min_weight;
        Experiment::new(s).unwrap()
    }

    fn stats(e: &Experiment, counts: &[(u64, u64)]) -> Vec<ArmStats> {
        e.arms()
            .iter()
            .zip(counts)
            .map(|(a, &(successes, trials))| ArmStats {
                arm: a.key.clone(),
                successes,
                trials,
            })
            .collect()
    }

    /// Serve `n` impressions split by `weights` (multinomial) and count
    /// successes at the true `rates`; returns per-arm (successes, trials).
    fn simulate_batch(rng: &mut StdRng, n: u64, weights: &[f64], rates: &[f64]) -> Vec<(u64, u64)> {
        let mut left = n;
        let mut mass_left = 1.0;
        let mut out = Vec::with_capacity(weights.len());
        for (i, (&w, &p)) in weights.iter().zip(rates).enumerate() {
            let trials = if i + 1 == weights.len() || mass_left <= 0.0 {
                left
            } else {
                let q = (w / mass_left).clamp(0.0, 1.0);
                Binomial::new(left, q).unwrap().sample(rng)
            };
            left -= trials;
            mass_left -= w;
            let successes = Binomial::new(trials, p).unwrap().sample(rng);
            out.push((successes, trials));
        }
        out
    }

    #[test]
    fn fixed_policy_keeps_configured_weights() {
        let mut s = spec_with("fixed", &[0.2, 0.3, 0.5]);
        s.policy = Policy::Fixed;
        let e = Experiment::new(s).unwrap();
        let r = reweight(&e, &stats(&e, &[(10, 100), (50, 100), (1, 100)]), 1).unwrap();
        assert_eq!(r.weight_values(), vec![0.2, 0.3, 0.5]);
        assert_eq!(r.policy, Policy::Fixed);
        assert!(r.posteriors[1].prob_best > 0.99);
    }

    #[test]
    fn invalid_stats_are_rejected() {
        let e = thompson(&[0.5, 0.5], 0.0);
        let mut s = stats(&e, &[(5, 4), (0, 0)]);
        assert_eq!(reweight(&e, &s, 0).unwrap_err().field, "stats[0].successes");
        s[0].successes = 1;
        s[1].arm = s[0].arm.clone();
        assert_eq!(reweight(&e, &s, 0).unwrap_err().field, "stats[1].arm");
        s[1].arm = ArmKey::parse("nope").unwrap();
        assert_eq!(reweight(&e, &s, 0).unwrap_err().field, "stats[1].arm");
        assert_eq!(
            reweight_with_draws(&e, &[], 0, 10).unwrap_err().field,
            "draws"
        );
    }

    #[test]
    fn missing_stats_mean_flat_prior() {
        let e = thompson(&[0.25, 0.25, 0.5], 0.0);
        let r = reweight(&e, &[], 3).unwrap();
        for (p, w) in r.posteriors.iter().zip(r.weight_values()) {
            assert_eq!((p.alpha, p.beta), (1.0, 1.0));
            assert!((w - 1.0 / 3.0).abs() < 0.02, "{w}");
        }
    }

    #[test]
    fn deterministic_for_a_seed_and_serialisable() {
        let e = thompson(&[0.25, 0.25, 0.5], 0.05);
        let s = stats(&e, &[(30, 1000), (40, 1000), (45, 1000)]);
        let a = reweight(&e, &s, 42).unwrap();
        assert_eq!(a, reweight(&e, &s, 42).unwrap());
        assert_ne!(a.weights, reweight(&e, &s, 43).unwrap().weights);
        assert_eq!(a.method, ProbBestMethod::MonteCarlo);
        assert_eq!((a.draws, a.seed), (DEFAULT_DRAWS, 42));
        let sum: f64 = a.weight_values().iter().sum();
        assert!((sum - 1.0).abs() < 1e-12);
        assert!(e.with_weights(a.weight_values()).is_ok());

        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["policy"], "thompson");
        assert_eq!(json["method"], "monte_carlo");
        assert_eq!(json["posteriors"][2]["alpha"], 46.0);
        assert_eq!(json["weights"][0][0], "arm0");
        let back: Reweight = serde_json::from_value(json).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn exact_two_arm_integral_matches_known_values_and_sampling() {
        // Beta(1,1) vs Beta(1,1): a coin flip. Beta(2,1) has density 2x: P = 2/3.
        assert!((prob_second_beats_first(1.0, 1.0, 1.0, 1.0).unwrap() - 0.5).abs() < 1e-12);
        assert!((prob_second_beats_first(1.0, 1.0, 2.0, 1.0).unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((prob_second_beats_first(2.0, 1.0, 1.0, 1.0).unwrap() - 1.0 / 3.0).abs() < 1e-12);

        let cases = [
            (31.0, 971.0, 41.0, 961.0),
            (501.0, 9501.0, 521.0, 9481.0),
            (900.0, 120.0, 880.0, 140.0),
            (5.0, 3.0, 2.0, 9.0),
            (60_001.0, 1_000_000.0, 60_500.0, 999_501.0),
        ];
        for (a1, b1, a2, b2) in cases {
            let exact = prob_second_beats_first(a1, b1, a2, b2).unwrap();
            let mc = monte_carlo_prob_best(&[(a1, b1), (a2, b2)], 9, 200_000).unwrap()[1];
            // MC standard error <= 0.5 / sqrt(200k) = 0.0011; allow 5 of them.
            assert!(
                (exact - mc).abs() < 0.0056,
                "{a1},{b1},{a2},{b2}: {exact} vs {mc}"
            );
            // Every summation order gives the same answer.
            let swapped = 1.0 - prob_second_beats_first(a2, b2, a1, b1).unwrap();
            assert!((exact - swapped).abs() < 1e-9, "{exact} vs {swapped}");
        }
    }

    #[test]
    fn floor_is_applied_iteratively() {
        let w = apply_floor(&[0.0, 0.04, 0.96], 0.05).unwrap();
        assert_eq!(w[0], 0.05);
        assert_eq!(w[1], 0.05);
        assert!((w[2] - 0.9).abs() < 1e-12);

        // Pinning one arm rescales the rest, which can push another under.
        let w = apply_floor(&[0.0, 0.11, 0.89], 0.1).unwrap();
        assert!(w.iter().all(|&x| x >= 0.1), "{w:?}");
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(w[0], 0.1);

        assert_eq!(apply_floor(&[0.9, 0.1], 0.5).unwrap(), vec![0.5, 0.5]);
        assert_eq!(apply_floor(&[0.0, 0.0], 0.0).unwrap(), vec![0.5, 0.5]);
        assert_eq!(apply_floor(&[0.3, 0.7], 0.0).unwrap(), vec![0.3, 0.7]);
        assert_eq!(
            apply_floor(&[0.5, 0.5], 0.6).unwrap_err().field,
            "min_weight"
        );
        assert_eq!(
            apply_floor(&[0.5, f64::NAN], 0.1).unwrap_err().field,
            "weights[1]"
        );
    }

    /// One simulated experiment: 50 batches of 1,000 impressions served by
    /// the current weights, reweighting after each. Returns the best arm's
    /// final weight and the expected regret (less noisy than realised regret).
    fn run_three_arm_simulation(seed: u64, min_weight: f64) -> (f64, f64) {
        let rates = [0.03, 0.04, 0.05];
        let mut e = thompson(&[1.0 / 3.0; 3], min_weight);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut totals = [(0u64, 0u64); 3];
        let mut regret = 0.0;
        for batch in 0..50 {
            let served = simulate_batch(&mut rng, 1000, &e.weights(), &rates);
            for (t, (s, n)) in totals.iter_mut().zip(&served) {
                t.0 += s;
                t.1 += n;
            }
            regret += served
                .iter()
                .zip(&rates)
                .map(|(&(_, n), &p)| n as f64 * (0.05 - p))
                .sum::<f64>();
            let r = reweight(&e, &stats(&e, &totals), seed * 1000 + batch).unwrap();
            assert!(r.weight_values().iter().all(|&w| w >= min_weight), "{r:?}");
            e = e.with_weights(r.weight_values()).unwrap();
        }
        (e.weights()[2], regret)
    }

    #[test]
    fn thompson_finds_the_best_arm_with_less_regret_than_a_fixed_split() {
        // Over 100 seeds the best arm's weight after 50k impressions had
        // median 0.98 (the cap under a 0.01 floor) but dipped below 0.9 in
        // about 1 run in 100, since Thompson keeps probing a close runner-up.
        // So require it of the median of 5 runs (fails with p < 1e-4), and
        // require every run to beat the fixed split's regret (worst seen: 175).
        let fixed_regret = 50_000.0 * (0.02 + 0.01 + 0.0) / 3.0;
        let mut best_weights = Vec::new();
        for seed in 0..5 {
            let (best, regret) = run_three_arm_simulation(seed, 0.01);
            assert!(
                regret < fixed_regret,
                "seed {seed}: regret {regret} vs fixed {fixed_regret}"
            );
            best_weights.push(best);
        }
        best_weights.sort_by(f64::total_cmp);
        assert!(best_weights[2] >= 0.9, "best arm weights {best_weights:?}");
    }

    #[test]
    fn equal_arms_stay_balanced_on_average() {
        // Under equal rates P(best) is roughly uniform per run (sd ~0.29), so
        // the mean of 1,000 runs has sd ~0.009 (and <= 0.5/sqrt(1000) = 0.016
        // whatever the spread): +-0.05 is over 3 worst-case sds.
        let runs = 1000;
        let mut total = 0.0;
        for seed in 0..runs {
            let mut e = thompson(&[0.5, 0.5], 0.05);
            let mut rng = StdRng::seed_from_u64(seed);
            let mut totals = [(0u64, 0u64); 2];
            for batch in 0..10 {
                let served = simulate_batch(&mut rng, 1000, &e.weights(), &[0.05, 0.05]);
                for (t, (s, n)) in totals.iter_mut().zip(&served) {
                    t.0 += s;
                    t.1 += n;
                }
                let r = reweight(&e, &stats(&e, &totals), seed * 100 + batch).unwrap();
                assert_eq!(r.method, ProbBestMethod::Exact);
                e = e.with_weights(r.weight_values()).unwrap();
            }
            total += e.weights()[0];
        }
        let mean = total / runs as f64;
        // A bias towards the first (or second) arm would show up here.
        assert!((mean - 0.5).abs() < 0.05, "mean weight of arm A {mean}");
    }
}
