//! A click that reaches Kafka ahead of the impression it names is still
//! attributed: the worker's batch waits (once, up to the attribution grace)
//! for the impression. Its own test binary: the worker's metrics are
//! process-wide and `pipeline_attribution` counts unattributed clicks exactly.

use std::time::Duration;

use domain::events::EventKind;
use marquee_tests::fixtures::create_two_arm_experiment;
use marquee_tests::worker_harness::{
    action, impression, items, produce_events, producer, spawn_worker, wait_for_events, TestWorker,
};
use marquee_tests::TestStack;
use rdkafka::producer::FutureProducer;

/// A fresh stack with the experiment `home`, and a worker whose batches close
/// after 20 ms and wait up to `grace_ms` for impressions, already fetching
/// (a warm-up view is stored before this returns).
async fn fetching_worker(grace_ms: u64) -> (TestStack, String, FutureProducer, TestWorker) {
    let stack = TestStack::fresh().await;
    create_two_arm_experiment(&stack, "home").await;
    let topic = stack.settings.events_topic.clone();
    let producer = producer(&stack);
    let worker = spawn_worker(&stack, |config| {
        // A group of its own: a worker joining or leaving a shared group
        // would pause this one's fetching mid-test.
        config.group_id = format!("race-{}", stack.id);
        config.batch_max_wait_ms = 20;
        config.attribution_grace_ms = grace_ms;
    })
    .await;
    // Once this is stored the worker owns the partitions and is fetching.
    produce_events(
        &producer,
        &topic,
        &[action(EventKind::View, "warm", Some(1), None)],
    )
    .await;
    assert_eq!(
        wait_for_events(&stack, 1, Duration::from_secs(60)).await.1,
        1
    );
    (stack, topic, producer, worker)
}

/// A click produced before the impression it names (the api hands an
/// impression to Kafka up to its packing window after answering, so a click
/// made at once can reach Kafka first), with batches closing after 20 ms.
/// `click_stored_first`: wait until the click is in ClickHouse before
/// producing the impression, else wait 300 ms. Returns the click's stored
/// (experiment, arm, position) and the worker's count of batches that waited.
async fn click_before_its_impression(
    grace_ms: u64,
    click_stored_first: bool,
) -> ((String, String, i16), f64) {
    let (stack, topic, producer, worker) = fetching_worker(grace_ms).await;
    let served = impression("quick", "home", "treatment", "als", items(700, 5));
    let click = action(EventKind::Click, "quick", Some(702), served.request_id);
    produce_events(&producer, &topic, &[click]).await;
    if click_stored_first {
        assert_eq!(
            wait_for_events(&stack, 2, Duration::from_secs(60)).await.1,
            2
        );
    } else {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    produce_events(&producer, &topic, &[served]).await;
    assert_eq!(
        wait_for_events(&stack, 3, Duration::from_secs(60)).await.1,
        3
    );

    let waits = worker
        .metric_total("marquee_worker_attribution_waits_total")
        .await;
    worker.stop().await;
    let click = stack
        .stores
        .analytics
        .client()
        .query("SELECT experiment_key, arm_key, position FROM events FINAL WHERE type = 'click'")
        .fetch_one::<(String, String, i16)>()
        .await
        .unwrap();
    (click, waits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_that_reaches_kafka_before_its_impression_is_still_attributed() {
    let (click, waits) = click_before_its_impression(5_000, false).await;
    assert_eq!(click, ("home".to_owned(), "treatment".to_owned(), 2));
    assert!(waits >= 1.0, "the click's batch waited for the impression");
}

/// Without the grace the batch holding the click is stored before the
/// impression arrives (what the grace is for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_grace_a_click_ahead_of_its_impression_is_stored_unattributed() {
    let ((experiment, arm, _), _) = click_before_its_impression(0, true).await;
    assert_eq!((experiment.as_str(), arm.as_str()), ("", ""));
}

/// While a batch waits (up to 2 s) for one click's impression, the messages
/// it takes in bring a second click whose impression comes 2.8 s later, after
/// the wait: that click goes back to open the next batch, which waits for it
/// in turn, instead of being stored unattributed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_taken_in_while_waiting_waits_in_the_next_batch() {
    let (stack, topic, producer, worker) = fetching_worker(2_000).await;
    // One user, so all of it shares a partition and keeps this order.
    let first = impression("quick", "home", "treatment", "als", items(700, 5));
    let second = impression("quick", "home", "treatment", "als", items(800, 5));
    let first_click = action(EventKind::Click, "quick", Some(701), first.request_id);
    let second_click = action(EventKind::Click, "quick", Some(803), second.request_id);
    produce_events(&producer, &topic, &[first_click]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    produce_events(&producer, &topic, &[first, second_click]).await;
    tokio::time::sleep(Duration::from_millis(2_800)).await;
    produce_events(&producer, &topic, &[second]).await;
    assert_eq!(
        wait_for_events(&stack, 5, Duration::from_secs(60)).await.1,
        5
    );

    let held_back = worker
        .metric_total("marquee_worker_attribution_held_back_total")
        .await;
    worker.stop().await;
    let clicks = stack
        .stores
        .analytics
        .client()
        .query("SELECT arm_key, position FROM events FINAL WHERE type = 'click' ORDER BY position")
        .fetch_all::<(String, i16)>()
        .await
        .unwrap();
    assert_eq!(
        clicks,
        vec![("treatment".to_owned(), 1), ("treatment".to_owned(), 3)],
        "both clicks attributed"
    );
    assert!(held_back >= 1.0, "the second click was held back");
}
