-- Each user's whole-run sums and first exposure in one row, so the cohort
-- results read one table with FINAL instead of grouping two tables by user
-- (about 120 ms at 200k users on 18.16). SummingMergeTree adds the counts
-- and merges the AggregateFunction column as AggregatingMergeTree would.
CREATE TABLE IF NOT EXISTS arm_user_cohort (
    experiment_key  String,
    arm_key         String,
    user_id         String,
    impressions     UInt64,
    clicks          UInt64,
    views           UInt64,
    likes           UInt64,
    conversions     UInt64,
    first_seen      AggregateFunction(min, DateTime)
) ENGINE = SummingMergeTree()
ORDER BY (experiment_key, arm_key, user_id);

-- Sums, unlike 0006's min, would double if an event reached the table both
-- through this view and through the backfill. The migration runner splits
-- events at {cutoff} (seconds of `ingested_at`): the view takes batches
-- stamped at or after it, the backfill below those stamped before, and the
-- runner only starts the backfill once every such batch has landed.
CREATE MATERIALIZED VIEW IF NOT EXISTS arm_user_cohort_mv TO arm_user_cohort AS
SELECT
    experiment_key,
    arm_key,
    user_id,
    toUInt64(sum(type = 'impression')) AS impressions,
    toUInt64(sum(type = 'click')) AS clicks,
    toUInt64(sum(type = 'view')) AS views,
    toUInt64(sum(type = 'like')) AS likes,
    toUInt64(sum(type = 'conversion')) AS conversions,
    minState(ts) AS first_seen
FROM events
WHERE experiment_key != '' AND ingested_at >= toDateTime({cutoff})
GROUP BY experiment_key, arm_key, user_id;

-- The events stored before the view, with a sentinel row in the same insert
-- (one part, so both land or neither): a rerun after a crash that finds the
-- sentinel does not add the events a second time.
INSERT INTO arm_user_cohort
SELECT
    experiment_key,
    arm_key,
    user_id,
    toUInt64(sum(type = 'impression')) AS impressions,
    toUInt64(sum(type = 'click')) AS clicks,
    toUInt64(sum(type = 'view')) AS views,
    toUInt64(sum(type = 'like')) AS likes,
    toUInt64(sum(type = 'conversion')) AS conversions,
    minState(ts) AS first_seen
FROM events
WHERE experiment_key != '' AND ingested_at < toDateTime({cutoff})
GROUP BY experiment_key, arm_key, user_id
UNION ALL
SELECT '', '', 'backfill:0007', toUInt64(0), toUInt64(0), toUInt64(0), toUInt64(0), toUInt64(0),
    minState(toDateTime(0))
