//! `scripts/stack.sh` on a second, private stack (own folder and ports):
//! `up` twice is a no-op, `status` tells the truth, and data written before
//! `down` is still there after `up`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use sqlx::Connection;

struct PrivateStack {
    dir: PathBuf,
    base_port: u16,
}

impl PrivateStack {
    fn script(&self, verb: &str) -> (bool, String) {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let p = self.base_port;
        let output = Command::new("bash")
            .arg(format!("{root}/scripts/stack.sh"))
            .arg(verb)
            .env("MARQUEE_STACK_DIR", &self.dir)
            .env("MARQUEE_PG_PORT", p.to_string())
            .env("MARQUEE_REDIS_PORT", (p + 1).to_string())
            .env("MARQUEE_KAFKA_PORT", (p + 2).to_string())
            .env("MARQUEE_CLICKHOUSE_HTTP_PORT", (p + 3).to_string())
            .env("MARQUEE_CLICKHOUSE_TCP_PORT", (p + 4).to_string())
            .env("MARQUEE_CLICKHOUSE_INTERSERVER_PORT", (p + 5).to_string())
            .env("MARQUEE_S3_PORT", (p + 6).to_string())
            .output()
            .expect("run scripts/stack.sh");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }

    fn pids(&self) -> Vec<String> {
        [
            "redis/redis.pid",
            "clickhouse/clickhouse.pid",
            "kafka/tansu.pid",
            "s3/s3.pid",
        ]
        .iter()
        .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
        .collect()
    }
}

impl Drop for PrivateStack {
    fn drop(&mut self) {
        let _ = self.script("down");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn up_is_idempotent_and_data_survives_down_and_up() {
    let stack = PrivateStack {
        dir: std::env::temp_dir().join(format!("marquee-stack-{}", uuid::Uuid::new_v4().simple())),
        base_port: 61_000,
    };
    let p = stack.base_port;
    let (ok, out) = stack.script("up");
    assert!(ok, "first up: {out}");
    let pids = stack.pids();
    let (ok, out) = stack.script("up");
    assert!(ok, "second up: {out}");
    assert_eq!(stack.pids(), pids, "a second up must not restart anything");

    // Write to PostgreSQL, ClickHouse and Kafka.
    let pg_url = format!("postgres://marquee:marquee@127.0.0.1:{p}/marquee");
    let mut pg = sqlx::PgConnection::connect(&pg_url).await.unwrap();
    sqlx::query("CREATE TABLE kept (v TEXT)")
        .execute(&mut pg)
        .await
        .unwrap();
    sqlx::query("INSERT INTO kept VALUES ('before down')")
        .execute(&mut pg)
        .await
        .unwrap();
    drop(pg);
    let ch = clickhouse::Client::default()
        .with_url(format!("http://127.0.0.1:{}", p + 3))
        .with_validation(false);
    ch.query("CREATE TABLE kept (v String) ENGINE = MergeTree() ORDER BY v")
        .execute()
        .await
        .unwrap();
    ch.query("INSERT INTO kept VALUES ('before down')")
        .execute()
        .await
        .unwrap();
    let brokers = format!("127.0.0.1:{}", p + 2);
    let settings = repositories::kafka::KafkaSettings {
        brokers: brokers.clone(),
        events_topic: "kept".into(),
        dlq_topic: "kept.dlq".into(),
        partitions: 1,
        timeout: Duration::from_secs(10),
    };
    repositories::kafka::ensure_topics(&settings).await.unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to("kept").key("k").payload("before down"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    drop(producer);

    let (ok, out) = stack.script("down");
    assert!(ok, "down: {out}");
    let (ok, out) = stack.script("status");
    assert!(!ok, "status must fail while down: {out}");
    assert!(out.contains("down"), "{out}");
    let (ok, out) = stack.script("up");
    assert!(ok, "up after down: {out}");
    let (ok, out) = stack.script("status");
    assert!(ok, "status after up: {out}");

    let mut pg = sqlx::PgConnection::connect(&pg_url).await.unwrap();
    let (v,): (String,) = sqlx::query_as("SELECT v FROM kept")
        .fetch_one(&mut pg)
        .await
        .unwrap();
    assert_eq!(v, "before down");
    let v: String = ch.query("SELECT v FROM kept").fetch_one().await.unwrap();
    assert_eq!(v, "before down");
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "kept-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["kept"]).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("the message produced before down is still in Kafka")
        .unwrap();
    assert_eq!(message.payload(), Some("before down".as_bytes()));
}
