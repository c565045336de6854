-- Per experiment/arm/user sums over the whole run: one row per user rather
-- than per user-day, so whole-run results read users, not user-days.
CREATE TABLE IF NOT EXISTS arm_user (
    experiment_key  String,
    arm_key         String,
    user_id         String,
    impressions     UInt64,
    clicks          UInt64,
    views           UInt64,
    likes           UInt64,
    conversions     UInt64
) ENGINE = SummingMergeTree()
ORDER BY (experiment_key, arm_key, user_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS arm_user_mv TO arm_user AS
SELECT
    experiment_key,
    arm_key,
    user_id,
    toUInt64(sum(type = 'impression')) AS impressions,
    toUInt64(sum(type = 'click')) AS clicks,
    toUInt64(sum(type = 'view')) AS views,
    toUInt64(sum(type = 'like')) AS likes,
    toUInt64(sum(type = 'conversion')) AS conversions
FROM events
WHERE experiment_key != ''
GROUP BY experiment_key, arm_key, user_id;
