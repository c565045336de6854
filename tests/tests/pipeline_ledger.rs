//! The ingestion ledger's crash recovery, step by step: a batch left pending
//! by a writer that died is resolved by asking ClickHouse whether it landed,
//! and a live writer's lease makes a second writer wait instead of guessing.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use domain::events::EventKind;
use domain::ports::pipeline::{BatchId, EventStore, IngestLedger, StoreError, StoredEvent};
use marquee_tests::worker_harness::{action, clickhouse_raw_rows};
use marquee_tests::{eventually, TestStack};
use repositories::clickhouse::Analytics;
use repositories::postgres::ingest::PgIngestLedger;
use tokio::sync::{Notify, Semaphore};

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
        .fetch_one(&stack.pg)
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
        let mut dying = PgIngestLedger::new(&stack.pg, Duration::from_secs(5));
        let claimed = dying.claim(first, &batch, &store).await.unwrap();
        assert_eq!(claimed.len(), 50);
    }
    assert_eq!(status(&stack, first).await, "pending");
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM views")
            .fetch_one(&stack.pg)
            .await
            .unwrap(),
        50
    );

    let mut next = PgIngestLedger::new(&stack.pg, Duration::from_secs(5));
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
            .fetch_one(&stack.pg)
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
        let mut dying = PgIngestLedger::new(&stack.pg, Duration::from_secs(5));
        dying.claim(first, &batch, &store).await.unwrap();
        store.insert_batch(first, &batch).await.unwrap();
    }
    let mut next = PgIngestLedger::new(&stack.pg, Duration::from_secs(5));
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
    let mut live = PgIngestLedger::new(&stack.pg, Duration::from_secs(5));
    live.claim(first, &batch, store.as_ref()).await.unwrap();

    // Another worker (after a rebalance) meets the same events meanwhile.
    let contender = {
        let pg = stack.pg.clone();
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

/// ClickHouse behind a gate: the first `batch_present` waits until the test
/// opens it, holding its caller inside the resolution of a pending batch.
struct GatedStore {
    inner: Analytics,
    entered: Notify,
    gate: Semaphore,
}

#[async_trait]
impl EventStore for GatedStore {
    async fn insert_batch(&self, batch: BatchId, events: &[StoredEvent]) -> Result<(), StoreError> {
        self.inner.insert_batch(batch, events).await
    }

    async fn batch_present(&self, batch: BatchId) -> Result<bool, StoreError> {
        self.entered.notify_one();
        if let Ok(permit) = self.gate.acquire().await {
            permit.forget();
        }
        self.inner.batch_present(batch).await
    }

    async fn batch_in_flight(&self, batch: BatchId) -> Result<bool, StoreError> {
        self.inner.batch_in_flight(batch).await
    }
}

/// Advisory locks some session of this test's database is waiting for.
async fn waiting_advisory_locks(stack: &TestStack) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&stack.pg)
    .await
    .unwrap()
}

/// Two workers meet the events of a batch whose writer died. The first aborts
/// that batch and takes the events; the second, which read the old owner
/// before the first committed, must not take them from the first as well (both
/// would write them to ClickHouse): it waits for the first writer's lease and
/// then finds them written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_reclaiming_one_dead_batch_take_its_events_once() {
    let stack = TestStack::fresh().await;
    let batch = events(30);
    let dead = BatchId::new_random();
    {
        let mut dying = PgIngestLedger::new(&stack.pg, Duration::from_secs(5));
        dying
            .claim(dead, &batch, &stack.stores.analytics)
            .await
            .unwrap();
    }

    let gated = Arc::new(GatedStore {
        inner: stack.stores.analytics.clone(),
        entered: Notify::new(),
        gate: Semaphore::new(0),
    });
    let first_batch = BatchId::new_random();
    let first = {
        let (pg, gated, batch) = (stack.pg.clone(), gated.clone(), batch.clone());
        tokio::spawn(async move {
            let mut ledger = PgIngestLedger::new(&pg, Duration::from_secs(5));
            let claimed = ledger
                .claim(first_batch, &batch, gated.as_ref())
                .await
                .unwrap();
            (ledger, claimed)
        })
    };
    // The first worker now holds the dead batch's resolution lock.
    tokio::time::timeout(Duration::from_secs(20), gated.entered.notified())
        .await
        .expect("the first worker resolves the dead batch");

    let second = {
        let (pg, store, batch) = (
            stack.pg.clone(),
            stack.stores.analytics.clone(),
            batch.clone(),
        );
        tokio::spawn(async move {
            let mut ledger = PgIngestLedger::new(&pg, Duration::from_secs(5));
            ledger
                .claim(BatchId::new_random(), &batch, &store)
                .await
                .unwrap()
        })
    };
    // The second has read the dead batch as the owner and queues behind the first.
    assert!(
        eventually(Duration::from_secs(20), || async {
            waiting_advisory_locks(&stack).await > 0
        })
        .await,
        "the second worker never queued"
    );

    gated.gate.add_permits(1);
    let (mut first_ledger, first_claimed) = first.await.unwrap();
    assert_eq!(first_claimed.len(), 30, "nothing of the dead batch landed");
    assert_eq!(status(&stack, dead).await, "aborted");

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "the second worker must wait for the first one's lease, not take its events"
    );
    stack
        .stores
        .analytics
        .insert_batch(first_batch, &batch)
        .await
        .unwrap();
    first_ledger.mark_written(first_batch).await.unwrap();
    let second_claimed = tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .expect("the second worker finishes once the first has written")
        .unwrap();
    assert!(
        second_claimed.is_empty(),
        "the first worker wrote them: {second_claimed:?}"
    );
    let owners: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT DISTINCT batch_id FROM ingested_events")
            .fetch_all(&stack.pg)
            .await
            .unwrap();
    assert_eq!(owners, vec![first_batch.as_uuid()]);
    assert_eq!(clickhouse_raw_rows(&stack).await, 30);
}

/// An INSERT of `batch`'s rows under the query id the worker gives its
/// inserts, sent over raw HTTP with a chunked body whose end the test
/// decides: the server runs the query while the body keeps coming, as it
/// does for a writer that timed out waiting for a slow insert.
/// Rows the slow insert sends before it holds.
const FIRST_ROWS: usize = 5;

struct SlowInsert {
    stream: tokio::net::TcpStream,
}

impl SlowInsert {
    async fn start(stack: &TestStack, batch: BatchId, events: &[StoredEvent]) -> Self {
        use tokio::io::AsyncWriteExt;
        let url = reqwest::Url::parse(&stack.settings.clickhouse_url).unwrap();
        let address = format!(
            "{}:{}",
            url.host_str().unwrap(),
            url.port_or_known_default().unwrap()
        );
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let query = format!(
            "/?database={}&query_id={}&query=INSERT%20INTO%20events%20(event_id%2C%20type%2C%20user_id%2C%20model_version%2C%20batch_id)%20FORMAT%20TabSeparated",
            stack.settings.clickhouse_database,
            batch.as_uuid()
        );
        let head = format!(
            "POST {query} HTTP/1.1\r\nHost: clickhouse\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut insert = Self { stream };
        // 18.16 starts the query once it has read the first MiB of the
        // body (or all of it): the first row carries a padded model version.
        insert
            .send_rows(batch, &events[..FIRST_ROWS], &"v".repeat(1 << 20))
            .await;
        insert
    }

    /// One chunk of rows, the first with `first_version` as its model version.
    async fn send_rows(&mut self, batch: BatchId, events: &[StoredEvent], first_version: &str) {
        use tokio::io::AsyncWriteExt;
        let rows: String = events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                format!(
                    "{}\tview\t{}\t{}\t{}\n",
                    e.event.id.as_uuid(),
                    e.event.user_id.as_str(),
                    if i == 0 { first_version } else { "v1" },
                    batch.as_uuid()
                )
            })
            .collect();
        let chunk = format!("{:x}\r\n{rows}\r\n", rows.len());
        self.stream.write_all(chunk.as_bytes()).await.unwrap();
    }

    /// End the body and return the server's status line.
    async fn finish(mut self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.stream.write_all(b"0\r\n\r\n").await.unwrap();
        let mut answer = vec![0; 512];
        let n = self.stream.read(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    }
}

/// A writer gave up waiting for its ClickHouse insert (a timeout) and let its
/// lease go, but the server is still writing the batch. The next claim of its
/// events must neither declare the batch absent (the insert would then land
/// beside the events' second write) nor present: it fails, to be retried,
/// until the insert has ended, and then finds the events written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_insert_is_still_running_is_not_resolved_until_it_ends() {
    let stack = TestStack::fresh().await;
    let store = stack.stores.analytics.clone();
    let batch = events(20);
    let slow = BatchId::new_random();
    let mut writer = PgIngestLedger::new(&stack.pg, Duration::from_secs(5));
    writer.claim(slow, &batch, &store).await.unwrap();
    let mut insert = SlowInsert::start(&stack, slow, &batch).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            store.batch_in_flight(slow).await.unwrap()
        })
        .await,
        "the insert never started"
    );
    // The writer's wait timed out: it gives up its lease.
    writer.abandon(slow).await;

    let mut next = PgIngestLedger::new(&stack.pg, Duration::from_secs(5));
    let refused = next
        .claim(BatchId::new_random(), &batch, &store)
        .await
        .unwrap_err();
    assert!(refused.transient, "{refused}");
    assert!(
        refused.to_string().contains("still being inserted"),
        "{refused}"
    );
    assert_eq!(status(&stack, slow).await, "pending");

    insert.send_rows(slow, &batch[FIRST_ROWS..], "v1").await;
    let answer = insert.finish().await;
    assert!(answer.contains("200"), "{answer}");
    let claimed = next
        .claim(BatchId::new_random(), &batch, &store)
        .await
        .unwrap();
    assert!(
        claimed.is_empty(),
        "the slow insert wrote them: {claimed:?}"
    );
    assert_eq!(status(&stack, slow).await, "written");
    assert_eq!(clickhouse_raw_rows(&stack).await, 20);
}
