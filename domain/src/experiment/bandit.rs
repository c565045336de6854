//! Bandit reweighting: turn what each arm's users did into new arm weights.
//!
//! The unit is the user, not the impression: one user's impressions are
//! correlated (a heavy user who likes an arm clicks on many of its lists), so
//! counting impressions as independent trials makes the posterior far too
//! sure of itself for heavy users. Each arm's posterior is Gaussian around
//! its per-user estimate (the delta-method ratio for CTR, the share of users
//! for conversion) with that estimate's sampling variance, under a flat prior.
//!
//! The estimates are cohort-consistent, as the results are: weights that
//! already moved give the arms users of different ages, so each arm's mean is
//! taken within each period's cohort of first exposure and the periods are
//! then averaged with the same weights for every arm. Every arm is thus
//! judged on the same mix of cohorts, and a drifting metric cannot favour the
//! arm that got its users late. A period's weight is 1/Σ_a 1/n_ak (n_ak: arm
//! a's users in it), the common weights that make the arms' estimates most
//! precise: weighting by the period's share of all users instead would give a
//! period in which the bandit starved an arm (a few of its users) a full say
//! in that arm's mean, so the arm's posterior would widen as the bandit
//! starved it, and the bandit would keep returning to it.
//!
//! Thompson sampling sets each arm's weight to its posterior probability of
//! being best (or, with top-two sampling, of being one of the best two), then
//! lifts every arm to the experiment's `min_weight` floor. Nothing moves
//! before the burn-in: every arm needs `burn_in_users` users and the
//! experiment `exploration_s` seconds of running. The result carries the
//! posteriors and the seed, so a weight-history entry can be reproduced.

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Beta, Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::types::{Experiment, Policy};
use crate::ids::ArmKey;
use crate::stats::normal::cdf as normal_cdf;
use crate::stats::{estimate, ArmCounts, Metric};
use crate::ValidationError;

/// Monte Carlo draws per reweight unless told otherwise; the estimate of a
/// probability near 0.5 then has a standard error of 0.005.
pub const DEFAULT_DRAWS: u32 = 10_000;

/// Fewest draws accepted; fewer would make the weights visibly noisy.
pub const MIN_DRAWS: u32 = 10_000;

/// A reweight that would move no arm by more than this keeps the current
/// split: Monte Carlo noise alone moves weights by about 0.005, and every real
/// change opens a new weight period (a new cohort that the analysis has to
/// compare on its own), so a change too small to matter is not worth one.
pub const MIN_WEIGHT_CHANGE: f64 = 0.01;

/// Above this many summation terms the exact two-arm Beta integral gives way
/// to Monte Carlo, bounding the cost (~10 ms) of pathological counts.
const MAX_EXACT_TERMS: f64 = 2_000_000.0;

/// What the bandit knows: the users of each arm by cohort of first exposure.
#[derive(Debug, Clone, Copy)]
pub struct BanditEvidence<'a> {
    /// `cohorts[k][a]`: users first exposed in weight period `k` who were
    /// assigned arm `a` (experiment arm order), with their outcome sums.
    pub cohorts: &'a [Vec<ArmCounts>],
    /// Seconds the experiment has been running.
    pub running_s: u64,
}

/// One arm's posterior at reweight time, kept in `weight_history.posterior`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PosteriorSnapshot {
    /// The arm described.
    pub arm: ArmKey,
    /// Users of the arm the estimate rests on.
    pub users: u64,
    /// Posterior mean: the arm's cohort-standardised per-user estimate.
    pub mean: f64,
    /// Posterior standard deviation (the estimate's standard error).
    pub std_error: f64,
    /// Posterior probability that this arm has the highest rate.
    pub prob_best: f64,
}

/// How `prob_best` was computed, so a reader knows whether `draws` matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbBestMethod {
    /// Closed form, used for two arms (and no top-two sampling).
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
    /// Weights followed top-two sampling instead of P(best).
    pub top_two: bool,
    /// Weight periods whose cohorts entered the estimates.
    pub periods_used: usize,
    /// The computed weights moved no arm by [`MIN_WEIGHT_CHANGE`], so the
    /// current split was kept (and no new period begins).
    pub held: bool,
}

impl Reweight {
    /// The weights alone, in arm order, as [`Experiment::with_weights`] takes them.
    pub fn weight_values(&self) -> Vec<f64> {
        self.weights.iter().map(|(_, w)| *w).collect()
    }
}

/// Why the bandit did not move the weights yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BurnIn {
    /// Users of the arm with the fewest.
    pub fewest_users: u64,
    /// Users every arm needs first.
    pub burn_in_users: u32,
    /// Seconds the experiment has run.
    pub running_s: u64,
    /// Seconds it must run first.
    pub exploration_s: u32,
}

/// What a reweighting run decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReweightOutcome {
    /// New weights (possibly [`Reweight::held`]) to record and publish.
    Reweighted(Reweight),
    /// Still in the burn-in: nothing to record.
    BurnIn(BurnIn),
}

/// Reweight `experiment` from `evidence` with [`DEFAULT_DRAWS`]; see [`reweight_with_draws`].
pub fn reweight(
    experiment: &Experiment,
    evidence: BanditEvidence<'_>,
    seed: u64,
) -> Result<ReweightOutcome, ValidationError> {
    reweight_with_draws(experiment, evidence, seed, DEFAULT_DRAWS)
}

/// New weights for `experiment` under its policy.
///
/// `Fixed` keeps the configured weights (posteriors are still reported);
/// `ThompsonSampling` waits out the burn-in, then uses P(best) (or the top-two
/// share) floored at `min_weight`, keeping the current split when no arm
/// would move by [`MIN_WEIGHT_CHANGE`]. Deterministic for a given seed (and
/// `rand` version, which fixes `StdRng`'s algorithm).
pub fn reweight_with_draws(
    experiment: &Experiment,
    evidence: BanditEvidence<'_>,
    seed: u64,
    draws: u32,
) -> Result<ReweightOutcome, ValidationError> {
    if draws < MIN_DRAWS {
        return Err(ValidationError::new(
            "draws",
            format!("must be at least {MIN_DRAWS}"),
        ));
    }
    let arms = experiment.arms();
    for (k, row) in evidence.cohorts.iter().enumerate() {
        if row.len() != arms.len() {
            return Err(ValidationError::new(
                format!("cohorts[{k}]"),
                format!("has {} arms, the experiment {}", row.len(), arms.len()),
            ));
        }
    }
    let users: Vec<u64> = (0..arms.len())
        .map(|a| evidence.cohorts.iter().map(|row| row[a].users).sum())
        .collect();
    let settings = experiment.bandit();
    let fewest_users = users.iter().copied().min().unwrap_or(0);
    if experiment.policy() == Policy::ThompsonSampling
        && (fewest_users < u64::from(settings.burn_in_users)
            || evidence.running_s < u64::from(settings.exploration_s))
    {
        return Ok(ReweightOutcome::BurnIn(BurnIn {
            fewest_users,
            burn_in_users: settings.burn_in_users,
            running_s: evidence.running_s,
            exploration_s: settings.exploration_s,
        }));
    }

    let metric = Metric::from(experiment.metric());
    let (posteriors, periods_used) = cohort_posteriors(metric, evidence.cohorts)?;
    let means: Vec<(f64, f64)> = posteriors.iter().map(|p| (p.0, p.1)).collect();
    let top_two = settings.top_two && arms.len() > 2;
    let (prob_best, shares, method) = gaussian_prob_best(&means, top_two, seed, draws)?;

    let current = experiment.weights();
    let (weights, held) = match experiment.policy() {
        Policy::Fixed => (current, false),
        Policy::ThompsonSampling => {
            let proposed = apply_floor(&shares, experiment.min_weight())?;
            let moved = proposed
                .iter()
                .zip(&current)
                .any(|(p, c)| (p - c).abs() >= MIN_WEIGHT_CHANGE);
            if moved {
                (proposed, false)
            } else {
                (current, true)
            }
        }
    };

    let posteriors = arms
        .iter()
        .zip(&posteriors)
        .zip(&prob_best)
        .zip(&users)
        .map(
            |(((arm, &(mean, variance)), &p), &users)| PosteriorSnapshot {
                arm: arm.key.clone(),
                users,
                mean,
                std_error: variance.sqrt(),
                prob_best: p,
            },
        )
        .collect();

    Ok(ReweightOutcome::Reweighted(Reweight {
        weights: arms.iter().map(|a| a.key.clone()).zip(weights).collect(),
        posteriors,
        draws: match method {
            ProbBestMethod::Exact => 0,
            ProbBestMethod::MonteCarlo => draws,
        },
        seed,
        policy: experiment.policy(),
        method,
        top_two,
        periods_used,
        held,
    }))
}

/// Each arm's (mean, variance), standardised over the cohorts: within period
/// k the arm's per-user estimate m_ak with variance v_ak; averaged with
/// w_k = 1/Σ_a 1/n_ak (the same for every arm; n_ak the arm's users in the
/// period) over the periods in which every arm has an estimate:
/// m_a = Σ w_k m_ak / Σ w_k, v_a = Σ w_k² v_ak / (Σ w_k)². When no period has
/// every arm (a tiny experiment), each arm's cohorts are merged instead.
fn cohort_posteriors(
    metric: Metric,
    cohorts: &[Vec<ArmCounts>],
) -> Result<(Vec<(f64, f64)>, usize), ValidationError> {
    let arms = cohorts.first().map_or(0, Vec::len);
    let mut sums = vec![(0.0f64, 0.0f64); arms];
    let mut weight_sum = 0.0;
    let mut used = 0;
    'periods: for (k, row) in cohorts.iter().enumerate() {
        let mut cell = Vec::with_capacity(arms);
        for (a, counts) in row.iter().enumerate() {
            let e = estimate(metric, counts).map_err(|e| e.within(format!("cohorts[{k}][{a}]")))?;
            match (e.mean, e.variance) {
                (Some(m), Some(v)) if counts.users >= 2 => {
                    cell.push((m, v.max(variance_floor(metric, counts))))
                }
                _ => continue 'periods,
            }
        }
        // Every arm has ≥ 2 users here. Σ_k w_k² Σ_a 1/n_ak, the arms'
        // summed variance at equal per-user variance, is least for these w_k.
        let w = 1.0 / row.iter().map(|c| 1.0 / c.users as f64).sum::<f64>();
        for (s, (m, v)) in sums.iter_mut().zip(cell) {
            s.0 += w * m;
            s.1 += w * w * v;
        }
        weight_sum += w;
        used += 1;
    }
    if used > 0 && weight_sum > 0.0 {
        let out = sums
            .into_iter()
            .map(|(wm, w2v)| (wm / weight_sum, w2v / (weight_sum * weight_sum)))
            .collect();
        return Ok((out, used));
    }
    let mut out = Vec::with_capacity(arms);
    for a in 0..arms {
        let merged = cohorts
            .iter()
            .fold(ArmCounts::default(), |acc, row| acc.merged(&row[a]));
        let e = estimate(metric, &merged).map_err(|e| e.within(format!("arms[{a}]")))?;
        let floor = variance_floor(metric, &merged);
        out.push((
            e.mean.unwrap_or(0.0),
            e.variance.unwrap_or(f64::INFINITY).max(floor),
        ));
    }
    Ok((out, 0))
}

/// The least variance an arm's posterior gets: that of a rate estimated from
/// its trials with one pseudo-success and one pseudo-failure. A zero sample
/// variance (no clicks yet, or every user alike) would otherwise make the
/// posterior a point and Thompson sampling certain.
fn variance_floor(metric: Metric, counts: &ArmCounts) -> f64 {
    let (successes, trials) = match metric {
        Metric::Ctr => (counts.clicks, counts.impressions),
        Metric::Conversion => (counts.conversions, counts.users),
    };
    let n = trials.max(1) as f64;
    let p = (successes as f64 + 1.0) / (n + 2.0);
    p * (1.0 - p) / n
}

/// P(best) per arm under independent Gaussian posteriors (mean, variance) and
/// the shares Thompson sampling assigns: P(best), or with `top_two` the share
/// of draws in which the arm is first or second (each counted half).
fn gaussian_prob_best(
    posteriors: &[(f64, f64)],
    top_two: bool,
    seed: u64,
    draws: u32,
) -> Result<(Vec<f64>, Vec<f64>, ProbBestMethod), ValidationError> {
    for (i, &(m, v)) in posteriors.iter().enumerate() {
        if !(m.is_finite() && v >= 0.0 && !v.is_nan()) {
            return Err(ValidationError::new(
                format!("posteriors[{i}]"),
                "mean must be finite and variance non-negative",
            ));
        }
    }
    if let ([(m1, v1), (m2, v2)], false) = (posteriors, top_two) {
        let sd = (v1 + v2).sqrt();
        let p2 = if sd.is_finite() && sd > 0.0 {
            normal_cdf((m2 - m1) / sd)
        } else if sd.is_infinite() {
            0.5
        } else {
            match m2.total_cmp(m1) {
                std::cmp::Ordering::Greater => 1.0,
                std::cmp::Ordering::Less => 0.0,
                std::cmp::Ordering::Equal => 0.5,
            }
        };
        let p = vec![1.0 - p2, p2];
        return Ok((p.clone(), p, ProbBestMethod::Exact));
    }
    let n = posteriors.len();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut first = vec![0u32; n];
    let mut second = vec![0u32; n];
    let sds: Vec<f64> = posteriors
        .iter()
        .map(|&(_, v)| if v.is_finite() { v.sqrt() } else { 1e6 })
        .collect();
    for _ in 0..draws {
        let (mut best, mut best_v) = (usize::MAX, f64::NEG_INFINITY);
        let (mut runner, mut runner_v) = (usize::MAX, f64::NEG_INFINITY);
        for (i, (&(m, _), &sd)) in posteriors.iter().zip(&sds).enumerate() {
            let z: f64 = StandardNormal.sample(&mut rng);
            let x = m + sd * z;
            if x > best_v {
                (runner, runner_v) = (best, best_v);
                (best, best_v) = (i, x);
            } else if x > runner_v {
                (runner, runner_v) = (i, x);
            }
        }
        if let Some(c) = first.get_mut(best) {
            *c += 1;
        }
        if let Some(c) = second.get_mut(runner) {
            *c += 1;
        }
    }
    let d = f64::from(draws);
    let prob_best: Vec<f64> = first.iter().map(|&c| f64::from(c) / d).collect();
    let shares = if top_two {
        first
            .iter()
            .zip(&second)
            .map(|(&f, &s)| (f64::from(f) + f64::from(s)) / (2.0 * d))
            .collect()
    } else {
        prob_best.clone()
    };
    Ok((prob_best, shares, ProbBestMethod::MonteCarlo))
}

/// Impression-level Thompson sampling, the policy Marquee used before the
/// bandit learned from users: each arm a Beta(1 + successes, 1 + failures)
/// posterior over impressions as independent trials. Kept as the baseline the
/// simulations measure the user-level bandit against.
/// P(arm i has the highest rate) under independent Beta(alpha, beta)
/// posteriors: exact for two arms when cheap, Monte Carlo otherwise.
pub fn beta_prob_best(
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
    use crate::experiment::BanditSettings;

    fn thompson(weights: &[f64], min_weight: f64, bandit: BanditSettings) -> Experiment {
        let mut s = spec_with("bandit", weights);
        s.min_weight = min_weight;
        s.bandit = bandit;
        Experiment::new(s).unwrap()
    }

    fn no_burn_in() -> BanditSettings {
        BanditSettings {
            burn_in_users: 0,
            exploration_s: 0,
            top_two: false,
        }
    }

    /// `users` users with 10 impressions each, `clickers` of whom clicked once.
    fn cell(users: u64, clickers: u64) -> ArmCounts {
        ArmCounts {
            users,
            impressions: 10 * users,
            clicks: clickers,
            conversions: clickers,
            sum_clicks_sq: clickers,
            sum_impressions_sq: 100 * users,
            sum_clicks_impressions: 10 * clickers,
        }
    }

    fn evidence(cohorts: &[Vec<ArmCounts>], running_s: u64) -> BanditEvidence<'_> {
        BanditEvidence { cohorts, running_s }
    }

    fn reweighted(outcome: ReweightOutcome) -> Reweight {
        match outcome {
            ReweightOutcome::Reweighted(r) => r,
            ReweightOutcome::BurnIn(b) => panic!("still in burn-in: {b:?}"),
        }
    }

    #[test]
    fn fixed_policy_keeps_configured_weights() {
        let mut s = spec_with("fixed", &[0.2, 0.3, 0.5]);
        s.policy = Policy::Fixed;
        let e = Experiment::new(s).unwrap();
        let cohorts = [vec![cell(1000, 100), cell(1000, 500), cell(1000, 10)]];
        let r = reweighted(reweight(&e, evidence(&cohorts, 0), 1).unwrap());
        assert_eq!(r.weight_values(), vec![0.2, 0.3, 0.5]);
        assert_eq!(r.policy, Policy::Fixed);
        assert!(r.posteriors[1].prob_best > 0.99);
    }

    #[test]
    fn nothing_moves_before_the_burn_in() {
        let settings = BanditSettings {
            burn_in_users: 100,
            exploration_s: 600,
            top_two: false,
        };
        let e = thompson(&[0.5, 0.5], 0.05, settings);
        let few = [vec![cell(99, 1), cell(5000, 900)]];
        match reweight(&e, evidence(&few, 10_000), 1).unwrap() {
            ReweightOutcome::BurnIn(b) => assert_eq!((b.fewest_users, b.burn_in_users), (99, 100)),
            other => panic!("{other:?}"),
        }
        let enough = [vec![cell(100, 1), cell(5000, 900)]];
        match reweight(&e, evidence(&enough, 599), 1).unwrap() {
            ReweightOutcome::BurnIn(b) => assert_eq!((b.running_s, b.exploration_s), (599, 600)),
            other => panic!("{other:?}"),
        }
        let r = reweighted(reweight(&e, evidence(&enough, 600), 1).unwrap());
        assert!(r.weight_values()[1] > 0.9, "{r:?}");
    }

    #[test]
    fn invalid_evidence_is_rejected() {
        let e = thompson(&[0.5, 0.5], 0.0, no_burn_in());
        let wrong_arms = [vec![cell(10, 1)]];
        assert_eq!(
            reweight(&e, evidence(&wrong_arms, 0), 0).unwrap_err().field,
            "cohorts[0]"
        );
        let impossible = [vec![
            cell(10, 1),
            ArmCounts {
                users: 0,
                clicks: 3,
                ..cell(0, 0)
            },
        ]];
        assert!(reweight(&e, evidence(&impossible, 0), 0).is_err());
        let fine = [vec![cell(10, 1), cell(10, 1)]];
        assert_eq!(
            reweight_with_draws(&e, evidence(&fine, 0), 0, 10)
                .unwrap_err()
                .field,
            "draws"
        );
    }

    #[test]
    fn deterministic_for_a_seed_and_serialisable() {
        let e = thompson(&[0.25, 0.25, 0.5], 0.05, no_burn_in());
        let cohorts = [vec![cell(1000, 30), cell(1000, 40), cell(1000, 45)]];
        let a = reweighted(reweight(&e, evidence(&cohorts, 0), 42).unwrap());
        assert_eq!(
            a,
            reweighted(reweight(&e, evidence(&cohorts, 0), 42).unwrap())
        );
        assert_ne!(
            a.posteriors[2].prob_best,
            reweighted(reweight(&e, evidence(&cohorts, 0), 43).unwrap()).posteriors[2].prob_best
        );
        assert_eq!(a.method, ProbBestMethod::MonteCarlo);
        assert_eq!((a.draws, a.seed, a.periods_used), (DEFAULT_DRAWS, 42, 1));
        let sum: f64 = a.weight_values().iter().sum();
        assert!((sum - 1.0).abs() < 1e-12);
        assert!(e.with_weights(a.weight_values()).is_ok());

        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["policy"], "thompson");
        assert_eq!(json["method"], "monte_carlo");
        assert_eq!(json["posteriors"][2]["users"], 1000);
        assert_eq!(json["weights"][0][0], "arm0");
        let back: Reweight = serde_json::from_value(json).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn two_arms_use_the_exact_gaussian_probability() {
        let e = thompson(&[0.5, 0.5], 0.0, no_burn_in());
        let cohorts = [vec![cell(1000, 100), cell(1000, 120)]];
        let r = reweighted(reweight(&e, evidence(&cohorts, 0), 7).unwrap());
        assert_eq!(r.method, ProbBestMethod::Exact);
        let (m1, s1) = (r.posteriors[0].mean, r.posteriors[0].std_error);
        let (m2, s2) = (r.posteriors[1].mean, r.posteriors[1].std_error);
        let expected = normal_cdf((m2 - m1) / (s1 * s1 + s2 * s2).sqrt());
        assert!((r.posteriors[1].prob_best - expected).abs() < 1e-12);
        // Monte Carlo agrees with the closed form.
        let (mc, _, _) = gaussian_prob_best(
            &[(m1, s1 * s1), (m2, s2 * s2), (-1.0, 1e-12)],
            false,
            3,
            200_000,
        )
        .unwrap();
        assert!((mc[1] - expected).abs() < 0.006, "{mc:?} vs {expected}");
    }

    #[test]
    fn the_posterior_is_per_user_so_heavy_users_do_not_make_it_overconfident() {
        // Arm 1: 10 users, each with 1,000 impressions; 1 user clicks on all
        // of them. Per impression that is 1,000 of 10,000; per user, one user
        // in ten is a clicker and the estimate is as unsure as that.
        let heavy = ArmCounts {
            users: 10,
            impressions: 10_000,
            clicks: 1_000,
            conversions: 1,
            sum_clicks_sq: 1_000_000,
            sum_impressions_sq: 10_000_000,
            sum_clicks_impressions: 1_000_000,
        };
        let e = thompson(&[0.5, 0.5], 0.0, no_burn_in());
        let cohorts = [vec![cell(1000, 800), heavy]];
        let r = reweighted(reweight(&e, evidence(&cohorts, 0), 7).unwrap());
        let per_user_se = r.posteriors[1].std_error;
        let per_impression_se = (0.1f64 * 0.9 / 10_000.0).sqrt();
        assert!(per_user_se > 10.0 * per_impression_se, "{per_user_se}");
    }

    #[test]
    fn cohorts_standardise_away_a_drift_that_pooling_would_credit_to_the_late_arm() {
        // Both arms convert 10% of early users and 30% of late ones; arm 1
        // got most of its users late. Pooled, arm 1 looks far better (28% vs
        // 12%); within cohorts the arms are identical.
        let cohorts = [
            vec![cell(9000, 900), cell(1000, 100)],
            vec![cell(1000, 300), cell(9000, 2700)],
        ];
        let e = thompson(&[0.5, 0.5], 0.0, no_burn_in());
        let r = reweighted(reweight(&e, evidence(&cohorts, 0), 7).unwrap());
        assert!((r.posteriors[0].mean - r.posteriors[1].mean).abs() < 1e-12);
        assert!((r.posteriors[1].prob_best - 0.5).abs() < 1e-9);
        assert_eq!(r.periods_used, 2);
    }

    #[test]
    fn a_change_below_the_threshold_keeps_the_split() {
        let e = thompson(&[0.5, 0.5], 0.0, no_burn_in());
        let cohorts = [vec![cell(100_000, 10_000), cell(100_000, 10_001)]];
        let r = reweighted(reweight(&e, evidence(&cohorts, 0), 7).unwrap());
        assert!(r.held);
        assert_eq!(r.weight_values(), vec![0.5, 0.5]);
    }

    #[test]
    fn top_two_keeps_measuring_the_runner_up() {
        let mut settings = no_burn_in();
        let cohorts = [vec![cell(5000, 200), cell(5000, 300), cell(5000, 320)]];
        let plain = thompson(&[0.4, 0.3, 0.3], 0.0, settings);
        let p = reweighted(reweight(&plain, evidence(&cohorts, 0), 9).unwrap());
        settings.top_two = true;
        let tt = thompson(&[0.4, 0.3, 0.3], 0.0, settings);
        let t = reweighted(reweight(&tt, evidence(&cohorts, 0), 9).unwrap());
        assert!(t.top_two && !p.top_two);
        // Arm 0 is far behind in both; top-two gives the two leaders about half each.
        assert!(t.weight_values()[0] < 0.01, "{t:?}");
        assert!((t.weight_values()[1] + t.weight_values()[2] - 1.0).abs() < 0.01);
        assert!(
            t.weight_values()[1] > p.weight_values()[1],
            "{t:?} vs {p:?}"
        );
        // The reported P(best) is the same quantity either way.
        assert!((t.posteriors[2].prob_best - p.posteriors[2].prob_best).abs() < 0.02);
    }

    #[test]
    fn floor_caps_the_best_arm() {
        // With three arms and a 0.05 floor the best arm gets at most 0.90.
        let e = thompson(&[1.0 / 3.0; 3], 0.05, no_burn_in());
        let cohorts = [vec![
            cell(10_000, 100),
            cell(10_000, 200),
            cell(10_000, 2000),
        ]];
        let r = reweighted(reweight(&e, evidence(&cohorts, 0), 1).unwrap());
        let w = r.weight_values();
        assert_eq!(w[0], 0.05);
        assert_eq!(w[1], 0.05);
        assert!((w[2] - 0.9).abs() < 1e-12);
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
}
