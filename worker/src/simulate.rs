//! A traffic simulator for the demo: synthetic users ask the api for
//! recommendations and click according to their hidden tastes, so arms that
//! personalise well truly earn more clicks and the bandit has something to find.
//!
//! The hidden tastes come from regenerating the same synthetic world that
//! `worker seed` wrote (same size and seed), which the recommenders never see.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use domain::ids::{EventId, MovieId, UserId};
use domain::recommend::synthetic::{SyntheticData, SyntheticParams, SyntheticSize};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};
use repositories::kafka::KafkaSettings;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

/// What to simulate.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Base URL of the api.
    #[arg(
        long,
        env = "MARQUEE_SIMULATE_API_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub api_url: String,
    /// A `client` API key.
    #[arg(long, env = "MARQUEE_SIMULATE_CLIENT_KEY")]
    pub client_key: String,
    /// Experiment to request recommendations for.
    #[arg(long, default_value = "home")]
    pub experiment: String,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Concurrent simulated sessions.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Size of the synthetic world `worker seed` wrote (small, medium, large).
    #[arg(long, default_value = "medium")]
    pub size: String,
    /// Seed of that world.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Share of clicks produced straight to Kafka (the rest go through `POST /v1/events`).
    #[arg(long, default_value_t = 0.5)]
    pub direct_kafka_share: f64,
}

/// What the simulator sent, per arm.
#[derive(Debug, Default, Clone)]
pub struct ArmTally {
    pub requests: u64,
    pub impressions: u64,
    pub clicks: u64,
}

/// Totals of one simulation run.
#[derive(Debug, Default, Clone)]
pub struct SimulationSummary {
    pub requests: u64,
    pub failed_requests: u64,
    pub clicks_via_api: u64,
    pub clicks_via_kafka: u64,
    pub per_arm: BTreeMap<String, ArmTally>,
}

#[derive(Deserialize)]
struct Served {
    request_id: String,
    arm: String,
    items: Vec<ServedItem>,
}

#[derive(Deserialize)]
struct ServedItem {
    movie_id: i64,
    position: u16,
}

pub fn parse_size(size: &str) -> anyhow::Result<SyntheticSize> {
    match size {
        "small" => Ok(SyntheticSize::Small),
        "medium" => Ok(SyntheticSize::Medium),
        "large" => Ok(SyntheticSize::Large),
        other => anyhow::bail!("--size must be small, medium or large, not {other}"),
    }
}

/// Click probability of a served movie: the user's hidden affinity, squared so
/// that only good matches are clicked often, discounted by position.
fn click_probability(affinity: f64, position: u16) -> f64 {
    (0.5 * affinity * affinity / (1.0 + 0.2 * f64::from(position))).clamp(0.0, 1.0)
}

/// Run the simulation until `args.seconds` pass.
pub async fn run(args: SimulateArgs, kafka: KafkaSettings) -> anyhow::Result<SimulationSummary> {
    let world = Arc::new(
        SyntheticData::generate(&SyntheticParams::new(parse_size(&args.size)?, args.seed))
            .map_err(|e| anyhow::anyhow!("synthetic world: {e}"))?,
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("http client")?;
    let producer: FutureProducer = repositories::kafka::producer(&kafka, 5)?;
    let summary = Arc::new(Mutex::new(SimulationSummary::default()));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut sessions = Vec::new();
    for session in 0..args.concurrency {
        let (world, http, producer, summary, args, topic) = (
            world.clone(),
            http.clone(),
            producer.clone(),
            summary.clone(),
            args.clone(),
            kafka.events_topic.clone(),
        );
        sessions.push(tokio::spawn(async move {
            let mut rng =
                StdRng::seed_from_u64(args.seed ^ (session as u64).wrapping_mul(0x9E37_79B9));
            let mut pending_api_events = Vec::new();
            while Instant::now() < deadline {
                let user_index = rng.random_range(0..world.users.len());
                let user = world.users[user_index].clone();
                let served = match recommend(&http, &args, &user).await {
                    Ok(served) => served,
                    Err(e) => {
                        tracing::debug!(error = %e, "recommendation request failed");
                        summary.lock().await.failed_requests += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let mut clicks = Vec::new();
                for item in &served.items {
                    let Ok(movie) = MovieId::parse(item.movie_id) else {
                        continue;
                    };
                    let affinity = world.hidden_affinity(&user, movie).unwrap_or(0.0);
                    if rng.random_bool(click_probability(affinity, item.position)) {
                        clicks.push(json!({
                            "event_id": EventId::new_random().to_string(),
                            "type": "click",
                            "user_id": user.as_str(),
                            "movie_id": movie.get(),
                            "request_id": served.request_id,
                            "ts": Utc::now(),
                        }));
                    }
                }
                let (mut via_api, mut via_kafka) = (0, 0);
                for click in clicks.iter() {
                    if rng.random_bool(args.direct_kafka_share.clamp(0.0, 1.0)) {
                        let payload = click.to_string();
                        let record = FutureRecord::to(&topic)
                            .key(user.as_str())
                            .payload(&payload);
                        if producer.send(record, Duration::from_secs(5)).await.is_ok() {
                            via_kafka += 1;
                        }
                    } else {
                        pending_api_events.push(click.clone());
                        via_api += 1;
                    }
                }
                let lost = if pending_api_events.len() >= 20 {
                    post_events(&http, &args, std::mem::take(&mut pending_api_events)).await
                } else {
                    0
                };
                let mut s = summary.lock().await;
                s.requests += 1;
                s.clicks_via_api += via_api;
                s.clicks_via_api -= lost.min(s.clicks_via_api);
                s.clicks_via_kafka += via_kafka;
                let tally = s.per_arm.entry(served.arm.clone()).or_default();
                tally.requests += 1;
                tally.impressions += served.items.len() as u64;
                tally.clicks += clicks.len() as u64;
            }
            let lost = post_events(&http, &args, pending_api_events).await;
            let mut s = summary.lock().await;
            s.clicks_via_api -= lost.min(s.clicks_via_api);
        }));
    }
    for session in sessions {
        session.await.context("simulation session panicked")?;
    }
    let summary = summary.lock().await.clone();
    Ok(summary)
}

async fn recommend(
    http: &reqwest::Client,
    args: &SimulateArgs,
    user: &UserId,
) -> anyhow::Result<Served> {
    let url = format!(
        "{}/v1/users/{}/recommendations?limit=10&experiment={}",
        args.api_url, user, args.experiment
    );
    let response = http
        .get(url)
        .header("x-api-key", &args.client_key)
        .send()
        .await?;
    if !response.status().is_success() {
        anyhow::bail!("recommendations answered {}", response.status());
    }
    Ok(response.json().await?)
}

/// Post a batch of events as a front-end should: a 429 or 503 is retried
/// with the same event ids after the server's `retry-after` (at most five
/// attempts), since the ids make a retry safe. Answers how many events were
/// not accepted in the end.
async fn post_events(
    http: &reqwest::Client,
    args: &SimulateArgs,
    events: Vec<serde_json::Value>,
) -> u64 {
    if events.is_empty() {
        return 0;
    }
    let body = json!({ "events": events });
    for attempt in 1..=5u32 {
        let result = http
            .post(format!("{}/v1/events", args.api_url))
            .header("x-api-key", &args.client_key)
            .json(&body)
            .send()
            .await;
        let wait = match result {
            Ok(response) if response.status().is_success() => return 0,
            Ok(response)
                if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE =>
            {
                let seconds = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1);
                Duration::from_secs(seconds.clamp(1, 5))
            }
            Ok(response) => {
                tracing::warn!(status = %response.status(), "POST /v1/events refused a batch");
                return events.len() as u64;
            }
            Err(e) => {
                tracing::debug!(error = %e, attempt, "POST /v1/events failed; retrying");
                Duration::from_millis(200 * u64::from(attempt))
            }
        };
        tokio::time::sleep(wait).await;
    }
    tracing::warn!(
        events = events.len(),
        "POST /v1/events kept failing; batch given up"
    );
    events.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn better_matches_and_higher_positions_are_clicked_more() {
        assert!(click_probability(0.9, 0) > click_probability(0.3, 0));
        assert!(click_probability(0.9, 0) > click_probability(0.9, 5));
        assert!((0.0..=1.0).contains(&click_probability(1.0, 0)));
    }
}
