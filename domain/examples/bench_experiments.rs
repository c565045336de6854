//! Throughput of the experiment hot paths, to check they stay far from being
//! the api's bottleneck: assignment (GrowthBook hash v2 + bucket choice) per
//! core against a raw FNV-1a baseline, and one Thompson reweight.
//!
//! Run with `cargo run --release --example bench_experiments`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use domain::experiment::assignment::hash_fnv32a;
use domain::experiment::{
    assign, reweight, reweight_with_draws, Arm, BanditEvidence, BanditSettings, Experiment,
    ExperimentSpec, ExperimentStatus, HashVersion, Metric, Policy, ReweightOutcome,
};
use domain::ids::{AlgorithmKey, ArmKey, ExperimentKey, UserId};
use domain::stats::ArmCounts;

/// Distinct ids; cycled so 20M assignments fit in memory (the ids, ~40 MB,
/// exceed the caches either way).
const DISTINCT_IDS: usize = 1_000_000;
const PASSES: usize = 20;

fn experiment(weights: &[f64], policy: Policy) -> Result<Experiment, Box<dyn std::error::Error>> {
    let arms = weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| {
            Ok(Arm {
                key: ArmKey::parse(format!("arm{i}"))?,
                algorithm: AlgorithmKey::parse("popularity")?,
                weight,
                is_control: i == 0,
            })
        })
        .collect::<Result<Vec<_>, domain::ValidationError>>()?;
    Ok(Experiment::new(ExperimentSpec {
        key: ExperimentKey::parse("home")?,
        salt: "home-2024-06-recs".to_string(),
        hash_version: HashVersion::V2,
        coverage: 1.0,
        status: ExperimentStatus::Running,
        policy,
        metric: Metric::Ctr,
        min_weight: 0.01,
        reweight_interval_s: 300,
        bandit: BanditSettings::default(),
        outcome_window_days: None,
        analysis: Default::default(),
        arms,
    })?)
}

/// CPU time of this (single-threaded) process from `/proc/self/stat`, at
/// clock-tick resolution; wall time alone is misleading on a shared machine.
fn cpu_time() -> Option<Duration> {
    const TICKS_PER_SECOND: f64 = 100.0; // USER_HZ, fixed at 100 on Linux
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) / TICKS_PER_SECOND))
}

/// Wall and CPU time of one measured section.
struct Timing {
    ops: usize,
    wall: Duration,
    cpu: Option<Duration>,
}

impl Timing {
    fn measure(ops: usize, f: impl FnOnce()) -> Self {
        let (cpu0, wall0) = (cpu_time(), Instant::now());
        f();
        let wall = wall0.elapsed();
        let cpu = cpu_time().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
        Self { ops, wall, cpu }
    }

    /// Prefer CPU time: it excludes time the scheduler gave to other processes.
    fn seconds(&self) -> f64 {
        match self.cpu {
            Some(c) if c.as_secs_f64() > 0.2 => c.as_secs_f64(),
            _ => self.wall.as_secs_f64(),
        }
    }

    fn report(&self, label: &str) {
        let rate = self.ops as f64 / self.seconds();
        println!(
            "{label:<48} {:>7.1} M/s ({:>5.1} ns/op) per CPU-second; wall {:>7.1} M/s",
            rate / 1e6,
            1e9 / rate,
            self.ops as f64 / self.wall.as_secs_f64() / 1e6,
        );
    }
}

/// Run `f` over every id `PASSES` times.
fn time_over_ids(ids: &[String], mut f: impl FnMut(&str) -> u64) -> (Timing, u64) {
    let mut acc = 0u64;
    let timing = Timing::measure(ids.len() * PASSES, || {
        for _ in 0..PASSES {
            for id in ids {
                acc = acc.wrapping_add(f(black_box(id.as_str())));
            }
        }
    });
    (timing, acc)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let exp = experiment(&[0.2, 0.3, 0.5], Policy::Fixed)?;
    let ids: Vec<String> = (0..DISTINCT_IDS).map(|i| format!("user-{i:010}")).collect();

    // Warm-up so page faults and frequency ramp-up hit neither measurement.
    let _ = time_over_ids(&ids[..100_000], |id| u64::from(hash_fnv32a(id)));

    let (base, base_acc) = time_over_ids(&ids, |id| u64::from(hash_fnv32a(id)));
    let (hot, assign_acc) = time_over_ids(&ids, |id| {
        exp.hashed_arm_index(id).map_or(u64::MAX, |i| i as u64)
    });
    println!(
        "ids: {DISTINCT_IDS} distinct like \"user-0000000042\", salt \"{}\", {PASSES} passes = {} ops each",
        exp.salt(),
        base.ops
    );
    base.report("baseline: fnv1a(user_id)");
    hot.report("assignment: hash v2 + bucket (hashed_arm_index)");
    println!(
        "ratio assignment/baseline time: {:.2}x",
        hot.seconds() / base.seconds()
    );

    // The full `assign` builds an owned Assignment (three key clones).
    let user_ids: Vec<UserId> = ids[..200_000]
        .iter()
        .map(UserId::parse)
        .collect::<Result<_, _>>()?;
    let mut hits = 0usize;
    let full = Timing::measure(user_ids.len() * 10, || {
        for _ in 0..10 {
            for u in &user_ids {
                hits += usize::from(black_box(assign(&exp, black_box(u), None)).is_some());
            }
        }
    });
    full.report("full assign() incl. owned Assignment");

    // Thompson reweight, 10 arms, 10k draws, realistic per-user sums over
    // 24 weight periods (a day of hourly reweights).
    let bandit = experiment(&[0.1; 10], Policy::ThompsonSampling)?;
    let user_sums = |users: u64, clicks_per_mille: u64| ArmCounts {
        users,
        impressions: 10 * users,
        clicks: users * clicks_per_mille / 100,
        conversions: users / 20,
        sum_clicks_sq: users * clicks_per_mille / 50,
        sum_impressions_sq: 150 * users,
        sum_clicks_impressions: users * clicks_per_mille / 5,
    };
    let cohorts: Vec<Vec<ArmCounts>> = (0..24)
        .map(|_| (0..10).map(|i| user_sums(400, 30 + i)).collect())
        .collect();
    let evidence = BanditEvidence {
        cohorts: &cohorts,
        running_s: 86_400,
    };
    let runs = 41;
    let mut times = Vec::new();
    let total = Timing::measure(runs, || {
        for seed in 0..runs as u64 {
            let start = Instant::now();
            let r = reweight_with_draws(&bandit, black_box(evidence), seed, 10_000);
            times.push(start.elapsed());
            let _ = black_box(r);
        }
    });
    times.sort();
    println!(
        "thompson reweight, 10 arms x 24 periods x 10k draws: {:.2} ms per CPU time; wall median {:.2} ms, min {:.2} ms",
        total.seconds() / runs as f64 * 1e3,
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3
    );

    // Two arms take the exact Gaussian probability instead of sampling.
    let two = experiment(&[0.5, 0.5], Policy::ThompsonSampling)?;
    let two_cohorts = vec![vec![user_sums(100_000, 30), user_sums(100_000, 31)]];
    let start = Instant::now();
    let r = reweight(
        &two,
        black_box(BanditEvidence {
            cohorts: &two_cohorts,
            running_s: 86_400,
        }),
        0,
    )?;
    let method = match r {
        ReweightOutcome::Reweighted(r) => format!("{:?}", r.method),
        ReweightOutcome::BurnIn(_) => "burn-in".to_owned(),
    };
    println!(
        "thompson reweight, 2 arms exact: {:.3} ms ({method})",
        start.elapsed().as_secs_f64() * 1e3,
    );

    // Printed so the accumulators cannot be optimised away.
    println!("(checksums {base_acc} {assign_acc} {hits})");
    Ok(())
}
