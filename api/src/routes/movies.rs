//! Catalog administration: create, bulk upsert, read and page through movies.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use domain::ids::MovieId;
use domain::recommend::CatalogEntry;
use domain::ValidationError;
use repositories::postgres::catalog::MovieRecord;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::AdminAccess;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;

/// Most movies in one bulk upsert: one statement, bounded in time and memory.
pub const MAX_BULK_MOVIES: usize = 1000;
/// Most movies in one page.
pub const MAX_PAGE: u32 = 1000;
const DEFAULT_PAGE: u32 = 100;
const MAX_TITLE_LEN: usize = 500;
const MAX_GENRES: usize = 32;
const MAX_GENRE_LEN: usize = 64;

/// A movie to create or upsert.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MovieInput {
    /// Positive, chosen by the catalog (e.g. the MovieLens id).
    #[schema(example = 1)]
    pub id: i64,
    #[schema(example = "Toy Story")]
    pub title: String,
    #[schema(example = 1995)]
    #[serde(default)]
    pub year: Option<i32>,
    #[schema(example = json!(["Animation", "Comedy"]))]
    #[serde(default)]
    pub genres: Vec<String>,
}

/// A movie as stored.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Movie {
    pub id: i64,
    pub title: String,
    pub year: Option<i32>,
    pub genres: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<MovieRecord> for Movie {
    fn from(m: MovieRecord) -> Self {
        Self {
            id: m.id,
            title: m.title,
            year: m.year,
            genres: m.genres,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

/// Movies to insert or overwrite, at most [`MAX_BULK_MOVIES`], ids distinct.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkMovies {
    pub movies: Vec<MovieInput>,
}

/// What a bulk upsert did.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkResult {
    pub received: usize,
    pub inserted: u64,
    pub updated: u64,
    /// Already stored with exactly these values.
    pub unchanged: u64,
}

/// Keyset paging: pass the previous page's `next_after` as `after`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MoviePage {
    /// 1 to 1000, default 100.
    pub limit: Option<u32>,
    /// Return movies with an id greater than this.
    pub after: Option<i64>,
}

/// One page of movies in id order.
#[derive(Debug, Serialize, ToSchema)]
pub struct MovieList {
    pub items: Vec<Movie>,
    /// `after` of the next page; absent on the last page.
    pub next_after: Option<i64>,
}

fn entry(movie: MovieInput, field: &str) -> Result<CatalogEntry, ValidationError> {
    let at = |name: &str| {
        if field.is_empty() {
            name.to_owned()
        } else {
            format!("{field}.{name}")
        }
    };
    let movie_id = MovieId::parse_field(&at("id"), movie.id)?;
    let title = movie.title.trim().to_owned();
    if title.is_empty() || title.chars().count() > MAX_TITLE_LEN {
        return Err(ValidationError::new(
            at("title"),
            format!("must be 1 to {MAX_TITLE_LEN} characters"),
        ));
    }
    ValidationError::check_storable(at("title"), &title)?;
    if let Some(year) = movie.year {
        if !(1870..=2200).contains(&year) {
            return Err(ValidationError::new(
                at("year"),
                "must be between 1870 and 2200",
            ));
        }
    }
    if movie.genres.len() > MAX_GENRES {
        return Err(ValidationError::new(
            at("genres"),
            format!("at most {MAX_GENRES} genres"),
        ));
    }
    for (i, genre) in movie.genres.iter().enumerate() {
        if genre.trim().is_empty() || genre.len() > MAX_GENRE_LEN {
            return Err(ValidationError::new(
                at(&format!("genres[{i}]")),
                format!("must be 1 to {MAX_GENRE_LEN} characters"),
            ));
        }
        ValidationError::check_storable(at(&format!("genres[{i}]")), genre)?;
    }
    Ok(CatalogEntry {
        movie_id,
        title,
        year: movie.year,
        genres: movie
            .genres
            .into_iter()
            .map(|g| g.trim().to_owned())
            .collect(),
    })
}

/// Create one movie; 409 if the id exists (use the bulk upsert to overwrite).
#[utoipa::path(
    post, path = "/v1/movies", tag = "catalog",
    request_body = MovieInput,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Created", body = Movie),
        (status = 400, description = "Invalid movie; `field` names it", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 409, description = "A movie with this id exists", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "A store is unavailable or timed out", body = ErrorBody),
    )
)]
pub async fn create(
    _: AdminAccess,
    State(state): State<AppState>,
    ApiJson(input): ApiJson<MovieInput>,
) -> ApiResult<(StatusCode, Json<Movie>)> {
    let movie = entry(input, "")?;
    let stored = state
        .stores
        .catalog
        .create_movie(&movie)
        .await
        .map_err(|e| match e {
            repositories::RepoError::Conflict(message) => ApiError::conflict("id", message),
            e => e.into(),
        })?;
    Ok((StatusCode::CREATED, Json(stored.into())))
}

/// Insert or overwrite up to 1000 movies in one call.
#[utoipa::path(
    post, path = "/v1/movies/bulk", tag = "catalog",
    request_body = BulkMovies,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Upserted", body = BulkResult),
        (status = 400, description = "Invalid movie (`field` is e.g. `movies[3].title`), duplicate id or too many movies", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "A store is unavailable or timed out", body = ErrorBody),
    )
)]
pub async fn bulk_upsert(
    _: AdminAccess,
    State(state): State<AppState>,
    ApiJson(input): ApiJson<BulkMovies>,
) -> ApiResult<Json<BulkResult>> {
    let received = input.movies.len();
    if received == 0 || received > MAX_BULK_MOVIES {
        return Err(ApiError::bad_request(
            "movies",
            format!("send 1 to {MAX_BULK_MOVIES} movies per call, got {received}"),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(received);
    let mut movies = Vec::with_capacity(received);
    for (i, input) in input.movies.into_iter().enumerate() {
        let movie = entry(input, &format!("movies[{i}]"))?;
        if !seen.insert(movie.movie_id) {
            return Err(ApiError::bad_request(
                format!("movies[{i}].id"),
                format!("movie {} appears twice in this batch", movie.movie_id),
            ));
        }
        movies.push(movie);
    }
    let counts = state.stores.catalog.upsert_movies(&movies).await?;
    Ok(Json(BulkResult {
        received,
        inserted: counts.inserted,
        updated: counts.updated,
        unchanged: counts.unchanged,
    }))
}

/// One movie by id.
#[utoipa::path(
    get, path = "/v1/movies/{id}", tag = "catalog",
    params(("id" = i64, Path, description = "Movie id (positive)")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The movie", body = Movie),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 404, description = "No such movie", body = ErrorBody),
        (status = 503, description = "A store is unavailable or timed out", body = ErrorBody),
    )
)]
pub async fn get(
    _: AdminAccess,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<Movie>> {
    let id = MovieId::parse_field("id", id)?;
    let movie = state
        .stores
        .catalog
        .get_movie(id.get())
        .await?
        .ok_or_else(|| ApiError::not_found("id", format!("movie {id}")))?;
    Ok(Json(movie.into()))
}

/// Page through the catalog in id order.
#[utoipa::path(
    get, path = "/v1/movies", tag = "catalog",
    params(MoviePage),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "One page", body = MovieList),
        (status = 400, description = "Invalid `limit` or `after`", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 503, description = "A store is unavailable or timed out", body = ErrorBody),
    )
)]
pub async fn list(
    _: AdminAccess,
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<MoviePage>,
) -> ApiResult<Json<MovieList>> {
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        ));
    }
    if page.after.is_some_and(|a| a < 0) {
        return Err(ApiError::bad_request("after", "must not be negative"));
    }
    let (rows, more) = state.stores.catalog.list_movies(page.after, limit).await?;
    let next_after = more.then(|| rows.last().map(|m| m.id)).flatten();
    Ok(Json(MovieList {
        items: rows.into_iter().map(Movie::from).collect(),
        next_after,
    }))
}
