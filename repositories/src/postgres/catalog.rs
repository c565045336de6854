//! The admin view of the catalog and of one user's history: single-movie
//! writes and reads, keyset paging, and bounded bulk upserts.
//!
//! (`bulk` moves the same tables in volume for seeding and training; this
//! module answers requests, so every read is paged and every write bounded.)

use chrono::{DateTime, Utc};
use domain::recommend::CatalogEntry;
use sqlx::PgPool;
use uuid::Uuid;

use super::Db;
use crate::{RepoError, RepoResult};

/// A movie as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct MovieRecord {
    pub id: i64,
    pub title: String,
    pub year: Option<i32>,
    pub genres: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a bulk upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UpsertCounts {
    pub inserted: u64,
    pub updated: u64,
    /// Rows that already held exactly these values, left untouched.
    pub unchanged: u64,
}

const MOVIE_COLUMNS: &str = "id, title, year, genres, created_at, updated_at";

/// Insert one movie; `Conflict` when the id is taken (use the bulk upsert to overwrite).
async fn create_movie(pool: &PgPool, movie: &CatalogEntry) -> RepoResult<MovieRecord> {
    let row: Option<MovieRecord> = sqlx::query_as(&format!(
        "INSERT INTO movies (id, title, year, genres) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO NOTHING RETURNING {MOVIE_COLUMNS}"
    ))
    .bind(movie.movie_id.get())
    .bind(&movie.title)
    .bind(movie.year)
    .bind(&movie.genres)
    .fetch_optional(pool)
    .await?;
    row.ok_or_else(|| RepoError::Conflict(format!("movie {} already exists", movie.movie_id)))
}

/// Insert or overwrite movies in one statement. Ids must be distinct within
/// the batch (PostgreSQL refuses to update one row twice in a statement).
async fn upsert_movies(pool: &PgPool, movies: &[CatalogEntry]) -> RepoResult<UpsertCounts> {
    if movies.is_empty() {
        return Ok(UpsertCounts::default());
    }
    let ids: Vec<i64> = movies.iter().map(|m| m.movie_id.get()).collect();
    let titles: Vec<&str> = movies.iter().map(|m| m.title.as_str()).collect();
    let years: Vec<Option<i32>> = movies.iter().map(|m| m.year).collect();
    // Arrays of arrays must be rectangular in PostgreSQL; genre lists are not,
    // so each travels as one JSON array.
    let genres: Vec<serde_json::Value> = movies
        .iter()
        .map(|m| serde_json::Value::from(m.genres.clone()))
        .collect();
    // `xmax = 0` is true exactly for freshly inserted rows; an unchanged row
    // is filtered by the WHERE and returns nothing.
    let inserted: Vec<bool> = sqlx::query_scalar(
        "INSERT INTO movies (id, title, year, genres) \
         SELECT id, title, year, ARRAY(SELECT jsonb_array_elements_text(g)) \
         FROM unnest($1::int8[], $2::text[], $3::int4[], $4::jsonb[]) AS t (id, title, year, g) \
         ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, year = EXCLUDED.year, \
             genres = EXCLUDED.genres, updated_at = now() \
         WHERE (movies.title, movies.year, movies.genres) \
               IS DISTINCT FROM (EXCLUDED.title, EXCLUDED.year, EXCLUDED.genres) \
         RETURNING (xmax = 0)",
    )
    .bind(&ids)
    .bind(&titles)
    .bind(&years)
    .bind(&genres)
    .fetch_all(pool)
    .await?;
    let new = inserted.iter().filter(|&&i| i).count() as u64;
    let written = inserted.len() as u64;
    Ok(UpsertCounts {
        inserted: new,
        updated: written - new,
        unchanged: movies.len() as u64 - written,
    })
}

async fn get_movie(pool: &PgPool, id: i64) -> RepoResult<Option<MovieRecord>> {
    Ok(
        sqlx::query_as(&format!("SELECT {MOVIE_COLUMNS} FROM movies WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?,
    )
}

/// Movies in id order after `after` (keyset paging: stable under concurrent
/// inserts and as cheap on the last page as on the first). Fetches one extra
/// row so the caller knows whether another page exists.
async fn list_movies(
    pool: &PgPool,
    after: Option<i64>,
    limit: u32,
) -> RepoResult<(Vec<MovieRecord>, bool)> {
    let mut rows: Vec<MovieRecord> = sqlx::query_as(&format!(
        "SELECT {MOVIE_COLUMNS} FROM movies WHERE id > $1 ORDER BY id LIMIT $2"
    ))
    .bind(after.unwrap_or(0))
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok((rows, more))
}

/// One entry of a user's history.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct HistoryItem {
    pub event_id: Uuid,
    /// `view` or `like`.
    pub kind: String,
    pub movie_id: i64,
    /// The movie's title when the catalog knows it (events may precede the catalog).
    pub title: Option<String>,
    pub ts: DateTime<Utc>,
    pub value: Option<f64>,
}

/// A user's views and likes, newest first (ties broken by event id so pages
/// never overlap). Fetches one extra row to tell whether more exist.
async fn user_history(
    pool: &PgPool,
    user_id: &str,
    limit: u32,
    offset: u32,
) -> RepoResult<(Vec<HistoryItem>, bool)> {
    let mut rows: Vec<HistoryItem> = sqlx::query_as(
        "SELECT h.event_id, h.kind, h.movie_id, m.title, h.ts, h.value FROM ( \
             SELECT event_id, 'view' AS kind, movie_id, ts, value FROM views WHERE user_id = $1 \
             UNION ALL \
             SELECT event_id, 'like' AS kind, movie_id, ts, NULL::float8 FROM likes WHERE user_id = $1 \
         ) AS h LEFT JOIN movies m ON m.id = h.movie_id \
         ORDER BY h.ts DESC, h.event_id DESC LIMIT $2 OFFSET $3",
    )
    .bind(user_id)
    .bind(i64::from(limit) + 1)
    .bind(i64::from(offset))
    .fetch_all(pool)
    .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok((rows, more))
}

/// The catalogue and users' histories as requests read and write them.
#[derive(Debug, Clone)]
pub struct Catalog {
    db: Db,
}

impl Catalog {
    pub fn new(pool: PgPool, timeout: std::time::Duration) -> Self {
        Self {
            db: Db::new(pool, timeout),
        }
    }

    pub async fn create_movie(&self, movie: &CatalogEntry) -> RepoResult<MovieRecord> {
        self.db
            .bounded("postgres create movie", create_movie(&self.db.pool, movie))
            .await
    }

    pub async fn upsert_movies(&self, movies: &[CatalogEntry]) -> RepoResult<UpsertCounts> {
        self.db
            .bounded(
                "postgres upsert movies",
                upsert_movies(&self.db.pool, movies),
            )
            .await
    }

    pub async fn get_movie(&self, id: i64) -> RepoResult<Option<MovieRecord>> {
        self.db
            .bounded("postgres get movie", get_movie(&self.db.pool, id))
            .await
    }

    pub async fn list_movies(
        &self,
        after: Option<i64>,
        limit: u32,
    ) -> RepoResult<(Vec<MovieRecord>, bool)> {
        self.db
            .bounded(
                "postgres list movies",
                list_movies(&self.db.pool, after, limit),
            )
            .await
    }

    pub async fn user_history(
        &self,
        user_id: &str,
        limit: u32,
        offset: u32,
    ) -> RepoResult<(Vec<HistoryItem>, bool)> {
        self.db
            .bounded(
                "postgres user history",
                user_history(&self.db.pool, user_id, limit, offset),
            )
            .await
    }
}
