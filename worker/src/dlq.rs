//! The dead-letter queue: messages the worker cannot process, with the reason
//! and where they came from, so they can be inspected and replayed.

use std::time::Duration;

use domain::ports::pipeline::StoreError;
use futures::future::join_all;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

/// One dead letter as produced to the DLQ topic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    /// Why the message was rejected, e.g. `must be a UUID`.
    pub reason: String,
    /// The offending field (`body` when the JSON itself is malformed).
    pub field: String,
    pub source_topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The original payload, when it is valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The original payload in base64, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// The original payload's size in bytes, when only its first
    /// [`MAX_LETTER_PAYLOAD`] bytes are kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated_from: Option<usize>,
    #[serde(skip)]
    pub key: Option<Vec<u8>>,
}

impl DeadLetter {
    pub fn new(
        reason: String,
        field: String,
        source_topic: &str,
        partition: i32,
        offset: i64,
        key: Option<Vec<u8>>,
        payload: &[u8],
    ) -> Self {
        let (kept, truncated_from) = match payload.get(..MAX_LETTER_PAYLOAD) {
            Some(head) if payload.len() > MAX_LETTER_PAYLOAD => (head, Some(payload.len())),
            _ => (payload, None),
        };
        let (payload, payload_base64) = match std::str::from_utf8(kept) {
            Ok(text) => (Some(text.to_owned()), None),
            // The cut went through a multi-byte character: keep the text before it.
            Err(e) if truncated_from.is_some() && e.error_len().is_none() => (
                Some(String::from_utf8_lossy(&kept[..e.valid_up_to()]).into_owned()),
                None,
            ),
            Err(_) => (None, Some(base64(kept))),
        };
        Self {
            reason,
            field,
            source_topic: source_topic.to_owned(),
            partition,
            offset,
            payload,
            payload_base64,
            truncated_from,
            key,
        }
    }
}

/// Most payload bytes a dead letter keeps. Escaped into JSON (at most six
/// bytes per byte) or base64, a letter stays under the broker's 1 MB message
/// limit: a larger one could never be produced, and the partition it came
/// from would wait on it forever.
pub const MAX_LETTER_PAYLOAD: usize = 128 * 1024;

/// Produces dead letters and waits for the broker to acknowledge them.
#[derive(Clone)]
pub struct DeadLetterQueue {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl DeadLetterQueue {
    pub fn new(producer: FutureProducer, topic: String, timeout: Duration) -> Self {
        Self {
            producer,
            topic,
            timeout,
        }
    }

    /// Send all, keyed like the originals; succeeds only when every one is acknowledged.
    pub async fn send_all(&self, letters: &[DeadLetter]) -> Result<(), StoreError> {
        let sends = letters.iter().map(|letter| async move {
            let body = serde_json::to_vec(letter).map_err(|e| {
                StoreError::new("kafka", false, format!("encoding a dead letter: {e}"))
            })?;
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).payload(&body);
            if let Some(key) = &letter.key {
                record = record.key(key.as_slice());
            }
            self.producer
                .send(record, self.timeout)
                .await
                .map(|_| ())
                .map_err(|(e, _)| {
                    StoreError::new("kafka", true, format!("producing to the DLQ: {e}"))
                })
        });
        for result in join_all(sends).await {
            result?;
        }
        Ok(())
    }
}

/// Standard base64 with padding (RFC 4648); the DLQ's only binary encoding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    #[test]
    fn a_huge_payload_is_cut_to_fit_and_its_size_kept() {
        // "é" is two bytes; the cut at MAX_LETTER_PAYLOAD falls inside one.
        let text = format!("x{}", "é".repeat(MAX_LETTER_PAYLOAD));
        let letter = DeadLetter::new(
            "bad".into(),
            "body".into(),
            "t",
            0,
            1,
            None,
            text.as_bytes(),
        );
        assert_eq!(letter.truncated_from, Some(text.len()));
        let kept = letter.payload.unwrap();
        assert_eq!(kept.len(), MAX_LETTER_PAYLOAD - 1);
        assert!(text.starts_with(&kept));
        let binary = vec![0xff; MAX_LETTER_PAYLOAD * 2];
        let letter = DeadLetter::new("bad".into(), "body".into(), "t", 0, 1, None, &binary);
        assert_eq!(letter.truncated_from, Some(binary.len()));
        assert_eq!(
            letter.payload_base64.unwrap().len(),
            MAX_LETTER_PAYLOAD.div_ceil(3) * 4
        );
        let small = DeadLetter::new("bad".into(), "body".into(), "t", 0, 1, None, b"{x");
        assert_eq!(small.truncated_from, None);
        assert!(serde_json::to_value(&small)
            .unwrap()
            .get("truncated_from")
            .is_none());
    }

    #[test]
    fn binary_payloads_are_base64_and_text_stays_text() {
        let letter = DeadLetter::new("bad".into(), "body".into(), "t", 1, 7, None, &[0xff, 0x00]);
        assert_eq!(letter.payload, None);
        assert_eq!(letter.payload_base64.as_deref(), Some("/wA="));
        let json = serde_json::to_value(&letter).unwrap();
        assert_eq!(json["partition"], 1);
        assert!(json.get("payload").is_none());
        let letter = DeadLetter::new("bad".into(), "body".into(), "t", 1, 7, None, b"{x");
        assert_eq!(letter.payload.as_deref(), Some("{x"));
    }
}
