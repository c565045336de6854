//! Known traffic for results tests: experiments and events with counts a test can compute by hand.

use chrono::Utc;
use repositories::clickhouse::EventRow;
use uuid::Uuid;

use crate::TestStack;

/// One event row of experiment `experiment`, timestamped now.
pub fn event_row(experiment: &str, kind: &str, user: &str, arm: &str, position: i16) -> EventRow {
    let ts = Utc::now().timestamp() as u32;
    EventRow {
        event_id: Uuid::new_v4(),
        ts,
        kind: kind.to_owned(),
        user_id: user.to_owned(),
        movie_id: if kind == "impression" { 0 } else { 11 },
        experiment_key: experiment.to_owned(),
        arm_key: arm.to_owned(),
        algorithm_key: if arm == "control" {
            "popularity"
        } else {
            "als"
        }
        .to_owned(),
        model_version: String::new(),
        request_id: String::new(),
        position,
        value: if kind == "view" { 30.0 } else { 0.0 },
        item_count: 10,
        batch_id: Uuid::nil(),
        ingested_at: ts,
    }
}

/// A running fixed 50/50 experiment with arms `control` (popularity) and
/// `treatment` (als), started as `POST /v1/experiments/{key}/start` does.
pub async fn create_two_arm_experiment(stack: &TestStack, key: &str) {
    sqlx::query(
        "INSERT INTO experiments (key, status, salt, policy, metric) VALUES ($1, 'draft', $1, 'fixed', 'ctr')",
    )
    .bind(key)
    .execute(&stack.pg)
    .await
    .expect("insert experiment");
    sqlx::query(
        "INSERT INTO arms (experiment_key, arm_key, algorithm_key, weight, is_control, position) VALUES \
         ($1, 'control', 'popularity', 0.5, true, 0), ($1, 'treatment', 'als', 0.5, false, 1)",
    )
    .bind(key)
    .execute(&stack.pg)
    .await
    .expect("insert arms");
    let started = stack
        .stores
        .experiments
        .set_status(key, domain::experiment::ExperimentStatus::Running)
        .await
        .expect("start the experiment");
    assert!(
        matches!(
            started,
            Some(repositories::postgres::experiments::Change::Done(_))
        ),
        "{key} started"
    );
}

/// Control: `control_users` × 5 impressions, the first 20% click once at position 0.
/// Treatment: `treatment_users` × 5 impressions, the first 30% click twice (positions 0 and 2),
/// the first 10 convert, and every treatment user views once (value 30).
pub fn simulated_rows(
    experiment: &str,
    control_users: usize,
    treatment_users: usize,
) -> Vec<EventRow> {
    let mut rows = Vec::new();
    for u in 0..control_users {
        let user = format!("c{u}");
        rows.extend((0..5).map(|_| event_row(experiment, "impression", &user, "control", -1)));
        if u < control_users / 5 {
            rows.push(event_row(experiment, "click", &user, "control", 0));
        }
    }
    for u in 0..treatment_users {
        let user = format!("t{u}");
        rows.extend((0..5).map(|_| event_row(experiment, "impression", &user, "treatment", -1)));
        if u < treatment_users * 3 / 10 {
            rows.push(event_row(experiment, "click", &user, "treatment", 0));
            rows.push(event_row(experiment, "click", &user, "treatment", 2));
        }
        if u < 10 {
            rows.push(event_row(experiment, "conversion", &user, "treatment", -1));
        }
        rows.push(event_row(experiment, "view", &user, "treatment", -1));
    }
    rows
}

/// Movies 1..=`n` in the catalogue (titles and one genre), for serving tests.
pub async fn seed_catalog(stack: &TestStack, n: i64) {
    sqlx::query(
        "INSERT INTO movies (id, title, genres) SELECT i, 'Movie ' || i, ARRAY['Drama'] FROM generate_series(1, $1) i",
    )
    .bind(n)
    .execute(&stack.pg)
    .await
    .expect("seed the catalogue");
}

/// A precomputed list of `movies` for every user in `users` under `algorithm`.
pub async fn put_lists(stack: &TestStack, algorithm: &str, users: &[String], movies: &[i64]) {
    use deadpool_redis::redis;
    use domain::ids::MovieId;
    use domain::recommend::{PrecomputedList, ScoredItem};
    let list = serde_json::to_string(&PrecomputedList {
        model_version: format!("{algorithm}-v1"),
        items: movies
            .iter()
            .enumerate()
            .map(|(i, &m)| ScoredItem {
                movie_id: MovieId::parse(m).expect("movie id"),
                score: 1.0 - i as f32 / 100.0,
            })
            .collect(),
    })
    .expect("list json");
    let mut conn = stack.stores.redis.conn().await.expect("redis");
    let keys = &stack.stores.redis.keys;
    let mut pipe = redis::pipe();
    for user in users {
        pipe.set(keys.recs(algorithm, user), &list);
    }
    let _: () = pipe.query_async(&mut conn).await.expect("put lists");
}
