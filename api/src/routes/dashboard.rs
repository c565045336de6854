//! `/dashboard`: the analysts' page, with its assets embedded in the binary
//! (no front-end server, no CDN at run time).

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::Json;
use domain::ids::ExperimentKey;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::AnalystAccess;
use crate::error::{ApiError, ApiResult};
use crate::routes::results::load_results;
use crate::state::AppState;

const PAGE: &str = include_str!("../../assets/dashboard.html");
const SCRIPT: &str = include_str!("../../assets/dashboard.js");
const STYLE: &str = include_str!("../../assets/dashboard.css");

/// The dashboard page; it signs in with a key kept in a cookie and reads the JSON API.
pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}

pub async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

pub async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

/// One experiment in the dashboard's list.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExperimentSummary {
    pub key: String,
    pub status: String,
    pub policy: String,
    pub metric: String,
    /// The best treatment's lift in words, e.g. `als +12.3% ctr vs control (97% chance to beat)`.
    pub headline: Option<String>,
    /// `good` when that lift's CI is above 0, `bad` when below, absent otherwise.
    pub headline_tone: Option<&'static str>,
}

/// The experiments list behind the dashboard.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExperimentSummaries {
    pub experiments: Vec<ExperimentSummary>,
}

/// Experiments with a one-line headline each, newest first.
#[utoipa::path(get, path = "/v1/dashboard/experiments", tag = "results",
    responses(
        (status = 200, body = ExperimentSummaries),
        (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn experiments(
    _caller: AnalystAccess,
    State(state): State<AppState>,
) -> ApiResult<Json<ExperimentSummaries>> {
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT key, status, policy, metric FROM experiments ORDER BY created_at DESC LIMIT 200",
    )
    .fetch_all(&state.stores.pg)
    .await
    .map_err(repositories::RepoError::from)?;
    let mut experiments = Vec::with_capacity(rows.len());
    for (key, status, policy, metric) in rows {
        let (headline, headline_tone) = match ExperimentKey::parse(key.clone()) {
            Ok(parsed) if status != "draft" => headline(&state, &parsed, &metric).await,
            _ => (None, None),
        };
        experiments.push(ExperimentSummary {
            key,
            status,
            policy,
            metric,
            headline,
            headline_tone,
        });
    }
    Ok(Json(ExperimentSummaries { experiments }))
}

async fn headline(
    state: &AppState,
    key: &ExperimentKey,
    metric: &str,
) -> (Option<String>, Option<&'static str>) {
    let results = match load_results(state, key, None, None).await {
        Ok(results) => results,
        Err(ApiError::NotFound(_)) => return (None, None),
        Err(e) => {
            tracing::warn!(experiment = %key, error = %e, "no headline");
            return (None, None);
        }
    };
    let best = results
        .report
        .comparisons
        .iter()
        .filter(|c| c.pooled.rel_lift.is_some())
        .max_by(|a, b| {
            a.pooled
                .rel_lift
                .partial_cmp(&b.pooled.rel_lift)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    let Some(best) = best else {
        return (Some("collecting data".to_owned()), None);
    };
    let lift = best.pooled.rel_lift.unwrap_or(0.0);
    let chance = best
        .pooled
        .chance_to_beat
        .map(|p| format!(" ({:.0}% chance to beat)", p * 100.0))
        .unwrap_or_default();
    let tone = best.pooled.rel_ci.and_then(|ci| {
        if ci.low > 0.0 {
            Some("good")
        } else if ci.high < 0.0 {
            Some("bad")
        } else {
            None
        }
    });
    (
        Some(format!(
            "{} {:+.1}% {metric} vs {}{chance}",
            best.arm,
            lift * 100.0,
            best.control
        )),
        tone,
    )
}
