//! A/A simulations: with no true difference, a test at α = 0.05 must reject
//! about 5% of the time, or every p-value on the results page is miscalibrated.
//!
//! 2,000 seeded experiments per test keep the false-positive rate's standard
//! error near 0.5 percentage points, so [3.5%, 6.5%] is roughly ±3σ.

use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Beta, Binomial, Distribution, Poisson};

use super::*;

const EXPERIMENTS: usize = 2_000;
const ALPHA: f64 = 0.05;

fn assert_calibrated(rejections: usize, what: &str) {
    let rate = rejections as f64 / EXPERIMENTS as f64;
    // Shown with --nocapture, so drift towards a bound is visible before it fails.
    eprintln!("{what}: A/A false-positive rate {rate:.4}");
    assert!(
        (0.035..=0.065).contains(&rate),
        "{what}: A/A false-positive rate {rate:.4} outside [0.035, 0.065]"
    );
}

#[test]
fn stats_aa_conversion_false_positive_rate() {
    let mut rng = StdRng::seed_from_u64(7);
    let users = 1_000u64;
    let draws = Binomial::new(users, 0.1).unwrap();
    let mut rejections = 0;
    for _ in 0..EXPERIMENTS {
        let arm = |rng: &mut StdRng| ArmCounts {
            users,
            conversions: draws.sample(rng),
            ..ArmCounts::default()
        };
        let c = estimate_conversion(&arm(&mut rng)).unwrap();
        let t = estimate_conversion(&arm(&mut rng)).unwrap();
        if compare(&c, &t).p_value.unwrap() < ALPHA {
            rejections += 1;
        }
    }
    assert_calibrated(rejections, "conversion");
}

/// One arm of heterogeneous users: impressions 1 + Poisson(4), each user with
/// their own CTR from Beta(2, 18), so clicks are over-dispersed and a naive
/// per-impression binomial variance would be too small.
fn ctr_arm(rng: &mut StdRng, users: u64) -> ArmCounts {
    let imps_dist = Poisson::new(4.0).unwrap();
    let ctr_dist = Beta::new(2.0, 18.0).unwrap();
    let mut c = ArmCounts {
        users,
        ..ArmCounts::default()
    };
    for _ in 0..users {
        let imps = 1 + imps_dist.sample(rng) as u64;
        let p: f64 = ctr_dist.sample(rng);
        let clicks = (0..imps).filter(|_| rng.random::<f64>() < p).count() as u64;
        c.impressions += imps;
        c.clicks += clicks;
        c.sum_impressions_sq += imps * imps;
        c.sum_clicks_sq += clicks * clicks;
        c.sum_clicks_impressions += clicks * imps;
    }
    c
}

#[test]
fn stats_aa_ctr_delta_method_false_positive_rate() {
    let mut rng = StdRng::seed_from_u64(11);
    let mut rejections = 0;
    for _ in 0..EXPERIMENTS {
        let c = estimate_ctr(&ctr_arm(&mut rng, 1_000)).unwrap();
        let t = estimate_ctr(&ctr_arm(&mut rng, 1_000)).unwrap();
        if compare(&c, &t).p_value.unwrap() < ALPHA {
            rejections += 1;
        }
    }
    assert_calibrated(rejections, "ctr (delta method)");
}

#[test]
fn stats_aa_stratified_with_changing_weights_false_positive_rate() {
    // Weights move 50/50 → 90/10 while the base rate climbs; both arms equal.
    let shares = [0.5, 0.7, 0.8, 0.9];
    let rates = [0.05, 0.08, 0.11, 0.14];
    let per_period = 4_000u64;
    let mut rng = StdRng::seed_from_u64(13);
    let mut rejections_iv = 0;
    let mut rejections_users = 0;
    let mut rejections_pooled = 0;
    for _ in 0..EXPERIMENTS {
        let periods: Vec<PeriodCounts> = shares
            .iter()
            .zip(rates)
            .map(|(&share, rate)| {
                let nt = (per_period as f64 * share).round() as u64;
                let nc = per_period - nt;
                let mut arm = |n: u64| ArmCounts {
                    users: n,
                    conversions: Binomial::new(n, rate).unwrap().sample(&mut rng),
                    ..ArmCounts::default()
                };
                PeriodCounts {
                    control: arm(nc),
                    treatment: arm(nt),
                }
            })
            .collect();
        let iv = stratified_lift(Metric::Conversion, &periods, Weighting::InverseVariance).unwrap();
        let uw = stratified_lift(Metric::Conversion, &periods, Weighting::Users).unwrap();
        rejections_iv += usize::from(iv.p_value.unwrap() < ALPHA);
        rejections_users += usize::from(uw.p_value.unwrap() < ALPHA);

        let (c, t) = periods
            .iter()
            .fold((ArmCounts::default(), ArmCounts::default()), |(c, t), p| {
                (c.merged(&p.control), t.merged(&p.treatment))
            });
        let naive = compare(
            &estimate_conversion(&c).unwrap(),
            &estimate_conversion(&t).unwrap(),
        );
        rejections_pooled += usize::from(naive.p_value.unwrap() < ALPHA);
    }
    assert_calibrated(rejections_iv, "stratified inverse-variance");
    assert_calibrated(rejections_users, "stratified user-weighted");
    eprintln!(
        "pooled: A/A false-positive rate {:.4}",
        rejections_pooled as f64 / EXPERIMENTS as f64
    );
    assert!(
        rejections_pooled > EXPERIMENTS / 2,
        "pooling should be badly biased here, rejected only {rejections_pooled}"
    );
}
