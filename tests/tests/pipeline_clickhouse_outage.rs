//! ClickHouse unreachable for 20 s during a stream (the worker reaches it
//! through a TCP proxy the test stops): the worker backs off with its
//! partitions paused, commits nothing that is not written, and finishes with
//! every event exactly once when ClickHouse is back. Redis down for 30 s
//! slows nothing that matters: the ledger alone deduplicates. The broker
//! down for 20 s mid-stream: the worker resumes where its commits left off.

use std::time::{Duration, Instant};

use marquee_tests::private_redis::{free_port, PrivateRedis};
use marquee_tests::worker_harness::{
    clickhouse_counts, clickhouse_raw_rows, group_committed, mixed_events, produce_events,
    producer, spawn_worker, wait_for_events, wait_for_zero_lag, TcpProxy,
};
use marquee_tests::TestStack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_outage_pauses_and_commits_nothing_unwritten() {
    let stack = TestStack::fresh().await;
    let target = stack
        .settings
        .clickhouse_url
        .trim_start_matches("http://")
        .parse()
        .expect("clickhouse url is http://ip:port");
    let proxy = TcpProxy::start(target).await;
    let group = format!("outage-{}", stack.id);
    let worker = spawn_worker(&stack, |c| {
        c.group_id = group.clone();
        c.stack.clickhouse_url = proxy.url();
        c.stack.store_timeout_ms = 2_000;
        c.batch_size = 2_000;
    })
    .await;
    let topic = stack.settings.events_topic.clone();
    let producer = producer(&stack);
    let events = mixed_events(30_000, 5_000, 0);
    let produced = events.len() as u64;

    produce_events(&producer, &topic, &events[..10_000]).await;
    assert_eq!(
        wait_for_events(&stack, 10_000, Duration::from_secs(60))
            .await
            .1,
        10_000
    );

    proxy.stop();
    let outage = Instant::now();
    let stream = {
        let producer = producer.clone();
        let topic = topic.clone();
        let rest = events[10_000..].to_vec();
        tokio::spawn(async move {
            for chunk in rest.chunks(1_000) {
                produce_events(&producer, &topic, chunk).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    // While it is down: whatever is committed is in ClickHouse (checked
    // through the real address). Committed offsets are read first, so the
    // count can only have grown since.
    let mut checks = 0;
    while outage.elapsed() < Duration::from_secs(20) {
        let committed = group_committed(&stack, &group);
        let (_, unique) = clickhouse_counts(&stack).await;
        assert!(
            committed <= unique as i64,
            "committed past unwritten events: committed {committed}, in ClickHouse {unique}"
        );
        assert_eq!(
            unique, 10_000,
            "nothing reaches ClickHouse while it is down"
        );
        checks += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(checks > 10);
    proxy.resume();
    stream.await.unwrap();

    let (rows, unique) = wait_for_events(&stack, produced, Duration::from_secs(120)).await;
    assert_eq!((rows, unique), (produced, produced));
    assert_eq!(
        clickhouse_raw_rows(&stack).await,
        produced,
        "no row written twice"
    );
    let lag = wait_for_zero_lag(&stack, &group, Duration::from_secs(10)).await;
    assert_eq!(lag, 0);
    let metrics = reqwest::get(worker.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let retries: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("marquee_worker_store_retries_total{store=\"clickhouse\"}"))
        .filter_map(|l| l.rsplit(" ").next()?.parse::<f64>().ok())
        .sum();
    assert!(
        retries >= 3.0,
        "backed off and retried: {retries}\n{metrics}"
    );
    worker.stop().await;
}

/// Redis (the dedup cache and the shared served lists) down for 30 s in the
/// middle of a steady stream of 20,000 events: the worker goes on with the
/// PostgreSQL ledger alone, never stalls for more than 5 s, and every event
/// lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_for_30_s_ingestion_goes_on_and_counts_each_event_once() {
    const EVENTS: usize = 20_000;
    let stack = TestStack::fresh().await;
    let port = free_port();
    let mut redis = PrivateRedis::start(
        port,
        std::env::temp_dir().join(format!("marquee-redis-{}", stack.id)),
    );
    let group = format!("redis-outage-{}", stack.id);
    let worker = spawn_worker(&stack, |c| {
        c.group_id = group.clone();
        c.stack.redis_url = format!("redis://127.0.0.1:{port}");
        c.stack.store_timeout_ms = 1_000;
        c.batch_size = 1_000;
    })
    .await;
    let topic = stack.settings.events_topic.clone();
    let producer = producer(&stack);
    let events = mixed_events(EVENTS, 2_000, 0);

    // 500 events a second for 40 s: before, during and after the outage.
    let stream = {
        let events = events.clone();
        tokio::spawn(async move {
            for chunk in events.chunks(500) {
                produce_events(&producer, &topic, chunk).await;
                tokio::time::sleep(Duration::from_millis(1_000)).await;
            }
        })
    };
    let started = Instant::now();
    let mut longest_stall = Duration::ZERO;
    let mut last = (0u64, Instant::now());
    let mut outage: Option<Instant> = None;
    let mut restored = false;
    loop {
        let (rows, _) = clickhouse_counts(&stack).await;
        if rows > last.0 {
            last = (rows, Instant::now());
        } else if !stream.is_finished() || rows < EVENTS as u64 {
            longest_stall = longest_stall.max(last.1.elapsed());
        }
        match outage {
            None if started.elapsed() >= Duration::from_secs(5) => {
                redis.stop();
                outage = Some(Instant::now());
            }
            Some(at) if !restored && at.elapsed() >= Duration::from_secs(30) => {
                redis.restart();
                restored = true;
            }
            _ => {}
        }
        if rows >= EVENTS as u64 && restored || started.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stream.await.unwrap();
    let (rows, unique) = wait_for_events(&stack, EVENTS as u64, Duration::from_secs(30)).await;
    println!("redis down 30 s: {rows} rows, {unique} unique of {EVENTS}; longest stall {longest_stall:?}");
    assert_eq!(
        (rows, unique),
        (EVENTS as u64, EVENTS as u64),
        "every event exactly once"
    );
    assert_eq!(
        clickhouse_raw_rows(&stack).await,
        EVENTS as u64,
        "no event written twice"
    );
    assert!(
        longest_stall <= Duration::from_secs(5),
        "ingestion stalled for {longest_stall:?} while Redis was down"
    );
    assert!(
        worker
            .metric_total("marquee_worker_dedup_cache_errors_total")
            .await
            > 0.0,
        "the outage was seen"
    );
    assert_eq!(
        wait_for_zero_lag(&stack, &group, Duration::from_secs(10)).await,
        0
    );
    worker.stop().await;
}

/// A Tansu broker of this test's own (the shared one serves every other
/// test): stopped and started with `scripts/stack.sh kafka-down|kafka-up`,
/// its store kept across the restart, as a real broker's log is.
struct OwnBroker {
    dir: std::path::PathBuf,
    port: u16,
}

impl OwnBroker {
    fn start() -> Self {
        let broker = Self {
            dir: std::env::temp_dir()
                .join(format!("marquee-broker-{}", uuid::Uuid::new_v4().simple())),
            port: free_port(),
        };
        broker.run("kafka-up");
        broker
    }

    fn run(&self, command: &str) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/stack.sh");
        let status = std::process::Command::new(script)
            .arg(command)
            .env("MARQUEE_STACK_DIR", &self.dir)
            .env("MARQUEE_KAFKA_PORT", self.port.to_string())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run scripts/stack.sh");
        assert!(status.success(), "scripts/stack.sh {command} failed");
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.run("kafka-down");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_for_20_s_mid_stream_loses_nothing_and_counts_nothing_twice() {
    let broker = OwnBroker::start();
    let stack = TestStack::fresh_with(|s| s.kafka_brokers = broker.address()).await;
    // Small batches, so the outage finds the worker with work in hand: what
    // it fetched before goes on being stored while its commits fail.
    let worker = spawn_worker(&stack, |c| c.batch_size = 300).await;
    let topic = stack.settings.events_topic.clone();
    let producer = producer(&stack);
    let total = 20_000u64;
    let events = mixed_events(total as usize, 4_000, 0);
    produce_events(&producer, &topic, &events[..12_000]).await;
    let started = Instant::now();
    while clickhouse_counts(&stack).await.1 < 1_000 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no progress before the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Down while about half of what was produced is still to be consumed.
    broker.run("kafka-down");
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let during = clickhouse_counts(&stack).await.1;
    broker.run("kafka-up");
    println!(
        "broker down {:.1} s; {during} of 12000 events in ClickHouse when it came back",
        down_at.elapsed().as_secs_f64()
    );
    produce_events(&producer, &topic, &events[12_000..]).await;

    let (rows, unique) = wait_for_events(&stack, total, Duration::from_secs(120)).await;
    assert_eq!(unique, total, "none missing");
    assert_eq!(rows, total, "none twice after FINAL");
    assert_eq!(
        clickhouse_raw_rows(&stack).await,
        total,
        "none twice even before merges"
    );
    worker.stop().await;
}
