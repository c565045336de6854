//! Marquee's api: the HTTP face of the engine.
//!
//! `startup::Application` builds a running server from an [`config::ApiConfig`];
//! tests build one on a random port against the local stack.

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
