//! Adapters that connect Marquee's domain to real servers: one module per technology.
//!
//! Every adapter takes its settings explicitly (no global config), exposes a
//! cheap `ping` for readiness checks, and reports failures as [`RepoError`].
//!
//! # Layout
//!
//! - [`stores`]: every store opened, migrated and probed together; PostgreSQL
//!   reached only through its role stores (catalogue, experiments, API keys,
//!   models, bulk history, serving reads, ingest ledger, click credits).
//! - [`postgres`], [`clickhouse`], [`kafka`], [`redis`] (with
//!   [`redis_serving`] and [`pipeline`]: the serving reads and the worker's
//!   dedup and attribution stores), [`s3`]: one module per technology.
//! - [`runtime`]: logs, the metrics recorder, the stop signal and
//!   migrate-with-retry, shared by both binaries.
//! - [`settings`]: the `MARQUEE_*` stack settings both binaries parse.

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
