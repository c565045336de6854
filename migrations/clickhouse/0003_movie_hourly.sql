-- Per movie/hour interactions: the source of hot:movies.
CREATE TABLE IF NOT EXISTS movie_hourly (
    movie_id        UInt64,
    hour            DateTime,
    interactions    UInt64,
    clicks          UInt64,
    views           UInt64,
    likes           UInt64
) ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(hour)
ORDER BY (movie_id, hour);

-- Each event once, however many experiments it is attributed to: see 0005,
-- which replaces the first form of this view (it counted rows) where it was
-- already created; with both defining the same view, two processes migrating
-- at once cannot leave the first form behind.
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
