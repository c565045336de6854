//! Marquee's worker: the event pipeline from Kafka into ClickHouse and
//! PostgreSQL (exactly once in effect), attribution of clicks to the served
//! lists, bandit reweighting and the hot-movies cache.
//!
//! [`startup::Worker`] builds a running worker from a [`config::WorkerConfig`];
//! tests build one in-process against their slice of the local stack.
//!
//! # Layout
//!
//! - [`consumer`]: the batch loop (intake, hold-back, ledger, ClickHouse,
//!   commits); [`attribution`] and [`dlq`] beside it.
//! - [`loops`]: reweighting, hot movies, consumer lag and orphan partitions.
//! - [`models`] and [`train`]: loading active models, precomputing lists,
//!   fitting new versions.
//! - [`seed`], [`simulate`], [`bench`]: demo and benchmark tooling, run by
//!   the `marquee-tools` binary (not by `worker`) for the scripts.
//! - [`startup`], [`config`].

pub mod attribution;
pub mod bench;
pub mod config;
pub mod consumer;
pub mod dlq;
pub mod loops;
pub mod models;
pub mod seed;
pub mod simulate;
pub mod startup;
pub mod train;
