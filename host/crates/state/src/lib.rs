//! Keyed state in RocksDB: the host owns it, plugins reach it through the `keyed-state` WIT
//! interface.
//!
//! Owns: the database, the registry of state names, the key layout (`layout`), key groups
//! (`keygroup`), TTL rules (`ttl`), the per-batch write overlay (`batch`) and the hot values
//! in front of RocksDB (`hot`). A batch of events works on a [`StateBatch`]: its writes are
//! visible to its own later reads and are committed together with the input positions they
//! reflect. With a write-ahead log, one RocksDB write holds them all, so state and position
//! never disagree after a crash; without one (a pipeline's live database, rebuilt from a
//! checkpoint at every start), value and list writes may wait in the hot values until the
//! store settles, which every checkpoint does first.
//!
//! Never: talks to NATS, runs plugin code, or blocks on anything but local disk.

mod batch;
pub mod broadcast;
pub mod hot;
pub mod keygroup;
pub mod layout;
pub mod ttl;
pub mod visit;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod ttl_tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Options, WriteOptions};
use serde::{Deserialize, Serialize};

pub use batch::{KeyedAccess, StateBatch};
pub use broadcast::BroadcastAccess;
pub use ttl::{Clock, ManualClock, SystemClock, Ttl, TtlUpdate, TtlVisibility};

/// Key groups when the pipeline names none (Flink's default maximum parallelism is 128).
pub const DEFAULT_KEY_GROUPS: u32 = 128;
/// Upper bound: key groups are stored as u16.
pub const MAX_KEY_GROUPS: u32 = 65_536;

const CF_KEYED: &str = "keyed";
const CF_BROADCAST: &str = "broadcast";
const CF_META: &str = "meta";
const META_KEY_GROUPS: &[u8] = b"key_groups";
const META_FORMAT: &[u8] = b"format";
const META_STATE_PREFIX: &str = "state/";
const META_BROADCAST_PREFIX: &str = "bmap/";
const META_POSITION_PREFIX: &str = "position/";
const FORMAT_VERSION: &[u8] = b"2";

/// What went wrong in the state layer.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// RocksDB failed.
    #[error("state storage failed: {0}")]
    Storage(#[from] rocksdb::Error),
    /// A state exists with another kind.
    #[error("state `{name}` is a {existing:?} state; it was opened as {requested:?}")]
    WrongKind {
        /// The state's name.
        name: String,
        /// Its kind on disk.
        existing: StateKind,
        /// The kind asked for.
        requested: StateKind,
    },
    /// The state directory belongs to another configuration.
    #[error("{0}")]
    Incompatible(String),
    /// Stored bytes could not be decoded.
    #[error("state data is corrupt: {0}")]
    Corrupt(String),
}

/// Result of state operations.
pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// The shape of a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    /// One value per key.
    Value,
    /// Entries per key.
    Map,
    /// A list per key.
    List,
}

/// One registered state, as a plugin instance opened it.
#[derive(Debug, Clone)]
pub struct StateInfo {
    /// Stable id, part of every stored key.
    pub id: u32,
    /// The name the plugin gave.
    pub name: String,
    /// Its kind.
    pub kind: StateKind,
    /// Its TTL, if any.
    pub ttl: Option<Ttl>,
}

#[derive(Serialize, Deserialize)]
struct RegistryEntry {
    id: u32,
    kind: StateKind,
    /// The TTL the state was last opened with (after operator overrides), so tools that read
    /// state without the plugin (queries, savepoints) apply the same expiry.
    #[serde(default)]
    ttl: Option<Ttl>,
}

/// The keyed state database of one pipeline on one host.
pub struct StateStore {
    db: DB,
    path: PathBuf,
    key_groups: u32,
    clock: Arc<dyn Clock>,
    registry: Mutex<Registry>,
    write_opts: WriteOptions,
    ttls: TtlTable,
    kinds: KindTable,
    stats: Arc<StateStats>,
    overrides: RwLock<HashMap<String, Option<Ttl>>>,
    hot: Mutex<hot::HotValues>,
    /// Held by whoever writes keyed state (a commit, a settle, a raw write) from its RocksDB
    /// write until the hot values agree with it, so two writers never interleave there: a
    /// settle between a commit's delete and its hot update would write the deleted value
    /// back. Taken before the hot values' lock; readers take only that one.
    writing: Mutex<()>,
    /// Whether value and list writes wait in the hot values until the store settles (`hot`):
    /// only without a write-ahead log, for a database rebuilt from a checkpoint at every start,
    /// and with hot values at all.
    defer_writes: bool,
    /// Whether deferring pays now: off while recent settles found almost every deferred
    /// write was to a different key (nothing saved, the bookkeeping only cost), back on after
    /// [`PROBE_AFTER_COMMITS`] commits to look again.
    deferring: std::sync::atomic::AtomicBool,
    /// Commits left before deferring is tried again.
    probe_in: std::sync::atomic::AtomicU32,
}

/// Commits written through, after deferring stopped paying, before it is tried again.
const PROBE_AFTER_COMMITS: u32 = 1024;
/// Deferred writes a settle must have seen to judge whether deferring pays.
const JUDGE_AFTER_WRITES: u64 = 4096;

/// Kind and TTL of each state id with a TTL, shared with the compaction filter.
type TtlTable = Arc<RwLock<HashMap<u32, (StateKind, Ttl)>>>;
/// Kind of every opened state id, shared with the compaction filter.
type KindTable = Arc<RwLock<HashMap<u32, StateKind>>>;

/// Counters of the store: expired entries removed, by cleanup strategy, and how the hot values
/// (`hot`) are doing.
#[derive(Debug, Default)]
pub struct StateStats {
    /// Removed when a read found them expired.
    pub expired_on_read: AtomicU64,
    /// Removed by the compaction filter.
    pub expired_in_compaction: AtomicU64,
    /// Keyed point reads answered by the hot values.
    pub hot_hits: AtomicU64,
    /// Keyed point reads that went to RocksDB.
    pub hot_misses: AtomicU64,
    /// Value and list writes deferred, counted when settled.
    pub deferred_writes: AtomicU64,
    /// RocksDB writes settling them took (fewer: a key rewritten while waiting is written once).
    pub settled_writes: AtomicU64,
}

/// Open-time tuning of the store.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// SST files older than this are recompacted (and so cleaned of expired entries), even if
    /// nothing else would compact them: keys never read again are reclaimed too.
    pub periodic_compaction: std::time::Duration,
    /// Whether commits go through RocksDB's write-ahead log. A pipeline's live database is
    /// rebuilt from the newest checkpoint at every start (and flushed at a clean stop and at
    /// every checkpoint), so the log would only be written, never read: pipelines turn it off.
    /// On for a store whose directory is reopened as it is after a crash.
    pub write_ahead_log: bool,
    /// Bytes of hot values kept in memory in front of RocksDB (`hot`); 0 for none. Without a
    /// write-ahead log, value and list writes also wait there until the store settles.
    pub hot_values_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            periodic_compaction: std::time::Duration::from_secs(6 * 3600),
            write_ahead_log: true,
            hot_values_bytes: hot::DEFAULT_BUDGET,
        }
    }
}

#[derive(Default)]
struct Registry {
    by_name: HashMap<String, (u32, StateKind, Option<Ttl>)>,
    next_id: u32,
    /// Broadcast maps: name → id.
    maps: HashMap<String, u32>,
    next_map: u32,
}

impl StateStore {
    /// Opens (creating if needed) the state in `path` with `key_groups` key groups. A
    /// directory created with another key-group count is refused: key groups are fixed for
    /// the life of the state.
    pub fn open(path: &Path, key_groups: u32, clock: Arc<dyn Clock>) -> Result<StateStore> {
        StateStore::open_with(path, key_groups, clock, StoreOptions::default())
    }

    /// [`StateStore::open`] with explicit options.
    pub fn open_with(
        path: &Path,
        key_groups: u32,
        clock: Arc<dyn Clock>,
        options: StoreOptions,
    ) -> Result<StateStore> {
        std::fs::create_dir_all(path).map_err(|e| {
            StateError::Incompatible(format!(
                "cannot create the state directory {}: {e}; check pipeline.state_dir",
                path.display()
            ))
        })?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        // Column families are flushed together, so a checkpoint's keyed state, broadcast
        // state and positions are always from the same moment.
        opts.set_atomic_flush(true);
        let mut keyed = Options::default();
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&Cache::new_lru_cache(64 << 20));
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        keyed.set_block_based_table_factory(&table);
        keyed.set_write_buffer_size(64 << 20);
        keyed.set_compression_type(rocksdb::DBCompressionType::Lz4);
        keyed.set_periodic_compaction_seconds(options.periodic_compaction.as_secs().max(1));
        let ttls: TtlTable = Arc::default();
        let kinds: KindTable = Arc::default();
        let stats = Arc::new(StateStats::default());
        keyed.set_compaction_filter(
            "eddy-ttl",
            ttl_compaction_filter(ttls.clone(), kinds.clone(), clock.clone(), stats.clone()),
        );
        let mut broadcast = Options::default();
        broadcast.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_KEYED, keyed),
            ColumnFamilyDescriptor::new(CF_BROADCAST, broadcast),
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let mut write_opts = WriteOptions::default();
        // Never fsynced per batch: durability against machine loss comes from checkpoints.
        write_opts.set_sync(false);
        write_opts.disable_wal(!options.write_ahead_log);
        let store = StateStore {
            db,
            path: path.to_path_buf(),
            key_groups,
            clock,
            registry: Mutex::new(Registry::default()),
            write_opts,
            ttls,
            kinds,
            stats,
            overrides: RwLock::default(),
            hot: Mutex::new(hot::HotValues::new(options.hot_values_bytes)),
            writing: Mutex::new(()),
            defer_writes: !options.write_ahead_log && options.hot_values_bytes > 0,
            deferring: true.into(),
            probe_in: 0.into(),
        };
        store.check_layout()?;
        store.load_registry()?;
        Ok(store)
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // Both column families are created in `open`; a missing one means the process state
        // is broken beyond recovery.
        #[allow(clippy::expect_used)]
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    /// The keyed state's column family (raw reads by the savepoint writer and dump tools).
    pub fn keyed_cf(&self) -> &rocksdb::ColumnFamily {
        self.cf(CF_KEYED)
    }

    /// The registry and positions' column family.
    pub fn meta_cf(&self) -> &rocksdb::ColumnFamily {
        self.cf(CF_META)
    }

    /// The broadcast state's column family.
    pub fn broadcast_cf(&self) -> &rocksdb::ColumnFamily {
        self.cf(CF_BROADCAST)
    }

    /// The database. Keyed value and list writes may still wait in the hot values: call
    /// [`StateStore::settle`] before reading keyed state other than through [`KeyedAccess`].
    pub fn db(&self) -> &DB {
        &self.db
    }

    fn check_layout(&self) -> Result<()> {
        let meta = self.meta_cf();
        match self.db.get_cf(meta, META_FORMAT)? {
            Some(v) if v != FORMAT_VERSION => {
                return Err(StateError::Incompatible(format!(
                    "state in {} has format {}, this host reads format {}; restore it from a savepoint with a matching host",
                    self.path.display(),
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(FORMAT_VERSION)
                )));
            }
            Some(_) => {}
            None => self.db.put_cf(meta, META_FORMAT, FORMAT_VERSION)?,
        }
        match self.db.get_cf(meta, META_KEY_GROUPS)? {
            Some(v) => {
                let stored: u32 = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| StateError::Corrupt("key_groups entry".into()))?;
                if stored != self.key_groups {
                    return Err(StateError::Incompatible(format!(
                        "state in {} was created with {stored} key groups but pipeline.key_groups is {}; set key_groups = {stored}, or rescale through a savepoint",
                        self.path.display(),
                        self.key_groups
                    )));
                }
            }
            None => self.db.put_cf(
                meta,
                META_KEY_GROUPS,
                self.key_groups.to_string().as_bytes(),
            )?,
        }
        Ok(())
    }

    fn load_registry(&self) -> Result<()> {
        let mut reg = self.lock_registry();
        for (name, v) in self.meta_entries(META_STATE_PREFIX)? {
            let entry: RegistryEntry = serde_json::from_slice(&v)
                .map_err(|e| StateError::Corrupt(format!("registry entry {name}: {e}")))?;
            reg.next_id = reg.next_id.max(entry.id + 1);
            reg.by_name.insert(name, (entry.id, entry.kind, entry.ttl));
        }
        for (name, v) in self.meta_entries(META_BROADCAST_PREFIX)? {
            let id =
                v.as_ref().try_into().map(u32::from_be_bytes).map_err(|_| {
                    StateError::Corrupt(format!("broadcast map registry entry {name}"))
                })?;
            reg.next_map = reg.next_map.max(id + 1);
            reg.maps.insert(name, id);
        }
        Ok(())
    }

    /// The meta entries under `prefix`: (the rest of the key as text, value).
    fn meta_entries(&self, prefix: &str) -> Result<Vec<(String, Box<[u8]>)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .prefix_iterator_cf(self.meta_cf(), prefix.as_bytes())
        {
            let (k, v) = item?;
            let Some(name) = k.strip_prefix(prefix.as_bytes()) else {
                break;
            };
            out.push((String::from_utf8_lossy(name).into_owned(), v));
        }
        Ok(out)
    }

    fn lock_registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding this lock leaves the registry consistent (inserts are
        // single operations), so a poisoned lock is safe to reuse.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the state called `name`, registering it on first use. The id is stable for the
    /// life of the state directory.
    pub fn open_state(&self, name: &str, kind: StateKind, ttl: Option<Ttl>) -> Result<StateInfo> {
        let ttl = match self
            .overrides
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            Some(over) => *over,
            None => ttl,
        };
        let info = self.register(name, kind, ttl)?;
        self.kinds
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(info.id, kind);
        let visibility = |t: Option<&(StateKind, Ttl)>| t.map(|(_, t)| t.visibility);
        let before = visibility(
            self.ttls
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&info.id),
        );
        let changes = before != ttl.map(|t| t.visibility);
        if changes {
            // Whether its entries may be cached (and deferred) changes (see `hot`): what waits
            // is written first, while no table lock is held (the compaction filter reads them).
            self.settle()?;
        }
        {
            let mut ttls = self.ttls.write().unwrap_or_else(|p| p.into_inner());
            match ttl {
                Some(t) => ttls.insert(info.id, (kind, t)),
                None => ttls.remove(&info.id),
            };
        }
        if changes {
            self.hot().forget_clean();
        }
        Ok(info)
    }

    fn register(&self, name: &str, kind: StateKind, ttl: Option<Ttl>) -> Result<StateInfo> {
        let mut reg = self.lock_registry();
        let id = match reg.by_name.get(name) {
            Some(&(_, existing, _)) if existing != kind => {
                return Err(StateError::WrongKind {
                    name: name.to_string(),
                    existing,
                    requested: kind,
                });
            }
            Some(&(id, _, stored_ttl)) if stored_ttl == ttl => {
                return Ok(StateInfo {
                    id,
                    name: name.to_string(),
                    kind,
                    ttl,
                });
            }
            Some(&(id, _, _)) => id,
            None => {
                reg.next_id += 1;
                reg.next_id - 1
            }
        };
        let entry = serde_json::to_vec(&RegistryEntry { id, kind, ttl })
            .map_err(|e| StateError::Corrupt(e.to_string()))?;
        self.db.put_cf(
            self.meta_cf(),
            format!("{META_STATE_PREFIX}{name}").as_bytes(),
            entry,
        )?;
        reg.by_name.insert(name.to_string(), (id, kind, ttl));
        Ok(StateInfo {
            id,
            name: name.to_string(),
            kind,
            ttl,
        })
    }

    /// The registered keyed states, sorted by id, with the TTL they were last opened with.
    pub fn states(&self) -> Vec<StateInfo> {
        let reg = self.lock_registry();
        let mut out: Vec<StateInfo> = reg
            .by_name
            .iter()
            .map(|(n, (id, kind, ttl))| StateInfo {
                id: *id,
                name: n.clone(),
                kind: *kind,
                ttl: *ttl,
            })
            .collect();
        out.sort_by_key(|s| s.id);
        out
    }

    /// A registered keyed state by name.
    pub fn state(&self, name: &str) -> Option<StateInfo> {
        let reg = self.lock_registry();
        reg.by_name.get(name).map(|(id, kind, ttl)| StateInfo {
            id: *id,
            name: name.to_string(),
            kind: *kind,
            ttl: *ttl,
        })
    }

    /// Opens the broadcast map called `name`, registering it on first use. The id is stable
    /// for the life of the state.
    pub fn open_broadcast_map(&self, name: &str) -> Result<u32> {
        let mut reg = self.lock_registry();
        if let Some(id) = reg.maps.get(name) {
            return Ok(*id);
        }
        let id = reg.next_map;
        self.db.put_cf(
            self.meta_cf(),
            format!("{META_BROADCAST_PREFIX}{name}").as_bytes(),
            id.to_be_bytes(),
        )?;
        reg.next_map += 1;
        reg.maps.insert(name.to_string(), id);
        Ok(id)
    }

    /// The broadcast maps: name and id, sorted by id.
    pub fn broadcast_maps(&self) -> Vec<(String, u32)> {
        let reg = self.lock_registry();
        let mut out: Vec<(String, u32)> = reg.maps.iter().map(|(n, id)| (n.clone(), *id)).collect();
        out.sort_by_key(|m| m.1);
        out
    }

    /// The id of broadcast map `name`, if it exists.
    pub fn broadcast_map(&self, name: &str) -> Option<u32> {
        self.lock_registry().maps.get(name).copied()
    }

    /// Number of key groups.
    pub fn key_groups(&self) -> u32 {
        self.key_groups
    }

    /// The key group of a key.
    pub fn key_group(&self, key: &[u8]) -> u16 {
        keygroup::key_group(key, self.key_groups)
    }

    /// Processing time now.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The clock shared with plugins.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// The last committed position of input `input` (e.g. a stream sequence), if any.
    pub fn position(&self, input: &str) -> Result<Option<u64>> {
        let key = format!("{META_POSITION_PREFIX}{input}");
        Ok(self
            .db
            .get_cf(self.meta_cf(), key.as_bytes())?
            .and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes)))
    }

    /// Every input position the state records.
    pub fn positions(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let mut out = std::collections::BTreeMap::new();
        let iter = self
            .db
            .prefix_iterator_cf(self.meta_cf(), META_POSITION_PREFIX.as_bytes());
        for item in iter {
            let (k, v) = item?;
            let Some(name) = k.strip_prefix(META_POSITION_PREFIX.as_bytes()) else {
                break;
            };
            if let Ok(bytes) = <[u8; 8]>::try_from(v.as_ref()) {
                out.insert(
                    String::from_utf8_lossy(name).into_owned(),
                    u64::from_be_bytes(bytes),
                );
            }
        }
        Ok(out)
    }

    /// Writes a RocksDB checkpoint of the whole database into `dir` (which must not exist):
    /// memtables are flushed, SST files hard-linked, the small metadata files copied. The
    /// checkpoint is itself an openable database.
    pub fn create_checkpoint(&self, dir: &Path) -> Result<()> {
        self.settle()?;
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db)?;
        cp.create_checkpoint(dir)?;
        Ok(())
    }

    /// Opens a database read-only (a checkpoint, for queries at that cut).
    pub fn open_read_only(path: &Path, clock: Arc<dyn Clock>) -> Result<StateStore> {
        let opts = Options::default();
        let cfs = [CF_KEYED, CF_BROADCAST, CF_META];
        let db = DB::open_cf_for_read_only(&opts, path, cfs, false)?;
        let key_groups = db
            .get_cf(
                db.cf_handle(CF_META)
                    .ok_or_else(|| StateError::Corrupt("no meta column family".into()))?,
                META_KEY_GROUPS,
            )?
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
            .ok_or_else(|| StateError::Corrupt("no key_groups entry".into()))?;
        let store = StateStore {
            db,
            path: path.to_path_buf(),
            key_groups,
            clock,
            registry: Mutex::new(Registry::default()),
            write_opts: WriteOptions::default(),
            ttls: Arc::default(),
            kinds: Arc::default(),
            stats: Arc::default(),
            overrides: RwLock::default(),
            hot: Mutex::new(hot::HotValues::new(0)),
            writing: Mutex::new(()),
            defer_writes: false,
            deferring: false.into(),
            probe_in: 0.into(),
        };
        store.load_registry()?;
        Ok(store)
    }

    /// A new, empty batch.
    pub fn batch(&self) -> StateBatch {
        StateBatch::default()
    }

    /// Commits a batch's writes and positions: one RocksDB write of all but the deferred ones
    /// (see `hot`), then the hot values (so a query never reads there what RocksDB does not
    /// hold yet, except deferred writes, which only the hot values hold).
    pub fn commit(&self, batch: StateBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let keyed = batch.keyed_overlay();
        // What each keyed write becomes besides RocksDB, decided before writing so that no
        // table lock is held while RocksDB writes (its compaction filter reads the tables).
        // A batch that clears a prefix is written through whole, so that its range deletes
        // and the writes after them reach RocksDB together and in order.
        let defer = self.defer_writes && keyed.cleared.is_empty() && self.deferring_now();
        let plan: Vec<HotPlan> = {
            let ttls = self.ttls.read().unwrap_or_else(|p| p.into_inner());
            let kinds = self.kinds.read().unwrap_or_else(|p| p.into_inner());
            keyed
                .writes
                .iter()
                .map(|(k, v)| match v {
                    Some(_) if defer && deferrable(&kinds, &ttls, k) => HotPlan::Defer,
                    Some(_) if hot_cacheable(&ttls, k) => HotPlan::Cache,
                    _ => HotPlan::Forget,
                })
                .collect()
        };
        let _writing = self.writing();
        let written = self.db.write_opt(
            batch.write_batch_except(self, |i| plan[i] == HotPlan::Defer),
            &self.write_opts,
        );
        let mut hot = self.hot();
        hot.bump();
        if written.is_err() || !keyed.cleared.is_empty() {
            // Written through whole: nothing of an older deferred write of these keys may
            // stay, or it would hide this batch's write and be settled over it.
            for k in keyed.writes.keys() {
                hot.remove(k);
            }
            hot.forget_clean();
        } else {
            for ((k, v), plan) in keyed.writes.iter().zip(&plan) {
                match (v, plan) {
                    (Some(v), HotPlan::Defer) => self.defer_locked(&mut hot, k, v)?,
                    (Some(v), HotPlan::Cache) => hot.refresh(k, v),
                    _ => hot.remove(k),
                }
            }
        }
        written?;
        Ok(())
    }

    /// Keeps a deferred write hot; when the budget is full, settles and starts over.
    fn defer_locked(&self, hot: &mut hot::HotValues, key: &[u8], value: &[u8]) -> Result<()> {
        if hot.put_dirty(key, value) {
            return Ok(());
        }
        self.settle_locked(hot)?;
        hot.forget_all();
        if !hot.put_dirty(key, value) {
            // Larger than the whole budget: written now.
            self.db
                .put_cf_opt(self.keyed_cf(), key, value, &self.write_opts)?;
        }
        Ok(())
    }

    /// Writes the deferred value and list writes to RocksDB (`hot`). Done before anything
    /// reads RocksDB other than through the hot values: checkpoints, savepoints, visits,
    /// flushes, full scans; and when the store is dropped.
    ///
    /// The hot values stay readable while RocksDB writes (a checkpoint's settle can take tens
    /// of milliseconds, and queries read there): only writers change dirty entries, and they
    /// wait for this one.
    pub fn settle(&self) -> Result<()> {
        let _writing = self.writing();
        let Some((wb, deferred, waiting)) = self.settle_batch(&mut self.hot()) else {
            return Ok(());
        };
        self.db.write_opt(wb, &self.write_opts)?;
        self.settled(&mut self.hot(), deferred, waiting);
        Ok(())
    }

    /// Settles if a scan of `prefix` (key group + state id, at least) could miss deferred
    /// writes: those of value and list state.
    pub(crate) fn settle_for_scan(&self, prefix: &[u8]) -> Result<()> {
        let deferred_kind = layout::state_id_of(prefix).is_none_or(|id| {
            matches!(
                self.kinds
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&id),
                Some(StateKind::Value | StateKind::List) | None
            )
        });
        if deferred_kind {
            self.settle()?;
        }
        Ok(())
    }

    fn writing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this commit may defer; counts down to the next try while it may not.
    fn deferring_now(&self) -> bool {
        if self.deferring.load(Ordering::Relaxed) {
            return true;
        }
        if self.probe_in.fetch_sub(1, Ordering::Relaxed) <= 1 {
            self.deferring.store(true, Ordering::Relaxed);
            tracing::debug!("state: deferring value and list writes again, to see if it pays");
        }
        false
    }

    /// Whether deferring is on (see `hot`).
    #[cfg(test)]
    pub(crate) fn defers_writes(&self) -> bool {
        self.defer_writes && self.deferring.load(Ordering::Relaxed)
    }

    /// [`StateStore::settle`] for a writer that holds the hot values already.
    fn settle_locked(&self, hot: &mut hot::HotValues) -> Result<()> {
        if let Some((wb, deferred, waiting)) = self.settle_batch(hot) {
            self.db.write_opt(wb, &self.write_opts)?;
            self.settled(hot, deferred, waiting);
        }
        Ok(())
    }

    /// The RocksDB write of the dirty entries (none: nothing waits), with the counts to judge
    /// whether deferring pays: the writes deferred since the last settle, and the entries
    /// they left waiting (a key rewritten while waiting saved a RocksDB write). Under a tenth
    /// saved, deferring stops for a while.
    fn settle_batch(&self, hot: &mut hot::HotValues) -> Option<(rocksdb::WriteBatch, u64, u64)> {
        let (deferred, waiting) = (hot.deferred_since_settle(), hot.dirty_len() as u64);
        if deferred >= JUDGE_AFTER_WRITES && waiting * 10 > deferred * 9 {
            self.deferring.store(false, Ordering::Relaxed);
            self.probe_in.store(PROBE_AFTER_COMMITS, Ordering::Relaxed);
            tracing::debug!(
                deferred,
                waiting,
                "state: deferred writes were nearly all to different keys; writing through for now"
            );
        }
        if waiting == 0 {
            return None;
        }
        let cf = self.keyed_cf();
        let mut wb = rocksdb::WriteBatch::default();
        for (k, v) in hot.dirty_entries() {
            wb.put_cf(cf, k, v);
        }
        Some((wb, deferred, waiting))
    }

    /// Marks the dirty entries written.
    fn settled(&self, hot: &mut hot::HotValues, deferred: u64, waiting: u64) {
        self.stats
            .deferred_writes
            .fetch_add(deferred, Ordering::Relaxed);
        self.stats
            .settled_writes
            .fetch_add(waiting, Ordering::Relaxed);
        hot.mark_clean();
    }

    fn hot(&self) -> std::sync::MutexGuard<'_, hot::HotValues> {
        self.hot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored bytes at keyed `key` if they are hot (`Ok`), or the generation to hand to
    /// [`StateStore::hot_fill`] with what RocksDB holds (`Err`).
    pub(crate) fn hot_get(&self, key: &[u8]) -> std::result::Result<Vec<u8>, u64> {
        let mut hot = self.hot();
        hot.check_epoch(self.stats.expired_in_compaction.load(Ordering::Relaxed));
        let found = hot.get(key).ok_or(hot.generation());
        let counter = match found {
            Ok(_) => &self.stats.hot_hits,
            Err(_) => &self.stats.hot_misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps bytes read from RocksDB at keyed `key` hot, unless a commit came in between.
    pub(crate) fn hot_fill(&self, generation: u64, key: &[u8], stored: &[u8]) {
        // The TTL table's guard is dropped before the hot values' lock is taken: that lock
        // may be held across a RocksDB write, whose compaction filter reads the table.
        let cacheable = hot_cacheable(&self.ttls.read().unwrap_or_else(|p| p.into_inner()), key);
        if cacheable {
            self.hot().fill(generation, key, stored);
        }
    }

    /// Writes stored entries as they are (keyed, or broadcast), in one write: for restoring
    /// savepoints.
    pub fn write_raw(&self, entries: Vec<(Vec<u8>, Vec<u8>)>, broadcast: bool) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let _writing = self.writing();
        {
            let mut hot = self.hot();
            self.settle_locked(&mut hot)?;
            hot.forget_all();
        }
        let cf = if broadcast {
            self.broadcast_cf()
        } else {
            self.keyed_cf()
        };
        let mut wb = rocksdb::WriteBatch::default();
        for (k, v) in entries {
            wb.put_cf(cf, k, v);
        }
        self.db.write_opt(wb, &self.write_opts)?;
        Ok(())
    }

    /// Reads one value as a plugin would (TTL applied), outside any batch. For queries and
    /// tests; expired entries are not removed by it.
    pub fn read_value(&self, state: &StateInfo, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut b = self.batch();
        let kg = self.key_group(key);
        let v = KeyedAccess::new(self, &mut b).value_get(state, kg, key)?;
        Ok(v)
    }

    /// Sets operator TTL overrides by state name (`None` turns TTL off for that state); they
    /// win over what plugins declare in `open`.
    pub fn set_ttl_overrides(&self, overrides: HashMap<String, Option<Ttl>>) {
        *self.overrides.write().unwrap_or_else(|p| p.into_inner()) = overrides;
    }

    /// Counters of expired entries removed.
    pub fn stats(&self) -> &Arc<StateStats> {
        &self.stats
    }

    /// Flushes and compacts all keyed state now: expired entries are dropped by the
    /// compaction filter. Runs in the background on its own too (periodic compaction).
    pub fn compact(&self) -> Result<()> {
        self.settle()?;
        self.db.flush_cf(self.keyed_cf())?;
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        self.db
            .compact_range_cf_opt(self.keyed_cf(), None::<&[u8]>, None::<&[u8]>, &opts);
        Ok(())
    }

    /// Bytes of keyed state on disk (SST files).
    pub fn disk_bytes(&self) -> Result<u64> {
        Ok(self
            .db
            .property_int_value_cf(self.keyed_cf(), "rocksdb.total-sst-files-size")?
            .unwrap_or(0))
    }

    /// Number of keyed-state entries physically present (a full scan; for tests and tools).
    pub fn count_entries(&self) -> Result<u64> {
        self.settle()?;
        let mut it = self.db.raw_iterator_cf(self.keyed_cf());
        it.seek_to_first();
        let mut n = 0;
        while it.valid() {
            n += 1;
            it.next();
        }
        it.status()?;
        Ok(n)
    }

    /// Flushes memtables to disk (used before measuring size, and at shutdown).
    pub fn flush(&self) -> Result<()> {
        self.settle()?;
        let cfs = [self.keyed_cf(), self.broadcast_cf(), self.meta_cf()];
        self.db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        Ok(())
    }
}

/// The TTL compaction filter: drops values, map entries and lists whose every element is
/// expired, judged by the state's TTL and the timestamp stored with each value. Partially
/// expired lists are kept (the read path trims them), as RocksDB's filter API here can only
/// replace a value with static bytes.
fn ttl_compaction_filter(
    ttls: TtlTable,
    kinds: KindTable,
    clock: Arc<dyn Clock>,
    stats: Arc<StateStats>,
) -> impl FnMut(u32, &[u8], &[u8]) -> rocksdb::CompactionDecision + Send + 'static {
    move |_level, key, value| {
        let Some(id) = layout::state_id_of(key) else {
            return rocksdb::CompactionDecision::Keep;
        };
        let entry = match ttls.read() {
            Ok(t) => t.get(&id).copied(),
            Err(_) => None,
        };
        let now = clock.now_ms();
        let expired = match entry {
            Some((StateKind::List, ttl)) => layout::decode_list(value)
                .is_some_and(|els| els.iter().all(|(ts, _)| ttl.is_expired(*ts, now))),
            // Values and map entries: their own TTL wins over the state's. Entries written
            // with their own TTL expire even in states without one, so those are decoded
            // too; a list state's bytes are never read as a value (its kind is known only
            // while the state is open, so unknown states are left alone).
            Some((_, ttl)) => layout::decode_value_ttl(value)
                .is_some_and(|(ts, own, _)| ts.saturating_add(own.unwrap_or(ttl.ttl_ms)) <= now),
            None => match kinds.read().ok().and_then(|k| k.get(&id).copied()) {
                Some(StateKind::Value | StateKind::Map) => layout::decode_value_ttl(value)
                    .is_some_and(|(ts, own, _)| own.is_some_and(|ms| ts.saturating_add(ms) <= now)),
                _ => false,
            },
        };
        if expired {
            stats.expired_in_compaction.fetch_add(1, Ordering::Relaxed);
            rocksdb::CompactionDecision::Remove
        } else {
            rocksdb::CompactionDecision::Keep
        }
    }
}

/// Whether entries at `key` may be hot values: not those of a state that reports expired
/// entries until compaction cleans them up (`ttls`: the store's TTL table).
fn hot_cacheable(ttls: &HashMap<u32, (StateKind, Ttl)>, key: &[u8]) -> bool {
    layout::state_id_of(key).is_some_and(|id| {
        ttls.get(&id)
            .is_none_or(|(_, t)| t.visibility != TtlVisibility::ReturnExpiredIfNotCleanedUp)
    })
}

impl Drop for StateStore {
    /// Deferred writes reach RocksDB before it closes, so a store reopened after a clean
    /// drop finds them (a crash loses them with the memtables; see `hot`).
    fn drop(&mut self) {
        if let Err(e) = self.settle() {
            tracing::error!(
                "state store {}: deferred writes not written: {e}",
                self.path.display()
            );
        }
    }
}

/// What a commit does with a keyed write besides RocksDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HotPlan {
    /// Keep it hot and dirty instead of writing it now.
    Defer,
    /// Write it, and refresh it if it is hot.
    Cache,
    /// Write it (or its delete), and forget it.
    Forget,
}

/// Whether a write at `key` may wait in the hot values (`hot`): value and list state, which
/// only point reads see, and only if its entries may be hot at all.
fn deferrable(
    kinds: &HashMap<u32, StateKind>,
    ttls: &HashMap<u32, (StateKind, Ttl)>,
    key: &[u8],
) -> bool {
    layout::state_id_of(key)
        .is_some_and(|id| matches!(kinds.get(&id), Some(StateKind::Value | StateKind::List)))
        && hot_cacheable(ttls, key)
}

fn position_key(input: &str) -> Vec<u8> {
    format!("{META_POSITION_PREFIX}{input}").into_bytes()
}
