//! The dashboard in a real browser: headless Chromium loads /dashboard with a
//! key, the arms table and the three charts render, and a failing sample-ratio
//! check shows its warning. Screenshots go to tests/artifacts/.

use marquee_tests::browser::{artifacts, browse, count};
use marquee_tests::fixtures::{create_two_arm_experiment, simulated_rows};
use marquee_tests::{spawn_api, TestStack};

#[tokio::test]
async fn dashboard_renders_the_arms_table_and_charts_and_warns_on_srm() {
    let stack = TestStack::fresh().await;
    create_two_arm_experiment(&stack, "home").await;
    create_two_arm_experiment(&stack, "skewed").await;
    let mut rows = simulated_rows("home", 200, 220);
    rows.extend(simulated_rows("skewed", 200, 400));
    stack.stores.analytics.insert_events(&rows).await.unwrap();
    let api = spawn_api(&stack, |_| {}).await;

    let page = api.client.get(api.url("/dashboard")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    // The page renders below under this policy, so it needs nothing inline.
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");

    // Sign-in: the key becomes an HttpOnly, SameSite=Strict cookie that
    // reads accept and changes do not (a cookie rides along on any request).
    let signed_in = api
        .client
        .post(api.url("/dashboard/session"))
        .header("x-api-key", &api.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status().as_u16(), 204);
    let set_cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    for part in ["marquee_session=", "HttpOnly", "SameSite=Strict"] {
        assert!(set_cookie.contains(part), "{set_cookie}");
    }
    let session = set_cookie.split(';').next().unwrap().to_owned();
    let read = api
        .client
        .get(api.url("/v1/dashboard/experiments"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status().as_u16(), 200);
    let change = api
        .client
        .post(api.url("/v1/experiments/home/stop"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(
        change.status().as_u16(),
        401,
        "a cookie must not stop an experiment"
    );
    // Signing in with `Authorization: Bearer` keeps that key, too.
    let bearer = api
        .client
        .post(api.url("/dashboard/session"))
        .bearer_auth(&api.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status().as_u16(), 204);
    let bearer_cookie = bearer.headers()["set-cookie"].to_str().unwrap();
    assert!(
        bearer_cookie.starts_with(&format!("marquee_session={};", api.admin_key)),
        "{bearer_cookie}"
    );
    let refused = api
        .client
        .post(api.url("/dashboard/session"))
        .header("x-api-key", "mq_admin_not_a_key")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);

    let dom = browse(
        &api,
        "/dashboard?experiment=home",
        &["--dump-dom".to_owned()],
    )
    .await;
    assert!(
        dom.contains(r#"data-ready="detail""#),
        "the page did not finish rendering:\n{dom}"
    );
    assert_eq!(
        count(&dom, r#"data-arm=""#),
        2,
        "two rows in the arms table"
    );
    assert!(
        count(&dom, "data-chart=") >= 3,
        "lift, CTR and weights charts:\n{dom}"
    );
    assert!(dom.contains("Experiment home"));
    assert!(
        dom.contains("sequential analysis (valid at every look)"),
        "the analysis is named:\n{dom}"
    );
    assert_eq!(
        count(&dom, r#"data-sequential=""#),
        1,
        "the treatment's always-valid interval is shown:\n{dom}"
    );
    assert_eq!(count(&dom, r#"data-power=""#), 1, "and its power line");
    assert!(
        dom.contains(r#"<div id="srm-warning" class="warning" hidden="">"#),
        "no SRM warning for a 200/220 split"
    );

    let skewed = browse(
        &api,
        "/dashboard?experiment=skewed",
        &["--dump-dom".to_owned()],
    )
    .await;
    assert!(
        skewed.contains("Sample-ratio mismatch"),
        "a 200/400 split at 50/50 must warn:\n{skewed}"
    );
    assert!(!skewed.contains(r#"<div id="srm-warning" class="warning" hidden="">"#));

    // Screenshots as artifacts of the run.
    let shot = artifacts().join("dashboard.png");
    browse(
        &api,
        "/dashboard?experiment=home",
        &[format!("--screenshot={}", shot.display())],
    )
    .await;
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false),
        "screenshot written"
    );
    let srm_shot = artifacts().join("dashboard-srm.png");
    browse(
        &api,
        "/dashboard?experiment=skewed",
        &[format!("--screenshot={}", srm_shot.display())],
    )
    .await;

    // The list view with a headline per experiment.
    let list = browse(&api, "/dashboard", &["--dump-dom".to_owned()]).await;
    assert!(
        list.contains(r#"data-experiment="home""#) && list.contains(r#"data-experiment="skewed""#),
        "{list}"
    );
}
