//! `GET /v1/users/{user_id}/recommendations`: assign, look up, compose, emit.
//!
//! The request path makes two reads in parallel (the arms' lists: from process
//! memory when Redis answered a moment ago, else one Redis MGET; and the
//! sticky arm and seen movies: from process memory for a returning user, else
//! one PostgreSQL query), each under a short time limit;
//! whichever fails degrades the answer instead of failing it. Impressions and
//! new assignments leave through bounded buffers.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use domain::events::ImpressionRef;
use domain::experiment::{assign, Arm, Assignment, Experiment, ExperimentStatus};
use domain::ids::{EventId, ExperimentKey, MovieId, RequestId, UserId};
use domain::json_out::JsonObject;
use domain::recommend::PrecomputedList;
use domain::serving::{compose, GenreIndex, ItemSource, ListFilter};
use repositories::postgres::serving::{NewAssignment, UserContext};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::ClientAccess;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery};
use crate::state::AppState;

/// Largest list a request may ask for.
pub const MAX_LIMIT: i64 = 100;
const DEFAULT_LIMIT: i64 = 10;
/// Algorithm served when no experiment applies at all.
const DEFAULT_ALGORITHM: &str = "popularity";

/// Query of the recommendations route.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RecommendationsQuery {
    /// How many movies, 1 to 100 (default 10).
    pub limit: Option<i64>,
    /// Experiment to assign in; the configured default experiment when absent.
    pub experiment: Option<String>,
    /// Only movies of these genres (any of them), comma-separated, e.g. `Crime,Drama`.
    pub genre: Option<String>,
    /// Only movies from this year on (inclusive), 1800 to 2200.
    pub year_from: Option<i32>,
    /// Only movies up to this year (inclusive), 1800 to 2200.
    pub year_to: Option<i32>,
    /// Skip this many movies of the list (paging), 0 to 500. Default 0.
    pub offset: Option<usize>,
    /// Movie ids to leave out, comma-separated (at most 500), e.g. the ones on screen.
    pub exclude: Option<String>,
}

const MAX_OFFSET: usize = 500;
const MAX_EXCLUDE: usize = 500;
const YEARS: std::ops::RangeInclusive<i32> = 1800..=2200;

/// The caller's filters, each bad value a 400 naming its parameter.
fn parse_filter(query: &RecommendationsQuery, genres: &GenreIndex) -> ApiResult<ListFilter> {
    let mut filter = ListFilter::default();
    if let Some(names) = &query.genre {
        for name in names.split(',').filter(|n| !n.trim().is_empty()) {
            filter.genres |= genres.bit(name).ok_or_else(|| {
                ApiError::bad_request(
                    "genre",
                    format!("the catalogue has no genre {:?}", name.trim()),
                )
            })?;
        }
        if filter.genres == 0 {
            return Err(ApiError::bad_request(
                "genre",
                "must name at least one genre",
            ));
        }
    }
    for (field, value) in [("year_from", query.year_from), ("year_to", query.year_to)] {
        if value.is_some_and(|y| !YEARS.contains(&y)) {
            return Err(ApiError::bad_request(
                field,
                "must be between 1800 and 2200",
            ));
        }
    }
    if let (Some(from), Some(to)) = (query.year_from, query.year_to) {
        if from > to {
            return Err(ApiError::bad_request(
                "year_from",
                "must not be after year_to",
            ));
        }
    }
    (filter.year_from, filter.year_to) = (query.year_from, query.year_to);
    if let Some(ids) = &query.exclude {
        for id in ids.split(',').filter(|i| !i.trim().is_empty()) {
            let movie = id
                .trim()
                .parse::<i64>()
                .ok()
                .and_then(|m| MovieId::parse(m).ok())
                .ok_or_else(|| {
                    ApiError::bad_request("exclude", format!("{id:?} is not a movie id"))
                })?;
            filter.exclude.insert(movie);
        }
        if filter.exclude.len() > MAX_EXCLUDE {
            return Err(ApiError::bad_request(
                "exclude",
                format!("at most {MAX_EXCLUDE} movies"),
            ));
        }
    }
    Ok(filter)
}

/// A served title, borrowed from the catalog snapshot as the JSON string it
/// holds (no copy or escaping per served movie); empty when unknown.
#[derive(Debug)]
pub struct ServedTitle<'a>(Option<&'a RawValue>);

impl Serialize for ServedTitle<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(json) => json.serialize(serializer),
            None => serializer.serialize_str(""),
        }
    }
}

/// One served movie.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecommendedItem<'a> {
    pub movie_id: i64,
    #[schema(value_type = String)]
    pub title: ServedTitle<'a>,
    /// 0-based position in the list.
    pub position: u16,
    /// The source's score; comparable only between items of the same source.
    pub score: f32,
    /// `model` (the arm's algorithm), `hot`, `popular` or `catalog` (fallbacks).
    #[schema(value_type = String)]
    pub source: ItemSource,
}

/// A served list and the assignment that chose it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Recommendations<'a> {
    /// Send it back on clicks, views, likes and conversions to attribute them to this list.
    pub request_id: Uuid,
    /// The experiment the user was assigned in, if any applied.
    pub experiment: Option<&'a str>,
    /// The user's arm; absent when no running experiment covers the user.
    pub arm: Option<&'a str>,
    pub algorithm: &'a str,
    /// Version of the model that computed the list, when it came from one.
    pub model_version: Option<&'a str>,
    pub items: Vec<RecommendedItem<'a>>,
}

/// Room for a ten-movie answer, so serialising it does not regrow the buffer.
const RESPONSE_CAPACITY: usize = 2048;

impl Recommendations<'_> {
    /// The answer's JSON, as serde would write it, written by hand
    /// ([`domain::json_out`]): this is the route every front-end page calls.
    fn to_json(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(RESPONSE_CAPACITY);
        JsonObject::start(&mut body)
            .uuid("request_id", self.request_id)
            .opt_str("experiment", self.experiment)
            .opt_str("arm", self.arm)
            .str("algorithm", self.algorithm)
            .opt_str("model_version", self.model_version)
            .objects("items", &self.items, |object, item| {
                object.int("movie_id", item.movie_id);
                match item.title.0 {
                    Some(json) => object.raw("title", json.get()),
                    None => object.str("title", ""),
                };
                object
                    .int("position", item.position)
                    .serde("score", &item.score)
                    .str("source", item.source.as_str());
            })
            .end();
        body
    }
}

/// How the list is chosen for this request.
struct Plan<'a> {
    experiment: Option<&'a Experiment>,
    /// Algorithms whose lists are fetched: every arm's while running, so the
    /// sticky arm can be honoured without a second round trip.
    algorithms: Vec<&'a str>,
}

fn parse_limit(limit: Option<i64>) -> ApiResult<usize> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        n @ 1..=MAX_LIMIT => Ok(n as usize),
        _ => Err(ApiError::bad_request(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        )),
    }
}

/// Recommendations for one user, from their experiment arm's algorithm.
#[utoipa::path(get, path = "/v1/users/{user_id}/recommendations", tag = "serving",
    params(("user_id" = String, Path, description = "the user as the front-end knows them"), RecommendationsQuery),
    responses(
        (status = 200, body = Recommendations<'static>),
        (status = 400, body = crate::error::ErrorBody, description = "bad user id, limit, experiment key, genre, year, offset or exclude (the error names it)"),
        (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody, description = "the named experiment does not exist"),
    ),
    security(("api_key" = []))
)]
pub async fn recommendations(
    _caller: ClientAccess,
    State(state): State<AppState>,
    ApiPath(user_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<RecommendationsQuery>,
) -> ApiResult<Response> {
    let user = UserId::parse_field("user_id", user_id)?;
    let limit = parse_limit(query.limit)?;
    let offset = query.offset.unwrap_or(0);
    if offset > MAX_OFFSET {
        return Err(ApiError::bad_request(
            "offset",
            format!("must be at most {MAX_OFFSET}"),
        ));
    }
    let filter = parse_filter(&query, &state.serving.catalog.peek().genres)?;
    let named = query
        .experiment
        .map(|k| ExperimentKey::parse_field("experiment", k))
        .transpose()?;
    let serving = &state.serving;
    let experiments = serving.experiments.get();
    let experiment = match &named {
        Some(key) => Some(
            experiments
                .get(key)
                .ok_or_else(|| ApiError::not_found("experiment", format!("experiment {key}")))?,
        ),
        None => serving
            .default_experiment
            .as_ref()
            .and_then(|key| experiments.get(key)),
    };
    let plan = plan(experiment);
    let running = plan
        .experiment
        .filter(|e| e.status() == ExperimentStatus::Running);

    let limit_time = Duration::from_millis(state.config.serving_timeout_ms);
    let experiment_key = running.map(Experiment::key);
    let (context, fetched, mut lists, served) = match serving.cached_context(experiment_key, &user)
    {
        // A returning user's arm is known before Redis is asked: fetch only its list.
        Some(context) => {
            let served = served_by(&plan, running, &user, &context);
            let lists = read_lists(&state, &[served.algorithm], &user, limit_time).await;
            (Some(context), vec![served.algorithm], lists, Some(served))
        }
        None => {
            let (lists, context) = tokio::join!(
                read_lists(&state, &plan.algorithms, &user, limit_time),
                serving.user_context(experiment_key, &user, limit_time),
            );
            (context, plan.algorithms.clone(), lists, None)
        }
    };
    let read_context = context.as_deref();
    let unknown = UserContext::default();
    let context = read_context.unwrap_or(&unknown);
    let ServedBy {
        assignment,
        arm,
        algorithm,
    } = served.unwrap_or_else(|| served_by(&plan, running, &user, context));
    let list = fetched
        .iter()
        .position(|a| *a == algorithm)
        .and_then(|i| lists.get_mut(i).and_then(Option::take));
    match list {
        Some(_) => serving.metrics.list_hit.increment(1),
        None => serving.metrics.list_miss.increment(1),
    }

    let catalog = serving.catalog.peek();
    let hot = serving.hot.peek();
    let model_items = list
        .as_ref()
        .map(|l| l.items.as_slice())
        .unwrap_or_default();
    let filtered = !filter.is_empty();
    let mut chosen = compose(
        limit + offset,
        &[
            (ItemSource::Model, model_items),
            (ItemSource::Hot, &hot),
            (ItemSource::Popular, &catalog.popular),
            (ItemSource::Catalog, &catalog.any),
        ],
        &context.seen,
        |m| {
            (catalog.titles.is_empty() || catalog.titles.contains_key(&m))
                && (!filtered || filter.admits(m, catalog.meta.get(&m)))
        },
    );
    chosen.drain(..offset.min(chosen.len()));
    let from_model = chosen.iter().any(|c| c.source == ItemSource::Model);
    let model_version = list
        .as_ref()
        .filter(|_| from_model)
        .map(|l| l.model_version.as_str());
    let request_id = Uuid::now_v7();

    if let (Some(e), Some(a), Some(arm)) = (running, assignment, arm) {
        if !chosen.is_empty() {
            let impression = ImpressionRef {
                id: EventId::from(Uuid::now_v7()),
                user_id: &user,
                request_id: RequestId::from(request_id),
                ts: Utc::now(),
                experiment: e.key(),
                arm: &arm.key,
                algorithm: &arm.algorithm,
                model_version,
            };
            serving.emit_impression(&user, || {
                impression.to_json(chosen.iter().map(|c| c.movie_id))
            });
        }
        if !a.sticky {
            serving.record_assignment(
                NewAssignment {
                    experiment: a.experiment,
                    user_id: a.user_id,
                    arm: a.arm,
                },
                read_context,
            );
        }
    }

    let items = chosen
        .iter()
        .enumerate()
        .map(|(position, c)| RecommendedItem {
            movie_id: c.movie_id.get(),
            title: ServedTitle(catalog.titles.get(&c.movie_id).map(AsRef::as_ref)),
            position: position as u16,
            score: c.score,
            source: c.source,
        })
        .collect();
    let answer = Recommendations {
        request_id,
        experiment: plan.experiment.map(|e| e.key().as_str()),
        arm: arm.map(|arm| arm.key.as_str()),
        algorithm,
        model_version,
        items,
    };
    // Serialised here, while the catalog snapshot it borrows from is held.
    let body = answer.to_json();
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Who serves a request: the assignment (in a running experiment), the arm
/// it names, and that arm's algorithm; else the control's algorithm (draft,
/// stopped, or outside coverage), else the default algorithm.
struct ServedBy<'a> {
    assignment: Option<Assignment>,
    arm: Option<&'a Arm>,
    algorithm: &'a str,
}

fn served_by<'a>(
    plan: &Plan<'a>,
    running: Option<&'a Experiment>,
    user: &UserId,
    context: &UserContext,
) -> ServedBy<'a> {
    let assignment = running.and_then(|e| assign(e, user, context.sticky_arm.as_ref()));
    let arm = running
        .zip(assignment.as_ref())
        .and_then(|(e, a)| e.arms().get(a.arm_index));
    let algorithm = match (arm, plan.experiment) {
        (Some(arm), _) => arm.algorithm.as_str(),
        (None, Some(e)) => e.control().algorithm.as_str(),
        (None, None) => DEFAULT_ALGORITHM,
    };
    ServedBy {
        assignment,
        arm,
        algorithm,
    }
}

/// The precomputed lists of `algorithms` for `user`: from process memory
/// where a fresh answer is there, the rest in one Redis round trip. `None`
/// (fallbacks serve) where Redis has none, fails, or is slower than `limit`.
async fn read_lists(
    state: &AppState,
    algorithms: &[&str],
    user: &UserId,
    limit: Duration,
) -> Vec<Option<Arc<PrecomputedList>>> {
    let serving = &state.serving;
    let mut lists = Vec::with_capacity(algorithms.len());
    let mut missing = Vec::new();
    for (i, algorithm) in algorithms.iter().enumerate() {
        match serving.cached_list(algorithm, user) {
            Some(list) => lists.push(list),
            None => {
                lists.push(None);
                missing.push((i, *algorithm));
            }
        }
    }
    if missing.is_empty() {
        return lists;
    }
    let names: Vec<&str> = missing.iter().map(|(_, a)| *a).collect();
    let generation = serving.list_generation();
    let read = state.stores.redis.serving_lists(&names, user.as_str());
    match tokio::time::timeout(limit, read).await {
        Ok(Ok(fetched)) => {
            for ((i, algorithm), list) in missing.into_iter().zip(fetched) {
                let list = list.map(Arc::new);
                serving.remember_list(algorithm, user, list.clone(), generation);
                lists[i] = list;
            }
        }
        // Failures are not remembered: the next request asks Redis again.
        Ok(Err(e)) => {
            serving.metrics.list_error.increment(1);
            tracing::warn!(error = %e, "reading precomputed lists failed; serving fallbacks");
        }
        Err(_) => {
            serving.metrics.list_timeout.increment(1);
            tracing::warn!("reading precomputed lists timed out; serving fallbacks");
        }
    }
    lists
}

fn plan(experiment: Option<&Experiment>) -> Plan<'_> {
    let Some(e) = experiment else {
        return Plan {
            experiment: None,
            algorithms: vec![DEFAULT_ALGORITHM],
        };
    };
    let algorithms = if e.status() == ExperimentStatus::Running {
        // An experiment has a handful of arms: a linear scan beats hashing.
        let mut unique: Vec<&str> = Vec::with_capacity(e.arms().len());
        for arm in e.arms() {
            if !unique.contains(&arm.algorithm.as_str()) {
                unique.push(arm.algorithm.as_str());
            }
        }
        unique
    } else {
        vec![e.control().algorithm.as_str()]
    };
    Plan {
        experiment: Some(e),
        algorithms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_served_title_is_the_title_as_json_or_empty() {
        let title = "Amélie \"Le fabuleux\" destin\\\n";
        let raw = serde_json::value::to_raw_value(title).unwrap();
        assert_eq!(
            serde_json::to_string(&ServedTitle(Some(&raw))).unwrap(),
            serde_json::to_string(title).unwrap()
        );
        assert_eq!(serde_json::to_string(&ServedTitle(None)).unwrap(), r#""""#);
    }

    #[test]
    fn the_answer_is_written_as_serde_would_write_it() {
        let title = serde_json::value::to_raw_value("Amélie \"Le fabuleux\"").unwrap();
        let item = |movie_id, title, source| RecommendedItem {
            movie_id,
            title: ServedTitle(title),
            position: (movie_id % 7) as u16,
            score: 1.0 / movie_id as f32,
            source,
        };
        let answers = [
            Recommendations {
                request_id: Uuid::now_v7(),
                experiment: Some("home"),
                arm: Some("treatment"),
                algorithm: "als",
                model_version: Some("v\\7"),
                items: vec![
                    item(1, Some(&*title), ItemSource::Model),
                    item(42, None, ItemSource::Hot),
                    item(i64::MAX, None, ItemSource::Popular),
                    item(3, Some(&*title), ItemSource::Catalog),
                ],
            },
            Recommendations {
                request_id: Uuid::nil(),
                experiment: None,
                arm: None,
                algorithm: "popularity",
                model_version: None,
                items: vec![],
            },
        ];
        for answer in answers {
            assert_eq!(
                String::from_utf8(answer.to_json()).unwrap(),
                serde_json::to_string(&answer).unwrap()
            );
        }
    }

    #[test]
    fn limit_defaults_to_ten_and_is_bounded() {
        assert_eq!(parse_limit(None).unwrap(), 10);
        assert_eq!(parse_limit(Some(100)).unwrap(), 100);
        for bad in [0, -1, 101, i64::MAX] {
            assert!(parse_limit(Some(bad)).is_err(), "{bad}");
        }
    }
}
