//! The versioned binary format of a trained model (`model.bin`) and its manifest.
//!
//! A model crosses process boundaries (trained by one worker, stored in S3,
//! loaded by every other), so its bytes must say what they are before anyone
//! trusts them. Layout, all integers little endian:
//!
//! | offset | size | content                                                      |
//! |--------|------|--------------------------------------------------------------|
//! | 0      | 4    | magic `b"MRQM"`                                              |
//! | 4      | 2    | format version, `u16` (currently [`FORMAT_VERSION`] = 1)      |
//! | 6      | 1    | algorithm tag: 1 popularity, 2 item-kNN, 3 ALS, 4 cold start |
//! | 7      | rest | the algorithm's model, bincode 2 via serde, standard config  |
//!
//! The payload is the bare model struct, not the enum, so the tag alone says
//! how to read it. The file carries no checksum of its own: the SHA-256 of the
//! whole file lives in `manifest.json` ([`ModelManifest::sha256`]), which is
//! what catches a flipped bit that still decodes. A new payload layout of any
//! algorithm bumps the format version; readers refuse versions they do not know
//! rather than guess.

use std::collections::HashSet;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{AlgorithmKey, MovieId, UserId};
use crate::recommend::als::AlsModel;
use crate::recommend::cold_start::ColdStartModel;
use crate::recommend::evaluation::OfflineMetrics;
use crate::recommend::item_knn::ItemKnnModel;
use crate::recommend::popularity::PopularityModel;
use crate::recommend::{Dataset, Recommender, ScoredItem};

/// First bytes of every model file, so a stray object is rejected at once.
pub const MAGIC: [u8; 4] = *b"MRQM";
/// The layout version this code writes and the only one it reads.
pub const FORMAT_VERSION: u16 = 1;
/// Magic + version + tag.
pub const HEADER_LEN: usize = 7;

/// Which algorithm produced a model; its tag byte is part of the file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelAlgorithm {
    /// [`PopularityModel`].
    Popularity,
    /// [`ItemKnnModel`].
    ItemKnn,
    /// [`AlsModel`].
    Als,
    /// [`ColdStartModel`].
    ColdStart,
}

impl ModelAlgorithm {
    /// The header byte; never reuse a retired value.
    pub fn tag(self) -> u8 {
        match self {
            Self::Popularity => 1,
            Self::ItemKnn => 2,
            Self::Als => 3,
            Self::ColdStart => 4,
        }
    }

    /// Inverse of [`Self::tag`].
    pub fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(Self::Popularity),
            2 => Some(Self::ItemKnn),
            3 => Some(Self::Als),
            4 => Some(Self::ColdStart),
            _ => None,
        }
    }

    /// Snake-case name, as in JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Popularity => "popularity",
            Self::ItemKnn => "item_knn",
            Self::Als => "als",
            Self::ColdStart => "cold_start",
        }
    }
}

impl fmt::Display for ModelAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Any model the worker can store and the serving side can load.
#[derive(Debug, Clone)]
pub enum TrainedModel {
    /// Time-decayed popularity.
    Popularity(PopularityModel),
    /// Item-item cosine kNN.
    ItemKnn(ItemKnnModel),
    /// Implicit ALS.
    Als(AlsModel),
    /// Genre-based cold start.
    ColdStart(ColdStartModel),
}

impl TrainedModel {
    /// The algorithm, i.e. the header tag this model is written with.
    pub fn algorithm(&self) -> ModelAlgorithm {
        match self {
            Self::Popularity(_) => ModelAlgorithm::Popularity,
            Self::ItemKnn(_) => ModelAlgorithm::ItemKnn,
            Self::Als(_) => ModelAlgorithm::Als,
            Self::ColdStart(_) => ModelAlgorithm::ColdStart,
        }
    }
}

impl Recommender for TrainedModel {
    fn recommend(&self, user: &UserId, k: usize, exclude: &HashSet<MovieId>) -> Vec<ScoredItem> {
        match self {
            Self::Popularity(m) => m.recommend(user, k, exclude),
            Self::ItemKnn(m) => m.recommend(user, k, exclude),
            Self::Als(m) => m.recommend(user, k, exclude),
            Self::ColdStart(m) => m.recommend(user, k, exclude),
        }
    }
}

/// Why model bytes were refused; each variant maps to a different operator action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelFormatError {
    /// Not a model file at all (wrong object, truncated before the magic).
    #[error("not a Marquee model: bad magic bytes")]
    BadMagic,
    /// Written by a newer (or retired) format; upgrade the reader.
    #[error("unsupported model format version {0} (this build reads {FORMAT_VERSION})")]
    UnsupportedVersion(u16),
    /// A valid model of a different algorithm than the caller asked for.
    #[error("expected a {expected} model, found {found}")]
    AlgorithmMismatch {
        /// What the caller (or manifest) said it should be.
        expected: ModelAlgorithm,
        /// What the header says it is.
        found: ModelAlgorithm,
    },
    /// Header or payload cannot be read.
    #[error("corrupt model: {0}")]
    Corrupt(String),
    /// The bytes are not the ones the manifest describes.
    #[error("checksum mismatch: manifest says {expected}, bytes hash to {actual}")]
    ChecksumMismatch {
        /// Hex SHA-256 from the manifest.
        expected: String,
        /// Hex SHA-256 of the bytes at hand.
        actual: String,
    },
    /// Serialisation failed; only a bug in a model's serde impl can cause it.
    #[error("cannot encode model: {0}")]
    Encode(String),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn payload<T: Serialize>(model: &T) -> Result<Vec<u8>, ModelFormatError> {
    bincode::serde::encode_to_vec(model, config())
        .map_err(|e| ModelFormatError::Encode(e.to_string()))
}

/// Write `model` in the current format (header + bincode payload).
///
/// Returns a `Result` rather than bytes because serde encoding is fallible in
/// general; for the models here it only fails on a bug.
pub fn encode(model: &TrainedModel) -> Result<Vec<u8>, ModelFormatError> {
    let body = match model {
        TrainedModel::Popularity(m) => payload(m)?,
        TrainedModel::ItemKnn(m) => payload(m)?,
        TrainedModel::Als(m) => payload(m)?,
        TrainedModel::ColdStart(m) => payload(m)?,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(model.algorithm().tag());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Read the header only: format version and algorithm, without decoding the payload.
pub fn read_header(bytes: &[u8]) -> Result<(u16, ModelAlgorithm), ModelFormatError> {
    if bytes.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        return Err(ModelFormatError::BadMagic);
    }
    let (Some(&v0), Some(&v1), Some(&tag)) = (bytes.get(4), bytes.get(5), bytes.get(6)) else {
        return Err(ModelFormatError::Corrupt("truncated header".into()));
    };
    let version = u16::from_le_bytes([v0, v1]);
    if version != FORMAT_VERSION {
        return Err(ModelFormatError::UnsupportedVersion(version));
    }
    let algorithm = ModelAlgorithm::from_tag(tag)
        .ok_or_else(|| ModelFormatError::Corrupt(format!("unknown algorithm tag {tag}")))?;
    Ok((version, algorithm))
}

fn read_payload<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ModelFormatError> {
    let (model, read) = bincode::serde::decode_from_slice::<T, _>(body, config())
        .map_err(|e| ModelFormatError::Corrupt(e.to_string()))?;
    if read != body.len() {
        return Err(ModelFormatError::Corrupt(format!(
            "{} trailing bytes after the payload",
            body.len() - read
        )));
    }
    Ok(model)
}

/// Read a model of whatever algorithm the header names.
pub fn decode(bytes: &[u8]) -> Result<TrainedModel, ModelFormatError> {
    let (_, algorithm) = read_header(bytes)?;
    let body = bytes.get(HEADER_LEN..).unwrap_or_default();
    Ok(match algorithm {
        ModelAlgorithm::Popularity => TrainedModel::Popularity(read_payload(body)?),
        ModelAlgorithm::ItemKnn => TrainedModel::ItemKnn(read_payload(body)?),
        ModelAlgorithm::Als => TrainedModel::Als(read_payload(body)?),
        ModelAlgorithm::ColdStart => TrainedModel::ColdStart(read_payload(body)?),
    })
}

/// Read a model that must be of `expected` algorithm (checked before decoding the payload).
pub fn decode_as(bytes: &[u8], expected: ModelAlgorithm) -> Result<TrainedModel, ModelFormatError> {
    let (_, found) = read_header(bytes)?;
    if found != expected {
        return Err(ModelFormatError::AlgorithmMismatch { expected, found });
    }
    decode(bytes)
}

/// Lower-case hex SHA-256, the checksum format of the manifest and the `models` table.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Refuse bytes whose SHA-256 is not `expected_sha256` (hex, any case).
pub fn verify_checksum(bytes: &[u8], expected_sha256: &str) -> Result<(), ModelFormatError> {
    let actual = sha256_hex(bytes);
    if actual.eq_ignore_ascii_case(expected_sha256.trim()) {
        Ok(())
    } else {
        Err(ModelFormatError::ChecksumMismatch {
            expected: expected_sha256.to_owned(),
            actual,
        })
    }
}

/// Time span of the training data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataWindow {
    /// Oldest interaction used.
    pub from: DateTime<Utc>,
    /// Newest interaction used.
    pub to: DateTime<Utc>,
}

impl DataWindow {
    /// The window of `data`'s timestamps; `None` when it is empty or out of chrono's range.
    pub fn of(data: &Dataset) -> Option<Self> {
        let from = data.interactions.iter().map(|i| i.ts).min()?;
        let to = data.interactions.iter().map(|i| i.ts).max()?;
        Some(Self {
            from: DateTime::from_timestamp(from, 0)?,
            to: DateTime::from_timestamp(to, 0)?,
        })
    }
}

/// Size of the training data, to spot a model trained on a truncated export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataCounts {
    /// Distinct users.
    pub users: u64,
    /// Distinct movies.
    pub items: u64,
    /// Interaction events (views and likes).
    pub interactions: u64,
}

impl DataCounts {
    /// Counts of `data`.
    pub fn of(data: &Dataset) -> Self {
        Self {
            users: data.n_users() as u64,
            items: data.n_items() as u64,
            interactions: data.interactions.len() as u64,
        }
    }
}

/// `manifest.json` next to `model.bin`: what the bytes are, where they came from, how good they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    /// Format version of `model.bin`.
    pub format_version: u16,
    /// Configured algorithm key (the S3 prefix and Postgres `algorithms.key`).
    pub algorithm: AlgorithmKey,
    /// Algorithm kind, which must match the file's header tag.
    pub kind: ModelAlgorithm,
    /// Model version, unique per algorithm key.
    pub version: String,
    /// Hex SHA-256 of `model.bin`.
    pub sha256: String,
    /// When the fit finished.
    pub trained_at: DateTime<Utc>,
    /// Span of the training interactions.
    pub data_window: DataWindow,
    /// Size of the training data.
    pub counts: DataCounts,
    /// Offline metrics from the temporal hold-out, one entry per cut-off.
    pub metrics: Vec<OfflineMetrics>,
    /// The fit's parameters as JSON, so the run can be reproduced.
    pub hyperparameters: serde_json::Value,
}

impl ModelManifest {
    /// Check `bytes` against this manifest (checksum, version, algorithm) and decode them;
    /// the only way the serving side should turn bytes into a model.
    pub fn load(&self, bytes: &[u8]) -> Result<TrainedModel, ModelFormatError> {
        verify_checksum(bytes, &self.sha256)?;
        if self.format_version != FORMAT_VERSION {
            return Err(ModelFormatError::UnsupportedVersion(self.format_version));
        }
        decode_as(bytes, self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recommend::als::{self, AlsParams};
    use crate::recommend::cold_start::ColdStartParams;
    use crate::recommend::item_knn::ItemKnnParams;
    use crate::recommend::popularity::PopularityParams;
    use crate::recommend::synthetic::{SyntheticData, SyntheticParams, SyntheticSize};

    fn world() -> SyntheticData {
        SyntheticData::generate(&SyntheticParams::new(SyntheticSize::Small, 3)).unwrap()
    }

    fn models(w: &SyntheticData) -> Vec<TrainedModel> {
        let pop = PopularityModel::fit(&w.dataset, &PopularityParams::default()).unwrap();
        let cold =
            ColdStartModel::fit(&w.catalog, pop.ranked(), &ColdStartParams::default()).unwrap();
        let knn = ItemKnnModel::fit(&w.dataset, &ItemKnnParams::default()).unwrap();
        let als = als::fit(
            &w.dataset,
            &AlsParams {
                factors: 8,
                iterations: 3,
                ..AlsParams::default()
            },
        );
        vec![
            TrainedModel::Popularity(pop),
            TrainedModel::ItemKnn(knn),
            TrainedModel::Als(als),
            TrainedModel::ColdStart(cold),
        ]
    }

    #[test]
    fn every_algorithm_round_trips_with_identical_recommendations() {
        let w = world();
        let none = HashSet::new();
        for model in models(&w) {
            let bytes = encode(&model).unwrap();
            assert_eq!(&bytes[..4], b"MRQM");
            assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 1);
            assert_eq!(bytes[6], model.algorithm().tag());
            let back = decode(&bytes).unwrap();
            assert_eq!(back.algorithm(), model.algorithm());
            assert_eq!(encode(&back).unwrap(), bytes, "{}", model.algorithm());
            for user in w.users.iter().take(20) {
                assert_eq!(
                    back.recommend(user, 10, &none),
                    model.recommend(user, 10, &none)
                );
            }
        }
    }

    fn popularity_bytes() -> Vec<u8> {
        let mut d = Dataset::new();
        d.push(
            &UserId::parse("u1").unwrap(),
            MovieId::parse(1).unwrap(),
            crate::recommend::InteractionKind::View,
            0,
        );
        let pop = PopularityModel::fit(&d, &PopularityParams::default()).unwrap();
        encode(&TrainedModel::Popularity(pop)).unwrap()
    }

    #[test]
    fn rejects_bad_magic_and_truncation() {
        let mut bytes = popularity_bytes();
        assert_eq!(decode(b"MRQ").unwrap_err(), ModelFormatError::BadMagic);
        assert!(matches!(
            decode(b"MRQM\x01"),
            Err(ModelFormatError::Corrupt(_))
        ));
        bytes[0] = b'X';
        assert_eq!(decode(&bytes).unwrap_err(), ModelFormatError::BadMagic);
        let bytes = popularity_bytes();
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(ModelFormatError::Corrupt(_))
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(ModelFormatError::Corrupt(_))));
    }

    #[test]
    fn rejects_unsupported_version_and_unknown_tag() {
        let mut bytes = popularity_bytes();
        bytes[4..6].copy_from_slice(&2u16.to_le_bytes());
        assert_eq!(
            decode(&bytes).unwrap_err(),
            ModelFormatError::UnsupportedVersion(2)
        );
        let mut bytes = popularity_bytes();
        bytes[6] = 99;
        assert!(matches!(decode(&bytes), Err(ModelFormatError::Corrupt(_))));
    }

    #[test]
    fn payload_of_another_algorithm_is_refused() {
        let bytes = popularity_bytes();
        assert_eq!(
            decode_as(&bytes, ModelAlgorithm::Als).unwrap_err(),
            ModelFormatError::AlgorithmMismatch {
                expected: ModelAlgorithm::Als,
                found: ModelAlgorithm::Popularity,
            }
        );
        let mut relabelled = bytes.clone();
        relabelled[6] = ModelAlgorithm::ItemKnn.tag();
        assert!(matches!(
            decode(&relabelled),
            Err(ModelFormatError::Corrupt(_))
        ));
    }

    fn manifest(bytes: &[u8], w: &SyntheticData) -> ModelManifest {
        ModelManifest {
            format_version: FORMAT_VERSION,
            algorithm: AlgorithmKey::parse("popularity").unwrap(),
            kind: ModelAlgorithm::Popularity,
            version: "2024-06-29T00-00-00Z".into(),
            sha256: sha256_hex(bytes),
            trained_at: DateTime::from_timestamp(1_719_619_200, 0).unwrap(),
            data_window: DataWindow::of(&w.dataset).unwrap(),
            counts: DataCounts::of(&w.dataset),
            metrics: Vec::new(),
            hyperparameters: serde_json::to_value(PopularityParams::default()).unwrap(),
        }
    }

    #[test]
    fn flipped_byte_is_caught_by_the_manifest_checksum() {
        let w = world();
        let pop = PopularityModel::fit(&w.dataset, &PopularityParams::default()).unwrap();
        let bytes = encode(&TrainedModel::Popularity(pop)).unwrap();
        let m = manifest(&bytes, &w);
        assert!(m.load(&bytes).is_ok());
        assert_eq!(sha256_hex(b"abc").len(), 64);

        // Flip a bit deep inside a score: it still decodes, only the checksum can tell.
        let mut flipped = bytes.clone();
        let at = bytes.len() - 3;
        flipped[at] ^= 0x01;
        assert!(decode(&flipped).is_ok());
        assert!(matches!(
            m.load(&flipped),
            Err(ModelFormatError::ChecksumMismatch { .. })
        ));
        assert!(verify_checksum(&bytes, &m.sha256.to_uppercase()).is_ok());
    }

    #[test]
    fn manifest_is_json_round_trippable() {
        let w = world();
        let bytes = popularity_bytes();
        let m = manifest(&bytes, &w);
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"kind\":\"popularity\""), "{json}");
        let back: ModelManifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.counts.users, 500);
        assert!(back.data_window.from < back.data_window.to);
    }
}
