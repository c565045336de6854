//! The model loop: follow the active version of every algorithm in
//! PostgreSQL, load it from S3 only if its bytes are exactly the ones the
//! registry and manifest describe, and precompute every active user's list
//! into Redis (`recs:{algorithm}:{user}`, then `recs-version:{algorithm}`),
//! deleting the lists of users who are no longer active.
//!
//! A refused artifact (missing, checksum or format mismatch, undecodable) is
//! logged and counted once per version; nothing is written, so the lists of
//! the previous version keep serving until a good version is activated.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use domain::ids::{MovieId, UserId};
use domain::recommend::format::{ModelManifest, TrainedModel, FORMAT_VERSION};
use domain::recommend::{PrecomputedList, Recommender};
use repositories::postgres::models::ModelRow;
use repositories::stores::Stores;
use tokio_util::sync::CancellationToken;

/// Bound on taking a precompute lease (a fresh PostgreSQL session).
const LEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// Users whose lists are computed and written per round; bounds memory on large catalogs.
const USERS_PER_ROUND: usize = 5_000;

/// Knobs of the model loop (from [`crate::config::WorkerConfig`]).
#[derive(Debug, Clone)]
pub struct ModelLoopSettings {
    pub poll: Duration,
    pub top_n: usize,
    /// Users with a view or like this recent get lists; measured back from the
    /// newest recorded interaction (or now, if that is earlier), so a history
    /// whose clock stopped (a seed, an import, a replay) still has active users.
    pub active_window: Duration,
}

/// Why a model version was not loaded; the label of the refusal counter.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("format version {0} is not the {FORMAT_VERSION} this build reads")]
    FormatVersion(i32),
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("manifest disagrees with the registry: {0}")]
    Mismatch(String),
    #[error("model bytes refused: {0}")]
    Artifact(#[from] domain::recommend::format::ModelFormatError),
    #[error("object store: {0}")]
    Store(#[from] repositories::RepoError),
}

impl LoadError {
    fn reason(&self) -> &'static str {
        use domain::recommend::format::ModelFormatError as F;
        match self {
            Self::FormatVersion(_) | Self::Artifact(F::UnsupportedVersion(_)) => "format_version",
            Self::Manifest(_) => "manifest",
            Self::Mismatch(_) | Self::Artifact(F::AlgorithmMismatch { .. }) => "mismatch",
            Self::Artifact(F::ChecksumMismatch { .. }) => "checksum",
            Self::Artifact(_) => "corrupt",
            Self::Store(_) => "store",
        }
    }

    /// A store outage is worth retrying on the next poll; a bad artifact is not.
    fn is_transient(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_transient())
    }
}

/// Fetch and verify the artifact `row` points at: the registry's format
/// version, the manifest next to the model (same algorithm, version and
/// checksum as the row), then the bytes against the manifest.
pub async fn load_model(stores: &Stores, row: &ModelRow) -> Result<TrainedModel, LoadError> {
    if row.format_version != i32::from(FORMAT_VERSION) {
        return Err(LoadError::FormatVersion(row.format_version));
    }
    let manifest_key = match row.s3_key.rsplit_once('/') {
        Some((prefix, _)) => format!("{prefix}/manifest.json"),
        None => {
            return Err(LoadError::Mismatch(format!(
                "s3 key {:?} has no prefix",
                row.s3_key
            )))
        }
    };
    let manifest_bytes = stores.objects.get(&manifest_key).await?;
    let manifest: ModelManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| LoadError::Manifest(format!("{manifest_key}: {e}")))?;
    if manifest.algorithm.as_str() != row.algorithm_key || manifest.version != row.version {
        return Err(LoadError::Mismatch(format!(
            "{manifest_key} describes {}/{}",
            manifest.algorithm, manifest.version
        )));
    }
    if !manifest.sha256.eq_ignore_ascii_case(&row.sha256) {
        return Err(LoadError::Mismatch(format!(
            "sha256 {} in the manifest, {} in the registry",
            manifest.sha256, row.sha256
        )));
    }
    let bytes = stores.objects.get(&row.s3_key).await?;
    let model = tokio::task::spawn_blocking(move || manifest.load(&bytes))
        .await
        .map_err(|e| LoadError::Manifest(format!("decoder task: {e}")))??;
    Ok(model)
}

/// Compute the top `top_n` of each user (their history excluded), spreading
/// users over the available cores; `None` where the model has no opinion.
/// Each movie's "more like this" list as the api reads it (JSON of a
/// [`PrecomputedList`]); movies without neighbours get none.
fn similar_lists(
    model: &TrainedModel,
    version: &str,
    top_n: usize,
) -> anyhow::Result<Vec<(i64, String)>> {
    domain::recommend::similar::similar_movies(model, top_n)
        .into_iter()
        .filter(|(_, items)| !items.is_empty())
        .map(|(movie, items)| {
            let list = PrecomputedList {
                model_version: version.to_owned(),
                items,
            };
            Ok((movie.get(), serde_json::to_string(&list)?))
        })
        .collect()
}

fn lists_for(
    model: &TrainedModel,
    version: &str,
    users: &[(String, Vec<i64>)],
    top_n: usize,
) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = users.len().div_ceil(threads).max(1);
    let one = |(user, seen): &(String, Vec<i64>)| -> (String, Option<String>) {
        let Ok(id) = UserId::parse(user.clone()) else {
            return (user.clone(), None);
        };
        let exclude: HashSet<MovieId> = seen
            .iter()
            .filter_map(|&m| MovieId::parse(m).ok())
            .collect();
        let items = model.recommend(&id, top_n, &exclude);
        if items.is_empty() {
            return (user.clone(), None);
        }
        let list = PrecomputedList {
            model_version: version.to_owned(),
            items,
        };
        (user.clone(), serde_json::to_string(&list).ok())
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = users
            .chunks(per_thread)
            .map(|chunk| scope.spawn(move || chunk.iter().map(one).collect::<Vec<_>>()))
            .collect();
        // A thread that panicked fails the precompute: its users would be
        // neither written nor cleared while the version was announced.
        let mut lists = Vec::with_capacity(users.len());
        for handle in handles {
            match handle.join() {
                Ok(part) => lists.extend(part),
                Err(_) => anyhow::bail!("a list-computing thread panicked"),
            }
        }
        Ok(lists)
    })
}

/// What one precompute wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrecomputeSummary {
    pub users: usize,
    pub lists: usize,
    /// Active users the model had no list for (their previous list deleted).
    pub cleared: usize,
    /// Lists of users outside the active window, deleted.
    pub stale: usize,
    /// Movies given a "more like this" list (item-kNN and ALS only).
    pub similar: usize,
}

/// Lists of `model` (version `version`) for every user active since the window
/// start, written to Redis, and every other list of the algorithm deleted;
/// `recs-version:{algorithm}` is removed first and set last, once all are
/// there, so it never names a version while lists of two are mixed.
pub async fn precompute(
    stores: &Stores,
    algorithm: &str,
    version: &str,
    model: std::sync::Arc<TrainedModel>,
    settings: &ModelLoopSettings,
) -> anyhow::Result<PrecomputeSummary> {
    let now = Utc::now();
    let newest = stores.bulk.newest_interaction().await?.unwrap_or(now);
    let window =
        chrono::Duration::from_std(settings.active_window).unwrap_or(chrono::Duration::days(30));
    let since: DateTime<Utc> = newest.min(now) - window;
    let users = stores.bulk.active_users_with_history(since).await?;
    let mut summary = PrecomputeSummary {
        users: users.len(),
        ..Default::default()
    };
    let written: HashSet<String> = users.iter().map(|(user, _)| user.clone()).collect();
    stores.redis.clear_recs_version(algorithm).await?;
    let mut rest = users;
    while !rest.is_empty() {
        let round: Vec<(String, Vec<i64>)> =
            rest.drain(..rest.len().min(USERS_PER_ROUND)).collect();
        let model = model.clone();
        let version_owned = version.to_owned();
        let top_n = settings.top_n;
        let lists =
            tokio::task::spawn_blocking(move || lists_for(&model, &version_owned, &round, top_n))
                .await??;
        summary.lists += lists.iter().filter(|l| l.1.is_some()).count();
        summary.cleared += lists.iter().filter(|l| l.1.is_none()).count();
        stores.redis.put_recs_lists(algorithm, &lists).await?;
    }
    summary.stale = stores
        .redis
        .delete_recs_lists_except(algorithm, &written)
        .await?;
    let version_owned = version.to_owned();
    let top_n = settings.top_n;
    let similar =
        tokio::task::spawn_blocking(move || similar_lists(&model, &version_owned, top_n)).await??;
    summary.similar = similar.len();
    stores.redis.put_similar_lists(algorithm, &similar).await?;
    stores.redis.set_recs_version(algorithm, version).await?;
    Ok(summary)
}

/// Follows the active versions and keeps Redis in step with them.
pub struct ModelLoop {
    stores: Stores,
    settings: ModelLoopSettings,
    /// algorithm → version whose lists are in Redis.
    serving: HashMap<String, String>,
    /// algorithm → (version, sha256) refused, so a bad artifact is reported once, not every poll.
    refused: HashMap<String, (String, String)>,
}

impl ModelLoop {
    pub fn new(stores: Stores, settings: ModelLoopSettings) -> Self {
        Self {
            stores,
            settings,
            serving: HashMap::new(),
            refused: HashMap::new(),
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(self.settings.poll.max(Duration::from_millis(10)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        result = self.tick() => if let Err(e) = result {
                            tracing::warn!(error = %e, "model loop: cannot read the active models; retrying next poll");
                        },
                    }
                }
            }
        }
    }

    /// One poll: bring every algorithm whose active version changed up to date.
    /// One worker at a time precomputes an algorithm (a lease in PostgreSQL);
    /// the others skip it and find its lists in Redis on a later poll.
    pub async fn tick(&mut self) -> anyhow::Result<()> {
        let active = self.stores.models.active_models().await?;
        for row in active {
            let algorithm = row.algorithm_key.clone();
            if self.settled(&row) {
                continue;
            }
            let Some(lease) = self
                .stores
                .models
                .try_take_precompute_lease(&algorithm, LEASE_TIMEOUT)
                .await?
            else {
                tracing::debug!(%algorithm, version = %row.version, "another worker is precomputing this algorithm");
                continue;
            };
            // The active version read above may be minutes old (precomputing
            // the algorithms before this one): act on the current one, so a
            // version activated since is not overwritten by the older one.
            let current = match self.stores.models.active_models().await {
                Ok(rows) => rows.into_iter().find(|r| r.algorithm_key == algorithm),
                Err(e) => {
                    lease.release().await;
                    return Err(e.into());
                }
            };
            let Some(row) = current else {
                lease.release().await;
                continue;
            };
            if self.settled(&row) {
                lease.release().await;
                continue;
            }
            // Another worker (or this one before a restart) may have finished it already.
            match self.stores.redis.recs_version(&algorithm).await {
                Ok(done) if done.as_deref() == Some(row.version.as_str()) => {
                    tracing::info!(%algorithm, version = %row.version, "lists of the active model are already in redis");
                    self.serving.insert(algorithm, row.version);
                }
                Ok(_) => self.switch_to(&row).await,
                Err(e) => {
                    lease.release().await;
                    return Err(e.into());
                }
            }
            lease.release().await;
        }
        Ok(())
    }

    /// Whether nothing is to be done for `row`, the active version of its
    /// algorithm: its lists are the ones in Redis, or its artifact was refused.
    fn settled(&self, row: &ModelRow) -> bool {
        let algorithm = &row.algorithm_key;
        self.serving.get(algorithm) == Some(&row.version)
            || self.refused.get(algorithm) == Some(&(row.version.clone(), row.sha256.clone()))
    }

    async fn switch_to(&mut self, row: &ModelRow) {
        let algorithm = row.algorithm_key.as_str();
        let started = Instant::now();
        let model = match load_model(&self.stores, row).await {
            Ok(model) => std::sync::Arc::new(model),
            Err(e) => {
                metrics::counter!(
                    "marquee_worker_model_refused_total",
                    "algorithm" => algorithm.to_owned(),
                    "reason" => e.reason()
                )
                .increment(1);
                if e.is_transient() {
                    tracing::warn!(%algorithm, version = %row.version, error = %e, "model not loaded; retrying next poll");
                } else {
                    tracing::error!(
                        %algorithm,
                        version = %row.version,
                        serving = ?self.serving.get(algorithm),
                        error = %e,
                        "model refused; the previous lists keep serving"
                    );
                    self.refused.insert(
                        algorithm.to_owned(),
                        (row.version.clone(), row.sha256.clone()),
                    );
                }
                return;
            }
        };
        let loaded_in = started.elapsed().as_secs_f64();
        match precompute(&self.stores, algorithm, &row.version, model, &self.settings).await {
            Ok(summary) => {
                let seconds = started.elapsed().as_secs_f64();
                metrics::counter!("marquee_worker_model_loads_total", "algorithm" => algorithm.to_owned())
                    .increment(1);
                metrics::histogram!("marquee_worker_model_precompute_seconds", "algorithm" => algorithm.to_owned())
                    .record(seconds);
                tracing::info!(
                    %algorithm,
                    version = %row.version,
                    users = summary.users,
                    lists = summary.lists,
                    without_list = summary.cleared,
                    stale_deleted = summary.stale,
                    similar = summary.similar,
                    load_seconds = loaded_in,
                    seconds,
                    "model loaded and lists precomputed"
                );
                self.serving
                    .insert(algorithm.to_owned(), row.version.clone());
                self.refused.remove(algorithm);
            }
            Err(e) => {
                metrics::counter!(
                    "marquee_worker_model_refused_total",
                    "algorithm" => algorithm.to_owned(),
                    "reason" => "precompute"
                )
                .increment(1);
                // Some lists may be the new version's by now: whatever
                // version is activated next (this one again, or the previous
                // one) is written over all of them.
                self.serving.remove(algorithm);
                tracing::warn!(%algorithm, version = %row.version, error = %e, "precomputing lists failed; retrying next poll");
            }
        }
    }
}
