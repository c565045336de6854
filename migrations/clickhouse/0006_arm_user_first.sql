-- Each user's first exposure per experiment and arm: the cohort (weight
-- period) they belong to in the results and the bandit. Only the first time
-- is kept, as a min state, so writing the same events twice changes nothing:
-- the backfill below can overlap the view, and two processes migrating at
-- once cannot double anything. Outcome sums stay in arm_user/arm_user_daily.
CREATE TABLE IF NOT EXISTS arm_user_first (
    experiment_key  String,
    arm_key         String,
    user_id         String,
    first_seen      AggregateFunction(min, DateTime)
) ENGINE = AggregatingMergeTree()
ORDER BY (experiment_key, arm_key, user_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS arm_user_first_mv TO arm_user_first AS
SELECT experiment_key, arm_key, user_id, minState(ts) AS first_seen
FROM events
WHERE experiment_key != ''
GROUP BY experiment_key, arm_key, user_id;

-- Events stored before this migration.
INSERT INTO arm_user_first
SELECT experiment_key, arm_key, user_id, minState(ts) AS first_seen
FROM events
WHERE experiment_key != ''
GROUP BY experiment_key, arm_key, user_id;
