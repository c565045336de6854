//! The OpenAPI 3 document, generated from the handlers' annotations.

use utoipa::OpenApi;

use crate::error::{ErrorBody, ErrorDetail};
use crate::routes::{health, metrics};

/// Marquee's API description, served at `/openapi.json` and browsed at `/docs`.
#[derive(OpenApi)]
#[openapi(
    info(title = "Marquee", description = "Recommendations with built-in A/B testing for movie catalogs."),
    paths(health::live, health::ready, metrics::render),
    components(schemas(ErrorBody, ErrorDetail, health::Live, health::Ready, health::DependencyReport)),
    tags((name = "health", description = "Liveness, readiness and metrics")),
)]
pub struct ApiDoc;
