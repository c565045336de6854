//! All five stores opened together, migrated together and checked together.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgPool;

use crate::clickhouse::Analytics;
use crate::postgres::api_keys::ApiKeys;
use crate::postgres::bulk::BulkHistory;
use crate::postgres::catalog::Catalog;
use crate::postgres::click_credits::PgClickCredits;
use crate::postgres::experiments::Experiments;
use crate::postgres::ingest::{PgAssignmentLookup, PgIngestLedger};
use crate::postgres::models::ModelRegistry;
use crate::postgres::reweight::PgReweightRepository;
use crate::postgres::serving::PgServing;
use crate::redis::RedisStore;
use crate::s3::ObjectStore;
use crate::settings::StackArgs;
use crate::{clickhouse, kafka, postgres, RepoResult};

/// How long one bulk call (a chunk of a seed, a history stream for training)
/// may take: minutes on a big catalogue, so this bounds a hung server only.
const BULK_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Handles to every store, one per role; cheap to clone. PostgreSQL is
/// reached only through the role stores, each bounded by its timeout.
#[derive(Clone)]
pub struct Stores {
    pub settings: StackArgs,
    pub catalog: Catalog,
    pub experiments: Experiments,
    pub api_keys: ApiKeys,
    pub models: ModelRegistry,
    pub bulk: BulkHistory,
    pub redis: RedisStore,
    pub analytics: Analytics,
    pub objects: ObjectStore,
    pg: PgPool,
    kafka_metadata: Arc<rdkafka::consumer::BaseConsumer>,
}

/// One dependency's answer to a readiness probe.
#[derive(Debug, Clone, Serialize)]
pub struct DependencyStatus {
    pub name: &'static str,
    pub ok: bool,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Stores {
    /// Build clients without connecting: connections are made on first use,
    /// so a store that is down at startup is reported, not fatal.
    pub fn open(settings: &StackArgs) -> RepoResult<Self> {
        let pg = postgres::connect_lazy(&settings.postgres())?;
        let timeout = settings.timeout();
        Ok(Self {
            settings: settings.clone(),
            catalog: Catalog::new(pg.clone(), timeout),
            experiments: Experiments::new(pg.clone(), timeout),
            api_keys: ApiKeys::new(pg.clone(), timeout),
            models: ModelRegistry::new(pg.clone(), timeout),
            bulk: BulkHistory::new(pg.clone(), BULK_TIMEOUT),
            pg,
            redis: RedisStore::new(&settings.redis())?,
            analytics: Analytics::new(&settings.clickhouse()),
            objects: ObjectStore::new(&settings.s3()),
            kafka_metadata: Arc::new(kafka::metadata_client(&settings.kafka())?),
        })
    }

    /// What the api serves from: experiments, catalogue, user contexts and
    /// assignments, each call bounded by `timeout`.
    pub fn serving(&self, timeout: Duration) -> PgServing {
        PgServing::new(self.pg.clone(), timeout)
    }

    /// The worker's exactly-once ledger (and view/like history).
    pub fn ingest_ledger(&self, timeout: Duration) -> PgIngestLedger {
        PgIngestLedger::new(&self.pg, timeout)
    }

    /// The clicks credited per (served list, movie); credits older than
    /// `retention` (the served lists' lifetime) are pruned.
    pub fn click_credits(&self, timeout: Duration, retention: Duration) -> PgClickCredits {
        PgClickCredits::new(self.pg.clone(), timeout, retention)
    }

    /// Users' sticky arms, for conversions that name no request.
    pub fn assignment_lookup(&self, timeout: Duration) -> PgAssignmentLookup {
        PgAssignmentLookup::new(self.pg.clone(), timeout)
    }

    /// The bandit's reads and writes of experiments and weights.
    pub fn reweight_repository(&self, timeout: Duration) -> PgReweightRepository {
        PgReweightRepository::new(self.pg.clone(), timeout)
    }

    /// PostgreSQL's schema alone: what a CLI that touches only PostgreSQL needs.
    pub async fn migrate_postgres(&self) -> RepoResult<()> {
        postgres::migrate(&self.pg).await
    }

    /// Bring every schema up to date: PostgreSQL tables, ClickHouse tables and
    /// views, Kafka topics, the S3 bucket. Idempotent.
    pub async fn migrate(&self) -> RepoResult<()> {
        postgres::migrate(&self.pg).await?;
        self.migrate_clickhouse().await?;
        kafka::ensure_topics(&self.settings.kafka()).await?;
        self.objects.ensure_bucket().await?;
        Ok(())
    }

    /// ClickHouse has no transactions and no locks, and a backfill run twice
    /// would add its events twice; the api and the worker both migrate at
    /// start-up, so the ClickHouse migrations run under a PostgreSQL advisory
    /// lock. It is held by one connection's session: if this process dies,
    /// the connection closes and the lock goes with it.
    async fn migrate_clickhouse(&self) -> RepoResult<()> {
        const LOCK: i64 = 0x6d71_6368_6d69_6772; // "mqchmigr"
        let mut conn = self.pg.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(LOCK)
            .execute(&mut *conn)
            .await?;
        let migrated = clickhouse::migrate(&self.settings.clickhouse()).await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(LOCK)
            .execute(&mut *conn)
            .await;
        if unlocked.is_err() {
            // A pooled connection must not keep the lock for its next user.
            let _ = conn.close().await;
        }
        migrated
    }

    /// Probe all five stores concurrently, each bounded by `timeout`.
    pub async fn check(&self, timeout: Duration) -> Vec<DependencyStatus> {
        async fn probe<F: std::future::Future<Output = RepoResult<()>>>(
            name: &'static str,
            timeout: Duration,
            fut: F,
        ) -> DependencyStatus {
            let started = Instant::now();
            let result = crate::error::with_timeout(name, timeout, fut).await;
            DependencyStatus {
                name,
                ok: result.is_ok(),
                latency_ms: started.elapsed().as_secs_f64() * 1000.0,
                error: result.err().map(|e| e.to_string()),
            }
        }
        let (pg, redis, kafka, ch, s3) = tokio::join!(
            probe("postgres", timeout, postgres::ping(&self.pg)),
            probe("redis", timeout, self.redis.ping()),
            probe(
                "kafka",
                timeout,
                kafka::ping_with(
                    self.kafka_metadata.clone(),
                    self.settings.events_topic.clone(),
                    timeout
                )
            ),
            probe("clickhouse", timeout, self.analytics.ping()),
            probe("s3", timeout, self.objects.ping()),
        );
        vec![pg, redis, kafka, ch, s3]
    }
}
