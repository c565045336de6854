//! `cargo run --release -p domain --example bench_json_out`: writes the
//! impression event of a ten-movie answer with [`Event::to_json`] (the
//! hand-written writer) and, as the baseline in the same process, with
//! serde_json from a derived borrowed struct (the writer it replaced), and
//! prints the time per event of each and their ratio.
//! `ROUNDS` sets the events written per measurement (default 1,000,000).

use std::hint::black_box;
use std::time::Instant;

use chrono::{DateTime, Utc};
use domain::events::{Event, EventKind, ImpressionDetails, ServedItem};
use domain::ids::{AlgorithmKey, ArmKey, EventId, ExperimentKey, MovieId, RequestId, UserId};
use serde::Serialize;
use uuid::Uuid;

/// The serde baseline: the event's fields borrowed, as before the hand-written writer.
#[derive(Serialize)]
struct WireEvent<'a> {
    event_id: Uuid,
    #[serde(rename = "type")]
    kind: &'a str,
    user_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    movie_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<Uuid>,
    ts: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<f64>,
    experiment: &'a str,
    arm: &'a str,
    algorithm: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_version: Option<&'a str>,
    items: &'a [ServedItem],
}

fn with_serde(event: &Event) -> Vec<u8> {
    let Some(imp) = event.impression.as_ref() else {
        return Vec::new();
    };
    let wire = WireEvent {
        event_id: event.id.as_uuid(),
        kind: event.kind.as_str(),
        user_id: event.user_id.as_str(),
        movie_id: event.movie_id.map(MovieId::get),
        request_id: event.request_id.map(|r| r.as_uuid()),
        ts: event.ts,
        value: event.value,
        experiment: imp.experiment.as_str(),
        arm: imp.arm.as_str(),
        algorithm: imp.algorithm.as_str(),
        model_version: imp.model_version.as_deref(),
        items: &imp.items,
    };
    let mut out = Vec::with_capacity(320 + 32 * imp.items.len());
    let _ = serde_json::to_writer(&mut out, &wire);
    out
}

fn time_per_event(rounds: u32, write: impl Fn() -> Vec<u8>) -> f64 {
    let started = Instant::now();
    for _ in 0..rounds {
        black_box(write());
    }
    started.elapsed().as_nanos() as f64 / f64::from(rounds)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let event = Event {
        id: EventId::from(Uuid::now_v7()),
        kind: EventKind::Impression,
        user_id: UserId::parse("user-12345")?,
        movie_id: None,
        request_id: Some(RequestId::from(Uuid::now_v7())),
        ts: Utc::now(),
        value: None,
        impression: Some(ImpressionDetails {
            experiment: ExperimentKey::parse("home-row")?,
            arm: ArmKey::parse("treatment")?,
            algorithm: AlgorithmKey::parse("als")?,
            model_version: Some("als-20261202-081500".to_owned()),
            items: (0..10)
                .map(|i| {
                    Ok(ServedItem {
                        movie_id: MovieId::parse(1000 + i * 37)?,
                        position: i as u16,
                    })
                })
                .collect::<Result<_, domain::ValidationError>>()?,
        }),
    };
    assert_eq!(
        event.to_json(),
        with_serde(&event),
        "the two writers disagree"
    );
    // ROUNDS=10000 for a run under `valgrind --tool=callgrind`, which counts
    // instructions and so is not moved by other load on the machine.
    let rounds = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1_000_000);
    // Warm both, then alternate, so drift on a shared machine hits both alike.
    time_per_event(rounds / 10, || with_serde(&event));
    time_per_event(rounds / 10, || event.to_json());
    let (mut serde_ns, mut hand_ns) = (0.0, 0.0);
    for _ in 0..3 {
        serde_ns += time_per_event(rounds, || with_serde(&event)) / 3.0;
        hand_ns += time_per_event(rounds, || event.to_json()) / 3.0;
    }
    println!("impression of 10 movies, {} bytes", event.to_json().len());
    println!("serde_json (baseline): {serde_ns:8.1} ns per event");
    println!("Event::to_json:        {hand_ns:8.1} ns per event");
    println!("ratio baseline/to_json: {:.2}", serde_ns / hand_ns);
    // Linux's peak resident set of this process, for the record.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(peak) = status.lines().find(|l| l.starts_with("VmHWM:")) {
        println!("peak RSS: {}", peak.trim_start_matches("VmHWM:").trim());
    }
    Ok(())
}
