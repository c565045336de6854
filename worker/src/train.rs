//! `worker train`: history from PostgreSQL → fit → offline evaluation on a
//! temporal hold-out → `model.bin` + `manifest.json` in S3 → a row in
//! `models` → (unless told not to) the active version of its algorithm.
//!
//! The hold-out metrics come from a fit on the history minus each user's
//! latest movies; the stored model is then refitted on the whole history, so
//! what serves has seen everything and what is reported was measured fairly.

use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, Utc};
use domain::ids::{AlgorithmKey, MovieId, UserId};
use domain::recommend::als::{self, AlsParams};
use domain::recommend::cold_start::{ColdStartModel, ColdStartParams};
use domain::recommend::evaluation::{evaluate_at, temporal_split, OfflineMetrics};
use domain::recommend::format::{
    self, DataCounts, DataWindow, ModelAlgorithm, ModelManifest, TrainedModel, FORMAT_VERSION,
};
use domain::recommend::item_knn::{ItemKnnModel, ItemKnnParams};
use domain::recommend::popularity::{PopularityModel, PopularityParams};
use domain::recommend::{CatalogEntry, Dataset};
use repositories::postgres::bulk::HistoryEntry;
use repositories::postgres::models::NewModel;
use repositories::stores::Stores;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Cut-offs of the offline metrics stored with every model.
pub const METRIC_KS: [usize; 2] = [10, 20];

/// Arguments of `worker train`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Algorithm key (a row of `algorithms`: popularity, item_knn, als, cold_start, or one of yours).
    #[arg(long)]
    pub algorithm: String,
    /// Register the model without making it the active version.
    #[arg(long)]
    pub no_activate: bool,
    /// Hyperparameters as a JSON object, over the algorithm's stored `params` and the defaults,
    /// e.g. '{"factors":32,"iterations":10}'.
    #[arg(long)]
    pub params: Option<String>,
    /// Latest movies per user held out for the offline metrics.
    #[arg(long, default_value_t = 5)]
    pub holdout: usize,
    /// Train on the last N days of history only (default: all of it).
    #[arg(long)]
    pub since_days: Option<u32>,
}

impl TrainArgs {
    pub fn new(algorithm: impl Into<String>) -> Self {
        Self {
            algorithm: algorithm.into(),
            no_activate: false,
            params: None,
            holdout: 5,
            since_days: None,
        }
    }
}

/// What a training run produced.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub manifest: ModelManifest,
    pub model_key: String,
    pub manifest_key: String,
    pub activated: bool,
    pub load_seconds: f64,
    pub eval_fit_seconds: f64,
    pub fit_seconds: f64,
    pub bytes: usize,
}

/// Where a model version's files live in the bucket.
pub fn object_prefix(algorithm: &str, version: &str) -> String {
    format!("models/{algorithm}/{version}")
}

/// Versions sort by training time (to the millisecond); a random suffix keeps
/// two trainings that finish in the same millisecond from sharing a version,
/// whose S3 objects the second would overwrite under the first's registry row.
fn new_version(now: DateTime<Utc>) -> String {
    format!(
        "{}-{:04x}",
        now.format("%Y%m%dT%H%M%S%3fZ"),
        rand::random::<u16>()
    )
}

/// `defaults` overlaid with the keys of each object in `layers`, in order.
fn merge_params<T: Serialize + DeserializeOwned>(
    defaults: &T,
    layers: &[&serde_json::Value],
) -> anyhow::Result<T> {
    let mut merged = serde_json::to_value(defaults).context("encoding default parameters")?;
    for layer in layers {
        match (layer, &mut merged) {
            (serde_json::Value::Null, _) => {}
            (serde_json::Value::Object(over), serde_json::Value::Object(base)) => {
                for (k, v) in over {
                    if !base.contains_key(k) {
                        anyhow::bail!("unknown hyperparameter {k:?}");
                    }
                    base.insert(k.clone(), v.clone());
                }
            }
            (other, _) => anyhow::bail!("hyperparameters must be a JSON object, got {other}"),
        }
    }
    serde_json::from_value(merged).context("hyperparameters do not fit the algorithm")
}

/// Hyperparameters of one fit, already merged and validated.
#[derive(Debug, Clone)]
enum Fit {
    Popularity(PopularityParams),
    ItemKnn(ItemKnnParams),
    Als(AlsParams),
    ColdStart(ColdStartParams, PopularityParams),
}

impl Fit {
    fn resolve(kind: ModelAlgorithm, layers: &[&serde_json::Value]) -> anyhow::Result<Self> {
        Ok(match kind {
            ModelAlgorithm::Popularity => {
                Self::Popularity(merge_params(&PopularityParams::default(), layers)?)
            }
            ModelAlgorithm::ItemKnn => {
                Self::ItemKnn(merge_params(&ItemKnnParams::default(), layers)?)
            }
            ModelAlgorithm::Als => {
                let params: AlsParams = merge_params(&AlsParams::default(), layers)?;
                params.validate()?;
                Self::Als(params)
            }
            // Cold start ranks each genre by popularity; the popularity knobs stay at their defaults.
            ModelAlgorithm::ColdStart => Self::ColdStart(
                merge_params(&ColdStartParams::default(), layers)?,
                PopularityParams::default(),
            ),
        })
    }

    fn hyperparameters(&self) -> serde_json::Value {
        let value = match self {
            Self::Popularity(p) => serde_json::to_value(p),
            Self::ItemKnn(p) => serde_json::to_value(p),
            Self::Als(p) => serde_json::to_value(p),
            Self::ColdStart(p, _) => serde_json::to_value(p),
        };
        value.unwrap_or(serde_json::Value::Null)
    }

    fn run(&self, data: &Dataset, catalog: &[CatalogEntry]) -> anyhow::Result<TrainedModel> {
        Ok(match self {
            Self::Popularity(p) => TrainedModel::Popularity(PopularityModel::fit(data, p)?),
            Self::ItemKnn(p) => TrainedModel::ItemKnn(ItemKnnModel::fit(data, p)?),
            Self::Als(p) => TrainedModel::Als(als::fit(data, p)),
            Self::ColdStart(p, pop) => {
                let popular = PopularityModel::fit(data, pop)?;
                TrainedModel::ColdStart(ColdStartModel::fit(catalog, popular.ranked(), p)?)
            }
        })
    }
}

pub fn kind_of(kind: &str) -> anyhow::Result<ModelAlgorithm> {
    Ok(match kind {
        "popularity" => ModelAlgorithm::Popularity,
        "item_knn" => ModelAlgorithm::ItemKnn,
        "als" => ModelAlgorithm::Als,
        "cold_start" => ModelAlgorithm::ColdStart,
        other => anyhow::bail!("algorithm kind {other:?} cannot be trained"),
    })
}

/// The history as a dataset, in a fixed order (PostgreSQL returns rows in any
/// order, and dense indices follow first sight), so the same history always
/// gives the same model. Rows with ids the domain rejects are skipped and counted.
pub fn dataset_from(mut rows: Vec<HistoryEntry>) -> (Dataset, u64) {
    rows.sort_unstable_by(|a, b| {
        (a.ts, &a.user_id, a.movie_id, a.kind as u8).cmp(&(
            b.ts,
            &b.user_id,
            b.movie_id,
            b.kind as u8,
        ))
    });
    let mut data = Dataset::new();
    let mut skipped = 0;
    for row in rows {
        match (UserId::parse(row.user_id), MovieId::parse(row.movie_id)) {
            (Ok(user), Ok(movie)) => data.push(&user, movie, row.kind, row.ts),
            _ => skipped += 1,
        }
    }
    (data, skipped)
}

/// Train, evaluate, upload, register and (unless `no_activate`) activate.
/// `progress` gets one line per step, for the CLI.
pub async fn train(
    stores: &Stores,
    args: &TrainArgs,
    progress: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<TrainOutcome> {
    let algorithm = AlgorithmKey::parse(args.algorithm.clone())?;
    let row = stores
        .models
        .find_algorithm(algorithm.as_str())
        .await?
        .with_context(|| format!("no algorithm {algorithm:?} in the algorithms table"))?;
    let kind = kind_of(&row.kind)?;
    let cli_params: serde_json::Value = match &args.params {
        Some(json) => serde_json::from_str(json).context("--params is not JSON")?,
        None => serde_json::Value::Null,
    };
    let fit = Fit::resolve(kind, &[&row.params, &cli_params])?;

    let started = Instant::now();
    let since = args
        .since_days
        .map(|d| Utc::now() - chrono::Duration::days(i64::from(d)));
    let mut rows = Vec::new();
    stores
        .bulk
        .stream_history(since, |r| rows.push(r))
        .await
        .context("reading history from postgres")?;
    let catalog = if kind == ModelAlgorithm::ColdStart {
        stores.bulk.load_catalog().await?
    } else {
        Vec::new()
    };
    let (data, skipped) = tokio::task::spawn_blocking(move || dataset_from(rows)).await?;
    let load_seconds = started.elapsed().as_secs_f64();
    let counts = DataCounts::of(&data);
    let window = DataWindow::of(&data).context("no history to train on")?;
    progress(&format!(
        "loaded {} interactions ({} users, {} movies, {} to {}) in {load_seconds:.2}s{}",
        counts.interactions,
        counts.users,
        counts.items,
        window.from.format("%Y-%m-%d"),
        window.to.format("%Y-%m-%d"),
        if skipped > 0 {
            format!(", skipped {skipped} invalid rows")
        } else {
            String::new()
        },
    ));

    let holdout = args.holdout;
    let fit_for_eval = fit.clone();
    let (data, catalog, metrics, eval_fit_seconds) = tokio::task::spawn_blocking(move || {
        let split = temporal_split(&data, holdout);
        let t = Instant::now();
        let model = fit_for_eval.run(&split.train, &catalog)?;
        let seconds = t.elapsed().as_secs_f64();
        let metrics = evaluate_at(&model, &split.train, &split.test, &METRIC_KS);
        Ok::<_, anyhow::Error>((data, catalog, metrics, seconds))
    })
    .await??;
    progress(&format!(
        "hold-out ({holdout} latest movies of {} users): fit {eval_fit_seconds:.2}s, {}",
        metrics.first().map_or(0, |m| m.users),
        describe(&metrics)
    ));

    let fit_for_model = fit.clone();
    let (model, fit_seconds) = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let model = fit_for_model.run(&data, &catalog)?;
        Ok::<_, anyhow::Error>((model, t.elapsed().as_secs_f64()))
    })
    .await??;
    let bytes = format::encode(&model)?;
    progress(&format!(
        "fitted {kind} on all history in {fit_seconds:.2}s ({} KiB)",
        bytes.len() / 1024
    ));

    let trained_at = Utc::now();
    let version = new_version(trained_at);
    let manifest = ModelManifest {
        format_version: FORMAT_VERSION,
        algorithm: algorithm.clone(),
        kind,
        version: version.clone(),
        sha256: format::sha256_hex(&bytes),
        trained_at,
        data_window: window,
        counts,
        metrics: metrics.clone(),
        hyperparameters: fit.hyperparameters(),
    };
    let prefix = object_prefix(algorithm.as_str(), &version);
    let model_key = format!("{prefix}/model.bin");
    let manifest_key = format!("{prefix}/manifest.json");
    let manifest_json = serde_json::to_vec_pretty(&manifest)?;
    let size = bytes.len();
    // The model first, then its manifest, then the row: nothing ever points at
    // an object that is not there yet.
    stores
        .objects
        .put(&model_key, bytes, "application/octet-stream")
        .await
        .with_context(|| format!("uploading {model_key}"))?;
    stores
        .objects
        .put(&manifest_key, manifest_json, "application/json")
        .await
        .with_context(|| format!("uploading {manifest_key}"))?;
    stores
        .models
        .insert_model(&NewModel {
            algorithm_key: algorithm.as_str(),
            version: &version,
            s3_key: &model_key,
            sha256: &manifest.sha256,
            format_version: i32::from(FORMAT_VERSION),
            metrics: serde_json::to_value(&metrics)?,
            manifest: serde_json::to_value(&manifest)?,
        })
        .await
        .context("registering the model")?;
    progress(&format!(
        "stored s3://{}/{model_key} (sha256 {})",
        stores.objects.bucket(),
        manifest.sha256
    ));
    let activated = !args.no_activate;
    if activated {
        stores
            .models
            .activate(algorithm.as_str(), &version)
            .await
            .context("activating the model")?;
        progress(&format!("activated {algorithm} {version}"));
    } else {
        progress(&format!("registered {algorithm} {version} (not activated)"));
    }
    Ok(TrainOutcome {
        manifest,
        model_key,
        manifest_key,
        activated,
        load_seconds,
        eval_fit_seconds,
        fit_seconds,
        bytes: size,
    })
}

fn describe(metrics: &[OfflineMetrics]) -> String {
    metrics
        .iter()
        .map(|m| {
            format!(
                "NDCG@{k} {:.4} recall@{k} {:.4} P@{k} {:.4} coverage@{k} {:.3}",
                m.ndcg,
                m.recall,
                m.precision,
                m.coverage,
                k = m.k
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::recommend::InteractionKind;

    #[test]
    fn params_merge_over_defaults_and_reject_unknown_keys() {
        let stored = serde_json::json!({"factors": 16});
        let cli = serde_json::json!({"iterations": 3});
        let p: AlsParams = merge_params(&AlsParams::default(), &[&stored, &cli]).unwrap();
        assert_eq!((p.factors, p.iterations), (16, 3));
        assert_eq!(p.alpha, AlsParams::default().alpha);
        let typo = serde_json::json!({"factor": 16});
        assert!(merge_params(&AlsParams::default(), &[&typo]).is_err());
        assert!(merge_params(&AlsParams::default(), &[&serde_json::json!([1])]).is_err());
        let none = serde_json::Value::Null;
        assert_eq!(
            merge_params(&ItemKnnParams::default(), &[&none]).unwrap(),
            ItemKnnParams::default()
        );
    }

    #[test]
    fn dataset_order_does_not_depend_on_row_order() {
        let row = |u: &str, m: i64, ts: i64| HistoryEntry {
            user_id: u.into(),
            movie_id: m,
            kind: InteractionKind::View,
            ts,
        };
        let rows = vec![row("u2", 5, 20), row("u1", 3, 10), row("bad user", 1, 5)];
        let mut reversed = rows.clone();
        reversed.reverse();
        let (a, skipped) = dataset_from(rows);
        let (b, _) = dataset_from(reversed);
        assert_eq!(skipped, 1);
        assert_eq!(a.users, b.users);
        assert_eq!(a.interactions, b.interactions);
        assert_eq!(a.users[0].as_str(), "u1");
    }

    #[test]
    fn versions_sort_by_time_and_differ_within_a_millisecond() {
        let at = DateTime::from_timestamp(1_700_000_000, 5_000_000).unwrap();
        let a = new_version(at);
        let b = new_version(DateTime::from_timestamp(1_700_000_000, 6_000_000).unwrap());
        assert!(a.starts_with("20231114T221320005Z-"), "{a}");
        assert_eq!(a.len(), "20231114T221320005Z-0000".len());
        assert!(a < b);
        let same_instant: std::collections::HashSet<String> =
            (0..20).map(|_| new_version(at)).collect();
        assert!(same_instant.len() > 1);
    }
}
