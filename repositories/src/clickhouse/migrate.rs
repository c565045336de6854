//! Numbered SQL files applied in order and recorded in `schema_migrations`.

use crate::{RepoError, RepoResult};

use super::{Analytics, ClickHouseSettings};

/// (version, name, SQL) of every migration, embedded at compile time.
pub static MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "events",
        include_str!("../../../migrations/clickhouse/0001_events.sql"),
    ),
    (
        2,
        "arm_aggregates",
        include_str!("../../../migrations/clickhouse/0002_arm_aggregates.sql"),
    ),
    (
        3,
        "movie_hourly",
        include_str!("../../../migrations/clickhouse/0003_movie_hourly.sql"),
    ),
    (
        4,
        "arm_user",
        include_str!("../../../migrations/clickhouse/0004_arm_user.sql"),
    ),
    (
        5,
        "movie_hourly_once_per_event",
        include_str!("../../../migrations/clickhouse/0005_movie_hourly_once_per_event.sql"),
    ),
    (
        6,
        "arm_user_first",
        include_str!("../../../migrations/clickhouse/0006_arm_user_first.sql"),
    ),
    (
        7,
        "arm_user_cohort",
        include_str!("../../../migrations/clickhouse/0007_arm_user_cohort.sql"),
    ),
    (
        8,
        "arm_negative_daily",
        include_str!("../../../migrations/clickhouse/0008_arm_negative_daily.sql"),
    ),
];

/// Placeholder for the migration's cutoff, in seconds of `ingested_at`: a
/// materialized view that must not see what its backfill copies takes
/// batches stamped at or after it, the backfill those stamped before.
const CUTOFF: &str = "{cutoff}";

/// How far ahead of the server's clock a cutoff is set, and how long after it
/// the backfill starts: a batch is stamped by the worker's clock just before
/// its insert, so this bounds both the clock skew and an insert's time in
/// flight that the split tolerates.
const CUTOFF_MARGIN_S: u32 = 5;

/// Split a migration file into statements: 18.16's HTTP interface takes one at a time.
fn statements(sql: &str) -> Vec<String> {
    let without_comments: String = sql
        .lines()
        .map(|line| match line.find("--") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[derive(Debug, serde::Deserialize, ::clickhouse::Row)]
struct Applied {
    version: u32,
}

/// The table of a backfill statement (`INSERT INTO <table> ...`, in a
/// migration split at the cutoff).
fn backfill_table(statement: &str) -> Option<&str> {
    statement
        .strip_prefix("INSERT INTO ")?
        .split_whitespace()
        .next()
}

impl Analytics {
    async fn server_now(&self) -> RepoResult<u32> {
        Ok(self
            .client
            .query("SELECT toUInt32(now())")
            .fetch_one::<u32>()
            .await?)
    }

    /// The cutoff of `version`, chosen once and kept in `migration_cutoffs`
    /// so a rerun after a crash splits the events where the view already
    /// does. With no events yet there is nothing to backfill: 0, and the
    /// view takes everything.
    async fn cutoff(&self, version: u32) -> RepoResult<u32> {
        let stored = self
            .client
            .query("SELECT cutoff FROM migration_cutoffs WHERE version = ?")
            .bind(version)
            .fetch_all::<u32>()
            .await?;
        if let Some(&cutoff) = stored.first() {
            return Ok(cutoff);
        }
        let events = self
            .client
            .query("SELECT count() FROM events")
            .fetch_one::<u64>()
            .await?;
        let cutoff = if events == 0 {
            0
        } else {
            self.server_now().await? + CUTOFF_MARGIN_S
        };
        self.client
            .query("INSERT INTO migration_cutoffs (version, cutoff) VALUES (?, ?)")
            .bind(version)
            .bind(cutoff)
            .execute()
            .await?;
        Ok(cutoff)
    }

    /// Run a backfill unless its sentinel row (`user_id = 'backfill:NNNN'`,
    /// written by the same insert) shows it already ran, once every batch
    /// stamped before the cutoff has had time to land.
    async fn backfill(
        &self,
        version: u32,
        table: &str,
        statement: &str,
        cutoff: u32,
    ) -> RepoResult<()> {
        let done = self
            .client
            .query(&format!(
                "SELECT count() FROM {table} WHERE experiment_key = '' AND user_id = ?"
            ))
            .bind(format!("backfill:{version:04}"))
            .fetch_one::<u64>()
            .await?;
        if done > 0 {
            return Ok(());
        }
        if cutoff > 0 {
            let now = self.server_now().await?;
            let wait = (cutoff + CUTOFF_MARGIN_S).saturating_sub(now);
            tracing::info!(
                version,
                table,
                wait_s = wait,
                "waiting for batches stamped before the cutoff to land"
            );
            tokio::time::sleep(std::time::Duration::from_secs(u64::from(wait))).await;
        }
        self.client.query(statement).execute().await?;
        tracing::info!(
            version,
            table,
            cutoff,
            "backfilled from events stored before the cutoff"
        );
        Ok(())
    }
}

/// Create the database if needed and apply what `schema_migrations` lacks.
/// Each statement is `IF NOT EXISTS`, so a migration interrupted half-way
/// is completed on the next run. Not safe to run twice at once (a backfill
/// would count twice): `Stores::migrate` holds a lock around it.
pub async fn migrate(settings: &ClickHouseSettings) -> RepoResult<()> {
    migrate_through(settings, u32::MAX).await
}

/// [`migrate`], stopping after migration `last` (tests of a later one's backfill).
pub async fn migrate_through(settings: &ClickHouseSettings, last: u32) -> RepoResult<()> {
    if !settings
        .database
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(RepoError::Config(format!(
            "MARQUEE_CLICKHOUSE_DATABASE must be alphanumeric, not {:?}",
            settings.database
        )));
    }
    let server = Analytics::base_client(settings);
    server
        .query(&format!(
            "CREATE DATABASE IF NOT EXISTS {}",
            settings.database
        ))
        .execute()
        .await?;
    let db = Analytics::new(settings);
    db.client
        .query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, applied_at DateTime DEFAULT now()) \
             ENGINE = MergeTree() ORDER BY version",
        )
        .execute()
        .await?;
    db.client
        .query(
            "CREATE TABLE IF NOT EXISTS migration_cutoffs (version UInt32, cutoff UInt32) \
             ENGINE = MergeTree() ORDER BY version",
        )
        .execute()
        .await?;
    let applied: Vec<u32> = db
        .client
        .query("SELECT version FROM schema_migrations")
        .fetch_all::<Applied>()
        .await?
        .into_iter()
        .map(|a| a.version)
        .collect();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) || *version > last {
            continue;
        }
        let cutoff = if sql.contains(CUTOFF) {
            Some(db.cutoff(*version).await?)
        } else {
            None
        };
        for statement in statements(sql) {
            let Some(cutoff) = cutoff else {
                db.client.query(&statement).execute().await?;
                continue;
            };
            let filled = statement.replace(CUTOFF, &cutoff.to_string());
            match backfill_table(&statement) {
                Some(table) => db.backfill(*version, table, &filled, cutoff).await?,
                None => db.client.query(&filled).execute().await?,
            }
        }
        db.client
            .query("INSERT INTO schema_migrations (version, name) VALUES (?, ?)")
            .bind(*version)
            .bind(*name)
            .execute()
            .await?;
        tracing::info!(version, name, "applied clickhouse migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_on_semicolons_and_drop_comments() {
        let parts = statements("-- a; b\nCREATE TABLE x (a UInt8);\n\n-- c\nSELECT 1;\n");
        assert_eq!(parts, vec!["CREATE TABLE x (a UInt8)", "SELECT 1"]);
    }
}
