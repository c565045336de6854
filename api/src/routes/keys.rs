//! API key administration over HTTP (the `api keys` subcommand does the same
//! from a shell). The clear-text key is returned once, at creation.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use repositories::postgres::api_keys::Role;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::AdminAccess;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath};
use crate::state::AppState;

const MAX_NAME_LEN: usize = 200;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// `client` (recommendations, events), `analyst` (results, read experiments) or `admin`.
    #[schema(example = "client")]
    pub role: String,
    /// A label for whoever holds the key.
    #[serde(default)]
    #[schema(example = "web front-end")]
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    pub id: Uuid,
    pub role: String,
    pub name: String,
    /// The key itself: shown only in this answer, stored only as a hash.
    pub key: String,
}

/// Create a key; its clear text is in this answer only.
#[utoipa::path(
    post, path = "/v1/keys", tag = "keys",
    request_body = NewKey,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Created", body = CreatedKey),
        (status = 400, description = "Invalid role or name", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "A store is unavailable or timed out", body = ErrorBody),
    )
)]
pub async fn create(
    _: AdminAccess,
    State(state): State<AppState>,
    ApiJson(input): ApiJson<NewKey>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    let role = Role::parse(&input.role)
        .ok_or_else(|| ApiError::bad_request("role", "must be one of client, analyst, admin"))?;
    if input.name.chars().count() > MAX_NAME_LEN {
        return Err(ApiError::bad_request(
            "name",
            format!("at most {MAX_NAME_LEN} characters"),
        ));
    }
    domain::ValidationError::check_storable("name", &input.name)?;
    let (id, key) = state.stores.api_keys.create(role, &input.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            id,
            role: role.as_str().to_owned(),
            name: input.name,
            key,
        }),
    ))
}

/// Revoke a key; it stops working within the api's key-cache lifetime (30 s).
#[utoipa::path(
    delete, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = Uuid, Path, description = "The key's id")),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 404, description = "No such unrevoked key", body = ErrorBody),
        (status = 503, description = "A store is unavailable or timed out", body = ErrorBody),
    )
)]
pub async fn revoke(
    _: AdminAccess,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    let hash = state
        .stores
        .api_keys
        .revoke(id)
        .await
        .map_err(|e| match e {
            repositories::RepoError::NotFound(what) => ApiError::not_found("id", what),
            e => e.into(),
        })?;
    // This replica refuses the key now; the others when they hear of it, or
    // at worst when their cached lookup expires (Redis down).
    state.keys.revoke_hash(&hash);
    if let Err(e) = state.stores.redis.publish_key_revoked(&hash).await {
        tracing::warn!(error = %e, "could not tell the other replicas of a revoked key; they refuse it within the key-cache lifetime");
    }
    Ok(StatusCode::NO_CONTENT)
}
