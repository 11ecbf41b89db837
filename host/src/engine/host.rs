//! The host side of the plugin imports: keyed state, log, clock, and a closed WASI.
//!
//! A host function returns the WIT result: a state failure is an `Err` the plugin handles,
//! never a trap. Keyed state calls name an event by its index in the current batch; the host
//! resolves it to that event's key and key group, so a plugin can only touch the state of
//! keys it was given.

use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::Event;
use super::bindings::eddy::plugin::{clock, keyed_state, log, types};
use super::stdio::CapturedOutput;
use crate::state::{self, KeyedAccess, StateBatch, StateInfo, StateKind, StateStore, Ttl};

use keyed_state::StateError as WitError;

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
    /// Opened states, indexed by state id.
    opened: Vec<Option<StateInfo>>,
    /// The current batch's overlay.
    batch: StateBatch,
    /// Key group and key of each event of the current call.
    keys: Vec<(u16, Vec<u8>)>,
}

/// A memory cap per instance; a failed grow traps with a clear message.
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
            return Err(wasmtime::Error::msg(format!(
                "memory limit: growing memory to {desired} bytes exceeds {} bytes",
                self.max
            )));
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
    pub(super) fn new(state: Arc<StateStore>, plugin: &str, memory_bytes: usize) -> PluginHost {
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
            batch: StateBatch::default(),
            keys: Vec::new(),
        }
    }

    /// Installs a call's events and overlay; returns the copy to roll back to on failure.
    pub(super) fn begin(
        &mut self,
        events: &[Event],
        key_groups: &[u16],
        batch: StateBatch,
    ) -> Option<StateBatch> {
        self.keys.clear();
        self.keys.extend(
            events
                .iter()
                .zip(key_groups)
                .map(|(e, kg)| (*kg, e.key.clone())),
        );
        // The overlay is usually empty at a call's start (one call per batch); when it is
        // not (events re-run one by one), keep a copy so a failed call leaves no writes.
        let rollback = (!batch.is_empty()).then(|| batch.clone());
        self.batch = batch;
        rollback
    }

    /// Ends a call: returns the overlay with its writes, or rolled back if it failed.
    pub(super) fn end(&mut self, ok: bool, rollback: Option<StateBatch>) -> StateBatch {
        self.keys.clear();
        let batch = std::mem::take(&mut self.batch);
        if ok {
            batch
        } else {
            rollback.unwrap_or_default()
        }
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
        f: impl FnOnce(&StateInfo, u16, &[u8], &mut KeyedAccess<'_>) -> state::Result<T>,
    ) -> Result<T, WitError> {
        let PluginHost {
            opened,
            keys,
            batch,
            state,
            ..
        } = self;
        let info = opened
            .get(id as usize)
            .and_then(Option::as_ref)
            .ok_or(WitError::UnknownState)?;
        if info.kind != kind {
            return Err(WitError::WrongKind(format!(
                "state `{}` is a {:?} state, used as {:?}",
                info.name, info.kind, kind
            )));
        }
        let (kg, key) = keys.get(event as usize).ok_or(WitError::NoSuchEvent)?;
        let mut access = KeyedAccess::new(state, batch);
        f(info, *kg, key, &mut access).map_err(to_wit)
    }
}

fn to_wit(e: state::StateError) -> WitError {
    match e {
        state::StateError::WrongKind { .. } => WitError::WrongKind(e.to_string()),
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
        match level {
            log::Level::Trace => tracing::trace!(target: "plugin", plugin = %p, "{message}"),
            log::Level::Debug => tracing::debug!(target: "plugin", plugin = %p, "{message}"),
            log::Level::Info => tracing::info!(target: "plugin", plugin = %p, "{message}"),
            log::Level::Warn => tracing::warn!(target: "plugin", plugin = %p, "{message}"),
            log::Level::Error => tracing::error!(target: "plugin", plugin = %p, "{message}"),
        }
    }
}

fn ttl_from_wit(t: keyed_state::TtlConfig) -> Ttl {
    Ttl {
        ttl_ms: t.ttl_ms,
        update: match t.update {
            keyed_state::TtlUpdate::OnCreateAndWrite => state::TtlUpdate::OnCreateAndWrite,
            keyed_state::TtlUpdate::OnReadAndWrite => state::TtlUpdate::OnReadAndWrite,
        },
        visibility: match t.visibility {
            keyed_state::TtlVisibility::NeverReturnExpired => {
                state::TtlVisibility::NeverReturnExpired
            }
            keyed_state::TtlVisibility::ReturnExpiredIfNotCleanedUp => {
                state::TtlVisibility::ReturnExpiredIfNotCleanedUp
            }
        },
    }
}

impl keyed_state::Host for PluginHost {
    fn open(
        &mut self,
        name: String,
        kind: keyed_state::StateKind,
        ttl: Option<keyed_state::TtlConfig>,
    ) -> Result<u32, WitError> {
        let kind = match kind {
            keyed_state::StateKind::Value => StateKind::Value,
            keyed_state::StateKind::Map => StateKind::Map,
            keyed_state::StateKind::List => StateKind::List,
        };
        if name.is_empty() {
            return Err(WitError::Storage("a state needs a non-empty name".into()));
        }
        let info = self
            .state
            .open_state(&name, kind, ttl.map(ttl_from_wit))
            .map_err(to_wit)?;
        let id = info.id;
        let slot = id as usize;
        if self.opened.len() <= slot {
            self.opened.resize(slot + 1, None);
        }
        self.opened[slot] = Some(info);
        Ok(id)
    }

    fn value_get(&mut self, state: u32, event: u32) -> Result<Option<Vec<u8>>, WitError> {
        self.with(state, event, StateKind::Value, |s, kg, k, a| {
            a.value_get(s, kg, k)
        })
    }

    fn value_set(&mut self, state: u32, event: u32, value: Vec<u8>) -> Result<(), WitError> {
        self.with(state, event, StateKind::Value, |s, kg, k, a| {
            a.value_set(s, kg, k, &value);
            Ok(())
        })
    }

    fn value_set_with_ttl(
        &mut self,
        state: u32,
        event: u32,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> Result<(), WitError> {
        self.with(state, event, StateKind::Value, |s, kg, k, a| {
            a.value_set_ttl(s, kg, k, &value, Some(ttl_ms));
            Ok(())
        })
    }

    fn value_clear(&mut self, state: u32, event: u32) -> Result<(), WitError> {
        self.with(state, event, StateKind::Value, |s, kg, k, a| {
            a.value_clear(s, kg, k);
            Ok(())
        })
    }

    fn map_get(
        &mut self,
        state: u32,
        event: u32,
        map_key: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, WitError> {
        self.with(state, event, StateKind::Map, |s, kg, k, a| {
            a.map_get(s, kg, k, &map_key)
        })
    }

    fn map_put(
        &mut self,
        state: u32,
        event: u32,
        map_key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), WitError> {
        self.with(state, event, StateKind::Map, |s, kg, k, a| {
            a.map_put(s, kg, k, &map_key, &value);
            Ok(())
        })
    }

    fn map_put_with_ttl(
        &mut self,
        state: u32,
        event: u32,
        map_key: Vec<u8>,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> Result<(), WitError> {
        self.with(state, event, StateKind::Map, |s, kg, k, a| {
            a.map_put_ttl(s, kg, k, &map_key, &value, Some(ttl_ms));
            Ok(())
        })
    }

    fn map_remove(&mut self, state: u32, event: u32, map_key: Vec<u8>) -> Result<(), WitError> {
        self.with(state, event, StateKind::Map, |s, kg, k, a| {
            a.map_remove(s, kg, k, &map_key);
            Ok(())
        })
    }

    fn map_contains(&mut self, state: u32, event: u32, map_key: Vec<u8>) -> Result<bool, WitError> {
        self.with(state, event, StateKind::Map, |s, kg, k, a| {
            Ok(a.map_get(s, kg, k, &map_key)?.is_some())
        })
    }

    fn map_entries(
        &mut self,
        state: u32,
        event: u32,
        start_after: Option<Vec<u8>>,
        limit: u32,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, WitError> {
        self.with(state, event, StateKind::Map, |s, kg, k, a| {
            a.map_entries(s, kg, k, start_after.as_deref(), limit.min(10_000) as usize)
        })
    }

    fn map_is_empty(&mut self, state: u32, event: u32) -> Result<bool, WitError> {
        self.with(state, event, StateKind::Map, |s, kg, k, a| {
            a.map_is_empty(s, kg, k)
        })
    }

    fn map_clear(&mut self, state: u32, event: u32) -> Result<(), WitError> {
        self.with(state, event, StateKind::Map, |s, kg, k, a| {
            a.map_clear(s, kg, k);
            Ok(())
        })
    }

    fn list_get(&mut self, state: u32, event: u32) -> Result<Vec<Vec<u8>>, WitError> {
        self.with(state, event, StateKind::List, |s, kg, k, a| {
            a.list_get(s, kg, k)
        })
    }

    fn list_add(&mut self, state: u32, event: u32, value: Vec<u8>) -> Result<(), WitError> {
        self.with(state, event, StateKind::List, |s, kg, k, a| {
            a.list_add_all(s, kg, k, std::slice::from_ref(&value))
        })
    }

    fn list_add_all(
        &mut self,
        state: u32,
        event: u32,
        values: Vec<Vec<u8>>,
    ) -> Result<(), WitError> {
        self.with(state, event, StateKind::List, |s, kg, k, a| {
            a.list_add_all(s, kg, k, &values)
        })
    }

    fn list_update(
        &mut self,
        state: u32,
        event: u32,
        values: Vec<Vec<u8>>,
    ) -> Result<(), WitError> {
        self.with(state, event, StateKind::List, |s, kg, k, a| {
            a.list_update(s, kg, k, &values);
            Ok(())
        })
    }

    fn list_clear(&mut self, state: u32, event: u32) -> Result<(), WitError> {
        self.with(state, event, StateKind::List, |s, kg, k, a| {
            a.value_clear(s, kg, k);
            Ok(())
        })
    }
}
