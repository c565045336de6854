//! Shared state handed to every handler through axum's `State`.

use std::ops::Deref;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use repositories::stores::Stores;

use crate::auth::KeyCache;
use crate::config::ApiConfig;
use crate::serving::Serving;

/// The state axum clones for every request (into the route's service and the
/// `State` extractor): one reference count, since each count touched is a
/// cache line the two cores take from each other.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// Handles to the stores and the process-wide services.
pub struct Services {
    pub config: Arc<ApiConfig>,
    pub stores: Arc<Stores>,
    pub prometheus: Option<PrometheusHandle>,
    /// Recently looked-up API keys.
    pub keys: KeyCache,
    /// Per-key and per-address request limits.
    pub limits: crate::rate_limit::RateLimits,
    /// Caches and queues of the recommendations and events routes.
    pub serving: Arc<Serving>,
    /// The last readiness answer, reused for a second.
    pub ready: crate::routes::health::ReadyCache,
}
