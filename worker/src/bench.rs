//! Ingestion benchmark helpers: a fast producer of valid synthetic events and
//! a plain consumer that only reads, the baseline the pipeline is compared to.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use domain::events::{Event, EventKind, ImpressionDetails, ServedItem};
use domain::ids::{AlgorithmKey, ArmKey, EventId, ExperimentKey, MovieId, RequestId, UserId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::client::ClientContext;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::Message;
use repositories::kafka::KafkaSettings;

/// A stream of valid events over `users` users and 1,000 movies: per user an
/// impression of a served list, then clicks, views and likes on it.
pub struct EventMix {
    rng: StdRng,
    users: u64,
    experiment: ExperimentKey,
    arms: [ArmKey; 2],
    algorithm: AlgorithmKey,
}

impl EventMix {
    pub fn new(seed: u64, users: u64) -> anyhow::Result<Self> {
        Ok(Self {
            rng: StdRng::seed_from_u64(seed),
            users: users.max(1),
            experiment: ExperimentKey::parse("bench")?,
            arms: [ArmKey::parse("a")?, ArmKey::parse("b")?],
            algorithm: AlgorithmKey::parse("popularity")?,
        })
    }

    /// The next event (about 1 in 5 an impression, the rest clicks, views and likes).
    pub fn next_event(&mut self) -> anyhow::Result<Event> {
        let user = UserId::parse(format!("u{}", self.rng.random_range(0..self.users)))?;
        let movie = MovieId::parse(self.rng.random_range(1..=1000))?;
        let roll: f64 = self.rng.random();
        let (kind, impression, request_id) = if roll < 0.2 {
            let items = (0..10)
                .map(|p| {
                    Ok(ServedItem {
                        movie_id: MovieId::parse(self.rng.random_range(1..=1000))?,
                        position: p,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let arm = self.arms[usize::from(self.rng.random_bool(0.5))].clone();
            (
                EventKind::Impression,
                Some(ImpressionDetails {
                    experiment: self.experiment.clone(),
                    arm,
                    algorithm: self.algorithm.clone(),
                    model_version: Some("bench".into()),
                    items,
                }),
                Some(RequestId::new_random()),
            )
        } else if roll < 0.6 {
            (EventKind::Click, None, None)
        } else if roll < 0.9 {
            (EventKind::View, None, None)
        } else {
            (EventKind::Like, None, None)
        };
        Ok(Event {
            id: EventId::new_random(),
            kind,
            user_id: user,
            movie_id: if kind == EventKind::Impression {
                None
            } else {
                Some(movie)
            },
            request_id,
            ts: Utc::now(),
            value: (kind == EventKind::View).then_some(42.0),
            impression,
        })
    }
}

/// Counts failed deliveries, so a benchmark never reports events that were lost.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Produce `count` synthetic events keyed by user; returns the seconds taken.
pub fn produce(settings: &KafkaSettings, count: u64, seed: u64) -> anyhow::Result<f64> {
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("broker.address.family", "v4")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("acks", "all")
        .create_with_context(Deliveries::default())
        .context("creating the bench producer")?;
    let mut mix = EventMix::new(seed, 100_000)?;
    let started = Instant::now();
    for _ in 0..count {
        let event = mix.next_event()?;
        let payload = event.to_json();
        let key = event.user_id.to_string();
        let mut record = BaseRecord::to(&settings.events_topic)
            .key(&key)
            .payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e).context("producing a bench event"),
            }
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .context("flushing the bench producer")?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        anyhow::bail!("{failed} of {count} bench events were not delivered");
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Read `count` messages of the events topic from the start in a fresh group,
/// doing nothing with them; returns (messages, seconds from first to last).
pub fn consume_raw(settings: &KafkaSettings, count: u64) -> anyhow::Result<(u64, f64)> {
    let group = format!("bench-raw-{}", uuid::Uuid::new_v4().simple());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("broker.address.family", "v4")
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "8388608")
        .set("queued.min.messages", "200000")
        .create()
        .context("creating the bench consumer")?;
    consumer.subscribe(&[settings.events_topic.as_str()])?;
    let mut seen = 0u64;
    let mut bytes = 0usize;
    let mut first: Option<Instant> = None;
    let mut last_message = Instant::now();
    while seen < count {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                bytes += m.payload().map_or(0, <[u8]>::len);
                seen += 1;
                last_message = Instant::now();
            }
            Some(Err(e)) => tracing::warn!(error = %e, "bench consumer error"),
            None if last_message.elapsed() > Duration::from_secs(30) => break,
            None => {}
        }
    }
    let seconds = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    tracing::debug!(bytes, "raw read done");
    Ok((seen, seconds))
}
