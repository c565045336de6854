//! Shared state handed to every handler through axum's `State`.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use repositories::stores::Stores;

use crate::auth::KeyCache;
use crate::config::ApiConfig;
use crate::serving::Serving;

/// Handles to the stores and the process-wide services; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ApiConfig>,
    /// Behind an `Arc`: handlers clone the state per request, and the stores
    /// carry their settings (a dozen strings).
    pub stores: Arc<Stores>,
    pub prometheus: Option<PrometheusHandle>,
    /// Recently looked-up API keys.
    pub keys: KeyCache,
    /// Caches and queues of the recommendations and events routes.
    pub serving: Arc<Serving>,
}
