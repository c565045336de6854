//! Ports the event pipeline (worker) needs: event log, analytics store, ledger, caches.
//!
//! The worker's consumer is written against these traits so that its
//! exactly-once bookkeeping can be reasoned about (and faked) apart from the
//! servers that implement them in `repositories`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::{Attribution, Event, EventKind, ImpressionDetails, ServedItem};
use crate::experiment::WeightPeriod;
use crate::ids::{AlgorithmKey, ArmKey, EventId, ExperimentKey, MovieId, RequestId, UserId};
use crate::results::CohortCounts;

/// A failure of a store behind a pipeline port.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{store}: {message}")]
pub struct StoreError {
    /// Which store failed (`postgres`, `clickhouse`, `redis`, `kafka`), for logs and metrics.
    pub store: &'static str,
    /// Whether the same call may succeed later (the store is down, a timeout).
    pub transient: bool,
    pub message: String,
}

impl StoreError {
    pub fn new(store: &'static str, transient: bool, message: impl Into<String>) -> Self {
        Self {
            store,
            transient,
            message: message.into(),
        }
    }
}

/// Identifies one ingestion attempt in the ledger and on every ClickHouse row
/// it wrote, so a crash between the two can be resolved by looking the batch up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BatchId(Uuid);

impl BatchId {
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for BatchId {
    fn from(value: Uuid) -> Self {
        Self(value)
    }
}

impl std::fmt::Display for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What a served list was, remembered under its request id so that the
/// clicks, views, likes and conversions that follow can be attributed to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServedList {
    pub experiment: ExperimentKey,
    pub arm: ArmKey,
    pub algorithm: AlgorithmKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    pub items: Vec<ServedItem>,
    /// Whom the list was served to. Lists stored before this field existed
    /// have none and are matched on the request id alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserId>,
}

impl From<&ImpressionDetails> for ServedList {
    fn from(details: &ImpressionDetails) -> Self {
        Self {
            experiment: details.experiment.clone(),
            arm: details.arm.clone(),
            algorithm: details.algorithm.clone(),
            model_version: details.model_version.clone(),
            items: details.items.clone(),
            user: None,
        }
    }
}

/// Why an event naming a request id was not credited to its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributionRefusal {
    /// The event's user is not the one the list was served to.
    OtherUser,
    /// A click on a movie the list did not contain.
    MovieNotServed,
    /// A click beyond the cap of clicks credited per (served list, movie).
    ClickCap,
}

impl AttributionRefusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OtherUser => "other_user",
            Self::MovieNotServed => "movie_not_served",
            Self::ClickCap => "click_cap",
        }
    }
}

impl ServedList {
    /// Whether an event of `kind` by `user` about `movie` may be credited to
    /// this list. A request id travels through clients, so anyone can name
    /// one: without this check, clicks from another user on a movie that
    /// was never served were credited to the arm. Views, likes and
    /// conversions may be of a movie reached from the page, so only a click
    /// must be on a served movie.
    pub fn admits(
        &self,
        kind: EventKind,
        user: &UserId,
        movie: Option<MovieId>,
    ) -> Result<(), AttributionRefusal> {
        if self
            .user
            .as_ref()
            .is_some_and(|served_to| served_to != user)
        {
            return Err(AttributionRefusal::OtherUser);
        }
        if kind == EventKind::Click
            && !movie.is_some_and(|m| self.items.iter().any(|item| item.movie_id == m))
        {
            return Err(AttributionRefusal::MovieNotServed);
        }
        Ok(())
    }

    /// Attribution of an event about `movie`: the list's experiment, arm and
    /// algorithm, and the movie's position in the list. A movie that was not
    /// in the list still belongs to the arm that served the page (position unknown).
    pub fn attribute(&self, movie: Option<MovieId>) -> Attribution {
        let position = movie.and_then(|m| {
            self.items
                .iter()
                .find(|item| item.movie_id == m)
                .map(|item| item.position)
        });
        Attribution {
            experiment: self.experiment.clone(),
            arm: self.arm.clone(),
            algorithm: self.algorithm.clone(),
            position,
        }
    }
}

/// An event ready for the durable stores: validated, with its attributions.
///
/// Most events have at most one attribution. A conversion without a request
/// id counts for the user's sticky arm in every running experiment, so it may
/// have several and is then stored once per experiment (`event_id` is unique
/// per experiment, not globally, for such conversions).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub event: Event,
    pub attributions: Vec<Attribution>,
    /// Model version of the list that served the event, when known.
    pub model_version: Option<String>,
}

impl StoredEvent {
    /// An event with nothing attributed yet; impressions attribute to themselves.
    pub fn new(event: Event) -> Self {
        let (attributions, model_version) = match &event.impression {
            Some(imp) => (
                vec![Attribution {
                    experiment: imp.experiment.clone(),
                    arm: imp.arm.clone(),
                    algorithm: imp.algorithm.clone(),
                    position: None,
                }],
                imp.model_version.clone(),
            ),
            None => (Vec::new(), None),
        };
        Self {
            event,
            attributions,
            model_version,
        }
    }
}

/// The raw-event store (ClickHouse): one insert per batch, all or nothing.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Insert `events` tagged with `batch` as one atomic write.
    async fn insert_batch(&self, batch: BatchId, events: &[StoredEvent]) -> Result<(), StoreError>;
    /// Whether rows of `batch` are present (the insert either landed whole or not at all).
    async fn batch_present(&self, batch: BatchId) -> Result<bool, StoreError>;
    /// Whether the store is still running an insert of `batch`: one its writer
    /// stopped waiting for (a timeout) may yet land, so until it ends the
    /// batch can be declared neither present nor absent.
    async fn batch_in_flight(&self, batch: BatchId) -> Result<bool, StoreError>;
}

/// The durable record of which event ids reached the event store (PostgreSQL).
///
/// A claim records the batch as pending together with every event id new to
/// the ledger, and the history rows (users, views, likes) of those events, in
/// one transaction; the caller then writes the new events to the event store
/// and marks the batch written. An id held by a batch that is still pending
/// (its writer crashed or lost its lease) is resolved by asking the event
/// store whether that batch landed.
#[async_trait]
pub trait IngestLedger: Send {
    /// Claim the events of `batch`; returns the ids the caller must write.
    async fn claim(
        &mut self,
        batch: BatchId,
        events: &[StoredEvent],
        store: &dyn EventStore,
    ) -> Result<Vec<EventId>, StoreError>;
    /// Record that the batch's events are in the event store.
    async fn mark_written(&mut self, batch: BatchId) -> Result<(), StoreError>;
    /// Give up on a claimed batch (the event-store write failed): release its
    /// lease so that the retry, or another worker, can resolve it.
    async fn abandon(&mut self, batch: BatchId);
}

/// Fast-path duplicate filter (Redis): a hint, never the only guard.
#[async_trait]
pub trait DedupCache: Send + Sync {
    /// For each id, whether it is known to be durably stored already.
    async fn seen(&self, ids: &[EventId]) -> Result<Vec<bool>, StoreError>;
    /// Remember `ids` as durably stored for `ttl_s` seconds.
    async fn mark(&self, ids: &[EventId], ttl_s: u64) -> Result<(), StoreError>;
}

/// Served lists by request id (Redis with an expiry).
#[async_trait]
pub trait AttributionStore: Send + Sync {
    async fn put(&self, lists: &[(RequestId, ServedList)], ttl_s: u64) -> Result<(), StoreError>;
    /// One answer per id: `None` when unknown or expired.
    async fn get_many(&self, ids: &[RequestId]) -> Result<Vec<Option<ServedList>>, StoreError>;
}

/// A click credited to a served list: which list, which movie, which event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClickCredit {
    pub request_id: RequestId,
    pub movie_id: MovieId,
    pub event_id: EventId,
}

/// The clicks credited per (served list, movie), durable and shared by every
/// worker: one list cannot be clicked into any CTR by repeating a click.
#[async_trait]
pub trait ClickCredits: Send + Sync {
    /// For each of `clicks`, whether it is among the first `cap` distinct
    /// events ever credited to its (request, movie). Idempotent: an event
    /// presented again (a retried batch, a redelivery) gets the same answer.
    async fn admit(&self, clicks: &[ClickCredit], cap: u32) -> Result<Vec<bool>, StoreError>;
}

/// A user's sticky arm in one running experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct StickyArm {
    pub user_id: UserId,
    pub attribution: Attribution,
}

/// Sticky assignments (PostgreSQL), for conversions that carry no request id.
#[async_trait]
pub trait AssignmentLookup: Send + Sync {
    /// Every (user, running experiment) assignment of `users`.
    async fn sticky_arms(&self, users: &[UserId]) -> Result<Vec<StickyArm>, StoreError>;
}

/// An experiment due for a bandit reweight, leased to one worker for one interval.
#[derive(Debug, Clone)]
pub struct LeasedExperiment {
    pub experiment: crate::experiment::Experiment,
    pub leased_at: DateTime<Utc>,
    /// When it was started; the bandit's exploration time counts from here.
    pub started_at: Option<DateTime<Utc>>,
    /// Its periods of constant weights so far, oldest first.
    pub periods: Vec<WeightPeriod>,
}

/// Experiments as the reweighting loop sees them (PostgreSQL).
#[async_trait]
pub trait ReweightRepository: Send + Sync {
    /// Atomically lease every running adaptive experiment whose last reweight
    /// is older than its interval; two workers never get the same one.
    async fn lease_due(&self) -> Result<Vec<LeasedExperiment>, StoreError>;
    /// Record new weights: history rows with the posterior, then the arms.
    async fn record_weights(
        &self,
        experiment: &ExperimentKey,
        reweight: &crate::experiment::Reweight,
        reason: &str,
    ) -> Result<(), StoreError>;
}

/// Which users a cohort read covers and how long each is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CohortWindow {
    /// Only users first exposed at or after this time.
    pub first_exposed_from: Option<DateTime<Utc>>,
    /// Only users first exposed before this time.
    pub first_exposed_before: Option<DateTime<Utc>>,
    /// Sum each user's outcome over this many days from their first exposure
    /// (whole days, the first day included); `None` for the whole exposure.
    pub outcome_window_days: Option<u16>,
}

/// Per-user sums grouped by cohort of first exposure (ClickHouse), for the
/// results and the bandit alike.
#[async_trait]
pub trait CohortSource: Send + Sync {
    /// One row per (period, arm) with users: period k holds the users first
    /// exposed in [starts[k], starts[k+1]) (the last period is open, and users
    /// first seen before starts[0] count in period 0).
    async fn cohort_counts(
        &self,
        experiment: &ExperimentKey,
        starts: &[DateTime<Utc>],
        window: CohortWindow,
    ) -> Result<Vec<CohortCounts>, StoreError>;
}

/// Current weights as published to api replicas (Redis `weights:{experiment}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishedWeights {
    pub experiment: ExperimentKey,
    /// In the experiment's arm order.
    pub weights: Vec<ArmWeight>,
    pub computed_at: DateTime<Utc>,
    pub reason: String,
}

impl PublishedWeights {
    /// The announcement of `reweight`'s weights for `experiment`, as of now.
    pub fn from_reweight(
        experiment: &ExperimentKey,
        reweight: &crate::experiment::Reweight,
        reason: &str,
    ) -> Self {
        Self {
            experiment: experiment.clone(),
            weights: reweight
                .weights
                .iter()
                .map(|(arm, weight)| ArmWeight {
                    arm: arm.clone(),
                    weight: *weight,
                })
                .collect(),
            computed_at: Utc::now(),
            reason: reason.to_owned(),
        }
    }
}

/// One arm's weight in [`PublishedWeights`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmWeight {
    pub arm: ArmKey,
    pub weight: f64,
}

/// Where api replicas learn about new weights (Redis SET + PUBLISH).
#[async_trait]
pub trait WeightsPublisher: Send + Sync {
    async fn publish(&self, weights: &PublishedWeights) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> ServedList {
        ServedList {
            experiment: ExperimentKey::parse("home").unwrap(),
            arm: ArmKey::parse("b").unwrap(),
            algorithm: AlgorithmKey::parse("als").unwrap(),
            model_version: Some("v1".into()),
            items: vec![
                ServedItem {
                    movie_id: MovieId::parse(7).unwrap(),
                    position: 0,
                },
                ServedItem {
                    movie_id: MovieId::parse(9).unwrap(),
                    position: 1,
                },
            ],
            user: Some(UserId::parse("alice").unwrap()),
        }
    }

    #[test]
    fn only_the_served_user_and_for_clicks_a_served_movie_are_admitted() {
        let alice = UserId::parse("alice").unwrap();
        let mallory = UserId::parse("mallory").unwrap();
        let served = Some(MovieId::parse(9).unwrap());
        let unserved = Some(MovieId::parse(1).unwrap());
        let l = list();
        assert_eq!(l.admits(EventKind::Click, &alice, served), Ok(()));
        assert_eq!(
            l.admits(EventKind::Click, &mallory, served),
            Err(AttributionRefusal::OtherUser)
        );
        assert_eq!(
            l.admits(EventKind::Click, &alice, unserved),
            Err(AttributionRefusal::MovieNotServed)
        );
        assert_eq!(l.admits(EventKind::View, &alice, unserved), Ok(()));
        assert_eq!(
            l.admits(EventKind::Conversion, &mallory, None),
            Err(AttributionRefusal::OtherUser)
        );
        // A list stored before lists named their user: request id alone.
        let old = ServedList {
            user: None,
            ..list()
        };
        assert_eq!(old.admits(EventKind::View, &mallory, unserved), Ok(()));
        let json = serde_json::to_string(&old).unwrap();
        assert!(!json.contains("user"), "{json}");
    }

    #[test]
    fn attribution_finds_the_position_of_the_movie() {
        let a = list().attribute(Some(MovieId::parse(9).unwrap()));
        assert_eq!(a.arm.as_str(), "b");
        assert_eq!(a.position, Some(1));
        assert_eq!(
            list().attribute(Some(MovieId::parse(1).unwrap())).position,
            None
        );
        assert_eq!(list().attribute(None).position, None);
    }

    #[test]
    fn served_lists_round_trip_as_json() {
        let json = serde_json::to_string(&list()).unwrap();
        assert_eq!(serde_json::from_str::<ServedList>(&json).unwrap(), list());
    }
}
