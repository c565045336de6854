//! Liveness (the process answers) and readiness (every dependency answers).

use std::time::Duration;

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

/// One dependency in the readiness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct DependencyReport {
    pub name: String,
    pub status: &'static str,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Readiness answer: overall status, the failing dependencies, and each one's probe.
#[derive(Debug, Serialize, ToSchema)]
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

/// Every dependency answered within its time limit (200), or some did not (503, naming them).
#[utoipa::path(get, path = "/health/ready", tag = "health", responses(
    (status = 200, body = Ready, description = "all five dependencies answer"),
    (status = 503, body = Ready, description = "the dependencies in `failing` do not answer"),
))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Ready>) {
    let timeout = Duration::from_millis(state.config.ready_timeout_ms);
    let checks = state.stores.check(timeout).await;
    let failing: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.to_owned())
        .collect();
    let dependencies = checks
        .into_iter()
        .map(|c| DependencyReport {
            name: c.name.to_owned(),
            status: if c.ok { "up" } else { "down" },
            latency_ms: c.latency_ms,
            error: c.error,
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
        Json(Ready {
            status: word,
            failing,
            dependencies,
        }),
    )
}
