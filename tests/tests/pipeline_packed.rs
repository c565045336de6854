//! Records packing several events (as the api packs a partition's
//! impressions): each event is stored once, a resent record adds nothing, and
//! a bad element goes alone to the DLQ while its neighbours are stored.
//! Its own test binary: the worker's metrics are process-wide.

use std::time::Duration;

use marquee_tests::worker_harness::{
    mixed_events, produce_raw, producer, read_dead_letters, spawn_worker, wait_for_events,
    wait_for_zero_lag,
};
use marquee_tests::TestStack;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_records_are_unpacked_once_and_a_bad_element_alone_is_dead_lettered() {
    let stack = TestStack::fresh().await;
    let group = format!("packed-{}", stack.id);
    let worker = spawn_worker(&stack, |c| {
        c.group_id = group.clone();
        c.batch_size = 7;
    })
    .await;
    let topic = stack.settings.events_topic.clone();
    let producer = producer(&stack);

    // 20 records of 25 good events each (as the api packs impressions); the
    // first 4 records also carry one bad element; the last record is sent
    // twice, as a retrying producer would.
    let good = mixed_events(500, 40, 7);
    let bad = br#"{"event_id":"6f1c2a8e-8c1d-4a51-9d4e-8f5b5f1e0c99","type":"purchase","user_id":"u1","movie_id":3}"#;
    let mut messages = Vec::new();
    for (i, chunk) in good.chunks(25).enumerate() {
        let wire: Vec<Vec<u8>> = chunk.iter().map(|e| e.to_json()).collect();
        let mut elements: Vec<&[u8]> = wire.iter().map(Vec::as_slice).collect();
        if i < 4 {
            elements.insert(i, bad.as_slice());
        }
        messages.push(("packed".to_owned(), domain::events::record_of(elements)));
    }
    let last = messages[messages.len() - 1].clone();
    messages.push(last);
    produce_raw(&producer, &topic, &messages).await;

    let (_, unique) = wait_for_events(&stack, 500, Duration::from_secs(60)).await;
    assert_eq!(unique, 500, "every packed event stored");
    let lag = wait_for_zero_lag(&stack, &group, Duration::from_secs(10)).await;
    assert_eq!(lag, 0, "every record consumed");
    let (rows_after, unique_after) = wait_for_events(&stack, 500, Duration::from_secs(2)).await;
    assert_eq!(
        (rows_after, unique_after),
        (500, 500),
        "each event stored once, the resent record's too"
    );

    let letters = read_dead_letters(&stack, 4, Duration::from_secs(20)).await;
    let letters: Vec<Value> = letters.into_iter().map(|(_, letter)| letter).collect();
    assert_eq!(
        letters.len(),
        4,
        "one dead letter per bad element: {letters:?}"
    );
    for letter in &letters {
        assert_eq!(letter["field"], "type");
        assert_eq!(
            letter["payload"].as_str().unwrap().as_bytes(),
            bad.as_slice(),
            "the letter holds the element, not the whole record"
        );
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_big_to_dead_letter_whole_is_cut_and_the_partition_moves_on() {
    let stack = TestStack::fresh().await;
    let group = format!("huge-{}", stack.id);
    let worker = spawn_worker(&stack, |c| c.group_id = group.clone()).await;
    let topic = stack.settings.events_topic.clone();
    let producer = producer(&stack);

    // An unterminated array of about 950 KB: rejected whole. Quoted into a
    // letter it would pass the broker's 1 MB limit.
    let huge = format!("[{}", "\"\\u0001\",".repeat(950_000 / 9)).into_bytes();
    let good = mixed_events(20, 5, 3);
    let mut messages = vec![("huge".to_owned(), huge.clone())];
    messages.extend(good.iter().map(|e| ("huge".to_owned(), e.to_json())));
    produce_raw(&producer, &topic, &messages).await;

    let (_, unique) = wait_for_events(&stack, 20, Duration::from_secs(60)).await;
    assert_eq!(unique, 20, "the events behind the huge record are stored");
    let lag = wait_for_zero_lag(&stack, &group, Duration::from_secs(10)).await;
    assert_eq!(lag, 0, "the partition moved past the huge record");
    let letters = read_dead_letters(&stack, 1, Duration::from_secs(20)).await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0].1;
    assert_eq!(letter["field"], "body");
    assert_eq!(letter["truncated_from"], huge.len());
    assert_eq!(
        letter["payload"].as_str().unwrap().len(),
        128 * 1024,
        "the first 128 KiB are kept"
    );
    worker.stop().await;
}
