//! Marquee's domain: everything that decides *what* happens, with no I/O.
//!
//! The crate is pure so that the rules that matter most (who sees which arm,
//! how weights move, what a p-value says) are testable in-process, fast and
//! deterministically. Adapters live in `repositories`; binaries wire them.

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
