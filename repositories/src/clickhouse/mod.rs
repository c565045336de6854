//! ClickHouse (18.16): raw events and the aggregates analysts and the bandit read.
//!
//! The `clickhouse` crate validates row schemas with queries 18.16 cannot
//! answer, so validation is off; the row structs below mirror the migrations.

mod migrate;
pub mod pipeline;
pub mod results;
mod rows;

use std::time::Duration;

pub use migrate::{migrate, migrate_through, MIGRATIONS};
pub use rows::EventRow;

use crate::RepoResult;

/// How to reach ClickHouse.
#[derive(Debug, Clone)]
pub struct ClickHouseSettings {
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
    pub timeout: Duration,
}

/// A client bound to Marquee's database.
#[derive(Clone)]
pub struct Analytics {
    client: ::clickhouse::Client,
    settings: ClickHouseSettings,
}

impl Analytics {
    pub fn new(settings: &ClickHouseSettings) -> Self {
        Self {
            client: Self::base_client(settings).with_database(&settings.database),
            settings: settings.clone(),
        }
    }

    fn base_client(settings: &ClickHouseSettings) -> ::clickhouse::Client {
        let mut client = ::clickhouse::Client::default()
            .with_url(&settings.url)
            .with_validation(false)
            .with_compression(::clickhouse::Compression::None);
        if !settings.user.is_empty() {
            client = client.with_user(&settings.user);
        }
        if !settings.password.is_empty() {
            client = client.with_password(&settings.password);
        }
        client
    }

    /// The underlying client, for queries an adapter module does not wrap yet.
    pub fn client(&self) -> &::clickhouse::Client {
        &self.client
    }

    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    pub async fn ping(&self) -> RepoResult<()> {
        crate::error::with_timeout(
            "clickhouse ping",
            self.settings.timeout,
            self.client.query("SELECT 1").fetch_one::<u8>(),
        )
        .await?;
        Ok(())
    }

    /// Insert a batch of events as one INSERT (one part, atomic below a million rows).
    pub async fn insert_events(&self, rows: &[EventRow]) -> RepoResult<()> {
        self.insert_events_as(rows, None).await
    }

    /// [`Self::insert_events`] under the server-side `query_id` given, so
    /// that [`Self::query_running`] can tell whether it is still running
    /// after the client stopped waiting for it.
    pub async fn insert_events_as(
        &self,
        rows: &[EventRow],
        query_id: Option<&str>,
    ) -> RepoResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let fut = async {
            let mut insert = self.client.insert::<EventRow>("events").await?;
            if let Some(id) = query_id {
                insert = insert.with_setting("query_id", id);
            }
            for row in rows {
                insert.write(row).await?;
            }
            insert.end().await
        };
        crate::error::with_timeout("clickhouse insert", self.settings.timeout, fut).await
    }

    /// Whether the server is still running a query of this `query_id`: an
    /// insert the client gave up on (timed out) can still land afterwards.
    pub async fn query_running(&self, query_id: &str) -> RepoResult<bool> {
        let query = self
            .client
            .query("SELECT count() FROM system.processes WHERE query_id = ?")
            .bind(query_id);
        let running: u64 = crate::error::with_timeout(
            "clickhouse process probe",
            self.settings.timeout,
            query.fetch_one(),
        )
        .await?;
        Ok(running > 0)
    }
}
