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
];

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

/// Create the database if needed and apply what `schema_migrations` lacks.
/// Each statement is `IF NOT EXISTS`, so a migration interrupted half-way
/// is completed on the next run.
pub async fn migrate(settings: &ClickHouseSettings) -> RepoResult<()> {
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
    let applied: Vec<u32> = db
        .client
        .query("SELECT version FROM schema_migrations")
        .fetch_all::<Applied>()
        .await?
        .into_iter()
        .map(|a| a.version)
        .collect();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        for statement in statements(sql) {
            db.client.query(&statement).execute().await?;
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
