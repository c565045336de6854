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

/// The dashboard page; it signs in once (an HttpOnly session cookie) and reads the JSON API.
/// The page loads its own script and style and talks to this origin only; it
/// may not be framed (clickjacking of its admin actions).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(PAGE),
    )
}

/// Sign in to the dashboard: the key, presented in `x-api-key`, becomes an
/// HttpOnly session cookie that the page's reads then carry.
#[utoipa::path(post, path = "/dashboard/session", tag = "results",
    responses(
        (status = 204, description = "Signed in; `Set-Cookie` holds the session"),
        (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn sign_in(_: AnalystAccess, parts: axum::http::request::Parts) -> impl IntoResponse {
    // The extractor checked this very key (`x-api-key` or `Authorization:
    // Bearer`; never the cookie, which a POST does not present).
    let key = crate::auth::presented_key(&parts).unwrap_or_default();
    (
        axum::http::StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, crate::auth::session_cookie(Some(&key)))],
    )
}

/// Sign out: the session cookie is cleared.
#[utoipa::path(delete, path = "/dashboard/session", tag = "results",
    responses((status = 204, description = "Signed out"))
)]
pub async fn sign_out() -> impl IntoResponse {
    (
        axum::http::StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, crate::auth::session_cookie(None))],
    )
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
    /// The sample-ratio check failed: the list shows a warning instead of trusting the headline.
    pub srm_mismatch: bool,
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
    let rows = state.stores.experiments.summaries(200).await?;
    let mut experiments = Vec::with_capacity(rows.len());
    for (key, status, policy, metric) in rows {
        let (headline, headline_tone, srm_mismatch) = match ExperimentKey::parse(key.clone()) {
            Ok(parsed) if status != "draft" => headline(&state, &parsed, &metric).await,
            _ => (None, None, false),
        };
        experiments.push(ExperimentSummary {
            key,
            status,
            policy,
            metric,
            headline,
            headline_tone,
            srm_mismatch,
        });
    }
    Ok(Json(ExperimentSummaries { experiments }))
}

async fn headline(
    state: &AppState,
    key: &ExperimentKey,
    metric: &str,
) -> (Option<String>, Option<&'static str>, bool) {
    let results = match load_results(state, key, None, None).await {
        Ok(results) => results,
        Err(ApiError::NotFound(_) | ApiError::NotFoundAt { .. }) => return (None, None, false),
        Err(e) => {
            tracing::warn!(experiment = %key, error = %e, "no headline");
            return (None, None, false);
        }
    };
    let srm_mismatch = results.report.srm.as_ref().is_some_and(|s| s.mismatch);
    let (headline, tone) = headline_of(&results.report, metric);
    (headline, tone, srm_mismatch)
}

fn headline_of(
    report: &domain::results::ResultsReport,
    metric: &str,
) -> (Option<String>, Option<&'static str>) {
    // As on the page: the pooled relative lift while the weights held, the
    // cohort absolute lift (percentage points) once they moved.
    let lifts = report.comparisons.iter().filter_map(|c| {
        let lift = match c.cohort.as_ref().map(|l| &l.combined) {
            Some(s) => HeadlineLift {
                value: s.estimate?,
                ci: s.ci,
                chance: s.chance_to_beat,
                unit: LiftUnit::Points,
            },
            None => HeadlineLift {
                value: c.pooled.rel_lift?,
                ci: c.pooled.rel_ci,
                chance: c.pooled.chance_to_beat,
                unit: LiftUnit::Relative,
            },
        };
        Some((c, lift))
    });
    let best = lifts.max_by(|(_, a), (_, b)| {
        a.value
            .partial_cmp(&b.value)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let Some((best, lift)) = best else {
        return (Some("collecting data".to_owned()), None);
    };
    let chance = lift
        .chance
        .map(|p| format!(" ({:.0}% chance to beat)", p * 100.0))
        .unwrap_or_default();
    let tone = lift.ci.and_then(|ci| {
        if ci.low > 0.0 {
            Some("good")
        } else if ci.high < 0.0 {
            Some("bad")
        } else {
            None
        }
    });
    let shown = match lift.unit {
        LiftUnit::Relative => format!("{:+.1}%", lift.value * 100.0),
        LiftUnit::Points => format!("{:+.2} pp", lift.value * 100.0),
    };
    (
        Some(format!(
            "{} {shown} {metric} vs {}{chance}",
            best.arm, best.control
        )),
        tone,
    )
}

/// The lift a headline reports, in the unit it is measured in.
struct HeadlineLift {
    value: f64,
    ci: Option<domain::stats::Interval>,
    chance: Option<f64>,
    unit: LiftUnit,
}

enum LiftUnit {
    /// treatment / control − 1.
    Relative,
    /// treatment − control, shown in percentage points.
    Points,
}
