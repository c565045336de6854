-- Clicks credited to a served list, per movie: the worker credits at most
-- MARQUEE_MAX_CLICKS_PER_SERVED_MOVIE of them, so repeating a click (or
-- forging it under a known request id) cannot inflate an arm's CTR. The
-- order of arrival (seq) decides which clicks are the first; an event id is
-- stored once, so a retried batch gets the same answer. Rows older than the
-- served lists' lifetime can no longer matter and are pruned by the worker.
CREATE TABLE click_credits (
    seq         BIGSERIAL PRIMARY KEY,
    request_id  UUID NOT NULL,
    movie_id    BIGINT NOT NULL,
    event_id    UUID NOT NULL UNIQUE,
    credited_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX click_credits_by_list ON click_credits (request_id, movie_id, seq);
CREATE INDEX click_credits_by_age ON click_credits (credited_at);
