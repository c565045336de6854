//! Kafka: the event log between front-ends, the api and the worker.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::producer::FutureProducer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

use crate::{RepoError, RepoResult};

mod buffered;
pub mod encoding;
pub use buffered::{partition_for, BufferedProducer, DeliveryCounters, Refused};

/// How to reach the brokers and which topics Marquee uses.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub events_topic: String,
    pub dlq_topic: String,
    pub partitions: i32,
    pub timeout: Duration,
}

fn base_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("socket.timeout.ms", "10000")
        .set("broker.address.family", "v4");
    config
}

/// A producer that waits for the broker's acknowledgement (acks=all) and
/// retries transient failures itself; callers bound each send in time.
pub fn producer(settings: &KafkaSettings, linger_ms: u32) -> RepoResult<FutureProducer> {
    Ok(producer_config(settings, linger_ms, settings.timeout, 200_000).create()?)
}

/// Settings every Marquee producer shares (acks=all, no compression);
/// `delivery_timeout` is librdkafka's `message.timeout.ms`, `buffer` its
/// `queue.buffering.max.messages`.
fn producer_config(
    settings: &KafkaSettings,
    linger_ms: u32,
    delivery_timeout: Duration,
    buffer: usize,
) -> ClientConfig {
    let mut config = base_config(settings);
    config
        .set("acks", "all")
        .set("linger.ms", linger_ms.to_string())
        .set(
            "message.timeout.ms",
            delivery_timeout.as_millis().to_string(),
        )
        .set("compression.type", "none")
        // Named rather than left to the default: packed impressions compute
        // the same partition themselves (`partition_for`).
        .set("partitioner", "consistent_random")
        .set("queue.buffering.max.messages", buffer.max(1).to_string());
    config
}

/// A consumer in `group`, auto commit off: offsets move only when the caller
/// says the batch is durable.
pub fn consumer(settings: &KafkaSettings, group: &str) -> RepoResult<StreamConsumer> {
    Ok(consumer_config(settings, group).create()?)
}

fn consumer_config(settings: &KafkaSettings, group: &str) -> ClientConfig {
    let mut config = base_config(settings);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "300000")
        .set("fetch.wait.max.ms", "100");
    config
}

/// Create the events and dead-letter topics if they do not exist yet.
pub async fn ensure_topics(settings: &KafkaSettings) -> RepoResult<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(settings).create()?;
    let topics = [
        NewTopic::new(
            &settings.events_topic,
            settings.partitions,
            TopicReplication::Fixed(1),
        ),
        NewTopic::new(&settings.dlq_topic, 1, TopicReplication::Fixed(1)),
    ];
    let options = AdminOptions::new().operation_timeout(Some(settings.timeout));
    let results = admin.create_topics(&topics, &options).await?;
    for result in results {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(RepoError::Config(format!("creating topic {topic}: {code}")));
            }
        }
    }
    Ok(())
}

/// Prove a broker answers by fetching cluster metadata.
pub async fn ping(settings: &KafkaSettings) -> RepoResult<()> {
    let settings = settings.clone();
    // librdkafka's metadata call blocks; keep it off the async workers.
    tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer = base_config(&settings).create()?;
        consumer.fetch_metadata(None, settings.timeout)?;
        Ok::<_, RepoError>(())
    })
    .await
    .map_err(|e| RepoError::Config(format!("kafka ping task: {e}")))?
}

/// Ping with a reused client, cheaper than [`ping`] for frequent health checks.
/// Asks for one topic's metadata only: a broker with many topics answers that
/// fast, and a missing events topic shows up as a failure.
pub async fn ping_with(
    consumer: std::sync::Arc<rdkafka::consumer::BaseConsumer>,
    topic: String,
    timeout: Duration,
) -> RepoResult<()> {
    tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
        if let Some(error) = metadata.topics().first().and_then(|t| t.error()) {
            return Err(RepoError::Config(format!("topic {topic}: {error:?}")));
        }
        Ok::<_, RepoError>(())
    })
    .await
    .map_err(|e| RepoError::Config(format!("kafka ping task: {e}")))?
}

/// A plain metadata client for health checks.
pub fn metadata_client(settings: &KafkaSettings) -> RepoResult<rdkafka::consumer::BaseConsumer> {
    Ok(base_config(settings).create()?)
}

/// Committed offsets vs high watermarks per partition of the events topic.
pub fn consumer_lag(
    consumer: &StreamConsumer,
    topic: &str,
    timeout: Duration,
) -> RepoResult<Vec<(i32, i64)>> {
    let assignment = consumer.assignment()?;
    let committed = consumer.committed_offsets(assignment, timeout)?;
    let mut lags = Vec::new();
    for element in committed.elements_for_topic(topic) {
        let (_, high) = consumer.fetch_watermarks(topic, element.partition(), timeout)?;
        let done = element.offset().to_raw().unwrap_or(0).max(0);
        lags.push((element.partition(), (high - done).max(0)));
    }
    Ok(lags)
}

/// Offsets a pipeline has made durable, per (topic, partition): the next
/// offset to read. Shared between the consumer loop and its rebalance callback.
pub type DurableOffsets = Arc<Mutex<HashMap<(String, i32), i64>>>;

/// Consumer context of the event pipeline. The loop commits synchronously after
/// every durable batch; should a commit fail, the offsets stay here and are
/// committed before any partition is revoked, so a rebalance never hands a
/// partition over with durable work uncommitted. It also keeps partitions paused
/// across a rebalance while the loop is waiting for a store to come back.
#[derive(Default)]
pub struct PipelineContext {
    pub pending: DurableOffsets,
    pub paused: AtomicBool,
}

impl ClientContext for PipelineContext {}

impl ConsumerContext for PipelineContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            let tpl = match self.pending.lock() {
                Ok(mut pending) => {
                    let mut tpl = TopicPartitionList::new();
                    for element in revoked.elements() {
                        let key = (element.topic().to_owned(), element.partition());
                        if let Some(offset) = pending.remove(&key) {
                            let _ = tpl.add_partition_offset(&key.0, key.1, Offset::Offset(offset));
                        }
                    }
                    tpl
                }
                Err(_) => TopicPartitionList::new(),
            };
            if tpl.count() > 0 {
                match consumer.commit(&tpl, CommitMode::Sync) {
                    Ok(()) => tracing::info!(
                        partitions = tpl.count(),
                        "committed durable offsets before revoke"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not commit durable offsets before revoke; they will be redelivered and deduplicated")
                    }
                }
            }
            tracing::info!(partitions = revoked.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assigned) => {
                let partitions: Vec<i32> =
                    assigned.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?partitions, "partitions assigned");
                if self.paused.load(Ordering::SeqCst) {
                    if let Err(e) = consumer.pause(assigned) {
                        tracing::warn!(error = %e, "could not pause newly assigned partitions");
                    }
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// A consumer of the event pipeline in `group` (auto commit off), with its context.
pub fn pipeline_consumer(
    settings: &KafkaSettings,
    group: &str,
) -> RepoResult<StreamConsumer<PipelineContext>> {
    let mut config = consumer_config(settings, group);
    // Larger fetches and local queue: the pipeline reads in batches of thousands.
    config
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "8388608")
        .set("queued.min.messages", "200000");
    Ok(config.create_with_context(PipelineContext::default())?)
}

/// High watermark minus committed offset of each assigned partition of
/// `topic`. Blocking (broker round trips): call it off the async workers.
pub fn partition_lag<C: ConsumerContext>(
    consumer: &StreamConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> RepoResult<Vec<(i32, i64)>> {
    let assignment = consumer.assignment()?;
    if assignment.count() == 0 {
        return Ok(Vec::new());
    }
    let committed = consumer.committed_offsets(assignment, timeout)?;
    let mut lags = Vec::new();
    for element in committed.elements_for_topic(topic) {
        let (low, high) = consumer.fetch_watermarks(topic, element.partition(), timeout)?;
        let done = element.offset().to_raw().filter(|o| *o >= 0).unwrap_or(low);
        lags.push((element.partition(), (high - done).max(0)));
    }
    Ok(lags)
}

/// (partition, committed offset of the consumer's group, high watermark) for
/// every partition of `topic`, assigned to this consumer or not. Blocking.
pub fn group_offsets<C: ConsumerContext>(
    consumer: &StreamConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> RepoResult<Vec<(i32, i64, i64)>> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            tpl.add_partition(topic, p.id());
        }
    }
    if tpl.count() == 0 {
        return Ok(Vec::new());
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut out = Vec::new();
    for element in committed.elements_for_topic(topic) {
        let (low, high) = consumer.fetch_watermarks(topic, element.partition(), timeout)?;
        let done = element.offset().to_raw().filter(|o| *o >= 0).unwrap_or(low);
        out.push((element.partition(), done, high));
    }
    Ok(out)
}

/// Produces validated events to the events topic, keyed by user id so that a
/// user's impressions and clicks share a partition and stay in order.
#[derive(Clone)]
pub struct EventProducer {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl EventProducer {
    pub fn new(settings: &KafkaSettings, linger_ms: u32) -> RepoResult<Self> {
        Ok(Self {
            producer: producer(settings, linger_ms)?,
            topic: settings.events_topic.clone(),
            timeout: settings.timeout,
        })
    }

    /// Produce every event concurrently and wait for the broker's acknowledgement
    /// of each; one result per event, in order. An error means that event is
    /// not durable and the caller must not report it as accepted.
    pub async fn send_all(&self, events: &[domain::events::Event]) -> Vec<RepoResult<()>> {
        let sends = events.iter().map(|event| {
            let payload = event.to_json();
            let key = event.user_id.as_str().to_owned();
            async move {
                let record = rdkafka::producer::FutureRecord::to(&self.topic)
                    .key(&key)
                    .payload(&payload);
                match tokio::time::timeout(
                    self.timeout + Duration::from_secs(1),
                    self.producer.send(record, self.timeout),
                )
                .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(RepoError::Kafka(e)),
                    Err(_) => Err(RepoError::Timeout {
                        what: "kafka produce",
                        millis: self.timeout.as_millis(),
                    }),
                }
            }
        });
        futures::future::join_all(sends).await
    }
}
