//! Harness of the pipeline tests: the worker in-process or as a real child
//! process, event producers (rdkafka and Python `confluent-kafka`), ClickHouse
//! counters and a TCP proxy that can cut a store off.
//!
//! The child process is this same test executable re-run on one `#[ignore]`d
//! test whose body is [`worker_child_main`]: it runs the worker library from
//! `MARQUEE_*` variables, as the `worker run` binary does, in its own OS
//! process that the test can SIGKILL. No nested cargo build is needed, so it
//! works the same under `cargo test --workspace` and for a single test file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::events::{Event, EventKind, ImpressionDetails, ServedItem};
use domain::ids::{AlgorithmKey, ArmKey, EventId, ExperimentKey, MovieId, RequestId, UserId};
use marquee_worker::config::WorkerConfig;
use marquee_worker::startup::Worker;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use repositories::kafka::encoding::CONTENT_ENCODING_HEADER;
use repositories::settings::StackArgs;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::TestStack;

/// Worker settings for `stack`: fast batches, quick retries, random metrics port.
pub fn worker_config(stack: &TestStack) -> WorkerConfig {
    let mut config = WorkerConfig::from_env().expect("worker config defaults parse");
    config.stack = stack.settings.clone();
    // A consumer group of its own, as the topic is: tests sharing the default
    // group across their topics left it, in Tansu, with members that never
    // got this test's partitions (seen: a worker that joined and then read
    // nothing for 60 s, every rerun, until the broker was restarted).
    config.group_id = format!("marquee-worker-{}", stack.id);
    config.metrics_host = "127.0.0.1".into();
    config.metrics_port = 0;
    config.migrate_on_start = false;
    config.batch_size = 5_000;
    config.batch_max_wait_ms = 100;
    config.retry_initial_ms = 100;
    config.retry_max_ms = 2_000;
    config.startup_timeout_s = 10;
    config.lag_interval_s = 1;
    config
}

/// A worker running in this process.
pub struct TestWorker {
    pub metrics_port: u16,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestWorker {
    /// `path` (`/metrics`, `/health/live`) on the worker's metrics listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.metrics_port)
    }

    /// The sum of every series of the worker's metric `name`.
    pub async fn metric_total(&self, name: &str) -> f64 {
        crate::metric_total(&self.url("/metrics"), name).await
    }

    /// Stop gracefully and wait for the worker to finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("worker task")
                .expect("worker stopped cleanly");
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Start a worker against `stack`, letting the test adjust its config first.
pub async fn spawn_worker(stack: &TestStack, adjust: impl FnOnce(&mut WorkerConfig)) -> TestWorker {
    let mut config = worker_config(stack);
    adjust(&mut config);
    let worker = Worker::build(config).await.expect("build worker");
    let metrics_port = worker.metrics_port();
    let shutdown = worker.shutdown_token();
    let handle = tokio::spawn(worker.run_until_stopped());
    TestWorker {
        metrics_port,
        shutdown,
        handle: Some(handle),
    }
}

/// The `MARQUEE_*` variables that point a child process at `settings`.
pub fn stack_env(settings: &StackArgs) -> Vec<(&'static str, String)> {
    vec![
        ("MARQUEE_DATABASE_URL", settings.database_url.clone()),
        (
            "MARQUEE_DATABASE_MAX_CONNECTIONS",
            settings.database_max_connections.to_string(),
        ),
        ("MARQUEE_REDIS_URL", settings.redis_url.clone()),
        ("MARQUEE_REDIS_NAMESPACE", settings.redis_namespace.clone()),
        ("MARQUEE_KAFKA_BROKERS", settings.kafka_brokers.clone()),
        ("MARQUEE_EVENTS_TOPIC", settings.events_topic.clone()),
        ("MARQUEE_DLQ_TOPIC", settings.dlq_topic.clone()),
        (
            "MARQUEE_EVENTS_PARTITIONS",
            settings.events_partitions.to_string(),
        ),
        ("MARQUEE_CLICKHOUSE_URL", settings.clickhouse_url.clone()),
        (
            "MARQUEE_CLICKHOUSE_DATABASE",
            settings.clickhouse_database.clone(),
        ),
        ("MARQUEE_CLICKHOUSE_USER", settings.clickhouse_user.clone()),
        (
            "MARQUEE_CLICKHOUSE_PASSWORD",
            settings.clickhouse_password.clone(),
        ),
        ("MARQUEE_S3_ENDPOINT", settings.s3_endpoint.clone()),
        ("MARQUEE_S3_REGION", settings.s3_region.clone()),
        ("MARQUEE_S3_ACCESS_KEY", settings.s3_access_key.clone()),
        ("MARQUEE_S3_SECRET_KEY", settings.s3_secret_key.clone()),
        ("MARQUEE_S3_BUCKET", settings.s3_bucket.clone()),
        (
            "MARQUEE_STORE_TIMEOUT_MS",
            settings.store_timeout_ms.to_string(),
        ),
    ]
}

/// Set in the environment of a worker child process (see [`WorkerProcess`]).
pub const CHILD_ENV: &str = "MARQUEE_TEST_WORKER_CHILD";

/// Body of the `#[ignore]`d test a [`WorkerProcess`] runs: when [`CHILD_ENV`]
/// is set, run the worker from `MARQUEE_*` variables until killed, exactly as
/// `worker run` does; otherwise (a plain `cargo test -- --ignored`) return.
pub fn worker_child_main() {
    if std::env::var(CHILD_ENV).is_err() {
        return;
    }
    repositories::runtime::init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let config = WorkerConfig::from_env().expect("worker config from MARQUEE_* variables");
        let worker = Worker::build(config).await.expect("worker starts");
        worker.run_until_stopped().await.expect("worker runs");
    });
}

/// The worker as a real child process (for SIGKILL).
pub struct WorkerProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl WorkerProcess {
    /// Start a worker process against `settings` with extra `MARQUEE_WORKER_*`
    /// variables; `child_test` names the test that calls [`worker_child_main`].
    pub fn start(
        child_test: &str,
        settings: &StackArgs,
        extra: &[(&str, String)],
        log: PathBuf,
    ) -> Self {
        let file = std::fs::File::create(&log).expect("worker log file");
        let exe = std::env::current_exe().expect("test executable path");
        let mut command = Command::new(exe);
        command
            .args([
                child_test,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .env("MARQUEE_WORKER_METRICS_PORT", "0")
            .env("MARQUEE_WORKER_METRICS_HOST", "127.0.0.1")
            .env("MARQUEE_WORKER_MIGRATE_ON_START", "false")
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().expect("worker log file"))
            .stderr(file);
        for (k, v) in stack_env(settings) {
            command.env(k, v);
        }
        for (k, v) in extra {
            command.env(k, v);
        }
        Self {
            child: command.spawn().expect("spawn worker"),
            log,
        }
    }

    /// SIGKILL: no chance to finish, commit or leave the group.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A producer for tests (acks=all, small linger).
pub fn producer(stack: &TestStack) -> FutureProducer {
    repositories::kafka::producer(&stack.settings.kafka(), 5).expect("producer")
}

/// Produce events keyed by user, waiting for every acknowledgement.
pub async fn produce_events(producer: &FutureProducer, topic: &str, events: &[Event]) {
    for chunk in events.chunks(5_000) {
        let payloads: Vec<(String, Vec<u8>)> = chunk
            .iter()
            .map(|e| (e.user_id.to_string(), e.to_json()))
            .collect();
        produce_raw(producer, topic, &payloads).await;
    }
}

/// Produce (key, payload) pairs as they are, waiting for every acknowledgement.
pub async fn produce_raw(producer: &FutureProducer, topic: &str, messages: &[(String, Vec<u8>)]) {
    let records = messages
        .iter()
        .map(|(key, payload)| FutureRecord::to(topic).key(key).payload(payload));
    send_all(producer, records).await;
}

/// Produce (key, payload, content-encoding header) triples as they are,
/// waiting for every acknowledgement; `None` sends no header. Any header
/// value goes, so tests can send encodings Marquee does not read.
pub async fn produce_with_encoding(
    producer: &FutureProducer,
    topic: &str,
    messages: &[(String, Vec<u8>, Option<&str>)],
) {
    let records = messages.iter().map(|(key, payload, encoding)| {
        let record = FutureRecord::to(topic).key(key).payload(payload);
        match encoding {
            Some(value) => record.headers(OwnedHeaders::new().insert(Header {
                key: CONTENT_ENCODING_HEADER,
                value: Some(*value),
            })),
            None => record,
        }
    });
    send_all(producer, records).await;
}

async fn send_all<'a>(
    producer: &FutureProducer,
    records: impl Iterator<Item = FutureRecord<'a, String, Vec<u8>>>,
) {
    let sends = records.map(|record| producer.send(record, Duration::from_secs(30)));
    for result in futures::future::join_all(sends).await {
        result.map_err(|(e, _)| e).expect("produce");
    }
}

/// The Python interpreter with `confluent-kafka`, if there is one: the stack's
/// venv (`MARQUEE_PYTHON`, set by `scripts/stack.sh env`), else `python3`.
pub fn python_with_confluent_kafka() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(p) = std::env::var("MARQUEE_PYTHON") {
        candidates.push(p.into());
    }
    if let Ok(home) = std::env::var("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/marquee/tools/venv/bin/python"));
    }
    candidates.push("python3".into());
    candidates.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import confluent_kafka"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Produce `events` with Python `confluent-kafka` (an external client, as a
/// front-end producing directly would be), keyed by user.
pub fn produce_with_python(python: &PathBuf, brokers: &str, topic: &str, events: &[Event]) {
    let dir = std::env::temp_dir().join(format!("marquee-py-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("events.jsonl");
    let lines: Vec<String> = events
        .iter()
        .map(|e| String::from_utf8(e.to_json()).unwrap())
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let script = r#"
import json, sys
from confluent_kafka import Producer
brokers, topic, path = sys.argv[1:4]
p = Producer({"bootstrap.servers": brokers, "acks": "all", "linger.ms": 5, "broker.address.family": "v4"})
failed = []
def done(err, msg):
    if err is not None:
        failed.append(str(err))
n = 0
with open(path) as f:
    for line in f:
        line = line.strip()
        if not line:
            continue
        key = json.loads(line)["user_id"]
        while True:
            try:
                p.produce(topic, value=line.encode(), key=key.encode(), on_delivery=done)
                break
            except BufferError:
                p.poll(0.05)
        n += 1
        p.poll(0)
left = p.flush(60)
if failed or left:
    sys.exit(f"python producer: {len(failed)} failed, {left} undelivered: {failed[:3]}")
print(f"python producer: {n} delivered")
"#;
    let output = Command::new(python)
        .args(["-c", script, brokers, topic])
        .arg(&input)
        .output()
        .expect("run the python producer");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "python producer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{}", String::from_utf8_lossy(&output.stdout).trim());
}

/// A served list of `n` movies starting at `first`.
pub fn items(first: i64, n: u16) -> Vec<ServedItem> {
    (0..n)
        .map(|p| ServedItem {
            movie_id: MovieId::parse(first + i64::from(p)).unwrap(),
            position: p,
        })
        .collect()
}

/// An impression of `items` served by `arm` of `experiment` to `user`.
pub fn impression(
    user: &str,
    experiment: &str,
    arm: &str,
    algorithm: &str,
    items: Vec<ServedItem>,
) -> Event {
    Event {
        id: EventId::new_random(),
        kind: EventKind::Impression,
        user_id: UserId::parse(user).unwrap(),
        movie_id: None,
        request_id: Some(RequestId::new_random()),
        ts: Utc::now(),
        value: None,
        impression: Some(ImpressionDetails {
            experiment: ExperimentKey::parse(experiment).unwrap(),
            arm: ArmKey::parse(arm).unwrap(),
            algorithm: AlgorithmKey::parse(algorithm).unwrap(),
            model_version: Some("v1".into()),
            items,
        }),
    }
}

/// A click, view, like or conversion of `user` on `movie`, optionally for a served list.
pub fn action(
    kind: EventKind,
    user: &str,
    movie: Option<i64>,
    request: Option<RequestId>,
) -> Event {
    Event {
        id: EventId::new_random(),
        kind,
        user_id: UserId::parse(user).unwrap(),
        movie_id: movie.map(|m| MovieId::parse(m).unwrap()),
        request_id: request,
        ts: Utc::now(),
        value: (kind == EventKind::View).then_some(30.0),
        impression: None,
    }
}

/// `n` unattributed events over `users` users, a mix of clicks, views, likes
/// and conversions, numbered from `seed` so different calls never collide.
pub fn mixed_events(n: usize, users: usize, seed: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let k = seed + i;
            let kind = match k % 10 {
                0..=3 => EventKind::Click,
                4..=6 => EventKind::View,
                7..=8 => EventKind::Like,
                _ => EventKind::Conversion,
            };
            let movie = (kind != EventKind::Conversion).then_some((k % 500) as i64 + 1);
            action(kind, &format!("user-{}", k % users.max(1)), movie, None)
        })
        .collect()
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct Counts {
    rows: u64,
    unique: u64,
}

/// (rows, unique event ids) in `events` after FINAL.
pub async fn clickhouse_counts(stack: &TestStack) -> (u64, u64) {
    let counts: Counts = stack
        .stores
        .analytics
        .client()
        .query("SELECT count() AS rows, uniqExact(event_id) AS unique FROM events FINAL")
        .fetch_one()
        .await
        .expect("count events");
    (counts.rows, counts.unique)
}

/// Rows in `events` without FINAL: what the materialized views have counted.
pub async fn clickhouse_raw_rows(stack: &TestStack) -> u64 {
    stack
        .stores
        .analytics
        .client()
        .query("SELECT count() FROM events")
        .fetch_one::<u64>()
        .await
        .expect("count raw events")
}

/// Rows of a PostgreSQL table.
pub async fn pg_count(stack: &TestStack, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&stack.pg)
        .await
        .expect("count rows")
}

/// Wait until ClickHouse holds `expected` unique events (or `timeout` passes); returns the last counts.
pub async fn wait_for_events(stack: &TestStack, expected: u64, timeout: Duration) -> (u64, u64) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let counts = clickhouse_counts(stack).await;
        if counts.1 >= expected || tokio::time::Instant::now() >= deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Committed offsets of `group` on the events topic, summed over partitions
/// (the number of messages the group has declared done).
pub fn group_committed(stack: &TestStack, group: &str) -> i64 {
    group_offsets(stack, group).iter().map(|(c, _)| *c).sum()
}

/// Poll [`group_lag`] until it is 0 or `timeout` passes; returns the last lag seen.
pub async fn wait_for_zero_lag(stack: &TestStack, group: &str, timeout: Duration) -> i64 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let lag = group_lag(stack, group);
        if lag == 0 || tokio::time::Instant::now() >= deadline {
            return lag;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Dead letters on the stack's DLQ topic as (Kafka key, JSON body), read
/// from the start until `want` have arrived or `timeout` passes.
pub async fn read_dead_letters(
    stack: &TestStack,
    want: usize,
    timeout: Duration,
) -> Vec<(Option<Vec<u8>>, serde_json::Value)> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message;
    let dlq: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.settings.kafka_brokers)
        .set("group.id", format!("dlq-reader-{}", stack.id))
        .set("auto.offset.reset", "earliest")
        .set("broker.address.family", "v4")
        .create()
        .unwrap();
    dlq.subscribe(&[stack.settings.dlq_topic.as_str()]).unwrap();
    let mut letters = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while letters.len() < want && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), dlq.recv()).await {
            let body = serde_json::from_slice(m.payload().unwrap()).unwrap();
            letters.push((m.key().map(<[u8]>::to_vec), body));
        }
    }
    letters
}

/// High watermark minus committed offset summed over the partitions of the
/// events topic for `group` (0 when everything is committed).
pub fn group_lag(stack: &TestStack, group: &str) -> i64 {
    group_offsets(stack, group).iter().map(|(c, h)| h - c).sum()
}

/// (committed, high watermark) per partition of the events topic for `group`.
fn group_offsets(stack: &TestStack, group: &str) -> Vec<(i64, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::TopicPartitionList;
    let settings = stack.settings.kafka();
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", group)
        .set("broker.address.family", "v4")
        .create()
        .expect("offsets consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..settings.partitions {
        tpl.add_partition(&settings.events_topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .map(|e| {
            let (_, high) = consumer
                .fetch_watermarks(
                    &settings.events_topic,
                    e.partition(),
                    Duration::from_secs(10),
                )
                .expect("watermarks");
            (e.offset().to_raw().filter(|o| *o >= 0).unwrap_or(0), high)
        })
        .collect()
}

/// A TCP proxy this test controls: `stop` refuses new connections and cuts
/// open ones (the store looks down), `start` serves again on the same port.
pub struct TcpProxy {
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
    _task: Arc<JoinHandle<()>>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let (up, rx) = watch::channel(true);
        let task = tokio::spawn(Self::serve(addr, target, rx));
        // Wait until it listens.
        for _ in 0..100 {
            if TcpStream::connect(addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            addr,
            up,
            _task: Arc::new(task),
        }
    }

    async fn serve(addr: SocketAddr, target: SocketAddr, mut up: watch::Receiver<bool>) {
        loop {
            // Listen only while up: a stopped proxy refuses connections outright.
            let listener = loop {
                match TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            loop {
                tokio::select! {
                    changed = up.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        if !*up.borrow() {
                            break;
                        }
                    }
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        let mut down = up.clone();
                        tokio::spawn(async move {
                            let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                _ = async { while down.changed().await.is_ok() { if !*down.borrow() { break; } } } => {}
                            }
                        });
                    }
                }
            }
            drop(listener);
            while !*up.borrow() {
                if up.changed().await.is_err() {
                    return;
                }
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stop(&self) {
        let _ = self.up.send(false);
    }

    pub fn resume(&self) {
        let _ = self.up.send(true);
    }
}
