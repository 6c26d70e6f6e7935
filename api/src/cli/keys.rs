//! `tidemark keys ...`: API keys, stored as blake3 hashes; a new key is printed once.

use crate::auth::{self, Role};
use anyhow::bail;
use clap::Subcommand;
use tidemark_store::EventStore;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it once (only its hash is stored).
    Create {
        /// read (queries, subscriptions), append (also appends and commands) or admin
        /// (also rebuilds, replays).
        #[arg(long, value_enum)]
        role: Role,
        /// A label to recognise the key by.
        #[arg(long, default_value = "unnamed")]
        name: String,
    },
    /// List keys (ids, names, roles; never the keys).
    List,
    /// Revoke a key by id; servers stop accepting it within a few seconds.
    Revoke { id: String },
}

pub async fn run(command: KeysCommand, store: EventStore) -> anyhow::Result<()> {
    let pool = store.pool();
    match command {
        KeysCommand::Create { role, name } => {
            let (record, key) = auth::create_key(pool, &name, role).await?;
            eprintln!(
                "created {} '{}' with role {}; store the key now, it cannot be shown again:",
                record.id, record.name, record.role
            );
            println!("{key}");
        }
        KeysCommand::List => {
            let keys = auth::list_keys(pool).await?;
            if keys.is_empty() {
                println!("no API keys; create one with `tidemark keys create --role admin`");
            }
            for k in keys {
                println!(
                    "{:<14} {:<7} {:<24} created {}{}",
                    k.id,
                    k.role,
                    k.name,
                    k.created_at.format("%Y-%m-%d %H:%M:%S"),
                    k.revoked_at
                        .map(|at| format!(", revoked {}", at.format("%Y-%m-%d %H:%M:%S")))
                        .unwrap_or_default()
                );
            }
        }
        KeysCommand::Revoke { id } => {
            if !auth::revoke_key(pool, &id).await? {
                bail!("no active key with id '{id}' (see `tidemark keys list`)");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}
