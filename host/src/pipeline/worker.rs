//! The worker: runs one batch through the plugin, isolating failures to single events.
//!
//! A batch is first handed to the plugin in one call. If that call fails (a trap, an
//! exhausted budget), its writes are discarded and each event is re-run on its own, on a
//! fresh instance after every failure, so only the events that fail are dead-lettered and the
//! rest keep their exact results. No NATS here: the same worker serves the pipeline, the
//! in-process benchmark and the local test harness.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::engine::{Event, Failure, Instance, Limits, Outcome, Plugin};
use crate::metrics::Metrics;
use crate::state::{StateBatch, StateStore};

/// A plugin, its live instance, and the state it works on.
pub struct Worker {
    plugin: Plugin,
    instance: Option<Instance>,
    state: Arc<StateStore>,
    limits: Limits,
    config_json: String,
    metrics: Arc<Metrics>,
}

/// The result of one batch: the state writes to commit and one result per event.
pub struct BatchResult {
    /// Writes to commit with the batch.
    pub state: StateBatch,
    /// Per event: the plugin's outcome, or why it failed.
    pub outcomes: Vec<Result<Outcome, Failure>>,
}

impl Worker {
    /// Instantiates the plugin (running `init`): a plugin that fails here never starts.
    pub fn new(
        plugin: Plugin,
        state: Arc<StateStore>,
        limits: Limits,
        config_json: String,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Worker> {
        let instance = plugin.instantiate(state.clone(), limits, &config_json)?;
        Ok(Worker {
            plugin,
            instance: Some(instance),
            state,
            limits,
            config_json,
            metrics,
        })
    }

    /// The running plugin.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// The state store.
    pub fn state(&self) -> &Arc<StateStore> {
        &self.state
    }

    fn instance(&mut self) -> anyhow::Result<&mut Instance> {
        if self.instance.as_ref().is_none_or(Instance::is_poisoned) {
            self.metrics
                .instance_restarts
                .fetch_add(1, Ordering::Relaxed);
            self.instance = None;
            let fresh =
                self.plugin
                    .instantiate(self.state.clone(), self.limits, &self.config_json)?;
            self.instance = Some(fresh);
        }
        // Set just above when absent.
        self.instance
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no plugin instance"))
    }

    /// Runs a batch. Errors only if the plugin cannot be instantiated any more (its `init`
    /// fails), which stops the pipeline.
    pub fn run(&mut self, events: &[Event], key_groups: &[u16]) -> anyhow::Result<BatchResult> {
        if events.is_empty() {
            return Ok(BatchResult {
                state: StateBatch::default(),
                outcomes: Vec::new(),
            });
        }
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let (state, result) = self
            .instance()?
            .handle(events, key_groups, StateBatch::default());
        metrics
            .call_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.batch_size.observe(events.len() as f64);
        match result {
            Ok(outcomes) => Ok(BatchResult {
                state,
                outcomes: outcomes.into_iter().map(Ok).collect(),
            }),
            Err(failure) if events.len() == 1 => Ok(BatchResult {
                state,
                outcomes: vec![Err(failure)],
            }),
            Err(failure) => {
                tracing::warn!(
                    events = events.len(),
                    "batch call failed ({}); re-running its events one by one",
                    failure.message
                );
                self.run_one_by_one(events, key_groups)
            }
        }
    }

    fn run_one_by_one(
        &mut self,
        events: &[Event],
        key_groups: &[u16],
    ) -> anyhow::Result<BatchResult> {
        let mut state = StateBatch::default();
        let mut outcomes = Vec::with_capacity(events.len());
        for i in 0..events.len() {
            let (next, result) = self
                .instance()?
                .handle(&events[i..=i], &key_groups[i..=i], state);
            state = next;
            outcomes.push(result.map(|mut o| o.remove(0)));
        }
        Ok(BatchResult { state, outcomes })
    }
}
