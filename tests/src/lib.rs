//! Shared harness of the end-to-end tests: a fresh, isolated slice of the real
//! local stack per test (own PostgreSQL database, ClickHouse database, Kafka
//! topics, Redis namespace and S3 bucket), and the api started in-process on a
//! random port against it.
//!
//! The stack itself must be up (`scripts/stack.sh up`; `scripts/test.sh` does it).

pub mod browser;
pub mod cuttable_proxy;
pub mod events_topic;
pub mod fixtures;
pub mod private_redis;

use std::time::Duration;

use marquee_api::config::ApiConfig;
use marquee_api::startup::Application;
use repositories::settings::StackArgs;
use repositories::stores::Stores;
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

/// One test's private slice of the stack.
pub struct TestStack {
    pub id: String,
    pub settings: StackArgs,
    pub stores: Stores,
    /// The slice's PostgreSQL for fixtures and checks in raw SQL; the code
    /// under test reaches it only through `stores`' role stores.
    pub pg: sqlx::PgPool,
}

impl TestStack {
    /// Create and migrate a fresh slice. Panics (fails the test) if the stack is down,
    /// with a message that says how to bring it up.
    pub async fn fresh() -> Self {
        Self::fresh_with(|_| {}).await
    }

    /// A fresh slice whose settings `adjust` changes before anything is
    /// created (more partitions for a rebalance, say).
    pub async fn fresh_with(adjust: impl FnOnce(&mut StackArgs)) -> Self {
        let id = Uuid::new_v4().simple().to_string()[..12].to_owned();
        // Base addresses from MARQUEE_* (scripts/test.sh exports the stack's), defaults otherwise.
        let mut settings = StackArgs::from_env().expect("MARQUEE_* settings parse");
        let database = format!("test_{id}");
        let mut admin = PgConnection::connect(&settings.database_url)
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL is not reachable ({e}); run scripts/stack.sh up")
            });
        admin
            .execute(format!(r#"CREATE DATABASE "{database}""#).as_str())
            .await
            .expect("create test database");
        let base = settings
            .database_url
            .rsplit_once('/')
            .map(|(base, _)| base.to_owned())
            .expect("database url has a path");
        settings.database_url = format!("{base}/{database}");
        settings.database_max_connections = 8;
        settings.clickhouse_database = format!("test_{id}");
        settings.events_topic = format!("marquee.events.{id}");
        settings.dlq_topic = format!("marquee.events.dlq.{id}");
        settings.events_partitions = 2;
        settings.redis_namespace = format!("test:{id}:");
        settings.s3_bucket = format!("test-{id}");
        adjust(&mut settings);
        let stores = Stores::open(&settings).expect("open stores");
        stores.migrate().await.expect("migrate test stores");
        let pg = repositories::postgres::connect_lazy(&settings.postgres()).expect("postgres pool");
        Self {
            id,
            settings,
            stores,
            pg,
        }
    }
}

/// The api running in-process on a random port.
pub struct TestApi {
    pub address: String,
    pub port: u16,
    pub client: reqwest::Client,
    pub admin_key: String,
    pub config: ApiConfig,
    shutdown: tokio_util::sync::CancellationToken,
}

impl TestApi {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// Stop the server gracefully.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Start the api against `stack`, letting the test adjust the config first.
pub async fn spawn_api(stack: &TestStack, adjust: impl FnOnce(&mut ApiConfig)) -> TestApi {
    // Logs of the in-process api show in a failing test's output (level from RUST_LOG).
    repositories::runtime::init_tracing();
    let mut config = ApiConfig::local_defaults();
    config.stack = stack.settings.clone();
    config.port = 0;
    config.bootstrap_admin_key = format!("admin-{}", stack.id);
    config.migrate_on_start = false;
    adjust(&mut config);
    let app = Application::build(config.clone()).await.expect("build api");
    let port = app.port();
    let shutdown = app.shutdown_token();
    tokio::spawn(app.run_until_stopped());
    TestApi {
        address: format!("http://127.0.0.1:{port}"),
        port,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client"),
        admin_key: config.bootstrap_admin_key.clone(),
        config,
        shutdown,
    }
}

/// The sum of every series of the metric `name` on the Prometheus page at
/// `url` (0 if it has none).
pub async fn metric_total(url: &str, name: &str) -> f64 {
    metric_total_in(&metrics_page(url).await, name)
}

/// The Prometheus page at `url`, as text.
pub async fn metrics_page(url: &str) -> String {
    reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// [`metric_total`] on a page already fetched: several metrics read from
/// one page are one instant's values.
pub fn metric_total_in(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|line| line.split(['{', ' ']).next() == Some(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Poll `check` until it returns true or `timeout` passes; returns whether it did.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
pub mod worker_harness;
