-- Negative feedback per experiment/arm/day: dislikes and "not interested"
-- attributed to the arm whose list the user answered, for the results'
-- guardrail. No backfill: the event parser refused these types before this
-- migration, so no earlier event can be one of them.
CREATE TABLE IF NOT EXISTS arm_negative_daily (
    experiment_key  String,
    arm_key         String,
    day             Date,
    dislikes        UInt64,
    not_interested  UInt64
) ENGINE = SummingMergeTree()
ORDER BY (experiment_key, arm_key, day);

CREATE MATERIALIZED VIEW IF NOT EXISTS arm_negative_daily_mv TO arm_negative_daily AS
SELECT
    experiment_key,
    arm_key,
    toDate(ts) AS day,
    toUInt64(sum(type = 'dislike')) AS dislikes,
    toUInt64(sum(type = 'not_interested')) AS not_interested
FROM events
WHERE experiment_key != '' AND type IN ('dislike', 'not_interested')
GROUP BY experiment_key, arm_key, day;
