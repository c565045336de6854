//! A click that reaches Kafka ahead of the impression it names is still
//! attributed: the worker's batch waits (once, up to the attribution grace)
//! for the impression. Its own test binary: the worker's metrics are
//! process-wide and `pipeline_attribution` counts unattributed clicks exactly.

use std::time::Duration;

use domain::events::EventKind;
use marquee_tests::fixtures::create_two_arm_experiment;
use marquee_tests::worker_harness::{
    action, impression, items, produce_events, producer, spawn_worker, wait_for_events,
};
use marquee_tests::TestStack;

/// A click produced 300 ms before the impression it names (the api hands an
/// impression to Kafka up to its packing window after answering, so a click
/// made at once can reach Kafka first), with batches closing after 20 ms.
/// Returns the click's stored (experiment, arm, position).
async fn click_before_its_impression(grace_ms: u64) -> (String, String, i16) {
    let stack = TestStack::fresh().await;
    create_two_arm_experiment(&stack, "home").await;
    let topic = stack.settings.events_topic.clone();
    let producer = producer(&stack);
    let worker = spawn_worker(&stack, |config| {
        config.batch_max_wait_ms = 20;
        config.attribution_grace_ms = grace_ms;
    })
    .await;
    let served = impression("quick", "home", "treatment", "als", items(700, 5));
    let click = action(EventKind::Click, "quick", Some(702), served.request_id);
    produce_events(&producer, &topic, &[click]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    produce_events(&producer, &topic, &[served]).await;
    assert_eq!(
        wait_for_events(&stack, 2, Duration::from_secs(60)).await.1,
        2
    );
    worker.stop().await;
    stack
        .stores
        .analytics
        .client()
        .query("SELECT experiment_key, arm_key, position FROM events FINAL WHERE type = 'click'")
        .fetch_one::<(String, String, i16)>()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_that_reaches_kafka_before_its_impression_is_still_attributed() {
    assert_eq!(
        click_before_its_impression(2_000).await,
        ("home".to_owned(), "treatment".to_owned(), 2)
    );
}

/// The same without the grace: the batch holding the click closes before the
/// impression arrives (what the grace is for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_grace_a_click_ahead_of_its_impression_is_stored_unattributed() {
    let (experiment, arm, _) = click_before_its_impression(0).await;
    assert_eq!((experiment.as_str(), arm.as_str()), ("", ""));
}
