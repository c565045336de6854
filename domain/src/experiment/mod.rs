//! Experiments: types, GrowthBook-compatible assignment, bandit reweighting.

pub mod assignment;
pub mod bandit;
pub mod periods;
mod types;

pub use assignment::{assign, Assignment, BucketRange};
pub use bandit::{
    apply_floor, beta_prob_best, reweight, reweight_with_draws, BanditEvidence, BurnIn,
    PosteriorSnapshot, ProbBestMethod, Reweight, ReweightOutcome, MIN_WEIGHT_CHANGE,
};
pub use periods::{period_index, weight_periods, WeightHistoryEntry, WeightPeriod};
pub use types::{
    Arm, BanditSettings, Experiment, ExperimentSpec, ExperimentStatus, HashVersion, Metric, Policy,
    MAX_BURN_IN_USERS, MAX_EXPLORATION_S, MAX_OUTCOME_WINDOW_DAYS, WEIGHT_SUM_TOLERANCE,
};
