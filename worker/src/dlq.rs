//! The dead-letter queue: messages the worker cannot process, with the reason
//! and where they came from, so they can be inspected and replayed.

use std::time::Duration;

use domain::ports::pipeline::StoreError;
use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
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
    /// [`MAX_LETTER_PAYLOAD`] bytes are kept (or none of them, in a letter
    /// the broker refused for its size and that was sent again without them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated_from: Option<usize>,
    /// The original key's size in bytes, when only its first
    /// [`MAX_LETTER_KEY`] bytes are kept as the letter's key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_truncated_from: Option<usize>,
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
        let key_truncated_from = key
            .as_ref()
            .filter(|k| k.len() > MAX_LETTER_KEY)
            .map(Vec::len);
        let key = key.map(|mut k| {
            k.truncate(MAX_LETTER_KEY);
            k
        });
        Self {
            reason,
            field,
            source_topic: source_topic.to_owned(),
            partition,
            offset,
            payload,
            payload_base64,
            truncated_from,
            key_truncated_from,
            key,
        }
    }

    /// The same letter without payload or key, for when the broker refuses
    /// the full one (its limit may be below what [`MAX_LETTER_PAYLOAD`]
    /// assumes): the reason and the source offset always fit.
    pub fn minimal(&self) -> Self {
        let payload_len = self
            .truncated_from
            .or_else(|| self.payload.as_ref().map(String::len))
            .or_else(|| self.payload_base64.as_ref().map(|b| b.len() / 4 * 3));
        Self {
            payload: None,
            payload_base64: None,
            truncated_from: payload_len,
            key_truncated_from: self
                .key_truncated_from
                .or_else(|| self.key.as_ref().map(Vec::len)),
            key: None,
            ..self.clone()
        }
    }
}

/// Most payload bytes a dead letter keeps. Escaped into JSON (at most six
/// bytes per byte) or base64, a letter stays under the broker's 1 MB message
/// limit: a larger one could never be produced, and the partition it came
/// from would wait on it forever.
pub const MAX_LETTER_PAYLOAD: usize = 128 * 1024;

/// Most key bytes a dead letter keeps: keys are user ids, and the payload
/// bound above means nothing if a 300 KB key rides along uncut.
pub const MAX_LETTER_KEY: usize = 1024;

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

    /// Send all, keyed like the originals; succeeds only when every one is
    /// acknowledged. A letter the broker refuses for its size is sent again
    /// as [`DeadLetter::minimal`], so no message can hold its partition up.
    pub async fn send_all(&self, letters: &[DeadLetter]) -> Result<(), StoreError> {
        let sends = letters.iter().map(|letter| async move {
            match self.send(letter).await {
                Err(e) if is_too_large(&e) => {
                    tracing::warn!(
                        partition = letter.partition,
                        offset = letter.offset,
                        error = %e,
                        "the broker refused a dead letter for its size; sending it without payload and key"
                    );
                    metrics::counter!("marquee_worker_dlq_minimal_total").increment(1);
                    self.send(&letter.minimal()).await
                }
                other => other,
            }
            .map_err(|e| StoreError::new("kafka", true, format!("producing to the DLQ: {e}")))
        });
        for result in join_all(sends).await {
            result?;
        }
        Ok(())
    }

    async fn send(&self, letter: &DeadLetter) -> Result<(), KafkaError> {
        // Only strings and numbers: encoding cannot fail, but is not unwrapped.
        let body = serde_json::to_vec(letter)
            .map_err(|_| KafkaError::MessageProduction(RDKafkaErrorCode::InvalidMessage))?;
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).payload(&body);
        if let Some(key) = &letter.key {
            record = record.key(key.as_slice());
        }
        self.producer
            .send(record, self.timeout)
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

fn is_too_large(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
    )
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

    #[test]
    fn a_huge_key_is_cut_and_a_minimal_letter_keeps_only_what_always_fits() {
        let key = vec![b'k'; 300 * 1024];
        let payload = vec![b'p'; 500 * 1024];
        let letter = DeadLetter::new(
            "too large".into(),
            "body".into(),
            "t",
            3,
            42,
            Some(key.clone()),
            &payload,
        );
        assert_eq!(letter.key.as_ref().map(Vec::len), Some(MAX_LETTER_KEY));
        assert_eq!(letter.key_truncated_from, Some(key.len()));
        assert_eq!(letter.truncated_from, Some(payload.len()));

        let minimal = letter.minimal();
        assert_eq!(
            (minimal.payload.as_ref(), minimal.key.as_ref()),
            (None, None)
        );
        assert_eq!(minimal.truncated_from, Some(payload.len()));
        assert_eq!(minimal.key_truncated_from, Some(key.len()));
        assert_eq!((minimal.partition, minimal.offset), (3, 42));
        let body = serde_json::to_vec(&minimal).unwrap();
        assert!(body.len() < 512, "{}", String::from_utf8_lossy(&body));

        let short = DeadLetter::new(
            "bad".into(),
            "body".into(),
            "t",
            0,
            1,
            Some(b"u1".to_vec()),
            b"{",
        );
        assert_eq!(short.key_truncated_from, None);
        assert_eq!(short.minimal().key_truncated_from, Some(2));
    }
}
