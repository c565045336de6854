//! Malformed messages interleaved with good ones: the bad ones land in the DLQ
//! with their reason and origin, every good one is processed, and the
//! partition keeps moving.

use std::collections::HashMap;
use std::time::Duration;

use marquee_tests::worker_harness::{
    mixed_events, produce_raw, producer, read_dead_letters, spawn_worker, wait_for_events,
    wait_for_zero_lag,
};
use marquee_tests::TestStack;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_go_to_the_dlq_and_the_partition_keeps_moving() {
    let stack = TestStack::fresh().await;
    let group = format!("dlq-{}", stack.id);
    let worker = spawn_worker(&stack, |c| {
        c.group_id = group.clone();
        c.batch_size = 100;
    })
    .await;
    let topic = stack.settings.events_topic.clone();
    let producer = producer(&stack);

    let future_ts = (chrono::Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("body", b"{not json".to_vec()),
        ("body", vec![0xff, 0xfe, 0x00, 0x01]),
        ("type", br#"{"event_id":"6f1c2a8e-8c1d-4a51-9d4e-8f5b5f1e0c11","type":"purchase","user_id":"u1","movie_id":3}"#.to_vec()),
        ("event_id", br#"{"type":"click","user_id":"u1","movie_id":3}"#.to_vec()),
        ("user_id", br#"{"event_id":"6f1c2a8e-8c1d-4a51-9d4e-8f5b5f1e0c12","type":"click","movie_id":3}"#.to_vec()),
        ("movie_id", br#"{"event_id":"6f1c2a8e-8c1d-4a51-9d4e-8f5b5f1e0c13","type":"view","user_id":"u1"}"#.to_vec()),
        ("ts", format!(r#"{{"event_id":"6f1c2a8e-8c1d-4a51-9d4e-8f5b5f1e0c14","type":"click","user_id":"u1","movie_id":3,"ts":"{future_ts}"}}"#).into_bytes()),
        // Before the epoch: PostgreSQL would refuse its history row and fail
        // the whole batch on every retry, stalling the partition.
        ("ts", br#"{"event_id":"6f1c2a8e-8c1d-4a51-9d4e-8f5b5f1e0c16","type":"view","user_id":"u1","movie_id":3,"ts":"-5000-01-01T00:00:00Z"}"#.to_vec()),
        // An unset clock: past the 30-day horizon, it would land in a closed
        // weight period of a results report.
        ("ts", br#"{"event_id":"6f1c2a8e-8c1d-4a51-9d4e-8f5b5f1e0c18","type":"view","user_id":"u1","movie_id":3,"ts":"1970-01-02T00:00:00Z"}"#.to_vec()),
        ("body", br#"{"event_id":"6f1c2a8e-8c1d-4a51-9d4e-8f5b5f1e0c15","type":"click","user_id":"u1","movie_id":3,"colour":"red"}"#.to_vec()),
        // Two of these made the arm's value sum infinite in ClickHouse.
        ("value", br#"{"event_id":"6f1c2a8e-8c1d-4a51-9d4e-8f5b5f1e0c17","type":"conversion","user_id":"u1","value":1.7e308}"#.to_vec()),
    ];
    let letters_expected = 10 * bad.len();
    // Every message on one key (one partition): 10 rounds of 50 good and the bad ones.
    let good = mixed_events(500, 1, 0);
    let mut messages = Vec::new();
    let mut expected_fields: HashMap<String, usize> = HashMap::new();
    for round in 0..10 {
        for e in &good[round * 50..(round + 1) * 50] {
            messages.push(("same-key".to_owned(), e.to_json()));
        }
        for (field, payload) in &bad {
            messages.push(("same-key".to_owned(), payload.clone()));
            *expected_fields.entry((*field).to_owned()).or_default() += 1;
        }
    }
    produce_raw(&producer, &topic, &messages).await;

    let (rows, unique) = wait_for_events(&stack, 500, Duration::from_secs(60)).await;
    assert_eq!((rows, unique), (500, 500));
    let lag = wait_for_zero_lag(&stack, &group, Duration::from_secs(10)).await;
    assert_eq!(lag, 0, "offsets moved past the bad messages");

    // Read the DLQ back.
    let letters = read_dead_letters(&stack, letters_expected, Duration::from_secs(30)).await;
    for (key, _) in &letters {
        assert_eq!(
            key.as_deref(),
            Some(&b"same-key"[..]),
            "keyed like the original"
        );
    }
    let letters: Vec<Value> = letters.into_iter().map(|(_, letter)| letter).collect();
    assert_eq!(
        letters.len(),
        letters_expected,
        "one dead letter per bad message"
    );
    let mut fields: HashMap<String, usize> = HashMap::new();
    for l in &letters {
        *fields
            .entry(l["field"].as_str().unwrap().to_owned())
            .or_default() += 1;
        assert!(!l["reason"].as_str().unwrap().is_empty());
        assert_eq!(l["source_topic"], topic.as_str());
        assert!(l["offset"].as_i64().unwrap() >= 0);
        assert!(l.get("payload").is_some() || l.get("payload_base64").is_some());
    }
    assert_eq!(fields, expected_fields);
    assert_eq!(
        letters
            .iter()
            .filter(|l| l["payload_base64"] == "//4AAQ==")
            .count(),
        10,
        "binary payloads are kept in base64"
    );
    let metrics = reqwest::get(worker.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dlq_total: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("marquee_worker_dlq_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(dlq_total, letters_expected as f64, "{metrics}");
    worker.stop().await;
}
