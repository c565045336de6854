//! API keys and roles: extractors that let a handler state who may call it.
//!
//! A key arrives as `x-api-key`, `Authorization: Bearer …`, or (for the
//! dashboard) the `marquee_key` cookie. Lookups are cached in process for a
//! short time so the recommendations hot path does not query PostgreSQL on
//! every request; a revoked key stops working within that time.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use repositories::postgres::api_keys::{self, Role, StoredKey};

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
}

impl KeyCache {
    /// An empty cache trusting lookups for `ttl`; `bootstrap_admin_key`
    /// (empty: none) is always an admin.
    pub fn new(bootstrap_admin_key: &str, ttl: Duration) -> Self {
        Self {
            entries: Default::default(),
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

fn presented_key(parts: &Parts) -> Option<String> {
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
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix("marquee_key="))
        .map(percent_decode)
        .next()
}

/// The dashboard writes the cookie with `encodeURIComponent`; keys are ASCII,
/// so decoding `%XX` is all that is needed (no crate for eight lines).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
    if state.keys.is_bootstrap(&digest) {
        return Ok(Caller { role: Role::Admin });
    }
    let stored = match state.keys.get(&digest) {
        Some(cached) => cached,
        None => {
            let limit = Duration::from_millis(state.config.serving_timeout_ms.max(1) * 4);
            match tokio::time::timeout(limit, api_keys::find(&state.stores.pg, &key)).await {
                Ok(Ok(found)) => {
                    state.keys.put(digest, found);
                    found
                }
                Ok(Err(e)) => match state.keys.get_stale_valid(&digest) {
                    Some(known) => Some(known),
                    None => return Err(e.into()),
                },
                Err(_) => match state.keys.get_stale_valid(&digest) {
                    Some(known) => Some(known),
                    None => return Err(ApiError::Unavailable("postgres (api key lookup)".into())),
                },
            }
        }
    };
    stored
        .map(|k| Caller { role: k.role })
        .ok_or(ApiError::Unauthorized)
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

    #[test]
    fn decodes_percent_escapes_of_cookie_values() {
        assert_eq!(percent_decode("mq_admin_ab%2Bc"), "mq_admin_ab+c");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("trailing%2"), "trailing%2");
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
