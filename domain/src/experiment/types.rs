//! Experiment entities, validated once at construction so that assignment and
//! reweighting never have to re-check them.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::assignment::{
    fnv1a_feed, get_bucket_ranges, integer_bounds, BucketRange, FNV_OFFSET_BASIS,
};
use crate::ids::{AlgorithmKey, ArmKey, ExperimentKey};
use crate::ValidationError;

/// How far the arm weights may stray from summing to 1; tight, so GrowthBook's
/// own looser fallback (equal weights outside [0.99, 1.01]) can never trigger.
pub const WEIGHT_SUM_TOLERANCE: f64 = 1e-9;

/// Lifecycle of an experiment; only `Running` ones should be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExperimentStatus {
    /// Being configured; nobody is assigned yet.
    Draft,
    /// Assigning users and collecting data.
    Running,
    /// Finished; its data is frozen for analysis.
    Stopped,
}

impl ExperimentStatus {
    /// The spelling stored in Postgres and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Running => "running",
            Self::Stopped => "stopped",
        }
    }

    /// Parse the stored/API spelling, naming `status` on error.
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        match value {
            "draft" => Ok(Self::Draft),
            "running" => Ok(Self::Running),
            "stopped" => Ok(Self::Stopped),
            _ => Err(ValidationError::new(
                "status",
                "must be one of draft, running, stopped",
            )),
        }
    }

    /// Whether moving to `next` is allowed: forward only (draft, running,
    /// stopped), so a stopped experiment's data is never mixed with a restart.
    pub fn can_transition_to(self, next: Self) -> bool {
        matches!(
            (self, next),
            (Self::Draft, Self::Running)
                | (Self::Running, Self::Stopped)
                | (Self::Draft, Self::Stopped)
        ) || self == next
    }
}

impl fmt::Display for ExperimentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an experiment's arm weights evolve over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Policy {
    /// Weights stay as configured: a classic A/B(/n) test.
    #[serde(rename = "fixed")]
    Fixed,
    /// Weights follow each arm's posterior probability of being best.
    #[serde(rename = "thompson")]
    ThompsonSampling,
}

impl Policy {
    /// The spelling stored in Postgres and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fixed => "fixed",
            Self::ThompsonSampling => "thompson",
        }
    }

    /// Parse the stored/API spelling, naming `policy` on error.
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        match value {
            "fixed" => Ok(Self::Fixed),
            "thompson" => Ok(Self::ThompsonSampling),
            _ => Err(ValidationError::new(
                "policy",
                "must be one of fixed, thompson",
            )),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The success measure an experiment optimises and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Clicks per impression.
    Ctr,
    /// Converting users per exposed user.
    Conversion,
}

impl Metric {
    /// The spelling stored in Postgres and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ctr => "ctr",
            Self::Conversion => "conversion",
        }
    }

    /// Parse the stored/API spelling, naming `metric` on error.
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        match value {
            "ctr" => Ok(Self::Ctr),
            "conversion" => Ok(Self::Conversion),
            _ => Err(ValidationError::new(
                "metric",
                "must be one of ctr, conversion",
            )),
        }
    }
}

impl From<Metric> for crate::stats::Metric {
    fn from(metric: Metric) -> Self {
        match metric {
            Metric::Ctr => Self::Ctr,
            Metric::Conversion => Self::Conversion,
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// GrowthBook's hashing scheme; stored per experiment so a change of default
/// never reshuffles users of a running experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub enum HashVersion {
    /// Original, slightly biased scheme: `fnv(value + seed) % 1000`.
    V1,
    /// Current scheme: `fnv(str(fnv(seed + value))) % 10000`.
    #[default]
    V2,
}

impl HashVersion {
    /// The number GrowthBook and Postgres use for this version.
    pub fn number(self) -> u8 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
        }
    }

    /// Parse the stored number, naming `hash_version` on error.
    pub fn parse(value: i64) -> Result<Self, ValidationError> {
        match value {
            1 => Ok(Self::V1),
            2 => Ok(Self::V2),
            _ => Err(ValidationError::new("hash_version", "must be 1 or 2")),
        }
    }
}

impl TryFrom<i64> for HashVersion {
    type Error = ValidationError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<HashVersion> for i64 {
    fn from(value: HashVersion) -> Self {
        i64::from(value.number())
    }
}

/// One arm: which algorithm serves its users and what share of traffic it gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    /// Unique within the experiment; recorded in sticky assignments.
    pub key: ArmKey,
    /// The recommendation algorithm this arm's users are served by.
    pub algorithm: AlgorithmKey,
    /// Share of covered traffic in [0, 1]; the arms of an experiment sum to 1.
    pub weight: f64,
    /// The baseline the other arms are compared against.
    pub is_control: bool,
}

/// Unvalidated experiment input (API body, database row); turn it into an
/// [`Experiment`] with [`Experiment::new`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentSpec {
    /// Stable key, used in URLs and events.
    pub key: ExperimentKey,
    /// Seed of the assignment hash; changing it reshuffles every user.
    pub salt: String,
    /// GrowthBook hash scheme; defaults to the current one (2).
    #[serde(default)]
    pub hash_version: HashVersion,
    /// Fraction of users who enter the experiment at all, in (0, 1].
    pub coverage: f64,
    /// Lifecycle state.
    pub status: ExperimentStatus,
    /// How weights evolve.
    pub policy: Policy,
    /// What the bandit optimises and results report.
    pub metric: Metric,
    /// Least weight any arm keeps under a bandit policy, in [0, 1/arms].
    pub min_weight: f64,
    /// Seconds between bandit reweights (the update cadence).
    pub reweight_interval_s: u32,
    /// When the bandit may first move weights, and how it explores.
    #[serde(default)]
    pub bandit: BanditSettings,
    /// Days after a user's first exposure over which the cohort analysis sums
    /// their outcome, so early and late cohorts are measured alike; `None`
    /// sums the whole exposure.
    #[serde(default)]
    pub outcome_window_days: Option<u16>,
    /// How its results are read: confidence sequences valid at every look
    /// (the default) or one planned look.
    #[serde(default)]
    pub analysis: crate::stats::Analysis,
    /// Arms in bucket order: the order defines the hash ranges, so never reorder.
    pub arms: Vec<Arm>,
}

/// Largest N* a sequential analysis may be tuned for (users of both arms).
pub const MAX_SEQUENTIAL_TUNING: f64 = 1e9;

/// Most users a burn-in may ask for per arm (INT in PostgreSQL, and beyond it
/// the bandit would never start on any real catalogue).
pub const MAX_BURN_IN_USERS: u32 = 100_000_000;
/// Longest exploration time: 90 days.
pub const MAX_EXPLORATION_S: u32 = 90 * 86_400;
/// Longest outcome window: a year.
pub const MAX_OUTCOME_WINDOW_DAYS: u16 = 366;

/// The bandit's burn-in and exploration, per experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BanditSettings {
    /// No reweight until every arm has this many exposed users.
    pub burn_in_users: u32,
    /// No reweight until the experiment has run this many seconds.
    pub exploration_s: u32,
    /// Top-two Thompson sampling: weights are each arm's share of being best
    /// or second best, which keeps measuring the runner-up (only with three
    /// or more arms; with two it would be 50/50).
    pub top_two: bool,
}

impl Default for BanditSettings {
    fn default() -> Self {
        Self {
            burn_in_users: 100,
            exploration_s: 3_600,
            top_two: false,
        }
    }
}

/// A validated experiment, ready for assignment; it cannot hold invalid weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ExperimentSpec", into = "ExperimentSpec")]
pub struct Experiment {
    spec: ExperimentSpec,
    /// Bucket ranges derived from weights and coverage, cached for the hot path.
    ranges: Vec<BucketRange>,
    /// The same ranges as half-open intervals of the integer hash before its
    /// division, so the hot path needs no float division (see `integer_bounds`).
    hash_bounds: Vec<(u32, u32)>,
    /// FNV state after feeding the salt: hash v2 hashes `salt + user_id`, so
    /// the salt's share of the work is done once per experiment, not per user.
    salt_state: u32,
}

impl Experiment {
    /// Validate `spec`, naming the first offending field.
    pub fn new(spec: ExperimentSpec) -> Result<Self, ValidationError> {
        validate(&spec)?;
        let weights: Vec<f64> = spec.arms.iter().map(|a| a.weight).collect();
        let ranges = get_bucket_ranges(weights.len(), Some(spec.coverage), Some(&weights));
        let hash_bounds = integer_bounds(&ranges, spec.hash_version);
        let salt_state = fnv1a_feed(FNV_OFFSET_BASIS, &spec.salt);
        Ok(Self {
            spec,
            ranges,
            hash_bounds,
            salt_state,
        })
    }

    /// A copy with new weights (arm order), as a bandit reweight or an analyst
    /// edit produces; everything else, including the salt, stays.
    pub fn with_weights(&self, weights: Vec<f64>) -> Result<Self, ValidationError> {
        if weights.len() != self.spec.arms.len() {
            return Err(ValidationError::new(
                "weights",
                format!(
                    "expected {} weights, one per arm, got {}",
                    self.spec.arms.len(),
                    weights.len()
                ),
            ));
        }
        let mut spec = self.spec.clone();
        for (arm, w) in spec.arms.iter_mut().zip(weights) {
            arm.weight = w;
        }
        Self::new(spec)
    }

    /// A copy in `status`, refusing backward moves (see
    /// [`ExperimentStatus::can_transition_to`]).
    pub fn with_status(&self, status: ExperimentStatus) -> Result<Self, ValidationError> {
        if !self.spec.status.can_transition_to(status) {
            return Err(ValidationError::new(
                "status",
                format!("cannot move from {} to {}", self.spec.status, status),
            ));
        }
        let mut next = self.clone();
        next.spec.status = status;
        Ok(next)
    }

    /// The validated input, for persistence and API responses.
    pub fn spec(&self) -> &ExperimentSpec {
        &self.spec
    }

    /// Give back the spec, e.g. to edit and re-validate it.
    pub fn into_spec(self) -> ExperimentSpec {
        self.spec
    }

    /// Stable key, used in URLs and events.
    pub fn key(&self) -> &ExperimentKey {
        &self.spec.key
    }

    /// Seed of the assignment hash.
    pub fn salt(&self) -> &str {
        &self.spec.salt
    }

    /// Which GrowthBook hash this experiment buckets with.
    pub fn hash_version(&self) -> HashVersion {
        self.spec.hash_version
    }

    /// Fraction of users in the experiment.
    pub fn coverage(&self) -> f64 {
        self.spec.coverage
    }

    /// Lifecycle state.
    pub fn status(&self) -> ExperimentStatus {
        self.spec.status
    }

    /// How weights evolve.
    pub fn policy(&self) -> Policy {
        self.spec.policy
    }

    /// What success means.
    pub fn metric(&self) -> Metric {
        self.spec.metric
    }

    /// Least weight an arm keeps under a bandit.
    pub fn min_weight(&self) -> f64 {
        self.spec.min_weight
    }

    /// Seconds between reweights.
    pub fn bandit(&self) -> BanditSettings {
        self.spec.bandit
    }

    /// Days after first exposure the cohort analysis sums outcomes over.
    pub fn outcome_window_days(&self) -> Option<u16> {
        self.spec.outcome_window_days
    }

    /// How the results are read.
    pub fn analysis(&self) -> crate::stats::Analysis {
        self.spec.analysis
    }

    pub fn reweight_interval_s(&self) -> u32 {
        self.spec.reweight_interval_s
    }

    /// Arms in bucket order.
    pub fn arms(&self) -> &[Arm] {
        &self.spec.arms
    }

    /// Current weights in arm order.
    pub fn weights(&self) -> Vec<f64> {
        self.spec.arms.iter().map(|a| a.weight).collect()
    }

    /// The control arm (validation guarantees exactly one).
    pub fn control(&self) -> &Arm {
        // Validation guarantees a control; falling back to the first arm keeps
        // this total without a panic path.
        self.spec
            .arms
            .iter()
            .find(|a| a.is_control)
            .unwrap_or(&self.spec.arms[0])
    }

    /// Position of `key` among the arms, if it is one of them.
    pub fn arm_index(&self, key: &ArmKey) -> Option<usize> {
        self.spec.arms.iter().position(|a| &a.key == key)
    }

    /// GrowthBook bucket ranges, one per arm, from weights and coverage.
    pub fn bucket_ranges(&self) -> &[BucketRange] {
        &self.ranges
    }

    pub(super) fn hash_bounds(&self) -> &[(u32, u32)] {
        &self.hash_bounds
    }

    pub(super) fn salt_state(&self) -> u32 {
        self.salt_state
    }
}

impl TryFrom<ExperimentSpec> for Experiment {
    type Error = ValidationError;
    fn try_from(spec: ExperimentSpec) -> Result<Self, Self::Error> {
        Self::new(spec)
    }
}

impl From<Experiment> for ExperimentSpec {
    fn from(value: Experiment) -> Self {
        value.spec
    }
}

fn validate(spec: &ExperimentSpec) -> Result<(), ValidationError> {
    if spec.salt.is_empty() {
        return Err(ValidationError::new("salt", "must not be empty"));
    }
    // `!(x > 0)` rather than `x <= 0` so that NaN is rejected too.
    if !(spec.coverage > 0.0 && spec.coverage <= 1.0) {
        return Err(ValidationError::new("coverage", "must be in (0, 1]"));
    }
    // PostgreSQL stores it as INT.
    if spec.reweight_interval_s == 0 || i32::try_from(spec.reweight_interval_s).is_err() {
        return Err(ValidationError::new(
            "reweight_interval_s",
            format!("must be between 1 and {}", i32::MAX),
        ));
    }
    if spec.bandit.burn_in_users > MAX_BURN_IN_USERS {
        return Err(ValidationError::new(
            "bandit.burn_in_users",
            format!("must be at most {MAX_BURN_IN_USERS}"),
        ));
    }
    if spec.bandit.exploration_s > MAX_EXPLORATION_S {
        return Err(ValidationError::new(
            "bandit.exploration_s",
            format!("must be at most {MAX_EXPLORATION_S} (90 days)"),
        ));
    }
    if let Some(days) = spec.outcome_window_days {
        if days == 0 || days > MAX_OUTCOME_WINDOW_DAYS {
            return Err(ValidationError::new(
                "outcome_window_days",
                format!("must be between 1 and {MAX_OUTCOME_WINDOW_DAYS}"),
            ));
        }
    }
    if let crate::stats::Analysis::Sequential { tuning } = spec.analysis {
        if !(tuning.is_finite() && (1.0..=MAX_SEQUENTIAL_TUNING).contains(&tuning)) {
            return Err(ValidationError::new(
                "analysis.tuning",
                format!("must be between 1 and {MAX_SEQUENTIAL_TUNING}"),
            ));
        }
    }
    let n = spec.arms.len();
    if n < 2 {
        return Err(ValidationError::new("arms", "need at least two arms"));
    }
    let mut sum = 0.0;
    for (i, arm) in spec.arms.iter().enumerate() {
        // `!(..)` so that NaN is rejected too.
        if !(0.0..=1.0).contains(&arm.weight) {
            return Err(ValidationError::new(
                format!("arms[{i}].weight"),
                "must be between 0 and 1",
            ));
        }
        if spec.arms[..i].iter().any(|other| other.key == arm.key) {
            return Err(ValidationError::new(
                format!("arms[{i}].key"),
                format!("duplicate arm key {}", arm.key),
            ));
        }
        sum += arm.weight;
    }
    if (sum - 1.0).abs() > WEIGHT_SUM_TOLERANCE {
        return Err(ValidationError::new(
            "arms",
            format!("weights must sum to 1, got {sum}"),
        ));
    }
    let controls = spec.arms.iter().filter(|a| a.is_control).count();
    if controls != 1 {
        return Err(ValidationError::new(
            "arms",
            format!("need exactly one control arm, got {controls}"),
        ));
    }
    let max_floor = 1.0 / n as f64;
    if !(spec.min_weight >= 0.0 && spec.min_weight <= max_floor) {
        return Err(ValidationError::new(
            "min_weight",
            format!("must be in [0, 1/{n}] so every arm can get its floor"),
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn arm(key: &str, weight: f64, is_control: bool) -> Arm {
        Arm {
            key: ArmKey::parse(key).unwrap(),
            algorithm: AlgorithmKey::parse("popularity").unwrap(),
            weight,
            is_control,
        }
    }

    pub(crate) fn spec_with(salt: &str, weights: &[f64]) -> ExperimentSpec {
        ExperimentSpec {
            key: ExperimentKey::parse("home").unwrap(),
            salt: salt.to_string(),
            hash_version: HashVersion::V2,
            coverage: 1.0,
            status: ExperimentStatus::Running,
            policy: Policy::ThompsonSampling,
            metric: Metric::Ctr,
            min_weight: 0.0,
            reweight_interval_s: 300,
            bandit: BanditSettings::default(),
            outcome_window_days: None,
            analysis: Default::default(),
            arms: weights
                .iter()
                .enumerate()
                .map(|(i, &w)| arm(&format!("arm{i}"), w, i == 0))
                .collect(),
        }
    }

    fn err_field(spec: ExperimentSpec) -> String {
        Experiment::new(spec).unwrap_err().field
    }

    #[test]
    fn valid_spec_builds() {
        let e = Experiment::new(spec_with("s", &[0.5, 0.5])).unwrap();
        assert_eq!(e.arms().len(), 2);
        assert_eq!(e.control().key.as_str(), "arm0");
        assert_eq!(e.bucket_ranges().len(), 2);
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(err_field(spec_with("", &[0.5, 0.5])), "salt");
        assert_eq!(err_field(spec_with("s", &[1.0])), "arms");
        assert_eq!(
            err_field(spec_with("s", &[0.5, -0.5, 1.0])),
            "arms[1].weight"
        );
        assert_eq!(
            err_field(spec_with("s", &[0.5, f64::NAN])),
            "arms[1].weight"
        );
        assert_eq!(
            err_field(spec_with("s", &[0.5, f64::INFINITY])),
            "arms[1].weight"
        );
        assert_eq!(err_field(spec_with("s", &[0.5, 0.4])), "arms");
        assert!(Experiment::new(spec_with("s", &[0.5, 0.5 + 1e-12])).is_ok());
        assert_eq!(err_field(spec_with("s", &[0.5, 0.5 + 1e-8])), "arms");

        let mut s = spec_with("s", &[0.5, 0.5]);
        s.arms[1].key = s.arms[0].key.clone();
        assert_eq!(err_field(s), "arms[1].key");

        let mut s = spec_with("s", &[0.5, 0.5]);
        s.arms[1].is_control = true;
        assert_eq!(err_field(s), "arms");
        let mut s = spec_with("s", &[0.5, 0.5]);
        s.arms[0].is_control = false;
        assert_eq!(err_field(s), "arms");

        for bad in [0.0, -0.1, 1.01, f64::NAN] {
            let mut s = spec_with("s", &[0.5, 0.5]);
            s.coverage = bad;
            assert_eq!(err_field(s), "coverage");
        }
        for bad in [-0.01, 0.34, f64::NAN] {
            let mut s = spec_with("s", &[0.25, 0.25, 0.5]);
            s.min_weight = bad;
            assert_eq!(err_field(s), "min_weight");
        }
        let mut s = spec_with("s", &[0.25, 0.25, 0.5]);
        s.min_weight = 1.0 / 3.0;
        assert!(Experiment::new(s).is_ok());

        let mut s = spec_with("s", &[0.5, 0.5]);
        s.reweight_interval_s = 0;
        assert_eq!(err_field(s), "reweight_interval_s");
    }

    #[test]
    fn with_weights_revalidates() {
        let e = Experiment::new(spec_with("s", &[0.5, 0.5])).unwrap();
        let e2 = e.with_weights(vec![0.2, 0.8]).unwrap();
        assert_eq!(e2.weights(), vec![0.2, 0.8]);
        assert_eq!(e2.salt(), "s");
        assert_eq!(e2.bucket_ranges()[1].start, 0.2);
        assert_eq!(e.with_weights(vec![1.0]).unwrap_err().field, "weights");
        assert_eq!(
            e.with_weights(vec![1.2, -0.2]).unwrap_err().field,
            "arms[0].weight"
        );
        assert_eq!(
            e.with_weights(vec![-0.2, 1.2]).unwrap_err().field,
            "arms[0].weight"
        );
        assert_eq!(
            e.with_weights(vec![0.0, 1.000_000_000_5])
                .unwrap_err()
                .field,
            "arms[1].weight",
            "within the sum's tolerance, but more than a whole"
        );
    }

    #[test]
    fn status_moves_forward_only() {
        let mut s = spec_with("s", &[0.5, 0.5]);
        s.status = ExperimentStatus::Draft;
        let e = Experiment::new(s).unwrap();
        let running = e.with_status(ExperimentStatus::Running).unwrap();
        let stopped = running.with_status(ExperimentStatus::Stopped).unwrap();
        assert_eq!(
            stopped
                .with_status(ExperimentStatus::Running)
                .unwrap_err()
                .field,
            "status"
        );
    }

    #[test]
    fn enums_round_trip_their_spellings() {
        for s in [
            ExperimentStatus::Draft,
            ExperimentStatus::Running,
            ExperimentStatus::Stopped,
        ] {
            assert_eq!(ExperimentStatus::parse(s.as_str()).unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        for p in [Policy::Fixed, Policy::ThompsonSampling] {
            assert_eq!(Policy::parse(p.as_str()).unwrap(), p);
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        for m in [Metric::Ctr, Metric::Conversion] {
            assert_eq!(Metric::parse(m.as_str()).unwrap(), m);
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{m}\""));
        }
        assert_eq!(
            Policy::parse("thompson_sampling").unwrap_err().field,
            "policy"
        );
        assert_eq!(Metric::parse("CTR").unwrap_err().field, "metric");
        assert_eq!(ExperimentStatus::parse("").unwrap_err().field, "status");
        assert_eq!(HashVersion::parse(3).unwrap_err().field, "hash_version");
    }

    #[test]
    fn serde_validates_and_round_trips() {
        let e = Experiment::new(spec_with("s", &[0.3, 0.7])).unwrap();
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["policy"], "thompson");
        assert_eq!(json["hash_version"], 2);
        assert_eq!(json["arms"][1]["weight"], 0.7);
        let back: Experiment = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, e);

        let mut bad = json;
        bad["coverage"] = serde_json::json!(2.0);
        assert!(serde_json::from_value::<Experiment>(bad.clone()).is_err());
        bad["coverage"] = serde_json::json!(1.0);
        bad["hash_version"] = serde_json::json!(7);
        assert!(serde_json::from_value::<Experiment>(bad).is_err());
    }
}
