//! `marquee-tools`: demo and benchmark tooling the scripts call, kept out of
//! the production `worker` binary: a synthetic world, a MovieLens import,
//! simulated traffic, and raw Kafka produce/consume rates.

use clap::{Parser, Subcommand};
use marquee_worker::bench;
use marquee_worker::config::WorkerConfig;
use marquee_worker::startup::command_stores;
use repositories::runtime;

#[derive(Parser)]
#[command(
    name = "marquee-tools",
    version,
    about = "Marquee's demo and benchmark tools: seed, import, simulate, bench"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    config: WorkerConfig,
}

#[derive(Subcommand)]
enum Command {
    /// Produce synthetic valid events to the events topic (benchmark input).
    BenchProduce {
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Simulate users who ask for recommendations and click by hidden taste (the demo's traffic).
    Simulate(marquee_worker::simulate::SimulateArgs),
    /// Read the events topic from the start with a plain consumer and report its rate.
    BenchConsume {
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
    },
    /// Write a deterministic synthetic catalog and view/like history (PostgreSQL and ClickHouse).
    Seed(marquee_worker::seed::SeedArgs),
    /// Load a MovieLens directory (movies.csv + ratings.csv, or ml-100k's u.item + u.data).
    ImportMovielens {
        /// Directory holding the unpacked dataset.
        dir: std::path::PathBuf,
    },
}

fn print_load(
    what: &str,
    summary: &marquee_worker::seed::LoadSummary,
    started: std::time::Instant,
) {
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{what}: {} interactions in {seconds:.1}s ({:.0}/s); new: {} movies, {} users, {} views+likes in postgres, {} events in clickhouse ({} chunks already there)",
        summary.interactions,
        summary.interactions as f64 / seconds.max(1e-9),
        summary.movies,
        summary.users,
        summary.history_written,
        summary.events_written,
        summary.chunks_skipped,
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    runtime::init_tracing();
    match cli.command {
        Command::BenchProduce { count, seed } => {
            let kafka = cli.config.stack.kafka();
            let seconds =
                tokio::task::spawn_blocking(move || bench::produce(&kafka, count, seed)).await??;
            println!(
                "{{\"produced\":{count},\"seconds\":{seconds:.3},\"rate\":{:.0}}}",
                count as f64 / seconds.max(1e-9)
            );
            Ok(())
        }
        Command::Simulate(args) => {
            let summary = marquee_worker::simulate::run(args, cli.config.stack.kafka()).await?;
            println!(
                "simulated {} requests ({} failed); clicks sent: {} via POST /v1/events, {} straight to Kafka",
                summary.requests, summary.failed_requests, summary.clicks_via_api, summary.clicks_via_kafka
            );
            println!(
                "{:<12}{:>10}{:>13}{:>9}{:>9}",
                "arm", "requests", "items shown", "clicks", "CTR/item"
            );
            for (arm, tally) in &summary.per_arm {
                let ctr = tally.clicks as f64 / tally.impressions.max(1) as f64;
                println!(
                    "{arm:<12}{:>10}{:>13}{:>9}{:>8.2}%",
                    tally.requests,
                    tally.impressions,
                    tally.clicks,
                    100.0 * ctr
                );
            }
            Ok(())
        }
        Command::Seed(args) => {
            let stores = command_stores(&cli.config).await?;
            let started = std::time::Instant::now();
            let summary = marquee_worker::seed::seed(&stores, args.size, args.seed, true).await?;
            print_load(
                &format!("seeded {:?} (seed {})", args.size, args.seed),
                &summary,
                started,
            );
            Ok(())
        }
        Command::ImportMovielens { dir } => {
            let stores = command_stores(&cli.config).await?;
            let started = std::time::Instant::now();
            let summary = marquee_worker::seed::import_movielens(&stores, &dir, true).await?;
            print_load(&format!("imported {}", dir.display()), &summary, started);
            Ok(())
        }
        Command::BenchConsume { count } => {
            let kafka = cli.config.stack.kafka();
            let (seen, seconds) =
                tokio::task::spawn_blocking(move || bench::consume_raw(&kafka, count)).await??;
            println!(
                "{{\"consumed\":{seen},\"seconds\":{seconds:.3},\"rate\":{:.0}}}",
                seen as f64 / seconds.max(1e-9)
            );
            Ok(())
        }
    }
}
