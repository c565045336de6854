//! A running Thompson-sampling experiment whose arm B truly has the higher
//! CTR: within a few reweight intervals B's weight rises in PostgreSQL (with
//! history) and in Redis (with a pub/sub notice), and two workers never
//! reweight the same experiment twice in one interval.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_redis::redis;
use domain::events::EventKind;
use futures::StreamExt;
use marquee_tests::worker_harness::{
    action, impression, items, produce_events, producer, spawn_worker,
};
use marquee_tests::{spawn_api, TestStack};
use repositories::postgres::api_keys::Role;
use serde_json::Value;

async fn weight(stack: &TestStack, arm: &str) -> f64 {
    sqlx::query_scalar("SELECT weight FROM arms WHERE experiment_key = 'bandit' AND arm_key = $1")
        .bind(arm)
        .fetch_one(&stack.pg)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thompson_moves_weight_to_the_better_arm_in_postgres_and_redis() {
    let stack = TestStack::fresh().await;
    sqlx::query(
        "INSERT INTO experiments (key, status, salt, policy, metric, min_weight, reweight_interval_s, \
                                  burn_in_users, exploration_s, started_at) \
         VALUES ('bandit', 'running', 'bandit-salt', 'thompson', 'ctr', 0.05, 1, 100, 0, now())",
    )
    .execute(&stack.pg)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO arms (experiment_key, arm_key, algorithm_key, weight, is_control, position) VALUES \
         ('bandit', 'a', 'popularity', 0.5, true, 0), ('bandit', 'b', 'als', 0.5, false, 1)",
    )
    .execute(&stack.pg)
    .await
    .unwrap();

    // An api replica that must follow the new weights for new users.
    let api = spawn_api(&stack, |_| {}).await;
    let client_key = stack
        .stores
        .api_keys
        .create(Role::Client, "reweight-test")
        .await
        .unwrap()
        .1;

    // Listen for the reload notice api replicas get.
    let client = redis::Client::open(stack.settings.redis_url.as_str()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(stack.stores.redis.keys.weights_channel())
        .await
        .unwrap();
    let mut notices = pubsub.into_on_message();

    // Two workers: the lease must keep them from reweighting twice per interval.
    let tune = |c: &mut marquee_worker::config::WorkerConfig| {
        c.reweight_tick_ms = 100;
    };
    let w1 = spawn_worker(&stack, tune).await;
    let w2 = spawn_worker(&stack, tune).await;
    let topic = stack.settings.events_topic.clone();
    let producer = producer(&stack);

    // Three waves of traffic; true CTR 4% for a, 20% for b (deterministic pattern).
    for wave in 0..3 {
        let mut events = Vec::new();
        for u in 0..600 {
            let (arm, algorithm, every) = if u % 2 == 0 {
                ("a", "popularity", 25)
            } else {
                ("b", "als", 5)
            };
            let user = format!("w{wave}u{u}");
            let served = impression(&user, "bandit", arm, algorithm, items(1, 10));
            let clicked = (u / 2) % every == 0;
            let request = served.request_id;
            events.push(served);
            if clicked {
                events.push(action(EventKind::Click, &user, Some(3), request));
            }
        }
        produce_events(&producer, &topic, &events).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }

    let mut b = 0.0;
    for _ in 0..100 {
        b = weight(&stack, "b").await;
        if b > 0.9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(b > 0.9, "b's weight rose in PostgreSQL: {b}");
    let a = weight(&stack, "a").await;
    assert!(
        (a + b - 1.0).abs() < 1e-9 && a >= 0.05 - 1e-12,
        "a keeps its floor: {a}"
    );

    let cached = stack
        .stores
        .redis
        .get(&stack.stores.redis.keys.weights("bandit"))
        .await
        .unwrap()
        .expect("weights published to Redis");
    let cached: Value = serde_json::from_str(&cached).unwrap();
    let b_cached = cached["weights"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["arm"] == "b")
        .unwrap()["weight"]
        .as_f64()
        .unwrap();
    assert!(b_cached > 0.5, "{cached}");
    let notice = tokio::time::timeout(Duration::from_secs(5), notices.next())
        .await
        .expect("a reload notice was published")
        .unwrap();
    assert_eq!(notice.get_payload::<String>().unwrap(), "bandit");

    // New users now mostly land in b: the api reloaded the published weights.
    let mut in_b = 0;
    for u in 0..40 {
        let body: Value = api
            .client
            .get(api.url(&format!(
                "/v1/users/new-user-{u}/recommendations?experiment=bandit"
            )))
            .header("x-api-key", &client_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body["arm"] == "b" {
            in_b += 1;
        }
    }
    assert!(
        in_b >= 28,
        "only {in_b} of 40 new users were served b at weight {b}"
    );

    // History: one row per arm per run, with the posterior; runs at least an interval apart.
    let runs: Vec<(DateTime<Utc>, i64, Option<Value>)> = sqlx::query_as(
        "SELECT computed_at, count(*), (array_agg(posterior))[1] FROM weight_history \
         WHERE experiment_key = 'bandit' AND reason = 'thompson' GROUP BY computed_at ORDER BY computed_at",
    )
    .fetch_all(&stack.pg)
    .await
    .unwrap();
    assert!(runs.len() >= 2, "{runs:?}");
    for (_, rows, posterior) in &runs {
        assert_eq!(*rows, 2);
        let posterior = posterior.as_ref().unwrap();
        // Per-user posteriors: every arm past the burn-in of 100 users.
        assert!(posterior["users"].as_u64().unwrap() >= 100, "{posterior}");
        assert_eq!(posterior["model"], "gaussian_per_user");
        assert!(
            posterior["std_error"].as_f64().unwrap() > 0.0,
            "{posterior}"
        );
        assert!(posterior.get("seed").is_some());
    }
    for pair in runs.windows(2) {
        let gap = (pair[1].0 - pair[0].0).num_milliseconds();
        assert!(gap >= 500, "two reweights {gap} ms apart: the lease failed");
    }
    w1.stop().await;
    w2.stop().await;
}
