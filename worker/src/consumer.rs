//! The event pipeline: Kafka → ClickHouse and PostgreSQL, exactly once in effect.
//!
//! Per batch (size or time bound):
//! 1. parse and validate every message; if a click (view, like, conversion)
//!    names a request id whose impression is neither in the batch nor known,
//!    first take in what arrives until it does or the attribution grace
//!    passes (once): the impression may be in flight behind the click;
//!    invalid events go to the DLQ (awaited);
//! 2. drop duplicates within the batch, then those the Redis fast path knows;
//! 3. claim the rest in the PostgreSQL ledger (one transaction, with the
//!    users/views/likes history) — ids already claimed are duplicates;
//! 4. attribute and insert the new events into ClickHouse in one insert
//!    (per `max_events_per_insert` events: steps 2-5 run per chunk);
//! 5. mark the batch written, remember its ids in Redis;
//! 6. only then commit the batch's offsets.
//!
//! A store error anywhere in 2-5 pauses the partitions and retries the whole
//! step with backoff and jitter under a new batch id; the ledger resolves what
//! an interrupted attempt left behind. Offsets never move past an event that
//! is not durable, so a crash at any point means redelivery, which the ledger
//! turns into duplicates dropped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use domain::events::{events_from_record, EventRules};
use domain::ids::{EventId, RequestId};
use domain::ports::pipeline::{
    BatchId, DedupCache, EventStore, IngestLedger, StoreError, StoredEvent,
};
use rand::Rng;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use repositories::kafka::encoding;
use repositories::kafka::PipelineContext;
use tokio_util::sync::CancellationToken;

use crate::attribution::{AttributionCounts, Attributor};
use crate::dlq::{DeadLetter, DeadLetterQueue};

/// The pipeline's Kafka consumer.
pub type EventConsumer = StreamConsumer<PipelineContext>;

/// One consumed message, detached from the consumer's buffers.
#[derive(Debug, Clone)]
pub struct Msg {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// The record's value, decoded (the api's packs are LZ4 frames, marked by
    /// a `content-encoding` header); as received if it could not be decoded.
    pub payload: Option<Vec<u8>>,
    /// Why the value could not be decoded: the record becomes a dead letter.
    pub undecodable: Option<String>,
}

/// While a batch waits for impressions, the pause in the stream after which
/// what arrived is checked for them.
const QUIET: Duration = Duration::from_millis(5);

/// Decoded payload bytes at which a batch is closed before it reaches its
/// size in messages: a record may pack hundreds of impressions, so a count of
/// records alone does not bound the batch's memory, and an LZ4 record may
/// decode to many times its size, so neither do the bytes fetched.
const MAX_BATCH_BYTES: usize = 32 << 20;

/// Default events per ledger batch and ClickHouse insert. An insert is atomic only
/// while it is one block (ClickHouse cuts blocks at `max_insert_block_size`,
/// 1,048,576 rows), and a batch of LZ4-packed impressions can decode to more
/// events than that; an event is one row per experiment it is attributed
/// to, so this leaves room for ten each. A batch larger than this is stored
/// in several ledger batches, each atomic, before its offsets are committed.
pub const MAX_EVENTS_PER_INSERT: usize = 100_000;

impl Msg {
    fn len(&self) -> usize {
        self.payload.as_ref().map_or(0, Vec::len)
    }

    /// Detach `m`, decoding its value here, so that the batch's byte bound
    /// counts what the batch will hold in memory.
    fn from_kafka<M: Message>(m: &M) -> Self {
        let raw = m.payload();
        let (payload, undecodable) = match encoding::decode(
            encoding::content_encoding(m.headers()),
            raw.unwrap_or_default(),
        ) {
            Ok(std::borrow::Cow::Owned(plain)) => (Some(plain), None),
            Ok(std::borrow::Cow::Borrowed(_)) => (raw.map(<[u8]>::to_vec), None),
            Err(e) => (raw.map(<[u8]>::to_vec), Some(e.to_string())),
        };
        Self {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload,
            undecodable,
        }
    }
}

/// Batching and retry knobs.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub topic: String,
    pub batch_size: usize,
    /// Events per ledger batch and ClickHouse insert; see [`MAX_EVENTS_PER_INSERT`].
    pub max_events_per_insert: usize,
    pub batch_max_wait: Duration,
    /// See `WorkerConfig::attribution_grace_ms`; zero turns the wait off.
    pub attribution_grace: Duration,
    pub dedup_ttl_s: u64,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

/// Await `$op` (re-evaluated per attempt) until it succeeds, pausing the
/// partitions while it fails; `None` if shutdown interrupted the retries.
/// A macro rather than a function taking a closure, so the future may borrow
/// the pipeline's state mutably.
macro_rules! retry {
    ($intake:expr, $op:expr) => {{
        let mut failed = 0u32;
        loop {
            match $op.await {
                Ok(value) => {
                    $intake.succeeded(failed);
                    break Some(value);
                }
                Err(e) => {
                    failed += 1;
                    let delay = $intake.failed(&e, failed);
                    if !$intake.idle(delay).await {
                        break None;
                    }
                }
            }
        }
    }};
}

/// The Kafka side: batches in, offsets out, pauses while a store is down.
pub struct Intake {
    consumer: Arc<EventConsumer>,
    topic: String,
    /// Messages that arrived while the current batch was being retried; they
    /// open the next batch.
    carry: VecDeque<Msg>,
    shutdown: CancellationToken,
    retry_initial: Duration,
    retry_max: Duration,
}

impl Intake {
    /// Up to `size` messages: waits as long as it takes for the first, then at
    /// most `max_wait` for the rest. Returns early (possibly empty) on shutdown.
    async fn collect(&mut self, size: usize, max_wait: Duration) -> Vec<Msg> {
        let mut out: Vec<Msg> = Vec::new();
        let mut bytes = 0;
        self.take_carried(&mut out, size, &mut bytes);
        let idle = Duration::from_secs(3600);
        let timer = tokio::time::sleep(if out.is_empty() { idle } else { max_wait });
        tokio::pin!(timer);
        while out.len() < size && bytes < MAX_BATCH_BYTES {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                received = self.consumer.recv() => match received {
                    Ok(m) => {
                        if out.is_empty() {
                            timer.as_mut().reset(tokio::time::Instant::now() + max_wait);
                        }
                        let m = Msg::from_kafka(&m);
                        bytes += m.len();
                        out.push(m);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = &mut timer => {
                    if !out.is_empty() {
                        break;
                    }
                    timer.as_mut().reset(tokio::time::Instant::now() + idle);
                }
            }
        }
        out
    }

    /// Move carried messages to `batch`, at most `size` of them and while
    /// `bytes` (the batch's payload, kept up to date) is under the bound;
    /// returns how many.
    fn take_carried(&mut self, batch: &mut Vec<Msg>, size: usize, bytes: &mut usize) -> usize {
        let mut added = 0;
        while added < size && *bytes < MAX_BATCH_BYTES {
            let Some(m) = self.carry.pop_front() else {
                break;
            };
            *bytes += m.len();
            batch.push(m);
            added += 1;
        }
        added
    }

    /// Append to `batch` the next messages, up to `size` more and the batch's
    /// byte bound: carried ones if any (at once), else what arrives before
    /// `deadline`, returning once the stream pauses for [`QUIET`] after the
    /// first. Returns how many were appended (0 at the deadline or shutdown).
    async fn take_more(
        &mut self,
        batch: &mut Vec<Msg>,
        size: usize,
        deadline: tokio::time::Instant,
    ) -> usize {
        let mut bytes: usize = batch.iter().map(Msg::len).sum();
        let mut added = self.take_carried(batch, size, &mut bytes);
        if added > 0 {
            return added;
        }
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        while added < size && bytes < MAX_BATCH_BYTES {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                _ = &mut timer => break,
                received = self.consumer.recv() => match received {
                    Ok(m) => {
                        let m = Msg::from_kafka(&m);
                        bytes += m.len();
                        batch.push(m);
                        added += 1;
                        let quiet = tokio::time::Instant::now() + QUIET;
                        timer.as_mut().reset(quiet.min(deadline));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        added
    }

    fn pause(&self) {
        self.consumer
            .context()
            .paused
            .store(true, std::sync::atomic::Ordering::SeqCst);
        match self.consumer.assignment() {
            Ok(assigned) => {
                if let Err(e) = self.consumer.pause(&assigned) {
                    tracing::warn!(error = %e, "could not pause partitions");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read the assignment to pause it"),
        }
        metrics::gauge!("marquee_worker_paused").set(1.0);
    }

    fn resume(&self) {
        self.consumer
            .context()
            .paused
            .store(false, std::sync::atomic::Ordering::SeqCst);
        match self.consumer.assignment() {
            Ok(assigned) => {
                if let Err(e) = self.consumer.resume(&assigned) {
                    tracing::warn!(error = %e, "could not resume partitions");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read the assignment to resume it"),
        }
        metrics::gauge!("marquee_worker_paused").set(0.0);
    }

    /// Wait `delay` while still polling the consumer (group membership and
    /// rebalance callbacks are served by polls); anything that arrives is kept
    /// for the next batch. False if shutdown was requested meanwhile.
    async fn idle(&mut self, delay: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return false,
                _ = tokio::time::sleep_until(deadline) => return true,
                received = self.consumer.recv() => match received {
                    Ok(m) => {
                        self.carry.push_back(Msg::from_kafka(&m));
                        // A rebalance may have handed us unpaused partitions.
                        self.pause();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consumer error while paused");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .retry_initial
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)))
            .min(self.retry_max);
        // Full jitter in [exp/2, exp]: workers that failed together retry apart.
        let millis = exp.as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
    }

    /// Bookkeeping after a failed attempt: count, pause, log; returns the delay.
    fn failed(&self, e: &StoreError, attempt: u32) -> Duration {
        metrics::counter!("marquee_worker_store_retries_total", "store" => e.store).increment(1);
        if attempt == 1 {
            self.pause();
        }
        let delay = self.backoff(attempt);
        if e.transient {
            tracing::warn!(store = e.store, error = %e, attempt, retry_in_ms = delay.as_millis() as u64,
                "store call failed; partitions paused, retrying");
        } else {
            // Never skip an event that is not durable: even an error that looks
            // permanent is retried (and shouts), since the data itself was valid.
            tracing::error!(store = e.store, error = %e, attempt, retry_in_ms = delay.as_millis() as u64,
                "store call failed with a non-transient error; retrying");
        }
        delay
    }

    /// Bookkeeping after a successful attempt.
    fn succeeded(&self, attempts_failed: u32) {
        if attempts_failed > 0 {
            self.resume();
            tracing::info!(
                attempts = attempts_failed + 1,
                "store call succeeded; partitions resumed"
            );
        }
    }

    /// Commit the next offsets after `batch` (every message is durable or
    /// dead-lettered). The offsets wait in the context until a commit
    /// succeeds, so a failed one is retried by the next batch or before a revoke.
    async fn commit(&self, batch: &[Msg]) {
        let mut next: HashMap<i32, i64> = HashMap::new();
        for m in batch {
            let e = next.entry(m.partition).or_insert(m.offset + 1);
            *e = (*e).max(m.offset + 1);
        }
        let pending = self.consumer.context().pending.clone();
        let tpl = {
            let Ok(mut map) = pending.lock() else {
                tracing::error!("offset map poisoned; not committing");
                return;
            };
            for (partition, offset) in next {
                let e = map.entry((self.topic.clone(), partition)).or_insert(offset);
                *e = (*e).max(offset);
            }
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), offset) in map.iter() {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
            }
            tpl
        };
        for attempt in 1..=3u64 {
            let consumer = self.consumer.clone();
            let to_commit = tpl.clone();
            let result =
                tokio::task::spawn_blocking(move || consumer.commit(&to_commit, CommitMode::Sync))
                    .await;
            match result {
                Ok(Ok(())) => {
                    if let Ok(mut map) = pending.lock() {
                        for element in tpl.elements() {
                            let key = (element.topic().to_owned(), element.partition());
                            if map.get(&key).copied() == element.offset().to_raw() {
                                map.remove(&key);
                            }
                        }
                    }
                    return;
                }
                Ok(Err(e)) => {
                    metrics::counter!("marquee_worker_commit_failures_total").increment(1);
                    tracing::warn!(error = %e, attempt, "offset commit failed");
                }
                Err(e) => tracing::warn!(error = %e, "offset commit task failed"),
            }
            tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
        }
        // Durable work is safe either way: uncommitted offsets are redelivered
        // and deduplicated. Forget partitions we no longer own.
        if let Ok(assigned) = self.consumer.assignment() {
            let owned: HashSet<(String, i32)> = assigned
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            if let Ok(mut map) = pending.lock() {
                map.retain(|k, _| owned.contains(k));
            }
        }
    }
}

/// The stores side of a batch.
pub struct Sinks {
    pub ledger: Box<dyn IngestLedger>,
    pub events: Arc<dyn EventStore>,
    pub dedup: Arc<dyn DedupCache>,
    pub attributor: Attributor,
    pub dlq: DeadLetterQueue,
    pub dedup_ttl_s: u64,
}

/// What one durable batch did, for metrics.
#[derive(Debug, Default, Clone, Copy)]
struct Stored {
    written: usize,
    cache_duplicates: usize,
    ledger_duplicates: usize,
    attribution: AttributionCounts,
}

impl Stored {
    fn add(&mut self, other: Stored) {
        self.written += other.written;
        self.cache_duplicates += other.cache_duplicates;
        self.ledger_duplicates += other.ledger_duplicates;
        self.attribution.add(other.attribution);
    }
}

impl Sinks {
    /// Steps 2-5 of the module docs for `events` (unique ids); idempotent, so
    /// a failed attempt is simply run again.
    /// The batch's impressions must have been remembered first (see
    /// [`Attributor::remember`]).
    async fn store(&mut self, events: &[StoredEvent]) -> Result<Stored, StoreError> {
        let ids: Vec<EventId> = events.iter().map(|e| e.event.id).collect();
        // The cache is a fast path in front of the ledger, which is the
        // truth: without it every event goes on to the ledger's claim.
        let seen = match self.dedup.seen(&ids).await {
            Ok(seen) => seen,
            Err(e) => {
                metrics::counter!("marquee_worker_dedup_cache_errors_total").increment(1);
                tracing::warn!(error = %e, "dedup cache unavailable; the ledger alone deduplicates this batch");
                vec![false; ids.len()]
            }
        };
        let fresh: Vec<StoredEvent> = events
            .iter()
            .zip(&seen)
            .filter(|(_, seen)| !**seen)
            .map(|(e, _)| e.clone())
            .collect();
        let cache_duplicates = events.len() - fresh.len();
        if fresh.is_empty() {
            return Ok(Stored {
                cache_duplicates,
                ..Stored::default()
            });
        }

        let batch = BatchId::new_random();
        let new_ids: HashSet<EventId> = self
            .ledger
            .claim(batch, &fresh, self.events.as_ref())
            .await?
            .into_iter()
            .collect();
        let mut new: Vec<StoredEvent> = fresh
            .into_iter()
            .filter(|e| new_ids.contains(&e.event.id))
            .collect();
        let ledger_duplicates = events.len() - cache_duplicates - new.len();

        let written = async {
            let attribution = self.attributor.attribute(&mut new).await?;
            self.events.insert_batch(batch, &new).await?;
            Ok::<_, StoreError>(attribution)
        }
        .await;
        let attribution = match written {
            Ok(a) => a,
            Err(e) => {
                self.ledger.abandon(batch).await;
                return Err(e);
            }
        };
        self.ledger.mark_written(batch).await?;
        if let Err(e) = self.dedup.mark(&ids, self.dedup_ttl_s).await {
            // Only the fast path suffers: the ledger still catches replays.
            tracing::warn!(error = %e, "could not record processed ids in the dedup cache");
        }
        Ok(Stored {
            written: new.len(),
            cache_duplicates,
            ledger_duplicates,
            attribution,
        })
    }
}

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Committed,
    /// Shutdown interrupted the retries: nothing of the batch was committed.
    Abandoned,
}

/// The consumer loop.
pub struct Pipeline {
    intake: Intake,
    sinks: Sinks,
    settings: PipelineSettings,
    rules: EventRules,
}

impl Pipeline {
    pub fn new(
        consumer: Arc<EventConsumer>,
        sinks: Sinks,
        settings: PipelineSettings,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            intake: Intake {
                consumer,
                topic: settings.topic.clone(),
                carry: VecDeque::new(),
                shutdown,
                retry_initial: settings.retry_initial,
                retry_max: settings.retry_max,
            },
            sinks,
            settings,
            // The worker accepts impressions: the api emits them to the same topic.
            rules: EventRules::default(),
        }
    }

    /// Consume until shutdown, then commit what is durable and leave the group.
    pub async fn run(mut self) -> anyhow::Result<()> {
        loop {
            let mut batch = self
                .intake
                .collect(self.settings.batch_size, self.settings.batch_max_wait)
                .await;
            if !batch.is_empty() && self.process(&mut batch).await == Outcome::Abandoned {
                tracing::info!(
                    messages = batch.len(),
                    "shutdown during retries: batch abandoned, its offsets not committed"
                );
                break;
            }
            if self.intake.shutdown.is_cancelled() {
                break;
            }
        }
        // Leaving the group (rd_kafka_consumer_close) blocks; keep it off the runtime.
        let consumer = self.intake.consumer;
        tokio::task::spawn_blocking(move || {
            consumer.unsubscribe();
            drop(consumer);
        })
        .await
        .ok();
        tracing::info!("consumer closed");
        Ok(())
    }

    /// Store `batch` (extended by the attribution grace, see the module docs)
    /// and commit its offsets.
    async fn process(&mut self, batch: &mut Vec<Msg>) -> Outcome {
        let started = Instant::now();
        let mut parsed = Parsed::default();
        self.parse(batch, &mut parsed);
        self.await_impressions(batch, &mut parsed).await;
        let Parsed {
            mut events,
            letters,
            ..
        } = parsed;
        if !letters.is_empty() {
            if retry!(self.intake, self.sinks.dlq.send_all(&letters)).is_none() {
                return Outcome::Abandoned;
            }
            for letter in &letters {
                metrics::counter!("marquee_worker_dlq_total", "field" => dlq_field(&letter.field))
                    .increment(1);
            }
        }

        let consumed = events.len() + letters.len();
        let before = events.len();
        let mut unique = HashSet::with_capacity(before);
        events.retain(|e| unique.insert(e.event.id));
        let batch_duplicates = before - events.len();

        let mut stored = Stored::default();
        if !events.is_empty() {
            // Every impression of the batch is known before any chunk is
            // attributed: a click may precede its impression in the batch.
            if retry!(self.intake, self.sinks.attributor.remember(&events)).is_none() {
                return Outcome::Abandoned;
            }
            for chunk in events.chunks(self.settings.max_events_per_insert.max(1)) {
                match retry!(self.intake, self.sinks.store(chunk)) {
                    Some(part) => stored.add(part),
                    None => return Outcome::Abandoned,
                }
            }
        }
        self.intake.commit(batch).await;

        metrics::counter!("marquee_worker_records_consumed_total").increment(batch.len() as u64);
        metrics::counter!("marquee_worker_events_consumed_total").increment(consumed as u64);
        metrics::counter!("marquee_worker_events_written_total").increment(stored.written as u64);
        metrics::histogram!("marquee_worker_batch_size").record(batch.len() as f64);
        metrics::histogram!("marquee_worker_batch_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        for (stage, n) in [
            ("batch", batch_duplicates),
            ("cache", stored.cache_duplicates),
            ("ledger", stored.ledger_duplicates),
        ] {
            if n > 0 {
                metrics::counter!("marquee_worker_duplicates_dropped_total", "stage" => stage)
                    .increment(n as u64);
            }
        }
        metrics::counter!("marquee_events_unattributed_total")
            .increment(stored.attribution.unattributed);
        for (reason, n) in [
            ("other_user", stored.attribution.other_user),
            ("movie_not_served", stored.attribution.movie_not_served),
            ("click_cap", stored.attribution.click_cap),
        ] {
            if n > 0 {
                metrics::counter!("marquee_events_attribution_refused_total", "reason" => reason)
                    .increment(n);
            }
        }
        metrics::counter!("marquee_worker_events_attributed_total")
            .increment(stored.attribution.attributed + stored.attribution.sticky);
        tracing::debug!(
            messages = batch.len(),
            written = stored.written,
            dead_letters = letters.len(),
            duplicates = batch_duplicates + stored.cache_duplicates + stored.ledger_duplicates,
            millis = started.elapsed().as_millis() as u64,
            "batch committed"
        );
        Outcome::Committed
    }

    /// If a click (view, like, conversion) in the batch names a request id
    /// whose impression is unknown, take in what arrives until every click's
    /// impression has (those taken in too) or the attribution grace has
    /// passed (once per batch, up to another batch's worth of messages),
    /// parsing it. Clicks taken in whose impressions are still missing then
    /// go back, from the first of them on, to open the next batch (which
    /// waits for them) instead of being stored unattributed.
    async fn await_impressions(&mut self, batch: &mut Vec<Msg>, parsed: &mut Parsed) {
        let grace = self.settings.attribution_grace;
        if grace.is_zero() {
            return;
        }
        let mut unknown = self
            .sinks
            .attributor
            .unknown_request_ids(&parsed.events)
            .await;
        if unknown.is_empty() {
            return;
        }
        metrics::counter!("marquee_worker_attribution_waits_total").increment(1);
        let named = unknown.len();
        let mut served_at = HashMap::new();
        note_served(parsed, 0, &mut served_at);
        let first_taken = batch.len();
        let deadline = tokio::time::Instant::now() + grace;
        let mut room = self.settings.batch_size;
        // Clicks taken in join the wait: their impressions may be in flight too.
        while !unknown.is_empty() && room > 0 {
            let first_message = batch.len();
            let added = self.intake.take_more(batch, room, deadline).await;
            if added == 0 {
                break;
            }
            room -= added;
            let first_event = parsed.events.len();
            self.parse(&batch[first_message..], parsed);
            note_served(parsed, first_message, &mut served_at);
            for e in &parsed.events[first_event..] {
                if let Some(id) = e.event.served_request() {
                    unknown.remove(&id);
                } else if let Some(id) = e.event.acted_on_request() {
                    if !served_at.contains_key(&id) && !self.sinks.attributor.knows(&id) {
                        unknown.insert(id);
                    }
                }
            }
        }
        let held = match self.hold_back_from(first_taken, parsed, &served_at) {
            Some(first_held) => {
                let held = batch.split_off(first_held);
                parsed.truncate(first_held);
                let count = held.len();
                for m in held.into_iter().rev() {
                    self.intake.carry.push_front(m);
                }
                metrics::counter!("marquee_worker_attribution_held_back_total")
                    .increment(count as u64);
                count
            }
            None => 0,
        };
        tracing::debug!(
            named,
            still_unknown = unknown.len(),
            taken_in = batch.len() - first_taken,
            held_back = held,
            "waited for the impressions a batch's clicks name"
        );
    }

    /// Where the batch is cut so that what is held back from there on holds
    /// every click taken in while waiting (index `first_taken` on) whose
    /// impression is neither in the part kept nor known in memory, while
    /// every click kept keeps the impression it found in the batch: the
    /// latest such cut, or `None` when no click taken in is missing its
    /// impression (or no cut exists). `served_at`: the first message serving
    /// each request id the batch serves.
    fn hold_back_from(
        &mut self,
        first_taken: usize,
        parsed: &Parsed,
        served_at: &HashMap<RequestId, usize>,
    ) -> Option<usize> {
        let clicks = |i: usize| {
            parsed
                .events_of(i)
                .iter()
                .filter_map(|e| e.event.acted_on_request())
        };
        // A cut must keep the impressions the clicks before the wait found.
        let mut lowest = first_taken;
        for i in 0..first_taken {
            for id in clicks(i) {
                if let Some(&at) = served_at.get(&id) {
                    lowest = lowest.max(at + 1);
                }
            }
        }
        // Cutting at `cut` keeps the clicks taken in before it: each needs its
        // impression before the cut (or in memory).
        let mut latest_cut = None;
        let mut needed_before = 0;
        for cut in first_taken..parsed.messages() {
            if cut >= lowest && needed_before < cut {
                latest_cut = Some(cut);
            }
            for id in clicks(cut) {
                match served_at.get(&id) {
                    Some(&at) => needed_before = needed_before.max(at),
                    None if self.sinks.attributor.knows(&id) => {}
                    // Kept, this click would be stored unattributed.
                    None => return latest_cut,
                }
            }
        }
        None
    }

    /// Decode and validate `messages` into `parsed`; what is invalid becomes a
    /// dead letter.
    fn parse(&self, messages: &[Msg], parsed: &mut Parsed) {
        let Parsed {
            events,
            letters,
            ends,
        } = parsed;
        let now = Utc::now();
        for m in messages {
            let plain = m.payload.as_deref().unwrap_or_default();
            match &m.undecodable {
                None => {}
                Some(e) => {
                    letters.push(DeadLetter::new(
                        e.clone(),
                        "content-encoding".to_owned(),
                        &self.settings.topic,
                        m.partition,
                        m.offset,
                        m.key.clone(),
                        plain,
                    ));
                    ends.push((events.len(), letters.len()));
                    continue;
                }
            }
            // A record holds one event or, from the api, a partition's packed impressions.
            for item in events_from_record(plain, now, self.rules) {
                match item {
                    Ok(event) => events.push(StoredEvent::new(event)),
                    Err(rejected) => letters.push(DeadLetter::new(
                        rejected.error.message,
                        rejected.error.field,
                        &self.settings.topic,
                        m.partition,
                        m.offset,
                        m.key.clone(),
                        rejected.payload,
                    )),
                }
            }
            ends.push((events.len(), letters.len()));
        }
    }
}

/// Note in `served_at` the first message serving each request id, for the
/// messages of `parsed` from `from` on.
fn note_served(parsed: &Parsed, from: usize, served_at: &mut HashMap<RequestId, usize>) {
    for i in from..parsed.messages() {
        for id in parsed
            .events_of(i)
            .iter()
            .filter_map(|e| e.event.served_request())
        {
            served_at.entry(id).or_insert(i);
        }
    }
}

/// A batch's messages parsed: their events and dead letters in message order,
/// and where each message's end in both.
#[derive(Default)]
struct Parsed {
    events: Vec<StoredEvent>,
    letters: Vec<DeadLetter>,
    /// Per message: (events so far, letters so far) after it.
    ends: Vec<(usize, usize)>,
}

impl Parsed {
    fn messages(&self) -> usize {
        self.ends.len()
    }

    /// Where message `index`'s events start.
    fn events_start(&self, index: usize) -> usize {
        index.checked_sub(1).map_or(0, |before| self.ends[before].0)
    }

    fn events_of(&self, index: usize) -> &[StoredEvent] {
        &self.events[self.events_start(index)..self.ends[index].0]
    }

    /// Keep the first `messages` messages' events and letters only.
    fn truncate(&mut self, messages: usize) {
        let (events, letters) = messages
            .checked_sub(1)
            .map_or((0, 0), |last| self.ends[last]);
        self.events.truncate(events);
        self.letters.truncate(letters);
        self.ends.truncate(messages);
    }
}

/// Bound the label set: nested paths collapse to their top-level field.
fn dlq_field(field: &str) -> String {
    field.split(['.', '[']).next().unwrap_or("body").to_owned()
}
