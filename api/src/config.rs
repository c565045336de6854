//! The api's one configuration struct, read from `MARQUEE_*` env vars.

use repositories::kafka::encoding::RecordEncoding;
use repositories::settings::StackArgs;

/// Everything the api needs to start; every field has a default that points at
/// the local stack, so `api` alone runs against `scripts/stack.sh up`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiConfig {
    /// Address to listen on.
    #[arg(long, env = "MARQUEE_API_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free one.
    #[arg(long, env = "MARQUEE_API_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Admin key for the first start: accepted until an admin key exists in
    /// PostgreSQL (create one with it, then it retires). Empty disables it.
    #[arg(long, env = "MARQUEE_BOOTSTRAP_ADMIN_KEY", default_value = "")]
    pub bootstrap_admin_key: String,
    /// How long a looked-up API key (or its absence) is trusted before
    /// PostgreSQL is asked again, in milliseconds: a revoked key stops working
    /// within this time. While PostgreSQL is down, keys seen valid before keep working.
    /// One second: every replica refuses a revoked key within it, at the cost
    /// of one primary-key lookup per key per second per replica.
    #[arg(long, env = "MARQUEE_KEY_CACHE_TTL_MS", default_value_t = 1_000)]
    pub key_cache_ttl_ms: u64,
    /// Requests per second one API key may make to this api process (bursts
    /// of twice that); past it the answer is 429 with `retry-after`. 0: no
    /// limit. A front-end usually calls with one client key for all its
    /// users, so the default is well above what one process serves of a
    /// real workload's mix; lower it for keys handed to third parties.
    #[arg(long, env = "MARQUEE_RATE_LIMIT_PER_KEY", default_value_t = 5_000)]
    pub rate_limit_per_key: u32,
    /// Uncached API-key lookups (each a PostgreSQL query) per second from one
    /// client address, bursts of twice that; bounds key guessing. 0: no limit.
    #[arg(
        long,
        env = "MARQUEE_RATE_LIMIT_LOOKUPS_PER_ADDRESS",
        default_value_t = 20
    )]
    pub rate_limit_lookups_per_address: u32,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "MARQUEE_MAX_BODY_BYTES", default_value_t = 1_048_576)]
    pub max_body_bytes: usize,
    /// Most events in one `POST /v1/events`.
    #[arg(long, env = "MARQUEE_MAX_EVENTS_PER_BATCH", default_value_t = 1000)]
    pub max_events_per_batch: usize,
    /// Seconds the api remembers what each posted event_id said (a 128-bit
    /// digest in Redis, about 100 bytes per event), so a retry is answered
    /// `duplicate` and a different event under a used id `conflict` (0: off).
    #[arg(long, env = "MARQUEE_EVENT_FINGERPRINT_TTL_S", default_value_t = 3600)]
    pub event_fingerprint_ttl_s: u64,
    /// Impressions buffered in the Kafka producer while Kafka is slow (and new
    /// assignments queued for PostgreSQL); beyond it they are dropped and counted.
    #[arg(long, env = "MARQUEE_IMPRESSION_QUEUE", default_value_t = 10_000)]
    pub impression_queue: usize,
    /// How long impressions bound for one Kafka partition are gathered into
    /// one record, in milliseconds (0: one record per impression). The broker's
    /// cost is per record; the worker unpacks them. 50 ms, not less: at 20 ms
    /// the local broker spent twice as much CPU per served request (bench-serve).
    #[arg(long, env = "MARQUEE_IMPRESSION_PACKING_MS", default_value_t = 50)]
    pub impression_packing_ms: u64,
    /// Encoding of packed impression records: `lz4` (an LZ4 frame, marked by
    /// a `content-encoding: lz4` record header; the worker decodes it) or
    /// `identity` (plain JSON). The broker's cost follows the bytes it stores.
    #[arg(long, env = "MARQUEE_IMPRESSION_ENCODING", value_enum, default_value_t = RecordEncoding::Lz4)]
    pub impression_encoding: RecordEncoding,
    /// Experiment used when a recommendations request names none.
    #[arg(long, env = "MARQUEE_DEFAULT_EXPERIMENT", default_value = "home")]
    pub default_experiment: String,
    /// Seconds between reloads of the in-process catalog and experiments.
    #[arg(long, env = "MARQUEE_CATALOG_REFRESH_S", default_value_t = 30)]
    pub catalog_refresh_s: u64,
    /// Requests served at once; past it a request gets 503 (`overloaded`,
    /// `retry-after: 1`) at once instead of queueing behind the others, so
    /// an overload sheds load rather than growing every request's latency.
    /// Health and metrics routes are not counted. 0: no cap.
    #[arg(long, env = "MARQUEE_MAX_CONCURRENT_REQUESTS", default_value_t = 2_048)]
    pub max_concurrent_requests: usize,
    /// Time limit of a whole request, in milliseconds.
    #[arg(long, env = "MARQUEE_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Time limit of each store read on the recommendations path, in milliseconds;
    /// past it the answer degrades (fallback lists, no seen-filter) instead of waiting.
    #[arg(long, env = "MARQUEE_SERVING_TIMEOUT_MS", default_value_t = 250)]
    pub serving_timeout_ms: u64,
    /// How long a user's sticky arm and seen movies are reused from process
    /// memory before PostgreSQL is asked again, in milliseconds (0: always ask).
    /// A view newer than this may not yet be filtered out of the list; a new
    /// assignment is remembered at once either way.
    #[arg(long, env = "MARQUEE_USER_CACHE_TTL_MS", default_value_t = 30_000)]
    pub user_cache_ttl_ms: u64,
    /// Most users kept in that cache.
    #[arg(long, env = "MARQUEE_USER_CACHE_CAPACITY", default_value_t = 200_000)]
    pub user_cache_capacity: u64,
    /// Reads of users' contexts the cache does not hold go to PostgreSQL in
    /// batches, one statement for the users queued meanwhile; this many
    /// statements may be in flight at once (each holds a pooled connection,
    /// so keep it well under MARQUEE_DATABASE_MAX_CONNECTIONS). Fewer readers
    /// make bigger batches: on two cores one or two did best, and two keep
    /// reads moving while one statement is slow.
    #[arg(long, env = "MARQUEE_USER_CONTEXT_READERS", default_value_t = 2)]
    pub user_context_readers: usize,
    /// How long a user's precomputed list (or its absence) is reused from
    /// process memory before Redis is asked again, in milliseconds (0: always
    /// ask). When the model loop rewrites an algorithm's lists it says so on
    /// `lists:changed` and the remembered ones are dropped at once, so this is
    /// only the bound for lists changed in Redis by other means; five minutes
    /// rather than one, since every expiry is a Redis round trip on the
    /// request path for a list that has almost always not changed.
    #[arg(long, env = "MARQUEE_LIST_CACHE_TTL_MS", default_value_t = 300_000)]
    pub list_cache_ttl_ms: u64,
    /// Most (algorithm, user) lists kept in that cache (a 50-movie list is about 1 KiB).
    #[arg(long, env = "MARQUEE_LIST_CACHE_CAPACITY", default_value_t = 50_000)]
    pub list_cache_capacity: u64,
    /// Milliseconds between reloads of `hot:movies` into process memory.
    #[arg(long, env = "MARQUEE_HOT_REFRESH_MS", default_value_t = 1000)]
    pub hot_refresh_ms: u64,
    /// Time limit of each dependency probe in `/health/ready`, in milliseconds.
    #[arg(long, env = "MARQUEE_READY_TIMEOUT_MS", default_value_t = 1000)]
    pub ready_timeout_ms: u64,
    /// Run migrations at startup.
    #[arg(long, env = "MARQUEE_MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,
    #[command(flatten)]
    pub stack: StackArgs,
}

impl ApiConfig {
    /// Settings from `MARQUEE_*` env vars with defaults for the rest (tests start from here).
    pub fn local_defaults() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            config: ApiConfig,
        }
        <Only as clap::Parser>::try_parse_from(["api"])
            .map(|o| o.config)
            .unwrap_or_else(|e| panic!("ApiConfig defaults must parse: {e}"))
    }
}
