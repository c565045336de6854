-- How an experiment's results are read: 'sequential' (confidence sequences
-- valid at every look, tuned for sequential_tuning users of both arms: the
-- default) or 'fixed_horizon' (one planned look).
ALTER TABLE experiments
    ADD COLUMN analysis TEXT NOT NULL DEFAULT 'sequential' CHECK (analysis IN ('sequential', 'fixed_horizon')),
    ADD COLUMN sequential_tuning DOUBLE PRECISION NOT NULL DEFAULT 5000 CHECK (sequential_tuning >= 1 AND sequential_tuning <= 1e9);
