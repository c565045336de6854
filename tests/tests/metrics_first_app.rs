//! The first api a process builds exports every serving counter on /metrics.
//!
//! Its own test binary with a single test, so the api built here is the
//! process's first: the serving counters are registered once, when the app is
//! built, and registered before the Prometheus recorder existed they went
//! nowhere (in the real binary, where there is only one app). In the other
//! test binaries an earlier test's app has always installed the recorder.

use marquee_tests::fixtures::create_two_arm_experiment;
use marquee_tests::{metrics_page, spawn_api, TestStack};

/// Counters the recommendations path registers up front, and one of its labels.
const SERVING_COUNTERS: [&str; 5] = [
    "marquee_recs_cache_total{result=\"hit\"}",
    "marquee_user_context_total{result=\"miss\"}",
    "marquee_list_memory_total{result=\"miss\"}",
    "marquee_impressions_dropped_total{reason=\"queue_full\"}",
    "marquee_impressions_sent_total",
];

#[tokio::test]
async fn the_first_api_in_a_process_exports_its_serving_counters() {
    let stack = TestStack::fresh().await;
    sqlx::query("INSERT INTO movies (id, title, genres) VALUES (1, 'One', ARRAY['Drama'])")
        .execute(&stack.pg)
        .await
        .unwrap();
    create_two_arm_experiment(&stack, "home").await;
    let api = spawn_api(&stack, |_| {}).await;
    let served = api
        .client
        .get(api.url("/v1/users/metrics-user/recommendations"))
        .header("x-api-key", &api.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(served.status().as_u16(), 200);

    let text = metrics_page(&api.url("/metrics")).await;
    let missing: Vec<_> = SERVING_COUNTERS
        .iter()
        .filter(|counter| !text.lines().any(|line| line.starts_with(*counter)))
        .collect();
    assert!(missing.is_empty(), "not on /metrics: {missing:?}\n{text}");
}
