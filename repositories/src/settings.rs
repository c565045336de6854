//! Where the five stores are, read from `MARQUEE_*` env vars (or flags) with
//! defaults that point at the local stack of `scripts/stack.sh`.
//!
//! Both binaries flatten [`StackArgs`] into their own config struct, so the
//! variable names are the same everywhere (and in docker-compose.yml).

use std::time::Duration;

use crate::clickhouse::ClickHouseSettings;
use crate::kafka::KafkaSettings;
use crate::postgres::PostgresSettings;
use crate::redis::RedisSettings;
use crate::s3::S3Settings;

/// Connection settings of every backing store.
#[derive(Debug, Clone, clap::Args)]
pub struct StackArgs {
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "MARQUEE_DATABASE_URL",
        default_value = "postgres://marquee:marquee@127.0.0.1:55432/marquee"
    )]
    pub database_url: String,
    /// Largest PostgreSQL pool per process.
    #[arg(long, env = "MARQUEE_DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,
    /// Redis URL.
    #[arg(
        long,
        env = "MARQUEE_REDIS_URL",
        default_value = "redis://127.0.0.1:56379"
    )]
    pub redis_url: String,
    /// Prefix of every Redis key (lets several deployments or tests share a server).
    #[arg(long, env = "MARQUEE_REDIS_NAMESPACE", default_value = "")]
    pub redis_namespace: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "MARQUEE_KAFKA_BROKERS", default_value = "127.0.0.1:59092")]
    pub kafka_brokers: String,
    /// Topic that carries impressions, clicks, views, likes and conversions.
    #[arg(long, env = "MARQUEE_EVENTS_TOPIC", default_value = "marquee.events")]
    pub events_topic: String,
    /// Topic for messages the worker cannot process, with the reason.
    #[arg(long, env = "MARQUEE_DLQ_TOPIC", default_value = "marquee.events.dlq")]
    pub dlq_topic: String,
    /// Partitions of the events topic when Marquee creates it.
    #[arg(long, env = "MARQUEE_EVENTS_PARTITIONS", default_value_t = 4)]
    pub events_partitions: i32,
    /// ClickHouse HTTP URL.
    #[arg(
        long,
        env = "MARQUEE_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:58123"
    )]
    pub clickhouse_url: String,
    /// ClickHouse database (created by migrations).
    #[arg(long, env = "MARQUEE_CLICKHOUSE_DATABASE", default_value = "marquee")]
    pub clickhouse_database: String,
    #[arg(long, env = "MARQUEE_CLICKHOUSE_USER", default_value = "default")]
    pub clickhouse_user: String,
    #[arg(long, env = "MARQUEE_CLICKHOUSE_PASSWORD", default_value = "")]
    pub clickhouse_password: String,
    /// S3 endpoint (MinIO in production).
    #[arg(
        long,
        env = "MARQUEE_S3_ENDPOINT",
        default_value = "http://127.0.0.1:59900"
    )]
    pub s3_endpoint: String,
    #[arg(long, env = "MARQUEE_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    #[arg(
        long,
        env = "MARQUEE_S3_ACCESS_KEY",
        default_value = "GKmarqueelocal0001"
    )]
    pub s3_access_key: String,
    #[arg(
        long,
        env = "MARQUEE_S3_SECRET_KEY",
        default_value = "marquee-local-secret-key-0001"
    )]
    pub s3_secret_key: String,
    /// Bucket for trained models.
    #[arg(long, env = "MARQUEE_S3_BUCKET", default_value = "marquee-models")]
    pub s3_bucket: String,
    /// Time limit of one call to any store, in milliseconds.
    #[arg(long, env = "MARQUEE_STORE_TIMEOUT_MS", default_value_t = 5000)]
    pub store_timeout_ms: u64,
}

impl StackArgs {
    /// Settings from `MARQUEE_*` env vars, defaults (the local stack) for the rest.
    pub fn from_env() -> Result<Self, clap::Error> {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            stack: StackArgs,
        }
        <Only as clap::Parser>::try_parse_from(["marquee"]).map(|o| o.stack)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.store_timeout_ms)
    }

    pub fn postgres(&self) -> PostgresSettings {
        PostgresSettings {
            url: self.database_url.clone(),
            max_connections: self.database_max_connections,
            acquire_timeout: self.timeout(),
        }
    }

    pub fn redis(&self) -> RedisSettings {
        RedisSettings {
            url: self.redis_url.clone(),
            namespace: self.redis_namespace.clone(),
            pool_size: 32,
            timeout: self.timeout(),
        }
    }

    pub fn kafka(&self) -> KafkaSettings {
        KafkaSettings {
            brokers: self.kafka_brokers.clone(),
            events_topic: self.events_topic.clone(),
            dlq_topic: self.dlq_topic.clone(),
            partitions: self.events_partitions,
            timeout: self.timeout(),
        }
    }

    pub fn clickhouse(&self) -> ClickHouseSettings {
        ClickHouseSettings {
            url: self.clickhouse_url.clone(),
            database: self.clickhouse_database.clone(),
            user: self.clickhouse_user.clone(),
            password: self.clickhouse_password.clone(),
            timeout: self.timeout(),
        }
    }

    pub fn s3(&self) -> S3Settings {
        S3Settings {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            access_key: self.s3_access_key.clone(),
            secret_key: self.s3_secret_key.clone(),
            bucket: self.s3_bucket.clone(),
            timeout: self.timeout(),
        }
    }
}
