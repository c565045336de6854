//! Worker startup names an unreachable dependency; the hot-movies set in Redis
//! follows ClickHouse's per-movie counts; the metrics endpoint answers.

use std::time::Duration;

use deadpool_redis::redis::AsyncCommands;
use domain::events::EventKind;
use marquee_tests::worker_harness::{
    action, produce_events, producer, spawn_worker, wait_for_events, worker_config,
};
use marquee_tests::TestStack;
use marquee_worker::startup::Worker;

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn startup_gives_up_naming_the_unreachable_dependency() {
    let stack = TestStack::fresh().await;
    let mut config = worker_config(&stack);
    config.stack.redis_url = format!("redis://127.0.0.1:{}", closed_port());
    config.startup_timeout_s = 2;
    let started = std::time::Instant::now();
    let error = match Worker::build(config).await {
        Ok(_) => panic!("a worker without Redis must not start"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("redis"), "{error}");
    assert!(
        !error.contains("postgres ("),
        "only the unreachable one is named: {error}"
    );
    assert!(started.elapsed() < Duration::from_secs(15), "bounded retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_movies_follow_the_interactions_in_clickhouse() {
    let stack = TestStack::fresh().await;
    let worker = spawn_worker(&stack, |c| {
        c.hot_movies_interval_s = 1;
        c.hot_movies_limit = 3;
    })
    .await;
    // Movie 7 gets 30 interactions, 8 gets 20, 9 gets 10, 10 gets 5.
    let mut events = Vec::new();
    for (movie, n) in [(7, 30), (8, 20), (9, 10), (10, 5)] {
        for i in 0..n {
            let kind = [EventKind::Click, EventKind::View, EventKind::Like][i % 3];
            events.push(action(kind, &format!("u{i}"), Some(movie), None));
        }
    }
    produce_events(&producer(&stack), &stack.settings.events_topic, &events).await;
    assert_eq!(
        wait_for_events(&stack, 65, Duration::from_secs(60)).await.1,
        65
    );

    let mut conn = stack.stores.redis.conn().await.unwrap();
    let key = stack.stores.redis.keys.hot_movies();
    let mut hot: Vec<(String, f64)> = Vec::new();
    for _ in 0..50 {
        hot = conn.zrevrange_withscores(&key, 0, -1).await.unwrap();
        if hot.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        hot,
        vec![
            ("7".to_owned(), 30.0),
            ("8".to_owned(), 20.0),
            ("9".to_owned(), 10.0)
        ]
    );

    let metrics = reqwest::get(worker.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "marquee_worker_events_consumed_total",
        "marquee_worker_batch_size",
        "marquee_worker_batch_duration_seconds",
        "marquee_worker_hot_movies_refresh_total",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    let live = reqwest::get(worker.url("/health/live")).await.unwrap();
    assert!(live.status().is_success());
    worker.stop().await;
}
