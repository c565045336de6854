//! HTTP routes, one module per resource.

pub mod algorithms;
pub mod dashboard;
pub mod events;
pub mod experiments;
pub mod health;
pub mod keys;
pub mod metrics;
pub mod models;
pub mod movies;
pub mod recommendations;
pub mod results;
pub mod similar;
pub mod users;

use axum::routing::{delete, get, post, put};
use axum::Router;

use crate::error::ApiError;
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
        // Admin: catalog, history, experiments, algorithms, keys.
        .route("/v1/movies", get(movies::list).post(movies::create))
        .route("/v1/movies/bulk", post(movies::bulk_upsert))
        .route("/v1/movies/{id}", get(movies::get))
        .route("/v1/movies/{id}/similar", get(similar::similar_movies))
        .route("/v1/users/{user_id}/history", get(users::history))
        .route(
            "/v1/experiments",
            get(experiments::list).post(experiments::create),
        )
        .route("/v1/experiments/{key}", get(experiments::get))
        .route("/v1/experiments/{key}/start", post(experiments::start))
        .route("/v1/experiments/{key}/stop", post(experiments::stop))
        .route("/v1/experiments/{key}/arms", put(experiments::replace_arms))
        .route("/v1/experiments/{key}/weights", get(experiments::weights))
        .route("/v1/algorithms", get(algorithms::list))
        .route("/v1/keys", post(keys::create))
        .route("/v1/keys/{id}", delete(keys::revoke))
        .route("/v1/dashboard/experiments", get(dashboard::experiments))
        .route("/dashboard", get(dashboard::page))
        .route(
            "/dashboard/session",
            post(dashboard::sign_in).delete(dashboard::sign_out),
        )
        .route("/dashboard/assets/dashboard.js", get(dashboard::script))
        .route("/dashboard/assets/dashboard.css", get(dashboard::style))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
}

/// Unknown paths answer with the api's JSON error body, like every other error.
async fn unknown_route(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found("path", format!("route {}", uri.path()))
}

async fn wrong_method(method: axum::http::Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}
