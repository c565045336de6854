//! Building and running the worker: dependencies, migrations, consumer group,
//! periodic jobs, metrics endpoint, graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::Consumer;
use repositories::clickhouse::Analytics;
use repositories::runtime::migrate_with_retry;
use repositories::stores::Stores;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::attribution::{Attributor, ClickCap};
use crate::config::WorkerConfig;
use crate::consumer::{EventConsumer, Pipeline, PipelineSettings, Sinks};
use crate::dlq::DeadLetterQueue;
use crate::loops::{hot_movies_loop, lag_loop, Reweighter};
use crate::models::ModelLoop;

/// A worker that reached all five dependencies, migrated and subscribed.
pub struct Worker {
    config: WorkerConfig,
    stores: Stores,
    consumer: Arc<EventConsumer>,
    listener: TcpListener,
    shutdown: CancellationToken,
}

impl Worker {
    /// Wait (bounded) for every dependency, migrate, subscribe to the events
    /// topic and bind the metrics endpoint. The error names what is unreachable.
    pub async fn build(config: WorkerConfig) -> anyhow::Result<Self> {
        // Before anything can count (migration recovers ingest batches and
        // counts them): metrics recorded before the recorder exists are lost.
        repositories::runtime::prometheus();
        let stores = Stores::open(&config.stack).context("opening store clients")?;
        let deadline = Duration::from_secs(config.startup_timeout_s);
        // Migrate first: on a fresh deployment the ClickHouse database and the
        // bucket the readiness probes look at exist only after it.
        if config.migrate_on_start {
            migrate_with_retry(&stores, deadline)
                .await
                .with_context(|| {
                    format!("migrating stores (gave up after {}s)", deadline.as_secs())
                })?;
        }
        wait_for_dependencies(&stores, deadline).await?;
        let kafka = config.stack.kafka();
        let consumer = Arc::new(
            repositories::kafka::pipeline_consumer(&kafka, &config.group_id)
                .context("creating the kafka consumer")?,
        );
        consumer
            .subscribe(&[kafka.events_topic.as_str()])
            .with_context(|| format!("subscribing to {}", kafka.events_topic))?;
        let address = format!("{}:{}", config.metrics_host, config.metrics_port);
        let listener = TcpListener::bind(&address)
            .await
            .with_context(|| format!("binding the metrics endpoint on {address}"))?;
        tracing::info!(
            group = %config.group_id,
            topic = %kafka.events_topic,
            metrics = %listener.local_addr()?,
            "worker ready: dependencies reachable, schema migrated, consumer group joined"
        );
        Ok(Self {
            config,
            stores,
            consumer,
            listener,
            shutdown: CancellationToken::new(),
        })
    }

    pub fn metrics_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn metrics_port(&self) -> u16 {
        self.metrics_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Cancel it to stop the worker gracefully (tests; signals do the same).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// Consume and run the periodic jobs until SIGTERM, Ctrl-C or the token:
    /// the current batch finishes (or is abandoned if its stores are down),
    /// durable offsets are committed and the consumer leaves the group.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            config,
            stores,
            consumer,
            listener,
            shutdown,
        } = self;
        let timeout = config.stack.timeout();
        let kafka = config.stack.kafka();

        let signal_token = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = signal_token.cancelled() => {}
                _ = repositories::runtime::shutdown_signal() => {
                    tracing::info!("signal received: finishing the current batch");
                    signal_token.cancel();
                }
            }
        });

        let metrics_server = {
            let router = Router::new()
                .route("/metrics", get(render_metrics))
                .route("/health/live", get(|| async { "ok" }))
                .with_state(repositories::runtime::prometheus());
            let token = shutdown.clone();
            tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move { token.cancelled().await })
                    .await
            })
        };

        let analytics: Analytics = stores.analytics.clone();
        let reweighter = Reweighter {
            repo: Arc::new(stores.reweight_repository(timeout)),
            cohorts: Arc::new(analytics.clone()),
            publisher: Arc::new(stores.redis.clone()),
        };
        let jobs = vec![
            tokio::spawn(reweighter.run(
                Duration::from_millis(config.reweight_tick_ms.max(10)),
                shutdown.clone(),
            )),
            tokio::spawn(hot_movies_loop(
                analytics.clone(),
                stores.redis.clone(),
                Duration::from_secs(config.hot_movies_interval_s.max(1)),
                config.hot_movies_window_s,
                config.hot_movies_limit,
                shutdown.clone(),
            )),
            tokio::spawn(ModelLoop::new(stores.clone(), config.model_loop()).run(shutdown.clone())),
            tokio::spawn(lag_loop(
                Arc::downgrade(&consumer),
                kafka.events_topic.clone(),
                Duration::from_secs(config.lag_interval_s.max(1)),
                Duration::from_secs(config.orphan_after_s.max(1)),
                timeout,
                shutdown.clone(),
            )),
        ];

        let producer =
            repositories::kafka::producer(&kafka, 5).context("creating the DLQ producer")?;
        let sinks = Sinks {
            ledger: Box::new(stores.ingest_ledger(timeout)),
            events: Arc::new(analytics),
            dedup: Arc::new(stores.redis.clone()),
            attributor: Attributor::new(
                config.attribution_cache,
                Arc::new(stores.redis.clone()),
                Arc::new(stores.assignment_lookup(timeout)),
                ClickCap {
                    credits: Arc::new(
                        stores
                            .click_credits(timeout, Duration::from_secs(config.attribution_ttl_s)),
                    ),
                    per_served_movie: config.max_clicks_per_served_movie,
                },
                config.attribution_ttl_s,
            ),
            dlq: DeadLetterQueue::new(producer, kafka.dlq_topic.clone(), timeout),
            dedup_ttl_s: config.dedup_ttl_s,
        };
        let pipeline = Pipeline::new(
            consumer,
            sinks,
            PipelineSettings {
                topic: kafka.events_topic.clone(),
                batch_size: config.batch_size.max(1),
                max_events_per_insert: config.max_events_per_insert.max(1),
                batch_max_wait: config.batch_max_wait(),
                attribution_grace: Duration::from_millis(config.attribution_grace_ms),
                dedup_ttl_s: config.dedup_ttl_s,
                retry_initial: Duration::from_millis(config.retry_initial_ms.max(1)),
                retry_max: Duration::from_millis(config.retry_max_ms.max(1)),
            },
            shutdown.clone(),
        );
        let result = tokio::spawn(pipeline.run()).await;
        // However the pipeline ended, stop everything else with it.
        shutdown.cancel();
        for job in jobs {
            let _ = job.await;
        }
        let _ = metrics_server.await;
        tracing::info!("worker stopped");
        match result {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("consumer task failed: {e}")),
        }
    }
}

async fn render_metrics(State(handle): State<Option<PrometheusHandle>>) -> impl IntoResponse {
    let content_type = [(header::CONTENT_TYPE, "text/plain; version=0.0.4")];
    match handle {
        Some(handle) => (StatusCode::OK, content_type, handle.render()),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            content_type,
            "# metrics recorder not installed\n".to_owned(),
        ),
    }
}

/// Probe all five dependencies until they answer or `limit` passes; the error
/// names the ones still down and why.
pub async fn wait_for_dependencies(stores: &Stores, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        let statuses = stores.check(Duration::from_secs(2)).await;
        let down: Vec<_> = statuses.iter().filter(|s| !s.ok).collect();
        if down.is_empty() {
            return Ok(());
        }
        let summary = down
            .iter()
            .map(|s| format!("{} ({})", s.name, s.error.as_deref().unwrap_or("no answer")))
            .collect::<Vec<_>>()
            .join(", ");
        if started.elapsed() >= limit {
            anyhow::bail!(
                "dependencies unreachable after {}s: {summary}",
                limit.as_secs()
            );
        }
        tracing::warn!(down = %summary, retry_in_ms = delay.as_millis() as u64, "waiting for dependencies");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(3));
    }
}

/// Stores for a one-shot command (train, seed, import), migrated first
/// unless migrations at start are off.
pub async fn command_stores(config: &WorkerConfig) -> anyhow::Result<Stores> {
    let stores = Stores::open(&config.stack).context("opening store clients")?;
    if config.migrate_on_start {
        migrate_with_retry(&stores, Duration::from_secs(config.startup_timeout_s))
            .await
            .context("migrating stores")?;
    }
    Ok(stores)
}
