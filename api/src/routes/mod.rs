//! HTTP routes, one module per resource.

pub mod dashboard;
pub mod events;
pub mod health;
pub mod metrics;
pub mod models;
pub mod recommendations;
pub mod results;

use axum::routing::{get, post};
use axum::Router;

use crate::state::AppState;

/// Every route of the api.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(metrics::render))
        .route(
            "/v1/users/{user_id}/recommendations",
            get(recommendations::recommendations),
        )
        .route("/v1/events", post(events::post_events))
        .route(
            "/v1/experiments/{key}/results",
            get(results::experiment_results),
        )
        .route("/v1/models", get(models::list_models))
        .route(
            "/v1/models/{algorithm}/{version}/activate",
            post(models::activate_model),
        )
        .route("/v1/dashboard/experiments", get(dashboard::experiments))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/assets/dashboard.js", get(dashboard::script))
        .route("/dashboard/assets/dashboard.css", get(dashboard::style))
        .with_state(state)
}
