//! Results of a simulated experiment with known counts: the JSON matches the
//! hand-computed numbers and the domain's statistics; the CSV says the same.

use std::time::Duration;

use domain::events::{Event, EventKind};
use domain::experiment::{Policy, ProbBestMethod, Reweight};
use domain::ids::{ArmKey, RequestId};
use domain::ports::pipeline::{PublishedWeights, ReweightRepository, WeightsPublisher};
use domain::results::COHORT_METHOD;
use domain::stats::{compare, estimate, sample_ratio_mismatch, ArmCounts, Metric};
use marquee_tests::browser::{artifacts, browse, count};
use marquee_tests::fixtures::{create_two_arm_experiment, put_lists, seed_catalog, simulated_rows};
use marquee_tests::worker_harness::{
    action, impression, items, produce_events, producer, spawn_worker,
};
use marquee_tests::{eventually, spawn_api, TestApi, TestStack};
use repositories::postgres::api_keys::Role;
use repositories::postgres::reweight::PgReweightRepository;
use serde_json::Value;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9
}

#[tokio::test]
async fn results_match_hand_computed_numbers_and_csv_agrees() {
    let stack = TestStack::fresh().await;
    create_two_arm_experiment(&stack, "home").await;
    stack
        .stores
        .analytics
        .insert_events(&simulated_rows("home", 200, 220))
        .await
        .unwrap();
    let api = spawn_api(&stack, |_| {}).await;

    let response = api
        .client
        .get(api.url("/v1/experiments/home/results"))
        .header("x-api-key", &api.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    let report = &body["report"];
    let arms = report["arms"].as_array().unwrap();
    let (control, treatment) = (&arms[0], &arms[1]);

    // Counts, exactly.
    assert_eq!(control["arm"], "control");
    assert_eq!(
        (
            control["users"].as_u64(),
            control["impressions"].as_u64(),
            control["clicks"].as_u64()
        ),
        (Some(200), Some(1000), Some(40))
    );
    assert_eq!(
        (
            treatment["users"].as_u64(),
            treatment["impressions"].as_u64(),
            treatment["clicks"].as_u64()
        ),
        (Some(220), Some(1100), Some(132))
    );
    assert_eq!(treatment["conversions"], 10);
    assert_eq!(treatment["views"], 220);
    assert_eq!(treatment["mean_value"].as_f64(), Some(30.0));
    assert_eq!(
        treatment["clicks_by_position"],
        serde_json::json!([{"position":0,"clicks":66},{"position":2,"clicks":66}])
    );

    // Rates and intervals against the domain functions, to 1e-9.
    let control_counts = ArmCounts {
        users: 200,
        impressions: 1000,
        clicks: 40,
        conversions: 0,
        sum_clicks_sq: 40,
        sum_impressions_sq: 200 * 25,
        sum_clicks_impressions: 40 * 5,
    };
    let treatment_counts = ArmCounts {
        users: 220,
        impressions: 1100,
        clicks: 132,
        conversions: 10,
        sum_clicks_sq: 66 * 4,
        sum_impressions_sq: 220 * 25,
        sum_clicks_impressions: 66 * 2 * 5,
    };
    let c = estimate(Metric::Ctr, &control_counts).unwrap();
    let t = estimate(Metric::Ctr, &treatment_counts).unwrap();
    assert!(close(control["ctr"]["mean"].as_f64().unwrap(), 0.04));
    assert!(close(treatment["ctr"]["mean"].as_f64().unwrap(), 0.12));
    assert!(close(
        treatment["ctr"]["ci_low"].as_f64().unwrap(),
        t.ci_low.unwrap()
    ));
    assert!(close(
        treatment["ctr"]["ci_high"].as_f64().unwrap(),
        t.ci_high.unwrap()
    ));
    assert!(close(
        treatment["conversion"]["mean"].as_f64().unwrap(),
        10.0 / 220.0
    ));
    let lift = compare(&c, &t);
    let comparison = &report["comparisons"][0]["pooled"];
    assert!(close(comparison["abs_lift"].as_f64().unwrap(), 0.08));
    assert!(close(
        comparison["abs_ci"]["low"].as_f64().unwrap(),
        lift.abs_ci.unwrap().low
    ));
    assert!(close(comparison["rel_lift"].as_f64().unwrap(), 2.0));
    assert!(close(
        comparison["p_value"].as_f64().unwrap(),
        lift.p_value.unwrap()
    ));
    assert!(close(
        comparison["chance_to_beat"].as_f64().unwrap(),
        lift.chance_to_beat.unwrap()
    ));
    let srm = sample_ratio_mismatch(&[200, 220], &[0.5, 0.5]).unwrap();
    assert!(close(
        report["srm"]["p_value"].as_f64().unwrap(),
        srm.p_value
    ));
    assert_eq!(report["srm"]["mismatch"], false);
    assert_eq!(report["method"], "pooled");
    // Sequential by default: the confidence sequence of the same lift, from
    // the same estimate and standard error, after the arms' 420 users.
    assert_eq!(report["analysis"]["method"], "sequential", "{report}");
    assert_eq!(report["analysis"]["tuning"], 5000.0);
    let sequential = &report["comparisons"][0]["sequential"];
    let expected = domain::stats::sequential_lift(
        lift.abs_lift.zip(lift.abs_std_error),
        lift.rel_lift.zip(lift.rel_std_error),
        420,
        5000.0,
    );
    assert_eq!(sequential["n"], 420);
    assert!(close(
        sequential["abs_ci"]["low"].as_f64().unwrap(),
        expected.abs_ci.unwrap().low
    ));
    assert!(close(
        sequential["rel_ci"]["high"].as_f64().unwrap(),
        expected.rel_ci.unwrap().high
    ));
    assert!(
        sequential["abs_ci"]["low"].as_f64().unwrap()
            < comparison["abs_ci"]["low"].as_f64().unwrap(),
        "wider than the fixed-horizon interval"
    );
    assert_eq!(
        report["comparisons"][0]["significant"],
        serde_json::json!(expected.significant)
    );
    assert_eq!(report["daily"].as_array().unwrap().len(), 2);

    // The CSV carries the same numbers.
    let csv = api
        .client
        .get(api.url("/v1/experiments/home/results?format=csv"))
        .header("x-api-key", &api.admin_key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    let header: Vec<&str> = lines[0].split(',').collect();
    let treatment_row: Vec<&str> = lines[2].split(',').collect();
    let col = |name: &str| treatment_row[header.iter().position(|h| *h == name).unwrap()];
    assert_eq!(col("users"), "220");
    assert_eq!(col("clicks"), "132");
    assert!(close(col("ctr").parse().unwrap(), 0.12));
    assert!(close(col("ctr_ci_low").parse().unwrap(), t.ci_low.unwrap()));
    assert!(close(
        col("p_value").parse().unwrap(),
        lift.p_value.unwrap()
    ));
}

#[tokio::test]
async fn unknown_experiment_and_bad_dates_are_4xx() {
    let stack = TestStack::fresh().await;
    let api = spawn_api(&stack, |_| {}).await;
    for (path, status, field) in [
        ("/v1/experiments/nope/results", 404, Some("key")),
        (
            "/v1/experiments/nope/results?colour=red",
            400,
            Some("colour"),
        ),
        (
            "/v1/experiments/nope/results?from=yesterday",
            400,
            Some("from"),
        ),
        (
            "/v1/experiments/nope/results?format=xml",
            400,
            Some("format"),
        ),
    ] {
        let response = api
            .client
            .get(api.url(path))
            .header("x-api-key", &api.admin_key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
        let body: Value = response.json().await.unwrap();
        if let Some(field) = field {
            assert_eq!(body["error"]["field"], field, "{path}");
        }
    }
}

/// A request past the api's time limit is a 503 with the usual JSON body.
#[tokio::test]
async fn a_request_over_the_time_limit_is_a_json_503() {
    let stack = TestStack::fresh().await;
    create_two_arm_experiment(&stack, "home").await;
    let api = spawn_api(&stack, |c| c.request_timeout_ms = 1).await;
    let response = api
        .client
        .get(api.url("/v1/experiments/home/results"))
        .header("x-api-key", &api.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "timeout", "{body}");
    assert_eq!(
        body["error"]["message"],
        "the request took longer than 1 ms"
    );
}

/// Once the split has moved (a reweight after the start), pooling mixes
/// users assigned under different splits: the route reports the cohort lift
/// (here every user arrived before the change, so one cohort is compared),
/// the periods and the sample-ratio check across them, and the CSV and the
/// dashboard headline carry the cohort numbers.
#[tokio::test]
async fn a_reweighted_experiment_reports_and_exports_the_cohort_lift() {
    let stack = TestStack::fresh().await;
    create_two_arm_experiment(&stack, "home").await;
    sqlx::query(
        "INSERT INTO weight_history (experiment_key, arm_key, weight, reason, computed_at) VALUES \
         ('home', 'control', 0.3, 'thompson', now() + interval '1 second'), \
         ('home', 'treatment', 0.7, 'thompson', now() + interval '1 second')",
    )
    .execute(&stack.pg)
    .await
    .unwrap();
    stack
        .stores
        .analytics
        .insert_events(&simulated_rows("home", 200, 220))
        .await
        .unwrap();
    let api = spawn_api(&stack, |_| {}).await;
    let get = |path: &str| {
        api.client
            .get(api.url(path))
            .header("x-api-key", &api.admin_key)
            .send()
    };

    let body: Value = get("/v1/experiments/home/results")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let report = &body["report"];
    assert_eq!(report["method"], COHORT_METHOD);
    let periods = report["periods"].as_array().unwrap();
    assert_eq!(periods.len(), 2, "{periods:?}");
    assert_eq!(periods[0]["users"], serde_json::json!([200, 220]));
    assert_eq!(periods[1]["users"], serde_json::json!([0, 0]));
    assert_eq!(periods[1]["weights"], serde_json::json!([0.3, 0.7]));
    let srm = sample_ratio_mismatch(&[200, 220], &[0.5, 0.5]).unwrap();
    assert!(close(
        report["srm"]["p_value"].as_f64().unwrap(),
        srm.p_value
    ));
    assert_eq!(report["srm"]["mismatch"], false);
    let cohort = &report["comparisons"][0]["cohort"]["combined"];
    assert_eq!(cohort["periods_used"], 1);
    let estimate = cohort["estimate"].as_f64().unwrap();
    let chance = cohort["chance_to_beat"].as_f64().unwrap();
    assert!(close(estimate, 0.08) && chance > 0.5, "{cohort}");

    // With a 7-day outcome window every event (all of today) still counts.
    sqlx::query("UPDATE experiments SET outcome_window_days = 7 WHERE key = 'home'")
        .execute(&stack.pg)
        .await
        .unwrap();
    let windowed: Value = get("/v1/experiments/home/results")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(windowed["report"]["outcome_window_days"], 7, "{windowed}");
    assert_eq!(
        windowed["report"]["periods"][0]["users"],
        serde_json::json!([200, 220])
    );
    let windowed_cohort = &windowed["report"]["comparisons"][0]["cohort"]["combined"];
    assert!(close(
        windowed_cohort["estimate"].as_f64().unwrap(),
        estimate
    ));
    sqlx::query("UPDATE experiments SET outcome_window_days = NULL WHERE key = 'home'")
        .execute(&stack.pg)
        .await
        .unwrap();

    // A fixed-horizon experiment decides by the p-value of the same headline.
    sqlx::query("UPDATE experiments SET analysis = 'fixed_horizon' WHERE key = 'home'")
        .execute(&stack.pg)
        .await
        .unwrap();
    let fixed: Value = get("/v1/experiments/home/results")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        fixed["report"]["analysis"]["method"], "fixed_horizon",
        "{fixed}"
    );
    let headline_p = fixed["report"]["comparisons"][0]["cohort"]["combined"]["p_value"]
        .as_f64()
        .unwrap();
    assert_eq!(
        fixed["report"]["comparisons"][0]["significant"],
        serde_json::json!(headline_p < 0.05)
    );
    sqlx::query("UPDATE experiments SET analysis = 'sequential' WHERE key = 'home'")
        .execute(&stack.pg)
        .await
        .unwrap();

    let csv = get("/v1/experiments/home/results?format=csv")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header = reader.headers().unwrap().clone();
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    let col = |name: &str| rows[1][header.iter().position(|h| h == name).unwrap()].to_owned();
    assert!(close(col("cohort_abs_lift").parse().unwrap(), estimate));
    assert!(close(col("cohort_chance_to_beat").parse().unwrap(), chance));

    let summaries: Value = get("/v1/dashboard/experiments")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let headline = summaries["experiments"][0]["headline"].as_str().unwrap();
    assert_eq!(
        headline,
        format!(
            "treatment {:+.2} pp ctr vs control ({:.0}% chance to beat)",
            estimate * 100.0,
            chance * 100.0
        )
    );
}

/// Serve `users` through the api (real assignment and impressions to Kafka)
/// and click for the treatment's users: each treatment user clicks the first
/// movie of every list, each control user every fourth time. Returns each
/// user's arm.
async fn serve(
    api: &TestApi,
    key: &str,
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    users: &[String],
) -> Vec<String> {
    let mut arms = Vec::with_capacity(users.len());
    let mut clicks = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let body: Value = api
            .client
            .get(api.url(&format!(
                "/v1/users/{user}/recommendations?experiment=cohorts"
            )))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let arm = body["arm"].as_str().unwrap_or_default().to_owned();
        let request: uuid::Uuid = body["request_id"].as_str().unwrap().parse().unwrap();
        let first = body["items"][0]["movie_id"].as_i64().unwrap();
        if arm == "treatment" || i % 4 == 0 {
            clicks.push(action(
                EventKind::Click,
                user,
                Some(first),
                Some(RequestId::from(request)),
            ));
        }
        arms.push(arm);
    }
    produce_events(producer, topic, &clicks).await;
    arms
}

async fn assignments(stack: &TestStack) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM assignments WHERE experiment_key = 'cohorts'")
        .fetch_one(&stack.pg)
        .await
        .unwrap()
}

async fn stored_impressions(stack: &TestStack) -> u64 {
    stack
        .stores
        .analytics
        .client()
        .query("SELECT count() FROM events FINAL WHERE type = 'impression'")
        .fetch_one::<u64>()
        .await
        .unwrap()
}

async fn periods(stack: &TestStack) -> usize {
    stack
        .stores
        .experiments
        .weight_periods("cohorts")
        .await
        .unwrap()
        .len()
}

/// Through the real pipeline: users served by the api in three waves while
/// the weights change twice (once by the bandit, once written the way the
/// bandit writes), earlier users returning in every wave. The results route
/// reports the cohort method, three periods holding exactly the users first
/// served in each, and a sample-ratio check that passes; impressions for 150
/// users who bypassed assignment then make it fail, and the dashboard shows
/// the method, the periods and the warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohort_analysis_through_the_pipeline_while_weights_change_twice() {
    const WAVE: usize = 120;
    let stack = TestStack::fresh().await;
    seed_catalog(&stack, 40).await;
    sqlx::query(
        "INSERT INTO experiments (key, status, salt, policy, metric, min_weight, reweight_interval_s, \
                                  burn_in_users, exploration_s) \
         VALUES ('cohorts', 'draft', 'cohorts', 'thompson', 'ctr', 0.1, 1, 20, 0)",
    )
    .execute(&stack.pg)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO arms (experiment_key, arm_key, algorithm_key, weight, is_control, position) VALUES \
         ('cohorts', 'control', 'popularity', 0.5, true, 0), ('cohorts', 'treatment', 'als', 0.5, false, 1)",
    )
    .execute(&stack.pg)
    .await
    .unwrap();
    stack
        .stores
        .experiments
        .set_status("cohorts", domain::experiment::ExperimentStatus::Running)
        .await
        .unwrap();
    let waves: Vec<Vec<String>> = (0..3)
        .map(|w| (0..WAVE).map(|u| format!("wave{w}-user{u}")).collect())
        .collect();
    let everyone: Vec<String> = waves.concat();
    put_lists(
        &stack,
        "popularity",
        &everyone,
        &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    )
    .await;
    put_lists(
        &stack,
        "als",
        &everyone,
        &[11, 12, 13, 14, 15, 16, 17, 18, 19, 20],
    )
    .await;

    let api = spawn_api(&stack, |_| {}).await;
    let key = stack
        .stores
        .api_keys
        .create(Role::Client, "cohort-test")
        .await
        .unwrap()
        .1;
    let worker = spawn_worker(&stack, |c| c.reweight_tick_ms = 100).await;
    let producer = producer(&stack);
    let topic = stack.settings.events_topic.clone();
    let mut arms_by_wave: Vec<Vec<String>> = Vec::new();

    // Wave 1 at 50/50, then the bandit moves the weights (treatment clicks more).
    arms_by_wave.push(serve(&api, &key, &producer, &topic, &waves[0]).await);
    assert!(
        eventually(Duration::from_secs(20), || async {
            assignments(&stack).await == WAVE as i64
        })
        .await,
        "wave 1's assignments recorded"
    );
    assert!(
        eventually(Duration::from_secs(60), || async {
            periods(&stack).await >= 2
        })
        .await,
        "the bandit moved the weights once wave 1 was counted"
    );
    // No more bandit runs: the second change is the test's, at a known time.
    sqlx::query("UPDATE experiments SET reweight_interval_s = 1000000 WHERE key = 'cohorts'")
        .execute(&stack.pg)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(periods(&stack).await, 2, "one change by the bandit");

    // Wave 2: wave 1 returns, new users follow the bandit's weights.
    serve(&api, &key, &producer, &topic, &waves[0]).await;
    arms_by_wave.push(serve(&api, &key, &producer, &topic, &waves[1]).await);
    assert!(
        eventually(Duration::from_secs(20), || async {
            assignments(&stack).await == 2 * WAVE as i64
        })
        .await,
        "wave 2's assignments recorded"
    );

    // The second change, written and announced as the bandit does it.
    let experiment = stack
        .stores
        .experiments
        .get("cohorts")
        .await
        .unwrap()
        .unwrap()
        .experiment;
    let arms: Vec<ArmKey> = experiment.arms().iter().map(|a| a.key.clone()).collect();
    let change = Reweight {
        weights: vec![(arms[0].clone(), 0.7), (arms[1].clone(), 0.3)],
        posteriors: Vec::new(),
        draws: 0,
        seed: 0,
        policy: Policy::ThompsonSampling,
        method: ProbBestMethod::Exact,
        top_two: false,
        periods_used: 0,
        held: false,
    };
    PgReweightRepository::new(stack.pg.clone(), Duration::from_secs(5))
        .record_weights(experiment.key(), &change, "analyst")
        .await
        .unwrap();
    stack
        .stores
        .redis
        .publish(&PublishedWeights::from_reweight(
            experiment.key(),
            &change,
            "analyst",
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Wave 3: waves 1 and 2 return, new users follow 70/30.
    serve(&api, &key, &producer, &topic, &waves[0]).await;
    serve(&api, &key, &producer, &topic, &waves[1]).await;
    arms_by_wave.push(serve(&api, &key, &producer, &topic, &waves[2]).await);

    // Every impression (6 waves served) and click counted.
    let impressions = 6 * WAVE as u64;
    let counted = eventually(Duration::from_secs(60), || async {
        stored_impressions(&stack).await >= impressions
    })
    .await;
    assert!(
        counted,
        "impressions reached ClickHouse: {} of {impressions}",
        stored_impressions(&stack).await
    );

    let results = |api: &TestApi| {
        let request = api
            .client
            .get(api.url("/v1/experiments/cohorts/results"))
            .header("x-api-key", &api.admin_key)
            .send();
        async move { request.await.unwrap().json::<Value>().await.unwrap() }
    };
    let body = results(&api).await;
    let report = &body["report"];
    assert_eq!(report["method"], COHORT_METHOD, "{report}");
    let periods = report["periods"].as_array().unwrap();
    assert_eq!(periods.len(), 3, "{periods:?}");
    for (k, wave) in arms_by_wave.iter().enumerate() {
        let control = wave.iter().filter(|a| *a == "control").count() as u64;
        let treatment = wave.iter().filter(|a| *a == "treatment").count() as u64;
        assert_eq!(
            periods[k]["users"],
            serde_json::json!([control, treatment]),
            "period {k} holds exactly the users first served in wave {k}"
        );
    }
    assert_eq!(periods[2]["weights"], serde_json::json!([0.7, 0.3]));
    assert_eq!(report["srm"]["mismatch"], false, "{}", report["srm"]);
    assert!(report["warnings"].as_array().unwrap().is_empty());
    let cohort = &report["comparisons"][0]["cohort"];
    assert_eq!(cohort["by_period"].as_array().unwrap().len(), 3);
    assert!(
        cohort["combined"]["estimate"].as_f64().unwrap() > 0.0,
        "treatment users click more: {cohort}"
    );

    // An assignment bug: 150 users in control who never went through assignment.
    let rogue: Vec<Event> = (0..150)
        .map(|u| {
            impression(
                &format!("rogue-{u}"),
                "cohorts",
                "control",
                "popularity",
                items(1, 10),
            )
        })
        .collect();
    produce_events(&producer, &topic, &rogue).await;
    let flagged = eventually(Duration::from_secs(60), || async {
        results(&api).await["report"]["srm"]["mismatch"] == true
    })
    .await;
    assert!(
        flagged,
        "150 unassigned users in one arm fail the sample-ratio check"
    );
    let body = results(&api).await;
    assert!(!body["report"]["warnings"].as_array().unwrap().is_empty());

    let dom = browse(
        &api,
        "/dashboard?experiment=cohorts",
        &["--dump-dom".to_owned()],
    )
    .await;
    assert!(dom.contains(r#"data-ready="detail""#), "{dom}");
    assert!(
        dom.contains(r#"data-method="cohort_inverse_variance""#),
        "{dom}"
    );
    assert!(dom.contains("Method: cohort analysis"), "{dom}");
    assert_eq!(count(&dom, r#"data-period=""#), 3, "{dom}");
    assert!(dom.contains("Sample-ratio mismatch"), "{dom}");
    let shot = artifacts().join("dashboard-cohorts.png");
    browse(
        &api,
        "/dashboard?experiment=cohorts",
        &[format!("--screenshot={}", shot.display())],
    )
    .await;
    worker.stop().await;
}
