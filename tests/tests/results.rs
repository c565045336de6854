//! Results of a simulated experiment with known counts: the JSON matches the
//! hand-computed numbers and the domain's statistics; the CSV says the same.

use domain::stats::{compare, estimate, sample_ratio_mismatch, ArmCounts, Metric};
use marquee_tests::fixtures::{create_two_arm_experiment, simulated_rows};
use marquee_tests::{spawn_api, TestStack};
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
        ("/v1/experiments/nope/results", 404, None),
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

/// Once the split has moved (a reweight after the start), pooling mixes
/// periods of different splits: the route reports the day-stratified lift,
/// leaves out the sample-ratio check (the split is not one ratio any more),
/// and the CSV and the dashboard headline carry the stratified numbers.
#[tokio::test]
async fn a_reweighted_experiment_reports_and_exports_the_stratified_lift() {
    let stack = TestStack::fresh().await;
    create_two_arm_experiment(&stack, "home").await;
    sqlx::query(
        "INSERT INTO weight_history (experiment_key, arm_key, weight, reason, computed_at) VALUES \
         ('home', 'control', 0.3, 'thompson', now() + interval '1 second'), \
         ('home', 'treatment', 0.7, 'thompson', now() + interval '1 second')",
    )
    .execute(&stack.stores.pg)
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
    assert_eq!(report["method"], "stratified_inverse_variance");
    assert!(report["srm"].is_null(), "{}", report["srm"]);
    let stratified = &report["comparisons"][0]["stratified"];
    let estimate = stratified["estimate"].as_f64().unwrap();
    let chance = stratified["chance_to_beat"].as_f64().unwrap();
    assert!(estimate > 0.0 && chance > 0.5, "{stratified}");

    let csv = get("/v1/experiments/home/results?format=csv")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    let treatment: Vec<&str> = lines[2].split(',').collect();
    let col = |name: &str| treatment[header.iter().position(|h| *h == name).unwrap()];
    assert!(close(col("stratified_abs_lift").parse().unwrap(), estimate));
    assert!(close(
        col("stratified_chance_to_beat").parse().unwrap(),
        chance
    ));

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
