//! Adapters that connect Marquee's domain to real servers: one module per technology.
//!
//! Every adapter takes its settings explicitly (no global config), exposes a
//! cheap `ping` for readiness checks, and reports failures as [`RepoError`].

pub mod clickhouse;
pub mod error;
pub mod kafka;
pub mod pipeline;
pub mod postgres;
pub mod prometheus;
pub mod redis;
pub mod redis_serving;
pub mod runtime;
pub mod s3;
pub mod settings;
pub mod stores;

pub use error::RepoError;

/// Result of every adapter call.
pub type RepoResult<T> = Result<T, RepoError>;
