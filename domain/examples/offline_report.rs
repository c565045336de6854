//! Offline comparison of the recommenders on synthetic data with a known taste
//! structure: does personalisation beat popularity, and by how much?
//!
//! Usage: `cargo run --release -p domain --example offline_report -- [small|medium|large] [seed]`
//! (defaults: medium, 42). Exits non-zero when ALS or item-kNN fails to beat
//! popularity on NDCG@10 by at least 20% relative, so CI can run it.

use std::process::ExitCode;
use std::time::Instant;

use domain::recommend::als::{self, AlsParams};
use domain::recommend::evaluation::{compare, evaluate_at, temporal_split, AlgorithmResult};
use domain::recommend::item_knn::{ItemKnnModel, ItemKnnParams};
use domain::recommend::popularity::{PopularityModel, PopularityParams};
use domain::recommend::synthetic::{SyntheticData, SyntheticParams, SyntheticSize};
use domain::recommend::{InteractionKind, Recommender};

/// Held-out movies per user, the most recent ones.
const HOLDOUT: usize = 5;
/// Relative NDCG@10 gain over popularity each personalised model must reach.
const TARGET_GAIN: f64 = 0.20;

fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let size = match args.next().as_deref() {
        None | Some("medium") => SyntheticSize::Medium,
        Some("small") => SyntheticSize::Small,
        Some("large") => SyntheticSize::Large,
        Some(other) => return Err(format!("unknown size {other:?}").into()),
    };
    let seed: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(42);

    let started = Instant::now();
    let world = SyntheticData::generate(&SyntheticParams::new(size, seed))?;
    let likes = world
        .dataset
        .interactions
        .iter()
        .filter(|i| i.kind == InteractionKind::Like)
        .count();
    println!(
        "synthetic {size:?} (seed {seed}): {} movies, {} users, {} interactions ({} likes) in {:.2}s",
        world.catalog.len(),
        world.users.len(),
        world.dataset.interactions.len(),
        likes,
        started.elapsed().as_secs_f64()
    );

    let split = temporal_split(&world.dataset, HOLDOUT);
    println!(
        "temporal split: {} training interactions, {} users with {HOLDOUT} held-out movies each",
        split.train.interactions.len(),
        split.test.len()
    );

    let ks = [10, 20];
    let mut results = Vec::new();
    let mut run = |name: &str, fit: &dyn Fn() -> Result<Box<dyn Recommender>, String>| {
        let t = Instant::now();
        let model = fit()?;
        let fit_seconds = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let metrics = evaluate_at(model.as_ref(), &split.train, &split.test, &ks);
        println!(
            "  {name}: fit {fit_seconds:.2}s, evaluated in {:.2}s",
            t.elapsed().as_secs_f64()
        );
        results.push(AlgorithmResult {
            algorithm: name.to_owned(),
            fit_seconds,
            metrics,
        });
        Ok::<(), String>(())
    };
    let train = &split.train;
    run("popularity", &|| {
        PopularityModel::fit(train, &PopularityParams::default())
            .map(|m| Box::new(m) as Box<dyn Recommender>)
            .map_err(|e| e.to_string())
    })?;
    run("item_knn", &|| {
        ItemKnnModel::fit(train, &ItemKnnParams::default())
            .map(|m| Box::new(m) as Box<dyn Recommender>)
            .map_err(|e| e.to_string())
    })?;
    run("als", &|| {
        Ok(Box::new(als::fit(train, &AlsParams::default())) as Box<dyn Recommender>)
    })?;

    let report = compare("popularity", results)?;
    println!();
    println!(
        "| {:<10} | {:>7} | {:>9} | {:>7} | {:>7} | {:>8} | {:>7} | {:>15} |",
        "algorithm",
        "NDCG@10",
        "recall@20",
        "P@10",
        "MAP@10",
        "coverage",
        "fit s",
        "NDCG@10 vs pop"
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|{}|{}|",
        "-".repeat(12),
        "-".repeat(9),
        "-".repeat(11),
        "-".repeat(9),
        "-".repeat(9),
        "-".repeat(10),
        "-".repeat(9),
        "-".repeat(17)
    );
    let mut pass = true;
    for row in &report.rows {
        let at = |k: usize| row.result.metrics.iter().find(|m| m.k == k);
        let (Some(m10), Some(m20)) = (at(10), at(20)) else {
            continue;
        };
        let gain = row
            .vs_baseline
            .iter()
            .find(|c| c.k == 10)
            .and_then(|c| c.ndcg);
        if row.result.algorithm != report.baseline && gain.is_none_or(|g| g < TARGET_GAIN) {
            pass = false;
        }
        println!(
            "| {:<10} | {:>7.4} | {:>9.4} | {:>7.4} | {:>7.4} | {:>8.4} | {:>7.2} | {:>15} |",
            row.result.algorithm,
            m10.ndcg,
            m20.recall,
            m10.precision,
            m10.map,
            m10.coverage,
            row.result.fit_seconds,
            gain.map_or("-".to_owned(), |g| format!("{:+.1}%", g * 100.0)),
        );
    }
    println!();
    println!("(coverage: share of the catalog in at least one user's top 10)");
    if pass {
        println!(
            "PASS: every personalised model beats popularity on NDCG@10 by >= {:.0}%",
            TARGET_GAIN * 100.0
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "FAIL: a personalised model is below +{:.0}% NDCG@10 vs popularity",
            TARGET_GAIN * 100.0
        );
        Ok(ExitCode::FAILURE)
    }
}
