//! The WebAssembly engine: compiles plugin components, instantiates them in a closed sandbox,
//! and calls them with batches of events.
//!
//! Owns: wasmtime configuration, the compiled-component cache (`cache`) and the compiled
//! functions beneath it (`function_cache`: an edited component compiles only what changed), the host side of the
//! WIT imports (`host`: keyed state, broadcast state, lookups, log, clock, a closed WASI),
//! budgets (CPU by epoch deadline, memory by store limits), the classification of failures
//! into reasons an operator can act on, a cap on plugin log lines (`log_limit`), and the [`Worker`] that runs batches through a plugin
//! with failures isolated to single events (`worker`).
//!
//! Design, measured: one component call costs microseconds whatever the guest does, so the
//! contract passes a whole batch per call (`handler.handle(list<event>)`). Calls are
//! synchronous on the caller's thread (the pipeline runs them on blocking threads): plugin code
//! is CPU-bound, and lookups against external stores are fetched concurrently by the host
//! before the call that needs them (the plugin declares them in the optional `prepare` export).
//!
//! A component targets world `processor` (just `handler`) or `full-processor` (plus the optional
//! exports); the host looks the optional exports up when it loads the component and calls only
//! what is there.
//!
//! Never: performs NATS I/O, or lets a plugin reach the file system, network or environment.

mod cache;
mod function_cache;
mod host;
mod instance;
mod log_limit;
mod packed;
mod stdio;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use function_cache::FunctionCache;
use sha2::{Digest, Sha256};
use wasmtime::Config;
use wasmtime::component::{HasSelf, InstancePre, Linker};

pub use host::{LookupAnswer, LookupFailure, LookupSource, PluginHost, Prefetched, VisitRequest};
pub use instance::{Instance, InstanceContext};
pub use worker::{Planner, Worker, WorkerMetrics};

/// Generated from `wit/`; the types re-exported below are documented there.
#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../../../wit",
        world: "packed-processor",
    });
}

pub use bindings::eddy::plugin::types::{Event, Outcome, Output};
pub use bindings::exports::eddy::plugin::broadcast_handler::BroadcastEvent;
pub use bindings::exports::eddy::plugin::keyed_visitor::{VisitAction, VisitedEntry};
pub use bindings::exports::eddy::plugin::lookup_planner::LookupRequest;

use bindings::exports::eddy::plugin::{
    broadcast_handler, handler, keyed_visitor, lookup_planner, migrator, packed_handler,
};

/// The WIT package version this host speaks.
pub const WIT_PACKAGE: &str = "eddy:plugin@0.2.2";

/// Milliseconds between epoch ticks: the granularity of CPU budgets.
const TICK: Duration = Duration::from_millis(1);

/// A wasmtime engine configured for Eddy, with its epoch ticker.
///
/// One engine can serve every run of a process (a cluster host's partitions): each plugin
/// version is then compiled and linked once, and one thread ticks the epoch.
pub struct Engine {
    engine: wasmtime::Engine,
    linker: Linker<PluginHost>,
    cache_dir: Option<PathBuf>,
    ticker: Arc<EpochTicker>,
    /// Plugins loaded and still alive somewhere, by name and digest: a second load of the same
    /// bytes shares the linked component instead of loading it again.
    loaded: std::sync::Mutex<std::collections::HashMap<(String, String), Weak<PluginInner>>>,
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
        // For profiling plugins: `EDDY_WASM_PROFILE=perfmap` names compiled guest functions in
        // /tmp/perf-<pid>.map, which `perf report` reads.
        if std::env::var("EDDY_WASM_PROFILE").is_ok_and(|v| v == "perfmap") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        // Beside the whole components, their functions: a component that changed in part
        // compiles only what changed.
        if let Some(dir) = cache_dir {
            config.enable_incremental_compilation(Arc::new(FunctionCache::open(
                dir.join("functions"),
            )))?;
        }
        let engine = wasmtime::Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        // WASI is linked because guest toolchains import it even for pure code; the context
        // behind it is closed (see `host::closed_wasi`).
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        bindings::PackedProcessor::add_to_linker::<PluginHost, HasSelf<PluginHost>>(
            &mut linker,
            |h| h,
        )?;
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
            loaded: Default::default(),
        })
    }

    /// Compiles (or loads from cache) and links a plugin, checking it is an Eddy processor.
    pub fn load(&self, wasm: &[u8], name: &str) -> anyhow::Result<Plugin> {
        check_component(wasm, name)?;
        let digest = hex(&Sha256::digest(wasm));
        // Held across the load: runs starting together wait for the first to load, then share.
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        loaded.retain(|_, p| p.strong_count() > 0);
        let key = (name.to_string(), digest.clone());
        if let Some(inner) = loaded.get(&key).and_then(Weak::upgrade) {
            return Ok(Plugin { inner });
        }
        let started = Instant::now();
        let (component, cached) =
            cache::load_or_compile(&self.engine, wasm, &digest, self.cache_dir.as_deref())
                .with_context(|| format!("plugin {name} is not a valid WebAssembly component"))?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            anyhow!(
                "plugin {name} cannot be linked: {e:#}. It must target world `processor` or `full-processor` of wit/eddy.wit ({WIT_PACKAGE}); rebuild it against this version"
            )
        })?;
        let exports = Exports::find(&pre).map_err(|e| {
            anyhow!(
                "plugin {name} is not an Eddy processor: {e:#}. It must export {WIT_PACKAGE}'s `handler` interface (world `processor` of wit/eddy.wit)"
            )
        })?;
        tracing::info!(
            plugin = name,
            version = &digest[..12],
            cached,
            ms = started.elapsed().as_millis() as u64,
            exports = %exports.capabilities(),
            "plugin compiled"
        );
        let inner = Arc::new(PluginInner {
            cached,
            pre,
            exports,
            _ticker: self.ticker.clone(),
            engine: self.engine.clone(),
            name: name.to_string(),
            version: digest[..12].to_string(),
            size: wasm.len(),
        });
        loaded.insert(key, Arc::downgrade(&inner));
        Ok(Plugin { inner })
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
            .with_context(|| format!("loading {} (plugin.path)", path.display()))
    }
}

/// Refuses what cannot be a component before wasmtime is asked, with the fix: a file that
/// is not WebAssembly at all, or a core module (a build for `wasm32-unknown-unknown` or
/// `wasm32-wasip1`) where a component is needed.
fn check_component(wasm: &[u8], name: &str) -> anyhow::Result<()> {
    const BUILD: &str = "build it as a component for wasm32-wasip2 (`eddy new plugin` projects do: `./build.sh`; in Rust `cargo build --release --target wasm32-wasip2`)";
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        let start: String = wasm
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        bail!(
            "plugin {name} is not a valid WebAssembly component: the file is not WebAssembly at all ({} bytes, starting {start}); {BUILD}",
            wasm.len()
        );
    }
    // The header's layer field: 0 for a core module, 1 for a component.
    if wasm[6..8] == [0, 0] {
        bail!(
            "plugin {name} is not a valid WebAssembly component: it is a core WebAssembly module; {BUILD}, or wrap the module with `wasm-tools component new`"
        );
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The content hash (first 12 hex digits of the SHA-256) a plugin's bytes get as version.
pub fn version_of(wasm: &[u8]) -> String {
    hex(&Sha256::digest(wasm))[..12].to_string()
}

/// Where a component's exports are, found once at load time.
#[derive(Clone)]
struct Exports {
    handler: handler::GuestIndices,
    packed: Option<packed_handler::GuestIndices>,
    broadcast: Option<broadcast_handler::GuestIndices>,
    planner: Option<lookup_planner::GuestIndices>,
    visitor: Option<keyed_visitor::GuestIndices>,
    migrator: Option<migrator::GuestIndices>,
}

impl Exports {
    fn find(pre: &InstancePre<PluginHost>) -> anyhow::Result<Exports> {
        Ok(Exports {
            handler: handler::GuestIndices::new(pre)?,
            packed: packed_handler::GuestIndices::new(pre).ok(),
            broadcast: broadcast_handler::GuestIndices::new(pre).ok(),
            planner: lookup_planner::GuestIndices::new(pre).ok(),
            visitor: keyed_visitor::GuestIndices::new(pre).ok(),
            migrator: migrator::GuestIndices::new(pre).ok(),
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            packed: self.packed.is_some(),
            broadcast: self.broadcast.is_some(),
            planner: self.planner.is_some(),
            visitor: self.visitor.is_some(),
            migrator: self.migrator.is_some(),
        }
    }
}

/// Which optional exports a plugin has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `packed-handler` (keyed batches go through `handle-packed`).
    pub packed: bool,
    /// `broadcast-handler`.
    pub broadcast: bool,
    /// `lookup-planner`.
    pub planner: bool,
    /// `keyed-visitor`.
    pub visitor: bool,
    /// `migrator`.
    pub migrator: bool,
}

impl std::fmt::Display for Capabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names = vec!["handler"];
        for (on, name) in [
            (self.packed, "packed-handler"),
            (self.broadcast, "broadcast-handler"),
            (self.planner, "lookup-planner"),
            (self.visitor, "keyed-visitor"),
            (self.migrator, "migrator"),
        ] {
            if on {
                names.push(name);
            }
        }
        f.write_str(&names.join(","))
    }
}

/// A compiled, linked plugin, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

struct PluginInner {
    cached: bool,
    pre: InstancePre<PluginHost>,
    exports: Exports,
    /// Keeps the epoch ticking while this plugin can run.
    _ticker: Arc<EpochTicker>,
    engine: wasmtime::Engine,
    name: String,
    version: String,
    size: usize,
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
        &self.inner.version
    }

    /// Whether the native code came from the compile cache instead of being compiled.
    pub fn was_cached(&self) -> bool {
        self.inner.cached
    }

    /// The plugin's name (file stem).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Size of the component in bytes.
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// Which optional exports it has.
    pub fn capabilities(&self) -> Capabilities {
        self.inner.exports.capabilities()
    }
}

/// CPU time allowed for a call of `events` events: the per-event budget times the batch size,
/// capped at one second (or one event's budget if larger) so a looping plugin stalls the
/// pipeline briefly. A legitimate batch that hits the cap is re-run event by event, each with
/// its own budget, and still succeeds.
fn call_budget(per_event: Duration, events: usize) -> Duration {
    per_event
        .saturating_mul(events.max(1) as u32)
        .min(per_event.max(BATCH_BUDGET_CAP))
}

/// See [`call_budget`].
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
    /// A write took a key over its state's quota (policy `reject`).
    Quota,
}

impl FailureKind {
    /// A short label for headers and metrics.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::CpuBudget => "cpu-budget",
            FailureKind::MemoryLimit => "memory-limit",
            FailureKind::Contract => "contract",
            FailureKind::Quota => "quota",
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

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
