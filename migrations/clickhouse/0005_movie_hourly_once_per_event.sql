-- Count each event once per movie and hour. An event attributed to several
-- experiments (a click, view, like or conversion without a request id, from a
-- user enrolled in more than one) is stored as one row per experiment, for
-- arm_daily; counting rows here counted it once per experiment in the hot
-- movies. The rows of one event are written by one insert (one block), which
-- is what a materialized view sees, so distinct event ids per block are exact.
DROP TABLE IF EXISTS movie_hourly_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS movie_hourly_mv TO movie_hourly AS
SELECT
    movie_id,
    toStartOfHour(ts) AS hour,
    toUInt64(uniqExact(event_id)) AS interactions,
    toUInt64(uniqExactIf(event_id, type = 'click')) AS clicks,
    toUInt64(uniqExactIf(event_id, type = 'view')) AS views,
    toUInt64(uniqExactIf(event_id, type = 'like')) AS likes
FROM events
WHERE movie_id != 0 AND type != 'impression'
GROUP BY movie_id, hour;
