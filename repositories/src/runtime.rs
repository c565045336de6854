//! Process plumbing both binaries share: logs, the metrics recorder, the
//! stop signal, and bringing the stores' schemas up to date at start-up.

use std::sync::OnceLock;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{fmt, EnvFilter};

use crate::stores::Stores;
use crate::RepoResult;

/// Install the global log subscriber: JSON when `MARQUEE_LOG_FORMAT=json`,
/// human-readable otherwise; level from `RUST_LOG` (default info). Logs go
/// to stderr, so stdout carries only a command's answer (`api keys create`).
/// A second call (several apps in one test process) is a no-op.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("MARQUEE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    };
}

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first call; `None` if
/// another recorder was installed first (metrics then go there). One set of
/// buckets for both binaries, since a test process may host both.
pub fn prometheus() -> Option<PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".to_owned()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("marquee_worker_batch_size".to_owned()),
                        &[
                            1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0,
                            50000.0,
                        ],
                    )
                })
                .ok()
                .and_then(crate::prometheus::install)
        })
        .clone()
}

/// SIGTERM (orchestrators) or Ctrl-C (terminals).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

/// The delays between attempts to reach a store that is still starting:
/// from 200 ms, doubling, at most 3 s apart, with jitter so replicas that
/// start together do not retry in step; no more attempts once `limit` of
/// waiting has passed.
pub fn startup_backoff(limit: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(3))
        .with_jitter()
        .with_total_delay(Some(limit))
        .without_max_times()
}

/// Migrate every store, retrying while they come up (a binary started with
/// its stack); the last error once `limit` of retrying has passed.
pub async fn migrate_with_retry(stores: &Stores, limit: Duration) -> RepoResult<()> {
    (|| stores.migrate())
        .retry(startup_backoff(limit))
        .sleep(tokio::time::sleep)
        .notify(|e, delay| {
            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "migration failed; retrying");
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use backon::BackoffBuilder;

    #[test]
    fn startup_backoff_grows_to_its_cap_and_stops_at_the_limit() {
        let delays: Vec<Duration> = startup_backoff(Duration::from_secs(10)).build().collect();
        assert!(!delays.is_empty());
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(6)),
            "{delays:?}"
        );
        let total: Duration = delays.iter().sum();
        assert!(
            total <= Duration::from_secs(10) + Duration::from_secs(6),
            "{total:?}"
        );
        assert!(delays.len() > 3, "several attempts within 10 s: {delays:?}");
    }
}
