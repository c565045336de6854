//! Rate limits through the real api: one client key sending 2,000 requests a
//! second over its limit gets 429s with `retry-after` and a JSON body naming
//! `x-api-key`, while another key keeps being served (its latency is printed
//! beside the same key's latency with no load); unknown keys from one
//! address are refused after a burst, before each costs a PostgreSQL lookup.

use std::time::{Duration, Instant};

use marquee_tests::{spawn_api, TestApi, TestStack};
use repositories::postgres::api_keys::Role;
use serde_json::Value;

const ROUTE: &str = "/v1/users/u1/recommendations";

async fn get(api: &TestApi, key: &str) -> (u16, Option<String>, Duration) {
    let started = Instant::now();
    let response = api
        .client
        .get(api.url(ROUTE))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let _ = response.bytes().await;
    (status, retry_after, started.elapsed())
}

/// Latencies of `n` requests by `key`, one every `every`.
async fn paced(api: &TestApi, key: &str, n: usize, every: Duration) -> Vec<(u16, Duration)> {
    let mut tick = tokio::time::interval(every);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        tick.tick().await;
        let (status, _, took) = get(api, key).await;
        out.push((status, took));
    }
    out
}

fn p99(samples: &[(u16, Duration)]) -> Duration {
    let mut ms: Vec<Duration> = samples.iter().map(|s| s.1).collect();
    ms.sort();
    ms[(ms.len() * 99 / 100).min(ms.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_limit_gets_429_and_other_keys_are_served() {
    let stack = TestStack::fresh().await;
    let api = spawn_api(&stack, |c| c.rate_limit_per_key = 200).await;
    let (_, noisy) = stack
        .stores
        .api_keys
        .create(Role::Client, "noisy")
        .await
        .unwrap();
    let (_, quiet) = stack
        .stores
        .api_keys
        .create(Role::Client, "quiet")
        .await
        .unwrap();
    // Warm both keys' cache entries and the route.
    assert_ne!(get(&api, &noisy).await.0, 429);
    let alone = paced(&api, &quiet, 100, Duration::from_millis(10)).await;

    // 2,000 requests over one second from the noisy key (20 senders at
    // 100/s each), while the quiet key keeps its pace.
    let noisy_started = Instant::now();
    let senders: Vec<_> = (0..20)
        .map(|_| {
            let (client, url, key) = (api.client.clone(), api.url(ROUTE), noisy.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                let mut answers = Vec::with_capacity(100);
                for _ in 0..100 {
                    tick.tick().await;
                    let r = client
                        .get(&url)
                        .header("x-api-key", &key)
                        .send()
                        .await
                        .unwrap();
                    let status = r.status().as_u16();
                    let retry_after = r.headers().get("retry-after").is_some();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    answers.push((status, retry_after, body));
                }
                answers
            })
        })
        .collect();
    let loaded = paced(&api, &quiet, 100, Duration::from_millis(10)).await;
    let mut noisy_answers = Vec::new();
    for s in senders {
        noisy_answers.extend(s.await.unwrap());
    }
    let noisy_s = noisy_started.elapsed().as_secs_f64();

    let limited: Vec<_> = noisy_answers.iter().filter(|a| a.0 == 429).collect();
    let served = noisy_answers.len() - limited.len();
    eprintln!(
        "noisy key: {} requests in {noisy_s:.2} s, {} got 429, {} served (limit 200/s, burst 400)\n\
         quiet key: p99 {:?} alone, {:?} beside the noisy key; 429s: {}",
        noisy_answers.len(),
        limited.len(),
        served,
        p99(&alone),
        p99(&loaded),
        loaded.iter().filter(|s| s.0 == 429).count()
    );
    // At most the burst plus the rate over the time the sending took (a slow
    // machine stretches it), with room for the warm-up and rounding.
    let allowed = (400.0 + 200.0 * noisy_s) as usize + 50;
    assert!(
        served <= allowed,
        "{served} of the noisy key's requests were served, at most {allowed} may"
    );
    assert!(!limited.is_empty(), "no request got 429");
    for (_, retry_after, body) in &limited {
        assert!(*retry_after, "a 429 without retry-after");
        assert_eq!(body["error"]["code"], "rate_limited", "{body}");
        assert_eq!(body["error"]["field"], "x-api-key", "{body}");
    }
    assert!(
        loaded.iter().all(|s| s.0 != 429),
        "the quiet key was limited by the noisy one"
    );
}

#[tokio::test]
async fn unknown_keys_from_one_address_are_refused_before_postgres_is_asked() {
    let stack = TestStack::fresh().await;
    let api = spawn_api(&stack, |c| c.rate_limit_lookups_per_address = 10).await;
    let mut statuses = Vec::new();
    let started = Instant::now();
    for i in 0..100 {
        let (status, retry_after, _) = get(&api, &format!("mq_client_guess{i}")).await;
        if status == 429 {
            assert!(retry_after.is_some());
        }
        statuses.push(status);
    }
    let took = started.elapsed().as_secs_f64();
    let unauthorized = statuses.iter().filter(|&&s| s == 401).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    eprintln!("100 guessed keys: {unauthorized} looked up (401), {limited} refused (429)");
    // The burst (20) plus 10 a second over the time the guessing took.
    let allowed = (20.0 + 10.0 * took) as usize + 2;
    assert!(
        unauthorized <= allowed,
        "{unauthorized} guesses reached PostgreSQL in {took:.2} s, at most {allowed} may"
    );
    assert!(statuses.contains(&429), "no guess was refused");
    assert_eq!(unauthorized + limited, 100);
    // A known key still passes: its lookup is cached, or within the limit later.
    let (_, key) = stack
        .stores
        .api_keys
        .create(Role::Client, "known")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_ne!(get(&api, &key).await.0, 429);
}
