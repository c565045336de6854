//! `api`: serve Marquee's HTTP API, migrate the stores, or manage API keys.

use anyhow::Context;
use clap::{Parser, Subcommand};
use marquee_api::config::ApiConfig;
use marquee_api::startup::{migrate_with_retry, Application};
use marquee_api::telemetry;
use repositories::stores::Stores;

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_tracing();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = Application::build(cli.config).await?;
            app.run_until_stopped().await
        }
        Command::Migrate => {
            let stores = Stores::open(&cli.config.stack).context("opening store clients")?;
            migrate_with_retry(&stores).await?;
            println!("migrations applied: postgres, clickhouse, kafka topics, s3 bucket");
            Ok(())
        }
    }
}
