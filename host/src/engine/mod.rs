//! The WebAssembly engine: compiles plugin components, instantiates them in a closed sandbox,
//! and calls them with batches of events.
//!
//! Owns: wasmtime configuration, the compiled-component cache (`cache`), the host side of the
//! WIT imports (`host`), budgets (CPU by epoch deadline, memory by store limits) and the
//! classification of failures into reasons an operator can act on.
//!
//! Design, measured: one component call costs microseconds whatever the guest does, so the
//! contract passes a whole batch per call (`handler.handle(list<event>)`). Calls are
//! synchronous on the caller's thread (the pipeline runs them on a blocking thread): plugin
//! code is CPU-bound, and lookups against external stores are resolved by the host before
//! the call that needs them, not by blocking inside it.
//!
//! Never: performs NATS I/O, or lets a plugin reach the file system, network or environment.

mod cache;
mod host;
mod stdio;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use sha2::{Digest, Sha256};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Store, Trap};

use crate::state::{StateBatch, StateStore};

pub use host::PluginHost;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "processor",
    });
}

pub use bindings::eddy::plugin::types::{Event, Outcome, Output};

/// Milliseconds between epoch ticks: the granularity of CPU budgets.
const TICK: Duration = Duration::from_millis(1);

/// A wasmtime engine configured for Eddy, with its epoch ticker.
pub struct Engine {
    engine: wasmtime::Engine,
    linker: Linker<PluginHost>,
    cache_dir: Option<PathBuf>,
    ticker: Arc<EpochTicker>,
}

/// Advances the engine's epoch every [`TICK`] while the engine or any plugin compiled by it
/// is alive: CPU budgets are counted in these ticks.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Engine {
    /// A new engine; compiled components are cached in `cache_dir` if given.
    pub fn new(cache_dir: Option<&Path>) -> anyhow::Result<Engine> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let engine = wasmtime::Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        // WASI is linked because guest toolchains import it even for pure code; the context
        // behind it is closed (see `host::closed_wasi`).
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        bindings::Processor::add_to_linker::<PluginHost, HasSelf<PluginHost>>(&mut linker, |h| h)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (e, stop) = (engine.weak(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("eddy-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match e.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })?;
        Ok(Engine {
            engine,
            linker,
            cache_dir: cache_dir.map(Path::to_path_buf),
            ticker: Arc::new(EpochTicker { stop: ticker_stop }),
        })
    }

    /// Compiles (or loads from cache) and links a plugin, checking it is an Eddy processor.
    pub fn load(&self, wasm: &[u8], name: &str) -> anyhow::Result<Plugin> {
        let digest = hex(&Sha256::digest(wasm));
        let started = Instant::now();
        let (component, cached) =
            cache::load_or_compile(&self.engine, wasm, &digest, self.cache_dir.as_deref())
                .with_context(|| format!("plugin {name} is not a valid WebAssembly component"))?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            anyhow!(
                "plugin {name} cannot be linked: {e:#}. It must target the `processor` world of wit/eddy.wit (eddy:plugin@0.1.0)"
            )
        })?;
        let pre = bindings::ProcessorPre::new(pre).map_err(|e| {
            anyhow!(
                "plugin {name} is not an Eddy processor: {e:#}. It must export eddy:plugin/handler@0.1.0 (world `processor` of wit/eddy.wit)"
            )
        })?;
        tracing::info!(
            plugin = name,
            version = &digest[..12],
            cached,
            ms = started.elapsed().as_millis() as u64,
            "plugin compiled"
        );
        Ok(Plugin {
            cached,
            pre,
            _ticker: self.ticker.clone(),
            engine: self.engine.clone(),
            name: name.to_string(),
            version: digest[..12].to_string(),
        })
    }

    /// Compiles a plugin read from a file.
    pub fn load_file(&self, path: &Path) -> anyhow::Result<Plugin> {
        let wasm = std::fs::read(path)
            .with_context(|| format!("cannot read plugin {}", path.display()))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".into());
        self.load(&wasm, &name)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A compiled, linked plugin, ready to instantiate.
#[derive(Clone)]
pub struct Plugin {
    cached: bool,
    pre: bindings::ProcessorPre<PluginHost>,
    /// Keeps the epoch ticking while this plugin can run.
    _ticker: Arc<EpochTicker>,
    engine: wasmtime::Engine,
    name: String,
    version: String,
}

/// Budgets for one instance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// CPU time per event; a batch call gets this times its size.
    pub cpu_per_event: Duration,
    /// Linear memory per instance, in bytes.
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_per_event: Duration::from_millis(100),
            memory_bytes: 64 << 20,
        }
    }
}

impl Plugin {
    /// Short content hash identifying this build of the plugin.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether the native code came from the compile cache instead of being compiled.
    pub fn was_cached(&self) -> bool {
        self.cached
    }

    /// The plugin's name (file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates an instance and runs `init` with `config_json`.
    pub fn instantiate(
        &self,
        state: Arc<StateStore>,
        limits: Limits,
        config_json: &str,
    ) -> anyhow::Result<Instance> {
        let host = PluginHost::new(state, &self.name, limits.memory_bytes);
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limits);
        store.set_epoch_deadline(ticks(limits.cpu_per_event, 1).max(1000));
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| anyhow!("plugin {} failed to instantiate: {e:#}", self.name))?;
        let mut instance = Instance {
            store,
            bindings,
            limits,
            name: self.name.clone(),
            poisoned: false,
        };
        let result = instance
            .bindings
            .eddy_plugin_handler()
            .call_init(&mut instance.store, config_json);
        instance.store.data_mut().flush_output();
        match result {
            Ok(Ok(())) => Ok(instance),
            Ok(Err(msg)) => Err(anyhow!(
                "plugin {} refused its configuration in init: {msg}. Fix [plugin.config] in the pipeline file",
                self.name
            )),
            Err(e) => Err(anyhow!(
                "plugin {} failed in init: {}",
                self.name,
                instance.describe_failure(&e).message
            )),
        }
    }
}

/// Epoch ticks allowed for a call of `events` events: the per-event budget times the batch
/// size, capped at one second (or one event's budget if larger) so a looping plugin stalls the
/// pipeline briefly. A legitimate batch that hits the cap is re-run event by event, each with
/// its own budget, and still succeeds.
fn ticks(per_event: Duration, events: usize) -> u64 {
    let total = per_event
        .saturating_mul(events.max(1) as u32)
        .min(per_event.max(BATCH_BUDGET_CAP));
    (total.as_millis() / TICK.as_millis()).max(1) as u64
}

/// See [`ticks`].
const BATCH_BUDGET_CAP: Duration = Duration::from_secs(1);

/// Why a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The guest trapped (panic, unreachable, bad memory access...).
    Trap,
    /// The CPU budget ran out.
    CpuBudget,
    /// The memory limit was hit.
    MemoryLimit,
    /// The guest returned something the contract forbids (wrong number of outcomes).
    Contract,
}

impl FailureKind {
    /// A short label for headers and metrics.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::CpuBudget => "cpu-budget",
            FailureKind::MemoryLimit => "memory-limit",
            FailureKind::Contract => "contract",
        }
    }
}

/// A failed call: what kind, and a message an operator can act on.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The kind.
    pub kind: FailureKind,
    /// The reason, with the fix where there is one.
    pub message: String,
}

/// One live plugin instance. Reused across batches; replaced after a trap.
pub struct Instance {
    store: Store<PluginHost>,
    bindings: bindings::Processor,
    limits: Limits,
    name: String,
    poisoned: bool,
}

impl Instance {
    /// Whether the instance trapped and must be replaced.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Handles `events` (with their key groups, in the same order) against `batch`. Returns
    /// the batch (with this call's writes, or unchanged if the call failed) and the outcomes.
    pub fn handle(
        &mut self,
        events: &[Event],
        key_groups: &[u16],
        batch: StateBatch,
    ) -> (StateBatch, Result<Vec<Outcome>, Failure>) {
        let host = self.store.data_mut();
        let before = host.begin(events, key_groups, batch);
        self.store
            .set_epoch_deadline(ticks(self.limits.cpu_per_event, events.len()));
        let result = self
            .bindings
            .eddy_plugin_handler()
            .call_handle(&mut self.store, events);
        let host = self.store.data_mut();
        host.flush_output();
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
            Err(e) => {
                self.poisoned = true;
                Err(self.describe_failure(&e))
            }
        };
        let host = self.store.data_mut();
        let batch = host.end(result.is_ok(), before);
        (batch, result)
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
        let text = format!("{e:#}");
        if text.contains("growing memory") || self.store.data().hit_memory_limit() {
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
