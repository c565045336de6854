//! The worker's one configuration struct, read from `MARQUEE_*` env vars (or flags).

use std::time::Duration;

use repositories::settings::StackArgs;

/// Everything the worker needs; every field has a default that points at the
/// local stack, so `worker` alone runs against `scripts/stack.sh up`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerConfig {
    /// Consumer group of the event pipeline; every worker of a deployment shares it.
    #[arg(long, env = "MARQUEE_WORKER_GROUP", default_value = "marquee-worker")]
    pub group_id: String,
    /// Most messages in one batch (one ClickHouse insert and one ledger
    /// transaction per `max_events_per_insert` events); a batch waiting for
    /// impressions may take in as many again.
    #[arg(long, env = "MARQUEE_WORKER_BATCH_SIZE", default_value_t = 10_000)]
    pub batch_size: usize,
    /// Most events per ClickHouse insert and ledger transaction: a batch of
    /// packed impressions holding more is stored in several, each atomic
    /// (an insert is atomic only below ClickHouse's 1,048,576-row blocks).
    #[arg(long, env = "MARQUEE_WORKER_MAX_EVENTS_PER_INSERT", default_value_t = crate::consumer::MAX_EVENTS_PER_INSERT)]
    pub max_events_per_insert: usize,
    /// Longest a batch waits to fill after its first message, in milliseconds
    /// (a batch waiting for impressions waits up to the attribution grace more).
    #[arg(long, env = "MARQUEE_WORKER_BATCH_MAX_WAIT_MS", default_value_t = 250)]
    pub batch_max_wait_ms: u64,
    /// Seconds a processed event id stays in the Redis dedup fast path.
    #[arg(long, env = "MARQUEE_WORKER_DEDUP_TTL_S", default_value_t = 86_400)]
    pub dedup_ttl_s: u64,
    /// Seconds a served list stays attributable to later clicks (Redis expiry).
    #[arg(
        long,
        env = "MARQUEE_WORKER_ATTRIBUTION_TTL_S",
        default_value_t = 604_800
    )]
    pub attribution_ttl_s: u64,
    /// Clicks credited per (served list, movie); the rest are stored
    /// unattributed with the reason `click_cap` (0: every click counts). A
    /// served movie is clicked or not, so a repeated click, or one forged
    /// under a request id the forger learnt, cannot raise an arm's CTR.
    #[arg(long, env = "MARQUEE_MAX_CLICKS_PER_SERVED_MOVIE", default_value_t = 1)]
    pub max_clicks_per_served_movie: u32,
    /// Served lists kept in process memory in front of Redis.
    #[arg(
        long,
        env = "MARQUEE_WORKER_ATTRIBUTION_CACHE",
        default_value_t = 200_000
    )]
    pub attribution_cache: usize,
    /// How long a batch waits, once, for more messages when it holds clicks
    /// (views, likes, conversions) whose request id names no impression the
    /// worker knows, in milliseconds (0: never waits). The api hands an
    /// impression to Kafka up to its packing window after answering, so a
    /// click made at once can reach Kafka first; a batch closing between the
    /// two would store the click unattributed.
    #[arg(
        long,
        env = "MARQUEE_WORKER_ATTRIBUTION_GRACE_MS",
        default_value_t = 300
    )]
    pub attribution_grace_ms: u64,
    /// How often the reweighting loop looks for experiments due, in milliseconds
    /// (each experiment is reweighted at most once per its own `reweight_interval_s`).
    #[arg(long, env = "MARQUEE_WORKER_REWEIGHT_TICK_MS", default_value_t = 5_000)]
    pub reweight_tick_ms: u64,
    /// Seconds between refreshes of the hot-movies set in Redis.
    #[arg(
        long,
        env = "MARQUEE_WORKER_HOT_MOVIES_INTERVAL_S",
        default_value_t = 60
    )]
    pub hot_movies_interval_s: u64,
    /// Window of interactions the hot movies are counted over, in seconds.
    #[arg(
        long,
        env = "MARQUEE_WORKER_HOT_MOVIES_WINDOW_S",
        default_value_t = 86_400
    )]
    pub hot_movies_window_s: u64,
    /// Size of the hot-movies set.
    #[arg(long, env = "MARQUEE_WORKER_HOT_MOVIES_LIMIT", default_value_t = 200)]
    pub hot_movies_limit: u64,
    /// Seconds between consumer-lag measurements.
    #[arg(long, env = "MARQUEE_WORKER_LAG_INTERVAL_S", default_value_t = 15)]
    pub lag_interval_s: u64,
    /// Seconds a partition this worker does not own may sit with lag and an
    /// unmoving committed offset, while this worker is not held up by a
    /// store, before it rejoins the group so the partition is assigned again.
    #[arg(long, env = "MARQUEE_WORKER_ORPHAN_AFTER_S", default_value_t = 30)]
    pub orphan_after_s: u64,
    /// First retry delay after a store error, in milliseconds (doubles up to the max).
    #[arg(long, env = "MARQUEE_WORKER_RETRY_INITIAL_MS", default_value_t = 200)]
    pub retry_initial_ms: u64,
    /// Longest retry delay, in milliseconds.
    #[arg(long, env = "MARQUEE_WORKER_RETRY_MAX_MS", default_value_t = 10_000)]
    pub retry_max_ms: u64,
    /// How long startup waits for the five dependencies before giving up, in seconds.
    #[arg(long, env = "MARQUEE_WORKER_STARTUP_TIMEOUT_S", default_value_t = 30)]
    pub startup_timeout_s: u64,
    /// Address of the metrics and liveness endpoint: loopback by default, so
    /// the worker's internals are not on every interface (docker-compose sets
    /// 0.0.0.0, for its port mapping).
    #[arg(long, env = "MARQUEE_WORKER_METRICS_HOST", default_value = "127.0.0.1")]
    pub metrics_host: String,
    /// Port of `/metrics` and `/health/live`; 0 picks a free one.
    #[arg(long, env = "MARQUEE_WORKER_METRICS_PORT", default_value_t = 9091)]
    pub metrics_port: u16,
    /// Seconds between checks of the active model version of each algorithm
    /// (a change is loaded from S3 and precomputed into Redis).
    #[arg(long, env = "MARQUEE_WORKER_MODEL_POLL_S", default_value_t = 10)]
    pub model_poll_s: u64,
    /// Length of each precomputed recommendation list.
    #[arg(long, env = "MARQUEE_WORKER_MODEL_TOP_N", default_value_t = 50)]
    pub model_top_n: usize,
    /// Users with a view or like within this many seconds of the newest one get
    /// precomputed lists (the default covers the synthetic data's last 60 days).
    #[arg(
        long,
        env = "MARQUEE_WORKER_MODEL_ACTIVE_WINDOW_S",
        default_value_t = 5_184_000
    )]
    pub model_active_window_s: u64,
    /// Run migrations at startup.
    #[arg(long, env = "MARQUEE_WORKER_MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,
    #[command(flatten)]
    pub stack: StackArgs,
}

impl WorkerConfig {
    /// Settings from `MARQUEE_*` env vars with defaults for the rest (tests start from here).
    pub fn from_env() -> Result<Self, clap::Error> {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            config: WorkerConfig,
        }
        <Only as clap::Parser>::try_parse_from(["worker"]).map(|o| o.config)
    }

    pub fn batch_max_wait(&self) -> Duration {
        Duration::from_millis(self.batch_max_wait_ms)
    }

    pub fn model_loop(&self) -> crate::models::ModelLoopSettings {
        crate::models::ModelLoopSettings {
            poll: Duration::from_secs(self.model_poll_s.max(1)),
            top_n: self.model_top_n.max(1),
            active_window: Duration::from_secs(self.model_active_window_s),
        }
    }
}
