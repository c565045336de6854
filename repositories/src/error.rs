//! The repositories layer's error: which store failed and how.

/// A failure talking to a backing store.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("postgres migration: {0}")]
    PostgresMigration(#[from] sqlx::migrate::MigrateError),
    #[error("redis: {0}")]
    Redis(#[from] deadpool_redis::redis::RedisError),
    #[error("redis pool: {0}")]
    RedisPool(String),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] ::clickhouse::error::Error),
    #[error("s3: {0}")]
    S3(String),
    #[error("{what} timed out after {millis} ms")]
    Timeout { what: &'static str, millis: u128 },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("configuration: {0}")]
    Config(String),
}

impl From<deadpool_redis::PoolError> for RepoError {
    fn from(e: deadpool_redis::PoolError) -> Self {
        Self::RedisPool(e.to_string())
    }
}

impl RepoError {
    /// Whether retrying the same call later may succeed (a store down, a timeout),
    /// as opposed to a request that will fail the same way every time.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Postgres(e) => {
                matches!(
                    e,
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::Tls(_)
                ) || e
                    .as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|c| {
                        c.starts_with("08") || c.starts_with("57P") || c == "40001" || c == "40P01"
                    })
            }
            Self::Redis(_)
            | Self::RedisPool(_)
            | Self::Kafka(_)
            | Self::Timeout { .. }
            | Self::S3(_) => true,
            Self::ClickHouse(e) => !matches!(e, ::clickhouse::error::Error::BadResponse(_)),
            _ => false,
        }
    }
}

/// Bound a store call in time, so a hung server turns into an error, not a hang.
pub async fn with_timeout<T, E: Into<RepoError>>(
    what: &'static str,
    limit: std::time::Duration,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, RepoError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(RepoError::Timeout {
            what,
            millis: limit.as_millis(),
        }),
    }
}
