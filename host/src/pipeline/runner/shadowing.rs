//! Shadow deploys from the run loop's side: seeding the shadow's state from the live state
//! (a RocksDB checkpoint, hard links, at a batch boundary), running the shadow on every batch
//! the live version runs, concurrently on its own thread, comparing their outcomes event by
//! event, and promoting or discarding it.
//!
//! Owns the running shadow ([`Shadowing`]): its worker (plugin and state), its state's
//! directory under `<state_dir>/shadow/`, and its report.
//!
//! Never: publishes a shadow's output, or lets a shadow's failure stop the live version (a
//! shadow that errors stops by itself and says why in its report). Promotion happens at a
//! batch boundary with both versions at the same event, and is followed at once by a
//! checkpoint of the promoted state.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Runner;
use crate::engine::{
    BroadcastEvent, Event, Failure, InstanceContext, Outcome, Planner, Prefetched, Worker,
};
use crate::pipeline::plan;
use crate::reload::shadow::{ShadowReport, Subjects};
use crate::reload::{Candidate, DeployStatus, Deployment, Validator};
use crate::state::StateStore;

/// The shadow of this run, if one is declared.
pub(in crate::pipeline) struct Shadowing {
    running: Option<Shadow>,
    /// A shadow declared while a version is on probation: started once probation ends (the
    /// held writes are not in the live database yet).
    waiting: Option<Box<Candidate>>,
    /// Its report, kept after it stopped on an error until it is discarded.
    report: Option<ShadowReport>,
    subjects: Subjects,
    samples: usize,
    /// Where shadow states are kept: `<state_dir>/shadow`.
    root: PathBuf,
    /// Validates new versions; told about the state when a shadow is promoted.
    validator: Arc<Validator>,
}

/// A running shadow.
pub(super) struct Shadow {
    /// Away on its thread while it runs a batch.
    worker: Option<Worker>,
    state: Arc<StateStore>,
    dir: PathBuf,
    /// Its lookup planner (on its own state), for when it is promoted.
    planner: Option<Planner>,
}

/// A shadow's batch, running on its own thread.
type Running<T> = tokio::task::JoinHandle<(Worker, anyhow::Result<T>)>;

/// A keyed batch's events and the shadow's outcomes for them.
type KeyedRun = (Vec<Event>, Vec<Result<Outcome, Failure>>);

impl Shadowing {
    pub(in crate::pipeline) fn new(
        cfg: &crate::config::PipelineConfig,
        validator: Arc<Validator>,
    ) -> Shadowing {
        let root = cfg.pipeline.state_dir.join("shadow");
        // No run holds a shadow state, or a retired one, at its start: what is there is left
        // from a run that ended (its shadow starts again from the live state, if it is still
        // declared).
        for dir in [root.clone(), root.with_file_name("retired")] {
            if dir.exists()
                && let Err(e) = std::fs::remove_dir_all(&dir)
            {
                tracing::warn!("cannot clear {}: {e}", dir.display());
            }
        }
        Shadowing {
            running: None,
            waiting: None,
            report: None,
            subjects: Subjects {
                output: cfg.output.subject.clone(),
                dead_letter: cfg.dead_letter.subject.clone(),
            },
            samples: cfg.reload.shadow_samples,
            root,
            validator,
        }
    }

    /// The report of the shadow (running, or stopped on an error), for status.
    pub(super) fn report(&self) -> Option<&ShadowReport> {
        self.report.as_ref()
    }

    /// The version of the running shadow.
    fn version(&self) -> Option<&str> {
        self.running
            .as_ref()
            .and(self.report.as_ref())
            .map(|r| r.version.as_str())
    }

    /// Takes the shadow aside (while groups it has handled already run again).
    pub(super) fn set_aside(&mut self) -> Option<Shadow> {
        self.running.take()
    }

    /// Puts back what [`Shadowing::set_aside`] took.
    pub(super) fn put_back(&mut self, shadow: Option<Shadow>) {
        self.running = shadow;
    }

    /// Whether a shadow waits for a probation to end.
    pub(super) fn waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// Starts the shadow's keyed batch on its thread.
    pub(super) fn start_keyed(
        &mut self,
        events: &[Event],
        key_groups: &[u16],
        prefetched: &Arc<Prefetched>,
    ) -> Option<Running<KeyedRun>> {
        let mut worker = self.running.as_mut()?.worker.take()?;
        let (events, key_groups, prefetched) =
            (events.to_vec(), key_groups.to_vec(), prefetched.clone());
        Some(tokio::task::spawn_blocking(move || {
            let r = worker.handle(&events, &key_groups, &prefetched);
            (worker, r.map(|outcomes| (events, outcomes)))
        }))
    }

    /// Starts the shadow's broadcast updates on its thread.
    pub(super) fn start_broadcast(
        &mut self,
        events: &[BroadcastEvent],
    ) -> Option<Running<Vec<Result<(), String>>>> {
        let mut worker = self.running.as_mut()?.worker.take()?;
        let events = events.to_vec();
        Some(tokio::task::spawn_blocking(move || {
            let r = worker.handle_broadcast(&events);
            (worker, r)
        }))
    }

    /// Takes the shadow's worker back from its batch; `None` (and the shadow stopped, its
    /// report saying why) if the batch failed beyond single events.
    async fn finish<T>(&mut self, running: Running<T>) -> Option<T> {
        let (worker, result) = match running.await {
            Ok(done) => done,
            Err(e) => {
                self.stop(format!("the shadow's thread ended: {e}"));
                return None;
            }
        };
        match result {
            Ok(r) => {
                if let Some(s) = self.running.as_mut() {
                    s.worker = Some(worker);
                }
                Some(r)
            }
            Err(e) => {
                self.stop(format!("{e:#}"));
                None
            }
        }
    }

    /// Stops the running shadow on an error of its own; the report stays, saying why.
    fn stop(&mut self, why: String) {
        tracing::warn!(
            "shadow stopped: {why}; the live version runs on. Discard it (`eddy deploy --discard`) or deploy a fixed one as shadow"
        );
        if let Some(r) = self.report.as_mut() {
            r.stopped = Some(why);
        }
        if let Some(s) = self.running.take() {
            s.remove(self.retired());
        }
    }

    /// Where databases no longer used wait for their last reader: `<state_dir>/retired`.
    fn retired(&self) -> PathBuf {
        self.root.with_file_name("retired")
    }
}

impl Shadow {
    /// Closes its state and deletes the directory (off the caller's thread).
    fn remove(self, retired: PathBuf) {
        let Shadow {
            worker,
            state,
            dir,
            planner,
        } = self;
        drop((worker, planner));
        remove_when_closed(state, dir, retired);
    }
}

/// Moves a database's directory out of the way at once (a run restored later in this process
/// may use its path again), and deletes it once its last user (a query in flight) let it go.
/// One still held after a minute is left, and swept when a run of the pipeline starts.
fn remove_when_closed(state: Arc<StateStore>, dir: PathBuf, retired: PathBuf) {
    let dir = match std::fs::create_dir_all(&retired).and_then(|()| {
        let to = retired.join(format!(
            "{}-{}",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("db"),
            crate::checkpoint::now_ms()
        ));
        std::fs::rename(&dir, &to).map(|()| to)
    }) {
        Ok(moved) => moved,
        Err(e) => {
            tracing::warn!(
                "cannot move {} aside ({e}); deleting it in place",
                dir.display()
            );
            dir
        }
    };
    tokio::task::spawn_blocking(move || {
        let mut state = state;
        for _ in 0..1200 {
            match Arc::try_unwrap(state) {
                Ok(db) => {
                    drop(db);
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        tracing::warn!("cannot remove the state directory {}: {e}", dir.display());
                    }
                    return;
                }
                Err(still) => {
                    state = still;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        }
        tracing::warn!(
            "the state in {} is still in use after a minute; it is deleted when the pipeline next starts",
            dir.display()
        );
    });
}

impl Runner {
    /// A shadow was declared: started now, or after the probation in progress.
    pub(super) async fn shadow_declared(&mut self, c: Box<Candidate>) -> anyhow::Result<()> {
        if self.reloading.on_probation() {
            self.shadowing.waiting = Some(c);
            return Ok(());
        }
        self.start_shadow(*c).await
    }

    /// Starts the shadow that waited for a probation to end.
    pub(super) async fn start_waiting_shadow(&mut self) -> anyhow::Result<()> {
        match self.shadowing.waiting.take() {
            Some(c) if !self.reloading.on_probation() => self.start_shadow(*c).await,
            waiting => {
                self.shadowing.waiting = waiting;
                Ok(())
            }
        }
    }

    /// Seeds the shadow's state from the live state, here at a batch boundary, and starts
    /// `c` on it (its `migrate` runs if it exports one). A shadow already running is replaced.
    async fn start_shadow(&mut self, c: Candidate) -> anyhow::Result<()> {
        if let Some(old) = self.shadowing.version().map(str::to_string) {
            self.end_shadow("replaced by a newer shadow");
            self.reloading
                .history
                .set_shadow(&old, DeployStatus::Discarded);
        }
        let started = Instant::now();
        let version = c.plugin.version().to_string();
        let live_version = self
            .worker
            .as_ref()
            .map(|w| w.plugin().version().to_string())
            .unwrap_or_default();
        let dir = self.shadowing.root.join(format!(
            "{}-{}",
            &version[..version.len().min(16)],
            crate::checkpoint::now_ms()
        ));
        let seed = dir.clone();
        self.await_staged().await;
        let seeded = self
            .on_worker(move |worker| -> anyhow::Result<(InstanceContext, String)> {
                std::fs::create_dir_all(seed.parent().unwrap_or(&seed))?;
                worker.state().create_checkpoint(&seed)?;
                Ok((worker.context().clone(), worker.config_json().to_string()))
            })
            .await?;
        let (cfg, clock) = (self.cfg.clone(), self.state.clock());
        let (plugin, source) = (c.plugin, c.source);
        let (open_dir, previous) = (dir.clone(), live_version.clone());
        let opened = match seeded {
            Ok((live_ctx, config)) => tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let state = Arc::new(super::super::start::open_state(&cfg, clock, &open_dir)?);
                let ctx = InstanceContext {
                    state: state.clone(),
                    ..live_ctx
                };
                let planner = plan::planner(&plugin, &ctx, &config, &cfg)?;
                let mut worker = Worker::new(plugin, ctx, config, Arc::new(()))?;
                if let Err(refused) = worker.migrate(&previous)? {
                    anyhow::bail!("migrate refused: {refused}");
                }
                Ok((worker, state, planner))
            })
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r),
            Err(e) => Err(e.context("cannot seed the shadow's state from the live state")),
        };
        let pause_us = started.elapsed().as_micros() as u64;
        let status = match opened {
            Ok((worker, state, planner)) => {
                tracing::info!(%version, live = %live_version, pause_us, dir = %dir.display(), "shadow started: comparing its outputs with the live version's");
                self.shadowing.running = Some(Shadow {
                    worker: Some(worker),
                    state,
                    dir,
                    planner,
                });
                self.shadowing.report = Some(ShadowReport::new(&version, &live_version, pause_us));
                (DeployStatus::Shadow, None)
            }
            Err(e) => {
                let reason = format!("{e:#}");
                tracing::warn!(%version, "shadow version refused: {reason}");
                if dir.exists() {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                (DeployStatus::Rejected, Some(reason))
            }
        };
        self.reloading.history.push(Deployment {
            version,
            source,
            at_ms: crate::checkpoint::now_ms(),
            status: status.0,
            reason: status.1,
            swap_pause_us: Some(pause_us),
        });
        self.remember().await;
        Ok(())
    }

    /// The shadow is no longer declared: it stops, and its state and report go.
    pub(super) async fn shadow_gone(&mut self) {
        self.shadowing.waiting = None;
        let Some(version) = self.shadowing.report.as_ref().map(|r| r.version.clone()) else {
            return;
        };
        if self.reloading.waiting_version() == Some(version.as_str()) {
            // Promoted during a probation: its version waits for the probation to end, and
            // promotes the shadow then (which ends it).
            return;
        }
        self.end_shadow("discarded");
        self.reloading
            .history
            .set_shadow(&version, DeployStatus::Discarded);
        self.remember().await;
        tracing::info!(%version, "shadow discarded");
    }

    /// Stops the shadow (if any) and deletes its state and report.
    fn end_shadow(&mut self, why: &str) {
        if let Some(s) = self.shadowing.running.take() {
            tracing::info!("shadow ended: {why}");
            s.remove(self.shadowing.retired());
        }
        self.shadowing.report = None;
    }

    /// Whether `version` is the running shadow's (so deploying it as live promotes it).
    pub(super) fn is_shadow(&self, version: &str) -> bool {
        self.shadowing.version() == Some(version)
    }

    /// Makes the shadow live: its worker and state replace the live ones at this batch
    /// boundary (both versions have handled the same events), and a checkpoint of the promoted
    /// state is cut at once. The previous live state is deleted once nothing reads it.
    pub(super) async fn promote_shadow(&mut self, source: String) -> anyhow::Result<()> {
        let started = Instant::now();
        let Some(mut shadow) = self.shadowing.running.take() else {
            return Ok(());
        };
        let report = self.shadowing.report.take();
        let Some(worker) = shadow.worker.take() else {
            return Ok(());
        };
        // A checkpoint being completed was cut from the previous state: let it finish first,
        // so its files are stored before that state goes.
        self.await_completion().await?;
        let mut worker = worker;
        worker.set_metrics(self.metrics.clone());
        let old_worker = self.worker.replace(worker);
        let old_state = std::mem::replace(&mut self.state, shadow.state.clone());
        self.query.set_live(self.state.clone());
        self.shadowing.validator.use_state(self.state.clone());
        self.metrics
            .attach_state_from_now(self.state.stats().clone());
        self.checkpointing.checkpoints.forget_sums();
        if self.lookups.is_some() {
            self.planner = shadow.planner.take();
        }
        let previous = old_worker
            .as_ref()
            .map(|w| w.plugin().version().to_string())
            .unwrap_or_default();
        drop(old_worker);
        let old_dir = old_state.path().to_path_buf();
        remove_when_closed(old_state, old_dir, self.shadowing.retired());
        let version = self
            .worker
            .as_ref()
            .map(|w| w.plugin().version().to_string())
            .unwrap_or_default();
        let pause = started.elapsed();
        self.metrics.swap_pause_seconds.observe(pause.as_secs_f64());
        self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
        // Its run as shadow ended in its promotion: the new entry says live.
        self.reloading
            .history
            .set_shadow(&version, DeployStatus::Superseded);
        self.reloading.history.push(Deployment {
            version: version.clone(),
            source,
            at_ms: crate::checkpoint::now_ms(),
            status: DeployStatus::Live,
            reason: report.as_ref().map(|r| {
                format!(
                    "promoted from shadow: {} of {} events the same",
                    r.same_events(),
                    r.events
                )
            }),
            swap_pause_us: Some(pause.as_micros() as u64),
        });
        self.remember().await;
        tracing::info!(%version, %previous, pause_us = pause.as_micros() as u64, "shadow promoted: its state and version are live");
        // The promoted state is made durable before anything else happens.
        self.checkpointing.dirty = true;
        self.checkpoint().await
    }

    /// Runs the shadow's keyed batch to its end and compares its outcomes with the live ones.
    pub(super) async fn compare_keyed(
        &mut self,
        running: Running<KeyedRun>,
        live: &[Result<Outcome, Failure>],
    ) {
        let Some((events, shadow)) = self.shadowing.finish(running).await else {
            return;
        };
        let Some(report) = self.shadowing.report.as_mut() else {
            return;
        };
        if let Some(w) = self.worker.as_ref() {
            w.plugin().version().clone_into(&mut report.live_version);
        }
        let metrics = &self.metrics;
        let mut tally = |subject: &str, v: crate::reload::shadow::Verdict| {
            metrics.shadow_compared(subject, v.label());
        };
        for ((event, l), s) in events.iter().zip(live).zip(&shadow) {
            report.compare(
                event,
                l,
                s,
                &self.shadowing.subjects,
                self.shadowing.samples,
                &mut tally,
            );
        }
        metrics
            .shadow_events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
    }

    /// Runs the shadow's broadcast updates to their end and compares their results.
    pub(super) async fn compare_broadcast(
        &mut self,
        running: Running<Vec<Result<(), String>>>,
        events: &[BroadcastEvent],
        live: &[Result<(), String>],
    ) {
        let Some(shadow) = self.shadowing.finish(running).await else {
            return;
        };
        let Some(report) = self.shadowing.report.as_mut() else {
            return;
        };
        let metrics = &self.metrics;
        let mut tally = |subject: &str, v: crate::reload::shadow::Verdict| {
            metrics.shadow_compared(subject, v.label());
        };
        for ((event, l), s) in events.iter().zip(live).zip(&shadow) {
            report.compare_broadcast(
                event,
                l,
                s,
                &self.shadowing.subjects,
                self.shadowing.samples,
                &mut tally,
            );
        }
    }
}
