//! `GET /v1/experiments/{key}/results`: what an analyst reads.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use domain::ids::{AlgorithmKey, ArmKey, ExperimentKey};
use domain::ports::pipeline::CohortWindow;
use domain::results::{
    arms_csv, build_report, ArmTotals, CohortCounts, DailyCounts, ResultsInput, ResultsReport,
};
use domain::stats::{ArmCounts, Metric};
use repositories::clickhouse::results::{arm_totals_of, date_from_days, DayWindow};
use repositories::postgres::experiments::ResultsContext;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::AnalystAccess;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery};
use crate::state::AppState;

/// Query of a results request.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ResultsQuery {
    /// First day included (YYYY-MM-DD); default: the day the experiment started.
    pub from: Option<String>,
    /// Last day included (YYYY-MM-DD); default: today (UTC).
    pub to: Option<String>,
    /// `json` (default) or `csv`; `Accept: text/csv` also selects CSV.
    pub format: Option<String>,
}

/// One change of an arm's weight.
#[derive(Debug, Serialize, ToSchema)]
pub struct WeightChange {
    pub arm: String,
    pub weight: f64,
    pub computed_at: DateTime<Utc>,
    pub reason: String,
}

/// The experiment a report is about.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExperimentSummary {
    pub key: String,
    pub status: String,
    pub policy: String,
    pub metric: String,
    pub started_at: Option<DateTime<Utc>>,
}

/// Results of one experiment over a window.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultsResponse {
    pub experiment: ExperimentSummary,
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Per-arm estimates, lifts against control, SRM and the daily series (see docs/statistics.md).
    #[schema(value_type = Object)]
    pub report: ResultsReport,
    pub weight_history: Vec<WeightChange>,
}

fn parse_day(field: &str, value: &str) -> ApiResult<NaiveDate> {
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map_err(|_| ApiError::bad_request(field, "must be a date YYYY-MM-DD"))
}

fn wants_csv(query: &ResultsQuery, headers: &HeaderMap) -> ApiResult<bool> {
    match query.format.as_deref() {
        Some("csv") => Ok(true),
        Some("json") => Ok(false),
        Some(_) => Err(ApiError::bad_request("format", "must be json or csv")),
        None => Ok(headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/csv"))),
    }
}

/// Per-arm results, lifts with confidence intervals, SRM, daily series and weight history.
#[utoipa::path(
    get,
    path = "/v1/experiments/{key}/results",
    tag = "results",
    params(("key" = String, Path, description = "experiment key"), ResultsQuery),
    responses(
        (status = 200, body = ResultsResponse, description = "JSON, or CSV of the per-arm table with format=csv / Accept: text/csv"),
        (status = 400, body = crate::error::ErrorBody, description = "bad date or format"),
        (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody, description = "no such experiment"),
    ),
    security(("api_key" = []))
)]
pub async fn experiment_results(
    _caller: AnalystAccess,
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String>,
    ApiQuery(query): ApiQuery<ResultsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let key = ExperimentKey::parse_field("key", key)?;
    let csv = wants_csv(&query, &headers)?;
    let response = load_results(&state, &key, query.from.as_deref(), query.to.as_deref()).await?;
    if csv {
        let body = arms_csv(&response.report);
        return Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response());
    }
    Ok(Json(response).into_response())
}

/// Load everything a report needs and build it (shared by JSON, CSV and the dashboard).
pub async fn load_results(
    state: &AppState,
    key: &ExperimentKey,
    from: Option<&str>,
    to: Option<&str>,
) -> ApiResult<ResultsResponse> {
    // Bad input is reported before any lookup, so the answer does not depend on what exists.
    let from_given = from.map(|f| parse_day("from", f)).transpose()?;
    let to_given = to.map(|t| parse_day("to", t)).transpose()?;
    let ResultsContext {
        experiment,
        arms,
        periods,
        history,
    } = state
        .stores
        .experiments
        .results_context(key.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("key", format!("experiment {key}")))?;

    let default_from = experiment
        .started_at
        .unwrap_or(experiment.created_at)
        .date_naive();
    let from = from_given.unwrap_or(default_from);
    let to = to_given.unwrap_or_else(|| Utc::now().date_naive());
    if from > to {
        return Err(ApiError::bad_request("from", "must not be after `to`"));
    }
    let window = DayWindow { from, to };
    let whole_run = from_given.is_none() && to_given.is_none();
    let analytics = &state.stores.analytics;
    let experiment_key = key.as_str();
    let outcome_window_days = experiment
        .outcome_window_days
        .and_then(|d| u16::try_from(d).ok());
    // Users first exposed within the requested days, by cohort of first exposure.
    let starts: Vec<DateTime<Utc>> = periods.iter().map(|p| p.start).collect();
    let cohort_window = CohortWindow {
        first_exposed_from: from_given.map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc()),
        first_exposed_before: to_given
            .and_then(|d| d.succ_opt())
            .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc()),
        outcome_window_days,
    };
    let with_cohorts = !periods.is_empty();
    // Over the whole run and each user's whole exposure, the cohorts hold
    // every user once with all their sums: the arm totals are their sums,
    // and `arm_user` need not be read twice.
    let totals_from_cohorts = with_cohorts && whole_run && outcome_window_days.is_none();
    let cohorts = async {
        if !with_cohorts {
            return Ok(Vec::new());
        }
        analytics.cohort_totals(key, &starts, cohort_window).await
    };
    let totals = async {
        if totals_from_cohorts {
            Ok(Vec::new())
        } else if whole_run {
            analytics.arm_totals_whole_run(experiment_key).await
        } else {
            analytics.arm_totals(experiment_key, window).await
        }
    };
    let (cohorts, totals, daily, positions, values, negatives) = tokio::try_join!(
        cohorts,
        totals,
        analytics.arm_daily_counts(experiment_key, window),
        analytics.arm_position_clicks(experiment_key, window),
        analytics.arm_values(experiment_key, window),
        analytics.arm_negatives(experiment_key, window),
    )?;
    let totals = if totals_from_cohorts {
        arm_totals_of(&cohorts)
    } else {
        totals
    };
    let mut cohort_counts = Vec::with_capacity(cohorts.len());
    for c in &cohorts {
        cohort_counts.push(CohortCounts {
            period: usize::try_from(c.period).unwrap_or(usize::MAX),
            arm: ArmKey::parse(c.arm_key.clone())?,
            counts: c.counts(),
        });
    }
    let daily: Vec<(u16, String, ArmCounts)> = daily
        .into_iter()
        .map(|d| {
            (
                d.day,
                d.arm_key,
                ArmCounts {
                    users: d.users,
                    impressions: d.impressions,
                    clicks: d.clicks,
                    conversions: d.converting_users,
                    ..ArmCounts::default()
                },
            )
        })
        .collect();

    let totals: HashMap<&str, _> = totals.iter().map(|t| (t.arm_key.as_str(), t)).collect();
    let values: HashMap<&str, _> = values.iter().map(|v| (v.arm_key.as_str(), v)).collect();
    let negatives: HashMap<&str, _> = negatives.iter().map(|n| (n.arm_key.as_str(), n)).collect();
    let mut arm_totals = Vec::with_capacity(arms.len());
    for arm in &arms {
        let t = totals.get(arm.arm_key.as_str());
        let v = values.get(arm.arm_key.as_str());
        let n = negatives.get(arm.arm_key.as_str());
        arm_totals.push(ArmTotals {
            arm: ArmKey::parse(arm.arm_key.clone())?,
            algorithm: AlgorithmKey::parse(arm.algorithm_key.clone())?,
            is_control: arm.is_control,
            weight: arm.weight,
            counts: t.map(|t| t.counts()).unwrap_or_default(),
            views: t.map_or(0, |t| t.views),
            likes: t.map_or(0, |t| t.likes),
            conversion_events: t.map_or(0, |t| t.conversion_events),
            value_sum: v.map_or(0.0, |v| v.value_sum),
            value_count: v.map_or(0, |v| v.value_count),
            dislikes: n.map_or(0, |n| n.dislikes),
            not_interested: n.map_or(0, |n| n.not_interested),
            clicks_by_position: positions
                .iter()
                .filter(|p| p.arm_key == arm.arm_key)
                .map(|p| (p.position, p.clicks))
                .collect(),
        });
    }
    let mut daily_counts = Vec::with_capacity(daily.len());
    for (day, arm, counts) in daily {
        daily_counts.push(DailyCounts {
            day: date_from_days(day),
            arm: ArmKey::parse(arm)?,
            counts,
        });
    }
    let metric = match experiment.metric.as_str() {
        "conversion" => Metric::Conversion,
        _ => Metric::Ctr,
    };
    let report = build_report(&ResultsInput {
        metric,
        arms: arm_totals,
        daily: daily_counts,
        periods,
        cohorts: cohort_counts,
        outcome_window_days,
        running_days: experiment
            .started_at
            .map(|s| (Utc::now() - s).num_seconds().max(0) as f64 / 86_400.0),
        analysis: experiment.analysis().map_err(|e| {
            ApiError::Internal(anyhow::anyhow!("stored experiment is inconsistent: {e}"))
        })?,
    })
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored aggregates are inconsistent: {e}")))?;
    Ok(ResultsResponse {
        experiment: ExperimentSummary {
            key: experiment.key,
            status: experiment.status,
            policy: experiment.policy,
            metric: experiment.metric,
            started_at: experiment.started_at,
        },
        from,
        to,
        report,
        weight_history: history
            .into_iter()
            .map(|row| WeightChange {
                arm: row.arm_key,
                weight: row.weight,
                computed_at: row.computed_at,
                reason: row.reason,
            })
            .collect(),
    })
}
