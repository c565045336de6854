//! The impression producer against the real broker: packs that fill up while
//! events are sent and packs still open at a flush (as at the api's shutdown)
//! all reach Kafka through the encoder thread, every event once, as LZ4
//! packs in their user's partition.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use marquee_api::serving::ServingMetrics;
use marquee_tests::worker_harness::{impression, items};
use marquee_tests::TestStack;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use repositories::kafka::encoding::{self, RecordEncoding};
use repositories::kafka::{partition_for, BufferedProducer};
use serde_json::Value;
use uuid::Uuid;

/// More than one full pack per partition (500 events) over the test's two
/// partitions, so some packs leave from `send` and the rest from the flush.
const EVENTS: usize = 1_400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_packed_impression_reaches_kafka_once_after_a_flush() {
    let stack = TestStack::fresh().await;
    let settings = stack.settings.kafka();
    let producer = Arc::new(
        BufferedProducer::new(
            &settings,
            true,
            RecordEncoding::Lz4,
            10_000,
            ServingMetrics::impression_deliveries(),
        )
        .unwrap(),
    );
    let refreshing = producer.clone();
    let partitions =
        tokio::task::spawn_blocking(move || refreshing.refresh_partitions(Duration::from_secs(10)))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(partitions, 2);

    let mut sent = HashSet::new();
    for i in 0..EVENTS {
        let event = impression(
            &format!("user-{}", i % 40),
            "home",
            "control",
            "popularity",
            items(1, 10),
        );
        sent.insert(event.id.to_string());
        producer.send(&event).unwrap();
    }
    let flushing = producer.clone();
    tokio::task::spawn_blocking(move || flushing.flush(Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(producer.pending(), 0, "every event delivered by the flush");

    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", format!("packs-test-{}", Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("broker.address.family", "v4")
        .create()
        .unwrap();
    consumer.subscribe(&[&settings.events_topic]).unwrap();
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while received.len() < EVENTS && tokio::time::Instant::now() < deadline {
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await
        else {
            continue;
        };
        let content_encoding = encoding::content_encoding(message.headers());
        assert_eq!(
            content_encoding,
            Some(b"lz4".as_slice()),
            "packs are LZ4 frames"
        );
        let plain = encoding::decode(content_encoding, message.payload().unwrap()).unwrap();
        let Value::Array(events) = serde_json::from_slice(&plain).unwrap() else {
            panic!("a packed record is a JSON array");
        };
        for event in events {
            let user = event["user_id"].as_str().unwrap();
            assert_eq!(
                i64::from(partition_for(user.as_bytes(), partitions)),
                i64::from(message.partition()),
                "{user}'s impressions share the partition of their other events"
            );
            received.push(event["event_id"].as_str().unwrap().to_owned());
        }
    }
    let unique: HashSet<String> = received.iter().cloned().collect();
    assert_eq!(received.len(), EVENTS, "each event once");
    assert_eq!(unique, sent);
}
