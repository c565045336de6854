//! `GET /v1/models` and `POST /v1/models/{algorithm}/{version}/activate`:
//! the registry of trained models, and the one call that rolls one back.
//!
//! Activation only flips the registry row; the worker's model loop notices
//! within its poll interval, loads the version from S3 (refusing it if its
//! checksum or format is wrong) and rewrites the precomputed lists.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use domain::ids::AlgorithmKey;
use repositories::postgres::models::ModelRow;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::AdminAccess;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery};
use crate::state::AppState;

/// One registered model version.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelVersion {
    pub algorithm: String,
    pub version: String,
    /// Whether this is the version the worker serves for its algorithm.
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    /// Object key of `model.bin` in the model bucket (`manifest.json` sits next to it).
    pub s3_key: String,
    /// Hex SHA-256 of `model.bin`.
    pub sha256: String,
    pub format_version: i32,
    /// Offline metrics on the temporal hold-out, one entry per cut-off k.
    #[schema(value_type = Object)]
    pub metrics: serde_json::Value,
    /// The fit's hyperparameters, as recorded in the manifest.
    #[schema(value_type = Object)]
    pub hyperparameters: serde_json::Value,
    /// Span of the training history (`from`, `to`), as recorded in the manifest.
    #[schema(value_type = Object)]
    pub data_window: serde_json::Value,
    /// Users, movies and interactions trained on, as recorded in the manifest.
    #[schema(value_type = Object)]
    pub counts: serde_json::Value,
}

impl From<ModelRow> for ModelVersion {
    fn from(row: ModelRow) -> Self {
        let from_manifest = |field: &str| {
            row.manifest
                .get(field)
                .cloned()
                .unwrap_or(serde_json::Value::Null)
        };
        let hyperparameters = from_manifest("hyperparameters");
        let data_window = from_manifest("data_window");
        let counts = from_manifest("counts");
        Self {
            active: row.is_active(),
            algorithm: row.algorithm_key,
            version: row.version,
            created_at: row.created_at,
            activated_at: row.activated_at,
            s3_key: row.s3_key,
            sha256: row.sha256,
            format_version: row.format_version,
            metrics: row.metrics,
            hyperparameters,
            data_window,
            counts,
        }
    }
}

/// Every version, newest first within each algorithm.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelVersion>,
}

/// Filter of `GET /v1/models`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ModelsQuery {
    /// Only this algorithm's versions.
    pub algorithm: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "models",
    params(ModelsQuery),
    responses(
        (status = 200, body = ModelList, description = "registered versions with their offline metrics and active flag"),
        (status = 400, body = crate::error::ErrorBody, description = "bad algorithm key"),
        (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn list_models(
    _caller: AdminAccess,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ModelsQuery>,
) -> ApiResult<Json<ModelList>> {
    let only = query
        .algorithm
        .map(|a| AlgorithmKey::parse_field("algorithm", a))
        .transpose()?;
    let rows = state.stores.models.list_models().await?;
    let models = rows
        .into_iter()
        .filter(|r| only.as_ref().is_none_or(|a| a.as_str() == r.algorithm_key))
        .map(ModelVersion::from)
        .collect();
    Ok(Json(ModelList { models }))
}

#[utoipa::path(
    post,
    path = "/v1/models/{algorithm}/{version}/activate",
    tag = "models",
    params(
        ("algorithm" = String, Path, description = "algorithm key"),
        ("version" = String, Path, description = "model version"),
    ),
    responses(
        (status = 200, body = ModelVersion, description = "now the active version; the worker reloads within its poll interval"),
        (status = 400, body = crate::error::ErrorBody, description = "bad algorithm key or version"),
        (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody, description = "no such algorithm or version"),
    ),
    security(("api_key" = []))
)]
pub async fn activate_model(
    _caller: AdminAccess,
    State(state): State<AppState>,
    ApiPath((algorithm, version)): ApiPath<(String, String)>,
) -> ApiResult<Json<ModelVersion>> {
    let algorithm = AlgorithmKey::parse_field("algorithm", algorithm)?;
    if version.is_empty() || version.len() > 64 || !version.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ApiError::bad_request(
            "version",
            "must be 1 to 64 printable ASCII characters",
        ));
    }
    let row = state
        .stores
        .models
        .activate(algorithm.as_str(), &version)
        .await?;
    tracing::info!(%algorithm, %version, "model activated");
    Ok(Json(ModelVersion::from(row)))
}
