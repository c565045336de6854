-- Per experiment/arm/day counts for results and the bandit, kept by a materialized view.
CREATE TABLE IF NOT EXISTS arm_daily (
    experiment_key      String,
    arm_key             String,
    day                 Date,
    impressions         AggregateFunction(sum, UInt64),
    clicks              AggregateFunction(sum, UInt64),
    views               AggregateFunction(sum, UInt64),
    likes               AggregateFunction(sum, UInt64),
    conversions         AggregateFunction(sum, UInt64),
    value_sum           AggregateFunction(sum, Float64),
    value_count         AggregateFunction(sum, UInt64),
    users               AggregateFunction(uniqExact, String),
    clicking_users      AggregateFunction(uniqExactIf, String, UInt8),
    converting_users    AggregateFunction(uniqExactIf, String, UInt8)
) ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (experiment_key, arm_key, day);

CREATE MATERIALIZED VIEW IF NOT EXISTS arm_daily_mv TO arm_daily AS
SELECT
    experiment_key,
    arm_key,
    toDate(ts) AS day,
    sumState(toUInt64(type = 'impression')) AS impressions,
    sumState(toUInt64(type = 'click')) AS clicks,
    sumState(toUInt64(type = 'view')) AS views,
    sumState(toUInt64(type = 'like')) AS likes,
    sumState(toUInt64(type = 'conversion')) AS conversions,
    sumState(if(type = 'impression', 0., value)) AS value_sum,
    sumState(toUInt64(type != 'impression' AND value != 0)) AS value_count,
    uniqExactState(user_id) AS users,
    uniqExactIfState(user_id, toUInt8(type = 'click')) AS clicking_users,
    uniqExactIfState(user_id, toUInt8(type = 'conversion')) AS converting_users
FROM events
WHERE experiment_key != ''
GROUP BY experiment_key, arm_key, day;

-- Per experiment/arm/user/day sums: the per-user sufficient statistics the
-- delta method needs for CTR as a ratio metric (sum c, sum i, sum c^2, sum i^2, sum c*i).
CREATE TABLE IF NOT EXISTS arm_user_daily (
    experiment_key  String,
    arm_key         String,
    user_id         String,
    day             Date,
    impressions     UInt64,
    clicks          UInt64,
    views           UInt64,
    likes           UInt64,
    conversions     UInt64
) ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (experiment_key, arm_key, user_id, day);

CREATE MATERIALIZED VIEW IF NOT EXISTS arm_user_daily_mv TO arm_user_daily AS
SELECT
    experiment_key,
    arm_key,
    user_id,
    toDate(ts) AS day,
    toUInt64(sum(type = 'impression')) AS impressions,
    toUInt64(sum(type = 'click')) AS clicks,
    toUInt64(sum(type = 'view')) AS views,
    toUInt64(sum(type = 'like')) AS likes,
    toUInt64(sum(type = 'conversion')) AS conversions
FROM events
WHERE experiment_key != ''
GROUP BY experiment_key, arm_key, user_id, day;

-- Clicks per served position, for the results' engagement section.
CREATE TABLE IF NOT EXISTS arm_position_daily (
    experiment_key  String,
    arm_key         String,
    position        Int16,
    day             Date,
    clicks          UInt64
) ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (experiment_key, arm_key, position, day);

CREATE MATERIALIZED VIEW IF NOT EXISTS arm_position_daily_mv TO arm_position_daily AS
SELECT experiment_key, arm_key, position, toDate(ts) AS day, count() AS clicks
FROM events
WHERE experiment_key != '' AND type = 'click' AND position >= 0
GROUP BY experiment_key, arm_key, position, day;
