//! The impression producer against the real broker: packs that fill up while
//! events are sent and packs still open at a flush (as at the api's shutdown)
//! all reach Kafka through the encoder thread, every event once, as LZ4
//! packs in their user's partition.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use marquee_api::serving::ServingMetrics;
use marquee_tests::events_topic::{consumer, partition_of, read_until};
use marquee_tests::worker_harness::{impression, items};
use marquee_tests::TestStack;
use repositories::kafka::encoding::RecordEncoding;
use repositories::kafka::BufferedProducer;

/// More than one full pack per partition (500 events) over the test's two
/// partitions, so some packs leave from `send` and the rest from the flush.
const EVENTS: usize = 1_400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_packed_impression_reaches_kafka_once_after_a_flush() {
    let stack = TestStack::fresh().await;
    let producer = Arc::new(
        BufferedProducer::new(
            &stack.settings.kafka(),
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

    let received = read_until(&consumer(&stack), |seen| seen.len() >= EVENTS).await;
    for event in &received {
        assert_eq!(event["_packed"], true, "a packed record is a JSON array");
        assert_eq!(event["_encoding"], "lz4", "packs are LZ4 frames");
        let user = event["user_id"].as_str().unwrap();
        assert_eq!(
            event["_partition"],
            partition_of(&stack, user),
            "{user}'s impressions share the partition of their other events"
        );
    }
    let ids: Vec<String> = received
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), EVENTS, "each event once");
    assert_eq!(unique, sent);
}
