-- The bandit's burn-in and exploration per experiment (no reweight until every
-- arm has burn_in_users users and the experiment has run exploration_s
-- seconds), optional top-two Thompson sampling, and the cohort analysis's
-- outcome window (days after first exposure; NULL = the whole exposure).
ALTER TABLE experiments
    ADD COLUMN burn_in_users INT NOT NULL DEFAULT 100 CHECK (burn_in_users BETWEEN 0 AND 100000000),
    ADD COLUMN exploration_s INT NOT NULL DEFAULT 3600 CHECK (exploration_s BETWEEN 0 AND 7776000),
    ADD COLUMN top_two BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN outcome_window_days SMALLINT CHECK (outcome_window_days BETWEEN 1 AND 366);
