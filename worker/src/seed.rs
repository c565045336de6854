//! `worker seed` and `worker import-movielens`: a catalog and a view/like
//! history written through the real stores (movies, users, views and likes in
//! PostgreSQL; the same interactions as events in ClickHouse).
//!
//! Both are idempotent, so an interrupted run can simply be repeated:
//! * every event has an id derived from its content (seed: seed, size and
//!   position; MovieLens: user, movie, kind and time), and PostgreSQL keeps
//!   one row per id (`ON CONFLICT DO NOTHING`);
//! * ClickHouse 18.16 cannot deduplicate inserts, so each chunk of events is
//!   one insert under a batch id derived from the chunk's content, and a chunk
//!   whose batch is already in ClickHouse is not inserted again (one insert is
//!   one part: a batch is there entirely or not at all).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use domain::ports::pipeline::BatchId;
use domain::recommend::movielens::{self, MovieLensError, Rating};
use domain::recommend::synthetic::{SyntheticData, SyntheticParams, SyntheticSize};
use domain::recommend::{CatalogEntry, InteractionKind};
use futures::stream::{self, StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use repositories::clickhouse::EventRow;
use repositories::postgres::bulk::HistoryRow;
use repositories::stores::Stores;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Events per PostgreSQL statement and per ClickHouse insert.
const EVENT_CHUNK: usize = 50_000;
/// Movies or users per statement.
const ENTITY_CHUNK: usize = 10_000;
/// Chunks in flight at once; PostgreSQL index maintenance is the bottleneck,
/// and more connections than cores only add contention.
const CONCURRENCY: usize = 3;

/// Preset size of `worker seed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeedSize {
    /// ~200 movies, 500 users, ~20k interactions (tests).
    Small,
    /// ~2k movies, 20k users, ~1M interactions (the demo).
    Medium,
    /// ~20k movies, 200k users, ~10M interactions (benchmarks).
    Large,
}

impl SeedSize {
    pub fn synthetic(self) -> SyntheticSize {
        match self {
            Self::Small => SyntheticSize::Small,
            Self::Medium => SyntheticSize::Medium,
            Self::Large => SyntheticSize::Large,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Small => "small",
            Self::Medium => "medium",
            Self::Large => "large",
        }
    }
}

/// Arguments of `worker seed`.
#[derive(Debug, Clone, clap::Args)]
pub struct SeedArgs {
    /// Size preset of the synthetic world.
    #[arg(long, value_enum, default_value = "small")]
    pub size: SeedSize,
    /// Seed of the generator; the same size and seed always give the same data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// What a seed or import wrote (new rows only; a repeated run writes ~0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadSummary {
    pub movies: u64,
    pub users: u64,
    /// Interactions read from the source.
    pub interactions: u64,
    /// Views and likes new to PostgreSQL.
    pub history_written: u64,
    /// Events inserted into ClickHouse.
    pub events_written: u64,
    /// Chunks found already in ClickHouse and skipped.
    pub chunks_skipped: u64,
}

impl LoadSummary {
    fn add(&mut self, chunk: ChunkOutcome) {
        self.history_written += chunk.history_written;
        self.events_written += chunk.events_written;
        self.chunks_skipped += u64::from(chunk.skipped);
    }
}

/// A UUID (version 8) that is a pure function of `parts`, so a re-run names
/// every event and batch exactly as the first run did.
pub fn derived_uuid(parts: &[&[u8]]) -> Uuid {
    let mut hasher = Sha256::new();
    for part in parts {
        // Length-prefixed so ("ab", "c") and ("a", "bc") differ.
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

fn timestamp(ts: i64) -> anyhow::Result<DateTime<Utc>> {
    DateTime::from_timestamp(ts, 0).with_context(|| format!("timestamp {ts} is out of range"))
}

fn bar(len: u64, unit: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let template = format!(
        "{{msg:>10}} [{{bar:40}}] {{human_pos}}/{{human_len}} {unit} ({{per_sec}}, eta {{eta}})"
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn spinner(message: &'static str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Writes movies, users and chunks of history to both stores.
struct HistoryWriter<'a> {
    stores: &'a Stores,
    ingested_at: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct ChunkOutcome {
    history_written: u64,
    events_written: u64,
    skipped: bool,
}

impl<'a> HistoryWriter<'a> {
    fn new(stores: &'a Stores) -> Self {
        Self {
            stores,
            ingested_at: u32::try_from(Utc::now().timestamp()).unwrap_or(0),
        }
    }

    async fn movies(&self, movies: &[CatalogEntry], bar: &ProgressBar) -> anyhow::Result<u64> {
        let mut written = 0;
        for chunk in movies.chunks(ENTITY_CHUNK) {
            written += self
                .stores
                .bulk
                .upsert_movies(chunk)
                .await
                .context("writing movies to postgres")?;
            bar.inc(chunk.len() as u64);
        }
        Ok(written)
    }

    async fn users(&self, users: &[String], bar: &ProgressBar) -> anyhow::Result<u64> {
        let mut written = 0;
        for chunk in users.chunks(ENTITY_CHUNK) {
            written += self
                .stores
                .bulk
                .insert_users(chunk)
                .await
                .context("writing users to postgres")?;
            bar.inc(chunk.len() as u64);
        }
        Ok(written)
    }

    /// One chunk: history rows into PostgreSQL, then (unless its batch is
    /// already there) one insert into ClickHouse.
    async fn chunk(&self, rows: Vec<HistoryRow>) -> anyhow::Result<ChunkOutcome> {
        let Some(first) = rows.first() else {
            return Ok(ChunkOutcome::default());
        };
        let history_written = self
            .stores
            .bulk
            .insert_history(&rows)
            .await
            .context("writing views and likes to postgres")?;
        let batch = BatchId::from(derived_uuid(&[
            b"marquee-history-batch",
            first.event_id.as_bytes(),
            &(rows.len() as u64).to_le_bytes(),
        ]));
        let analytics = &self.stores.analytics;
        if analytics
            .batch_row_count(batch)
            .await
            .context("probing clickhouse for the chunk")?
            > 0
        {
            return Ok(ChunkOutcome {
                history_written,
                events_written: 0,
                skipped: true,
            });
        }
        let events: Vec<EventRow> = rows
            .iter()
            .map(|r| EventRow {
                event_id: r.event_id,
                ts: u32::try_from(r.ts.timestamp()).unwrap_or(0),
                kind: match r.kind {
                    InteractionKind::View => "view",
                    InteractionKind::Like => "like",
                }
                .to_owned(),
                user_id: r.user_id.clone(),
                movie_id: u64::try_from(r.movie_id).unwrap_or(0),
                experiment_key: String::new(),
                arm_key: String::new(),
                algorithm_key: String::new(),
                model_version: String::new(),
                request_id: String::new(),
                position: -1,
                value: 0.0,
                item_count: 0,
                batch_id: batch.as_uuid(),
                ingested_at: self.ingested_at,
            })
            .collect();
        analytics
            .insert_events(&events)
            .await
            .context("writing events to clickhouse")?;
        Ok(ChunkOutcome {
            history_written,
            events_written: events.len() as u64,
            skipped: false,
        })
    }
}

/// Generate the synthetic world of `size`/`seed` and write it; progress bars when `show_progress`.
pub async fn seed(
    stores: &Stores,
    size: SeedSize,
    seed: u64,
    show_progress: bool,
) -> anyhow::Result<LoadSummary> {
    let started = Instant::now();
    let generating = spinner("generating", show_progress);
    let params = SyntheticParams::new(size.synthetic(), seed);
    let world = tokio::task::spawn_blocking(move || SyntheticData::generate(&params))
        .await
        .context("generator task")?
        .context("generating synthetic data")?;
    generating.finish_and_clear();
    let data = &world.dataset;
    tracing::info!(
        size = size.name(),
        seed,
        movies = world.catalog.len(),
        users = world.users.len(),
        interactions = data.interactions.len(),
        seconds = started.elapsed().as_secs_f64(),
        "synthetic world generated"
    );

    let writer = HistoryWriter::new(stores);
    let mut summary = LoadSummary {
        interactions: data.interactions.len() as u64,
        ..LoadSummary::default()
    };
    let movies_bar = bar(world.catalog.len() as u64, "movies", show_progress);
    movies_bar.set_message("movies");
    summary.movies = writer.movies(&world.catalog, &movies_bar).await?;
    movies_bar.finish();

    let users: Vec<String> = world.users.iter().map(|u| u.to_string()).collect();
    let users_bar = bar(users.len() as u64, "users", show_progress);
    users_bar.set_message("users");
    summary.users = writer.users(&users, &users_bar).await?;
    users_bar.finish();

    let size_tag = size.name().as_bytes();
    let seed_tag = seed.to_le_bytes();
    // Rows are built per chunk as it is written, so the large set never holds
    // ten million owned rows at once.
    let rows_of = |range: std::ops::Range<usize>| -> anyhow::Result<Vec<HistoryRow>> {
        range
            .map(|n| {
                let i = &data.interactions[n];
                let user = data
                    .users
                    .get(i.user as usize)
                    .context("interaction names an unknown user")?;
                let movie = data
                    .items
                    .get(i.item as usize)
                    .context("interaction names an unknown movie")?;
                Ok(HistoryRow {
                    event_id: derived_uuid(&[
                        b"marquee-seed",
                        size_tag,
                        &seed_tag,
                        &(n as u64).to_le_bytes(),
                    ]),
                    user_id: user.to_string(),
                    movie_id: movie.get(),
                    kind: i.kind,
                    ts: timestamp(i.ts)?,
                })
            })
            .collect()
    };
    let total = data.interactions.len();
    let events_bar = bar(total as u64, "events", show_progress);
    events_bar.set_message("history");
    let writer_ref = &writer;
    let bar_ref = &events_bar;
    let rows_of = &rows_of;
    let outcomes: Vec<ChunkOutcome> = stream::iter((0..total).step_by(EVENT_CHUNK))
        .map(|start| async move {
            let chunk = rows_of(start..(start + EVENT_CHUNK).min(total))?;
            let n = chunk.len() as u64;
            let outcome = writer_ref.chunk(chunk).await?;
            bar_ref.inc(n);
            Ok::<_, anyhow::Error>(outcome)
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    events_bar.finish();
    for outcome in outcomes {
        summary.add(outcome);
    }
    Ok(summary)
}

/// Which MovieLens layout a directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MovieLensLayout {
    /// ml-latest-small, ml-latest, ml-25m: `movies.csv` + `ratings.csv`.
    Csv,
    /// ml-100k: `u.item` + `u.data`.
    Classic,
}

impl MovieLensLayout {
    pub fn detect(dir: &Path) -> anyhow::Result<Self> {
        if dir.join("movies.csv").is_file() && dir.join("ratings.csv").is_file() {
            Ok(Self::Csv)
        } else if dir.join("u.item").is_file() && dir.join("u.data").is_file() {
            Ok(Self::Classic)
        } else {
            anyhow::bail!(
                "{} holds neither movies.csv + ratings.csv (ml-latest, ml-25m) nor u.item + u.data (ml-100k)",
                dir.display()
            )
        }
    }

    fn files(self) -> (&'static str, &'static str) {
        match self {
            Self::Csv => ("movies.csv", "ratings.csv"),
            Self::Classic => ("u.item", "u.data"),
        }
    }
}

/// The view (and, for a rating ≥ 4, the like one second later, as
/// [`movielens::ratings_to_dataset`] does) of one rating.
fn rating_rows(rating: &Rating) -> anyhow::Result<Vec<HistoryRow>> {
    let user = rating.user.to_string();
    let movie = rating.movie.get();
    let row = |kind: InteractionKind, ts: i64| -> anyhow::Result<HistoryRow> {
        let tag: &[u8] = match kind {
            InteractionKind::View => b"view",
            InteractionKind::Like => b"like",
        };
        Ok(HistoryRow {
            event_id: derived_uuid(&[
                b"marquee-movielens",
                user.as_bytes(),
                &movie.to_le_bytes(),
                tag,
                &ts.to_le_bytes(),
            ]),
            user_id: user.clone(),
            movie_id: movie,
            kind,
            ts: timestamp(ts)?,
        })
    };
    let mut rows = vec![row(InteractionKind::View, rating.ts)?];
    if rating.is_like() {
        rows.push(row(InteractionKind::Like, rating.ts + 1)?);
    }
    Ok(rows)
}

/// Load a MovieLens directory: its movies, then its ratings as views and likes,
/// streamed in chunks so ml-25m never sits in memory whole.
pub async fn import_movielens(
    stores: &Stores,
    dir: &Path,
    show_progress: bool,
) -> anyhow::Result<LoadSummary> {
    let layout = MovieLensLayout::detect(dir)?;
    let (movies_file, ratings_file) = layout.files();
    let movies_path = dir.join(movies_file);
    let ratings_path = dir.join(ratings_file);

    let catalog = {
        let path = movies_path.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<CatalogEntry>> {
            let input = BufReader::new(
                File::open(&path).with_context(|| format!("opening {}", path.display()))?,
            );
            let parsed = match layout {
                MovieLensLayout::Csv => movielens::parse_movies_csv(input),
                MovieLensLayout::Classic => movielens::parse_u_item(input),
            };
            parsed.with_context(|| format!("parsing {}", path.display()))
        })
        .await
        .context("movies parser task")??
    };
    let writer = HistoryWriter::new(stores);
    let mut summary = LoadSummary::default();
    let movies_bar = bar(catalog.len() as u64, "movies", show_progress);
    movies_bar.set_message("movies");
    summary.movies = writer.movies(&catalog, &movies_bar).await?;
    movies_bar.finish();

    let file_len = std::fs::metadata(&ratings_path)
        .with_context(|| format!("reading {}", ratings_path.display()))?
        .len();
    let ratings_bar = bar(file_len, "bytes", show_progress);
    ratings_bar.set_message("ratings");
    // The parser runs on a blocking thread and hands chunks over a short
    // queue, so reading the file and writing the stores overlap.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<anyhow::Result<(Vec<HistoryRow>, u64)>>(2);
    let reader = {
        let path = ratings_path.clone();
        tokio::task::spawn_blocking(move || {
            let send = |item| tx.blocking_send(item).is_ok();
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    send(Err(
                        anyhow::Error::new(e).context(format!("opening {}", path.display()))
                    ));
                    return;
                }
            };
            let counted = CountingReader::new(file);
            let position = counted.position();
            let input = BufReader::with_capacity(1 << 20, counted);
            let ratings: Box<dyn Iterator<Item = Result<Rating, MovieLensError>>> = match layout {
                MovieLensLayout::Csv => Box::new(movielens::parse_ratings_csv(input)),
                MovieLensLayout::Classic => Box::new(movielens::parse_u_data(input)),
            };
            let mut chunk = Vec::with_capacity(EVENT_CHUNK + 1);
            for rating in ratings {
                let rows = rating
                    .with_context(|| format!("parsing {}", path.display()))
                    .and_then(|r| rating_rows(&r));
                match rows {
                    Ok(rows) => chunk.extend(rows),
                    Err(e) => {
                        send(Err(e));
                        return;
                    }
                }
                if chunk.len() >= EVENT_CHUNK {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(EVENT_CHUNK + 1));
                    if !send(Ok((full, position.get()))) {
                        return;
                    }
                }
            }
            if !chunk.is_empty() {
                send(Ok((chunk, position.get())));
            }
        })
    };

    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut ratings_done = false;
    loop {
        tokio::select! {
            next = rx.recv(), if !ratings_done && in_flight.len() < CONCURRENCY => match next {
                Some(item) => {
                    let (rows, read) = item?;
                    summary.interactions += rows.len() as u64;
                    let users: BTreeSet<String> = rows.iter().map(|r| r.user_id.clone()).collect();
                    let users: Vec<String> = users.into_iter().collect();
                    summary.users += writer.users(&users, &ProgressBar::hidden()).await?;
                    let writer = &writer;
                    in_flight.push(async move { writer.chunk(rows).await });
                    ratings_bar.set_position(read);
                }
                None => ratings_done = true,
            },
            Some(done) = in_flight.next(), if !in_flight.is_empty() => summary.add(done?),
            else => break,
        }
    }
    ratings_bar.finish();
    reader.await.context("ratings parser task")?;
    Ok(summary)
}

/// Counts the bytes read through it, for a progress bar over the raw file.
struct CountingReader<R> {
    inner: R,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// A handle on a [`CountingReader`]'s count that outlives the moved reader.
struct Position(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl Position {
    fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<R> CountingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            read: Default::default(),
        }
    }

    fn position(&self) -> Position {
        Position(self.read.clone())
    }
}

impl<R: std::io::Read> std::io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::ids::{MovieId, UserId};

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a = derived_uuid(&[b"x", b"1"]);
        assert_eq!(a, derived_uuid(&[b"x", b"1"]));
        assert_ne!(a, derived_uuid(&[b"x1"]));
        assert_ne!(a, derived_uuid(&[b"x", b"2"]));
        assert_eq!(a.get_version_num(), 8);
    }

    #[test]
    fn a_rating_of_four_is_a_view_and_a_like() {
        let rating = |r: f32| Rating {
            user: UserId::parse("u7").unwrap(),
            movie: MovieId::parse(3).unwrap(),
            rating: r,
            ts: 1_000,
        };
        let rows = rating_rows(&rating(4.0)).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].kind, InteractionKind::View);
        assert_eq!(rows[1].kind, InteractionKind::Like);
        assert_eq!(rows[1].ts.timestamp(), 1_001);
        assert_ne!(rows[0].event_id, rows[1].event_id);
        assert_eq!(rating_rows(&rating(3.5)).unwrap().len(), 1);
        assert_eq!(rating_rows(&rating(4.0)).unwrap(), rows, "ids are stable");
    }
}
