//! 20k events produced by rdkafka and 1k by Python `confluent-kafka` reach
//! ClickHouse exactly once, views and likes reach PostgreSQL, and producing
//! all of them again changes nothing.

use std::time::Duration;

use domain::events::EventKind;
use marquee_tests::worker_harness::{
    clickhouse_counts, clickhouse_raw_rows, group_lag, mixed_events, pg_count, produce_events,
    produce_with_python, producer, python_with_confluent_kafka, spawn_worker, wait_for_events,
};
use marquee_tests::TestStack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_lands_once_and_a_replay_changes_nothing() {
    let stack = TestStack::fresh().await;
    let group = format!("pipeline-{}", stack.id);
    let worker = spawn_worker(&stack, |c| c.group_id = group.clone()).await;
    let topic = stack.settings.events_topic.clone();
    let producer = producer(&stack);

    let rust_events = mixed_events(20_000, 3_000, 0);
    let python_events = mixed_events(1_000, 300, 1_000_000);
    produce_events(&producer, &topic, &rust_events).await;
    // The external client must really run: without it the test fails, unless
    // explicitly told to skip that half (and then it says so).
    match python_with_confluent_kafka() {
        Some(python) => produce_with_python(&python, &stack.settings.kafka_brokers, &topic, &python_events),
        None if std::env::var("MARQUEE_SKIP_PYTHON").is_ok() => {
            println!("SKIPPED the Python confluent-kafka half: no interpreter with confluent_kafka (MARQUEE_SKIP_PYTHON set)");
            produce_events(&producer, &topic, &python_events).await;
        }
        None => panic!("no Python with confluent_kafka: run scripts/stack.sh up (it creates the venv) or set MARQUEE_SKIP_PYTHON=1"),
    }
    let all: Vec<_> = rust_events.iter().chain(&python_events).collect();
    let expected = all.len() as u64;
    let views = all.iter().filter(|e| e.kind == EventKind::View).count() as i64;
    let likes = all.iter().filter(|e| e.kind == EventKind::Like).count() as i64;

    let (rows, unique) = wait_for_events(&stack, expected, Duration::from_secs(120)).await;
    assert_eq!(
        (rows, unique),
        (expected, expected),
        "every event once in ClickHouse"
    );
    assert_eq!(
        clickhouse_raw_rows(&stack).await,
        expected,
        "no duplicate rows even before merges"
    );
    assert_eq!(pg_count(&stack, "views").await, views);
    assert_eq!(pg_count(&stack, "likes").await, likes);
    assert_eq!(pg_count(&stack, "ingested_events").await, expected as i64);
    let mut lag = i64::MAX;
    for _ in 0..50 {
        lag = group_lag(&stack, &group);
        if lag == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(lag, 0, "every offset committed");

    // The same 21k again, through rdkafka.
    let again: Vec<_> = all.iter().map(|e| (*e).clone()).collect();
    produce_events(&producer, &topic, &again).await;
    let mut lag = i64::MAX;
    for _ in 0..300 {
        lag = group_lag(&stack, &group);
        if lag == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(lag, 0, "the replay was consumed");
    assert_eq!(clickhouse_counts(&stack).await, (expected, expected));
    assert_eq!(
        clickhouse_raw_rows(&stack).await,
        expected,
        "the materialized views counted nothing twice"
    );
    assert_eq!(pg_count(&stack, "views").await, views);
    assert_eq!(pg_count(&stack, "likes").await, likes);
    worker.stop().await;
}
