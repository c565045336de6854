//! API keys and roles: extractors that let a handler state who may call it.
//!
//! A key arrives as `x-api-key`, `Authorization: Bearer …`, or (for the
//! dashboard) the `marquee_key` cookie. Lookups are cached in process for a
//! short time so the recommendations hot path does not query PostgreSQL on
//! every request; a revoked key stops working within that time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use repositories::postgres::api_keys::{self, ApiKeys, Role, StoredKey};
use repositories::RepoError;

use crate::error::ApiError;
use crate::state::AppState;

/// Bound on cached lookups, so random keys from an attacker cannot grow memory without end.
const KEY_CACHE_MAX: usize = 10_000;

/// One cached lookup: the key found (None: known to be invalid) and when.
type CachedLookup = (Option<StoredKey>, Instant);

/// A key's SHA-256 digest: what is cached and compared, never the key itself.
type KeyDigest = [u8; 32];

/// Cache of key digest → lookup result, plus the bootstrap admin key's digest.
#[derive(Clone, Default)]
pub struct KeyCache {
    entries: Arc<RwLock<HashMap<KeyDigest, CachedLookup>>>,
    /// Hashed once at startup, so a request hashes its key once in all.
    bootstrap_digest: Option<KeyDigest>,
    /// How long a looked-up key (or its absence) is trusted without asking PostgreSQL again.
    ttl: Duration,
    /// Whether an admin key exists (which retires the bootstrap key), and when that was asked.
    admin_exists: Arc<RwLock<Option<(bool, Instant)>>>,
}

impl KeyCache {
    /// An empty cache trusting lookups for `ttl`; `bootstrap_admin_key`
    /// (empty: none) is an admin until an admin key exists in PostgreSQL.
    pub fn new(bootstrap_admin_key: &str, ttl: Duration) -> Self {
        Self {
            entries: Default::default(),
            admin_exists: Default::default(),
            ttl,
            bootstrap_digest: (!bootstrap_admin_key.is_empty())
                .then(|| api_keys::key_digest(bootstrap_admin_key)),
        }
    }

    fn is_bootstrap(&self, digest: &KeyDigest) -> bool {
        self.bootstrap_digest
            .as_ref()
            .is_some_and(|bootstrap| same_digest(digest, bootstrap))
    }

    /// Refuse the key whose stored hash (hex) is `hash` from now on, here:
    /// a revocation heard on `keys:revoked`. Unlike an expired lookup, it is
    /// not trusted while PostgreSQL is down either.
    pub fn revoke_hash(&self, hash: &str) {
        let mut digest = [0u8; 32];
        if hex::decode_to_slice(hash, &mut digest).is_ok() {
            self.put(digest, None);
        }
    }

    /// Treat every cached lookup as expired: a revocation may have been
    /// missed while the subscription was down. Kept, not dropped, so a key
    /// seen valid still works while PostgreSQL cannot answer.
    pub fn expire_all(&self) {
        let Some(long_ago) = Instant::now().checked_sub(self.ttl) else {
            return;
        };
        if let Ok(mut entries) = self.entries.write() {
            for (_, at) in entries.values_mut() {
                *at = (*at).min(long_ago);
            }
        }
    }

    /// Whether the bootstrap key has retired: an admin key is in force.
    /// Asked once per cache lifetime; while PostgreSQL cannot answer, the
    /// last answer stands, and with none the bootstrap key works (it is how
    /// an operator gets in to repair things).
    async fn bootstrap_retired(&self, keys: &ApiKeys) -> bool {
        let known = self.admin_exists.read().ok().and_then(|g| *g);
        if let Some((exists, at)) = known {
            if at.elapsed() < self.ttl {
                return exists;
            }
        }
        match keys.admin_key_exists().await {
            Ok(exists) => {
                if let Ok(mut g) = self.admin_exists.write() {
                    *g = Some((exists, Instant::now()));
                }
                exists
            }
            _ => known.is_some_and(|(exists, _)| exists),
        }
    }

    /// A lookup younger than the cache lifetime.
    fn get(&self, digest: &KeyDigest) -> Option<Option<StoredKey>> {
        let entries = self.entries.read().ok()?;
        let (key, at) = entries.get(digest)?;
        (at.elapsed() < self.ttl).then_some(*key)
    }

    /// A valid key seen before, however long ago: used only while PostgreSQL
    /// cannot answer, so an outage does not lock out every known client.
    fn get_stale_valid(&self, digest: &KeyDigest) -> Option<StoredKey> {
        let entries = self.entries.read().ok()?;
        entries.get(digest).and_then(|(key, _)| *key)
    }

    fn put(&self, digest: KeyDigest, key: Option<StoredKey>) {
        if let Ok(mut entries) = self.entries.write() {
            if entries.len() >= KEY_CACHE_MAX {
                // Invalid keys go first: random keys must not evict real clients.
                let ttl = self.ttl;
                entries.retain(|_, (key, at)| key.is_some() && at.elapsed() < ttl);
                if entries.len() >= KEY_CACHE_MAX {
                    entries.clear();
                }
            }
            entries.insert(digest, (key, Instant::now()));
        }
    }
}

/// Who is calling: the role of the presented key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
}

/// The dashboard's session cookie, set by `POST /dashboard/session`.
pub const SESSION_COOKIE: &str = "marquee_session";

/// The key a request presents: a header, or for reads (GET and HEAD) the
/// dashboard's HttpOnly session cookie. A cookie rides along on any request
/// the browser makes to this origin, so it is never taken for a change.
pub(crate) fn presented_key(parts: &Parts) -> Option<String> {
    let headers = &parts.headers;
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_owned());
    }
    if let Some(v) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(token) = v.strip_prefix("Bearer ") {
            return Some(token.trim().to_owned());
        }
    }
    if !matches!(
        parts.method,
        axum::http::Method::GET | axum::http::Method::HEAD
    ) {
        return None;
    }
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == SESSION_COOKIE)
        .map(|c| c.value().to_owned())
}

/// The `Set-Cookie` value of a dashboard session holding `key` (None: the
/// one that ends it). HttpOnly: no script on the page can read the key;
/// SameSite=Strict: no other site's page makes the browser send it.
pub fn session_cookie(key: Option<&str>) -> String {
    let mut c = cookie::Cookie::build((SESSION_COOKIE, key.unwrap_or_default().to_owned()))
        .path("/")
        .http_only(true)
        .same_site(cookie::SameSite::Strict);
    c = match key {
        Some(_) => c.max_age(cookie::time::Duration::days(7)),
        None => c.max_age(cookie::time::Duration::ZERO),
    };
    c.build().to_string()
}

/// Constant-time comparison of two key digests.
fn same_digest(a: &KeyDigest, b: &KeyDigest) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Resolve the presented key to a caller, or 401.
pub async fn authenticate(state: &AppState, parts: &Parts) -> Result<Caller, ApiError> {
    let key = presented_key(parts)
        .filter(|k| !k.is_empty())
        .ok_or(ApiError::Unauthorized)?;
    let digest = api_keys::key_digest(&key);
    // A lookup sits on the request's path: it gives up sooner than admin writes.
    let keys = state.stores.api_keys.bounded_by(Duration::from_millis(
        state.config.serving_timeout_ms.max(1) * 4,
    ));
    if state.keys.is_bootstrap(&digest) {
        if state.keys.bootstrap_retired(&keys).await {
            tracing::warn!(
                "the bootstrap admin key was presented, but an admin key exists: it is retired"
            );
            return Err(ApiError::Unauthorized);
        }
        state
            .limits
            .check_key(&digest)
            .map_err(ApiError::RateLimited)?;
        return Ok(Caller { role: Role::Admin });
    }
    let stored = match state.keys.get(&digest) {
        Some(cached) => cached,
        None => {
            if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
                state
                    .limits
                    .check_lookup(peer.ip())
                    .map_err(ApiError::RateLimited)?;
            }
            match keys.find(&key).await {
                Ok(found) => {
                    state.keys.put(digest, found);
                    found
                }
                Err(e) => match state.keys.get_stale_valid(&digest) {
                    Some(known) => Some(known),
                    None if matches!(e, RepoError::Timeout { .. }) => {
                        return Err(ApiError::Unavailable("postgres (api key lookup)".into()))
                    }
                    None => return Err(e.into()),
                },
            }
        }
    };
    let caller = stored
        .map(|k| Caller { role: k.role })
        .ok_or(ApiError::Unauthorized)?;
    state
        .limits
        .check_key(&digest)
        .map_err(ApiError::RateLimited)?;
    Ok(caller)
}

macro_rules! role_extractor {
    ($(#[$doc:meta])* $name:ident, [$($role:ident),+]) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name(pub Caller);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
                let caller = authenticate(state, parts).await?;
                if matches!(caller.role, $(Role::$role)|+) {
                    Ok(Self(caller))
                } else {
                    Err(ApiError::Forbidden)
                }
            }
        }
    };
}

role_extractor!(
    /// Front-ends: recommendations and events (admins too).
    ClientAccess, [Client, Admin]
);
role_extractor!(
    /// Read-only analysis: results and the dashboard (admins too).
    AnalystAccess, [Analyst, Admin]
);
role_extractor!(
    /// Everything else: catalog, experiments, models, keys.
    AdminAccess, [Admin]
);

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = axum::http::Request::builder().method(method).uri("/v1/x");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_session_cookie_is_read_for_gets_only() {
        let cookie = [("cookie", "theme=dark; marquee_session=mq_analyst_k1")];
        assert_eq!(
            presented_key(&parts("GET", &cookie)).as_deref(),
            Some("mq_analyst_k1")
        );
        assert_eq!(
            presented_key(&parts("HEAD", &cookie)).as_deref(),
            Some("mq_analyst_k1")
        );
        assert_eq!(presented_key(&parts("POST", &cookie)), None);
        assert_eq!(presented_key(&parts("DELETE", &cookie)), None);
        let header = [("x-api-key", " mq_admin_k2 "), cookie[0]];
        assert_eq!(
            presented_key(&parts("POST", &header)).as_deref(),
            Some("mq_admin_k2")
        );
    }

    #[test]
    fn the_session_cookie_is_http_only_and_strict() {
        let set = session_cookie(Some("mq_analyst_k1"));
        for part in [
            "marquee_session=mq_analyst_k1",
            "HttpOnly",
            "SameSite=Strict",
            "Path=/",
            "Max-Age=604800",
        ] {
            assert!(set.contains(part), "{set} lacks {part}");
        }
        assert!(session_cookie(None).contains("Max-Age=0"));
    }

    #[test]
    fn only_the_bootstrap_key_itself_is_the_bootstrap_key() {
        let cache = KeyCache::new("mq_admin_secret", Duration::from_secs(30));
        assert!(cache.is_bootstrap(&api_keys::key_digest("mq_admin_secret")));
        assert!(!cache.is_bootstrap(&api_keys::key_digest("mq_admin_secreT")));
        assert!(!KeyCache::new("", Duration::from_secs(30)).is_bootstrap(&api_keys::key_digest("")));
        assert!(!same_digest(&[0; 32], &[1; 32]));
        assert_eq!(
            hex::encode(api_keys::key_digest("mq_admin_secret")),
            api_keys::hash_key("mq_admin_secret"),
            "the digest is the stored hash, unspelled"
        );
    }
}
