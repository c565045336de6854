//! Fit time and NDCG@10 of each recommender on a synthetic set, optionally
//! exporting the exact ALS training matrix and hold-out so another ALS
//! implementation (Python `implicit`, see scripts/bench-train.sh) can be timed
//! and scored on identical data.
//!
//! Usage: `cargo run --release -p domain --example bench_train -- \
//!     [small|medium|large] [seed] [--only ALGO] [--eval-users N] [--export DIR] [--als JSON]`
//!
//! Prints a table, then one `RESULT {json}` line per algorithm for scripts.
//! `--export DIR` writes little-endian binaries of the ALS training matrix
//! (`train_users.u32`, `train_items.u32`, `train_confidence.f32`: one entry
//! per distinct user-movie pair, confidence `1 + α·r` exactly as
//! [`als::fit`] builds it), the hold-out (`test_users.u32`, `test_items.u32`)
//! and `meta.json` with the shapes and ALS hyperparameters.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use domain::recommend::als::{self, AlsParams};
use domain::recommend::evaluation::{evaluate_at, temporal_split, HeldOut};
use domain::recommend::item_knn::{ItemKnnModel, ItemKnnParams};
use domain::recommend::popularity::{PopularityModel, PopularityParams};
use domain::recommend::synthetic::{SyntheticData, SyntheticParams, SyntheticSize};
use domain::recommend::{Dataset, InteractionKind, Recommender};

const HOLDOUT: usize = 5;
const KS: [usize; 2] = [10, 20];

struct Args {
    size: SyntheticSize,
    seed: u64,
    only: Option<String>,
    eval_users: usize,
    export: Option<PathBuf>,
    /// ALS hyperparameters over the defaults, as JSON (e.g. `{"factors":128}`).
    als: Option<String>,
}

fn parse_args() -> Result<Args, Box<dyn std::error::Error>> {
    let mut args = Args {
        size: SyntheticSize::Large,
        seed: 42,
        only: None,
        eval_users: 20_000,
        export: None,
        als: None,
    };
    let mut positional = 0;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--only" => args.only = Some(it.next().ok_or("--only needs a value")?),
            "--eval-users" => {
                args.eval_users = it.next().ok_or("--eval-users needs a value")?.parse()?
            }
            "--export" => args.export = Some(it.next().ok_or("--export needs a value")?.into()),
            "--als" => args.als = Some(it.next().ok_or("--als needs a JSON object")?),
            other if positional == 0 => {
                args.size = match other {
                    "small" => SyntheticSize::Small,
                    "medium" => SyntheticSize::Medium,
                    "large" => SyntheticSize::Large,
                    _ => return Err(format!("unknown size {other:?}").into()),
                };
                positional += 1;
            }
            other if positional == 1 => {
                args.seed = other.parse()?;
                positional += 1;
            }
            other => return Err(format!("unexpected argument {other:?}").into()),
        }
    }
    Ok(args)
}

/// Every `step`-th test user, so the sample spreads over the whole population
/// and the same users are scored by every implementation.
fn sample(test: &[HeldOut], n: usize) -> Vec<HeldOut> {
    if n == 0 || test.len() <= n {
        return test.to_vec();
    }
    let step = test.len() as f64 / n as f64;
    (0..n)
        .filter_map(|k| test.get((k as f64 * step) as usize).cloned())
        .collect()
}

fn write_u32(path: PathBuf, values: impl Iterator<Item = u32>) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for v in values {
        out.write_all(&v.to_le_bytes())?;
    }
    out.flush()
}

/// The matrix [`als::fit`] factorises: per distinct (user, item) the summed
/// kind weights `r`, as confidence `1 + α·r`.
fn export(
    dir: &PathBuf,
    train: &Dataset,
    test: &[HeldOut],
    params: &AlsParams,
) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let mut r: HashMap<(u32, u32), f32> = HashMap::new();
    for i in &train.interactions {
        let w = match i.kind {
            InteractionKind::View => params.view_weight,
            InteractionKind::Like => params.like_weight,
        };
        *r.entry((i.user, i.item)).or_insert(0.0) += w;
    }
    let mut pairs: Vec<((u32, u32), f32)> = r.into_iter().filter(|p| p.1 > 0.0).collect();
    pairs.sort_unstable_by_key(|p| p.0);
    write_u32(dir.join("train_users.u32"), pairs.iter().map(|p| p.0 .0))?;
    write_u32(dir.join("train_items.u32"), pairs.iter().map(|p| p.0 .1))?;
    let mut conf =
        std::io::BufWriter::new(std::fs::File::create(dir.join("train_confidence.f32"))?);
    for p in &pairs {
        conf.write_all(&(1.0 + params.alpha * p.1).to_le_bytes())?;
    }
    conf.flush()?;
    let mut users = Vec::new();
    let mut items = Vec::new();
    for held in test {
        let Some(u) = train.find_user(&held.user) else {
            continue;
        };
        for m in &held.items {
            if let Some(i) = train.find_item(*m) {
                users.push(u);
                items.push(i);
            }
        }
    }
    write_u32(dir.join("test_users.u32"), users.into_iter())?;
    write_u32(dir.join("test_items.u32"), items.into_iter())?;
    let meta = format!(
        "{{\"n_users\":{},\"n_items\":{},\"nnz\":{},\"holdout\":{HOLDOUT},\"test_users\":{},\
         \"factors\":{},\"iterations\":{},\"regularization\":{},\"alpha\":{},\"cg_steps\":{}}}\n",
        train.n_users(),
        train.n_items(),
        pairs.len(),
        test.len(),
        params.factors,
        params.iterations,
        params.regularization,
        params.alpha,
        params.cg_steps
    );
    std::fs::write(dir.join("meta.json"), meta)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let t = Instant::now();
    let world = SyntheticData::generate(&SyntheticParams::new(args.size, args.seed))?;
    println!(
        "synthetic {:?} (seed {}): {} movies, {} users, {} interactions, generated in {:.1}s",
        args.size,
        args.seed,
        world.catalog.len(),
        world.users.len(),
        world.dataset.interactions.len(),
        t.elapsed().as_secs_f64()
    );
    let split = temporal_split(&world.dataset, HOLDOUT);
    drop(world);
    let test = sample(&split.test, args.eval_users);
    println!(
        "temporal split: {} training interactions; scoring {} of {} users with {HOLDOUT} held-out movies",
        split.train.interactions.len(),
        test.len(),
        split.test.len()
    );
    // AlsParams fills missing fields from its defaults (serde(default)).
    let als_params: AlsParams = match &args.als {
        Some(json) => serde_json::from_str(json)?,
        None => AlsParams::default(),
    };
    als_params.validate()?;
    if let Some(dir) = &args.export {
        let t = Instant::now();
        export(dir, &split.train, &test, &als_params)?;
        println!(
            "exported the ALS matrix and hold-out to {} in {:.1}s",
            dir.display(),
            t.elapsed().as_secs_f64()
        );
    }

    let wanted = |name: &str| args.only.as_deref().is_none_or(|o| o == name);
    let train = &split.train;
    let mut rows = Vec::new();
    let mut run = |name: &str, fit: &dyn Fn() -> Box<dyn Recommender>, params: String| {
        if !wanted(name) {
            return;
        }
        let sampler = RssSampler::start();
        let t = Instant::now();
        let model = fit();
        let fit_seconds = t.elapsed().as_secs_f64();
        let fit_rss = sampler.stop();
        let t = Instant::now();
        let metrics = evaluate_at(model.as_ref(), train, &test, &KS);
        let eval_seconds = t.elapsed().as_secs_f64();
        let (m10, m20) = (&metrics[0], &metrics[1]);
        println!(
            "RESULT {{\"algorithm\":\"{name}\",\"fit_seconds\":{fit_seconds:.3},\"eval_seconds\":{eval_seconds:.3},\
             \"ndcg10\":{:.5},\"recall20\":{:.5},\"coverage10\":{:.5},\"users\":{},\"fit_peak_rss_mib\":{},\
             \"params\":{params}}}",
            m10.ndcg,
            m20.recall,
            m10.coverage,
            m10.users,
            fit_rss.map_or("null".to_owned(), |m| m.to_string())
        );
        rows.push((
            name.to_owned(),
            fit_seconds,
            m10.ndcg,
            m20.recall,
            m10.coverage,
        ));
    };
    let json = |v: serde_json::Result<String>| v.unwrap_or_else(|_| "null".into());
    run(
        "popularity",
        &|| {
            Box::new(
                PopularityModel::fit(train, &PopularityParams::default()).expect("valid defaults"),
            )
        },
        json(serde_json::to_string(&PopularityParams::default())),
    );
    run(
        "item_knn",
        &|| Box::new(ItemKnnModel::fit(train, &ItemKnnParams::default()).expect("valid defaults")),
        json(serde_json::to_string(&ItemKnnParams::default())),
    );
    run(
        "als",
        &|| Box::new(als::fit(train, &als_params)),
        json(serde_json::to_string(&als_params)),
    );

    println!();
    println!("| algorithm  | NDCG@10 | recall@20 | coverage@10 |  fit s |");
    println!("|------------|---------|-----------|-------------|--------|");
    for (name, fit, ndcg, recall, coverage) in rows {
        println!("| {name:<10} | {ndcg:>7.4} | {recall:>9.4} | {coverage:>11.4} | {fit:>6.2} |");
    }
    Ok(())
}

/// Largest resident set seen while it runs (Linux `/proc/self/status`, sampled
/// every few milliseconds): the fit's own peak, which the process peak of
/// `/usr/bin/time -v` hides behind the data generation's.
struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Option<u64>>,
}

impl RssSampler {
    fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = None;
            loop {
                peak = peak.max(rss_mib());
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    return peak;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        Self { stop, handle }
    }

    /// Peak in MiB; `None` where `/proc` is not available.
    fn stop(self) -> Option<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().ok().flatten()
    }
}

fn rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
