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
mod input;
pub mod json;
pub mod keys;
mod plan;
pub mod route;
mod runner;
mod services;
mod start;
pub(crate) mod window;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use crate::checkpoint::Cut;
use crate::config::{PipelineConfig, ReloadWatch};
use crate::lookup::Lookups;
use crate::metrics::Metrics;
use crate::reload::{self, DeployStatus, Deployment};
use crate::state::{Clock, SystemClock};
use crate::transport::{self, BroadcastInput, Input, Publisher};

pub use route::{
    HEADER_ERROR, HEADER_ERROR_KIND, HEADER_PLUGIN_VERSION, HEADER_SOURCE_SEQUENCE,
    HEADER_SOURCE_SUBJECT,
};
pub use start::build_worker;
pub(crate) use start::default_cache_dir;

use route::Routes;
use runner::{Checkpointing, Reloading, Runner};
use services::Services;
use window::Window;

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

impl RunSummary {
    pub(crate) fn of(metrics: &Metrics) -> RunSummary {
        RunSummary {
            events_in: metrics.events_in.load(Ordering::Relaxed),
            outputs: metrics.outputs.load(Ordering::Relaxed),
            dropped: metrics.dropped.load(Ordering::Relaxed),
            dead_lettered: metrics.dead_lettered_total(),
            checkpoints: metrics.checkpoints.load(Ordering::Relaxed),
        }
    }
}

/// What a run of partitions held under a lease checks so that it never acts once another
/// host may own them (cluster mode): a host paused past its lease, or cut off from NATS, must
/// not commit a checkpoint over the new owner's, acknowledge input, or publish.
pub trait Fence: Send + Sync {
    /// `Err(why)` once this host's lease may have lapsed by its own clock.
    fn check(&self) -> Result<(), String>;
    /// Moves the partition's checkpoint pointer to checkpoint `id` by compare-and-set.
    fn commit(&self, id: u64) -> futures::future::BoxFuture<'static, Result<(), CommitError>>;
    /// The checkpoint the pointer names: restore it (or an older one), never a newer one.
    fn committed(&self) -> Option<u64>;
    /// The base of this owner's checkpoint ids (its generation `<< 32`).
    fn id_base(&self) -> u64;
}

/// Why [`Fence::commit`] did not commit a checkpoint.
#[derive(Debug)]
pub enum CommitError {
    /// Another owner moved the pointer, or this host's lease may have lapsed: the run stops.
    Fenced(String),
    /// The pointer could be neither written nor read back (NATS out of reach, a timeout): the
    /// checkpoint does not count, nothing is acknowledged, and the next checkpoint tries again.
    Failed(String),
}

impl CommitError {
    /// The run's error for it: [`Fenced`] for a fenced commit.
    pub(crate) fn into_error(self) -> anyhow::Error {
        match self {
            CommitError::Fenced(why) => anyhow::Error::new(Fenced(why)),
            CommitError::Failed(why) => {
                anyhow::anyhow!("the checkpoint could not be committed: {why}")
            }
        }
    }
}

/// The error a fenced run stops with: it lost its lease, and did not acknowledge, commit or
/// publish anything after noticing.
#[derive(Debug)]
pub struct Fenced(pub String);

impl std::fmt::Display for Fenced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fenced: {}", self.0)
    }
}

impl std::error::Error for Fenced {}

impl Fenced {
    /// `e`, or [`Fenced`] if `fence` is closed: the publisher and the input stop by
    /// themselves at a closed fence, and their errors then mean that.
    pub(crate) fn or(fence: Option<&Arc<dyn Fence>>, e: anyhow::Error) -> anyhow::Error {
        match fence.and_then(|f| f.check().err()) {
            Some(why) => anyhow::Error::new(Fenced(why)),
            None => e,
        }
    }
}

/// How long an owner waits for the receiver of a planned move to fetch the partition's
/// checkpoint before handing the partition over anyway: the longest a run holds its
/// checkpoints for a hand-off (the start-up check of the duplicate window counts it).
pub const WARM_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How a run under a lease moves to another host (cluster mode): set by the host's
/// supervisor, read by the run loop.
#[derive(Debug, Default)]
pub struct HandOff {
    /// The partition is about to move: no new checkpoint is cut, so the one its receiver
    /// fetched ahead stays the committed one.
    pub hold: AtomicBool,
    /// Set before the stop: the run stops at once, without finishing the events in hand or
    /// taking a last checkpoint; the new owner restores the committed checkpoint (fetched
    /// ahead) and replays from its position, the output streams drop the replayed outputs as
    /// duplicates by id, and the new owner answers `latest` queries once the replay has
    /// caught up. Unset, a stop finishes the events in hand and takes a last checkpoint.
    pub quick: AtomicBool,
}

/// Options for a run beyond the config file.
#[derive(Clone)]
pub struct RunOptions {
    /// The processing-time clock (tests inject a manual one).
    pub clock: Arc<dyn Clock>,
    /// Where compiled components are cached; default: `<state_dir>/.compiled`.
    pub compile_cache: Option<std::path::PathBuf>,
    /// The engine to compile and run the plugin with, shared by the runs of one process (a
    /// cluster host's partitions: each version compiled once, one epoch ticker); default: an
    /// engine of the run's own, caching in `compile_cache`.
    pub engine: Option<Arc<crate::engine::Engine>>,
    /// Start from this savepoint instead of the newest checkpoint (the state directory must
    /// hold no checkpoint).
    pub from_savepoint: Option<std::path::PathBuf>,
    /// The lease the run's partitions are held under (cluster mode).
    pub fence: Option<Arc<dyn Fence>>,
    /// How the run's partition moves to another host (cluster mode).
    pub hand_off: Option<Arc<HandOff>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            clock: Arc::new(SystemClock),
            compile_cache: None,
            engine: None,
            from_savepoint: None,
            fence: None,
            hand_off: None,
        }
    }
}

/// The name of the keyed input in message ids.
const KEYED: &str = "in";

/// What a run starts from, once steps 1-4 are done.
struct Prepared {
    nats: transport::Nats,
    lookups: Option<Arc<Lookups>>,
    checkpoints: Arc<crate::checkpoint::Checkpoints>,
    state: Arc<crate::state::StateStore>,
    /// The cut the state was restored to (empty for a first run).
    restored: Cut,
    /// Where the plugin came from, and the deployment history it continues.
    source: String,
    history: crate::reload::History,
    built: start::Built,
}

/// Steps 1-4 of a run: NATS, lookups and the checkpoint store; state restored, the plugin
/// chosen and built, the outputs checked, all before any input is read.
async fn prepare(
    cfg: &Arc<PipelineConfig>,
    opts: &RunOptions,
    shutdown: &Shutdown,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Prepared> {
    // 1. NATS, the lookup stores, and where checkpoints are kept beyond this host.
    let nats = transport::connect_waiting(
        &cfg.nats,
        &format!("eddy:{}", cfg.pipeline.name),
        &mut shutdown.clone(),
    )
    .await?;
    let lookups = Lookups::connect(cfg, Some(&nats)).await?;
    if let Some(l) = &lookups {
        metrics.attach_lookups(l.tally());
    }
    let mut checkpoints = match crate::storage::open(cfg, &nats).await? {
        Some(storage) => cfg.checkpoints().with_storage(storage),
        None => cfg.checkpoints(),
    };
    if let Some(fence) = &opts.fence {
        checkpoints = checkpoints.with_id_base(fence.id_base());
    }
    let checkpoints = Arc::new(checkpoints);

    // 2. State: the newest checkpoint (or a savepoint), restored before any input is read;
    // 3. the plugin: the newest deployed version wins over the file named in the pipeline,
    //    unless it was rolled back; then the last good one;
    // 4. the outputs' streams checked. The three at once: a partition taken over waits for
    //    all of them.
    let restoring = Instant::now();
    let restore = {
        let (cfg, opts, checkpoints) = (cfg.clone(), opts.clone(), checkpoints.clone());
        tokio::task::spawn_blocking(move || start::restore(&cfg, &opts, &checkpoints))
    };
    let (restore, chosen, outputs_checked) = tokio::join!(
        restore,
        start::choose_plugin(&nats, cfg),
        start::check_outputs(&nats, cfg)
    );
    let (state, restored, seeded) = restore??;
    // A partition seeded from a savepoint commits that state before it reads any input: a
    // later owner restores it from the pointer, with or without `--from-savepoint`.
    if let (Some(fence), Some(m), true) = (&opts.fence, &restored, seeded) {
        // A failed commit is tried again here: the run failing would hand the partition to a
        // host that may not have the savepoint.
        let mut tries = 0;
        while let Err(e) = fence.commit(m.id).await {
            tries += 1;
            match e {
                CommitError::Failed(why) if tries < 10 => {
                    tracing::warn!(
                        checkpoint = m.id,
                        "committing the savepoint's state failed ({why}); trying again"
                    );
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                e => return Err(e.into_error()),
            }
        }
        tracing::info!(checkpoint = m.id, "the savepoint's state is committed");
        let (checkpoints, keep) = (checkpoints.clone(), m.id);
        if let Err(e) = tokio::task::spawn_blocking(move || checkpoints.retain(Some(keep))).await? {
            tracing::warn!(
                checkpoint = keep,
                "removing older checkpoints failed: {e:#}; the next checkpoint tries again"
            );
        }
    }
    metrics
        .restore_seconds
        .observe(restoring.elapsed().as_secs_f64());
    metrics.attach_state(state.stats().clone());
    let restored = restored.map(|m| m.cut).unwrap_or_default();
    let (deployed, source, history) = chosen?;
    let built = {
        let (cfg, opts, metrics, state) =
            (cfg.clone(), opts.clone(), metrics.clone(), state.clone());
        let lookups = lookups.clone();
        tokio::task::spawn_blocking(move || {
            start::build_worker_on(&cfg, &opts, metrics, state, lookups, deployed)
        })
        .await??
    };

    // Checks that must pass before any input is read.
    outputs_checked?;
    start::check_capabilities(cfg, &built.worker)?;
    Ok(Prepared {
        nats,
        lookups,
        checkpoints,
        state,
        restored,
        source,
        history,
        built,
    })
}

/// Runs a pipeline until `shutdown` says stop, then finishes the events in hand, takes a last
/// checkpoint, acknowledges and returns.
pub async fn run(
    cfg: PipelineConfig,
    opts: RunOptions,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
) -> anyhow::Result<RunSummary> {
    let cfg = Arc::new(cfg);

    // 1-4. NATS, state and the plugin, before any input is read.
    let Prepared {
        nats,
        lookups,
        checkpoints,
        state,
        restored,
        source,
        mut history,
        built,
    } = prepare(&cfg, &opts, &shutdown, &metrics).await?;
    let worker = start::migrate_from(built.worker, &restored).await?;
    if cfg.reload.watch == ReloadWatch::ObjectStore && source.starts_with("file ") {
        keep_file_version(&nats, &cfg, worker.plugin().version());
    }

    // 5. Inputs, from just after the restored positions.
    let keyed_key = Input::position_key(&cfg);
    let resume_after = restored.positions.get(&keyed_key).copied().unwrap_or(0);
    let skip: BTreeSet<u64> = restored
        .done_after
        .get(&keyed_key)
        .map(|v| v.iter().copied().collect())
        .unwrap_or_default();
    // 6. Services beside the loop: queries, control requests, hot reload. Opened together
    //    with the inputs (a partition taken over waits for both).
    let (control_tx, control_rx) = mpsc::channel(16);
    let (reload_tx, reload_rx) = mpsc::channel(4);
    // A run answers `latest` queries once it has caught up with what was published before it
    // started: a partition taken over (cluster mode), or a restart replaying from its
    // checkpoint.
    let caught_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let validator = Arc::new(reload::Validator {
        engine: built.engine,
        ctx: std::sync::RwLock::new(worker.context().clone()),
        config_json: worker.config_json().to_string(),
        needs_broadcast: !cfg.broadcast.is_empty(),
        prepare_plans: cfg.prepare_plans_lookups(),
    });
    // The input and the publisher stop touching the partition's streams once its lease may
    // have lapsed, even in the middle of a call.
    let gate = opts
        .fence
        .clone()
        .map(|fence| Arc::new(move || fence.check()) as transport::Gate);
    let (input, broadcasts, services) = tokio::join!(
        Input::open(&nats, &cfg, resume_after),
        open_broadcasts(&nats, &cfg, &restored),
        Services::start(
            &cfg,
            &nats,
            &state,
            control_tx,
            validator.clone(),
            worker.plugin().version().to_string(),
            reload_tx,
            opts.fence.clone(),
            caught_up.clone(),
            checkpoints.clone(),
        )
    );
    let services = services?;
    let (input, broadcasts) = match (input, broadcasts) {
        (Ok(input), Ok(broadcasts)) => (input.with_gate(gate.clone()), broadcasts),
        (Err(e), _) | (_, Err(e)) => {
            services.stop().await;
            return Err(e);
        }
    };
    let keyed_backlog = input.backlog.clone();
    let input_pending = input.pending.clone();
    metrics.attach_input_pending(&input_pending);
    // Up to where outputs may be out already: in a cluster, whatever the stream held (the
    // previous owner may have handled any of it); on one host, what the consumer had delivered
    // before this start.
    let replay_through = match (&opts.fence, input.delivered_before) {
        (Some(_), _) => input.stored_through(),
        (None, Some(delivered)) => delivered,
        // No consumer before this start though a checkpoint was restored: a nats-server
        // restarted since forgot it (the server keeps it in memory), and the previous run may
        // have got anywhere in what the stream held.
        (None, None) if resume_after > 0 => input.stored_through(),
        (None, None) => 0,
    };
    let catching_up = if replay_through <= resume_after {
        caught_up.store(true, std::sync::atomic::Ordering::Release);
        None
    } else {
        Some(runner::CatchingUp::new(caught_up, replay_through))
    };
    history.push(Deployment {
        version: worker.plugin().version().to_string(),
        source,
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

    // 7. The run loop, fed by the reader task.
    let (input_tx, input_rx) = mpsc::channel(2);
    let input_task = tokio::spawn(input::read_input(
        input,
        input_tx,
        input::Reader {
            cfg: cfg.clone(),
            key_groups: state.key_groups(),
            resume_after,
            skip: skip.clone(),
            metrics: metrics.clone(),
            fence: opts.fence.clone(),
        },
    ));
    // Events wait on lookups up to `lookups.capacity`; ready ones wait for the plugin up to
    // two groups: the one it takes next and the one after, admitted while it runs.
    let ready_capacity = cfg.input.batch * 2;
    let mut runner = Runner {
        routes: Routes::new(&cfg),
        cfg: cfg.clone(),
        state,
        worker: Some(worker),
        planner: built.planner,
        window: Window::new(cfg.lookups.mode, cfg.lookups.capacity, ready_capacity),
        input_rx,
        broadcasts,
        broadcast_positions: restored
            .positions
            .iter()
            .filter(|(k, _)| k.starts_with("broadcast:"))
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        keyed_key,
        keyed_backlog,
        input_pending,
        keyed_read_through: resume_after,
        restored_skip: skip,
        publisher: Publisher::spawn(nats.js.clone(), metrics.clone(), gate.clone()),
        checkpointing: Checkpointing::new(checkpoints, resume_after),
        reloading: Reloading::new(
            reload_rx,
            history,
            (cfg.reload.watch == ReloadWatch::ObjectStore).then(|| {
                (
                    nats.clone(),
                    cfg.reload.bucket.clone(),
                    cfg.pipeline.name.clone(),
                )
            }),
        ),
        shadowing: runner::Shadowing::new(&cfg, validator),
        lookups,
        metrics: metrics.clone(),
        query: services.query.clone(),
        control_rx,
        started: Instant::now(),
        draining: false,
        fence: opts.fence.clone(),
        fenced: None,
        hand_off: opts.hand_off.clone(),
        catching_up,
    };
    let result = runner.run(shutdown).await;
    runner.settle().await;

    // 8. Teardown: everything that holds the state goes, so the same process can open it
    //    again.
    input_task.abort();
    let _ = input_task.await;
    services.stop().await;
    drop(runner);
    let summary = RunSummary::of(&metrics);
    result?;
    nats.client.flush().await.ok();
    tracing::info!(pipeline = %cfg.pipeline.name, "pipeline stopped cleanly");
    Ok(summary)
}

/// Keeps the plugin this run loaded from its file in the plugin bucket (in the background), so
/// a later rollback can return to it.
fn keep_file_version(nats: &transport::Nats, cfg: &Arc<PipelineConfig>, version: &str) {
    let (nats, cfg, version) = (nats.clone(), cfg.clone(), version.to_string());
    tokio::spawn(async move {
        let (bucket, pipeline) = (&cfg.reload.bucket, &cfg.pipeline.name);
        if reload::keeps(&nats, bucket, pipeline, &version).await {
            return;
        }
        let path = &cfg.plugin.path;
        let kept = async {
            let wasm = tokio::fs::read(path).await?;
            let note = format!("loaded from file {}", path.display());
            reload::keep(&nats, bucket, pipeline, &wasm, &note).await
        };
        if let Err(e) = kept.await {
            tracing::warn!(
                "cannot keep the plugin from {} in the plugin bucket `{}`: {e:#}; a rollback cannot return to this version",
                path.display(),
                cfg.reload.bucket
            );
        }
    });
}

/// Opens every broadcast input just after its restored position.
async fn open_broadcasts(
    nats: &transport::Nats,
    cfg: &PipelineConfig,
    restored: &Cut,
) -> anyhow::Result<Vec<BroadcastInput>> {
    let mut broadcasts = Vec::new();
    for (name, bcfg) in &cfg.broadcast {
        let after = restored
            .positions
            .get(&BroadcastInput::position_key(name))
            .copied()
            .unwrap_or(0);
        broadcasts.push(BroadcastInput::open(nats, name, bcfg, after).await?);
    }
    Ok(broadcasts)
}

/// Registers for SIGINT and SIGTERM at once (a signal that arrives while the host is still
/// starting asks it to stop, rather than killing it mid-restore), then signals `tx` on the
/// first one from a task of its own. Call it first thing in a command that runs a pipeline.
pub fn stop_on_signals(tx: watch::Sender<bool>) -> anyhow::Result<()> {
    use anyhow::Context;
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot listen for SIGINT (Ctrl-C)")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        tracing::info!("stop requested");
        let _ = tx.send(true);
    });
    Ok(())
}
