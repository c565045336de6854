-- Raw events. ReplacingMergeTree on the full key (which ends in event_id) is the
-- second guard against duplicates; the worker's ledger in PostgreSQL is the first.
-- No PARTITION BY: one insert per batch then lands as one part, atomically.
CREATE TABLE IF NOT EXISTS events (
    event_id        UUID,
    ts              DateTime,
    type            String,
    user_id         String,
    movie_id        UInt64,
    experiment_key  String,
    arm_key         String,
    algorithm_key   String,
    model_version   String,
    request_id      String,
    position        Int16,
    value           Float64,
    item_count      UInt16,
    batch_id        UUID,
    ingested_at     DateTime
) ENGINE = ReplacingMergeTree(ingested_at)
ORDER BY (experiment_key, arm_key, ts, event_id);
