//! Building and running the api: stores, migrations, router, listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::Request;
use axum::http::HeaderName;
use axum::middleware;
use axum::serve::ListenerExt;
use axum::Router;
use repositories::kafka::{BufferedProducer, EventProducer};
use repositories::runtime::migrate_with_retry;
use repositories::stores::Stores;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::ApiConfig;

/// How long start-up waits for the stores to accept the migrations.
pub const MIGRATE_LIMIT: Duration = Duration::from_secs(30);
use crate::http_metrics;
use crate::openapi::ApiDoc;
use crate::routes;
use crate::serving::background::{self, RefreshIntervals};
use crate::serving::{CacheSettings, Serving, ServingMetrics};
use crate::state::{AppState, Services};

/// Longest wait at shutdown for queued impressions and assignments to be written.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A bound, not yet serving api.
pub struct Application {
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    state: AppState,
    /// Cache refreshers and queue drainers; awaited at shutdown so queued
    /// impressions reach Kafka before the process exits.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    background_stop: CancellationToken,
}

impl Application {
    /// Open the stores, migrate (with a bounded retry), and bind the listener.
    pub async fn build(config: ApiConfig) -> anyhow::Result<Self> {
        // First: counters registered before the recorder exists are bound to
        // the no-op recorder for good (the serving counters are registered
        // once, below), and would never reach /metrics.
        let prometheus = repositories::runtime::prometheus();
        let stores = Stores::open(&config.stack).context("opening store clients")?;
        if config.migrate_on_start {
            migrate_with_retry(&stores, MIGRATE_LIMIT)
                .await
                .context("migrating stores (gave up after 30 s)")?;
        }
        let shutdown = CancellationToken::new();
        // The background tasks stop only after the server has: requests still
        // in flight during a graceful stop may queue impressions to drain.
        let background_stop = CancellationToken::new();
        let timeout = Duration::from_millis(config.serving_timeout_ms.max(1));
        let producer =
            EventProducer::new(&config.stack.kafka(), 5).context("creating the kafka producer")?;
        let impression_packing = Duration::from_millis(config.impression_packing_ms);
        let impressions = BufferedProducer::new(
            &config.stack.kafka(),
            !impression_packing.is_zero(),
            config.impression_encoding,
            config.impression_queue,
            ServingMetrics::impression_deliveries(),
        )
        .context("creating the impression producer")?;
        let (serving, queues) = Serving::new(
            stores.serving(config.stack.timeout().max(timeout)),
            producer,
            impressions,
            config.impression_queue,
            CacheSettings {
                ttl: Duration::from_millis(config.user_cache_ttl_ms),
                capacity: config.user_cache_capacity,
            },
            CacheSettings {
                ttl: Duration::from_millis(config.list_cache_ttl_ms),
                capacity: config.list_cache_capacity,
            },
            &config.default_experiment,
        );
        let serving = Arc::new(serving);
        background::warm(&serving, &stores.redis).await;
        let keys = crate::auth::KeyCache::new(
            &config.bootstrap_admin_key,
            Duration::from_millis(config.key_cache_ttl_ms),
        );
        let (mut tasks, subscribed) = background::spawn(
            serving.clone(),
            keys.clone(),
            queues,
            stores.redis.clone(),
            RefreshIntervals {
                catalog: Duration::from_secs(config.catalog_refresh_s.max(1)),
                hot: Duration::from_millis(config.hot_refresh_ms.max(50)),
                impression_packing,
                context_readers: config.user_context_readers,
            },
            background_stop.clone(),
        );
        // Bounded: with Redis down the api starts anyway and the subscriber retries.
        if tokio::time::timeout(config.stack.timeout(), subscribed)
            .await
            .is_err()
        {
            tracing::warn!("not yet subscribed to weight and list changes; serving anyway");
        }
        let state = AppState::new(Services {
            config: Arc::new(config.clone()),
            stores: Arc::new(stores),
            prometheus,
            keys,
            limits: crate::rate_limit::RateLimits::new(
                config.rate_limit_per_key,
                config.rate_limit_lookups_per_address,
            ),
            serving,
            ready: crate::routes::health::ReadyCache::default(),
        });
        tasks.push(tokio::spawn(forget_idle_callers(
            state.clone(),
            background_stop.clone(),
        )));
        let router = build_router(state.clone());
        let address = format!("{}:{}", config.host, config.port);
        let listener = TcpListener::bind(&address)
            .await
            .with_context(|| format!("binding {address}"))?;
        Ok(Self {
            listener,
            router,
            shutdown,
            state,
            tasks,
            background_stop,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn port(&self) -> u16 {
        self.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Cancel it to stop the server gracefully (tests; signals do the same).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serve until SIGTERM, Ctrl-C or the shutdown token; in-flight requests finish.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let shutdown = self.shutdown.clone();
        tracing::info!(address = %self.listener.local_addr()?, "api listening");
        // No Nagle: a response is one write and must not wait for the ACK
        // of the previous one on a kept-alive connection.
        let listener = self.listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(error = %e, "could not turn off Nagle on a connection");
            }
        });
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, service)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = repositories::runtime::shutdown_signal() => {}
                }
                tracing::info!("shutting down: finishing in-flight requests");
            })
            .await
            .context("serving http")?;
        self.shutdown.cancel();
        self.background_stop.cancel();
        let drained = futures::future::join_all(self.tasks);
        let flushed = background::flush_impressions(self.state.serving.clone(), SHUTDOWN_DRAIN);
        if tokio::time::timeout(SHUTDOWN_DRAIN, futures::future::join(drained, flushed))
            .await
            .is_err()
        {
            tracing::warn!(
                "background tasks did not finish within {SHUTDOWN_DRAIN:?}; exiting anyway"
            );
        }
        Ok(())
    }
}

/// Every 30 s, drop rate-limit state of callers idle for longer than their
/// limit's period, so addresses seen once do not stay in memory.
async fn forget_idle_callers(state: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => state.limits.retain_recent(),
        }
    }
}

/// The api's time limit on a whole request: past it the answer is a 503 with
/// the usual JSON error body (tower-http's timeout layer answers an empty one).
async fn time_limit(
    axum::extract::State(limit): axum::extract::State<Duration>,
    request: Request,
    next: middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            crate::error::ApiError::TimedOut(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX))
                .into_response()
        }
    }
}

/// At most this many requests at once (health and metrics aside); the rest
/// are refused with 503 at once.
async fn concurrency_cap(
    axum::extract::State(slots): axum::extract::State<Option<Arc<tokio::sync::Semaphore>>>,
    request: Request,
    next: middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = request.uri().path();
    let exempt = path.starts_with("/health/") || path == "/metrics";
    // Held until the response is built, then the slot is free again.
    let _permit = match &slots {
        Some(slots) if !exempt => match slots.try_acquire() {
            Ok(permit) => Some(permit),
            Err(_) => {
                metrics::counter!("marquee_http_overloaded_total").increment(1);
                return crate::error::ApiError::Overloaded.into_response();
            }
        },
        _ => None,
    };
    next.run(request).await
}

/// Routes plus the layers every request goes through.
pub fn build_router(state: AppState) -> Router {
    let slots = (state.config.max_concurrent_requests > 0).then(|| {
        Arc::new(tokio::sync::Semaphore::new(
            state.config.max_concurrent_requests,
        ))
    });
    let timeout = Duration::from_millis(state.config.request_timeout_ms);
    let max_body = state.config.max_body_bytes;
    let routes = routes::router(state)
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        // Inside the router: the route template is known only once routed.
        .layer(middleware::from_fn(http_metrics::record));
    // The rest wrap the router once, outermost first. Added with
    // `Router::layer`, each would be boxed around every route and cloned,
    // one allocation apiece, on every request.
    let around_routes = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let request_id = request
                    .headers()
                    .get(&REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", method = %request.method(), uri = %request.uri().path(), request_id = %request_id)
            }),
        )
        .layer(middleware::from_fn_with_state(slots, concurrency_cap))
        .layer(middleware::from_fn_with_state(timeout, time_limit))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .service(routes);
    Router::new().fallback_service(around_routes)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::get;
    use axum::{middleware, Router};
    use tower::ServiceExt;

    fn capped(slots: usize) -> Router {
        let slots = Some(Arc::new(tokio::sync::Semaphore::new(slots)));
        Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "done"
                }),
            )
            .route("/health/live", get(|| async { "ok" }))
            .layer(middleware::from_fn_with_state(
                slots,
                super::concurrency_cap,
            ))
    }

    fn get_request(path: &str) -> Request<Body> {
        Request::builder().uri(path).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn a_request_past_the_cap_is_refused_at_once_and_health_is_not_counted() {
        let app = capped(1);
        let first = tokio::spawn(app.clone().oneshot(get_request("/slow")));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        let refused = app.clone().oneshot(get_request("/slow")).await.unwrap();
        assert_eq!(refused.status(), 503);
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "refused without waiting"
        );
        assert_eq!(refused.headers()["retry-after"], "1");
        let body = axum::body::to_bytes(refused.into_body(), 4096)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "overloaded");
        let health = app
            .clone()
            .oneshot(get_request("/health/live"))
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        assert_eq!(first.await.unwrap().unwrap().status(), 200);
        // The slot is free again.
        assert_eq!(
            app.oneshot(get_request("/slow")).await.unwrap().status(),
            200
        );
    }
}
