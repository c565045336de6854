//! Bulk writes and reads of the catalog and the view/like history: what
//! `worker seed`, `worker import-movielens` and `worker train` move in volume.
//!
//! Writes go through `unnest` of column arrays, one statement per chunk, so a
//! million rows cost a few dozen round trips instead of a million. Every write
//! is idempotent (`ON CONFLICT`): a re-run of a seed or an import after a crash
//! only fills in what is missing.

use chrono::{DateTime, Utc};
use domain::recommend::{CatalogEntry, InteractionKind};
use futures::TryStreamExt;
use sqlx::PgPool;
use uuid::Uuid;

use super::Db;
use crate::RepoResult;

/// One history row as it is written: a view or a like with its event id.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    pub event_id: Uuid,
    pub user_id: String,
    pub movie_id: i64,
    pub kind: InteractionKind,
    pub ts: DateTime<Utc>,
}

/// One history row as training reads it (seconds since the epoch, no event id).
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub user_id: String,
    pub movie_id: i64,
    pub kind: InteractionKind,
    pub ts: i64,
}

/// Insert movies, or refresh title, year and genres of the ones that exist
/// (an import is a catalog sync). Returns the rows written.
async fn upsert_movies(pool: &PgPool, movies: &[CatalogEntry]) -> RepoResult<u64> {
    if movies.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = movies.iter().map(|m| m.movie_id.get()).collect();
    let titles: Vec<&str> = movies.iter().map(|m| m.title.as_str()).collect();
    let years: Vec<Option<i32>> = movies.iter().map(|m| m.year).collect();
    // Arrays of arrays must be rectangular in PostgreSQL, so genres travel as
    // one '|'-joined string per movie (MovieLens genres never contain '|').
    let genres: Vec<String> = movies.iter().map(|m| m.genres.join("|")).collect();
    let done = sqlx::query(
        "INSERT INTO movies (id, title, year, genres) \
         SELECT id, title, year, \
                CASE WHEN g = '' THEN '{}'::text[] ELSE string_to_array(g, '|') END \
         FROM unnest($1::int8[], $2::text[], $3::int4[], $4::text[]) AS t (id, title, year, g) \
         ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, year = EXCLUDED.year, \
             genres = EXCLUDED.genres, updated_at = now() \
         WHERE (movies.title, movies.year, movies.genres) \
               IS DISTINCT FROM (EXCLUDED.title, EXCLUDED.year, EXCLUDED.genres)",
    )
    .bind(&ids)
    .bind(&titles)
    .bind(&years)
    .bind(&genres)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Insert users that do not exist yet; returns how many were new.
async fn insert_users(pool: &PgPool, users: &[String]) -> RepoResult<u64> {
    if users.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(
        "INSERT INTO users (id) SELECT * FROM unnest($1::text[]) ON CONFLICT (id) DO NOTHING",
    )
    .bind(users)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Insert views and likes whose event id is new; returns how many were new.
async fn insert_history(pool: &PgPool, rows: &[HistoryRow]) -> RepoResult<u64> {
    #[derive(Default)]
    struct Columns {
        ids: Vec<Uuid>,
        users: Vec<String>,
        movies: Vec<i64>,
        ts: Vec<DateTime<Utc>>,
    }
    let (mut views, mut likes) = (Columns::default(), Columns::default());
    for row in rows {
        let cols = match row.kind {
            InteractionKind::View => &mut views,
            InteractionKind::Like => &mut likes,
        };
        cols.ids.push(row.event_id);
        cols.users.push(row.user_id.clone());
        cols.movies.push(row.movie_id);
        cols.ts.push(row.ts);
    }
    let mut written = 0;
    if !views.ids.is_empty() {
        written += sqlx::query(
            "INSERT INTO views (event_id, user_id, movie_id, ts) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::timestamptz[]) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(&views.ids)
        .bind(&views.users)
        .bind(&views.movies)
        .bind(&views.ts)
        .execute(pool)
        .await?
        .rows_affected();
    }
    if !likes.ids.is_empty() {
        written += sqlx::query(
            "INSERT INTO likes (event_id, user_id, movie_id, ts) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::timestamptz[]) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(&likes.ids)
        .bind(&likes.users)
        .bind(&likes.movies)
        .bind(&likes.ts)
        .execute(pool)
        .await?
        .rows_affected();
    }
    Ok(written)
}

/// The whole catalog, by id.
async fn load_catalog(pool: &PgPool) -> RepoResult<Vec<CatalogEntry>> {
    let rows: Vec<(i64, String, Option<i32>, Vec<String>)> =
        sqlx::query_as("SELECT id, title, year, genres FROM movies ORDER BY id")
            .fetch_all(pool)
            .await?;
    rows.into_iter()
        .map(|(id, title, year, genres)| {
            let movie_id = domain::ids::MovieId::parse(id)
                .map_err(|e| crate::RepoError::Corrupt(format!("movies.id {id}: {e}")))?;
            Ok(CatalogEntry {
                movie_id,
                title,
                year,
                genres,
            })
        })
        .collect()
}

/// Every view and like since `since` (all history when `None`), streamed into
/// `sink` in no particular order so the caller never holds rows twice.
async fn stream_history(
    pool: &PgPool,
    since: Option<DateTime<Utc>>,
    mut sink: impl FnMut(HistoryEntry),
) -> RepoResult<u64> {
    let mut count = 0u64;
    for (table, kind) in [
        ("views", InteractionKind::View),
        ("likes", InteractionKind::Like),
    ] {
        // A movie the user disliked afterwards is not a positive of theirs,
        // however often they watched it: the negative feedback cancels it.
        let sql = format!(
            "SELECT h.user_id, h.movie_id, extract(epoch FROM h.ts)::int8 FROM {table} h \
             WHERE ($1::timestamptz IS NULL OR h.ts >= $1) \
               AND NOT EXISTS (SELECT 1 FROM negative_feedback n \
                               WHERE n.user_id = h.user_id AND n.movie_id = h.movie_id AND n.ts >= h.ts)"
        );
        let mut rows = sqlx::query_as::<_, (String, i64, i64)>(&sql)
            .bind(since)
            .fetch(pool);
        while let Some((user_id, movie_id, ts)) = rows.try_next().await? {
            count += 1;
            sink(HistoryEntry {
                user_id,
                movie_id,
                kind,
                ts,
            });
        }
    }
    Ok(count)
}

/// Time of the newest view or like, if there is any history.
async fn newest_interaction(pool: &PgPool) -> RepoResult<Option<DateTime<Utc>>> {
    let newest: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT max(ts) FROM (SELECT max(ts) AS ts FROM views \
         UNION ALL SELECT max(ts) FROM likes) AS t",
    )
    .fetch_one(pool)
    .await?;
    Ok(newest)
}

/// Users with a view or like at or after `since`, with every movie they ever
/// viewed, liked or disliked (the movies their lists must not hold).
async fn active_users_with_history(
    pool: &PgPool,
    since: DateTime<Utc>,
) -> RepoResult<Vec<(String, Vec<i64>)>> {
    let rows: Vec<(String, Vec<i64>)> = sqlx::query_as(
        "WITH active AS ( \
             SELECT user_id FROM views WHERE ts >= $1 \
             UNION SELECT user_id FROM likes WHERE ts >= $1) \
         SELECT a.user_id, array_agg(DISTINCT h.movie_id ORDER BY h.movie_id) \
         FROM active a \
         JOIN (SELECT user_id, movie_id FROM views \
               UNION ALL SELECT user_id, movie_id FROM likes \
               UNION ALL SELECT user_id, movie_id FROM negative_feedback) h ON h.user_id = a.user_id \
         GROUP BY a.user_id ORDER BY a.user_id",
    )
    .bind(since)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// The catalogue and the view/like history in volume, for seeding, imports
/// and training. Each call may move millions of rows, so its bound is long:
/// it is there for a server that hangs, not for a query that is slow.
#[derive(Debug, Clone)]
pub struct BulkHistory {
    db: Db,
}

impl BulkHistory {
    pub fn new(pool: PgPool, timeout: std::time::Duration) -> Self {
        Self {
            db: Db::new(pool, timeout),
        }
    }

    /// Rows written of `movies` (new or changed).
    pub async fn upsert_movies(&self, movies: &[CatalogEntry]) -> RepoResult<u64> {
        self.db
            .bounded(
                "postgres bulk upsert movies",
                upsert_movies(&self.db.pool, movies),
            )
            .await
    }

    pub async fn insert_users(&self, users: &[String]) -> RepoResult<u64> {
        self.db
            .bounded(
                "postgres bulk insert users",
                insert_users(&self.db.pool, users),
            )
            .await
    }

    pub async fn insert_history(&self, rows: &[HistoryRow]) -> RepoResult<u64> {
        self.db
            .bounded(
                "postgres bulk insert history",
                insert_history(&self.db.pool, rows),
            )
            .await
    }

    pub async fn load_catalog(&self) -> RepoResult<Vec<CatalogEntry>> {
        self.db
            .bounded("postgres load catalog", load_catalog(&self.db.pool))
            .await
    }

    /// Every history entry since `since` (all with `None`) into `sink`; answers the count.
    pub async fn stream_history(
        &self,
        since: Option<DateTime<Utc>>,
        sink: impl FnMut(HistoryEntry),
    ) -> RepoResult<u64> {
        self.db
            .bounded(
                "postgres stream history",
                stream_history(&self.db.pool, since, sink),
            )
            .await
    }

    pub async fn newest_interaction(&self) -> RepoResult<Option<DateTime<Utc>>> {
        self.db
            .bounded(
                "postgres newest interaction",
                newest_interaction(&self.db.pool),
            )
            .await
    }

    pub async fn active_users_with_history(
        &self,
        since: DateTime<Utc>,
    ) -> RepoResult<Vec<(String, Vec<i64>)>> {
        self.db
            .bounded(
                "postgres active users",
                active_users_with_history(&self.db.pool, since),
            )
            .await
    }
}
