//! Tasks that keep the serving snapshots fresh, drain the assignment queue,
//! answer the queued context reads and send the packed impressions.
//!
//! Each runs until the shutdown token is cancelled; the drainer then writes
//! what is left, and [`flush_impressions`] sends and waits for the impressions
//! still buffered.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use repositories::postgres::serving::NewAssignment;
use repositories::redis::RedisStore;
use repositories::redis_serving::ServingChange;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::context_reads::{self, ContextReadMetrics};
use super::{CatalogSnapshot, Serving, ServingQueues, FALLBACK_LEN};

/// How far back the PostgreSQL popular list looks.
const POPULAR_WINDOW: Duration = Duration::from_secs(30 * 86_400);
/// Most assignments taken from the queue per PostgreSQL write.
const DRAIN_BATCH: usize = 500;
/// How long a drainer waits to fill a batch once it has one item.
const DRAIN_LINGER: Duration = Duration::from_millis(20);

/// Settings of the background tasks.
#[derive(Debug, Clone, Copy)]
pub struct RefreshIntervals {
    pub catalog: Duration,
    pub hot: Duration,
    /// How long impressions for one partition are packed before they are
    /// sent; zero sends each impression as its own record.
    pub impression_packing: Duration,
    /// Batched user-context reads PostgreSQL may have in flight at once.
    pub context_readers: usize,
}

/// Load every snapshot once, so the first request after startup is served
/// from a warm cache; failures are logged and retried by the refresh loops.
pub async fn warm(serving: &Serving, redis: &RedisStore) {
    refresh_experiments(serving).await;
    refresh_catalog(serving).await;
    refresh_hot(serving, redis).await;
}

/// Start the refresh loops, the weights and lists subscriber and the queue
/// drainers. The receiver resolves once the subscriber's first attempt has
/// ended: serving before it could remember lists that the subscription then
/// drops, or that a message missed before it should have dropped.
pub fn spawn(
    serving: Arc<Serving>,
    keys: crate::auth::KeyCache,
    queues: ServingQueues,
    redis: RedisStore,
    intervals: RefreshIntervals,
    shutdown: CancellationToken,
) -> (Vec<JoinHandle<()>>, oneshot::Receiver<()>) {
    let (first_attempt, first_attempt_done) = oneshot::channel();
    let mut tasks = vec![
        tokio::spawn(catalog_loop(
            serving.clone(),
            intervals.catalog,
            shutdown.clone(),
        )),
        tokio::spawn(hot_loop(
            serving.clone(),
            redis.clone(),
            intervals.hot,
            shutdown.clone(),
        )),
        tokio::spawn(changes_subscriber(
            serving.clone(),
            keys,
            redis,
            first_attempt,
            shutdown.clone(),
        )),
    ];
    if !intervals.impression_packing.is_zero() {
        tasks.push(tokio::spawn(impression_packer(
            serving.clone(),
            intervals.impression_packing,
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(partition_refresher(
            serving.clone(),
            shutdown.clone(),
        )));
    }
    let context_reads = Arc::new(tokio::sync::Mutex::new(queues.context_reads));
    let context_metrics = ContextReadMetrics::register();
    for _ in 0..intervals.context_readers.max(1) {
        tasks.push(tokio::spawn(context_reads::reader(
            serving.pg.clone(),
            context_reads.clone(),
            context_metrics.clone(),
            shutdown.clone(),
        )));
    }
    tasks.push(tokio::spawn(assignment_drainer(
        serving,
        queues.assignments,
        shutdown,
    )));
    (tasks, first_attempt_done)
}

async fn refresh_experiments(serving: &Serving) {
    match serving.pg.experiments().await {
        Ok(list) => serving
            .experiments
            .set(list.into_iter().map(|e| (e.key().clone(), e)).collect()),
        Err(e) => {
            tracing::warn!(error = %e, "reloading experiments failed; serving the previous ones")
        }
    }
}

/// Titles and the popular fallback refresh independently: a slow popular
/// query (it aggregates 30 days of history) must not keep new titles out.
async fn refresh_catalog(serving: &Serving) {
    let (catalog, popular) = tokio::join!(
        serving.pg.catalog(),
        serving.pg.popular(POPULAR_WINDOW, FALLBACK_LEN)
    );
    let previous = serving.catalog.get();
    let popular = popular.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "reloading the popular list failed; keeping the previous one");
        previous.popular.clone()
    });
    match catalog {
        Ok(catalog) => serving.catalog.set(CatalogSnapshot::new(catalog, popular)),
        Err(e) => {
            tracing::warn!(error = %e, "reloading the catalog failed; serving the previous one");
            serving.catalog.set(CatalogSnapshot {
                titles: previous.titles.clone(),
                popular,
                any: previous.any.clone(),
                meta: previous.meta.clone(),
                genres: previous.genres.clone(),
            });
        }
    }
}

async fn refresh_hot(serving: &Serving, redis: &RedisStore) {
    match redis.hot_movies(FALLBACK_LEN).await {
        Ok(hot) => serving.hot.set(hot),
        Err(e) => {
            // Dropping the stale list makes the degradation visible (items
            // come from the PostgreSQL popular list) rather than silent.
            tracing::warn!(error = %e, "reading hot movies failed");
            serving.hot.set(Vec::new());
        }
    }
}

async fn catalog_loop(serving: Arc<Serving>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        refresh_experiments(&serving).await;
        refresh_catalog(&serving).await;
    }
}

async fn hot_loop(
    serving: Arc<Serving>,
    redis: RedisStore,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        refresh_hot(&serving, &redis).await;
    }
}

/// Reload experiments whenever a worker (or an admin call) publishes new
/// weights, and drop remembered lists of an algorithm whose lists the model
/// loop rewrote; resubscribe with backoff when Redis goes away, and do both
/// on every (re)subscription so a message missed while down is not lost.
async fn changes_subscriber(
    serving: Arc<Serving>,
    keys: crate::auth::KeyCache,
    redis: RedisStore,
    first_attempt: oneshot::Sender<()>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    let mut first_attempt = Some(first_attempt);
    loop {
        let subscribed = redis.serving_changes().await;
        if subscribed.is_ok() {
            refresh_experiments(&serving).await;
            serving.forget_lists(None);
            keys.expire_all();
        }
        if let Some(done) = first_attempt.take() {
            let _ = done.send(());
        }
        match subscribed {
            Ok(stream) => {
                backoff = Duration::from_millis(200);
                let mut stream = std::pin::pin!(stream);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        message = stream.next() => match message {
                            Some(ServingChange::Weights(experiment)) => {
                                tracing::debug!(%experiment, "weights changed; reloading experiments");
                                refresh_experiments(&serving).await;
                            }
                            Some(ServingChange::Lists(algorithm)) => {
                                tracing::info!(%algorithm, "lists rewritten; dropping the remembered ones");
                                serving.forget_lists(Some(&algorithm));
                            }
                            Some(ServingChange::KeyRevoked(hash)) => {
                                tracing::info!("an api key was revoked; refusing it here");
                                keys.revoke_hash(&hash);
                            }
                            None => break,
                        },
                    }
                }
                tracing::warn!("serving-changes subscription ended; resubscribing");
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "subscribing to weight and list changes failed")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// How often the events topic's partition count is asked for once known
/// (partitions may be added); while unknown, every [`PARTITIONS_RETRY`].
const PARTITIONS_REFRESH: Duration = Duration::from_secs(60);
const PARTITIONS_RETRY: Duration = Duration::from_secs(2);
const PARTITIONS_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends the impressions packed per partition every `window`.
async fn impression_packer(serving: Arc<Serving>, window: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(window);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Only hands the packs to the producer's encoder thread, which
        // compresses them: cheap enough for an async worker.
        serving.impressions.flush_packs();
    }
}

/// Keeps the partition count impressions are packed by current; a task of its
/// own, so a slow broker's metadata answer never delays the packer's tick.
/// Until the count is known (Kafka down at startup) impressions are sent one
/// record each.
async fn partition_refresher(serving: Arc<Serving>, shutdown: CancellationToken) {
    let mut known = false;
    loop {
        let producer = serving.clone();
        let refresh = tokio::task::spawn_blocking(move || {
            producer.impressions.refresh_partitions(PARTITIONS_TIMEOUT)
        });
        let refreshed = tokio::select! {
            _ = shutdown.cancelled() => return,
            refreshed = refresh => refreshed,
        };
        match refreshed {
            Ok(Ok(partitions)) => {
                if !known {
                    tracing::info!(
                        partitions,
                        "packing impressions per partition of the events topic"
                    );
                }
                known = true;
            }
            Ok(Err(e)) if !known => {
                tracing::warn!(error = %e, "events topic's partitions unknown; sending impressions one record each")
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "re-reading the events topic's partitions failed; keeping the last count")
            }
            Err(e) => tracing::warn!(error = %e, "partition refresh task failed"),
        }
        let wait = if known {
            PARTITIONS_REFRESH
        } else {
            PARTITIONS_RETRY
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Take up to [`DRAIN_BATCH`] items, waiting at most [`DRAIN_LINGER`] once
/// one has arrived; `None` once the queue is closed and empty or on shutdown
/// with nothing left.
async fn next_batch<T>(
    queue: &mut mpsc::Receiver<T>,
    shutdown: &CancellationToken,
) -> Option<Vec<T>> {
    let mut batch = Vec::with_capacity(DRAIN_BATCH);
    if shutdown.is_cancelled() {
        while batch.len() < DRAIN_BATCH {
            match queue.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        return (!batch.is_empty()).then_some(batch);
    }
    tokio::select! {
        _ = shutdown.cancelled() => return Box::pin(next_batch(queue, shutdown)).await,
        first = queue.recv() => batch.push(first?),
    }
    let deadline = tokio::time::Instant::now() + DRAIN_LINGER;
    while batch.len() < DRAIN_BATCH {
        match tokio::time::timeout_at(deadline, queue.recv()).await {
            Ok(Some(item)) => batch.push(item),
            _ => break,
        }
    }
    Some(batch)
}

/// Wait up to `limit` for buffered impressions to reach Kafka, so a graceful
/// stop loses none that the broker can take.
pub async fn flush_impressions(serving: Arc<Serving>, limit: Duration) {
    let pending = serving.impressions.pending();
    if pending == 0 {
        return;
    }
    tracing::info!(pending, "flushing buffered impressions to kafka");
    // librdkafka's flush blocks its caller.
    let flushed = tokio::task::spawn_blocking(move || serving.impressions.flush(limit)).await;
    match flushed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "impressions still buffered at exit are lost"),
        Err(e) => tracing::warn!(error = %e, "flushing impressions did not finish"),
    }
}

async fn assignment_drainer(
    serving: Arc<Serving>,
    mut queue: mpsc::Receiver<NewAssignment>,
    shutdown: CancellationToken,
) {
    while let Some(batch) = next_batch(&mut queue, &shutdown).await {
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=3 {
            match serving.pg.record_assignments(&batch).await {
                Ok(_) => break,
                Err(e) if attempt < 3 && e.is_transient() => {
                    tracing::warn!(error = %e, attempt, "recording assignments failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    metrics::counter!("marquee_assignments_dropped_total")
                        .increment(batch.len() as u64);
                    tracing::error!(error = %e, count = batch.len(), "recording assignments failed; they stay unrecorded");
                    break;
                }
            }
        }
    }
}
