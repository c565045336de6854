//! Reading a test stack's events topic as the worker would: packed records
//! (the api's impressions) are unpacked, and each event is annotated with
//! where and how it travelled.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use repositories::kafka::encoding;
use repositories::kafka::partition_for;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::TestStack;

/// A consumer of `stack`'s events topic from its first offset, in a group of its own.
pub fn consumer(stack: &TestStack) -> StreamConsumer {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.settings.kafka_brokers)
        .set("group.id", format!("events-reader-{}", Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("broker.address.family", "v4")
        .create()
        .unwrap();
    consumer.subscribe(&[&stack.settings.events_topic]).unwrap();
    consumer
}

/// Read events until `want` match or the time is up. A record packing several
/// events (the api's impressions) gives each of them; every event gets the
/// record's partition as `_partition` and its `content-encoding` header as
/// `_encoding` (null when absent), and whether it was a pack as `_packed`.
pub async fn read_until(consumer: &StreamConsumer, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !want(&seen) && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await
        {
            if let Some(payload) = message.payload() {
                let encoding = encoding::content_encoding(message.headers());
                let plain = encoding::decode(encoding, payload).unwrap();
                let (events, packed) = match serde_json::from_slice(&plain).unwrap() {
                    Value::Array(events) => (events, true),
                    event => (vec![event], false),
                };
                for mut event in events {
                    event["_partition"] = json!(message.partition());
                    event["_encoding"] = json!(encoding.map(String::from_utf8_lossy));
                    event["_packed"] = json!(packed);
                    seen.push(event);
                }
            }
        }
    }
    seen
}

/// The partition every Marquee producer gives `user`'s events.
pub fn partition_of(stack: &TestStack, user: &str) -> i64 {
    let partitions = u32::try_from(stack.settings.events_partitions).unwrap();
    i64::from(partition_for(user.as_bytes(), partitions))
}
