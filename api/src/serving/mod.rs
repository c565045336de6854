//! The recommendations path's in-process state: cached catalog, experiments
//! and hot movies, plus the bounded queues that take impressions and new
//! assignments off the request path.
//!
//! Requests only read snapshots (an `Arc` behind a briefly held lock); the
//! background tasks in [`background`] replace them.

pub mod background;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use domain::events::Event;
use std::time::Duration;

use domain::experiment::Experiment;
use domain::ids::{ExperimentKey, MovieId, UserId};
use domain::recommend::{CatalogEntry, ScoredItem};
use repositories::kafka::EventProducer;
use repositories::postgres::serving::{NewAssignment, PgServing, UserContext};
use tokio::sync::mpsc;

/// Movies kept for the last-resort fallbacks (popular, any catalog movie).
pub const FALLBACK_LEN: usize = 200;

/// The catalog as the api serves it: titles by id and the fallback lists.
#[derive(Debug, Default)]
pub struct CatalogSnapshot {
    pub titles: HashMap<MovieId, String>,
    /// Popular by PostgreSQL history: served when Redis is down or cold.
    pub popular: Vec<ScoredItem>,
    /// The first catalog movies: a non-empty catalog never yields an empty list.
    pub any: Vec<ScoredItem>,
}

impl CatalogSnapshot {
    pub fn new(catalog: Vec<CatalogEntry>, popular: Vec<ScoredItem>) -> Self {
        let any = catalog
            .iter()
            .take(FALLBACK_LEN)
            .map(|m| ScoredItem {
                movie_id: m.movie_id,
                score: 0.0,
            })
            .collect();
        Self {
            titles: catalog.into_iter().map(|m| (m.movie_id, m.title)).collect(),
            popular,
            any,
        }
    }
}

/// A value swapped whole by a background task and read by every request.
#[derive(Debug, Default)]
pub struct Snapshot<T>(RwLock<Arc<T>>);

impl<T> Snapshot<T> {
    pub fn new(value: T) -> Self {
        Self(RwLock::new(Arc::new(value)))
    }

    pub fn get(&self) -> Arc<T> {
        match self.0.read() {
            Ok(guard) => guard.clone(),
            // A writer panicked mid-swap; the Arc it left is still a whole value.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set(&self, value: T) {
        let value = Arc::new(value);
        match self.0.write() {
            Ok(mut guard) => *guard = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }
}

/// Everything the recommendations and events routes share.
pub struct Serving {
    /// `MARQUEE_DEFAULT_EXPERIMENT`, parsed once rather than on every request; `None` if invalid.
    pub default_experiment: Option<ExperimentKey>,
    pub pg: PgServing,
    pub producer: EventProducer,
    pub catalog: Snapshot<CatalogSnapshot>,
    pub experiments: Snapshot<HashMap<ExperimentKey, Experiment>>,
    pub hot: Snapshot<Vec<ScoredItem>>,
    impressions: mpsc::Sender<Event>,
    assignments: mpsc::Sender<NewAssignment>,
    /// Sticky arm and seen movies per (experiment, user), so a returning user
    /// costs no PostgreSQL round trip; `None` when disabled.
    user_contexts: Option<moka::sync::Cache<ContextKey, Arc<UserContext>>>,
}

/// Which experiment's sticky arm a cached context holds, and for whom.
type ContextKey = (Option<ExperimentKey>, UserId);

/// Sizing of the per-user context cache.
#[derive(Debug, Clone, Copy)]
pub struct UserCacheSettings {
    pub ttl: Duration,
    pub capacity: u64,
}

/// The receiving ends, handed to the background tasks.
pub struct ServingQueues {
    pub impressions: mpsc::Receiver<Event>,
    pub assignments: mpsc::Receiver<NewAssignment>,
}

impl Serving {
    pub fn new(
        pg: PgServing,
        producer: EventProducer,
        queue_len: usize,
        user_cache: UserCacheSettings,
        default_experiment: &str,
    ) -> (Self, ServingQueues) {
        let user_contexts = (!user_cache.ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(user_cache.capacity)
                .time_to_live(user_cache.ttl)
                .build()
        });
        let (impressions_tx, impressions_rx) = mpsc::channel(queue_len.max(1));
        let (assignments_tx, assignments_rx) = mpsc::channel(queue_len.max(1));
        (
            Self {
                default_experiment: ExperimentKey::parse(default_experiment).ok(),
                pg,
                producer,
                catalog: Snapshot::default(),
                experiments: Snapshot::default(),
                hot: Snapshot::default(),
                impressions: impressions_tx,
                assignments: assignments_tx,
                user_contexts,
            },
            ServingQueues {
                impressions: impressions_rx,
                assignments: assignments_rx,
            },
        )
    }

    /// Queue an impression for Kafka without waiting; a full queue (Kafka slow
    /// or down) drops it and counts the drop, so the response is never held up.
    pub fn emit_impression(&self, event: Event) {
        if self.impressions.try_send(event).is_err() {
            metrics::counter!("marquee_impressions_dropped_total", "reason" => "queue_full")
                .increment(1);
        }
    }

    /// The user's context if process memory holds a fresh one.
    pub fn cached_context(
        &self,
        experiment: Option<&ExperimentKey>,
        user: &UserId,
    ) -> Option<Arc<UserContext>> {
        let hit = self
            .user_contexts
            .as_ref()?
            .get(&(experiment.cloned(), user.clone()));
        let result = if hit.is_some() { "hit" } else { "miss" };
        metrics::counter!("marquee_user_context_total", "result" => result).increment(1);
        hit
    }

    /// The user's sticky arm in `experiment` and the movies they saw, read
    /// (and cached) by one PostgreSQL query bounded by `limit`. `None` when
    /// the query failed or was too slow: the caller serves "no arm, nothing
    /// seen" rather than failing, and nothing is cached.
    pub async fn user_context(
        &self,
        experiment: Option<&ExperimentKey>,
        user: &UserId,
        limit: Duration,
    ) -> Option<Arc<UserContext>> {
        let key = (experiment.cloned(), user.clone());
        match tokio::time::timeout(limit, self.pg.user_context(experiment, user)).await {
            Ok(Ok(context)) => {
                let context = Arc::new(context);
                if let Some(cache) = &self.user_contexts {
                    cache.insert(key, context.clone());
                }
                Some(context)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the user's arm and history failed; serving unfiltered");
                None
            }
            Err(_) => {
                tracing::warn!("reading the user's arm and history timed out; serving unfiltered");
                None
            }
        }
    }

    /// Queue a new sticky assignment for the batched PostgreSQL write and
    /// remember it at once, so this replica keeps the arm even before the
    /// write lands. `context` is the user's context as read from PostgreSQL;
    /// without one (the read failed) nothing is cached, so the next request
    /// asks again instead of trusting an empty history.
    pub fn record_assignment(&self, assignment: NewAssignment, context: Option<&UserContext>) {
        if let (Some(cache), Some(context)) = (&self.user_contexts, context) {
            let remembered = UserContext {
                sticky_arm: Some(assignment.arm.clone()),
                seen: context.seen.clone(),
            };
            cache.insert(
                (
                    Some(assignment.experiment.clone()),
                    assignment.user_id.clone(),
                ),
                Arc::new(remembered),
            );
        }
        if self.assignments.try_send(assignment).is_err() {
            // The user will be re-hashed to the same arm until weights change;
            // losing the record only loses stickiness across a weight change.
            metrics::counter!("marquee_assignments_dropped_total").increment(1);
        }
    }
}
