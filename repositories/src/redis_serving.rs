//! Redis reads of the recommendations path: every candidate list in one
//! pipelined round trip, and the weights-changed subscription.

use deadpool_redis::redis;
use domain::ids::MovieId;
use domain::recommend::{PrecomputedList, ScoredItem};
use futures::{Stream, StreamExt};

use crate::error::with_timeout;
use crate::redis::RedisStore;
use crate::{RepoError, RepoResult};

impl RedisStore {
    /// A client for connections outside the pool (pub/sub, the shared one).
    fn client(&self) -> RepoResult<redis::Client> {
        redis::Client::open(self.url())
            .map_err(|e| RepoError::Config(format!("MARQUEE_REDIS_URL: {e}")))
    }

    /// The shared multiplexed connection, opened on first use (bounded by the call timeout).
    async fn shared_conn(&self) -> RepoResult<redis::aio::MultiplexedConnection> {
        if let Some(conn) = self.shared.lock().ok().and_then(|c| c.clone()) {
            return Ok(conn);
        }
        let client = self.client()?;
        let conn = with_timeout(
            "redis connection",
            self.timeout(),
            client.get_multiplexed_async_connection(),
        )
        .await?;
        if let Ok(mut shared) = self.shared.lock() {
            *shared = Some(conn.clone());
        }
        Ok(conn)
    }

    fn drop_shared_conn(&self) {
        if let Ok(mut shared) = self.shared.lock() {
            *shared = None;
        }
    }

    /// The precomputed lists of `user` under each of `algorithms`, in one
    /// round trip; `None` where a list is absent or in a format this build
    /// cannot read (the request then falls back instead of failing).
    pub async fn serving_lists(
        &self,
        algorithms: &[&str],
        user: &str,
    ) -> RepoResult<Vec<Option<PrecomputedList>>> {
        if algorithms.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = algorithms.iter().map(|a| self.keys.recs(a, user)).collect();
        let mut conn = self.shared_conn().await?;
        let mut cmd = redis::cmd("MGET");
        cmd.arg(&keys);
        let fut = cmd.query_async::<Vec<Option<Vec<u8>>>>(&mut conn);
        let values = match with_timeout("redis serving lists", self.timeout(), fut).await {
            Ok(values) => values,
            Err(e) => {
                // A dead socket would fail every later request too: reopen next time.
                self.drop_shared_conn();
                return Err(e);
            }
        };
        Ok(values
            .into_iter()
            .map(|json| json.and_then(|j| serde_json::from_slice::<PrecomputedList>(&j).ok()))
            .collect())
    }

    /// The `limit` hottest movies, hottest first.
    pub async fn hot_movies(&self, limit: usize) -> RepoResult<Vec<ScoredItem>> {
        let mut conn = self.conn().await?;
        let stop = isize::try_from(limit).unwrap_or(isize::MAX) - 1;
        let mut cmd = redis::cmd("ZREVRANGE");
        cmd.arg(self.keys.hot_movies())
            .arg(0)
            .arg(stop)
            .arg("WITHSCORES");
        let fut = cmd.query_async::<Vec<(i64, f64)>>(&mut conn);
        let hot = with_timeout("redis hot movies", self.timeout(), fut).await?;
        Ok(hot
            .into_iter()
            .filter_map(|(m, score)| {
                Some(ScoredItem {
                    movie_id: MovieId::parse(m).ok()?,
                    score: score as f32,
                })
            })
            .collect())
    }

    /// Messages that change what the api serves: new weights (naming an
    /// experiment) and rewritten lists (naming an algorithm). The stream ends
    /// when the connection drops; callers resubscribe.
    pub async fn serving_changes(&self) -> RepoResult<impl Stream<Item = ServingChange>> {
        let client = self.client()?;
        let mut pubsub =
            with_timeout("redis subscribe", self.timeout(), client.get_async_pubsub()).await?;
        let weights = self.keys.weights_channel();
        let lists = self.keys.lists_channel();
        let revoked = self.keys.keys_channel();
        with_timeout(
            "redis subscribe",
            self.timeout(),
            pubsub.subscribe(&[&weights, &lists, &revoked]),
        )
        .await?;
        Ok(pubsub.into_on_message().filter_map(move |msg| {
            let change =
                msg.get_payload::<String>()
                    .ok()
                    .and_then(|name| match msg.get_channel_name() {
                        channel if channel == weights => Some(ServingChange::Weights(name)),
                        channel if channel == lists => Some(ServingChange::Lists(name)),
                        channel if channel == revoked => Some(ServingChange::KeyRevoked(name)),
                        _ => None,
                    });
            async move { change }
        }))
    }
}

/// A pub/sub message the api acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServingChange {
    /// An experiment's weights changed: reload experiments.
    Weights(String),
    /// An algorithm's precomputed lists were rewritten: drop cached ones.
    Lists(String),
    /// An API key was revoked (its stored hash, hex): refuse it at once.
    KeyRevoked(String),
}
