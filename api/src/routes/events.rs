//! `POST /v1/events`: clicks, views, likes and conversions from front-ends,
//! validated one by one and produced to Kafka keyed by user id.
//!
//! The event_id is the producer's: the api never invents one, so a client
//! that retries a batch sends the same ids and the worker counts each once.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use domain::events::{Event, EventRules, RawEvent};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::ClientAccess;
use crate::error::{ApiError, ApiResult, ErrorDetail};
use crate::extract::{decode_value, ApiJson};
use crate::state::AppState;

/// A batch of events.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    /// 1 to `MARQUEE_MAX_EVENTS_PER_BATCH` (1,000) events, each
    /// `{event_id (uuid), type (click|view|like|conversion|dislike|not_interested), user_id, movie_id?, request_id?, ts?, value?}`;
    /// `movie_id` is required except on conversions, `ts` (RFC 3339, default
    /// now) must lie between 1970 and five minutes from now, `value` must be finite.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
}

/// Why one event of a batch was not accepted.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventError {
    /// Position of the event in the batch.
    pub index: usize,
    /// The offending field, e.g. `movie_id`; absent when the event was valid but could not be stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

/// What became of one posted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// New, and now durable in Kafka.
    Accepted,
    /// Its event_id was accepted before with the same content (a retry): in
    /// Kafka again, and counted once.
    Duplicate,
    /// Its event_id was accepted before with other content: not produced;
    /// an event_id names one event.
    Conflict,
    /// Failed validation (see `errors`).
    Invalid,
    /// Valid, but Kafka did not take it: retry it with the same event_id.
    Failed,
}

/// What happened to a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsAccepted {
    /// Events now durable in Kafka (duplicates included).
    pub accepted: usize,
    /// Of those, events whose event_id was accepted before with the same content.
    pub duplicates: usize,
    /// Events refused; each is listed in `errors`.
    pub rejected: usize,
    pub errors: Vec<EventError>,
    /// One status per posted event, in the batch's order.
    pub statuses: Vec<EventStatus>,
}

/// The 400 answer when no event of the batch is valid: the api's error body
/// plus every event's reason.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsRejected {
    pub error: ErrorDetail,
    pub errors: Vec<EventError>,
}

/// Accept a batch of client events.
#[utoipa::path(post, path = "/v1/events", tag = "serving",
    request_body = EventBatch,
    responses(
        (status = 202, body = EventsAccepted, description = "valid events are in Kafka; invalid ones are listed by index"),
        (status = 400, body = EventsRejected, description = "no event of the batch is valid, or the batch is empty or too large"),
        (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody),
        (status = 413, body = crate::error::ErrorBody, description = "body larger than MARQUEE_MAX_BODY_BYTES"),
        (status = 415, body = crate::error::ErrorBody, description = "not application/json"),
        (status = 503, body = crate::error::ErrorBody, description = "Kafka did not acknowledge any event; retry with the same event ids"),
    ),
    security(("api_key" = []))
)]
pub async fn post_events(
    _caller: ClientAccess,
    State(state): State<AppState>,
    ApiJson(batch): ApiJson<EventBatch>,
) -> ApiResult<Response> {
    let max = state.config.max_events_per_batch;
    if batch.events.is_empty() {
        return Err(ApiError::bad_request(
            "events",
            "must hold at least one event",
        ));
    }
    if batch.events.len() > max {
        return Err(ApiError::bad_request(
            "events",
            format!("must hold at most {max} events, got {}", batch.events.len()),
        ));
    }
    let total = batch.events.len();
    let (valid, mut errors) = validate_batch(batch.events);
    if valid.is_empty() {
        let first = errors.first();
        let body = EventsRejected {
            error: ErrorDetail {
                code: "validation_failed".into(),
                message: "no event of the batch is valid".into(),
                field: first
                    .and_then(|e| e.field.as_ref().map(|f| format!("events[{}].{f}", e.index))),
            },
            errors,
        };
        return Ok((StatusCode::BAD_REQUEST, Json(body)).into_response());
    }
    let mut statuses = vec![EventStatus::Invalid; total];
    let screened = screen_reused_ids(&state, valid).await;
    let mut duplicates = 0;
    let mut to_send = Vec::with_capacity(screened.len());
    for (index, event, seen) in screened {
        match seen {
            Seen::Conflict => {
                statuses[index] = EventStatus::Conflict;
                errors.push(EventError {
                    index,
                    field: Some("event_id".into()),
                    message: "this event_id was accepted before with other content; an event_id names one event".into(),
                });
            }
            Seen::Duplicate => {
                duplicates += 1;
                to_send.push((index, event, EventStatus::Duplicate));
            }
            Seen::New => to_send.push((index, event, EventStatus::Accepted)),
        }
    }
    let events: Vec<Event> = to_send.iter().map(|(_, e, _)| e.clone()).collect();
    let results = state.serving.producer.send_all(&events).await;
    let mut accepted = 0;
    let mut last_failure = None;
    for ((index, _, status), result) in to_send.iter().zip(results) {
        match result {
            Ok(()) => {
                accepted += 1;
                statuses[*index] = *status;
            }
            Err(e) => {
                statuses[*index] = EventStatus::Failed;
                if *status == EventStatus::Duplicate {
                    duplicates -= 1;
                }
                errors.push(EventError {
                    index: *index,
                    field: None,
                    message: format!("not stored, retry it: {e}"),
                });
                last_failure = Some(e);
            }
        }
    }
    // A dislike takes the movie out of the user's next list on this replica
    // at once; everywhere else once the worker has stored it.
    for (index, event, _) in &to_send {
        if event.kind.is_negative() && statuses[*index] != EventStatus::Failed {
            if let Some(movie) = event.movie_id {
                state.serving.exclude_at_once(&event.user_id, &[movie]);
            }
        }
    }
    metrics::counter!("marquee_events_accepted_total").increment(accepted as u64);
    if accepted == 0 {
        if let Some(e) = last_failure {
            return Err(ApiError::Unavailable(format!("kafka ({e})")));
        }
    }
    errors.sort_by_key(|e| e.index);
    let rejected = errors.len();
    metrics::counter!("marquee_events_rejected_total").increment(rejected as u64);
    Ok((
        StatusCode::ACCEPTED,
        Json(EventsAccepted {
            accepted,
            duplicates,
            rejected,
            errors,
            statuses,
        }),
    )
        .into_response())
}

/// Whether a posted event's id was accepted before, and with what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    New,
    Duplicate,
    Conflict,
}

/// Tell retries and reused ids from new events by the content digest each
/// event_id was first accepted with. Without Redis every event passes as new:
/// the worker's ledger still counts each id once, only the report is lost.
async fn screen_reused_ids(state: &AppState, valid: Vec<ValidEvent>) -> Vec<(usize, Event, Seen)> {
    let ttl_s = state.config.event_fingerprint_ttl_s;
    if ttl_s == 0 {
        return valid
            .into_iter()
            .map(|v| (v.index, v.event, Seen::New))
            .collect();
    }
    let claims: Vec<_> = valid
        .iter()
        .map(|v| (v.event.id, v.event.content_fingerprint(v.ts_given)))
        .collect();
    let earlier = match state.stores.redis.claim_fingerprints(&claims, ttl_s).await {
        Ok(earlier) if earlier.len() == claims.len() => earlier,
        Ok(_) | Err(_) => {
            metrics::counter!("marquee_events_fingerprint_errors_total").increment(1);
            tracing::warn!(
                "event fingerprints unavailable; reused event ids go unreported in this batch"
            );
            vec![None; claims.len()]
        }
    };
    valid
        .into_iter()
        .zip(claims.iter().zip(earlier))
        .map(|(v, ((_, mine), earlier))| {
            let seen = match earlier {
                None => Seen::New,
                Some(first) if first == *mine => Seen::Duplicate,
                Some(_) => Seen::Conflict,
            };
            if seen != Seen::New {
                let content = if seen == Seen::Duplicate {
                    "same"
                } else {
                    "different"
                };
                metrics::counter!("marquee_events_duplicate_total", "content" => content)
                    .increment(1);
            }
            (v.index, v.event, seen)
        })
        .collect()
}

/// A valid event of a batch: where it was, and whether its sender stamped it.
struct ValidEvent {
    index: usize,
    event: Event,
    ts_given: bool,
}

/// Split a batch into valid events (with their index) and per-index errors.
fn validate_batch(events: Vec<serde_json::Value>) -> (Vec<ValidEvent>, Vec<EventError>) {
    let now = Utc::now();
    let rules = EventRules {
        allow_impressions: false,
        ..EventRules::default()
    };
    let mut valid = Vec::with_capacity(events.len());
    let mut errors = Vec::new();
    for (index, value) in events.into_iter().enumerate() {
        let ts_given = value.get("ts").is_some_and(|ts| !ts.is_null());
        let parsed = decode_value::<RawEvent>(value)
            .map_err(|e| match e {
                ApiError::BadRequest { field, message, .. } => {
                    (field.filter(|f| f != "body"), message)
                }
                other => (None, other.to_string()),
            })
            .and_then(|raw| {
                raw.validate(now, rules)
                    .map_err(|e| (Some(e.field), e.message))
            });
        match parsed {
            Ok(event) => valid.push(ValidEvent {
                index,
                event,
                ts_given,
            }),
            Err((field, message)) => errors.push(EventError {
                index,
                field: field.or_else(|| Some("event".into())),
                message,
            }),
        }
    }
    (valid, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_each_invalid_event_by_index_and_field() {
        let (valid, errors) = validate_batch(vec![
            json!({"event_id": "6f1c1a43-7a0b-4a27-9d3b-7c1a3d0f9e01", "type": "click", "user_id": "u1", "movie_id": 3}),
            json!({"event_id": "not-a-uuid", "type": "click", "user_id": "u1", "movie_id": 3}),
            json!({"event_id": "6f1c1a43-7a0b-4a27-9d3b-7c1a3d0f9e02", "type": "click", "user_id": "u1"}),
            json!({"event_id": "6f1c1a43-7a0b-4a27-9d3b-7c1a3d0f9e03", "type": "click", "user_id": "u1", "movie_id": 3, "colour": 1}),
            json!({"event_id": "6f1c1a43-7a0b-4a27-9d3b-7c1a3d0f9e04", "type": "impression", "user_id": "u1"}),
            json!("not an object"),
        ]);
        assert_eq!(valid.len(), 1);
        let fields: Vec<(usize, Option<&str>)> = errors
            .iter()
            .map(|e| (e.index, e.field.as_deref()))
            .collect();
        assert_eq!(
            fields,
            vec![
                (1, Some("event_id")),
                (2, Some("movie_id")),
                (3, Some("colour")),
                (4, Some("type")),
                (5, Some("event")),
            ]
        );
    }
}
