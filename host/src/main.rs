//! The `eddy` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use eddy_host::cli::{harness, ops, produce, streams, tail};
use eddy_host::config::{NatsConfig, PipelineConfig};
use eddy_host::metrics::{self, Metrics};
use eddy_host::pipeline::{self, RunOptions};
use eddy_host::query::{self, Freshness, Op, Query};
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
        /// Start from this savepoint (the state directory must have no checkpoint yet).
        #[arg(long)]
        from_savepoint: Option<PathBuf>,
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
    /// Lists, inspects or deletes the checkpoints of a pipeline on this machine.
    Checkpoints {
        #[command(subcommand)]
        action: CheckpointAction,
    },
    /// Creates (through the running hosts), lists, inspects or deletes savepoints.
    Savepoint {
        #[command(subcommand)]
        action: SavepointAction,
    },
    /// Deploys a plugin version: every host of the pipeline swaps to it (hot reload).
    Deploy {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The plugin component.
        plugin: PathBuf,
        /// Seconds to wait for the hosts to report the version live (0: do not wait).
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// Shows what the running hosts of a pipeline are doing: plugin version, deployments,
    /// rollbacks, positions, checkpoints.
    Status {
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// Reads state from the running hosts (the queryable state service).
    State {
        #[command(subcommand)]
        action: StateAction,
    },
    /// Runs a plugin on events from a JSON Lines file (or `-`), with state in a temporary
    /// directory, and prints each event's outcome as JSON: no NATS needed.
    Test {
        /// The plugin component.
        plugin: PathBuf,
        /// The events.
        events: PathBuf,
        /// JSON pointer to each event's key in its payload.
        #[arg(long, default_value = "/key")]
        key: String,
        /// Lines are envelopes: {"key", "payload", "subject", "headers", "broadcast"}.
        #[arg(long)]
        envelope: bool,
        /// The plugin configuration (JSON).
        #[arg(long, default_value = "{}")]
        config: String,
        /// Events per plugin call.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Print every state entry at the end.
        #[arg(long)]
        dump_state: bool,
    },
    /// Creates something new from a template: `eddy new plugin --lang python my-filter`.
    New {
        #[command(subcommand)]
        what: NewWhat,
    },
    /// Publishes one message (a broadcast rule, a test event) to a JetStream subject and
    /// waits until it is stored.
    Publish {
        /// Subject.
        subject: String,
        /// Payload (text, usually JSON).
        payload: String,
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

#[derive(Subcommand)]
enum NewWhat {
    /// A plugin directory that builds into a component and runs with `eddy test`.
    Plugin {
        /// Its name: lowercase letters, digits and `-`.
        name: String,
        /// The language: rust, js, python, go or c.
        #[arg(long, default_value = "rust")]
        lang: String,
        /// Where to create it (the directory `<dir>/<name>`).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum CheckpointAction {
    /// One line per completed checkpoint.
    List {
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// A checkpoint's manifest.
    Inspect {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The checkpoint id.
        id: u64,
    },
    /// Deletes a checkpoint.
    Delete {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The checkpoint id.
        id: u64,
    },
}

#[derive(Subcommand)]
enum SavepointAction {
    /// Asks the running hosts for a savepoint at a consistent cut, and waits for it.
    Create {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Its name (default `sp-<unix ms>`).
        #[arg(long)]
        name: Option<String>,
        /// Where the hosts write it (default checkpoint.savepoint_dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The savepoints in the pipeline's savepoint directory.
    List {
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// A savepoint's metadata.
    Inspect {
        /// The savepoint directory.
        savepoint: PathBuf,
    },
    /// Deletes a savepoint directory.
    Delete {
        /// The savepoint directory.
        savepoint: PathBuf,
    },
}

#[derive(Subcommand)]
enum StateAction {
    /// A keyed state's value (`--map`: map entries, `--list`: list elements) for a key.
    Get {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The state's name.
        state: String,
        /// The key.
        key: String,
        /// The state is a map state.
        #[arg(long, conflicts_with = "list")]
        map: bool,
        /// The state is a list state.
        #[arg(long)]
        list: bool,
        /// Map state: only entries whose key starts with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Read the last completed checkpoint instead of the latest state.
        #[arg(long)]
        checkpoint: bool,
    },
    /// A broadcast map's entry (or its entries).
    Broadcast {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The map's name.
        map: String,
        /// The key (all entries if none).
        key: Option<String>,
    },
    /// Which partition and host own a key.
    Owner {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The key.
        key: String,
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
        Command::Run {
            pipeline,
            from_savepoint,
        } => {
            let cfg = PipelineConfig::load(&pipeline)?;
            let metrics = Metrics::new(&cfg.pipeline.name);
            let _server = match &cfg.metrics.listen {
                Some(listen) => Some(metrics::serve(listen, metrics.clone()).await?),
                None => None,
            };
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(pipeline::stop_on_signals(tx));
            let opts = RunOptions {
                from_savepoint,
                ..RunOptions::default()
            };
            let summary = pipeline::run(cfg, opts, rx, metrics).await?;
            eprintln!(
                "stopped: {} events in, {} outputs, {} dropped, {} dead-lettered, {} checkpoints",
                summary.events_in,
                summary.outputs,
                summary.dropped,
                summary.dead_lettered,
                summary.checkpoints
            );
            Ok(())
        }
        Command::Checkpoints { action } => match action {
            CheckpointAction::List { pipeline } => {
                let cfg = PipelineConfig::load(&pipeline)?;
                let lines = ops::list_checkpoints(&cfg);
                if lines.is_empty() {
                    println!("no checkpoints in {}", cfg.checkpoint_dir().display());
                }
                for l in lines {
                    println!("{l}");
                }
                Ok(())
            }
            CheckpointAction::Inspect { pipeline, id } => {
                let cfg = PipelineConfig::load(&pipeline)?;
                let m = ops::checkpoints(&cfg).load(id)?;
                println!("{}", serde_json::to_string_pretty(&m)?);
                Ok(())
            }
            CheckpointAction::Delete { pipeline, id } => {
                let cfg = PipelineConfig::load(&pipeline)?;
                ops::checkpoints(&cfg).delete(id)?;
                println!("deleted checkpoint {id}");
                Ok(())
            }
        },
        Command::Savepoint { action } => match action {
            SavepointAction::Create {
                pipeline,
                name,
                dir,
            } => {
                let cfg = PipelineConfig::load(&pipeline)?;
                let nats = transport::connect(&cfg.nats, "eddy-savepoint").await?;
                let body = serde_json::json!({ "name": name, "dir": dir });
                let answers = ops::control(
                    &nats,
                    &cfg.pipeline.name,
                    "savepoint",
                    body,
                    Duration::from_secs(3600),
                )
                .await?;
                for a in answers {
                    println!("{}", serde_json::to_string_pretty(&a)?);
                }
                Ok(())
            }
            SavepointAction::List { pipeline } => {
                let cfg = PipelineConfig::load(&pipeline)?;
                for l in ops::list_savepoints(&cfg) {
                    println!("{l}");
                }
                Ok(())
            }
            SavepointAction::Inspect { savepoint } => {
                println!("{}", ops::inspect_savepoint(&savepoint)?);
                Ok(())
            }
            SavepointAction::Delete { savepoint } => {
                ops::delete_savepoint(&savepoint)?;
                println!("deleted {}", savepoint.display());
                Ok(())
            }
        },
        Command::Deploy {
            pipeline,
            plugin,
            wait,
        } => {
            let cfg = PipelineConfig::load(&pipeline)?;
            let wasm = std::fs::read(&plugin)
                .with_context(|| format!("cannot read {}", plugin.display()))?;
            let nats = transport::connect(&cfg.nats, "eddy-deploy").await?;
            let note = format!("deployed from {}", plugin.display());
            let version = eddy_host::reload::deploy(
                &nats,
                &cfg.reload.bucket,
                &cfg.pipeline.name,
                &wasm,
                &note,
            )
            .await?;
            println!(
                "deployed {} as version {version} to {}/{}",
                plugin.display(),
                cfg.reload.bucket,
                cfg.pipeline.name
            );
            if wait > 0 {
                wait_for_version(&nats, &cfg.pipeline.name, &version, wait).await?;
            }
            Ok(())
        }
        Command::Status { pipeline } => {
            let cfg = PipelineConfig::load(&pipeline)?;
            let nats = transport::connect(&cfg.nats, "eddy-status").await?;
            let answers = ops::control(
                &nats,
                &cfg.pipeline.name,
                "status",
                serde_json::json!({}),
                Duration::from_secs(5),
            )
            .await?;
            for a in answers {
                println!("{}", serde_json::to_string_pretty(&a)?);
            }
            Ok(())
        }
        Command::State { action } => {
            let (pipeline, op, q) = match action {
                StateAction::Get {
                    pipeline,
                    state,
                    key,
                    map,
                    list,
                    prefix,
                    checkpoint,
                } => {
                    let op = if map {
                        Op::Map
                    } else if list {
                        Op::List
                    } else {
                        Op::Get
                    };
                    let q = Query {
                        state: Some(state),
                        key: Some(key),
                        prefix,
                        freshness: if checkpoint {
                            Freshness::Checkpoint
                        } else {
                            Freshness::Latest
                        },
                        ..Query::default()
                    };
                    (pipeline, op, q)
                }
                StateAction::Broadcast { pipeline, map, key } => (
                    pipeline,
                    Op::Broadcast,
                    Query {
                        broadcast_map: Some(map),
                        key,
                        ..Query::default()
                    },
                ),
                StateAction::Owner { pipeline, key } => (
                    pipeline,
                    Op::Owner,
                    Query {
                        key: Some(key),
                        ..Query::default()
                    },
                ),
            };
            let cfg = PipelineConfig::load(&pipeline)?;
            let nats = transport::connect(&cfg.nats, "eddy-state").await?;
            let answer = query::nats::ask(&nats, &cfg.pipeline.name, op, &q)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
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
        Command::Test {
            plugin,
            events,
            key,
            envelope,
            config,
            batch,
            dump_state,
        } => {
            let opts = harness::HarnessOptions {
                key,
                envelope,
                config,
                batch,
                dump_state,
            };
            tokio::task::spawn_blocking(move || {
                let stdout = std::io::stdout();
                let mut out = stdout.lock();
                harness::run(&plugin, &events, &opts, &mut out)
            })
            .await?
        }
        Command::New {
            what: NewWhat::Plugin { name, lang, dir },
        } => {
            let (created, build) = eddy_host::cli::scaffold::new_plugin(&lang, &name, &dir)?;
            println!("created {}", created.display());
            println!(
                "build:  cd {} && {build}\ntry it: eddy test {name}.wasm events.jsonl --key /customer",
                created.display()
            );
            Ok(())
        }
        Command::Publish {
            subject,
            payload,
            nats,
        } => {
            let conn = transport::connect(&nats_config(&nats), "eddy-publish").await?;
            let ack = conn
                .js
                .publish(subject.clone(), Bytes::from(payload))
                .await
                .with_context(|| format!("publishing to {subject}"))?
                .await
                .with_context(|| {
                    format!("{subject} was not stored (does a stream capture it? `eddy streams`)")
                })?;
            println!("stored in {} as message {}", ack.stream, ack.sequence);
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

/// Waits until every host that answers status runs `version` (or reports it rejected or
/// rolled back).
async fn wait_for_version(
    nats: &transport::Nats,
    pipeline: &str,
    version: &str,
    secs: u64,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let answers = ops::control(
            nats,
            pipeline,
            "status",
            serde_json::json!({}),
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_default();
        let mut verdicts = Vec::new();
        for a in &answers {
            let host = a["host"].as_str().unwrap_or("?").to_string();
            let d = a["deployments"]
                .as_array()
                .and_then(|ds| ds.iter().rev().find(|d| d["version"] == version));
            match d.and_then(|d| d["status"].as_str()) {
                Some("live") => verdicts.push((host, Ok("live".to_string()))),
                Some(s @ ("rejected" | "rolled-back")) => verdicts.push((
                    host,
                    Err(format!(
                        "{s}: {}",
                        d.and_then(|d| d["reason"].as_str()).unwrap_or("")
                    )),
                )),
                _ => {}
            }
        }
        if !answers.is_empty() && verdicts.len() == answers.len() {
            let mut failed = false;
            for (host, v) in verdicts {
                match v {
                    Ok(s) => println!("  {host}: {version} {s}"),
                    Err(e) => {
                        failed = true;
                        println!("  {host}: {version} {e}");
                    }
                }
            }
            anyhow::ensure!(!failed, "version {version} did not go live everywhere");
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "not every host reported version {version} live within {secs} s; see `eddy status`"
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn nats_config(url: &str) -> NatsConfig {
    NatsConfig {
        url: url.to_string(),
        ..Default::default()
    }
}
