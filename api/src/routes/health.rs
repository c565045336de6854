//! Liveness (the process answers) and readiness (every dependency answers).

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

/// Liveness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Live {
    pub status: &'static str,
}

/// How long one readiness answer is reused. `/health/ready` needs no key, so
/// without this every call would cost five store probes.
pub const READY_CACHE_TTL: Duration = Duration::from_secs(1);

/// The last readiness answer and when it was probed. The lock is held across
/// the probe, so concurrent callers share one probe instead of starting five each.
#[derive(Default)]
pub struct ReadyCache(tokio::sync::Mutex<Option<(Instant, StatusCode, Ready)>>);

/// One dependency in the readiness answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DependencyReport {
    pub name: String,
    pub status: &'static str,
    pub latency_ms: f64,
}

/// Readiness answer: overall status, the failing dependencies, and each one's
/// probe. The probes' errors go to the log, not to this unauthenticated body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Ready {
    pub status: &'static str,
    pub failing: Vec<String>,
    pub dependencies: Vec<DependencyReport>,
}

/// The process is up.
#[utoipa::path(get, path = "/health/live", tag = "health", responses((status = 200, body = Live)))]
pub async fn live() -> Json<Live> {
    Json(Live { status: "ok" })
}

/// Every dependency answered within its time limit (200), or some did not (503,
/// naming them). The answer is at most [`READY_CACHE_TTL`] old.
#[utoipa::path(get, path = "/health/ready", tag = "health", responses(
    (status = 200, body = Ready, description = "all five dependencies answer"),
    (status = 503, body = Ready, description = "the dependencies in `failing` do not answer"),
))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Ready>) {
    let mut cached = state.ready.0.lock().await;
    if let Some((at, status, body)) = cached.as_ref() {
        if at.elapsed() < READY_CACHE_TTL {
            return (*status, Json(body.clone()));
        }
    }
    let (status, body) = probe(&state).await;
    *cached = Some((Instant::now(), status, body.clone()));
    (status, Json(body))
}

async fn probe(state: &AppState) -> (StatusCode, Ready) {
    let timeout = Duration::from_millis(state.config.ready_timeout_ms);
    let checks = state.stores.check(timeout).await;
    let failing: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.to_owned())
        .collect();
    let dependencies = checks
        .into_iter()
        .map(|c| {
            if let Some(error) = &c.error {
                tracing::warn!(dependency = c.name, %error, "readiness probe failed");
            }
            DependencyReport {
                name: c.name.to_owned(),
                status: if c.ok { "up" } else { "down" },
                latency_ms: c.latency_ms,
            }
        })
        .collect();
    let (status, word) = if failing.is_empty() {
        (StatusCode::OK, "ready")
    } else {
        tracing::warn!(?failing, "not ready");
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    (
        status,
        Ready {
            status: word,
            failing,
            dependencies,
        },
    )
}
