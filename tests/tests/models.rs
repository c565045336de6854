//! The life of a model against the real stack: seed → train → artifacts in S3
//! → the worker's model loop precomputes lists into Redis → rollback through
//! the api switches them back → a corrupted artifact is refused and the lists
//! stay. Plus `import-movielens` on small files written here.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use domain::recommend::format::{self, ModelManifest};
use domain::recommend::PrecomputedList;
use marquee_tests::worker_harness::{clickhouse_raw_rows, spawn_worker};
use marquee_tests::{eventually, spawn_api, TestStack};
use marquee_worker::models::{ModelLoop, ModelLoopSettings};
use marquee_worker::seed::{self, SeedSize};
use marquee_worker::train::{self, TrainArgs};
use serde_json::Value;

/// Small and quick: the test is about the lifecycle, not the fit.
const ALS_PARAMS: &str = r#"{"factors":8,"iterations":4}"#;
const TOP_N: usize = 20;
const WINDOW_S: u64 = 30 * 86_400;

async fn train_als(stack: &TestStack, activate: bool) -> train::TrainOutcome {
    let mut args = TrainArgs::new("als");
    args.params = Some(ALS_PARAMS.into());
    args.no_activate = !activate;
    train::train(&stack.stores, &args, &|line| eprintln!("train: {line}"))
        .await
        .expect("train als")
}

/// Users the model loop must cover, with the movies their lists must not repeat.
async fn active_users(stack: &TestStack) -> Vec<(String, Vec<i64>)> {
    let newest = stack
        .stores
        .bulk
        .newest_interaction()
        .await
        .unwrap()
        .expect("history exists");
    let since = newest.min(Utc::now()) - chrono::Duration::seconds(WINDOW_S as i64);
    stack
        .stores
        .bulk
        .active_users_with_history(since)
        .await
        .unwrap()
}

async fn list_of(stack: &TestStack, user: &str) -> Option<PrecomputedList> {
    let key = stack.stores.redis.keys.recs("als", user);
    let json = stack.stores.redis.get(&key).await.unwrap()?;
    Some(serde_json::from_str(&json).expect("list is PrecomputedList JSON"))
}

async fn recs_version(stack: &TestStack) -> Option<String> {
    stack.stores.redis.recs_version("als").await.unwrap()
}

/// Wait until the loop reports `version` done, then check every active user's list.
async fn assert_lists_from(stack: &TestStack, version: &str, users: &[(String, Vec<i64>)]) {
    let done = eventually(Duration::from_secs(30), || async {
        recs_version(stack).await.as_deref() == Some(version)
    })
    .await;
    assert!(done, "recs-version:als never became {version}");
    for (user, seen) in users {
        let list = list_of(stack, user)
            .await
            .unwrap_or_else(|| panic!("no list for active user {user}"));
        assert_eq!(list.model_version, version, "list of {user}");
        assert_eq!(list.items.len(), TOP_N, "list of {user}");
        let seen: HashSet<i64> = seen.iter().copied().collect();
        assert!(
            list.items.iter().all(|i| !seen.contains(&i.movie_id.get())),
            "list of {user} repeats a movie they saw"
        );
        assert!(
            list.items.windows(2).all(|w| w[0].score >= w[1].score),
            "list of {user} is best first"
        );
    }
}

async fn activate(api: &marquee_tests::TestApi, version: &str) -> reqwest::Response {
    api.client
        .post(api.url(&format!("/v1/models/als/{version}/activate")))
        .header("x-api-key", &api.admin_key)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trained_models_are_stored_loaded_precomputed_rolled_back_and_checked() {
    let stack = TestStack::fresh().await;

    // Seed, then seed again: the second run writes nothing new anywhere.
    let first = seed::seed(&stack.stores, SeedSize::Small, 7, false)
        .await
        .expect("seed");
    assert_eq!(first.movies, 200);
    assert_eq!(first.users, 500);
    assert_eq!(first.history_written, first.interactions);
    assert_eq!(first.events_written, first.interactions);
    let again = seed::seed(&stack.stores, SeedSize::Small, 7, false)
        .await
        .expect("re-seed");
    assert_eq!(
        (
            again.movies,
            again.users,
            again.history_written,
            again.events_written
        ),
        (0, 0, 0, 0),
        "re-seeding is idempotent"
    );
    let events = clickhouse_raw_rows(&stack).await;
    assert_eq!(
        events, first.interactions,
        "clickhouse holds each event once"
    );

    // Train v1: artifacts in S3 whose checksum the registry and manifest agree on.
    let v1 = train_als(&stack, true).await;
    let bytes = stack.stores.objects.get(&v1.model_key).await.unwrap();
    let manifest: ModelManifest =
        serde_json::from_slice(&stack.stores.objects.get(&v1.manifest_key).await.unwrap()).unwrap();
    assert_eq!(
        v1.model_key,
        format!("models/als/{}/model.bin", manifest.version)
    );
    assert_eq!(format::sha256_hex(&bytes), manifest.sha256);
    assert_eq!(manifest, v1.manifest);
    assert_eq!(manifest.format_version, format::FORMAT_VERSION);
    assert_eq!(manifest.counts.users, 500);
    assert_eq!(manifest.hyperparameters["factors"], 8);
    assert!(manifest.metrics.iter().any(|m| m.k == 10 && m.ndcg > 0.0));
    assert!(manifest.load(&bytes).is_ok());
    let row = stack
        .stores
        .models
        .find_model("als", &manifest.version)
        .await
        .unwrap()
        .expect("registered");
    assert_eq!(row.sha256, manifest.sha256);
    assert!(row.is_active());

    // The worker's model loop loads it and writes every active user's list.
    let worker = spawn_worker(&stack, |c| {
        c.model_poll_s = 1;
        c.model_top_n = TOP_N;
        c.model_active_window_s = WINDOW_S;
    })
    .await;
    let users = active_users(&stack).await;
    assert!(users.len() > 50, "{} active users", users.len());
    assert_lists_from(&stack, &v1.manifest.version, &users).await;

    // A user who has left the active window still has a v1 list.
    let gone = list_of(&stack, &users[0].0).await.expect("a v1 list");
    stack
        .stores
        .redis
        .put_recs_lists(
            "als",
            &[(
                "left-the-window".to_owned(),
                Some(serde_json::to_string(&gone).unwrap()),
            )],
        )
        .await
        .unwrap();

    // A second version replaces them, and deletes the list no user of the
    // window holds; rolling back through the api restores v1's.
    let v2 = train_als(&stack, true).await;
    assert_ne!(v1.manifest.version, v2.manifest.version);
    assert_lists_from(&stack, &v2.manifest.version, &users).await;
    assert!(
        list_of(&stack, "left-the-window").await.is_none(),
        "a v1 list outlived v1"
    );

    let api = spawn_api(&stack, |_| {}).await;
    let listed: Value = api
        .client
        .get(api.url("/v1/models"))
        .header("x-api-key", &api.admin_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let versions = listed["models"].as_array().expect("models array");
    assert_eq!(versions.len(), 2, "{listed}");
    assert_eq!(
        versions[0]["version"],
        v2.manifest.version.as_str(),
        "newest first"
    );
    assert_eq!(versions[0]["active"], true);
    assert_eq!(versions[1]["active"], false);
    assert!(
        versions[1]["metrics"][0]["ndcg"].as_f64().is_some(),
        "{listed}"
    );

    let response = activate(&api, &v1.manifest.version).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["active"], true);
    assert_lists_from(&stack, &v1.manifest.version, &users).await;

    // Only admins; unknown versions are 404 with the JSON error shape.
    let anonymous = api
        .client
        .post(api.url(&format!("/v1/models/als/{}/activate", v2.manifest.version)))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let missing = activate(&api, "19990101T000000000Z").await;
    assert_eq!(missing.status(), 404);
    let error: Value = missing.json().await.unwrap();
    assert_eq!(error["error"]["code"], "not_found");

    // v3 with one flipped byte in model.bin: refused, counted, v1's lists stay.
    let v3 = train_als(&stack, false).await;
    let mut corrupt = stack.stores.objects.get(&v3.model_key).await.unwrap();
    let at = corrupt.len() - 5;
    corrupt[at] ^= 0x40;
    stack
        .stores
        .objects
        .put(&v3.model_key, corrupt, "application/octet-stream")
        .await
        .unwrap();
    assert_eq!(activate(&api, &v3.manifest.version).await.status(), 200);
    let refused = eventually(Duration::from_secs(30), || async {
        // The worker installed the process's metrics recorder (it started first).
        let Ok(response) = reqwest::get(worker.url("/metrics")).await else {
            return false;
        };
        let text = response.text().await.unwrap_or_default();
        text.lines().any(|l| {
            l.starts_with("marquee_worker_model_refused_total")
                && l.contains("algorithm=\"als\"")
                && l.contains("reason=\"checksum\"")
        })
    })
    .await;
    assert!(refused, "the corrupt model is counted as refused");
    // A few more polls: still refused, nothing rewritten.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        recs_version(&stack).await.as_deref(),
        Some(v1.manifest.version.as_str())
    );
    for (user, _) in users.iter().take(50) {
        let list = list_of(&stack, user).await.expect("list stays");
        assert_eq!(list.model_version, v1.manifest.version);
    }

    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn movielens_directories_import_as_views_and_likes() {
    let stack = TestStack::fresh().await;
    let dir = std::env::temp_dir().join(format!("marquee-ml-{}", stack.id));
    let latest = dir.join("ml-latest-small");
    let classic = dir.join("ml-100k");
    std::fs::create_dir_all(&latest).unwrap();
    std::fs::create_dir_all(&classic).unwrap();
    std::fs::write(
        latest.join("movies.csv"),
        "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children\n\
         2,\"American President, The (1995)\",Comedy|Drama\n3,Untitled,(no genres listed)\n",
    )
    .unwrap();
    std::fs::write(
        latest.join("ratings.csv"),
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.5,964982931\n2,1,5.0,964983000\n2,3,1.0,964983100\n",
    )
    .unwrap();
    std::fs::write(
        classic.join("u.item"),
        "10|Richard III (1995)|22-Jan-1996||http://x|0|0|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0|1|0\n",
    )
    .unwrap();
    std::fs::write(
        classic.join("u.data"),
        "7\t10\t4\t881250949\n8\t10\t2\t881250950\n",
    )
    .unwrap();

    let summary = seed::import_movielens(&stack.stores, &latest, false)
        .await
        .expect("import ml-latest-small");
    // 4 ratings → 4 views, 2 of them ≥ 4 → 2 likes.
    assert_eq!(
        (summary.movies, summary.users, summary.interactions),
        (3, 2, 6)
    );
    assert_eq!((summary.history_written, summary.events_written), (6, 6));
    let again = seed::import_movielens(&stack.stores, &latest, false)
        .await
        .expect("re-import");
    assert_eq!((again.history_written, again.events_written), (0, 0));

    let summary = seed::import_movielens(&stack.stores, &classic, false)
        .await
        .expect("import ml-100k");
    assert_eq!(
        (summary.movies, summary.users, summary.interactions),
        (1, 2, 3)
    );

    let pg = &stack.pg;
    let count = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(pg)
            .await
            .unwrap()
    };
    assert_eq!(count("SELECT count(*) FROM views").await, 6);
    assert_eq!(count("SELECT count(*) FROM likes").await, 3);
    assert_eq!(count("SELECT count(*) FROM users").await, 4);
    let genres: Vec<String> = sqlx::query_scalar("SELECT genres FROM movies WHERE id = 2")
        .fetch_one(pg)
        .await
        .map(|g: Vec<String>| g)
        .unwrap();
    assert_eq!(genres, vec!["Comedy", "Drama"]);
    let untitled: Vec<String> = sqlx::query_scalar("SELECT genres FROM movies WHERE id = 3")
        .fetch_one(pg)
        .await
        .unwrap();
    assert!(untitled.is_empty());
    let (title, year): (String, Option<i32>) =
        sqlx::query_as("SELECT title, year FROM movies WHERE id = 10")
            .fetch_one(pg)
            .await
            .unwrap();
    assert_eq!((title.as_str(), year), ("Richard III", Some(1995)));
    let like_ts: i64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM ts)::int8 FROM likes WHERE user_id = 'u7' AND movie_id = 10",
    )
    .fetch_one(pg)
    .await
    .unwrap();
    assert_eq!(like_ts, 881_250_950, "a like follows its view by a second");
    let ch_likes: u64 = stack
        .stores
        .analytics
        .client()
        .query("SELECT count() FROM events WHERE type = 'like'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(ch_likes, 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_at_a_time_precomputes_an_algorithm() {
    let stack = TestStack::fresh().await;
    seed::seed(&stack.stores, SeedSize::Small, 11, false)
        .await
        .expect("seed");
    let v1 = train_als(&stack, true).await;
    let settings = ModelLoopSettings {
        poll: Duration::from_secs(1),
        top_n: TOP_N,
        active_window: Duration::from_secs(WINDOW_S),
    };
    let mut model_loop = ModelLoop::new(stack.stores.clone(), settings);

    // Another worker holds the lease: this one leaves the algorithm alone.
    let held = stack
        .stores
        .models
        .try_take_precompute_lease("als", Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the lease is free at first");
    assert!(
        stack
            .stores
            .models
            .try_take_precompute_lease("als", Duration::from_secs(5))
            .await
            .unwrap()
            .is_none(),
        "a second session cannot take a held lease"
    );
    model_loop.tick().await.unwrap();
    assert_eq!(
        recs_version(&stack).await,
        None,
        "no lists while another worker holds the lease"
    );

    // Released (as when that worker's session ends): the next poll does the work.
    held.release().await;
    model_loop.tick().await.unwrap();
    assert_eq!(
        recs_version(&stack).await.as_deref(),
        Some(v1.manifest.version.as_str())
    );
    let mut listed = 0;
    for (user, _) in active_users(&stack).await.iter().take(20) {
        listed += usize::from(list_of(&stack, user).await.is_some());
    }
    assert!(listed > 0, "the lists are written once the lease is free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn similar_movies_come_from_the_active_models_and_fall_back_to_hot_ones() {
    let stack = TestStack::fresh().await;
    seed::seed(&stack.stores, SeedSize::Small, 13, false)
        .await
        .expect("seed");
    let api = spawn_api(&stack, |_| {}).await;
    let key = stack
        .stores
        .api_keys
        .create(repositories::postgres::api_keys::Role::Client, "similar")
        .await
        .unwrap()
        .1;
    let get = |path: String| {
        let (api, key) = (&api, &key);
        async move {
            let response = api
                .client
                .get(api.url(&path))
                .header("x-api-key", key)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let movie: i64 = sqlx::query_scalar(
        "SELECT movie_id FROM views GROUP BY movie_id ORDER BY count(*) DESC, movie_id LIMIT 1",
    )
    .fetch_one(&stack.pg)
    .await
    .unwrap();

    // No model yet: hot movies, said so.
    let (status, body) = get(format!("/v1/movies/{movie}/similar?limit=5")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["source"], "popular", "{body}");

    let knn = train::train(&stack.stores, &TrainArgs::new("item_knn"), &|line| {
        eprintln!("train: {line}")
    })
    .await
    .expect("train item_knn");
    let als = train_als(&stack, true).await;
    let mut model_loop = ModelLoop::new(
        stack.stores.clone(),
        ModelLoopSettings {
            poll: Duration::from_secs(1),
            top_n: TOP_N,
            active_window: Duration::from_secs(WINDOW_S),
        },
    );
    model_loop.tick().await.unwrap();

    for (algorithm, version) in [
        ("item_knn", knn.manifest.version.as_str()),
        ("als", als.manifest.version.as_str()),
    ] {
        let (status, body) = get(format!(
            "/v1/movies/{movie}/similar?limit=5&algorithm={algorithm}"
        ))
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["source"], "model", "{algorithm}: {body}");
        assert_eq!(body["model_version"], version, "{body}");
        let items = body["items"].as_array().unwrap();
        assert_eq!(items.len(), 5, "{body}");
        assert!(
            items.iter().all(|i| i["movie_id"] != movie),
            "never itself: {body}"
        );
        assert!(items.iter().all(|i| i["title"].is_string()), "{body}");
        let scores: Vec<f64> = items.iter().map(|i| i["score"].as_f64().unwrap()).collect();
        assert!(
            scores.windows(2).all(|w| w[0] >= w[1]),
            "most alike first: {body}"
        );
    }

    // Bad input is a 4xx naming the field; an unknown movie a 404.
    for (path, status, field) in [
        (format!("/v1/movies/{movie}/similar?limit=0"), 400, "limit"),
        (
            format!("/v1/movies/{movie}/similar?limit=101"),
            400,
            "limit",
        ),
        (
            format!("/v1/movies/{movie}/similar?algorithm=popularity"),
            400,
            "algorithm",
        ),
        ("/v1/movies/0/similar".to_owned(), 400, "id"),
        ("/v1/movies/999999999/similar".to_owned(), 404, "id"),
    ] {
        let (got, body) = get(path.clone()).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["error"]["field"], field, "{path}: {body}");
    }
}
