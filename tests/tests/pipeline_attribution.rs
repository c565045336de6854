//! Clicks carrying the request id of an earlier impression are attributed to
//! its experiment, arm and position; unknown request ids are stored
//! unattributed, as are clicks naming another user's request id or a movie
//! that list never held; conversions without one go to the user's sticky arm.

use std::collections::HashMap;
use std::time::Duration;

use domain::events::EventKind;
use domain::ids::RequestId;
use marquee_tests::fixtures::create_two_arm_experiment;
use marquee_tests::worker_harness::{
    action, impression, items, produce_events, producer, spawn_worker, wait_for_events,
};
use marquee_tests::TestStack;
use serde::Deserialize;

#[derive(Debug, Deserialize, clickhouse::Row)]
struct ArmClicks {
    arm_key: String,
    impressions: u64,
    clicks: u64,
    conversions: u64,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct PositionClicks {
    arm_key: String,
    position: i16,
    clicks: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_are_attributed_to_the_impression_that_served_them() {
    let stack = TestStack::fresh().await;
    create_two_arm_experiment(&stack, "home").await;
    let topic = stack.settings.events_topic.clone();
    let producer = producer(&stack);

    // 200 users, each served one list of 10 by arm control or treatment.
    let mut impressions = Vec::new();
    for u in 0..200 {
        let arm = if u % 2 == 0 { "control" } else { "treatment" };
        let algorithm = if arm == "control" {
            "popularity"
        } else {
            "als"
        };
        impressions.push(impression(
            &format!("u{u}"),
            "home",
            arm,
            algorithm,
            items(100 + u, 10),
        ));
    }
    // A first worker sees only the impressions, then stops: the clicks are
    // attributed by a second worker whose memory is empty (Redis path).
    let first = spawn_worker(&stack, |_| {}).await;
    produce_events(&producer, &topic, &impressions).await;
    assert_eq!(
        wait_for_events(&stack, 200, Duration::from_secs(60))
            .await
            .1,
        200
    );
    first.stop().await;

    let mut sent: HashMap<&str, u64> = HashMap::new();
    let mut sent_positions: HashMap<(&str, i16), u64> = HashMap::new();
    let mut actions = Vec::new();
    for (u, imp) in impressions.iter().enumerate() {
        let details = imp.impression.as_ref().unwrap();
        let arm = details.arm.as_str();
        // Control users click position 0; treatment users click 1 and 3, so
        // treatment has more clicks per impression.
        let positions: &[usize] = if arm == "control" { &[0] } else { &[1, 3] };
        for &p in positions {
            let movie = details.items[p].movie_id.get();
            actions.push(action(
                EventKind::Click,
                imp.user_id.as_str(),
                Some(movie),
                imp.request_id,
            ));
            *sent
                .entry(if arm == "control" {
                    "control"
                } else {
                    "treatment"
                })
                .or_default() += 1;
            *sent_positions
                .entry((
                    if arm == "control" {
                        "control"
                    } else {
                        "treatment"
                    },
                    p as i16,
                ))
                .or_default() += 1;
        }
        if u % 10 == 0 {
            actions.push(action(
                EventKind::View,
                imp.user_id.as_str(),
                Some(details.items[0].movie_id.get()),
                imp.request_id,
            ));
        }
    }
    // 25 clicks whose request id was never served: stored, unattributed.
    for u in 0..25 {
        actions.push(action(
            EventKind::Click,
            &format!("u{u}"),
            Some(5),
            Some(RequestId::new_random()),
        ));
    }
    // Forged: 50 clicks by another user naming u1's request id, and 5 by u1
    // on a movie that list never held. None may reach the treatment arm.
    let victim = &impressions[1];
    for _ in 0..50 {
        actions.push(action(
            EventKind::Click,
            "mallory",
            Some(5),
            victim.request_id,
        ));
    }
    for _ in 0..5 {
        actions.push(action(EventKind::Click, "u1", Some(5), victim.request_id));
    }
    // u1 clicks a movie it was served three times more: one click per
    // served movie is credited (MARQUEE_MAX_CLICKS_PER_SERVED_MOVIE = 1).
    let clicked_before = victim.impression.as_ref().unwrap().items[1].movie_id.get();
    for _ in 0..3 {
        actions.push(action(
            EventKind::Click,
            "u1",
            Some(clicked_before),
            victim.request_id,
        ));
    }
    // Sticky arms: u1 is in treatment; its conversion without a request id is attributed there.
    sqlx::query("INSERT INTO assignments (experiment_key, user_id, arm_key) VALUES ('home', 'u1', 'treatment'), ('home', 'u2', 'control')")
        .execute(&stack.pg)
        .await
        .unwrap();
    actions.push(action(EventKind::Conversion, "u1", None, None));
    actions.push(action(EventKind::Conversion, "u2", None, None));
    actions.push(action(EventKind::Conversion, "nobody", None, None));
    // An impression and a click on it in the same batch (in-process cache path).
    let same_batch = impression("late", "home", "treatment", "als", items(900, 5));
    actions.push(same_batch.clone());
    actions.push(action(
        EventKind::Click,
        "late",
        Some(904),
        same_batch.request_id,
    ));
    *sent.entry("treatment").or_default() += 1;
    *sent_positions.entry(("treatment", 4)).or_default() += 1;

    let second = spawn_worker(&stack, |_| {}).await;
    produce_events(&producer, &topic, &actions).await;
    let expected = 200 + actions.len() as u64;
    assert_eq!(
        wait_for_events(&stack, expected, Duration::from_secs(60))
            .await
            .1,
        expected
    );

    let client = stack.stores.analytics.client();
    let arms: Vec<ArmClicks> = client
        .query("SELECT arm_key, sumMerge(impressions) AS impressions, sumMerge(clicks) AS clicks, sumMerge(conversions) AS conversions \
                FROM arm_daily WHERE experiment_key = 'home' GROUP BY arm_key ORDER BY arm_key")
        .fetch_all()
        .await
        .unwrap();
    let by_arm: HashMap<&str, &ArmClicks> = arms.iter().map(|a| (a.arm_key.as_str(), a)).collect();
    assert_eq!(by_arm["control"].clicks, sent["control"], "{arms:?}");
    assert_eq!(by_arm["treatment"].clicks, sent["treatment"], "{arms:?}");
    assert_eq!(by_arm["control"].impressions, 100);
    assert_eq!(by_arm["treatment"].impressions, 101);
    assert_eq!(by_arm["control"].conversions, 1, "u2's sticky arm");
    assert_eq!(by_arm["treatment"].conversions, 1, "u1's sticky arm");

    let positions: Vec<PositionClicks> = client
        .query("SELECT arm_key, position, sum(clicks) AS clicks FROM arm_position_daily WHERE experiment_key = 'home' GROUP BY arm_key, position ORDER BY arm_key, position")
        .fetch_all()
        .await
        .unwrap();
    for p in &positions {
        let arm = if p.arm_key == "control" {
            "control"
        } else {
            "treatment"
        };
        assert_eq!(
            Some(&p.clicks),
            sent_positions.get(&(arm, p.position)),
            "{positions:?}"
        );
    }
    assert_eq!(positions.len(), sent_positions.len(), "{positions:?}");

    let unattributed: u64 = client
        .query("SELECT count() FROM events FINAL WHERE type = 'click' AND experiment_key = ''")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        unattributed,
        25 + 55 + 3,
        "unknown request ids, forged and repeated clicks are stored, unattributed"
    );
    let attributed_views: u64 = client
        .query("SELECT count() FROM events FINAL WHERE type = 'view' AND experiment_key = 'home' AND position = 0 AND model_version = 'v1'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(attributed_views, 20);

    let unattributed_counted = second
        .metric_total("marquee_events_unattributed_total")
        .await;
    assert_eq!(unattributed_counted, 25.0 + 55.0 + 3.0);
    let page = marquee_tests::metrics_page(&second.url("/metrics")).await;
    let refused = |reason: &str| -> f64 {
        page.lines()
            .filter(|l| l.starts_with("marquee_events_attribution_refused_total{"))
            .filter(|l| l.contains(&format!("reason=\"{reason}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(refused("other_user"), 50.0, "{page}");
    assert_eq!(refused("movie_not_served"), 5.0, "{page}");
    assert_eq!(refused("click_cap"), 3.0, "{page}");
    let credits: i64 = sqlx::query_scalar("SELECT count(*) FROM click_credits")
        .fetch_one(&stack.pg)
        .await
        .unwrap();
    assert_eq!(
        credits as u64,
        sent["control"] + sent["treatment"] + 3,
        "one row per admitted click, and the three over the cap"
    );
    second.stop().await;
}
