//! Redis: the serving cache (recommendation lists, hot movies, weights, dedup keys).
//!
//! Everything stored here can be rebuilt from PostgreSQL, ClickHouse and S3.

use deadpool_redis::redis::AsyncCommands;
use deadpool_redis::{Config, Connection, Pool, Runtime};

use crate::{RepoError, RepoResult};

/// How to reach Redis, and the prefix that keeps this deployment's keys apart
/// (tests use a fresh prefix each so they can share one server).
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub namespace: String,
    pub pool_size: usize,
    pub timeout: std::time::Duration,
}

/// The names of every key Marquee uses, in one place.
#[derive(Debug, Clone)]
pub struct Keys {
    namespace: String,
}

impl Keys {
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
        }
    }

    /// A user's precomputed list for one algorithm.
    pub fn recs(&self, algorithm: &str, user_id: &str) -> String {
        format!("{}recs:{algorithm}:{user_id}", self.namespace)
    }

    /// Sorted set of currently popular movies (score = recent interactions).
    pub fn hot_movies(&self) -> String {
        format!("{}hot:movies", self.namespace)
    }

    /// Current weights of an experiment's arms, as JSON.
    pub fn weights(&self, experiment: &str) -> String {
        format!("{}weights:{experiment}", self.namespace)
    }

    /// Pub/sub channel that tells api replicas to reload weights.
    pub fn weights_channel(&self) -> String {
        format!("{}weights:changed", self.namespace)
    }

    /// Pub/sub channel that tells api replicas an algorithm's lists were
    /// rewritten (the message names the algorithm), so they drop cached ones.
    pub fn lists_channel(&self) -> String {
        format!("{}lists:changed", self.namespace)
    }

    /// Pub/sub channel that tells api replicas a key was revoked (the
    /// message is the key's stored hash), so they refuse it at once rather
    /// than when their cached lookup expires.
    pub fn keys_channel(&self) -> String {
        format!("{}keys:revoked", self.namespace)
    }

    /// Fast-path marker that an event was already processed.
    pub fn dedup(&self, event_id: &str) -> String {
        format!("{}dedup:{event_id}", self.namespace)
    }

    /// Digest of the content an event id was first accepted with.
    pub fn fingerprint(&self, event_id: &str) -> String {
        format!("{}fp:{event_id}", self.namespace)
    }

    /// Attribution of a served list, for the clicks that follow it.
    pub fn attribution(&self, request_id: &str) -> String {
        format!("{}attr:{request_id}", self.namespace)
    }

    /// Movies most like `movie` by `algorithm`'s active model.
    pub fn similar(&self, algorithm: &str, movie: i64) -> String {
        format!("{}similar:{algorithm}:{movie}", self.namespace)
    }

    /// Model version a precomputed list family came from.
    pub fn recs_version(&self, algorithm: &str) -> String {
        format!("{}recs-version:{algorithm}", self.namespace)
    }
}

/// A connection pool plus the key names.
#[derive(Clone)]
pub struct RedisStore {
    pool: Pool,
    pub keys: Keys,
    timeout: std::time::Duration,
    /// Kept for the dedicated connections pub/sub needs (a pooled one cannot subscribe).
    url: String,
    /// One multiplexed connection shared by every request of the serving
    /// path: concurrent reads share a socket instead of each checking a
    /// connection out of the pool. Dropped on error and reopened on next use.
    pub(crate) shared:
        std::sync::Arc<std::sync::Mutex<Option<deadpool_redis::redis::aio::MultiplexedConnection>>>,
}

impl RedisStore {
    pub fn new(settings: &RedisSettings) -> RepoResult<Self> {
        let mut config = Config::from_url(settings.url.clone());
        let mut pool_config = deadpool_redis::PoolConfig::new(settings.pool_size);
        pool_config.timeouts.wait = Some(settings.timeout);
        pool_config.timeouts.create = Some(settings.timeout);
        pool_config.timeouts.recycle = Some(settings.timeout);
        config.pool = Some(pool_config);
        let pool = config
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| RepoError::Config(format!("MARQUEE_REDIS_URL: {e}")))?;
        Ok(Self {
            pool,
            keys: Keys::new(settings.namespace.clone()),
            timeout: settings.timeout,
            url: settings.url.clone(),
            shared: Default::default(),
        })
    }

    /// A pooled connection, bounded by the configured timeout.
    pub async fn conn(&self) -> RepoResult<Connection> {
        crate::error::with_timeout("redis connection", self.timeout, self.pool.get()).await
    }

    /// The server's URL, for connections outside the pool.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The per-call time limit callers should apply to commands.
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
    }

    pub async fn ping(&self) -> RepoResult<()> {
        let mut conn = self.conn().await?;
        let fut = async move {
            let pong: String = deadpool_redis::redis::cmd("PING")
                .query_async(&mut conn)
                .await?;
            Ok::<_, RepoError>(pong)
        };
        crate::error::with_timeout("redis ping", self.timeout, fut).await?;
        Ok(())
    }

    /// Plain string SET with an optional expiry in seconds.
    pub async fn set(&self, key: &str, value: &str, ttl_s: Option<u64>) -> RepoResult<()> {
        let mut conn = self.conn().await?;
        let fut = async move {
            match ttl_s {
                Some(ttl) => conn.set_ex::<_, _, ()>(key, value, ttl).await,
                None => conn.set::<_, _, ()>(key, value).await,
            }
        };
        crate::error::with_timeout("redis set", self.timeout, fut).await
    }

    pub async fn get(&self, key: &str) -> RepoResult<Option<String>> {
        let mut conn = self.conn().await?;
        let fut = async move { conn.get::<_, Option<String>>(key).await };
        crate::error::with_timeout("redis get", self.timeout, fut).await
    }
}

/// Precomputed lists per pipeline round trip: a few hundred KB, so one slow
/// chunk never holds the connection past the call timeout.
const RECS_CHUNK: usize = 1_000;

impl RedisStore {
    /// Store precomputed lists `(user_id, json)` of `algorithm` with pipelined
    /// SETs, in chunks; `None` deletes the user's list (the model has no opinion,
    /// so the api falls back rather than serving an older model's list).
    /// Lists of users not named are left as they are (see
    /// [`Self::delete_recs_lists_except`]).
    pub async fn put_recs_lists(
        &self,
        algorithm: &str,
        lists: &[(String, Option<String>)],
    ) -> RepoResult<()> {
        if lists.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        for chunk in lists.chunks(RECS_CHUNK) {
            let mut pipe = deadpool_redis::redis::pipe();
            for (user_id, json) in chunk {
                let key = self.keys.recs(algorithm, user_id);
                match json {
                    Some(json) => pipe.set(key, json).ignore(),
                    None => pipe.del(key).ignore(),
                };
            }
            let fut = pipe.query_async::<()>(&mut conn);
            crate::error::with_timeout("redis recs write", self.timeout, fut).await?;
        }
        Ok(())
    }

    /// Store the "more like this" lists `(movie_id, json)` of `algorithm`,
    /// pipelined in chunks as user lists are. A new model version overwrites
    /// them; a movie the new model does not know keeps its older list until
    /// the next version that does.
    pub async fn put_similar_lists(
        &self,
        algorithm: &str,
        lists: &[(i64, String)],
    ) -> RepoResult<()> {
        let mut conn = self.conn().await?;
        for chunk in lists.chunks(RECS_CHUNK) {
            let mut pipe = deadpool_redis::redis::pipe();
            for (movie, json) in chunk {
                pipe.set(self.keys.similar(algorithm, *movie), json)
                    .ignore();
            }
            let fut = pipe.query_async::<()>(&mut conn);
            crate::error::with_timeout("redis similar write", self.timeout, fut).await?;
        }
        Ok(())
    }

    /// The movies most like `movie` by `algorithm`, if precomputed.
    pub async fn similar_list(
        &self,
        algorithm: &str,
        movie: i64,
    ) -> RepoResult<Option<domain::recommend::PrecomputedList>> {
        let json = self.get(&self.keys.similar(algorithm, movie)).await?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Forget which version `recs:{algorithm}:*` hold, before they are
    /// rewritten: a rewrite that stops half-way (an error, a crash) then
    /// leaves no version claiming lists that mix two, and the next attempt,
    /// or a return to the previous version, writes them all again.
    pub async fn clear_recs_version(&self, algorithm: &str) -> RepoResult<()> {
        let key = self.keys.recs_version(algorithm);
        let mut conn = self.conn().await?;
        let fut = async move { conn.del::<_, ()>(key).await };
        crate::error::with_timeout("redis recs version clear", self.timeout, fut).await
    }

    /// Delete the `recs:{algorithm}:*` lists of users not in `keep` (those a
    /// precompute did not write: users who left the active window), so no
    /// user is served an earlier version's list once the new version is
    /// announced. SCAN, so Redis is never blocked; returns how many went.
    pub async fn delete_recs_lists_except(
        &self,
        algorithm: &str,
        keep: &std::collections::HashSet<String>,
    ) -> RepoResult<usize> {
        let prefix = self.keys.recs(algorithm, "");
        let pattern = format!("{}*", glob_escape(&prefix));
        let mut conn = self.conn().await?;
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let mut scan = deadpool_redis::redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(RECS_CHUNK);
            let fut = scan.query_async::<(u64, Vec<String>)>(&mut conn);
            let (next, keys) =
                crate::error::with_timeout("redis recs scan", self.timeout, fut).await?;
            let stale: Vec<&String> = keys
                .iter()
                .filter(|key| {
                    key.strip_prefix(&prefix)
                        .is_some_and(|user| !keep.contains(user))
                })
                .collect();
            if !stale.is_empty() {
                let mut unlink = deadpool_redis::redis::cmd("UNLINK");
                unlink.arg(&stale);
                let fut = unlink.query_async::<usize>(&mut conn);
                deleted +=
                    crate::error::with_timeout("redis recs delete", self.timeout, fut).await?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// The model version whose lists `recs:{algorithm}:*` were last completed.
    pub async fn recs_version(&self, algorithm: &str) -> RepoResult<Option<String>> {
        self.get(&self.keys.recs_version(algorithm)).await
    }

    /// Record that every list of `algorithm` now comes from `version`, and
    /// tell the api replicas (`lists:changed`) so they stop serving the
    /// lists they cached before.
    pub async fn set_recs_version(&self, algorithm: &str, version: &str) -> RepoResult<()> {
        self.set_and_publish(
            "redis recs version",
            &self.keys.recs_version(algorithm),
            version,
            &self.keys.lists_channel(),
            algorithm,
        )
        .await
    }

    /// Tell every api replica that the key with this stored hash is revoked.
    pub async fn publish_key_revoked(&self, hash: &str) -> RepoResult<()> {
        let mut conn = self.conn().await?;
        let channel = self.keys.keys_channel();
        let mut cmd = deadpool_redis::redis::cmd("PUBLISH");
        cmd.arg(&channel).arg(hash);
        let fut = cmd.query_async::<i64>(&mut conn);
        crate::error::with_timeout("redis publish revoked key", self.timeout, fut)
            .await
            .map(|_| ())
    }

    /// SET `key` and PUBLISH `message` on `channel` in one MULTI, so a
    /// subscriber that hears the message reads the new value.
    pub async fn set_and_publish(
        &self,
        what: &'static str,
        key: &str,
        value: &str,
        channel: &str,
        message: &str,
    ) -> RepoResult<()> {
        let mut conn = self.conn().await?;
        let mut pipe = deadpool_redis::redis::pipe();
        pipe.atomic()
            .set(key, value)
            .ignore()
            .publish(channel, message)
            .ignore();
        let fut = pipe.query_async::<()>(&mut conn);
        crate::error::with_timeout(what, self.timeout, fut).await
    }
}

impl RedisStore {
    /// Record the content fingerprint of each `(event_id, fingerprint)` for
    /// `ttl_s` seconds unless its id already has one; answers, per event,
    /// the fingerprint it was first accepted with (`None`: first seen now).
    /// One pipelined `SET NX GET` per event, one round trip (Redis ≥ 7.0).
    pub async fn claim_fingerprints(
        &self,
        claims: &[(domain::ids::EventId, String)],
        ttl_s: u64,
    ) -> RepoResult<Vec<Option<String>>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        let mut pipe = deadpool_redis::redis::pipe();
        for (id, fingerprint) in claims {
            pipe.cmd("SET")
                .arg(self.keys.fingerprint(&id.to_string()))
                .arg(fingerprint)
                .arg("NX")
                .arg("GET")
                .arg("EX")
                .arg(ttl_s.max(1));
        }
        let fut = pipe.query_async::<Vec<Option<String>>>(&mut conn);
        crate::error::with_timeout("redis event fingerprints", self.timeout, fut).await
    }
}

/// `text` as a SCAN/KEYS pattern that matches only itself.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
