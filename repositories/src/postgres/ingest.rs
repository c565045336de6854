//! The worker's ingestion ledger and the history it writes with it.
//!
//! ClickHouse 18.16 cannot deduplicate inserts and its materialized views count
//! every row inserted, so "exactly once in effect" is decided here: an event id
//! enters `ingested_events` once, under the batch that claimed it, in the same
//! transaction as the event's history rows (users, views, likes). The batch is
//! `pending` until its ClickHouse insert returns and `written` after.
//!
//! A batch left `pending` means its writer died (or gave up) between the two
//! stores. Whoever next meets one of its ids asks ClickHouse whether the batch
//! landed (an insert is one part, so all or nothing): if so the batch becomes
//! `written` and its ids are duplicates; if not it becomes `aborted` and the ids
//! move to the new batch. While a writer is between its claim and its mark it
//! holds a session advisory lock on its batch, so a second live worker (after a
//! rebalance) waits for it instead of declaring its batch lost; a writer that
//! dies loses its session and with it the lock.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::events::Attribution;
use domain::events::EventKind;
use domain::ids::{AlgorithmKey, ArmKey, EventId, ExperimentKey, UserId};
use domain::ports::pipeline::{
    AssignmentLookup, BatchId, EventStore, IngestLedger, StickyArm, StoreError, StoredEvent,
};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::{RepoError, RepoResult};

/// First key of every ledger advisory lock, so they cannot collide with other
/// users of advisory locks (sqlx's migration lock uses the one-key form).
const LOCK_CLASS: i32 = 0x4d51_4c47; // "MQLG"

/// Second key: 32 bits of the batch id. Two batches sharing it only make one
/// wait for the other, never break anything.
fn lock_key(batch: BatchId) -> i32 {
    let bytes = batch.as_uuid().into_bytes();
    i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Times one claim follows ids to a new owner batch before giving up (and
/// being retried): each round means another worker took them meanwhile.
const MAX_OWNER_ROUNDS: usize = 5;

/// Longest a claim may take, waiting for another worker's lease included.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(60);

/// The ledger of one consumer loop. It keeps its own connection (outside the
/// pool) because the batch lease is a session lock: dropping the connection is
/// what releases it when anything goes wrong, a cancelled future included.
pub struct PgIngestLedger {
    options: PgConnectOptions,
    timeout: Duration,
    conn: Option<PgConnection>,
    /// The batch whose lease `conn` holds, if any.
    leased: Option<BatchId>,
}

impl PgIngestLedger {
    /// A ledger connecting like `pool` does; `timeout` bounds each call other than a claim.
    pub fn new(pool: &PgPool, timeout: Duration) -> Self {
        Self {
            options: (*pool.connect_options()).clone(),
            timeout,
            conn: None,
            leased: None,
        }
    }

    async fn connection(&mut self) -> RepoResult<PgConnection> {
        if self.leased.take().is_some() {
            // A lease left over from an unfinished batch: end the session to release it.
            self.conn = None;
        }
        if let Some(conn) = self.conn.take() {
            return Ok(conn);
        }
        let mut conn = super::session(&self.options, self.timeout).await?;
        // Waiting on another worker's lease is bounded; the claim is then retried.
        sqlx::query("SET lock_timeout = '20s'")
            .execute(&mut conn)
            .await?;
        Ok(conn)
    }
}

fn to_store(e: RepoError) -> StoreError {
    StoreError::from(e)
}

/// A claim fails in PostgreSQL or in the event store it consults.
#[derive(Debug)]
enum ClaimError {
    Repo(RepoError),
    Store(StoreError),
}

impl From<sqlx::Error> for ClaimError {
    fn from(e: sqlx::Error) -> Self {
        Self::Repo(e.into())
    }
}

impl From<RepoError> for ClaimError {
    fn from(e: RepoError) -> Self {
        Self::Repo(e)
    }
}

impl From<StoreError> for ClaimError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<ClaimError> for StoreError {
    fn from(e: ClaimError) -> Self {
        match e {
            ClaimError::Repo(e) => e.into(),
            ClaimError::Store(e) => e,
        }
    }
}

#[async_trait]
impl IngestLedger for PgIngestLedger {
    async fn claim(
        &mut self,
        batch: BatchId,
        events: &[StoredEvent],
        store: &dyn EventStore,
    ) -> Result<Vec<EventId>, StoreError> {
        // The connection is out of `self` while it works: an error or a
        // cancellation drops it, rolling back and releasing the lease.
        let mut conn = self.connection().await.map_err(to_store)?;
        let claimed =
            match tokio::time::timeout(CLAIM_TIMEOUT, claim_on(&mut conn, batch, events, store))
                .await
            {
                Ok(result) => result?,
                Err(_) => {
                    return Err(to_store(RepoError::Timeout {
                        what: "postgres ledger claim",
                        millis: CLAIM_TIMEOUT.as_millis(),
                    }))
                }
            };
        self.conn = Some(conn);
        self.leased = Some(batch);
        Ok(claimed)
    }

    async fn mark_written(&mut self, batch: BatchId) -> Result<(), StoreError> {
        if self.leased != Some(batch) {
            return Err(StoreError::new(
                "postgres",
                true,
                format!("batch {batch} is not leased by this ledger"),
            ));
        }
        self.leased = None;
        let Some(mut conn) = self.conn.take() else {
            return Err(StoreError::new("postgres", true, "ledger connection lost"));
        };
        let fut = async {
            let updated = sqlx::query(
                "UPDATE ingest_batches SET status = 'written', finished_at = now() \
                 WHERE batch_id = $1 AND status = 'pending'",
            )
            .bind(batch.as_uuid())
            .execute(&mut conn)
            .await?
            .rows_affected();
            sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                .bind(LOCK_CLASS)
                .bind(lock_key(batch))
                .execute(&mut conn)
                .await?;
            Ok::<_, RepoError>(updated)
        };
        let updated = crate::error::with_timeout("postgres ledger mark", self.timeout, fut)
            .await
            .map_err(to_store)?;
        self.conn = Some(conn);
        if updated == 0 {
            // Only possible if our session (and lease) was lost while the
            // ClickHouse insert ran and someone else resolved the batch.
            tracing::error!(%batch, "batch was resolved by another writer while leased");
            metrics::counter!("marquee_ingest_lease_lost_total").increment(1);
            return Err(StoreError::new(
                "postgres",
                true,
                format!("batch {batch} lost its lease"),
            ));
        }
        Ok(())
    }

    async fn abandon(&mut self, batch: BatchId) {
        if self.leased == Some(batch) {
            self.leased = None;
            // Ending the session releases the lease; the batch stays pending
            // and is resolved by whoever meets its ids next.
            self.conn = None;
        }
    }
}

/// One claim inside one transaction; see the module docs.
async fn claim_on(
    conn: &mut PgConnection,
    batch: BatchId,
    events: &[StoredEvent],
    store: &dyn EventStore,
) -> Result<Vec<EventId>, ClaimError> {
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(LOCK_CLASS)
        .bind(lock_key(batch))
        .execute(&mut *conn)
        .await?;
    let mut tx = conn.begin().await?;
    sqlx::query(
        "INSERT INTO ingest_batches (batch_id, status, event_count) VALUES ($1, 'pending', $2)",
    )
    .bind(batch.as_uuid())
    .bind(i32::try_from(events.len()).unwrap_or(i32::MAX))
    .execute(&mut *tx)
    .await?;

    let mut ids: Vec<Uuid> = events.iter().map(|e| e.event.id.as_uuid()).collect();
    // A fixed order keeps two concurrent claims of overlapping ids from deadlocking.
    ids.sort_unstable();
    ids.dedup();
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO ingested_events (event_id, batch_id) \
         SELECT e, $2 FROM unnest($1::uuid[]) AS e \
         ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
    )
    .bind(&ids)
    .bind(batch.as_uuid())
    .fetch_all(&mut *tx)
    .await?;
    let mut new: HashSet<Uuid> = inserted.into_iter().collect();

    // Ids another batch holds: a written batch keeps them (duplicates); an
    // aborted one gives them to this batch. Only ids still held by the batch
    // just resolved move: a worker that resolved it first may have taken them
    // since, and they are then resolved again against their new owner (whose
    // lease this claim waits for), never taken from it.
    let mut contested: Vec<Uuid> = ids.iter().filter(|id| !new.contains(id)).copied().collect();
    for _ in 0..MAX_OWNER_ROUNDS {
        if contested.is_empty() {
            break;
        }
        let owners: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
            "SELECT e.event_id, e.batch_id, b.status FROM ingested_events e \
             JOIN ingest_batches b ON b.batch_id = e.batch_id WHERE e.event_id = ANY($1)",
        )
        .bind(&contested)
        .fetch_all(&mut *tx)
        .await?;
        let mut by_batch: HashMap<Uuid, (String, Vec<Uuid>)> = HashMap::new();
        for (event_id, owner, status) in owners {
            by_batch
                .entry(owner)
                .or_insert_with(|| (status, Vec::new()))
                .1
                .push(event_id);
        }
        contested.clear();
        for (owner, (status, owned)) in by_batch {
            let status = if status == "pending" {
                resolve_pending(&mut tx, BatchId::from(owner), store).await?
            } else {
                status
            };
            if status != "aborted" {
                continue;
            }
            let moved: Vec<Uuid> = sqlx::query_scalar(
                "UPDATE ingested_events SET batch_id = $2, ingested_at = now() \
                 WHERE event_id = ANY($1) AND batch_id = $3 RETURNING event_id",
            )
            .bind(&owned)
            .bind(batch.as_uuid())
            .bind(owner)
            .fetch_all(&mut *tx)
            .await?;
            let moved: HashSet<Uuid> = moved.into_iter().collect();
            contested.extend(owned.iter().filter(|id| !moved.contains(id)));
            new.extend(moved);
        }
    }
    if !contested.is_empty() {
        return Err(ClaimError::Store(StoreError::new(
            "postgres",
            true,
            format!(
                "{} event ids changed batch {MAX_OWNER_ROUNDS} times during one claim",
                contested.len()
            ),
        )));
    }

    let fresh: Vec<&StoredEvent> = events
        .iter()
        .filter(|e| new.contains(&e.event.id.as_uuid()))
        .collect();
    write_history(&mut tx, &fresh).await?;
    sqlx::query("UPDATE ingest_batches SET event_count = $2 WHERE batch_id = $1")
        .bind(batch.as_uuid())
        .bind(i32::try_from(new.len()).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    // Keep the caller's order; each id once.
    let mut seen = HashSet::new();
    Ok(events
        .iter()
        .map(|e| e.event.id)
        .filter(|id| new.contains(&id.as_uuid()) && seen.insert(*id))
        .collect())
}

/// Decide a pending batch of someone else: wait for its writer's lease (a live
/// writer finishes or gives up), then ask the event store whether it landed.
async fn resolve_pending(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    owner: BatchId,
    store: &dyn EventStore,
) -> Result<String, ClaimError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(LOCK_CLASS)
        .bind(lock_key(owner))
        .execute(&mut **tx)
        .await?;
    let status: String =
        sqlx::query_scalar("SELECT status FROM ingest_batches WHERE batch_id = $1")
            .bind(owner.as_uuid())
            .fetch_one(&mut **tx)
            .await?;
    if status != "pending" {
        return Ok(status);
    }
    // A writer whose insert timed out has given up its lease, but the
    // store may still be writing the batch: decided now, it could land
    // after being declared absent and its events be written twice.
    if store.batch_in_flight(owner).await? {
        return Err(ClaimError::Store(StoreError::new(
            "clickhouse",
            true,
            format!("batch {owner} is still being inserted; its events wait for it"),
        )));
    }
    let present = store.batch_present(owner).await?;
    let status = if present { "written" } else { "aborted" };
    tracing::warn!(batch = %owner, status, "resolved a batch its writer left pending");
    metrics::counter!("marquee_ingest_batches_recovered_total", "status" => status).increment(1);
    sqlx::query("UPDATE ingest_batches SET status = $2, finished_at = now() WHERE batch_id = $1")
        .bind(owner.as_uuid())
        .bind(status)
        .execute(&mut **tx)
        .await?;
    Ok(status.to_owned())
}

/// Users, views, likes and negative feedback of the events new to the ledger; each keyed by
/// event id (users by id) so a replay can never add a second row.
async fn write_history(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    events: &[&StoredEvent],
) -> RepoResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut users: Vec<&str> = events.iter().map(|e| e.event.user_id.as_str()).collect();
    users.sort_unstable();
    users.dedup();
    sqlx::query(
        "INSERT INTO users (id) SELECT * FROM unnest($1::text[]) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&users)
    .execute(&mut **tx)
    .await?;

    struct Cols {
        ids: Vec<Uuid>,
        users: Vec<String>,
        movies: Vec<i64>,
        ts: Vec<DateTime<Utc>>,
        values: Vec<Option<f64>>,
        kinds: Vec<&'static str>,
    }
    let collect = |wanted: fn(EventKind) -> bool| {
        let mut c = Cols {
            ids: Vec::new(),
            users: Vec::new(),
            movies: Vec::new(),
            ts: Vec::new(),
            values: Vec::new(),
            kinds: Vec::new(),
        };
        for e in events.iter().filter(|e| wanted(e.event.kind)) {
            let Some(movie) = e.event.movie_id else {
                continue;
            };
            c.ids.push(e.event.id.as_uuid());
            c.users.push(e.event.user_id.to_string());
            c.movies.push(movie.get());
            c.ts.push(e.event.ts);
            c.values.push(e.event.value);
            c.kinds.push(e.event.kind.as_str());
        }
        c
    };
    let views = collect(|k| k == EventKind::View);
    if !views.ids.is_empty() {
        sqlx::query(
            "INSERT INTO views (event_id, user_id, movie_id, ts, value) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::timestamptz[], $5::float8[]) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(&views.ids)
        .bind(&views.users)
        .bind(&views.movies)
        .bind(&views.ts)
        .bind(&views.values)
        .execute(&mut **tx)
        .await?;
    }
    let negative = collect(EventKind::is_negative);
    if !negative.ids.is_empty() {
        sqlx::query(
            "INSERT INTO negative_feedback (event_id, user_id, movie_id, kind, ts) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::text[], $5::timestamptz[]) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(&negative.ids)
        .bind(&negative.users)
        .bind(&negative.movies)
        .bind(&negative.kinds)
        .bind(&negative.ts)
        .execute(&mut **tx)
        .await?;
    }
    let likes = collect(|k| k == EventKind::Like);
    if !likes.ids.is_empty() {
        sqlx::query(
            "INSERT INTO likes (event_id, user_id, movie_id, ts) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::timestamptz[]) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(&likes.ids)
        .bind(&likes.users)
        .bind(&likes.movies)
        .bind(&likes.ts)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Sticky assignments read from the pool, for conversions without a request id.
#[derive(Clone)]
pub struct PgAssignmentLookup {
    pool: PgPool,
    timeout: Duration,
}

impl PgAssignmentLookup {
    pub fn new(pool: PgPool, timeout: Duration) -> Self {
        Self { pool, timeout }
    }
}

#[async_trait]
impl AssignmentLookup for PgAssignmentLookup {
    async fn sticky_arms(&self, users: &[UserId]) -> Result<Vec<StickyArm>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = users.iter().map(UserId::as_str).collect();
        let rows: Vec<(String, String, String, String)> = crate::error::with_timeout(
            "postgres sticky arms",
            self.timeout,
            sqlx::query_as(
                "SELECT a.user_id, a.experiment_key, a.arm_key, arms.algorithm_key \
                 FROM assignments a \
                 JOIN experiments e ON e.key = a.experiment_key AND e.status = 'running' \
                 JOIN arms ON arms.experiment_key = a.experiment_key AND arms.arm_key = a.arm_key \
                 WHERE a.user_id = ANY($1) ORDER BY a.user_id, a.experiment_key",
            )
            .bind(&names)
            .fetch_all(&self.pool),
        )
        .await?;
        rows.into_iter()
            .map(|(user, experiment, arm, algorithm)| {
                let parsed = (|| {
                    Ok::<_, domain::ValidationError>(StickyArm {
                        user_id: UserId::parse(user)?,
                        attribution: Attribution {
                            experiment: ExperimentKey::parse(experiment)?,
                            arm: ArmKey::parse(arm)?,
                            algorithm: AlgorithmKey::parse(algorithm)?,
                            position: None,
                        },
                    })
                })();
                parsed
                    .map_err(|e| StoreError::new("postgres", false, format!("assignment row: {e}")))
            })
            .collect()
    }
}
