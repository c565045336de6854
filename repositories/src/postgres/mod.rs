//! PostgreSQL: the source of truth for movies, history, experiments, models and keys.

pub mod api_keys;
pub mod bulk;
pub mod catalog;
pub mod click_credits;
pub mod experiments;
pub mod ingest;
pub mod models;
pub mod reweight;
pub mod serving;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::{RepoError, RepoResult};

/// Migrations under `migrations/postgres`, embedded at compile time so each
/// binary can bring the schema up to date by itself at startup.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// How to reach PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

/// A pool and the longest one call may take: what every role store holds,
/// so no caller above this crate writes a timeout by hand.
#[derive(Debug, Clone)]
pub(crate) struct Db {
    pub(crate) pool: PgPool,
    pub(crate) timeout: Duration,
}

impl Db {
    pub(crate) fn new(pool: PgPool, timeout: Duration) -> Self {
        Self { pool, timeout }
    }

    /// `fut` bounded by this store's timeout, its error a [`RepoError`].
    pub(crate) async fn bounded<T, E: Into<RepoError>>(
        &self,
        what: &'static str,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> RepoResult<T> {
        crate::error::with_timeout(what, self.timeout, fut).await
    }
}

/// Open a lazily connecting pool: the first query connects, so startup order
/// between a binary and its database does not matter.
pub fn connect_lazy(settings: &PostgresSettings) -> RepoResult<PgPool> {
    let options: PgConnectOptions = settings
        .url
        .parse()
        .map_err(|e: sqlx::Error| RepoError::Config(format!("MARQUEE_DATABASE_URL: {e}")))?;
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy_with(options))
}

/// A connection of its own, outside the pool, for session state (advisory
/// locks) that must end with it: dropping it releases what it holds.
pub async fn session(options: &PgConnectOptions, timeout: Duration) -> RepoResult<PgConnection> {
    crate::error::with_timeout(
        "postgres connect",
        timeout,
        PgConnection::connect_with(options),
    )
    .await
}

/// Apply pending migrations; idempotent, and safe with several binaries starting at once
/// (sqlx takes an advisory lock).
pub async fn migrate(pool: &PgPool) -> RepoResult<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Cheapest round trip that proves the database answers queries.
pub async fn ping(pool: &PgPool) -> RepoResult<()> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}
