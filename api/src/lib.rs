//! Marquee's api: the HTTP face of the engine.
//!
//! `startup::Application` builds a running server from an [`config::ApiConfig`];
//! tests build one on a random port against the local stack.
//!
//! # Layout
//!
//! - [`routes`]: one module per resource (recommendations, similar movies,
//!   events, experiments, results, movies, models, keys, the dashboard).
//! - [`serving`]: the in-memory snapshots, caches and background refreshes
//!   the recommendations route reads.
//! - [`auth`], [`rate_limit`], [`extract`], [`error`]: who may call, how
//!   often, how bodies and queries are read, and how errors become JSON.
//! - [`startup`], [`config`], [`state`], [`openapi`], [`http_metrics`].

pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod http_metrics;
pub mod openapi;
pub mod rate_limit;
pub mod routes;
pub mod serving;
pub mod startup;
pub mod state;
