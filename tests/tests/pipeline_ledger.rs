//! The ingestion ledger's crash recovery, step by step: a batch left pending
//! by a writer that died is resolved by asking ClickHouse whether it landed,
//! and a live writer's lease makes a second writer wait instead of guessing.

use std::sync::Arc;
use std::time::Duration;

use domain::events::EventKind;
use domain::ports::pipeline::{BatchId, EventStore, IngestLedger, StoredEvent};
use marquee_tests::worker_harness::{action, clickhouse_raw_rows};
use marquee_tests::TestStack;
use repositories::postgres::ingest::PgIngestLedger;

fn events(n: usize) -> Vec<StoredEvent> {
    (0..n)
        .map(|i| {
            StoredEvent::new(action(
                EventKind::View,
                &format!("u{i}"),
                Some(1 + i as i64),
                None,
            ))
        })
        .collect()
}

async fn status(stack: &TestStack, batch: BatchId) -> String {
    sqlx::query_scalar("SELECT status FROM ingest_batches WHERE batch_id = $1")
        .bind(batch.as_uuid())
        .fetch_one(&stack.stores.pg)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_pending_batch_absent_from_clickhouse_is_aborted_and_its_events_reclaimed() {
    let stack = TestStack::fresh().await;
    let store = stack.stores.analytics.clone();
    let batch = events(50);
    let first = BatchId::new_random();
    {
        // A writer claims, then "dies" before its ClickHouse insert.
        let mut dying = PgIngestLedger::new(&stack.stores.pg, Duration::from_secs(5));
        let claimed = dying.claim(first, &batch, &store).await.unwrap();
        assert_eq!(claimed.len(), 50);
    }
    assert_eq!(status(&stack, first).await, "pending");
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM views")
            .fetch_one(&stack.stores.pg)
            .await
            .unwrap(),
        50
    );

    let mut next = PgIngestLedger::new(&stack.stores.pg, Duration::from_secs(5));
    let second = BatchId::new_random();
    let claimed = next.claim(second, &batch, &store).await.unwrap();
    assert_eq!(
        claimed.len(),
        50,
        "nothing reached ClickHouse, so all of it is new again"
    );
    assert_eq!(status(&stack, first).await, "aborted");
    store.insert_batch(second, &batch).await.unwrap();
    next.mark_written(second).await.unwrap();
    assert_eq!(status(&stack, second).await, "written");
    assert_eq!(clickhouse_raw_rows(&stack).await, 50);
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM views")
            .fetch_one(&stack.stores.pg)
            .await
            .unwrap(),
        50,
        "history is keyed by event id"
    );
}

#[tokio::test]
async fn a_pending_batch_present_in_clickhouse_is_marked_written_and_its_events_are_duplicates() {
    let stack = TestStack::fresh().await;
    let store = stack.stores.analytics.clone();
    let batch = events(40);
    let first = BatchId::new_random();
    {
        // The writer inserted into ClickHouse and died before marking the batch.
        let mut dying = PgIngestLedger::new(&stack.stores.pg, Duration::from_secs(5));
        dying.claim(first, &batch, &store).await.unwrap();
        store.insert_batch(first, &batch).await.unwrap();
    }
    let mut next = PgIngestLedger::new(&stack.stores.pg, Duration::from_secs(5));
    let claimed = next
        .claim(BatchId::new_random(), &batch, &store)
        .await
        .unwrap();
    assert!(claimed.is_empty(), "already in ClickHouse: {claimed:?}");
    assert_eq!(status(&stack, first).await, "written");
    assert_eq!(clickhouse_raw_rows(&stack).await, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_waits_for_a_live_writers_lease() {
    let stack = TestStack::fresh().await;
    let store = Arc::new(stack.stores.analytics.clone());
    let batch = events(30);
    let first = BatchId::new_random();
    let mut live = PgIngestLedger::new(&stack.stores.pg, Duration::from_secs(5));
    live.claim(first, &batch, store.as_ref()).await.unwrap();

    // Another worker (after a rebalance) meets the same events meanwhile.
    let contender = {
        let pg = stack.stores.pg.clone();
        let store = store.clone();
        let batch = batch.clone();
        tokio::spawn(async move {
            let mut other = PgIngestLedger::new(&pg, Duration::from_secs(5));
            other
                .claim(BatchId::new_random(), &batch, store.as_ref())
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !contender.is_finished(),
        "it must wait for the lease, not abort a live batch"
    );
    store.insert_batch(first, &batch).await.unwrap();
    live.mark_written(first).await.unwrap();
    let claimed = contender.await.unwrap();
    assert!(
        claimed.is_empty(),
        "the live writer wrote them: {claimed:?}"
    );
    assert_eq!(clickhouse_raw_rows(&stack).await, 30);
}
