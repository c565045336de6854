//! `worker`: run the event pipeline and periodic jobs, migrate, or train a
//! model: what runs in production. Demo and benchmark tooling is in
//! `marquee-tools` (src/bin/tools.rs).

use anyhow::Context;
use clap::{Parser, Subcommand};
use marquee_worker::config::WorkerConfig;
use marquee_worker::startup::{command_stores, wait_for_dependencies, Worker};
use repositories::runtime::{self, migrate_with_retry};
use repositories::stores::Stores;

#[derive(Parser)]
#[command(
    name = "worker",
    version,
    about = "Marquee's worker: event pipeline, reweighting, caches"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: WorkerConfig,
}

#[derive(Subcommand)]
enum Command {
    /// Consume events and run the periodic jobs until SIGTERM (the default).
    Run,
    /// Apply PostgreSQL and ClickHouse migrations, create Kafka topics and the S3 bucket, then exit.
    Migrate,
    /// Fit, evaluate, store in S3, register and (unless --no-activate) activate a model.
    Train(marquee_worker::train::TrainArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    runtime::init_tracing();
    let limit = std::time::Duration::from_secs(cli.config.startup_timeout_s);
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let worker = Worker::build(cli.config).await?;
            worker.run_until_stopped().await
        }
        Command::Migrate => {
            let stores = Stores::open(&cli.config.stack).context("opening store clients")?;
            migrate_with_retry(&stores, limit)
                .await
                .context("migrating stores")?;
            wait_for_dependencies(&stores, limit).await?;
            println!("migrations applied: postgres, clickhouse, kafka topics, s3 bucket");
            Ok(())
        }
        Command::Train(args) => {
            let stores = command_stores(&cli.config).await?;
            let started = std::time::Instant::now();
            let outcome = marquee_worker::train::train(&stores, &args, &|line| {
                println!("[{:>6.1}s] {line}", started.elapsed().as_secs_f64())
            })
            .await?;
            println!(
                "trained {} {} in {:.1}s (load {:.1}s, hold-out fit {:.2}s, final fit {:.2}s); metrics: {}",
                outcome.manifest.algorithm,
                outcome.manifest.version,
                started.elapsed().as_secs_f64(),
                outcome.load_seconds,
                outcome.eval_fit_seconds,
                outcome.fit_seconds,
                serde_json::to_string(&outcome.manifest.metrics)?,
            );
            Ok(())
        }
    }
}
