//! Authentication and authorization: API keys with a role (read < append < admin), sent as
//! `Authorization: Bearer <key>` (or, on a WebSocket, in the `connection_init` payload), and
//! checked per GraphQL field by [`RoleGuard`].
//!
//! Keys live hashed (blake3) in the `api_keys` table (created with `tidemark keys create`,
//! which shows the key once) or come from configuration (`TIDEMARK_API_KEYS`). Database
//! lookups are cached for a few seconds, so a revoked key stops working within that time.
//! `--insecure-dev` skips all of this, and is allowed only on a loopback address.

use crate::error::ApiError;
use async_graphql::{Context, Guard};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use rand::RngCore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a key may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Role {
    /// Queries and subscriptions.
    Read,
    /// Also appends and application commands.
    Append,
    /// Also rebuilds, replays and other operations on projections.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Append => "append",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text.trim().to_ascii_lowercase().as_str() {
            "read" => Some(Role::Read),
            "append" => Some(Role::Append),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is calling, attached to every request's GraphQL context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A valid key.
    Key {
        id: String,
        name: String,
        role: Role,
    },
    /// `--insecure-dev`: everything is allowed.
    Open,
    /// No key was sent.
    Anonymous,
    /// A key was sent but refused; the reason is safe to show.
    Invalid(String),
}

impl Principal {
    /// Whether this caller may use a field that needs `role`, as an API error if not.
    pub fn check(&self, role: Role) -> Result<(), ApiError> {
        match self {
            Principal::Open => Ok(()),
            Principal::Key { role: have, .. } if *have >= role => Ok(()),
            Principal::Key { role: have, .. } => Err(ApiError::forbidden(format!(
                "this needs the {role} role; the API key has the {have} role"
            ))
            .with("requiredRole", role.as_str())),
            Principal::Anonymous => Err(ApiError::unauthenticated(
                "no API key: send one as `Authorization: Bearer <key>`",
            )),
            Principal::Invalid(reason) => Err(ApiError::unauthenticated(reason.clone())),
        }
    }

    /// The key id for logs (`-` when none).
    pub fn key_id(&self) -> &str {
        match self {
            Principal::Key { id, .. } => id,
            Principal::Open => "insecure-dev",
            _ => "-",
        }
    }
}

/// A field guard: `#[graphql(guard = "RoleGuard(Role::Append)")]`.
pub struct RoleGuard(pub Role);

impl Guard for RoleGuard {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        let principal = ctx.data_opt::<Principal>().unwrap_or(&Principal::Anonymous);
        principal.check(self.0).map_err(Into::into)
    }
}

/// A key given in configuration: the key itself or its blake3 hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfiguredKey {
    pub role: Role,
    pub hash: [u8; 32],
}

impl ConfiguredKey {
    pub fn new(role: Role, key: &str) -> Self {
        ConfiguredKey {
            role,
            hash: hash_key(key),
        }
    }

    /// Parses `TIDEMARK_API_KEYS`: comma-separated `role:key` or `role:blake3:<64 hex>`
    /// entries. Keys must be at least 16 characters.
    pub fn parse_list(text: &str) -> Result<Vec<ConfiguredKey>, String> {
        text.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .enumerate()
            .map(|(index, entry)| {
                let n = index + 1;
                let (role, rest) = entry.split_once(':').ok_or_else(|| {
                    format!(
                        "API key entry {n} must look like `role:key` (role read, append or admin)"
                    )
                })?;
                let role = Role::parse(role).ok_or_else(|| {
                    format!("API key entry {n} has role '{role}'; use read, append or admin")
                })?;
                if let Some(hex) = rest.strip_prefix("blake3:") {
                    let hash = parse_hex32(hex).ok_or_else(|| {
                        format!("API key entry {n}: a blake3 hash is 64 hexadecimal digits")
                    })?;
                    return Ok(ConfiguredKey { role, hash });
                }
                if rest.chars().count() < 16 {
                    return Err(format!(
                        "API key entry {n} is shorter than 16 characters; use a long random key"
                    ));
                }
                Ok(ConfiguredKey::new(role, rest))
            })
            .collect()
    }
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The hash stored for a key.
pub fn hash_key(key: &str) -> [u8; 32] {
    *blake3::hash(key.as_bytes()).as_bytes()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// How long a database lookup is trusted.
const CACHE_TTL: Duration = Duration::from_secs(5);
/// The cache is cleared rather than grown past this.
const CACHE_MAX: usize = 10_000;

/// Turns `Authorization` headers into principals.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<AuthInner>,
}

struct AuthInner {
    open: bool,
    configured: HashMap<[u8; 32], Role>,
    pool: Option<Pool>,
    cache: Mutex<HashMap<[u8; 32], (Instant, Principal)>>,
}

impl Authenticator {
    /// `open`: every caller is allowed (`--insecure-dev`). `pool`: where `api_keys` lives.
    pub fn new(open: bool, configured: &[ConfiguredKey], pool: Option<Pool>) -> Self {
        Authenticator {
            inner: Arc::new(AuthInner {
                open,
                configured: configured.iter().map(|k| (k.hash, k.role)).collect(),
                pool,
                cache: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The principal for an `Authorization` header value (or `None` when absent).
    pub async fn authenticate(&self, authorization: Option<&str>) -> Principal {
        if self.inner.open {
            return Principal::Open;
        }
        let Some(value) = authorization.map(str::trim).filter(|v| !v.is_empty()) else {
            return Principal::Anonymous;
        };
        let key = match value.split_once(' ') {
            Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => key.trim(),
            _ => {
                return Principal::Invalid(
                    "the Authorization header must be `Bearer <API key>`".into(),
                )
            }
        };
        self.authenticate_key(key).await
    }

    /// The principal for a bare key.
    pub async fn authenticate_key(&self, key: &str) -> Principal {
        if self.inner.open {
            return Principal::Open;
        }
        let hash = hash_key(key);
        if let Some(role) = self.inner.configured.get(&hash) {
            return Principal::Key {
                id: format!("config:{}", &hex(&hash)[..8]),
                name: "configured".into(),
                role: *role,
            };
        }
        if let Some(cached) = self.cached(&hash) {
            return cached;
        }
        let Some(pool) = &self.inner.pool else {
            return unknown_key();
        };
        match lookup(pool, &hash).await {
            Ok(principal) => {
                let principal = principal.unwrap_or_else(unknown_key);
                let mut cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(hash, (Instant::now(), principal.clone()));
                principal
            }
            Err(error) => {
                tracing::warn!(%error, "could not look up an API key");
                Principal::Invalid("the API key could not be checked right now; retry".into())
            }
        }
    }

    fn cached(&self, hash: &[u8; 32]) -> Option<Principal> {
        let cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(hash)
            .filter(|(at, _)| at.elapsed() < CACHE_TTL)
            .map(|(_, p)| p.clone())
    }
}

fn unknown_key() -> Principal {
    Principal::Invalid("the API key is not known or was revoked".into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A stored key as listed (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

async fn lookup(pool: &Pool, hash: &[u8; 32]) -> anyhow::Result<Option<Principal>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT id, name, role FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
            &[&hash.as_slice()],
        )
        .await?;
    Ok(row.map(|r| Principal::Key {
        id: r.get(0),
        name: r.get(1),
        role: Role::parse(r.get::<_, &str>(2)).unwrap_or(Role::Read),
    }))
}

/// Creates a key; returns its record and the key, which is not stored and cannot be shown
/// again.
pub async fn create_key(
    pool: &Pool,
    name: &str,
    role: Role,
) -> anyhow::Result<(ApiKeyRecord, String)> {
    let key = format!("tmk_{}", random_hex(24));
    let id = format!("key_{}", random_hex(4));
    let client = pool.get().await?;
    let row = client
        .query_one(
            "INSERT INTO api_keys (id, name, role, key_hash) VALUES ($1, $2, $3, $4) RETURNING created_at",
            &[&id, &name, &role.as_str(), &hash_key(&key).as_slice()],
        )
        .await?;
    Ok((
        ApiKeyRecord {
            id,
            name: name.to_string(),
            role,
            created_at: row.get(0),
            revoked_at: None,
        },
        key,
    ))
}

/// Every stored key, oldest first.
pub async fn list_keys(pool: &Pool) -> anyhow::Result<Vec<ApiKeyRecord>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT id, name, role, created_at, revoked_at FROM api_keys ORDER BY created_at, id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ApiKeyRecord {
            id: r.get(0),
            name: r.get(1),
            role: Role::parse(r.get::<_, &str>(2)).unwrap_or(Role::Read),
            created_at: r.get(3),
            revoked_at: r.get(4),
        })
        .collect())
}

/// Revokes the key `id`; false when no such active key exists.
pub async fn revoke_key(pool: &Pool, id: &str) -> anyhow::Result<bool> {
    let client = pool.get().await?;
    let n = client
        .execute(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
            &[&id],
        )
        .await?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_keys_parse_with_roles_and_hashes() {
        let hash = hex(&hash_key("0123456789abcdef"));
        let keys =
            ConfiguredKey::parse_list(&format!("admin:0123456789abcdef, read:blake3:{hash}"))
                .unwrap();
        assert_eq!(keys[0], ConfiguredKey::new(Role::Admin, "0123456789abcdef"));
        assert_eq!(keys[1].hash, hash_key("0123456789abcdef"));
        assert!(ConfiguredKey::parse_list("root:0123456789abcdef").is_err());
        assert!(ConfiguredKey::parse_list("read:short").is_err());
        assert!(ConfiguredKey::parse_list("nocolon").is_err());
    }

    #[tokio::test]
    async fn headers_become_principals() {
        let auth = Authenticator::new(
            false,
            &[ConfiguredKey::new(Role::Append, "append-key-0123456789")],
            None,
        );
        assert_eq!(auth.authenticate(None).await, Principal::Anonymous);
        assert!(matches!(
            auth.authenticate(Some("Bearer append-key-0123456789"))
                .await,
            Principal::Key {
                role: Role::Append,
                ..
            }
        ));
        assert!(matches!(
            auth.authenticate(Some("Basic abc")).await,
            Principal::Invalid(_)
        ));
        assert!(matches!(
            auth.authenticate(Some("Bearer wrong")).await,
            Principal::Invalid(_)
        ));
        let key = auth
            .authenticate(Some("bearer append-key-0123456789"))
            .await;
        assert!(key.check(Role::Read).is_ok());
        assert!(key.check(Role::Admin).is_err());
    }
}
