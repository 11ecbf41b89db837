//! `eddy produce`, `eddy publish` and `eddy tail`: test data in, messages out, on the NATS a
//! pipeline file names ([`NatsArgs`]).

use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;

use super::{produce, tail};
use crate::config::{NatsConfig, PipelineConfig};
use crate::transport;

/// Where an I/O command finds NATS: a pipeline file's `[nats]` section (URL, credentials,
/// TLS), `--nats` for the URL, or `./pipeline.toml` when neither is given.
#[derive(clap::Args, Debug, Clone)]
pub struct NatsArgs {
    /// The pipeline file (or its directory) whose `[nats]` section to connect with; default
    /// `./pipeline.toml` if there is one.
    #[arg(long, short = 'p')]
    pipeline: Option<PathBuf>,
    /// The NATS server URL, instead of the pipeline file's (default nats://127.0.0.1:4222).
    #[arg(long)]
    nats: Option<String>,
}

impl NatsArgs {
    /// The connection settings these arguments name.
    pub fn config(&self) -> anyhow::Result<NatsConfig> {
        let file = match &self.pipeline {
            Some(p) if p.is_dir() => Some(p.join("pipeline.toml")),
            Some(p) => Some(p.clone()),
            None if self.nats.is_none() && Path::new("pipeline.toml").is_file() => {
                Some(PathBuf::from("pipeline.toml"))
            }
            None => None,
        };
        let mut cfg = match file {
            Some(f) => PipelineConfig::load_remote(&f)?.nats,
            None => NatsConfig::default(),
        };
        if let Some(url) = &self.nats {
            cfg.url = url.clone();
        }
        Ok(cfg)
    }
}

/// `eddy produce`: publishes synthetic card transactions to `subject`.
pub async fn produce(
    nats: &NatsConfig,
    subject: &str,
    count: usize,
    customers: usize,
    seed: u64,
    duplicate_every: usize,
) -> anyhow::Result<()> {
    let conn = transport::connect(nats, "eddy-produce").await?;
    // A `*` in the subject takes each transaction's customer: the key a cluster's input
    // stream partitions by.
    let messages = produce::transactions(count, customers, seed, duplicate_every)
        .iter()
        .map(|t| serde_json::to_vec(t).map(|p| (produce::subject_for(subject, t), Bytes::from(p))))
        .collect::<Result<Vec<_>, _>>()?;
    let bar = super::progress(messages.len() as u64, "publishing", "transactions");
    let rate = produce::publish_counted(&conn.js, messages, |n| bar.inc(n))
        .await
        .with_context(|| format!("publishing to {subject} (is a stream capturing it?)"))?;
    bar.finish_and_clear();
    println!("published {count} transactions to {subject} ({rate:.0}/s)");
    Ok(())
}

/// `eddy publish`: one message, waiting until a stream stored it.
pub async fn publish(nats: &NatsConfig, subject: &str, payload: String) -> anyhow::Result<()> {
    let conn = transport::connect(nats, "eddy-publish").await?;
    let ack = conn
        .js
        .publish(subject.to_string(), Bytes::from(payload))
        .await
        .with_context(|| format!("publishing to {subject}"))?
        .await
        .with_context(|| {
            format!("{subject} was not stored (does a stream capture it? `eddy streams`)")
        })?;
    println!("stored in {} as message {}", ack.stream, ack.sequence);
    Ok(())
}

/// `eddy publish --file`: publishes each non-empty line of `file` (`-`: standard input) to
/// `subject`, in order, every one stored before it returns.
pub async fn publish_file(nats: &NatsConfig, subject: &str, file: &Path) -> anyhow::Result<()> {
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let lines: Vec<(String, Bytes)> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| (subject.to_string(), Bytes::from(l.to_string())))
        .collect();
    if lines.is_empty() {
        anyhow::bail!("{}: no lines to publish", file.display());
    }
    let conn = transport::connect(nats, "eddy-publish").await?;
    let stream = tail::stream_of(&conn.js, subject)
        .await
        .with_context(|| format!("{subject} would not be stored"))?;
    let n = lines.len();
    let bar = super::progress(n as u64, "publishing", "lines");
    let rate = produce::publish_counted(&conn.js, lines, |n| bar.inc(n))
        .await
        .with_context(|| format!("publishing {} to {subject}", file.display()))?;
    bar.finish_and_clear();
    println!(
        "stored {n} messages from {} in {} ({rate:.0}/s)",
        file.display(),
        stream.cached_info().config.name
    );
    Ok(())
}

/// `eddy tail`: prints the last `count` messages stored on `subject`, one line each with
/// control characters escaped (with `raw`, the payloads alone, byte for byte, one per line,
/// for piping); with `follow`, then each new one as it is stored, until interrupted.
pub async fn tail(
    nats: &NatsConfig,
    subject: &str,
    count: usize,
    raw: bool,
    follow: bool,
) -> anyhow::Result<()> {
    let conn = transport::connect(nats, "eddy-tail").await?;
    let stream = tail::stream_of(&conn.js, subject).await?;
    let printed = async {
        let (messages, next) = tail::last(&stream, subject, count).await?;
        for m in &messages {
            print_message(m, raw)?;
        }
        if follow {
            tail::each(&stream, subject, next, None, None, |m| {
                Ok(print_message(&m, raw)?)
            })
            .await?;
        }
        anyhow::Ok(())
    };
    match printed.await {
        // A closed pipe (`eddy tail ... | head`) ends the command quietly, following or not.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn print_message(m: &tail::Stored, raw: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if raw {
        out.write_all(&m.payload)?;
        out.write_all(b"\n")?;
        return out.flush();
    }
    let headers: Vec<String> = m
        .headers
        .iter()
        .filter(|(n, _)| !n.starts_with("Nats-"))
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    writeln!(
        out,
        "{} [{}] {}",
        tail::for_terminal(m.subject.as_bytes()),
        tail::for_terminal(headers.join(" ").as_bytes()),
        tail::for_terminal(&m.payload)
    )?;
    out.flush()
}
