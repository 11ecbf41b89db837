//! The run loop: NATS in, plugin, NATS out, with checkpoints that make it exactly-once.
//!
//! Owns the order of a pipeline's steps, which is what makes it lose and duplicate nothing:
//!
//! 1. at start, restore the newest complete checkpoint (state, positions, events already done)
//!    and read every input from just after its recorded position;
//! 2. read keyed batches (a task: key extraction off the loop), merge in broadcast updates by
//!    stream timestamp (`align`), ask the plugin which lookups each event needs and fetch them
//!    (`window`, `crate::lookup`);
//! 3. hand released events to the plugin on a blocking thread (`worker`); their state writes go
//!    to RocksDB at once, in one write per batch;
//! 4. give the outputs and dead letters to the publisher, which stores them in the background
//!    with `Nats-Msg-Id = <pipeline>:<input>:<sequence>:<index>`;
//! 5. every `checkpoint.interval_ms` (or when half of `input.max_pending` is unacknowledged),
//!    between two batches: cut a checkpoint (positions + a RocksDB checkpoint); in the
//!    background, once every output up to the cut is stored, complete it (files, manifest) and
//!    only then acknowledge the input up to the cut (`AckPolicy::All`, one ack).
//!
//! After a crash the host restores the last completed checkpoint and replays from its position:
//! the replayed events' outputs carry the same message ids and JetStream's duplicate window
//! drops them; their state writes are redone on the restored state. The duplicate window must
//! cover a checkpoint interval plus the recovery time: checked at start-up.
//!
//! Never: blocks the async runtime on plugin code or disk-heavy work.

mod align;
pub mod keys;
pub mod route;
mod runner;
pub(crate) mod window;
mod worker;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use tokio::sync::{mpsc, watch};

use crate::checkpoint::{Checkpoints, Cut, Manifest};
use crate::config::{PipelineConfig, ReloadWatch};
use crate::engine::{self, Event, InstanceContext};
use crate::lookup::Lookups;
use crate::metrics::Metrics;
use crate::query::QueryEngine;
use crate::reload::{self, DeployStatus, Deployment, History};
use crate::state::{Clock, StateStore, StoreOptions, SystemClock};
use crate::transport::{self, BroadcastInput, Input, Nats, Publisher};

pub use route::{
    HEADER_ERROR, HEADER_ERROR_KIND, HEADER_PLUGIN_VERSION, HEADER_SOURCE_SEQUENCE,
    HEADER_SOURCE_SUBJECT,
};
pub use worker::{Planner, Worker};

use route::{Routes, Source, headers_to_wit};
use runner::Runner;
use window::{Arrival, Body, Window};

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
    /// Checkpoints completed.
    pub checkpoints: u64,
}

/// Options for a run beyond the config file.
#[derive(Clone)]
pub struct RunOptions {
    /// The processing-time clock (tests inject a manual one).
    pub clock: Arc<dyn Clock>,
    /// Where compiled components are cached; default: `<state_dir>/.compiled`.
    pub compile_cache: Option<std::path::PathBuf>,
    /// Start from this savepoint instead of the newest checkpoint (the state directory must
    /// hold no checkpoint).
    pub from_savepoint: Option<std::path::PathBuf>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            clock: Arc::new(SystemClock),
            compile_cache: None,
            from_savepoint: None,
        }
    }
}

/// The name of the keyed input in message ids.
const KEYED: &str = "in";

/// Runs a pipeline until `shutdown` says stop, then finishes the events in hand, takes a last
/// checkpoint, acknowledges and returns.
pub async fn run(
    cfg: PipelineConfig,
    opts: RunOptions,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
) -> anyhow::Result<RunSummary> {
    let cfg = Arc::new(cfg);
    let checkpoints = Arc::new(Checkpoints::new(
        &cfg.checkpoint_dir(),
        &cfg.pipeline.state_dir.join("staging"),
        &cfg.pipeline.name,
        cfg.checkpoint.retain,
    ));
    let (state, restored) = {
        let (cfg, opts, checkpoints) = (cfg.clone(), opts.clone(), checkpoints.clone());
        tokio::task::spawn_blocking(move || restore(&cfg, &opts, &checkpoints)).await??
    };
    metrics.attach_state(state.stats().clone());
    let nats = transport::connect(&cfg.nats, &format!("eddy:{}", cfg.pipeline.name)).await?;
    let lookups = Lookups::connect(&cfg, Some(&nats)).await?;
    if let Some(l) = &lookups {
        metrics.attach_lookups(l.clone());
    }
    // The newest deployed version wins over the file named in the pipeline.
    let deployed = if cfg.reload.watch == ReloadWatch::ObjectStore {
        reload::deployed(&nats, &cfg.reload.bucket, &cfg.pipeline.name).await?
    } else {
        None
    };
    let deployed_from = deployed
        .is_some()
        .then(|| format!("object store {}/{}", cfg.reload.bucket, cfg.pipeline.name));
    let built = {
        let (cfg, opts, metrics, state) =
            (cfg.clone(), opts.clone(), metrics.clone(), state.clone());
        let lookups = lookups.clone();
        tokio::task::spawn_blocking(move || {
            build_worker_on(&cfg, &opts, metrics, state, lookups, deployed)
        })
        .await??
    };
    let Built {
        mut worker,
        planner,
        engine,
    } = built;
    transport::check_captured(&nats, &cfg.output.subject, "output.subject").await?;
    transport::check_captured(&nats, &cfg.dead_letter.subject, "dead_letter.subject").await?;
    check_dedupe_window(&nats, &cfg).await?;
    if !cfg.broadcast.is_empty() && !worker.plugin().capabilities().broadcast {
        anyhow::bail!(
            "the pipeline has broadcast inputs ({}) but plugin {} does not export broadcast-handler; build it for world `full-processor` (the Rust SDK does: implement Processor::process_broadcast), or remove [broadcast]",
            cfg.broadcast.keys().cloned().collect::<Vec<_>>().join(", "),
            worker.plugin().name()
        );
    }
    let restored_cut = restored.map(|m| m.cut).unwrap_or_default();
    // A different version than the one that wrote the checkpoint: let it migrate the state.
    if !restored_cut.plugin_version.is_empty()
        && restored_cut.plugin_version != worker.plugin().version()
    {
        let previous = restored_cut.plugin_version.clone();
        let (w, r) = tokio::task::spawn_blocking(move || {
            let r = worker.migrate(&previous);
            (worker, r)
        })
        .await?;
        worker = w;
        if let Err(msg) = r? {
            anyhow::bail!(
                "plugin {} refused to migrate state written by version {}: {msg}",
                worker.plugin().version(),
                restored_cut.plugin_version
            );
        }
    }
    let keyed_key = Input::position_key(&cfg);
    let resume_after = restored_cut.positions.get(&keyed_key).copied().unwrap_or(0);
    let skip: BTreeSet<u64> = restored_cut
        .done_after
        .get(&keyed_key)
        .map(|v| v.iter().copied().collect())
        .unwrap_or_default();
    let input = Input::open(&nats, &cfg, resume_after).await?;
    let keyed_backlog = input.backlog.clone();
    let mut broadcasts = Vec::new();
    for (name, bcfg) in &cfg.broadcast {
        let after = restored_cut
            .positions
            .get(&BroadcastInput::position_key(name))
            .copied()
            .unwrap_or(0);
        broadcasts.push(BroadcastInput::open(&nats, name, bcfg, after).await?);
    }
    // Queries, control requests, hot reload.
    let query = Arc::new(QueryEngine::new(&cfg, state.clone()));
    let query_service = if cfg.query.nats {
        // Its own connection: answers do not queue behind the pipeline's outputs in one
        // connection's write buffer, nor the outputs behind them.
        let conn =
            transport::connect(&cfg.nats, &format!("eddy:{}:query", cfg.pipeline.name)).await?;
        Some(crate::query::nats::serve(&conn, query.clone()).await?)
    } else {
        None
    };
    let query_http = match &cfg.query.http {
        Some(listen) => Some(
            crate::query::http::serve(
                listen,
                query.clone(),
                Some(nats.clone()),
                cfg.query.token.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let (control_tx, control_rx) = mpsc::channel(16);
    let control_task = crate::control::serve(&nats, &cfg.pipeline.name, control_tx).await?;
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let validator = Arc::new(reload::Validator {
        engine,
        ctx: worker.context().clone(),
        config_json: worker.config_json().to_string(),
        needs_broadcast: !cfg.broadcast.is_empty(),
    });
    let reload_task = reload::watch(
        cfg.clone(),
        nats.clone(),
        validator,
        worker.plugin().version().to_string(),
        reload_tx,
    )
    .await?;
    let mut history = History::default();
    history.push(Deployment {
        version: worker.plugin().version().to_string(),
        source: deployed_from.unwrap_or_else(|| format!("file {}", cfg.plugin.path.display())),
        at_ms: crate::checkpoint::now_ms(),
        status: DeployStatus::Live,
        reason: None,
        swap_pause_us: None,
    });
    tracing::info!(
        pipeline = %cfg.pipeline.name,
        plugin = worker.plugin().name(),
        version = worker.plugin().version(),
        resume_after,
        broadcast_inputs = broadcasts.len(),
        lookup_stores = cfg.lookup.len(),
        "pipeline running"
    );
    let (input_tx, input_rx) = mpsc::channel(2);
    let input_task = tokio::spawn(read_input(
        input,
        input_tx,
        cfg.clone(),
        state.key_groups(),
        resume_after,
        skip.clone(),
        metrics.clone(),
    ));
    let capacity = if lookups.is_some() {
        cfg.lookups.capacity
    } else {
        cfg.input.batch * 2
    };
    let publisher = Publisher::spawn(nats.js.clone(), metrics.clone());
    let mut runner = Runner {
        routes: Routes::new(&cfg),
        cfg: cfg.clone(),
        nats: nats.clone(),
        state,
        worker: Some(worker),
        planner,
        window: Window::new(cfg.lookups.mode, capacity),
        input_rx,
        broadcasts,
        broadcast_positions: restored_cut
            .positions
            .iter()
            .filter(|(k, _)| k.starts_with("broadcast:"))
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        keyed_key,
        keyed_backlog,
        keyed_read_through: resume_after,
        keyed_position: resume_after,
        restored_skip: skip,
        publisher,
        checkpoints,
        completing: None,
        last_cut: Instant::now(),
        unacked: 0,
        cut_dirty: false,
        lookups,
        metrics: metrics.clone(),
        query,
        control_rx,
        reload_rx,
        history,
        probation: None,
        next_candidate: None,
        last_checkpoint: None,
        started: Instant::now(),
        draining: false,
    };
    let result = runner.run(shutdown).await;
    // Everything that holds the state goes, so the same process can open it again.
    for t in [Some(input_task), Some(control_task), reload_task]
        .into_iter()
        .flatten()
    {
        t.abort();
        let _ = t.await;
    }
    if let Some(s) = query_service {
        s.stop().await;
    }
    if let Some(h) = query_http {
        h.abort();
        let _ = h.await;
    }
    drop(runner);
    let summary = RunSummary {
        events_in: metrics.events_in.load(Ordering::Relaxed),
        outputs: metrics.outputs.load(Ordering::Relaxed),
        dropped: metrics.dropped.load(Ordering::Relaxed),
        dead_lettered: metrics.dead_lettered_total(),
        checkpoints: metrics.checkpoints.load(Ordering::Relaxed),
    };
    result?;
    nats.client.flush().await.ok();
    tracing::info!(pipeline = %cfg.pipeline.name, "pipeline stopped cleanly");
    Ok(summary)
}

/// Restores state: from a savepoint if asked, else from the newest checkpoint (or empty).
fn restore(
    cfg: &PipelineConfig,
    opts: &RunOptions,
    checkpoints: &Checkpoints,
) -> anyhow::Result<(Arc<StateStore>, Option<Manifest>)> {
    let db_dir = cfg.db_dir();
    if let Some(sp) = &opts.from_savepoint {
        if !checkpoints.list().is_empty() {
            anyhow::bail!(
                "--from-savepoint: {} already holds checkpoints of this pipeline; restore into an empty state directory (pipeline.state_dir), or move the checkpoints away",
                checkpoints.dir().display()
            );
        }
        if db_dir.exists() {
            std::fs::remove_dir_all(&db_dir)?;
        }
        let state = Arc::new(open_state(cfg, opts, &db_dir)?);
        let owns = |kg: u16| cfg.partitions.owns(u32::from(kg) % cfg.partitions.count);
        let started = Instant::now();
        let meta = crate::checkpoint::savepoint::restore(sp, &state, owns, |p| {
            tracing::info!(
                files = p.done,
                of = p.total,
                entries = p.entries,
                "restoring savepoint"
            );
        })?;
        tracing::info!(
            savepoint = %sp.display(),
            entries = meta.entries,
            from_key_groups = meta.key_groups,
            to_key_groups = cfg.pipeline.key_groups,
            ms = started.elapsed().as_millis() as u64,
            "savepoint restored"
        );
        // Its positions name the inputs of the pipeline it came from: keep those of inputs
        // this pipeline has.
        let cut = Cut {
            positions: meta.cut.positions.clone(),
            done_after: meta.cut.done_after.clone(),
            plugin_version: meta.cut.plugin_version.clone(),
            outputs: 0,
        };
        let staged = checkpoints.cut(&state, checkpoints.next_id(), cut)?;
        let manifest = checkpoints.complete(&staged)?;
        checkpoints.retain(Some(staged.id()))?;
        return Ok((state, Some(manifest)));
    }
    let manifest = checkpoints.restore_newest(&db_dir)?;
    match &manifest {
        Some(m) => tracing::info!(checkpoint = m.id, "restored the newest checkpoint"),
        None => {
            if db_dir.exists() {
                // State without a checkpoint: a crash before the first checkpoint completed.
                // The input was never acknowledged, so starting over from empty state is exact.
                std::fs::remove_dir_all(&db_dir)?;
            }
            tracing::info!("no checkpoint yet: starting from empty state");
        }
    }
    let state = Arc::new(open_state(cfg, opts, &db_dir)?);
    if let Some(m) = &manifest
        && m.key_groups != cfg.pipeline.key_groups
    {
        anyhow::bail!(
            "the checkpoint has {} key groups but pipeline.key_groups is {}; set it back, or rescale through a savepoint",
            m.key_groups,
            cfg.pipeline.key_groups
        );
    }
    Ok((state, manifest))
}

fn open_state(
    cfg: &PipelineConfig,
    opts: &RunOptions,
    db_dir: &Path,
) -> anyhow::Result<StateStore> {
    let store_options = StoreOptions {
        periodic_compaction: Duration::from_secs(cfg.state.periodic_compaction_secs),
        write_ahead_log: false,
        hot_values_bytes: (cfg.state.hot_values_mb as usize) << 20,
    };
    let state = StateStore::open_with(
        db_dir,
        cfg.pipeline.key_groups,
        opts.clock.clone(),
        store_options,
    )
    .with_context(|| format!("cannot open state in {}", db_dir.display()))?;
    state.set_ttl_overrides(
        cfg.state
            .ttl
            .iter()
            .map(|(name, o)| (name.clone(), o.to_ttl()))
            .collect(),
    );
    Ok(state)
}

/// Opens state and compiles the plugin (blocking work), for `eddy check` and tools that run a
/// plugin without NATS: the state is the live database as it is.
pub fn build_worker(
    cfg: &PipelineConfig,
    opts: &RunOptions,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Worker> {
    let state = Arc::new(open_state(cfg, opts, &cfg.db_dir())?);
    Ok(build_worker_on(cfg, opts, metrics, state, None, None)?.worker)
}

/// A worker, its lookup planner, and the engine that compiled its plugin (new versions are
/// compiled by the same engine).
struct Built {
    worker: Worker,
    planner: Option<Planner>,
    engine: Arc<engine::Engine>,
}

fn build_worker_on(
    cfg: &PipelineConfig,
    opts: &RunOptions,
    metrics: Arc<Metrics>,
    state: Arc<StateStore>,
    lookups: Option<Arc<Lookups>>,
    deployed: Option<Vec<u8>>,
) -> anyhow::Result<Built> {
    let cache = opts
        .compile_cache
        .clone()
        .unwrap_or_else(|| default_cache_dir(&cfg.pipeline.state_dir));
    let engine = Arc::new(engine::Engine::new(Some(&cache))?);
    let plugin = match deployed {
        Some(wasm) => engine.load(&wasm, &cfg.pipeline.name)?,
        None => engine.load_file(&cfg.plugin.path)?,
    };
    let ctx = InstanceContext {
        state,
        limits: engine::Limits {
            cpu_per_event: cfg.limits.cpu_per_event(),
            memory_bytes: (cfg.limits.memory_mb as usize) << 20,
        },
        lookups: lookups.map(|l| l as Arc<dyn engine::LookupSource>),
    };
    let config_json = cfg.plugin.config_json();
    let planner = if ctx.lookups.is_some() {
        Planner::new(&plugin, &ctx, &config_json)?
    } else {
        None
    };
    let worker = Worker::new(plugin, ctx, config_json, metrics)?;
    Ok(Built {
        worker,
        planner,
        engine,
    })
}

fn default_cache_dir(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join(".compiled")
}

/// Refuses (or warns, per `checkpoint.dedupe_check`) when the output stream's duplicate window
/// is shorter than a checkpoint interval plus the recovery allowance: outputs replayed after a
/// crash could then be stored twice.
async fn check_dedupe_window(nats: &Nats, cfg: &PipelineConfig) -> anyhow::Result<()> {
    let need =
        Duration::from_millis(cfg.checkpoint.interval_ms + cfg.checkpoint.recovery_allowance_ms);
    for (subject, field) in [
        (&cfg.output.subject, "output.subject"),
        (&cfg.dead_letter.subject, "dead_letter.subject"),
    ] {
        let name = transport::check_captured(nats, subject, field).await?;
        let mut stream = nats.js.get_stream(&name).await?;
        let window = stream.info().await?.config.duplicate_window;
        if window < need {
            let msg = format!(
                "stream {name} (capturing {field} `{subject}`) keeps message ids for {} s, less than checkpoint.interval_ms + checkpoint.recovery_allowance_ms = {} s: after a crash, replayed outputs could be stored twice. Raise the stream's duplicate window (`nats stream edit {name} --dupe-window {}s`) or shorten checkpoint.interval_ms",
                window.as_secs_f64(),
                need.as_secs_f64(),
                need.as_secs().max(1)
            );
            match cfg.checkpoint.dedupe_check {
                crate::config::DedupeCheck::Refuse => {
                    anyhow::bail!("{msg}; or set checkpoint.dedupe_check = \"warn\" to run anyway")
                }
                crate::config::DedupeCheck::Warn => tracing::warn!("{msg}"),
            }
        }
    }
    Ok(())
}

/// Reads keyed batches, skips what is already done, extracts keys: off the run loop.
async fn read_input(
    mut input: Input,
    tx: mpsc::Sender<Vec<(jetstream::Message, Arrival)>>,
    cfg: Arc<PipelineConfig>,
    key_groups: u32,
    resume_after: u64,
    skip: BTreeSet<u64>,
    metrics: Arc<Metrics>,
) {
    let mut max_seen = resume_after;
    let source_name: Arc<str> = KEYED.into();
    let key_of = keys::KeyExtractor::new(&cfg.input.key);
    while let Some(batch) = input.next_batch(cfg.input.batch).await {
        let mut arrivals = Vec::with_capacity(batch.len());
        for msg in batch {
            let (seq, stored_ns) = match msg.info() {
                Ok(info) => (
                    info.stream_sequence,
                    info.published.unix_timestamp_nanos() as u64,
                ),
                Err(e) => {
                    tracing::warn!("input message without JetStream metadata ({e}); skipped");
                    continue;
                }
            };
            if seq <= max_seen {
                // Delivered again (an ack wait expired): it is in the window or done.
                metrics.skipped_replays.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            max_seen = seq;
            let source = Arc::new(Source {
                input: source_name.clone(),
                subject: msg.subject.clone(),
                seq,
                payload: msg.payload.clone(),
                headers: msg.headers.clone(),
            });
            let body = if skip.contains(&seq) {
                metrics.skipped_replays.fetch_add(1, Ordering::Relaxed);
                Body::Done
            } else {
                metrics.events_in.fetch_add(1, Ordering::Relaxed);
                match key_of.extract(&msg.subject, msg.headers.as_ref(), &msg.payload) {
                    Ok(key) => Body::Event {
                        key_group: crate::state::keygroup::key_group(&key, key_groups),
                        event: Event {
                            key,
                            subject: msg.subject.to_string(),
                            headers: headers_to_wit(msg.headers.as_ref()),
                            payload: msg.payload.to_vec(),
                            timestamp_ms: stored_ns / 1_000_000,
                            sequence: seq,
                        },
                    },
                    Err(reason) => Body::BadKey(reason),
                }
            };
            arrivals.push((
                msg,
                Arrival {
                    seq,
                    stored_ns,
                    source,
                    body,
                },
            ));
        }
        if !arrivals.is_empty() && tx.send(arrivals).await.is_err() {
            break;
        }
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
    tracing::info!("stop requested");
    let _ = tx.send(true);
}
