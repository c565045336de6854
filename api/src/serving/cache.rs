//! The per-user caches of the recommendations path: a sharded map with an
//! age limit per entry, looked up without allocating.
//!
//! Each entry lives a random 80–100% of the lifetime: entries filled together
//! (a replica's first seconds, a burst of new users) then do not all expire in
//! the same instant and send their misses to PostgreSQL or Redis at once.
//!
//! quick_cache rather than moka (used before): moka's `get` records every
//! read in a channel and runs housekeeping inline, which took about a tenth
//! of the api's CPU on this route; quick_cache's hit path is a shard read
//! lock and an atomic bit. quick_cache has no time-to-live, so each value
//! carries its insertion time and an entry older than the lifetime reads as
//! absent (it is overwritten on the next insert, and the capacity bounds
//! memory meanwhile).

use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use quick_cache::Equivalent;

/// A bounded map whose entries expire 80–100% of `ttl` after insertion.
pub struct ExpiringCache<K, V> {
    /// Each value with the instant it stops being served.
    entries: quick_cache::sync::Cache<K, (Instant, V)>,
    ttl: Duration,
}

/// The shortest lifetime an entry gets, as a share of the configured one.
const MIN_LIFETIME_SHARE: f64 = 0.8;

impl<K: Eq + Hash, V: Clone> ExpiringCache<K, V> {
    /// `None` for a zero lifetime: the cache is off.
    pub fn new(ttl: Duration, capacity: u64) -> Option<Self> {
        (!ttl.is_zero()).then(|| Self {
            entries: quick_cache::sync::Cache::new(
                usize::try_from(capacity.max(1)).unwrap_or(usize::MAX),
            ),
            ttl,
        })
    }

    /// The value, if present and not yet expired.
    pub fn get<Q: Hash + Equivalent<K> + ?Sized>(&self, key: &Q) -> Option<V> {
        let (expires, value) = self.entries.get(key)?;
        (Instant::now() < expires).then_some(value)
    }

    pub fn remove<Q: Hash + Equivalent<K> + ?Sized>(&self, key: &Q) {
        self.entries.remove(key);
    }

    pub fn insert(&self, key: K, value: V) {
        let share = rand::random_range(MIN_LIFETIME_SHARE..=1.0);
        let expires = Instant::now() + self.ttl.mul_f64(share);
        self.entries.insert(key, (expires, value));
    }
}

impl<V: Clone> ExpiringCache<UserKey, V> {
    /// Drop every entry whose scope is `scope`.
    pub fn remove_scope(&self, scope: &str) {
        self.entries
            .retain(|key, _| key.scope.as_deref() != Some(scope));
    }

    pub fn clear(&self) {
        self.entries.clear();
    }
}

/// Key of a per-user entry: a scope (the experiment or the algorithm, if any)
/// and the user. Hashes exactly like its borrowed form [`UserKeyRef`], so a
/// lookup needs no owned strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKey {
    scope: Option<String>,
    user: String,
}

impl UserKey {
    pub fn new(scope: Option<&str>, user: &str) -> Self {
        Self {
            scope: scope.map(str::to_owned),
            user: user.to_owned(),
        }
    }
}

impl Hash for UserKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        UserKeyRef::new(self.scope.as_deref(), &self.user).hash(state);
    }
}

/// A [`UserKey`] borrowed from the request.
#[derive(Debug, Clone, Copy, Hash)]
pub struct UserKeyRef<'a> {
    scope: Option<&'a str>,
    user: &'a str,
}

impl<'a> UserKeyRef<'a> {
    pub fn new(scope: Option<&'a str>, user: &'a str) -> Self {
        Self { scope, user }
    }
}

impl Equivalent<UserKey> for UserKeyRef<'_> {
    fn equivalent(&self, key: &UserKey) -> bool {
        self.user == key.user && self.scope == key.scope.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_borrowed_key_finds_what_its_owned_form_stored() {
        let cache = ExpiringCache::new(Duration::from_secs(60), 100).unwrap();
        cache.insert(UserKey::new(Some("home"), "u1"), 1);
        cache.insert(UserKey::new(None, "u1"), 2);
        assert_eq!(cache.get(&UserKeyRef::new(Some("home"), "u1")), Some(1));
        assert_eq!(cache.get(&UserKeyRef::new(None, "u1")), Some(2));
        assert_eq!(cache.get(&UserKeyRef::new(Some("home"), "u2")), None);
        assert_eq!(cache.get(&UserKeyRef::new(Some("hom"), "eu1")), None);
    }

    #[test]
    fn entries_expire_after_their_lifetime() {
        let cache = ExpiringCache::new(Duration::from_millis(50), 100).unwrap();
        cache.insert(UserKey::new(None, "u1"), 1);
        assert_eq!(cache.get(&UserKeyRef::new(None, "u1")), Some(1));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get(&UserKeyRef::new(None, "u1")), None);
        cache.insert(UserKey::new(None, "u1"), 3);
        assert_eq!(cache.get(&UserKeyRef::new(None, "u1")), Some(3));
    }

    #[test]
    fn removing_a_scope_keeps_the_others() {
        let cache = ExpiringCache::new(Duration::from_secs(60), 100).unwrap();
        cache.insert(UserKey::new(Some("als"), "u1"), 1);
        cache.insert(UserKey::new(Some("als"), "u2"), 2);
        cache.insert(UserKey::new(Some("popularity"), "u1"), 3);
        cache.remove_scope("als");
        assert_eq!(cache.get(&UserKeyRef::new(Some("als"), "u1")), None);
        assert_eq!(cache.get(&UserKeyRef::new(Some("als"), "u2")), None);
        assert_eq!(
            cache.get(&UserKeyRef::new(Some("popularity"), "u1")),
            Some(3)
        );
        cache.clear();
        assert_eq!(cache.get(&UserKeyRef::new(Some("popularity"), "u1")), None);
    }

    #[test]
    fn a_zero_lifetime_turns_the_cache_off() {
        assert!(ExpiringCache::<UserKey, u8>::new(Duration::ZERO, 100).is_none());
    }
}
