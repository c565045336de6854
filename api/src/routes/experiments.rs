//! Experiment administration: create with arms, read, list, start, stop,
//! edit a draft's arms, and the weight history.
//!
//! Every change of weights or status is published on Redis so that every api
//! replica reloads its experiments within a second; PostgreSQL stays the
//! source of truth, so a failed publish is logged and caught up by the
//! replicas' periodic reload instead of failing a change already committed.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use domain::experiment::{
    Arm, BanditSettings, Experiment, ExperimentSpec, ExperimentStatus, HashVersion, Metric, Policy,
};
use domain::ids::{AlgorithmKey, ArmKey, ExperimentKey};
use domain::ports::pipeline::{ArmWeight, PublishedWeights, WeightsPublisher};
use domain::stats::{Analysis, DEFAULT_TUNING};
use domain::ValidationError;
use repositories::postgres::experiments::{Change, ExperimentRecord};
use repositories::RepoError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{AdminAccess, AnalystAccess};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;

const MAX_DESCRIPTION_LEN: usize = 2000;
const MAX_SALT_LEN: usize = 128;
const MAX_ARMS: usize = 20;
const MAX_PAGE: u32 = 500;
const DEFAULT_PAGE: u32 = 100;
const MAX_HISTORY: u32 = 1000;
const DEFAULT_HISTORY: u32 = 100;

/// One arm of a new experiment (or of a draft's new arm list).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArmInput {
    /// Unique within the experiment.
    #[schema(example = "popularity")]
    pub key: String,
    /// An existing algorithm (see `GET /v1/algorithms`).
    #[schema(example = "popularity")]
    pub algorithm: String,
    /// Share of traffic in [0, 1]; the arms' weights sum to 1.
    #[schema(example = 0.5)]
    pub weight: f64,
    /// Exactly one arm is the control.
    #[serde(default)]
    pub is_control: bool,
}

/// A new experiment; it starts as a draft.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewExperiment {
    #[schema(example = "home")]
    pub key: String,
    #[serde(default)]
    pub description: String,
    /// `fixed` (weights stay) or `thompson` (weights follow the bandit). Default `fixed`.
    #[schema(example = "thompson")]
    pub policy: Option<String>,
    /// `ctr` or `conversion`. Default `ctr`.
    #[schema(example = "ctr")]
    pub metric: Option<String>,
    /// Least weight of any arm under a bandit, in [0, 1/arms]. Default 0.05.
    #[schema(example = 0.05)]
    pub min_weight: Option<f64>,
    /// Seconds between bandit reweights, > 0. Default 300.
    #[schema(example = 300)]
    pub reweight_interval_s: Option<u32>,
    /// The bandit's burn-in: no reweight until every arm has `burn_in_users`
    /// users (default 100) and the experiment has run `exploration_s` seconds
    /// (default 3600); `top_two` switches to top-two Thompson sampling.
    pub bandit: Option<BanditInput>,
    /// Measure each user over this many days after their first exposure
    /// (1 to 366) in the cohort analysis, so early and late cohorts are
    /// measured alike. Default: the whole exposure.
    #[schema(example = 7)]
    pub outcome_window_days: Option<u16>,
    /// How results are read: `{"method": "sequential", "tuning": 5000}` (the
    /// default: confidence sequences valid at every look, tightest near
    /// `tuning` users of both arms, 1 to 1e9) or `{"method": "fixed_horizon"}`.
    pub analysis: Option<AnalysisInput>,
    /// Fraction of users in the experiment, in (0, 1]. Default 1.
    pub coverage: Option<f64>,
    /// Seed of the assignment hash; generated when absent.
    pub salt: Option<String>,
    /// GrowthBook hash version, 1 or 2. Default 2.
    pub hash_version: Option<i64>,
    /// At least two, in bucket order (the order defines the hash ranges).
    pub arms: Vec<ArmInput>,
}

/// The analysis of a new experiment.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalysisInput {
    /// `sequential` (default) or `fixed_horizon`.
    #[schema(example = "sequential")]
    pub method: Option<String>,
    /// N* of the confidence sequences (sequential only). Default 5000.
    #[schema(example = 5000)]
    pub tuning: Option<f64>,
}

fn analysis_from(input: Option<AnalysisInput>) -> Result<Analysis, ValidationError> {
    let Some(input) = input else {
        return Ok(Analysis::default());
    };
    match input.method.as_deref().unwrap_or("sequential") {
        "sequential" => Ok(Analysis::Sequential {
            tuning: input.tuning.unwrap_or(DEFAULT_TUNING),
        }),
        "fixed_horizon" if input.tuning.is_some() => Err(ValidationError::new(
            "analysis.tuning",
            "applies to the sequential analysis only",
        )),
        "fixed_horizon" => Ok(Analysis::FixedHorizon),
        _ => Err(ValidationError::new(
            "analysis.method",
            "must be sequential or fixed_horizon",
        )),
    }
}

/// Bandit settings of a new experiment; each field has its default when absent.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BanditInput {
    /// Users every arm needs before the first reweight, 0 to 100,000,000. Default 100.
    #[schema(example = 100)]
    pub burn_in_users: Option<u32>,
    /// Seconds the experiment runs before the first reweight, at most 90 days. Default 3600.
    #[schema(example = 3600)]
    pub exploration_s: Option<u32>,
    /// Top-two Thompson sampling (three or more arms). Default false.
    pub top_two: Option<bool>,
}

/// The bandit settings as stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct BanditView {
    pub burn_in_users: u32,
    pub exploration_s: u32,
    pub top_two: bool,
}

/// A draft's new arm list.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArmsInput {
    pub arms: Vec<ArmInput>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ArmView {
    pub key: String,
    pub algorithm: String,
    pub weight: f64,
    pub is_control: bool,
}

/// An experiment as stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExperimentView {
    pub key: String,
    pub description: String,
    /// `draft`, `running` or `stopped`.
    #[schema(example = "running")]
    pub status: String,
    pub policy: String,
    pub metric: String,
    pub min_weight: f64,
    pub reweight_interval_s: u32,
    pub bandit: BanditView,
    /// Days after first exposure a user is measured over; null = whole exposure.
    pub outcome_window_days: Option<u16>,
    /// `{"method": "sequential", "tuning": N*}` or `{"method": "fixed_horizon"}`.
    #[schema(value_type = Object)]
    pub analysis: Analysis,
    pub coverage: f64,
    pub salt: String,
    pub hash_version: u8,
    /// Current weights, in bucket order.
    pub arms: Vec<ArmView>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub stopped_at: Option<DateTime<Utc>>,
    pub last_reweight_at: Option<DateTime<Utc>>,
}

impl From<&ExperimentRecord> for ExperimentView {
    fn from(r: &ExperimentRecord) -> Self {
        let e = &r.experiment;
        Self {
            key: e.key().to_string(),
            description: r.description.clone(),
            status: e.status().as_str().to_owned(),
            policy: e.policy().as_str().to_owned(),
            metric: e.metric().as_str().to_owned(),
            min_weight: e.min_weight(),
            reweight_interval_s: e.reweight_interval_s(),
            bandit: BanditView {
                burn_in_users: e.bandit().burn_in_users,
                exploration_s: e.bandit().exploration_s,
                top_two: e.bandit().top_two,
            },
            outcome_window_days: e.outcome_window_days(),
            analysis: e.analysis(),
            coverage: e.coverage(),
            salt: e.salt().to_owned(),
            hash_version: e.hash_version().number(),
            arms: e
                .arms()
                .iter()
                .map(|a| ArmView {
                    key: a.key.to_string(),
                    algorithm: a.algorithm.to_string(),
                    weight: a.weight,
                    is_control: a.is_control,
                })
                .collect(),
            created_at: r.created_at,
            started_at: r.started_at,
            stopped_at: r.stopped_at,
            last_reweight_at: r.last_reweight_at,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExperimentPage {
    /// Only experiments in this status: `draft`, `running` or `stopped`.
    pub status: Option<String>,
    /// 1 to 500, default 100.
    pub limit: Option<u32>,
    /// Experiments to skip; pass the previous page's `next_offset`.
    pub offset: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExperimentList {
    /// Newest first.
    pub items: Vec<ExperimentView>,
    pub next_offset: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryPage {
    /// Newest snapshots to return, 1 to 1000, default 100.
    pub limit: Option<u32>,
}

/// The weights of all arms at one moment, and why they changed.
#[derive(Debug, Serialize, ToSchema)]
pub struct WeightSnapshot {
    pub computed_at: DateTime<Utc>,
    /// `start` for the weights an experiment started with; the bandit writes its own reasons.
    #[schema(example = "start")]
    pub reason: String,
    pub weights: Vec<SnapshotWeight>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotWeight {
    pub arm: String,
    pub weight: f64,
    /// The bandit's posterior for this arm, when a reweight computed one.
    #[schema(value_type = Option<Object>)]
    pub posterior: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WeightHistory {
    pub experiment: String,
    /// Newest first.
    pub snapshots: Vec<WeightSnapshot>,
}

fn arms_from(inputs: Vec<ArmInput>) -> Result<Vec<Arm>, ValidationError> {
    if inputs.len() > MAX_ARMS {
        return Err(ValidationError::new(
            "arms",
            format!("at most {MAX_ARMS} arms"),
        ));
    }
    inputs
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            Ok(Arm {
                key: ArmKey::parse_field(&format!("arms[{i}].key"), a.key)?,
                algorithm: AlgorithmKey::parse_field(&format!("arms[{i}].algorithm"), a.algorithm)?,
                weight: a.weight,
                is_control: a.is_control,
            })
        })
        .collect()
}

fn spec_from(input: NewExperiment) -> Result<(ExperimentSpec, String), ValidationError> {
    let key = ExperimentKey::parse_field("key", input.key)?;
    if input.description.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(ValidationError::new(
            "description",
            format!("at most {MAX_DESCRIPTION_LEN} characters"),
        ));
    }
    ValidationError::check_storable("description", &input.description)?;
    if let Some(salt) = &input.salt {
        ValidationError::check_storable("salt", salt)?;
    }
    let salt = match input.salt {
        Some(salt) if salt.is_empty() || salt.len() > MAX_SALT_LEN => {
            return Err(ValidationError::new(
                "salt",
                format!("must be 1 to {MAX_SALT_LEN} bytes"),
            ))
        }
        Some(salt) => salt,
        // Random, so two experiments with the same key over time (or in two
        // environments) do not bucket users identically.
        None => uuid::Uuid::new_v4().simple().to_string(),
    };
    let spec = ExperimentSpec {
        key,
        salt,
        hash_version: input
            .hash_version
            .map(HashVersion::parse)
            .transpose()?
            .unwrap_or_default(),
        coverage: input.coverage.unwrap_or(1.0),
        status: ExperimentStatus::Draft,
        policy: input
            .policy
            .as_deref()
            .map(Policy::parse)
            .transpose()?
            .unwrap_or(Policy::Fixed),
        metric: input
            .metric
            .as_deref()
            .map(Metric::parse)
            .transpose()?
            .unwrap_or(Metric::Ctr),
        min_weight: input.min_weight.unwrap_or(0.05),
        reweight_interval_s: input.reweight_interval_s.unwrap_or(300),
        bandit: {
            let defaults = BanditSettings::default();
            let given = input.bandit.as_ref();
            BanditSettings {
                burn_in_users: given
                    .and_then(|b| b.burn_in_users)
                    .unwrap_or(defaults.burn_in_users),
                exploration_s: given
                    .and_then(|b| b.exploration_s)
                    .unwrap_or(defaults.exploration_s),
                top_two: given.and_then(|b| b.top_two).unwrap_or(defaults.top_two),
            }
        },
        outcome_window_days: input.outcome_window_days,
        analysis: analysis_from(input.analysis)?,
        arms: arms_from(input.arms)?,
    };
    Ok((spec, input.description))
}

/// Every arm must name an algorithm that exists; the error names the first that does not.
async fn check_algorithms(state: &AppState, arms: &[Arm]) -> ApiResult<()> {
    let keys: Vec<&str> = arms.iter().map(|a| a.algorithm.as_str()).collect();
    let known = state.stores.experiments.existing_algorithms(&keys).await?;
    match arms
        .iter()
        .position(|a| !known.contains(a.algorithm.as_str()))
    {
        Some(i) => Err(ValidationError::new(
            format!("arms[{i}].algorithm"),
            format!(
                "unknown algorithm {} (see GET /v1/algorithms)",
                arms[i].algorithm
            ),
        )
        .into()),
        None => Ok(()),
    }
}

fn parse_key(key: String) -> ApiResult<ExperimentKey> {
    Ok(ExperimentKey::parse_field("key", key)?)
}

fn unknown(key: &ExperimentKey) -> ApiError {
    ApiError::not_found("key", format!("experiment {key}"))
}

/// Tell api replicas to reload; see the module comment for why a failure is not an error.
async fn publish(state: &AppState, experiment: &Experiment, reason: &str) {
    let weights = PublishedWeights {
        experiment: experiment.key().clone(),
        weights: experiment
            .arms()
            .iter()
            .map(|a| ArmWeight {
                arm: a.key.clone(),
                weight: a.weight,
            })
            .collect(),
        computed_at: Utc::now(),
        reason: reason.to_owned(),
    };
    if let Err(e) = state.stores.redis.publish(&weights).await {
        tracing::warn!(experiment = %experiment.key(), error = %e, "publishing the experiment change failed; replicas catch up on their periodic reload");
    }
}

/// Create an experiment (as a draft) with its arms.
#[utoipa::path(
    post, path = "/v1/experiments", tag = "experiments",
    request_body = NewExperiment,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Created as a draft", body = ExperimentView),
        (status = 400, description = "Invalid experiment; `field` names it (e.g. `arms`, `arms[1].algorithm`, `coverage`)", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 409, description = "An experiment with this key exists", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "A store is unavailable or timed out", body = ErrorBody),
    )
)]
pub async fn create(
    _: AdminAccess,
    State(state): State<AppState>,
    ApiJson(input): ApiJson<NewExperiment>,
) -> ApiResult<(StatusCode, Json<ExperimentView>)> {
    let (spec, description) = spec_from(input)?;
    let experiment = Experiment::new(spec)?;
    check_algorithms(&state, experiment.arms()).await?;
    let created = state
        .stores
        .experiments
        .create(&experiment, &description)
        .await
        .map_err(|e| match e {
            RepoError::Conflict(message) => ApiError::conflict("key", message),
            e => e.into(),
        })?;
    publish(&state, &created.experiment, "create").await;
    Ok((StatusCode::CREATED, Json((&created).into())))
}

/// One experiment with its current weights.
#[utoipa::path(
    get, path = "/v1/experiments/{key}", tag = "experiments",
    params(("key" = String, Path, description = "Experiment key")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The experiment", body = ExperimentView),
        (status = 400, description = "Invalid key", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Neither an analyst nor an admin key", body = ErrorBody),
        (status = 404, description = "No such experiment", body = ErrorBody),
        (status = 503, description = "A store is unavailable or timed out", body = ErrorBody),
    )
)]
pub async fn get(
    _: AnalystAccess,
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String>,
) -> ApiResult<Json<ExperimentView>> {
    let key = parse_key(key)?;
    let record = state
        .stores
        .experiments
        .get(key.as_str())
        .await?
        .ok_or_else(|| unknown(&key))?;
    Ok(Json((&record).into()))
}

/// Experiments, newest first.
#[utoipa::path(
    get, path = "/v1/experiments", tag = "experiments",
    params(ExperimentPage),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "One page", body = ExperimentList),
        (status = 400, description = "Invalid `status`, `limit` or `offset`", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Neither an analyst nor an admin key", body = ErrorBody),
        (status = 503, description = "A store is unavailable or timed out", body = ErrorBody),
    )
)]
pub async fn list(
    _: AnalystAccess,
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<ExperimentPage>,
) -> ApiResult<Json<ExperimentList>> {
    let status = page
        .status
        .as_deref()
        .map(ExperimentStatus::parse)
        .transpose()?;
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        ));
    }
    let offset = page.offset.unwrap_or(0);
    let (records, more) = state.stores.experiments.list(status, limit, offset).await?;
    Ok(Json(ExperimentList {
        items: records.iter().map(ExperimentView::from).collect(),
        next_offset: more.then_some(offset + limit),
    }))
}

async fn transition(
    state: &AppState,
    key: String,
    next: ExperimentStatus,
    reason: &str,
) -> ApiResult<Json<ExperimentView>> {
    let key = parse_key(key)?;
    let change = state
        .stores
        .experiments
        .set_status(key.as_str(), next)
        .await?
        .ok_or_else(|| unknown(&key))?;
    match change {
        Change::Done(record) => {
            publish(state, &record.experiment, reason).await;
            Ok(Json((&record).into()))
        }
        Change::Unchanged(record) => Ok(Json((&record).into())),
        Change::Refused { reason, .. } => Err(ApiError::conflict("status", reason)),
        Change::Invalid(e) => Err(e.into()),
    }
}

/// Start a draft: users are assigned from now on; the starting weights go to the weight history.
#[utoipa::path(
    post, path = "/v1/experiments/{key}/start", tag = "experiments",
    params(("key" = String, Path, description = "Experiment key")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Running (also when it already was)", body = ExperimentView),
        (status = 400, description = "Invalid key", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 404, description = "No such experiment", body = ErrorBody),
        (status = 409, description = "Stopped experiments cannot restart", body = ErrorBody),
        (status = 503, description = "A store is unavailable or timed out", body = ErrorBody),
    )
)]
pub async fn start(
    _: AdminAccess,
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String>,
) -> ApiResult<Json<ExperimentView>> {
    transition(&state, key, ExperimentStatus::Running, "start").await
}

/// Stop an experiment for good: it is no longer served; its data stays for analysis.
#[utoipa::path(
    post, path = "/v1/experiments/{key}/stop", tag = "experiments",
    params(("key" = String, Path, description = "Experiment key")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Stopped (also when it already was)", body = ExperimentView),
        (status = 400, description = "Invalid key", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 404, description = "No such experiment", body = ErrorBody),
        (status = 503, description = "A store is unavailable or timed out", body = ErrorBody),
    )
)]
pub async fn stop(
    _: AdminAccess,
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String>,
) -> ApiResult<Json<ExperimentView>> {
    transition(&state, key, ExperimentStatus::Stopped, "stop").await
}

/// Replace a draft's arms. Refused once the experiment has started: its users
/// were assigned by the current arms.
#[utoipa::path(
    put, path = "/v1/experiments/{key}/arms", tag = "experiments",
    params(("key" = String, Path, description = "Experiment key")),
    request_body = ArmsInput,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Arms replaced", body = ExperimentView),
        (status = 400, description = "Invalid arms; `field` names the offending one", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 404, description = "No such experiment", body = ErrorBody),
        (status = 409, description = "The experiment is running or stopped", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "A store is unavailable or timed out", body = ErrorBody),
    )
)]
pub async fn replace_arms(
    _: AdminAccess,
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String>,
    ApiJson(input): ApiJson<ArmsInput>,
) -> ApiResult<Json<ExperimentView>> {
    let key = parse_key(key)?;
    let arms = arms_from(input.arms)?;
    check_algorithms(&state, &arms).await?;
    let change = state
        .stores
        .experiments
        .replace_arms(key.as_str(), arms)
        .await
        .map_err(|e| match e {
            RepoError::Conflict(message) => ApiError::conflict("arms", message),
            e => e.into(),
        })?
        .ok_or_else(|| unknown(&key))?;
    match change {
        Change::Done(record) => {
            publish(&state, &record.experiment, "arms").await;
            Ok(Json((&record).into()))
        }
        Change::Unchanged(record) => Ok(Json((&record).into())),
        Change::Refused { reason, .. } => Err(ApiError::conflict("arms", reason)),
        Change::Invalid(e) => Err(e.into()),
    }
}

/// How the experiment's weights changed over time, newest first.
#[utoipa::path(
    get, path = "/v1/experiments/{key}/weights", tag = "experiments",
    params(("key" = String, Path, description = "Experiment key"), HistoryPage),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Weight snapshots", body = WeightHistory),
        (status = 400, description = "Invalid key or `limit`", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 404, description = "No such experiment", body = ErrorBody),
        (status = 503, description = "A store is unavailable or timed out", body = ErrorBody),
    )
)]
pub async fn weights(
    _: AdminAccess,
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String>,
    ApiQuery(page): ApiQuery<HistoryPage>,
) -> ApiResult<Json<WeightHistory>> {
    let key = parse_key(key)?;
    let limit = page.limit.unwrap_or(DEFAULT_HISTORY);
    if !(1..=MAX_HISTORY).contains(&limit) {
        return Err(ApiError::bad_request(
            "limit",
            format!("must be between 1 and {MAX_HISTORY}"),
        ));
    }
    state
        .stores
        .experiments
        .get(key.as_str())
        .await?
        .ok_or_else(|| unknown(&key))?;
    let rows = state
        .stores
        .experiments
        .weight_history(key.as_str(), limit)
        .await?;
    // Rows arrive grouped by snapshot, newest first; keep that order.
    let mut snapshots: Vec<WeightSnapshot> = Vec::new();
    let mut index: HashMap<(DateTime<Utc>, String), usize> = HashMap::new();
    for row in rows {
        let at = *index
            .entry((row.computed_at, row.reason.clone()))
            .or_insert_with(|| {
                snapshots.push(WeightSnapshot {
                    computed_at: row.computed_at,
                    reason: row.reason.clone(),
                    weights: Vec::new(),
                });
                snapshots.len() - 1
            });
        snapshots[at].weights.push(SnapshotWeight {
            arm: row.arm_key,
            weight: row.weight,
            posterior: row.posterior,
        });
    }
    Ok(Json(WeightHistory {
        experiment: key.to_string(),
        snapshots,
    }))
}
