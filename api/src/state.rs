//! Shared state handed to every handler through axum's `State`.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use repositories::stores::Stores;

use crate::config::ApiConfig;

/// Handles to the stores and the process-wide services; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ApiConfig>,
    pub stores: Stores,
    pub prometheus: Option<PrometheusHandle>,
}
