//! API keys: only a SHA-256 of each key is stored, so a leaked table leaks no key.

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::Db;
use crate::{RepoError, RepoResult};

/// What a key may do. `admin` may do everything; `analyst` reads results;
/// `client` asks for recommendations and sends events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Client,
    Analyst,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Analyst => "analyst",
            Self::Admin => "admin",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "client" => Some(Self::Client),
            "analyst" => Some(Self::Analyst),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// A key as it is looked up: its id and role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredKey {
    pub id: Uuid,
    pub role: Role,
}

/// The stored form of a key.
pub fn hash_key(key: &str) -> String {
    hex::encode(key_digest(key))
}

/// The SHA-256 digest [`hash_key`] spells in hex: what the api's key cache
/// compares, so a request does not format 64 hex digits.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A fresh random key with a readable prefix naming its role (`mq_client_…`).
pub fn generate_key(role: Role) -> String {
    format!(
        "mq_{}_{}",
        role.as_str(),
        Uuid::new_v4().simple().to_string() + &Uuid::new_v4().simple().to_string()[..16]
    )
}

/// Store a new key and return it in clear text: the only time it is visible.
async fn create(pool: &PgPool, role: Role, name: &str) -> RepoResult<(Uuid, String)> {
    let key = generate_key(role);
    let id = Uuid::new_v4();
    sqlx::query("INSERT INTO api_keys (id, hash, role, name) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(hash_key(&key))
        .bind(role.as_str())
        .bind(name)
        .execute(pool)
        .await?;
    Ok((id, key))
}

/// The unrevoked key with this clear text, if any.
async fn find(pool: &PgPool, key: &str) -> RepoResult<Option<StoredKey>> {
    let row: Option<(Uuid, String)> =
        sqlx::query_as("SELECT id, role FROM api_keys WHERE hash = $1 AND revoked_at IS NULL")
            .bind(hash_key(key))
            .fetch_optional(pool)
            .await?;
    row.map(|(id, role)| {
        Role::parse(&role)
            .map(|role| StoredKey { id, role })
            .ok_or_else(|| RepoError::Corrupt(format!("api key {id} has unknown role {role}")))
    })
    .transpose()
}

/// Whether any admin key is in force: the bootstrap admin key retires once one is.
async fn admin_key_exists(pool: &PgPool) -> RepoResult<bool> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL)",
    )
    .fetch_one(pool)
    .await?;
    Ok(exists)
}

/// Revoke a key by id, returning its stored hash (what the api replicas are
/// told, so they refuse it at once).
async fn revoke(pool: &PgPool, id: Uuid) -> RepoResult<String> {
    let hash: Option<String> = sqlx::query_scalar(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING hash",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    hash.ok_or_else(|| RepoError::NotFound(format!("api key {id}")))
}

/// Client, analyst and admin keys.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    db: Db,
}

impl ApiKeys {
    pub fn new(pool: PgPool, timeout: std::time::Duration) -> Self {
        Self {
            db: Db::new(pool, timeout),
        }
    }

    /// The same keys with another bound per call: key lookups sit on every
    /// request's path and must give up sooner than admin writes.
    pub fn bounded_by(&self, timeout: std::time::Duration) -> Self {
        Self {
            db: Db::new(self.db.pool.clone(), timeout),
        }
    }

    /// A new key of `role`: its id and the key itself, shown once.
    pub async fn create(&self, role: Role, name: &str) -> RepoResult<(Uuid, String)> {
        self.db
            .bounded("postgres create api key", create(&self.db.pool, role, name))
            .await
    }

    pub async fn find(&self, key: &str) -> RepoResult<Option<StoredKey>> {
        self.db
            .bounded("postgres find api key", find(&self.db.pool, key))
            .await
    }

    pub async fn admin_key_exists(&self) -> RepoResult<bool> {
        self.db
            .bounded("postgres admin key exists", admin_key_exists(&self.db.pool))
            .await
    }

    /// Revoke key `id`; answers its hash, which replicas evict from their caches.
    pub async fn revoke(&self, id: Uuid) -> RepoResult<String> {
        self.db
            .bounded("postgres revoke api key", revoke(&self.db.pool, id))
            .await
    }
}
