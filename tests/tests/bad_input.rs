//! Table-driven bad input: every case gets its documented 4xx status and the
//! JSON error body `{error: {code, message, field}}` naming the field; none
//! gets a 5xx. To add a case, append a `Case` to `cases()`.

use marquee_tests::{spawn_api, TestApi, TestStack};
use repositories::postgres::api_keys::Role;
use serde_json::{json, Value};

/// The api under test gets a small body limit so the oversized case stays cheap.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Which key a case presents.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
enum Auth {
    #[default]
    Admin,
    Analyst,
    Client,
    /// No key at all.
    Missing,
    /// A key nobody issued.
    Invalid,
    /// `Authorization: Bearer` with a key nobody issued.
    InvalidBearer,
}

#[derive(Debug, Clone, Default)]
struct Case {
    name: &'static str,
    /// `GET`, `POST`, `PUT`, `DELETE`.
    method: &'static str,
    path: String,
    auth: Auth,
    /// Sent verbatim; `content_type` defaults to `application/json` when a body is set.
    body: Option<String>,
    /// `Some("")` sends no Content-Type header at all.
    content_type: Option<&'static str>,
    status: u16,
    field: &'static str,
}

fn json_body(value: Value) -> Option<String> {
    Some(value.to_string())
}

fn experiment(overrides: Value) -> Option<String> {
    let mut base = json!({
        "key": "fresh", "policy": "fixed", "metric": "ctr",
        "arms": [
            {"key": "a", "algorithm": "popularity", "weight": 0.5, "is_control": true},
            {"key": "b", "algorithm": "als", "weight": 0.5}
        ]
    });
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    json_body(base)
}

fn cases() -> Vec<Case> {
    let post = |name, path: &str, body: Option<String>, status, field| Case {
        name,
        method: "POST",
        path: path.to_owned(),
        body,
        status,
        field,
        ..Default::default()
    };
    let get = |name, path: &str, status, field| Case {
        name,
        method: "GET",
        path: path.to_owned(),
        status,
        field,
        ..Default::default()
    };
    let many_movies: Vec<Value> = (1..=1001)
        .map(|id| json!({"id": id, "title": "m"}))
        .collect();
    let huge_title = "x".repeat(MAX_BODY_BYTES);
    vec![
        // Movies: bodies.
        post(
            "movie without title",
            "/v1/movies",
            json_body(json!({"id": 1})),
            400,
            "title",
        ),
        post(
            "movie with an unknown field",
            "/v1/movies",
            json_body(json!({"id": 1, "title": "t", "rating": 5})),
            400,
            "rating",
        ),
        post(
            "movie id as a string",
            "/v1/movies",
            json_body(json!({"id": "one", "title": "t"})),
            400,
            "id",
        ),
        post(
            "movie id zero",
            "/v1/movies",
            json_body(json!({"id": 0, "title": "t"})),
            400,
            "id",
        ),
        post(
            "movie id negative",
            "/v1/movies",
            json_body(json!({"id": -4, "title": "t"})),
            400,
            "id",
        ),
        post(
            "movie id fractional",
            "/v1/movies",
            json_body(json!({"id": 1.5, "title": "t"})),
            400,
            "id",
        ),
        post(
            "movie with a blank title",
            "/v1/movies",
            json_body(json!({"id": 1, "title": "   "})),
            400,
            "title",
        ),
        post(
            "movie from the far future",
            "/v1/movies",
            json_body(json!({"id": 1, "title": "t", "year": 99999})),
            400,
            "year",
        ),
        post(
            "movie genres not a list",
            "/v1/movies",
            json_body(json!({"id": 1, "title": "t", "genres": "Drama"})),
            400,
            "genres",
        ),
        post(
            "movie with an empty genre",
            "/v1/movies",
            json_body(json!({"id": 1, "title": "t", "genres": ["Drama", ""]})),
            400,
            "genres[1]",
        ),
        post(
            "invalid JSON",
            "/v1/movies",
            Some(r#"{"id": 1, "title": "#.into()),
            400,
            "body",
        ),
        post(
            "JSON followed by garbage",
            "/v1/movies",
            Some(r#"{"id": 1, "title": "t"} x"#.into()),
            400,
            "body",
        ),
        post(
            "a JSON string instead of an object",
            "/v1/movies",
            Some(r#""Toy Story""#.into()),
            400,
            "body",
        ),
        Case {
            content_type: Some("text/plain"),
            ..post(
                "wrong content type",
                "/v1/movies",
                json_body(json!({"id": 1, "title": "t"})),
                415,
                "content-type",
            )
        },
        Case {
            content_type: Some(""),
            ..post(
                "no content type",
                "/v1/movies",
                json_body(json!({"id": 1, "title": "t"})),
                415,
                "content-type",
            )
        },
        post(
            "body larger than max_body_bytes",
            "/v1/movies/bulk",
            json_body(json!({"movies": [{"id": 1, "title": huge_title}]})),
            413,
            "body",
        ),
        post(
            "bulk without movies",
            "/v1/movies/bulk",
            json_body(json!({"movies": []})),
            400,
            "movies",
        ),
        post(
            "bulk of more than 1000 movies",
            "/v1/movies/bulk",
            json_body(json!({"movies": many_movies})),
            400,
            "movies",
        ),
        post(
            "bulk with a duplicate id",
            "/v1/movies/bulk",
            json_body(json!({"movies": [{"id": 3, "title": "a"}, {"id": 3, "title": "b"}]})),
            400,
            "movies[1].id",
        ),
        post(
            "bulk with a nested missing title",
            "/v1/movies/bulk",
            json_body(json!({"movies": [{"id": 3, "title": "a"}, {"id": 4}]})),
            400,
            "movies[1].title",
        ),
        post(
            "bulk with a nested wrong type",
            "/v1/movies/bulk",
            json_body(json!({"movies": [{"id": 3, "title": "a", "year": "1999"}]})),
            400,
            "movies[0].year",
        ),
        post(
            "bulk body a number",
            "/v1/movies/bulk",
            Some("42".into()),
            400,
            "body",
        ),
        // Movies: paths and queries.
        get("movie id not a number", "/v1/movies/abc", 400, "id"),
        get("movie id zero in the path", "/v1/movies/0", 400, "id"),
        get("unknown movie", "/v1/movies/424242", 404, "id"),
        get("page limit zero", "/v1/movies?limit=0", 400, "limit"),
        get("page limit huge", "/v1/movies?limit=100000", 400, "limit"),
        get("page limit negative", "/v1/movies?limit=-5", 400, "limit"),
        get(
            "page limit not a number",
            "/v1/movies?limit=ten",
            400,
            "limit",
        ),
        get(
            "page cursor not a number",
            "/v1/movies?after=x",
            400,
            "after",
        ),
        get(
            "unknown query parameter",
            "/v1/movies?colour=red",
            400,
            "colour",
        ),
        // History.
        get(
            "history limit too large",
            "/v1/users/u1/history?limit=501",
            400,
            "limit",
        ),
        get(
            "history offset too deep",
            "/v1/users/u1/history?offset=1000000",
            400,
            "offset",
        ),
        get(
            "history of an over-long user id",
            &format!("/v1/users/{}/history", "u".repeat(129)),
            400,
            "user_id",
        ),
        // Experiments: bodies.
        post(
            "experiment without arms",
            "/v1/experiments",
            experiment(json!({"arms": null})),
            400,
            "arms",
        ),
        post(
            "experiment without key",
            "/v1/experiments",
            experiment(json!({"key": null})),
            400,
            "key",
        ),
        post(
            "experiment key with a space",
            "/v1/experiments",
            experiment(json!({"key": "my test"})),
            400,
            "key",
        ),
        post(
            "experiment with one arm",
            "/v1/experiments",
            experiment(
                json!({"arms": [{"key": "a", "algorithm": "als", "weight": 1.0, "is_control": true}]}),
            ),
            400,
            "arms",
        ),
        post(
            "weights that do not sum to 1",
            "/v1/experiments",
            experiment(json!({"arms": [
            {"key": "a", "algorithm": "als", "weight": 0.5, "is_control": true},
            {"key": "b", "algorithm": "als", "weight": 0.4}]})),
            400,
            "arms",
        ),
        post(
            "two control arms",
            "/v1/experiments",
            experiment(json!({"arms": [
            {"key": "a", "algorithm": "als", "weight": 0.5, "is_control": true},
            {"key": "b", "algorithm": "als", "weight": 0.5, "is_control": true}]})),
            400,
            "arms",
        ),
        post(
            "no control arm",
            "/v1/experiments",
            experiment(json!({"arms": [
            {"key": "a", "algorithm": "als", "weight": 0.5},
            {"key": "b", "algorithm": "als", "weight": 0.5}]})),
            400,
            "arms",
        ),
        post(
            "negative weight",
            "/v1/experiments",
            experiment(json!({"arms": [
            {"key": "a", "algorithm": "als", "weight": -0.5, "is_control": true},
            {"key": "b", "algorithm": "als", "weight": 1.5}]})),
            400,
            "arms[0].weight",
        ),
        post(
            "a weight a rounding error above 1",
            "/v1/experiments",
            experiment(json!({"arms": [
            {"key": "a", "algorithm": "als", "weight": 1.000_000_000_5, "is_control": true},
            {"key": "b", "algorithm": "als", "weight": 0.0}]})),
            400,
            "arms[0].weight",
        ),
        post(
            "reweight interval beyond what is stored",
            "/v1/experiments",
            experiment(json!({"reweight_interval_s": 3_000_000_000u64})),
            400,
            "reweight_interval_s",
        ),
        post(
            "experiment description with a NUL character",
            "/v1/experiments",
            experiment(json!({"description": "a\u{0}b"})),
            400,
            "description",
        ),
        post(
            "movie title with a NUL character",
            "/v1/movies",
            json_body(json!({"id": 1, "title": "a\u{0}b"})),
            400,
            "title",
        ),
        post(
            "weight as a string",
            "/v1/experiments",
            experiment(json!({"arms": [
            {"key": "a", "algorithm": "als", "weight": "half", "is_control": true},
            {"key": "b", "algorithm": "als", "weight": 0.5}]})),
            400,
            "arms[0].weight",
        ),
        post(
            "duplicate arm key",
            "/v1/experiments",
            experiment(json!({"arms": [
            {"key": "a", "algorithm": "als", "weight": 0.5, "is_control": true},
            {"key": "a", "algorithm": "popularity", "weight": 0.5}]})),
            400,
            "arms[1].key",
        ),
        post(
            "arm with an unknown field",
            "/v1/experiments",
            experiment(json!({"arms": [
            {"key": "a", "algorithm": "als", "weight": 0.5, "is_control": true, "colour": "red"},
            {"key": "b", "algorithm": "als", "weight": 0.5}]})),
            400,
            "arms[0].colour",
        ),
        post(
            "arm with an unknown algorithm",
            "/v1/experiments",
            experiment(json!({"arms": [
            {"key": "a", "algorithm": "als", "weight": 0.5, "is_control": true},
            {"key": "b", "algorithm": "deep_magic", "weight": 0.5}]})),
            400,
            "arms[1].algorithm",
        ),
        post(
            "coverage zero",
            "/v1/experiments",
            experiment(json!({"coverage": 0})),
            400,
            "coverage",
        ),
        post(
            "coverage above one",
            "/v1/experiments",
            experiment(json!({"coverage": 1.5})),
            400,
            "coverage",
        ),
        post(
            "unknown policy",
            "/v1/experiments",
            experiment(json!({"policy": "greedy"})),
            400,
            "policy",
        ),
        post(
            "unknown metric",
            "/v1/experiments",
            experiment(json!({"metric": "revenue"})),
            400,
            "metric",
        ),
        post(
            "hash version 3",
            "/v1/experiments",
            experiment(json!({"hash_version": 3})),
            400,
            "hash_version",
        ),
        post(
            "floor above 1/arms",
            "/v1/experiments",
            experiment(json!({"min_weight": 0.9})),
            400,
            "min_weight",
        ),
        post(
            "burn-in beyond what the bandit accepts",
            "/v1/experiments",
            experiment(json!({"bandit": {"burn_in_users": 200_000_000u64}})),
            400,
            "bandit.burn_in_users",
        ),
        post(
            "exploration time beyond 90 days",
            "/v1/experiments",
            experiment(json!({"bandit": {"exploration_s": 8_000_000u64}})),
            400,
            "bandit.exploration_s",
        ),
        post(
            "negative burn-in",
            "/v1/experiments",
            experiment(json!({"bandit": {"burn_in_users": -1}})),
            400,
            "bandit.burn_in_users",
        ),
        post(
            "unknown bandit setting",
            "/v1/experiments",
            experiment(json!({"bandit": {"burn_in": 5}})),
            400,
            "bandit.burn_in",
        ),
        post(
            "outcome window of zero days",
            "/v1/experiments",
            experiment(json!({"outcome_window_days": 0})),
            400,
            "outcome_window_days",
        ),
        post(
            "outcome window beyond a year",
            "/v1/experiments",
            experiment(json!({"outcome_window_days": 400})),
            400,
            "outcome_window_days",
        ),
        post(
            "unknown analysis",
            "/v1/experiments",
            experiment(json!({"analysis": {"method": "bayesian"}})),
            400,
            "analysis.method",
        ),
        post(
            "sequential tuning of zero",
            "/v1/experiments",
            experiment(json!({"analysis": {"method": "sequential", "tuning": 0}})),
            400,
            "analysis.tuning",
        ),
        post(
            "tuning for a fixed-horizon analysis",
            "/v1/experiments",
            experiment(json!({"analysis": {"method": "fixed_horizon", "tuning": 100}})),
            400,
            "analysis.tuning",
        ),
        post(
            "reweight interval zero",
            "/v1/experiments",
            experiment(json!({"reweight_interval_s": 0})),
            400,
            "reweight_interval_s",
        ),
        post(
            "reweight interval negative",
            "/v1/experiments",
            experiment(json!({"reweight_interval_s": -10})),
            400,
            "reweight_interval_s",
        ),
        post(
            "empty salt",
            "/v1/experiments",
            experiment(json!({"salt": ""})),
            400,
            "salt",
        ),
        post(
            "unknown top-level field",
            "/v1/experiments",
            experiment(json!({"owner": "me"})),
            400,
            "owner",
        ),
        post(
            "experiment key taken",
            "/v1/experiments",
            experiment(json!({"key": "draft"})),
            409,
            "key",
        ),
        // Experiments: unknown keys, state conflicts, queries.
        get("unknown experiment", "/v1/experiments/nope", 404, "key"),
        get(
            "weights of an unknown experiment",
            "/v1/experiments/nope/weights",
            404,
            "key",
        ),
        post(
            "start of an unknown experiment",
            "/v1/experiments/nope/start",
            None,
            404,
            "key",
        ),
        post(
            "stop of an unknown experiment",
            "/v1/experiments/nope/stop",
            None,
            404,
            "key",
        ),
        Case {
            method: "PUT",
            ..post(
                "arms of an unknown experiment",
                "/v1/experiments/nope/arms",
                json_body(json!({"arms": []})),
                404,
                "key",
            )
        },
        Case {
            method: "PUT",
            ..post(
                "arms of a running experiment",
                "/v1/experiments/running/arms",
                json_body(json!({"arms": [
                {"key": "a", "algorithm": "als", "weight": 0.5, "is_control": true},
                {"key": "b", "algorithm": "als", "weight": 0.5}]})),
                409,
                "arms",
            )
        },
        Case {
            method: "PUT",
            ..post(
                "a draft's arms that do not validate",
                "/v1/experiments/draft/arms",
                json_body(json!({"arms": [
                {"key": "a", "algorithm": "als", "weight": 1.0, "is_control": true}]})),
                400,
                "arms",
            )
        },
        Case {
            method: "PUT",
            ..post(
                "a draft's arm with an unknown algorithm",
                "/v1/experiments/draft/arms",
                json_body(json!({"arms": [
                {"key": "a", "algorithm": "nope", "weight": 0.5, "is_control": true},
                {"key": "b", "algorithm": "als", "weight": 0.5}]})),
                400,
                "arms[0].algorithm",
            )
        },
        post(
            "restart of a stopped experiment",
            "/v1/experiments/stopped/start",
            None,
            409,
            "status",
        ),
        get(
            "unknown status filter",
            "/v1/experiments?status=paused",
            400,
            "status",
        ),
        get(
            "weight history limit zero",
            "/v1/experiments/running/weights?limit=0",
            400,
            "limit",
        ),
        get(
            "experiment key too long",
            &format!("/v1/experiments/{}", "k".repeat(65)),
            400,
            "key",
        ),
        // Keys.
        post(
            "key with an unknown role",
            "/v1/keys",
            json_body(json!({"role": "root"})),
            400,
            "role",
        ),
        post(
            "key without a role",
            "/v1/keys",
            json_body(json!({"name": "x"})),
            400,
            "role",
        ),
        Case {
            method: "DELETE",
            ..get(
                "revoke a key id that is not a uuid",
                "/v1/keys/not-a-uuid",
                400,
                "id",
            )
        },
        Case {
            method: "DELETE",
            ..get(
                "revoke an unknown key",
                "/v1/keys/7d3c6b1e-8a8f-4a55-9d0e-0f2b1c3d4e5f",
                404,
                "id",
            )
        },
        // Auth: checked before the body is even read.
        Case {
            auth: Auth::Missing,
            ..get("no key", "/v1/movies", 401, "x-api-key")
        },
        Case {
            auth: Auth::Invalid,
            ..get("a key nobody issued", "/v1/movies", 401, "x-api-key")
        },
        Case {
            auth: Auth::InvalidBearer,
            ..get(
                "a bearer token nobody issued",
                "/v1/algorithms",
                401,
                "x-api-key",
            )
        },
        Case {
            auth: Auth::Missing,
            ..post(
                "no key and a bad body",
                "/v1/experiments",
                Some("{".into()),
                401,
                "x-api-key",
            )
        },
        Case {
            auth: Auth::Client,
            ..post(
                "client key creating a movie",
                "/v1/movies",
                json_body(json!({"id": 1, "title": "t"})),
                403,
                "x-api-key",
            )
        },
        Case {
            auth: Auth::Client,
            ..get(
                "client key reading experiments",
                "/v1/experiments",
                403,
                "x-api-key",
            )
        },
        Case {
            auth: Auth::Analyst,
            ..post(
                "analyst key creating an experiment",
                "/v1/experiments",
                experiment(json!({})),
                403,
                "x-api-key",
            )
        },
        Case {
            auth: Auth::Analyst,
            ..post(
                "analyst key starting an experiment",
                "/v1/experiments/draft/start",
                None,
                403,
                "x-api-key",
            )
        },
        Case {
            auth: Auth::Analyst,
            ..post(
                "analyst key creating a key",
                "/v1/keys",
                json_body(json!({"role": "admin"})),
                403,
                "x-api-key",
            )
        },
        // Recommendations.
        Case {
            auth: Auth::Client,
            ..get(
                "limit zero",
                "/v1/users/u1/recommendations?limit=0",
                400,
                "limit",
            )
        },
        Case {
            auth: Auth::Client,
            ..get(
                "limit negative",
                "/v1/users/u1/recommendations?limit=-3",
                400,
                "limit",
            )
        },
        Case {
            auth: Auth::Client,
            ..get(
                "limit huge",
                "/v1/users/u1/recommendations?limit=100000",
                400,
                "limit",
            )
        },
        Case {
            auth: Auth::Client,
            ..get(
                "limit not a number",
                "/v1/users/u1/recommendations?limit=ten",
                400,
                "limit",
            )
        },
        Case {
            auth: Auth::Client,
            ..get(
                "unknown query parameter",
                "/v1/users/u1/recommendations?colour=red",
                400,
                "colour",
            )
        },
        Case {
            auth: Auth::Client,
            ..get(
                "unknown experiment",
                "/v1/users/u1/recommendations?experiment=nope",
                404,
                "experiment",
            )
        },
        Case {
            auth: Auth::Client,
            ..get(
                "experiment key with a space",
                "/v1/users/u1/recommendations?experiment=a%20b",
                400,
                "experiment",
            )
        },
        Case {
            auth: Auth::Client,
            ..get(
                "user id too long",
                &format!("/v1/users/{}/recommendations", "u".repeat(129)),
                400,
                "user_id",
            )
        },
        Case {
            auth: Auth::Missing,
            ..get(
                "recommendations without a key",
                "/v1/users/u1/recommendations",
                401,
                "x-api-key",
            )
        },
        Case {
            auth: Auth::Analyst,
            ..get(
                "recommendations with an analyst key",
                "/v1/users/u1/recommendations",
                403,
                "x-api-key",
            )
        },
        // Events.
        Case {
            auth: Auth::Client,
            ..post(
                "events batch empty",
                "/v1/events",
                json_body(json!({"events": []})),
                400,
                "events",
            )
        },
        Case {
            auth: Auth::Client,
            ..post(
                "events batch missing",
                "/v1/events",
                json_body(json!({})),
                400,
                "events",
            )
        },
        Case {
            auth: Auth::Client,
            ..post(
                "events batch not a list",
                "/v1/events",
                json_body(json!({"events": 3})),
                400,
                "events",
            )
        },
        Case {
            auth: Auth::Client,
            ..post(
                "events with an unknown top-level field",
                "/v1/events",
                json_body(json!({"events": [], "x": 1})),
                400,
                "x",
            )
        },
        Case {
            auth: Auth::Client,
            ..post(
                "events batch over the limit",
                "/v1/events",
                json_body(json!({"events": (0..1001).map(|_| json!({})).collect::<Vec<_>>()})),
                400,
                "events",
            )
        },
        Case {
            auth: Auth::Client,
            ..post(
                "a conversion value that would make the sums infinite",
                "/v1/events",
                json_body(
                    json!({"events": [{"event_id": "6f1c2a8e-8c1d-4a51-9d4e-8f5b5f1e0c11", "type": "conversion", "user_id": "u", "value": 1.7e308}]}),
                ),
                400,
                "events[0].value",
            )
        },
        Case {
            auth: Auth::Client,
            ..post(
                "a negative watch time",
                "/v1/events",
                json_body(
                    json!({"events": [{"event_id": "6f1c2a8e-8c1d-4a51-9d4e-8f5b5f1e0c12", "type": "view", "user_id": "u", "movie_id": 1, "value": -3}]}),
                ),
                400,
                "events[0].value",
            )
        },
        Case {
            auth: Auth::Client,
            ..post(
                "the only event has a bad uuid",
                "/v1/events",
                json_body(
                    json!({"events": [{"event_id": "x", "type": "click", "user_id": "u", "movie_id": 1}]}),
                ),
                400,
                "events[0].event_id",
            )
        },
        Case {
            auth: Auth::Client,
            ..post(
                "the only event has an unknown type",
                "/v1/events",
                json_body(
                    json!({"events": [{"event_id": "6f1c1a43-7a0b-4a27-9d3b-7c1a3d0f9e01", "type": "purchase", "user_id": "u"}]}),
                ),
                400,
                "events[0].type",
            )
        },
        Case {
            auth: Auth::Client,
            ..post(
                "a client may not send impressions",
                "/v1/events",
                json_body(
                    json!({"events": [{"event_id": "6f1c1a43-7a0b-4a27-9d3b-7c1a3d0f9e01", "type": "impression", "user_id": "u"}]}),
                ),
                400,
                "events[0].type",
            )
        },
        Case {
            auth: Auth::Client,
            ..post(
                "the only event is stamped in the future",
                "/v1/events",
                json_body(
                    json!({"events": [{"event_id": "6f1c1a43-7a0b-4a27-9d3b-7c1a3d0f9e01", "type": "conversion", "user_id": "u", "ts": "2999-01-01T00:00:00Z"}]}),
                ),
                400,
                "events[0].ts",
            )
        },
        Case {
            auth: Auth::Client,
            ..post(
                "the only event is stamped in 1970, past the 30-day horizon",
                "/v1/events",
                json_body(
                    json!({"events": [{"event_id": "6f1c1a43-7a0b-4a27-9d3b-7c1a3d0f9e01", "type": "view", "user_id": "u", "movie_id": 3, "ts": "1970-01-01T00:00:00Z"}]}),
                ),
                400,
                "events[0].ts",
            )
        },
        Case {
            auth: Auth::Client,
            ..post(
                "the only event is stamped before 1970",
                "/v1/events",
                json_body(
                    json!({"events": [{"event_id": "6f1c1a43-7a0b-4a27-9d3b-7c1a3d0f9e01", "type": "view", "user_id": "u", "movie_id": 3, "ts": "-5000-01-01T00:00:00Z"}]}),
                ),
                400,
                "events[0].ts",
            )
        },
        Case {
            auth: Auth::Client,
            ..post(
                "events invalid JSON",
                "/v1/events",
                Some("{\"events\": [".into()),
                400,
                "body",
            )
        },
        Case {
            auth: Auth::Client,
            content_type: Some("text/plain"),
            ..post(
                "events as text/plain",
                "/v1/events",
                json_body(json!({"events": []})),
                415,
                "content-type",
            )
        },
        Case {
            auth: Auth::Client,
            ..post(
                "events body over the size limit",
                "/v1/events",
                Some(format!(
                    "{{\"events\": [\"{}\"]}}",
                    "x".repeat(MAX_BODY_BYTES)
                )),
                413,
                "body",
            )
        },
        Case {
            auth: Auth::Invalid,
            ..post(
                "events with a key nobody issued",
                "/v1/events",
                json_body(json!({"events": []})),
                401,
                "x-api-key",
            )
        },
        // Routes that do not exist answer in JSON too.
        get("unknown route", "/v1/nothing-here", 404, "path"),
        Case {
            method: "DELETE",
            ..get("wrong method", "/v1/events", 405, "method")
        },
    ]
}

async fn prepare(api: &TestApi) {
    let create = |key: &str| {
        let body = experiment(json!({ "key": key })).unwrap();
        api.client
            .post(api.url("/v1/experiments"))
            .header("x-api-key", &api.admin_key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for key in ["draft", "running", "stopped"] {
        assert_eq!(create(key).await.unwrap().status().as_u16(), 201);
    }
    for (key, action) in [("running", "start"), ("stopped", "stop")] {
        let response = api
            .client
            .post(api.url(&format!("/v1/experiments/{key}/{action}")))
            .header("x-api-key", &api.admin_key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }
}

#[tokio::test]
async fn bad_input_gets_a_documented_4xx_naming_the_field() {
    let stack = TestStack::fresh().await;
    let api = spawn_api(&stack, |c| c.max_body_bytes = MAX_BODY_BYTES).await;
    prepare(&api).await;
    let (_, client_key) = stack
        .stores
        .api_keys
        .create(Role::Client, "bad-input client")
        .await
        .unwrap();
    let (_, analyst_key) = stack
        .stores
        .api_keys
        .create(Role::Analyst, "bad-input analyst")
        .await
        .unwrap();

    let cases = cases();
    assert!(cases.len() >= 25, "the table must keep at least 25 cases");
    let mut failures = Vec::new();
    for case in &cases {
        let method: reqwest::Method = case.method.parse().unwrap();
        let mut request = api.client.request(method, api.url(&case.path));
        request = match case.auth {
            Auth::Admin => request.header("x-api-key", &api.admin_key),
            Auth::Analyst => request.header("x-api-key", &analyst_key),
            Auth::Client => request.header("x-api-key", &client_key),
            Auth::Missing => request,
            Auth::Invalid => request.header("x-api-key", "mq_admin_0000000000000000"),
            Auth::InvalidBearer => {
                request.header("authorization", "Bearer mq_admin_0000000000000000")
            }
        };
        if let Some(body) = &case.body {
            match case.content_type.unwrap_or("application/json") {
                "" => {}
                content_type => request = request.header("content-type", content_type),
            }
            request = request.body(body.clone());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let problem = if status >= 500 {
            Some("a 5xx".to_owned())
        } else if status != case.status {
            Some(format!("status {status}, expected {}", case.status))
        } else if !body["error"]["code"].is_string() || !body["error"]["message"].is_string() {
            Some("no JSON error body".to_owned())
        } else if body["error"]["field"] != case.field {
            Some(format!(
                "field {}, expected {:?}",
                body["error"]["field"], case.field
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            let shown: String = text.chars().take(300).collect();
            failures.push(format!(
                "{} ({} {}): {problem}: {shown}",
                case.name,
                case.method,
                case.path.chars().take(80).collect::<String>()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
