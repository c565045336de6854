//! Round trips through each adapter against the real servers of the local stack.

use std::time::Duration;

use chrono::Utc;
use marquee_tests::TestStack;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use repositories::clickhouse::EventRow;
use repositories::kafka;
use repositories::stores::Stores;
use uuid::Uuid;

#[tokio::test]
async fn postgres_insert_then_select() {
    let stack = TestStack::fresh().await;
    sqlx::query("INSERT INTO movies (id, title, year, genres) VALUES ($1, $2, $3, $4)")
        .bind(42_i64)
        .bind("The Answer")
        .bind(1979)
        .bind(vec!["Sci-Fi".to_owned()])
        .execute(&stack.pg)
        .await
        .unwrap();
    let (title, genres): (String, Vec<String>) =
        sqlx::query_as("SELECT title, genres FROM movies WHERE id = 42")
            .fetch_one(&stack.pg)
            .await
            .unwrap();
    assert_eq!(title, "The Answer");
    assert_eq!(genres, vec!["Sci-Fi"]);
}

#[tokio::test]
async fn redis_set_then_get() {
    let stack = TestStack::fresh().await;
    let redis = &stack.stores.redis;
    let key = redis.keys.weights("exp");
    redis.set(&key, r#"{"a":0.5}"#, Some(60)).await.unwrap();
    assert_eq!(
        redis.get(&key).await.unwrap().as_deref(),
        Some(r#"{"a":0.5}"#)
    );
    assert_eq!(redis.get(&redis.keys.weights("other")).await.unwrap(), None);
}

#[tokio::test]
async fn kafka_produce_then_consume_in_a_group_with_manual_commit() {
    let stack = TestStack::fresh().await;
    let settings = stack.settings.kafka();
    let producer = kafka::producer(&settings, 0).unwrap();
    for i in 0..10 {
        let payload = format!("message-{i}");
        producer
            .send(
                FutureRecord::to(&settings.events_topic)
                    .key("user-1")
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let group = format!("group-{}", stack.id);
    let read = |n: usize| {
        let settings = settings.clone();
        let group = group.clone();
        async move {
            let consumer = kafka::consumer(&settings, &group).unwrap();
            consumer.subscribe(&[&settings.events_topic]).unwrap();
            let mut seen = Vec::new();
            while seen.len() < n {
                let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
                    .await
                    .expect("a message within 30 s")
                    .unwrap();
                seen.push(String::from_utf8(message.payload().unwrap().to_vec()).unwrap());
                consumer.store_offset_from_message(&message).unwrap();
            }
            consumer.commit_consumer_state(CommitMode::Sync).unwrap();
            seen
        }
    };
    let first = read(4).await;
    assert_eq!(
        first,
        (0..4).map(|i| format!("message-{i}")).collect::<Vec<_>>()
    );
    // A new member of the same group resumes after the committed offset.
    let rest = read(6).await;
    assert_eq!(
        rest,
        (4..10).map(|i| format!("message-{i}")).collect::<Vec<_>>()
    );
}

fn event(kind: &str, user: &str, arm: &str, ts: u32) -> EventRow {
    EventRow {
        event_id: Uuid::new_v4(),
        ts,
        kind: kind.to_owned(),
        user_id: user.to_owned(),
        movie_id: 7,
        experiment_key: "home".to_owned(),
        arm_key: arm.to_owned(),
        algorithm_key: "als".to_owned(),
        model_version: String::new(),
        request_id: String::new(),
        position: if kind == "click" { 1 } else { -1 },
        value: 0.0,
        item_count: 0,
        batch_id: Uuid::nil(),
        ingested_at: ts,
    }
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct ArmTotals {
    arm_key: String,
    impressions: u64,
    clicks: u64,
    users: u64,
    clicking_users: u64,
}

#[tokio::test]
async fn clickhouse_batch_insert_then_aggregate_through_the_materialized_view() {
    let stack = TestStack::fresh().await;
    let ts = Utc::now().timestamp() as u32;
    let mut rows = Vec::new();
    for u in 0..100 {
        let arm = if u % 2 == 0 { "a" } else { "b" };
        let user = format!("u{u}");
        rows.push(event("impression", &user, arm, ts));
        rows.push(event("impression", &user, arm, ts));
        if u % 4 == 0 {
            rows.push(event("click", &user, arm, ts));
        }
    }
    stack.stores.analytics.insert_events(&rows).await.unwrap();
    let totals: Vec<ArmTotals> = stack
        .stores
        .analytics
        .client()
        .query(
            "SELECT arm_key, sumMerge(impressions) AS impressions, sumMerge(clicks) AS clicks, \
             uniqExactMerge(users) AS users, uniqExactIfMerge(clicking_users) AS clicking_users \
             FROM arm_daily WHERE experiment_key = 'home' GROUP BY arm_key ORDER BY arm_key",
        )
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(totals.len(), 2);
    let a = &totals[0];
    assert_eq!(a.arm_key, "a");
    assert_eq!(
        (a.impressions, a.clicks, a.users, a.clicking_users),
        (100, 25, 50, 25)
    );
    let b = &totals[1];
    assert_eq!(b.arm_key, "b");
    assert_eq!(
        (b.impressions, b.clicks, b.users, b.clicking_users),
        (100, 0, 50, 0)
    );
    let raw: u64 = stack
        .stores
        .analytics
        .client()
        .query("SELECT count() FROM events FINAL")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(raw, 225);
}

#[tokio::test]
async fn s3_put_get_list_delete() {
    let stack = TestStack::fresh().await;
    let objects = &stack.stores.objects;
    let binary = "application/octet-stream";
    objects
        .put("models/als/v1/model.bin", vec![1, 2, 3], binary)
        .await
        .unwrap();
    objects
        .put(
            "models/als/v1/manifest.json",
            b"{}".to_vec(),
            "application/json",
        )
        .await
        .unwrap();
    objects
        .put("models/knn/v1/model.bin", vec![9], binary)
        .await
        .unwrap();
    assert_eq!(
        objects.get("models/als/v1/model.bin").await.unwrap(),
        vec![1, 2, 3]
    );
    let mut keys = objects.list("models/als/").await.unwrap();
    keys.sort();
    assert_eq!(
        keys,
        vec!["models/als/v1/manifest.json", "models/als/v1/model.bin"]
    );
    objects.delete("models/als/v1/model.bin").await.unwrap();
    assert!(matches!(
        objects.get("models/als/v1/model.bin").await,
        Err(repositories::RepoError::NotFound(_))
    ));
    assert_eq!(
        objects.list("models/als/").await.unwrap(),
        vec!["models/als/v1/manifest.json"]
    );
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct CohortSums {
    rows: u64,
    impressions: u64,
    clicks: u64,
}

/// Migration 7 copies the events stored before it into `arm_user_cohort`
/// exactly once, although the api and the worker both migrate at start-up:
/// here two processes migrate at the same moment. Events after it arrive
/// through the view, once. Sums are read without FINAL, so a second copy
/// in any part would show.
#[tokio::test]
async fn the_cohort_table_backfills_earlier_events_once_under_concurrent_migrations() {
    let stack = TestStack::fresh().await;
    let mut settings = stack.settings.clone();
    settings.clickhouse_database = format!("{}_late", settings.clickhouse_database);
    repositories::clickhouse::migrate_through(&settings.clickhouse(), 6)
        .await
        .unwrap();
    let first = Stores::open(&settings).unwrap();
    let second = Stores::open(&settings).unwrap();
    let before = Utc::now().timestamp() as u32;
    let mut rows = Vec::new();
    for u in 0..30 {
        let user = format!("u{u}");
        for _ in 0..3 {
            rows.push(event("impression", &user, "a", before));
        }
        rows.push(event("click", &user, "a", before));
    }
    first.analytics.insert_events(&rows).await.unwrap();

    let (a, b) = tokio::join!(first.migrate(), second.migrate());
    a.unwrap();
    b.unwrap();
    let after = Utc::now().timestamp() as u32;
    let later: Vec<EventRow> = (0..30)
        .map(|u| event("impression", &format!("u{u}"), "a", after))
        .collect();
    first.analytics.insert_events(&later).await.unwrap();

    let sums = |filter: &'static str| {
        let client = first.analytics.client().clone();
        async move {
            client
                .query(&format!(
                    "SELECT count() AS rows, sum(impressions) AS impressions, sum(clicks) AS clicks \
                     FROM arm_user_cohort WHERE {filter}"
                ))
                .fetch_one::<CohortSums>()
                .await
                .unwrap()
        }
    };
    let home = sums("experiment_key = 'home'").await;
    assert_eq!((home.impressions, home.clicks), (30 * 3 + 30, 30));
    let sentinel = sums("user_id = 'backfill:0007'").await;
    assert_eq!(sentinel.rows, 1, "the backfill ran more than once");
    let users: u64 = first
        .analytics
        .client()
        // A summed column must be read: 18.16's FINAL over the key columns
        // alone (a bare count(), or uniqExact(user_id)) answers 0 here.
        .query(
            "SELECT sum(impressions >= 0) FROM arm_user_cohort FINAL WHERE experiment_key = 'home'",
        )
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(users, 30);
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let stack = TestStack::fresh().await;
    stack.stores.migrate().await.unwrap();
    stack.stores.migrate().await.unwrap();
}

/// One statement answers several users' contexts, each in the place it was
/// asked for: a user asked twice gets two answers, an unknown one an empty one.
#[tokio::test]
async fn postgres_user_contexts_answer_each_user_in_order() {
    use domain::ids::{ExperimentKey, MovieId, UserId};
    use repositories::postgres::serving::PgServing;

    let stack = TestStack::fresh().await;
    let pg = &stack.pg;
    sqlx::query(
        "INSERT INTO experiments (key, status, salt, policy, metric) VALUES ('home', 'running', 'home', 'fixed', 'ctr')",
    )
    .execute(pg)
    .await
    .unwrap();
    sqlx::query("INSERT INTO arms (experiment_key, arm_key, algorithm_key, weight, is_control, position) VALUES ('home', 'control', 'popularity', 1, true, 0)")
        .execute(pg)
        .await
        .unwrap();
    sqlx::query("INSERT INTO assignments (experiment_key, user_id, arm_key) VALUES ('home', 'ann', 'control')")
        .execute(pg)
        .await
        .unwrap();
    for (table, user, movie) in [
        ("views", "ann", 1_i64),
        ("likes", "ann", 2),
        ("views", "ann", 1),
        ("views", "bob", 3),
    ] {
        sqlx::query(&format!(
            "INSERT INTO {table} (event_id, user_id, movie_id, ts) VALUES ($1, $2, $3, now())"
        ))
        .bind(Uuid::new_v4())
        .bind(user)
        .bind(movie)
        .execute(pg)
        .await
        .unwrap();
    }
    let serving = PgServing::new(pg.clone(), Duration::from_secs(5));
    let home = ExperimentKey::parse("home").unwrap();
    let users: Vec<UserId> = ["ann", "nobody", "bob", "ann"]
        .into_iter()
        .map(|u| UserId::parse(u).unwrap())
        .collect();

    let contexts = serving.user_contexts(Some(&home), &users).await.unwrap();

    let summary: Vec<(Option<String>, Vec<i64>)> = contexts
        .iter()
        .map(|c| {
            let mut seen: Vec<i64> = c.seen.iter().map(|m| m.get()).collect();
            seen.sort_unstable();
            (c.sticky_arm.as_ref().map(|a| a.as_str().to_owned()), seen)
        })
        .collect();
    let ann = (Some("control".to_owned()), vec![1, 2]);
    assert_eq!(
        summary,
        vec![ann.clone(), (None, vec![]), (None, vec![3]), ann]
    );
    let without_experiment = serving
        .user_contexts(None, &[UserId::parse("ann").unwrap()])
        .await
        .unwrap();
    assert_eq!(without_experiment.len(), 1);
    assert!(
        without_experiment[0].sticky_arm.is_none(),
        "no experiment, no arm"
    );
    assert!(without_experiment[0]
        .seen
        .contains(&MovieId::parse(2).unwrap()));
}

/// An event attributed to two experiments is two rows in `events` (one per
/// experiment, for the per-arm counts) but one interaction of its movie.
#[tokio::test]
async fn an_event_attributed_to_two_experiments_counts_once_for_its_movie() {
    use domain::events::{Attribution, EventKind};
    use domain::ids::{AlgorithmKey, ArmKey, ExperimentKey};
    use domain::ports::pipeline::{BatchId, EventStore, StoredEvent};
    use marquee_tests::worker_harness::{action, clickhouse_raw_rows};

    let stack = TestStack::fresh().await;
    let attributed = |experiment: &str| Attribution {
        experiment: ExperimentKey::parse(experiment).unwrap(),
        arm: ArmKey::parse("a").unwrap(),
        algorithm: AlgorithmKey::parse("als").unwrap(),
        position: None,
    };
    let mut click = StoredEvent::new(action(EventKind::Click, "u1", Some(7), None));
    click.attributions = vec![attributed("home"), attributed("search")];
    let view = StoredEvent::new(action(EventKind::View, "u2", Some(7), None));
    stack
        .stores
        .analytics
        .insert_batch(BatchId::new_random(), &[click, view])
        .await
        .unwrap();

    assert_eq!(
        clickhouse_raw_rows(&stack).await,
        3,
        "the click is one row per experiment"
    );
    let hot = stack.stores.analytics.hot_movies(3_600, 10).await.unwrap();
    assert_eq!(hot, vec![(7, 2.0)], "one click and one view of movie 7");
    let (clicks, views): (u64, u64) = stack
        .stores
        .analytics
        .client()
        .query("SELECT sum(clicks), sum(views) FROM movie_hourly WHERE movie_id = 7")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!((clicks, views), (1, 1));
}
