//! The registry of trained models: one row per (algorithm, version), the bytes
//! in S3, and which version of each algorithm is active.
//!
//! "Active" is a row status guarded by a unique partial index, so at most one
//! version per algorithm serves; activating is one transaction that swaps it,
//! which is also how a rollback works.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, PgPool};

use super::Db;
use crate::{RepoError, RepoResult};

/// A configured algorithm: its key (the arms' `algorithm_key`) and kind.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AlgorithmRow {
    pub key: String,
    pub kind: String,
    pub params: serde_json::Value,
}

/// One registered model version.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ModelRow {
    pub algorithm_key: String,
    pub version: String,
    pub s3_key: String,
    pub sha256: String,
    pub format_version: i32,
    pub metrics: serde_json::Value,
    pub manifest: serde_json::Value,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
}

impl ModelRow {
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }
}

/// What a training run registers.
#[derive(Debug, Clone)]
pub struct NewModel<'a> {
    pub algorithm_key: &'a str,
    pub version: &'a str,
    pub s3_key: &'a str,
    pub sha256: &'a str,
    pub format_version: i32,
    pub metrics: serde_json::Value,
    pub manifest: serde_json::Value,
}

const COLUMNS: &str = "algorithm_key, version, s3_key, sha256, format_version, metrics, \
                       manifest, status, created_at, activated_at";

async fn find_algorithm(pool: &PgPool, key: &str) -> RepoResult<Option<AlgorithmRow>> {
    Ok(
        sqlx::query_as("SELECT key, kind, params FROM algorithms WHERE key = $1")
            .bind(key)
            .fetch_optional(pool)
            .await?,
    )
}

/// Register a model (inactive). A version that exists already is a conflict.
async fn insert_model(pool: &PgPool, model: &NewModel<'_>) -> RepoResult<()> {
    let result = sqlx::query(
        "INSERT INTO models (algorithm_key, version, s3_key, sha256, format_version, metrics, manifest) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(model.algorithm_key)
    .bind(model.version)
    .bind(model.s3_key)
    .bind(model.sha256)
    .bind(model.format_version)
    .bind(&model.metrics)
    .bind(&model.manifest)
    .execute(pool)
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(RepoError::Conflict(
            format!("model {}/{} exists", model.algorithm_key, model.version),
        )),
        Err(e) if is_foreign_key_violation(&e) => Err(RepoError::NotFound(format!(
            "algorithm {}",
            model.algorithm_key
        ))),
        Err(e) => Err(e.into()),
    }
}

fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.kind() == sqlx::error::ErrorKind::ForeignKeyViolation)
}

/// Make `version` the active model of `algorithm` and the previous one inactive,
/// atomically. Activating the active version is a no-op that still succeeds.
async fn activate(pool: &PgPool, algorithm: &str, version: &str) -> RepoResult<ModelRow> {
    let mut tx = pool.begin().await?;
    // Serialise activations per algorithm: two concurrent ones would otherwise
    // both clear the old row and then collide on the one-active index.
    let locked: Option<String> =
        sqlx::query_scalar("SELECT key FROM algorithms WHERE key = $1 FOR UPDATE")
            .bind(algorithm)
            .fetch_optional(&mut *tx)
            .await?;
    if locked.is_none() {
        return Err(RepoError::NotFound(format!("algorithm {algorithm}")));
    }
    let exists: Option<String> =
        sqlx::query_scalar("SELECT version FROM models WHERE algorithm_key = $1 AND version = $2")
            .bind(algorithm)
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
    if exists.is_none() {
        return Err(RepoError::NotFound(format!("model {algorithm}/{version}")));
    }
    sqlx::query(
        "UPDATE models SET status = 'inactive' \
         WHERE algorithm_key = $1 AND status = 'active' AND version <> $2",
    )
    .bind(algorithm)
    .bind(version)
    .execute(&mut *tx)
    .await?;
    let row: ModelRow = sqlx::query_as(&format!(
        "UPDATE models SET status = 'active', \
             activated_at = CASE WHEN status = 'active' THEN activated_at ELSE now() END \
         WHERE algorithm_key = $1 AND version = $2 RETURNING {COLUMNS}"
    ))
    .bind(algorithm)
    .bind(version)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// Every model, newest first within each algorithm.
async fn list_models(pool: &PgPool) -> RepoResult<Vec<ModelRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM models ORDER BY algorithm_key, created_at DESC, version DESC"
    ))
    .fetch_all(pool)
    .await?)
}

/// The active model of every algorithm that has one.
async fn active_models(pool: &PgPool) -> RepoResult<Vec<ModelRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM models WHERE status = 'active' ORDER BY algorithm_key"
    ))
    .fetch_all(pool)
    .await?)
}

async fn find_model(pool: &PgPool, algorithm: &str, version: &str) -> RepoResult<Option<ModelRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM models WHERE algorithm_key = $1 AND version = $2"
    ))
    .bind(algorithm)
    .bind(version)
    .fetch_optional(pool)
    .await?)
}

/// First key of the precompute leases ("MQPC"), apart from the ingest
/// ledger's class and sqlx's one-key migration lock.
const PRECOMPUTE_LOCK_CLASS: i32 = 0x4d51_5043;

/// The right to precompute one algorithm's lists: a session advisory lock
/// held by a connection of its own, so a worker that dies mid-way releases it
/// with its session, and no lease outlives the work (no expiry to guess).
pub struct PrecomputeLease {
    conn: PgConnection,
}

impl PrecomputeLease {
    /// Take the lease of `algorithm` if no other session holds it.
    async fn try_take(
        pool: &PgPool,
        algorithm: &str,
        timeout: Duration,
    ) -> RepoResult<Option<Self>> {
        let mut conn = super::session(&pool.connect_options(), timeout).await?;
        let query = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(PRECOMPUTE_LOCK_CLASS)
            .bind(algorithm)
            .fetch_one(&mut conn);
        let taken = crate::error::with_timeout("postgres precompute lease", timeout, query).await?;
        Ok(taken.then_some(Self { conn }))
    }

    /// End the session, and with it the lock.
    pub async fn release(self) {
        if let Err(e) = self.conn.close().await {
            tracing::debug!(error = %e, "closing the precompute lease's session failed; the server ends it");
        }
    }
}

/// The model registry: algorithms, trained versions, which one is active,
/// and the leases that keep two workers from precomputing the same lists.
#[derive(Debug, Clone)]
pub struct ModelRegistry {
    db: Db,
}

impl ModelRegistry {
    pub fn new(pool: PgPool, timeout: Duration) -> Self {
        Self {
            db: Db::new(pool, timeout),
        }
    }

    pub async fn find_algorithm(&self, key: &str) -> RepoResult<Option<AlgorithmRow>> {
        self.db
            .bounded(
                "postgres find algorithm",
                find_algorithm(&self.db.pool, key),
            )
            .await
    }

    pub async fn insert_model(&self, model: &NewModel<'_>) -> RepoResult<()> {
        self.db
            .bounded("postgres insert model", insert_model(&self.db.pool, model))
            .await
    }

    pub async fn activate(&self, algorithm: &str, version: &str) -> RepoResult<ModelRow> {
        self.db
            .bounded(
                "postgres activate model",
                activate(&self.db.pool, algorithm, version),
            )
            .await
    }

    pub async fn list_models(&self) -> RepoResult<Vec<ModelRow>> {
        self.db
            .bounded("postgres list models", list_models(&self.db.pool))
            .await
    }

    pub async fn active_models(&self) -> RepoResult<Vec<ModelRow>> {
        self.db
            .bounded("postgres active models", active_models(&self.db.pool))
            .await
    }

    pub async fn find_model(&self, algorithm: &str, version: &str) -> RepoResult<Option<ModelRow>> {
        self.db
            .bounded(
                "postgres find model",
                find_model(&self.db.pool, algorithm, version),
            )
            .await
    }

    /// The precompute lease of `algorithm` if no other session holds it; a
    /// session of its own, so connecting gets its own bound.
    pub async fn try_take_precompute_lease(
        &self,
        algorithm: &str,
        connect_timeout: Duration,
    ) -> RepoResult<Option<PrecomputeLease>> {
        PrecomputeLease::try_take(&self.db.pool, algorithm, connect_timeout).await
    }
}
