//! Records packing several events (as the api packs a partition's
//! impressions, LZ4-compressed): each event is stored once, a resent record
//! adds nothing, a bad element goes alone to the DLQ while its neighbours are
//! stored, and a record that does not decode is dead-lettered whole.
//! Its own test binary: the worker's metrics are process-wide.

use std::time::Duration;

use domain::events::{Event, EventKind};
use marquee_tests::worker_harness::{
    action, clickhouse_raw_rows, impression, items, mixed_events, produce_raw,
    produce_with_encoding, producer, read_dead_letters, spawn_worker, wait_for_events,
    wait_for_zero_lag,
};
use marquee_tests::TestStack;
use repositories::kafka::encoding::{RecordEncoder, RecordEncoding};
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

    // 20 records of 25 good events each (as the api packs impressions), every
    // other one an LZ4 frame; the first 4 records also carry one bad element;
    // the last record is sent twice, as a retrying producer would.
    let good = mixed_events(500, 40, 7);
    let bad = br#"{"event_id":"6f1c2a8e-8c1d-4a51-9d4e-8f5b5f1e0c99","type":"purchase","user_id":"u1","movie_id":3}"#;
    let lz4 = RecordEncoder::new(RecordEncoding::Lz4);
    let mut messages = Vec::new();
    for (i, chunk) in good.chunks(25).enumerate() {
        let wire: Vec<Vec<u8>> = chunk.iter().map(|e| e.to_json()).collect();
        let mut elements: Vec<&[u8]> = wire.iter().map(Vec::as_slice).collect();
        if i < 4 {
            elements.insert(i, bad.as_slice());
        }
        let record = domain::events::record_of(elements);
        messages.push(if i % 2 == 0 {
            let (frame, encoding) = lz4.encode(record);
            assert_eq!(encoding, RecordEncoding::Lz4);
            ("packed".to_owned(), frame, encoding.header_value())
        } else {
            ("packed".to_owned(), record, None)
        });
    }
    let last = messages[messages.len() - 1].clone();
    messages.push(last);
    produce_with_encoding(&producer, &topic, &messages).await;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_does_not_decode_is_dead_lettered_whole_and_the_partition_moves_on() {
    let stack = TestStack::fresh().await;
    let group = format!("undecodable-{}", stack.id);
    let worker = spawn_worker(&stack, |c| c.group_id = group.clone()).await;
    let topic = stack.settings.events_topic.clone();
    let producer = producer(&stack);

    // A truncated LZ4 frame and a record in an encoding Marquee does not
    // read, each ahead of good events on the same partition (same key).
    let good = mixed_events(20, 5, 3);
    let wire: Vec<Vec<u8>> = good.iter().map(|e| e.to_json()).collect();
    let (mut frame, _) = RecordEncoder::new(RecordEncoding::Lz4)
        .encode(domain::events::record_of(wire.iter().map(Vec::as_slice)));
    frame.truncate(frame.len() / 2);
    let mut messages = vec![
        ("k".to_owned(), frame.clone(), Some("lz4")),
        ("k".to_owned(), b"H4sIAAAAAAAA".to_vec(), Some("gzip")),
    ];
    messages.extend(wire.iter().map(|w| ("k".to_owned(), w.clone(), None)));
    produce_with_encoding(&producer, &topic, &messages).await;

    let (_, unique) = wait_for_events(&stack, 20, Duration::from_secs(60)).await;
    assert_eq!(
        unique, 20,
        "the events behind the undecodable records are stored"
    );
    let lag = wait_for_zero_lag(&stack, &group, Duration::from_secs(10)).await;
    assert_eq!(lag, 0, "the partition moved past them");
    let letters = read_dead_letters(&stack, 2, Duration::from_secs(20)).await;
    let mut letters: Vec<Value> = letters.into_iter().map(|(_, letter)| letter).collect();
    letters.sort_by_key(|l| l["offset"].as_i64());
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(letters.iter().all(|l| l["field"] == "content-encoding"));
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .contains("not a valid LZ4 frame"),
        "{}",
        letters[0]
    );
    assert!(
        letters[1]["reason"].as_str().unwrap().contains("\"gzip\""),
        "{}",
        letters[1]
    );
    // The letter keeps the record as it came, undecoded.
    assert_eq!(letters[1]["payload"], "H4sIAAAAAAAA");
    assert!(
        letters[0]["payload"].is_string() || letters[0]["payload_base64"].is_string(),
        "{}",
        letters[0]
    );
    worker.stop().await;
}

/// A batch of packed records can hold more events than one ClickHouse insert
/// should take (an insert is atomic only within one block): it is stored in
/// several ledger batches, each event once, and a click is attributed to an
/// impression that sits in a later part of the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_one_insert_is_stored_in_parts_each_event_once() {
    let stack = TestStack::fresh().await;
    let group = format!("parts-{}", stack.id);
    let worker = spawn_worker(&stack, |c| {
        c.group_id = group.clone();
        c.batch_size = 50;
        c.max_events_per_insert = 30;
    })
    .await;
    let topic = stack.settings.events_topic.clone();
    let producer = producer(&stack);

    // Each user's click comes in the first record; the impression it acts on
    // in the last one, some 200 events later.
    let impressions: Vec<Event> = (0..20)
        .map(|u| impression(&format!("u{u}"), "home", "treatment", "als", items(100, 3)))
        .collect();
    let clicks: Vec<Event> = impressions
        .iter()
        .map(|i| {
            action(
                EventKind::Click,
                i.user_id.as_str(),
                Some(101),
                i.request_id,
            )
        })
        .collect();
    let filler = mixed_events(200, 40, 11);
    let mut records = Vec::new();
    for events in [
        clicks.as_slice(),
        &filler[..100],
        &filler[100..],
        &impressions,
    ] {
        let wire: Vec<Vec<u8>> = events.iter().map(Event::to_json).collect();
        records.push((
            "parts".to_owned(),
            domain::events::record_of(wire.iter().map(Vec::as_slice)),
        ));
    }
    produce_raw(&producer, &topic, &records).await;

    let (_, unique) = wait_for_events(&stack, 240, Duration::from_secs(60)).await;
    assert_eq!(unique, 240);
    let lag = wait_for_zero_lag(&stack, &group, Duration::from_secs(10)).await;
    assert_eq!(lag, 0, "every record consumed");
    assert_eq!(clickhouse_raw_rows(&stack).await, 240, "each event once");
    let (batches, written): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status = 'written') FROM ingest_batches",
    )
    .fetch_one(&stack.pg)
    .await
    .unwrap();
    assert!(
        batches >= 8,
        "240 events in parts of 30: {batches} ledger batches"
    );
    assert_eq!(written, batches, "every part written");
    let unattributed: u64 = stack
        .stores
        .analytics
        .client()
        .query("SELECT count() FROM events WHERE type = 'click' AND request_id != '' AND experiment_key = ''")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        unattributed, 0,
        "clicks stored before their impressions' part are attributed"
    );
    worker.stop().await;
}
