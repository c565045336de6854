-- Dislikes and "not interested": the user's "not this one". The api leaves
-- these movies out of the user's lists (as it does seen ones), training
-- drops a disliked movie from the user's positives, and the results count
-- them per arm as a guardrail.
CREATE TABLE negative_feedback (
    event_id UUID PRIMARY KEY,
    user_id  TEXT NOT NULL,
    movie_id BIGINT NOT NULL,
    kind     TEXT NOT NULL CHECK (kind IN ('dislike', 'not_interested')),
    ts       TIMESTAMPTZ NOT NULL
);
CREATE INDEX negative_feedback_by_user ON negative_feedback (user_id, ts DESC);
