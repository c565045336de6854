//! Marquee's domain: everything that decides *what* happens, with no I/O.
//!
//! The crate is pure so that the rules that matter most (who sees which arm,
//! how weights move, what a p-value says) are testable in-process, fast and
//! deterministically. Adapters live in `repositories`; binaries wire them.
//!
//! # Layout
//!
//! - [`ids`], [`events`]: newtypes that cannot hold invalid values, and the
//!   event format (parsing, validation, the wire form) api and worker share.
//! - [`experiment`]: specs, GrowthBook-compatible assignment, weight periods,
//!   the user-level Thompson-sampling bandit.
//! - [`stats`]: per-arm estimates, comparisons, the cohort method, SRM,
//!   confidence sequences, power, multiple-comparison adjustments.
//! - [`results`]: the report an analyst reads, built from the stores' aggregates.
//! - [`recommend`]: popularity, item-kNN, ALS, cold start, similar movies,
//!   offline evaluation, the model file format, the synthetic world.
//! - [`serving`]: composing a served list (sources, seen movies, filters).
//! - [`ports`]: the traits the adapters in `repositories` implement.

pub mod error;
pub mod events;
pub mod experiment;
pub mod ids;
pub mod json_out;
pub mod ports;
pub mod recommend;
pub mod results;
pub mod serving;
pub mod stats;

pub use error::ValidationError;
