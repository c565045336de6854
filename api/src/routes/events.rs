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
use crate::extract::ApiJson;
use crate::state::AppState;

/// A batch of events.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    /// 1 to `MARQUEE_MAX_EVENTS_PER_BATCH` (1,000) events, each
    /// `{event_id (uuid), type (click|view|like|conversion), user_id, movie_id?, request_id?, ts?, value?}`;
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

/// What happened to a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsAccepted {
    /// Events now durable in Kafka.
    pub accepted: usize,
    /// Events refused; each is listed in `errors`.
    pub rejected: usize,
    pub errors: Vec<EventError>,
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
    let events: Vec<Event> = valid.iter().map(|(_, e)| e.clone()).collect();
    let results = state.serving.producer.send_all(&events).await;
    let mut accepted = 0;
    let mut last_failure = None;
    for ((index, _), result) in valid.iter().zip(results) {
        match result {
            Ok(()) => accepted += 1,
            Err(e) => {
                errors.push(EventError {
                    index: *index,
                    field: None,
                    message: format!("not stored, retry it: {e}"),
                });
                last_failure = Some(e);
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
            rejected,
            errors,
        }),
    )
        .into_response())
}

/// Split a batch into valid events (with their index) and per-index errors.
fn validate_batch(events: Vec<serde_json::Value>) -> (Vec<(usize, Event)>, Vec<EventError>) {
    let now = Utc::now();
    let rules = EventRules {
        allow_impressions: false,
        ..EventRules::default()
    };
    let mut valid = Vec::with_capacity(events.len());
    let mut errors = Vec::new();
    for (index, value) in events.into_iter().enumerate() {
        let parsed = serde_json::from_value::<RawEvent>(value)
            .map_err(|e| (field_of_serde_error(&e.to_string()), e.to_string()))
            .and_then(|raw| {
                raw.validate(now, rules)
                    .map_err(|e| (Some(e.field), e.message))
            });
        match parsed {
            Ok(event) => valid.push((index, event)),
            Err((field, message)) => errors.push(EventError {
                index,
                field: field.or_else(|| Some("event".into())),
                message,
            }),
        }
    }
    (valid, errors)
}

/// serde names unknown and missing fields in backticks, and reports type
/// errors without a field; the event's fields are flat, so the first
/// backticked name is the field (or, for type errors, none is known).
fn field_of_serde_error(message: &str) -> Option<String> {
    if message.starts_with("unknown field") || message.starts_with("missing field") {
        return message.split('`').nth(1).map(str::to_owned);
    }
    None
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
