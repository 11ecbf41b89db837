//! The worker: runs batches through the plugin, isolating failures to single events, and
//! writes their state.
//!
//! A batch is first handed to the plugin in one call. If that call fails (a trap, an
//! exhausted budget), its writes are discarded and each event is re-run on its own, on a
//! fresh instance after every failure, so only the events that fail are dead-lettered and the
//! rest keep their exact results. A successful batch's writes are committed to RocksDB at once
//! (one write), unless the worker is *holding* them: while a new plugin version is on
//! probation its writes stay in an overlay that later batches read through, committed if it
//! passes and dropped if it is rolled back.
//!
//! No NATS here: the same worker serves the pipeline, the in-process benchmark and the local
//! test harness (`eddy test`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{
    BroadcastEvent, Event, Failure, Instance, InstanceContext, LookupRequest, Outcome, Plugin,
    Prefetched, VisitAction, VisitRequest, VisitedEntry,
};
use eddy_state::visit::{self, ItemAction, Visit};
use eddy_state::{StateBatch, StateStore};

/// What the worker reports as it runs, for whoever keeps metrics (the host's Prometheus
/// registry; nothing in benchmarks and `eddy test`).
pub trait WorkerMetrics: Send + Sync {
    /// One plugin call of `events` keyed events took `seconds`.
    fn batch_called(&self, events: usize, seconds: f64);
    /// An instance was replaced by a fresh one after a trap.
    fn instance_restarted(&self);
}

/// Keeps no metrics.
impl WorkerMetrics for () {
    fn batch_called(&self, _events: usize, _seconds: f64) {}
    fn instance_restarted(&self) {}
}

/// Entries handed to the plugin per `visit` call.
const VISIT_CHUNK: usize = 1024;

/// How many times its usual time a batch call may take before it is re-run event by event.
const BATCH_MARGIN: u32 = 16;

/// A plugin, its live instance, and the state it works on.
pub struct Worker {
    plugin: Plugin,
    instance: Option<Instance>,
    ctx: InstanceContext,
    config_json: String,
    metrics: Arc<dyn WorkerMetrics>,
    /// Writes held back (probation), read through by later batches.
    held: Option<StateBatch>,
    /// The mean time per event of recent clean batch calls (exponentially weighted).
    typical: Option<Duration>,
}

impl Worker {
    /// Instantiates the plugin (running `init`): a plugin that fails here never starts.
    pub fn new(
        plugin: Plugin,
        ctx: InstanceContext,
        config_json: String,
        metrics: Arc<dyn WorkerMetrics>,
    ) -> anyhow::Result<Worker> {
        let instance = plugin.instantiate(&ctx, &config_json)?;
        Ok(Worker {
            plugin,
            instance: Some(instance),
            ctx,
            config_json,
            metrics,
            held: None,
            typical: None,
        })
    }

    /// The running plugin.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// The state store.
    pub fn state(&self) -> &Arc<StateStore> {
        &self.ctx.state
    }

    /// What instances of this worker get.
    pub fn context(&self) -> &InstanceContext {
        &self.ctx
    }

    /// The plugin configuration JSON.
    pub fn config_json(&self) -> &str {
        &self.config_json
    }

    /// Reports to `metrics` from now on (a shadow's worker, made live).
    pub fn set_metrics(&mut self, metrics: Arc<dyn WorkerMetrics>) {
        self.metrics = metrics;
    }

    /// Replaces the plugin by `plugin` with its already initialised `instance`; returns the
    /// previous plugin.
    pub fn swap(&mut self, plugin: Plugin, instance: Instance) -> Plugin {
        self.instance = Some(instance);
        std::mem::replace(&mut self.plugin, plugin)
    }

    /// Starts holding writes instead of committing them.
    pub fn hold(&mut self) {
        self.held.get_or_insert_with(StateBatch::default);
    }

    /// Whether writes are being held.
    pub fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    /// Commits the held writes and stops holding.
    pub fn release(&mut self) -> anyhow::Result<()> {
        if let Some(held) = self.held.take() {
            self.ctx.state.commit(held)?;
        }
        Ok(())
    }

    /// Drops the held writes and stops holding.
    pub fn discard(&mut self) {
        self.held = None;
    }

    fn instance(&mut self) -> anyhow::Result<&mut Instance> {
        if self.instance.as_ref().is_none_or(Instance::is_poisoned) {
            self.metrics.instance_restarted();
            self.instance = None;
            let fresh = self.plugin.instantiate(&self.ctx, &self.config_json)?;
            self.instance = Some(fresh);
        }
        // Set just above when absent.
        self.instance
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no plugin instance"))
    }

    /// The overlay a call starts from: the held writes, or nothing.
    fn base(&mut self) -> StateBatch {
        self.held.take().unwrap_or_default()
    }

    /// Commits a call's writes, or keeps holding them.
    fn settle(&mut self, batch: StateBatch, holding: bool) -> anyhow::Result<()> {
        if holding {
            self.held = Some(batch);
        } else {
            self.ctx.state.commit(batch)?;
        }
        Ok(())
    }

    /// Runs a batch of keyed events and writes their state. Errors only if the plugin cannot
    /// be instantiated any more (its `init` fails) or the state cannot be written, which stops
    /// the pipeline.
    pub fn handle(
        &mut self,
        events: &[Event],
        key_groups: &[u16],
        prefetched: &Arc<Prefetched>,
    ) -> anyhow::Result<Vec<Result<Outcome, Failure>>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let holding = self.is_holding();
        let base = self.base();
        let started = Instant::now();
        let budget = self.first_budget(events.len());
        let (batch, result) = self
            .instance()?
            .handle(events, key_groups, base, prefetched, budget);
        let took = started.elapsed();
        self.metrics.batch_called(events.len(), took.as_secs_f64());
        let (batch, outcomes) = match result {
            Ok(outcomes) => {
                self.learn(took, events.len());
                (batch, outcomes.into_iter().map(Ok).collect())
            }
            Err(failure) if events.len() == 1 => (batch, vec![Err(failure)]),
            Err(failure) => {
                if crate::log_limit::allow() {
                    tracing::warn!(
                        events = events.len(),
                        "batch call failed ({}); re-running its events one by one",
                        failure.message
                    );
                }
                self.one_by_one(events, key_groups, prefetched, batch)?
            }
        };
        self.settle(batch, holding)?;
        Ok(outcomes)
    }

    /// The budget of a batch call: what its events usually take with a wide margin
    /// ([`BATCH_MARGIN`] times the recent mean), never less than one event's budget and never
    /// more than the per-event budget times the batch (capped at a second). A batch holding a
    /// looping event then fails after about one event's budget rather than a second, and is
    /// re-run event by event, each with the full per-event budget: a batch that was merely
    /// slower than usual still succeeds that way.
    fn first_budget(&self, events: usize) -> Duration {
        let per_event = self.ctx.limits.cpu_per_event;
        match self.typical {
            Some(t) => t
                .saturating_mul(BATCH_MARGIN.saturating_mul(events as u32))
                .max(per_event),
            None => Duration::MAX,
        }
    }

    /// Folds a clean batch call's time per event into the running mean.
    fn learn(&mut self, took: Duration, events: usize) {
        let sample = took / events.max(1) as u32;
        self.typical = Some(match self.typical {
            Some(t) => (t * 7 + sample) / 8,
            None => sample,
        });
    }

    fn one_by_one(
        &mut self,
        events: &[Event],
        key_groups: &[u16],
        prefetched: &Arc<Prefetched>,
        mut batch: StateBatch,
    ) -> anyhow::Result<(StateBatch, Vec<Result<Outcome, Failure>>)> {
        let mut outcomes = Vec::with_capacity(events.len());
        for i in 0..events.len() {
            let per_event = self.ctx.limits.cpu_per_event;
            let (next, result) = self.instance()?.handle(
                &events[i..=i],
                &key_groups[i..=i],
                batch,
                prefetched,
                per_event,
            );
            batch = next;
            outcomes.push(result.map(|mut o| o.remove(0)));
        }
        Ok((batch, outcomes))
    }

    /// Runs broadcast events, one result per event, and the visits they ask for; writes
    /// broadcast state. An event the plugin fails (or that traps) keeps none of its writes: if
    /// the batch call is not clean, its events are re-run one by one.
    pub fn handle_broadcast(
        &mut self,
        events: &[BroadcastEvent],
    ) -> anyhow::Result<Vec<Result<(), String>>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let holding = self.is_holding();
        let base = self.base();
        let (batch, result, visits) = self.instance()?.handle_broadcast(events, base.clone());
        let (mut batch, results, visits) = match result {
            Ok(results) if results.iter().all(Result::is_ok) => (batch, results, visits),
            Ok(results) if events.len() == 1 => (base, results, Vec::new()),
            Err(failure) if events.len() == 1 => (base, vec![Err(failure.message)], Vec::new()),
            _ => {
                let mut batch = base;
                let mut results = Vec::with_capacity(events.len());
                let mut all_visits = Vec::new();
                for e in events {
                    let before = batch.clone();
                    let (next, r, visits) = self
                        .instance()?
                        .handle_broadcast(std::slice::from_ref(e), batch);
                    match r.map(|mut r| r.pop().unwrap_or(Ok(()))) {
                        Ok(Ok(())) => {
                            batch = next;
                            all_visits.extend(visits);
                            results.push(Ok(()));
                        }
                        Ok(Err(m)) | Err(crate::Failure { message: m, .. }) => {
                            batch = before;
                            results.push(Err(m));
                        }
                    }
                }
                (batch, results, all_visits)
            }
        };
        self.visit_all(&visits, &mut batch, holding)?;
        self.settle(batch, holding)?;
        Ok(results)
    }

    /// Runs `migrate` on the current plugin, with the visits it asks for. The error is the
    /// plugin's refusal (or failure), for the caller to reject the version with.
    pub fn migrate(&mut self, previous_version: &str) -> anyhow::Result<Result<(), String>> {
        if !self.plugin.capabilities().migrator {
            return Ok(Ok(()));
        }
        let holding = self.is_holding();
        let base = self.base();
        let (mut batch, result, visits) = self.instance()?.migrate(previous_version, base);
        let outcome = match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(msg),
            Err(f) => Err(f.message),
        };
        if outcome.is_ok() {
            self.visit_all(&visits, &mut batch, holding)?;
        }
        self.settle(batch, holding)?;
        Ok(outcome)
    }

    /// Visits every key of each requested state, chunk by chunk, applying the plugin's
    /// actions. Without holding, each chunk (with `batch`'s writes first) is committed at once,
    /// so memory stays bounded.
    fn visit_all(
        &mut self,
        visits: &[VisitRequest],
        batch: &mut StateBatch,
        holding: bool,
    ) -> anyhow::Result<()> {
        for v in visits {
            let mut visit = Visit::new(v.state.clone());
            let started = Instant::now();
            let mut visited = 0u64;
            loop {
                let items = visit.next_chunk(&self.ctx.state, batch, VISIT_CHUNK)?;
                if items.is_empty() {
                    break;
                }
                visited += items.len() as u64;
                let entries: Vec<VisitedEntry> = items
                    .iter()
                    .map(|i| VisitedEntry {
                        key: i.key.clone(),
                        map_key: i.map_key.clone(),
                        value: i.value.clone(),
                    })
                    .collect();
                let actions = match self.instance()?.visit(&v.tag, &v.state.name, &entries) {
                    Ok(a) => a,
                    Err(f) => {
                        tracing::error!(
                            state = %v.state.name,
                            tag = %v.tag,
                            "visit stopped: {}; entries already visited keep their changes",
                            f.message
                        );
                        break;
                    }
                };
                let actions = actions
                    .into_iter()
                    .map(|a| match a {
                        VisitAction::Keep => ItemAction::Keep,
                        VisitAction::Set(v) => ItemAction::Set(v),
                        VisitAction::Remove => ItemAction::Remove,
                    })
                    .collect();
                visit::apply(&self.ctx.state, batch, items, actions)?;
                if !holding {
                    self.ctx.state.commit(std::mem::take(batch))?;
                }
            }
            tracing::info!(
                state = %v.state.name,
                tag = %v.tag,
                entries = visited,
                ms = started.elapsed().as_millis() as u64,
                "visited every key"
            );
        }
        Ok(())
    }
}

/// A second instance of the plugin that plans lookups (`prepare`), so planning the next events
/// can overlap with handling the current ones.
pub struct Planner {
    plugin: Plugin,
    instance: Option<Instance>,
    ctx: InstanceContext,
    config_json: String,
}

impl Planner {
    /// A planner for `plugin`, if it exports `lookup-planner`.
    pub fn new(
        plugin: &Plugin,
        ctx: &InstanceContext,
        config_json: &str,
    ) -> anyhow::Result<Option<Planner>> {
        if !plugin.capabilities().planner {
            return Ok(None);
        }
        Ok(Some(Planner {
            instance: Some(plugin.instantiate(ctx, config_json)?),
            plugin: plugin.clone(),
            ctx: ctx.clone(),
            config_json: config_json.to_string(),
        }))
    }

    /// The lookups each event needs. A failing `prepare` plans nothing (the lookups are then
    /// made, more slowly, from `handle`) and is logged.
    pub fn prepare(&mut self, events: &[Event]) -> Vec<Vec<LookupRequest>> {
        if self.instance.as_ref().is_none_or(Instance::is_poisoned) {
            self.instance = self.plugin.instantiate(&self.ctx, &self.config_json).ok();
        }
        let Some(instance) = self.instance.as_mut() else {
            return vec![Vec::new(); events.len()];
        };
        match instance.prepare(events) {
            Ok(plans) => plans,
            Err(f) => {
                tracing::warn!(
                    "prepare failed ({}); lookups will be made from handle",
                    f.message
                );
                vec![Vec::new(); events.len()]
            }
        }
    }
}
