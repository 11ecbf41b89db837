//! The run loop: NATS in, plugin, NATS out, state committed, input acknowledged.
//!
//! Owns: the order of a batch's steps, which is what makes the pipeline lose nothing:
//!
//! 1. read a batch from the durable consumer; skip events whose stream sequence the state
//!    already reflects (redeliveries after a crash);
//! 2. extract keys (an event without one is dead-lettered), run the plugin on a blocking
//!    thread (`worker`), collecting state writes in the batch's overlay;
//! 3. publish outputs and dead letters, all in flight together, and wait for every ack
//!    (retrying until NATS takes them; `Nats-Msg-Id` makes retries idempotent);
//! 4. commit the state writes and the input position in one RocksDB write;
//! 5. acknowledge the input once, on the batch's last message (`AckPolicy::All`).
//!
//! A crash between 3 and 4 replays the batch against the old state: its outputs get the same
//! message ids and JetStream drops them as duplicates. A crash between 4 and 5 redelivers
//! events the state already reflects: step 1 skips them.
//!
//! Never: blocks the async runtime on plugin code or disk-heavy work.

pub mod keys;
mod worker;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use tokio::sync::watch;

use crate::config::PipelineConfig;
use crate::engine::{self, Event, Failure, FailureKind, Outcome};
use crate::metrics::{DeadLetterReason, Metrics};
use crate::state::{Clock, StateStore, StoreOptions, SystemClock};
use crate::transport::{self, Input, Nats, OutMessage};

pub use worker::{BatchResult, Worker};

/// Header carrying the dead-letter reason.
pub const HEADER_ERROR: &str = "Eddy-Error";
/// Header carrying the dead-letter reason's kind (`key`, `rejected`, `trap`, ...).
pub const HEADER_ERROR_KIND: &str = "Eddy-Error-Kind";
/// Header carrying the input subject of a dead letter.
pub const HEADER_SOURCE_SUBJECT: &str = "Eddy-Source-Subject";
/// Header carrying the input stream sequence of an output or dead letter.
pub const HEADER_SOURCE_SEQUENCE: &str = "Eddy-Source-Sequence";
/// Header carrying the plugin version that produced an output.
pub const HEADER_PLUGIN_VERSION: &str = "Eddy-Plugin-Version";

/// Signals a running pipeline to stop: send `true`.
pub type Shutdown = watch::Receiver<bool>;

/// What a run did, returned when it stops.
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    /// Events read.
    pub events_in: u64,
    /// Outputs published.
    pub outputs: u64,
    /// Events dropped by the plugin.
    pub dropped: u64,
    /// Events dead-lettered.
    pub dead_lettered: u64,
}

/// Options for a run beyond the config file.
#[derive(Clone)]
pub struct RunOptions {
    /// The processing-time clock (tests inject a manual one).
    pub clock: Arc<dyn Clock>,
    /// Where compiled components are cached; default: `<state_dir>/../.compiled`.
    pub compile_cache: Option<std::path::PathBuf>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            clock: Arc::new(SystemClock),
            compile_cache: None,
        }
    }
}

/// Runs a pipeline until `shutdown` says stop, then finishes the batch in hand, commits,
/// acknowledges and returns.
pub async fn run(
    cfg: PipelineConfig,
    opts: RunOptions,
    mut shutdown: Shutdown,
    metrics: Arc<Metrics>,
) -> anyhow::Result<RunSummary> {
    let cfg = Arc::new(cfg);
    let worker = {
        let cfg = cfg.clone();
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || build_worker(&cfg, &opts, metrics)).await??
    };
    metrics.attach_state(worker.state().stats().clone());
    let nats = transport::connect(&cfg.nats, &format!("eddy:{}", cfg.pipeline.name)).await?;
    transport::check_captured(&nats, &cfg.output.subject, "output.subject").await?;
    transport::check_captured(&nats, &cfg.dead_letter.subject, "dead_letter.subject").await?;
    let position_key = Input::position_key(&cfg);
    let mut applied = worker.state().position(&position_key)?.unwrap_or(0);
    let mut input = Input::open(&nats, &cfg, applied).await?;
    tracing::info!(
        pipeline = %cfg.pipeline.name,
        plugin = worker.plugin().name(),
        version = worker.plugin().version(),
        resume_after = applied,
        "pipeline running"
    );
    let mut worker = Some(worker);
    loop {
        let batch = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            b = input.next_batch(cfg.input.batch) => b,
        };
        let Some(batch) = batch else { break };
        let w = worker.take().context("worker lost")?;
        let (w, last) = handle_batch(&cfg, &nats, &input, w, batch, applied, &metrics).await?;
        worker = Some(w);
        applied = applied.max(last);
        if *shutdown.borrow() {
            break;
        }
    }
    if let Some(w) = worker {
        w.state().flush()?;
    }
    nats.client.flush().await.ok();
    tracing::info!(pipeline = %cfg.pipeline.name, "pipeline stopped cleanly");
    Ok(RunSummary {
        events_in: metrics.events_in.load(Ordering::Relaxed),
        outputs: metrics.outputs.load(Ordering::Relaxed),
        dropped: metrics.dropped.load(Ordering::Relaxed),
        dead_lettered: metrics.dead_lettered_total(),
    })
}

/// Opens state and compiles the plugin (blocking work).
pub fn build_worker(
    cfg: &PipelineConfig,
    opts: &RunOptions,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Worker> {
    let store_options = StoreOptions {
        periodic_compaction: std::time::Duration::from_secs(cfg.state.periodic_compaction_secs),
    };
    let state = Arc::new(
        StateStore::open_with(
            &cfg.pipeline.state_dir,
            cfg.pipeline.key_groups,
            opts.clock.clone(),
            store_options,
        )
        .with_context(|| format!("cannot open state in {}", cfg.pipeline.state_dir.display()))?,
    );
    state.set_ttl_overrides(
        cfg.state
            .ttl
            .iter()
            .map(|(name, o)| (name.clone(), o.to_ttl()))
            .collect(),
    );
    let cache = opts
        .compile_cache
        .clone()
        .unwrap_or_else(|| default_cache_dir(&cfg.pipeline.state_dir));
    let engine = engine::Engine::new(Some(&cache))?;
    let plugin = engine.load_file(&cfg.plugin.path)?;
    let limits = engine::Limits {
        cpu_per_event: cfg.limits.cpu_per_event(),
        memory_bytes: (cfg.limits.memory_mb as usize) << 20,
    };
    Worker::new(plugin, state, limits, cfg.plugin.config_json(), metrics)
}

fn default_cache_dir(state_dir: &Path) -> std::path::PathBuf {
    state_dir
        .parent()
        .unwrap_or(Path::new("."))
        .join(".compiled")
}

/// One event of a batch on its way through.
struct Pending<'a> {
    msg: &'a jetstream::Message,
    seq: u64,
}

async fn handle_batch(
    cfg: &Arc<PipelineConfig>,
    nats: &Nats,
    input: &Input,
    mut worker: Worker,
    batch: Vec<jetstream::Message>,
    applied: u64,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(Worker, u64)> {
    metrics
        .events_in
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    let mut last_seq = applied;
    let mut events = Vec::with_capacity(batch.len());
    let mut key_groups = Vec::with_capacity(batch.len());
    let mut pending = Vec::with_capacity(batch.len());
    let mut out = Vec::new();
    for msg in &batch {
        let (seq, ts) = match msg.info() {
            Ok(info) => (
                info.stream_sequence,
                (info.published.unix_timestamp_nanos() / 1_000_000) as u64,
            ),
            Err(e) => {
                tracing::warn!("input message without JetStream metadata ({e}); skipped");
                continue;
            }
        };
        last_seq = last_seq.max(seq);
        if seq <= applied {
            metrics.skipped_replays.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match keys::extract(
            &cfg.input.key,
            &msg.subject,
            msg.headers.as_ref(),
            &msg.payload,
        ) {
            Ok(key) => {
                key_groups.push(worker.state().key_group(&key));
                events.push(Event {
                    key,
                    subject: msg.subject.to_string(),
                    headers: headers_to_wit(msg.headers.as_ref()),
                    payload: msg.payload.to_vec(),
                    timestamp_ms: ts,
                    sequence: seq,
                });
                pending.push(Pending { msg, seq });
            }
            Err(reason) => {
                out.push(dead_letter(cfg, msg, seq, DeadLetterReason::Key, &reason));
                metrics.dead_letter(DeadLetterReason::Key);
            }
        }
    }

    // Run the plugin off the async runtime.
    let (worker, result) = tokio::task::spawn_blocking(move || {
        let r = worker.run(&events, &key_groups);
        (worker, r)
    })
    .await?;
    let BatchResult {
        state: mut state_batch,
        outcomes,
    } = result?;

    let version = worker.plugin().version().to_string();
    for (i, (p, outcome)) in pending.iter().zip(outcomes).enumerate() {
        route(cfg, i, p, outcome, &version, &mut out, metrics);
    }

    let published: u64 = out
        .iter()
        .filter(|m| m.subject != cfg.dead_letter.subject)
        .count() as u64;
    let failures = transport::publish_all(&nats.js, out, |n| {
        metrics
            .publish_retries
            .fetch_add(n as u64, Ordering::Relaxed);
    })
    .await;
    metrics.outputs.fetch_add(published, Ordering::Relaxed);
    if !failures.is_empty() {
        // Outputs that can never be stored: their events become dead letters instead.
        let mut letters = Vec::new();
        for f in failures {
            metrics.outputs.fetch_sub(1, Ordering::Relaxed);
            if let Some(p) = pending.get(f.message.event) {
                metrics.dead_letter(DeadLetterReason::Contract);
                letters.push(dead_letter(
                    cfg,
                    p.msg,
                    p.seq,
                    DeadLetterReason::Contract,
                    &f.reason,
                ));
            } else {
                tracing::error!("dead letter could not be published: {}", f.reason);
            }
        }
        let lost = transport::publish_all(&nats.js, letters, |_| {}).await;
        for f in lost {
            tracing::error!("dead letter could not be published: {}", f.reason);
        }
    }

    state_batch.set_position(&input.position_key, last_seq);
    let state = worker.state().clone();
    tokio::task::spawn_blocking(move || state.commit(state_batch)).await??;

    // AckPolicy::All: acknowledging the batch's last message acknowledges all of it.
    if let Some(m) = batch.last()
        && let Err(e) = m.ack().await
    {
        // Not fatal: the messages are redelivered and skipped, since state has them.
        tracing::warn!("input ack failed ({e}); redelivered events will be skipped");
    }
    Ok((worker, last_seq))
}

fn route(
    cfg: &PipelineConfig,
    index: usize,
    p: &Pending,
    outcome: Result<Outcome, Failure>,
    version: &str,
    out: &mut Vec<OutMessage>,
    metrics: &Metrics,
) {
    match outcome {
        Ok(Outcome::Emit(outputs)) => {
            if let Some(bad) = outputs
                .iter()
                .filter_map(|o| o.subject.as_deref())
                .find(|s| !cfg.output_allowed(s))
            {
                let reason = format!(
                    "plugin emitted to `{bad}`, which the pipeline does not allow; add it to output.allow or fix the plugin"
                );
                metrics.dead_letter(DeadLetterReason::Contract);
                out.push(dead_letter(
                    cfg,
                    p.msg,
                    p.seq,
                    DeadLetterReason::Contract,
                    &reason,
                ));
                return;
            }
            for (i, o) in outputs.into_iter().enumerate() {
                let mut headers = HeaderMap::new();
                for (k, v) in &o.headers {
                    headers.append(k.as_str(), v.as_str());
                }
                headers.insert(
                    "Nats-Msg-Id",
                    format!("{}:{}:{}", cfg.pipeline.name, p.seq, i).as_str(),
                );
                headers.insert(HEADER_PLUGIN_VERSION, version);
                out.push(OutMessage {
                    subject: o.subject.unwrap_or_else(|| cfg.output.subject.clone()),
                    headers,
                    payload: Bytes::from(o.payload),
                    event: index,
                });
            }
        }
        Ok(Outcome::Drop) => {
            metrics.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Outcome::Reject(reason)) => {
            metrics.dead_letter(DeadLetterReason::Rejected);
            out.push(dead_letter(
                cfg,
                p.msg,
                p.seq,
                DeadLetterReason::Rejected,
                &reason,
            ));
        }
        Err(failure) => {
            let reason = match failure.kind {
                FailureKind::Trap => DeadLetterReason::Trap,
                FailureKind::CpuBudget => DeadLetterReason::CpuBudget,
                FailureKind::MemoryLimit => DeadLetterReason::MemoryLimit,
                FailureKind::Contract => DeadLetterReason::Contract,
            };
            metrics.dead_letter(reason);
            out.push(dead_letter(cfg, p.msg, p.seq, reason, &failure.message));
        }
    }
}

fn headers_to_wit(headers: Option<&HeaderMap>) -> Vec<(String, String)> {
    let Some(h) = headers else { return Vec::new() };
    let mut out = Vec::new();
    for (name, values) in h.iter() {
        for v in values {
            out.push((name.to_string(), v.as_str().to_string()));
        }
    }
    out
}

/// A dead letter: the original payload and headers, plus the reason. Its message id is
/// derived from the input position, like outputs, so a replay does not duplicate it.
fn dead_letter(
    cfg: &PipelineConfig,
    msg: &jetstream::Message,
    seq: u64,
    reason: DeadLetterReason,
    message: &str,
) -> OutMessage {
    let mut headers = HeaderMap::new();
    if let Some(h) = msg.headers.as_ref() {
        for (name, values) in h.iter() {
            let n: &str = name.as_ref();
            if n.starts_with("Nats-") {
                continue;
            }
            for v in values {
                headers.append(n, v.as_str());
            }
        }
    }
    // Header values are single lines.
    let one_line: String = message.replace(['\r', '\n'], " ");
    headers.insert(HEADER_ERROR, one_line.as_str());
    headers.insert(HEADER_ERROR_KIND, reason.label());
    headers.insert(HEADER_SOURCE_SUBJECT, msg.subject.as_str());
    headers.insert(HEADER_SOURCE_SEQUENCE, seq.to_string().as_str());
    headers.insert(
        "Nats-Msg-Id",
        format!("{}:{}:dlq", cfg.pipeline.name, seq).as_str(),
    );
    OutMessage {
        subject: cfg.dead_letter.subject.clone(),
        headers,
        payload: msg.payload.clone(),
        event: usize::MAX,
    }
}

/// Waits for SIGINT or SIGTERM, then signals `tx`.
pub async fn stop_on_signals(tx: watch::Sender<bool>) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
    tracing::info!("stop requested: finishing the batch in hand");
    let _ = tx.send(true);
}
