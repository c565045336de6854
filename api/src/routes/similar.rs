//! `GET /v1/movies/{id}/similar`: "more like this" for a movie page.
//!
//! The worker precomputes each movie's list whenever a new item-kNN or ALS
//! model becomes active (`similar:{algorithm}:{movie}` in Redis); this route
//! reads one key. Until a list exists (no model yet, a movie newer than the
//! model) it answers the hot movies instead and says so in `source`.

use axum::extract::State;
use axum::Json;
use domain::ids::MovieId;
use domain::recommend::ScoredItem;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use crate::auth::ClientAccess;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiPath, ApiQuery};
use crate::state::AppState;

const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 100;
/// The algorithms whose models know which movies are alike.
const ALGORITHMS: [&str; 2] = ["item_knn", "als"];

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SimilarQuery {
    /// 1 to 100 movies (default 10).
    pub limit: Option<usize>,
    /// `item_knn` (default: who watched this also watched) or `als` (the
    /// same taste factors the ALS lists rank by).
    pub algorithm: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SimilarMovie {
    pub movie_id: i64,
    /// Absent for a movie the catalog no longer has.
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<Box<RawValue>>,
    /// The model's similarity (cosine), or the hot list's score for `source: popular`.
    pub score: f32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SimilarMovies {
    pub movie_id: i64,
    pub algorithm: String,
    /// `model` (precomputed from the active model) or `popular` (no list yet: hot movies).
    pub source: &'static str,
    /// The model version the list came from; absent for `popular`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    pub items: Vec<SimilarMovie>,
}

/// Movies like this one.
#[utoipa::path(
    get, path = "/v1/movies/{id}/similar", tag = "serving",
    params(("id" = i64, Path, description = "Movie id (positive)"), SimilarQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Up to `limit` movies, most alike first", body = SimilarMovies),
        (status = 400, description = "Invalid id, limit or algorithm", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such movie", body = ErrorBody),
        (status = 503, description = "A store is unavailable or timed out", body = ErrorBody),
    )
)]
pub async fn similar_movies(
    _: ClientAccess,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<SimilarQuery>,
) -> ApiResult<Json<SimilarMovies>> {
    let movie = MovieId::parse_field("id", id)?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let algorithm = query.algorithm.as_deref().unwrap_or(ALGORITHMS[0]);
    if !ALGORITHMS.contains(&algorithm) {
        return Err(ApiError::bad_request(
            "algorithm",
            format!("must be one of {}", ALGORITHMS.join(", ")),
        ));
    }
    let catalog = state.serving.catalog.get();
    // The catalogue in memory is refreshed every few seconds; a movie added
    // since is asked of PostgreSQL before it is called unknown.
    if !catalog.titles.contains_key(&movie)
        && state.stores.catalog.get_movie(movie.get()).await?.is_none()
    {
        return Err(ApiError::not_found("id", format!("movie {movie}")));
    }
    let title = |m: MovieId| catalog.titles.get(&m).cloned();
    let precomputed = match state
        .stores
        .redis
        .similar_list(algorithm, movie.get())
        .await
    {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(error = %e, "reading a similar-movies list failed; serving hot movies");
            None
        }
    };
    let hot;
    let (source, model_version, items): (_, _, &[ScoredItem]) = match &precomputed {
        Some(list) => ("model", Some(list.model_version.clone()), &list.items),
        None => {
            hot = state.serving.hot.get();
            let fallback = if hot.is_empty() {
                &catalog.popular
            } else {
                &*hot
            };
            ("popular", None, fallback)
        }
    };
    let answer = SimilarMovies {
        movie_id: movie.get(),
        algorithm: algorithm.to_owned(),
        source,
        model_version,
        items: items
            .iter()
            .filter(|s| s.movie_id != movie)
            .take(limit)
            .map(|s| SimilarMovie {
                movie_id: s.movie_id.get(),
                title: title(s.movie_id),
                score: s.score,
            })
            .collect(),
    };
    Ok(Json(answer))
}
