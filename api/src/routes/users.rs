//! One user's history as the worker recorded it: views and likes, newest first.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use domain::ids::UserId;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::AdminAccess;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiPath, ApiQuery};
use crate::state::AppState;

const MAX_PAGE: u32 = 500;
const DEFAULT_PAGE: u32 = 50;
/// Deep offsets cost a scan of everything before them; past this, history
/// belongs in ClickHouse, not in an admin page.
const MAX_OFFSET: u32 = 100_000;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryPage {
    /// 1 to 500, default 50.
    pub limit: Option<u32>,
    /// Entries to skip (0 to 100000); pass the previous page's `next_offset`.
    pub offset: Option<u32>,
}

/// A view or a like.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryEntry {
    pub event_id: Uuid,
    /// `view` or `like`.
    #[schema(example = "view")]
    pub kind: String,
    pub movie_id: i64,
    /// Absent when the catalog does not know the movie (yet).
    pub title: Option<String>,
    pub ts: DateTime<Utc>,
    /// A view's value (e.g. seconds watched or a rating) when the event carried one.
    pub value: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct History {
    pub user_id: String,
    pub items: Vec<HistoryEntry>,
    /// `offset` of the next page; absent on the last page.
    pub next_offset: Option<u32>,
}

/// Views and likes of one user, newest first. A user without history gets an
/// empty list: users are known from their events, not registered beforehand.
#[utoipa::path(
    get, path = "/v1/users/{user_id}/history", tag = "catalog",
    params(("user_id" = String, Path, description = "The front-end's user id"), HistoryPage),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "One page of history", body = History),
        (status = 400, description = "Invalid user id, `limit` or `offset`", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 503, description = "A store is unavailable or timed out", body = ErrorBody),
    )
)]
pub async fn history(
    _: AdminAccess,
    State(state): State<AppState>,
    ApiPath(user_id): ApiPath<String>,
    ApiQuery(page): ApiQuery<HistoryPage>,
) -> ApiResult<Json<History>> {
    let user = UserId::parse_field("user_id", user_id)?;
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        ));
    }
    let offset = page.offset.unwrap_or(0);
    if offset > MAX_OFFSET {
        return Err(ApiError::bad_request(
            "offset",
            format!("must be at most {MAX_OFFSET}"),
        ));
    }
    let (rows, more) = state
        .stores
        .catalog
        .user_history(user.as_str(), limit, offset)
        .await?;
    let next_offset = more.then_some(offset + limit);
    Ok(Json(History {
        user_id: user.to_string(),
        items: rows
            .into_iter()
            .map(|r| HistoryEntry {
                event_id: r.event_id,
                kind: r.kind,
                movie_id: r.movie_id,
                title: r.title,
                ts: r.ts,
                value: r.value,
            })
            .collect(),
        next_offset,
    }))
}
