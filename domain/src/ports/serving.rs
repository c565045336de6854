//! Ports the serving path (api) needs: catalog, experiments, assignments, recommendation cache, event bus.
