//! The host side of the plugin imports: keyed state, broadcast state, lookups, log, clock, and
//! a closed WASI.
//!
//! A host function returns the WIT result: a state or lookup failure is an `Err` the plugin
//! handles, never a trap. What a call may do depends on which export is running
//! ([`CallMode`]): keyed state needs the current batch's events (`handle`), broadcast state is
//! writable only from `handle-broadcast`, visits are asked for only from `handle-broadcast` and
//! `migrate`. A forbidden write answers `read-only` with where it was attempted, and changes
//! nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod batch;
mod lookups;
mod state;

use crate::Event;
use crate::bindings::eddy::plugin::{broadcast_state, clock, keyed_state, log, types};
use crate::stdio::CapturedOutput;
use eddy_state::{BroadcastAccess, KeyedAccess, StateBatch, StateInfo, StateKind, StateStore};

use keyed_state::StateError as WitError;

/// Which export is running: decides what the imports allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallMode {
    /// Between calls.
    Idle,
    /// `init`: states and maps may be opened.
    Init,
    /// `handle`: keyed state of the batch's events; broadcast state read-only.
    Handle,
    /// `handle-broadcast`: broadcast state read-write; visits may be asked for.
    Broadcast,
    /// `prepare`: no state.
    Prepare,
    /// `visit`: entries are passed in; no state calls.
    Visit,
    /// `migrate`: visits may be asked for.
    Migrate,
}

impl CallMode {
    fn export(self) -> &'static str {
        match self {
            CallMode::Idle => "no export",
            CallMode::Init => "init",
            CallMode::Handle => "handle",
            CallMode::Broadcast => "handle-broadcast",
            CallMode::Prepare => "prepare",
            CallMode::Visit => "visit",
            CallMode::Migrate => "migrate",
        }
    }
}

/// A lookup's answer: the value, `None` if the store has no such key, or why it failed.
pub type LookupAnswer = Result<Option<Vec<u8>>, LookupFailure>;

/// Why a lookup failed, as the plugin sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupFailure {
    /// The pipeline declares no such store.
    UnknownStore(String),
    /// The store failed after every retry.
    Failed(String),
}

/// Lookups fetched before a call, by store and key.
pub type Prefetched = HashMap<(String, String), LookupAnswer>;

/// The pipeline's lookup stores as the engine sees them: a synchronous fetch for keys that
/// were not fetched before the call (the caller is a blocking thread).
pub trait LookupSource: Send + Sync + 'static {
    /// Fetches `keys` from `store`, one answer per key, with the store's cache, timeout and
    /// retries.
    fn fetch_blocking(&self, store: &str, keys: &[String]) -> Vec<LookupAnswer>;
}

/// A visit of every key of a keyed state, asked for by the plugin.
#[derive(Debug, Clone)]
pub struct VisitRequest {
    /// The state to visit.
    pub state: StateInfo,
    /// The plugin's tag, passed back to `visit`.
    pub tag: String,
}

/// Everything a plugin instance's store holds.
pub struct PluginHost {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: MemoryLimiter,
    stdout: CapturedOutput,
    stderr: CapturedOutput,
    last_words: String,
    plugin: String,
    state: Arc<StateStore>,
    /// Opened keyed states, indexed by state id.
    opened: Vec<Option<OpenedState>>,
    /// Whether states may use the batch calls at all ([`crate::InstanceContext::batch_calls`]).
    batch_calls: bool,
    /// Why the current call broke a quota (policy `reject`): the call fails, whatever the
    /// plugin made of the refused write, and its event is dead-lettered.
    over_quota: Option<String>,
    /// Entries the current call's writes evicted (policy `evict`), counted if it succeeds.
    evicted: u64,
    /// Opened broadcast maps: id → name.
    maps: HashMap<u32, String>,
    /// The current call's overlay.
    batch: StateBatch,
    /// Key group and key of each event of the current call.
    keys: Vec<(u16, Vec<u8>)>,
    /// The current call's `key-slots` (the slot of each event's key) and the first event of
    /// each slot, computed when first asked for.
    slots: Option<(Vec<u32>, Vec<u32>)>,
    mode: CallMode,
    lookups: Option<Arc<dyn LookupSource>>,
    prefetched: Arc<Prefetched>,
    visits: Vec<VisitRequest>,
    /// CPU budget of the current call: when it started, what it may use, and how long it has
    /// been blocked in host imports (not charged).
    budget: Duration,
    started: Instant,
    waited: Duration,
}

/// A keyed state a plugin opened, with the operator's quota on it.
#[derive(Clone)]
struct OpenedState {
    info: StateInfo,
    quota: Option<eddy_state::Quota>,
}

/// A grow past an instance's memory cap: the error the limiter traps with, found again by
/// type when the call's failure is classified.
#[derive(Debug)]
pub(crate) struct MemoryLimitExceeded {
    desired: usize,
    max: usize,
}

impl std::fmt::Display for MemoryLimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "memory limit: growing memory to {} bytes exceeds {} bytes",
            self.desired, self.max
        )
    }
}

impl std::error::Error for MemoryLimitExceeded {}

/// A memory cap per instance; a failed grow traps with [`MemoryLimitExceeded`]. `hit` stays
/// set for guests whose runtime turns a failed grow into a trap of its own.
pub(crate) struct MemoryLimiter {
    max: usize,
    hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.hit = true;
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                desired,
                max: self.max,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// A WASI context that grants nothing: no files, no environment, no arguments, no sockets,
/// no name lookups; stdin closed; stdout and stderr captured into the host's log. Clocks and
/// randomness stay, as language runtimes need them to start.
fn closed_wasi(stdout: &CapturedOutput, stderr: &CapturedOutput) -> WasiCtx {
    let mut b = WasiCtx::builder();
    b.stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    b.build()
}

impl PluginHost {
    pub(super) fn new(
        state: Arc<StateStore>,
        plugin: &str,
        memory_bytes: usize,
        lookups: Option<Arc<dyn LookupSource>>,
        batch_calls: bool,
    ) -> PluginHost {
        let stdout = CapturedOutput::default();
        let stderr = CapturedOutput::default();
        PluginHost {
            wasi: closed_wasi(&stdout, &stderr),
            table: ResourceTable::new(),
            limits: MemoryLimiter {
                max: memory_bytes,
                hit: false,
            },
            stdout,
            stderr,
            last_words: String::new(),
            plugin: plugin.to_string(),
            state,
            opened: Vec::new(),
            batch_calls,
            over_quota: None,
            evicted: 0,
            maps: HashMap::new(),
            batch: StateBatch::default(),
            keys: Vec::new(),
            slots: None,
            mode: CallMode::Idle,
            lookups,
            prefetched: Arc::default(),
            visits: Vec::new(),
            budget: Duration::ZERO,
            started: Instant::now(),
            waited: Duration::ZERO,
        }
    }

    pub(super) fn set_mode(&mut self, mode: CallMode) {
        self.mode = mode;
    }

    /// Starts counting a call's CPU budget.
    pub(super) fn start_budget(&mut self, budget: Duration) {
        self.budget = budget;
        self.started = Instant::now();
        self.waited = Duration::ZERO;
    }

    /// CPU time left in the current call, or `None` if it is used up.
    pub(super) fn budget_left(&self) -> Option<Duration> {
        let used = self.started.elapsed().saturating_sub(self.waited);
        self.budget.checked_sub(used).filter(|d| !d.is_zero())
    }

    /// Installs a call's events, overlay and lookups; returns the copy to roll back to on
    /// failure.
    pub(super) fn begin(
        &mut self,
        events: &[Event],
        key_groups: &[u16],
        batch: StateBatch,
        prefetched: Arc<Prefetched>,
    ) -> Option<StateBatch> {
        self.keys.clear();
        self.keys.extend(
            events
                .iter()
                .zip(key_groups)
                .map(|(e, kg)| (*kg, e.key.clone())),
        );
        self.slots = None;
        self.prefetched = prefetched;
        self.visits.clear();
        self.over_quota = None;
        self.evicted = 0;
        // The overlay is usually empty at a call's start (one call per batch); when it is
        // not (events re-run one by one), keep a copy so a failed call leaves no writes.
        let rollback = (!batch.is_empty()).then(|| batch.clone());
        self.batch = batch;
        rollback
    }

    /// Ends a call: returns the overlay with its writes (or rolled back if it failed) and the
    /// visits the call asked for (none if it failed).
    pub(super) fn end(
        &mut self,
        ok: bool,
        rollback: Option<StateBatch>,
    ) -> (StateBatch, Vec<VisitRequest>) {
        self.keys.clear();
        self.slots = None;
        self.prefetched = Arc::default();
        let batch = std::mem::take(&mut self.batch);
        let visits = std::mem::take(&mut self.visits);
        if ok {
            let evicted = std::mem::take(&mut self.evicted);
            self.state
                .stats()
                .quota_evicted
                .fetch_add(evicted, Ordering::Relaxed);
            (batch, visits)
        } else {
            (rollback.unwrap_or_default(), Vec::new())
        }
    }

    /// The quota the last call broke, if it broke one.
    pub(super) fn take_over_quota(&mut self) -> Option<String> {
        self.over_quota.take()
    }

    pub(super) fn hit_memory_limit(&self) -> bool {
        self.limits.hit
    }

    /// Moves captured stdout/stderr into the log; remembers the last stderr text.
    pub(super) fn flush_output(&mut self) {
        for (bytes, is_err) in [(self.stdout.drain(), false), (self.stderr.drain(), true)] {
            if bytes.is_empty() {
                continue;
            }
            let text = String::from_utf8_lossy(&bytes);
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                if !crate::log_limit::allow() {
                    continue;
                }
                if is_err {
                    tracing::warn!(target: "plugin", plugin = %self.plugin, "{line}");
                } else {
                    tracing::info!(target: "plugin", plugin = %self.plugin, "{line}");
                }
            }
            if is_err {
                self.last_words = text.trim().chars().take(500).collect();
            }
        }
    }

    pub(super) fn take_last_words(&mut self) -> String {
        self.flush_output();
        std::mem::take(&mut self.last_words)
    }

    /// Runs `f` with the state, the event's key group and key, and keyed access.
    fn with<T>(
        &mut self,
        id: u32,
        event: u32,
        kind: StateKind,
        f: impl FnOnce(&StateInfo, u16, &[u8], &mut KeyedAccess<'_>) -> eddy_state::Result<T>,
    ) -> Result<T, WitError> {
        let PluginHost {
            opened,
            keys,
            batch,
            state,
            ..
        } = self;
        let info = &opened_as(opened, id, kind)?.info;
        let (kg, key) = keys.get(event as usize).ok_or(WitError::NoSuchEvent)?;
        let mut access = KeyedAccess::new(state, batch);
        f(info, *kg, key, &mut access).map_err(to_wit)
    }

    /// Runs the write `f` as [`PluginHost::with`] does, then holds the key to its state's
    /// quota: entries evicted (policy `evict`), or the write refused (policy `reject`; the
    /// call then fails with [`crate::FailureKind::Quota`]).
    fn with_write(
        &mut self,
        id: u32,
        event: u32,
        kind: StateKind,
        f: impl FnOnce(&StateInfo, u16, &[u8], &mut KeyedAccess<'_>) -> eddy_state::Result<()>,
    ) -> Result<(), WitError> {
        let quota = self.opened.get(id as usize).and_then(|o| o.as_ref()?.quota);
        let enforced = self.with(id, event, kind, |s, kg, k, a| {
            f(s, kg, k, a)?;
            match &quota {
                Some(q) => a.enforce_quota(s, kg, k, q),
                None => Ok(eddy_state::Enforced::Within),
            }
        })?;
        match enforced {
            eddy_state::Enforced::Within => Ok(()),
            eddy_state::Enforced::Evicted(n) => {
                self.evicted += n;
                Ok(())
            }
            eddy_state::Enforced::Over(why) => {
                // Final only in a call of one event: a batch call that fails is re-run event
                // by event, and the refusal comes again there.
                if self.keys.len() == 1 {
                    self.state
                        .stats()
                        .quota_rejected
                        .fetch_add(1, Ordering::Relaxed);
                }
                self.over_quota = Some(why.clone());
                Err(WitError::Storage(why))
            }
        }
    }

    /// Runs `f` on an opened broadcast map, with write access only in `handle-broadcast`.
    fn with_map<T>(
        &mut self,
        id: u32,
        write: bool,
        f: impl FnOnce(&mut BroadcastAccess<'_>) -> eddy_state::Result<T>,
    ) -> Result<T, broadcast_state::BroadcastError> {
        use broadcast_state::BroadcastError as E;
        let Some(name) = self.maps.get(&id) else {
            return Err(E::UnknownMap);
        };
        if write && self.mode != CallMode::Broadcast {
            return Err(E::ReadOnly(format!(
                "broadcast map `{name}` is written only from handle-broadcast; this write came from {}, and nothing was written",
                self.mode.export()
            )));
        }
        let mut access = BroadcastAccess::new(&self.state, &mut self.batch);
        f(&mut access).map_err(|e| E::Storage(e.to_string()))
    }
}

/// The opened state `id`, if it is of `kind`.
fn opened_as(
    opened: &[Option<OpenedState>],
    id: u32,
    kind: StateKind,
) -> Result<&OpenedState, WitError> {
    let state = opened
        .get(id as usize)
        .and_then(Option::as_ref)
        .ok_or(WitError::UnknownState)?;
    let info = &state.info;
    if info.kind != kind {
        return Err(WitError::WrongKind(format!(
            "state `{}` is a {:?} state, used as {:?}",
            info.name, info.kind, kind
        )));
    }
    Ok(state)
}

fn to_wit(e: eddy_state::StateError) -> WitError {
    match e {
        eddy_state::StateError::WrongKind { .. } => WitError::WrongKind(e.to_string()),
        other => WitError::Storage(other.to_string()),
    }
}

impl WasiView for PluginHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for PluginHost {}

impl clock::Host for PluginHost {
    fn now_ms(&mut self) -> u64 {
        self.state.now_ms()
    }
}

impl log::Host for PluginHost {
    fn log(&mut self, level: log::Level, message: String) {
        let p = &self.plugin;
        if !matches!(level, log::Level::Trace | log::Level::Debug) && !crate::log_limit::allow() {
            return;
        }
        match level {
            log::Level::Trace => tracing::trace!(target: "plugin", plugin = %p, "{message}"),
            log::Level::Debug => tracing::debug!(target: "plugin", plugin = %p, "{message}"),
            log::Level::Info => tracing::info!(target: "plugin", plugin = %p, "{message}"),
            log::Level::Warn => tracing::warn!(target: "plugin", plugin = %p, "{message}"),
            log::Level::Error => tracing::error!(target: "plugin", plugin = %p, "{message}"),
        }
    }
}
