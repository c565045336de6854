//! The recommendations and events routes against the real stack: lists come
//! from the assigned arm's Redis list minus what the user saw, arms stick
//! across weight changes, impressions and posted events land in Kafka, and a
//! dead Kafka or Redis degrades answers instead of failing them.

use std::collections::HashMap;
use std::time::Duration;

use deadpool_redis::redis;
use domain::ids::MovieId;
use domain::recommend::{PrecomputedList, ScoredItem};
use marquee_tests::cuttable_proxy::CuttableProxy;
use marquee_tests::events_topic::{consumer, partition_of, read_until};
use marquee_tests::fixtures::create_two_arm_experiment;
use marquee_tests::private_redis::{free_port, PrivateRedis};
use marquee_tests::{
    eventually, metric_total, metric_total_in, metrics_page, spawn_api, TestApi, TestStack,
};
use repositories::postgres::api_keys::Role;
use serde_json::{json, Value};
use uuid::Uuid;

const POPULARITY_LIST: [i64; 10] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
const ALS_LIST: [i64; 10] = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20];

async fn seed_catalog(stack: &TestStack) {
    sqlx::query(
        "INSERT INTO movies (id, title, genres) SELECT i, 'Movie ' || i, ARRAY['Drama'] FROM generate_series(1, 40) i",
    )
    .execute(&stack.pg)
    .await
    .unwrap();
}

fn list(version: &str, ids: &[i64]) -> String {
    serde_json::to_string(&PrecomputedList {
        model_version: version.into(),
        items: ids
            .iter()
            .enumerate()
            .map(|(i, &m)| ScoredItem {
                movie_id: MovieId::parse(m).unwrap(),
                score: 1.0 - i as f32 / 100.0,
            })
            .collect(),
    })
    .unwrap()
}

async fn put_lists(stack: &TestStack, users: &[String]) {
    let mut conn = stack.stores.redis.conn().await.unwrap();
    let keys = &stack.stores.redis.keys;
    let mut pipe = redis::pipe();
    for user in users {
        pipe.set(
            keys.recs("popularity", user),
            list("pop-v1", &POPULARITY_LIST),
        );
        pipe.set(keys.recs("als", user), list("als-v1", &ALS_LIST));
    }
    let _: () = pipe.query_async(&mut conn).await.unwrap();
}

async fn record_view(stack: &TestStack, user: &str, movie: i64) {
    sqlx::query("INSERT INTO views (event_id, user_id, movie_id, ts) VALUES ($1, $2, $3, now())")
        .bind(Uuid::new_v4())
        .bind(user)
        .bind(movie)
        .execute(&stack.pg)
        .await
        .unwrap();
}

async fn client_key(stack: &TestStack) -> String {
    stack
        .stores
        .api_keys
        .create(Role::Client, "serving-test")
        .await
        .unwrap()
        .1
}

async fn recommend(api: &TestApi, key: &str, user: &str, query: &str) -> (u16, Value) {
    let response = api
        .client
        .get(api.url(&format!("/v1/users/{user}/recommendations{query}")))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn movie_ids(body: &Value) -> Vec<i64> {
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["movie_id"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_come_from_the_arm_minus_seen_and_impressions_reach_kafka() {
    let stack = TestStack::fresh().await;
    seed_catalog(&stack).await;
    create_two_arm_experiment(&stack, "home").await;
    let users: Vec<String> = (0..20).map(|i| format!("user-{i}")).collect();
    put_lists(&stack, &users).await;
    // Every user has seen the second movie of both lists.
    for user in &users {
        for movie in [2_i64, 12] {
            record_view(&stack, user, movie).await;
        }
    }
    let api = spawn_api(&stack, |_| {}).await;
    let key = client_key(&stack).await;
    let kafka = consumer(&stack);

    let mut by_arm: HashMap<String, usize> = HashMap::new();
    let mut served = HashMap::new();
    for user in &users {
        let (status, body) = recommend(&api, &key, user, "?limit=5&experiment=home").await;
        assert_eq!(status, 200, "{body}");
        let arm = body["arm"].as_str().unwrap().to_owned();
        let (algorithm, expected, version) = if arm == "control" {
            ("popularity", vec![1, 3, 4, 5, 6], "pop-v1")
        } else {
            ("als", vec![11, 13, 14, 15, 16], "als-v1")
        };
        assert_eq!(body["algorithm"], algorithm, "{body}");
        assert_eq!(body["experiment"], "home");
        assert_eq!(movie_ids(&body), expected, "{body}");
        assert_eq!(body["model_version"], version);
        assert_eq!(body["items"][0]["title"], format!("Movie {}", expected[0]));
        assert_eq!(body["items"][0]["position"], 0);
        assert_eq!(body["items"][0]["source"], "model");
        *by_arm.entry(arm).or_default() += 1;
        served.insert(
            body["request_id"].as_str().unwrap().to_owned(),
            (user.clone(), expected),
        );
    }
    assert_eq!(
        by_arm.len(),
        2,
        "20 users at 50/50 land in both arms: {by_arm:?}"
    );

    let messages = read_until(&kafka, |seen| {
        seen.iter().filter(|m| m["type"] == "impression").count() >= served.len()
    })
    .await;
    let impressions: Vec<&Value> = messages
        .iter()
        .filter(|m| m["type"] == "impression")
        .collect();
    assert_eq!(impressions.len(), served.len());
    assert!(
        impressions.iter().any(|i| i["_packed"] == true),
        "the api packs impressions once it knows the partitions"
    );
    for impression in impressions {
        // A pack travels as an LZ4 frame and says so; a lone impression (sent
        // before the partition count was known) is plain JSON.
        let expected_encoding = if impression["_packed"] == true {
            json!("lz4")
        } else {
            Value::Null
        };
        assert_eq!(impression["_encoding"], expected_encoding, "{impression}");
        let (user, expected) = &served[impression["request_id"].as_str().unwrap()];
        assert_eq!(&impression["user_id"], user);
        // Packed or not, an impression shares its user's partition with their clicks.
        assert_eq!(
            impression["_partition"],
            partition_of(&stack, user),
            "{impression}"
        );
        assert_eq!(impression["experiment"], "home");
        let items: Vec<i64> = impression["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["movie_id"].as_i64().unwrap())
            .collect();
        assert_eq!(&items, expected);
        assert_eq!(impression["items"][1]["position"], 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_keeps_their_arm_when_weights_change_and_new_users_follow_them() {
    let stack = TestStack::fresh().await;
    seed_catalog(&stack).await;
    create_two_arm_experiment(&stack, "home").await;
    let api = spawn_api(&stack, |_| {}).await;
    let key = client_key(&stack).await;

    // Find a user the 50/50 split puts in control.
    let mut control_user = None;
    for i in 0..50 {
        let user = format!("early-{i}");
        let (_, body) = recommend(&api, &key, &user, "?experiment=home").await;
        if body["arm"] == "control" {
            control_user = Some(user);
            break;
        }
    }
    let control_user = control_user.expect("someone lands in control at 50/50");
    let recorded = eventually(Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, String>(
            "SELECT arm_key FROM assignments WHERE experiment_key = 'home' AND user_id = $1",
        )
        .bind(&control_user)
        .fetch_optional(&stack.pg)
        .await
        .unwrap()
        .as_deref()
            == Some("control")
    })
    .await;
    assert!(recorded, "the assignment is recorded off the request path");

    // All new traffic to the treatment, announced the way workers announce it.
    sqlx::query("UPDATE arms SET weight = CASE WHEN arm_key = 'control' THEN 0 ELSE 1 END WHERE experiment_key = 'home'")
        .execute(&stack.pg)
        .await
        .unwrap();
    let mut conn = stack.stores.redis.conn().await.unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(stack.stores.redis.keys.weights_channel())
        .arg("home")
        .query_async(&mut conn)
        .await
        .unwrap();

    // A fresh user per probe: a probe served before the reload would stick to its arm.
    let probes = std::sync::atomic::AtomicUsize::new(0);
    let reloaded = eventually(Duration::from_secs(1), || async {
        // Eight new users in a row in the treatment: 1 in 256 under the old 50/50 weights.
        for _ in 0..8 {
            let n = probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let user = format!("probe-{n}");
            if recommend(&api, &key, &user, "?experiment=home").await.1["arm"] != "treatment" {
                return false;
            }
        }
        true
    })
    .await;
    assert!(reloaded, "weights reload within 1 s of the pub/sub message");
    for i in 0..30 {
        let (_, body) = recommend(&api, &key, &format!("late-{i}"), "?experiment=home").await;
        assert_eq!(body["arm"], "treatment", "new users follow the new weights");
    }
    let (_, body) = recommend(&api, &key, &control_user, "?experiment=home").await;
    assert_eq!(body["arm"], "control", "the recorded arm sticks: {body}");
}

/// Users the cache does not hold are read from PostgreSQL in shared
/// statements when their requests come together, and each answer still
/// carries its own user's recorded arm and seen filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uncached_users_share_reads_and_each_gets_their_own_context() {
    let stack = TestStack::fresh().await;
    seed_catalog(&stack).await;
    create_two_arm_experiment(&stack, "home").await;
    let users: Vec<String> = (0..60).map(|i| format!("batched-{i}")).collect();
    put_lists(&stack, &users).await;
    // User i is recorded in control when i is even, else in treatment, and
    // has seen one movie of each list (never the first), which one by i.
    let seen_index = |i: usize| 1 + i % 9;
    for (i, user) in users.iter().enumerate() {
        let arm = if i % 2 == 0 { "control" } else { "treatment" };
        sqlx::query(
            "INSERT INTO assignments (experiment_key, user_id, arm_key) VALUES ('home', $1, $2)",
        )
        .bind(user)
        .bind(arm)
        .execute(&stack.pg)
        .await
        .unwrap();
        for movie in [POPULARITY_LIST[seen_index(i)], ALS_LIST[seen_index(i)]] {
            record_view(&stack, user, movie).await;
        }
    }
    // No user cache, so every request reads; one reader, so reads that
    // arrive while its statement is out queue up for the next one. A read
    // past the serving time limit would degrade its answer: this test is
    // about whose context each answer carries, not about latency.
    let api = spawn_api(&stack, |config| {
        config.user_cache_ttl_ms = 0;
        config.user_context_readers = 1;
        config.serving_timeout_ms = 10_000;
    })
    .await;
    let key = client_key(&stack).await;
    // The key is looked up once here, not by all 60 requests at once.
    assert_eq!(recommend(&api, &key, "warm-up", "").await.0, 200);
    let metrics = api.url("/metrics");
    // Counters are per process and other tests run beside this one, serving
    // one request at a time: only reads that shared a statement widen the
    // gap. Both counters from one page, so no read falls between them.
    let unshared = || async {
        let page = metrics_page(&metrics).await;
        metric_total_in(&page, "marquee_user_context_reads_total")
            - metric_total_in(&page, "marquee_user_context_statements_total")
    };
    let before = unshared().await;

    let answers = futures::future::join_all(
        users
            .iter()
            .map(|user| recommend(&api, &key, user, "?limit=9&experiment=home")),
    )
    .await;
    for (i, (status, body)) in answers.into_iter().enumerate() {
        assert_eq!(status, 200, "{body}");
        let (arm, list) = if i % 2 == 0 {
            ("control", POPULARITY_LIST)
        } else {
            ("treatment", ALS_LIST)
        };
        assert_eq!(body["arm"], arm, "user {i}: {body}");
        let seen = list[seen_index(i)];
        // All nine movies the user has not seen: another user's filter would
        // show wherever their seen movie sits in the list.
        let expected: Vec<i64> = list.into_iter().filter(|&m| m != seen).collect();
        assert_eq!(movie_ids(&body), expected, "user {i}: {body}");
    }
    assert!(
        unshared().await > before,
        "60 concurrent reads on one reader share statements"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_events_reach_kafka_and_invalid_ones_are_reported_by_index() {
    let stack = TestStack::fresh().await;
    let api = spawn_api(&stack, |_| {}).await;
    let key = client_key(&stack).await;
    let kafka = consumer(&stack);
    let good = [Uuid::new_v4(), Uuid::new_v4()];
    let response = api
        .client
        .post(api.url("/v1/events"))
        .header("x-api-key", &key)
        .json(&json!({"events": [
            {"event_id": good[0], "type": "click", "user_id": "u1", "movie_id": 3, "request_id": Uuid::new_v4()},
            {"event_id": "nope", "type": "click", "user_id": "u1", "movie_id": 3},
            {"event_id": good[1], "type": "conversion", "user_id": "u2", "value": 9.99},
            {"event_id": Uuid::new_v4(), "type": "like", "user_id": "u1"},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["accepted"], 2, "{body}");
    assert_eq!(body["rejected"], 2);
    assert_eq!(body["errors"][0]["index"], 1);
    assert_eq!(body["errors"][0]["field"], "event_id");
    assert_eq!(body["errors"][1]["index"], 3);
    assert_eq!(body["errors"][1]["field"], "movie_id");

    let messages = read_until(&kafka, |seen| seen.len() >= 2).await;
    for message in &messages {
        // librdkafka's partitioner and `partition_for` agree, so packed
        // impressions land where the user's posted events do.
        let user = message["user_id"].as_str().unwrap();
        assert_eq!(
            message["_partition"],
            partition_of(&stack, user),
            "{message}"
        );
    }
    let mut ids: Vec<String> = messages
        .iter()
        .map(|m| m["event_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut expected: Vec<String> = good.iter().map(Uuid::to_string).collect();
    expected.sort();
    assert_eq!(
        ids, expected,
        "exactly the valid events, with the client's own ids"
    );
    assert_eq!(
        body["statuses"],
        json!(["accepted", "invalid", "accepted", "invalid"]),
        "{body}"
    );

    // The same event again (a retry) is a duplicate, in Kafka again and
    // counted once by the worker; another event under its id is a conflict,
    // refused by name and never produced.
    let marker = Uuid::new_v4();
    let response = api
        .client
        .post(api.url("/v1/events"))
        .header("x-api-key", &key)
        .json(&json!({"events": [
            {"event_id": good[1], "type": "conversion", "user_id": "u2", "value": 9.99},
            {"event_id": good[1], "type": "conversion", "user_id": "u2", "value": 19.99},
            {"event_id": marker, "type": "view", "user_id": "u3", "movie_id": 4},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["statuses"],
        json!(["duplicate", "conflict", "accepted"]),
        "{body}"
    );
    assert_eq!(
        (body["accepted"].as_u64(), body["duplicates"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(body["errors"][0]["index"], 1);
    assert_eq!(body["errors"][0]["field"], "event_id");
    let again = read_until(&kafka, |seen| {
        seen.iter()
            .any(|m| m["event_id"] == json!(marker.to_string()))
    })
    .await;
    let values: Vec<f64> = again
        .iter()
        .filter(|m| m["event_id"] == json!(good[1].to_string()))
        .map(|m| m["value"].as_f64().unwrap())
        .collect();
    assert_eq!(
        values,
        vec![9.99],
        "the retry is produced, the conflict is not"
    );

    // A batch with no valid event is a 400 that still lists every reason.
    let response = api
        .client
        .post(api.url("/v1/events"))
        .header("x-api-key", &key)
        .json(&json!({"events": [{"type": "click"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["field"], "events[0].event_id", "{body}");
    assert_eq!(body["errors"][0]["field"], "event_id");
}

async fn dropped_impressions(api: &TestApi) -> f64 {
    metric_total(&api.url("/metrics"), "marquee_impressions_dropped_total").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_kafka_down_recommendations_still_answer_and_drops_are_counted() {
    let stack = TestStack::fresh().await;
    seed_catalog(&stack).await;
    create_two_arm_experiment(&stack, "home").await;
    put_lists(&stack, &["k-user".to_owned()]).await;
    let dead = free_port();
    let api = spawn_api(&stack, |config| {
        config.stack.kafka_brokers = format!("127.0.0.1:{dead}");
        config.stack.store_timeout_ms = 500;
        // A queue of one: the second impression already finds it full.
        config.impression_queue = 1;
    })
    .await;
    let key = client_key(&stack).await;
    let before = dropped_impressions(&api).await;
    for _ in 0..5 {
        let (status, body) = recommend(&api, &key, "k-user", "?experiment=home").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(movie_ids(&body).len(), 10);
    }
    let counted = eventually(Duration::from_secs(10), || async {
        dropped_impressions(&api).await > before
    })
    .await;
    assert!(counted, "dropped impressions are counted in /metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_recommendations_fall_back_to_popular_from_postgres() {
    let stack = TestStack::fresh().await;
    seed_catalog(&stack).await;
    create_two_arm_experiment(&stack, "home").await;
    // Movie 33 is the most viewed, then 34.
    for (movie, views) in [(33_i64, 3), (34, 2)] {
        for _ in 0..views {
            sqlx::query("INSERT INTO views (event_id, user_id, movie_id, ts) VALUES ($1, 'someone', $2, now())")
                .bind(Uuid::new_v4())
                .bind(movie)
                .execute(&stack.pg)
                .await
                .unwrap();
        }
    }
    let port = free_port();
    let mut redis = PrivateRedis::start(
        port,
        std::env::temp_dir().join(format!("marquee-redis-{}", stack.id)),
    );
    let api = spawn_api(&stack, |config| {
        config.stack.redis_url = format!("redis://127.0.0.1:{port}");
    })
    .await;
    let key = client_key(&stack).await;
    let up = eventually(Duration::from_secs(10), || async {
        recommend(&api, &key, "r-user", "?experiment=home").await.0 == 200
    })
    .await;
    assert!(up);

    redis.stop();
    let (status, body) = recommend(&api, &key, "r-user", "?limit=3&experiment=home").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(movie_ids(&body)[..2], [33, 34], "{body}");
    assert_eq!(body["items"][0]["source"], "popular");

    // Redis back (empty, as after a flush) with a list for the user: served
    // again without restarting the api.
    redis.restart();
    let arm = body["arm"].as_str().unwrap().to_owned();
    let algorithm = if arm == "control" {
        "popularity"
    } else {
        "als"
    };
    let key_name = stack.stores.redis.keys.recs(algorithm, "r-user");
    let back = eventually(Duration::from_secs(15), || async {
        let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
            return false;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return false;
        };
        let stored: redis::RedisResult<()> = redis::cmd("SET")
            .arg(&key_name)
            .arg(list("v2", &ALS_LIST))
            .query_async(&mut conn)
            .await;
        stored.is_ok()
            && recommend(&api, &key, "r-user", "?limit=3&experiment=home")
                .await
                .1["items"][0]["source"]
                == "model"
    })
    .await;
    assert!(back, "lists are served again once Redis is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_unreachable_recommendations_still_come_from_redis() {
    let stack = TestStack::fresh().await;
    put_lists(&stack, &["p-user".to_owned()]).await;
    let dead = free_port();
    let api = spawn_api(&stack, |config| {
        config.stack.database_url = format!("postgres://marquee:marquee@127.0.0.1:{dead}/marquee");
        config.stack.store_timeout_ms = 500;
    })
    .await;
    // No experiment can be loaded, so the default algorithm's list is served,
    // unfiltered (no history either), and nothing fails.
    let (status, body) = recommend(&api, &api.admin_key, "p-user", "?limit=4").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["algorithm"], "popularity");
    assert_eq!(movie_ids(&body), POPULARITY_LIST[..4].to_vec(), "{body}");
    assert_eq!(body["items"][0]["source"], "model");
    // A key that needs PostgreSQL to be checked, and was never seen, is a 503, not a 500.
    let (status, body) = recommend(&api, "mq_client_never_seen", "p-user", "").await;
    assert_eq!(status, 503, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_gone_a_key_seen_valid_before_keeps_working() {
    let stack = TestStack::fresh().await;
    put_lists(&stack, &["s-user".to_owned()]).await;
    let key = client_key(&stack).await;
    // postgres://user:password@host:port/database → the same through the proxy.
    let url = &stack.settings.database_url;
    let (credentials, rest) = url.split_once('@').unwrap();
    let (address, database) = rest.split_once('/').unwrap();
    let proxy = CuttableProxy::start(address.to_owned()).await;
    let api = spawn_api(&stack, |config| {
        config.stack.database_url = format!("{credentials}@127.0.0.1:{}/{database}", proxy.port);
        config.stack.store_timeout_ms = 500;
        config.key_cache_ttl_ms = 300;
    })
    .await;
    let (status, body) = recommend(&api, &key, "s-user", "?limit=3").await;
    assert_eq!(status, 200, "looked up through the proxy: {body}");

    proxy.cut();
    // Past the cache lifetime the key must be asked for again, and cannot be.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, body) = recommend(&api, &key, "s-user", "?limit=3").await;
    assert_eq!(status, 200, "a key seen valid keeps working: {body}");
    assert_eq!(movie_ids(&body), POPULARITY_LIST[..3].to_vec(), "{body}");
    let (status, body) = recommend(&api, "mq_client_never_seen", "s-user", "").await;
    assert_eq!(status, 503, "an unknown key cannot be checked: {body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
}

/// Overwrite `user`'s popularity list in Redis directly, as the model loop's
/// writes do, without marking a new version.
async fn rewrite_popularity_list(stack: &TestStack, user: &str, version: &str, movies: &[i64]) {
    let mut conn = stack.stores.redis.conn().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(stack.stores.redis.keys.recs("popularity", user))
        .arg(list(version, movies))
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_list_is_served_once_the_list_cache_lifetime_has_passed() {
    let stack = TestStack::fresh().await;
    seed_catalog(&stack).await;
    put_lists(&stack, &["c-user".to_owned()]).await;
    let api = spawn_api(&stack, |config| config.list_cache_ttl_ms = 3_000).await;
    let key = client_key(&stack).await;
    let (status, body) = recommend(&api, &key, "c-user", "?limit=3").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(movie_ids(&body), POPULARITY_LIST[..3].to_vec(), "{body}");

    // The model loop rewrites the list (a new version).
    rewrite_popularity_list(&stack, "c-user", "pop-v2", &[31, 32, 33]).await;
    let (_, body) = recommend(&api, &key, "c-user", "?limit=3").await;
    assert_eq!(
        body["model_version"], "pop-v1",
        "within its lifetime the remembered list serves: {body}"
    );
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    let (_, body) = recommend(&api, &key, "c-user", "?limit=3").await;
    assert_eq!(body["model_version"], "pop-v2", "{body}");
    assert_eq!(movie_ids(&body), vec![31, 32, 33], "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_the_model_loop_rewrites_are_served_at_once_despite_the_list_cache() {
    let stack = TestStack::fresh().await;
    seed_catalog(&stack).await;
    put_lists(&stack, &["r-user".to_owned()]).await;
    let api = spawn_api(&stack, |config| config.list_cache_ttl_ms = 600_000).await;
    let key = client_key(&stack).await;
    let (status, body) = recommend(&api, &key, "r-user", "?limit=3").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_version"], "pop-v1", "{body}");

    // As the model loop does: rewrite the lists, then mark the version done,
    // which publishes the algorithm on `lists:changed`.
    rewrite_popularity_list(&stack, "r-user", "pop-v2", &[31, 32, 33]).await;
    stack
        .stores
        .redis
        .set_recs_version("popularity", "pop-v2")
        .await
        .unwrap();
    let served_new = eventually(Duration::from_secs(1), || async {
        let (_, body) = recommend(&api, &key, "r-user", "?limit=3").await;
        body["model_version"] == "pop-v2" && movie_ids(&body) == vec![31, 32, 33]
    })
    .await;
    assert!(
        served_new,
        "the new list serves within a second, long before the 10-minute list cache lifetime"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dislike_takes_the_movie_out_of_the_next_list_at_once_and_for_good() {
    let stack = TestStack::fresh().await;
    seed_catalog(&stack).await;
    create_two_arm_experiment(&stack, "home").await;
    let users: Vec<String> = (0..4).map(|i| format!("fan-{i}")).collect();
    put_lists(&stack, &users).await;
    let api = spawn_api(&stack, |_| {}).await;
    let key = client_key(&stack).await;
    let worker = marquee_tests::worker_harness::spawn_worker(&stack, |_| {}).await;

    let user = &users[0];
    let (_, before) = recommend(&api, &key, user, "?limit=5&experiment=home").await;
    let first = movie_ids(&before);
    let (disliked, not_interested) = (first[0], first[1]);
    let response = api
        .client
        .post(api.url("/v1/events"))
        .header("x-api-key", &key)
        .json(&json!({"events": [
            {"event_id": Uuid::new_v4(), "type": "dislike", "user_id": user, "movie_id": disliked,
             "request_id": before["request_id"]},
            {"event_id": Uuid::new_v4(), "type": "not_interested", "user_id": user, "movie_id": not_interested,
             "request_id": before["request_id"]},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);

    // This replica: at once, though its context for the user was cached.
    let (_, after) = recommend(&api, &key, user, "?limit=5&experiment=home").await;
    let now = movie_ids(&after);
    assert!(
        !now.contains(&disliked) && !now.contains(&not_interested),
        "{before} then {after}"
    );
    assert_eq!(now.len(), 5, "the list is refilled: {after}");

    // Every replica once the worker has stored them: a fresh api, no cache.
    let stored = marquee_tests::eventually(Duration::from_secs(30), || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM negative_feedback WHERE user_id = $1")
                .bind(user)
                .fetch_one(&stack.pg)
                .await
                .unwrap();
        n == 2
    })
    .await;
    assert!(stored, "the worker stores negative feedback in PostgreSQL");
    let other = spawn_api(&stack, |_| {}).await;
    let (_, elsewhere) = recommend(&other, &key, user, "?limit=5&experiment=home").await;
    let ids = movie_ids(&elsewhere);
    assert!(
        !ids.contains(&disliked) && !ids.contains(&not_interested),
        "{elsewhere}"
    );
    // Other users are unaffected.
    let (_, other_user) = recommend(&api, &key, &users[1], "?limit=5&experiment=home").await;
    assert_eq!(movie_ids(&other_user).len(), 5);

    // Counted per arm (they named the served list) in the results.
    let arm = before["arm"].as_str().unwrap().to_owned();
    let counted = marquee_tests::eventually(Duration::from_secs(30), || async {
        let report: Value = api
            .client
            .get(api.url("/v1/experiments/home/results"))
            .header("x-api-key", &api.admin_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        report["report"]["arms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["arm"] == arm && a["dislikes"] == 1 && a["not_interested"] == 1)
    })
    .await;
    assert!(counted, "the results count the arm's negative feedback");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_filter_by_genre_and_year_page_and_exclude() {
    let stack = TestStack::fresh().await;
    seed_catalog(&stack).await;
    // Odd movies are crime, even ones comedy; movie m is from 1980 + m.
    sqlx::query(
        "UPDATE movies SET genres = CASE WHEN id % 2 = 1 THEN ARRAY['Crime'] ELSE ARRAY['Comedy'] END, \
                           year = 1980 + id",
    )
    .execute(&stack.pg)
    .await
    .unwrap();
    create_two_arm_experiment(&stack, "home").await;
    let users = vec!["filtered".to_owned()];
    put_lists(&stack, &users).await;
    let api = spawn_api(&stack, |_| {}).await;
    let key = client_key(&stack).await;
    let ask = |query: String| {
        let (api, key) = (&api, &key);
        async move { recommend(api, key, "filtered", &format!("?experiment=home&{query}")).await }
    };

    let (status, crime) = ask("limit=5&genre=crime".into()).await;
    assert_eq!(status, 200, "{crime}");
    let ids = movie_ids(&crime);
    assert_eq!(ids.len(), 5, "{crime}");
    assert!(ids.iter().all(|m| m % 2 == 1), "crime only: {crime}");
    let (_, nineties) = ask("limit=10&year_from=1990&year_to=1995".into()).await;
    let ids = movie_ids(&nineties);
    assert!(
        !ids.is_empty() && ids.iter().all(|m| (10..=15).contains(m)),
        "{nineties}"
    );

    let (_, whole) = ask("limit=8".into()).await;
    let (_, page) = ask("limit=4&offset=4".into()).await;
    assert_eq!(
        movie_ids(&page),
        movie_ids(&whole)[4..].to_vec(),
        "{whole} / {page}"
    );
    let first = movie_ids(&whole)[0];
    let second = movie_ids(&whole)[1];
    let (_, without) = ask(format!("limit=8&exclude={first},{second}")).await;
    let ids = movie_ids(&without);
    assert!(
        !ids.contains(&first) && !ids.contains(&second) && ids.len() == 8,
        "{without}"
    );

    for (query, field) in [
        ("genre=western", "genre"),
        ("year_from=1700", "year_from"),
        ("year_from=2000&year_to=1990", "year_from"),
        ("offset=501", "offset"),
        ("exclude=1,abc", "exclude"),
    ] {
        let (status, body) = ask(query.to_owned()).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
}
