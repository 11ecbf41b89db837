//! Start-up steps of a run: restoring state (newest checkpoint or a savepoint), opening it,
//! compiling the plugin into a worker, and the checks that must pass before any input is read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::RunOptions;
use crate::checkpoint::{Checkpoints, Cut, Manifest};
use crate::config::{PipelineConfig, ReloadWatch};
use crate::engine::{self, InstanceContext, Planner, Worker};
use crate::lookup::Lookups;
use crate::metrics::Metrics;
use crate::reload::{self, History, record};
use crate::state::{StateStore, StoreOptions};
use crate::transport::{self, Nats};

/// Restores state: from a savepoint if asked, else from the newest checkpoint (or empty).
/// Returns the checkpoint restored, and whether it is the savepoint's (cut from it here, not
/// yet committed under a lease).
///
/// In cluster mode a savepoint seeds only a partition that has never committed a checkpoint:
/// a host started with `--from-savepoint` keeps the option for every partition it takes
/// later, and those must go on from their committed state.
pub(super) fn restore(
    cfg: &PipelineConfig,
    opts: &RunOptions,
    checkpoints: &Checkpoints,
) -> anyhow::Result<(Arc<StateStore>, Option<Manifest>, bool)> {
    let db_dir = cfg.db_dir();
    // A savepoint's cut left by a crash while it was written: nothing will finish it.
    let _ = std::fs::remove_dir_all(cfg.savepoint_staging_dir());
    let committed = opts.fence.as_ref().and_then(|f| f.committed());
    let from_savepoint = match (&opts.from_savepoint, committed) {
        (Some(sp), Some(id)) => {
            tracing::info!(
                checkpoint = id,
                savepoint = %sp.display(),
                "the partition has a committed checkpoint: restored from it, not from the savepoint (--from-savepoint seeds only partitions that never committed one)"
            );
            None
        }
        (sp, _) => sp.as_ref(),
    };
    if let Some(sp) = from_savepoint {
        // The state directory's own checkpoints: a store beyond the host may hold this
        // pipeline's earlier checkpoints, and the savepoint's cut becomes the newest there.
        // (Under a lease the pointer decides instead, and it names none of them.)
        if opts.fence.is_none() && !checkpoints.list_local().is_empty() {
            anyhow::bail!(
                "--from-savepoint: {} already holds checkpoints of this pipeline; restore into an empty state directory (pipeline.state_dir), or move the checkpoints away",
                checkpoints.dir().display()
            );
        }
        if db_dir.exists() {
            std::fs::remove_dir_all(&db_dir)?;
        }
        let state = Arc::new(open_state(cfg, opts.clock.clone(), &db_dir)?);
        let owns = |kg: u16| cfg.partitions.owns(u32::from(kg) % cfg.partitions.count);
        let started = Instant::now();
        // A bar for the operator who started `eddy run --from-savepoint` at a terminal (hidden
        // otherwise: the log lines say the same).
        let bar = indicatif::ProgressBar::new(0).with_style(
            indicatif::ProgressStyle::with_template(
                "restoring the savepoint {bar:40} {pos}/{len} files, {msg} entries ({eta} left)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let meta = crate::checkpoint::savepoint::restore(sp, &state, owns, |p| {
            bar.set_length(p.total as u64);
            bar.set_position(p.done as u64);
            bar.set_message(p.entries.to_string());
            tracing::debug!(
                files = p.done,
                of = p.total,
                entries = p.entries,
                "restoring savepoint"
            );
        });
        bar.finish_and_clear();
        let meta = meta?;
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
        if opts.fence.is_none() {
            // Under a lease retention waits for the commit (`super::prepare`): until then the
            // pointer names an older checkpoint, which retention would keep, or none.
            checkpoints.retain(Some(staged.id()))?;
        }
        return Ok((state, Some(manifest), true));
    }
    // A spinner while a single host restores (and downloads what its cache lacks), at a
    // terminal only; cluster partitions restore in the background and log instead.
    let spinner = match &opts.fence {
        None => {
            let from = match checkpoints.storage() {
                Some(s) => s.describe(),
                None => checkpoints.dir().display().to_string(),
            };
            let s = indicatif::ProgressBar::new_spinner()
                .with_message(format!("restoring the newest checkpoint from {from}"));
            s.enable_steady_tick(Duration::from_millis(120));
            Some(s)
        }
        Some(_) => None,
    };
    let manifest = match (&opts.fence, committed) {
        // A partition whose pointer names no checkpoint yet starts empty, whatever an
        // earlier owner left uncommitted in the store.
        (Some(_), None) => Ok(None),
        _ => checkpoints.restore_up_to(&db_dir, committed),
    };
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    let manifest = manifest.map_err(|e| in_cluster(e, cfg, opts))?;
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
    let state = Arc::new(open_state(cfg, opts.clock.clone(), &db_dir)?);
    if let Some(m) = &manifest
        && m.key_groups != cfg.pipeline.key_groups
    {
        anyhow::bail!(
            "the checkpoint has {} key groups but pipeline.key_groups is {}; set it back, or rescale through a savepoint",
            m.key_groups,
            cfg.pipeline.key_groups
        );
    }
    Ok((state, manifest, false))
}

/// A restore's error, with the way back that applies in a cluster: there `--from-savepoint`
/// seeds only partitions that never committed a checkpoint, so a partition whose every
/// checkpoint is corrupt is started over with `eddy cluster reset`.
fn in_cluster(
    e: crate::checkpoint::Error,
    cfg: &PipelineConfig,
    opts: &RunOptions,
) -> anyhow::Error {
    match (&e, &opts.fence, cfg.run_partition) {
        (crate::checkpoint::Error::AllCorrupt { ids, .. }, Some(_), Some(p)) => anyhow::anyhow!(
            "every checkpoint of partition {p} is corrupt ({ids:?}): run `eddy cluster reset <pipeline.toml> --partition {p}` to start it over (its next owner replays the input stream from its start, or seeds the partition from a savepoint if that host runs with --from-savepoint)"
        ),
        _ => e.into(),
    }
}

/// Opens the state in `db_dir` with the pipeline's settings (also a shadow's, seeded there).
pub(super) fn open_state(
    cfg: &PipelineConfig,
    clock: Arc<dyn crate::state::Clock>,
    db_dir: &Path,
) -> anyhow::Result<StateStore> {
    let store_options = StoreOptions {
        periodic_compaction: Duration::from_secs(cfg.state.periodic_compaction_secs),
        write_ahead_log: false,
        hot_values_bytes: (cfg.state.hot_values_mb as usize) << 20,
        block_cache_bytes: (cfg.state.block_cache_mb as usize) << 20,
    };
    let state = StateStore::open_with(db_dir, cfg.pipeline.key_groups, clock, store_options)
        .with_context(|| format!("cannot open state in {}", db_dir.display()))?;
    state.set_ttl_overrides(
        cfg.state
            .ttl
            .iter()
            .map(|(name, o)| (name.clone(), o.to_ttl()))
            .collect(),
    );
    state.set_quotas(
        cfg.state
            .quota
            .iter()
            .map(|(name, q)| (name.clone(), *q))
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
    let state = Arc::new(open_state(cfg, opts.clock.clone(), &cfg.db_dir())?);
    Ok(build_worker_on(cfg, opts, metrics, state, None, None)?.worker)
}

/// A worker, its lookup planner, and the engine that compiled its plugin (new versions are
/// compiled by the same engine).
pub(super) struct Built {
    pub(super) worker: Worker,
    pub(super) planner: Option<Planner>,
    pub(super) engine: Arc<engine::Engine>,
}

pub(super) fn build_worker_on(
    cfg: &PipelineConfig,
    opts: &RunOptions,
    metrics: Arc<Metrics>,
    state: Arc<StateStore>,
    lookups: Option<Arc<Lookups>>,
    deployed: Option<Vec<u8>>,
) -> anyhow::Result<Built> {
    let engine = match &opts.engine {
        Some(shared) => shared.clone(),
        None => {
            let cache = opts
                .compile_cache
                .clone()
                .unwrap_or_else(|| default_cache_dir(&cfg.pipeline.state_dir));
            Arc::new(engine::Engine::new(Some(&cache))?)
        }
    };
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
        batch_calls: true,
        packed_batches: true,
    };
    let config_json = cfg.plugin.config_json();
    let planner = super::plan::planner(&plugin, &ctx, &config_json, cfg)?;
    let worker = Worker::new(plugin, ctx, config_json, metrics)?;
    Ok(Built {
        worker,
        planner,
        engine,
    })
}

pub(crate) fn default_cache_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(".compiled")
}

/// Refuses (or warns, per `checkpoint.dedupe_check`) when the output stream's duplicate window
/// is shorter than a checkpoint interval plus the recovery allowance: outputs replayed after a
/// crash could then be stored twice.
async fn check_dedupe_window(nats: &Nats, cfg: &PipelineConfig) -> anyhow::Result<()> {
    // In a cluster, a dead host's partitions wait for its lease to lapse before another host
    // restores and replays them, and a partition being handed over may hold its checkpoints
    // for up to `WARM_WAIT` first.
    let lease = cfg
        .cluster
        .as_ref()
        .map_or(0, |c| c.lease_ms + super::WARM_WAIT.as_millis() as u64);
    let need = Duration::from_millis(
        cfg.checkpoint.interval_ms + cfg.checkpoint.recovery_allowance_ms + lease,
    );
    for (subject, field) in [
        (&cfg.output.subject, "output.subject"),
        (&cfg.dead_letter.subject, "dead_letter.subject"),
    ] {
        let name = transport::check_captured(nats, subject, field).await?;
        let mut stream = nats.js.get_stream(&name).await?;
        let window = stream.info().await?.config.duplicate_window;
        if window < need {
            let msg = format!(
                "stream {name} (capturing {field} `{subject}`) keeps message ids for {} s, less than checkpoint.interval_ms + checkpoint.recovery_allowance_ms (+ cluster.lease_ms + 30 s of a hand-off) = {} s: after a crash, replayed outputs could be stored twice. Raise the stream's duplicate window (`nats stream edit {name} --dupe-window {}s`) or shorten checkpoint.interval_ms",
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

/// Checks that a stream stores every output and dead letter, that it is not the input stream
/// (one event would become endlessly many), and that its duplicate window covers a replay.
/// The plugin to start: the deployed component when versions come from the plugin bucket
/// (`None`: the file at `plugin.path`), where it came from, and the remembered deployment
/// history. A deployed version that was rolled back is not started again: the last good
/// version is, from the bucket, or else the file. One that was still on probation when the
/// hosts stopped is not taken as passed: the last good version starts, and the reload
/// watcher, seeing the deployed version differ, puts it on probation again.
pub(super) async fn choose_plugin(
    nats: &Nats,
    cfg: &PipelineConfig,
) -> anyhow::Result<(Option<Vec<u8>>, String, History)> {
    let file = || format!("file {}", cfg.plugin.path.display());
    if cfg.reload.watch != ReloadWatch::ObjectStore {
        return Ok((None, file(), History::default()));
    }
    let (bucket, pipeline) = (&cfg.reload.bucket, &cfg.pipeline.name);
    let history = record::load(nats, bucket, pipeline).await;
    let Some(wasm) = reload::deployed(nats, bucket, pipeline).await? else {
        return Ok((None, file(), history));
    };
    let version = engine::version_of(&wasm);
    let why = if let Some(reason) = history.rolled_back(&version) {
        format!("was rolled back ({reason}); deploy a fixed version")
    } else if history.on_probation(&version) {
        "was on probation when the host stopped; it goes on probation again".to_string()
    } else {
        return Ok((
            Some(wasm),
            format!("object store {bucket}/{pipeline}"),
            history,
        ));
    };
    let good = history.last_good_besides(&version).map(str::to_string);
    let kept = match &good {
        Some(v) => record::component(nats, bucket, pipeline, v).await,
        None => None,
    };
    let (wasm, source) = match (kept, good) {
        (Some(w), Some(v)) => (
            Some(w),
            format!("object store {bucket}/{}", record::versioned(pipeline, &v)),
        ),
        _ => (None, file()),
    };
    tracing::warn!(
        deployed = %version,
        starting = %source,
        "the deployed version {why}; starting the last good version first"
    );
    Ok((wasm, source, history))
}

pub(super) async fn check_outputs(nats: &Nats, cfg: &PipelineConfig) -> anyhow::Result<()> {
    for (subject, field) in [
        (&cfg.output.subject, "output.subject"),
        (&cfg.dead_letter.subject, "dead_letter.subject"),
    ] {
        let stream = transport::check_captured(nats, subject, field).await?;
        if stream == cfg.input.stream {
            anyhow::bail!(
                "{field} `{subject}` is stored in the input stream {stream}: every message sent there would be read and handled again, forever; send it to a subject a different stream captures"
            );
        }
    }
    check_dedupe_window(nats, cfg).await
}

/// Refuses a plugin that cannot serve the pipeline's inputs.
pub(super) fn check_capabilities(cfg: &PipelineConfig, worker: &Worker) -> anyhow::Result<()> {
    if !cfg.broadcast.is_empty() && !worker.plugin().capabilities().broadcast {
        anyhow::bail!(
            "the pipeline has broadcast inputs ({}) but plugin {} does not export broadcast-handler; give it a broadcast handler (Rust: Processor::process_broadcast, JavaScript: processBroadcast, Python: process_broadcast, Go: ProcessBroadcast, C: the .broadcast hook of EDDY_PLUGIN), or remove [broadcast]",
            cfg.broadcast.keys().cloned().collect::<Vec<_>>().join(", "),
            worker.plugin().name()
        );
    }
    Ok(())
}

/// Lets the plugin migrate state written by another version (the one in the restored cut).
pub(super) async fn migrate_from(mut worker: Worker, restored: &Cut) -> anyhow::Result<Worker> {
    if restored.plugin_version.is_empty() || restored.plugin_version == worker.plugin().version() {
        return Ok(worker);
    }
    let previous = restored.plugin_version.clone();
    let (worker, r) = tokio::task::spawn_blocking(move || {
        let r = worker.migrate(&previous);
        (worker, r)
    })
    .await?;
    if let Err(msg) = r? {
        anyhow::bail!(
            "plugin {} refused to migrate state written by version {}: {msg}",
            worker.plugin().version(),
            restored.plugin_version
        );
    }
    Ok(worker)
}
