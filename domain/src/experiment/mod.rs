//! Experiments: types, GrowthBook-compatible assignment, bandit reweighting.

pub mod assignment;
pub mod bandit;
mod types;

pub use assignment::{assign, Assignment, BucketRange};
pub use bandit::{
    reweight, reweight_with_draws, ArmStats, PosteriorSnapshot, ProbBestMethod, Reweight,
};
pub use types::{
    Arm, Experiment, ExperimentSpec, ExperimentStatus, HashVersion, Metric, Policy,
    WEIGHT_SUM_TOLERANCE,
};
