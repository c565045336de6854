-- Marquee's source of truth for entities: catalog, history, experiments, models, keys.

CREATE TABLE movies (
    id          BIGINT PRIMARY KEY CHECK (id > 0),
    title       TEXT NOT NULL CHECK (length(title) > 0),
    year        INT,
    genres      TEXT[] NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- History keeps the producer's event_id so a replayed event is stored once.
-- No foreign key to movies: events may name a movie before the catalog sync does.
CREATE TABLE views (
    event_id    UUID PRIMARY KEY,
    user_id     TEXT NOT NULL,
    movie_id    BIGINT NOT NULL,
    ts          TIMESTAMPTZ NOT NULL,
    value       DOUBLE PRECISION
);
CREATE INDEX views_user_ts ON views (user_id, ts DESC);
CREATE INDEX views_ts ON views (ts);

CREATE TABLE likes (
    event_id    UUID PRIMARY KEY,
    user_id     TEXT NOT NULL,
    movie_id    BIGINT NOT NULL,
    ts          TIMESTAMPTZ NOT NULL
);
CREATE INDEX likes_user_ts ON likes (user_id, ts DESC);
CREATE INDEX likes_ts ON likes (ts);

CREATE TABLE algorithms (
    key         TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('popularity', 'item_knn', 'als', 'cold_start')),
    params      JSONB NOT NULL DEFAULT '{}',
    description TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

INSERT INTO algorithms (key, kind, description) VALUES
    ('popularity', 'popularity', 'Most watched recently, with exponential time decay'),
    ('item_knn',   'item_knn',   'Item-item cosine neighbours of what the user watched and liked'),
    ('als',        'als',        'Implicit-feedback matrix factorisation (Hu, Koren, Volinsky 2008)'),
    ('cold_start', 'cold_start', 'Popular movies of the user''s preferred genres');

CREATE TABLE experiments (
    key                 TEXT PRIMARY KEY,
    description         TEXT NOT NULL DEFAULT '',
    status              TEXT NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'running', 'stopped')),
    salt                TEXT NOT NULL,
    hash_version        SMALLINT NOT NULL DEFAULT 2 CHECK (hash_version IN (1, 2)),
    coverage            DOUBLE PRECISION NOT NULL DEFAULT 1 CHECK (coverage > 0 AND coverage <= 1),
    policy              TEXT NOT NULL DEFAULT 'fixed' CHECK (policy IN ('fixed', 'thompson')),
    metric              TEXT NOT NULL DEFAULT 'ctr' CHECK (metric IN ('ctr', 'conversion')),
    min_weight          DOUBLE PRECISION NOT NULL DEFAULT 0.05 CHECK (min_weight >= 0 AND min_weight < 1),
    reweight_interval_s INT NOT NULL DEFAULT 300 CHECK (reweight_interval_s > 0),
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at          TIMESTAMPTZ,
    stopped_at          TIMESTAMPTZ,
    last_reweight_at    TIMESTAMPTZ
);

CREATE TABLE arms (
    experiment_key  TEXT NOT NULL REFERENCES experiments (key) ON DELETE CASCADE,
    arm_key         TEXT NOT NULL,
    algorithm_key   TEXT NOT NULL REFERENCES algorithms (key),
    weight          DOUBLE PRECISION NOT NULL CHECK (weight >= 0 AND weight <= 1),
    is_control      BOOLEAN NOT NULL DEFAULT false,
    position        INT NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment_key, arm_key)
);
CREATE UNIQUE INDEX arms_one_control ON arms (experiment_key) WHERE is_control;

CREATE TABLE weight_history (
    id              BIGSERIAL PRIMARY KEY,
    experiment_key  TEXT NOT NULL REFERENCES experiments (key) ON DELETE CASCADE,
    arm_key         TEXT NOT NULL,
    weight          DOUBLE PRECISION NOT NULL,
    computed_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    reason          TEXT NOT NULL,
    posterior       JSONB
);
CREATE INDEX weight_history_experiment ON weight_history (experiment_key, computed_at);

-- Sticky bucketing: a recorded assignment wins over a fresh hash.
CREATE TABLE assignments (
    experiment_key  TEXT NOT NULL REFERENCES experiments (key) ON DELETE CASCADE,
    user_id         TEXT NOT NULL,
    arm_key         TEXT NOT NULL,
    assigned_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (experiment_key, user_id)
);

CREATE TABLE models (
    algorithm_key   TEXT NOT NULL REFERENCES algorithms (key),
    version         TEXT NOT NULL,
    s3_key          TEXT NOT NULL,
    sha256          TEXT NOT NULL,
    format_version  INT NOT NULL,
    metrics         JSONB NOT NULL DEFAULT '{}',
    manifest        JSONB NOT NULL DEFAULT '{}',
    status          TEXT NOT NULL DEFAULT 'inactive' CHECK (status IN ('inactive', 'active')),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    activated_at    TIMESTAMPTZ,
    PRIMARY KEY (algorithm_key, version)
);
CREATE UNIQUE INDEX models_one_active ON models (algorithm_key) WHERE status = 'active';

CREATE TABLE api_keys (
    id          UUID PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL CHECK (role IN ('client', 'analyst', 'admin')),
    name        TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ
);

-- The worker's ingestion ledger: every event_id it has written to ClickHouse,
-- with the batch that wrote it. ClickHouse 18.16 cannot dedup inserts into a
-- non-replicated table and its materialized views count every inserted row,
-- so this ledger is what makes a redelivered event count once.
CREATE TABLE ingest_batches (
    batch_id        UUID PRIMARY KEY,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'written', 'aborted')),
    event_count     INT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ
);
CREATE INDEX ingest_batches_pending ON ingest_batches (created_at) WHERE status = 'pending';

CREATE TABLE ingested_events (
    event_id    UUID PRIMARY KEY,
    batch_id    UUID NOT NULL REFERENCES ingest_batches (batch_id),
    ingested_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ingested_events_batch ON ingested_events (batch_id);
