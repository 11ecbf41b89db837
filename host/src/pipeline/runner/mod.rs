//! The run loop proper: admits input into the window, hands released events to the plugin,
//! publishes, cuts checkpoints, and serves control requests and plugin swaps between batches.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use tokio::sync::{mpsc, oneshot};

use super::align;
use super::route::{Routes, Source, headers_to_wit};
use super::window::{Arrival, Body, Released, Window};
use super::{Planner, Shutdown, Worker};
use crate::checkpoint::{Checkpoints, Cut, Manifest};
use crate::config::PipelineConfig;
use crate::control::Command;
use crate::engine::{BroadcastEvent, Event, FailureKind, Plugin, Prefetched};
use crate::lookup::{Lookups, Verdict};
use crate::metrics::{DeadLetterReason, Metrics};
use crate::query::QueryEngine;
use crate::reload::{
    Candidate, DeployStatus, Deployment, History, Judgement, Probation, ReloadEvent,
};
use crate::state::StateStore;
use crate::transport::publisher::{Later, OutMessage, Outgoing};
use crate::transport::{self, Backlog, BroadcastInput, Nats, Publisher};

/// A checkpoint being completed in the background.
pub(super) struct Completing {
    id: u64,
    task: tokio::task::JoinHandle<anyhow::Result<Manifest>>,
    waiters: Vec<oneshot::Sender<Result<serde_json::Value, String>>>,
}

/// A new version on probation.
pub(super) struct OnProbation {
    previous: Plugin,
    rule: Probation,
    /// Outputs held until it passes.
    outputs: Vec<OutMessage>,
    /// What it handled, to hand to the previous version if it fails.
    groups: Vec<Released>,
}

pub(super) struct Runner {
    pub(super) cfg: Arc<PipelineConfig>,
    pub(super) routes: Routes,
    pub(super) nats: Nats,
    pub(super) state: Arc<StateStore>,
    /// Moved into blocking tasks while the plugin runs.
    pub(super) worker: Option<Worker>,
    pub(super) planner: Option<Planner>,
    pub(super) window: Window<jetstream::Message>,
    pub(super) input_rx: mpsc::Receiver<Vec<(jetstream::Message, Arrival)>>,
    pub(super) broadcasts: Vec<BroadcastInput>,
    pub(super) broadcast_positions: BTreeMap<String, u64>,
    pub(super) keyed_key: String,
    /// What of the keyed input is still in the stream, past `keyed_read_through`.
    pub(super) keyed_backlog: Backlog,
    /// The newest keyed stream sequence admitted (or the restored position).
    pub(super) keyed_read_through: u64,
    /// The keyed position of the last cut (or the restored one).
    pub(super) keyed_position: u64,
    pub(super) restored_skip: BTreeSet<u64>,
    pub(super) publisher: Publisher,
    pub(super) checkpoints: Arc<Checkpoints>,
    pub(super) completing: Option<Completing>,
    pub(super) last_cut: Instant,
    /// Events read since the last cut (unacknowledged until it completes).
    pub(super) unacked: u64,
    /// Whether anything was handled since the last cut.
    pub(super) cut_dirty: bool,
    pub(super) lookups: Option<Arc<Lookups>>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) query: Arc<QueryEngine>,
    pub(super) control_rx: mpsc::Receiver<Command>,
    pub(super) reload_rx: mpsc::Receiver<ReloadEvent>,
    pub(super) history: History,
    pub(super) probation: Option<OnProbation>,
    /// A version that arrived during another's probation: swapped in after it.
    pub(super) next_candidate: Option<Box<Candidate>>,
    pub(super) last_checkpoint: Option<(u64, u64)>,
    pub(super) started: Instant,
    /// Set once a stop is requested: nothing more is admitted.
    pub(super) draining: bool,
}

impl Runner {
    pub(super) async fn run(&mut self, mut shutdown: Shutdown) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let interval = self.cfg.checkpoint.interval();
        let early = (self.cfg.input.max_pending / 2).max(1) as u64;
        loop {
            // One group per pass: calls admit what arrives while they run, so on a backlog
            // there is always another group, and the checks below (checkpoint, stop, commands)
            // must come between groups rather than after the backlog.
            let handled = match self.window.take_released(self.cfg.input.batch) {
                Some(group) => {
                    self.process(group).await?;
                    true
                }
                None => false,
            };
            self.poll_completion().await?;
            if self.completing.is_none()
                && self.probation.is_none()
                && self.cut_dirty
                && (self.last_cut.elapsed() >= interval || self.unacked >= early)
            {
                self.checkpoint().await?;
            }
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        // Whoever could stop us is gone: stop now rather than spin.
                        break;
                    }
                }
                Some(cmd) = self.control_rx.recv() => self.control(cmd).await?,
                Some(ev) = self.reload_rx.recv() => self.reload(ev).await?,
                c = self.window.completion(), if self.window.waiting() > 0 => {
                    self.window.record(c);
                }
                arrivals = self.input_rx.recv(), if self.window.has_room() => match arrivals {
                    Some(arrivals) => self.admit(arrivals).await?,
                    None => anyhow::bail!("the keyed input ended"),
                },
                _ = tick.tick() => {
                    self.idle_broadcasts().await;
                    self.judge_probation(false).await?;
                }
                // More may be released: go on without waiting.
                _ = std::future::ready(()), if handled => {}
            }
        }
        self.drain().await
    }

    /// Stops cleanly: finishes the events in the window, ends probation, completes a last
    /// checkpoint, and waits for every output.
    async fn drain(&mut self) -> anyhow::Result<()> {
        tracing::info!("stop requested: finishing the events in hand");
        self.draining = true;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.window.is_empty() && Instant::now() < deadline {
            while let Some(group) = self.window.take_released(self.cfg.input.batch) {
                self.process(group).await?;
            }
            if self.window.waiting() > 0 {
                let c = self.window.completion().await;
                self.window.record(c);
            } else if !self.window.is_empty() {
                break;
            }
        }
        self.judge_probation(true).await?;
        if let Some(c) = self.completing.take() {
            let id = c.id;
            let result = c.task.await?;
            self.finish_completion(id, result, c.waiters).await;
        }
        if self.cut_dirty {
            self.checkpoint().await?;
            if let Some(c) = self.completing.take() {
                let id = c.id;
                let result = c.task.await?;
                self.finish_completion(id, result, c.waiters).await;
            }
        }
        self.publisher.close().await?;
        self.state.flush()?;
        Ok(())
    }

    /// Aligns a keyed batch with the broadcast inputs and puts both into the window, asking
    /// for lookups where the pipeline has them.
    async fn admit(&mut self, arrivals: Vec<(jetstream::Message, Arrival)>) -> anyhow::Result<()> {
        self.unacked += arrivals.len() as u64;
        if let Some(seq) = arrivals.iter().map(|(_, a)| a.seq).max() {
            self.keyed_read_through = self.keyed_read_through.max(seq);
        }
        let segments = if self.broadcasts.is_empty() {
            vec![align::Segment::Keyed(arrivals)]
        } else {
            let until = arrivals.iter().map(|(_, a)| a.stored_ns).max().unwrap_or(0);
            for b in &mut self.broadcasts {
                b.catch_up(until).await?;
            }
            align::merge(arrivals, &mut self.broadcasts)
        };
        for segment in segments {
            match segment {
                align::Segment::Broadcast(msgs) => self.window.push_broadcast(msgs),
                align::Segment::Keyed(arrivals) => self.admit_keyed(arrivals).await?,
            }
        }
        Ok(())
    }

    async fn admit_keyed(
        &mut self,
        arrivals: Vec<(jetstream::Message, Arrival)>,
    ) -> anyhow::Result<()> {
        let (Some(lookups), Some(mut planner)) = (self.lookups.clone(), self.planner.take()) else {
            for (msg, a) in arrivals {
                self.window.push_ready(msg, a);
            }
            return Ok(());
        };
        let events: Vec<Event> = arrivals
            .iter()
            .filter_map(|(_, a)| match &a.body {
                Body::Event { event, .. } => Some(event.clone()),
                _ => None,
            })
            .collect();
        let (planner, plans) = tokio::task::spawn_blocking(move || {
            let plans = planner.prepare(&events);
            (planner, plans)
        })
        .await?;
        self.planner = Some(planner);
        let mut plans = plans.into_iter();
        for (msg, a) in arrivals {
            let plan = match &a.body {
                Body::Event { .. } => plans.next().unwrap_or_default(),
                _ => Vec::new(),
            };
            if plan.is_empty() {
                self.window.push_ready(msg, a);
            } else {
                let lookups = lookups.clone();
                self.window
                    .push_waiting(msg, a, async move { lookups.resolve(plan).await });
            }
        }
        Ok(())
    }

    /// Applies broadcast updates that arrived while no keyed event did, once they are
    /// `idle_apply_ms` old (the largest of the inputs', so no input's older update can still be
    /// on its way), and only those stored before the next keyed message still in the stream: a
    /// keyed input that is stalled (`max_pending`) or starting on a backlog has nothing in
    /// hand, yet events stored before an update must still be handled before it. Updates of
    /// several inputs apply in the order their streams stored them, as among keyed events.
    async fn idle_broadcasts(&mut self) {
        if self.broadcasts.is_empty() || self.window.has_keyed() || !self.input_rx.is_empty() {
            return;
        }
        let idle_ns = self
            .cfg
            .broadcast
            .values()
            .map(|b| b.idle_apply_ms)
            .max()
            .unwrap_or(0)
            .saturating_mul(1_000_000);
        let due_until = crate::checkpoint::now_ms()
            .saturating_mul(1_000_000)
            .saturating_sub(idle_ns);
        let mut due = false;
        for b in &mut self.broadcasts {
            b.poll_ready();
            due |= b
                .buffer
                .front()
                .is_some_and(|m| align::stored(m).0 <= due_until);
        }
        if !due {
            return;
        }
        let until = match self.keyed_backlog.next_after(self.keyed_read_through).await {
            Ok(Some((_, keyed_ns))) => due_until.min(keyed_ns),
            Ok(None) => due_until,
            Err(e) => {
                tracing::warn!("cannot look into the keyed input ({e}); broadcast updates wait");
                return;
            }
        };
        let ready = align::take_until(&mut self.broadcasts, until);
        self.window.push_broadcast(ready);
    }

    /// Runs one released group and publishes its messages (or holds them during probation).
    async fn process(&mut self, group: Released) -> anyhow::Result<()> {
        if self.probation.is_none() {
            let (out, _, _) = self.run_group(group).await?;
            return self.publish(out).await;
        }
        let kept = group.clone();
        let (out, events, failures) = self.run_group(group).await?;
        let Some(p) = self.probation.as_mut() else {
            return Ok(());
        };
        p.outputs.extend(out.into_vec());
        p.groups.push(kept);
        let judgement = p.rule.record(events, failures);
        self.apply_judgement(judgement).await
    }

    async fn publish(&mut self, out: Outgoing) -> anyhow::Result<()> {
        self.cut_dirty = true;
        self.publisher.publish_outgoing(out).await?;
        Ok(())
    }

    /// Runs one group through the plugin: its messages, the events handed to the plugin, and
    /// how many of those failed (trap or budget).
    async fn run_group(&mut self, group: Released) -> anyhow::Result<(Outgoing, u64, u64)> {
        let mut out = Vec::new();
        let mut later: Option<Later> = None;
        let (mut handed, mut failed) = (0u64, 0u64);
        match group {
            Released::Keyed(items) => {
                let mut events = Vec::with_capacity(items.len());
                let mut key_groups = Vec::with_capacity(items.len());
                let mut sources = Vec::with_capacity(items.len());
                let mut prefetched = Prefetched::new();
                for (a, resolved) in items {
                    match a.body {
                        Body::Done => {}
                        Body::BadKey(reason) => out.push(self.routes.dead_letter(
                            &a.source,
                            DeadLetterReason::Key,
                            &reason,
                            &self.metrics,
                        )),
                        Body::Event { event, key_group } => match resolved.verdict {
                            Verdict::DeadLetter(reason) => out.push(self.routes.dead_letter(
                                &a.source,
                                DeadLetterReason::Lookup,
                                &reason,
                                &self.metrics,
                            )),
                            Verdict::Drop => {
                                self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                                self.metrics.lookup_drops.fetch_add(1, Ordering::Relaxed);
                            }
                            Verdict::Proceed => {
                                prefetched.extend(resolved.answers);
                                events.push(event);
                                key_groups.push(key_group);
                                sources.push(a.source);
                            }
                        },
                    }
                }
                if !events.is_empty() {
                    handed = events.len() as u64;
                    let mut worker = self.worker.take().context("worker lost")?;
                    let prefetched = Arc::new(prefetched);
                    let (worker, result) = self
                        .while_calling(tokio::task::spawn_blocking(move || {
                            let r = worker.handle(&events, &key_groups, &prefetched);
                            (worker, r)
                        }))
                        .await?;
                    let version = worker.plugin().version().to_string();
                    self.worker = Some(worker);
                    let outcomes = result?;
                    failed = outcomes
                        .iter()
                        .filter(|o| {
                            o.as_ref().is_err_and(|f| {
                                matches!(
                                    f.kind,
                                    FailureKind::Trap
                                        | FailureKind::CpuBudget
                                        | FailureKind::MemoryLimit
                                )
                            })
                        })
                        .count() as u64;
                    // Routing (headers, message ids, dead letters) happens on the publisher's
                    // task while the plugin already runs the next batch.
                    let (routes, metrics) = (self.routes.clone(), self.metrics.clone());
                    later = Some(Box::new(move || {
                        let mut out = Vec::with_capacity(sources.len());
                        for (source, outcome) in sources.iter().zip(outcomes) {
                            routes.outcome(source, outcome, &version, &metrics, &mut out);
                        }
                        out
                    }));
                }
            }
            Released::Broadcast(msgs) => {
                let events: Vec<BroadcastEvent> = msgs
                    .iter()
                    .map(|b| BroadcastEvent {
                        input: b.input.clone(),
                        subject: b.msg.subject.to_string(),
                        headers: headers_to_wit(b.msg.headers.as_ref()),
                        payload: b.msg.payload.to_vec(),
                        timestamp_ms: b.stored_ns / 1_000_000,
                        sequence: b.seq,
                    })
                    .collect();
                let mut worker = self.worker.take().context("worker lost")?;
                let (worker, result) = self
                    .while_calling(tokio::task::spawn_blocking(move || {
                        let r = worker.handle_broadcast(&events);
                        (worker, r)
                    }))
                    .await?;
                self.worker = Some(worker);
                for (b, r) in msgs.iter().zip(result?) {
                    self.metrics.broadcast_in.fetch_add(1, Ordering::Relaxed);
                    self.broadcast_positions
                        .insert(BroadcastInput::position_key(&b.input), b.seq);
                    if let Err(reason) = r {
                        let source = Source {
                            input: format!("b-{}", b.input).into(),
                            subject: b.msg.subject.clone(),
                            seq: b.seq,
                            payload: b.msg.payload.clone(),
                            headers: b.msg.headers.clone(),
                        };
                        out.push(self.routes.dead_letter(
                            &source,
                            DeadLetterReason::Rejected,
                            &reason,
                            &self.metrics,
                        ));
                    }
                }
            }
        }
        Ok((Outgoing { ready: out, later }, handed, failed))
    }

    /// Awaits a plugin call running on the worker's thread, admitting what arrives meanwhile
    /// (key extraction happened on the reader; alignment with broadcasts and lookup planning
    /// happen here), so the next batch is in the window, whole, when the call returns. Without
    /// this, the worker waited for each admission and took whatever one read had delivered.
    /// Admitted events queue behind the group being handled, so order is unchanged.
    async fn while_calling<T: Send + 'static>(
        &mut self,
        call: tokio::task::JoinHandle<T>,
    ) -> anyhow::Result<T> {
        tokio::pin!(call);
        loop {
            tokio::select! {
                biased;
                done = &mut call => return Ok(done?),
                c = self.window.completion(), if self.window.waiting() > 0 => {
                    self.window.record(c);
                }
                arrivals = self.input_rx.recv(), if !self.draining && self.window.has_room() => {
                    match arrivals {
                        Some(arrivals) => {
                            if let Err(e) = self.admit(arrivals).await {
                                // The call holds the worker (and the state): let it finish
                                // before the error stops the pipeline.
                                let _ = call.await;
                                return Err(e);
                            }
                        }
                        // The run loop reports the end of the input once this call is done.
                        None => return Ok(call.await?),
                    }
                }
            }
        }
    }

    // ---- checkpoints ----

    /// What a cut taken now records.
    fn current_cut(&self) -> anyhow::Result<(Cut, u64, Option<jetstream::Message>)> {
        let mut positions = self.broadcast_positions.clone();
        let (keyed, ack) = match self.window.position() {
            Some((seq, msg)) => (*seq, Some(msg.clone())),
            None => (self.keyed_position, None),
        };
        positions.insert(self.keyed_key.clone(), keyed);
        let mut done_after: Vec<u64> = self.window.done_after();
        done_after.extend(self.restored_skip.range(keyed + 1..));
        done_after.sort_unstable();
        done_after.dedup();
        let worker = self.worker.as_ref().context("worker lost")?;
        let cut = Cut {
            positions,
            done_after: if done_after.is_empty() {
                BTreeMap::new()
            } else {
                BTreeMap::from([(self.keyed_key.clone(), done_after)])
            },
            plugin_version: worker.plugin().version().to_string(),
            outputs: self.metrics.outputs.load(Ordering::Relaxed),
        };
        Ok((cut, keyed, ack))
    }

    /// Cuts a checkpoint now (between two batches) and completes it in the background.
    async fn checkpoint(&mut self) -> anyhow::Result<()> {
        let (cut, keyed, ack) = self.current_cut()?;
        let job = self.publisher.last_job();
        let (checkpoints, state) = (self.checkpoints.clone(), self.state.clone());
        let id = checkpoints.next_id();
        let started = Instant::now();
        let staged =
            tokio::task::spawn_blocking(move || checkpoints.cut(&state, id, cut)).await??;
        self.metrics
            .checkpoint_pause_seconds
            .observe(started.elapsed().as_secs_f64());
        self.keyed_position = keyed;
        self.last_cut = Instant::now();
        self.unacked = 0;
        self.cut_dirty = false;
        let acked = self.publisher.watch_acked();
        let checkpoints = self.checkpoints.clone();
        let task = tokio::spawn(async move {
            transport::publisher::wait_for(acked, job).await?;
            let (staged, manifest) = {
                let checkpoints = checkpoints.clone();
                tokio::task::spawn_blocking(move || {
                    let m = checkpoints.complete(&staged);
                    (staged, m)
                })
                .await?
            };
            let manifest = manifest?;
            // The cut is durable and every output up to it is stored: acknowledge the input.
            if let Some(msg) = ack
                && let Err(e) = msg.ack().await
            {
                tracing::warn!("input ack failed ({e}); the next checkpoint acknowledges it");
            }
            let keep = staged.id();
            tokio::task::spawn_blocking(move || checkpoints.retain(Some(keep))).await??;
            Ok(manifest)
        });
        self.completing = Some(Completing {
            id,
            task,
            waiters: Vec::new(),
        });
        Ok(())
    }

    /// Notices a completed checkpoint.
    async fn poll_completion(&mut self) -> anyhow::Result<()> {
        if self
            .completing
            .as_ref()
            .is_some_and(|c| c.task.is_finished())
            && let Some(c) = self.completing.take()
        {
            let id = c.id;
            let result = c.task.await?;
            self.finish_completion(id, result, c.waiters).await;
        }
        Ok(())
    }

    async fn finish_completion(
        &mut self,
        id: u64,
        result: anyhow::Result<Manifest>,
        waiters: Vec<oneshot::Sender<Result<serde_json::Value, String>>>,
    ) {
        let m = match result {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(
                    checkpoint = id,
                    "checkpoint failed: {e:#}; the next one will be tried"
                );
                self.metrics
                    .checkpoint_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.cut_dirty = true;
                for w in waiters {
                    let _ = w.send(Err(format!("checkpoint {id} failed: {e:#}")));
                }
                return;
            }
        };
        self.metrics.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .checkpoint_seconds
            .observe(m.complete_ms as f64 / 1000.0);
        self.metrics
            .checkpoint_bytes
            .store(m.total_bytes, Ordering::Relaxed);
        self.metrics
            .checkpoint_new_bytes
            .fetch_add(m.new_bytes, Ordering::Relaxed);
        self.last_checkpoint = Some((m.id, m.created_ms));
        tracing::debug!(
            checkpoint = m.id,
            cut_ms = m.cut_ms,
            complete_ms = m.complete_ms,
            bytes = m.total_bytes,
            new_bytes = m.new_bytes,
            "checkpoint complete"
        );
        // Queries at `checkpoint` freshness read this cut from now on.
        if let Some(dir) = self.checkpoints.staged_dir(m.id) {
            let clock = self.state.clock();
            match tokio::task::spawn_blocking(move || StateStore::open_read_only(&dir, clock)).await
            {
                Ok(Ok(db)) => self.query.set_checkpoint(m.id, Arc::new(db)),
                Ok(Err(e)) => tracing::warn!("cannot open checkpoint {} for queries: {e}", m.id),
                Err(e) => tracing::warn!("cannot open checkpoint {} for queries: {e}", m.id),
            }
        }
        let summary = manifest_summary(&m);
        for w in waiters {
            let _ = w.send(Ok(summary.clone()));
        }
    }

    // ---- control requests ----

    async fn control(&mut self, cmd: Command) -> anyhow::Result<()> {
        match cmd {
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Checkpoint { reply } => {
                if self.probation.is_some() {
                    let _ = reply.send(Err(
                        "a new plugin version is on probation; checkpoints resume when it ends"
                            .into(),
                    ));
                    return Ok(());
                }
                if self.completing.is_none() {
                    self.checkpoint().await?;
                }
                if let Some(c) = self.completing.as_mut() {
                    c.waiters.push(reply);
                }
            }
            Command::Savepoint {
                name,
                dir,
                progress,
                reply,
            } => self.savepoint(name, dir, progress, reply).await?,
        }
        Ok(())
    }

    fn status(&self) -> serde_json::Value {
        let plugin = self.worker.as_ref().map(|w| {
            let p = w.plugin();
            serde_json::json!({
                "name": p.name(),
                "version": p.version(),
                "exports": p.capabilities().to_string(),
            })
        });
        serde_json::json!({
            "pipeline": self.cfg.pipeline.name,
            "host": self.cfg.partitions.host_name(),
            "partitions": { "count": self.cfg.partitions.count, "owned": self.query.owned() },
            "uptime_ms": self.started.elapsed().as_millis() as u64,
            "plugin": plugin,
            "probation": self.probation.as_ref().map(|p| serde_json::json!({
                "events": p.rule.events, "failures": p.rule.failures,
                "previous": p.previous.version(),
            })),
            "deployments": self.history.deployments,
            "positions": self.broadcast_positions.iter()
                .map(|(k, v)| (k.clone(), *v))
                .chain([(self.keyed_key.clone(), self.window.position().map(|p| p.0).unwrap_or(self.keyed_position))])
                .collect::<BTreeMap<_, _>>(),
            "last_checkpoint": self.last_checkpoint.map(|(id, at)| serde_json::json!({"id": id, "created_ms": at})),
            "events_in": self.metrics.events_in.load(Ordering::Relaxed),
            "outputs": self.metrics.outputs.load(Ordering::Relaxed),
            "dropped": self.metrics.dropped.load(Ordering::Relaxed),
            "dead_lettered": self.metrics.dead_lettered_total(),
        })
    }

    /// A savepoint at a cut taken now, written in the background once every output up to the
    /// cut is stored.
    async fn savepoint(
        &mut self,
        name: String,
        dir: Option<std::path::PathBuf>,
        progress: Option<String>,
        reply: oneshot::Sender<Result<serde_json::Value, String>>,
    ) -> anyhow::Result<()> {
        if self.probation.is_some() {
            let _ = reply.send(Err(
                "a new plugin version is on probation; take the savepoint when it ends".into(),
            ));
            return Ok(());
        }
        let (cut, _, _) = self.current_cut()?;
        let target = dir.unwrap_or_else(|| self.cfg.savepoint_dir()).join(&name);
        let tmp = self
            .cfg
            .pipeline
            .state_dir
            .join("savepoint-staging")
            .join(&name);
        let state = self.state.clone();
        let (tmp2, cut2) = (tmp.clone(), cut.clone());
        let snap = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            if tmp2.exists() {
                std::fs::remove_dir_all(&tmp2)?;
            }
            if let Some(parent) = tmp2.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut batch = state.batch();
            for (input, pos) in &cut2.positions {
                batch.set_position(input, *pos);
            }
            state.commit(batch)?;
            state.create_checkpoint(&tmp2)?;
            Ok(())
        })
        .await?;
        if let Err(e) = snap {
            let _ = reply.send(Err(format!("cannot cut the savepoint: {e:#}")));
            return Ok(());
        }
        let job = self.publisher.last_job();
        let acked = self.publisher.watch_acked();
        let (pipeline, clock, nats) = (
            self.cfg.pipeline.name.clone(),
            self.state.clock(),
            self.nats.clone(),
        );
        tokio::spawn(async move {
            let result: anyhow::Result<serde_json::Value> = async {
                transport::publisher::wait_for(acked, job).await?;
                let rt = tokio::runtime::Handle::current();
                let target2 = target.clone();
                let meta = tokio::task::spawn_blocking(move || {
                    let db = StateStore::open_read_only(&tmp, clock)?;
                    let meta =
                        crate::checkpoint::savepoint::write(&db, &cut, &pipeline, &target2, |p| {
                            if let Some(subject) = &progress {
                                let body = serde_json::json!({
                                    "done": p.done, "total": p.total, "entries": p.entries
                                });
                                let client = nats.client.clone();
                                let subject = subject.clone();
                                rt.block_on(async move {
                                    let _ = client.publish(subject, body.to_string().into()).await;
                                });
                            }
                        });
                    drop(db);
                    let _ = std::fs::remove_dir_all(&tmp);
                    meta
                })
                .await??;
                Ok(serde_json::json!({
                    "savepoint": target.display().to_string(),
                    "entries": meta.entries,
                    "expired_skipped": meta.expired_skipped,
                    "key_groups": meta.key_groups,
                    "files": meta.files.len(),
                    "positions": meta.cut.positions,
                    "plugin_version": meta.cut.plugin_version,
                }))
            }
            .await;
            let _ = reply.send(result.map_err(|e| format!("{e:#}")));
        });
        Ok(())
    }

    // ---- hot reload ----

    async fn reload(&mut self, ev: ReloadEvent) -> anyhow::Result<()> {
        match ev {
            ReloadEvent::Rejected {
                version,
                source,
                reason,
            } => {
                self.metrics
                    .reload_rejections
                    .fetch_add(1, Ordering::Relaxed);
                self.history.push(Deployment {
                    version,
                    source,
                    at_ms: crate::checkpoint::now_ms(),
                    status: DeployStatus::Rejected,
                    reason: Some(reason),
                    swap_pause_us: None,
                });
                Ok(())
            }
            ReloadEvent::Ready(c) => {
                if self.probation.is_some() {
                    // The newest version waits for the current probation to end.
                    self.next_candidate = Some(c);
                    Ok(())
                } else {
                    self.swap_in(*c).await
                }
            }
        }
    }

    /// Swaps `c` in at this batch boundary, runs its `migrate`, and starts its probation.
    async fn swap_in(&mut self, c: Candidate) -> anyhow::Result<()> {
        let started = Instant::now();
        let Candidate {
            plugin,
            instance,
            planner,
            source,
        } = c;
        let version = plugin.version().to_string();
        let mut worker = self.worker.take().context("worker lost")?;
        let previous = worker.swap(plugin, instance);
        worker.hold();
        let previous_version = previous.version().to_string();
        let (worker, migrated) = tokio::task::spawn_blocking(move || {
            let r = worker.migrate(&previous_version);
            (worker, r)
        })
        .await?;
        self.worker = Some(worker);
        let pause = started.elapsed();
        self.metrics.swap_pause_seconds.observe(pause.as_secs_f64());
        let refused = match migrated? {
            Ok(()) => None,
            Err(msg) => Some(format!("migrate refused: {msg}")),
        };
        if let Some(reason) = refused {
            self.history.push(Deployment {
                version: version.clone(),
                source,
                at_ms: crate::checkpoint::now_ms(),
                status: DeployStatus::Rejected,
                reason: Some(reason.clone()),
                swap_pause_us: Some(pause.as_micros() as u64),
            });
            self.metrics
                .reload_rejections
                .fetch_add(1, Ordering::Relaxed);
            self.go_back(previous).await?;
            tracing::warn!(%version, "new plugin version rejected: {reason}");
            return Ok(());
        }
        if self.lookups.is_some() {
            self.planner = planner;
        }
        self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
        self.history.push(Deployment {
            version: version.clone(),
            source,
            at_ms: crate::checkpoint::now_ms(),
            status: DeployStatus::Probation,
            reason: None,
            swap_pause_us: Some(pause.as_micros() as u64),
        });
        tracing::info!(
            %version,
            previous = previous.version(),
            pause_us = pause.as_micros() as u64,
            "plugin swapped; on probation"
        );
        self.probation = Some(OnProbation {
            previous,
            rule: Probation::new(&self.cfg.reload),
            outputs: Vec::new(),
            groups: Vec::new(),
        });
        Ok(())
    }

    /// Drops the held writes and puts `previous` back (a fresh instance of it).
    async fn go_back(&mut self, previous: Plugin) -> anyhow::Result<()> {
        let mut worker = self.worker.take().context("worker lost")?;
        worker.discard();
        let ctx = worker.context().clone();
        let config = worker.config_json().to_string();
        let (worker, restored) = tokio::task::spawn_blocking(move || {
            let r = previous.instantiate(&ctx, &config).map(|i| {
                let planner = if ctx.lookups.is_some() {
                    Planner::new(&previous, &ctx, &config).ok().flatten()
                } else {
                    None
                };
                (previous, i, planner)
            });
            (worker, r)
        })
        .await?;
        self.worker = Some(worker);
        let (previous, instance, planner) =
            restored.context("the previous plugin version cannot be instantiated again")?;
        if let Some(w) = self.worker.as_mut() {
            w.swap(previous, instance);
        }
        if self.lookups.is_some() {
            self.planner = planner;
        }
        Ok(())
    }

    /// Ends probation when its time is up (or, with `now`, at once).
    async fn judge_probation(&mut self, now: bool) -> anyhow::Result<()> {
        let Some(p) = &self.probation else {
            return Ok(());
        };
        let judgement = match p.rule.judge() {
            Judgement::Pending if now => {
                if p.rule.events > 0 && p.rule.failures * 2 > p.rule.events {
                    Judgement::Fail("most of its events failed before the host stopped".into())
                } else {
                    Judgement::Pass
                }
            }
            j => j,
        };
        self.apply_judgement(judgement).await
    }

    async fn apply_judgement(&mut self, judgement: Judgement) -> anyhow::Result<()> {
        match judgement {
            Judgement::Pending => Ok(()),
            Judgement::Pass => {
                let Some(p) = self.probation.take() else {
                    return Ok(());
                };
                if let Some(w) = self.worker.as_mut() {
                    w.release()?;
                    let version = w.plugin().version().to_string();
                    self.history.set(&version, DeployStatus::Live, None);
                    tracing::info!(%version, events = p.rule.events, failures = p.rule.failures, "plugin passed probation");
                }
                self.publish(p.outputs.into()).await?;
                self.next_swap().await
            }
            Judgement::Fail(reason) => {
                let Some(p) = self.probation.take() else {
                    return Ok(());
                };
                let bad = self
                    .worker
                    .as_ref()
                    .map(|w| w.plugin().version().to_string())
                    .unwrap_or_default();
                tracing::warn!(
                    version = %bad,
                    previous = p.previous.version(),
                    "plugin rolled back: {reason}"
                );
                self.metrics.rollbacks.fetch_add(1, Ordering::Relaxed);
                self.history
                    .set(&bad, DeployStatus::RolledBack, Some(reason));
                let previous_version = p.previous.version().to_string();
                self.go_back(p.previous).await?;
                self.history
                    .set(&previous_version, DeployStatus::Live, None);
                // What the bad version handled is handled again by the previous one: its
                // outputs and writes were never published or committed.
                for group in p.groups {
                    let (out, _, _) = self.run_group(group).await?;
                    self.publish(out).await?;
                }
                self.next_swap().await
            }
        }
    }

    async fn next_swap(&mut self) -> anyhow::Result<()> {
        match self.next_candidate.take() {
            Some(c) => self.swap_in(*c).await,
            None => Ok(()),
        }
    }
}

fn manifest_summary(m: &Manifest) -> serde_json::Value {
    serde_json::json!({
        "id": m.id,
        "created_ms": m.created_ms,
        "positions": m.cut.positions,
        "plugin_version": m.cut.plugin_version,
        "total_bytes": m.total_bytes,
        "new_bytes": m.new_bytes,
        "files": m.files.len(),
        "cut_ms": m.cut_ms,
        "complete_ms": m.complete_ms,
    })
}
