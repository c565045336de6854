//! Events on the wire: what front-ends, the api and the worker exchange through Kafka.
//!
//! One parser serves both the api (`POST /v1/events`) and the worker (Kafka
//! messages), so a message the api accepts is exactly a message the worker accepts.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{AlgorithmKey, ArmKey, EventId, ExperimentKey, MovieId, RequestId, UserId};
use crate::json_out::JsonObject;
use crate::ValidationError;

/// Longest served list an impression may carry.
pub const MAX_IMPRESSION_ITEMS: usize = 100;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Impression,
    Click,
    View,
    Like,
    Conversion,
    /// The user marked the movie as disliked: negative feedback.
    Dislike,
    /// The user asked not to be shown the movie again: negative feedback.
    NotInterested,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Impression => "impression",
            Self::Click => "click",
            Self::View => "view",
            Self::Like => "like",
            Self::Conversion => "conversion",
            Self::Dislike => "dislike",
            Self::NotInterested => "not_interested",
        }
    }

    /// A user's "not this one": the movie leaves their lists at once.
    pub fn is_negative(self) -> bool {
        matches!(self, Self::Dislike | Self::NotInterested)
    }

    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        match value {
            "impression" => Ok(Self::Impression),
            "click" => Ok(Self::Click),
            "view" => Ok(Self::View),
            "like" => Ok(Self::Like),
            "conversion" => Ok(Self::Conversion),
            "dislike" => Ok(Self::Dislike),
            "not_interested" => Ok(Self::NotInterested),
            _ => Err(ValidationError::new(
                "type",
                "must be one of impression, click, view, like, conversion, dislike, not_interested",
            )),
        }
    }

    /// Kinds a client may send; impressions are only emitted by the api itself.
    pub fn is_client_kind(self) -> bool {
        !matches!(self, Self::Impression)
    }
}

/// One movie in a served list, with its 0-based position.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServedItem {
    pub movie_id: MovieId,
    pub position: u16,
}

/// Which experiment arm served a list: the attribution target of later clicks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attribution {
    pub experiment: ExperimentKey,
    pub arm: ArmKey,
    pub algorithm: AlgorithmKey,
    /// Position of the attributed movie in the served list, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u16>,
}

/// The JSON shape of an event before validation: every field optional so that
/// the validator, not serde, names what is missing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub movie_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    // Impression-only fields, set by the api.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<ServedItem>>,
}

/// The impression-specific part of an event.
#[derive(Debug, Clone, PartialEq)]
pub struct ImpressionDetails {
    pub experiment: ExperimentKey,
    pub arm: ArmKey,
    pub algorithm: AlgorithmKey,
    pub model_version: Option<String>,
    pub items: Vec<ServedItem>,
}

/// A validated event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: EventId,
    pub kind: EventKind,
    pub user_id: UserId,
    pub movie_id: Option<MovieId>,
    pub request_id: Option<RequestId>,
    pub ts: DateTime<Utc>,
    pub value: Option<f64>,
    pub impression: Option<ImpressionDetails>,
}

/// Rules a validator applies that depend on the caller's clock and policy.
#[derive(Debug, Clone, Copy)]
pub struct EventRules {
    /// Events stamped further ahead than this are rejected as clock errors.
    pub max_future_skew: Duration,
    /// Events stamped further back than this are rejected: 30 days by
    /// default, past Kafka's default retention of 7, so a worker replaying
    /// its backlog never refuses a genuine late event, while a stamp of 1970
    /// (an unset clock) cannot land in a closed period of a results report.
    pub max_age: Duration,
    /// Whether `impression` events are acceptable (worker: yes; client API: no).
    pub allow_impressions: bool,
    /// The largest `value` each event type may carry.
    pub value_bounds: ValueBounds,
}

impl Default for EventRules {
    fn default() -> Self {
        Self {
            max_future_skew: Duration::minutes(5),
            max_age: Duration::days(30),
            allow_impressions: true,
            value_bounds: ValueBounds::default(),
        }
    }
}

/// Upper bounds of `value` per event type (every value is at least 0).
///
/// A value is a measure of the event (seconds watched, an amount paid), so a
/// bound is what no real event reaches; without one, two conversions of
/// 1.7e308 made the per-arm value sum infinite and the mean value null.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValueBounds {
    /// Views: seconds watched; default one week.
    pub view: f64,
    /// Conversions: an amount; default 1e9.
    pub conversion: f64,
    /// Clicks, likes and impressions; default 1e6.
    pub other: f64,
}

impl Default for ValueBounds {
    fn default() -> Self {
        Self {
            view: 7.0 * 86_400.0,
            conversion: 1e9,
            other: 1e6,
        }
    }
}

impl ValueBounds {
    /// The bound of `kind`'s value.
    pub fn max_for(&self, kind: EventKind) -> f64 {
        match kind {
            EventKind::View => self.view,
            EventKind::Conversion => self.conversion,
            _ => self.other,
        }
    }
}

fn required<T>(field: &str, value: Option<T>) -> Result<T, ValidationError> {
    value.ok_or_else(|| ValidationError::new(field, "is required"))
}

fn parse_uuid(field: &str, value: &str) -> Result<Uuid, ValidationError> {
    Uuid::parse_str(value).map_err(|_| ValidationError::new(field, "must be a UUID"))
}

impl RawEvent {
    /// Validate into an [`Event`], stamping `now` when the producer gave no `ts`.
    pub fn validate(self, now: DateTime<Utc>, rules: EventRules) -> Result<Event, ValidationError> {
        let id = EventId::from(parse_uuid(
            "event_id",
            &required("event_id", self.event_id)?,
        )?);
        let kind = EventKind::parse(&required("type", self.kind)?)?;
        if kind == EventKind::Impression && !rules.allow_impressions {
            return Err(ValidationError::new(
                "type",
                "impression events are emitted by the api only",
            ));
        }
        let user_id = UserId::parse(required("user_id", self.user_id)?)?;
        let movie_id = self.movie_id.map(MovieId::parse).transpose()?;
        if (matches!(kind, EventKind::Click | EventKind::View | EventKind::Like)
            || kind.is_negative())
            && movie_id.is_none()
        {
            return Err(ValidationError::new(
                "movie_id",
                "is required for this event type",
            ));
        }
        let request_id = self
            .request_id
            .as_deref()
            .map(|r| parse_uuid("request_id", r).map(RequestId::from))
            .transpose()?;
        let ts = self.ts.unwrap_or(now);
        if ts > now + rules.max_future_skew {
            return Err(ValidationError::new("ts", "is too far in the future"));
        }
        // ClickHouse's DateTime starts at the epoch and PostgreSQL's timestamptz
        // at 4713 BC: an earlier stamp is a client's error, and accepted it
        // would fail every write of its batch (or be stored as 1970).
        if ts < DateTime::UNIX_EPOCH {
            return Err(ValidationError::new(
                "ts",
                "must not be before 1970-01-01T00:00:00Z",
            ));
        }
        if ts < now - rules.max_age {
            return Err(ValidationError::new(
                "ts",
                format!("is older than the {}-day horizon", rules.max_age.num_days()),
            ));
        }
        if let Some(value) = self.value {
            let max = rules.value_bounds.max_for(kind);
            // `!(..)` so that NaN is refused too.
            if !(0.0..=max).contains(&value) {
                return Err(ValidationError::new(
                    "value",
                    format!(
                        "must be a number from 0 to {max} for a {} event",
                        kind.as_str()
                    ),
                ));
            }
        }
        let impression = if kind == EventKind::Impression {
            if request_id.is_none() {
                return Err(ValidationError::new(
                    "request_id",
                    "is required for impressions",
                ));
            }
            let items = required("items", self.items)?;
            if items.is_empty() || items.len() > MAX_IMPRESSION_ITEMS {
                return Err(ValidationError::new(
                    "items",
                    format!("must hold 1 to {MAX_IMPRESSION_ITEMS} items"),
                ));
            }
            Some(ImpressionDetails {
                experiment: ExperimentKey::parse(required("experiment", self.experiment)?)?,
                arm: ArmKey::parse(required("arm", self.arm)?)?,
                algorithm: AlgorithmKey::parse(required("algorithm", self.algorithm)?)?,
                model_version: self.model_version,
                items,
            })
        } else {
            for (field, present) in [
                ("experiment", self.experiment.is_some()),
                ("arm", self.arm.is_some()),
                ("algorithm", self.algorithm.is_some()),
                ("model_version", self.model_version.is_some()),
                ("items", self.items.is_some()),
            ] {
                if present {
                    return Err(ValidationError::new(
                        field,
                        "is only allowed on impressions",
                    ));
                }
            }
            None
        };
        Ok(Event {
            id,
            kind,
            user_id,
            movie_id,
            request_id,
            ts,
            value: self.value,
            impression,
        })
    }
}

impl Event {
    /// A digest of what the event says, its id aside: a retry of the same
    /// event has the same one, another event under a reused id (almost
    /// surely) does not. `ts_given` tells whether the sender stamped it; a
    /// stamp the receiver filled in with its own clock differs per attempt,
    /// so it is left out. SHA-256 truncated to 128 bits, hex: the same on
    /// every replica and release, unlike std's hasher.
    pub fn content_fingerprint(&self, ts_given: bool) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        let field = |hasher: &mut Sha256, bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        field(&mut hasher, self.kind.as_str().as_bytes());
        field(&mut hasher, self.user_id.as_str().as_bytes());
        field(
            &mut hasher,
            &self.movie_id.map_or(i64::MIN, MovieId::get).to_le_bytes(),
        );
        field(
            &mut hasher,
            self.request_id
                .map(|r| r.as_uuid())
                .unwrap_or_default()
                .as_bytes(),
        );
        let ts = ts_given.then(|| self.ts.timestamp_nanos_opt().unwrap_or(i64::MIN));
        field(&mut hasher, &ts.unwrap_or(0).to_le_bytes());
        field(&mut hasher, &[u8::from(ts.is_some())]);
        field(
            &mut hasher,
            &self.value.map_or(u64::MAX, f64::to_bits).to_le_bytes(),
        );
        hex::encode(&hasher.finalize()[..16])
    }

    /// The request whose served list this impression records.
    pub fn served_request(&self) -> Option<RequestId> {
        match self.kind {
            EventKind::Impression => self.request_id,
            _ => None,
        }
    }

    /// The request whose served list this click, view, like or conversion acts on.
    pub fn acted_on_request(&self) -> Option<RequestId> {
        match self.kind {
            EventKind::Impression => None,
            _ => self.request_id,
        }
    }

    /// Parse and validate one Kafka message payload.
    pub fn from_json(
        bytes: &[u8],
        now: DateTime<Utc>,
        rules: EventRules,
    ) -> Result<Self, ValidationError> {
        let raw: RawEvent = serde_json::from_slice(bytes)
            .map_err(|e| ValidationError::new("body", format!("invalid event JSON: {e}")))?;
        raw.validate(now, rules)
    }

    /// The owned wire form [`Event::to_json`] was built from before it
    /// borrowed its fields; kept as the reference its output must match.
    #[cfg(test)]
    fn to_raw(&self) -> RawEvent {
        let imp = self.impression.as_ref();
        RawEvent {
            event_id: Some(self.id.to_string()),
            kind: Some(self.kind.as_str().to_owned()),
            user_id: Some(self.user_id.to_string()),
            movie_id: self.movie_id.map(MovieId::get),
            request_id: self.request_id.map(|r| r.to_string()),
            ts: Some(self.ts),
            value: self.value,
            experiment: imp.map(|i| i.experiment.to_string()),
            arm: imp.map(|i| i.arm.to_string()),
            algorithm: imp.map(|i| i.algorithm.to_string()),
            model_version: imp.and_then(|i| i.model_version.clone()),
            items: imp.map(|i| i.items.clone()),
        }
    }

    /// The wire form, as produced to Kafka: [`RawEvent`]'s fields in its
    /// order, absent ones left out. Written by hand ([`crate::json_out`]):
    /// the api emits one per request.
    pub fn to_json(&self) -> Vec<u8> {
        let impression = self.impression.as_ref().map(|i| ImpressionFields {
            experiment: &i.experiment,
            arm: &i.arm,
            algorithm: &i.algorithm,
            model_version: i.model_version.as_deref(),
        });
        let items = self.impression.as_ref().map_or(&[][..], |i| &i.items[..]);
        write_event(
            EventHead {
                id: self.id,
                kind: self.kind,
                user_id: &self.user_id,
                movie_id: self.movie_id,
                request_id: self.request_id,
                ts: &self.ts,
                value: self.value,
            },
            impression,
            items
                .iter()
                .map(|served| (served.movie_id, served.position)),
        )
    }
}

/// An impression borrowed from the request that served it, written straight
/// to the same wire form as the equivalent [`Event`]: the api emits one per
/// request, and an owned `Event` cost six allocations of values it holds.
#[derive(Debug, Clone, Copy)]
pub struct ImpressionRef<'a> {
    pub id: EventId,
    pub user_id: &'a UserId,
    pub request_id: RequestId,
    pub ts: DateTime<Utc>,
    pub experiment: &'a ExperimentKey,
    pub arm: &'a ArmKey,
    pub algorithm: &'a AlgorithmKey,
    pub model_version: Option<&'a str>,
}

impl ImpressionRef<'_> {
    /// The wire form of this impression of `movies`, served in that order.
    pub fn to_json(&self, movies: impl ExactSizeIterator<Item = MovieId>) -> Vec<u8> {
        write_event(
            EventHead {
                id: self.id,
                kind: EventKind::Impression,
                user_id: self.user_id,
                movie_id: None,
                request_id: Some(self.request_id),
                ts: &self.ts,
                value: None,
            },
            Some(ImpressionFields {
                experiment: self.experiment,
                arm: self.arm,
                algorithm: self.algorithm,
                model_version: self.model_version,
            }),
            // Lists are at most MAX_IMPRESSION_ITEMS long: a position fits.
            movies
                .enumerate()
                .map(|(position, movie)| (movie, position as u16)),
        )
    }
}

/// The fields every event has.
struct EventHead<'a> {
    id: EventId,
    kind: EventKind,
    user_id: &'a UserId,
    movie_id: Option<MovieId>,
    request_id: Option<RequestId>,
    ts: &'a DateTime<Utc>,
    value: Option<f64>,
}

/// The fields only impressions have, but their items.
struct ImpressionFields<'a> {
    experiment: &'a ExperimentKey,
    arm: &'a ArmKey,
    algorithm: &'a AlgorithmKey,
    model_version: Option<&'a str>,
}

/// One writer for owned and borrowed events, so the two cannot drift apart.
/// `items` (movie, position) are written only with `impression`.
fn write_event(
    head: EventHead<'_>,
    impression: Option<ImpressionFields<'_>>,
    items: impl ExactSizeIterator<Item = (MovieId, u16)>,
) -> Vec<u8> {
    // Sized for the whole event, so the buffer is never regrown: about 320
    // bytes of ids, keys and timestamp, and 32 per served item.
    let mut out = Vec::with_capacity(320 + 32 * items.len());
    let mut event = JsonObject::start(&mut out);
    event
        .uuid("event_id", head.id.as_uuid())
        .str("type", head.kind.as_str())
        .str("user_id", head.user_id.as_str());
    if let Some(movie) = head.movie_id {
        event.int("movie_id", movie.get());
    }
    if let Some(request) = head.request_id {
        event.uuid("request_id", request.as_uuid());
    }
    event.timestamp("ts", head.ts);
    if let Some(value) = head.value {
        event.serde("value", &value);
    }
    if let Some(imp) = impression {
        event
            .str("experiment", imp.experiment.as_str())
            .str("arm", imp.arm.as_str())
            .str("algorithm", imp.algorithm.as_str());
        if let Some(version) = imp.model_version {
            event.str("model_version", version);
        }
        event.objects("items", items, |item, (movie, position)| {
            item.int("movie_id", movie.get()).int("position", position);
        });
    }
    event.end();
    out
}

/// Most events one Kafka record may carry; a longer array is rejected whole,
/// so one record cannot claim unbounded memory in the worker.
pub const MAX_EVENTS_PER_RECORD: usize = 1_000;

/// An event of a Kafka record that failed to parse or validate, with the
/// bytes it came from (the element, for a record holding several).
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedEvent<'a> {
    pub error: ValidationError,
    pub payload: &'a [u8],
}

/// The events of one Kafka record's value: a single event (a JSON object),
/// or several (a JSON array of them, as the api packs the impressions of one
/// partition into one record, since the broker's cost is per record). Each
/// element is validated on its own, so one bad element rejects only itself;
/// a value that is neither, an empty array or one longer than
/// [`MAX_EVENTS_PER_RECORD`] is rejected whole.
pub fn events_from_record(
    bytes: &[u8],
    now: DateTime<Utc>,
    rules: EventRules,
) -> Vec<Result<Event, RejectedEvent<'_>>> {
    let whole = |error: ValidationError| {
        vec![Err(RejectedEvent {
            error,
            payload: bytes,
        })]
    };
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'[') {
        return vec![
            Event::from_json(bytes, now, rules).map_err(|error| RejectedEvent {
                error,
                payload: bytes,
            }),
        ];
    }
    let elements: Vec<&serde_json::value::RawValue> = match serde_json::from_slice(bytes) {
        Ok(elements) => elements,
        Err(e) => {
            return whole(ValidationError::new(
                "body",
                format!("invalid event array JSON: {e}"),
            ))
        }
    };
    if elements.is_empty() || elements.len() > MAX_EVENTS_PER_RECORD {
        return whole(ValidationError::new(
            "body",
            format!("an event array must hold 1 to {MAX_EVENTS_PER_RECORD} events"),
        ));
    }
    elements
        .into_iter()
        .map(|element| {
            let payload = element.get().as_bytes();
            Event::from_json(payload, now, rules).map_err(|error| RejectedEvent { error, payload })
        })
        .collect()
}

/// One Kafka record's value carrying `events`, each already in its wire form
/// ([`Event::to_json`]): the inverse of [`events_from_record`].
pub fn record_of<'a>(events: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    out.push(b'[');
    for (i, event) in events.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(event);
    }
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn click() -> RawEvent {
        RawEvent {
            event_id: Some(Uuid::nil().to_string()),
            kind: Some("click".into()),
            user_id: Some("u1".into()),
            movie_id: Some(7),
            ..Default::default()
        }
    }

    #[test]
    fn a_fingerprint_changes_with_the_content_not_with_a_filled_in_stamp() {
        let event = click().validate(now(), EventRules::default()).unwrap();
        let later = click()
            .validate(now() + Duration::seconds(3), EventRules::default())
            .unwrap();
        assert_eq!(
            event.content_fingerprint(false),
            later.content_fingerprint(false)
        );
        assert_ne!(
            event.content_fingerprint(true),
            later.content_fingerprint(true)
        );
        let other_movie = RawEvent {
            movie_id: Some(8),
            ..click()
        }
        .validate(now(), EventRules::default())
        .unwrap();
        assert_ne!(
            event.content_fingerprint(false),
            other_movie.content_fingerprint(false)
        );
        assert_eq!(event.content_fingerprint(false).len(), 32);
    }

    #[test]
    fn a_click_validates_and_round_trips() {
        let event = click().validate(now(), EventRules::default()).unwrap();
        assert_eq!(event.ts, now());
        let again = Event::from_json(&event.to_json(), now(), EventRules::default()).unwrap();
        assert_eq!(again, event);
    }

    #[test]
    fn the_wire_form_is_the_raw_form_serialised() {
        let impression = RawEvent {
            event_id: Some(Uuid::now_v7().to_string()),
            kind: Some("impression".into()),
            user_id: Some("u\"1".into()),
            request_id: Some(Uuid::now_v7().to_string()),
            ts: Some("2026-01-01T00:00:00.123456Z".parse().unwrap()),
            experiment: Some("home".into()),
            arm: Some("b".into()),
            algorithm: Some("als".into()),
            model_version: Some("v1".into()),
            items: Some(vec![ServedItem {
                movie_id: MovieId::parse(3).unwrap(),
                position: 0,
            }]),
            ..Default::default()
        };
        let unversioned = RawEvent {
            user_id: Some("u\\2".into()),
            model_version: None,
            items: Some(
                (0..10)
                    .map(|i| ServedItem {
                        movie_id: MovieId::parse(1000 + i).unwrap(),
                        position: i as u16,
                    })
                    .collect(),
            ),
            ..impression.clone()
        };
        let conversion = RawEvent {
            kind: Some("conversion".into()),
            value: Some(9.5),
            ts: Some(now()),
            ..click()
        };
        let attributed_click = RawEvent {
            request_id: Some(Uuid::now_v7().to_string()),
            ..click()
        };
        for raw in [impression, unversioned, conversion, attributed_click] {
            let event = raw.clone().validate(now(), EventRules::default()).unwrap();
            assert_eq!(
                String::from_utf8(event.to_json()).unwrap(),
                serde_json::to_string(&event.to_raw()).unwrap()
            );
        }
    }

    #[test]
    fn a_borrowed_impression_is_written_as_its_event() {
        let movies: Vec<MovieId> = (1..=10).map(|m| MovieId::parse(m * 97).unwrap()).collect();
        for (user, model_version) in [("u\"1", Some("v\\7")), ("u2", None)] {
            let event = RawEvent {
                event_id: Some(Uuid::now_v7().to_string()),
                kind: Some("impression".into()),
                user_id: Some(user.into()),
                request_id: Some(Uuid::now_v7().to_string()),
                ts: Some("2026-01-01T00:00:00.123456Z".parse().unwrap()),
                experiment: Some("home".into()),
                arm: Some("b".into()),
                algorithm: Some("als".into()),
                model_version: model_version.map(str::to_owned),
                items: Some(
                    movies
                        .iter()
                        .enumerate()
                        .map(|(position, &movie_id)| ServedItem {
                            movie_id,
                            position: position as u16,
                        })
                        .collect(),
                ),
                ..Default::default()
            }
            .validate(now(), EventRules::default())
            .unwrap();
            let details = event.impression.as_ref().unwrap();
            let borrowed = ImpressionRef {
                id: event.id,
                user_id: &event.user_id,
                request_id: event.request_id.unwrap(),
                ts: event.ts,
                experiment: &details.experiment,
                arm: &details.arm,
                algorithm: &details.algorithm,
                model_version: details.model_version.as_deref(),
            };
            assert_eq!(
                String::from_utf8(borrowed.to_json(movies.iter().copied())).unwrap(),
                String::from_utf8(event.to_json()).unwrap()
            );
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(RawEvent, &str)> = vec![
            (
                RawEvent {
                    event_id: None,
                    ..click()
                },
                "event_id",
            ),
            (
                RawEvent {
                    event_id: Some("x".into()),
                    ..click()
                },
                "event_id",
            ),
            (
                RawEvent {
                    kind: Some("buy".into()),
                    ..click()
                },
                "type",
            ),
            (
                RawEvent {
                    user_id: Some("".into()),
                    ..click()
                },
                "user_id",
            ),
            (
                RawEvent {
                    movie_id: None,
                    ..click()
                },
                "movie_id",
            ),
            (
                RawEvent {
                    movie_id: Some(-1),
                    ..click()
                },
                "movie_id",
            ),
            (
                RawEvent {
                    request_id: Some("no".into()),
                    ..click()
                },
                "request_id",
            ),
            (
                RawEvent {
                    ts: Some(now() + Duration::days(1)),
                    ..click()
                },
                "ts",
            ),
            (
                RawEvent {
                    arm: Some("a".into()),
                    ..click()
                },
                "arm",
            ),
            (
                RawEvent {
                    ts: Some(DateTime::UNIX_EPOCH - Duration::seconds(1)),
                    ..click()
                },
                "ts",
            ),
            (
                RawEvent {
                    ts: Some(now() - Duration::days(31)),
                    ..click()
                },
                "ts",
            ),
            (
                RawEvent {
                    ts: Some(DateTime::UNIX_EPOCH),
                    ..click()
                },
                "ts",
            ),
            (
                RawEvent {
                    ts: "-5000-01-01T00:00:00Z".parse().ok(),
                    ..click()
                },
                "ts",
            ),
            (
                RawEvent {
                    model_version: Some("v9".into()),
                    ..click()
                },
                "model_version",
            ),
            (
                RawEvent {
                    kind: Some("impression".into()),
                    ..click()
                },
                "request_id",
            ),
        ];
        for (raw, field) in cases {
            let err = raw
                .clone()
                .validate(now(), EventRules::default())
                .unwrap_err();
            assert_eq!(err.field, field, "{raw:?}");
        }
    }

    #[test]
    fn late_events_inside_the_horizon_are_kept() {
        let raw = RawEvent {
            ts: Some(now() - Duration::days(29)),
            ..click()
        };
        assert!(raw.validate(now(), EventRules::default()).is_ok());
        let err = RawEvent {
            ts: Some(now() - Duration::days(31)),
            ..click()
        }
        .validate(now(), EventRules::default())
        .unwrap_err();
        assert!(err.message.contains("30-day horizon"), "{err:?}");
    }

    #[test]
    fn clients_cannot_send_impressions() {
        let rules = EventRules {
            allow_impressions: false,
            ..EventRules::default()
        };
        let raw = RawEvent {
            kind: Some("impression".into()),
            ..click()
        };
        assert_eq!(raw.validate(now(), rules).unwrap_err().field, "type");
    }

    #[test]
    fn malformed_json_is_a_body_error() {
        let err = Event::from_json(b"{not json", now(), EventRules::default()).unwrap_err();
        assert_eq!(err.field, "body");
    }

    fn impression(user: &str) -> Event {
        RawEvent {
            event_id: Some(Uuid::now_v7().to_string()),
            kind: Some("impression".into()),
            user_id: Some(user.into()),
            request_id: Some(Uuid::now_v7().to_string()),
            experiment: Some("home".into()),
            arm: Some("b".into()),
            algorithm: Some("als".into()),
            items: Some(vec![ServedItem {
                movie_id: MovieId::parse(3).unwrap(),
                position: 0,
            }]),
            ..Default::default()
        }
        .validate(now(), EventRules::default())
        .unwrap()
    }

    #[test]
    fn a_record_of_one_object_is_one_event() {
        let event = click().validate(now(), EventRules::default()).unwrap();
        let wire = event.to_json();
        let parsed = events_from_record(&wire, now(), EventRules::default());
        assert_eq!(parsed, vec![Ok(event)]);
    }

    #[test]
    fn a_packed_record_gives_back_every_event_in_order() {
        let events: Vec<Event> = (0..3).map(|i| impression(&format!("u{i}"))).collect();
        let wire: Vec<Vec<u8>> = events.iter().map(Event::to_json).collect();
        let record = record_of(wire.iter().map(Vec::as_slice));
        let parsed = events_from_record(&record, now(), EventRules::default());
        assert_eq!(parsed, events.into_iter().map(Ok).collect::<Vec<_>>());
    }

    #[test]
    fn a_bad_element_rejects_only_itself_with_its_own_bytes() {
        let good = impression("u1").to_json();
        let bad = br#"{"event_id":"x","type":"click","user_id":"u1","movie_id":1}"#;
        let record = record_of([good.as_slice(), bad.as_slice(), good.as_slice()]);
        let parsed = events_from_record(&record, now(), EventRules::default());
        assert_eq!(parsed.len(), 3);
        assert!(parsed[0].is_ok() && parsed[2].is_ok());
        let rejected = parsed[1].as_ref().unwrap_err();
        assert_eq!(rejected.error.field, "event_id");
        assert_eq!(rejected.payload, bad.as_slice());
    }

    #[test]
    fn a_malformed_empty_or_oversized_array_is_rejected_whole() {
        let one = impression("u1").to_json();
        let oversized = record_of(std::iter::repeat_n(
            one.as_slice(),
            MAX_EVENTS_PER_RECORD + 1,
        ));
        for record in [b"[{".to_vec(), b" [] ".to_vec(), b"[1,".to_vec(), oversized] {
            let parsed = events_from_record(&record, now(), EventRules::default());
            assert_eq!(parsed.len(), 1, "{}", String::from_utf8_lossy(&record));
            let rejected = parsed[0].as_ref().unwrap_err();
            assert_eq!(rejected.error.field, "body");
            assert_eq!(rejected.payload, record.as_slice());
        }
        // An element that is not an object fails on its own.
        let parsed = events_from_record(b"[1]", now(), EventRules::default());
        assert_eq!(parsed[0].as_ref().unwrap_err().error.field, "body");
    }

    #[test]
    fn values_are_bounded_per_event_type() {
        let with = |kind: &str, value: f64| RawEvent {
            kind: Some(kind.into()),
            movie_id: (kind != "conversion").then_some(3),
            value: Some(value),
            ..click()
        };
        let rules = EventRules::default();
        for (kind, ok, bad) in [
            ("view", 7.0 * 86_400.0, 7.0 * 86_400.0 + 1.0),
            ("conversion", 1e9, 1.7e308),
            ("click", 0.0, -0.5),
            ("like", 1e6, f64::NAN),
        ] {
            assert!(with(kind, ok).validate(now(), rules).is_ok(), "{kind} {ok}");
            let e = with(kind, bad).validate(now(), rules).unwrap_err();
            assert_eq!(e.field, "value", "{kind} {bad}");
        }
    }
}
