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
use domain::experiment::Experiment;
use domain::ids::{ExperimentKey, MovieId};
use domain::recommend::{CatalogEntry, ScoredItem};
use repositories::kafka::EventProducer;
use repositories::postgres::serving::{NewAssignment, PgServing};
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
    pub pg: PgServing,
    pub producer: EventProducer,
    pub catalog: Snapshot<CatalogSnapshot>,
    pub experiments: Snapshot<HashMap<ExperimentKey, Experiment>>,
    pub hot: Snapshot<Vec<ScoredItem>>,
    impressions: mpsc::Sender<Event>,
    assignments: mpsc::Sender<NewAssignment>,
}

/// The receiving ends, handed to the background tasks.
pub struct ServingQueues {
    pub impressions: mpsc::Receiver<Event>,
    pub assignments: mpsc::Receiver<NewAssignment>,
}

impl Serving {
    pub fn new(pg: PgServing, producer: EventProducer, queue_len: usize) -> (Self, ServingQueues) {
        let (impressions_tx, impressions_rx) = mpsc::channel(queue_len.max(1));
        let (assignments_tx, assignments_rx) = mpsc::channel(queue_len.max(1));
        (
            Self {
                pg,
                producer,
                catalog: Snapshot::default(),
                experiments: Snapshot::default(),
                hot: Snapshot::default(),
                impressions: impressions_tx,
                assignments: assignments_tx,
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

    /// Queue a new sticky assignment for the batched PostgreSQL write.
    pub fn record_assignment(&self, assignment: NewAssignment) {
        if self.assignments.try_send(assignment).is_err() {
            // The user will be re-hashed to the same arm until weights change;
            // losing the record only loses stickiness across a weight change.
            metrics::counter!("marquee_assignments_dropped_total").increment(1);
        }
    }
}
