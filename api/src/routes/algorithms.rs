//! The recommendation algorithms experiment arms can serve.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::AdminAccess;
use crate::error::{ApiResult, ErrorBody};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Algorithm {
    #[schema(example = "item_knn")]
    pub key: String,
    /// `popularity`, `item_knn`, `als` or `cold_start`.
    pub kind: String,
    pub description: String,
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    pub created_at: DateTime<Utc>,
    /// Version of the model serving this algorithm, when one is active.
    pub active_model_version: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AlgorithmList {
    pub items: Vec<Algorithm>,
}

/// Every algorithm, with its active model version.
#[utoipa::path(
    get, path = "/v1/algorithms", tag = "experiments",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "All algorithms", body = AlgorithmList),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 503, description = "A store is unavailable or timed out", body = ErrorBody),
    )
)]
pub async fn list(_: AdminAccess, State(state): State<AppState>) -> ApiResult<Json<AlgorithmList>> {
    let rows = state.stores.experiments.algorithms().await?;
    Ok(Json(AlgorithmList {
        items: rows
            .into_iter()
            .map(|a| Algorithm {
                key: a.key,
                kind: a.kind,
                description: a.description,
                params: a.params,
                created_at: a.created_at,
                active_model_version: a.active_model_version,
            })
            .collect(),
    }))
}
