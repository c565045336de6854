//! The Prometheus exporter both binaries install: one module per technology,
//! like the stores.

use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// How often recorded histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Install `builder`'s recorder as the process's global one and keep it up;
/// `None` if a recorder was installed already (metrics then go there).
///
/// Until upkeep runs, every histogram sample stays in memory:
/// `install_recorder` leaves upkeep to the caller and only a scrape of
/// /metrics runs it otherwise, so a process nobody scraped grew by every
/// request's duration sample, for good. A thread of its own, for the life
/// of the process (the recorder's), folds them every [`UPKEEP_EVERY`].
pub fn install(builder: PrometheusBuilder) -> Option<PrometheusHandle> {
    let handle = builder.install_recorder().ok()?;
    let upkept = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            upkept.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no metrics upkeep thread; histograms grow until /metrics is scraped");
    }
    Some(handle)
}
