//! Property tests of the event parser on input no client should send: random
//! bytes, and JSON with the right keys holding values of the wrong kinds.
//! Whatever arrives, the parser answers without panicking, with at least one
//! result, and every rejection names a field and a reason (the dead letter's).

use chrono::Utc;
use domain::events::{events_from_record, EventRules};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    let results = events_from_record(bytes, Utc::now(), EventRules::default());
    prop_assert!(!results.is_empty());
    for result in results {
        if let Err(rejected) = result {
            prop_assert!(!rejected.error.field.is_empty());
            prop_assert!(!rejected.error.message.is_empty());
        }
    }
    Ok(())
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::from),
        Just(json!("2026-12-07T10:00:00Z")),
        Just(json!("00000000-0000-4000-8000-000000000001")),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const KEYS: [&str; 12] = [
    "event_id",
    "type",
    "user_id",
    "movie_id",
    "ts",
    "request_id",
    "value",
    "experiment",
    "arm",
    "position",
    "algorithm",
    "items",
];

/// An object with a random subset of the event's keys, each holding any value.
fn event_shaped() -> impl Strategy<Value = Value> {
    proptest::collection::vec((0..KEYS.len(), any_json()), 0..12).prop_map(|fields| {
        let mut object = Map::new();
        for (k, v) in fields {
            object.insert(KEYS[k].to_owned(), v);
        }
        Value::Object(object)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3_000))]

    #[test]
    fn random_bytes_never_panic_and_every_rejection_names_a_field(
        bytes in proptest::collection::vec(any::<u8>(), 0..600)
    ) {
        check(&bytes)?;
    }

    #[test]
    fn an_array_of_random_bytes_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..300)
    ) {
        let mut record = b"[".to_vec();
        record.extend(bytes);
        check(&record)?;
    }

}

proptest! {
    // Fewer cases: each builds nested JSON, about 25 ms apiece in a debug build.
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn event_shaped_json_of_the_wrong_kinds_never_panics(events in proptest::collection::vec(event_shaped(), 1..4)) {
        check(&serde_json::to_vec(&events[0]).unwrap_or_default())?;
        check(&serde_json::to_vec(&events).unwrap_or_default())?;
    }
}
