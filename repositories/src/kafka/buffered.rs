//! Impressions to Kafka without waiting for the broker, packed per partition.
//!
//! The api emits one impression per request. Produced as one record each they
//! cost the broker more CPU than the api spends answering the request (Tansu
//! writes one SQLite row per record), so the impressions bound for one
//! partition within one packing window travel as one record holding a JSON
//! array ([`domain::events::record_of`]), which the worker unpacks
//! ([`domain::events::events_from_record`]).
//!
//! A packed record goes to the partition that every producer of Marquee's
//! events gives each of its users: librdkafka's `consistent_random`
//! partitioner, CRC-32 of the key modulo the partition count
//! ([`partition_for`]). A user's impressions and their later clicks therefore
//! still share a partition and stay in order. Until the topic's partition
//! count is known (the broker was down at startup), impressions go one record
//! each, keyed by user, as before.
//!
//! A packed record is LZ4-compressed by default ([`super::encoding`]): the
//! broker's cost follows the bytes it stores as well as the records.
//!
//! Finished packs are encoded and handed to librdkafka by a thread of their
//! own: a pack that fills up is finished by the request that adds its last
//! event, and compressing a few hundred impressions there (about half a
//! millisecond) held up every request queued on that async worker.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use domain::events::Event;
use domain::ids::UserId;
use rdkafka::client::ClientContext;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use super::encoding::{RecordEncoder, RecordEncoding};
use super::{producer_config, KafkaSettings};
use crate::RepoResult;

/// Most impressions packed into one record: half of what the worker accepts
/// in one record ([`domain::events::MAX_EVENTS_PER_RECORD`]).
pub const MAX_EVENTS_PER_PACK: usize = 500;

/// Most bytes in one packed record: under librdkafka's and the broker's
/// 1,000,000-byte message limit, which 500 impressions of 100 movies each
/// (about 4 KB apiece) would pass; a pack that would outgrow it is sent first.
pub const MAX_PACK_BYTES: usize = 900_000;

/// How long a buffered record may wait for the broker before it counts as
/// lost. Nobody waits on it, so it is long: the local broker was seen to
/// stall for several seconds, and with the store timeout (5 s) every event in
/// flight then was dropped. The buffer's size, not this, bounds memory.
const BUFFERED_DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// librdkafka's own linger when records are packed: it only gathers the packs
/// of several partitions into one produce request.
const PACKED_LINGER_MS: u32 = 5;
/// librdkafka's linger when each event is its own record: it batches them
/// into produce requests.
const UNPACKED_LINGER_MS: u32 = 20;

const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Finished packs waiting for the encoder thread; past it, the thread is
/// behind and the pack is encoded where it was finished. The in-flight
/// bound, not this, bounds memory.
const ENCODER_QUEUE: usize = 32;

/// The partition librdkafka's `consistent_random` partitioner (set on every
/// Marquee producer) gives a message keyed `key`.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    crc32fast::hash(key) % partitions.max(1)
}

/// What a [`BufferedProducer`] reports about deliveries it did not wait for,
/// counted in events (a packed record counts each event it carries).
#[derive(Clone)]
pub struct DeliveryCounters {
    /// Acknowledged by the broker.
    pub delivered: metrics::Counter,
    /// Given up on by librdkafka (broker down past the delivery timeout, or refused).
    pub failed: metrics::Counter,
}

/// Why [`BufferedProducer::send`] refused an event.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The bounded buffer is full: the broker is slow or down.
    #[error("the producer's buffer is full")]
    BufferFull,
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// Counts outcomes, releases their room in the buffer, and logs failures at
/// most once per [`FAILURE_LOG_EVERY`].
pub struct CountingContext {
    counters: DeliveryCounters,
    /// Events accepted by `send` and not yet delivered or given up on.
    in_flight: AtomicUsize,
    last_failure_log: Mutex<Option<Instant>>,
}

impl CountingContext {
    fn lost(&self, events: usize, error: &dyn std::fmt::Display) {
        self.counters.failed.increment(events as u64);
        self.in_flight.fetch_sub(events, Ordering::AcqRel);
        let mut last = lock(&self.last_failure_log);
        if last.is_none_or(|at| at.elapsed() >= FAILURE_LOG_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(%error, events, "events not delivered to kafka; dropped (logged at most every 10 s)");
        }
    }
}

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    /// How many events the record carried.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, events: usize) {
        match result {
            Ok(_) => {
                self.counters.delivered.increment(events as u64);
                self.in_flight.fetch_sub(events, Ordering::AcqRel);
            }
            Err((error, _)) => self.lost(events, error),
        }
    }
}

/// The impressions gathered for one partition since its last record.
#[derive(Default)]
struct Pack {
    record: Vec<u8>,
    events: usize,
}

impl Pack {
    /// The finished record's length if `event` were added.
    fn len_with(&self, event: &[u8]) -> usize {
        // The separator and the closing bracket.
        self.record.len() + event.len() + 2
    }

    fn push(&mut self, event: &[u8]) {
        self.record.push(if self.events == 0 { b'[' } else { b',' });
        self.record.extend_from_slice(event);
        self.events += 1;
    }

    /// The record's bytes: the JSON array of [`domain::events::record_of`].
    fn finish(mut self) -> (Vec<u8>, usize) {
        self.record.push(b']');
        (self.record, self.events)
    }
}

/// Produces events without waiting for the broker, for data whose loss is
/// counted rather than retried by the caller (impressions): `send` packs the
/// event with others bound for its partition; [`Self::flush_packs`] (every few
/// milliseconds) and a full pack hand records to the encoder thread, which
/// gives them to librdkafka, whose outcomes arrive later in
/// [`DeliveryCounters`]. Memory is bounded in events.
pub struct BufferedProducer {
    sink: Arc<PackSink>,
    /// One pack per partition of the topic; empty while the count is unknown
    /// (then nothing is packed).
    packs: Mutex<Vec<Pack>>,
    /// To the encoder thread; `None` if it could not be started (then packs
    /// are encoded where they are finished).
    to_encoder: Option<SyncSender<ToEncoder>>,
    capacity: usize,
}

/// What encodes finished packs and hands them to librdkafka: shared by the
/// producer and its encoder thread.
struct PackSink {
    producer: ThreadedProducer<CountingContext>,
    topic: String,
    /// How a pack's record is encoded (single-event records stay plain).
    encoder: RecordEncoder,
}

enum ToEncoder {
    Pack(usize, Pack),
    /// Answered once every pack sent before it was handed to librdkafka.
    Drained(SyncSender<()>),
}

impl PackSink {
    fn produce_pack(&self, partition: usize, pack: Pack) {
        let (record, events) = pack.finish();
        let (record, encoding) = self.encoder.encode(record);
        let Ok(partition) = i32::try_from(partition) else {
            return self
                .producer
                .context()
                .lost(events, &"partition out of range");
        };
        let mut base = BaseRecord::<(), _, _>::with_opaque_to(&self.topic, events)
            .partition(partition)
            .payload(&record);
        if let Some(headers) = encoding.headers() {
            base = base.headers(headers);
        }
        let sent = self.producer.send(base);
        if let Err((e, _)) = sent {
            self.producer.context().lost(events, &e);
        }
    }

    /// The encoder thread's loop; ends when the producer is dropped.
    fn encode_until_closed(&self, finished: Receiver<ToEncoder>) {
        for message in finished {
            match message {
                ToEncoder::Pack(partition, pack) => self.produce_pack(partition, pack),
                ToEncoder::Drained(ack) => {
                    let _ = ack.send(());
                }
            }
        }
    }
}

impl BufferedProducer {
    /// `buffer` bounds the events held while the broker is slow or down;
    /// past it `send` refuses at once instead of blocking or growing memory.
    /// `packed`: whether the caller runs [`Self::refresh_partitions`] and
    /// [`Self::flush_packs`]; without them every event is its own record.
    /// `encoding`: how packed records are encoded ([`super::encoding`]).
    pub fn new(
        settings: &KafkaSettings,
        packed: bool,
        encoding: RecordEncoding,
        buffer: usize,
        counters: DeliveryCounters,
    ) -> RepoResult<Self> {
        let linger = if packed {
            PACKED_LINGER_MS
        } else {
            UNPACKED_LINGER_MS
        };
        let config = producer_config(settings, linger, BUFFERED_DELIVERY_TIMEOUT, buffer);
        let context = CountingContext {
            counters,
            in_flight: AtomicUsize::new(0),
            last_failure_log: Mutex::new(None),
        };
        let sink = Arc::new(PackSink {
            producer: config.create_with_context(context)?,
            topic: settings.events_topic.clone(),
            encoder: RecordEncoder::new(encoding),
        });
        let to_encoder = packed.then(|| start_encoder(&sink)).flatten();
        Ok(Self {
            sink,
            packs: Mutex::new(Vec::new()),
            to_encoder,
            capacity: buffer.max(1),
        })
    }

    /// Buffer `event` for the events topic, in its user's partition.
    pub fn send(&self, event: &Event) -> Result<(), Refused> {
        self.send_encoded(&event.user_id, || event.to_json())
    }

    /// Buffer an event of `user` given as its wire form, which `encode`
    /// writes only once the buffer has room for it.
    pub fn send_encoded(
        &self,
        user: &UserId,
        encode: impl FnOnce() -> Vec<u8>,
    ) -> Result<(), Refused> {
        let in_flight = &self.sink.producer.context().in_flight;
        if in_flight.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::BufferFull);
        }
        let payload = encode();
        let key = user.as_str().as_bytes();
        let ready = {
            let mut packs = lock(&self.packs);
            let partitions = u32::try_from(packs.len()).unwrap_or(0);
            let partition = partition_for(key, partitions) as usize;
            packs.get_mut(partition).map(|pack| {
                // Sent first: this event would take it past the size limit.
                let before = (pack.events > 0 && pack.len_with(&payload) > MAX_PACK_BYTES)
                    .then(|| std::mem::take(pack));
                pack.push(&payload);
                let after = (pack.events >= MAX_EVENTS_PER_PACK
                    || pack.len_with(&[]) >= MAX_PACK_BYTES)
                    .then(|| std::mem::take(pack));
                (partition, before, after)
            })
        };
        match ready {
            Some((partition, before, after)) => {
                for pack in [before, after].into_iter().flatten() {
                    self.produce_pack(partition, pack);
                }
            }
            // Partitions unknown: one record keyed by user, partitioned by librdkafka.
            None => {
                let record = BaseRecord::with_opaque_to(&self.sink.topic, 1)
                    .key(key)
                    .payload(&payload);
                if let Err((e, _)) = self.sink.producer.send(record) {
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    return Err(match e {
                        rdkafka::error::KafkaError::MessageProduction(
                            RDKafkaErrorCode::QueueFull,
                        ) => Refused::BufferFull,
                        e => Refused::Kafka(e),
                    });
                }
            }
        }
        Ok(())
    }

    /// Hand every non-empty pack to the encoder thread; call it every packing window.
    pub fn flush_packs(&self) {
        let packs: Vec<(usize, Pack)> = lock(&self.packs)
            .iter_mut()
            .enumerate()
            .filter(|(_, pack)| pack.events > 0)
            .map(|(partition, pack)| (partition, std::mem::take(pack)))
            .collect();
        for (partition, pack) in packs {
            self.produce_pack(partition, pack);
        }
    }

    /// Hand a finished pack to the encoder thread, or encode it here when
    /// that thread is missing or behind.
    fn produce_pack(&self, partition: usize, pack: Pack) {
        let Some(to_encoder) = &self.to_encoder else {
            return self.sink.produce_pack(partition, pack);
        };
        match to_encoder.try_send(ToEncoder::Pack(partition, pack)) {
            Ok(()) => {}
            // Behind or gone: late is better than lost.
            Err(
                TrySendError::Full(ToEncoder::Pack(_, pack))
                | TrySendError::Disconnected(ToEncoder::Pack(_, pack)),
            ) => self.sink.produce_pack(partition, pack),
            // Only packs are sent from here.
            Err(_) => {}
        }
    }

    /// Ask the broker how many partitions the topic has, and pack by that
    /// from now on. Blocking (a broker round trip): call it off the async
    /// workers. Returns the count, or the error with the previous count kept.
    pub fn refresh_partitions(&self, timeout: Duration) -> RepoResult<u32> {
        let metadata = self
            .sink
            .producer
            .client()
            .fetch_metadata(Some(&self.sink.topic), timeout)?;
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.sink.topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        let count = u32::try_from(count).unwrap_or(0);
        if count == 0 {
            return Err(crate::RepoError::Config(format!(
                "topic {} has no partitions yet",
                self.sink.topic
            )));
        }
        // Packs gathered under an old count keep their partitions (Kafka
        // never removes partitions); new ones are packed by the new count.
        let old: Vec<(usize, Pack)> = {
            let mut packs = lock(&self.packs);
            if packs.len() == count as usize {
                return Ok(count);
            }
            let mut fresh = Vec::with_capacity(count as usize);
            fresh.resize_with(count as usize, Pack::default);
            std::mem::replace(&mut *packs, fresh)
                .into_iter()
                .enumerate()
                .filter(|(_, p)| p.events > 0)
                .collect()
        };
        for (partition, pack) in old {
            self.produce_pack(partition, pack);
        }
        Ok(count)
    }

    /// Send what is packed and wait up to `timeout` for every buffered event
    /// to be delivered (or to fail). Blocking: call it from a blocking thread,
    /// at shutdown.
    pub fn flush(&self, timeout: Duration) -> RepoResult<()> {
        let started = Instant::now();
        self.flush_packs();
        if let Some(to_encoder) = &self.to_encoder {
            // The thread drains in order: once it answers, every pack
            // finished before now is in librdkafka's hands.
            let (ack, answered) = sync_channel(1);
            if to_encoder.send(ToEncoder::Drained(ack)).is_ok() {
                let _ = answered.recv_timeout(timeout);
            }
        }
        let left = timeout.saturating_sub(started.elapsed());
        Ok(self.sink.producer.flush(left)?)
    }

    /// Events packed, buffered or in flight.
    pub fn pending(&self) -> usize {
        self.sink
            .producer
            .context()
            .in_flight
            .load(Ordering::Acquire)
    }
}

/// The thread that encodes and produces finished packs, or `None` (logged)
/// if the system refused a thread.
fn start_encoder(sink: &Arc<PackSink>) -> Option<SyncSender<ToEncoder>> {
    let (to_encoder, finished) = sync_channel(ENCODER_QUEUE);
    let sink = Arc::clone(sink);
    match std::thread::Builder::new()
        .name("impression-packs".into())
        .spawn(move || sink.encode_until_closed(finished))
    {
        Ok(_) => Some(to_encoder),
        Err(e) => {
            tracing::warn!(error = %e, "no encoder thread; packs are encoded where they fill up");
            None
        }
    }
}

/// A poisoned lock still guards whole values here (packs are swapped whole).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_for_is_crc32_modulo_the_count() {
        // CRC-32 (IEEE) of "123456789" is the standard check value 0xCBF43926.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(partition_for(b"123456789", 4), 0xCBF4_3926 % 4);
        assert_eq!(partition_for(b"u1", 1), 0);
        assert_eq!(partition_for(b"u1", 0), 0);
    }

    #[test]
    fn len_with_is_the_finished_record_length() {
        let mut pack = Pack::default();
        pack.push(br#"{"a":1}"#);
        let predicted = pack.len_with(br#"{"b":2}"#);
        pack.push(br#"{"b":2}"#);
        assert_eq!(pack.finish().0.len(), predicted);
    }

    #[test]
    fn a_pack_is_a_json_array_of_its_events() {
        let mut pack = Pack::default();
        pack.push(br#"{"a":1}"#);
        pack.push(br#"{"b":2}"#);
        let (record, events) = pack.finish();
        assert_eq!(events, 2);
        assert_eq!(
            record,
            domain::events::record_of([br#"{"a":1}"#.as_slice(), br#"{"b":2}"#.as_slice()])
        );
    }
}
