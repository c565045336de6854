//! The admin surface against the real stack: catalog, history, experiments
//! (create, read, list, start, stop, arms, weight history), algorithms, keys,
//! and who may call what.

use std::time::Duration;

use chrono::Utc;
use marquee_tests::{eventually, spawn_api, TestApi, TestStack};
use repositories::postgres::api_keys::Role;
use serde_json::{json, Value};
use uuid::Uuid;

async fn call(
    api: &TestApi,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = api.client.request(method, api.url(path));
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, value)
}

async fn admin(
    api: &TestApi,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    call(api, method, path, Some(&api.admin_key.clone()), body).await
}

fn home_experiment(key: &str) -> Value {
    // The body scripts/demo.sh sends.
    json!({
        "key": key, "description": "Home page row",
        "policy": "thompson", "metric": "ctr", "min_weight": 0.05, "reweight_interval_s": 10,
        "arms": [
            {"key": "popularity", "algorithm": "popularity", "weight": 0.34, "is_control": true},
            {"key": "item_knn", "algorithm": "item_knn", "weight": 0.33, "is_control": false},
            {"key": "als", "algorithm": "als", "weight": 0.33, "is_control": false}
        ]
    })
}

#[tokio::test]
async fn movies_can_be_created_read_upserted_and_paged() {
    let stack = TestStack::fresh().await;
    let api = spawn_api(&stack, |_| {}).await;
    use reqwest::Method;

    let (status, body) = admin(
        &api,
        Method::POST,
        "/v1/movies",
        Some(
            json!({"id": 1, "title": "Toy Story", "year": 1995, "genres": ["Animation", "Comedy"]}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["title"], "Toy Story");
    assert_eq!(body["genres"], json!(["Animation", "Comedy"]));

    let (status, body) = admin(
        &api,
        Method::POST,
        "/v1/movies",
        Some(json!({"id": 1, "title": "Again"})),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["field"], "id");

    let (status, body) = admin(&api, Method::GET, "/v1/movies/1", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["year"], 1995);
    let (status, body) = admin(&api, Method::GET, "/v1/movies/999", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["field"], "id");

    // Bulk: movie 1 is overwritten, 2..=25 are new; sending the same batch
    // again changes nothing.
    let mut movies =
        vec![json!({"id": 1, "title": "Toy Story (1995)", "year": 1995, "genres": ["Animation"]})];
    movies
        .extend((2..=25).map(|id| json!({"id": id, "title": format!("Movie {id}"), "genres": []})));
    let batch = json!({ "movies": movies });
    let (status, body) = admin(&api, Method::POST, "/v1/movies/bulk", Some(batch.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"received": 25, "inserted": 24, "updated": 1, "unchanged": 0})
    );
    let (status, body) = admin(&api, Method::POST, "/v1/movies/bulk", Some(batch)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["unchanged"], 25);
    let (_, body) = admin(&api, Method::GET, "/v1/movies/1", None).await;
    assert_eq!(body["title"], "Toy Story (1995)");

    // Keyset paging visits every movie exactly once, in id order.
    let mut seen = Vec::new();
    let mut path = "/v1/movies?limit=10".to_owned();
    loop {
        let (status, body) = admin(&api, Method::GET, &path, None).await;
        assert_eq!(status, 200, "{body}");
        let items = body["items"].as_array().unwrap();
        assert!(items.len() <= 10);
        seen.extend(items.iter().map(|m| m["id"].as_i64().unwrap()));
        match body["next_after"].as_i64() {
            Some(after) => path = format!("/v1/movies?limit=10&after={after}"),
            None => break,
        }
    }
    assert_eq!(seen, (1..=25).collect::<Vec<i64>>());
}

#[tokio::test]
async fn history_lists_views_and_likes_newest_first_in_pages() {
    let stack = TestStack::fresh().await;
    let api = spawn_api(&stack, |_| {}).await;
    let pg = &stack.pg;
    sqlx::query("INSERT INTO movies (id, title) VALUES (7, 'Seven')")
        .execute(pg)
        .await
        .unwrap();
    let now = Utc::now();
    for minutes in 0..5i64 {
        sqlx::query("INSERT INTO views (event_id, user_id, movie_id, ts, value) VALUES ($1, 'u1', $2, $3, 1.0)")
            .bind(Uuid::new_v4())
            .bind(if minutes == 0 { 7 } else { 100 + minutes })
            .bind(now - chrono::Duration::minutes(minutes * 2))
            .execute(pg)
            .await
            .unwrap();
    }
    sqlx::query("INSERT INTO likes (event_id, user_id, movie_id, ts) VALUES ($1, 'u1', 7, $2)")
        .bind(Uuid::new_v4())
        .bind(now - chrono::Duration::minutes(1))
        .execute(pg)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO likes (event_id, user_id, movie_id, ts) VALUES ($1, 'someone-else', 7, $2)",
    )
    .bind(Uuid::new_v4())
    .bind(now)
    .execute(pg)
    .await
    .unwrap();

    let (status, first) = admin(
        &api,
        reqwest::Method::GET,
        "/v1/users/u1/history?limit=4",
        None,
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let items = first["items"].as_array().unwrap();
    let kinds: Vec<&str> = items.iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["view", "like", "view", "view"]);
    assert_eq!(items[0]["title"], "Seven");
    assert_eq!(items[0]["movie_id"], 7);
    assert!(
        items[2]["title"].is_null(),
        "movie 101 is not in the catalog"
    );
    assert_eq!(first["next_offset"], 4);
    let (_, second) = admin(
        &api,
        reqwest::Method::GET,
        "/v1/users/u1/history?limit=4&offset=4",
        None,
    )
    .await;
    assert_eq!(second["items"].as_array().unwrap().len(), 2);
    assert!(second["next_offset"].is_null());

    let (status, body) = admin(&api, reqwest::Method::GET, "/v1/users/nobody/history", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"], json!([]));
}

#[tokio::test]
async fn experiments_go_from_draft_to_running_to_stopped_with_weight_history() {
    let stack = TestStack::fresh().await;
    let api = spawn_api(&stack, |_| {}).await;
    use reqwest::Method;

    let (status, created) = admin(
        &api,
        Method::POST,
        "/v1/experiments",
        Some(home_experiment("home")),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "draft");
    assert_eq!(created["hash_version"], 2);
    assert_eq!(created["coverage"], 1.0);
    assert!(
        !created["salt"].as_str().unwrap().is_empty(),
        "a salt is generated"
    );
    let arms = created["arms"].as_array().unwrap();
    assert_eq!(arms.len(), 3);
    assert_eq!(arms[0]["key"], "popularity");
    assert_eq!(arms[0]["is_control"], true);

    let (status, body) = admin(
        &api,
        Method::POST,
        "/v1/experiments",
        Some(home_experiment("home")),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["field"], "key");

    // A second experiment with explicit salt, coverage and hash version.
    let mut second = home_experiment("detail");
    second["salt"] = json!("fixed-salt");
    second["coverage"] = json!(0.5);
    second["hash_version"] = json!(1);
    second["policy"] = json!("fixed");
    let (status, body) = admin(&api, Method::POST, "/v1/experiments", Some(second)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["salt"], "fixed-salt");
    assert_eq!(body["hash_version"], 1);

    let (status, got) = admin(&api, Method::GET, "/v1/experiments/home", None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["arms"][1]["key"], "item_knn");
    assert_eq!(got["arms"][1]["weight"], 0.33);

    let (status, list) = admin(&api, Method::GET, "/v1/experiments", None).await;
    assert_eq!(status, 200, "{list}");
    let keys: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 2);
    assert!(keys.contains(&"home") && keys.contains(&"detail"));

    // Arms may change while a draft.
    let new_arms = json!({"arms": [
        {"key": "control", "algorithm": "popularity", "weight": 0.5, "is_control": true},
        {"key": "als", "algorithm": "als", "weight": 0.5}
    ]});
    let (status, body) = admin(
        &api,
        Method::PUT,
        "/v1/experiments/home/arms",
        Some(new_arms.clone()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["arms"].as_array().unwrap().len(), 2);
    assert_eq!(body["arms"][0]["key"], "control");

    // Start: the weights are published for the api replicas and the start
    // is the first row of the weight history.
    let (status, started) = admin(&api, Method::POST, "/v1/experiments/home/start", None).await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["status"], "running");
    assert!(started["started_at"].is_string());
    let published = stack
        .stores
        .redis
        .get(&format!("{}weights:home", stack.settings.redis_namespace))
        .await
        .unwrap();
    let published: Value = serde_json::from_str(&published.expect("weights published")).unwrap();
    assert_eq!(published["reason"], "start");
    assert_eq!(
        published["weights"][0],
        json!({"arm": "control", "weight": 0.5})
    );

    let (status, history) = admin(&api, Method::GET, "/v1/experiments/home/weights", None).await;
    assert_eq!(status, 200, "{history}");
    let snapshots = history["snapshots"].as_array().unwrap();
    assert_eq!(snapshots.len(), 1, "{history}");
    assert_eq!(snapshots[0]["reason"], "start");
    assert_eq!(
        snapshots[0]["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| (w["arm"].as_str().unwrap(), w["weight"].as_f64().unwrap()))
            .collect::<Vec<_>>(),
        [("control", 0.5), ("als", 0.5)]
    );

    // Starting again is a no-op (no second history row).
    let (status, _) = admin(&api, Method::POST, "/v1/experiments/home/start", None).await;
    assert_eq!(status, 200);
    let (_, history) = admin(&api, Method::GET, "/v1/experiments/home/weights", None).await;
    assert_eq!(history["snapshots"].as_array().unwrap().len(), 1);

    // A running experiment's arms are frozen.
    let (status, body) = admin(
        &api,
        Method::PUT,
        "/v1/experiments/home/arms",
        Some(new_arms.clone()),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    assert_eq!(body["error"]["field"], "arms");

    let (status, running) = admin(&api, Method::GET, "/v1/experiments?status=running", None).await;
    assert_eq!(status, 200);
    assert_eq!(running["items"].as_array().unwrap().len(), 1);
    assert_eq!(running["items"][0]["key"], "home");

    let (status, stopped) = admin(&api, Method::POST, "/v1/experiments/home/stop", None).await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["status"], "stopped");
    assert!(stopped["stopped_at"].is_string());

    // Stopped is final.
    let (status, body) = admin(&api, Method::POST, "/v1/experiments/home/start", None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["field"], "status");
    let (status, body) = admin(
        &api,
        Method::PUT,
        "/v1/experiments/home/arms",
        Some(new_arms),
    )
    .await;
    assert_eq!(status, 409, "{body}");

    let (status, body) = admin(&api, Method::POST, "/v1/experiments/nope/start", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["field"], "key");
}

#[tokio::test]
async fn a_start_reaches_a_running_api_through_the_weights_channel() {
    let stack = TestStack::fresh().await;
    let api = spawn_api(&stack, |_| {}).await;
    let mut redis_client = deadpool_redis::redis::Client::open(stack.settings.redis_url.as_str())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    redis_client
        .subscribe(format!("{}weights:changed", stack.settings.redis_namespace))
        .await
        .unwrap();
    let (status, _) = admin(
        &api,
        reqwest::Method::POST,
        "/v1/experiments",
        Some(home_experiment("home")),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = admin(
        &api,
        reqwest::Method::POST,
        "/v1/experiments/home/start",
        None,
    )
    .await;
    assert_eq!(status, 200);
    use futures::StreamExt;
    let mut messages = redis_client.on_message();
    let mut got = Vec::new();
    let all = tokio::time::timeout(Duration::from_secs(5), async {
        while got.len() < 2 {
            let message = messages.next().await.unwrap();
            got.push(message.get_payload::<String>().unwrap());
        }
    })
    .await;
    assert!(all.is_ok(), "messages: {got:?}");
    assert_eq!(
        got,
        ["home", "home"],
        "one message for the create, one for the start"
    );
}

#[tokio::test]
async fn algorithms_are_listed() {
    let stack = TestStack::fresh().await;
    let api = spawn_api(&stack, |_| {}).await;
    let (status, body) = admin(&api, reqwest::Method::GET, "/v1/algorithms", None).await;
    assert_eq!(status, 200, "{body}");
    let keys: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["als", "cold_start", "item_knn", "popularity"]);
}

#[tokio::test]
async fn admin_routes_need_an_admin_key_and_analysts_may_read_experiments() {
    let stack = TestStack::fresh().await;
    let api = spawn_api(&stack, |_| {}).await;
    let (_, client_key) = stack
        .stores
        .api_keys
        .create(Role::Client, "front-end")
        .await
        .unwrap();
    let (_, analyst_key) = stack
        .stores
        .api_keys
        .create(Role::Analyst, "analyst")
        .await
        .unwrap();
    let (status, _) = admin(
        &api,
        reqwest::Method::POST,
        "/v1/experiments",
        Some(home_experiment("home")),
    )
    .await;
    assert_eq!(status, 201);
    use reqwest::Method;

    let admin_only: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::GET, "/v1/movies", None),
        (
            Method::POST,
            "/v1/movies",
            Some(json!({"id": 5, "title": "x"})),
        ),
        (
            Method::POST,
            "/v1/movies/bulk",
            Some(json!({"movies": [{"id": 5, "title": "x"}]})),
        ),
        (Method::GET, "/v1/movies/5", None),
        (Method::GET, "/v1/users/u1/history", None),
        (
            Method::POST,
            "/v1/experiments",
            Some(home_experiment("other")),
        ),
        (Method::POST, "/v1/experiments/home/start", None),
        (Method::POST, "/v1/experiments/home/stop", None),
        (Method::GET, "/v1/experiments/home/weights", None),
        (Method::GET, "/v1/algorithms", None),
        (Method::POST, "/v1/keys", Some(json!({"role": "client"}))),
    ];
    for (method, path, body) in &admin_only {
        let (status, response) = call(&api, method.clone(), path, None, body.clone()).await;
        assert_eq!(status, 401, "{method} {path} without a key: {response}");
        assert_eq!(response["error"]["code"], "unauthorized");
        let (status, response) = call(
            &api,
            method.clone(),
            path,
            Some("mq_admin_not-a-key"),
            body.clone(),
        )
        .await;
        assert_eq!(status, 401, "{method} {path} with a bad key: {response}");
        for key in [&client_key, &analyst_key] {
            let (status, response) =
                call(&api, method.clone(), path, Some(key), body.clone()).await;
            assert_eq!(status, 403, "{method} {path} with {key}: {response}");
            assert_eq!(response["error"]["field"], "x-api-key");
        }
    }

    for path in ["/v1/experiments", "/v1/experiments/home"] {
        let (status, response) = call(&api, Method::GET, path, Some(&client_key), None).await;
        assert_eq!(status, 403, "{path} with a client key: {response}");
        let (status, response) = call(&api, Method::GET, path, Some(&analyst_key), None).await;
        assert_eq!(status, 200, "{path} with an analyst key: {response}");
    }
    // Still a draft: nothing above was allowed to start it.
    let (_, home) = admin(&api, Method::GET, "/v1/experiments/home", None).await;
    assert_eq!(home["status"], "draft");
}

#[tokio::test]
async fn keys_made_over_http_work_until_revoked() {
    let stack = TestStack::fresh().await;
    let api = spawn_api(&stack, |_| {}).await;
    let (status, created) = admin(
        &api,
        reqwest::Method::POST,
        "/v1/keys",
        Some(json!({"role": "analyst", "name": "bob"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &api,
        reqwest::Method::GET,
        "/v1/experiments",
        Some(&key),
        None,
    )
    .await;
    assert_eq!(status, 200);

    let (status, body) = admin(
        &api,
        reqwest::Method::DELETE,
        &format!("/v1/keys/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = admin(
        &api,
        reqwest::Method::DELETE,
        &format!("/v1/keys/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 404, "revoking twice: {body}");
    // The revocation is visible to a fresh process at once (no cached lookup).
    let fresh = spawn_api(&stack, |_| {}).await;
    let (status, _) = call(
        &fresh,
        reqwest::Method::GET,
        "/v1/experiments",
        Some(&key),
        None,
    )
    .await;
    assert_eq!(status, 401);
    // And to the running one once its key cache expires (1 s by default).
    let revoked = eventually(Duration::from_secs(2), || async {
        call(
            &api,
            reqwest::Method::GET,
            "/v1/experiments",
            Some(&key),
            None,
        )
        .await
        .0 == 401
    })
    .await;
    assert!(
        revoked,
        "revoked key still accepted after the cache lifetime"
    );
}

/// The bootstrap admin key is for the first start: once an admin key exists
/// it is refused (within the key-cache lifetime, 1 s), the new key works, and
/// revoking every admin key brings the bootstrap key back for repairs.
#[tokio::test]
async fn the_bootstrap_key_retires_once_an_admin_key_exists() {
    use reqwest::Method;
    let stack = TestStack::fresh().await;
    let api = spawn_api(&stack, |_| {}).await;
    let (status, _) = admin(&api, Method::GET, "/v1/experiments", None).await;
    assert_eq!(status, 200);
    let (status, created) = admin(
        &api,
        Method::POST,
        "/v1/keys",
        Some(json!({"role": "admin", "name": "ops"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    let bootstrap = api.admin_key.clone();
    let retired = eventually(Duration::from_secs(2), || {
        let (api, bootstrap) = (&api, bootstrap.clone());
        async move {
            call(api, Method::GET, "/v1/experiments", Some(&bootstrap), None)
                .await
                .0
                == 401
        }
    })
    .await;
    assert!(retired, "the bootstrap key still works beside an admin key");
    let (status, _) = call(&api, Method::GET, "/v1/experiments", Some(&key), None).await;
    assert_eq!(status, 200);

    let (status, _) = call(
        &api,
        Method::DELETE,
        &format!("/v1/keys/{id}"),
        Some(&key),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let back = eventually(Duration::from_secs(2), || {
        let (api, bootstrap) = (&api, bootstrap.clone());
        async move {
            call(api, Method::GET, "/v1/experiments", Some(&bootstrap), None)
                .await
                .0
                == 200
        }
    })
    .await;
    assert!(
        back,
        "with no admin key left, the bootstrap key must work again"
    );
}

/// A revocation reaches every api replica at once through Redis pub/sub
/// (`keys:revoked`), not when each one's cached lookup expires: here the
/// replicas trust a lookup for a minute, and the key is revoked through the
/// other one.
#[tokio::test]
async fn a_key_revoked_on_one_replica_is_refused_by_another_at_once() {
    use reqwest::Method;
    let stack = TestStack::fresh().await;
    let a = spawn_api(&stack, |c| c.key_cache_ttl_ms = 60_000).await;
    let b = spawn_api(&stack, |c| c.key_cache_ttl_ms = 60_000).await;
    let (status, created) = admin(
        &a,
        Method::POST,
        "/v1/keys",
        Some(json!({"role": "analyst", "name": "leaving"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    // Replica b has looked the key up, and would trust that for a minute.
    let (status, _) = call(&b, Method::GET, "/v1/experiments", Some(&key), None).await;
    assert_eq!(status, 200);
    let (status, _) = admin(&a, Method::DELETE, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(status, 204);
    let (status, _) = call(&a, Method::GET, "/v1/experiments", Some(&key), None).await;
    assert_eq!(
        status, 401,
        "the replica that revoked it must refuse it at once"
    );
    let refused = eventually(Duration::from_secs(1), || {
        let (b, key) = (&b, key.clone());
        async move {
            call(b, Method::GET, "/v1/experiments", Some(&key), None)
                .await
                .0
                == 401
        }
    })
    .await;
    assert!(
        refused,
        "replica b still accepted the revoked key after 1 s"
    );
}
