//! Ports: the traits the outside world (the `repositories` crate) implements,
//! so binaries depend on capabilities, and unit tests can use in-memory fakes.

pub mod pipeline;
pub mod serving;
