//! How a Kafka record's value is encoded: as is, or an LZ4 frame.
//!
//! The api compresses its packed impression records itself instead of
//! setting librdkafka's `compression.type`: the local broker (Tansu) inflates
//! compressed batches and stores them uncompressed, and its cost, in CPU and
//! in bytes written to disk, follows the bytes it stores. Impressions of one
//! packing window repeat the same keys, experiment and arm, so LZ4 shrinks
//! them several times over at a small cost to the api.
//!
//! An encoded record says so in its `content-encoding` header; a record
//! without it is plain JSON, as front-ends produce. The frame is the standard
//! LZ4 frame format, readable by the `lz4` command and every LZ4 library.

use std::borrow::Cow;
use std::io::{Read, Write};
use std::sync::Mutex;

use lz4_flex::frame::{BlockMode, BlockSize, FrameDecoder, FrameEncoder, FrameInfo};
use rdkafka::message::{Header, Headers, OwnedHeaders};

/// Header naming a record value's encoding, in the sense of HTTP's.
pub const CONTENT_ENCODING_HEADER: &str = "content-encoding";

/// Most bytes one record may decode to: a pack is cut at 900 KB before it is
/// compressed, so anything larger was not written by Marquee and is refused
/// before it can claim the worker's memory.
pub const MAX_DECODED_BYTES: usize = 4 << 20;

/// The encodings Marquee writes and reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RecordEncoding {
    /// The value as is (no `content-encoding` header).
    Identity,
    /// One LZ4 frame (`content-encoding: lz4`).
    Lz4,
}

impl RecordEncoding {
    /// The `content-encoding` header's value, `None` for identity.
    pub fn header_value(self) -> Option<&'static str> {
        match self {
            Self::Identity => None,
            Self::Lz4 => Some("lz4"),
        }
    }

    /// The headers a record in this encoding carries (`None` for identity).
    pub fn headers(self) -> Option<OwnedHeaders> {
        self.header_value().map(|value| {
            OwnedHeaders::new().insert(Header {
                key: CONTENT_ENCODING_HEADER,
                value: Some(value),
            })
        })
    }
}

/// A consumed record's `content-encoding` header value, if it has one (the
/// name compared without regard to case, as HTTP's).
pub fn content_encoding<H: Headers>(headers: Option<&H>) -> Option<&[u8]> {
    headers?
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(CONTENT_ENCODING_HEADER))?
        .value
}

/// Encodes record values in one [`RecordEncoding`], reusing the LZ4
/// encoder's buffers from record to record: a fresh encoder allocates a block
/// buffer and a hash table each time, which cost the api more than the
/// compression itself at a few hundred packs a second.
pub struct RecordEncoder {
    encoding: RecordEncoding,
    lz4: Mutex<Option<FrameEncoder<Vec<u8>>>>,
}

/// Blocks of at most 256 KiB, linked so later blocks of a large pack still
/// refer back to earlier ones; fixed rather than sized by the first write,
/// which would pick 4 MiB buffers for a large pack.
fn lz4_encoder() -> FrameEncoder<Vec<u8>> {
    FrameEncoder::with_frame_info(
        FrameInfo::new()
            .block_size(BlockSize::Max256KB)
            .block_mode(BlockMode::Linked),
        Vec::new(),
    )
}

impl RecordEncoder {
    pub fn new(encoding: RecordEncoding) -> Self {
        Self {
            encoding,
            lz4: Mutex::new(None),
        }
    }

    /// Encode `value`, with the encoding it ended up in (identity returns it
    /// unchanged): the record's headers must name that one.
    pub fn encode(&self, value: Vec<u8>) -> (Vec<u8>, RecordEncoding) {
        match self.encoding {
            RecordEncoding::Identity => (value, RecordEncoding::Identity),
            RecordEncoding::Lz4 => {
                // Another thread is compressing: use an encoder of its own
                // rather than wait (rare: one thread encodes the packs, and
                // others only while it is behind).
                let mut shared = self.lz4.try_lock().ok();
                let mut own = None;
                let encoder = match shared.as_deref_mut() {
                    Some(slot) => slot.get_or_insert_with(lz4_encoder),
                    None => own.insert(lz4_encoder()),
                };
                *encoder.get_mut() = Vec::with_capacity(value.len() / 3 + 64);
                // Writing into a Vec cannot fail; were the encoder to fail, the
                // record goes plain, and says so.
                let written = encoder
                    .write_all(&value)
                    .map_err(lz4_flex::frame::Error::from)
                    .and_then(|()| encoder.try_finish());
                match written {
                    Ok(()) => (std::mem::take(encoder.get_mut()), RecordEncoding::Lz4),
                    Err(e) => {
                        tracing::error!(error = %e, "lz4 encoding failed");
                        if let Some(slot) = shared.as_deref_mut() {
                            *slot = None;
                        }
                        (value, RecordEncoding::Identity)
                    }
                }
            }
        }
    }
}

/// Why a record's value could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("unsupported content-encoding {0:?} (supported: lz4)")]
    Unsupported(String),
    #[error("content-encoding lz4: not a valid LZ4 frame: {0}")]
    Corrupt(String),
    #[error("content-encoding lz4: decodes to more than {MAX_DECODED_BYTES} bytes")]
    TooLarge,
}

/// The plain value of a record whose `content-encoding` header is `encoding`
/// (`None`: no header, the value is plain and borrowed as is).
pub fn decode<'a>(encoding: Option<&[u8]>, value: &'a [u8]) -> Result<Cow<'a, [u8]>, DecodeError> {
    match encoding {
        None | Some(b"identity") => Ok(Cow::Borrowed(value)),
        Some(b"lz4") => {
            let mut plain =
                Vec::with_capacity(value.len().saturating_mul(4).min(MAX_DECODED_BYTES));
            // One byte past the limit tells a value at the limit from a larger one.
            FrameDecoder::new(value)
                .take(MAX_DECODED_BYTES as u64 + 1)
                .read_to_end(&mut plain)
                .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
            if plain.len() > MAX_DECODED_BYTES {
                return Err(DecodeError::TooLarge);
            }
            Ok(Cow::Owned(plain))
        }
        Some(other) => Err(DecodeError::Unsupported(
            String::from_utf8_lossy(other).into_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(impressions: usize) -> Vec<u8> {
        let events: Vec<String> = (0..impressions)
            .map(|i| {
                format!(
                    r#"{{"event_id":"0193a1b2-c3d4-7e5f-8a9b-{i:012x}","type":"impression","user_id":"u{}","ts":"2026-12-02T04:00:00.{i:06}Z","experiment":"home","arm":"control","algorithm":"popularity","items":[{}]}}"#,
                    i * 7919 % 10_000,
                    (0..10)
                        .map(|p| format!(r#"{{"movie_id":{},"position":{p}}}"#, (i * 31 + p * 97) % 5_000))
                        .collect::<Vec<_>>()
                        .join(",")
                )
            })
            .collect();
        format!("[{}]", events.join(",")).into_bytes()
    }

    #[test]
    fn lz4_round_trips_and_shrinks_a_pack_of_impressions() {
        let plain = pack(200);
        let (frame, encoding) = RecordEncoder::new(RecordEncoding::Lz4).encode(plain.clone());
        assert_eq!(encoding, RecordEncoding::Lz4);
        assert!(
            frame.len() * 3 < plain.len(),
            "{} bytes compressed to {}",
            plain.len(),
            frame.len()
        );
        assert_eq!(decode(Some(b"lz4"), &frame).unwrap().as_ref(), plain);
    }

    #[test]
    fn the_header_written_is_the_header_read() {
        let headers = RecordEncoding::Lz4.headers();
        assert_eq!(content_encoding(headers.as_ref()), Some(b"lz4".as_slice()));
        let shouted = OwnedHeaders::new().insert(Header {
            key: "Content-Encoding",
            value: Some("lz4"),
        });
        assert_eq!(content_encoding(Some(&shouted)), Some(b"lz4".as_slice()));
        assert_eq!(content_encoding::<OwnedHeaders>(None), None);
    }

    #[test]
    fn a_reused_encoder_writes_independent_frames() {
        let encoder = RecordEncoder::new(RecordEncoding::Lz4);
        // Large enough for several linked blocks, then small ones after it.
        for impressions in [2_000, 3, 200, 1] {
            let plain = pack(impressions);
            let (frame, _) = encoder.encode(plain.clone());
            assert_eq!(
                decode(Some(b"lz4"), &frame).unwrap().as_ref(),
                plain,
                "{impressions}"
            );
        }
    }

    #[test]
    fn identity_is_the_value_as_is() {
        let plain = pack(2);
        assert_eq!(
            RecordEncoder::new(RecordEncoding::Identity).encode(plain.clone()),
            (plain.clone(), RecordEncoding::Identity)
        );
        assert_eq!(RecordEncoding::Identity.header_value(), None);
        assert!(RecordEncoding::Identity.headers().is_none());
        assert!(matches!(decode(None, &plain), Ok(Cow::Borrowed(v)) if v == plain));
        assert!(matches!(decode(Some(b"identity"), &plain), Ok(Cow::Borrowed(v)) if v == plain));
    }

    #[test]
    fn a_value_that_is_not_an_lz4_frame_is_an_error() {
        let err = decode(Some(b"lz4"), br#"{"event_id":"x"}"#).unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt(_)), "{err:?}");
        let (mut frame, _) = RecordEncoder::new(RecordEncoding::Lz4).encode(pack(50));
        frame.truncate(frame.len() / 2);
        assert!(matches!(
            decode(Some(b"lz4"), &frame),
            Err(DecodeError::Corrupt(_))
        ));
    }

    #[test]
    fn an_unknown_encoding_is_named_in_the_error() {
        let err = decode(Some(b"gzip"), b"...").unwrap_err();
        assert_eq!(err, DecodeError::Unsupported("gzip".into()));
        assert!(err.to_string().contains("\"gzip\""));
    }

    #[test]
    fn a_frame_decoding_past_the_limit_is_refused() {
        // 8 MiB of zeros compress to a few tens of KB: a small record must not
        // claim the worker's memory.
        let (bomb, _) =
            RecordEncoder::new(RecordEncoding::Lz4).encode(vec![0; 2 * MAX_DECODED_BYTES]);
        assert!(bomb.len() < 100_000);
        assert_eq!(decode(Some(b"lz4"), &bomb), Err(DecodeError::TooLarge));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            /// Random bytes under an lz4 header: an error or a value within
            /// the limit, never a panic.
            #[test]
            fn random_bytes_decode_to_an_error_or_a_bounded_value(
                bytes in proptest::collection::vec(any::<u8>(), 0..2_000)
            ) {
                match decode(Some(b"lz4"), &bytes) {
                    Ok(plain) => prop_assert!(plain.len() <= MAX_DECODED_BYTES),
                    Err(e) => prop_assert!(!e.to_string().is_empty()),
                }
            }

            /// A real frame with bytes flipped or cut: the corruption is an
            /// error (or, where the checksum-free body absorbs it, a value),
            /// never a panic.
            #[test]
            fn a_damaged_frame_never_panics(
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                cut in any::<prop::sample::Index>(),
            ) {
                let (mut frame, _) = RecordEncoder::new(RecordEncoding::Lz4).encode(pack(20));
                for (at, byte) in flips {
                    let i = at.index(frame.len());
                    frame[i] ^= byte | 1;
                }
                frame.truncate(cut.index(frame.len() + 1));
                if let Ok(plain) = decode(Some(b"lz4"), &frame) {
                    prop_assert!(plain.len() <= MAX_DECODED_BYTES);
                }
            }
        }
    }
}
