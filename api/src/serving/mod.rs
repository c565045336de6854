//! The recommendations path's in-process state: cached catalog, experiments
//! and hot movies, plus the bounded buffers that take impressions and new
//! assignments off the request path.
//!
//! Requests only read snapshots (an `Arc` swapped whole, read without a
//! lock); the background tasks in [`background`] replace them.

pub mod background;
pub mod cache;
pub mod context_reads;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use domain::experiment::Experiment;
use domain::ids::{ExperimentKey, MovieId, UserId};
use domain::recommend::{CatalogEntry, PrecomputedList, ScoredItem};
use domain::serving::{GenreIndex, MovieMap, MovieMeta};
use repositories::kafka::{BufferedProducer, EventProducer, Refused};
use repositories::postgres::serving::{NewAssignment, PgServing, UserContext};
use tokio::sync::{mpsc, oneshot};

use cache::{ExpiringCache, UserKey, UserKeyRef};
use context_reads::{ContextRead, ContextReadError};

/// Movies kept for the last-resort fallbacks (popular, any catalog movie).
pub const FALLBACK_LEN: usize = 200;

/// How long this replica itself keeps a user's dislikes in front of
/// PostgreSQL: far longer than the worker takes to store them.
const RECENT_NEGATIVES_TTL: Duration = Duration::from_secs(300);
const RECENT_NEGATIVES_USERS: u64 = 100_000;

/// Context reads waiting for a reader; past this a request waits to queue,
/// within its time limit for the read.
const CONTEXT_QUEUE: usize = 4096;

/// The catalog as the api serves it: titles by id and the fallback lists.
#[derive(Debug, Default)]
pub struct CatalogSnapshot {
    /// Each title already as a JSON string: escaped once per catalog load,
    /// not once per served movie.
    pub titles: MovieMap<Box<serde_json::value::RawValue>>,
    /// Popular by PostgreSQL history: served when Redis is down or cold.
    pub popular: Vec<ScoredItem>,
    /// The first catalog movies: a non-empty catalog never yields an empty list.
    pub any: Vec<ScoredItem>,
    /// Year and genre bits per movie, for the list filters.
    pub meta: MovieMap<MovieMeta>,
    pub genres: GenreIndex,
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
        let mut genres = GenreIndex::default();
        let meta = catalog
            .iter()
            .map(|m| {
                let bits = genres.bits_of(m.genres.iter().map(String::as_str));
                (
                    m.movie_id,
                    MovieMeta {
                        year: m.year,
                        genres: bits,
                    },
                )
            })
            .collect();
        Self {
            meta,
            genres,
            titles: catalog
                .into_iter()
                .filter_map(|m| Some((m.movie_id, serde_json::value::to_raw_value(&m.title).ok()?)))
                .collect(),
            popular,
            any,
        }
    }
}

/// A value swapped whole by a background task and read by every request.
///
/// arc-swap rather than `RwLock<Arc<T>>`: a read here writes nothing shared
/// (no lock word, and with [`Self::peek`] no reference count), where the
/// lock's reader count and the `Arc`'s count were written by every request on
/// both workers, and those cache lines moved between the cores each time.
#[derive(Debug, Default)]
pub struct Snapshot<T>(ArcSwap<T>);

impl<T> Snapshot<T> {
    pub fn new(value: T) -> Self {
        Self(ArcSwap::from_pointee(value))
    }

    /// The current value, kept alive for as long as the caller holds it
    /// (across `.await`s too).
    pub fn get(&self) -> Arc<T> {
        self.0.load_full()
    }

    /// The current value for a short, synchronous read: no reference count
    /// is taken; hold the guard only briefly and never across an `.await`.
    pub fn peek(&self) -> arc_swap::Guard<Arc<T>> {
        self.0.load()
    }

    pub fn set(&self, value: T) {
        self.0.store(Arc::new(value));
    }
}

/// Everything the recommendations and events routes share.
pub struct Serving {
    /// `MARQUEE_DEFAULT_EXPERIMENT`, parsed once rather than on every request; `None` if invalid.
    pub default_experiment: Option<ExperimentKey>,
    pub pg: PgServing,
    /// Client events (`POST /v1/events`): each waits for the broker's ack.
    pub producer: EventProducer,
    /// Impressions: buffered and batched by librdkafka, never awaited.
    pub impressions: BufferedProducer,
    pub catalog: Snapshot<CatalogSnapshot>,
    pub experiments: Snapshot<HashMap<ExperimentKey, Experiment>>,
    pub hot: Snapshot<Vec<ScoredItem>>,
    assignments: mpsc::Sender<NewAssignment>,
    /// Reads of users' contexts the cache did not hold, for the batching readers.
    context_reads: mpsc::Sender<ContextRead>,
    pub metrics: ServingMetrics,
    /// Sticky arm and seen movies per (experiment, user), so a returning user
    /// costs no PostgreSQL round trip; `None` when disabled.
    /// Keyed by (experiment, user).
    user_contexts: Option<ExpiringCache<UserKey, Arc<UserContext>>>,
    /// Precomputed lists by (algorithm, user), `None` for "Redis has none";
    /// `None` when disabled.
    lists: Option<ExpiringCache<UserKey, Option<Arc<PrecomputedList>>>>,
    /// Movies users said "not this one" to through this replica, for as long
    /// as the worker may take to store them in PostgreSQL (which is the truth
    /// after that, for every replica): merged into contexts read meanwhile.
    recent_negatives: Option<ExpiringCache<UserKey, Arc<Vec<MovieId>>>>,
    /// Bumped whenever remembered lists are dropped: a Redis read that began
    /// before the drop may carry a list rewritten since, and must not be
    /// remembered.
    list_generation: AtomicU64,
}

/// Lifetime and size of one of the per-user caches.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    pub ttl: Duration,
    pub capacity: u64,
}

impl CacheSettings {
    /// A cache of this lifetime and size, or `None` for a zero lifetime.
    fn build<V: Clone>(self) -> Option<ExpiringCache<UserKey, V>> {
        ExpiringCache::new(self.ttl, self.capacity)
    }
}

/// The receiving ends of the assignment and context-read queues, handed to
/// the tasks that drain them.
pub struct ServingQueues {
    pub assignments: mpsc::Receiver<NewAssignment>,
    pub context_reads: mpsc::Receiver<ContextRead>,
}

/// Counters of the recommendations path, registered once: looking a metric
/// up by its labels costs allocations and hashing on every request.
pub struct ServingMetrics {
    pub list_hit: metrics::Counter,
    pub list_miss: metrics::Counter,
    pub list_error: metrics::Counter,
    pub list_timeout: metrics::Counter,
    context_hit: metrics::Counter,
    context_miss: metrics::Counter,
    list_memory_hit: metrics::Counter,
    list_memory_miss: metrics::Counter,
    impressions_buffer_full: metrics::Counter,
    impressions_refused: metrics::Counter,
    assignments_dropped: metrics::Counter,
}

impl ServingMetrics {
    fn register() -> Self {
        let list = |result: &'static str| metrics::counter!("marquee_recs_cache_total", "result" => result);
        let context = |result: &'static str| metrics::counter!("marquee_user_context_total", "result" => result);
        let dropped = |reason: &'static str| metrics::counter!("marquee_impressions_dropped_total", "reason" => reason);
        Self {
            list_hit: list("hit"),
            list_miss: list("miss"),
            list_error: list("error"),
            list_timeout: list("timeout"),
            context_hit: context("hit"),
            context_miss: context("miss"),
            list_memory_hit: metrics::counter!("marquee_list_memory_total", "result" => "hit"),
            list_memory_miss: metrics::counter!("marquee_list_memory_total", "result" => "miss"),
            impressions_buffer_full: dropped("queue_full"),
            impressions_refused: dropped("refused"),
            assignments_dropped: metrics::counter!("marquee_assignments_dropped_total"),
        }
    }

    /// Delivery outcomes of impressions, counted by the producer's callback.
    pub fn impression_deliveries() -> repositories::kafka::DeliveryCounters {
        repositories::kafka::DeliveryCounters {
            delivered: metrics::counter!("marquee_impressions_sent_total"),
            failed: metrics::counter!("marquee_impressions_dropped_total", "reason" => "kafka"),
        }
    }
}

impl Serving {
    pub fn new(
        pg: PgServing,
        producer: EventProducer,
        impressions: BufferedProducer,
        queue_len: usize,
        user_cache: CacheSettings,
        list_cache: CacheSettings,
        default_experiment: &str,
    ) -> (Self, ServingQueues) {
        let (assignments_tx, assignments_rx) = mpsc::channel(queue_len.max(1));
        let (context_reads_tx, context_reads_rx) = mpsc::channel(CONTEXT_QUEUE);
        (
            Self {
                default_experiment: ExperimentKey::parse(default_experiment).ok(),
                pg,
                producer,
                impressions,
                catalog: Snapshot::default(),
                experiments: Snapshot::default(),
                hot: Snapshot::default(),
                assignments: assignments_tx,
                context_reads: context_reads_tx,
                user_contexts: user_cache.build(),
                lists: list_cache.build(),
                recent_negatives: ExpiringCache::new(RECENT_NEGATIVES_TTL, RECENT_NEGATIVES_USERS),
                list_generation: AtomicU64::new(0),
                metrics: ServingMetrics::register(),
            },
            ServingQueues {
                assignments: assignments_rx,
                context_reads: context_reads_rx,
            },
        )
    }

    /// Hand an impression to the Kafka buffer without waiting; a full buffer
    /// (Kafka slow or down) drops it and counts the drop, so the response is
    /// never held up.
    pub fn emit_impression(&self, user: &UserId, encode: impl FnOnce() -> Vec<u8>) {
        match self.impressions.send_encoded(user, encode) {
            Ok(()) => {}
            Err(Refused::BufferFull) => self.metrics.impressions_buffer_full.increment(1),
            Err(Refused::Kafka(e)) => {
                self.metrics.impressions_refused.increment(1);
                tracing::warn!(error = %e, "kafka refused an impression; dropped");
            }
        }
    }

    /// The user's context if process memory holds a fresh one.
    pub fn cached_context(
        &self,
        experiment: Option<&ExperimentKey>,
        user: &UserId,
    ) -> Option<Arc<UserContext>> {
        let hit = self.user_contexts.as_ref()?.get(&UserKeyRef::new(
            experiment.map(ExperimentKey::as_str),
            user.as_str(),
        ));
        match hit {
            Some(_) => self.metrics.context_hit.increment(1),
            None => self.metrics.context_miss.increment(1),
        }
        hit
    }

    /// `algorithm`'s list for `user` if process memory holds a fresh answer:
    /// `Some(None)` means Redis had no list a moment ago.
    pub fn cached_list(
        &self,
        algorithm: &str,
        user: &UserId,
    ) -> Option<Option<Arc<PrecomputedList>>> {
        let hit = self
            .lists
            .as_ref()?
            .get(&UserKeyRef::new(Some(algorithm), user.as_str()));
        match hit {
            Some(_) => self.metrics.list_memory_hit.increment(1),
            None => self.metrics.list_memory_miss.increment(1),
        }
        hit
    }

    /// Stop serving remembered lists of `algorithm` (every algorithm for
    /// `None`): the model loop rewrote them, or a message may have been missed.
    pub fn forget_lists(&self, algorithm: Option<&str>) {
        // Bumped before dropping: see `remember_list`.
        self.list_generation.fetch_add(1, Ordering::AcqRel);
        match (&self.lists, algorithm) {
            (Some(cache), Some(algorithm)) => cache.remove_scope(algorithm),
            (Some(cache), None) => cache.clear(),
            (None, _) => {}
        }
    }

    /// The current list generation: take it before reading lists from Redis
    /// and hand it to [`Self::remember_list`].
    pub fn list_generation(&self) -> u64 {
        self.list_generation.load(Ordering::Acquire)
    }

    /// Remember what Redis answered for `algorithm`'s list of `user`, unless
    /// remembered lists were dropped since the read began (`generation`): the
    /// answer may predate a rewrite. Checked after inserting, and the entry
    /// taken back, so a drop between the check and the insert cannot be missed.
    pub fn remember_list(
        &self,
        algorithm: &str,
        user: &UserId,
        list: Option<Arc<PrecomputedList>>,
        generation: u64,
    ) {
        if let Some(cache) = &self.lists {
            if self.list_generation() != generation {
                return;
            }
            cache.insert(UserKey::new(Some(algorithm), user.as_str()), list);
            if self.list_generation() != generation {
                cache.remove(&UserKeyRef::new(Some(algorithm), user.as_str()));
            }
        }
    }

    /// The user's sticky arm in `experiment` and the movies they saw, read
    /// from PostgreSQL (batched with other users' reads, see
    /// [`context_reads`]) and cached, all within `limit`. `None` when the read
    /// failed or was too slow: the caller serves "no arm, nothing seen"
    /// rather than failing, and nothing is cached.
    pub async fn user_context(
        &self,
        experiment: Option<&ExperimentKey>,
        user: &UserId,
        limit: Duration,
    ) -> Option<Arc<UserContext>> {
        let key = UserKey::new(experiment.map(ExperimentKey::as_str), user.as_str());
        let read = async {
            let (reply, answer) = oneshot::channel();
            let queued = ContextRead {
                experiment: experiment.cloned(),
                user: user.clone(),
                reply,
            };
            self.context_reads
                .send(queued)
                .await
                .map_err(|_| ContextReadError::Stopped)?;
            answer.await.map_err(|_| ContextReadError::Stopped)?
        };
        match tokio::time::timeout(limit, read).await {
            Ok(Ok(context)) => {
                let context = Arc::new(self.with_recent_negatives(user, context));
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

    /// Leave `movies` out of `user`'s lists from the next request on: their
    /// cached contexts (every experiment's) get them as seen, and contexts
    /// read from PostgreSQL before the worker stores the dislike get them too.
    pub fn exclude_at_once(&self, user: &UserId, movies: &[MovieId]) {
        if movies.is_empty() {
            return;
        }
        if let Some(recent) = &self.recent_negatives {
            let key = UserKeyRef::new(None, user.as_str());
            let mut all: Vec<MovieId> = recent.get(&key).map(|m| m.to_vec()).unwrap_or_default();
            all.extend_from_slice(movies);
            all.sort_unstable();
            all.dedup();
            recent.insert(UserKey::new(None, user.as_str()), Arc::new(all));
        }
        let Some(contexts) = &self.user_contexts else {
            return;
        };
        let experiments = self.experiments.get();
        let scopes = experiments
            .keys()
            .map(|k| Some(k.as_str()))
            .chain(std::iter::once(None));
        for scope in scopes {
            let key = UserKeyRef::new(scope, user.as_str());
            if let Some(context) = contexts.get(&key) {
                let mut updated = (*context).clone();
                updated.seen.extend(movies.iter().copied());
                contexts.insert(UserKey::new(scope, user.as_str()), Arc::new(updated));
            }
        }
    }

    /// `context` (just read from PostgreSQL) with the dislikes this replica
    /// took that PostgreSQL may not hold yet.
    fn with_recent_negatives(&self, user: &UserId, mut context: UserContext) -> UserContext {
        if let Some(recent) = self
            .recent_negatives
            .as_ref()
            .and_then(|r| r.get(&UserKeyRef::new(None, user.as_str())))
        {
            context.seen.extend(recent.iter().copied());
        }
        context
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
                UserKey::new(
                    Some(assignment.experiment.as_str()),
                    assignment.user_id.as_str(),
                ),
                Arc::new(remembered),
            );
        }
        if self.assignments.try_send(assignment).is_err() {
            // The user will be re-hashed to the same arm until weights change;
            // losing the record only loses stickiness across a weight change.
            self.metrics.assignments_dropped.increment(1);
        }
    }
}
