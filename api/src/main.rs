//! `api`: serve Marquee's HTTP API, migrate the stores, or manage API keys.

use anyhow::Context;
use clap::{Parser, Subcommand};
use marquee_api::config::ApiConfig;
use marquee_api::startup::{Application, MIGRATE_LIMIT};
use repositories::postgres::api_keys::Role;
use repositories::runtime::{self, migrate_with_retry};
use repositories::stores::Stores;
use uuid::Uuid;

#[derive(Parser)]
#[command(name = "api", version, about = "Marquee's HTTP API")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: ApiConfig,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP (the default).
    Serve,
    /// Apply PostgreSQL and ClickHouse migrations, create Kafka topics and the S3 bucket, then exit.
    Migrate,
    /// Create or revoke API keys (stored as hashes in PostgreSQL).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it once; the last line of output is the key alone.
    Create {
        /// client (recommendations, events), analyst (results) or admin (everything).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// A label for whoever holds the key.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Revoke a key by id; the api stops accepting it within its key-cache lifetime (MARQUEE_KEY_CACHE_TTL_MS, 30 s).
    Revoke {
        /// The id printed by `keys create`.
        id: Uuid,
    },
}

fn parse_role(value: &str) -> Result<Role, String> {
    Role::parse(value)
        .ok_or_else(|| format!("unknown role {value:?}: use client, analyst or admin"))
}

/// mimalloc instead of glibc's malloc: the request path allocates many small,
/// short-lived buffers from two threads, where glibc's arenas showed up as an
/// eighth of the api's CPU profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    runtime::init_tracing();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = Application::build(cli.config).await?;
            app.run_until_stopped().await
        }
        Command::Migrate => {
            let stores = Stores::open(&cli.config.stack).context("opening store clients")?;
            migrate_with_retry(&stores, MIGRATE_LIMIT)
                .await
                .context("migrating stores")?;
            println!("migrations applied: postgres, clickhouse, kafka topics, s3 bucket");
            Ok(())
        }
        Command::Keys { command } => {
            let stores = Stores::open(&cli.config.stack).context("opening store clients")?;
            // Keys may be made before the api first starts (scripts do), so
            // bring the schema up to date first; idempotent.
            stores
                .migrate_postgres()
                .await
                .context("migrating PostgreSQL")?;
            match command {
                KeysCommand::Create { role, name } => {
                    let (id, key) = stores
                        .api_keys
                        .create(role, &name)
                        .await
                        .context("creating the key")?;
                    println!(
                        "created {} key {id} (name {name:?}); it is shown only now:",
                        role.as_str()
                    );
                    println!("{key}");
                }
                KeysCommand::Revoke { id } => {
                    let hash = stores
                        .api_keys
                        .revoke(id)
                        .await
                        .with_context(|| format!("revoking key {id}"))?;
                    println!("revoked key {id}");
                    // Running replicas refuse it at once when they hear this;
                    // without Redis, within their key-cache lifetime.
                    if let Err(e) = stores.redis.publish_key_revoked(&hash).await {
                        eprintln!("could not tell running api replicas ({e}); they refuse the key within MARQUEE_KEY_CACHE_TTL_MS");
                    }
                }
            }
            Ok(())
        }
    }
}
