//! One live plugin instance and the calls the host makes on it.
//!
//! Every call runs under a CPU budget counted in epoch ticks. The deadline callback counts
//! only the plugin's own time: time spent blocked in a host import waiting for a lookup is
//! not charged to it. A call that traps poisons the instance, which the caller replaces.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use wasmtime::{Store, Trap, UpdateDeadline};

use super::bindings::exports::eddy::plugin::{
    broadcast_handler, handler, keyed_visitor, lookup_planner, migrator, packed_handler,
};
use super::host::{
    CallMode, LookupSource, MemoryLimitExceeded, PluginHost, Prefetched, VisitRequest,
};
use super::packed::Packer;
use super::{
    BroadcastEvent, Event, Failure, FailureKind, Limits, LookupRequest, Outcome, Plugin, TICK,
    VisitAction, VisitedEntry, call_budget,
};
use eddy_state::{StateBatch, StateStore};

/// What an instance is given to work with.
#[derive(Clone)]
pub struct InstanceContext {
    /// The state store its state calls reach.
    pub state: Arc<StateStore>,
    /// Its budgets.
    pub limits: Limits,
    /// The lookup stores of the pipeline, if any.
    pub lookups: Option<Arc<dyn LookupSource>>,
    /// Whether value and list state may go through the `keyed-state` batch calls (read per
    /// batch, written once at its end). Off, `batchable` answers false and a plugin makes one
    /// call per read and write: what the engine benchmark compares against.
    pub batch_calls: bool,
    /// Whether keyed batches go through `handle-packed` when the plugin exports it. Off,
    /// `handle` takes them: what the engine benchmark compares against.
    pub packed_batches: bool,
}

impl Plugin {
    /// Creates an instance and runs `init` with `config_json`.
    pub fn instantiate(
        &self,
        ctx: &InstanceContext,
        config_json: &str,
    ) -> anyhow::Result<Instance> {
        let p = &self.inner;
        let host = PluginHost::new(
            ctx.state.clone(),
            &p.name,
            ctx.limits.memory_bytes,
            ctx.lookups.clone(),
            ctx.batch_calls,
        );
        let mut store = Store::new(&p.engine, host);
        store.limiter(|h| &mut h.limits);
        store.epoch_deadline_callback(deadline_reached);
        store.data_mut().start_budget(init_budget(ctx.limits));
        store.set_epoch_deadline(ticks(init_budget(ctx.limits)));
        let instance = p
            .pre
            .instantiate(&mut store)
            .map_err(|e| anyhow!("plugin {} failed to instantiate: {e:#}", p.name))?;
        let load = |store: &mut Store<PluginHost>| -> wasmtime::Result<_> {
            Ok((
                p.exports.handler.load(&mut *store, &instance)?,
                p.exports
                    .packed
                    .as_ref()
                    .map(|i| i.load(&mut *store, &instance))
                    .transpose()?,
                p.exports
                    .broadcast
                    .as_ref()
                    .map(|i| i.load(&mut *store, &instance))
                    .transpose()?,
                p.exports
                    .planner
                    .as_ref()
                    .map(|i| i.load(&mut *store, &instance))
                    .transpose()?,
                p.exports
                    .visitor
                    .as_ref()
                    .map(|i| i.load(&mut *store, &instance))
                    .transpose()?,
                p.exports
                    .migrator
                    .as_ref()
                    .map(|i| i.load(&mut *store, &instance))
                    .transpose()?,
            ))
        };
        let (handler, packed, broadcast, planner, visitor, migrator) = load(&mut store)
            .map_err(|e| anyhow!("plugin {} exports the wrong functions: {e:#}", p.name))?;
        let mut instance = Instance {
            store,
            handler,
            packed: packed
                .filter(|_| ctx.packed_batches)
                .map(|guest| (guest, Packer::default())),
            broadcast,
            planner,
            visitor,
            migrator,
            limits: ctx.limits,
            name: p.name.clone(),
            poisoned: false,
        };
        instance.store.data_mut().set_mode(CallMode::Init);
        let result = instance.handler.call_init(&mut instance.store, config_json);
        instance.store.data_mut().set_mode(CallMode::Idle);
        instance.store.data_mut().flush_output();
        match result {
            Ok(Ok(())) => Ok(instance),
            Ok(Err(msg)) => Err(anyhow!(
                "plugin {} refused its configuration in init: {msg}. Fix [plugin.config] in the pipeline file",
                p.name
            )),
            Err(e) => Err(anyhow!(
                "plugin {} failed in init: {}",
                p.name,
                instance.describe_failure(&e).message
            )),
        }
    }
}

/// `init` may open state and parse configuration: a generous fixed budget.
fn init_budget(limits: Limits) -> Duration {
    limits.cpu_per_event.max(Duration::from_secs(5))
}

fn ticks(budget: Duration) -> u64 {
    (budget.as_millis() / TICK.as_millis()).max(1) as u64
}

/// The epoch deadline was reached: trap if the plugin used its budget, else extend it by what
/// is left (time blocked in host imports does not count).
fn deadline_reached(
    ctx: wasmtime::StoreContextMut<'_, PluginHost>,
) -> wasmtime::Result<UpdateDeadline> {
    match ctx.data().budget_left() {
        Some(left) => Ok(UpdateDeadline::Continue(ticks(left))),
        None => Err(Trap::Interrupt.into()),
    }
}

/// What a `handle-broadcast` call leaves: the overlay, one result per event (or the call's
/// failure), and the visits asked for.
pub(crate) type BroadcastCall = (
    StateBatch,
    Result<Vec<Result<(), String>>, Failure>,
    Vec<VisitRequest>,
);

/// One live plugin instance. Reused across batches; replaced after a trap.
pub struct Instance {
    store: Store<PluginHost>,
    handler: handler::Guest,
    /// `packed-handler`, if exported, with the buffers batches are packed into.
    packed: Option<(packed_handler::Guest, Packer)>,
    broadcast: Option<broadcast_handler::Guest>,
    planner: Option<lookup_planner::Guest>,
    visitor: Option<keyed_visitor::Guest>,
    migrator: Option<migrator::Guest>,
    limits: Limits,
    name: String,
    poisoned: bool,
}

impl Instance {
    /// Whether the instance trapped and must be replaced.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Runs one call of `events` events under the budget, in `mode`, classifying a failure.
    fn call<R>(
        &mut self,
        mode: CallMode,
        events: usize,
        f: impl FnOnce(&mut Self) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        let budget = call_budget(self.limits.cpu_per_event, events);
        self.call_within(mode, budget, f)
    }

    /// Runs one call in `mode` with `budget` of CPU time, classifying a failure.
    fn call_within<R>(
        &mut self,
        mode: CallMode,
        budget: Duration,
        f: impl FnOnce(&mut Self) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        let host = self.store.data_mut();
        host.set_mode(mode);
        host.start_budget(budget);
        self.store.set_epoch_deadline(ticks(budget));
        let result = f(self);
        let host = self.store.data_mut();
        host.set_mode(CallMode::Idle);
        host.flush_output();
        result.map_err(|e| {
            self.poisoned = true;
            self.describe_failure(&e)
        })
    }

    /// Handles `events` (with their key groups, in the same order) against `batch`, with the
    /// lookups fetched for them, within `budget` of CPU time (at most [`call_budget`]'s).
    /// Returns the batch (with this call's writes, or unchanged if the call failed) and the
    /// outcomes.
    pub fn handle(
        &mut self,
        events: &[Event],
        key_groups: &[u16],
        batch: StateBatch,
        prefetched: &Arc<Prefetched>,
        budget: Duration,
    ) -> (StateBatch, Result<Vec<Outcome>, Failure>) {
        let rollback = self
            .store
            .data_mut()
            .begin(events, key_groups, batch, prefetched.clone());
        let budget = budget.min(call_budget(self.limits.cpu_per_event, events.len()));
        let result = match self.packed.take() {
            Some((guest, mut packer)) => {
                let result = self.call_within(CallMode::Handle, budget, |me| {
                    guest.call_handle_packed(&mut me.store, packer.pack(events))
                });
                self.packed = Some((guest, packer));
                result.and_then(|packed| {
                    super::packed::outcomes(&packed).map_err(|e| Failure {
                        kind: FailureKind::Contract,
                        message: format!(
                            "plugin {} returned malformed outcomes from `handle-packed`: {e}",
                            self.name
                        ),
                    })
                })
            }
            None => {
                let handler = self.handler.clone();
                self.call_within(CallMode::Handle, budget, |me| {
                    handler.call_handle(&mut me.store, events)
                })
            }
        };
        let result = match result {
            Ok(outcomes) if outcomes.len() == events.len() => Ok(outcomes),
            Ok(outcomes) => Err(Failure {
                kind: FailureKind::Contract,
                message: format!(
                    "plugin {} returned {} outcomes for {} events; `handle` must return exactly one per event",
                    self.name,
                    outcomes.len(),
                    events.len()
                ),
            }),
            Err(f) => Err(f),
        };
        // A refused write fails the call whatever the plugin made of the refusal (handled it,
        // or trapped on it): none of the call's writes are kept.
        let result = match self.store.data_mut().take_over_quota() {
            Some(message) => Err(Failure {
                kind: FailureKind::Quota,
                message,
            }),
            None => result,
        };
        let (batch, _) = self.store.data_mut().end(result.is_ok(), rollback);
        (batch, result)
    }

    /// Handles broadcast events with read-write broadcast state. Returns the batch with the
    /// writes of the events that succeeded, one result per event, and the visits asked for.
    /// A plugin without the export rejects every event.
    pub fn handle_broadcast(
        &mut self,
        events: &[BroadcastEvent],
        batch: StateBatch,
    ) -> BroadcastCall {
        let Some(broadcast) = self.broadcast.clone() else {
            let reason = format!(
                "plugin {} does not export broadcast-handler ({}); build it for world `full-processor`, or remove the pipeline's [broadcast] inputs",
                self.name,
                super::WIT_PACKAGE
            );
            return (batch, Ok(vec![Err(reason); events.len()]), Vec::new());
        };
        let rollback = self.store.data_mut().begin(&[], &[], batch, Arc::default());
        let result = self.call(CallMode::Broadcast, events.len(), |me| {
            broadcast.call_handle_broadcast(&mut me.store, events)
        });
        let result = match result {
            Ok(r) if r.len() == events.len() => Ok(r),
            Ok(r) => Err(Failure {
                kind: FailureKind::Contract,
                message: format!(
                    "plugin {} returned {} results for {} broadcast events",
                    self.name,
                    r.len(),
                    events.len()
                ),
            }),
            Err(f) => Err(f),
        };
        let (batch, visits) = self.store.data_mut().end(result.is_ok(), rollback);
        (batch, result, visits)
    }

    /// Asks the plugin which lookups each event needs. A plugin without the export needs none.
    pub fn prepare(&mut self, events: &[Event]) -> Result<Vec<Vec<LookupRequest>>, Failure> {
        let Some(planner) = self.planner.clone() else {
            return Ok(vec![Vec::new(); events.len()]);
        };
        let result = self.call(CallMode::Prepare, events.len(), |me| {
            planner.call_prepare(&mut me.store, events)
        })?;
        if result.len() != events.len() {
            return Err(Failure {
                kind: FailureKind::Contract,
                message: format!(
                    "plugin {} planned lookups for {} events of {}; `prepare` must return one list per event",
                    self.name,
                    result.len(),
                    events.len()
                ),
            });
        }
        Ok(result)
    }

    /// Hands visited entries to the plugin; one action per entry.
    pub fn visit(
        &mut self,
        tag: &str,
        state: &str,
        entries: &[VisitedEntry],
    ) -> Result<Vec<VisitAction>, Failure> {
        let Some(visitor) = self.visitor.clone() else {
            return Err(Failure {
                kind: FailureKind::Contract,
                message: format!(
                    "plugin {} asked to visit state `{state}` but does not export keyed-visitor",
                    self.name
                ),
            });
        };
        let actions = self.call(CallMode::Visit, entries.len(), |me| {
            visitor.call_visit(&mut me.store, tag, state, entries)
        })?;
        if actions.len() != entries.len() {
            return Err(Failure {
                kind: FailureKind::Contract,
                message: format!(
                    "plugin {} returned {} actions for {} visited entries",
                    self.name,
                    actions.len(),
                    entries.len()
                ),
            });
        }
        Ok(actions)
    }

    /// Runs `migrate` if the plugin exports it; `Ok(Ok(()))` if it does not.
    pub fn migrate(
        &mut self,
        previous_version: &str,
        batch: StateBatch,
    ) -> (
        StateBatch,
        Result<Result<(), String>, Failure>,
        Vec<VisitRequest>,
    ) {
        let Some(migrator) = self.migrator.clone() else {
            return (batch, Ok(Ok(())), Vec::new());
        };
        let rollback = self.store.data_mut().begin(&[], &[], batch, Arc::default());
        let result = self.call(CallMode::Migrate, 1, |me| {
            migrator.call_migrate(&mut me.store, previous_version)
        });
        let ok = matches!(result, Ok(Ok(())));
        let (batch, visits) = self.store.data_mut().end(ok, rollback);
        (batch, result, visits)
    }

    fn describe_failure(&mut self, e: &wasmtime::Error) -> Failure {
        let last_words = self.store.data_mut().take_last_words();
        let said = if last_words.is_empty() {
            String::new()
        } else {
            format!(" (plugin said: {last_words})")
        };
        let memory_mb = self.limits.memory_bytes >> 20;
        if let Some(trap) = e.downcast_ref::<Trap>() {
            if *trap == Trap::Interrupt {
                return Failure {
                    kind: FailureKind::CpuBudget,
                    message: format!(
                        "plugin {} exceeded its CPU budget of {} ms per event (endless loop?); raise limits.cpu_ms_per_event if the work is legitimate",
                        self.name,
                        self.limits.cpu_per_event.as_millis()
                    ),
                };
            }
            if *trap == Trap::StackOverflow {
                return Failure {
                    kind: FailureKind::Trap,
                    message: format!(
                        "plugin {} overflowed its stack (deep recursion?){said}",
                        self.name
                    ),
                };
            }
        }
        if e.downcast_ref::<MemoryLimitExceeded>().is_some() || self.store.data().hit_memory_limit()
        {
            return Failure {
                kind: FailureKind::MemoryLimit,
                message: format!(
                    "plugin {} exceeded its memory limit of {memory_mb} MiB; raise limits.memory_mb or make the plugin use less",
                    self.name
                ),
            };
        }
        let root = e.root_cause().to_string();
        Failure {
            kind: FailureKind::Trap,
            message: format!("plugin {} trapped: {root}{said}", self.name),
        }
    }
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("plugin", &self.name)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}
