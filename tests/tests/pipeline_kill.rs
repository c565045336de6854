//! The worker, a real process, is SIGKILLed twice in the middle of a
//! 100k-event stream and restarted: every event is present exactly once.
//! Three workers in one group, joining mid-stream (two rebalances) and one
//! of them SIGKILLed (a third): every event is present exactly once.

use std::time::{Duration, Instant};

use marquee_tests::worker_harness::{
    clickhouse_counts, clickhouse_raw_rows, group_lag, mixed_events, pg_count, produce_events,
    producer, wait_for_events, worker_child_main, WorkerProcess,
};
use marquee_tests::TestStack;

/// The worker process the test below starts and kills (not a test by itself).
#[test]
#[ignore = "started by sigkill_mid_stream_then_restart_loses_nothing_and_duplicates_nothing"]
fn worker_child_process() {
    worker_child_main();
}

const CHILD: &str = "worker_child_process";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_loses_nothing_and_duplicates_nothing() {
    let stack = TestStack::fresh().await;
    let total = 100_000u64;
    let group = format!("kill-{}", stack.id);
    let extra = vec![
        ("MARQUEE_WORKER_GROUP", group.clone()),
        ("MARQUEE_WORKER_BATCH_SIZE", "4000".to_owned()),
        ("MARQUEE_WORKER_BATCH_MAX_WAIT_MS", "100".to_owned()),
        // After a SIGKILL the broker may hand the restarted worker nothing
        // until it notices the dead member; the orphan watchdog rejoins.
        ("MARQUEE_WORKER_LAG_INTERVAL_S", "1".to_owned()),
        ("MARQUEE_WORKER_ORPHAN_AFTER_S", "3".to_owned()),
    ];
    let logs = std::env::temp_dir().join(format!("marquee-kill-{}", stack.id));
    std::fs::create_dir_all(&logs).unwrap();

    let mut worker =
        WorkerProcess::start(CHILD, &stack.settings, &extra, logs.join("worker-1.log"));
    let events = mixed_events(total as usize, 20_000, 0);
    let topic = stack.settings.events_topic.clone();
    let producer = producer(&stack);
    let stream = tokio::spawn(async move {
        // A steady stream: 100 chunks of 1k.
        for chunk in events.chunks(1_000) {
            produce_events(&producer, &topic, chunk).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    for (round, threshold) in [(1, 20_000u64), (2, 55_000)] {
        let started = Instant::now();
        loop {
            let (_, unique) = clickhouse_counts(&stack).await;
            if unique >= threshold {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "worker made no progress:\n{}",
                worker.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        worker.kill();
        let (_, at_kill) = clickhouse_counts(&stack).await;
        println!("round {round}: SIGKILL with {at_kill} events in ClickHouse");
        worker = WorkerProcess::start(
            CHILD,
            &stack.settings,
            &extra,
            logs.join(format!("worker-{}.log", round + 1)),
        );
    }
    stream.await.unwrap();

    let (rows, unique) = wait_for_events(&stack, total, Duration::from_secs(180)).await;
    assert_eq!(
        unique,
        total,
        "none missing; last log:\n{}",
        worker.log_text()
    );
    assert_eq!(rows, total, "none twice after FINAL");
    assert_eq!(
        clickhouse_raw_rows(&stack).await,
        total,
        "none twice even before merges"
    );
    assert_eq!(pg_count(&stack, "ingested_events").await, total as i64);
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ingest_batches WHERE status = 'pending'")
            .fetch_one(&stack.pg)
            .await
            .unwrap();
    let recovered: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM ingest_batches GROUP BY status ORDER BY status",
    )
    .fetch_all(&stack.pg)
    .await
    .unwrap();
    println!("ledger batches by status: {recovered:?}");
    assert_eq!(pending, 0, "every interrupted batch was resolved");

    // SIGTERM: the worker finishes, commits what is durable, leaves the group, exits 0.
    let pid = worker.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = worker.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "worker did not stop on SIGTERM:\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        worker.log_text()
    );
    assert!(worker.log_text().contains("consumer closed"));
    assert_eq!(
        group_lag(&stack, &group),
        0,
        "everything durable was committed"
    );
    let _ = std::fs::remove_dir_all(&logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_rebalancing_mid_stream_and_one_killed_count_each_event_once() {
    // Four partitions, so each of three workers owns some after a rebalance.
    let stack = TestStack::fresh_with(|s| s.events_partitions = 4).await;
    let total = 60_000u64;
    let group = format!("rebalance-{}", stack.id);
    let extra = vec![
        ("MARQUEE_WORKER_GROUP", group.clone()),
        ("MARQUEE_WORKER_BATCH_SIZE", "2000".to_owned()),
        ("MARQUEE_WORKER_BATCH_MAX_WAIT_MS", "100".to_owned()),
        ("MARQUEE_WORKER_LAG_INTERVAL_S", "1".to_owned()),
        ("MARQUEE_WORKER_ORPHAN_AFTER_S", "3".to_owned()),
    ];
    let logs = std::env::temp_dir().join(format!("marquee-rebalance-{}", stack.id));
    std::fs::create_dir_all(&logs).unwrap();
    let start = |n: usize| {
        WorkerProcess::start(
            CHILD,
            &stack.settings,
            &extra,
            logs.join(format!("worker-{n}.log")),
        )
    };

    let mut workers = vec![start(1)];
    let events = mixed_events(total as usize, 12_000, 0);
    let topic = stack.settings.events_topic.clone();
    let producer = producer(&stack);
    let stream = tokio::spawn(async move {
        // A steady stream over several seconds: 60 chunks of 1k.
        for chunk in events.chunks(1_000) {
            produce_events(&producer, &topic, chunk).await;
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    });
    let at = reach(&stack, 8_000, &workers).await;
    println!("second worker joins with {at} events in ClickHouse");
    workers.push(start(2));
    let at = reach(&stack, 20_000, &workers).await;
    println!("third worker joins with {at} events in ClickHouse");
    workers.push(start(3));
    let at = reach(&stack, 32_000, &workers).await;
    workers[1].kill();
    println!("SIGKILL of the second worker with {at} events in ClickHouse");
    stream.await.unwrap();

    let (rows, unique) = wait_for_events(&stack, total, Duration::from_secs(180)).await;
    let logs_text = || {
        workers
            .iter()
            .map(WorkerProcess::log_text)
            .collect::<String>()
    };
    assert_eq!(unique, total, "none missing; logs:\n{}", logs_text());
    assert_eq!(rows, total, "none twice after FINAL");
    assert_eq!(
        clickhouse_raw_rows(&stack).await,
        total,
        "none twice even before merges"
    );
    assert_eq!(pg_count(&stack, "ingested_events").await, total as i64);
    let by_status: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM ingest_batches GROUP BY status ORDER BY status",
    )
    .fetch_all(&stack.pg)
    .await
    .unwrap();
    println!("ledger batches by status: {by_status:?}");
    let rejoins = logs_text().matches("rejoining the consumer group").count();
    println!("orphan rejoins: {rejoins}");
    assert!(
        !by_status.iter().any(|(status, _)| status == "pending"),
        "every interrupted batch was resolved: {by_status:?}"
    );
    drop(workers);
    let _ = std::fs::remove_dir_all(&logs);
}

/// Wait until ClickHouse holds `threshold` distinct events; the workers'
/// logs explain a stall.
async fn reach(stack: &TestStack, threshold: u64, workers: &[WorkerProcess]) -> u64 {
    let started = Instant::now();
    loop {
        let (_, unique) = clickhouse_counts(stack).await;
        if unique >= threshold {
            return unique;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no progress past {unique} of {threshold}:\n{}",
            workers
                .iter()
                .map(WorkerProcess::log_text)
                .collect::<String>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
