//! The `eddy` command line: its arguments ([`Cli`], in `args`), and one function per
//! subcommand, each in the module of what it works on. `main.rs` parses and calls
//! [`dispatch`].
//!
//! - `bulk`: `eddy state load` and `eddy state export` (files read in `bulk::read`);
//! - `run`: `eddy run`, `eddy check`;
//! - `checkpoints`: `eddy checkpoints …` and `eddy savepoint …`;
//! - `hosts`: `eddy deploy`, `eddy status` and requests to running hosts;
//! - `state`: `eddy state …`;
//! - `io`: `eddy produce`, `eddy publish`, `eddy tail` (test data in, messages out), over the
//!   libraries `produce` (the synthetic event generator) and `tail` (reading a subject);
//! - `streams`: `eddy streams`;
//! - `harness`: `eddy test`, a plugin on events from a file without NATS;
//! - `scaffold`: `eddy new plugin`;
//! - `dlq`: `eddy dlq …`, the dead-letter subject listed, shown and replayed;
//! - `dev`: `eddy dev`, a plugin project built and run on NATS with one command.
//!
//! Commands that only talk to running hosts (`status`, `deploy`, `savepoint create`, `state`)
//! load the pipeline file without requiring its plugin file to be on this machine.

mod args;
pub mod bulk;
pub mod checkpoints;
pub mod console;
pub mod dev;
pub mod dlq;
pub mod harness;
pub mod hosts;
pub mod io;
pub mod produce;
pub mod run;
pub mod scaffold;
pub mod state;
pub mod streams;
pub mod tail;

/// The first `max` of `lines`, one per line, and how many more there are: for error messages
/// that list what is wrong without flooding the terminal.
pub(crate) fn first_lines(lines: &[String], max: usize) -> String {
    let shown = lines.len().min(max);
    let mut out = lines[..shown].join("\n");
    if lines.len() > shown {
        out.push_str(&format!("\n… and {} more", lines.len() - shown));
    }
    out
}

/// A progress bar on stderr for a long operation over `len` things (`verb` them, counted as
/// `things`); drawn only when stderr is a terminal, so scripts and logs get none.
pub(crate) fn progress(len: u64, verb: &str, things: &str) -> indicatif::ProgressBar {
    let template =
        format!("{verb} {{bar:40}} {{pos}}/{{len}} {things} ({{per_sec}}, {{eta}} left)");
    indicatif::ProgressBar::new(len).with_style(
        indicatif::ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    )
}

pub use args::*;

/// Runs one subcommand.
pub async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            pipeline,
            from_savepoint,
        } => run::run(&pipeline, from_savepoint).await,
        Command::Check { pipeline, sample } => run::check(&pipeline, sample.as_deref()).await,
        Command::Streams {
            pipeline,
            input_subject,
        } => streams::command(&pipeline, input_subject).await,
        Command::Produce {
            subject,
            count,
            customers,
            seed,
            duplicate_every,
            nats,
        } => {
            io::produce(
                &nats.config()?,
                &subject,
                count,
                customers,
                seed,
                duplicate_every,
            )
            .await
        }
        Command::Checkpoints { action } => checkpoints::checkpoints(action).await,
        Command::Savepoint { action } => checkpoints::savepoint(action).await,
        Command::Deploy {
            pipeline,
            plugin,
            shadow,
            promote,
            discard,
            wait,
        } => {
            let mode = match (shadow, promote, discard) {
                (true, _, _) => hosts::DeployMode::Shadow,
                (_, true, _) => hosts::DeployMode::Promote,
                (_, _, true) => hosts::DeployMode::Discard,
                _ => hosts::DeployMode::Live,
            };
            hosts::deploy(&pipeline, plugin.as_deref(), mode, wait).await
        }
        Command::Status { pipeline, json } => hosts::status(&pipeline, json).await,
        Command::State { action } => state::command(action).await,
        Command::Dlq { action } => dlq_command(action).await,
        Command::Dev { project } => dev::dev(&project).await,
        Command::Console { pipeline, listen } => console::serve(&pipeline, listen).await,
        Command::Cluster {
            action: ClusterAction::Status { pipeline, json },
        } => {
            let (hosts, partitions) = crate::cluster::status::collect(&pipeline).await?;
            if json {
                let v = serde_json::json!({ "hosts": hosts, "partitions": partitions });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", crate::cluster::status::table(&hosts, &partitions));
            }
            Ok(())
        }
        Command::Cluster {
            action:
                ClusterAction::Reset {
                    pipeline,
                    partition,
                    force,
                },
        } => {
            println!(
                "{}",
                crate::cluster::reset::reset(&pipeline, partition, force).await?
            );
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
            cpu_ms_per_event,
            pipeline,
            expect,
            lookups,
        } => {
            let opts = harness::HarnessOptions {
                cpu_ms_per_event,
                key: harness::key_source(key, &pipeline)?,
                envelope,
                config,
                batch,
                dump_state,
                expect,
                lookups,
            };
            harness::command(plugin, events, opts).await
        }
        Command::New {
            what: NewWhat::Plugin { name, lang, dir },
        } => scaffold::command(&lang, &name, &dir),
        Command::Publish {
            subject,
            payload,
            file,
            nats,
        } => match (payload, file) {
            (Some(payload), _) => io::publish(&nats.config()?, &subject, payload).await,
            (None, Some(file)) => io::publish_file(&nats.config()?, &subject, &file).await,
            (None, None) => anyhow::bail!("give a payload, or --file with one per line"),
        },
        Command::Tail {
            subject,
            count,
            follow,
            raw,
            nats,
        } => io::tail(&nats.config()?, &subject, count, raw, follow).await,
    }
}

async fn dlq_command(action: DlqAction) -> anyhow::Result<()> {
    use crate::config::PipelineConfig;
    match action {
        DlqAction::List { pipeline, last } => {
            dlq::list(&PipelineConfig::load_remote(&pipeline)?, last).await
        }
        DlqAction::Show { pipeline, sequence } => {
            dlq::show(&PipelineConfig::load_remote(&pipeline)?, sequence).await
        }
        DlqAction::Replay {
            pipeline,
            kind,
            since,
            limit,
            keep,
        } => {
            let cfg = PipelineConfig::load_remote(&pipeline)?;
            let filter = dlq::Filter {
                kind,
                since_ms: since
                    .map(|s| dlq::since(&s, crate::checkpoint::now_ms()))
                    .transpose()?,
                limit,
                sequences: None,
            };
            let done = dlq::replay(&cfg, &filter, keep).await?;
            println!(
                "replayed {} dead letters to their input subjects{}",
                done.published,
                match done.duplicates {
                    0 => String::new(),
                    n => format!(" ({n} already there from an earlier replay: stored once)"),
                }
            );
            for (seq, why) in &done.skipped {
                eprintln!("dead letter {seq} not replayed: {why}");
            }
            match done.skipped.len() {
                0 => Ok(()),
                n => anyhow::bail!(
                    "{n} dead letters could not be replayed (listed above); they stay in the dead-letter stream"
                ),
            }
        }
    }
}
