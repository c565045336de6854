//! The OpenAPI 3 document, generated from the handlers' annotations.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};
use crate::routes::models;
use crate::routes::{algorithms, dashboard, experiments, keys, movies, users};
use crate::routes::{events, health, metrics, recommendations, similar};

/// Marquee's API description, served at `/openapi.json` and browsed at `/docs`.
#[derive(OpenApi)]
#[openapi(
    info(title = "Marquee", description = "Recommendations with built-in A/B testing for movie catalogs."),
    paths(
        health::live, health::ready, metrics::render,
        recommendations::recommendations, similar::similar_movies, events::post_events,
        models::list_models, models::activate_model,
        movies::create, movies::bulk_upsert, movies::get, movies::list, users::history,
        experiments::create, experiments::get, experiments::list, experiments::start,
        experiments::stop, experiments::replace_arms, experiments::weights,
        algorithms::list, keys::create, keys::revoke,
        dashboard::sign_in, dashboard::sign_out, dashboard::experiments,
    ),
    components(schemas(ErrorBody, ErrorDetail, health::Live, health::Ready, health::DependencyReport,
        recommendations::Recommendations<'static>, recommendations::RecommendedItem<'static>,
        events::EventBatch, events::EventError, events::EventStatus, events::EventsAccepted, events::EventsRejected,
        similar::SimilarMovies, similar::SimilarMovie,
        models::ModelList, models::ModelVersion,
        dashboard::ExperimentSummaries, dashboard::ExperimentSummary,
    )),
    modifiers(&ApiKeyAuth),
    tags(
        (name = "health", description = "Liveness, readiness and metrics"),
        (name = "serving", description = "Recommendations and event intake (client role)"),
        (name = "catalog", description = "Movies and users' history (admin role)"),
        (name = "experiments", description = "Experiments, arms, weights and algorithms (admin role; analysts may read experiments)"),
        (name = "keys", description = "API keys (admin role)"),
        (name = "models", description = "Trained model versions and rollback (admin role)"),
        (name = "results", description = "Experiment results and the dashboard's session (analyst role)"),
    ),
)]
pub struct ApiDoc;

/// Declares the `api_key` scheme the routes' `security(...)` refer to: the
/// key travels in the `x-api-key` header (or `Authorization: Bearer`).
struct ApiKeyAuth;

impl Modify for ApiKeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
        );
    }
}
