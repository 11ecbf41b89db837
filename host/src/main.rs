//! The `eddy` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use eddy_host::cli::{produce, streams, tail};
use eddy_host::config::{NatsConfig, PipelineConfig};
use eddy_host::metrics::{self, Metrics};
use eddy_host::pipeline::{self, RunOptions};
use eddy_host::transport;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "eddy",
    version,
    about = "Stateful stream processing on NATS with WebAssembly plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a pipeline until SIGINT/SIGTERM.
    Run {
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// Validates a pipeline file and compiles its plugin, without connecting to NATS.
    Check {
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// Creates the JetStream streams a pipeline needs, where missing.
    Streams {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Subjects for the input stream when it must be created (default: input.subjects).
        #[arg(long)]
        input_subject: Vec<String>,
    },
    /// Publishes synthetic card transactions (JSON) to a subject.
    Produce {
        /// Subject to publish to.
        #[arg(long, default_value = "txn.in")]
        subject: String,
        /// How many.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Distinct customers.
        #[arg(long, default_value_t = 100)]
        customers: usize,
        /// Generator seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Repeat an earlier transaction id every N transactions (0: never).
        #[arg(long, default_value_t = 0)]
        duplicate_every: usize,
        /// NATS server.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
    },
    /// Prints messages stored on a subject.
    Tail {
        /// Subject (wildcards allowed).
        subject: String,
        /// At most this many.
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// NATS server.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { pipeline } => {
            let cfg = PipelineConfig::load(&pipeline)?;
            let metrics = Metrics::new(&cfg.pipeline.name);
            let _server = match &cfg.metrics.listen {
                Some(listen) => Some(metrics::serve(listen, metrics.clone()).await?),
                None => None,
            };
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(pipeline::stop_on_signals(tx));
            let summary = pipeline::run(cfg, RunOptions::default(), rx, metrics).await?;
            eprintln!(
                "stopped: {} events in, {} outputs, {} dropped, {} dead-lettered",
                summary.events_in, summary.outputs, summary.dropped, summary.dead_lettered
            );
            Ok(())
        }
        Command::Check { pipeline } => {
            let cfg = PipelineConfig::load(&pipeline)?;
            let metrics = Metrics::new(&cfg.pipeline.name);
            let worker = tokio::task::spawn_blocking(move || {
                pipeline::build_worker(&cfg, &RunOptions::default(), metrics)
            })
            .await??;
            println!(
                "ok: plugin {} (version {}) initialised; state opened",
                worker.plugin().name(),
                worker.plugin().version()
            );
            Ok(())
        }
        Command::Streams {
            pipeline,
            input_subject,
        } => {
            let cfg = PipelineConfig::load(&pipeline)?;
            let nats = transport::connect(&cfg.nats, "eddy-streams").await?;
            let subjects = if input_subject.is_empty() {
                cfg.input.subjects.clone()
            } else {
                input_subject
            };
            anyhow::ensure!(
                !subjects.is_empty(),
                "input.subjects is empty: pass --input-subject to say what the input stream captures"
            );
            for line in streams::ensure(&nats, &cfg, &subjects).await? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Produce {
            subject,
            count,
            customers,
            seed,
            duplicate_every,
            nats,
        } => {
            let conn = transport::connect(&nats_config(&nats), "eddy-produce").await?;
            let payloads = produce::transactions(count, customers, seed, duplicate_every)
                .iter()
                .map(|t| serde_json::to_vec(t).map(Bytes::from))
                .collect::<Result<Vec<_>, _>>()?;
            let rate = produce::publish(&conn.js, &subject, payloads)
                .await
                .with_context(|| format!("publishing to {subject} (is a stream capturing it?)"))?;
            println!("published {count} transactions to {subject} ({rate:.0}/s)");
            Ok(())
        }
        Command::Tail {
            subject,
            count,
            nats,
        } => {
            let conn = transport::connect(&nats_config(&nats), "eddy-tail").await?;
            for m in tail::read(&conn.js, &subject, count, Duration::from_secs(2)).await? {
                let headers: Vec<String> = m
                    .headers
                    .iter()
                    .filter(|(n, _)| !n.starts_with("Nats-"))
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect();
                println!(
                    "{} [{}] {}",
                    m.subject,
                    headers.join(" "),
                    String::from_utf8_lossy(&m.payload)
                );
            }
            Ok(())
        }
    }
}

fn nats_config(url: &str) -> NatsConfig {
    NatsConfig {
        url: url.to_string(),
        ..Default::default()
    }
}
