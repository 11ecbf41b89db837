//! The run loop proper: admits input into the window, hands released events to the plugin,
//! publishes, and between two batches cuts checkpoints and serves control requests and plugin
//! swaps.
//!
//! The loop's parts each own their fields and live in their own file:
//! - `group`: one released group through the plugin (keyed or broadcast), with named results;
//! - `checkpointing`: when to cut, what a cut records, completion in the background;
//! - `control`: status, checkpoints on demand, savepoints;
//! - `reloading`: hot swaps, probation and rollback;
//! - `shadowing`: a shadow version beside the live one, compared event by event, promoted or
//!   discarded.
//!
//! Work on the plugin runs on a blocking thread through [`Runner::on_worker`] (or
//! [`Runner::on_worker_admitting`], which keeps admitting input meanwhile).

mod checkpointing;
mod control;
mod group;
mod reloading;
mod shadowing;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use tokio::sync::mpsc;

use super::align;
use super::route::Routes;
use super::window::{Arrival, Body, Released, Window};
use super::{Fence, Fenced, HandOff, Shutdown};
use crate::config::PipelineConfig;
use crate::control::Command;
use crate::engine::{Event, LookupRequest, Planner, Worker};
use crate::lookup::Lookups;
use crate::metrics::Metrics;
use crate::query::QueryEngine;
use crate::state::StateStore;
use crate::transport::publisher::Outgoing;
use crate::transport::{Backlog, BroadcastInput, Publisher};

pub(super) use checkpointing::Checkpointing;
pub(super) use reloading::Reloading;
pub(super) use shadowing::Shadowing;

pub(super) struct Runner {
    pub(super) cfg: Arc<PipelineConfig>,
    pub(super) routes: Routes,
    pub(super) state: Arc<StateStore>,
    /// Moved onto a blocking thread while the plugin runs ([`Runner::on_worker`]).
    pub(super) worker: Option<Worker>,
    /// The plugin's planning instance: only while some lookup store has no `plan` in the
    /// pipeline file (`super::plan::planner`).
    pub(super) planner: Option<Planner>,
    pub(super) window: Window<jetstream::Message>,
    pub(super) input_rx: mpsc::Receiver<Vec<(jetstream::Message, Arrival)>>,
    pub(super) broadcasts: Vec<BroadcastInput>,
    pub(super) broadcast_positions: BTreeMap<String, u64>,
    pub(super) keyed_key: String,
    /// What of the keyed input is still in the stream, past `keyed_read_through`.
    pub(super) keyed_backlog: Backlog,
    /// The keyed input's pending count (see [`crate::transport::Input::pending`]).
    pub(super) input_pending: Arc<std::sync::atomic::AtomicU64>,
    /// The newest keyed stream sequence admitted (or the restored position).
    pub(super) keyed_read_through: u64,
    pub(super) restored_skip: BTreeSet<u64>,
    pub(super) publisher: Publisher,
    pub(super) checkpointing: Checkpointing,
    pub(super) reloading: Reloading,
    pub(super) shadowing: Shadowing,
    pub(super) lookups: Option<Arc<Lookups>>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) query: Arc<QueryEngine>,
    pub(super) control_rx: mpsc::Receiver<Command>,
    pub(super) started: Instant,
    /// Set once a stop is requested: nothing more is admitted.
    pub(super) draining: bool,
    /// The lease the run's partitions are held under (cluster mode).
    pub(super) fence: Option<Arc<dyn Fence>>,
    /// Set when the lease turned out lost: the run stops without another checkpoint, ack or
    /// publish.
    pub(super) fenced: Option<String>,
    /// How the partition moves to another host (cluster mode).
    pub(super) hand_off: Option<Arc<HandOff>>,
    /// Until the run has caught up after taking its partition over (cluster mode).
    pub(super) catching_up: Option<CatchingUp>,
}

/// A run that took its partition over, on its way to what the input held at its start;
/// `latest` queries wait for it (see [`crate::query::QueryEngine::with_catch_up`]).
pub(in crate::pipeline) struct CatchingUp {
    flag: Arc<std::sync::atomic::AtomicBool>,
    /// The input stream's last sequence at the start.
    target: u64,
    looked: Option<Instant>,
}

impl CatchingUp {
    pub(in crate::pipeline) fn new(
        flag: Arc<std::sync::atomic::AtomicBool>,
        target: u64,
    ) -> CatchingUp {
        CatchingUp {
            flag,
            target,
            looked: None,
        }
    }
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
            if let Some(why) = self.fenced.take() {
                return Err(anyhow::Error::new(Fenced(why)));
            }
            let holding = self
                .hand_off
                .as_ref()
                .is_some_and(|h| h.hold.load(Ordering::Acquire));
            // A hold (the partition's receiver fetches the committed checkpoint) gives way when
            // half of `input.max_pending` waits for an ack: past `max_pending` the consumer
            // delivers nothing more, and the partition would stall until the hand-off. The
            // receiver then follows the new checkpoint.
            let pressed = self.checkpointing.unacked >= early;
            if !self.reloading.on_probation()
                && (!holding || pressed)
                && self.checkpointing.due(interval, early)
            {
                self.checkpoint().await?;
            }
            self.look_caught_up().await;
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
                Some(ev) = self.reloading.next_event() => self.reload(ev).await?,
                c = self.window.completion(), if self.window.waiting() > 0 => {
                    self.window.record(c);
                }
                arrivals = self.input_rx.recv(), if self.window.has_room() => match arrivals {
                    Some(arrivals) => self.admit(arrivals).await?,
                    // The reader stops by itself only once this run may have lost its
                    // partition (or when NATS closed the input for good).
                    None => {
                        return Err(Fenced::or(
                            self.fence.as_ref(),
                            anyhow::anyhow!("the keyed input ended"),
                        ));
                    }
                },
                _ = tick.tick() => {
                    self.idle_broadcasts().await;
                    self.judge_probation(false).await?;
                    if self.shadowing.waiting() {
                        self.start_waiting_shadow().await?;
                    }
                }
                // More may be released: go on without waiting.
                _ = std::future::ready(()), if handled => {}
            }
        }
        if self
            .hand_off
            .as_ref()
            .is_some_and(|h| h.quick.load(Ordering::Acquire))
        {
            self.let_go().await;
            return Ok(());
        }
        self.drain().await
    }

    /// Stops for a hand-off: nothing more is handled, and the checkpoint in progress is
    /// abandoned (its pointer commit would fail anyway once the new owner claims the
    /// partition). What this run did since the committed checkpoint, the new owner does again
    /// from it, outputs included: those still queued here are dropped with the publisher.
    async fn let_go(&mut self) {
        tracing::info!("handing the partition over from its committed checkpoint");
        self.draining = true;
        self.checkpointing
            .abandon("the partition moved to another host")
            .await;
    }

    /// Ends whatever of the run is still in the background once [`Runner::run`] has returned
    /// (on an error, or fenced): a checkpoint in progress is abandoned and its task waited
    /// for, so the state store is free to open again.
    pub(super) async fn settle(&mut self) {
        self.checkpointing
            .abandon("the run ended before it completed")
            .await;
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
        self.await_completion().await?;
        if self.checkpointing.dirty && self.fenced.is_none() {
            self.checkpoint().await?;
            self.await_completion().await?;
        }
        if let Some(why) = self.fenced.take() {
            return Err(anyhow::Error::new(Fenced(why)));
        }
        self.publisher.close().await?;
        self.state.flush()?;
        Ok(())
    }

    /// Sets the caught-up flag (at most every 200 ms) once no event of this partition stored
    /// before the run started is left unhandled: everything up to the handled position is in
    /// the state, and the stream holds none of the partition's events between it and the
    /// start's last sequence.
    async fn look_caught_up(&mut self) {
        let due = self.catching_up.as_ref().is_some_and(|c| {
            c.looked
                .is_none_or(|at| at.elapsed() >= Duration::from_millis(200))
        });
        if !due {
            return;
        }
        let handled = if self.window.is_empty() {
            self.keyed_read_through
        } else {
            self.window
                .position()
                .map_or(self.checkpointing.keyed_position, |(seq, _)| *seq)
        };
        let Some(c) = self.catching_up.as_mut() else {
            return;
        };
        c.looked = Some(Instant::now());
        let target = c.target;
        let done = handled >= target
            || match self.keyed_backlog.next_after(handled).await {
                Ok(None) => true,
                Ok(Some((next, _))) => next > target,
                Err(_) => false,
            };
        if done && let Some(c) = self.catching_up.take() {
            c.flag.store(true, Ordering::Release);
            tracing::info!(
                handled,
                "caught up with what the input held at the start: answering latest queries"
            );
        }
    }

    /// Aligns a keyed batch with the broadcast inputs and puts both into the window, asking
    /// for lookups where the pipeline has them.
    async fn admit(&mut self, arrivals: Vec<(jetstream::Message, Arrival)>) -> anyhow::Result<()> {
        self.checkpointing.unacked += arrivals.len() as u64;
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
        let Some(lookups) = self.lookups.clone() else {
            for (msg, a) in arrivals {
                self.window.push_ready(msg, a);
            }
            return Ok(());
        };
        // The reader planned what the pipeline file declares; the plugin's `prepare` plans the
        // stores the file does not.
        let from_plugin = match self.planner.take() {
            Some(mut planner) => {
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
                plans
            }
            None => Vec::new(),
        };
        // Arrivals keep their order in the window; those that need lookups wait on one
        // resolution of all their plans.
        let mut from_plugin = from_plugin.into_iter();
        let mut waiting: Vec<u64> = Vec::new();
        let mut waiting_plans: Vec<Vec<LookupRequest>> = Vec::new();
        for (msg, mut a) in arrivals {
            let plan = match &mut a.body {
                Body::Event { plan, .. } => {
                    let mut plan = std::mem::take(plan);
                    for r in from_plugin.next().unwrap_or_default() {
                        if !plan.iter().any(|p| p.store == r.store && p.key == r.key) {
                            plan.push(r);
                        }
                    }
                    plan
                }
                _ => Vec::new(),
            };
            if plan.is_empty() {
                self.window.push_ready(msg, a);
            } else {
                waiting.push(self.window.push_waiting(msg, a));
                waiting_plans.push(plan);
            }
        }
        if !waiting.is_empty() {
            self.window
                .await_lookups(waiting, lookups.resolve(waiting_plans));
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
        if self.reloading.on_probation() {
            return self.process_on_probation(group).await;
        }
        let run = self.run_group(group).await?;
        self.publish(run.out).await
    }

    async fn publish(&mut self, out: Outgoing) -> anyhow::Result<()> {
        // A host paused past its lease (or cut off from NATS) wakes up here: it must not
        // publish what the new owner publishes too, perhaps differently.
        if let Some(fence) = &self.fence
            && let Err(why) = fence.check()
        {
            return Err(anyhow::Error::new(Fenced(why)));
        }
        self.checkpointing.dirty = true;
        self.publisher
            .publish_outgoing(out)
            .await
            .map_err(|e| Fenced::or(self.fence.as_ref(), e))?;
        Ok(())
    }

    /// Runs `f` with the worker on a blocking thread and puts the worker back: the plugin's
    /// code and RocksDB never run on the async runtime.
    async fn on_worker<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Worker) -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let mut worker = self.worker.take().context("worker lost")?;
        let (worker, r) = tokio::task::spawn_blocking(move || {
            let r = f(&mut worker);
            (worker, r)
        })
        .await?;
        self.worker = Some(worker);
        Ok(r)
    }

    /// [`Runner::on_worker`], admitting what arrives while the plugin runs (key extraction
    /// happened on the reader; alignment with broadcasts and lookup planning happen here), so
    /// the next batch is in the window, whole, when the call returns. Admitted events queue
    /// behind the group being handled, so order is unchanged.
    async fn on_worker_admitting<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Worker) -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let mut worker = self.worker.take().context("worker lost")?;
        let call = tokio::task::spawn_blocking(move || {
            let r = f(&mut worker);
            (worker, r)
        });
        tokio::pin!(call);
        let mut admit_error = None;
        let mut input_open = true;
        loop {
            tokio::select! {
                biased;
                done = &mut call => {
                    let (worker, r) = done?;
                    self.worker = Some(worker);
                    return match admit_error {
                        // The call held the worker (and the state): it finished before the
                        // error stops the pipeline.
                        Some(e) => Err(e),
                        None => Ok(r),
                    };
                }
                c = self.window.completion(), if self.window.waiting() > 0 => {
                    self.window.record(c);
                }
                arrivals = self.input_rx.recv(),
                    if input_open
                        && admit_error.is_none()
                        && !self.draining
                        && self.window.has_room() =>
                {
                    match arrivals {
                        Some(arrivals) => {
                            if let Err(e) = self.admit(arrivals).await {
                                admit_error = Some(e);
                            }
                        }
                        // The run loop reports the end of the input once this call is done.
                        None => input_open = false,
                    }
                }
            }
        }
    }
}
