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

CREATE MATERIALIZED VIEW IF NOT EXISTS movie_hourly_mv TO movie_hourly AS
SELECT
    movie_id,
    toStartOfHour(ts) AS hour,
    count() AS interactions,
    toUInt64(sum(type = 'click')) AS clicks,
    toUInt64(sum(type = 'view')) AS views,
    toUInt64(sum(type = 'like')) AS likes
FROM events
WHERE movie_id != 0 AND type != 'impression'
GROUP BY movie_id, hour;
