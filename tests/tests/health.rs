//! `/health/live` and `/health/ready` tell the truth about the five dependencies.

use std::time::Duration;

use marquee_tests::private_redis::{free_port, PrivateRedis};
use marquee_tests::{eventually, metrics_page, spawn_api, TestStack};
use serde_json::Value;

async fn ready(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn live_is_always_ok() {
    let stack = TestStack::fresh().await;
    let api = spawn_api(&stack, |_| {}).await;
    let response = api
        .client
        .get(api.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn ready_names_redis_while_it_is_down_and_recovers_without_a_restart() {
    let stack = TestStack::fresh().await;
    let port = free_port();
    let mut redis = PrivateRedis::start(
        port,
        std::env::temp_dir().join(format!("marquee-redis-{}", stack.id)),
    );
    let api = spawn_api(&stack, |config| {
        config.stack.redis_url = format!("redis://127.0.0.1:{port}");
    })
    .await;
    let url = api.url("/health/ready");

    let came_up = eventually(Duration::from_secs(10), || async {
        ready(&api.client, &url).await.0 == 200
    })
    .await;
    let (status, body) = ready(&api.client, &url).await;
    assert!(came_up, "ready with all five up: {status} {body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["dependencies"].as_array().unwrap().len(), 5);

    redis.stop();
    // Answers are reused for up to a second, so the outage shows within two.
    let went_down = eventually(Duration::from_secs(2), || async {
        ready(&api.client, &url).await.0 == 503
    })
    .await;
    let (status, body) = ready(&api.client, &url).await;
    assert!(went_down, "503 once redis is down: {status} {body}");
    assert_eq!(status, 503, "{body}");
    assert!(
        body["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d.get("error").is_none()),
        "probe errors stay in the log: {body}"
    );
    assert_eq!(body["failing"], serde_json::json!(["redis"]));
    let redis_report = body["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "redis")
        .unwrap();
    assert_eq!(redis_report["status"], "down");

    redis.restart();
    let recovered = eventually(Duration::from_secs(15), || async {
        ready(&api.client, &url).await.0 == 200
    })
    .await;
    assert!(
        recovered,
        "ready again after redis is back: {:?}",
        ready(&api.client, &url).await
    );
}

#[tokio::test]
async fn metrics_and_openapi_are_served() {
    let stack = TestStack::fresh().await;
    let api = spawn_api(&stack, |_| {}).await;
    api.client
        .get(api.url("/health/live"))
        .send()
        .await
        .unwrap();
    let metrics = metrics_page(&api.url("/metrics")).await;
    assert!(metrics.contains("marquee_http_requests_total"), "{metrics}");
    let spec: Value = api
        .client
        .get(api.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    assert!(spec["paths"]["/health/ready"].is_object());
    let docs = api.client.get(api.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status().as_u16(), 200);
}
